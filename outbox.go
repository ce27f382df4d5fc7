package channelsapi

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"
)

// This file is the transactional outbox (WithOutbox): the changes of a
// transaction are numbered and written, in that same transaction, to two
// tables the library owns, so that a committed change reaches its
// subscribers even when the process that committed it dies before
// publishing it.
//
//	channelsapi_streams (stream PRIMARY KEY, top, epoch)
//	channelsapi_outbox  (stream, "offset", payload, created_at, PRIMARY KEY (stream, "offset"))
//
// On SQLite, whose writers take turns anyway, just before COMMIT the
// transaction adds the number of its changes to the top of each stream
// they belong to (in the streams' name order, so that two transactions
// never wait for each other's counters in a cycle) and takes the offsets
// below the new top, then inserts one outbox row per change and stream:
// the change as a broker carries it (wirechange.go), its offset inside.
// The counter stays locked until COMMIT, so the offsets of a stream are
// given in commit order, without gaps, whichever process commits; after
// COMMIT the changes are published from memory as without the outbox.
//
// On PostgreSQL, holding the counter until COMMIT would make the commits
// of one stream wait for each other's WAL flush: there the transaction
// writes its changes to a third table, channelsapi_pending, and they are
// numbered right after COMMIT (numbering.go).
//
// After numbering, the changes are published as without the outbox. Every instance delivers each stream strictly in offset order
// (delivery_ordered.go): what arrives ahead of a missing offset waits for
// it briefly, then the missing rows are read from the outbox; and every
// PollInterval each instance reads the streams' tops, which reveals what a
// process that died after COMMIT never published. The outbox is also the
// history that subscribes with "since" replay, and lists and snapshots
// read their position from channelsapi_streams in their own read
// transaction: exact on any number of instances.

// Defaults of OutboxConfig.
const (
	DefaultOutboxRetention = time.Hour
	DefaultOutboxRows      = 10000
	DefaultOutboxPoll      = time.Second
)

// OutboxConfig configures WithOutbox. Zero fields take the defaults.
type OutboxConfig struct {
	// Retention is how long a change stays in the outbox (and can be
	// replayed to a client that resumes): DefaultOutboxRetention.
	Retention time.Duration
	// MaxRows bounds the changes each stream keeps: DefaultOutboxRows.
	// It also bounds a replay.
	MaxRows int
	// PollInterval is how often each instance reads the streams' tops
	// to find changes that were committed and never published (their
	// process died), or, without a broker, committed by another process:
	// DefaultOutboxPoll. It bounds how late those reach subscribers.
	PollInterval time.Duration
}

// WithOutbox makes delivery crash-safe: the changes of every transaction
// are written, in that transaction, to an outbox table the library creates
// at Register (channelsapi_outbox, with channelsapi_streams for the
// streams' counters), on SQLite or PostgreSQL. A change that committed
// reaches its subscribers even if the process that committed it is killed
// before publishing it, once another instance, or the same one restarted,
// has polled; and a client may resume from the outbox, across restarts of
// every instance and of Redis.
//
// Without a broker, instances that share the database also deliver each
// other's changes, within PollInterval. With a broker, the broker remains
// the fast path and the outbox fills whatever it misses.
//
// Each transaction that writes registered models pays one counter update
// per stream it touches and one insert, and the transactions that write
// one stream commit one after the other from that update on. Writes run
// outside a transaction (SkipDefaultTransaction) are crash-safe too: the
// library runs them in a transaction of its own. Writes in transactions
// begun outside the registered *gorm.DB (db.Connection) are not: their
// subscribers resync, as without the outbox.
func WithOutbox(cfg OutboxConfig) Option {
	return func(c *config) {
		if cfg.Retention == 0 {
			cfg.Retention = DefaultOutboxRetention
		}
		if cfg.MaxRows == 0 {
			cfg.MaxRows = DefaultOutboxRows
		}
		if cfg.PollInterval == 0 {
			cfg.PollInterval = DefaultOutboxPoll
		}
		c.outbox = &cfg
	}
}

