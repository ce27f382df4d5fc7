package channelsapi

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"

	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi/internal/fanout"
	"github.com/channelsapi/channelsapi/internal/query"
)

var (
	errActionRequired    = NewError(http.StatusBadRequest, "action required")
	errInvalidSubscribe  = NewError(http.StatusBadRequest, "Invalid subscription action")
	errRequestIDRequired = NewError(http.StatusBadRequest, "request_id required")
	errRequestIDTooLong  = NewError(http.StatusBadRequest, "request_id too long")
	errSubscriptionLimit = NewError(http.StatusTooManyRequests, "Too many subscriptions.")
	errPKConflict        = NewError(http.StatusBadRequest, "pk and data.pk differ")
)

// maxRequestIDSize bounds the compact JSON of a request_id that identifies
// an instance subscription: the connection keeps it for as long as the
// subscription lasts.
const maxRequestIDSize = 256

// subscription serves subscribe and unsubscribe (PROTOCOL.md 4.7) and
// subscribe_instance and unsubscribe_instance (4.8) for connection c.
func (v *viewSet[T]) subscription(ctx context.Context, req *Request, c *conn) result {
	hub := v.api.hub
	switch req.Action {
	case actionSubscribe, actionUnsubscribe:
		event, err := subscribeAction(req.Data)
		if err != nil {
			return result{err: err}
		}
		key, err := v.subscribePK(req)
		if err != nil {
			return result{err: err}
		}
		if req.Action == actionUnsubscribe {
			hub.Unsubscribe(c, v.Stream, event, key)
			return result{status: http.StatusOK, data: map[string]string{"action": event}}
		}
		since, resuming, err := sinceOf(req.Data)
		if err != nil {
			return result{err: err}
		}
		if _, err := c.scopeOf(v); err != nil {
			return result{err: err}
		}
		fresh := !resuming && v.api.outbox != nil
		after := uint64(0)
		if resuming || fresh {
			after = fanout.Held
		}
		if hub.SubscribeAfter(c, v.Stream, event, key, after) && hub.Count(c) > v.api.cfg.subscriptions {
			hub.Unsubscribe(c, v.Stream, event, key)
			return result{err: errSubscriptionLimit}
		}
		v.api.relay.ready(ctx, v.Stream)
		if fresh {
			if err := v.startAtTop(ctx, c, fanout.Subscription{S: c, Kind: fanout.Group, Action: event, PK: key}); err != nil {
				hub.Unsubscribe(c, v.Stream, event, key)
				return result{err: err}
			}
		}
		if !resuming {
			return result{status: http.StatusOK, data: map[string]string{"action": event}}
		}
		res, err := v.resume(ctx, c, fanout.Subscription{S: c, Kind: fanout.Group, Action: event, PK: key}, since)
		if err != nil {
			hub.Unsubscribe(c, v.Stream, event, key)
			return result{err: err}
		}
		return result{status: http.StatusOK, data: resumeReply{Action: event, Recovered: res.recovered, Position: res.at}}
	case actionSubscribeInstance:
		rid, err := requestID(req.RequestID)
		if err != nil {
			return result{err: err}
		}
		if _, err := v.find(ctx, v.api.db.WithContext(ctx), req); err != nil {
			return result{err: err}
		}
		since, resuming, err := sinceOf(req.Data)
		if err != nil {
			return result{err: err}
		}
		if _, err := c.scopeOf(v); err != nil {
			return result{err: err}
		}
		key, after := pkKey(req.PK), uint64(0)
		fresh := !resuming && v.api.outbox != nil
		if resuming || fresh {
			after = fanout.Held
		}
		if hub.SubscribeInstanceAfter(c, v.Stream, key, rid, after) && hub.Count(c) > v.api.cfg.subscriptions {
			hub.UnsubscribeInstance(c, v.Stream, key, rid)
			return result{err: errSubscriptionLimit}
		}
		v.api.relay.ready(ctx, v.Stream)
		if fresh {
			if err := v.startAtTop(ctx, c, fanout.Subscription{S: c, Kind: fanout.Instance, PK: key, RequestID: string(rid)}); err != nil {
				hub.UnsubscribeInstance(c, v.Stream, key, rid)
				return result{err: err}
			}
		}
		if !resuming {
			return result{status: http.StatusCreated}
		}
		res, err := v.resume(ctx, c, fanout.Subscription{S: c, Kind: fanout.Instance, PK: key, RequestID: string(rid)}, since)
		if err != nil {
			hub.UnsubscribeInstance(c, v.Stream, key, rid)
			return result{err: err}
		}
		return result{status: http.StatusCreated, data: resumeReply{Recovered: res.recovered, Position: res.at}}
	case actionSubscribeList:
		return v.subscribeList(ctx, req, c)
	case actionUnsubscribeList:
		rid, err := requestID(req.RequestID)
		if err != nil {
			return result{err: err}
		}
		hub.UnsubscribeQuery(c, v.Stream, rid)
		return result{status: http.StatusOK, data: listSubscription{Subscription: req.RequestID}}
	default: // actionUnsubscribeInstance
		rid, err := requestID(req.RequestID)
		if err != nil {
			return result{err: err}
		}
		if req.PK != nil {
			hub.UnsubscribeInstance(c, v.Stream, pkKey(req.PK), rid)
		}
		return result{status: http.StatusNoContent}
	}
}

