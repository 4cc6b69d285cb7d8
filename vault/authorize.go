package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/sallyport/sallyport/connector/builtin"
)

// Authorize checks that engineID is an approved engine and that signature
// is its ECDSA P-256 signature of SHA-256(message), and returns its site.
// The built-in connector calls it to authenticate an engine's connection;
// message is the connector's transcript (its own business). A failing
// store is builtin.ErrUnavailable, which the engine retries.
func (v *Vault) Authorize(ctx context.Context, engineID string, message, signature []byte) (string, error) {
	pub, info, err := v.EnginePublicKey(ctx, engineID)
	switch {
	case errors.Is(err, ErrNotFound):
		return "", err
	case err != nil:
		// The store failed, not the engine: it may try again, where a
		// refusal would make it give up.
		return "", fmt.Errorf("%w: %w", builtin.ErrUnavailable, err)
	}
	switch info.State {
	case EnginePending:
		return "", fmt.Errorf("engine %s: %w", engineID, ErrPending)
	case EngineRevoked:
		return "", fmt.Errorf("engine %s: %w", engineID, ErrRevoked)
	}
	digest := sha256.Sum256(message)
	if !ecdsa.VerifyASN1(pub, digest[:], signature) {
		return "", fmt.Errorf("engine %s: %w", engineID, ErrDenied)
	}
	return info.Site, nil
}
