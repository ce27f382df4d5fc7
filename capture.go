package channelsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/callbacks"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"
)

// This file captures changes made through the *gorm.DB given to Register.
//
// The plugin wraps the database's connection pool. A transaction begun on it
// (GORM's implicit one around each write, db.Transaction, or Begin) is
// wrapped too (capture_tx.go): the callbacks below append the statement's
// changes to it, a savepoint marks how many there were, a rollback to the
// savepoint forgets the later ones, and Commit hands them on in statement
// order once the database has accepted the commit, in commit order across
// transactions. Rollback forgets them. A write of a registered model that
// GORM would run outside a transaction (SkipDefaultTransaction) is run in a
// transaction of its own.
//
// On dialects with RETURNING (PostgreSQL, SQLite) the rows come from the
// statement itself (returning.go): a create is run with RETURNING *, an
// update or delete is marked so that the transaction wrapper runs it with
// RETURNING * and keeps the rows. The rows as they were are read first only
// where something needs them: leave detection and live queries on stateful streams, an update
// of the primary key or of the soft-delete column, an upsert on SQLite. On
// other dialects updates and deletes find their rows by the loaded objects'
// keys or by running the statement's WHERE clause as a SELECT first (up to
// the bulk event limit), and updated rows are read back.

// change is one captured row change, or a resync of the streams of typ.
type change struct {
	typ    reflect.Type
	action string
	pk     any
	obj    any             // the object, a *T of its own
	data   json.RawMessage // obj serialized, once; nil until encode
	resync string          // not empty: no event, the subscribers resync for this reason
	// same is set on an update that assigned no column a live query of
	// the model reads, whose row before was not read: it was in the sets
	// the row after is in.
	same bool

	// For an update of a model whose events are authorized per recipient:
	// the row before the statement, for leave detection (authorize.go).
	beforeObj any
	before    json.RawMessage // beforeObj serialized; nil until encode

	// With the outbox: the change's places in the streams of its model,
	// given before COMMIT (outbox.go), or the offset it came with from a
	// broker or the outbox.
	numbered []numbered
	offset   uint64
	pending  bool // written to the outbox, to be numbered after COMMIT (numbering.go)
	// etag is the ETag the change came with from a broker or the outbox
	// (etagFor).
	etag string
}

// etagFor returns the ETag of ch's object for r's events: the one it came
// with, or else that of its object; "" for a delete.
func (ch *change) etagFor(r resource) string {
	if ch.action == actionDelete {
		return ""
	}
	if ch.etag == "" {
		ch.etag = r.model().etagOf(ch.obj, ch.data)
	}
	return ch.etag
}

// encodeSafely is encode, with a panic of the model's JSON methods as an
// error.
func (ch *change) encodeSafely() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("encoding panicked: %v", p)
		}
	}()
	return ch.encode()
}

// encode serializes the objects of ch that are not yet.
func (ch *change) encode() error {
	var err error
	if ch.data == nil && ch.obj != nil {
		if ch.data, err = json.Marshal(ch.obj); err != nil {
			return err
		}
	}
	if ch.before == nil && ch.beforeObj != nil {
		ch.before, err = json.Marshal(ch.beforeObj)
	}
	return err
}

// capture is the GORM plugin: statements become changes.
type capture struct {
	reg          *registry
	log          *slog.Logger
	bulkLimit    int
	order        *sequencer // commit order (capture_tx.go)
	hasReturning bool       // the dialect has RETURNING (returning.go)
	encodeEarly  bool       // changes are serialized before COMMIT (a broker or the outbox carries them)
	postgres     bool
	outbox       *outbox // WithOutbox: changes are written to it before COMMIT
}

func newCapture(a *API) *capture {
	return &capture{
		reg: a.reg, log: a.log, bulkLimit: a.cfg.bulkLimit,
		order: &sequencer{publish: func(c []change) {
			if a.outbox != nil {
				c = a.outbox.committed(c)
			}
			a.relay.publish(c)
		}, log: a.log},
		encodeEarly: a.cfg.broker != nil || a.outbox != nil,
		outbox:      a.outbox,
	}
}

