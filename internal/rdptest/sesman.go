package rdptest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// The xrdp-sesman every Xrdp of this process uses, and how many do.
var (
	sesmanMu    sync.Mutex
	sesmanProc  *sesman
	sesmanUsers int
)

// sesmanLockFile keeps two test processes from running xrdp-sesman on
// the one port xrdp looks for it at.
const sesmanLockFile = "/run/rdptest-sesman.lock"

// sesmanLockWait bounds how long StartXrdp waits for another test
// process to release xrdp-sesman.
const sesmanLockWait = 5 * time.Minute

// xrdpConfigDir is where xrdp reads sesman.ini to find sesman's port.
const xrdpConfigDir = "/etc/xrdp"

// sesman is a running xrdp-sesman.
type sesman struct {
	port  int
	dir   string
	log   string
	group string // TerminalServerUsers: only the harness's accounts log in
	lock  *os.File
	p     *process
}

// acquireSesman returns the process's xrdp-sesman, starting it if there is
// none.
func acquireSesman() (*sesman, error) {
	sesmanMu.Lock()
	defer sesmanMu.Unlock()
	if sesmanProc == nil {
		s, err := startSesman()
		if err != nil {
			return nil, err
		}
		sesmanProc = s
	}
	sesmanUsers++
	return sesmanProc, nil
}

// releaseSesman stops xrdp-sesman when its last user lets it go.
func releaseSesman() error {
	sesmanMu.Lock()
	defer sesmanMu.Unlock()
	sesmanUsers--
	if sesmanUsers > 0 || sesmanProc == nil {
		return nil
	}
	err := sesmanProc.close()
	sesmanProc = nil
	return err
}

// sesmanPort is the port xrdp connects to sesman at: ListenPort in
// /etc/xrdp/sesman.ini's [Globals], 3350 when it is not there.
func sesmanPort() (int, error) {
	f, err := os.Open(filepath.Join(xrdpConfigDir, "sesman.ini"))
	if errors.Is(err, os.ErrNotExist) {
		return 3350, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = strings.ToLower(strings.Trim(line, "[]"))
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok && section == "globals" && strings.EqualFold(strings.TrimSpace(k), "ListenPort") {
			port, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || port <= 0 || port > 65535 {
				return 0, fmt.Errorf("%s/sesman.ini: ListenPort %q is not a TCP port", xrdpConfigDir, v)
			}
			return port, nil
		}
	}
	return 3350, sc.Err()
}

