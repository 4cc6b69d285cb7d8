package builtin

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// op is what a frame asks or tells.
type op uint8

// The ops. S→C travel from the server (the vault) to the client (an
// engine), C→S the other way; a frame that travels the wrong way ends the
// connection.
const (
	opChallenge op = iota + 1 // S→C: body = the server's nonce
	opHello                   // C→S: name = engine id, body = signature of the transcript
	opWelcome                 // S→C: name = the engine's site, num = the server's max frame size
	opDeclare                 // C→S, request: name = queue; flagPrivate
	opPublish                 // C→S, request: name = queue, ttl (ms, 0: none), body
	opOK                      // S→C: the request id succeeded
	opError                   // S→C: the request id failed, num = code
	opConsume                 // C→S: name = queue, num = prefetch; id names the consumer until opDone
	opCancel                  // C→S: stop consumer id (the server answers with its opDone)
	opDone                    // S→C: consumer id has ended, num = code (0: cancelled)
	opDeliver                 // S→C: to consumer id, tag, body; flagRedelivered
	opAck                     // C→S: settle delivery tag as done; answered (ok or error) if id ≠ 0
	opReject                  // C→S: settle delivery tag as refused; flagRequeue; answered if id ≠ 0
	opMax                     // not an op: the bound of the table below
)

func (o op) String() string {
	if o > 0 && o < opMax {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

var opNames = [opMax]string{"", "challenge", "hello", "welcome", "declare", "publish", "ok", "error",
	"consume", "cancel", "done", "deliver", "ack", "reject"}

// Flag bits; each op allows only its own.
const (
	flagPrivate     = 1 << 0 // opDeclare: the queue is connector.Private
	flagRedelivered = 1 << 0 // opDeliver: the message was delivered before
	flagRequeue     = 1 << 0 // opReject: put the message back
)

// Fields a frame of an op carries after its header, in this order.
const (
	fTag  = 1 << iota // u64 delivery tag
	fName             // u8 length + that many bytes (queue, engine id, site)
	fNum              // u32 (prefetch, error code, frame size)
	fTTL              // u64 milliseconds
	fBody             // u32 length + that many bytes; always last
)

// layout is what each op carries: its fields and the flag bits it allows.
var layout = [opMax]struct {
	fields int
	flags  uint8
}{
	opChallenge: {fields: fBody},
	opHello:     {fields: fName | fBody},
	opWelcome:   {fields: fName | fNum},
	opDeclare:   {fields: fName, flags: flagPrivate},
	opPublish:   {fields: fName | fTTL | fBody},
	opOK:        {},
	opError:     {fields: fNum},
	opConsume:   {fields: fName | fNum},
	opCancel:    {},
	opDone:      {fields: fNum},
	opDeliver:   {fields: fTag | fBody, flags: flagRedelivered},
	opAck:       {fields: fTag},
	opReject:    {fields: fTag, flags: flagRequeue},
}

// Sizes of the wire format.
const (
	headerSize = 1 + 1 + 4 // op, flags, id
	maxName    = 255
	// frameOverhead is the most a frame holds besides its body.
	frameOverhead = headerSize + 8 + 1 + maxName + 4 + 8 + 4
)

// frame is one WebSocket binary message. Its wire form, all integers big
// endian:
//
//	op u8 | flags u8 | id u32 | the op's fields, in the order of layout
//
// A decoded frame holds exactly the fields of its op (the others are
// zero), and decoding refuses unknown ops, flag bits the op does not
// allow, a length that claims more than the frame holds, and trailing
// bytes: so every valid frame has exactly one encoding.
type frame struct {
	op    op
	flags uint8
	id    uint32 // request id (a reply carries its request's), or consumer id
	tag   uint64 // delivery tag, unique within a connection
	name  string
	num   uint32
	ttl   uint64
	body  []byte
}

var (
	errShortFrame = errors.New("frame: truncated")
	errLongFrame  = errors.New("frame: trailing bytes")
	errUnknownOp  = errors.New("frame: unknown op")
	errBadFlags   = errors.New("frame: flags not allowed for op")
	errLongName   = errors.New("frame: name longer than 255 bytes")
)

// appendFrame appends f's wire form to b. Fields f's op does not carry are
// not written. It fails only on an unknown op, a bad flag or a name too
// long: a caller's bug, or a peer's name echoed back.
func appendFrame(b []byte, f *frame) ([]byte, error) {
	if f.op == 0 || f.op >= opMax {
		return b, errUnknownOp
	}
	l := layout[f.op]
	if f.flags&^l.flags != 0 {
		return b, errBadFlags
	}
	b = append(b, byte(f.op), f.flags)
	b = binary.BigEndian.AppendUint32(b, f.id)
	if l.fields&fTag != 0 {
		b = binary.BigEndian.AppendUint64(b, f.tag)
	}
	if l.fields&fName != 0 {
		if len(f.name) > maxName {
			return b, errLongName
		}
		b = append(b, uint8(len(f.name))) // #nosec G115 -- ≤ maxName, checked above
		b = append(b, f.name...)
	}
	if l.fields&fNum != 0 {
		b = binary.BigEndian.AppendUint32(b, f.num)
	}
	if l.fields&fTTL != 0 {
		b = binary.BigEndian.AppendUint64(b, f.ttl)
	}
	if l.fields&fBody != 0 {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f.body))) // #nosec G115 -- bodies are bounded by the frame size, far below 4 GiB
		b = append(b, f.body...)
	}
	return b, nil
}

