package e2e

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// The suite's own RFC 6238 generator (SHA-1, 6 digits, 30 s steps), kept
// apart from the product's so that both cannot share a mistake.

const totpPeriod = 30 * time.Second

// totpStep is the RFC 6238 time step that contains at.
func totpStep(at time.Time) uint64 { return uint64(at.Unix()) / uint64(totpPeriod/time.Second) }

// totpCode is the 6-digit code for key at step (RFC 4226 HOTP).
func totpCode(key []byte, step uint64) string {
	return fmt.Sprintf("%06d", hotp(key, step)%1_000_000)
}

// hotp is RFC 4226's dynamic truncation, before the modulo.
func hotp(key []byte, counter uint64) uint32 {
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], counter)
	mac := hmac.New(sha1.New, key)
	mac.Write(msg[:])
	sum := mac.Sum(nil)
	off := sum[len(sum)-1] & 0x0f
	return binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
}

// freshTOTPCode returns the code for the current step, first sleeping into
// the next step when fewer than 5 s of the current one remain, so that the
// code is still current when the gateway checks it.
func freshTOTPCode(key []byte) (code string, step uint64) {
	now := time.Now()
	end := time.Unix(int64(totpStep(now)+1)*int64(totpPeriod/time.Second), 0)
	if end.Sub(now) < 5*time.Second {
		time.Sleep(time.Until(end) + 100*time.Millisecond)
	}
	step = totpStep(time.Now())
	return totpCode(key, step), step
}

// TestTOTPGenerator checks the suite's generator against RFC 6238 Appendix B
// (SHA-1 rows; the RFC prints 8 digits, of which a 6-digit code is the tail).
func TestTOTPGenerator(t *testing.T) {
	key := []byte("12345678901234567890")
	for _, tc := range []struct {
		unix int64
		want string // 8 digits
	}{
		{59, "94287082"},
		{1111111109, "07081804"},
		{1111111111, "14050471"},
		{1234567890, "89005924"},
		{2000000000, "69279037"},
		{20000000000, "65353130"},
	} {
		step := totpStep(time.Unix(tc.unix, 0))
		if got := fmt.Sprintf("%08d", hotp(key, step)%100_000_000); got != tc.want {
			t.Errorf("T=%d: 8-digit code %s, want %s", tc.unix, got, tc.want)
		}
		if got := totpCode(key, step); got != tc.want[2:] {
			t.Errorf("T=%d: code %s, want %s", tc.unix, got, tc.want[2:])
		}
	}
}
