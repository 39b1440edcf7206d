// Package remote carries admin requests between nodes: `fsha -n 2 ip` on
// node 0 asks node 0's daemon, which forwards the request to node 2 over
// memberlist's reliable channel (TCP, encrypted and authenticated with the
// gossip key, so only cluster members can send), node 2 serves it against
// its own admin routes and sends the answer back, matched by a request id.
package remote

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/fsha/fsha/control/admin"
)

// Message types. The gossip channel carries several protocols, told apart
// by the first byte: the node package's operator moves (1, 2), the
// ownership protocol's (16 to 18) and these, far from both.
const (
	TypeRequest  = 32
	TypeResponse = 33
)

// WireVersion is the format's major version. A decoder refuses another
// one and ignores bytes after the fields it knows, so that a later
// release may append fields (a rolling upgrade mixes releases).
const WireVersion = 1

// Format, big-endian, after [type u8][version u8][from u16][id u64]:
//
//	request:  [flags u8][method len u8][method][path len u16][path][body len u32][body]
//	response: [code u16][body len u32][body]
const (
	headerSize   = 1 + 1 + 2 + 8
	maxMethod    = 16
	maxPath      = 256
	flagFull     = 1
	minCode      = 100
	maxCode      = 599
	requestFixed = 1 + 1 + 2 + 4
)

// ErrBadMessage is wrapped by every decoding error.
var ErrBadMessage = errors.New("bad remote admin message")

// Request is a forwarded admin request: From asks, ID matches the answer.
type Request struct {
	From int
	ID   uint64
	admin.ForwardRequest
}

// Response is an answer: From is the node that answers, ID the request's.
type Response struct {
	From int
	ID   uint64
	admin.ForwardResponse
}

// IsRemote reports whether msg is one of this package's messages.
func IsRemote(msg []byte) bool {
	return len(msg) > 0 && (msg[0] == TypeRequest || msg[0] == TypeResponse)
}

func header(typ byte, from int, id uint64) []byte {
	b := []byte{typ, WireVersion}
	b = binary.BigEndian.AppendUint16(b, uint16(from))
	return binary.BigEndian.AppendUint64(b, id)
}

// Encode encodes r; it fails on what Decode would refuse.
func (r Request) Encode() ([]byte, error) {
	if err := checkRequest(r.Method, r.Path, len(r.Body)); err != nil {
		return nil, err
	}
	if r.From < 0 || r.From > 0xffff {
		return nil, fmt.Errorf("%w: node %d", ErrBadMessage, r.From)
	}
	b := header(TypeRequest, r.From, r.ID)
	var flags byte
	if r.Full {
		flags |= flagFull
	}
	b = append(b, flags, byte(len(r.Method)))
	b = append(b, r.Method...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Path)))
	b = append(b, r.Path...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Body)))
	return append(b, r.Body...), nil
}

// Encode encodes r; it fails on what Decode would refuse.
func (r Response) Encode() ([]byte, error) {
	if r.Code < minCode || r.Code > maxCode {
		return nil, fmt.Errorf("%w: status %d", ErrBadMessage, r.Code)
	}
	if len(r.Body) > admin.MaxForwardBody {
		return nil, fmt.Errorf("%w: answer of %d bytes, more than %d", ErrBadMessage, len(r.Body), admin.MaxForwardBody)
	}
	if r.From < 0 || r.From > 0xffff {
		return nil, fmt.Errorf("%w: node %d", ErrBadMessage, r.From)
	}
	b := header(TypeResponse, r.From, r.ID)
	b = binary.BigEndian.AppendUint16(b, uint16(r.Code))
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Body)))
	return append(b, r.Body...), nil
}

// checkRequest is what a request must look like: an admin route's method
// and path (the target's routes decide which exist), a bounded body.
func checkRequest(method, path string, body int) error {
	if method != http.MethodGet && method != http.MethodPost {
		return fmt.Errorf("%w: method %.*q", ErrBadMessage, maxMethod, method)
	}
	if len(path) > maxPath || !strings.HasPrefix(path, "/v1/") {
		return fmt.Errorf("%w: path %.*q", ErrBadMessage, maxPath, path)
	}
	if body > admin.MaxForwardBody {
		return fmt.Errorf("%w: body of %d bytes, more than %d", ErrBadMessage, body, admin.MaxForwardBody)
	}
	return nil
}

