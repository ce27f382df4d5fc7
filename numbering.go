package channelsapi

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"gorm.io/gorm"
)

// This file numbers the changes of the outbox after COMMIT, on PostgreSQL.
//
// Numbering in the transaction (outbox.write, as on SQLite) holds each
// stream's counter row from the numbering to the end of COMMIT, its WAL
// flush included: the commits of one stream would follow each other one
// flush at a time, where PostgreSQL otherwise flushes concurrent commits
// together. So on PostgreSQL a transaction only inserts its changes into
// channelsapi_pending, an identity column giving each its place, and
// commits. Then a numbering transaction, run by the instance that
// committed them (or by any instance's poll, for a process that died
// first), locks the stream's counter, moves the stream's pending changes
// into channelsapi_outbox in the order of their places, at the offsets
// after the counter's top, raises the top and commits; the instance that
// numbered them publishes them. Numbering transactions of one stream wait
// for each other, and each takes every change committed meanwhile.
//
// The offsets follow commit order wherever it matters. A transaction takes
// its places after its last write: of two transactions that write one row,
// the second waits for the first's COMMIT at the row before it can take
// them, so its changes come after; and a numbering transaction sees
// either both, or only the first's. Transactions that share no row may be
// numbered in either order. A change that is committed is numbered, once,
// with every offset of its stream taken in between: gap-free.
//
// The numbering transaction waits for its WAL flush like any other: it is
// published only once durable, so that a crash of the database cannot
// number differently what subscribers have received.

// writePending inserts changes into channelsapi_pending, in tx, the
// transaction about to commit them, one row per change and stream of its
// model. The changes are encoded already (capture.prepare).
func (o *outbox) writePending(ctx context.Context, tx gorm.ConnPool, changes []change) error {
	rows := insertRows{tx: tx, head: o.sql.insertPending, postgres: true}
	now := time.Now().UnixMilli()
	for i := range changes {
		ch := &changes[i]
		stateful := o.reg.stateful(ch.typ)
		for _, r := range o.reg.ofType(ch.typ) {
			ch.pending = true
			if err := rows.add(ctx, r.name(), encodeOutbox(r, stateful, *ch, 0), now); err != nil {
				return err
			}
		}
	}
	return rows.flush(ctx)
}

// committed takes changes after COMMIT, in commit order: the streams of
// those waiting for their offsets are numbered soon (by the numbering
// goroutine, which publishes them), and the others (a resync the outbox
// could not take) are returned, for the relay.
func (o *outbox) committed(changes []change) []change {
	if !o.after {
		return changes
	}
	rest := changes[:0:0]
	o.mu.Lock()
	for _, ch := range changes {
		if !ch.pending {
			rest = append(rest, ch)
			continue
		}
		for _, r := range o.reg.ofType(ch.typ) {
			o.toDo[r.name()] = true
		}
	}
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return rest
}

// numberEvery is the shortest interval between two numbering rounds of an
// instance: what a change may wait, at most, before it is numbered.
const numberEvery = time.Millisecond

// numberLoop numbers the streams it is woken for until quit is closed,
// handing what it numbered to publish.
func (o *outbox) numberLoop(ctx context.Context, quit <-chan struct{}, publish func(stream string, rows []outboxRow), log func(msg string, args ...any)) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var last time.Time
	for {
		select {
		case <-quit:
			return
		case <-o.wake:
		case <-retry.C:
		}
		// At most one round per numberEvery: under load, a round
		// numbers the commits of a whole interval in one transaction.
		if wait := numberEvery - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-quit:
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		o.mu.Lock()
		streams := make([]string, 0, len(o.toDo))
		for s := range o.toDo {
			streams = append(streams, s)
		}
		clear(o.toDo)
		o.mu.Unlock()
		slices.Sort(streams)
		failed := false
		for _, s := range streams {
			if err := o.numberAll(ctx, quit, s, publish); err != nil {
				if ctx.Err() != nil {
					return
				}
				log("channelsapi: number the outbox's changes; retrying", "stream", s, "err", err)
				o.mu.Lock()
				o.toDo[s] = true
				o.mu.Unlock()
				failed = true
			}
		}
		if failed {
			retry.Reset(gapWait)
		}
	}
}

// numberAll numbers stream's pending changes, a batch per transaction,
// and publishes each batch once it committed.
func (o *outbox) numberAll(ctx context.Context, quit <-chan struct{}, stream string, publish func(stream string, rows []outboxRow)) error {
	for {
		select {
		case <-quit:
			return nil // what is left is numbered by the next start, or another instance
		default:
		}
		rows, err := o.numberBatch(ctx, stream)
		if err != nil {
			return err
		}
		if len(rows) > 0 {
			publish(stream, rows)
		}
		if len(rows) < outboxBatch {
			return nil
		}
	}
}

// numberBatch numbers up to outboxBatch of stream's pending changes, in
// the order of their places, and returns them in offset order.
func (o *outbox) numberBatch(ctx context.Context, stream string) (rows []outboxRow, err error) {
	ctx, cancel := context.WithTimeout(ctx, resumeTimeout)
	defer cancel()
	// Read committed whatever the database's default: the lock waits
	// for another instance's numbering, and the move then sees it.
	tx, err := o.raw.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var top uint64
	if err = tx.QueryRowContext(ctx, o.sql.lockTop, stream).Scan(&top); err != nil {
		return nil, err
	}
	res, err := tx.QueryContext(ctx, o.sql.move, stream, top)
	if err != nil {
		return nil, err
	}
	for res.Next() {
		var r outboxRow
		if err = res.Scan(&r.offset, &r.payload); err != nil {
			_ = res.Close()
			return nil, err
		}
		rows = append(rows, r)
	}
	if err = res.Err(); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, tx.Rollback()
	}
	if err = tx.Commit(); err != nil {
		return nil, err
	}
	slices.SortFunc(rows, func(a, b outboxRow) int { return int(a.offset - b.offset) })
	return rows, nil
}

// settle numbers stream's pending changes now, before a list or a
// snapshot reads its position: every change committed before it then has
// its offset (read your writes). A change committed in the moment between
// settle and the read's snapshot is in the rows without being within the
// position, so its event may also follow (PostgreSQL only).
func (o *outbox) settle(ctx context.Context, stream string) error {
	if !o.after || o.publish == nil {
		return nil
	}
	return o.numberAll(ctx, nil, stream, o.publish)
}

// orphans marks the registered streams with pending changes for
// numbering: those of a process that died between its COMMIT and its
// numbering, or whose numbering failed.
func (o *outbox) orphans(ctx context.Context, registered func(string) bool) error {
	if !o.after {
		return nil
	}
	res, err := o.raw.QueryContext(ctx, o.sql.pendingStreams)
	if err != nil {
		return err
	}
	defer res.Close()
	found := false
	for res.Next() {
		var s string
		if err := res.Scan(&s); err != nil {
			return err
		}
		if registered(s) {
			o.mu.Lock()
			o.toDo[s] = true
			o.mu.Unlock()
			found = true
		}
	}
	if found {
		select {
		case o.wake <- struct{}{}:
		default:
		}
	}
	return res.Err()
}

// withOffset returns payload, a wireChange the outbox numbered after
// COMMIT, with its offset, as a broker carries it.
func withOffset(payload []byte, offset uint64) []byte {
	out := make([]byte, 0, len(payload)+24)
	out = fmt.Appendf(out, `{"o":%d,`, offset)
	return append(out, payload[1:]...)
}
