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
	"github.com/channelsapi/channelsapi/internal/query"
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
	return v.Scope != nil || v.ScopeFilter != nil || v.ObjectPermission != nil || !isAllowAny(v.Permission)
}

// stateful reports whether v's events need the row's states, before and
// after a change: to authorize them per recipient, or for live queries.
func (v *viewSet[T]) stateful() bool { return v.guarded() || v.qs.live }

// connScope is what a connection's Request makes of a stream's scopes,
// computed once per connection and stream: the rendered SQL and arguments
// of the Scope (empty without one) and the ScopeFilter (nil without one).
type connScope struct {
	stream string
	key    string
	filter *query.Query
}

// scopeOf returns c's scopes on v's stream.
func (c *conn) scopeOf(v scoper) (connScope, error) {
	stream := v.name()
	c.scopeMu.Lock()
	for _, cs := range c.scopes {
		if cs.stream == stream {
			c.scopeMu.Unlock()
			return cs, nil
		}
	}
	c.scopeMu.Unlock()
	cs := connScope{stream: stream}
	req := c.eventRequest(stream, nil)
	var err error
	if cs.key, err = v.renderScope(c.ctx, req); err != nil {
		return cs, err
	}
	if cs.filter, err = v.scopeFilter(c.ctx, req); err != nil {
		return cs, err
	}
	c.scopeMu.Lock()
	defer c.scopeMu.Unlock()
	for _, old := range c.scopes {
		if old.stream == stream {
			return old, nil
		}
	}
	c.scopes = append(c.scopes, cs)
	return cs, nil
}

// scoper is the part of a resource scopeOf needs.
type scoper interface {
	name() string
	renderScope(ctx context.Context, req *Request) (string, error)
	scopeFilter(ctx context.Context, req *Request) (*query.Query, error)
}

// renderScope renders the query of req's Scope without running it; empty
// without a Scope.
func (v *viewSet[T]) renderScope(ctx context.Context, req *Request) (key string, err error) {
	if v.Scope == nil {
		return "", nil
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("scope of %s panicked: %v", v.Stream, p)
		}
	}()
	db := v.api.db.Session(&gorm.Session{NewDB: true, DryRun: true, Context: ctx})
	scoped, err := v.Scope(ctx, req, db.Model(new(T)))
	if err != nil {
		return "", err
	}
	if scoped == nil {
		return "", fmt.Errorf("scope of %s returned no query", v.Stream)
	}
	stmt := scoped.Find(new([]T)).Statement
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

// authorization is who may see an event's states: visible tells whether
// a subscriber may see the row before (true) or after (false) the change.
// candidates are the subscribers it was decided for; they resync when it
// fails.
type authorization struct {
	visible    func(s fanout.Subscriber, before bool) bool
	candidates []fanout.Subscriber
}

// allow is who receives ev itself on group and instance subscriptions: for
// a delete those who could see the row, otherwise those who can see it now.
func (a authorization) allow(action string) func(fanout.Subscriber) bool {
	before := action == actionDelete
	return func(s fanout.Subscriber) bool { return a.visible(s, before) }
}

// leave is who could see an updated row before and cannot now: they get a
// delete instead.
func (a authorization) leave(s fanout.Subscriber) bool {
	return !a.visible(s, false) && a.visible(s, true)
}

// authorize decides who may see the states of ch, routed as ev, on v's
// stream. It runs on the stream's delivery goroutine; the Scope's query
// uses ctx.
func (v *viewSet[T]) authorize(ctx context.Context, ch change, ev *fanout.Event) (authorization, error) {
	now, _ := ch.obj.(*T)
	before, _ := ch.beforeObj.(*T)
	if ch.action == actionDelete {
		before, now = now, nil
	}
	auth := authorization{}
	var scope *scopeResults[T]
	if v.Scope != nil {
		rows := []*T{now, before} // the states the Scope judges
		auth.candidates = v.api.hub.Matching(ev)
		scope = &scopeResults[T]{v: v, ctx: ctx, rows: rows, seen: map[string][2]bool{}}
		if err := scope.evaluate(auth.candidates); err != nil {
			return auth, err
		}
	}
	type seen struct{ known, in bool }
	cache := map[*conn]*[2]seen{}
	auth.visible = func(s fanout.Subscriber, wasBefore bool) bool {
		c, ok := s.(*conn)
		if !ok {
			return false
		}
		state, obj := 0, now
		if wasBefore && (before != nil || ch.action != actionUpdate) {
			// (An update whose row before is unknown is judged on the
			// row now: what nobody may see now is sent to nobody.)
			state, obj = 1, before
		}
		if obj == nil {
			return false
		}
		states := cache[c]
		if states == nil {
			states = new([2]seen)
			cache[c] = states
		}
		if !states[state].known {
			states[state] = seen{known: true, in: v.visible(ctx, c, ch.pk, obj, state, scope)}
		}
		return states[state].in
	}
	return auth, nil
}

// visible reports whether c may see obj, the state (0 now, 1 before) of an
// event about the object with key pk.
func (v *viewSet[T]) visible(ctx context.Context, c *conn, pk any, obj *T, state int, scope *scopeResults[T]) bool {
	req := c.eventRequest(v.Stream, pk)
	if v.Permission(ctx, req) != nil {
		return false
	}
	if v.ObjectPermission != nil && v.ObjectPermission(ctx, req, obj) != nil {
		return false
	}
	if v.ScopeFilter != nil {
		cs, err := c.scopeOf(v)
		if err != nil {
			c.resync(reasonAuthorize)
			return false
		}
		if cs.filter != nil && !v.qs.schema.Match(cs.filter, v.qs.row(ctx, obj)) {
			return false
		}
	}
	return scope == nil || scope.sees(c, state)
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
		cs, err := c.scopeOf(s.v)
		if err != nil {
			return err
		}
		if _, done := s.seen[cs.key]; !done {
			reps[cs.key] = c
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
	cs, err := c.scopeOf(s.v)
	if err == nil {
		if _, done := s.seen[cs.key]; !done {
			err = s.evaluate([]fanout.Subscriber{c})
		}
	}
	if err != nil {
		c.resync(reasonAuthorize)
		return false
	}
	return s.seen[cs.key][state]
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
		scoped, err := v.Scope(ctx, c.eventRequest(v.Stream, nil), base)
		if err != nil {
			return nil, err
		}
		if scoped == nil {
			return nil, fmt.Errorf("scope of %s returned no query", v.Stream)
		}
		q := scoped.Select("?", clause.Column{Table: clause.CurrentTable, Name: rowColumn})
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