// outbox reads and writes the library's two tables.
type outbox struct {
	db       *gorm.DB
	cfg      OutboxConfig
	reg      *registry
	postgres bool
	sql      outboxSQL
	// after: changes are numbered after COMMIT (PostgreSQL), not in their
	// transaction (SQLite); see numbering.go.
	after   bool
	raw     *sql.DB // for numbering, beside GORM and the capture
	wake    chan struct{}
	mu      sync.Mutex
	toDo    map[string]bool                       // streams with changes to number
	publish func(stream string, rows []outboxRow) // what numbering numbered, to the relay; set before any write
}

// outboxSQL holds the statements, in the dialect's placeholders.
type outboxSQL struct {
	bump, top, insertRows, ensure, position, tops, read, oldest, trim string
	// With numbering after COMMIT (PostgreSQL): the changes waiting for
	// their offsets, and the numbering.
	insertPending, lockTop, move, pendingStreams string
}

// outboxBatch bounds the rows one statement inserts, reads or deletes.
const outboxBatch = 500

func newOutbox(db *gorm.DB, cfg OutboxConfig, reg *registry) (*outbox, error) {
	switch {
	case cfg.Retention < 0 || cfg.MaxRows < 0 || cfg.PollInterval < 0:
		return nil, fmt.Errorf("channelsapi: outbox retention, rows and poll interval must not be negative")
	}
	o := &outbox{db: db, cfg: cfg, reg: reg, wake: make(chan struct{}, 1), toDo: map[string]bool{}}
	var (
		ddl []string
		err error
	)
	switch db.Dialector.Name() {
	case "postgres":
		o.postgres = true
		ddl = []string{
			`CREATE TABLE IF NOT EXISTS channelsapi_streams (stream text PRIMARY KEY, top bigint NOT NULL, epoch text NOT NULL)`,
			`CREATE TABLE IF NOT EXISTS channelsapi_outbox (stream text NOT NULL, "offset" bigint NOT NULL, payload bytea NOT NULL, created_at bigint NOT NULL, PRIMARY KEY (stream, "offset"))`,
			`CREATE TABLE IF NOT EXISTS channelsapi_pending (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, stream text NOT NULL, payload bytea NOT NULL, created_at bigint NOT NULL)`,
		}
	case "sqlite":
		ddl = []string{
			`CREATE TABLE IF NOT EXISTS channelsapi_streams (stream TEXT PRIMARY KEY, top INTEGER NOT NULL, epoch TEXT NOT NULL)`,
			`CREATE TABLE IF NOT EXISTS channelsapi_outbox (stream TEXT NOT NULL, "offset" INTEGER NOT NULL, payload BLOB NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (stream, "offset")) WITHOUT ROWID`,
		}
	default:
		return nil, fmt.Errorf("channelsapi: the outbox needs SQLite or PostgreSQL, not %s", db.Dialector.Name())
	}
	for _, s := range ddl {
		if err := db.Exec(s).Error; err != nil {
			return nil, fmt.Errorf("channelsapi: create the outbox tables: %w", err)
		}
	}
	p := func(n int) string { return "?" }
	if o.postgres {
		p = func(n int) string { return "$" + strconv.Itoa(n) }
	}
	o.sql = outboxSQL{
		// Then read: on SQLite an UPDATE of this table with RETURNING
		// costs about 100 µs more than the UPDATE and a SELECT.
		bump:       `UPDATE channelsapi_streams SET top = top + ` + p(1) + ` WHERE stream = ` + p(2),
		top:        `SELECT top FROM channelsapi_streams WHERE stream = ` + p(1),
		insertRows: `INSERT INTO channelsapi_outbox (stream, "offset", payload, created_at) VALUES `,
		ensure:     `INSERT INTO channelsapi_streams (stream, top, epoch) VALUES (?, 0, ?) ON CONFLICT (stream) DO NOTHING`,
		position:   `SELECT top, epoch FROM channelsapi_streams WHERE stream = ?`,
		tops:       `SELECT stream, top FROM channelsapi_streams`,
		read:       `SELECT "offset", payload FROM channelsapi_outbox WHERE stream = ? AND "offset" > ? AND "offset" <= ? ORDER BY "offset" LIMIT ?`,
		oldest:     `SELECT MIN("offset") FROM channelsapi_outbox WHERE stream = ?`,
		trim:       `DELETE FROM channelsapi_outbox WHERE stream = ? AND "offset" BETWEEN ? AND ? AND ("offset" <= ? OR created_at < ?)`,
	}
	if o.postgres {
		o.sql.insertPending = `INSERT INTO channelsapi_pending (stream, payload, created_at) VALUES `
		o.sql.lockTop = `SELECT top FROM channelsapi_streams WHERE stream = $1 FOR UPDATE`
		o.sql.move = `WITH moved AS (
	DELETE FROM channelsapi_pending WHERE id IN (SELECT id FROM channelsapi_pending WHERE stream = $1 ORDER BY id LIMIT ` + strconv.Itoa(outboxBatch) + `)
	RETURNING id, payload, created_at),
numbered AS (
	INSERT INTO channelsapi_outbox (stream, "offset", payload, created_at)
	SELECT $1, $2::bigint + row_number() OVER (ORDER BY id), payload, created_at FROM moved
	RETURNING "offset", payload),
raised AS (
	UPDATE channelsapi_streams SET top = top + (SELECT COUNT(*) FROM moved) WHERE stream = $1)
SELECT "offset", payload FROM numbered`
		o.sql.pendingStreams = `SELECT DISTINCT stream FROM channelsapi_pending`
		o.after = true
		if o.raw, err = db.DB(); err != nil {
			return nil, fmt.Errorf("channelsapi: the outbox needs the database's *sql.DB: %w", err)
		}
	}
	return o, nil
}

