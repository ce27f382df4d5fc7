package channelsapi

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/gorilla/websocket"
)

// This file holds the lingering close of a WebSocket connection the server
// closes (1001, 1008, 1009, 1013), after nginx's lingering_close: once the
// close frame is written, the server writes nothing more but goes on reading
// and discarding what the client still sends, for at most lingerTime and
// lingerBytes, before it closes the TCP connection. Closed at once with data
// unread, the socket would answer with a reset, and a client still sending
// (the rest of a frame over the size limit, say) would lose the close frame
// and its reason and see 1006. When the client answers with its own close
// frame the handshake is complete and the connection is closed at once.

const (
	lingerTime  = 2 * time.Second
	lingerBytes = 8 << 20
)

// tooBigFrame is the close frame that replaces gorilla/websocket's 1009,
// which has no reason, for a read limit of limit bytes.
func tooBigFrame(limit int64) []byte {
	msg := websocket.FormatCloseMessage(websocket.CloseMessageTooBig, fmt.Sprintf("frame larger than %d bytes", limit))
	return append([]byte{0x80 | websocket.CloseMessage, byte(len(msg))}, msg...)
}

// gorillaTooBig is the 1009 close frame gorilla/websocket writes when a frame
// is over the read limit: FIN, opcode close, payload 1009 without a reason.
var gorillaTooBig = []byte{0x88, 0x02, 0x03, 0xf1}

// frames follows the frame boundaries of what the server writes, to notice
// a close frame. gorilla/websocket writes the upgrade response in the first
// Write, then a frame's header at the start of a Write, followed by its
// payload in the same or later Writes.
type frames struct {
	upgraded bool  // the upgrade response is written
	left     int64 // bytes of the current frame still to come
	broken   bool  // a header did not fit in one Write: stop following
}

// scan consumes p and reports whether it starts a close frame.
func (f *frames) scan(p []byte) (closeFrame bool) {
	if !f.upgraded {
		f.upgraded = true
		return false
	}
	for len(p) > 0 && !f.broken {
		if f.left == 0 {
			n, size, ok := frameHeader(p)
			if !ok {
				f.broken = true
				return closeFrame
			}
			if p[0]&0x0f == websocket.CloseMessage {
				closeFrame = true
			}
			f.left = int64(n) + size
		}
		k := min(int64(len(p)), f.left)
		f.left -= k
		p = p[k:]
	}
	return closeFrame
}

// frameHeader parses the header of an unmasked frame at the start of p: its
// length and the payload's.
func frameHeader(p []byte) (n int, size int64, ok bool) {
	if len(p) < 2 || p[1]&0x80 != 0 {
		return 0, 0, false
	}
	switch l := p[1] & 0x7f; l {
	case 126:
		if len(p) < 4 {
			return 0, 0, false
		}
		return 4, int64(p[2])<<8 | int64(p[3]), true
	case 127:
		if len(p) < 10 {
			return 0, 0, false
		}
		var s int64
		for _, b := range p[2:10] {
			s = s<<8 | int64(b)
		}
		return 10, s, s >= 0
	default:
		return 2, int64(l), true
	}
}

// startLinger stops the connection from being closed at once: from now, for
// at most lingerTime, what arrives is read and dropped. The read deadline
// it sets cannot be moved (SetReadDeadline). Shutdown's end (ctx) cuts it.
func (w *writer) startLinger() {
	w.lingerOnce.Do(func() {
		w.deadlineMu.Lock()
		w.lingering = true
		_ = w.Conn.SetReadDeadline(time.Now().Add(lingerTime))
		w.deadlineMu.Unlock()
		if tc, ok := w.Conn.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		if w.stop != nil {
			unstop := context.AfterFunc(w.stop, func() { _ = w.Conn.SetReadDeadline(time.Now()) })
			w.mu.Lock()
			w.unstop = unstop
			w.mu.Unlock()
		}
	})
}

// SetReadDeadline implements net.Conn; while the connection lingers its
// deadline stays.
func (w *writer) SetReadDeadline(t time.Time) error {
	w.deadlineMu.Lock()
	defer w.deadlineMu.Unlock()
	if w.lingering {
		return nil
	}
	return w.Conn.SetReadDeadline(t)
}

// dropAfterClose reports whether a frame of n bytes the client sent is to
// be dropped: the server has sent its close frame. The linger ends when
// lingerBytes have been dropped.
func (w *writer) dropAfterClose(n int) bool {
	if !w.closeSent.Load() {
		return false
	}
	if w.dropped.Add(int64(n)) >= lingerBytes {
		_ = w.Conn.SetReadDeadline(time.Now())
	}
	return true
}

// finish closes the network connection when the WebSocket has ended, and
// stops the writer. After a close frame the server sent and the client did
// not answer, it first reads and drops what the client still sends
// (startLinger).
func (w *writer) finish() {
	if w.closeSent.Load() && !w.peerClosed.Load() {
		w.startLinger()
		if left := lingerBytes - w.dropped.Load(); left > 0 {
			_, _ = io.CopyN(io.Discard, w.Conn, left)
		}
	}
	_ = w.Conn.Close()
	w.end() // the write goroutine may start the linger up to its return
	w.mu.Lock()
	unstop := w.unstop
	w.mu.Unlock()
	if unstop != nil {
		unstop()
	}
}
