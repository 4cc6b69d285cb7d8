package amqp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// rabbitBin is where Debian's rabbitmq-server package puts the scripts.
const rabbitBin = "/usr/lib/rabbitmq/bin"

// tb is the RabbitMQ node every test of the package uses.
var tb *broker

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	b, err := startBroker()
	if err != nil {
		fmt.Fprintf(os.Stderr, "connector/amqp: %v\n", err)
		return 1
	}
	tb = b
	code := m.Run()
	if err := b.shutdown(); err != nil {
		fmt.Fprintf(os.Stderr, "connector/amqp: stopping RabbitMQ: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// broker is a RabbitMQ node run by the tests as a child process, every
// listener on loopback, with its own epmd on a free port (so it neither
// meets nor stops anyone else's), data in a temporary directory.
type broker struct {
	dir      string
	amqpPort int
	tlsPort  int
	user     string
	pass     []byte
	ca       *x509.CertPool
	env      []string
	log      *os.File // the node's stdout and stderr

	epmd     *exec.Cmd
	epmdDone chan error
	srv      *exec.Cmd
	srvDone  chan error
}

// startBroker starts epmd and a RabbitMQ node and waits until the node
// takes logins.
func startBroker() (b *broker, err error) {
	server := filepath.Join(rabbitBin, "rabbitmq-server")
	if _, err := os.Stat(server); err != nil {
		return nil, fmt.Errorf("RabbitMQ is not installed (%v): run test/setup.sh as root (make setup) first", err)
	}
	epmd, err := exec.LookPath("epmd")
	if err != nil {
		return nil, fmt.Errorf("epmd (Erlang) is not installed: run test/setup.sh as root (make setup) first: %v", err)
	}
	dir, err := os.MkdirTemp("", "sallyport-rabbitmq-")
	if err != nil {
		return nil, err
	}
	b = &broker{dir: dir, user: "sallyport"}
	defer func() {
		if err != nil {
			_ = b.shutdown()
			b = nil
		}
	}()
	ports, err := freePorts(4)
	if err != nil {
		return b, err
	}
	b.amqpPort, b.tlsPort = ports[0], ports[1]
	distPort, epmdPort := ports[2], ports[3]
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	b.pass = []byte(hex.EncodeToString(secret))
	cookie := make([]byte, 24)
	_, _ = rand.Read(cookie)

	home := filepath.Join(dir, "home")
	for _, d := range []string{home, filepath.Join(dir, "mnesia"), filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return b, err
		}
	}
	if err := os.WriteFile(filepath.Join(home, ".erlang.cookie"), []byte(hex.EncodeToString(cookie)), 0o400); err != nil {
		return b, err
	}
	if b.ca, err = writeTLSFiles(dir); err != nil {
		return b, err
	}
	conf := strings.Join([]string{
		"listeners.tcp.default = 127.0.0.1:" + strconv.Itoa(b.amqpPort),
		"listeners.ssl.default = 127.0.0.1:" + strconv.Itoa(b.tlsPort),
		"ssl_options.cacertfile = " + filepath.Join(dir, "ca.pem"),
		"ssl_options.certfile = " + filepath.Join(dir, "server.pem"),
		"ssl_options.keyfile = " + filepath.Join(dir, "server.key"),
		"ssl_options.verify = verify_none",
		"ssl_options.fail_if_no_peer_cert = false",
		"default_user = " + b.user,
		"default_pass = " + string(b.pass),
		"loopback_users = none",
		"log.console = false",
		"log.file.level = info",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o600); err != nil {
		return b, err
	}
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o600); err != nil {
		return b, err
	}
	b.env = append(cleanEnv(),
		"HOME="+home,
		"PATH="+rabbitBin+":"+os.Getenv("PATH"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_EPMD_PORT="+strconv.Itoa(epmdPort),
		"RABBITMQ_NODENAME=sallyport@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(b.amqpPort),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbitmq.pid"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
	if b.log, err = os.Create(filepath.Join(dir, "server.out")); err != nil {
		return b, err
	}

	b.epmd = exec.Command(epmd, "-port", strconv.Itoa(epmdPort), "-address", "127.0.0.1") // #nosec G204 -- fixed program, our port
	b.epmd.Env, b.epmd.Stdout, b.epmd.Stderr = b.env, b.log, b.log
	b.epmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.epmd.Start(); err != nil {
		b.epmd = nil
		return b, fmt.Errorf("start epmd: %w", err)
	}
	b.epmdDone = make(chan error, 1)
	go func() { b.epmdDone <- b.epmd.Wait() }()
	if err := waitPort(epmdPort, 10*time.Second); err != nil {
		return b, fmt.Errorf("epmd: %w", err)
	}
	return b, b.start()
}

// cleanEnv is the environment without anything that would steer Erlang
// or RabbitMQ elsewhere.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "RABBITMQ_") || strings.HasPrefix(kv, "ERL_") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "PATH=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// start starts the node (on the data it has, if any) and waits until it
// takes logins.
func (b *broker) start() error {
	cmd := exec.Command(filepath.Join(rabbitBin, "rabbitmq-server")) // #nosec G204 -- fixed program
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = b.env, b.dir, b.log, b.log
	// Its own process group: the node's children go with it if it must
	// be killed, and nothing else does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start rabbitmq-server: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	b.srv, b.srvDone = cmd, done
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case err := <-done:
			b.srv = nil
			return fmt.Errorf("rabbitmq-server exited while starting (%v); its output:\n%s", err, b.tail())
		default:
		}
		if c, err := b.rawDial(); err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rabbitmq-server took no login in 2 minutes; its output:\n%s", b.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop stops the node politely (rabbitmqctl stop) and waits for it; a
// node that will not stop is killed, by its process group.
func (b *broker) stop() error {
	if b.srv == nil {
		return nil
	}
	_, ctlErr := b.ctl(time.Minute, "rabbitmqctl", "-q", "stop")
	var err error
	select {
	case err = <-b.srvDone:
	case <-time.After(time.Minute):
		_ = syscall.Kill(-b.srv.Process.Pid, syscall.SIGKILL)
		err = <-b.srvDone
		err = fmt.Errorf("rabbitmq-server did not stop (rabbitmqctl: %v); killed: %v", ctlErr, err)
	}
	b.srv = nil
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = nil // a node stopped by rabbitmqctl may exit non-zero
	}
	return err
}

// shutdown stops the node and epmd and removes the data.
func (b *broker) shutdown() error {
	err := b.stop()
	if b.epmd != nil {
		_ = b.epmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.epmdDone:
		case <-time.After(10 * time.Second):
			_ = b.epmd.Process.Kill()
			<-b.epmdDone
		}
		b.epmd = nil
	}
	if b.log != nil {
		_ = b.log.Close()
	}
	if rmErr := os.RemoveAll(b.dir); err == nil {
		err = rmErr
	}
	return err
}

// ctl runs one of RabbitMQ's command line tools against the node.
func (b *broker) ctl(timeout time.Duration, tool string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(rabbitBin, tool), args...) // #nosec G204 -- fixed tools, test arguments
	cmd.Env, cmd.Dir = b.env, b.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// tail is the end of the node's output and log, for failure messages.
func (b *broker) tail() string {
	var s strings.Builder
	for _, f := range []string{filepath.Join(b.dir, "server.out"), filepath.Join(b.dir, "log", "sallyport@localhost.log")} {
		data, _ := os.ReadFile(f) // #nosec G304 -- our temp dir
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&s, "--- %s\n%s\n", f, data)
	}
	return s.String()
}