// checkHeader checks type and version and returns the rest, the sender
// and the id.
func checkHeader(b []byte, typ byte) (rest []byte, from int, id uint64, err error) {
	if len(b) < headerSize {
		return nil, 0, 0, fmt.Errorf("%w: %d bytes", ErrBadMessage, len(b))
	}
	if b[0] != typ {
		return nil, 0, 0, fmt.Errorf("%w: type %d, want %d", ErrBadMessage, b[0], typ)
	}
	if b[1] != WireVersion {
		return nil, 0, 0, fmt.Errorf("%w: format version %d, want %d", ErrBadMessage, b[1], WireVersion)
	}
	return b[headerSize:], int(binary.BigEndian.Uint16(b[2:4])), binary.BigEndian.Uint64(b[4:12]), nil
}

// take splits n bytes off b.
func take(b []byte, n int, what string) ([]byte, []byte, error) {
	if n < 0 || len(b) < n {
		return nil, nil, fmt.Errorf("%w: %s of %d bytes in %d", ErrBadMessage, what, n, len(b))
	}
	return b[:n], b[n:], nil
}

// DecodeRequest decodes a request; the body is a copy (msg is only valid
// during memberlist's callback).
func DecodeRequest(msg []byte) (Request, error) {
	b, from, id, err := checkHeader(msg, TypeRequest)
	if err != nil {
		return Request{}, err
	}
	if len(b) < requestFixed {
		return Request{}, fmt.Errorf("%w: short request", ErrBadMessage)
	}
	r := Request{From: from, ID: id}
	flags := b[0]
	r.Full = flags&flagFull != 0
	method, b, err := take(b[2:], int(b[1]), "method")
	if err != nil {
		return Request{}, err
	}
	if len(b) < 2 {
		return Request{}, fmt.Errorf("%w: no path", ErrBadMessage)
	}
	path, b, err := take(b[2:], int(binary.BigEndian.Uint16(b)), "path")
	if err != nil {
		return Request{}, err
	}
	if len(b) < 4 {
		return Request{}, fmt.Errorf("%w: no body length", ErrBadMessage)
	}
	n := binary.BigEndian.Uint32(b)
	if n > admin.MaxForwardBody {
		return Request{}, fmt.Errorf("%w: body of %d bytes, more than %d", ErrBadMessage, n, admin.MaxForwardBody)
	}
	body, _, err := take(b[4:], int(n), "body")
	if err != nil {
		return Request{}, err
	}
	r.Method, r.Path = string(method), string(path)
	if err := checkRequest(r.Method, r.Path, len(body)); err != nil {
		return Request{}, err
	}
	if len(body) > 0 {
		r.Body = append([]byte(nil), body...)
	}
	return r, nil
}

// DecodeResponse decodes an answer; the body is a copy.
func DecodeResponse(msg []byte) (Response, error) {
	b, from, id, err := checkHeader(msg, TypeResponse)
	if err != nil {
		return Response{}, err
	}
	if len(b) < 6 {
		return Response{}, fmt.Errorf("%w: short response", ErrBadMessage)
	}
	r := Response{From: from, ID: id}
	r.Code = int(binary.BigEndian.Uint16(b))
	if r.Code < minCode || r.Code > maxCode {
		return Response{}, fmt.Errorf("%w: status %d", ErrBadMessage, r.Code)
	}
	n := binary.BigEndian.Uint32(b[2:])
	if n > admin.MaxForwardBody {
		return Response{}, fmt.Errorf("%w: answer of %d bytes, more than %d", ErrBadMessage, n, admin.MaxForwardBody)
	}
	body, _, err := take(b[6:], int(n), "answer")
	if err != nil {
		return Response{}, err
	}
	if len(body) > 0 {
		r.Body = append([]byte(nil), body...)
	}
	return r, nil
}
