package channelsapi

import (
	"context"
	"net/http"
	"reflect"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

// This file authorizes every event for every recipient. A recipient sees an
// event about an object only if it could retrieve the object: the ViewSet's
// Permission and ObjectPermission are asked with a Request for the
// recipient (action "retrieve", the connection's user and headers), on the
// object the event carries, and the Scope is checked by a query. An update
// that takes an object out of a recipient's view reaches it as a delete.
//
// Scope is a query, so it is checked against the database: for creates and
// updates on the committed row (one query per distinct user and event), for
// the state before an update or delete inside the writing transaction, for
// the users subscribed at that moment (visibility).

// visibility records, per stream, which rows each subscribed user could see
// before an update or delete: stream -> user key -> primary key text.
type visibility map[string]map[any]map[string]bool

// eventRequest is the Request an event is authorized with for c.
func (c *conn) eventRequest(stream string, pk any) *Request {
	return &Request{
		Transport: TransportWebSocket, Stream: stream, Action: actionRetrieve, Method: http.MethodGet,
		PK: pk, User: c.user, Header: c.header,
	}
}

// userKey groups connections whose Scope results are the same: the user when
// it can be compared, else the connection itself.
func (c *conn) userKey() any {
	if c.user == nil {
		return nil
	}
	if reflect.TypeOf(c.user).Comparable() {
		return c.user
	}
	return c
}

func allowAny(context.Context, *Request) error { return nil }

// isAllowAny reports whether p is the AllowAny permission, for which events
// need no check.
func isAllowAny(p Permission) bool {
	return reflect.ValueOf(p).Pointer() == reflect.ValueOf(allowAny).Pointer()
}

// guarded reports whether v's events must be authorized per recipient.
func (v *viewSet[T]) guarded() bool {
	return v.Scope != nil || v.ObjectPermission != nil || !isAllowAny(v.Permission)
}

// scopeKeys returns which of pks req's Scope lets through, queried on db.
func (v *viewSet[T]) scopeKeys(db *gorm.DB, req *Request, pks []any) (map[string]bool, error) {
	var found []any
	col := clause.Column{Table: clause.CurrentTable, Name: v.m.pk.DBName}
	err := v.scoped(db.Session(&gorm.Session{NewDB: true}), req).
		Where(clause.IN{Column: col, Values: pks}).Pluck(v.m.pk.DBName, &found).Error
	if err != nil {
		return nil, err
	}
	keys := make(map[string]bool, len(found))
	for _, pk := range found {
		keys[pkKey(normalizePK(v.m, pk))] = true
	}
	return keys, nil
}

// normalizePK converts a key scanned into an interface (an int64, a string,
// bytes) to the model's key type, so that its text matches pkKey of an
// object's key.
func normalizePK(m *model, pk any) any {
	if b, ok := pk.([]byte); ok {
		pk = string(b)
	}
	if v, ok := m.parsePKText(pkKey(pk)); ok {
		return v
	}
	return pk
}

// snapshot records, inside the writing transaction, which of rows the users
// subscribed to action events of v's stream can see now.
func (v *viewSet[T]) snapshot(db *gorm.DB, action string, pks []any) (map[any]map[string]bool, error) {
	if v.Scope == nil {
		return nil, nil
	}
	reps := map[any]*conn{}
	for _, pk := range pks {
		for _, s := range v.api.hub.Matching(v.Stream, action, pkKey(pk)) {
			if c, ok := s.(*conn); ok {
				reps[c.userKey()] = c
			}
		}
	}
	seen := make(map[any]map[string]bool, len(reps))
	for key, c := range reps {
		keys, err := v.scopeKeys(db, c.eventRequest(v.Stream, nil), pks)
		if err != nil {
			return nil, err
		}
		seen[key] = keys
	}
	return seen, nil
}

// filters returns who may receive ch on v's stream: allow for the event
// itself and, for an update, leave for those who could see the object before
// and cannot now (they get a delete instead). It runs on the publishing
// goroutine; queries use ctx.
func (v *viewSet[T]) filters(ctx context.Context, ch change) (allow, leave func(fanout.Subscriber) bool) {
	now, _ := ch.obj.(*T)
	before, _ := ch.beforeObj.(*T)
	if ch.action == actionDelete {
		before, now = now, nil
	}
	seen := ch.seen[v.Stream]
	scopeNow := map[any]bool{}
	inScopeNow := func(c *conn) bool {
		key := c.userKey()
		in, ok := scopeNow[key]
		if !ok {
			keys, err := v.scopeKeys(v.api.db.WithContext(ctx), c.eventRequest(v.Stream, nil), []any{ch.pk})
			if err != nil {
				v.api.log.Error("channelsapi: authorize event", "stream", v.Stream, "err", err)
				c.overflow() // unknown: resync rather than miss or leak
				return false
			}
			in = keys[pkKey(ch.pk)]
			scopeNow[key] = in
		}
		return in
	}
	inScopeBefore := func(c *conn) bool {
		keys, known := seen[c.userKey()]
		if !known {
			// Not in the snapshot (it subscribed after the statement ran, or
			// the change was written on another instance, which sends no
			// snapshot): what it could see before is unknown, so it must
			// resync rather than miss or guess.
			c.overflow()
			return false
		}
		return keys[pkKey(ch.pk)]
	}
	visible := func(c *conn, obj *T, inScope func(*conn) bool) bool {
		if obj == nil {
			return false
		}
		req := c.eventRequest(v.Stream, ch.pk)
		if v.Permission(ctx, req) != nil {
			return false
		}
		if v.ObjectPermission != nil && v.ObjectPermission(ctx, req, obj) != nil {
			return false
		}
		return v.Scope == nil || inScope(c)
	}
	seesNow := map[*conn]bool{}
	allow = func(s fanout.Subscriber) bool {
		c, ok := s.(*conn)
		if !ok {
			return false
		}
		if ch.action == actionDelete {
			return visible(c, before, inScopeBefore)
		}
		in, done := seesNow[c]
		if !done {
			in = visible(c, now, inScopeNow)
			seesNow[c] = in
		}
		return in
	}
	if ch.action != actionUpdate {
		return allow, nil
	}
	leave = func(s fanout.Subscriber) bool {
		c, ok := s.(*conn)
		return ok && !allow(s) && visible(c, before, inScopeBefore)
	}
	return allow, leave
}
