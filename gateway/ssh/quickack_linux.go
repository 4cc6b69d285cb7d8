//go:build linux

package ssh

import (
	"net"
	"sync/atomic"
	"syscall"
)

// quickAckConn turns off delayed acknowledgements before each read while
// the SSH handshake runs. OpenSSH clients leave Nagle's algorithm on until
// they are logged in, so a client that sends two small packets in a row
// waits for our ACK of the first; with delayed ACKs that wait is up to
// 40 ms per round, several times per login. Once the handshake is over,
// reads go straight through.
type quickAckConn struct {
	net.Conn
	rc   syscall.RawConn
	done atomic.Bool
}

// withQuickAck wraps nc if a TCP connection lies under it (through
// NetConn methods, as the admission wrapper has); reads and closes still
// go through nc.
func withQuickAck(nc net.Conn) net.Conn {
	inner := nc
	for range 4 {
		u, ok := inner.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		inner = u.NetConn()
	}
	tc, ok := inner.(*net.TCPConn)
	if !ok {
		return nc
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nc
	}
	return &quickAckConn{Conn: nc, rc: rc}
}

func (q *quickAckConn) Read(p []byte) (int, error) {
	if !q.done.Load() {
		_ = q.rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1) // #nosec G115 -- a file descriptor fits in int
		})
	}
	return q.Conn.Read(p)
}

func (q *quickAckConn) handshakeDone() { q.done.Store(true) }
