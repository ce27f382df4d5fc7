package channelsapi

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

// This file decides who receives an event. A recipient receives an event
// about an object only if it could retrieve the object in the state the
// event carries: the ViewSet's Permission and ObjectPermission are asked
// with a Request of the recipient's (action "retrieve", the connection's
// user and headers) and the object of the event, and the Scope is
// evaluated on the event's row values, never on the row as the database
// holds it later. An update that takes an object out of a recipient's view
// reaches it as a delete.
//
// A Scope is SQL, so it is evaluated by the database, on a derived table of
// the event's rows named like the model's table:
//
//	SELECT ... FROM (SELECT <columns>, 0 AS channelsapi_row FROM notes WHERE 1=0
//	                 UNION ALL SELECT ?, ?, ..., 0) AS notes
//	WHERE <the Scope's conditions>
//
// (the empty first branch gives the values the table's column types). The
// Scope's conditions on the row's own columns see the event's values; any
// other table it reads (a join, a subquery) is read as it is at delivery.
//
// Connections whose Scope renders the same SQL with the same arguments see
// the same rows, so one evaluation serves them all: the work per event
// grows with the number of distinct Scope queries among the subscribers,
// not with the number of connections, and all of them are answered by one
// query. A connection's Scope is rendered once per stream, when it
// subscribes: for events it may depend on the Request's user and headers
// only.

// eventRequest is the Request an event is authorized with for c.
func (c *conn) eventRequest(stream string, pk any) *Request {
	return &Request{
		Transport: TransportWebSocket, Stream: stream, Action: actionRetrieve, Method: http.MethodGet,
		PK: pk, User: c.user, Header: c.header,
	}
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

// scopeKey returns the rendered SQL and arguments of c's Scope on v's
// stream, computed once per connection and stream. Without a Scope it is
// empty.
func (c *conn) scopeKey(v scoper) (string, error) {
	if !v.hasScope() {
		return "", nil
	}
	stream := v.name()
	c.scopeMu.Lock()
	key, ok := c.scopes[stream]
	c.scopeMu.Unlock()
	if ok {
		return key, nil
	}
	key, err := v.renderScope(c.ctx, c.eventRequest(stream, nil))
	if err != nil {
		return "", err
	}
	c.scopeMu.Lock()
	defer c.scopeMu.Unlock()
	if c.scopes == nil {
		c.scopes = map[string]string{}
	}
	c.scopes[stream] = key
	return key, nil
}

// scoper is the part of a resource scopeKey needs.
type scoper interface {
	name() string
	hasScope() bool
	renderScope(ctx context.Context, req *Request) (string, error)
}

func (v *viewSet[T]) hasScope() bool { return v.Scope != nil }

// renderScope renders the query of req's Scope without running it.
func (v *viewSet[T]) renderScope(ctx context.Context, req *Request) (key string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("scope of %s panicked: %v", v.Stream, p)
		}
	}()
	db := v.api.db.Session(&gorm.Session{NewDB: true, DryRun: true, Context: ctx})
	stmt := v.scoped(db, req).Find(new([]T)).Statement
	if err := stmt.Error; err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(stmt.SQL.String())
	for _, arg := range stmt.Vars {
		fmt.Fprintf(&b, "\x00%T\x00%v", arg, arg)
	}
	return b.String(), nil
}

// authorization is who receives an event: allow for the event itself and,
// for an update, leave for those who could see the object before and cannot
// now (they get a delete instead). candidates are the subscribers it was
// decided for; they resync when it fails.
type authorization struct {
	allow, leave func(fanout.Subscriber) bool
	candidates   []fanout.Subscriber
}

// authorize decides who may receive ch on v's stream. It runs on the
// stream's delivery goroutine; the Scope's query uses ctx.
func (v *viewSet[T]) authorize(ctx context.Context, ch change) (authorization, error) {
	now, _ := ch.obj.(*T)
	before, _ := ch.beforeObj.(*T)
	if ch.action == actionDelete {
		before, now = now, nil
	}
	auth := authorization{}
	var scope *scopeResults[T]
	if v.Scope != nil {
		rows := []*T{now, before} // the states the Scope judges
		auth.candidates = v.api.hub.Matching(v.Stream, ch.action, pkKey(ch.pk))
		scope = &scopeResults[T]{v: v, ctx: ctx, rows: rows, seen: map[string][2]bool{}}
		if err := scope.evaluate(auth.candidates); err != nil {
			return auth, err
		}
	}
	visible := func(c *conn, obj *T, state int) bool {
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
		return scope == nil || scope.sees(c, state)
	}
	seesNow := map[*conn]bool{}
	auth.allow = func(s fanout.Subscriber) bool {
		c, ok := s.(*conn)
		if !ok {
			return false
		}
		if ch.action == actionDelete {
			return visible(c, before, 1)
		}
		in, done := seesNow[c]
		if !done {
			in = visible(c, now, 0)
			seesNow[c] = in
		}
		return in
	}
	if ch.action == actionUpdate && before != nil {
		auth.leave = func(s fanout.Subscriber) bool {
			c, ok := s.(*conn)
			return ok && !auth.allow(s) && visible(c, before, 1)
		}
	}
	return auth, nil
}

