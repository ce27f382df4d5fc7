package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
)

// This file is S7's server: the application's own writers updating rows
// through GORM, with and without the library.

// Row is the model S7's writers update, one row per writer.
type Row struct {
	ID      uint  `json:"id" gorm:"primaryKey"`
	Counter int64 `json:"counter"`
}

// rowsTable is Row's table, and so its stream: a name of the bench's own,
// so that S7 leaves the tables of a PostgreSQL named by
// CHANNELSAPI_BENCH_POSTGRES alone.
const rowsTable = "channelsapi_bench_rows"

// TableName implements GORM's tabler.
func (Row) TableName() string { return rowsTable }

// dsnEnv carries a PostgreSQL DSN from the driver to a writers server, out
// of the process list.
const dsnEnv = "CHANNELSAPI_BENCH_DSN"

// S7's variants, four *gorm.DB over one *sql.DB pool.
const (
	variantPlain      = "plain"      // GORM without channelsapi
	variantCapture    = "capture"    // channelsapi registered, its stream without subscribers
	variantSubscribed = "subscribed" // channelsapi registered, the driver's subscribers on its stream
	variantOutbox     = "outbox"     // channelsapi registered with WithOutbox, its stream without subscribers
)

var s7Variants = []string{variantPlain, variantCapture, variantSubscribed, variantOutbox}

// writersServer runs rounds of W writers on one variant at a time.
type writersServer struct {
	dbs  map[string]*gorm.DB
	subs *channelsapi.API // the subscribed variant's API, for /ctl/stats

	mu   sync.Mutex // one round at a time
	last []int64    // per writer: the counter it wrote last
}

func runWritersServer(cfg serverConfig) error {
	dbs, cleanup, err := openWriterDBs(cfg)
	if err != nil {
		return err
	}
	defer cleanup()
	s := &writersServer{dbs: dbs, last: make([]int64, cfg.rows)}
	router := gin.New()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Three APIs on their own paths: the capture and outbox variants'
	// streams have no subscriber, the subscribed one's has the driver's
	// (on /ws).
	mounts := []struct {
		variant string
		router  gin.IRouter
		opts    []channelsapi.Option
	}{
		{variantCapture, router.Group("/capture"), nil},
		{variantSubscribed, router, nil},
		{variantOutbox, router.Group("/outbox"), []channelsapi.Option{channelsapi.WithOutbox(channelsapi.OutboxConfig{})}},
	}
	for _, m := range mounts {
		api, err := channelsapi.Register(m.router, dbs[m.variant], append(m.opts, channelsapi.WithLogger(log))...)
		if err != nil {
			return fmt.Errorf("%s: %w", m.variant, err)
		}
		if err := channelsapi.Add(api, channelsapi.ViewSet[Row]{}); err != nil {
			return fmt.Errorf("%s: %w", m.variant, err)
		}
		if m.variant == variantSubscribed {
			s.subs = api
		}
	}
	ctl := router.Group("/ctl")
	ctl.GET("/stats", s.stats)
	ctl.POST("/updates", s.updates)
	return serve(router, cfg)
}