// prepare serializes changes before their transaction takes its place in
// the order, when a broker will carry them (the relay publishes under the
// sequencer's lock, which must not hold the application's JSON encoding).
// A change that cannot be encoded becomes a resync.
func (p *capture) prepare(changes []change) {
	if !p.encodeEarly {
		return
	}
	for i := range changes {
		if err := changes[i].encodeSafely(); err != nil {
			p.log.Error("channelsapi: encode event", "err", err)
			changes[i] = change{typ: changes[i].typ, resync: reasonEncoding}
		}
	}
}

// Name implements gorm.Plugin.
func (p *capture) Name() string { return "channelsapi" }

const keyStarted = "channelsapi:started_transaction"

// Initialize implements gorm.Plugin: it wraps the connection pool and
// registers the capture callbacks.
func (p *capture) Initialize(db *gorm.DB) error {
	switch db.Dialector.Name() {
	case "postgres":
		p.hasReturning, p.postgres = true, true
	case "sqlite":
		p.hasReturning = true
	}
	pool := &connPool{ConnPool: db.ConnPool, capture: p}
	db.ConnPool = pool
	db.Statement.ConnPool = pool
	cb := db.Callback()
	gormCreate := cb.Create().Get("gorm:create")
	if gormCreate == nil {
		return errors.New("GORM's create callback (gorm:create) is missing")
	}
	regs := []struct {
		name string
		err  error
	}{
		{"begin_create", cb.Create().After("gorm:begin_transaction").Before("gorm:before_create").Register("channelsapi:begin_create", p.beginTransaction)},
		{"begin_update", cb.Update().After("gorm:begin_transaction").Before("gorm:before_update").Register("channelsapi:begin_update", p.beginTransaction)},
		{"begin_delete", cb.Delete().After("gorm:begin_transaction").Before("gorm:before_delete").Register("channelsapi:begin_delete", p.beginTransaction)},
		{"commit_create", cb.Create().After("gorm:commit_or_rollback_transaction").Register("channelsapi:commit_create", commitTransaction)},
		{"commit_update", cb.Update().After("gorm:commit_or_rollback_transaction").Register("channelsapi:commit_update", commitTransaction)},
		{"commit_delete", cb.Delete().After("gorm:commit_or_rollback_transaction").Register("channelsapi:commit_delete", commitTransaction)},
		{"create", cb.Create().Replace("gorm:create", p.createCallback(gormCreate))},
		{"after_create", cb.Create().After("gorm:create").Before("gorm:save_after_associations").Register("channelsapi:after_create", p.afterCreate)},
		{"before_update", cb.Update().After("gorm:save_before_associations").Before("gorm:update").Register("channelsapi:before_update", p.beforeUpdate)},
		{"after_update", cb.Update().After("gorm:update").Before("gorm:save_after_associations").Register("channelsapi:after_update", p.afterUpdate)},
		{"before_delete", cb.Delete().After("gorm:delete_before_associations").Before("gorm:delete").Register("channelsapi:before_delete", p.beforeDelete)},
		{"after_delete", cb.Delete().After("gorm:delete").Before("gorm:after_delete").Register("channelsapi:after_delete", p.afterDelete)},
	}
	for _, r := range regs {
		if r.err != nil {
			return errors.New("register callback " + r.name + ": " + r.err.Error())
		}
	}
	return nil
}

// beginTransaction runs a write of a registered model that GORM runs
// outside a transaction (SkipDefaultTransaction) in a transaction of its
// own, as GORM's default transaction would, so that its changes take their
// place in commit order (capture_tx.go); commitTransaction ends it.
func (p *capture) beginTransaction(db *gorm.DB) {
	if !db.SkipDefaultTransaction || db.Error != nil || db.DryRun || p.target(db) == nil {
		return
	}
	if _, inTx := db.Statement.ConnPool.(gorm.TxCommitter); inTx {
		return
	}
	if tx := db.Begin(); tx.Error == nil {
		db.Statement.ConnPool = tx.Statement.ConnPool
		db.InstanceSet(keyStarted, true)
	} else if !errors.Is(tx.Error, gorm.ErrInvalidTransaction) {
		db.AddError(tx.Error)
	}
}

// commitTransaction commits or rolls back what beginTransaction began.
func commitTransaction(db *gorm.DB) {
	if _, ok := db.InstanceGet(keyStarted); !ok {
		return
	}
	if db.Error != nil {
		db.Rollback()
	} else {
		db.Commit() // a failed commit is the statement's error
	}
	db.Statement.ConnPool = db.ConnPool
}

