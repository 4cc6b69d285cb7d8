package workitem

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func testTask() *Task {
	return &Task{
		Op: TaskChange, Secret: "web01", Rotation: "r1", Host: "10.0.0.5", Port: 22, Username: "root",
		HostKey: []byte("pinned"), Method: MethodPrivileged, Sudo: true, PrivilegedUser: "admin",
		Current:    Secret{Password: []byte("old-password")},
		Candidates: []Secret{{Password: []byte("new-password")}},
		Privileged: &Secret{PrivateKey: []byte("-----BEGIN KEY-----")},
	}
}

func TestTaskRoundTrip(t *testing.T) {
	in := testTask()
	body, err := EncodeTask(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range [][]byte{[]byte("old-password"), []byte("new-password"), []byte("BEGIN KEY")} {
		if i := bytes.IndexByte(body, 0); bytes.Contains(body[:i], s) {
			t.Fatalf("secret %q in the JSON part", s)
		}
	}
	out, err := DecodeTask(body)
	if err != nil {
		t.Fatal(err)
	}
	if string(out.Current.Password) != "old-password" || len(out.Candidates) != 1 ||
		string(out.Candidates[0].Password) != "new-password" || out.Privileged == nil ||
		string(out.Privileged.PrivateKey) != "-----BEGIN KEY-----" || out.PrivilegedUser != "admin" || !out.Sudo ||
		out.Method != MethodPrivileged || out.Rotation != "r1" || string(out.HostKey) != "pinned" {
		t.Fatalf("decoded %+v", *out)
	}
	pw := out.Current.Password
	out.Wipe()
	if !bytes.Equal(pw, make([]byte, len(pw))) || out.Privileged.PrivateKey != nil {
		t.Fatal("Wipe left a secret")
	}

	verify := &Task{Op: TaskVerify, Secret: "web01", Rotation: "r1", Host: "h", Port: 2222, Username: "u", HostKey: []byte("k"),
		Current:    Secret{PrivateKey: []byte("key1")},
		Candidates: []Secret{{PrivateKey: []byte("key2")}, {PrivateKey: []byte("key3")}}}
	body, err = EncodeTask(verify)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeTask(body)
	if err != nil || len(got.Candidates) != 2 || string(got.Candidates[1].PrivateKey) != "key3" {
		t.Fatalf("verify: %v %+v", err, got)
	}
}

func TestTaskRefused(t *testing.T) {
	for name, mutate := range map[string]func(*Task){
		"heartbeat with a candidate": func(t *Task) { t.Op, t.Method, t.Privileged = TaskHeartbeat, "", nil },
		"change without candidate":   func(t *Task) { t.Candidates = nil },
		"unknown method":             func(t *Task) { t.Method = "telepathy" },
		"privileged without login":   func(t *Task) { t.Privileged = nil },
		"self with privileged":       func(t *Task) { t.Method = MethodSelf },
		"no host key":                func(t *Task) { t.HostKey = nil },
		"no rotation":                func(t *Task) { t.Rotation = "" },
		"port 0":                     func(t *Task) { t.Port = 0 },
		"unknown op":                 func(t *Task) { t.Op = "reboot" },
		"two secrets in one":         func(t *Task) { t.Current.PrivateKey = []byte("k") },
		"empty current":              func(t *Task) { t.Current = Secret{} },
		"too many candidates": func(t *Task) {
			t.Op, t.Method, t.Privileged = TaskVerify, "", nil
			for range MaxCandidates + 1 {
				t.Candidates = append(t.Candidates, Secret{Password: []byte("x")})
			}
		},
	} {
		task := testTask()
		mutate(task)
		if _, err := EncodeTask(task); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	good, err := EncodeTask(testTask())
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.IndexByte(good, 0)
	for name, body := range map[string][]byte{
		"no secrets":       good[:i],
		"truncated secret": good[:len(good)-1],
		"trailing byte":    append(bytes.Clone(good), 'x'),
		"zero length":      append(bytes.Clone(good[:i+1]), 0, 0, 0, 0),
		"huge length":      append(bytes.Clone(good[:i+1]), 0xff, 0xff, 0xff, 0xff),
	} {
		if _, err := DecodeTask(body); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestTaskResult(t *testing.T) {
	ok := []byte(`{"task":"t1","op":"change","secret":"web01","rotation":"r1","current":"rejected","candidates":["ok"],"changed":true,"started":1,"finished":2}`)
	r, err := DecodeTaskResult(ok)
	if err != nil || !r.Changed || r.Candidates[0] != OutcomeOK {
		t.Fatalf("%v %+v", err, r)
	}
	for _, bad := range []string{
		`{"task":"t1","op":"change","secret":"web01","current":"maybe"}`,
		`{"task":"t1","op":"dance","secret":"web01"}`,
		`{"op":"verify","secret":"web01"}`,
		`{"task":"t1","op":"verify","secret":"web01","candidates":["ok","sure"]}`,
		`{"task":"t1","op":"verify","secret":"web01","password":"x"}`,
	} {
		if _, err := DecodeTaskResult([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func FuzzDecodeTask(f *testing.F) {
	good, _ := EncodeTask(testTask())
	f.Add(good)
	v := &Task{Op: TaskHeartbeat, Secret: "s", Host: "h", Port: 22, Username: "u", HostKey: []byte("k"), Current: Secret{Password: []byte("p")}}
	hb, _ := EncodeTask(v)
	f.Add(hb)
	f.Fuzz(func(t *testing.T, body []byte) {
		task, err := DecodeTask(body)
		if err != nil {
			return
		}
		again, err := EncodeTask(task)
		if err != nil {
			t.Fatalf("a decoded task does not encode: %v", err)
		}
		if _, err := DecodeTask(again); err != nil {
			t.Fatalf("re-encoded task does not decode: %v", err)
		}
		task.Wipe()
	})
}

func FuzzDecodeTaskResult(f *testing.F) {
	f.Add([]byte(`{"task":"t1","op":"heartbeat","secret":"web01","current":"ok","started":1,"finished":2}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeTaskResult(body)
		if err == nil && (r.Task == "" || len(r.Detail) > MaxDetail) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func TestReplayForget(t *testing.T) {
	c := NewReplayCache(10, nil)
	exp := time.Now().Add(time.Minute)
	if !c.Take("a", exp) || c.Take("a", exp) {
		t.Fatal("Take")
	}
	c.Forget("a")
	if !c.Take("a", exp) {
		t.Fatal("a forgotten id was refused")
	}
}
