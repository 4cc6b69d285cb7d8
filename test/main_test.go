package e2e

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/rabbitmqtest"
	"github.com/sallyport/sallyport/internal/rdptest"
	"github.com/sallyport/sallyport/internal/sshdtest"
)

// env is the suite's shared state: one binary, one sshd, one gateway.
var env *suite

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	flag.Parse()
	s, err := newSuite(benchmarksRequested())
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: e2e setup: %v\n", err)
		return 1
	}
	env = s
	code := m.Run()
	printBenchSummary()
	if problems := s.finish(); len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "\nFAIL: e2e end-of-suite checks found %d problem(s):\n", len(problems))
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "  - %s\n", p)
		}
		code = 1
	}
	return code
}

// suite owns everything the tests share. Components start lazily, once, the
// first time a test asks for them, so a test that needs only sshd still runs
// while the product does not build.
type suite struct {
	dir string // removed at the end

	bin      string // sallyport built with -race (optimized, without it, for benchmarks)
	buildErr error

	targetOnce sync.Once
	target     *sshdTarget
	targetErr  error

	gwOnce sync.Once
	gw     *gateway
	gwErr  error

	// door is a second `sallyport dev` for the tests that attack the
	// gateway (floods, lockouts, memory scans), so that what they do to
	// its limiters, log and memory never touches the other tests.
	doorOnce sync.Once
	door     *gateway
	doorErr  error

	askpassOnce sync.Once
	askpassFile string

	rabbitOnce sync.Once
	rabbit     *rabbitmqtest.Broker
	rabbitErr  error

	sshdOnce sync.Once
	sshd     *sshdtest.Server
	sshdErr  error

	// rdpGw is a `sallyport dev` serving RDP too; rdp the display, shadow
	// server and xrdp its tests use.
	rdpGwOnce sync.Once // picks rdpPort
	rdpPort   int
	rdpOnce   sync.Once // starts rdpGw
	rdpGw     *gateway
	rdpGwErr  error
	rdp       rdptest.Shared
}

// benchmarksRequested reports whether -test.bench selects benchmarks: they
// must measure an optimized binary, not one built with the race detector.
func benchmarksRequested() bool {
	f := flag.Lookup("test.bench")
	return f != nil && f.Value.String() != ""
}

func newSuite(forBench bool) (*suite, error) {
	dir, err := os.MkdirTemp("", "sallyport-e2e-")
	if err != nil {
		return nil, err
	}
	s := &suite{dir: dir, bin: filepath.Join(dir, "sallyport")}
	s.buildErr = buildBinary(s.bin, !forBench)
	if s.buildErr != nil {
		// The gateway tests report this; the harness self-tests still run.
		fmt.Fprintf(os.Stderr, "e2e: %v\n", s.buildErr)
	}
	return s, nil
}

