// Command centrifuge is channelsapi-bench's centrifuge peer: a server that
// speaks the bench's -role=server contract (the hello line on stdout, the
// /ctl endpoints) and serves WebSocket subscribers of the channel items with
// centrifugal/centrifuge's Node and WebSocket handler.
//
// Every write is the GORM update on SQLite the bench's own servers make,
// followed by Node.Publish of the bytes channelsapi would send for it, so
// that the comparison isolates the transport. The driver builds it from this
// module (kept apart so that the library's go.mod does not grow) and starts
// it like its own servers:
//
//	centrifuge -role=server -mode=centrifuge -rows=100
//
// Centrifuge runs as configured by default: the in-memory broker, no history
// (so no recovery), the JSON protocol, writes of up to 16 queued replies per
// WebSocket frame, pings every 25 s. Connections are anonymous and may
// subscribe to any channel.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
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
	"syscall"
	"time"

	"github.com/centrifugal/centrifuge"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Item is the bench's model (cmd/channelsapi-bench/server.go): the same
// fields and tags, so the same table and the same JSON.
type Item struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
	Seq  int64  `json:"seq"`
	TS   int64  `json:"ts"`
	Pad  string `json:"pad"`
}

const (
	channel    = "items"
	modelLabel = "bench.item"
	mode       = "centrifuge"
)

func itemName(id uint) string { return "item-" + strconv.FormatUint(uint64(id), 10) }

func main() {
	role := flag.String("role", "server", "server (the only role)")
	m := flag.String("mode", mode, "server mode (only centrifuge)")
	rows := flag.Int("rows", 1000, "rows to seed")
	sndbuf := flag.Int("sndbuf", 0, "SO_SNDBUF of accepted connections (0 = kernel autotuning)")
	flag.Bool("unlimited", false, "ignored (the bench passes it to every server)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile to this file")
	flag.Parse()
	if *role != "server" || *m != mode {
		fmt.Fprintf(os.Stderr, "centrifuge peer: want -role=server -mode=%s, got -role=%s -mode=%s\n", mode, *role, *m)
		os.Exit(2)
	}
	if err := run(*rows, *sndbuf, *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "centrifuge peer:", err)
		os.Exit(1)
	}
}

// peer is the server: a centrifuge Node on a SQLite file, plus the
// control endpoints under /ctl.
type peer struct {
	db   *gorm.DB
	node *centrifuge.Node

	mu  sync.Mutex // serializes write batches
	seq int64
}

