package channelsapi_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
	"github.com/channelsapi/channelsapi/internal/outboxtest"
)

// crashKills is how many times each TestOutboxCrashRecovery case kills its
// writer.
const crashKills = 50

// TestOutboxCrashRecovery kills a writing process (SIGKILL) right after a
// COMMIT and before its publication, 50 times, on SQLite and on PostgreSQL,
// with and without Redis. This process serves the subscribers from the same
// database: after each kill, once its poll has run, its subscriber has
// received every committed change exactly once, in offset order; and a
// client that was subscribed on the killed process resumes here ("since")
// and receives the killed process's committed changes, the unpublished
// ones among them. At the end the events add up to the database's rows.
func TestOutboxCrashRecovery(t *testing.T) {
	writer := filepath.Join(t.TempDir(), "writer")
	build := exec.Command("go", "build", "-tags", "channelsapi_failpoint", "-o", writer, "./internal/outboxtest/writer")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build the writer: %s", out)

	type setup struct {
		name  string
		db    func(t *testing.T) (*gorm.DB, string)
		redis bool
	}
	var setups []setup
	dbs := []struct {
		name string
		open func(t *testing.T) (*gorm.DB, string)
	}{{"sqlite", crashSQLite}}
	if dsn := postgresDSN(); dsn != "" {
		dbs = append(dbs, struct {
			name string
			open func(t *testing.T) (*gorm.DB, string)
		}{"postgres", func(t *testing.T) (*gorm.DB, string) { return crashPostgres(t, dsn) }})
	} else {
		t.Log("SKIP postgres: set " + envPostgres)
	}
	for _, d := range dbs {
		setups = append(setups, setup{d.name, d.open, false})
		if os.Getenv(envRedis) != "" {
			setups = append(setups, setup{d.name + "+redis", d.open, true})
		} else {
			t.Log("SKIP " + d.name + "+redis: set " + envRedis)
		}
	}
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			db, dsn := s.db(t)
			crashRuns(t, writer, db, dsn, s.redis)
		})
	}
}

func crashSQLite(t *testing.T) (*gorm.DB, string) {
	dsn := "file:" + filepath.Join(t.TempDir(), "crash.db") + "?_journal_mode=WAL&_busy_timeout=10000&_txlock=immediate"
	db, err := gorm.Open(sqlite.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	t.Cleanup(func() { _ = sqlDB.Close() })
	return db, "sqlite:" + dsn
}

// crashWriterApp is the application_name of the writer's sessions on
// PostgreSQL, which writerGone waits on.
const crashWriterApp = "channelsapi_crash_writer"

func crashPostgres(t *testing.T, server string) (*gorm.DB, string) {
	dsn := postgresSchema(t, server)
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	sqlDB, err := db.DB()
	require.NoError(t, err)
	t.Cleanup(func() { _ = sqlDB.Close() })
	var schema string
	require.NoError(t, db.Raw(`SELECT current_schema()`).Row().Scan(&schema))
	app := crashWriterApp + "_" + schema
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("application_name", app)
		u.RawQuery = q.Encode()
		return db, "postgres:" + u.String()
	}
	return db, "postgres:" + dsn + " application_name=" + app
}

// writerGone waits until the PostgreSQL sessions of the killed writer have
// ended. A COMMIT the writer sent just before it was killed is still
// carried out by its session after the process is gone: a position read
// before that would leave that change to the next round, whose client of
// the next writer would then be sent it (a replay) among its subscribe
// replies.
func writerGone(t *testing.T, db *gorm.DB) {
	var schema string
	require.NoError(t, db.Raw(`SELECT current_schema()`).Row().Scan(&schema))
	deadline := time.Now().Add(readTimeout)
	for {
		var n int64
		require.NoError(t, db.Raw(`SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = ?`, crashWriterApp+"_"+schema).Row().Scan(&n))
		if n == 0 {
			return
		}
		require.True(t, time.Now().Before(deadline), "%d sessions of the killed writer left", n)
		time.Sleep(10 * time.Millisecond)
	}
}

// crashEvent is an event frame as the crash test reads it.
type crashEvent struct {
	action string
	offset uint64
	item   outboxtest.Item
}

// crashClient is a WebSocket client subscribed to the creates and the
// updates of outboxtest.Stream, which checks every event it reads: per
// subscription, each offset is above the one before.
type crashClient struct {
	t    *testing.T
	conn *websocket.Conn
	last map[string]uint64 // per subscribed action, the last offset read
	seen map[uint64]bool   // every offset read, for duplicates
}

