package config

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// readRegular reads a regular file of at most max bytes. With secret set,
// the file must not be accessible by group or others, and what was read is
// wiped on every error. Errors never contain the file's contents.
func readRegular(path string, max int, secret bool) ([]byte, error) {
	f, st, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	if perm := st.Mode().Perm(); secret && perm&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o; a secret file must not be accessible by group or others (chmod 600)", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err == nil && len(b) > max {
		err = fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	if err != nil {
		clear(b)
		return nil, err
	}
	return b, nil
}

// openRegular opens path for reading without blocking on a FIFO or a
// device, and refuses anything but a regular file, so that a misnamed path
// cannot hang start-up.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0) // #nosec G304 -- the operator names the file
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		_ = f.Close()
		return nil, nil, fmt.Errorf("%s is not a regular file", path)
	}
	return f, st, nil
}

// maxPublicFile bounds a certificate bundle or similar public file.
const maxPublicFile = 1 << 20

// ReadPublicFile reads a file that holds nothing secret (a CA bundle), a
// regular file of at most 1 MiB.
func ReadPublicFile(path string) ([]byte, error) { return readRegular(path, maxPublicFile, false) }
