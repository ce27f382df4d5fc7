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
)

// This file batches the writes of one WebSocket connection into fewer
// system calls. melody's write goroutine writes each queued frame with its
// own write(2); while more of this connection's frames are queued behind the
// one being written, cork keeps the bytes and writes them all at once when
// the last queued frame is out (or when maxCorked bytes are waiting). Frames
// are never reordered and never wait for a timer: the batch ends as soon as
// the queue is empty.

// maxCorked is how many bytes a corked connection keeps before it writes.
const maxCorked = 64 << 10

// cork wraps the hijacked network connection of a WebSocket.
type cork struct {
	net.Conn
	queued atomic.Int64 // frames handed to melody and not yet written
	waiter atomic.Pointer[drainWaiter]

	mu     sync.Mutex
	buf    []byte
	err    error  // a failed write: every later write fails with it
	out    frames // the frames written, to notice a close frame
	unstop func() bool

	// The lingering close (linger.go).
	tooBig     []byte          // the 1009 close frame written for gorilla's
	stop       context.Context // done: lingering ends (Shutdown's ctx ended)
	closeSent  atomic.Bool     // the server wrote a close frame
	peerClosed atomic.Bool     // the client's close frame was read
	deadline   sync.Mutex      // orders SetReadDeadline with the start of the linger
	lingering  bool            // of deadline
	lingerOnce sync.Once
	dropped    atomic.Int64 // bytes of frames dropped after closeSent
}

// Write implements net.Conn. gorilla/websocket calls it with one frame (or
// part of one) at a time, serialised by its write lock.
func (k *cork) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.err != nil {
		return 0, k.err
	}
	n := len(p)
	if k.out.scan(p) {
		k.closeSent.Store(true)
		if bytes.Equal(p, gorillaTooBig) && k.tooBig != nil {
			p = k.tooBig
		}
	}
	if k.queued.Load() > 0 && len(k.buf)+len(p) <= maxCorked {
		k.buf = append(k.buf, p...)
		return n, nil
	}
	if err := k.flushLocked(); err != nil {
		return 0, err
	}
	if _, err := k.Conn.Write(p); err != nil {
		return 0, err
	}
	return n, nil
}

// sent records that one queued frame was written; when none is left the
// batch goes out.
func (k *cork) sent() {
	n := k.queued.Add(-1)
	if n <= 0 {
		k.flush()
	}
	if w := k.waiter.Load(); w != nil && n < w.below {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// drainWaiter is a goroutine waiting in waitBelow.
type drainWaiter struct {
	below int64
	wake  chan struct{}
}

// waitBelow waits until fewer than n frames are queued, at most the write
// timeout, or until done is closed; it reports whether they are. One
// goroutine waits at a time (the connection's reader).
func (k *cork) waitBelow(n int64, done <-chan struct{}) bool {
	w := &drainWaiter{below: n, wake: make(chan struct{}, 1)}
	k.waiter.Store(w)
	defer k.waiter.Store(nil)
	t := time.NewTimer(defaultWriteWait)
	defer t.Stop()
	for k.queued.Load() >= n {
		select {
		case <-w.wake:
		case <-done:
			return false
		case <-t.C:
			return false
		}
	}
	return true
}

func (k *cork) flush() {
	k.mu.Lock()
	defer k.mu.Unlock()
	_ = k.flushLocked()
}

func (k *cork) flushLocked() error {
	if len(k.buf) == 0 || k.err != nil {
		return k.err
	}
	_, k.err = k.Conn.Write(k.buf)
	k.buf = k.buf[:0]
	if cap(k.buf) > maxCorked {
		k.buf = nil
	}
	return k.err
}

// Close writes what is kept, then closes the connection; after a close
// frame the client has not answered, the connection lingers instead, and
// finish closes it (linger.go).
func (k *cork) Close() error {
	k.flush()
	if k.closeSent.Load() && !k.peerClosed.Load() {
		k.startLinger()
		return nil
	}
	return k.Conn.Close()
}

// corkWriter hands the WebSocket upgrade a connection wrapped in k.
type corkWriter struct {
	http.ResponseWriter
	k *cork
}

// Hijack implements http.Hijacker.
func (w corkWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("channelsapi: the response writer cannot be hijacked")
	}
	c, rw, err := h.Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.k.Conn = c
	return w.k, rw, nil
}
