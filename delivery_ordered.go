package channelsapi

import (
	"context"
	"time"
)

// This file delivers the streams of an API with the outbox (outbox.go) in
// the order of the offsets the outbox gave their changes, whatever the
// order they arrive in: from this instance's commits, from the broker, or
// read back from the outbox.
//
// Each stream's goroutine keeps a cursor, the offset of the last change it
// delivered. A change at the cursor or below is a duplicate and is
// dropped; the next one is delivered, then those that had arrived ahead of
// it; one further ahead waits for the ones missing before it, for at most
// gapWait, and then the missing ones are read from the outbox. The poll
// (tendOutbox) reads every stream's top each PollInterval: a top above the
// cursor that no change reaches within gapWait is read from the outbox
// too. That is how the changes of a process that died between COMMIT and
// publishing reach the subscribers, and, without a broker, how the changes
// of other processes do.
//
// A stream nobody subscribes to here moves its cursor without reading
// anything.

// gapWait is how long a missing offset is waited for before it is read
// from the outbox.
const gapWait = 200 * time.Millisecond

// reasonOutboxGap closes the subscribers of a stream whose missing changes
// the outbox no longer holds (they outlived its retention).
const reasonOutboxGap = "outbox gap"

// ordered is the order of one stream, owned by its goroutine.
type ordered struct {
	epoch  string
	cursor uint64          // the last offset delivered
	want   uint64          // an offset known to be committed
	due    time.Time       // when the offsets up to want are read from the outbox, unless they came
	ahead  map[uint64]item // arrived beyond cursor+1
	// recheck: the top could not be read; it is read again when due.
	recheck bool
}

// committedNumbered queues changes committed on this instance at their
// offsets, also on streams nobody subscribes to (their cursors move on).
// The caller holds d.mu.
func (d *delivery) committedNumbered(changes []change) {
	for _, ch := range changes {
		for _, q := range d.byType[ch.typ] {
			it := item{ch: ch}
			for _, n := range ch.numbered {
				if n.stream == q.r.name() {
					it.at = Position{q.ord.epoch, n.offset}
				}
			}
			d.enqueue(q, it)
		}
	}
}

// numbered queues changes of stream this instance numbered after COMMIT
// (numbering.go), at their offsets.
func (d *delivery) numbered(stream string, rows []outboxRow) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	q, ok := d.streams[stream]
	if !ok {
		return
	}
	for _, row := range rows {
		d.enqueue(q, item{at: Position{Offset: row.offset}, decode: func() (change, error) { return decodeWireChange(q.r, row.payload) }})
	}
}

// check makes stream's goroutine read the stream's top and fill up to it
// from the outbox: a broker lost messages of it.
func (d *delivery) check(stream string) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if q, ok := d.streams[stream]; ok {
		d.enqueue(q, item{check: true})
	}
}

// runOrdered is run for streams with the outbox: it delivers q's changes
// in offset order until close, then what was queued before it.
func (d *delivery) runOrdered(q *streamQueue) {
	defer d.wg.Done()
	o := q.ord
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		q.mu.Lock()
		items, overflow, reason, stopped := q.items, q.overflow, q.resync, q.stopped
		q.items, q.overflow, q.resync = nil, false, ""
		q.mu.Unlock()
		d.wakes.publish(len(items), func(i int) { d.take(q, items[i]) })
		if overflow {
			d.toTop(q)
		}
		if reason != "" {
			d.resync(q.r.name(), reason)
		}
		if !o.due.IsZero() && !time.Now().Before(o.due) {
			if o.recheck {
				o.recheck = false
				d.toTop(q)
			} else {
				d.fill(q)
			}
		}
		if len(items) > 0 || overflow || reason != "" {
			continue
		}
		if stopped {
			return
		}
		if o.due.IsZero() {
			<-q.wake
			continue
		}
		timer.Reset(time.Until(o.due))
		select {
		case <-q.wake:
			if !timer.Stop() {
				<-timer.C
			}
		case <-timer.C:
		}
	}
}

