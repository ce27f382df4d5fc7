package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h): bind a source
// address but pick the port at connect time, so that ports are shared
// across destinations.
const ipBindAddressNoPort = 24

// dialOptions says how a fleet connects.
type dialOptions struct {
	url         string           // ws://127.0.0.1:port/ws
	stream      string           // the stream subscribed to; empty: streamName
	srcIPs      int              // source addresses 127.0.0.1.. to spread over (1 = no bind)
	subscribe   func(i int) int  // lib: the pk connection i subscribes to (0 = every object); nil = no subscription (raw)
	list        func(i int) int  // lib: the id connection i's live query of qStreamName selects; nil = none
	stalled     func(i int) bool // connections that stop reading until resume
	stallRcvBuf int              // SO_RCVBUF of stalled connections
	centrifuge  bool             // the centrifuge peer: its JSON protocol, subscribed to the channel stream (or streamName)
	workers     int
}

// wsClient is one client connection; its reader goroutine owns it.
type wsClient struct {
	conn    *websocket.Conn
	stalled bool
	split   bool // centrifuge: a frame holds several replies, one per line

	frames  atomic.Int64 // deliveries
	lastNs  atomic.Int64
	ended   atomic.Bool // the reader returned; close is set
	lastSeq int64       // reader only
	gaps    int64       // reader only: seq jumps, i.e. frames silently lost
	lats    []sample    // reader only: commit-to-delivered latencies
	close   int         // reader only: close code received (0 none, -1 other error)
	reason  string      // reader only: the close frame's reason
}

// sample is the commit-to-delivered latency of the event seq at one client.
type sample struct{ seq, ns int64 }

// fleet is many client connections, each read by a goroutine that does
// minimal parsing (bytes.Index for seq and ts). A delivery is a frame, or for
// the centrifuge peer one line of a frame; frames count deliveries.
type fleet struct {
	clients []*wsClient
	recv    atomic.Int64 // deliveries received by all clients
	msgs    atomic.Int64 // WebSocket messages received by all clients (centrifuge: several deliveries each)
	minSeq  atomic.Int64 // latencies are recorded for seq >= minSeq (0: not at all)
	resume  chan struct{}
	closing chan struct{}
	wg      sync.WaitGroup
	closed  bool
}

func newDialer(o dialOptions, i int) *websocket.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second}
	stalled := o.stalled != nil && o.stalled(i)
	if o.srcIPs > 1 {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%o.srcIPs))}
	}
	d.Control = func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if o.srcIPs > 1 {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			}
			if stalled && o.stallRcvBuf > 0 && serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.stallRcvBuf)
			}
		})
		return errors.Join(err, serr)
	}
	return &websocket.Dialer{
		NetDialContext:   d.DialContext,
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   4096,
		WriteBufferSize:  512,
	}
}

