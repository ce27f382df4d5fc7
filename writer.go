package channelsapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// This file holds the writer of one WebSocket connection. Every frame the
// server sends on it (replies, events, pings, pongs, the close frame) is
// queued here and written by one goroutine, which exists only while there is
// something to write: at each wake-up it takes everything queued, encodes the
// frames into one pooled buffer and writes them with one deadline and one
// write(2) (one per maxBatch bytes). Frames are never reordered and never
// wait for a timer. An idle connection holds no goroutine and no buffer of
// the writer's.
//
// melody is given no frame to write: its write goroutine waits for frames
// that never come (its ping period is set beyond reach, see newMelody), so
// that this writer is the only one of data frames. gorilla/websocket writes
// only the close frame of a protocol error it meets while reading (the 1009
// of a frame over the size limit); it goes through Write, serialised with
// the batches, and nothing is written after a close frame.

// maxBatch is how many bytes the writer copies into one write(2).
const maxBatch = 64 << 10

// maxKeptQueue is the largest queue capacity (in frames) a connection keeps
// between batches; a larger one, left by a burst, is released.
const maxKeptQueue = 16

// batchPool holds the buffers batches are encoded into.
var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	opText  = websocket.TextMessage
	opClose = websocket.CloseMessage
	opPing  = websocket.PingMessage
	opPong  = websocket.PongMessage
)

// writer wraps the hijacked network connection of a WebSocket and owns what
// is written on it.
type writer struct {
	net.Conn
	limit int           // frames queued at most (WithQueueSize)
	ping  time.Duration // between two pings

	mu       sync.Mutex
	queue    [][]byte // text frames' payloads, oldest first
	spare    [][]byte // the previous batch's slice, for reuse
	inflight int      // frames of the batch being written
	running  bool     // the write goroutine exists
	listed   bool     // to be woken at the end of a wakeBatch
	wakes    *wakeBatch
	pingDue  bool
	pong     []byte // the payload of the pong to send; nil: none
	closeMsg []byte // the close frame's payload, once close was called
	done     bool   // nothing more is queued or written
	waiter   *drainWaiter
	timer    *time.Timer // the next ping
	runs     sync.WaitGroup

	wmu       sync.Mutex // serialises writes on Conn
	deadline  time.Time  // the write deadline last set on Conn (of wmu)
	closeSent atomic.Bool

	httpBuf *bufio.Writer // the HTTP server's, until releaseHTTPBuffer

	// The lingering close (linger.go).
	tooBig     []byte          // the 1009 close frame written for gorilla's
	stop       context.Context // done: lingering ends (Shutdown's ctx ended)
	out        frames          // what gorilla writes, to notice its close frame
	unstop     func() bool
	peerClosed atomic.Bool // the client's close frame was read
	deadlineMu sync.Mutex  // orders SetReadDeadline with the start of the linger
	lingering  bool        // of deadlineMu
	lingerOnce sync.Once
	dropped    atomic.Int64 // bytes of frames dropped after closeSent
}

// drainWaiter is a goroutine waiting in waitBelow.
type drainWaiter struct {
	below int
	wake  chan struct{}
}

// send queues a text frame. It reports false when the frame is not queued:
// the queue holds limit frames already (the caller closes the connection
// with 1013), or the connection is closing.
func (w *writer) send(frame []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.closeMsg != nil || len(w.queue) >= w.limit {
		return false
	}
	w.queue = append(w.queue, frame)
	if w.running {
		return true
	}
	// While the delivery goroutines publish a run of events, the connection
	// is woken once at the end, with all of them queued, or as soon as half
	// its queue is.
	switch {
	case len(w.queue) >= w.limit/2:
		w.wakeLocked()
	case w.listed:
	case w.wakes.hold(w):
		w.listed = true
	default:
		w.wakeLocked()
	}
	return true
}

// wake starts the write goroutine for what was queued while it was
// deferred (wakeBatch).
func (w *writer) wake() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.listed = false
	if !w.done && (len(w.queue) > 0 || w.closeMsg != nil) {
		w.wakeLocked()
	}
}

// wakeBatch defers the wake-ups of connections while events are being
// published, so that a connection receiving a run of events writes them
// with one write(2) instead of one each: a delivery goroutine with more than
// one event at hand begins a batch, publishes them, and ends it, which wakes
// every connection deferred meanwhile. Frames are queued in order as
// before; only the start of the writing waits, for as long as the
// publishing of events already at hand takes.
type wakeBatch struct {
	mu      sync.Mutex
	active  int       // batches begun and not ended
	waiting []*writer // deferred, to wake at the end
}

// maxRun is how many events one batch publishes before the connections
// are woken: it bounds what the first of them waits for.
const maxRun = 64

// publish calls one for each of n events at hand, with the wake-ups deferred
// to the end of every maxRun of them when there is more than one.
func (b *wakeBatch) publish(n int, one func(i int)) {
	if n > 1 {
		b.begin()
		defer b.end()
	}
	for i := range n {
		if i > 0 && i%maxRun == 0 {
			b.end()
			b.begin()
		}
		one(i)
	}
}

