package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockData takes the data directory's lock, so that `sallyport dev` and the
// offline key commands never work on one vault at the same time. The lock
// is released when the process exits, however it exits.
func lockData(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "sallyport.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600) // #nosec G304 -- inside the operator's data directory
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil { // #nosec G115 -- a file descriptor fits an int
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another sallyport process is using %s (stop `sallyport dev` first)", dir)
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return func() { _ = f.Close() }, nil
}
