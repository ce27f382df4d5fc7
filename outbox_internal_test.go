package channelsapi

// This file tests the outbox's trimming (outbox.go) on its own, on SQLite
// and, when CHANNELSAPI_TEST_POSTGRES is set, on PostgreSQL.

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

func TestOutboxTrim(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "outbox.db")
		db, err := gorm.Open(sqlite.Open("file:"+path+"?_journal_mode=WAL&_busy_timeout=10000&_txlock=immediate"), &gorm.Config{Logger: logger.Discard})
		if err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, db)
		checkTrim(t, db)
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := os.Getenv("CHANNELSAPI_TEST_POSTGRES")
		if dsn == "" {
			t.Skip("CHANNELSAPI_TEST_POSTGRES is not set")
		}
		db, err := gorm.Open(postgres.Open(propertySchema(t, dsn)), &gorm.Config{Logger: logger.Discard})
		if err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, db)
		checkTrim(t, db)
	})
}

// checkTrim fills a stream with 1,200 rows, the first 1,100 older than the
// retention, and trims it: by age (in several batches), then by count. The
// rows of another stream are left alone.
func checkTrim(t *testing.T, db *gorm.DB) {
	ctx := context.Background()
	o, err := newOutbox(db, OutboxConfig{Retention: time.Hour, MaxRows: 10000, PollInterval: time.Second}, newRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, stream := range []string{"s", "other"} {
		if _, err := o.ensure(ctx, stream); err != nil {
			t.Fatal(err)
		}
		const rows = 1200
		if err := db.Exec(`UPDATE channelsapi_streams SET top = ? WHERE stream = ?`, rows, stream).Error; err != nil {
			t.Fatal(err)
		}
		for from := 1; from <= rows; from += 100 {
			var values []map[string]any
			for off := from; off < from+100; off++ {
				at := now.Add(-time.Minute)
				if off <= 1100 {
					at = now.Add(-2 * time.Hour)
				}
				values = append(values, map[string]any{"stream": stream, "offset": off, "payload": []byte(`{}`), "created_at": at.UnixMilli()})
			}
			if err := db.Table("channelsapi_outbox").Create(values).Error; err != nil {
				t.Fatal(err)
			}
		}
	}
	left := func(stream string) (n, first int64) {
		t.Helper()
		if err := db.Raw(`SELECT COUNT(*), COALESCE(MIN("offset"), 0) FROM channelsapi_outbox WHERE stream = ?`, stream).Row().Scan(&n, &first); err != nil {
			t.Fatal(err)
		}
		return n, first
	}
	if err := o.trim(ctx, "s", now); err != nil {
		t.Fatal(err)
	}
	if n, first := left("s"); n != 100 || first != 1101 {
		t.Fatalf("by age: %d rows from %d left, want 100 from 1101", n, first)
	}
	o.cfg.MaxRows = 10
	if err := o.trim(ctx, "s", now); err != nil {
		t.Fatal(err)
	}
	if n, first := left("s"); n != 10 || first != 1191 {
		t.Fatalf("by count: %d rows from %d left, want 10 from 1191", n, first)
	}
	if n, first := left("other"); n != 1200 || first != 1 {
		t.Fatalf("another stream: %d rows from %d left, want all 1200", n, first)
	}
}
