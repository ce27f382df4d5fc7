package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/olahol/melody"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
)

// Item is the model every scenario writes. Its JSON carries seq and ts so
// that a client finds them with bytes.Index: seq detects gaps (silent drops),
// ts (Unix ns, taken just before the write) gives commit-to-delivered latency.
type Item struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
	Seq  int64  `json:"seq"`
	TS   int64  `json:"ts"`
	Pad  string `json:"pad"`
}

const (
	streamName = "items"
	modelLabel = "bench.item"
)

// QItem is Item in a table of its own (q_items), with the same fields and
// so the same JSON, on a stream whose ViewSet declares a filter: S8's live
// queries. A stream with filters reads the row before every update, so
// Item's stream, which the other scenarios measure, does not get one.
type QItem Item

const (
	qStreamName = "qitems"
	qModelLabel = "bench.qitem"
)

func itemName(id uint) string { return "item-" + strconv.FormatUint(uint64(id), 10) }

// serverConfig is what the driver passes to a server subprocess.
type serverConfig struct {
	mode       string // "lib": channelsapi; "raw": melody Broadcast with the library's settings; "raw-default": melody.New() as is; "writers": S7
	rows       int    // rows seeded before the server starts
	db         string // writers: "sqlite" or "postgres"
	dsn        string // writers, postgres: the server to use (passed in the environment, not on the command line)
	sndbuf     int    // SO_SNDBUF of accepted connections; 0 keeps the kernel's autotuning
	unlimited  bool   // lib: lift the per-connection rate limit (S4 sends hundreds of requests/s per socket)
	cpuProfile string // write a CPU profile of the whole server run to this file
	queries    bool   // lib: also serve QItem on qStreamName, with a filter on id (S8)
}

// hello is the first line a server prints on stdout.
type hello struct {
	Addr       string `json:"addr"`
	PID        int    `json:"pid"`
	Mode       string `json:"mode"`
	GOMAXPROCS int    `json:"gomaxprocs"`
}

// benchServer is the server subprocess: the real library (or raw melody) on
// a SQLite file, plus control endpoints under /ctl for the driver.
type benchServer struct {
	cfg   serverConfig
	db    *gorm.DB
	api   *channelsapi.API
	mel   *melody.Melody
	drops atomic.Int64 // raw: frames melody dropped because a session's buffer was full

	mu  sync.Mutex // serializes write batches
	seq int64
}

func runServer(cfg serverConfig) error {
	gin.SetMode(gin.ReleaseMode)
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if cfg.mode == "writers" {
		return runWritersServer(cfg)
	}
	dir, err := os.MkdirTemp("", "channelsapi-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(sqliteDSN(dir)), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return fmt.Errorf("open sqlite: %w", err)
	}
	// One connection: SQLite allows one writer, and with more connections
	// concurrent writers (S4) would wait in SQLite's sleeping busy handler
	// instead of in Go, which measures the busy handler, not the transport.
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	sqlDB.SetMaxOpenConns(1)
	if err := db.AutoMigrate(&Item{}, &QItem{}); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// Seed before Register so that seeding publishes nothing.
	rows := make([]Item, cfg.rows)
	for i := range rows {
		rows[i] = Item{ID: uint(i + 1), Name: itemName(uint(i + 1))}
	}
	if len(rows) > 0 {
		if err := db.CreateInBatches(rows, 500).Error; err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		if cfg.queries {
			qrows := make([]QItem, len(rows))
			for i, r := range rows {
				qrows[i] = QItem(r)
			}
			if err := db.CreateInBatches(qrows, 500).Error; err != nil {
				return fmt.Errorf("seed: %w", err)
			}
		}
	}

	s := &benchServer{cfg: cfg, db: db}
	router := gin.New()
	switch cfg.mode {
	case "lib":
		opts := []channelsapi.Option{channelsapi.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))}
		if cfg.unlimited {
			opts = append(opts, channelsapi.WithRateLimit(1e9, 1<<30))
		}
		api, err := channelsapi.Register(router, db, opts...)
		if err != nil {
			return err
		}
		if err := channelsapi.Add(api, channelsapi.ViewSet[Item]{Stream: streamName, Label: modelLabel}); err != nil {
			return err
		}
		if cfg.queries {
			vs := channelsapi.ViewSet[QItem]{Stream: qStreamName, Label: qModelLabel, Filters: map[string][]string{"id": {"exact"}}}
			if err := channelsapi.Add(api, vs); err != nil {
				return err
			}
		}
		s.api = api
	case "raw", "raw-default":
		m := melody.New()
		if cfg.mode == "raw" {
			// The settings channelsapi gives melody (socket.go), so that the
			// comparison isolates what the library adds.
			m.Config.MaxMessageSize = channelsapi.DefaultMaxMessageSize
			m.Config.MessageBufferSize = channelsapi.DefaultQueueSize
			m.Config.PingPeriod = channelsapi.DefaultPingPeriod
			m.Config.PongWait = channelsapi.DefaultPongWait
			m.Upgrader.ReadBufferSize = 4096
			m.Upgrader.WriteBufferSize = 4096
		}
		m.HandleError(func(_ *melody.Session, err error) {
			if errors.Is(err, melody.ErrMessageBufferFull) {
				s.drops.Add(1)
			}
		})
		router.GET(channelsapi.DefaultPath, func(c *gin.Context) { _ = m.HandleRequest(c.Writer, c.Request) })
		s.mel = m
	default:
		return fmt.Errorf("unknown server mode %q", cfg.mode)
	}
	ctl := router.Group("/ctl")
	ctl.GET("/stats", s.stats)
	ctl.GET("/mem", s.mem)
	ctl.POST("/writes", s.writes)
	ctl.POST("/anchor", s.anchor)

	return serve(router, cfg)
}