// resumeReply is the data of the reply to a subscribe with "since"
// (PROTOCOL.md 10): whether every event after it follows, and the position
// after which live events start.
type resumeReply struct {
	Action    string   `json:"action,omitempty"`
	Recovered bool     `json:"recovered"`
	Position  Position `json:"position"`
}

// resume replays to sub, subscribed held on c, the events after since and
// starts it after them (resume.go). The replay is queued on c behind the
// reply, beyond the connection's queue size: it is bounded by the history.
func (v *viewSet[T]) resume(ctx context.Context, c *conn, sub fanout.Subscription, since Position) (resumed, error) {
	// With the outbox, what committed before is numbered, and replayed.
	if err := v.settle(ctx); err != nil {
		return resumed{}, err
	}
	return v.replayFrom(ctx, c, sub, since)
}

// replayFrom is resume without settle.
func (v *viewSet[T]) replayFrom(ctx context.Context, c *conn, sub fanout.Subscription, since Position) (resumed, error) {
	c.mu.Lock()
	c.replaying = true // until the reply and what follows it are written
	c.mu.Unlock()
	return v.api.delivery.resumeAt(ctx, v.Stream, sub, since)
}

// settle numbers the stream's pending changes now (outbox.settle).
func (v *viewSet[T]) settle(ctx context.Context) error {
	ob := v.api.outbox
	if ob == nil {
		return nil
	}
	if err := ob.settle(ctx, v.Stream); err != nil {
		v.api.log.Error("channelsapi: number the outbox's changes", "stream", v.Stream, "err", err)
		return errResumeBusy
	}
	return nil
}

// startAtTop starts sub, subscribed held on c, after the stream's
// position now, with the outbox: a subscription receives the events of the
// changes numbered after it was made, and none of those before, even when
// the stream's goroutine has yet to deliver them.
func (v *viewSet[T]) startAtTop(ctx context.Context, c *conn, sub fanout.Subscription) error {
	// Numbered first, so that the position holds every change committed
	// before the subscribe.
	if err := v.settle(ctx); err != nil {
		return err
	}
	at, err := v.api.outbox.position(v.api.db.WithContext(ctx), v.Stream)
	if err != nil {
		v.api.log.Error("channelsapi: read the outbox position", "stream", v.Stream, "err", err)
		return errResumeBusy
	}
	res, err := v.replayFrom(ctx, c, sub, at)
	if err == nil && !res.recovered {
		err = errResumeBusy // the stream's numbering started over meanwhile
	}
	return err
}

// subscribePK returns the key of the object a subscribe or unsubscribe
// names, at the top level or as data.pk (the form of the channels-api
// README), or "" for every object.
func (v *viewSet[T]) subscribePK(req *Request) (string, error) {
	key := ""
	if present(req.rawPK) {
		if req.PK == nil {
			return "", ErrNotFound
		}
		key = pkKey(req.PK)
	}
	d, _ := jsonObject(req.Data)
	if raw := d["pk"]; present(raw) {
		pk, ok := v.m.parsePK(raw)
		switch {
		case !ok:
			return "", ErrNotFound
		case key != "" && key != pkKey(pk):
			return "", errPKConflict
		}
		key = pkKey(pk)
	}
	return key, nil
}

