// Command example serves a polls app with channelsapi: questions and choices
// over REST under /api and over one WebSocket at /ws, on a SQLite file or a
// PostgreSQL database (-db postgres://...). Several instances on one
// PostgreSQL database and one Redis server (-redis redis://...) serve the
// same clients behind a load balancer. With -outbox, every change is
// written to an outbox table in its own transaction: none is lost when an
// instance dies right after COMMIT, and instances sharing the database
// deliver each other's changes even without Redis.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
	"github.com/channelsapi/channelsapi/redisbroker"
)

// Question is a poll question. Version counts its updates: its ETag is
// "v<version>", and a write with If-Match fails with 412 if another one
// came first.
type Question struct {
	ID           uint      `json:"id" gorm:"primaryKey"`
	QuestionText string    `json:"question_text" binding:"required,max=200"`
	PubDate      time.Time `json:"pub_date"`
	Version      int       `json:"version"`
}

// BeforeCreate dates a question that was created without a pub_date.
func (q *Question) BeforeCreate(*gorm.DB) error {
	if q.PubDate.IsZero() {
		q.PubDate = time.Now().UTC().Truncate(time.Second)
	}
	return nil
}

// Choice is one answer to a question; every vote raises its version too.
type Choice struct {
	ID         uint   `json:"id" gorm:"primaryKey"`
	QuestionID uint   `json:"question_id" binding:"required"`
	ChoiceText string `json:"choice_text" binding:"required,max=200"`
	Votes      int    `json:"votes" binding:"min=0"`
	Version    int    `json:"version"`
}

func main() {
	addr := flag.String("addr", ":8080", "address to listen on")
	dsn := flag.String("db", "example.db", "SQLite database file, or a PostgreSQL URL (postgres://user@host:5432/db?sslmode=disable)")
	redisURL := flag.String("redis", "", "Redis URL (redis://host:6379/0) connecting several instances; empty: one instance")
	debug := flag.Bool("debug", false, "serve the debugger page at /channels-api/ (development only)")
	outbox := flag.Bool("outbox", false, "write every change to an outbox table in its own transaction, so that none is lost if an instance dies right after COMMIT")
	flag.Parse()
	if err := run(*addr, *dsn, *redisURL, *debug, *outbox); err != nil {
		log.Fatal(err)
	}
}

// openDB opens a PostgreSQL database for a postgres:// or postgresql:// URL,
// and a SQLite file otherwise.
func openDB(dsn string) (*gorm.DB, string, error) {
	cfg := &gorm.Config{Logger: logger.Default.LogMode(logger.Warn)}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		name := "PostgreSQL " + redact(dsn)
		db, err := gorm.Open(postgres.Open(dsn), cfg)
		return db, name, err
	}
	db, err := gorm.Open(sqlite.Open(dsn+"?_journal_mode=WAL&_busy_timeout=5000&_txlock=immediate"), cfg)
	return db, dsn, err
}

func run(addr, dsn, redisURL string, debug, outbox bool) error {
	db, name, err := openDB(dsn)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	if err := db.AutoMigrate(&Question{}, &Choice{}, &Note{}); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	router := gin.Default()
	router.Use(authenticate)
	opts := []channelsapi.Option{
		channelsapi.WithRESTPrefix("/api"),
		channelsapi.WithSubprotocols("bearer"),
		// A write may carry an idempotency key: a client that retries it
		// after a lost reply gets the first reply, not a second write.
		channelsapi.WithIdempotency(channelsapi.IdempotencyConfig{UserKey: userKey}),
		channelsapi.WithAPIDocs(channelsapi.APIDocs{
			OpenAPIPath:  "/api/openapi.json",
			AsyncAPIPath: "/api/asyncapi.json",
			Title:        "Polls",
			Version:      "1.0.0",
			Description:  "The polls app of channelsapi: questions, choices and private notes.",
		}),
	}
	if debug {
		opts = append(opts, channelsapi.WithDebugPage(""))
	}
	if outbox {
		opts = append(opts, channelsapi.WithOutbox(channelsapi.OutboxConfig{}))
	}
	if redisURL != "" {
		broker, err := redisbroker.New(redisbroker.Config{URL: redisURL})
		if err != nil {
			return err
		}
		opts = append(opts, channelsapi.WithBroker(broker))
	}
	api, err := channelsapi.Register(router, db, opts...)
	if err != nil {
		return err
	}
	if err := channelsapi.Add(api, channelsapi.ViewSet[Question]{
		Stream:       "questions",
		Label:        "polls.question",
		VersionField: "version",
		Filters: map[string][]string{
			"question_text": {"exact", "icontains"},
			"pub_date":      {"gte", "lte", "range"},
		},
		OrderingFields: []string{"pub_date", "id"},
		SearchFields:   []string{"question_text"},
	}); err != nil {
		return err
	}
	if err := channelsapi.Add(api, channelsapi.ViewSet[Choice]{
		Stream:       "choices",
		Label:        "polls.choice",
		VersionField: "version",
		Filters: map[string][]string{
			"question_id": {"exact", "in"},
			"votes":       {"gte", "lte"},
		},
		OrderingFields: []string{"votes", "id"},
		SearchFields:   []string{"choice_text"},
		Actions: map[string]channelsapi.Action[Choice]{
			"vote": {Detail: true, Method: http.MethodPost, Handle: vote(db)},
		},
	}); err != nil {
		return err
	}
	if err := channelsapi.Add(api, notes()); err != nil {
		return err
	}

	srv := &http.Server{Addr: addr, Handler: router, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	fmt.Printf("polls app on %s (database %s)\n  REST:      http://localhost%s/api/questions\n  WebSocket: ws://localhost%s/ws\n", addr, name, port(addr), port(addr))
	if redisURL != "" {
		fmt.Printf("  Redis:     %s (events of every instance sharing it)\n", redact(redisURL))
	}
	if outbox {
		fmt.Printf("  Outbox:    on (tables channelsapi_streams and channelsapi_outbox; instances sharing the database also see each other's changes)\n")
	}
	fmt.Printf("  API docs:  http://localhost%s/api/openapi.json (REST), http://localhost%s/api/asyncapi.json (WebSocket)\n", port(addr), port(addr))
	fmt.Printf("  Private notes need a token: Authorization: Bearer alice-token (or bob-token, admin-token)\n")
	switch {
	case debug && gin.IsDebugging():
		fmt.Printf("  Debugger:  http://localhost%s/channels-api/ (development only)\n", port(addr))
	case debug:
		fmt.Printf("  Debugger:  off, Gin is in %s mode (GIN_MODE=debug turns it on)\n", gin.Mode())
	}

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = errors.Join(api.Shutdown(shutdownCtx), srv.Shutdown(shutdownCtx))
	if e := <-errc; !errors.Is(e, http.ErrServerClosed) {
		err = errors.Join(err, e)
	}
	return err
}

// vote adds one vote to a choice, atomically in the database; subscribers of
// "choices" see the update.
func vote(db *gorm.DB) func(ctx context.Context, r *channelsapi.Request, c *Choice) (any, int, error) {
	return func(ctx context.Context, r *channelsapi.Request, c *Choice) (any, int, error) {
		err := db.WithContext(ctx).Model(c).Update("votes", gorm.Expr("votes + 1")).Error
		if err != nil {
			return nil, 0, err
		}
		if err := db.WithContext(ctx).First(c, c.ID).Error; err != nil {
			return nil, 0, err
		}
		return c, http.StatusOK, nil
	}
}

// redact hides the password of a URL.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	return u.Redacted()
}

func port(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[i:]
		}
	}
	return addr
}
