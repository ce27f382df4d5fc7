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
		if req.Action == actionSubscribe {
			if _, err := c.scopeOf(v); err != nil {
				return result{err: err}
			}
			if hub.Subscribe(c, v.Stream, event, key) && hub.Count(c) > v.api.cfg.subscriptions {
				hub.Unsubscribe(c, v.Stream, event, key)
				return result{err: errSubscriptionLimit}
			}
			v.api.relay.ready(ctx, v.Stream)
		} else {
			hub.Unsubscribe(c, v.Stream, event, key)
		}
		return result{status: http.StatusOK, data: map[string]string{"action": event}}
	case actionSubscribeInstance:
		rid, err := requestID(req.RequestID)
		if err != nil {
			return result{err: err}
		}
		if _, err := v.find(ctx, v.api.db.WithContext(ctx), req); err != nil {
			return result{err: err}
		}
		if _, err := c.scopeOf(v); err != nil {
			return result{err: err}
		}
		if hub.SubscribeInstance(c, v.Stream, pkKey(req.PK), rid) && hub.Count(c) > v.api.cfg.subscriptions {
			hub.UnsubscribeInstance(c, v.Stream, pkKey(req.PK), rid)
			return result{err: errSubscriptionLimit}
		}
		v.api.relay.ready(ctx, v.Stream)
		return result{status: http.StatusCreated}
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
	if !snapshot {
		if err := subscribe(0); err != nil {
			return result{err: err}
		}
		v.api.relay.ready(ctx, v.Stream)
		return result{status: http.StatusOK, data: reply}
	}
	pq, _ := pageOf(req.Data)
	_, size, _ := pageQuery{size: pq.size}.resolve(v.PageSize, v.MaxPageSize)
	objs, count, err := v.snapshot(ctx, req, lq, size, subscribe)
	if err != nil {
		v.api.hub.UnsubscribeQuery(c, v.Stream, rid)
		return result{err: err}
	}
	v.api.relay.ready(ctx, v.Stream)
	reply.Results, reply.Count = objs, &count
	return result{status: http.StatusOK, data: reply}
}

// snapshot subscribes (subscribe is given the sequence number of the last
// change the snapshot holds) and reads the first page of lq's rows as of
// that change: the rows hold exactly the changes up to that number, and the
// subscription receives exactly those after it.
//
// The point is taken while no commit is under way (sequencer.hold). On
// PostgreSQL a repeatable-read transaction fixes its snapshot there with
// one statement, and the page is read from it once commits go on. SQLite's
// reads are short and its transactions may take the write lock
// (_txlock=immediate), so the page is read on a connection of its own
// while commits wait. Either way the connection is taken before the gate:
// a writer waiting at the gate may hold the pool's last one.
func (v *viewSet[T]) snapshot(ctx context.Context, req *Request, lq parsed, size int, subscribe func(from uint64) error) (objs []T, count int64, err error) {
	read := func(db *gorm.DB) error {
		var meta *pageMeta
		objs, meta, err = v.page(ctx, db, req, lq, 1, size)
		if meta != nil {
			count = meta.Count
		}
		return err
	}
	db := v.api.db.WithContext(ctx)
	if db.Dialector.Name() != "postgres" {
		err = db.Connection(func(conn *gorm.DB) error {
			seq, release := v.api.capture.order.hold()
			defer release()
			if err := subscribe(seq); err != nil {
				return err
			}
			return read(conn)
		})
		return objs, count, err
	}
	tx := db.Begin(&sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if tx.Error != nil {
		return nil, 0, fmt.Errorf("snapshot %s: %w", v.Stream, tx.Error)
	}
	defer tx.Rollback()
	seq, release := v.api.capture.order.hold()
	err = subscribe(seq)
	if err == nil {
		var one int // the first statement fixes the snapshot
		err = tx.Raw("SELECT 1").Scan(&one).Error
	}
	release()
	if err != nil {
		return nil, 0, err
	}
	err = read(tx)
	return objs, count, err
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
	if prev != nil {
		before = v.qs.row(ctx, prev)
	}
	return before, after
}

// jsonBool reads a JSON boolean.
func jsonBool(raw json.RawMessage) (bool, error) {
	var b bool
	err := json.Unmarshal(raw, &b)
	return b, err
}