// subscribeAction reads {"action": "create"|"update"|"delete"}.
func subscribeAction(data json.RawMessage) (string, error) {
	d, ok := jsonObject(data)
	if !ok && present(data) {
		return "", errActionRequired
	}
	if !present(d["action"]) {
		return "", errActionRequired
	}
	switch a, _ := jsonString(d["action"]); a {
	case actionCreate, actionUpdate, actionDelete:
		return a, nil
	}
	return "", errInvalidSubscribe
}

// requestID returns the compact JSON of a request_id, which identifies an
// instance subscription and is spliced into its events; at most
// maxRequestIDSize bytes.
func requestID(raw json.RawMessage) ([]byte, error) {
	if !present(raw) {
		return nil, errRequestIDRequired
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return nil, errRequestIDRequired
	}
	if b.Len() > maxRequestIDSize {
		return nil, errRequestIDTooLong
	}
	return b.Bytes(), nil
}

// listSubscription is the data of a subscribe_list reply (PROTOCOL.md 9):
// the subscription's request_id and, with a snapshot, the matching rows.
type listSubscription struct {
	Subscription json.RawMessage `json:"subscription"`
	Results      any             `json:"results,omitempty"`
	Count        *int64          `json:"count,omitempty"`
	Recovered    *bool           `json:"recovered,omitempty"`
	Position     *Position       `json:"position,omitempty"`
}

const errNotInSubscription = "Not allowed in a subscription."

// subscribeList serves subscribe_list: a live query of the rows that match
// the filters of req's data within the connection's scope. A subscription
// with the same request_id is replaced. With "snapshot": true the reply
// carries the first page of matching rows, read at a point in commit order
// after which every change reaches the subscription and before which none
// does.
func (v *viewSet[T]) subscribeList(ctx context.Context, req *Request, c *conn) result {
	if !v.stateful() {
		return result{err: ErrInvalidAction}
	}
	rid, err := requestID(req.RequestID)
	if err != nil {
		return result{err: err}
	}
	data, _ := jsonObject(req.Data)
	if present(req.Data) && data == nil {
		return result{err: FieldError("non_field_errors", "Invalid data. Expected a dictionary, but got "+jsonKind(bytes.TrimSpace(req.Data))+".")}
	}
	for _, k := range []string{query.KeyOrdering, keyPage} {
		if present(data[k]) {
			return result{err: FieldError(k, errNotInSubscription)}
		}
	}
	snapshot := false
	if raw := data[keySnapshot]; present(raw) {
		if snapshot, err = jsonBool(raw); err != nil {
			return result{err: FieldError(keySnapshot, "Must be a valid boolean.")}
		}
	}
	since, resuming, err := sinceOf(req.Data)
	if err != nil {
		return result{err: err}
	}
	lq, err := v.parseQuery(req)
	if err != nil {
		return result{err: err}
	}
	cs, err := c.scopeOf(v)
	if err != nil {
		return result{err: err}
	}
	filter := lq.q
	if cs.filter != nil {
		filter = query.And(filter, cs.filter)
	}
	m := &liveQuery{schema: v.qs.schema, q: filter}
	key := v.qs.schema.Key(filter)
	reply := listSubscription{Subscription: req.RequestID}
	subscribe := func(from uint64) error {
		if v.api.hub.SubscribeQuery(c, v.Stream, rid, key, m, from) && v.api.hub.Count(c) > v.api.cfg.subscriptions {
			v.api.hub.UnsubscribeQuery(c, v.Stream, rid)
			return errSubscriptionLimit
		}
		return nil
	}
	if resuming {
		// A snapshot is read only when the events since cannot all be
		// replayed: the client replaces what it holds with it.
		if err := subscribe(fanout.Held); err != nil {
			return result{err: err}
		}
		v.api.relay.ready(ctx, v.Stream)
		res, err := v.resume(ctx, c, fanout.Subscription{S: c, Kind: fanout.Query, RequestID: string(rid)}, since)
		if err != nil {
			v.api.hub.UnsubscribeQuery(c, v.Stream, rid)
			return result{err: err}
		}
		reply.Recovered = &res.recovered
		if res.recovered || !snapshot {
			reply.Position = &res.at
			return result{status: http.StatusOK, data: reply}
		}
	}
	if !snapshot {
		fresh := v.api.outbox != nil
		from := uint64(0)
		if fresh {
			from = fanout.Held
		}
		if err := subscribe(from); err != nil {
			return result{err: err}
		}
		v.api.relay.ready(ctx, v.Stream)
		if fresh {
			if err := v.startAtTop(ctx, c, fanout.Subscription{S: c, Kind: fanout.Query, RequestID: string(rid)}); err != nil {
				v.api.hub.UnsubscribeQuery(c, v.Stream, rid)
				return result{err: err}
			}
		}
		return result{status: http.StatusOK, data: reply}
	}
	pq, err := pageOf(req.Data)
	if err != nil {
		return result{err: err}
	}
	_, size, _ := pageQuery{size: pq.size}.resolve(v.PageSize, v.MaxPageSize)
	objs, count, at, err := v.snapshot(ctx, req, cs.filter, lq, size, subscribe)
	if err == nil && (v.api.cfg.broker != nil || v.api.outbox != nil) {
		// The events after the snapshot's position, some of which it may
		// hold already, and then the live ones.
		err = v.catchUp(ctx, c, rid, at)
	}
	if err != nil {
		v.api.hub.UnsubscribeQuery(c, v.Stream, rid)
		return result{err: err}
	}
	reply.Results, reply.Count, reply.Position = objs, &count, &at
	return result{status: http.StatusOK, data: reply}
}