// dialFleet opens n connections (and subscribes them) with a few workers,
// then starts one reader goroutine per connection.
func dialFleet(ctx context.Context, o dialOptions, n int) (*fleet, error) {
	f := &fleet{clients: make([]*wsClient, n), resume: make(chan struct{}), closing: make(chan struct{})}
	workers := max(o.workers, 1)
	var next atomic.Int64
	var failed atomic.Bool
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil || failed.Load() {
					return
				}
				c, err := dialOne(ctx, o, i)
				if err != nil {
					failed.Store(true)
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				f.clients[i] = c
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(<-errs, ctx.Err()); err != nil {
		f.closeAll()
		return nil, err
	}
	for _, c := range f.clients {
		f.wg.Add(1)
		go f.read(c)
	}
	return f, nil
}

func dialOne(ctx context.Context, o dialOptions, i int) (*wsClient, error) {
	conn, resp, err := newDialer(o, i).DialContext(ctx, o.url, nil)
	if err != nil {
		return nil, err
	}
	_ = resp.Body.Close()
	c := &wsClient{conn: conn, stalled: o.stalled != nil && o.stalled(i)}
	if o.centrifuge {
		stream := o.stream
		if stream == "" {
			stream = streamName
		}
		if err := centrifugeSubscribe(conn, stream); err != nil {
			_ = conn.Close()
			return nil, err
		}
		c.split = true
		return c, nil
	}
	if o.subscribe != nil {
		stream := o.stream
		if stream == "" {
			stream = streamName
		}
		frame := []byte(`{"stream":"` + stream + `","payload":{"action":"subscribe","data":{"action":"update"},"request_id":1`)
		if pk := o.subscribe(i); pk > 0 {
			frame = append(frame, `,"pk":`...)
			frame = strconv.AppendInt(frame, int64(pk), 10)
		}
		frame = append(frame, "}}"...)
		if err := request(conn, frame); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	if o.list != nil {
		// The request id is the connection's second, as a client
		// numbering its requests would send.
		frame := []byte(`{"stream":"` + qStreamName + `","payload":{"action":"subscribe_list","data":{"id":`)
		frame = strconv.AppendInt(frame, int64(o.list(i)), 10)
		frame = append(frame, `},"request_id":2}}`...)
		if err := request(conn, frame); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	return c, nil
}

// request sends a subscribe request and reads its reply, which must say
// 200.
func request(conn *websocket.Conn, frame []byte) error {
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		return err
	}
	_, reply, err := conn.ReadMessage()
	if err != nil {
		return err
	}
	if !bytes.Contains(reply, []byte(`"response_status":200`)) {
		return fmt.Errorf("subscribe refused: %s", reply)
	}
	return conn.SetReadDeadline(time.Time{})
}

// centrifugeSubscribe connects with centrifuge's JSON protocol and
// subscribes to channel: a connect command and a subscribe command in one
// frame, then it reads replies (several may share a frame, one per line)
// until the subscribe reply, which must not be an error.
func centrifugeSubscribe(conn *websocket.Conn, channel string) error {
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	cmds := `{"id":1,"connect":{}}` + "\n" + `{"id":2,"subscribe":{"channel":"` + channel + `"}}`
	if err := conn.WriteMessage(websocket.TextMessage, []byte(cmds)); err != nil {
		return err
	}
	for {
		_, frame, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		for line := range bytes.SplitSeq(frame, []byte{'\n'}) {
			if bytes.Contains(line, []byte(`"error":`)) {
				return fmt.Errorf("centrifuge refused: %s", line)
			}
			if bytes.Contains(line, []byte(`"id":2,`)) {
				return conn.SetReadDeadline(time.Time{})
			}
		}
	}
}

// centrifugePing is centrifuge's ping in its JSON protocol, and the pong a
// client answers with.
var centrifugePing = []byte(`{}`)

var (
	seqKey = []byte(`"seq":`)
	tsKey  = []byte(`"ts":`)
)

// intAfter parses the decimal integer following key in b, or returns 0.
func intAfter(b, key []byte) int64 {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0
	}
	var v int64
	for _, ch := range b[i+len(key):] {
		if ch < '0' || ch > '9' {
			break
		}
		v = v*10 + int64(ch-'0')
	}
	return v
}

func (f *fleet) read(c *wsClient) {
	defer f.wg.Done()
	defer c.ended.Store(true)
	if c.stalled {
		select {
		case <-f.resume:
		case <-f.closing:
			return
		}
	}
	buf := make([]byte, 0, 1024)
	for {
		_, r, err := c.conn.NextReader()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				c.close, c.reason = ce.Code, ce.Text
			} else {
				c.close = -1
			}
			return
		}
		buf = buf[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				c.close = -1
				return
			}
		}
		now := time.Now().UnixNano()
		f.msgs.Add(1)
		if !c.split {
			f.deliver(c, buf, now)
			continue
		}
		// centrifuge: one reply per line, publications and pings alike.
		for rest := buf; len(rest) > 0; {
			line := rest
			if i := bytes.IndexByte(rest, '\n'); i >= 0 {
				line, rest = rest[:i], rest[i+1:]
			} else {
				rest = nil
			}
			if bytes.Equal(line, centrifugePing) {
				_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if err := c.conn.WriteMessage(websocket.TextMessage, centrifugePing); err != nil {
					c.close = -1
					return
				}
				continue
			}
			f.deliver(c, line, now)
		}
	}
}

// deliver counts one delivery (a frame, or one publication of a centrifuge
// frame) received by c at now.
func (f *fleet) deliver(c *wsClient, b []byte, now int64) {
	if seq := intAfter(b, seqKey); seq > 0 {
		if c.lastSeq != 0 && seq != c.lastSeq+1 {
			c.gaps++
		}
		c.lastSeq = seq
		if lo := f.minSeq.Load(); lo > 0 && seq >= lo {
			c.lats = append(c.lats, sample{seq: seq, ns: now - intAfter(b, tsKey)})
		}
	}
	c.lastNs.Store(now)
	c.frames.Add(1)
	f.recv.Add(1)
}

// waitFrames waits until the fleet received total frames, or timeout, or
// ctx (the scenario's bound) is done.
func (f *fleet) waitFrames(ctx context.Context, total int64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for f.recv.Load() < total {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// stalledDone reports whether every stalled client has ended or received
// per frames.
func (f *fleet) stalledDone(stalled func(int) bool, per int64) bool {
	for i, c := range f.clients {
		if stalled(i) && !c.ended.Load() && c.frames.Load() < per {
			return false
		}
	}
	return true
}

// closes describes how the clients that ended did so, for error messages.
func (f *fleet) closes() string {
	codes := map[int]int{}
	for _, c := range f.clients {
		if c.ended.Load() {
			codes[c.close]++
		}
	}
	return fmt.Sprintf("ended clients by close code (-1: error): %v", codes)
}

// lastFrameNs is the time the last frame arrived at any client.
func (f *fleet) lastFrameNs() int64 {
	var t int64
	for _, c := range f.clients {
		t = max(t, c.lastNs.Load())
	}
	return t
}

// closeAll closes every connection and waits for the readers. Client fields
// may be read after it returns.
func (f *fleet) closeAll() {
	if f.closed {
		return
	}
	f.closed = true
	close(f.closing)
	for _, c := range f.clients {
		if c != nil {
			_ = c.conn.Close()
		}
	}
	f.wg.Wait()
}

// restClient is an HTTP client keeping up to conns keep-alive connections.
func restClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
			DisableCompression: true, IdleConnTimeout: time.Minute,
		},
	}
}