// rawDial logs in with amqp091 directly, as the benchmarks' baseline does.
func (b *broker) rawDial() (*amqp091.Connection, error) {
	return amqp091.DialConfig(fmt.Sprintf("amqp://127.0.0.1:%d/", b.amqpPort), amqp091.Config{
		SASL:      []amqp091.Authentication{&amqp091.PlainAuth{Username: b.user, Password: string(b.pass)}},
		Heartbeat: 10 * time.Second,
	})
}

// config is a Config for the node's plain AMQP listener.
func (b *broker) config() Config {
	return Config{
		URL:        fmt.Sprintf("amqp://%s@127.0.0.1:%d/", b.user, b.amqpPort),
		Password:   bytes.Clone(b.pass),
		Log:        quietLog,
		BackoffMax: time.Second,
	}
}

// tlsConfig is a Config for the node's TLS listener, the test CA pinned.
func (b *broker) tlsConfig() Config {
	cfg := b.config()
	cfg.URL = fmt.Sprintf("amqps://%s@localhost:%d/", b.user, b.tlsPort)
	cfg.TLS = &tls.Config{RootCAs: b.ca, MinVersion: tls.VersionTLS12}
	return cfg
}

// memory is what the node's Erlang VM holds, and the OS's view of it.
type memory struct {
	Erlang, RSS int64
}

// memory asks the node; a node too busy to answer in 30 s is measured
// from outside (RSS only; Erlang -1).
func (b *broker) memory() (memory, error) {
	out, err := b.ctl(30*time.Second, "rabbitmq-diagnostics", "-q", "status", "--formatter", "json")
	if err != nil {
		rss, perr := b.rss()
		if perr != nil {
			return memory{}, errors.Join(err, perr)
		}
		return memory{Erlang: -1, RSS: rss}, nil
	}
	var st struct {
		Memory struct {
			Total struct {
				Erlang int64 `json:"erlang"`
				RSS    int64 `json:"rss"`
			} `json:"total"`
		} `json:"memory"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return memory{}, fmt.Errorf("status: %w", err)
	}
	return memory{Erlang: st.Memory.Total.Erlang, RSS: st.Memory.Total.RSS}, nil
}

// rss is the resident size of the node's VM, from /proc.
func (b *broker) rss() (int64, error) {
	pid, err := os.ReadFile(filepath.Join(b.dir, "rabbitmq.pid"))
	if err != nil {
		return 0, err
	}
	status, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(string(pid)), "status")) // #nosec G304 -- our node's pid
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// quietLog is the logger of Conns in tests: warnings and errors only.
var quietLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ io.Writer = (*syncBuffer)(nil)

// freePorts returns n distinct loopback ports free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func waitPort(port int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeTLSFiles makes a throwaway CA and a server certificate for
// localhost and 127.0.0.1, writes them for the node, and returns the CA.
func writeTLSFiles(dir string) (*x509.CertPool, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sallyport test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(48 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	files := map[string]*pem.Block{
		"ca.pem":     {Type: "CERTIFICATE", Bytes: caDER},
		"server.pem": {Type: "CERTIFICATE", Bytes: der},
		"server.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	}
	for name, blk := range files {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, nil
}

// slogTo is a debug-level logger writing to w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
