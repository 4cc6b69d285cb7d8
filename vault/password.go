package vault

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// argon2id parameters for new hashes (OWASP's recommended minimum).
const (
	argonMemory  = 19456 // KiB
	argonTime    = 2
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32
)

// Bounds on the parameters accepted from a stored hash, so that a tampered
// database cannot make verification allocate gigabytes or spin for minutes.
const (
	maxArgonMemory  = 256 * 1024 // KiB (256 MiB)
	maxArgonTime    = 16
	maxArgonThreads = 8
	minArgonSalt    = 8
	maxArgonSalt    = 64
	minArgonKey     = 16
	maxArgonKey     = 64
	maxPHCLen       = 256
)

// Gateway-user password length bounds, in bytes.
const (
	minPassword = 8
	maxPassword = 1024
)

// phc is a parsed argon2id PHC string.
type phc struct {
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

var errBadPHC = errors.New("vault: stored password hash is malformed")

// newPHC hashes password with the default parameters and a fresh salt.
func newPHC(password []byte) (phc, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return phc{}, fmt.Errorf("vault: %w", err)
	}
	key := argon2.IDKey(password, salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return phc{memory: argonMemory, time: argonTime, threads: argonThreads, salt: salt, key: key}, nil
}

// derive runs argon2id on password with h's parameters, salt and key length.
func (h phc) derive(password []byte) []byte {
	return argon2.IDKey(password, h.salt, h.time, h.memory, h.threads, uint32(len(h.key))) // #nosec G115 -- len(h.key) ≤ maxArgonKey
}

// match reports, in constant time, whether password hashes to h.key.
func (h phc) match(password []byte) bool {
	got := h.derive(password)
	defer clear(got)
	return subtle.ConstantTimeCompare(got, h.key) == 1
}

// encode encodes h as $argon2id$v=19$m=M,t=T,p=P$SALT$KEY (unpadded
// standard base64, as the PHC format specifies). It is not String: a hash
// in a log line could be attacked offline.
func (h phc) encode() string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, h.memory, h.time, h.threads,
		base64.RawStdEncoding.EncodeToString(h.salt), base64.RawStdEncoding.EncodeToString(h.key))
}

// String redacts the salt and the hash.
func (h phc) String() string {
	return fmt.Sprintf("argon2id{m=%d,t=%d,p=%d [REDACTED]}", h.memory, h.time, h.threads)
}

// GoString redacts the salt and the hash under %#v.
func (h phc) GoString() string { return h.String() }

// LogValue redacts the salt and the hash in slog records.
func (h phc) LogValue() slog.Value { return slog.StringValue(h.String()) }

// parsePHC strictly parses an argon2id PHC string: exactly the layout
// encode writes, canonical decimal numbers, parameters within bounds.
func parsePHC(s string) (phc, error) {
	if len(s) > maxPHCLen {
		return phc{}, errBadPHC
	}
	parts := strings.Split(s, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != "v=19" {
		return phc{}, errBadPHC
	}
	params := strings.Split(parts[3], ",")
	if len(params) != 3 {
		return phc{}, errBadPHC
	}
	m, ok1 := phcParam(params[0], "m=", maxArgonMemory)
	t, ok2 := phcParam(params[1], "t=", maxArgonTime)
	p, ok3 := phcParam(params[2], "p=", maxArgonThreads)
	if !ok1 || !ok2 || !ok3 || m < 8*p {
		return phc{}, errBadPHC
	}
	salt, err := decodeB64(parts[4])
	if err != nil || len(salt) < minArgonSalt || len(salt) > maxArgonSalt {
		return phc{}, errBadPHC
	}
	key, err := decodeB64(parts[5])
	if err != nil || len(key) < minArgonKey || len(key) > maxArgonKey {
		return phc{}, errBadPHC
	}
	return phc{memory: m, time: t, threads: uint8(p), salt: salt, key: key}, nil // #nosec G115 -- p ≤ maxArgonThreads
}

// decodeB64 decodes unpadded standard base64 and nothing else: Go's decoder
// skips '\r' and '\n' even in strict mode, which would let two different
// strings stand for one hash.
func decodeB64(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errBadPHC
	}
	return base64.RawStdEncoding.Strict().DecodeString(s)
}

// phcParam parses "k=N" where N is a canonical decimal in 1..max.
func phcParam(s, prefix string, max uint32) (uint32, bool) {
	num, ok := strings.CutPrefix(s, prefix)
	if !ok || len(num) == 0 || len(num) > 10 || num[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil || n == 0 || n > uint64(max) {
		return 0, false
	}
	return uint32(n), true
}

// acquireHash waits for a slot to run argon2id, or for ctx to end.
func (v *Vault) acquireHash(ctx context.Context) (release func(), err error) {
	select {
	case v.hashSem <- struct{}{}:
		return func() { <-v.hashSem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// hashPassword returns the PHC string for password, within the hash bound.
func (v *Vault) hashPassword(ctx context.Context, password []byte) (string, error) {
	release, err := v.acquireHash(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	h, err := newPHC(password)
	if err != nil {
		return "", err
	}
	return h.encode(), nil
}

// checkPassword verifies password against h within the hash bound.
func (v *Vault) checkPassword(ctx context.Context, h phc, password []byte) (bool, error) {
	release, err := v.acquireHash(ctx)
	if err != nil {
		return false, err
	}
	defer release()
	return h.match(password), nil
}
