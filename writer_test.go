package channelsapi_test

// This file tests the connection's writer (writer.go) from the outside:
// pings and pongs among the events, frames of every length class in one
// batch, and nothing written after the close frame.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// eventNames reads n create events from c and returns their names in the
// order they came; pings and pongs are handled by the read itself.
func eventNames(t *testing.T, c *wsClient, n int) []string {
	t.Helper()
	out := make([]string, 0, n)
	for len(out) < n {
		p := c.readPayload("testmodel")
		require.Equal(t, "create", p["action"], "%v", p)
		data, _ := p["data"].(map[string]any)
		name, _ := data["name"].(string)
		out = append(out, name)
	}
	return out
}

// TestWriterPingsAndPongsAmongEvents: while events flow, the server pings
// every ping period and answers each of the client's pings with a pong
// carrying its payload; the events arrive whole and in order.
func TestWriterPingsAndPongsAmongEvents(t *testing.T) {
	const pingPeriod = 20 * time.Millisecond
	// A queue that holds every event: the writes run back to back, and a
	// client slower than them is closed with 1013 by design.
	srv := testModelServer(t, channelsapi.WithKeepalive(pingPeriod, 10*time.Second), channelsapi.WithQueueSize(1024))
	c := srv.dial(t, nil)
	c.subscribe("create", nil)

	var mu sync.Mutex
	serverPings, pongs := 0, []string{}
	c.conn.SetPingHandler(func(p string) error {
		mu.Lock()
		serverPings++
		mu.Unlock()
		return c.conn.WriteControl(websocket.PongMessage, []byte(p), time.Now().Add(readTimeout))
	})
	pongSeen := make(chan string, 16)
	c.conn.SetPongHandler(func(p string) error {
		mu.Lock()
		pongs = append(pongs, p)
		mu.Unlock()
		pongSeen <- p
		return nil
	})

	const events = 300
	want := make([]string, events)
	for i := range want {
		want[i] = fmt.Sprintf("event-%03d", i)
	}
	written := make(chan error, 1)
	go func() {
		for i, name := range want {
			if err := srv.DB.Create(&TestModel{Name: name}).Error; err != nil {
				written <- err
				return
			}
			if i%50 == 0 { // a ping of the client's among the events
				payload := fmt.Sprintf("ping-%d", i)
				if err := c.conn.WriteControl(websocket.PingMessage, []byte(payload), time.Now().Add(readTimeout)); err != nil {
					written <- err
					return
				}
			}
		}
		written <- nil
	}()
	got := eventNames(t, c, events)
	require.NoError(t, <-written)
	assert.Equal(t, want, got, "every event, in order")

	// The server keeps pinging an idle connection, period after period
	// (a pending read handles the pings).
	readEnded := make(chan error, 1)
	go func() {
		_, _, err := c.conn.ReadMessage()
		readEnded <- err
	}()
	defer func() {
		_ = c.conn.Close()
		<-readEnded
	}()
	mu.Lock()
	before := serverPings
	mu.Unlock()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return serverPings >= before+3
	}, readTimeout, pingPeriod/2, "pings are read by a pending read")
	mu.Lock()
	defer mu.Unlock()
	assert.NotEmpty(t, pongs, "the client's pings are answered")
	for _, p := range pongs {
		assert.True(t, strings.HasPrefix(p, "ping-"), "a pong carries its ping's payload: %q", p)
	}
}

