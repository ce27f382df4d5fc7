package channelsapi

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"

	"gorm.io/gorm"
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

	ran   bool // the statement was run (by the wrapper)
	rows  []reflect.Value
	count int
}

type returnedKey struct{}

// mark returns ctx marked so that the next statement run on it is run by r.
func (r *returned) mark(ctx context.Context) context.Context {
	return context.WithValue(ctx, returnedKey{}, r)
}

// markedStatement returns the mark of ctx, once.
func markedStatement(ctx context.Context) (*returned, bool) {
	r, ok := ctx.Value(returnedKey{}).(*returned)
	if !ok || r.taken.Swap(true) {
		return nil, false
	}
	return r, true
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
	for i, c := range columns {
		if f := r.m.schema.LookUpField(c); f != nil && f.Readable {
			fields[i] = f
		}
	}
	values := make([]any, len(columns))
	for rows.Next() {
		r.count++
		keep := r.count <= r.limit+1
		for i, f := range fields {
			if f != nil && keep {
				values[i] = f.NewValuePool.Get()
			} else {
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
