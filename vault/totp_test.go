package vault

import (
	"context"
	"encoding/base32"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// RFC 6238 appendix B, SHA-1 rows: the seed is the ASCII "12345678901234567890".
func TestHOTPRFC6238Vectors(t *testing.T) {
	seed := []byte("12345678901234567890")
	tests := []struct {
		unix int64
		want string
	}{
		{59, "94287082"},
		{1111111109, "07081804"},
		{1111111111, "14050471"},
		{1234567890, "89005924"},
		{2000000000, "69279037"},
		{20000000000, "65353130"},
	}
	for _, tt := range tests {
		step := totpStep(time.Unix(tt.unix, 0))
		if got := string(hotp(seed, uint64(step), 8)); got != tt.want {
			t.Errorf("T=%d: got %s, want %s", tt.unix, got, tt.want)
		}
		// Six digits are the low six of the eight.
		if got := string(hotp(seed, uint64(step), 6)); got != tt.want[2:] {
			t.Errorf("T=%d (6 digits): got %s, want %s", tt.unix, got, tt.want[2:])
		}
		if s, ok := matchTOTP(seed, tt.want[2:], time.Unix(tt.unix, 0)); !ok || s != step {
			t.Errorf("T=%d: matchTOTP = %d, %v; want %d, true", tt.unix, s, ok, step)
		}
	}
}

func TestMatchTOTPWindow(t *testing.T) {
	seed := []byte("12345678901234567890")
	now := time.Unix(1234567890, 0)
	cur := totpStep(now)
	for _, tt := range []struct {
		delta int64
		ok    bool
	}{{-2, false}, {-1, true}, {0, true}, {1, true}, {2, false}} {
		code := string(hotp(seed, uint64(cur+tt.delta), 6))
		step, ok := matchTOTP(seed, code, now)
		if ok != tt.ok || (ok && step != cur+tt.delta) {
			t.Errorf("step %+d: got %d, %v", tt.delta, step, ok)
		}
	}
	for _, bad := range []string{"", "12345", "1234567", "12345a", " 12345", "１２３４５６", "-12345"} {
		if _, ok := matchTOTP(seed, bad, now); ok {
			t.Errorf("code %q accepted", bad)
		}
	}
}

// FuzzTOTPCode: any string that is not exactly six ASCII digits is refused
// without a panic, and only the code of a step in the window is accepted.
func FuzzTOTPCode(f *testing.F) {
	for _, s := range []string{"287082", "000000", "12345", "1234567", "abcdef", "２８７０８２"} {
		f.Add(s, int64(59))
	}
	seed := []byte("12345678901234567890")
	f.Fuzz(func(t *testing.T, code string, unix int64) {
		if unix < 0 || unix > 1<<40 {
			return
		}
		now := time.Unix(unix, 0)
		step, ok := matchTOTP(seed, code, now)
		if !ok {
			return
		}
		if !validTOTPCode(code) {
			t.Fatalf("malformed code %q accepted", code)
		}
		cur := totpStep(now)
		if step < cur-1 || step > cur+1 || string(hotp(seed, uint64(step), 6)) != code {
			t.Fatalf("code %q accepted for step %d at %d", code, step, cur)
		}
	})
}

func TestProvisioningURI(t *testing.T) {
	seed := []byte("12345678901234567890")
	uri := provisioningURI("alice@corp.example", seed)
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "otpauth" || u.Host != "totp" {
		t.Fatalf("bad URI %q", uri)
	}
	if u.Path != "/Sallyport:alice@corp.example" {
		t.Errorf("label %q", u.Path)
	}
	q := u.Query()
	for k, want := range map[string]string{"issuer": "Sallyport", "algorithm": "SHA1", "digits": "6", "period": "30"} {
		if q.Get(k) != want {
			t.Errorf("%s=%q, want %q", k, q.Get(k), want)
		}
	}
	got, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(q.Get("secret"))
	if err != nil || string(got) != string(seed) || strings.Contains(q.Get("secret"), "=") {
		t.Errorf("secret %q does not decode to the seed", q.Get("secret"))
	}
	if strings.Contains(provisioningURI("a/b?c", seed), "a/b?c") {
		t.Error("user name not escaped in the label")
	}
}

// seedFromURI extracts the seed from an otpauth:// URI.
func seedFromURI(t *testing.T, uri string) []byte {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(u.Query().Get("secret"))
	if err != nil || len(seed) != totpSeedLen {
		t.Fatalf("bad seed in %q", uri)
	}
	return seed
}

func TestVerifyTOTP(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	v := newTestVault(t, WithClock(clk.now))
	ctx := context.Background()
	uri, err := v.AddUser(ctx, UserSpec{Name: "dave", Password: []byte("dave-password"), TOTP: true})
	if err != nil {
		t.Fatal(err)
	}
	if uri == "" {
		t.Fatal("no otpauth URI with TOTP")
	}
	seed := seedFromURI(t, uri)
	if totp, _, err := v.VerifyPassword(ctx, "dave", []byte("dave-password")); err != nil || !totp {
		t.Fatalf("VerifyPassword = %v, %v; want totp=true", totp, err)
	}
	code := func(at time.Time) string { return string(hotp(seed, uint64(totpStep(at)), 6)) }
	now := clk.now()

	steps := []struct {
		name string
		code string
		want error
	}{
		{"current code", code(now), nil},
		{"replayed", code(now), ErrDenied},
		{"older step", code(now.Add(-30 * time.Second)), ErrDenied},
		{"next step", code(now.Add(30 * time.Second)), nil},
		{"next step again", code(now.Add(30 * time.Second)), ErrDenied},
		{"too far ahead", code(now.Add(90 * time.Second)), ErrDenied},
		{"malformed", "12a456", ErrDenied},
		{"wrong", wrongCode(code(now.Add(60 * time.Second))), ErrDenied},
	}
	for _, st := range steps {
		if err := v.VerifyTOTP(ctx, "dave", st.code); err != st.want { //nolint:errorlint // exact value
			t.Fatalf("%s: got %v, want %v", st.name, err, st.want)
		}
	}
	clk.set(now.Add(60 * time.Second))
	if err := v.VerifyTOTP(ctx, "dave", code(clk.now())); err != nil {
		t.Fatalf("a later step was refused: %v", err)
	}
	for _, user := range []string{"nobody", "a b"} {
		if err := v.VerifyTOTP(ctx, user, code(clk.now())); err != ErrDenied { //nolint:errorlint // exact value
			t.Fatalf("unknown user %q: %v", user, err)
		}
	}
	// A user without TOTP has no code to pass.
	if _, err := v.AddUser(ctx, UserSpec{Name: "erin", Password: []byte("erin-password")}); err != nil {
		t.Fatal(err)
	}
	if err := v.VerifyTOTP(ctx, "erin", "123456"); err != ErrDenied { //nolint:errorlint // exact value
		t.Fatalf("user without TOTP: %v", err)
	}
}

func wrongCode(c string) string {
	b := []byte(c)
	b[0] = '0' + (b[0]-'0'+1)%10
	return string(b)
}

// TestVerifyTOTPConcurrentReplay races the same code: exactly one wins.
func TestVerifyTOTPConcurrentReplay(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	v := newTestVault(t, WithClock(clk.now))
	ctx := context.Background()
	uri, err := v.AddUser(ctx, UserSpec{Name: "frank", Password: []byte("frank-password"), TOTP: true})
	if err != nil {
		t.Fatal(err)
	}
	code := string(hotp(seedFromURI(t, uri), uint64(totpStep(clk.now())), 6))
	var wg sync.WaitGroup
	results := make(chan error, 8)
	for range 8 {
		wg.Go(func() { results <- v.VerifyTOTP(ctx, "frank", code) })
	}
	wg.Wait()
	close(results)
	ok := 0
	for err := range results {
		switch err {
		case nil:
			ok++
		case ErrDenied:
		default:
			t.Errorf("unexpected error %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent uses of one code succeeded, want 1", ok)
	}
}