// take handles one item on q's goroutine.
func (d *delivery) take(q *streamQueue, it item) {
	o := q.ord
	switch {
	case it.resume != nil:
		d.resume(q, it.resume)
		return
	case it.check:
		d.toTop(q)
		return
	case it.top != 0:
		d.await(q, it.top)
		if d.ret.broker == nil {
			// Nothing else brings another process's changes: no
			// reason to wait for them.
			d.fill(q)
		}
		return
	}
	if it.decode != nil && it.at.Offset != 0 {
		// Numbered here: deliver decodes it, if anyone listens.
		it.at.Epoch = o.epoch
	} else if it.decode != nil {
		ch, err := it.decode()
		if err != nil {
			d.log.Error("channelsapi: undecodable change", "stream", q.r.name(), "err", err)
			d.resync(q.r.name(), reasonUndecodable)
			return
		}
		it.ch, it.decode = ch, nil
		if ch.offset != 0 {
			it.at.Offset = ch.offset
		}
		it.at.Epoch = o.epoch
	}
	off := it.at.Offset
	switch {
	case off == 0:
		// A resync the outbox could not number: a write in a
		// transaction it cannot see. It is not ordered.
		d.deliver(q.r, it, nil)
	case off <= o.cursor:
		// Delivered already: read from the outbox, or published twice.
	case off == o.cursor+1:
		d.deliver(q.r, it, nil)
		o.cursor = off
		d.drain(q)
	default:
		o.ahead[off] = it
		d.await(q, off-1)
		if len(o.ahead) >= d.limit {
			d.fill(q)
		}
	}
}

// await notes that the changes up to offset were committed: those that do
// not arrive within gapWait are read from the outbox.
func (d *delivery) await(q *streamQueue, offset uint64) {
	o := q.ord
	if offset <= o.cursor {
		return
	}
	o.want = max(o.want, offset)
	if o.due.IsZero() {
		o.due = time.Now().Add(gapWait)
	}
}

// toTop reads q's stream top now and fills up to it from the outbox.
func (d *delivery) toTop(q *streamQueue) {
	o := q.ord
	at, err := o.positionNow(d, q.r.name())
	if err != nil {
		d.log.Error("channelsapi: read the outbox", "stream", q.r.name(), "err", err)
		o.recheck = true // try again after gapWait
		o.due = time.Now().Add(gapWait)
		return
	}
	d.await(q, at.Offset)
	d.fill(q)
}

func (o *ordered) positionNow(d *delivery, stream string) (Position, error) {
	ctx, cancel := context.WithTimeout(d.ctx, resumeTimeout)
	defer cancel()
	return d.ob.position(d.ob.db.WithContext(ctx), stream)
}

// drain delivers the changes that arrived ahead, from the cursor on.
func (d *delivery) drain(q *streamQueue) {
	o := q.ord
	for {
		it, ok := o.ahead[o.cursor+1]
		if !ok {
			break
		}
		delete(o.ahead, o.cursor+1)
		d.deliver(q.r, it, nil)
		o.cursor++
	}
	if o.cursor >= o.want {
		o.due = time.Time{}
		for off := range o.ahead { // overtaken by a read from the outbox
			if off <= o.cursor {
				delete(o.ahead, off)
			}
		}
	}
}

// fill reads the changes after the cursor up to what is known committed
// (want, and what arrived ahead) from the outbox, and delivers them. When
// nobody here subscribes to the stream, the cursor moves on unread. When
// the outbox no longer holds them, the subscribers resync.
func (d *delivery) fill(q *streamQueue) {
	o := q.ord
	for _, it := range o.ahead {
		o.want = max(o.want, it.at.Offset)
	}
	stream := q.r.name()
	for o.cursor < o.want {
		if !d.hub.Active(stream) {
			o.cursor = o.want
			break
		}
		ctx, cancel := context.WithTimeout(d.ctx, resumeTimeout)
		rows, err := d.ob.read(ctx, stream, o.cursor, o.want, outboxBatch)
		cancel()
		if err != nil {
			d.log.Error("channelsapi: read the outbox", "stream", stream, "err", err)
			o.due = time.Now().Add(gapWait) // try again then
			return
		}
		if len(rows) == 0 || rows[0].offset != o.cursor+1 {
			d.log.Warn("channelsapi: changes missing from the outbox (beyond its retention); the stream's subscribers resync", "stream", stream, "after", o.cursor)
			d.resync(stream, reasonOutboxGap)
			o.cursor = o.want
			if len(rows) > 0 {
				o.cursor = rows[0].offset - 1
			}
			continue
		}
		for _, row := range rows {
			if row.offset != o.cursor+1 {
				break // the next read finds the gap
			}
			delete(o.ahead, row.offset)
			ch, err := decodeWireChange(q.r, row.payload)
			if err != nil {
				d.log.Error("channelsapi: undecodable change in the outbox", "stream", stream, "offset", row.offset, "err", err)
				ch = change{resync: reasonUndecodable}
			}
			d.deliver(q.r, item{ch: ch, at: Position{o.epoch, row.offset}}, nil)
			o.cursor = row.offset
		}
	}
	d.drain(q)
	o.want = max(o.want, o.cursor)
	o.due = time.Time{}
}