func (b *wakeBatch) begin() {
	b.mu.Lock()
	b.active++
	b.mu.Unlock()
}

// end ends a batch and wakes the connections deferred so far (those of
// other batches still under way too: they only write sooner).
func (b *wakeBatch) end() {
	b.mu.Lock()
	b.active--
	ws := b.waiting
	b.waiting = nil
	b.mu.Unlock()
	for i, w := range ws {
		w.wake()
		ws[i] = nil
	}
}

// hold records w to be woken at the end of the batch under way, and
// reports false when none is.
func (b *wakeBatch) hold(w *writer) bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.active == 0 {
		return false
	}
	b.waiting = append(b.waiting, w)
	return true
}

// close sends a close frame with code and reason after what is queued, or
// instead of it (drop: a client too slow to read it), and then closes the
// connection. The first call wins.
func (w *writer) close(code int, reason string, drop bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.closeMsg != nil {
		return
	}
	w.closeMsg = websocket.FormatCloseMessage(code, reason)
	if drop {
		clear(w.queue)
		w.queue = w.queue[:0]
	}
	w.wakeLocked()
}

// answerClose answers the client's close frame with one of its own, written
// by the caller (the read goroutine), which closes the connection once it
// returns: what is still queued is dropped.
func (w *writer) answerClose(code int) {
	w.mu.Lock()
	if w.done || w.closeMsg != nil {
		w.mu.Unlock()
		return
	}
	w.closeMsg = websocket.FormatCloseMessage(code, "")
	w.done = true
	clear(w.queue)
	w.queue = w.queue[:0]
	w.mu.Unlock()
	_ = w.writeOut(appendFrame(nil, opClose, w.closeMsg), true)
}

// answerPing queues a pong with the ping's payload; only the latest ping is
// answered (RFC 6455 section 5.5.3).
func (w *writer) answerPing(payload string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.closeMsg != nil {
		return
	}
	w.pong = append([]byte{}, payload...)
	w.wakeLocked()
}

// startPings sends a ping every w.ping until the connection ends.
func (w *writer) startPings() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.timer = time.AfterFunc(w.ping, w.pingTick)
	}
}

func (w *writer) pingTick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.closeMsg != nil {
		return
	}
	w.pingDue = true
	w.wakeLocked()
	w.timer.Reset(w.ping)
}

// wakeLocked starts the write goroutine if it is not running.
func (w *writer) wakeLocked() {
	if !w.running {
		w.running = true
		w.runs.Add(1)
		go w.run()
	}
}

// queued reports how many frames are queued or being written.
func (w *writer) queued() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue) + w.inflight
}

// waitRoom waits until the queue is at most half full (waitBelow).
func (w *writer) waitRoom(done <-chan struct{}) bool {
	return w.waitBelow(max(w.limit/2, 1), done)
}

// waitBelow waits until fewer than n frames are queued or being written, at
// most the write timeout, or until done is closed; it reports whether they
// are. One goroutine waits at a time (the connection's reader).
func (w *writer) waitBelow(n int, done <-chan struct{}) bool {
	d := &drainWaiter{below: n, wake: make(chan struct{}, 1)}
	w.mu.Lock()
	w.waiter = d
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.waiter = nil
		w.mu.Unlock()
	}()
	t := time.NewTimer(defaultWriteWait)
	defer t.Stop()
	for {
		w.mu.Lock()
		queued, ended := len(w.queue)+w.inflight, w.done
		w.mu.Unlock()
		if ended {
			return false
		}
		if queued < n {
			return true
		}
		select {
		case <-d.wake:
		case <-done:
			return false
		case <-t.C:
			return false
		}
	}
}