// sqliteDSN is the SQLite file every server uses, in dir.
func sqliteDSN(dir string) string {
	return "file:" + filepath.Join(dir, "bench.db") + "?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=10000&_txlock=immediate"
}

// serve listens on 127.0.0.1, prints the hello line and serves router until
// the driver closes stdin.
func serve(router *gin.Engine, cfg serverConfig) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: router, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(sndbufListener{ln, cfg.sndbuf}) }()

	b, _ := json.Marshal(hello{Addr: ln.Addr().String(), PID: os.Getpid(), Mode: cfg.mode, GOMAXPROCS: runtime.GOMAXPROCS(0)})
	fmt.Println(string(b))

	// The driver ends a server by closing its stdin (or by a signal); a
	// benchmark server needs no graceful shutdown.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		close(eof)
	}()
	select {
	case <-sig:
	case <-eof:
	}
	return nil
}

// sndbufListener sets SO_SNDBUF on accepted connections, as an application
// may do on its own listener.
type sndbufListener struct {
	net.Listener
	size int
}

func (l sndbufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil && l.size > 0 {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetWriteBuffer(l.size)
		}
	}
	return c, err
}

// cpuMicros is the CPU time (user + system) of this process so far, from
// getrusage(RUSAGE_SELF), in microseconds.
func cpuMicros() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano()/1e3 + ru.Stime.Nano()/1e3
}

type statsReply struct {
	Connections int   `json:"connections"`
	Subscribers int   `json:"subscribers"`
	CPUMicros   int64 `json:"cpu_us"`
	Drops       int64 `json:"drops"`
	Goroutines  int   `json:"goroutines"`
}

func (s *benchServer) stats(c *gin.Context) {
	r := statsReply{CPUMicros: cpuMicros(), Drops: s.drops.Load(), Goroutines: runtime.NumGoroutine()}
	if s.api != nil {
		st := s.api.Stats()
		r.Connections, r.Subscribers = st.Connections, st.Subscribers
	} else {
		r.Connections = s.mel.Len()
	}
	c.JSON(http.StatusOK, r)
}

type memReply struct {
	HeapAlloc  uint64 `json:"heap_alloc"`
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	Sys        uint64 `json:"sys"`
	RSS        uint64 `json:"rss"`
	Goroutines int    `json:"goroutines"`
}

func (s *benchServer) mem(c *gin.Context) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	c.JSON(http.StatusOK, memReply{
		HeapAlloc: ms.HeapAlloc, HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse,
		Sys: ms.Sys, RSS: rss(), Goroutines: runtime.NumGoroutine(),
	})
}

// rss reads this process's resident set size from /proc/self/statm.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

type writesReply struct {
	StartNs   int64 `json:"start_ns"`
	EndNs     int64 `json:"end_ns"`
	Count     int   `json:"count"`
	FirstSeq  int64 `json:"first_seq"`
	LastSeq   int64 `json:"last_seq"`
	CPUMicros int64 `json:"cpu_us"`
}

