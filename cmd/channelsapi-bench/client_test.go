package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A centrifuge frame carries several replies, one per line: every
// publication counts as a delivery, in seq order, and a ping in between is
// answered with a pong.
func TestCentrifugeFrameSplitting(t *testing.T) {
	pong := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, cmds, err := conn.ReadMessage(); err != nil || !strings.Contains(string(cmds), `"subscribe":{"channel":"items"}`) {
			t.Errorf("commands %q, %v", cmds, err)
			return
		}
		replies := `{"id":1,"connect":{"client":"c1","version":"","ping":25,"pong":true}}` + "\n" + `{"id":2,"subscribe":{}}`
		pub := func(seq string) string {
			return `{"push":{"channel":"items","pub":{"data":{"stream":"items","payload":{"action":"update","pk":1,"data":{"id":1,"name":"item-1","seq":` + seq + `,"ts":1,"pad":""},"model":"bench.item"}}}}}`
		}
		frame := pub("1") + "\n{}\n" + pub("2") + "\n" + pub("3")
		for _, m := range []string{replies, frame, pub("5")} {
			if err := conn.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
				t.Error(err)
				return
			}
		}
		_, b, err := conn.ReadMessage()
		if err != nil {
			t.Error(err)
			return
		}
		pong <- string(b)
		_, _, _ = conn.ReadMessage() // until the client closes
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := dialFleet(ctx, dialOptions{url: "ws" + strings.TrimPrefix(srv.URL, "http"), srcIPs: 1, centrifuge: true}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.closeAll()
	if !f.waitFrames(ctx, 4, 5*time.Second) {
		t.Fatalf("%d deliveries, want 4", f.recv.Load())
	}
	select {
	case p := <-pong:
		if p != "{}" {
			t.Errorf("pong %q, want {}", p)
		}
	case <-ctx.Done():
		t.Fatal("no pong")
	}
	f.closeAll()
	c := f.clients[0]
	if got := c.frames.Load(); got != 4 {
		t.Errorf("%d deliveries, want 4", got)
	}
	if got := f.msgs.Load(); got != 2 {
		t.Errorf("%d messages, want 2", got)
	}
	if c.lastSeq != 5 || c.gaps != 1 {
		t.Errorf("last seq %d, %d gaps; want 5 and 1 (seq 4 never came)", c.lastSeq, c.gaps)
	}
}