// dialCrash connects to url and subscribes to creates and updates, since
// since when it is not nil, and checks that every event since is
// recovered.
func dialCrash(t *testing.T, url string, since *channelsapi.Position, after uint64) *crashClient {
	conn, resp, err := websocket.DefaultDialer.Dial(url, nil)
	require.NoError(t, err)
	_ = resp.Body.Close()
	t.Cleanup(func() { _ = conn.Close() })
	c := &crashClient{t: t, conn: conn, last: map[string]uint64{"create": after, "update": after}, seen: map[uint64]bool{}}
	for _, action := range []string{"create", "update"} {
		data := map[string]any{"action": action}
		if since != nil {
			data["since"] = since
		}
		b, err := json.Marshal(map[string]any{"stream": outboxtest.Stream, "payload": map[string]any{"action": "subscribe", "request_id": action, "data": data}})
		require.NoError(t, err)
		require.NoError(t, conn.WriteMessage(websocket.TextMessage, b))
	}
	return c
}

// next reads the next frame: an event, or a reply (nil), which must be a
// success, and recovered when it answers a subscribe with since.
func (c *crashClient) next() (*crashEvent, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(readTimeout))
	_, b, err := c.conn.ReadMessage()
	if err != nil {
		return nil, err
	}
	var f struct {
		Payload struct {
			Action    string          `json:"action"`
			Offset    uint64          `json:"offset"`
			Data      json.RawMessage `json:"data"`
			Status    int             `json:"response_status"`
			RequestID *string         `json:"request_id"`
		} `json:"payload"`
	}
	require.NoError(c.t, json.Unmarshal(b, &f), "frame %s", b)
	p := f.Payload
	if p.RequestID != nil {
		require.Equal(c.t, 200, p.Status, "reply %s", b)
		var reply struct {
			Recovered *bool `json:"recovered"`
		}
		_ = json.Unmarshal(p.Data, &reply)
		require.True(c.t, reply.Recovered == nil || *reply.Recovered, "reply %s", b)
		return nil, nil
	}
	ev := &crashEvent{action: p.Action, offset: p.Offset}
	require.NoError(c.t, json.Unmarshal(p.Data, &ev.item), "frame %s", b)
	require.Greater(c.t, ev.offset, c.last[ev.action], "out of order: %s", b)
	require.False(c.t, c.seen[ev.offset], "duplicated: %s", b)
	c.last[ev.action], c.seen[ev.offset] = ev.offset, true
	return ev, nil
}

// until reads events until it has read every offset up to top, and
// returns them.
func (c *crashClient) until(top uint64, from uint64) []crashEvent {
	var evs []crashEvent
	for missing := c.missing(from, top); missing > 0; missing = c.missing(from, top) {
		ev, err := c.next()
		require.NoError(c.t, err, "%d events up to %d not received", missing, top)
		if ev != nil {
			evs = append(evs, *ev)
		}
	}
	return evs
}

// missing counts the offsets after from up to top not read yet.
func (c *crashClient) missing(from, top uint64) int {
	n := 0
	for off := from + 1; off <= top; off++ {
		if !c.seen[off] {
			n++
		}
	}
	return n
}

