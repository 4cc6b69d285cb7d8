package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
)

// Authorize checks that engineID is an approved engine and that signature
// is its ECDSA P-256 signature of SHA-256(message), and returns its site.
// The built-in connector calls it to authenticate an engine's connection;
// message is the connector's transcript (its own business).
func (v *Vault) Authorize(ctx context.Context, engineID string, message, signature []byte) (string, error) {
	pub, info, err := v.EnginePublicKey(ctx, engineID)
	if err != nil {
		return "", err
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
