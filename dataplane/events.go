package dataplane

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
)

// EventType says whether a flow opened or closed.
type EventType uint8

// Event types, as bpf/fsha.h defines them.
const (
	EventOpen  = EventType(fshaFlowEventTypeFLOW_EVENT_OPEN)
	EventClose = EventType(fshaFlowEventTypeFLOW_EVENT_CLOSE)
)

func (t EventType) String() string {
	switch t {
	case EventOpen:
		return "open"
	case EventClose:
		return "close"
	}
	return fmt.Sprintf("event-%d", uint8(t))
}

// CloseReason says why a flow closed.
type CloseReason uint8

// Close reasons, as bpf/fsha.h defines them.
const (
	CloseNone   = CloseReason(fshaFlowCloseReasonFLOW_CLOSE_NONE)
	CloseRSTIn  = CloseReason(fshaFlowCloseReasonFLOW_CLOSE_RST_IN)
	CloseRSTOut = CloseReason(fshaFlowCloseReasonFLOW_CLOSE_RST_OUT)
	CloseFIN    = CloseReason(fshaFlowCloseReasonFLOW_CLOSE_FIN)
)

func (r CloseReason) String() string {
	switch r {
	case CloseNone:
		return ""
	case CloseRSTIn:
		return "client-reset"
	case CloseRSTOut:
		return "server-reset"
	case CloseFIN:
		return "fin"
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// Event is a flow opening or closing, with the flow as it was then.
type Event struct {
	Type   EventType
	Reason CloseReason
	Flow   Flow
	// Seq numbers the events a reader returned, from 1; the index of
	// local flows is as of event Seq once Read returns it (see
	// Maps.LocalDigests).
	Seq uint64
}

// EventReader streams open and close events from the ring buffer, and
// keeps the index of local flows (see index.go) with them: while one runs,
// CountFlows, KillVIP and the digests cost O(connections of one VIP).
type EventReader struct {
	rd    *ringbuf.Reader
	idx   *indexes
	close sync.Once
}

// ErrClosed is returned by EventReader.Read after Close.
var ErrClosed = os.ErrClosed

// NewEventReader opens the events ring buffer and starts building the
// index of local flows in the background. Only one reader should run per
// data plane: every event is delivered once.
func (m *Maps) NewEventReader() (*EventReader, error) {
	rd, err := ringbuf.NewReader(m.Events)
	if err != nil {
		return nil, fmt.Errorf("open events ring buffer: %w", err)
	}
	x := m.indexes()
	x.attachReader(m)
	return &EventReader{rd: rd, idx: x}, nil
}

// Read blocks until the next event; after Close it returns ErrClosed.
func (r *EventReader) Read() (Event, error) {
	rec, err := r.rd.Read()
	if errors.Is(err, ringbuf.ErrClosed) {
		return Event{}, ErrClosed
	}
	if err != nil {
		return Event{}, fmt.Errorf("read event: %w", err)
	}
	var raw fshaFlowEvent
	if len(rec.RawSample) < int(unsafe.Sizeof(raw)) {
		return Event{}, fmt.Errorf("short event: %d bytes", len(rec.RawSample))
	}
	raw = *(*fshaFlowEvent)(unsafe.Pointer(&rec.RawSample[0]))
	typ := EventType(raw.Type)
	return Event{
		Type:   typ,
		Reason: CloseReason(raw.Reason),
		Flow:   flowOf(&raw.Key, &raw.Flow, newClock()),
		Seq:    r.idx.local.event(&raw.Key, typ),
	}, nil
}

// Close stops the reader; a blocked Read returns ErrClosed. The index of
// local flows is no longer kept: queries walk the map again.
func (r *EventReader) Close() error {
	r.close.Do(r.idx.detachReader)
	return r.rd.Close()
}