func run(rows, sndbuf int, cpuProfile string) error {
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	dir, err := os.MkdirTemp("", "channelsapi-bench-centrifuge-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db, err := openDB(dir, rows)
	if err != nil {
		return err
	}

	node, err := centrifuge.New(centrifuge.Config{LogLevel: centrifuge.LogLevelError, LogHandler: func(e centrifuge.LogEntry) {
		fmt.Fprintf(os.Stderr, "centrifuge: %s %v\n", e.Message, e.Fields)
	}})
	if err != nil {
		return err
	}
	node.OnConnecting(func(context.Context, centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		return centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{}}, nil
	})
	node.OnConnect(func(c *centrifuge.Client) {
		c.OnSubscribe(func(_ centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = node.Shutdown(ctx)
	}()

	p := &peer{db: db, node: node}
	mux := http.NewServeMux()
	mux.Handle("/ws", centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{}))
	mux.HandleFunc("GET /ctl/stats", p.stats)
	mux.HandleFunc("GET /ctl/mem", p.mem)
	mux.HandleFunc("POST /ctl/writes", p.writes)
	return serve(mux, sndbuf)
}

// openDB opens the SQLite file the bench's servers use, in dir, and seeds
// rows items.
func openDB(dir string, rows int) (*gorm.DB, error) {
	dsn := "file:" + filepath.Join(dir, "bench.db") + "?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=10000&_txlock=immediate"
	db, err := gorm.Open(sqlite.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	sqlDB.SetMaxOpenConns(1)
	if err := db.AutoMigrate(&Item{}); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	items := make([]Item, rows)
	for i := range items {
		items[i] = Item{ID: uint(i + 1), Name: itemName(uint(i + 1))}
	}
	if len(items) > 0 {
		if err := db.CreateInBatches(items, 500).Error; err != nil {
			return nil, fmt.Errorf("seed: %w", err)
		}
	}
	return db, nil
}

// hello is the first line the server prints on stdout, as the bench's own
// servers print it.
type hello struct {
	Addr       string `json:"addr"`
	PID        int    `json:"pid"`
	Mode       string `json:"mode"`
	GOMAXPROCS int    `json:"gomaxprocs"`
}

// serve listens on 127.0.0.1, prints the hello line and serves h until the
// driver closes stdin or a signal arrives.
func serve(h http.Handler, sndbuf int) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(sndbufListener{ln, sndbuf}) }()

	b, _ := json.Marshal(hello{Addr: ln.Addr().String(), PID: os.Getpid(), Mode: mode, GOMAXPROCS: runtime.GOMAXPROCS(0)})
	fmt.Println(string(b))

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

// sndbufListener sets SO_SNDBUF on accepted connections.
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

// cpuMicros is the CPU time (user + system) of this process so far, in
// microseconds.
func cpuMicros() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano()/1e3 + ru.Stime.Nano()/1e3
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
}

// statsReply has the fields of the bench's /ctl/stats reply. Drops is
// always 0: centrifuge disconnects a client whose queue overflows rather
// than dropping a message.
type statsReply struct {
	Connections int   `json:"connections"`
	Subscribers int   `json:"subscribers"`
	CPUMicros   int64 `json:"cpu_us"`
	Drops       int64 `json:"drops"`
	Goroutines  int   `json:"goroutines"`
}

func (p *peer) stats(w http.ResponseWriter, _ *http.Request) {
	hub := p.node.Hub()
	writeJSON(w, http.StatusOK, statsReply{
		Connections: hub.NumClients(), Subscribers: hub.NumSubscribers(channel),
		CPUMicros: cpuMicros(), Goroutines: runtime.NumGoroutine(),
	})
}

type memReply struct {
	HeapAlloc  uint64 `json:"heap_alloc"`
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	Sys        uint64 `json:"sys"`
	RSS        uint64 `json:"rss"`
	Goroutines int    `json:"goroutines"`
}

func (p *peer) mem(w http.ResponseWriter, _ *http.Request) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	writeJSON(w, http.StatusOK, memReply{
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

// writes is the bench's /ctl/writes on Item: count updates, back to back
// (rate 0) or paced at rate per second, of the row pk (or round robin over
// pk..pk+pks-1), each followed by Node.Publish of the frame channelsapi
// would send for it.
func (p *peer) writes(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if s := q.Get("stream"); s != "" && s != channel {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the centrifuge peer serves only " + channel})
		return
	}
	count, _ := strconv.Atoi(q.Get("count"))
	rate, _ := strconv.ParseFloat(q.Get("rate"), 64)
	pk, _ := strconv.Atoi(q.Get("pk"))
	pks, _ := strconv.Atoi(q.Get("pks"))
	padN, _ := strconv.Atoi(q.Get("pad"))
	if pk <= 0 {
		pk = 1
	}
	pks = max(pks, 1)
	pad := strings.Repeat("x", max(padN, 0))

	p.mu.Lock()
	defer p.mu.Unlock()
	var tick *time.Ticker
	if rate > 0 {
		tick = time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
	}
	reply := writesReply{Count: count, FirstSeq: p.seq + 1, CPUMicros: -cpuMicros(), StartNs: time.Now().UnixNano()}
	for i := range count {
		if tick != nil && i > 0 {
			<-tick.C
		}
		id := uint(pk + i%pks)
		p.seq++
		it := Item{ID: id, Name: itemName(id), Seq: p.seq, Pad: pad}
		it.TS = time.Now().UnixNano()
		if err := p.db.Model(&it).Select("seq", "ts", "pad").Updates(&it).Error; err != nil {
			writeError(w, err)
			return
		}
		frame, err := eventFrame(&it)
		if err != nil {
			writeError(w, err)
			return
		}
		if _, err := p.node.Publish(channel, frame); err != nil {
			writeError(w, fmt.Errorf("publish: %w", err))
			return
		}
	}
	reply.EndNs = time.Now().UnixNano()
	reply.CPUMicros += cpuMicros()
	reply.LastSeq = p.seq
	writeJSON(w, http.StatusOK, reply)
}

// eventFrame encodes it as channelsapi encodes a subscription event
// (PROTOCOL.md 4.7), as the bench's rawFrame does: the same struct shapes,
// so the same bytes.
func eventFrame(it *Item) ([]byte, error) {
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
	b, err := json.Marshal(outFrame{Stream: channel, Payload: groupEvent{Action: "update", PK: json.RawMessage(pk), Data: data, Model: modelLabel}})
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return b, nil
}
