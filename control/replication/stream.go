package replication

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A stream carries one node's flows to one peer over a dedicated TCP
// connection: a handshake, then length-prefixed frames. With a cluster key
// every frame is sealed with AES-256-GCM under a session key derived from
// the key and a fresh salt from each side, so a host without the key can
// neither read nor inject, and a recorded session cannot be replayed.
//
//	hello (each side): "FSHR" | version u8 | flags u8 | pnn u16 | salt [16]
//	frame:             length u32 | payload (sealed: ciphertext + 16-byte tag)
//
// The client (the owner of the flows) proposes the newest version it
// speaks; the server answers with the one they will use, never newer.
// Version 1 streams only go from client to server: deltas and full
// snapshots (kinds 1-4). Version 2 streams add digests and one-VIP
// snapshots from the client, and the server's answers to digests,
// framed the same way in the other direction. A server of version 1
// refuses a version 2 hello outright (it closes the connection): the
// client then proposes version 1 on its next attempt.
const (
	helloSize    = 4 + 1 + 1 + 2 + 16
	flagSealed   = 1
	maxFrameSize = MaxMessage + 16
	// streamVersion1 and streamVersion2 are the stream versions.
	streamVersion1 = 1
	streamVersion2 = 2
)

var helloMagic = [4]byte{'F', 'S', 'H', 'R'}

// ErrHandshake is returned when the peer is not a compatible fsha node.
var ErrHandshake = errors.New("replication handshake failed")

type hello struct {
	version byte
	flags   byte
	pnn     uint16
	salt    [16]byte
}

func writeHello(w io.Writer, h hello) error {
	b := make([]byte, 0, helloSize)
	b = append(b, helloMagic[:]...)
	b = append(b, h.version, h.flags)
	b = binary.BigEndian.AppendUint16(b, h.pnn)
	b = append(b, h.salt[:]...)
	_, err := w.Write(b)
	return err
}

func readHello(r io.Reader) (hello, error) {
	var b [helloSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return hello{}, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	return decodeHello(b[:])
}

// decodeHello checks and decodes a hello of helloSize bytes.
func decodeHello(b []byte) (hello, error) {
	if len(b) != helloSize {
		return hello{}, fmt.Errorf("%w: hello of %d bytes", ErrHandshake, len(b))
	}
	if [4]byte(b[0:4]) != helloMagic {
		return hello{}, fmt.Errorf("%w: not an fsha replication stream", ErrHandshake)
	}
	if b[4] < streamVersion1 || b[4] > streamVersion2 {
		return hello{}, fmt.Errorf("%w: version %d, this fsha speaks %d to %d", ErrHandshake, b[4], streamVersion1, streamVersion2)
	}
	h := hello{version: b[4], flags: b[5], pnn: binary.BigEndian.Uint16(b[6:8])}
	copy(h.salt[:], b[8:])
	return h, nil
}

func newHello(version byte, pnn int, key []byte) (hello, error) {
	h := hello{version: version, pnn: uint16(pnn)}
	if key != nil {
		h.flags = flagSealed
	}
	if _, err := rand.Read(h.salt[:]); err != nil {
		return h, fmt.Errorf("salt: %w", err)
	}
	return h, nil
}

// sessionAEAD derives the session's cipher; nil without a key.
func sessionAEAD(key []byte, clientSalt, serverSalt [16]byte) (cipher.AEAD, error) {
	if key == nil {
		return nil, nil
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("fsha replication v1"))
	mac.Write(clientSalt[:])
	mac.Write(serverSalt[:])
	block, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// framer seals and opens frames of one direction of a stream. The two
// directions share the session key and differ in the nonce's first bytes:
// dir is 0 from client to server (as version 1 streams have it), 1 back.
type framer struct {
	aead  cipher.AEAD
	dir   byte
	count uint64
	nonce [12]byte
	buf   []byte
}

const (
	dirToServer = 0
	dirToClient = 1
)

func (f *framer) nextNonce() []byte {
	f.nonce[3] = f.dir
	binary.BigEndian.PutUint64(f.nonce[4:], f.count)
	f.count++
	return f.nonce[:]
}

func (f *framer) write(w io.Writer, payload []byte) error {
	f.buf = f.buf[:0]
	size := len(payload)
	if f.aead != nil {
		size += f.aead.Overhead()
	}
	f.buf = binary.BigEndian.AppendUint32(f.buf, uint32(size))
	if f.aead != nil {
		f.buf = f.aead.Seal(f.buf, f.nextNonce(), payload, f.buf[:4])
	} else {
		f.buf = append(f.buf, payload...)
	}
	_, err := w.Write(f.buf)
	return err
}

// ErrFrame is returned for a frame that is too large or fails to open: the
// stream cannot be trusted past it and is closed.
var ErrFrame = errors.New("bad replication frame")

func (f *framer) read(r io.Reader) ([]byte, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(l[:])
	if n > maxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrFrame, n, maxFrameSize)
	}
	if cap(f.buf) < int(n) {
		f.buf = make([]byte, n)
	}
	f.buf = f.buf[:n]
	if _, err := io.ReadFull(r, f.buf); err != nil {
		return nil, err
	}
	if f.aead == nil {
		return f.buf, nil
	}
	out, err := f.aead.Open(f.buf[:0], f.nextNonce(), f.buf, l[:])
	if err != nil {
		return nil, fmt.Errorf("%w: does not authenticate (wrong key?)", ErrFrame)
	}
	return out, nil
}
