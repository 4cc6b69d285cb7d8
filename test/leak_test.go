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
	var problems []string
	needles := append(secretNeedles("target password", []byte(target.Password)), extra...)
	keyNeedles, err := privateKeyNeedles(target.ClientKeyPEM)
	if err != nil {
		problems = append(problems, fmt.Sprintf("leak scan: %v", err))
	}
	needles = append(needles, keyNeedles...)
	g.mu.Lock()
	for _, p := range g.gwPasswords {
		needles = append(needles, needle{"a gateway user's password", []byte(p)})
	}
	transcripts := append([]string(nil), g.transcripts...)
	g.mu.Unlock()

	// The process's own argv, while it still runs.
	if g.exited() == nil {
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(g.cmd.Process.Pid) + "/cmdline")
		if err != nil {
			problems = append(problems, fmt.Sprintf("leak scan: read sallyport cmdline: %v", err))
		}
		problems = append(problems, findNeedles("/proc/<sallyport pid>/cmdline", cmdline, needles)...)
	} else {
		problems = append(problems, fmt.Sprintf("sallyport dev was not running at the end of the suite (%v)", g.exited()))
	}

	if err := g.stop(); err != nil {
		problems = append(problems, fmt.Sprintf("stopping sallyport dev: %v", err))
	} else if g.waitErr != nil {
		// Exit status 66 is the race detector's.
		problems = append(problems, fmt.Sprintf("sallyport dev did not exit cleanly on SIGTERM: %v", g.waitErr))
	}
	log := g.Log()
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if bytes.Contains(log, []byte(bad)) {
			problems = append(problems, fmt.Sprintf("sallyport output contains %q (see %s)", bad, filepath.Join(g.dir, "sallyport.log")))
		}
	}

	problems = append(problems, g.rateLimitedSources(log)...)
	problems = append(problems, findNeedles("sallyport stdout/stderr", log, needles)...)
	for _, tr := range transcripts {
		cmd, _, _ := strings.Cut(tr, "\n")
		problems = append(problems, findNeedles("the output of `"+cmd+"`", []byte(tr), needles)...)
	}
	files, scanned := 0, 0
	err = filepath.WalkDir(g.dataDir, func(path string, d fs.DirEntry, err error) error {
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
		problems = append(problems, fmt.Sprintf("leak scan of %s: %v", g.dataDir, err))
	}
	if files == 0 {
		problems = append(problems, fmt.Sprintf("leak scan: no files under %s: the vault keeps its data elsewhere?", g.dataDir))
	}
	fmt.Fprintf(os.Stderr, "e2e: leak scan: %d needles over the sallyport log (%d bytes), %d command outputs, %d files (%d bytes) under the data dir, and the process's cmdline\n",
		len(needles), len(log), len(transcripts), files, scanned)
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
