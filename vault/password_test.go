package vault

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPHCRoundTrip(t *testing.T) {
	h, err := newPHC([]byte("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	s := h.encode()
	if !strings.HasPrefix(s, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("PHC string %q does not carry the expected parameters", s)
	}
	parsed, err := parsePHC(s)
	if err != nil {
		t.Fatalf("parse own output: %v", err)
	}
	if parsed.encode() != s {
		t.Fatalf("round trip changed %q into %q", s, parsed.encode())
	}
	if !parsed.match([]byte("correct horse")) {
		t.Error("right password does not match")
	}
	if parsed.match([]byte("correct horsf")) {
		t.Error("wrong password matches")
	}
}

func TestParsePHCRejects(t *testing.T) {
	const salt = "c2FsdHNhbHRzYWx0c2FsdA"                     // 16 bytes
	const key = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U" // 32 bytes
	good := "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$" + key
	if _, err := parsePHC(good); err != nil {
		t.Fatalf("good string refused: %v", err)
	}
	tests := map[string]string{
		"empty":             "",
		"argon2i":           "$argon2i$v=19$m=19456,t=2,p=1$" + salt + "$" + key,
		"old version":       "$argon2id$v=16$m=19456,t=2,p=1$" + salt + "$" + key,
		"huge memory":       "$argon2id$v=19$m=4194304,t=2,p=1$" + salt + "$" + key,
		"huge time":         "$argon2id$v=19$m=19456,t=1000,p=1$" + salt + "$" + key,
		"many threads":      "$argon2id$v=19$m=19456,t=2,p=255$" + salt + "$" + key,
		"zero time":         "$argon2id$v=19$m=19456,t=0,p=1$" + salt + "$" + key,
		"leading zero":      "$argon2id$v=19$m=019456,t=2,p=1$" + salt + "$" + key,
		"plus sign":         "$argon2id$v=19$m=+19456,t=2,p=1$" + salt + "$" + key,
		"overflow":          "$argon2id$v=19$m=99999999999,t=2,p=1$" + salt + "$" + key,
		"memory < 8p":       "$argon2id$v=19$m=8,t=2,p=2$" + salt + "$" + key,
		"reordered":         "$argon2id$v=19$t=2,m=19456,p=1$" + salt + "$" + key,
		"missing param":     "$argon2id$v=19$m=19456,t=2$" + salt + "$" + key,
		"padded salt":       "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "==$" + key,
		"short salt":        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$" + key,
		"short key":         "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$a2V5",
		"bad base64":        "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$" + key[:len(key)-1] + "!",
		"trailing field":    good + "$x",
		"no leading dollar": good[1:],
		"too long":          good + strings.Repeat("A", 300),
	}
	for name, s := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := parsePHC(s); !errors.Is(err, errBadPHC) {
				t.Fatalf("parsePHC accepted %q (err %v)", s, err)
			}
		})
	}
}

// FuzzParsePHC: the parser never panics, never accepts parameters outside
// its bounds, and whatever it accepts re-encodes to the very same string.
func FuzzParsePHC(f *testing.F) {
	f.Add("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U")
	f.Add("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5")
	f.Add("$argon2id$v=19$m=,t=,p=$$")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parsePHC(s)
		if err != nil {
			return
		}
		if h.memory > maxArgonMemory || h.time > maxArgonTime || h.threads > maxArgonThreads ||
			h.memory < 8*uint32(h.threads) || h.time == 0 || h.threads == 0 ||
			len(h.salt) < minArgonSalt || len(h.salt) > maxArgonSalt || len(h.key) < minArgonKey || len(h.key) > maxArgonKey {
			t.Fatalf("out-of-bounds parameters accepted: %q", s)
		}
		if h.encode() != s {
			t.Fatalf("non-canonical string accepted: %q re-encodes as %q", s, h.encode())
		}
	})
}

func TestVerifyPassword(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	if _, err := v.AddUser(ctx, UserSpec{Name: "alice@corp.example", Password: []byte("s3cret-pass"), Groups: []string{"ops", "dba", "ops"}}); err != nil {
		t.Fatal(err)
	}
	totp, groups, err := v.VerifyPassword(ctx, "alice@corp.example", []byte("s3cret-pass"))
	if err != nil || totp || strings.Join(groups, ",") != "dba,ops" {
		t.Fatalf("VerifyPassword(right) = %v, %v, %v", totp, groups, err)
	}
	tests := map[string]struct {
		user, password string
	}{
		"wrong password":    {"alice@corp.example", "s3cret-pasS"},
		"unknown user":      {"mallory", "s3cret-pass"},
		"invalid user name": {"a b", "s3cret-pass"},
		"empty password":    {"alice@corp.example", ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, err := v.VerifyPassword(ctx, tt.user, []byte(tt.password))
			if err != ErrDenied { //nolint:errorlint // the very same error value, whatever the cause
				t.Fatalf("got %v, want exactly ErrDenied", err)
			}
		})
	}
}

// TestVerifyPasswordTiming checks that an unknown user costs an argon2id
// computation just like a wrong password does.
func TestVerifyPasswordTiming(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	if _, err := v.AddUser(ctx, UserSpec{Name: "bob", Password: []byte("bob-password")}); err != nil {
		t.Fatal(err)
	}
	measure := func(user string) time.Duration {
		best := time.Duration(1 << 62)
		for range 3 {
			start := time.Now()
			_, _, _ = v.VerifyPassword(ctx, user, []byte("not-the-password"))
			best = min(best, time.Since(start))
		}
		return best
	}
	known, unknown := measure("bob"), measure("nobody")
	if unknown < known/2 {
		t.Fatalf("unknown user took %v, known user %v: unknown users skip the hash", unknown, known)
	}
}

func TestHashSemaphoreHonoursContext(t *testing.T) {
	v := newTestVault(t)
	for range cap(v.hashSem) {
		v.hashSem <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, _, err := v.VerifyPassword(ctx, "anyone", []byte("password1"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with every slot taken, got %v, want the context's error", err)
	}
	if errors.Is(err, ErrDenied) {
		t.Fatal("a timeout must not look like a denial")
	}
}

func TestTamperedHashFailsClosed(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	if _, err := v.AddUser(ctx, UserSpec{Name: "carol", Password: []byte("carol-password")}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.db.Exec(`UPDATE users SET password_hash = '$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U' WHERE name = 'carol'`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.VerifyPassword(ctx, "carol", []byte("carol-password")); err == nil {
		t.Fatal("a hash with a 4 GiB memory parameter was used")
	}
}
