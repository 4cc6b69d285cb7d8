// Package rabbitmqtest runs a real RabbitMQ node for tests: a child
// process with every listener on loopback, its own epmd on a free port (so
// it neither meets nor stops anyone else's node), and its data in a
// temporary directory. Debian's rabbitmq-server package provides it
// (test/setup.sh installs it).
package rabbitmqtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Bin is where Debian's rabbitmq-server package puts the scripts.
const Bin = "/usr/lib/rabbitmq/bin"

// Broker is a running RabbitMQ node.
type Broker struct {
	Dir      string // the node's directory, removed by Shutdown
	AMQPPort int    // plain AMQP on 127.0.0.1
	TLSPort  int    // AMQP over TLS on 127.0.0.1 (certificate for localhost and 127.0.0.1)
	User     string
	Password []byte
	CA       *x509.CertPool // signs the node's certificate
	CAFile   string         // the same CA, PEM

	env      []string
	log      *os.File
	epmd     *exec.Cmd
	epmdDone chan error
	srv      *exec.Cmd
	srvDone  chan error
}

// String describes b without its password.
func (b *Broker) String() string {
	return fmt.Sprintf("rabbitmqtest.Broker{AMQPPort: %d, TLSPort: %d, User: %q, Password: [REDACTED]}", b.AMQPPort, b.TLSPort, b.User)
}

// GoString describes b without its password, for %#v.
func (b *Broker) GoString() string { return b.String() }

// LogValue keeps the password out of slog records.
func (b *Broker) LogValue() slog.Value { return slog.StringValue(b.String()) }

// MarshalJSON keeps the password out of encoding/json.
func (b *Broker) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

// Start starts epmd and a node and waits until the node takes logins.
func Start() (b *Broker, err error) {
	server := filepath.Join(Bin, "rabbitmq-server")
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
	b = &Broker{Dir: dir, User: "sallyport"}
	defer func() {
		if err != nil {
			_ = b.Shutdown()
			b = nil
		}
	}()
	ports, err := freePorts(4)
	if err != nil {
		return b, err
	}
	b.AMQPPort, b.TLSPort = ports[0], ports[1]
	distPort, epmdPort := ports[2], ports[3]
	b.Password = []byte(randomHex(24))

	home := filepath.Join(dir, "home")
	for _, d := range []string{home, filepath.Join(dir, "mnesia"), filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return b, err
		}
	}
	if err := os.WriteFile(filepath.Join(home, ".erlang.cookie"), []byte(randomHex(24)), 0o400); err != nil {
		return b, err
	}
	if b.CA, err = WriteTLSFiles(dir); err != nil {
		return b, err
	}
	b.CAFile = filepath.Join(dir, "ca.pem")
	conf := strings.Join([]string{
		"listeners.tcp.default = 127.0.0.1:" + strconv.Itoa(b.AMQPPort),
		"listeners.ssl.default = 127.0.0.1:" + strconv.Itoa(b.TLSPort),
		"ssl_options.cacertfile = " + b.CAFile,
		"ssl_options.certfile = " + filepath.Join(dir, "server.pem"),
		"ssl_options.keyfile = " + filepath.Join(dir, "server.key"),
		"ssl_options.verify = verify_none",
		"ssl_options.fail_if_no_peer_cert = false",
		"default_user = " + b.User,
		"default_pass = " + string(b.Password),
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
		"PATH="+Bin+":"+os.Getenv("PATH"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_EPMD_PORT="+strconv.Itoa(epmdPort),
		"RABBITMQ_NODENAME=sallyport@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(b.AMQPPort),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbitmq.pid"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
	if b.log, err = os.Create(filepath.Join(dir, "server.out")); err != nil { // #nosec G304 -- our temp dir
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
	return b, b.Resume()
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

// Resume starts the node (again, on the data it has) and waits until it
// takes logins.
func (b *Broker) Resume() error {
	cmd := exec.Command(filepath.Join(Bin, "rabbitmq-server")) // #nosec G204 -- fixed program
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = b.env, b.Dir, b.log, b.log
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
			return fmt.Errorf("rabbitmq-server exited while starting (%v); its output:\n%s", err, b.Tail())
		default:
		}
		if c, err := b.Dial(); err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rabbitmq-server took no login in 2 minutes; its output:\n%s", b.Tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the node politely (rabbitmqctl stop) and waits for it; a
// node that will not stop is killed, by its process group.
func (b *Broker) Stop() error {
	if b.srv == nil {
		return nil
	}
	_, ctlErr := b.Ctl(time.Minute, "rabbitmqctl", "-q", "stop")
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

// Restart stops the node and starts it again on the same data.
func (b *Broker) Restart() error {
	if err := b.Stop(); err != nil {
		return err
	}
	return b.Resume()
}

// Shutdown stops the node and epmd and removes the data.
func (b *Broker) Shutdown() error {
	err := b.Stop()
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
	if rmErr := os.RemoveAll(b.Dir); err == nil {
		err = rmErr
	}
	return err
}

// Ctl runs one of RabbitMQ's command line tools (rabbitmqctl,
// rabbitmq-diagnostics) against the node.
func (b *Broker) Ctl(timeout time.Duration, tool string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(Bin, tool), args...) // #nosec G204 -- fixed tools, test arguments
	cmd.Env, cmd.Dir = b.env, b.Dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Tail is the end of the node's output and log, for failure messages.
func (b *Broker) Tail() string {
	var s strings.Builder
	for _, f := range []string{filepath.Join(b.Dir, "server.out"), filepath.Join(b.Dir, "log", "sallyport@localhost.log")} {
		data, _ := os.ReadFile(f) // #nosec G304 -- our temp dir
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&s, "--- %s\n%s\n", f, data)
	}
	return s.String()
}

// URL is the node's plain AMQP URL with the user name and no password.
func (b *Broker) URL() string { return fmt.Sprintf("amqp://%s@127.0.0.1:%d/", b.User, b.AMQPPort) }

// TLSURL is the node's AMQP-over-TLS URL, for the name its certificate
// carries.
func (b *Broker) TLSURL() string { return fmt.Sprintf("amqps://%s@localhost:%d/", b.User, b.TLSPort) }

// Dial logs in with amqp091 directly (plain AMQP).
func (b *Broker) Dial() (*amqp091.Connection, error) {
	return amqp091.DialConfig(fmt.Sprintf("amqp://127.0.0.1:%d/", b.AMQPPort), amqp091.Config{
		SASL:      []amqp091.Authentication{&amqp091.PlainAuth{Username: b.User, Password: string(b.Password)}},
		Heartbeat: 10 * time.Second,
	})
}

// Memory is what the node's Erlang VM holds, and the OS's view of it.
type Memory struct {
	Erlang, RSS int64
}

// Memory asks the node how much memory it uses.
func (b *Broker) Memory() (Memory, error) {
	out, err := b.Ctl(time.Minute, "rabbitmq-diagnostics", "-q", "status", "--formatter", "json")
	if err != nil {
		return Memory{}, err
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
		return Memory{}, fmt.Errorf("status: %w", err)
	}
	return Memory{Erlang: st.Memory.Total.Erlang, RSS: st.Memory.Total.RSS}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

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

// WriteTLSFiles makes a throwaway CA and a server certificate for
// localhost and 127.0.0.1, writes them for the node, and returns the CA.
func WriteTLSFiles(dir string) (*x509.CertPool, error) {
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
