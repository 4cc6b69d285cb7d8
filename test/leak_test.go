package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A credential the gateway injects must never leave the vault in the clear:
// not in the gateway's output, not in any ctl output or client output, not in
// any file under the data dir, not in the process's argv. The scan runs once
// at the end of the suite, after every test had its chance to leak.

// needle is one encoding of a secret to look for.
type needle struct {
	what string // "target password (base64)": never the secret itself
	b    []byte
}

// secretNeedles returns secret raw, in hex, and in every base64 alignment
// (the characters that depend on the secret alone), standard and URL-safe.
func secretNeedles(what string, secret []byte) []needle {
	n := []needle{
		{what, secret},
		{what + " (hex)", []byte(hex.EncodeToString(secret))},
		{what + " (HEX)", []byte(strings.ToUpper(hex.EncodeToString(secret)))},
	}
	for k := 0; k < 3; k++ {
		in := append(make([]byte, k), secret...)
		start := (8*k + 5) / 6
		end := 8 * (k + len(secret)) / 6
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			s := enc.EncodeToString(in)
			if end-start >= 8 {
				n = append(n, needle{what + " (base64)", []byte(s[start:end])})
			}
		}
	}
	return n
}

// privateKeyNeedles returns what identifies an unencrypted OpenSSH ed25519
// private key: the lines of its PEM body that carry private bytes (the first
// two carry only the header and the public key) and the private seed itself
// in every encoding.
func privateKeyNeedles(pem []byte) ([]needle, error) {
	var body []string
	for _, line := range strings.Split(string(pem), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "-----") {
			body = append(body, line)
		}
	}
	if len(body) < 4 {
		return nil, fmt.Errorf("private key PEM body has %d lines", len(body))
	}
	var n []needle
	for _, line := range body[2 : len(body)-1] {
		n = append(n, needle{"target private key (PEM body line)", []byte(line)})
	}
	raw, err := base64.StdEncoding.DecodeString(strings.Join(body, ""))
	if err != nil {
		return nil, fmt.Errorf("private key PEM body: %w", err)
	}
	seed, err := ed25519Seed(raw)
	if err != nil {
		return nil, err
	}
	return append(n, secretNeedles("target private key seed", seed)...), nil
}