// lockSesman takes the lock file, waiting for another test process to let
// it go.
func lockSesman() (*os.File, error) {
	f, err := os.OpenFile(sesmanLockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(sesmanLockWait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) // #nosec G115 -- a file descriptor fits an int
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s (another test process runs xrdp-sesman): %w", sesmanLockFile, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startSesman starts xrdp-sesman on the port xrdp expects, with a group of
// its own for the accounts and a stand-in window manager.
func startSesman() (_ *sesman, err error) {
	port, err := sesmanPort()
	if err != nil {
		return nil, err
	}
	lock, err := lockSesman()
	if err != nil {
		return nil, err
	}
	s := &sesman{port: port, lock: lock}
	defer func() {
		if err != nil {
			_ = s.close()
		}
	}()
	// xrdp-sesman listens on ::1 when told 127.0.0.1, and xrdp connects
	// there: look on both.
	addrs := []string{net.JoinHostPort("::1", strconv.Itoa(port)), net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	if dialAny(addrs...) {
		return nil, fmt.Errorf("something already listens on xrdp-sesman's port %d (a sesman the harness did not start?)", port)
	}
	// The package's own setup for a session's sockets (/run/xrdp/sockdir,
	// which the session's Xorg, running as the account, writes in); its
	// service unit would run it.
	if _, err := sshdtest.RunTool(nil, "sh", "/usr/share/xrdp/socksetup"); err != nil {
		return nil, fmt.Errorf("xrdp socket directory: %w", err)
	}
	if s.dir, err = os.MkdirTemp("", "rdptest-sesman-"); err != nil {
		return nil, err
	}
	// Sessions run as the accounts: they need to reach the window manager
	// script and their session files, and list nothing.
	for _, d := range []string{s.dir, filepath.Join(s.dir, "sessions")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chmod(d, 0o711); err != nil { // #nosec G302 -- traversable by the session accounts, not listable
			return nil, err
		}
	}
	s.log = filepath.Join(s.dir, "sesman.log")
	s.group = randomName("sptr")
	if _, err := sshdtest.RunTool(nil, "groupadd", s.group); err != nil {
		s.group = ""
		return nil, err
	}
	wm := filepath.Join(s.dir, "startwm.sh")
	if err := os.WriteFile(wm, []byte(s.windowManager()), 0o755); err != nil { // #nosec G306 -- run by the session accounts; holds no secret
		return nil, err
	}
	ini := filepath.Join(s.dir, "sesman.ini")
	if err := os.WriteFile(ini, []byte(s.config(wm)), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command("xrdp-sesman", "-n", "-c", ini) // #nosec G204 -- a fixed program with the harness's own configuration
	cmd.Env = []string{path}
	if s.p, err = start(cmd, filepath.Join(s.dir, "sesman.console")); err != nil {
		return nil, err
	}
	if err := waitDial(startTimeout, s.p.done, addrs...); err != nil {
		return nil, fmt.Errorf("xrdp-sesman on port %d: %w; log:\n%s", port, err, logTail(s.log, 20))
	}
	return s, nil
}

// config is sesman.ini: a new Xorg session per connection (Policy=UBC)
// for members of the harness's group only, the window manager script,
// and Xorg logging to the account's home.
func (s *sesman) config(wm string) string {
	return fmt.Sprintf(`[Globals]
ListenAddress=127.0.0.1
ListenPort=%d
EnableUserWindowManager=false
UserWindowManager=startwm.sh
DefaultWindowManager=%s
ReconnectScript=/etc/xrdp/reconnectwm.sh

[Security]
AllowRootLogin=false
MaxLoginRetry=4
TerminalServerUsers=%s
TerminalServerAdmins=%s
AlwaysGroupCheck=true

[Sessions]
X11DisplayOffset=20
MaxSessions=50
KillDisconnected=true
DisconnectedTimeLimit=0
IdleTimeLimit=0
Policy=UBC

[Logging]
LogFile=%s
LogLevel=INFO
EnableSyslog=false
EnableConsole=false

[Xorg]
param=/usr/lib/xorg/Xorg
param=-config
param=xrdp/xorg.conf
param=-noreset
param=-nolisten
param=tcp
param=-logfile
param=.xorgxrdp.%%s.log

[Chansrv]
FuseMountName=thinclient_drives

[SessionVariables]
`, s.port, wm, s.group, s.group, s.log)
}

// windowManager is the script sesman runs as a session's window manager:
// it notes its PID in the file AddAccount made for the account (only those
// accounts can), then stays up for the account's session length. Its end
// ends the session.
func (s *sesman) windowManager() string {
	return fmt.Sprintf(`#!/bin/sh
f=%s/$(id -un)
echo "session pid=$$ display=$DISPLAY" >>"$f" || exit 1
exec sleep "$(cat "$f.seconds" 2>/dev/null || echo 3)"
`, filepath.Join(s.dir, "sessions"))
}

// sessionFile is where account name's window manager notes its sessions.
func (s *sesman) sessionFile(name string) string {
	return filepath.Join(s.dir, "sessions", name)
}

// endSessions stops the window managers account name noted that still
// run as uid, and waits until they are gone.
func (s *sesman) endSessions(name, uid string) error {
	b, err := os.ReadFile(s.sessionFile(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var pids []int
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[1], "pid=") {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimPrefix(f[1], "pid="))
		if err != nil || pid <= 1 || procUID(pid) != uid {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err == nil {
			pids = append(pids, pid)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for procUID(pid) == uid {
			if time.Now().After(deadline) {
				return fmt.Errorf("session window manager %d of %s still runs 10 s after SIGTERM", pid, name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// procUID is the real UID process pid runs as, "" if it is gone or a
// zombie.
func procUID(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return ""
	}
	uid := ""
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "State":
			if strings.HasPrefix(strings.TrimSpace(v), "Z") {
				return ""
			}
		case "Uid":
			if f := strings.Fields(v); len(f) > 0 {
				uid = f[0]
			}
		}
	}
	return uid
}

// children lists the processes whose parent is pid.
func children(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// close waits for sesman's sessions to end (their accounts' removal ended
// them), stops sesman, removes the group and directory and lets the lock
// go.
func (s *sesman) close() error {
	var errs []error
	if s.p != nil {
		deadline := time.Now().Add(15 * time.Second)
		for !s.p.exited() && len(children(s.p.cmd.Process.Pid)) > 0 {
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("xrdp-sesman still has sessions (processes %v) 15 s after their accounts went", children(s.p.cmd.Process.Pid)))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		errs = append(errs, s.p.stop(10*time.Second))
	}
	if s.group != "" {
		if _, err := sshdtest.RunTool(nil, "groupdel", s.group); err != nil {
			errs = append(errs, err)
		}
	}
	if s.dir != "" {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close()) // closing the last descriptor releases the flock
	}
	return errors.Join(errs...)
}
