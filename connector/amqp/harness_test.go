package amqp

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sallyport/sallyport/internal/rabbitmqtest"
)

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

// broker is a RabbitMQ node run by the tests (see internal/rabbitmqtest),
// with the package's names for what the tests use.
type broker struct {
	*rabbitmqtest.Broker
	amqpPort, tlsPort int
	user              string
	pass              []byte
	ca                *x509.CertPool
}

func startBroker() (*broker, error) {
	b, err := rabbitmqtest.Start()
	if err != nil {
		return nil, err
	}
	return &broker{Broker: b, amqpPort: b.AMQPPort, tlsPort: b.TLSPort, user: b.User, pass: b.Password, ca: b.CA}, nil
}

func (b *broker) start() error                          { return b.Resume() }
func (b *broker) stop() error                           { return b.Stop() }
func (b *broker) shutdown() error                       { return b.Shutdown() }
func (b *broker) rawDial() (*amqp091.Connection, error) { return b.Dial() }
func (b *broker) memory() (rabbitmqtest.Memory, error)  { return b.Memory() }

// ctl runs one of RabbitMQ's command line tools against the node.
func (b *broker) ctl(timeout time.Duration, tool string, args ...string) ([]byte, error) {
	return b.Ctl(timeout, tool, args...)
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

// slogTo is a debug-level logger writing to w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
