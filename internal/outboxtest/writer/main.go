// Command writer serves outboxtest.Item with the outbox on, and, once told
// to on its standard input, writes Items from two goroutines until it is
// killed. The crash tests (outbox_crash_test.go) build it with the tag
// channelsapi_failpoint and CHANNELSAPI_FAILPOINT=after-commit:N, which
// kills it between a COMMIT and its publication.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
	"github.com/channelsapi/channelsapi/internal/outboxtest"
	"github.com/channelsapi/channelsapi/redisbroker"
)

func main() {
	dsn := flag.String("db", "", "sqlite:<file DSN> or postgres:<DSN>")
	redisURL := flag.String("redis", "", "Redis URL for the broker (none: no broker)")
	prefix := flag.String("prefix", "", "the broker's prefix")
	rows := flag.Int("rows", 20, "updates pick among Items 1..rows")
	flag.Parse()
	gin.SetMode(gin.ReleaseMode)

	var dial gorm.Dialector
	switch kind, rest, _ := strings.Cut(*dsn, ":"); kind {
	case "sqlite":
		dial = sqlite.Open(rest)
	case "postgres":
		dial = postgres.Open(rest)
	default:
		log.Fatalf("-db %q: want sqlite:... or postgres:...", *dsn)
	}
	db, err := gorm.Open(dial, &gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	opts := []channelsapi.Option{
		channelsapi.WithOutbox(channelsapi.OutboxConfig{PollInterval: 100 * time.Millisecond}),
		channelsapi.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))),
	}
	if *redisURL != "" {
		b, err := redisbroker.New(redisbroker.Config{URL: *redisURL, Prefix: *prefix})
		if err != nil {
			log.Fatal(err)
		}
		opts = append(opts, channelsapi.WithBroker(b))
	}
	router := gin.New()
	api, err := channelsapi.Register(router, db, opts...)
	if err != nil {
		log.Fatal(err)
	}
	if err := outboxtest.Add(api); err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = http.Serve(ln, router) }()
	fmt.Printf("listening %s\n", ln.Addr())

	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		log.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				var err error
				if i%3 == 0 {
					err = db.Create(&outboxtest.Item{Name: fmt.Sprintf("w%d", rand.Int())}).Error
				} else {
					id := 1 + rand.IntN(*rows)
					err = db.Model(&outboxtest.Item{ID: uint(id)}).Update("n", gorm.Expr("n + 1")).Error
				}
				if err != nil {
					log.Fatal(err)
				}
			}
		})
	}
	wg.Wait()
}