// replayOutbox is replay for streams with the outbox: the changes after
// since up to the cursor, read from the outbox.
//
// The replay reaches up to the stream's top in the database, which may be
// ahead of what this instance delivered so far: the subscription starts
// there, and skips those changes when they are delivered.
func (d *delivery) replayOutbox(q *streamQueue, rs *resumption) resumed {
	o := q.ord
	top, err := o.positionNow(d, q.r.name())
	if err != nil {
		d.log.Error("channelsapi: read the outbox", "stream", q.r.name(), "err", err)
		return resumed{err: errResumeBusy}
	}
	upto := max(o.cursor, top.Offset)
	at := Position{o.epoch, upto}
	switch {
	case rs.since.Epoch != o.epoch || rs.since.Offset > upto:
		return resumed{at: at} // another numbering, or a position never given
	case rs.since.Offset == upto:
		return resumed{recovered: true, at: at}
	case upto-rs.since.Offset > uint64(d.ob.cfg.MaxRows):
		return resumed{at: at}
	}
	var replay []item
	for after := rs.since.Offset; after < upto; {
		ctx, cancel := context.WithTimeout(d.ctx, resumeTimeout)
		rows, err := d.ob.read(ctx, q.r.name(), after, upto, outboxBatch)
		cancel()
		if err != nil {
			d.log.Error("channelsapi: read the outbox", "stream", q.r.name(), "err", err)
			return resumed{err: errResumeBusy}
		}
		if len(rows) == 0 {
			return resumed{at: at}
		}
		for _, row := range rows {
			if row.offset != after+1 {
				return resumed{at: at} // trimmed
			}
			ch, err := decodeWireChange(q.r, row.payload)
			if err != nil || ch.resync != "" {
				return resumed{at: at} // no replay reaches across a resync
			}
			replay = append(replay, item{ch: ch, at: Position{o.epoch, row.offset}})
			after = row.offset
		}
	}
	for _, it := range replay {
		d.deliver(q.r, it, &rs.sub)
	}
	return resumed{recovered: true, at: at}
}

// tendOutbox polls the streams' tops every PollInterval, so that what was
// committed and not published reaches the subscribers, and trims the
// outbox. It returns when the delivery closes.
func (d *delivery) tendOutbox() {
	defer d.wg.Done()
	poll := time.NewTicker(d.ob.cfg.PollInterval)
	defer poll.Stop()
	trimEvery := min(max(d.ob.cfg.Retention/4, time.Second), time.Minute)
	trim := time.NewTicker(trimEvery)
	defer trim.Stop()
	// Statements under way end with the delivery.
	ctx, cancel := context.WithCancel(d.ctx)
	defer cancel()
	go func() {
		select {
		case <-d.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	seen := map[string]uint64{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			d.pollOutbox(ctx, seen)
		case now := <-trim.C:
			d.trimOutbox(ctx, now)
		}
	}
}

// pollOutbox hands each stream whose top moved since the last poll its
// new top.
func (d *delivery) pollOutbox(ctx context.Context, seen map[string]uint64) {
	ctx, cancel := context.WithTimeout(ctx, resumeTimeout)
	defer cancel()
	if err := d.ob.orphans(ctx, func(s string) bool {
		d.mu.RLock()
		defer d.mu.RUnlock()
		_, ok := d.streams[s]
		return ok
	}); err != nil && ctx.Err() == nil {
		d.log.Error("channelsapi: poll the outbox", "err", err)
	}
	tops, err := d.ob.tops(ctx)
	if err != nil && ctx.Err() == nil {
		d.log.Error("channelsapi: poll the outbox", "err", err)
	}
	if err != nil {
		return
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	for stream, top := range tops {
		q, ok := d.streams[stream]
		if !ok || seen[stream] == top {
			continue
		}
		seen[stream] = top
		d.enqueue(q, item{top: top})
	}
}

// trimOutbox deletes what outlived the retention, stream by stream.
func (d *delivery) trimOutbox(ctx context.Context, now time.Time) {
	d.mu.RLock()
	streams := make([]string, 0, len(d.streams))
	for s := range d.streams {
		streams = append(streams, s)
	}
	d.mu.RUnlock()
	for _, s := range streams {
		tctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := d.ob.trim(tctx, s, now)
		cancel()
		if err != nil && ctx.Err() == nil {
			d.log.Error("channelsapi: trim the outbox", "stream", s, "err", err)
		}
	}
}