// target is the registered model a statement writes, or nil: the model of
// its struct type, or else the registered model of its table (a second
// struct mapped on the same table, db.Table("items"), db.Table("items AS i")).
func (p *capture) target(db *gorm.DB) *model {
	var t reflect.Type
	table := db.Statement.Table
	if s := db.Statement.Schema; s != nil {
		t, table = s.ModelType, s.Table
	}
	if e := db.Statement.TableExpr; e != nil {
		if f := strings.Fields(e.SQL); len(f) > 0 {
			table = strings.Trim(f[0], "`\"[]")
		}
	}
	return p.reg.modelOf(t, table)
}

func (p *capture) afterCreate(db *gorm.DB) {
	b, ok := found(db)
	if ok && b.created != nil {
		p.recordCreated(db, b.created)
		return
	}
	if ok && b.ret != nil { // db.Table(...).Create, read with RETURNING
		if b.ret.count > p.bulkLimit {
			p.record(db, []change{{typ: b.m.schema.ModelType, resync: reasonBulkChange}})
			return
		}
		var changes []change
		for _, r := range b.ret.rows {
			changes = append(changes, p.changeOf(db, b.m, actionCreate, r))
		}
		p.record(db, changes)
		return
	}
	m := p.target(db)
	if ok || m == nil || db.Error != nil || db.Statement.RowsAffected == 0 || db.Statement.Schema == nil {
		return
	}
	var changes []change
	for _, obj := range rowsOf(db.Statement.ReflectValue, m) {
		changes = append(changes, p.changeOfValue(db, m, actionCreate, obj))
	}
	p.record(db, changes)
}

// recordCreated records the rows a create returned: creates, and for an
// upsert the rows it updated as updates.
func (p *capture) recordCreated(db *gorm.DB, c *created) {
	ctx := db.Statement.Context
	if c.unknown {
		p.record(db, []change{{typ: c.m.schema.ModelType, resync: reasonUpsert}})
		return
	}
	var changes []change
	for i, r := range c.rows {
		if c.m.deleted(ctx, r) {
			continue // written soft-deleted: no subscriber sees it
		}
		if c.inserted == nil || c.inserted[i] {
			changes = append(changes, p.changeOf(db, c.m, actionCreate, r))
			continue
		}
		ch := p.changeOf(db, c.m, actionUpdate, r)
		prev, ok := c.prior[conflictKeyOf(ctx, c, r)]
		if !ok && c.prior != nil && p.reg.stateful(c.m.schema.ModelType) {
			// Updated, yet not found before: committed meanwhile by
			// another transaction; what subscribers saw is unknown.
			changes = append(changes, change{typ: c.m.schema.ModelType, resync: reasonConcurrent})
			continue
		}
		if ok {
			if c.m.deleted(ctx, prev) { // an upsert over a soft-deleted row brings it back
				ch = p.changeOf(db, c.m, actionCreate, r)
			} else {
				ch.beforeObj = prev.Addr().Interface()
			}
		}
		changes = append(changes, ch)
	}
	p.record(db, changes)
}

// before is what a before-callback found for its after-callback.
type before struct {
	m       *model
	ctx     context.Context // the statement's context before keep
	ret     *returned       // the statement runs with RETURNING
	created *created        // a create run with RETURNING (returning.go)
	read    bool            // rows holds the rows as they were
	rows    []reflect.Value // the rows as they were, when read
	keys    []any           // the keys of the rows it touches (without RETURNING)
	resync  bool            // more rows than the bulk event limit
	pk      bool            // the statement assigns the primary key
	undel   bool            // the statement assigns the soft-delete column
	same    bool            // not read: the statement assigns no column a live query reads
	ownSet  bool            // the SET clause is the capture's (bumpVersion), removed after the statement
}

