package channelsapi_test

// The end-to-end benchmarks of channelsapi, over real sockets on 127.0.0.1,
// each against a baseline measured in the same run. The load generator
// (go run ./cmd/channelsapi-bench) measures the same things with the server
// in a process of its own; see BENCHMARKS.md.

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/channelsapi/channelsapi"
)

// readers reads every frame of many client sockets, one goroutine each, and
// counts them.
type readers struct {
	count  atomic.Int64
	want   atomic.Int64
	notify chan struct{}
	wg     sync.WaitGroup
	conns  []*websocket.Conn
	last   atomic.Pointer[[]byte] // a copy of the last frame read
}

// dialReaders connects n clients to url, sends each the frame hello (if
// any) and waits for its reply, then starts their readers. Cleanup closes
// the sockets and waits for the readers.
func dialReaders(tb testing.TB, url string, n int, hello []byte) *readers {
	tb.Helper()
	r := &readers{notify: make(chan struct{}, 1)}
	tb.Cleanup(func() {
		for _, c := range r.conns {
			_ = c.Close()
		}
		r.wg.Wait()
	})
	for range n {
		c, resp, err := websocket.DefaultDialer.Dial(url, nil)
		require.NoError(tb, err)
		_ = resp.Body.Close()
		r.conns = append(r.conns, c)
		if hello != nil {
			require.NoError(tb, c.SetReadDeadline(time.Now().Add(readTimeout)))
			require.NoError(tb, c.WriteMessage(websocket.TextMessage, hello))
			_, reply, err := c.ReadMessage()
			require.NoError(tb, err)
			require.Contains(tb, string(reply), `"response_status":200`)
			require.NoError(tb, c.SetReadDeadline(time.Time{}))
		}
	}
	for _, c := range r.conns {
		r.wg.Add(1)
		go r.read(c)
	}
	return r
}

func (r *readers) read(c *websocket.Conn) {
	defer r.wg.Done()
	var buf bytes.Buffer
	for {
		_, rd, err := c.NextReader()
		if err != nil {
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(rd); err != nil {
			return
		}
		if r.count.Add(1) == r.want.Load() {
			frame := bytes.Clone(buf.Bytes())
			r.last.Store(&frame)
			select {
			case r.notify <- struct{}{}:
			default:
			}
		}
	}
}

// expect announces that the readers will have received total frames.
func (r *readers) expect(total int64) { r.want.Store(total) }

// wait blocks until the announced total arrived.
func (r *readers) wait(tb testing.TB) {
	tb.Helper()
	select {
	case <-r.notify:
	case <-time.After(readTimeout):
		tb.Fatalf("received %d frames, want %d", r.count.Load(), r.want.Load())
	}
}

// newRawMelody serves bare melody with the settings channelsapi gives it,
// the floor of what an unbatched fan-out can do.
func newRawMelody(tb testing.TB) (*melody.Melody, string) {
	tb.Helper()
	m := melody.New()
	m.Config.MaxMessageSize = channelsapi.DefaultMaxMessageSize
	m.Config.MessageBufferSize = channelsapi.DefaultQueueSize
	m.Upgrader.ReadBufferSize = 4096
	m.Upgrader.WriteBufferSize = 4096
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = m.HandleRequest(w, r) }))
	tb.Cleanup(srv.Close)
	tb.Cleanup(func() { _ = m.Close() })
	return m, "ws" + strings.TrimPrefix(srv.URL, "http")
}