func crashRuns(t *testing.T, writer string, db *gorm.DB, dsn string, redis bool) {
	const rows = 20
	require.NoError(t, db.AutoMigrate(&outboxtest.Item{}))
	for i := range rows {
		require.NoError(t, db.Create(&outboxtest.Item{Name: fmt.Sprintf("seed%d", i)}).Error)
	}
	var seeded []outboxtest.Item
	require.NoError(t, db.Find(&seeded).Error)
	state := map[uint]outboxtest.Item{}
	for _, it := range seeded {
		state[it.ID] = it
	}
	opts := []channelsapi.Option{quietLog(), channelsapi.WithOutbox(channelsapi.OutboxConfig{PollInterval: 100 * time.Millisecond})}
	args := []string{"-db", dsn, "-rows", fmt.Sprint(rows)}
	if redis {
		url, prefix := redisURL(t), testPrefix()
		opts = append(opts, withRedis(t, url, prefix))
		args = append(args, "-redis", url, "-prefix", prefix)
	}
	srv := newServerOn(t, db, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, outboxtest.Add(api))
	}, opts...)
	at := outboxPosition(t, db)
	sub := dialCrash(t, srv.WSURL, nil, at.Offset)
	// A subscribe starts after the changes numbered when it is answered
	// (startAtTop): the writes start once both are.
	for range 2 {
		ev, err := sub.next()
		require.NoError(t, err)
		require.Nil(t, ev)
	}
	apply := func(evs []crashEvent) {
		for _, ev := range evs {
			state[ev.item.ID] = ev.item
		}
	}
	unpublished := 0 // kills after which the writer's client had not got every change
	for i := range crashKills {
		// A client of the writer, from the position everything so far
		// was delivered at.
		kill := 1 + rand.IntN(20)
		cmd := exec.Command(writer, args...)
		cmd.Env = append(os.Environ(), fmt.Sprintf("CHANNELSAPI_FAILPOINT=after-commit:%d", kill))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		require.NoError(t, err)
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		line, err := bufio.NewReader(stdout).ReadString('\n')
		require.NoError(t, err, "the writer's address")
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
		require.True(t, ok, "writer said %q", line)
		before := at
		onWriter := dialCrash(t, "ws://"+addr+"/ws", &before, before.Offset)
		for range 2 { // the two replies
			ev, err := onWriter.next()
			require.NoError(t, err)
			require.Nil(t, ev)
		}
		_, err = io.WriteString(stdin, "go\n")
		require.NoError(t, err)

		err = cmd.Wait()
		var exit *exec.ExitError
		require.True(t, errors.As(err, &exit), "writer: %v", err)
		status := exit.Sys().(syscall.WaitStatus)
		require.True(t, status.Signaled() && status.Signal() == syscall.SIGKILL, "kill %d of %d: the writer ended with %v, not SIGKILL after COMMIT", i+1, crashKills, err)
		if strings.HasPrefix(dsn, "postgres:") {
			writerGone(t, db)
		}

		// What the writer's client got before the kill, in order.
		var fromWriter []crashEvent
		for {
			ev, err := onWriter.next()
			if err != nil {
				break
			}
			fromWriter = append(fromWriter, *ev)
		}
		at = outboxPosition(t, db)
		require.Greater(t, at.Offset, before.Offset, "kill %d: nothing committed", i+1)

		// This instance's subscriber receives every change once, in order.
		evs := sub.until(at.Offset, before.Offset)
		for j, ev := range evs {
			require.Equal(t, before.Offset+1+uint64(j), ev.offset, "kill %d: out of order", i+1)
		}
		apply(evs)

		// The writer's client resumes here from the last event it got.
		resumeAt := before.Offset
		for _, ev := range fromWriter {
			resumeAt = max(resumeAt, ev.offset)
		}
		// On SQLite the killed commit, and those behind it, were never
		// published: its goroutine publishes after the failpoint. On
		// PostgreSQL the process's numbering publishes (numbering.go),
		// apart from the writing goroutine, which may have been descheduled
		// between its COMMIT and the failpoint long enough for its change
		// to be numbered and sent: then the client has them all.
		if !strings.HasPrefix(dsn, "postgres:") {
			require.Less(t, resumeAt, at.Offset, "kill %d: the killed commit was published", i+1)
		}
		if resumeAt < at.Offset {
			unpublished++
		}
		resumed := dialCrash(t, srv.WSURL, &channelsapi.Position{Epoch: at.Epoch, Offset: resumeAt}, resumeAt)
		got := resumed.until(at.Offset, resumeAt)
		assert.Len(t, got, int(at.Offset-resumeAt), "kill %d", i+1)
		_ = resumed.conn.Close()
		_ = onWriter.conn.Close()
	}
	t.Logf("%d of %d kills left changes unpublished, which a resume here replayed", unpublished, crashKills)
	require.Greater(t, unpublished, crashKills/2, "the kills land between COMMIT and publication")
	var rowsNow []outboxtest.Item
	require.NoError(t, db.Find(&rowsNow).Error)
	require.Len(t, state, len(rowsNow))
	for _, r := range rowsNow {
		assert.Equal(t, r, state[r.ID], "item %d: the events do not add up to the row", r.ID)
	}
}

// outboxPosition reads the position of outboxtest.Stream in the outbox,
// once every committed change is numbered: on PostgreSQL they are after
// COMMIT (numbering.go), by the instance that committed them or by a
// poll.
func outboxPosition(t *testing.T, db *gorm.DB) channelsapi.Position {
	if db.Migrator().HasTable("channelsapi_pending") {
		deadline := time.Now().Add(readTimeout)
		for {
			var n int64
			require.NoError(t, db.Raw(`SELECT COUNT(*) FROM channelsapi_pending`).Row().Scan(&n))
			if n == 0 {
				break
			}
			require.True(t, time.Now().Before(deadline), "%d changes left unnumbered", n)
			time.Sleep(10 * time.Millisecond)
		}
	}
	var at channelsapi.Position
	require.NoError(t, db.Raw(`SELECT top, epoch FROM channelsapi_streams WHERE stream = ?`, outboxtest.Stream).Row().Scan(&at.Offset, &at.Epoch))
	return at
}