func (p *capture) beforeUpdate(db *gorm.DB) {
	m := p.target(db)
	if m == nil || db.Error != nil {
		return
	}
	b := &before{m: m}
	stateful := p.reg.stateful(m.schema.ModelType)
	if p.returning(db) {
		b.pk = assigns(db, m.pk)
		b.undel = m.softDelete != nil && assigns(db, m.softDelete)
		switch {
		case b.pk || b.undel || stateful && p.reg.rowsBefore(m.schema.ModelType, func(c string) bool { return mayAssign(db, m, c) }):
			if !p.readBefore(db, b) {
				return
			}
		case stateful:
			b.same = true // no live query's set changes: the rows after tell
		}
		bumpVersion(db, b)
		p.markReturning(db, b)
		return
	}
	_, where := db.Statement.Clauses["WHERE"]
	if keys := loadedKeys(db, m); len(keys) > 0 && !stateful && !where {
		b.keys = keys
	} else {
		rows, resync, err := p.matching(db, m, false)
		if err != nil {
			db.AddError(err)
			return
		}
		b.resync, b.keys = resync, keysOf(db, m, rows)
		if stateful {
			b.read, b.rows = true, rows
		}
	}
	bumpVersion(db, b)
	keep(db, b)
}

// bumpVersion has an update of a model with a version field (etag.go) set
// it to itself plus one, in the statement: the SET clause GORM would build
// is built here, with the version's assignment, if any, replaced.
func bumpVersion(db *gorm.DB, b *before) {
	v := b.m.version
	if v == nil || db.Error != nil || db.Statement.SQL.Len() > 0 {
		return
	}
	set, existed := db.Statement.Clauses["SET"]
	var assignments clause.Set
	if existed {
		assignments, _ = set.Expression.(clause.Set)
	} else if assignments = callbacks.ConvertToAssignments(db.Statement); len(assignments) == 0 {
		return // nothing to update: GORM runs no statement
	}
	col := clause.Column{Name: v.DBName}
	out := make(clause.Set, 0, len(assignments)+1)
	for _, a := range assignments {
		if a.Column.Name != v.DBName {
			out = append(out, a)
		}
	}
	out = append(out, clause.Assignment{Column: col, Value: clause.Expr{SQL: "? + 1", Vars: []any{col}}})
	db.Statement.AddClause(out)
	b.ownSet = !existed
}

// versionBack gives the struct an update was made with the version the
// statement wrote, from the rows after it.
func versionBack(db *gorm.DB, m *model, rows []reflect.Value) {
	rv := db.Statement.ReflectValue
	if m.version == nil || rv.Kind() != reflect.Struct || rv.Type() != m.schema.ModelType || !rv.CanAddr() {
		return
	}
	ctx := db.Statement.Context
	pk, ok := m.pkOf(ctx, rv)
	if !ok {
		return
	}
	for _, r := range rows {
		if k, _ := m.pkOf(ctx, r); pkKey(k) == pkKey(pk) {
			v, _ := m.version.ValueOf(ctx, r)
			_ = m.version.Set(ctx, rv, v)
			return
		}
	}
}

// readBefore reads the rows an update is about to touch, locked until the
// transaction ends where the dialect can (FOR UPDATE), so that the rows it
// then writes are the rows read.
//
// An update with conditions then writes exactly the rows it read: a row that
// another transaction brings into its WHERE between the read and the
// statement (committed meanwhile, under READ COMMITTED) is left alone, as if
// the statement had run at the read. Otherwise its state before would be
// unknown and the stream's subscribers would have to resync.
func (p *capture) readBefore(db *gorm.DB, b *before) bool {
	rows, resync, err := p.matching(db, b.m, true)
	if err != nil {
		db.AddError(err)
		return false
	}
	b.read, b.rows, b.resync = true, rows, resync
	if _, where := db.Statement.Clauses["WHERE"]; where && !resync {
		col := clause.Column{Table: clause.CurrentTable, Name: b.m.pk.DBName}
		db.Statement.AddClause(clause.Where{Exprs: []clause.Expression{clause.IN{Column: col, Values: keysOf(db, b.m, rows)}}})
	}
	return true
}

// markReturning has the statement run with RETURNING (returning.go).
func (p *capture) markReturning(db *gorm.DB, b *before) {
	b.ret = &returned{m: b.m, limit: p.bulkLimit}
	keep(db, b)
}

type beforeKey struct{}

