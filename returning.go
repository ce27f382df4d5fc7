package channelsapi

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"

	"gorm.io/gorm"
	"gorm.io/gorm/callbacks"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"
)

// This file reads the rows a statement wrote from the statement itself. On
// dialects with RETURNING (PostgreSQL, SQLite), the capture callbacks mark
// an UPDATE or DELETE in its context; the transaction wrapper runs the
// marked statement with "RETURNING *" appended and keeps the rows, and GORM
// sees only how many there were. So an event is the row as the database
// wrote it, the set of rows is exactly what the statement touched, and it
// costs no round trip of its own.

// returned is one marked statement and the rows it returned.
type returned struct {
	m     *model
	limit int // the most rows kept; beyond it only count grows
	taken atomic.Bool

	ran      bool // the statement was run (by the wrapper)
	rows     []reflect.Value
	inserted []bool // for each kept row, when the statement returned insertedColumn
	count    int
}

// markedStatement returns the mark of ctx (markReturning), once.
func markedStatement(ctx context.Context) (*returned, bool) {
	b, ok := ctx.Value(beforeKey{}).(*before)
	if !ok || b.ret == nil || b.ret.taken.Swap(true) {
		return nil, false
	}
	return b.ret, true
}

// exec runs query with RETURNING * on pool and keeps the rows.
func (r *returned) exec(ctx context.Context, pool gorm.ConnPool, query string, args []any) (sql.Result, error) {
	rows, err := pool.QueryContext(ctx, query+" RETURNING *", args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	r.ran = true
	if err := r.scan(ctx, rows); err != nil {
		return nil, err
	}
	return rowCount(r.count), nil
}

// scan reads rows into values of r's model, at most r.limit+1 of them.
func (r *returned) scan(ctx context.Context, rows *sql.Rows) error {
	columns, err := rows.Columns()
	if err != nil {
		return err
	}
	fields := make([]*schema.Field, len(columns))
	insertedAt := -1
	for i, c := range columns {
		if f := r.m.schema.LookUpField(c); f != nil && f.Readable {
			fields[i] = f
		} else if c == insertedColumn {
			insertedAt = i
		}
	}
	values := make([]any, len(columns))
	var inserted bool
	for rows.Next() {
		r.count++
		keep := r.count <= r.limit+1
		for i, f := range fields {
			switch {
			case f != nil && keep:
				values[i] = f.NewValuePool.Get()
			case i == insertedAt:
				values[i] = &inserted
			default:
				values[i] = new(sql.RawBytes)
			}
		}
		if err := rows.Scan(values...); err != nil {
			return err
		}
		if !keep {
			continue
		}
		obj := reflect.New(r.m.schema.ModelType).Elem()
		for i, f := range fields {
			if f == nil {
				continue
			}
			err := f.Set(ctx, obj, values[i])
			f.NewValuePool.Put(values[i])
			if err != nil {
				return err
			}
		}
		r.rows = append(r.rows, obj)
		if insertedAt >= 0 {
			r.inserted = append(r.inserted, inserted)
		}
	}
	return rows.Err()
}

// sorted returns the kept rows in primary key order.
func (r *returned) sorted(ctx context.Context) []reflect.Value {
	rows := slices.Clone(r.rows)
	slices.SortStableFunc(rows, func(a, b reflect.Value) int {
		ka, _ := r.m.pkOf(ctx, a)
		kb, _ := r.m.pkOf(ctx, b)
		return compareKeys(ka, kb)
	})
	return rows
}

// compareKeys orders primary keys: numbers by value, anything else by text.
func compareKeys(a, b any) int {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	switch {
	case va.CanInt() && vb.CanInt():
		return cmp.Compare(va.Int(), vb.Int())
	case va.CanUint() && vb.CanUint():
		return cmp.Compare(va.Uint(), vb.Uint())
	}
	return strings.Compare(pkKey(a), pkKey(b))
}

// rowCount is the sql.Result of a statement run with RETURNING.
type rowCount int64

func (n rowCount) RowsAffected() (int64, error) { return int64(n), nil }

func (rowCount) LastInsertId() (int64, error) {
	return 0, errors.New("channelsapi: no LastInsertId for a statement run with RETURNING")
}

// insertedColumn is the column PostgreSQL returns for an upsert: whether
// the row was inserted (xmax = 0) rather than updated.
const insertedColumn = "channelsapi_inserted"

// createCallback replaces GORM's create callback (gorm:create). A create of
// a registered model, on a dialect with RETURNING and in a transaction of
// the wrapped pool, is run with RETURNING *: its events carry the rows as
// the database wrote them, and an upsert tells the rows it inserted from
// those it updated. Every other create is GORM's.
func (p *capture) createCallback(gormCreate func(*gorm.DB)) func(*gorm.DB) {
	return func(db *gorm.DB) {
		m := p.target(db)
		if m == nil || db.Error != nil || db.DryRun || db.Statement.SQL.Len() > 0 || !p.returning(db) {
			gormCreate(db)
			return
		}
		if db.Statement.Schema == nil {
			// db.Table("t").Create(map): GORM runs it with Exec, which the
			// transaction wrapper runs with RETURNING.
			p.markReturning(db, &before{m: m})
			gormCreate(db)
			return
		}
		p.create(db, m)
	}
}

// created is what create found for afterCreate: the rows written and, for
// an upsert, which of them were inserted and the rows as they were.
type created struct {
	m        *model
	rows     []reflect.Value
	inserted []bool                   // per row; nil: every row was inserted
	unknown  bool                     // an upsert whose inserted rows cannot be told apart
	columns  []clause.Column          // the upsert's conflict columns
	prior    map[string]reflect.Value // the rows it may update, as they were, by conflictKey
}

func conflictKeyOf(ctx context.Context, c *created, row reflect.Value) string {
	return conflictKey(ctx, c.m, c.columns, row)
}

// create is GORM's create with RETURNING * (callbacks.Create, with the
// scanning of the returned rows done here).
func (p *capture) create(db *gorm.DB, m *model) {
	stmt := db.Statement
	ctx := stmt.Context
	if !stmt.Unscoped {
		for _, c := range stmt.Schema.CreateClauses {
			stmt.AddClause(c)
		}
	}
	stmt.SQL.Grow(180)
	stmt.AddClauseIfNotExists(clause.Insert{})
	values := callbacks.ConvertToCreateValues(stmt)
	stmt.AddClause(values)
	if db.Error != nil {
		return
	}
	var onConflict clause.OnConflict
	if c, ok := stmt.Clauses["ON CONFLICT"]; ok {
		onConflict, _ = c.Expression.(clause.OnConflict)
	}
	_, upsert := stmt.Clauses["ON CONFLICT"]
	updates := upsert && !onConflict.DoNothing
	returning := []clause.Column{{Name: "*", Raw: true}}
	if updates && p.postgres {
		returning = append(returning, clause.Column{Name: "(xmax = 0) AS " + insertedColumn, Raw: true})
	}
	stmt.AddClause(clause.Returning{Columns: returning})
	stmt.Build(stmt.BuildClauses...)

	c := &created{m: m, columns: onConflict.Columns}
	if updates && (!p.postgres || p.reg.stateful(m.schema.ModelType)) {
		// The rows the upsert may update, as they are: on SQLite, where the
		// write lock is held, they tell updated rows from inserted ones.
		prior, err := p.conflicting(db, m, values, onConflict.Columns)
		if err != nil {
			db.AddError(err)
			return
		}
		c.prior = prior
	}
	rows, err := stmt.ConnPool.QueryContext(ctx, stmt.SQL.String(), stmt.Vars...)
	if db.AddError(err) != nil {
		return
	}
	defer func() { db.AddError(rows.Close()) }()
	ret := &returned{m: m, limit: math.MaxInt - 1}
	if db.AddError(ret.scan(ctx, rows)) != nil {
		return
	}
	db.RowsAffected = int64(ret.count)
	if stmt.Result != nil {
		stmt.Result.RowsAffected = db.RowsAffected
	}
	assignDefaults(db, m, ret.rows, onConflict.DoNothing)
	c.rows = ret.rows
	if updates {
		c.inserted = ret.inserted
		if c.inserted == nil && len(onConflict.Columns) == 0 {
			// SQLite, no conflict target named: which rows were inserted
			// is unknown, so the subscribers resync.
			c.unknown = true
		} else if c.inserted == nil { // SQLite: a row found before was updated
			c.inserted = make([]bool, len(c.rows))
			for i, r := range c.rows {
				_, found := c.prior[conflictKey(ctx, m, onConflict.Columns, r)]
				c.inserted[i] = !found
			}
		}
	}
	keep(db, &before{m: m, created: c})
}

// conflicting reads the rows whose conflict columns hold the values about
// to be inserted, by conflict key, locked for the transaction where the
// dialect can.
func (p *capture) conflicting(db *gorm.DB, m *model, values clause.Values, columns []clause.Column) (map[string]reflect.Value, error) {
	if len(columns) == 0 {
		return nil, nil
	}
	idx := make([]int, len(columns))
	for i, c := range columns {
		idx[i] = slices.IndexFunc(values.Columns, func(v clause.Column) bool { return v.Name == c.Name })
		if idx[i] < 0 {
			return nil, nil // a column written by default: no row can hold it yet
		}
	}
	var any []clause.Expression
	for _, row := range values.Values {
		var eq []clause.Expression
		for i, c := range columns {
			eq = append(eq, clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: c.Name}, Value: row[idx[i]]})
		}
		any = append(any, clause.And(eq...))
	}
	slice := reflect.New(reflect.SliceOf(m.schema.ModelType))
	q := queryOn(db, m).Unscoped().Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate}).Where(clause.Or(any...))
	if err := q.Find(slice.Interface()).Error; err != nil {
		return nil, err
	}
	found := map[string]reflect.Value{}
	for _, r := range rowsOf(slice.Elem(), m) {
		found[conflictKey(db.Statement.Context, m, columns, r)] = r
	}
	return found, nil
}

