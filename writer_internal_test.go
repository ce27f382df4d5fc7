package channelsapi

// This file checks that melody's write goroutine never writes: every frame
// of a busy connection (replies, events, pings, pongs, the close frame)
// goes through the connection's writer. Run under -race with the rest.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

type writerItem struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
}

func TestMelodyNeverWrites(t *testing.T) {
	gin.SetMode(gin.TestMode)
	db, err := gorm.Open(sqlite.Open(filepath.Join(t.TempDir(), "w.db")+"?_journal_mode=WAL&_busy_timeout=5000"), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	require.NoError(t, db.AutoMigrate(&writerItem{}))
	router := gin.New()
	api, err := Register(router, db, WithKeepalive(10*time.Millisecond, 5*time.Second), WithQueueSize(4096))
	require.NoError(t, err)
	require.NoError(t, Add(api, ViewSet[writerItem]{Stream: "items"}))
	var melodyWrites atomic.Int64
	api.melody.HandleSentMessage(func(*melody.Session, []byte) { melodyWrites.Add(1) })
	api.melody.HandleSentMessageBinary(func(*melody.Session, []byte) { melodyWrites.Add(1) })
	srv := httptest.NewServer(router)
	defer func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, api.Shutdown(ctx))
		if sqlDB, err := db.DB(); err == nil {
			_ = sqlDB.Close()
		}
	}()

	const clients, events = 4, 200
	var wg sync.WaitGroup
	codes := make(chan int, clients)
	var finished atomic.Int32 // clients that have every event and reply
	for i := range clients {
		conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(`{"stream":"items","payload":{"action":"subscribe","data":{"action":"create"},"request_id":1}}`)))
		_, b, err := conn.ReadMessage()
		require.NoError(t, err)
		require.Contains(t, string(b), `"response_status":200`)
		pongs := make(chan struct{}, 1)
		conn.SetPongHandler(func(string) error {
			select {
			case pongs <- struct{}{}:
			default:
			}
			return nil
		})
		var mu sync.Mutex // the reader's pong answers and the pinger's pings
		conn.SetPingHandler(func(p string) error {
			mu.Lock()
			defer mu.Unlock()
			return conn.WriteControl(websocket.PongMessage, []byte(p), time.Now().Add(5*time.Second))
		})
		wg.Go(func() { // pings and requests of the client's, among the events
			for n := range 20 {
				mu.Lock()
				err := conn.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(5*time.Second))
				if err == nil {
					err = conn.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"stream":"items","payload":{"action":"list","request_id":%d}}`, n)))
				}
				mu.Unlock()
				if err != nil {
					return // closed at the end
				}
			}
		})
		wg.Go(func() {
			next, replies := 0, 0
			for {
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, b, err := conn.ReadMessage()
				if err != nil {
					ce, _ := err.(*websocket.CloseError)
					if ce != nil {
						codes <- ce.Code
					} else {
						codes <- -1
					}
					assert.Equal(t, events, next, "client %d: every event", i)
					assert.Equal(t, 20, replies, "client %d: every reply", i)
					return
				}
				if s := string(b); strings.Contains(s, `"action":"create"`) {
					assert.Contains(t, s, fmt.Sprintf(`"name":"e%d"`, next), "client %d: events in order", i)
					next++
				} else {
					replies++
				}
				if next == events && replies == 20 && finished.Add(1) == clients {
					api.Disconnect(func(any) bool { return true })
				}
			}
		})
	}
	for n := range events {
		require.NoError(t, db.Create(&writerItem{Name: fmt.Sprintf("e%d", n)}).Error)
	}
	wg.Wait()
	for range clients {
		assert.Equal(t, closePolicy, <-codes)
	}
	assert.Zero(t, melodyWrites.Load(), "frames written by melody's pump")
	assert.Equal(t, time.Duration(neverPing), api.melody.Config.PingPeriod, "melody never pings")
	assert.Zero(t, api.melody.Config.MessageBufferSize, "melody queues nothing")
}

// TestWaitRoom: the reader's wait for room in the queue (the replay path of
// handleFrame) ends at once when there is room, also with a queue of one
// frame, and when the writer has ended, rather than at the write timeout.
func TestWaitRoom(t *testing.T) {
	for _, limit := range []int{1, 2, 256} {
		w := &writer{limit: limit}
		start := time.Now()
		assert.True(t, w.waitRoom(nil), "limit %d: an empty queue has room", limit)
		assert.Less(t, time.Since(start), time.Second, "limit %d", limit)
	}
	w := &writer{limit: 4}
	w.queue = [][]byte{{1}, {2}, {3}, {4}}
	waited := make(chan bool)
	go func() { waited <- w.waitRoom(nil) }()
	w.mu.Lock()
	for w.waiter == nil { // the wait has begun
		w.mu.Unlock()
		runtime.Gosched()
		w.mu.Lock()
	}
	w.mu.Unlock()
	start := time.Now()
	w.end()
	select {
	case ok := <-waited:
		assert.False(t, ok, "no room: the writer ended")
		assert.Less(t, time.Since(start), time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("the wait outlived the writer")
	}
}

// TestWakeBatchBoundsARun: a connection deferred while a run of events is
// published is woken after at most maxRun of them, and at the end; a
// single event is not deferred.
func TestWakeBatchBoundsARun(t *testing.T) {
	var b wakeBatch
	w := &writer{limit: 1 << 20, wakes: &b, running: true} // running: no goroutine is started
	var wokenAt []int
	b.publish(2*maxRun+10, func(i int) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.listed {
			if i > 0 {
				wokenAt = append(wokenAt, i)
			}
			require.True(t, b.hold(w), "event %d: a batch is under way", i)
			w.listed = true
		}
	})
	assert.Equal(t, []int{maxRun, 2 * maxRun}, wokenAt, "woken after every maxRun events")
	assert.False(t, w.listed, "woken at the end")
	b.publish(1, func(int) { assert.False(t, b.hold(w), "one event: no batch") })
}

// TestWakeBatchHalfQueue: a connection deferred by a run of events longer
// than half its queue is woken when half its queue is full, not closed as a
// slow client when the queue fills before the run ends.
func TestWakeBatchHalfQueue(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	go func() { _, _ = io.Copy(io.Discard, client) }()
	var b wakeBatch
	w := &writer{Conn: server, limit: 8, wakes: &b}
	defer func() {
		_ = server.Close()
		w.end()
	}()
	b.publish(maxRun, func(i int) {
		assert.True(t, w.send([]byte("{}")), "event %d: queued, not refused as a slow client", i)
		// Half of the queue (4 frames) wakes the writer within the run: the
		// wait for room ends without waiting for the end of the run, as a
		// client that reads keeps up.
		start := time.Now()
		require.True(t, w.waitRoom(nil), "event %d: woken at half the queue", i)
		require.Less(t, time.Since(start), 5*time.Second, "event %d", i)
	})
}