// newEpoch names a new numbering of a stream.
func newEpoch() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ensure creates stream's counter unless it exists, and returns its
// position.
func (o *outbox) ensure(ctx context.Context, stream string) (Position, error) {
	db := o.db.WithContext(ctx)
	if err := db.Exec(o.sql.ensure, stream, newEpoch()).Error; err != nil {
		return Position{}, fmt.Errorf("channelsapi: create the outbox counter of %s: %w", stream, err)
	}
	return o.position(db, stream)
}

// position reads stream's position in db, which may be a read
// transaction: the offset of the last change committed in its snapshot.
func (o *outbox) position(db *gorm.DB, stream string) (Position, error) {
	var at Position
	row := db.Raw(o.sql.position, stream).Row()
	if err := row.Scan(&at.Offset, &at.Epoch); err != nil {
		return at, fmt.Errorf("channelsapi: read the outbox position of %s: %w", stream, err)
	}
	return at, nil
}

// tops reads the top of every stream.
func (o *outbox) tops(ctx context.Context) (map[string]uint64, error) {
	rows, err := o.db.WithContext(ctx).Raw(o.sql.tops).Rows()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	tops := map[string]uint64{}
	for rows.Next() {
		var (
			stream string
			top    uint64
		)
		if err := rows.Scan(&stream, &top); err != nil {
			return nil, err
		}
		tops[stream] = top
	}
	return tops, rows.Err()
}

// outboxRow is a change read back from the outbox.
type outboxRow struct {
	offset  uint64
	payload []byte
}

// read returns stream's rows after after, up to upto, at most limit, in
// offset order.
func (o *outbox) read(ctx context.Context, stream string, after, upto uint64, limit int) ([]outboxRow, error) {
	rows, err := o.db.WithContext(ctx).Raw(o.sql.read, stream, after, upto, limit).Rows()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.offset, &r.payload); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// numbered is a change's place in one stream, and its outbox payload.
type numbered struct {
	stream  string
	offset  uint64
	payload []byte
}