// wakeWaiterLocked wakes the goroutine in waitBelow, if any, when it can
// go on: fewer frames than it waits for, or the writer has ended.
func (w *writer) wakeWaiterLocked() {
	if d := w.waiter; d != nil && (w.done || len(w.queue)+w.inflight < d.below) {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// run is the write goroutine: it writes what is queued, batch after batch,
// and returns when nothing is left.
func (w *writer) run() {
	defer w.runs.Done()
	for {
		w.mu.Lock()
		batch, ping, pong, closeMsg := w.queue, w.pingDue, w.pong, w.closeMsg
		if w.done || (len(batch) == 0 && !ping && pong == nil && closeMsg == nil) {
			w.running = false
			w.spare = nil
			if cap(w.queue) > maxKeptQueue {
				w.queue = nil
			}
			w.mu.Unlock()
			return
		}
		w.queue, w.spare = w.spare, nil
		w.inflight, w.pingDue, w.pong = len(batch), false, nil
		if closeMsg != nil {
			w.done = true
		}
		w.mu.Unlock()

		err := w.writeBatch(batch, ping, pong, closeMsg)

		clear(batch)
		w.mu.Lock()
		w.inflight = 0
		if cap(batch) <= maxKeptQueue {
			w.spare = batch[:0]
		}
		if err != nil {
			w.done = true
		}
		w.wakeWaiterLocked()
		w.mu.Unlock()
		switch {
		case closeMsg != nil && err == nil:
			_ = w.Close() // lingers until the client answers (linger.go)
		case errors.Is(err, errCloseSent):
			// gorilla wrote a close frame (a protocol error): the
			// connection lingers as after one of ours.
		case err != nil:
			_ = w.Conn.Close()
		}
		if err != nil || closeMsg != nil {
			return
		}
	}
}

// writeBatch encodes the frames into pooled buffers and writes them: a pong
// and a ping first (control frames may come between messages), then the
// text frames in order, then the close frame.
func (w *writer) writeBatch(batch [][]byte, ping bool, pong, closeMsg []byte) error {
	bp := batchPool.Get().(*[]byte)
	b := (*bp)[:0]
	defer func() {
		if cap(b) <= 4*maxBatch {
			*bp = b[:0]
			batchPool.Put(bp)
		}
	}()
	if pong != nil {
		b = appendFrame(b, opPong, pong)
	}
	if ping {
		b = appendFrame(b, opPing, nil)
	}
	for _, f := range batch {
		if len(b) > 0 && len(b)+len(f) > maxBatch {
			if err := w.writeOut(b, false); err != nil {
				return err
			}
			b = b[:0]
		}
		b = appendFrame(b, opText, f)
	}
	if closeMsg != nil {
		b = appendFrame(b, opClose, closeMsg)
	}
	return w.writeOut(b, closeMsg != nil)
}

var errCloseSent = errors.New("channelsapi: close frame already sent")

// writeOut writes b with one write(2). A write deadline is set only when the
// last one is less than half the write timeout away, so that a busy
// connection does not move its timer for every batch.
func (w *writer) writeOut(b []byte, closing bool) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.closeSent.Load() {
		return errCloseSent
	}
	if closing {
		w.closeSent.Store(true)
	}
	if now := time.Now(); w.deadline.Sub(now) < defaultWriteWait/2 {
		w.deadline = now.Add(defaultWriteWait)
		if err := w.Conn.SetWriteDeadline(w.deadline); err != nil {
			return err
		}
	}
	_, err := w.Conn.Write(b)
	if err != nil {
		// Part of a frame may be out: nothing more can follow it.
		w.closeSent.Store(true)
	}
	return err
}

// appendFrame appends a final, unmasked frame (a server's) to b.
func appendFrame(b []byte, op int, payload []byte) []byte {
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(op), byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|byte(op), 126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|byte(op), 127,
			byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, payload...)
}

// Write implements net.Conn for gorilla/websocket, which writes the upgrade
// response and, from its read side, the close frame of a protocol error.
// Nothing is written after a close frame.
func (w *writer) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.closeSent.Load() {
		return len(p), nil
	}
	n := len(p)
	if w.out.scan(p) {
		w.closeSent.Store(true)
		if bytes.Equal(p, gorillaTooBig) && w.tooBig != nil {
			p = w.tooBig
		}
	}
	if _, err := w.Conn.Write(p); err != nil {
		w.closeSent.Store(true) // as in writeOut
		return 0, err
	}
	return n, nil
}

// SetWriteDeadline implements net.Conn: gorilla sets one before its writes.
func (w *writer) SetWriteDeadline(t time.Time) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.deadline = t
	return w.Conn.SetWriteDeadline(t)
}

// Close closes the connection; after a close frame the client has not
// answered, the connection lingers instead, and finish closes it
// (linger.go).
func (w *writer) Close() error {
	if w.closeSent.Load() && !w.peerClosed.Load() {
		w.startLinger()
		return nil
	}
	return w.Conn.Close()
}

// end stops the writer when the connection has ended: nothing more is
// written, the pings stop, and it waits for the write goroutine (whose write
// fails once the connection is closed).
func (w *writer) end() {
	w.mu.Lock()
	w.done = true
	w.queue, w.spare = nil, nil
	if w.timer != nil {
		w.timer.Stop()
	}
	w.wakeWaiterLocked()
	w.mu.Unlock()
	w.runs.Wait()
}

// hijacker hands the WebSocket upgrade a connection wrapped in w.
type hijacker struct {
	http.ResponseWriter
	w *writer
}

// Hijack implements http.Hijacker.
func (h hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("channelsapi: the response writer cannot be hijacked")
	}
	c, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.w.Conn, h.w.httpBuf = c, rw.Writer
	return h.w, rw, nil
}

// releaseHTTPBuffer lets the write buffer of the HTTP server's connection
// go: gorilla/websocket wrote the upgrade response through it and the
// writer writes without it, but the HTTP server keeps a reference for as
// long as the handler runs, that is the connection's life (4 KiB each).
// Called once the upgrade is done.
func (w *writer) releaseHTTPBuffer() {
	if w.httpBuf != nil && w.httpBuf.Buffered() == 0 {
		*w.httpBuf = bufio.Writer{}
	}
	w.httpBuf = nil
}