// conflictKey is the text of the conflict columns of row.
func conflictKey(ctx context.Context, m *model, columns []clause.Column, row reflect.Value) string {
	var b strings.Builder
	for _, c := range columns {
		if f := m.schema.LookUpField(c.Name); f != nil {
			v, _ := f.ValueOf(ctx, row)
			fmt.Fprintf(&b, "%v\x00", v)
		}
	}
	return b.String()
}

// assignDefaults sets, on the objects GORM was given, the fields whose
// value the database chose (an auto-increment key, a column default) from
// the returned rows, as GORM's create does with its own RETURNING: row i to
// object i, skipping for ON CONFLICT DO NOTHING the objects that already
// have them.
func assignDefaults(db *gorm.DB, m *model, rows []reflect.Value, doNothing bool) {
	stmt := db.Statement
	ctx := stmt.Context
	var fields []*schema.Field
	for _, f := range stmt.Schema.FieldsWithDefaultDBValue {
		if f.Readable && m.schema.FieldsByDBName[f.DBName] != nil {
			fields = append(fields, f)
		}
	}
	if len(fields) == 0 || len(rows) == 0 {
		return
	}
	set := func(obj, row reflect.Value) {
		for _, f := range fields {
			v := m.schema.FieldsByDBName[f.DBName].ReflectValueOf(ctx, row).Interface()
			db.AddError(f.Set(ctx, obj, v))
		}
	}
	switch rv := stmt.ReflectValue; rv.Kind() {
	case reflect.Struct:
		set(rv, rows[0])
	case reflect.Slice, reflect.Array:
		i := 0
		for _, row := range rows {
			for ; i < rv.Len(); i++ {
				obj := reflect.Indirect(rv.Index(i))
				if !doNothing || !slices.ContainsFunc(fields, func(f *schema.Field) bool { _, zero := f.ValueOf(ctx, obj); return !zero }) {
					break
				}
			}
			if i >= rv.Len() {
				return
			}
			set(reflect.Indirect(rv.Index(i)), row)
			i++
		}
	case reflect.Map:
		if dest, ok := stmt.Dest.(map[string]any); ok {
			for _, f := range fields {
				dest[f.DBName] = m.schema.FieldsByDBName[f.DBName].ReflectValueOf(ctx, rows[0]).Interface()
			}
		}
	}
}
