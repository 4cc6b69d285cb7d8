package vault

import (
	"crypto/hmac"
	"crypto/sha1" // #nosec G505 -- RFC 6238 TOTP with SHA-1 is what authenticator apps implement; HMAC-SHA-1 is not broken
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"net/url"
	"time"
)

// TOTP parameters (RFC 6238 defaults, which every authenticator app supports).
const (
	totpSeedLen = 20 // bytes, the HMAC-SHA-1 block-friendly size RFC 4226 recommends
	totpDigits  = 6
	totpPeriod  = 30 // seconds
	totpSkew    = 1  // steps accepted either side of now
	totpIssuer  = "Sallyport"
)

// totpStep returns the RFC 6238 time step containing t.
func totpStep(t time.Time) int64 {
	return t.Unix() / totpPeriod
}

// hotp computes the RFC 4226 value for counter, as digits decimal digits
// (leading zeros kept), into a fresh slice.
func hotp(seed []byte, counter uint64, digits int) []byte {
	mac := hmac.New(sha1.New, seed)
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], counter)
	mac.Write(msg[:])
	sum := mac.Sum(nil)
	defer clear(sum)
	off := sum[len(sum)-1] & 0x0f
	bin := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	out := make([]byte, digits)
	for i := digits - 1; i >= 0; i-- {
		out[i] = byte('0' + bin%10)
		bin /= 10
	}
	return out
}

// validTOTPCode reports whether code is exactly six ASCII digits.
func validTOTPCode(code string) bool {
	if len(code) != totpDigits {
		return false
	}
	for i := 0; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			return false
		}
	}
	return true
}

// matchTOTP returns the latest step in [now-skew, now+skew] whose code
// equals code, or ok=false. Every candidate is computed and compared in
// constant time, so timing does not reveal which step (if any) matched.
func matchTOTP(seed []byte, code string, now time.Time) (step int64, ok bool) {
	if !validTOTPCode(code) {
		return 0, false
	}
	cur := totpStep(now)
	found := 0
	for s := cur - totpSkew; s <= cur+totpSkew; s++ {
		if s < 0 {
			continue
		}
		want := hotp(seed, uint64(s), totpDigits) // #nosec G115 -- s ≥ 0
		eq := subtle.ConstantTimeCompare(want, []byte(code))
		clear(want)
		// Later steps win; selection without a data-dependent branch.
		step = int64(subtle.ConstantTimeSelect(eq, int(s), int(step)))
		found |= eq
	}
	return step, found == 1
}

// provisioningURI is the otpauth:// URI authenticator apps scan.
func provisioningURI(user string, seed []byte) string {
	secret := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(seed)
	return "otpauth://totp/" + totpIssuer + ":" + url.PathEscape(user) +
		"?secret=" + secret + "&issuer=" + totpIssuer + "&algorithm=SHA1&digits=6&period=30"
}