// ed25519Seed extracts the 32-byte private seed from an unencrypted
// openssh-key-v1 blob (PROTOCOL.key in OpenSSH).
func ed25519Seed(b []byte) ([]byte, error) {
	const magic = "openssh-key-v1\x00"
	if !bytes.HasPrefix(b, []byte(magic)) {
		return nil, errors.New("not an openssh-key-v1 private key")
	}
	b = b[len(magic):]
	str := func() []byte {
		if len(b) < 4 {
			b = nil
			return nil
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(len(b)-4) < uint64(n) {
			b = nil
			return nil
		}
		s := b[4 : 4+n]
		b = b[4+n:]
		return s
	}
	if c := string(str()); c != "none" {
		return nil, fmt.Errorf("private key is encrypted (%q)", c)
	}
	str() // kdf name
	str() // kdf options
	if len(b) < 4 || binary.BigEndian.Uint32(b) != 1 {
		return nil, errors.New("private key file does not hold exactly one key")
	}
	b = b[4:]
	str()           // public key
	b = str()       // private section
	if len(b) < 8 { // two check ints
		return nil, errors.New("private section too short")
	}
	b = b[8:]
	if kt := string(str()); kt != "ssh-ed25519" {
		return nil, fmt.Errorf("key type %q, want ssh-ed25519", kt)
	}
	str() // public key
	priv := str()
	if len(priv) != 64 {
		return nil, fmt.Errorf("ed25519 private part is %d bytes, want 64", len(priv))
	}
	return priv[:32], nil
}

// findNeedles reports which needles occur in data, naming where.
func findNeedles(where string, data []byte, needles []needle) []string {
	var found []string
	for _, n := range needles {
		if i := bytes.Index(data, n.b); i >= 0 {
			found = append(found, fmt.Sprintf("%s found in plaintext in %s at byte %d", n.what, where, i))
		}
	}
	return found
}

// finalChecks scans for leaked credentials, stops the gateway and checks its
// output for data races and panics. It returns every problem found. extra
// adds needles for secrets only this gateway saw (RADIUS passwords, shared
// secrets).
func (g *gateway) finalChecks(target *sshdTarget, extra ...needle) []string {
	needles, problems := g.needles(target, extra...)
	problems = append(problems, g.proc.finalChecks(needles)...)
	problems = append(problems, g.rateLimitedSources(g.Log())...)
	problems = append(problems, g.scanTranscripts(needles)...)
	problems = append(problems, scanTree(g.dataDir, needles)...)
	return problems
}

// needles are the secrets the leak scan looks for: the target's password
// and key, the gateway users' passwords, and extra.
func (g *gateway) needles(target *sshdTarget, extra ...needle) ([]needle, []string) {
	var problems []string
	needles := append(secretNeedles("target password", []byte(target.Password)), extra...)
	keyNeedles, err := privateKeyNeedles(target.ClientKeyPEM)
	if err != nil {
		problems = append(problems, fmt.Sprintf("leak scan: %v", err))
	}
	needles = append(needles, keyNeedles...)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.gwPasswords {
		needles = append(needles, needle{"a gateway user's password", []byte(p)})
	}
	needles = append(needles, g.moreNeedles...)
	return needles, problems
}

// scanTranscripts looks for needles in every ctl and client output.
func (g *gateway) scanTranscripts(needles []needle) []string {
	g.mu.Lock()
	transcripts := append([]string(nil), g.transcripts...)
	g.mu.Unlock()
	var problems []string
	for _, tr := range transcripts {
		cmd, _, _ := strings.Cut(tr, "\n")
		problems = append(problems, findNeedles("the output of `"+cmd+"`", []byte(tr), needles)...)
	}
	fmt.Fprintf(os.Stderr, "e2e: leak scan: %d needles over %d command outputs\n", len(needles), len(transcripts))
	return problems
}

// finalChecks scans the process's argv while it runs, stops it, and checks
// its output for needles, data races and panics.
func (p *proc) finalChecks(needles []needle) []string {
	var problems []string
	if p.exited() == nil {
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/cmdline")
		if err != nil {
			problems = append(problems, fmt.Sprintf("leak scan: read %s cmdline: %v", p.name, err))
		}
		problems = append(problems, findNeedles("/proc/<"+p.name+" pid>/cmdline", cmdline, needles)...)
	} else {
		problems = append(problems, fmt.Sprintf("%s was not running at the end (%v)", p.name, p.exited()))
	}
	if err := p.stop(); err != nil {
		problems = append(problems, fmt.Sprintf("stopping %s: %v", p.name, err))
	} else if p.waitErr != nil {
		// Exit status 66 is the race detector's.
		problems = append(problems, fmt.Sprintf("%s did not exit cleanly on SIGTERM: %v", p.name, p.waitErr))
	}
	problems = append(problems, p.crashProblems()...)
	log := p.Log()
	problems = append(problems, findNeedles(p.name+" stdout/stderr", log, needles)...)
	fmt.Fprintf(os.Stderr, "e2e: leak scan: %d needles over the %s log (%d bytes) and its cmdline\n", len(needles), p.name, len(log))
	return problems
}

// scanTree looks for needles in every regular file under dir.
func scanTree(dir string, needles []needle) []string {
	var problems []string
	files, scanned := 0, 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		scanned += len(b)
		problems = append(problems, findNeedles(path, b, needles)...)
		return nil
	})
	if err != nil {
		problems = append(problems, fmt.Sprintf("leak scan of %s: %v", dir, err))
	}
	if files == 0 {
		problems = append(problems, fmt.Sprintf("leak scan: no files under %s: the daemon keeps its data elsewhere?", dir))
	}
	fmt.Fprintf(os.Stderr, "e2e: leak scan: %d needles over %d files (%d bytes) under %s\n", len(needles), files, scanned, dir)
	return problems
}

// TestLeakNeedles checks that the scan would see a secret however it was
// stored, so that a clean scan means something.
func TestLeakNeedles(t *testing.T) {
	secret := []byte("Tgt-abcdefghijklmnopqrstuvwx-9x")
	needles := secretNeedles("s", secret)
	for _, hay := range [][]byte{
		append([]byte("xx"), secret...),
		[]byte(`{"p":"` + base64.StdEncoding.EncodeToString(secret) + `"}`),
		[]byte(base64.StdEncoding.EncodeToString(append([]byte("a"), secret...))),
		[]byte(base64.URLEncoding.EncodeToString(append([]byte("ab"), secret...))),
		[]byte("v=" + hex.EncodeToString(secret)),
	} {
		if len(findNeedles("hay", hay, needles)) == 0 {
			t.Errorf("no needle found in %q", hay)
		}
	}
	if got := findNeedles("hay", []byte("nothing here"), needles); len(got) != 0 {
		t.Errorf("false positive: %v", got)
	}
}
