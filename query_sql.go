package channelsapi

import (
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/channelsapi/channelsapi/internal/query"
)

// This file compiles a parsed query to SQL. Columns come from the GORM
// schema, never from client text; values are always bound. Each lookup is
// written so that the database decides exactly what the in-memory matcher
// decides (internal/query), which the property test checks:
//
//   - strings compare by their bytes: contains and startswith use
//     instr/strpos (SQLite's LIKE ignores ASCII case), and the order
//     lookups compare under the "C" collation on PostgreSQL;
//   - the case-insensitive lookups lower both sides with the database's
//     lower(), whose folding the matcher copies (caseFolding);
//   - SQLite keeps times as text in the zone they were written in, which
//     does not sort as instants; they are compared as UTC text with nine
//     fractional digits, the form bound values are given in.

// where compiles q for db's dialect.
func (q *queries) where(db *gorm.DB, lq *query.Query) clause.Expression {
	pg := db.Dialector.Name() == "postgres"
	var and []clause.Expression
	for _, p := range lq.Preds {
		and = append(and, q.pred(pg, p))
	}
	for _, term := range lq.Terms {
		var or []clause.Expression
		for _, f := range lq.SearchFields {
			or = append(or, clause.Expr{SQL: "LOWER(?) LIKE LOWER(?) ESCAPE '\\'", Vars: []any{q.column(f), "%" + escapeLike(term) + "%"}})
		}
		if len(or) == 1 {
			// GORM joins a clause.Or of one expression to the expression
			// before it with OR, which would widen the filters.
			and = append(and, or[0])
		} else {
			and = append(and, clause.Or(or...))
		}
	}
	if len(and) == 0 {
		return clause.Expr{SQL: "1=1"}
	}
	return clause.And(and...)
}

func (q *queries) column(f int) clause.Column {
	return clause.Column{Table: clause.CurrentTable, Name: q.gorm[f].DBName}
}

func (q *queries) pred(pg bool, p query.Pred) clause.Expression {
	f := q.schema.Fields[p.Field]
	var col any = q.column(p.Field)
	if p.Op == query.IsNull {
		if p.Vals[0].B {
			return clause.Expr{SQL: "? IS NULL", Vars: []any{col}}
		}
		return clause.Expr{SQL: "? IS NOT NULL", Vars: []any{col}}
	}
	vals := make([]any, len(p.Vals))
	for i, v := range p.Vals {
		vals[i] = bindValue(pg, f.Kind, v)
	}
	if f.Kind == query.Time && !pg {
		col = sqliteInstant(q.column(p.Field))
	}
	order := col
	if f.Kind == query.String && pg {
		order = clause.Expr{SQL: `? COLLATE "C"`, Vars: []any{col}}
	}
	switch p.Op {
	case query.Exact:
		return clause.Expr{SQL: "? = ?", Vars: []any{col, vals[0]}}
	case query.In:
		if len(vals) == 0 {
			return clause.Expr{SQL: "1=0"}
		}
		return clause.Expr{SQL: "? IN ?", Vars: []any{col, vals}}
	case query.Gt:
		return clause.Expr{SQL: "? > ?", Vars: []any{order, vals[0]}}
	case query.Gte:
		return clause.Expr{SQL: "? >= ?", Vars: []any{order, vals[0]}}
	case query.Lt:
		return clause.Expr{SQL: "? < ?", Vars: []any{order, vals[0]}}
	case query.Lte:
		return clause.Expr{SQL: "? <= ?", Vars: []any{order, vals[0]}}
	case query.Range:
		return clause.Expr{SQL: "? BETWEEN ? AND ?", Vars: []any{order, vals[0], vals[1]}}
	case query.IExact:
		return clause.Expr{SQL: "LOWER(?) = LOWER(?)", Vars: []any{col, vals[0]}}
	case query.Contains:
		return clause.Expr{SQL: position(pg) + " > 0", Vars: []any{col, vals[0]}}
	case query.StartsWith:
		return clause.Expr{SQL: position(pg) + " = 1", Vars: []any{col, vals[0]}}
	case query.IContains:
		return clause.Expr{SQL: "LOWER(?) LIKE LOWER(?) ESCAPE '\\'", Vars: []any{col, "%" + escapeLike(p.Vals[0].S) + "%"}}
	case query.IStartsWith:
		return clause.Expr{SQL: "LOWER(?) LIKE LOWER(?) ESCAPE '\\'", Vars: []any{col, escapeLike(p.Vals[0].S) + "%"}}
	}
	return clause.Expr{SQL: "1=0"}
}

