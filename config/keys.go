package config

import (
	"errors"
	"fmt"
	"os"
)

// maxPIN bounds a PKCS#11 PIN.
const maxPIN = 256

// PKCS11Module returns the module path, resolved against the file's
// directory.
func (c *File) PKCS11Module() string {
	if c.Keys == nil || c.Keys.PKCS11 == nil {
		return ""
	}
	return c.path(c.Keys.PKCS11.Module)
}

// PKCS11PIN reads the token's user PIN from the file or environment
// variable the configuration names. The caller wipes it. Errors name where
// the PIN was looked for, never the PIN.
func (c *File) PKCS11PIN() ([]byte, error) {
	if c.Keys == nil || c.Keys.PKCS11 == nil {
		return nil, errors.New("config: no keys.pkcs11 section")
	}
	p := c.Keys.PKCS11
	var pin []byte
	if p.PINFile != "" {
		b, err := ReadSecretFile(c.path(p.PINFile))
		if err != nil {
			return nil, fmt.Errorf("config: keys.pkcs11.pin_file: %w", err)
		}
		pin = b
	} else {
		v, ok := os.LookupEnv(p.PINEnv)
		if !ok || v == "" {
			return nil, fmt.Errorf("config: keys.pkcs11.pin_env: the environment variable %s is not set", p.PINEnv)
		}
		pin = []byte(v)
	}
	if len(pin) > maxPIN {
		clear(pin)
		return nil, fmt.Errorf("config: keys.pkcs11: the PIN is longer than %d bytes", maxPIN)
	}
	return pin, nil
}