// openWriterDBs opens the database, creates cfg.rows rows (before any
// Register, so that seeding publishes nothing) and returns one *gorm.DB per
// variant, all on the same *sql.DB so that every variant uses the same
// connections. cleanup drops the table (PostgreSQL) or the file (SQLite).
func openWriterDBs(cfg serverConfig) (dbs map[string]*gorm.DB, cleanup func(), err error) {
	gcfg := func() *gorm.Config { return &gorm.Config{Logger: logger.Discard} }
	var (
		first  *gorm.DB
		dialer func(conn gorm.ConnPool) gorm.Dialector
	)
	cleanup = func() {}
	switch cfg.db {
	case "sqlite":
		dir, err := os.MkdirTemp("", "channelsapi-bench-")
		if err != nil {
			return nil, nil, err
		}
		cleanup = func() { _ = os.RemoveAll(dir) }
		if first, err = gorm.Open(sqlite.Open(sqliteDSN(dir)), gcfg()); err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("open sqlite: %w", err)
		}
		dialer = func(conn gorm.ConnPool) gorm.Dialector { return sqlite.New(sqlite.Config{Conn: conn}) }
	case "postgres":
		dsn := os.Getenv(dsnEnv)
		if dsn == "" {
			return nil, nil, errors.New("no PostgreSQL DSN in " + dsnEnv)
		}
		if first, err = gorm.Open(postgres.Open(dsn), gcfg()); err != nil {
			return nil, nil, fmt.Errorf("open postgres: %w", err)
		}
		dialer = func(conn gorm.ConnPool) gorm.Dialector { return postgres.New(postgres.Config{Conn: conn}) }
	default:
		return nil, nil, fmt.Errorf("unknown database %q", cfg.db)
	}
	sqlDB, err := first.DB()
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	if cfg.db == "sqlite" {
		// One connection, as the other servers: SQLite has one writer, and
		// with more connections writers wait in its sleeping busy handler.
		sqlDB.SetMaxOpenConns(1)
	} else {
		// A connection per writer, kept open between rounds (database/sql
		// keeps only 2 idle connections by default).
		sqlDB.SetMaxOpenConns(cfg.rows)
		sqlDB.SetMaxIdleConns(cfg.rows)
	}
	prev := cleanup
	cleanup = func() {
		if cfg.db == "postgres" {
			_ = first.Migrator().DropTable(&Row{})
			// The outbox variant's rows, in tables that may be shared.
			if first.Migrator().HasTable("channelsapi_outbox") {
				_ = first.Exec(`DELETE FROM channelsapi_outbox WHERE stream = ?`, rowsTable).Error
				_ = first.Exec(`DELETE FROM channelsapi_streams WHERE stream = ?`, rowsTable).Error
			}
		}
		_ = sqlDB.Close()
		prev()
	}
	fail := func(err error) (map[string]*gorm.DB, func(), error) {
		cleanup()
		return nil, nil, err
	}
	if err := first.Migrator().DropTable(&Row{}); err != nil {
		return fail(fmt.Errorf("drop %s: %w", rowsTable, err))
	}
	if err := first.AutoMigrate(&Row{}); err != nil {
		return fail(fmt.Errorf("migrate: %w", err))
	}
	rows := make([]Row, cfg.rows)
	for i := range rows {
		rows[i] = Row{ID: uint(i + 1)}
	}
	if len(rows) > 0 {
		if err := first.Create(&rows).Error; err != nil {
			return fail(fmt.Errorf("seed: %w", err))
		}
	}
	dbs = map[string]*gorm.DB{variantPlain: first}
	for _, v := range []string{variantCapture, variantSubscribed, variantOutbox} {
		if dbs[v], err = gorm.Open(dialer(sqlDB), gcfg()); err != nil {
			return fail(fmt.Errorf("open %s: %w", v, err))
		}
	}
	return dbs, cleanup, nil
}

func (s *writersServer) stats(c *gin.Context) {
	st := s.subs.Stats()
	c.JSON(http.StatusOK, statsReply{Connections: st.Connections, Subscribers: st.Subscribers, CPUMicros: cpuMicros()})
}

// updatesReply is one round of one variant.
type updatesReply struct {
	Variant   string  `json:"variant"`
	Writers   int     `json:"writers"`
	Updates   int64   `json:"updates"`
	Seconds   float64 `json:"seconds"`
	PerS      float64 `json:"updates_per_s"`
	CPUMicros int64   `json:"cpu_us"`
}

// updates runs one round: writers goroutines, writer i updating row i+1 in
// a loop (one UPDATE in GORM's default transaction) until ms milliseconds
// have passed. The round ends when the last writer finished its update in
// flight.
func (s *writersServer) updates(c *gin.Context) {
	q := c.Request.URL.Query()
	variant := q.Get("variant")
	writers, _ := strconv.Atoi(q.Get("writers"))
	ms, _ := strconv.Atoi(q.Get("ms"))
	db, ok := s.dbs[variant]
	if !ok || writers <= 0 || writers > len(s.last) || ms <= 0 {
		c.JSON(http.StatusBadRequest, gin.H{"error": fmt.Sprintf("bad round: variant %q, %d writers (of %d rows), %d ms", variant, writers, len(s.last), ms)})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	counts := make([]int64, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	r := updatesReply{Variant: variant, Writers: writers, CPUMicros: -cpuMicros()}
	start := time.Now()
	stop := start.Add(time.Duration(ms) * time.Millisecond)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			row := Row{ID: uint(w + 1)}
			for time.Now().Before(stop) {
				s.last[w]++
				if err := db.Model(&row).Update("counter", s.last[w]).Error; err != nil {
					errs[w] = fmt.Errorf("writer %d: %w", w, err)
					return
				}
				counts[w]++
			}
		}()
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	r.CPUMicros += cpuMicros()
	if err := errors.Join(errs...); err != nil {
		c.JSON(http.StatusInternalServerError, gin.H{"error": err.Error()})
		return
	}
	for _, n := range counts {
		r.Updates += n
	}
	r.PerS = float64(r.Updates) / r.Seconds
	c.JSON(http.StatusOK, r)
}
