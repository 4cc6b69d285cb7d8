package ntlm

import (
	"crypto/md5" // #nosec G501 -- NTLM (MS-NLMP) is built on MD5 and HMAC-MD5; the protocol leaves no choice
	"crypto/rc4" // #nosec G503 -- NTLM session security and key exchange are RC4 (MS-NLMP 3.4); the protocol leaves no choice
	"encoding/binary"
	"hash"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	//lint:ignore SA1019 the NT hash is MD4 of the password (MS-NLMP 3.3.2); the protocol leaves no choice
	"golang.org/x/crypto/md4" // #nosec G506 -- the NT hash is MD4 of the password (MS-NLMP 3.3.2); the protocol leaves no choice
)

// The hashes here are computed so that what they hash does not stay in
// the hash states they allocate: crypto/md5 and x/crypto/md4 keep the
// last partial block of their input in a buffer that Reset does not clear,
// and their chaining state after an HMAC key block is as good as the key.
// scrub overwrites both.

// scrub clears h's buffered input and chaining state, given the number of
// bytes written to it. It relies on how crypto/md5 and x/crypto/md4 buffer
// input (a 64-byte block array, filled from where the last write left off
// and refilled from its start); TestScrubClearsHashState checks that.
func scrub(h hash.Hash, written int) {
	var zero [64]byte
	if n := written % 64; n > 0 {
		h.Write(zero[:64-n]) // completes the block: buffer[n:] zeroed
	}
	h.Write(zero[:63]) // buffer[:63] zeroed
	h.Write(zero[:1])  // buffer[63] zeroed
	h.Reset()          // chaining state back to the constants
}

func newMD5() hash.Hash {
	return md5.New() // #nosec G401 -- MS-NLMP's key derivation and HMAC-MD5 are MD5
}

// md5Sum returns MD5 of the concatenated parts.
func md5Sum(parts ...[]byte) (sum [16]byte) {
	h := newMD5()
	n := 0
	for _, p := range parts {
		h.Write(p)
		n += len(p)
	}
	h.Sum(sum[:0])
	scrub(h, n)
	return sum
}

// hmacMD5 returns HMAC-MD5 (RFC 2104) of the concatenated parts under key,
// which is at most 64 bytes (here always 16). Unlike crypto/hmac it leaves
// no copy of the key, nor of the message, behind.
func hmacMD5(key []byte, parts ...[]byte) (sum [16]byte) {
	if len(key) > 64 {
		panic("ntlm: HMAC-MD5 key longer than a block")
	}
	var pad [64]byte
	copy(pad[:], key)
	for i := range pad {
		pad[i] ^= 0x36
	}
	h := newMD5()
	h.Write(pad[:])
	n := len(pad)
	for _, p := range parts {
		h.Write(p)
		n += len(p)
	}
	var inner [16]byte
	h.Sum(inner[:0])
	scrub(h, n)
	for i := range pad {
		pad[i] ^= 0x36 ^ 0x5c
	}
	h.Write(pad[:])
	h.Write(inner[:])
	h.Sum(sum[:0])
	scrub(h, len(pad)+len(inner))
	clear(pad[:])
	clear(inner[:])
	return sum
}

// passwordUTF16 returns password, UTF-8, in UTF-16LE, in a new slice the
// caller wipes.
func passwordUTF16(password []byte) ([]byte, error) {
	if len(password) == 0 {
		return nil, errorf(ErrUnsupported, "empty password")
	}
	if len(password) > maxPasswordBytes {
		return nil, errorf(ErrMalformed, "password longer than %d bytes", maxPasswordBytes)
	}
	n := 0
	for b := password; len(b) > 0; {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size <= 1 {
			return nil, errorf(ErrMalformed, "password is not valid UTF-8")
		}
		n += 2 * utf16.RuneLen(r)
		b = b[size:]
	}
	out := make([]byte, 0, n)
	for b := password; len(b) > 0; {
		r, size := utf8.DecodeRune(b)
		if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
			out = binary.LittleEndian.AppendUint16(out, uint16(r1)) // #nosec G115 -- a surrogate, below 0xe000
			out = binary.LittleEndian.AppendUint16(out, uint16(r2)) // #nosec G115 -- a surrogate, below 0xe000
		} else {
			out = binary.LittleEndian.AppendUint16(out, uint16(r)) // #nosec G115 -- in the BMP: EncodeRune found no pair
		}
		b = b[size:]
	}
	return out, nil
}

// ntowfv2 is NTOWFv2 (MS-NLMP 3.3.2):
// HMAC_MD5(MD4(UNICODE(password)), UNICODE(Uppercase(user) + domain)).
// The password's UTF-16 form and its NT hash are wiped before it returns.
func ntowfv2(password []byte, user, domain string) ([16]byte, error) {
	pw, err := passwordUTF16(password)
	if err != nil {
		return [16]byte{}, err
	}
	var nt [16]byte
	h := md4.New() // #nosec G406 -- the NT hash is MD4 of the password (MS-NLMP 3.3.2)
	h.Write(pw)
	h.Sum(nt[:0])
	scrub(h, len(pw))
	clear(pw)
	key := hmacMD5(nt[:], encodeName(strings.ToUpper(user)+domain))
	clear(nt[:])
	return key, nil
}

// newRC4 returns RC4 keyed with key.
func newRC4(key []byte) *rc4.Cipher {
	c, err := rc4.NewCipher(key) // #nosec G405 -- NTLM sealing and key exchange are RC4 (MS-NLMP 3.4)
	if err != nil {
		panic("ntlm: " + err.Error()) // never: every key here is 16 bytes
	}
	return c
}

// resetRC4 zeroes c's key schedule.
func resetRC4(c *rc4.Cipher) {
	if c != nil {
		//lint:ignore SA1019 Reset zeroes the key schedule; that nothing else of the key stays in memory is ours to ensure
		c.Reset()
	}
}

// rc4Once returns RC4K(key, data) (MS-NLMP 6: the key exchange).
func rc4Once(key, data []byte) [16]byte {
	var out [16]byte
	c := newRC4(key)
	c.XORKeyStream(out[:], data)
	resetRC4(c)
	return out
}

// FILETIME: 100-nanosecond intervals since 1601-01-01 UTC.
const filetimeUnixSeconds = 11644473600 // from 1601 to 1970

func toFiletime(t time.Time) uint64 {
	secs := t.Unix() + filetimeUnixSeconds
	if secs < 0 {
		return 0
	}
	return uint64(secs)*1e7 + uint64(t.Nanosecond()/100) // #nosec G115 -- secs >= 0, checked above; Nanosecond is in [0, 1e9)
}

func fromFiletime(ft uint64) time.Time {
	secs := int64(ft/1e7) - filetimeUnixSeconds // #nosec G115 -- ft/1e7 < 1<<41
	return time.Unix(secs, int64(ft%1e7)*100).UTC()
}

// channelBindingsHash is the MsvAvChannelBindings value for the
// application data of a gss_channel_bindings_struct (RFC 2744 and MS-NLMP
// 3.1.5.1.2: the flat structure, no addresses, hashed with MD5).
func channelBindingsHash(appData []byte) [16]byte {
	var hdr [20]byte
	binary.LittleEndian.PutUint32(hdr[16:], uint32(len(appData))) // #nosec G115 -- application data is a certificate hash, far below 4 GiB
	return md5Sum(hdr[:], appData)
}