// catchUp replays to the live query rid of c, subscribed held, the events
// after at, and starts it after them.
func (v *viewSet[T]) catchUp(ctx context.Context, c *conn, rid []byte, at Position) error {
	res, err := v.resume(ctx, c, fanout.Subscription{S: c, Kind: fanout.Query, RequestID: string(rid)}, at)
	if err == nil && !res.recovered {
		// The broker's history no longer reaches back to the snapshot,
		// or its epoch changed: the snapshot cannot be continued.
		err = errResumeBusy
	}
	return err
}

// snapshot subscribes and reads the first page of lq's rows, so that no
// change is in neither.
//
// On one instance the point is exact: the read's snapshot is fixed while no
// commit is under way (sequencer.hold), and subscribe is given the offset
// of the stream's last change, which the snapshot holds: the subscription
// receives exactly the changes after it. With a broker, offsets are
// assigned by the broker after commit: the subscription is added held, the
// broker is made to deliver the stream, the broker's position is read, and
// then the snapshot; the caller then replays the events after that
// position (catchUp), of which a change committed just before the snapshot
// may be one.
//
// The rows are those of the connection's ScopeFilter as the subscription
// holds it (sf), evaluated before the read takes its connection.
func (v *viewSet[T]) snapshot(ctx context.Context, req *Request, sf *query.Query, lq parsed, size int, subscribe func(from uint64) error) (objs []T, count int64, at Position, err error) {
	fix := func() (func(), error) {
		release, err := v.api.capture.order.hold()
		if err != nil {
			return nil, err
		}
		at = v.api.delivery.position(v.Stream)
		if err := subscribe(at.Offset); err != nil {
			release()
			return nil, err
		}
		return release, nil
	}
	read := func(db *gorm.DB) error {
		var meta *pageMeta
		objs, meta, err = v.page(ctx, db, req, sf, lq, 1, size)
		if meta != nil {
			count = meta.Count
		}
		return err
	}
	if ob := v.api.outbox; ob != nil {
		// The position is read in the rows' own snapshot: exact on any
		// number of instances on SQLite, at least once on PostgreSQL
		// (settle).
		if err := subscribe(fanout.Held); err != nil {
			return nil, 0, at, err
		}
		v.api.relay.ready(ctx, v.Stream)
		if err := v.settle(ctx); err != nil {
			return nil, 0, at, err
		}
		err = v.readSnapshot(ctx, noFix, func(db *gorm.DB) error {
			if at, err = ob.position(db, v.Stream); err != nil {
				return err
			}
			return read(db)
		})
		return objs, count, at, err
	}
	if b := v.api.cfg.broker; b != nil {
		if err := subscribe(fanout.Held); err != nil {
			return nil, 0, at, err
		}
		v.api.relay.ready(ctx, v.Stream)
		epoch, offset, err := b.Position(ctx, v.Stream)
		if err != nil {
			v.api.log.Error("channelsapi: read the broker's position", "stream", v.Stream, "err", err)
			return nil, 0, at, errResumeBusy
		}
		at = Position{epoch, offset}
		fix = noFix
	}
	err = v.readSnapshot(ctx, fix, read)
	return objs, count, at, err
}