// write numbers changes in the streams of their models and inserts them
// into the outbox, in tx, the transaction about to commit them. The
// changes are encoded already (capture.prepare).
func (o *outbox) write(ctx context.Context, tx gorm.ConnPool, changes []change) error {
	if o.after {
		return o.writePending(ctx, tx, changes)
	}
	counts := map[string]int{}
	for _, ch := range changes {
		for _, r := range o.reg.ofType(ch.typ) {
			counts[r.name()]++
		}
	}
	if len(counts) == 0 {
		return nil
	}
	streams := make([]string, 0, len(counts))
	for s := range counts {
		streams = append(streams, s)
	}
	slices.Sort(streams) // every transaction locks the counters in one order
	next := make(map[string]uint64, len(streams))
	for _, s := range streams {
		var top uint64
		// The counter exists from Add on (ensure); the transaction holds
		// SQLite's write lock.
		if _, err := tx.ExecContext(ctx, o.sql.bump, counts[s], s); err != nil {
			return fmt.Errorf("channelsapi: number the changes of %s in the outbox: %w", s, err)
		}
		if err := tx.QueryRowContext(ctx, o.sql.top, s).Scan(&top); err != nil {
			return fmt.Errorf("channelsapi: number the changes of %s in the outbox: %w", s, err)
		}
		next[s] = top - uint64(counts[s]) + 1
	}
	rows := insertRows{tx: tx, head: o.sql.insertRows, postgres: o.postgres}
	now := time.Now().UnixMilli()
	for i := range changes {
		ch := &changes[i]
		rs := o.reg.ofType(ch.typ)
		stateful := o.reg.stateful(ch.typ)
		ch.numbered = make([]numbered, 0, len(rs))
		for _, r := range rs {
			n := numbered{stream: r.name(), offset: next[r.name()]}
			next[n.stream]++
			n.payload = encodeOutbox(r, stateful, *ch, n.offset)
			ch.numbered = append(ch.numbered, n)
			if err := rows.add(ctx, n.stream, n.offset, n.payload, now); err != nil {
				return err
			}
		}
	}
	return rows.flush(ctx)
}

// encodeOutbox encodes ch for r's stream at offset (0: not yet numbered);
// a change that cannot be encoded takes its place as a resync.
func encodeOutbox(r resource, stateful bool, ch change, offset uint64) []byte {
	payload, err := encodeWireChange(r, stateful, ch, offset)
	if err != nil {
		payload, _ = encodeWireChange(r, false, change{typ: ch.typ, resync: reasonEncoding}, offset)
	}
	return payload
}

// insertRows builds multi-row INSERT statements (head, then the rows'
// VALUES) and runs them in tx, at most outboxBatch rows each.
type insertRows struct {
	tx       gorm.ConnPool
	head     string
	postgres bool
	rows     int
	query    strings.Builder
	args     []any
}

// add appends a row of values, running the statement when it is full.
func (b *insertRows) add(ctx context.Context, values ...any) error {
	if b.rows == 0 {
		b.query.WriteString(b.head)
	} else {
		b.query.WriteString(", ")
	}
	b.query.WriteByte('(')
	for i, v := range values {
		if i > 0 {
			b.query.WriteString(", ")
		}
		b.args = append(b.args, v)
		if b.postgres {
			b.query.WriteString("$" + strconv.Itoa(len(b.args)))
		} else {
			b.query.WriteByte('?')
		}
	}
	b.query.WriteByte(')')
	if b.rows++; b.rows >= outboxBatch {
		return b.flush(ctx)
	}
	return nil
}

// flush runs the statement built so far, if any.
func (b *insertRows) flush(ctx context.Context) error {
	if b.rows == 0 {
		return nil
	}
	_, err := b.tx.ExecContext(ctx, b.query.String(), b.args...)
	b.query.Reset()
	b.args, b.rows = b.args[:0], 0
	if err != nil {
		return fmt.Errorf("channelsapi: write the outbox: %w", err)
	}
	return nil
}

// trim deletes stream's rows that are older than the retention or beyond
// its last MaxRows, a batch per statement, so that no statement holds its
// locks for long.
func (o *outbox) trim(ctx context.Context, stream string, now time.Time) error {
	db := o.db.WithContext(ctx)
	at, err := o.position(db, stream)
	if err != nil {
		return err
	}
	var keepFrom uint64 // rows at or below this offset go whatever their age
	if at.Offset > uint64(o.cfg.MaxRows) {
		keepFrom = at.Offset - uint64(o.cfg.MaxRows)
	}
	cutoff := now.Add(-o.cfg.Retention).UnixMilli()
	for ctx.Err() == nil {
		var oldest sql.NullInt64
		if err := db.Raw(o.sql.oldest, stream).Row().Scan(&oldest); err != nil {
			return err
		}
		if !oldest.Valid {
			return nil
		}
		from := uint64(oldest.Int64)
		res := db.Exec(o.sql.trim, stream, from, from+outboxBatch-1, keepFrom, cutoff)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected < outboxBatch {
			return nil // the rest are recent
		}
	}
	return ctx.Err()
}
