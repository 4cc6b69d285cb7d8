package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// proc is a sallyport daemon the test started (dev, vault or engine), its
// output captured to a file and memory.
type proc struct {
	name    string // for messages: "sallyport dev", "sallyport engine"
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when Wait returned
	waitErr error
	log     *logSink
}

// startProc starts bin with args, its output going to logPath, and returns
// once it runs; waitReady waits for marker in its output.
func startProc(name, bin, logPath, marker string, args ...string) (*proc, error) {
	p := &proc{name: name, logPath: logPath}
	var err error
	if p.log, err = newLogSink(logPath, marker); err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = cleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		_ = p.log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.done = make(chan struct{})
	go func() { p.waitErr = p.cmd.Wait(); p.log.Close(); close(p.done) }()
	return p, nil
}

// waitReady waits for the marker startProc was given, failing if the
// process exits first or the bound runs out.
func (p *proc) waitReady(marker string, bound time.Duration) error {
	select {
	case <-p.log.ready:
		return nil
	case <-p.done:
		return fmt.Errorf("%s exited before %q (%v); log %s:\n%s", p.name, marker, p.waitErr, p.logPath, p.LogTail(40))
	case <-time.After(bound):
		return fmt.Errorf("%s printed no %q within %v; log %s:\n%s", p.name, marker, bound, p.logPath, p.LogTail(40))
	}
}

// exited returns nil while the process runs.
func (p *proc) exited() error {
	select {
	case <-p.done:
		if p.waitErr != nil {
			return p.waitErr
		}
		return errors.New("exited with status 0")
	default:
		return nil
	}
}

// stop ends the process by the PID the test started.
func (p *proc) stop() error { return sshdtest.StopProcess(p.cmd.Process, p.done, 30*time.Second) }

// kill ends the process with SIGKILL (a crash) and waits for it.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // a stopped process dies only once it runs
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Log returns everything the process has written to stdout and stderr.
func (p *proc) Log() []byte { return p.log.Bytes() }

// LogTail returns the last n lines of the process's output.
func (p *proc) LogTail(n int) string { return lastLines(p.Log(), n) }

// waitLine waits (bounded) for an output line that match accepts.
func (p *proc) waitLine(match func(line string) bool, bound time.Duration) (string, bool) {
	deadline := time.Now().Add(bound)
	for {
		for _, line := range strings.Split(string(p.Log()), "\n") {
			if match(line) {
				return line, true
			}
		}
		if time.Now().After(deadline) {
			return "", false
		}
		select {
		case <-p.done:
			deadline = time.Now() // one last look at the complete output
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// crashProblems returns what the output says about data races and panics.
func (p *proc) crashProblems() []string {
	var problems []string
	log := p.Log()
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if bytes.Contains(log, []byte(bad)) {
			problems = append(problems, fmt.Sprintf("%s output contains %q (see %s)", p.name, bad, p.logPath))
		}
	}
	return problems
}

// logSink captures a child's stdout and stderr into a file and memory and
// notices a ready line.
type logSink struct {
	mu     sync.Mutex
	f      *os.File
	buf    bytes.Buffer
	ready  chan struct{}
	seen   bool
	marker string
}

func newLogSink(path, marker string) (*logSink, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &logSink{f: f, ready: make(chan struct{}), marker: marker}, nil
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if l.f != nil {
		l.f.Write(p)
	}
	if !l.seen && l.marker != "" && bytes.Contains(l.buf.Bytes(), []byte(l.marker)) {
		l.seen = true
		close(l.ready)
	}
	return len(p), nil
}

// Bytes returns a copy of everything written so far.
func (l *logSink) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.buf.Bytes())
}

// Close closes the file; the memory copy stays readable.
func (l *logSink) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
