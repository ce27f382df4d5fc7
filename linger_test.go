package channelsapi_test

// This file tests linger.go: a client the server closes receives the close
// code and its reason, also when it is still sending (a frame over the size
// limit, or frames one after another), and the lingering ends with Shutdown.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi"
)

// closeOf reads from conn until an error and returns it as a close frame's
// code and reason; 1006 when the connection ended without one.
func closeOf(t *testing.T, conn *websocket.Conn) (code int, reason string) {
	t.Helper()
	for {
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(readTimeout)))
		_, _, err := conn.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Text
		}
		return websocket.CloseAbnormalClosure, err.Error()
	}
}

// TestLingerFrameTooBig sends a 4 MiB frame against the 64 KiB limit, 20
// times: each time the client receives 1009 and its reason, not a reset.
func TestLingerFrameTooBig(t *testing.T) {
	srv := testModelServer(t)
	frame := []byte(`{"stream":"testmodel","payload":{"action":"list","x":"` + strings.Repeat("x", 4<<20) + `"}}`)
	want := fmt.Sprintf("frame larger than %d bytes", channelsapi.DefaultMaxMessageSize)
	for i := range 20 {
		conn, resp, err := websocket.DefaultDialer.Dial(srv.WSURL, nil)
		require.NoError(t, err)
		_ = resp.Body.Close()
		// The whole frame is written before the close frame is read, as a
		// client that sends and then reads does.
		assert.NoError(t, conn.WriteMessage(websocket.TextMessage, frame), "run %d: the server reads what follows its close", i+1)
		code, reason := closeOf(t, conn)
		_ = conn.Close()
		assert.Equal(t, websocket.CloseMessageTooBig, code, "run %d: %s", i+1, reason)
		assert.Equal(t, want, reason, "run %d", i+1)
	}
}

// sendUntilClosed sends frames on c until the connection fails or the test
// ends; its replies are the reader's. It returns when the first is read.
func sendUntilClosed(t *testing.T, c *wsClient) {
	t.Helper()
	junk := []byte(strings.Repeat("x", 16<<10)) // answered 400
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for c.conn.WriteMessage(websocket.TextMessage, junk) == nil {
		}
	}()
	t.Cleanup(func() {
		_ = c.conn.Close()
		wg.Wait()
	})
	c.readRaw()
}

// TestLingerClientStillSending: a client that keeps sending while the
// server closes it receives the close code and reason.
func TestLingerClientStillSending(t *testing.T) {
	tests := []struct {
		name       string
		opts       []channelsapi.Option
		close      func(t *testing.T, srv *testServer)
		wantCode   int
		wantReason string
	}{
		{"1008 Disconnect", nil, func(t *testing.T, srv *testServer) {
			assert.Equal(t, 1, srv.API.Disconnect(func(any) bool { return true }))
		}, websocket.ClosePolicyViolation, "authorization withdrawn"},
		{"1013 bulk change", []channelsapi.Option{channelsapi.WithBulkEventLimit(1)}, func(t *testing.T, srv *testServer) {
			require.NoError(t, srv.DB.Model(&TestModel{}).Where("id > 0").Update("name", "x").Error)
		}, websocket.CloseTryAgainLater, "bulk change"},
		{"1001 Shutdown", nil, func(t *testing.T, srv *testServer) {
			ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
			t.Cleanup(cancel)
			done := make(chan error, 1)
			go func() { done <- srv.API.Shutdown(ctx) }()
			t.Cleanup(func() { assert.NoError(t, <-done) })
		}, websocket.CloseGoingAway, "server shutting down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testModelServer(t, tt.opts...)
			seed(t, srv.DB, "a", "b")
			c := srv.dial(t, nil)
			c.subscribe("update", nil)
			sendUntilClosed(t, c)
			tt.close(t, srv)
			code, reason := closeOf(t, c.conn)
			assert.Equal(t, tt.wantCode, code, reason)
			assert.Equal(t, tt.wantReason, reason)
		})
	}
}

// TestLingerEndsWithShutdown: a client that does not read does not answer
// the close frame; the connection lingers, and Shutdown ends it when its
// ctx ends.
func TestLingerEndsWithShutdown(t *testing.T) {
	srv := testModelServer(t)
	c := srv.dial(t, nil)
	c.assertAlive()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, srv.API.Shutdown(ctx), context.DeadlineExceeded, "the client does not answer: the connection lingers")
	start := time.Now()
	require.NoError(t, srv.API.Shutdown(context.Background()))
	assert.Less(t, time.Since(start), time.Second, "the linger was cut when the first Shutdown's ctx ended")
}