// scopeResults holds which of an event's states (now, before) each
// distinct Scope query lets through.
type scopeResults[T any] struct {
	v    *viewSet[T]
	ctx  context.Context
	rows []*T
	seen map[string][2]bool
}

// evaluate evaluates, in one query, the Scope of every distinct query among
// subs.
func (s *scopeResults[T]) evaluate(subs []fanout.Subscriber) error {
	reps := map[string]*conn{}
	for _, sub := range subs {
		c, ok := sub.(*conn)
		if !ok {
			continue
		}
		key, err := c.scopeKey(s.v)
		if err != nil {
			return err
		}
		if _, done := s.seen[key]; !done {
			reps[key] = c
		}
	}
	if len(reps) == 0 {
		return nil
	}
	seen, err := s.v.evaluateScope(s.ctx, reps, s.rows)
	if err != nil {
		return err
	}
	for key := range reps {
		s.seen[key] = seen[key]
	}
	return nil
}

// sees reports whether c's Scope lets state (0 now, 1 before) through. A
// connection that subscribed after the event's subscribers were looked up
// is evaluated on its own; if that fails it resyncs.
func (s *scopeResults[T]) sees(c *conn, state int) bool {
	key, err := c.scopeKey(s.v)
	if err == nil {
		if _, done := s.seen[key]; !done {
			err = s.evaluate([]fanout.Subscriber{c})
		}
	}
	if err != nil {
		c.resync(reasonAuthorize)
		return false
	}
	return s.seen[key][state]
}

// rowColumn names the column of the derived table that numbers its rows.
const rowColumn = "channelsapi_row"

// evaluateScope evaluates the Scope of each representative connection of
// reps (by Scope key) on rows (now and before; nil entries are skipped), in one
// query, and returns which of the rows each key lets through.
func (v *viewSet[T]) evaluateScope(ctx context.Context, reps map[string]*conn, rows []*T) (map[string][2]bool, error) {
	out := make(map[string][2]bool, len(reps))
	if rows[0] == nil && rows[1] == nil {
		for key := range reps {
			out[key] = [2]bool{}
		}
		return out, nil
	}
	db := v.api.db.Session(&gorm.Session{NewDB: true, Context: ctx})
	table := v.m.schema.Table
	alias := table[strings.LastIndex(table, ".")+1:]
	derived := v.derivedTable(ctx, db, rows)
	keys := make([]string, 0, len(reps))
	parts := make([]string, 0, len(reps))
	args := make([]any, 0, len(reps))
	for key, c := range reps {
		// Unscoped: the row a soft delete returns has its deleted_at set,
		// and is judged as the row it was.
		base := db.Model(new(T)).Unscoped()
		base.Statement.TableExpr = &clause.Expr{SQL: "(" + derived.SQL + ") AS " + db.Statement.Quote(alias), Vars: derived.Vars}
		base.Statement.Table = alias
		q := v.Scope(c.eventRequest(v.Stream, nil), base).
			Select("?", clause.Column{Table: clause.CurrentTable, Name: rowColumn})
		parts = append(parts, "SELECT "+strconv.Itoa(len(keys))+" AS v, s."+rowColumn+" AS r FROM (?) AS s")
		args = append(args, q)
		keys = append(keys, key)
	}
	var found []struct{ V, R int }
	if err := db.Raw(strings.Join(parts, " UNION ALL "), args...).Scan(&found).Error; err != nil {
		return nil, err
	}
	for key := range reps {
		out[key] = [2]bool{}
	}
	for _, f := range found {
		if f.V < 0 || f.V >= len(keys) || f.R < 0 || f.R > 1 {
			continue
		}
		states := out[keys[f.V]]
		states[f.R] = true
		out[keys[f.V]] = states
	}
	return out, nil
}

// derivedTable returns the SELECT of rows (nil entries skipped) with the
// columns of v's table, each row numbered by its index in rowColumn.
func (v *viewSet[T]) derivedTable(ctx context.Context, db *gorm.DB, rows []*T) clause.Expr {
	var b strings.Builder
	b.WriteString("SELECT ")
	names := v.m.schema.DBNames
	for _, name := range names {
		b.WriteString(db.Statement.Quote(name))
		b.WriteString(", ")
	}
	b.WriteString("0 AS " + rowColumn + " FROM " + db.Statement.Quote(v.m.schema.Table) + " WHERE 1=0")
	var vars []any
	for i, row := range rows {
		if row == nil {
			continue
		}
		rv := reflect.ValueOf(row).Elem()
		b.WriteString(" UNION ALL SELECT ")
		for _, name := range names {
			val, _ := v.m.schema.FieldsByDBName[name].ValueOf(ctx, rv)
			vars = append(vars, val)
			b.WriteString("?, ")
		}
		b.WriteString(strconv.Itoa(i))
	}
	return clause.Expr{SQL: b.String(), Vars: vars}
}