// decodeFrame parses one frame. body aliases b.
func decodeFrame(b []byte) (frame, error) {
	var f frame
	if len(b) < headerSize {
		return frame{}, errShortFrame
	}
	f.op, f.flags = op(b[0]), b[1]
	if f.op == 0 || f.op >= opMax {
		return frame{}, errUnknownOp
	}
	l := layout[f.op]
	if f.flags&^l.flags != 0 {
		return frame{}, errBadFlags
	}
	f.id = binary.BigEndian.Uint32(b[2:])
	r := b[headerSize:]
	if l.fields&fTag != 0 {
		if len(r) < 8 {
			return frame{}, errShortFrame
		}
		f.tag, r = binary.BigEndian.Uint64(r), r[8:]
	}
	if l.fields&fName != 0 {
		if len(r) < 1 || len(r)-1 < int(r[0]) {
			return frame{}, errShortFrame
		}
		n := int(r[0])
		f.name, r = string(r[1:1+n]), r[1+n:]
	}
	if l.fields&fNum != 0 {
		if len(r) < 4 {
			return frame{}, errShortFrame
		}
		f.num, r = binary.BigEndian.Uint32(r), r[4:]
	}
	if l.fields&fTTL != 0 {
		if len(r) < 8 {
			return frame{}, errShortFrame
		}
		f.ttl, r = binary.BigEndian.Uint64(r), r[8:]
	}
	if l.fields&fBody != 0 {
		if len(r) < 4 {
			return frame{}, errShortFrame
		}
		n := binary.BigEndian.Uint32(r)
		r = r[4:]
		if uint64(n) > uint64(len(r)) {
			return frame{}, errShortFrame
		}
		f.body, r = r[:n:n], r[n:]
	}
	if len(r) != 0 {
		return frame{}, errLongFrame
	}
	return f, nil
}

// Error codes of opError and opDone.
const (
	codeNone         = 0
	codeUnauthorized = 1 // handshake: the engine is unknown, revoked, or its signature is wrong
	codeForbidden    = 2 // connector.ErrForbidden
	codeFull         = 3 // connector.ErrFull
	codeClosed       = 4 // the server's queues are closed: the vault is going down
	codeBadRequest   = 5 // malformed or out of bounds
	codeTooMany      = 6 // a limit on sessions or consumers
	codeUnavailable  = 7 // handshake: try again later
	codeInternal     = 8
	codeSettled      = 9 // connector.ErrSettled: the delivery was settled, or put back already
)
