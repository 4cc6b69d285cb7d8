package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
)

// After sessions end, the gateway's memory holds no copy of the target
// password that our code made and did not wipe. The scan reads the whole
// process (/proc/PID/mem, every readable mapping that is not the race
// detector's shadow) and classifies each copy it finds by the bytes just
// before it. Two kinds are known and documented in SECURITY.md, because
// they are made by code we do not own and cannot wipe:
//
//   - x/crypto/ssh's marshalled SSH_MSG_USERAUTH_REQUEST for the password
//     method (the library takes the password as a string and builds the
//     packet in a buffer it drops without wiping);
//   - net/http's and crypto/tls's buffers of the admin API request that
//     stored the secret (base64, inside the JSON body).
//
// Any other copy fails the test.

// memHit is one occurrence of a needle in the process's memory.
type memHit struct {
	needle string
	addr   uint64
	kind   string // a known kind, or "" for unknown
	before []byte // up to 64 bytes before the hit (never the secret itself)
}

// Known kinds of copies.
const (
	copyXCryptoPassword = "x/crypto/ssh password userauth packet"
	copyAPIRequest      = "admin API request body (net/http, crypto/tls buffers)"
)

// classify names the kind of copy at mem[i:] of the needle n.
func classify(mem []byte, i int, n needle, secretLen int) string {
	if n.what == "target password" && i >= 17 {
		// string "password", bool false, string(password): RFC 4252 §8.
		if binary.BigEndian.Uint32(mem[i-4:i]) == uint32(secretLen) && mem[i-5] == 0 &&
			string(mem[i-13:i-5]) == "password" && binary.BigEndian.Uint32(mem[i-17:i-13]) == 8 {
			return copyXCryptoPassword
		}
	}
	if strings.HasSuffix(n.what, "(base64)") {
		// The body `sallyport ctl secret add` sends: {"name":…,"host":…,
		// "port":…,"username":"…","password":"<base64>","host_key":… (or
		// "pin_on_first_use":…). Parts of it may be overwritten in a reused
		// TLS buffer, so either side of the value identifies it. No other
		// JSON in the process holds the target password: a credential reply
		// carries it after the JSON, never in a "password" field.
		before := mem[max(0, i-len(`"password":"`)-4):i]
		end := min(len(mem), i+len(n.b))
		after := mem[end:min(len(mem), end+len(`","pin_on_first_use":`)+4)]
		if bytes.Contains(before, []byte(`"password":"`)) ||
			bytes.Contains(after, []byte(`","host_key":"`)) || bytes.Contains(after, []byte(`","pin_on_first_use":`)) {
			return copyAPIRequest
		}
	}
	return ""
}

type mapping struct {
	start, end uint64
	desc       string
}

// readableMappings lists pid's readable mappings small enough to be real
// memory (the race detector reserves terabytes of shadow).
func readableMappings(pid int) ([]mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[1][0] != 'r' {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		desc := ""
		if len(fields) >= 6 {
			desc = fields[5]
		}
		if end-start > 8<<30 || desc == "[vvar]" || desc == "[vsyscall]" || desc == "[vvar_vclock]" {
			continue
		}
		out = append(out, mapping{start, end, desc})
	}
	return out, sc.Err()
}

// scanMemory searches pid's memory for needles. It returns every hit and
// how many bytes it read.
func scanMemory(pid int, needles []needle, secretLen int) ([]memHit, int64, error) {
	maps, err := readableMappings(pid)
	if err != nil {
		return nil, 0, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, 0, err
	}
	defer mem.Close()
	const chunk = 4 << 20
	overlap := 0
	for _, n := range needles {
		overlap = max(overlap, len(n.b)+32)
	}
	var hits []memHit
	var read int64
	buf := make([]byte, chunk+overlap)
	for _, m := range maps {
		for off := m.start; off < m.end; off += chunk {
			size := min(uint64(len(buf)), m.end-off)
			n, err := mem.ReadAt(buf[:size], int64(off)) // #nosec G115 -- user-space addresses fit
			if err != nil && err != io.EOF && n == 0 {
				continue // unreadable page (guard pages, device mappings)
			}
			read += int64(min(n, chunk))
			data := buf[:n]
			for _, nd := range needles {
				for i := 0; ; {
					j := bytes.Index(data[i:], nd.b)
					if j < 0 {
						break
					}
					at := i + j
					i = at + 1
					if at >= chunk {
						break // in the overlap: the next chunk reports it
					}
					h := memHit{needle: nd.what, addr: off + uint64(at), kind: classify(data, at, nd, secretLen)}
					h.before = append([]byte(nil), data[max(0, at-64):at]...)
					hits = append(hits, h)
				}
			}
		}
	}
	return hits, read, nil
}

// TestDoorNoPasswordLeftInMemory runs sessions with an injected password,
// waits for them to end, and scans the gateway's memory for the password.
func TestDoorNoPasswordLeftInMemory(t *testing.T) {
	g := env.Door(t)
	secret := g.Name("memscan")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{g.Alice.Name}})
	for _, flags := range [][]string{{"-T"}, {"-tt"}} {
		r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Flags: flags, Command: "id -un"})
		if r.Code != 0 || !strings.Contains(r.Stdout, g.target.User) {
			t.Fatalf("session:\n%s", r)
		}
	}
	ended := 0
	g.WaitLog(t, "for both sessions to end", func(line string) bool {
		if strings.Contains(line, `msg="session ended"`) && strings.Contains(line, "secret="+secret) {
			ended++
		}
		return ended >= 2
	})

	pw := []byte(g.target.Password)
	needles := secretNeedles("target password", pw)
	// A marker that must be found proves the scan reads the heap at all.
	needles = append(needles, needle{"marker", []byte(secret)})
	hits, read, err := scanMemory(g.cmd.Process.Pid, needles, len(pw))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	markers := 0
	for _, h := range hits {
		switch {
		case h.needle == "marker":
			markers++
		case h.kind != "":
			kinds[h.kind]++
		default:
			t.Errorf("a copy of the %s at %#x that is none of the known kinds; the bytes before it: %q", h.needle, h.addr, h.before)
		}
	}
	t.Logf("scanned %d MiB of the gateway's memory: %d markers; known copies outside our code: %v", read>>20, markers, kinds)
	if markers == 0 {
		t.Fatal("the scan found not even the secret's name: it does not read the gateway's heap")
	}
}