// position is the SQL of the 1-based position of the second argument in
// the first, case-sensitively.
func position(pg bool) string {
	if pg {
		return "strpos(?, ?)"
	}
	return "instr(?, ?)"
}

// escapeLike escapes LIKE's wildcards and its escape character.
func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// sqliteTime is the layout of the text SQLite compares times in: UTC with
// nine fractional digits, whose point sqliteText drops as sqliteInstant
// does not write it. (A layout's fraction needs its point: without it,
// "05000000000" would write nine literal zeros.)
const sqliteTime = "2006-01-02 15:04:05.000000000"

// sqliteText is t as sqliteInstant writes a column's time.
func sqliteText(t time.Time) string {
	s := t.UTC().Format(sqliteTime)
	i := strings.LastIndexByte(s, '.')
	return s[:i] + s[i+1:]
}

// bindValue is the value bound for v.
func bindValue(pg bool, k query.Kind, v query.Value) any {
	switch k {
	case query.String:
		return v.S
	case query.Int:
		return v.I
	case query.Uint:
		return int64(v.U) // at most MaxInt64 (query.Schema.Parse)
	case query.Float:
		return v.F
	case query.Bool:
		return v.B
	case query.Time:
		if pg {
			return v.T
		}
		return sqliteText(v.T) // "2006-01-02 15:04:05" and nine digits
	}
	return nil
}

// sqliteInstant is the SQL that turns a time column as SQLite keeps it
// (the driver writes "2006-01-02 15:04:05.999999999-07:00") into UTC text
// with nine fractional digits, without rounding: SQLite's own date
// functions keep milliseconds, so the seconds are converted without their
// fraction, which is appended as written.
func sqliteInstant(col clause.Column) clause.Expr {
	const frac = `(CASE WHEN substr(?, 20, 1) = '.' THEN substr(?, 21, length(substr(?, 21)) - length(ltrim(substr(?, 21), '0123456789'))) ELSE '' END)`
	const zone = `(CASE WHEN substr(?, 20, 1) = '.' THEN ltrim(substr(?, 21), '0123456789') ELSE substr(?, 20) END)`
	sql := `(strftime('%Y-%m-%d %H:%M:%S', substr(?, 1, 19) || ` + zone + `) || substr(` + frac + ` || '000000000', 1, 9))`
	n := strings.Count(sql, "?")
	vars := make([]any, n)
	for i := range vars {
		vars[i] = col
	}
	return clause.Expr{SQL: sql, Vars: vars}
}

// orderBy is the ORDER BY of a list: the client's ordering, then the
// ViewSet's, then the primary key, so that pages are stable.
func (q *queries) orderBy(db *gorm.DB, order []query.Order, fixed string, pk string) *gorm.DB {
	if len(order) > 0 {
		cols := make([]clause.OrderByColumn, len(order))
		for i, o := range order {
			cols[i] = clause.OrderByColumn{Column: q.column(o.Field), Desc: o.Desc}
		}
		db = db.Order(clause.OrderBy{Columns: cols})
	}
	if fixed != "" {
		db = db.Order(fixed)
	}
	return db.Order(clause.OrderByColumn{Column: clause.Column{Table: clause.CurrentTable, Name: pk}})
}