// keep gives b to the after-callback through the statement's context; only
// GORM's own statement runs between the two. (GORM's InstanceSet costs a
// fmt.Sprintf per call.)
func keep(db *gorm.DB, b *before) {
	b.ctx = db.Statement.Context
	db.Statement.Context = context.WithValue(b.ctx, beforeKey{}, b)
}

// returning reports whether db's statement can be read with RETURNING: a
// dialect that has it, in a transaction of the wrapped pool (not a
// prepared-statement one, whose statements bypass the wrapper), and no
// RETURNING of the application's own.
func (p *capture) returning(db *gorm.DB) bool {
	if !p.hasReturning {
		return false
	}
	if _, ok := db.Statement.ConnPool.(*txPool); !ok {
		return false
	}
	_, own := db.Statement.Clauses["RETURNING"]
	return !own
}

// mayAssign reports whether db's update may set the column of m: a map
// destination names it, or it is selected; a struct destination without
// a selection writes any of its fields, and an automatic update time is
// written by every update.
func mayAssign(db *gorm.DB, m *model, column string) bool {
	f := m.schema.LookUpField(column)
	if f == nil || f.AutoUpdateTime > 0 {
		return true
	}
	switch db.Statement.Dest.(type) {
	case map[string]any, *map[string]any:
		return assigns(db, f)
	}
	return len(db.Statement.Selects) == 0 || assigns(db, f)
}

// assigns reports whether an update may set f: its destination is a map
// naming it, or f is selected (Select("*") selects everything).
func assigns(db *gorm.DB, f *schema.Field) bool {
	named := func(k string) bool { return k == f.DBName || k == f.Name || k == "*" }
	switch d := db.Statement.Dest.(type) {
	case map[string]any:
		for k := range d {
			if named(k) {
				return true
			}
		}
	case *map[string]any:
		for k := range *d {
			if named(k) {
				return true
			}
		}
	}
	return slices.ContainsFunc(db.Statement.Selects, named)
}

// keysOf returns the primary keys of rows.
func keysOf(db *gorm.DB, m *model, rows []reflect.Value) []any {
	keys := make([]any, len(rows))
	for i, r := range rows {
		keys[i], _ = m.pkOf(db.Statement.Context, r)
	}
	return keys
}

// found returns what the before-callback stored, or false when there is
// nothing to publish: no registered model, a failed statement, no row. It
// gives the statement back its own context.
func found(db *gorm.DB) (*before, bool) {
	b, ok := db.Statement.Context.Value(beforeKey{}).(*before)
	if !ok {
		return nil, false
	}
	db.Statement.Context = b.ctx
	if db.Error != nil || db.Statement.RowsAffected == 0 || (b.ret != nil && !b.ret.ran) {
		return nil, false
	}
	return b, true
}

// perRow returns what the before-callback of an update or delete found, when
// the statement's rows get an event each; beyond the bulk event limit it
// records a resync of the model's streams instead.
func (p *capture) perRow(db *gorm.DB) (*before, bool) {
	b, ok := found(db)
	if !ok {
		return nil, false
	}
	if b.resync || (b.ret != nil && b.ret.count > p.bulkLimit) {
		p.record(db, []change{{typ: b.m.schema.ModelType, resync: reasonBulkChange}})
		return nil, false
	}
	return b, true
}