// buildBinary builds ./cmd/sallyport from the module root, found by walking
// up from the test's directory: with the race detector for the tests, without
// it (as `make build` does) for the benchmarks.
func buildBinary(out string, race bool) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("build sallyport: go tool not in PATH: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	args := []string{"build", "-trimpath", "-o", out, "./cmd/sallyport"}
	if race {
		args = []string{"build", "-race", "-o", out, "./cmd/sallyport"}
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build sallyport (go %s in %s): %w\n%s", strings.Join(args, " "), root, err, buf.String())
	}
	return nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// Target returns the shared sshd target, starting it on first use.
func (s *suite) Target(t testing.TB) *sshdTarget {
	t.Helper()
	s.targetOnce.Do(func() {
		s.target, s.targetErr = startTarget(filepath.Join(s.dir, "sshd"))
	})
	if s.targetErr != nil {
		t.Fatalf("sshd target: %v", s.targetErr)
	}
	return s.target
}

// Rabbit returns the suite's RabbitMQ node, starting it on first use.
func (s *suite) Rabbit(t testing.TB) *rabbitmqtest.Broker {
	t.Helper()
	s.rabbitOnce.Do(func() { s.rabbit, s.rabbitErr = rabbitmqtest.Start() })
	if s.rabbitErr != nil {
		t.Fatalf("RabbitMQ: %v", s.rabbitErr)
	}
	return s.rabbit
}

// Gateway returns the shared running `sallyport dev` (with gateway user
// alice), starting it and the target on first use. It fails the test when
// the binary did not build or the gateway has died.
func (s *suite) Gateway(t testing.TB) *gateway {
	t.Helper()
	return s.shared(t, &s.gwOnce, &s.gw, &s.gwErr, "gateway")
}

// Door returns the gateway for hostile-traffic tests (see suite.door),
// starting it on first use, with its own user alice.
func (s *suite) Door(t testing.TB) *gateway {
	t.Helper()
	return s.shared(t, &s.doorOnce, &s.door, &s.doorErr, "door")
}

// RDPGateway returns the gateway that serves RDP too (on RDPPort), with
// its own user alice, starting it on first use.
func (s *suite) RDPGateway(t testing.TB) *gateway {
	t.Helper()
	s.rdpGwOnce.Do(func() {
		s.rdpPort, s.rdpGwErr = sshdtest.FreePort()
	})
	if s.rdpGwErr != nil {
		t.Fatal(s.rdpGwErr)
	}
	g := s.shared(t, &s.rdpOnce, &s.rdpGw, &s.rdpGwErr, "rdp", "--rdp-addr", "127.0.0.1:"+strconv.Itoa(s.rdpPort))
	g.RDPPort = s.rdpPort
	return g
}

// shared starts a shared gateway (data under s.dir/name) once, and checks
// that it still runs.
func (s *suite) shared(t testing.TB, once *sync.Once, g **gateway, gErr *error, name string, extra ...string) *gateway {
	t.Helper()
	if s.buildErr != nil {
		t.Fatalf("sallyport binary is missing: %v", s.buildErr)
	}
	target := s.Target(t)
	once.Do(func() {
		*g, *gErr = startGateway(s.bin, filepath.Join(s.dir, name), target, extra...)
		if *gErr == nil {
			*gErr = (*g).addAlice()
		}
	})
	if *gErr != nil {
		t.Fatalf("sallyport %s: %v", name, *gErr)
	}
	if err := (*g).exited(); err != nil {
		t.Fatalf("sallyport %s is no longer running (%v); log tail:\n%s", name, err, (*g).LogTail(40))
	}
	return *g
}

// finish runs the end-of-suite checks and stops everything. It returns the
// problems found; an empty list means the suite's shared parts were clean.
func (s *suite) finish() []string {
	var problems []string
	if s.gw != nil {
		problems = append(problems, s.gw.finalChecks(s.target)...)
	}
	if s.door != nil {
		problems = append(problems, s.door.finalChecks(s.target)...)
	}
	if s.rdpGw != nil {
		problems = append(problems, s.rdpGw.finalChecks(s.target)...)
	}
	if err := s.rdp.Close(); err != nil {
		problems = append(problems, fmt.Sprintf("stopping the RDP components: %v", err))
	}
	if s.rabbit != nil {
		if err := s.rabbit.Shutdown(); err != nil {
			problems = append(problems, fmt.Sprintf("stopping RabbitMQ: %v", err))
		}
	}
	if s.sshd != nil {
		if err := s.sshd.Close(); err != nil {
			problems = append(problems, fmt.Sprintf("stopping the maintenance sshd: %v", err))
		}
	}
	if s.target != nil {
		if err := s.target.Close(); err != nil {
			problems = append(problems, fmt.Sprintf("stopping sshd target: %v", err))
		}
	}
	if len(problems) == 0 && os.Getenv("SPT_E2E_KEEP") == "" {
		os.RemoveAll(s.dir)
	} else {
		fmt.Fprintf(os.Stderr, "e2e: kept %s for inspection\n", s.dir)
	}
	return problems
}

// lastLines returns the last n lines of b.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