// writes updates rows through GORM: count updates, back to back (rate 0) or
// paced at rate per second, of the row pk (or round robin over pk..pk+pks-1),
// of Item or, with stream=qitems, of QItem. In lib mode the library
// publishes each committed update; in raw mode the same update is followed
// by melody Broadcast of the frame the library would have sent (identical
// bytes).
func (s *benchServer) writes(c *gin.Context) {
	q := c.Request.URL.Query()
	queried := q.Get("stream") == qStreamName
	count, _ := strconv.Atoi(q.Get("count"))
	rate, _ := strconv.ParseFloat(q.Get("rate"), 64)
	pk, _ := strconv.Atoi(q.Get("pk"))
	pks, _ := strconv.Atoi(q.Get("pks"))
	padN, _ := strconv.Atoi(q.Get("pad"))
	if pk <= 0 {
		pk = 1
	}
	pks = max(pks, 1)
	pad := strings.Repeat("x", padN)

	s.mu.Lock()
	defer s.mu.Unlock()
	var tick *time.Ticker
	if rate > 0 {
		tick = time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
	}
	r := writesReply{Count: count, FirstSeq: s.seq + 1, CPUMicros: -cpuMicros(), StartNs: time.Now().UnixNano()}
	for i := range count {
		if tick != nil && i > 0 {
			<-tick.C
		}
		id := uint(pk + i%pks)
		s.seq++
		it := Item{ID: id, Name: itemName(id), Seq: s.seq, Pad: pad}
		it.TS = time.Now().UnixNano()
		var err error
		if queried {
			qit := QItem(it)
			err = s.db.Model(&qit).Select("seq", "ts", "pad").Updates(&qit).Error
		} else {
			err = s.db.Model(&it).Select("seq", "ts", "pad").Updates(&it).Error
		}
		if err != nil {
			c.JSON(http.StatusInternalServerError, gin.H{"error": err.Error()})
			return
		}
		if s.mel != nil {
			frame, err := rawFrame(&it)
			if err != nil {
				c.JSON(http.StatusInternalServerError, gin.H{"error": err.Error()})
				return
			}
			_ = s.mel.Broadcast(frame)
		}
	}
	r.EndNs = time.Now().UnixNano()
	r.CPUMicros += cpuMicros()
	r.LastSeq = s.seq
	c.JSON(http.StatusOK, r)
}

// rawFrame encodes it as channelsapi encodes a subscription event
// (PROTOCOL.md 4.7): the same struct shapes, so the same bytes.
func rawFrame(it *Item) ([]byte, error) {
	data, err := json.Marshal(it)
	if err != nil {
		return nil, err
	}
	type groupEvent struct {
		Action string          `json:"action"`
		PK     json.RawMessage `json:"pk"`
		Data   json.RawMessage `json:"data"`
		Model  string          `json:"model"`
	}
	type outFrame struct {
		Stream  any `json:"stream"`
		Payload any `json:"payload"`
	}
	pk := strconv.FormatUint(uint64(it.ID), 10)
	return json.Marshal(outFrame{Stream: streamName, Payload: groupEvent{Action: "update", PK: json.RawMessage(pk), Data: data, Model: modelLabel}})
}

type anchorReply struct {
	Calls     int   `json:"calls"`
	Frames    int   `json:"frames"`
	CPUMicros int64 `json:"cpu_us"`
	WallNs    int64 `json:"wall_ns"`
}

// anchor measures the floor: it dials the driver's drain listener and
// writes count frames of size bytes, each with one write(2) (batch 1) or
// batch frames per writev(2).
func (s *benchServer) anchor(c *gin.Context) {
	q := c.Request.URL.Query()
	count, _ := strconv.Atoi(q.Get("count"))
	size, _ := strconv.Atoi(q.Get("size"))
	batch, _ := strconv.Atoi(q.Get("batch"))
	batch = max(batch, 1)
	conn, err := net.Dial("tcp", q.Get("addr"))
	if err != nil {
		c.JSON(http.StatusInternalServerError, gin.H{"error": err.Error()})
		return
	}
	defer conn.Close()
	frame := make([]byte, size)
	frames, tmp := make([][]byte, batch), make([][]byte, batch)
	for i := range frames {
		frames[i] = frame
	}
	r := anchorReply{CPUMicros: -cpuMicros(), WallNs: -time.Now().UnixNano()}
	for r.Frames < count {
		if batch == 1 {
			_, err = conn.Write(frame)
		} else {
			copy(tmp, frames) // WriteTo consumes its slice
			bufs := net.Buffers(tmp)
			_, err = bufs.WriteTo(conn)
		}
		if err != nil {
			c.JSON(http.StatusInternalServerError, gin.H{"error": err.Error()})
			return
		}
		r.Calls++
		r.Frames += batch
	}
	r.CPUMicros += cpuMicros()
	r.WallNs += time.Now().UnixNano()
	c.JSON(http.StatusOK, r)
}