func (p *capture) afterUpdate(db *gorm.DB) {
	if b, ok := db.Statement.Context.Value(beforeKey{}).(*before); ok && b.ownSet {
		delete(db.Statement.Clauses, "SET")
	}
	b, ok := p.perRow(db)
	if !ok {
		return
	}
	var rows []reflect.Value
	if b.ret != nil {
		rows = b.ret.sorted(db.Statement.Context)
	} else {
		var err error
		if rows, err = p.byKeys(db, b.m, b.keys); err != nil {
			db.AddError(err)
			return
		}
	}
	versionBack(db, b.m, rows)
	ctx := db.Statement.Context
	old := map[string]reflect.Value{}
	for _, r := range b.rows {
		pk, _ := b.m.pkOf(ctx, r)
		old[pkKey(pk)] = r
	}
	var changes []change
	if b.pk {
		// The key changed: the rows whose old key is gone are deleted,
		// those whose new key is new are created.
		now := map[string]bool{}
		for _, r := range rows {
			pk, _ := b.m.pkOf(ctx, r)
			now[pkKey(pk)] = true
		}
		for _, r := range b.rows {
			if pk, _ := b.m.pkOf(ctx, r); !now[pkKey(pk)] && !b.m.deleted(ctx, r) {
				changes = append(changes, p.changeOf(db, b.m, actionDelete, r))
			}
		}
	}
	for _, r := range rows {
		pk, _ := b.m.pkOf(ctx, r)
		prev, known := old[pkKey(pk)]
		wasVisible := known && !b.m.deleted(ctx, prev)
		switch {
		case b.read && !known && !b.pk:
			// Written by a transaction that committed between the read
			// and the statement: what it was is unknown.
			changes = append(changes, change{typ: b.m.schema.ModelType, resync: reasonConcurrent})
		case b.m.deleted(ctx, r):
			if b.read && wasVisible { // soft-deleted by this update
				changes = append(changes, p.changeOf(db, b.m, actionDelete, r))
			}
		case b.read && !wasVisible:
			// New to subscribers: undeleted, or given a new key.
			changes = append(changes, p.changeOf(db, b.m, actionCreate, r))
		default:
			ch := p.changeOf(db, b.m, actionUpdate, r)
			if known {
				ch.beforeObj = prev.Addr().Interface()
			}
			ch.same = b.same
			changes = append(changes, ch)
		}
	}
	p.record(db, changes)
}

func (p *capture) beforeDelete(db *gorm.DB) {
	m := p.target(db)
	if m == nil || db.Error != nil {
		return
	}
	if p.returning(db) {
		p.markReturning(db, &before{m: m})
		return
	}
	rows, resync, err := p.matching(db, m, false)
	if err != nil {
		db.AddError(err)
		return
	}
	keep(db, &before{m: m, read: true, rows: rows, resync: resync})
}

func (p *capture) afterDelete(db *gorm.DB) {
	b, ok := p.perRow(db)
	if !ok {
		return
	}
	rows := b.rows
	soft := b.m.softDelete != nil && !db.Statement.Unscoped
	if b.ret != nil {
		rows = b.ret.sorted(db.Statement.Context)
	}
	var changes []change
	for _, r := range rows {
		if b.ret != nil && !soft && b.m.deleted(db.Statement.Context, r) {
			continue // soft-deleted before: its delete was published then
		}
		changes = append(changes, p.changeOf(db, b.m, actionDelete, r))
	}
	p.record(db, changes)
}

// changeOf is the change of row, a struct the capture read itself (from
// RETURNING or a query of its own), which it keeps: the event is encoded
// later, where someone is subscribed.
func (p *capture) changeOf(db *gorm.DB, m *model, action string, row reflect.Value) change {
	pk, _ := m.pkOf(db.Statement.Context, row)
	return change{typ: m.schema.ModelType, action: action, pk: pk, obj: row.Addr().Interface()}
}

// changeOfValue is the change of obj, a struct of the application's, which
// it may change after the statement: the event is encoded now, from a copy.
func (p *capture) changeOfValue(db *gorm.DB, m *model, action string, obj reflect.Value) change {
	pk, _ := m.pkOf(db.Statement.Context, obj)
	data, err := json.Marshal(obj.Addr().Interface())
	if err != nil {
		p.log.Error("channelsapi: encode event", "model", m.schema.Name, "pk", pk, "err", err)
		return change{typ: m.schema.ModelType, resync: reasonEncoding}
	}
	own := reflect.New(m.schema.ModelType)
	own.Elem().Set(obj)
	return change{typ: m.schema.ModelType, action: action, pk: pk, data: data, obj: own.Interface()}
}

// record keeps changes until the statement's transaction commits, or
// publishes them at once when the statement ran outside a transaction.
func (p *capture) record(db *gorm.DB, changes []change) {
	if len(changes) == 0 {
		return
	}
	pool := db.Statement.ConnPool
	if p, ok := pool.(*gorm.PreparedStmtTX); ok { // db.Session(&gorm.Session{PrepareStmt: true})
		pool = p.Tx
	}
	switch pool := pool.(type) {
	case *txPool:
		pool.add(changes)
		return
	case gorm.TxCommitter:
		// A transaction begun outside the wrapped pool (db.Connection):
		// its commit cannot be seen, so nothing is published for it and
		// the subscribers of the model resync instead of missing it.
		p.log.Warn("channelsapi: a write in a transaction begun outside the registered *gorm.DB (db.Connection?) cannot be published; subscribers resync")
		changes = []change{{typ: changes[0].typ, resync: reasonUntracked}}
	}
	p.order.reserve().fill(changes)
}