// TestWriterFrameLengths: events whose frames have payloads on both sides
// of the 7-bit, 16-bit and 64-bit length boundaries, and a batch longer than
// the writer's buffer, written back to back: each arrives whole.
func TestWriterFrameLengths(t *testing.T) {
	srv := testModelServer(t)
	c := srv.dial(t, nil)
	c.subscribe("create", nil)

	// An event frame is its name plus a fixed envelope; find the envelope's
	// length from one event, then aim names at the boundaries.
	require.NoError(t, srv.DB.Create(&TestModel{Name: "x"}).Error)
	envelope := len(c.readRaw()) - 1
	var want []string
	for _, size := range []int{125, 126, 127, 65535, 65536, 65537, 200 << 10} {
		for _, d := range []int{-1, 0} {
			if n := size + d - envelope; n > 0 {
				want = append(want, strings.Repeat(string(rune('a'+len(want)%26)), n))
			}
		}
	}
	err := srv.DB.Transaction(func(tx *gorm.DB) error {
		for _, name := range want {
			if err := tx.Create(&TestModel{Name: name}).Error; err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	got := eventNames(t, c, len(want))
	require.Equal(t, len(want), len(got))
	for i := range want {
		assert.Equal(t, len(want[i]), len(got[i]), "event %d", i)
		assert.Equal(t, want[i], got[i], "event %d", i)
	}
}

// TestWriterNothingAfterClose: a connection closed (Disconnect, 1008) while
// events are being written receives a gap-free prefix of them, then the
// close frame, then nothing: the next read of the TCP connection is its end.
func TestWriterNothingAfterClose(t *testing.T) {
	// A queue that holds every event (see TestWriterPingsAndPongsAmongEvents).
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithQueueSize(1024))
	c := srv.dialUser(t, "alice")
	c.subscribe("create", nil)

	const events = 500
	stop := make(chan struct{})
	written := make(chan error, 1)
	go func() {
		for i := range events {
			select {
			case <-stop:
				written <- nil
				return
			default:
			}
			if err := srv.DB.Create(&TestModel{Name: fmt.Sprintf("%d", i)}).Error; err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	seen := 0
	for seen < 20 {
		p := c.readPayload("testmodel")
		data, _ := p["data"].(map[string]any)
		require.Equal(t, fmt.Sprintf("%d", seen), data["name"], "events in order, without a gap")
		seen++
	}
	require.Equal(t, 1, srv.API.Disconnect(func(u any) bool { return u == "alice" }))
	for {
		require.NoError(t, c.conn.SetReadDeadline(time.Now().Add(readTimeout)))
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, 1008, ce.Code)
			break
		}
		var f struct {
			Payload struct {
				Data struct{ Name string }
			}
		}
		require.NoError(t, json.Unmarshal(b, &f))
		require.Equal(t, fmt.Sprintf("%d", seen), f.Payload.Data.Name, "events in order, without a gap")
		seen++
	}
	close(stop)
	require.NoError(t, <-written)
	// After the close frame: the end of the stream, not another byte.
	raw := c.conn.UnderlyingConn()
	require.NoError(t, raw.SetReadDeadline(time.Now().Add(readTimeout)))
	n, err := io.Copy(io.Discard, raw)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server ends the connection: %v", err)
	assert.Zero(t, n, "bytes after the close frame")
}

// TestWriterFrameTooBigAmongEvents: a frame over the size limit arrives
// while events are being written: gorilla's 1009 close frame ends the
// writes, and the client, still sending, receives it with its reason (the
// connection lingers rather than being reset).
func TestWriterFrameTooBigAmongEvents(t *testing.T) {
	// A queue that holds every event (at most 1000 per run, see
	// TestWriterPingsAndPongsAmongEvents).
	srv := testModelServer(t, channelsapi.WithQueueSize(1024))
	frame := []byte(`{"stream":"testmodel","payload":{"action":"list","x":"` + strings.Repeat("x", 4<<20) + `"}}`)
	for i := range 10 {
		c := srv.dial(t, nil)
		c.subscribe("create", nil)
		stop := make(chan struct{})
		created := make(chan error, 1)
		go func() {
			for n := 0; n < 1000; n++ {
				select {
				case <-stop:
					created <- nil
					return
				default:
				}
				if err := srv.DB.Create(&TestModel{Name: fmt.Sprintf("%d-%d", i, n)}).Error; err != nil {
					created <- err
					return
				}
			}
			created <- nil
		}()
		sent := make(chan error, 1)
		go func() { sent <- c.conn.WriteMessage(websocket.TextMessage, frame) }()
		code, reason := closeOf(t, c.conn)
		close(stop)
		require.NoError(t, <-created)
		// The client stops sending once it has answered the close frame.
		if err := <-sent; !errors.Is(err, websocket.ErrCloseSent) {
			assert.NoError(t, err, "run %d: the server reads what follows its close", i+1)
		}
		assert.Equal(t, websocket.CloseMessageTooBig, code, "run %d: %s", i+1, reason)
		_ = c.conn.Close()
	}
}
