package enroll

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Headers of a signed callback request.
const (
	HeaderEngine    = "Sallyport-Engine"
	HeaderTime      = "Sallyport-Time" // unix milliseconds
	HeaderNonce     = "Sallyport-Nonce"
	HeaderSignature = "Sallyport-Signature"
)

// MaxSkew is how far a signed request's time may be from the vault's
// clock; the vault remembers nonces for twice as long, so a request can be
// replayed neither late nor within its window.
const MaxSkew = time.Minute

const signContext = "sallyport-callback-v1"

// signingInput is what an engine signs: the context, the engine id, the
// method, the path with its query, the time, the nonce and the SHA-256 of
// the body, one per line.
func signingInput(engine, method, pathQuery string, ms int64, nonce string, body []byte) []byte {
	sum := sha256.Sum256(body)
	s := fmt.Sprintf("%s\n%s\n%s\n%s\n%d\n%s\n%x", signContext, engine, method, pathQuery, ms, nonce, sum)
	d := sha256.Sum256([]byte(s))
	return d[:]
}

// Sign adds the signature headers to req, whose body is body, as engine
// with signer (ECDSA P-256; it may live in an HSM).
func Sign(req *http.Request, engine string, signer crypto.Signer, body []byte, now time.Time) error {
	var n [16]byte
	if _, err := rand.Read(n[:]); err != nil {
		return fmt.Errorf("enroll: sign: %w", err)
	}
	nonce := hex.EncodeToString(n[:])
	ms := now.UnixMilli()
	sig, err := signer.Sign(rand.Reader, signingInput(engine, req.Method, req.URL.RequestURI(), ms, nonce, body), crypto.SHA256)
	if err != nil {
		return fmt.Errorf("enroll: sign: %w", err)
	}
	req.Header.Set(HeaderEngine, engine)
	req.Header.Set(HeaderTime, strconv.FormatInt(ms, 10))
	req.Header.Set(HeaderNonce, nonce)
	req.Header.Set(HeaderSignature, base64.StdEncoding.EncodeToString(sig))
	return nil
}

// Signed is what a verified request claims: the engine and its nonce,
// which the caller checks has not been seen before.
type Signed struct {
	Engine string
	Nonce  string
	Time   time.Time
}

// ErrSignature is returned for a request whose signature headers are
// missing, malformed, out of time, or do not verify.
var ErrSignature = errors.New("enroll: bad request signature")

// ParseHeaders reads the signature headers of r without verifying them,
// so that the caller can look up the engine's key.
func ParseHeaders(r *http.Request) (Signed, error) {
	engine := r.Header.Get(HeaderEngine)
	nonce := r.Header.Get(HeaderNonce)
	ms, err := strconv.ParseInt(r.Header.Get(HeaderTime), 10, 64)
	if err != nil || engine == "" || len(engine) > 64 || len(nonce) != 32 {
		return Signed{}, ErrSignature
	}
	if _, err := hex.DecodeString(nonce); err != nil {
		return Signed{}, ErrSignature
	}
	return Signed{Engine: engine, Nonce: nonce, Time: time.UnixMilli(ms)}, nil
}

// Verify checks r's signature (with body) by pub, and that its time is
// within MaxSkew of now.
func Verify(r *http.Request, pub *ecdsa.PublicKey, body []byte, now time.Time) (Signed, error) {
	s, err := ParseHeaders(r)
	if err != nil {
		return Signed{}, err
	}
	if d := now.Sub(s.Time); d > MaxSkew || d < -MaxSkew {
		return Signed{}, fmt.Errorf("%w: time off by %v", ErrSignature, d.Round(time.Second))
	}
	sig, err := base64.StdEncoding.DecodeString(r.Header.Get(HeaderSignature))
	if err != nil || len(sig) > 80 {
		return Signed{}, ErrSignature
	}
	if !ecdsa.VerifyASN1(pub, signingInput(s.Engine, r.Method, r.URL.RequestURI(), s.Time.UnixMilli(), s.Nonce, body), sig) {
		return Signed{}, ErrSignature
	}
	return s, nil
}