// BenchmarkFanout1k publishes an event through a Register'd API (a GORM
// update, captured, encoded once and routed by the fan-out hub) to 1000
// subscribed WebSocket clients, and broadcasts the same bytes to 1000
// clients of raw melody, alternately in one loop. An iteration ends when
// every client has read the frame. allocs/op counts the whole process:
// server, both fleets of clients and the database.
func BenchmarkFanout1k(b *testing.B) {
	const n = 1000
	s := newServer(b, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(b, api) })
	seed(b, s.DB, "fan-out-a")
	sub := dialReaders(b, s.WSURL, n, []byte(`{"stream":"testmodel","payload":{"action":"subscribe","data":{"action":"update"},"request_id":1}}`))
	m, rawURL := newRawMelody(b)
	raw := dialReaders(b, rawURL, n, nil)

	names := []string{"fan-out-b", "fan-out-a"}
	update := func(i int) {
		require.NoError(b, s.DB.Model(&TestModel{ID: 1}).Update("name", names[i%2]).Error)
	}
	// One event first, to capture the exact bytes raw melody will send.
	sub.expect(n)
	update(0)
	sub.wait(b)
	frame := *sub.last.Load()
	require.Contains(b, string(frame), `"action":"update"`)

	var libTime, rawTime time.Duration
	var i int
	b.ReportAllocs()
	for b.Loop() {
		i++
		t0 := time.Now()
		sub.expect(int64(n * (i + 1)))
		update(i)
		sub.wait(b)
		t1 := time.Now()
		raw.expect(int64(n * i))
		require.NoError(b, m.Broadcast(frame))
		raw.wait(b)
		libTime += t1.Sub(t0)
		rawTime += time.Since(t1)
	}
	libRate := float64(n*i) / libTime.Seconds()
	rawRate := float64(n*i) / rawTime.Seconds()
	b.ReportMetric(libRate, "deliveries/s")
	b.ReportMetric(rawRate, "melody-deliveries/s")
	b.ReportMetric(libRate/rawRate, "ratio")
}

// BenchmarkRetrieve decodes and dispatches one retrieve over a real
// WebSocket round trip, and serves the same retrieve over REST (Gin) with a
// keep-alive client. The interleaved sub-benchmark alternates them in one
// loop and reports the WebSocket/REST time ratio.
func BenchmarkRetrieve(b *testing.B) {
	// The rate limit is lifted: its default (50 messages/s per connection)
	// would answer 429 to a benchmark loop on one socket.
	s := newServer(b, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(b, api) }, channelsapi.WithRateLimit(1e9, 1<<30))
	seed(b, s.DB, "retrieve me")
	ws := s.dial(b, nil)
	frame := []byte(`{"stream":"testmodel","payload":{"action":"retrieve","pk":1,"request_id":1}}`)
	wsRetrieve := func(b *testing.B) {
		require.NoError(b, ws.conn.SetReadDeadline(time.Now().Add(readTimeout)))
		require.NoError(b, ws.conn.WriteMessage(websocket.TextMessage, frame))
		_, reply, err := ws.conn.ReadMessage()
		require.NoError(b, err)
		if !bytes.Contains(reply, []byte(`"response_status":200`)) {
			b.Fatalf("reply %s", reply)
		}
	}
	client := &http.Client{Timeout: readTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	b.Cleanup(client.CloseIdleConnections)
	url := s.URL + "/testmodel/1"
	restRetrieve := func(b *testing.B) {
		resp, err := client.Get(url)
		require.NoError(b, err)
		_, err = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		require.NoError(b, err)
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	perSecond := func(b *testing.B) { b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s") }
	b.Run("websocket", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			wsRetrieve(b)
		}
		perSecond(b)
	})
	b.Run("rest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			restRetrieve(b)
		}
		perSecond(b)
	})
	b.Run("interleaved", func(b *testing.B) {
		var wsTime, restTime time.Duration
		b.ReportAllocs()
		for b.Loop() {
			t0 := time.Now()
			wsRetrieve(b)
			t1 := time.Now()
			restRetrieve(b)
			wsTime += t1.Sub(t0)
			restTime += time.Since(t1)
		}
		b.ReportMetric(float64(wsTime.Nanoseconds())/float64(b.N), "ws-ns/op")
		b.ReportMetric(float64(restTime.Nanoseconds())/float64(b.N), "rest-ns/op")
		b.ReportMetric(wsTime.Seconds()/restTime.Seconds(), "ws/rest")
	})
}

// benchNote is a private note of its owner, for the benchmarks of scoped
// streams.
type benchNote struct {
	ID    uint   `json:"id" gorm:"primaryKey"`
	Owner string `json:"owner" gorm:"index"`
	Text  string `json:"text"`
}

// benchOwner is the user of the scoped-stream benchmarks: a fresh value per
// request, as an application that loads its user per request builds it.
type benchOwner struct{ Name string }