// readSnapshot runs read in a read-only transaction whose snapshot is fixed
// right after fix, and before the function fix returns is called. The
// connection is taken before fix: a writer waiting at the sequencer's gate
// may hold the pool's last one.
//
// On PostgreSQL it is a repeatable-read transaction. SQLite's transactions
// may begin with the write lock (_txlock=immediate), so a deferred one is
// begun by hand on a connection of its own (in WAL mode a reader holds no
// lock that keeps writers waiting).
func (v *viewSet[T]) readSnapshot(ctx context.Context, fix func() (func(), error), read func(*gorm.DB) error) error {
	db := v.api.db.WithContext(ctx)
	if db.Dialector.Name() == "postgres" {
		tx := db.Begin(&sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
		if tx.Error != nil {
			return fmt.Errorf("snapshot %s: %w", v.Stream, tx.Error)
		}
		defer tx.Rollback()
		return fixThenRead(tx, "SELECT 1", fix, read)
	}
	return db.Connection(func(conn *gorm.DB) error {
		// Statements of their own: the error of one (a read that failed)
		// must not keep the next (ROLLBACK) from running.
		conn = conn.Session(&gorm.Session{})
		if err := conn.Exec("BEGIN DEFERRED").Error; err != nil {
			return fmt.Errorf("snapshot %s: %w", v.Stream, err)
		}
		defer func() {
			// Never left open on the pool, whatever became of ctx.
			if err := conn.WithContext(context.WithoutCancel(ctx)).Exec("ROLLBACK").Error; err != nil {
				v.api.log.Error("channelsapi: end a snapshot's read transaction", "stream", v.Stream, "err", err)
			}
		}()
		// SQLite fixes a snapshot at the first read of the database.
		return fixThenRead(conn, "SELECT 1 FROM "+conn.Statement.Quote(v.m.schema.Table)+" LIMIT 1", fix, read)
	})
}

// noFix is a fix for readSnapshot that holds nothing back.
func noFix() (func(), error) { return func() {}, nil }

// fixThenRead runs fix, then first (the statement that fixes the
// transaction's snapshot), then fix's release, then read.
func fixThenRead(tx *gorm.DB, first string, fix func() (func(), error), read func(*gorm.DB) error) error {
	release, err := fix()
	if err != nil {
		return err
	}
	var one int
	err = tx.Raw(first).Scan(&one).Error
	release()
	if err != nil {
		return err
	}
	return read(tx)
}

// liveQuery is the matcher of a live query: its filter, within the
// subscriber's ScopeFilter.
type liveQuery struct {
	schema *query.Schema
	q      *query.Query
}

func (l *liveQuery) Match(s fanout.State) bool {
	r, ok := s.(row)
	return ok && l.schema.Match(l.q, r)
}

func (l *liveQuery) Anchor() (int, []string, bool) { return l.schema.Anchor(l.q) }

// AnchorKey implements fanout.State.
func (r row) AnchorKey(field int) (string, bool) { return r.q.schema.RowKey(r, field) }

// states returns the row's states of ch for live queries: a delete has the
// row it deleted before it, a create the row after.
func (v *viewSet[T]) states(ctx context.Context, ch change) (before, after fanout.State) {
	obj, _ := ch.obj.(*T)
	prev, _ := ch.beforeObj.(*T)
	if ch.action == actionDelete {
		obj, prev = nil, obj
	}
	if obj != nil {
		after = v.qs.row(ctx, obj)
	}
	switch {
	case prev != nil:
		before = v.qs.row(ctx, prev)
	case ch.same:
		before = after // the columns live queries read did not change
	}
	return before, after
}

// jsonBool reads a JSON boolean.
func jsonBool(raw json.RawMessage) (bool, error) {
	var b bool
	err := json.Unmarshal(raw, &b)
	return b, err
}