// rowsOf returns the addressable model structs in v (a struct, or a slice or
// array of structs or pointers to them).
func rowsOf(v reflect.Value, m *model) []reflect.Value {
	t := m.schema.ModelType
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == t && v.CanAddr() {
			return []reflect.Value{v}
		}
	case reflect.Slice, reflect.Array:
		var out []reflect.Value
		for i := range v.Len() {
			e := reflect.Indirect(v.Index(i))
			if e.Kind() == reflect.Struct && e.Type() == t && e.CanAddr() {
				out = append(out, e)
			}
		}
		return out
	}
	return nil
}

// loadedKeys returns the non-zero primary keys of the objects a statement
// was given (its destination and model).
func loadedKeys(db *gorm.DB, m *model) []any {
	var keys []any
	add := func(v reflect.Value) {
		for _, obj := range rowsOf(v, m) {
			if pk, ok := m.pkOf(db.Statement.Context, obj); ok && !slices.Contains(keys, pk) {
				keys = append(keys, pk)
			}
		}
	}
	add(db.Statement.ReflectValue)
	if db.Statement.Model != nil {
		add(reflect.Indirect(reflect.ValueOf(db.Statement.Model)))
	}
	return keys
}

// queryOn starts a query on m in the statement's connection (and so its
// transaction), without the statement's clauses.
func queryOn(db *gorm.DB, m *model) *gorm.DB {
	q := db.Session(&gorm.Session{NewDB: true, SkipHooks: true, Context: db.Statement.Context}).
		Model(reflect.New(m.schema.ModelType).Interface())
	if db.Statement.TableExpr != nil { // db.Table("items AS i"): its conditions name the alias
		q.Statement.TableExpr, q.Statement.Table = db.Statement.TableExpr, db.Statement.Table
	}
	if db.Statement.Unscoped {
		q = q.Unscoped()
	}
	return q
}

// matching selects the rows an update or delete statement is about to touch:
// those of its loaded objects' keys and its WHERE clause, at most the bulk
// limit (resync reports that there were more); lock locks them for the
// transaction where the dialect can (FOR UPDATE).
func (p *capture) matching(db *gorm.DB, m *model, lock bool) (rows []reflect.Value, resync bool, err error) {
	q := queryOn(db, m)
	if lock {
		q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
	}
	hasCond := false
	if c, ok := db.Statement.Clauses["WHERE"]; ok {
		if w, ok := c.Expression.(clause.Where); ok && len(w.Exprs) > 0 {
			q = q.Clauses(clause.Where{Exprs: slices.Clone(w.Exprs)})
			hasCond = true
		}
	}
	if keys := loadedKeys(db, m); len(keys) > 0 {
		q = q.Where(clause.IN{Column: clause.Column{Table: clause.CurrentTable, Name: m.pk.DBName}, Values: keys})
		hasCond = true
	}
	if !hasCond && !db.AllowGlobalUpdate {
		return nil, false, nil // GORM refuses the statement (ErrMissingWhereClause)
	}
	limit := p.bulkLimit
	slice := reflect.New(reflect.SliceOf(m.schema.ModelType))
	if err := q.Limit(limit + 1).Find(slice.Interface()).Error; err != nil {
		return nil, false, err
	}
	rows = rowsOf(slice.Elem(), m)
	if len(rows) > limit {
		return nil, true, nil
	}
	return rows, false, nil
}

// byKeys reads rows back by primary key, in key order.
func (p *capture) byKeys(db *gorm.DB, m *model, keys []any) ([]reflect.Value, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	slice := reflect.New(reflect.SliceOf(m.schema.ModelType))
	col := clause.Column{Table: clause.CurrentTable, Name: m.pk.DBName}
	err := queryOn(db, m).Where(clause.IN{Column: col, Values: keys}).Order(clause.OrderByColumn{Column: col}).Find(slice.Interface()).Error
	if err != nil {
		return nil, err
	}
	return rowsOf(slice.Elem(), m), nil
}