// newBenchNotesServer serves benchNote as "notes" with a Scope to the
// owner's rows, and TestModel as the unguarded "testmodel". The user is a
// fresh *benchOwner per request, named by the X-User header.
func newBenchNotesServer(tb testing.TB) *testServer {
	tb.Helper()
	router := gin.New()
	router.Use(func(c *gin.Context) {
		if name := c.GetHeader("X-User"); name != "" {
			c.Set("user", &benchOwner{Name: name})
		}
	})
	db := openDB(tb, &benchNote{}, &TestModel{})
	return serveAPI(tb, router, db, func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(tb, channelsapi.Add(api, channelsapi.ViewSet[benchNote]{
			Stream: "notes",
			Scope: func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
				u, _ := r.User.(*benchOwner)
				if u == nil {
					return db.Where("1 = 0"), nil
				}
				return db.Where("owner = ?", u.Name), nil
			},
		}))
		addTestModel(tb, api)
	})
}

// BenchmarkUnguardedLatencyWithScopedSubscribers measures how long an event
// of an unguarded stream takes to reach its subscriber while another user
// writes a scoped stream, with no subscriber of the scoped stream and with
// 200 idle subscribed connections of one account, alternating between the
// two servers in the same run. It reports each p99 and their ratio.
func BenchmarkUnguardedLatencyWithScopedSubscribers(b *testing.B) {
	const idle = 200
	servers := [2]*testServer{newBenchNotesServer(b), newBenchNotesServer(b)}
	hdr := http.Header{"X-User": {"alice"}}
	for range idle {
		c := servers[1].dial(b, hdr)
		for _, e := range []string{"create", "update", "delete"} {
			got := c.request("notes", map[string]any{"action": "subscribe", "data": map[string]any{"action": e}, "request_id": e})
			require.EqualValues(b, 200, got["response_status"], "%v", got)
		}
	}
	var watchers [2]*wsClient
	var bobs [2]benchNote
	for i, s := range servers {
		watchers[i] = s.dial(b, nil)
		watchers[i].subscribe("create", nil)
		bobs[i] = benchNote{Owner: "bob", Text: "0"}
		require.NoError(b, s.DB.Create(&bobs[i]).Error)
	}
	var lat [2][]time.Duration
	n := 0
	for b.Loop() {
		for i, s := range servers {
			n++
			require.NoError(b, s.DB.Model(&bobs[i]).Update("text", strconv.Itoa(n)).Error)
			start := time.Now()
			require.NoError(b, s.DB.Create(&TestModel{Name: "x"}).Error)
			watchers[i].readPayload("testmodel")
			lat[i] = append(lat[i], time.Since(start))
		}
	}
	p99 := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)*99/100].Microseconds())
	}
	without, with := p99(lat[0]), p99(lat[1])
	b.ReportMetric(without, "p99-without-µs")
	b.ReportMetric(with, "p99-with-200-µs")
	b.ReportMetric(with/max(without, 1), "p99-ratio")
}

// benchRow is the row of BenchmarkWriterCost.
type benchRow struct {
	ID      uint `gorm:"primaryKey"`
	Counter int
}

// BenchmarkWriterCost measures what capture costs an application's own
// writer on SQLite (S7 of the bench, in-process): one goroutine updating its
// row through GORM, on three databases in the same loop: plain GORM, plain
// GORM asking for RETURNING itself (the floor of reading the row written
// from the statement), and GORM with channelsapi registered and a ViewSet of
// the model (no subscriber). It reports the ratios of the two latter rates
// to plain GORM's.
func BenchmarkWriterCost(b *testing.B) {
	open := func(capture bool) *gorm.DB {
		db := openSQLite(b, "", &benchRow{})
		if capture {
			api, err := channelsapi.Register(gin.New(), db)
			require.NoError(b, err)
			require.NoError(b, channelsapi.Add(api, channelsapi.ViewSet[benchRow]{}))
			b.Cleanup(func() { require.NoError(b, api.Shutdown(context.Background())) })
		}
		require.NoError(b, db.Create(&benchRow{ID: 1}).Error)
		return db
	}
	plain, returning, captured := open(false), open(false).Clauses(clause.Returning{}).Session(&gorm.Session{}), open(true)
	var spent [3]time.Duration
	n := 0
	for b.Loop() {
		n++
		for i, db := range []*gorm.DB{plain, returning, captured} {
			start := time.Now()
			require.NoError(b, db.Model(&benchRow{ID: 1}).Update("counter", n).Error)
			spent[i] += time.Since(start)
		}
	}
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(n), "plain-ns/update")
	b.ReportMetric(spent[0].Seconds()/spent[1].Seconds(), "returning/plain")
	b.ReportMetric(spent[0].Seconds()/spent[2].Seconds(), "capture/plain")
}
