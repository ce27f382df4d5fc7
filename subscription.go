package channelsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"runtime/debug"

	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

var (
	errActionRequired    = NewError(http.StatusBadRequest, "action required")
	errInvalidSubscribe  = NewError(http.StatusBadRequest, "Invalid subscription action")
	errRequestIDRequired = NewError(http.StatusBadRequest, "request_id required")
	errSubscriptionLimit = NewError(http.StatusTooManyRequests, "Too many subscriptions.")
)

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
		key := ""
		if present(req.rawPK) {
			if req.PK == nil {
				return result{err: ErrNotFound}
			}
			key = pkKey(req.PK)
		}
		if req.Action == actionSubscribe {
			if hub.Subscribe(c, v.Stream, event, key) && hub.Count(c) > v.api.cfg.subscriptions {
				hub.Unsubscribe(c, v.Stream, event, key)
				return result{err: errSubscriptionLimit}
			}
			v.api.broker.ready(ctx, v.Stream)
		} else {
			hub.Unsubscribe(c, v.Stream, event, key)
		}
		return result{status: http.StatusOK, data: map[string]string{"action": event}}
	case actionSubscribeInstance:
		rid, ok := requestID(req.RequestID)
		if !ok {
			return result{err: errRequestIDRequired}
		}
		if _, err := v.object(ctx, v.query(ctx, req), req); err != nil {
			return result{err: err}
		}
		if hub.SubscribeInstance(c, v.Stream, pkKey(req.PK), rid) && hub.Count(c) > v.api.cfg.subscriptions {
			hub.UnsubscribeInstance(c, v.Stream, pkKey(req.PK), rid)
			return result{err: errSubscriptionLimit}
		}
		v.api.broker.ready(ctx, v.Stream)
		return result{status: http.StatusCreated}
	default: // actionUnsubscribeInstance
		rid, ok := requestID(req.RequestID)
		if !ok {
			return result{err: errRequestIDRequired}
		}
		if req.PK != nil {
			hub.UnsubscribeInstance(c, v.Stream, pkKey(req.PK), rid)
		}
		return result{status: http.StatusNoContent}
	}
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
// instance subscription and is spliced into its events.
func requestID(raw json.RawMessage) ([]byte, bool) {
	if !present(raw) {
		return nil, false
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return nil, false
	}
	return b.Bytes(), true
}

// publish hands committed changes, in commit order, to the broker, which
// delivers them to the subscribers of this instance (and, with Redis, of
// every instance). It runs under the publisher's lock and never blocks on a
// connection or on Redis.
func (a *API) publish(changes []change) {
	a.broker.publish(changes)
}

// deliver fans one change out to the local subscribers of every stream that
// serves its model (of ch.stream only, when set), encoding each event once
// per wire format.
func (a *API) deliver(ch change) {
	a.mu.RLock()
	rs := a.byType[ch.typ]
	a.mu.RUnlock()
	for _, r := range rs {
		if ch.stream == "" || r.name() == ch.stream {
			a.deliverTo(r, ch)
		}
	}
}

// deliverTo fans ch out on r's stream. A panic of the application's
// permission or scope code is logged and the stream's subscribers resync:
// no event is lost silently, and the goroutine delivering survives.
func (a *API) deliverTo(r resource, ch change) {
	defer func() {
		if p := recover(); p != nil {
			a.log.Error("channelsapi: panic while authorizing an event", "stream", r.name(), "panic", p, "stack", string(debug.Stack()))
			a.resync(r.name())
		}
	}()
	if ch.resync {
		a.resync(r.name())
		return
	}
	ev, err := newEvent(r, ch)
	if err != nil {
		a.log.Error("channelsapi: encode event", "stream", r.name(), "err", err)
		a.resync(r.name())
		return
	}
	if !r.guarded() {
		a.hub.Publish(ev)
		return
	}
	allow, leave := r.filters(context.Background(), ch)
	ev.Allow = allow
	a.hub.Publish(ev)
	if leave != nil && ch.before != nil {
		// Those who saw the object and no longer may get its last state
		// they could see, as a delete, on their update subscriptions.
		gone, err := newEvent(r, change{action: actionDelete, pk: ch.pk, data: ch.before})
		if err != nil {
			a.log.Error("channelsapi: encode event", "stream", r.name(), "err", err)
			a.resync(r.name())
			return
		}
		gone.Action, gone.Allow = actionUpdate, leave
		a.hub.Publish(gone)
	}
}

// guarded reports whether some stream of typ authorizes events per recipient.
func (a *API) guarded(typ reflect.Type) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, r := range a.byType[typ] {
		if r.guarded() {
			return true
		}
	}
	return false
}

// snapshot records, inside a writing transaction, which of the rows pks the
// subscribers of action events can see before the statement.
func (a *API) snapshot(db *gorm.DB, typ reflect.Type, action string, pks []any) (visibility, error) {
	a.mu.RLock()
	rs := a.byType[typ]
	a.mu.RUnlock()
	seen := visibility{}
	for _, r := range rs {
		users, err := r.snapshot(db, action, pks)
		if err != nil {
			return nil, err
		}
		if users != nil {
			seen[r.name()] = users
		}
	}
	return seen, nil
}

// resync closes every subscriber of stream with 1013: it may have missed
// events and must load the state again.
func (a *API) resync(stream string) {
	for _, s := range a.hub.SubscribersOf(stream) {
		s.(*conn).overflow()
	}
}

// newEvent encodes ch for r's subscribers: the channels-api frame and the
// two halves of the DCRF frame around the request_id.
func newEvent(r resource, ch change) (*fanout.Event, error) {
	pk, err := json.Marshal(ch.pk)
	if err != nil {
		return nil, err
	}
	stream := r.name()
	group, err := encodeFrame(stream, groupEvent{Action: ch.action, PK: pk, Data: ch.data, Model: r.label()})
	if err != nil {
		return nil, err
	}
	ev := &fanout.Event{Stream: stream, Action: ch.action, PK: pkKey(ch.pk), Group: group}
	if ch.action == actionCreate {
		return ev, nil
	}
	data, status := ch.data, http.StatusOK
	if ch.action == actionDelete {
		data, status = json.RawMessage(`{"pk":`+string(pk)+`}`), http.StatusNoContent
	}
	whole, err := encodeFrame(stream, reply{Action: ch.action, Data: data, Errors: []any{}, ResponseStatus: status, RequestID: json.RawMessage(ridMark)})
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndex(whole, []byte(ridMark))
	ev.InstancePrefix, ev.InstanceSuffix = whole[:i], whole[i+len(ridMark):]
	return ev, nil
}

// ridMark stands in for the request_id while an instance frame is encoded.
const ridMark = `"\u0000rid\u0000"`
