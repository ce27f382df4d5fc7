// Package query holds the filter grammar of list queries and live queries
// (PROTOCOL.md sections 8 and 9): keys such as "votes__gte" parsed into
// predicates on typed values, a canonical key under which equal queries are
// grouped, and the in-memory matcher that decides whether a row is in a
// query's set. The root package binds a Schema to a GORM model and compiles
// the same Query to SQL; the two must agree on every row, which the root
// package's property test checks against real databases.
//
// The package imports nothing of the root, of GORM or of Gin.
package query

import (
	"strconv"
	"strings"
	"time"
)

// Kind is how a field's values are parsed and compared.
type Kind uint8

// The kinds of filterable fields.
const (
	String Kind = iota + 1
	Int
	Uint
	Float
	Bool
	Time
)

// Op is a lookup.
type Op uint8

// The lookups of PROTOCOL.md section 8.
const (
	Exact Op = iota + 1
	IExact
	In
	Gt
	Gte
	Lt
	Lte
	Contains
	IContains
	StartsWith
	IStartsWith
	IsNull
	Range
)

var opNames = [...]string{
	Exact: "exact", IExact: "iexact", In: "in", Gt: "gt", Gte: "gte", Lt: "lt", Lte: "lte",
	Contains: "contains", IContains: "icontains", StartsWith: "startswith", IStartsWith: "istartswith",
	IsNull: "isnull", Range: "range",
}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "op" + strconv.Itoa(int(o))
}

// ParseOp returns the lookup named name.
func ParseOp(name string) (Op, bool) {
	for op, n := range opNames {
		if n != "" && n == name {
			return Op(op), true
		}
	}
	return 0, false
}

// Ops is a set of lookups.
type Ops uint32

// Has reports whether o holds op.
func (o Ops) Has(op Op) bool { return o&(1<<op) != 0 }

// With returns o with op added.
func (o Ops) With(op Op) Ops { return o | 1<<op }

// Allowed is the set of lookups that make sense for k.
func Allowed(k Kind) Ops {
	var o Ops
	for _, op := range []Op{Exact, In, IsNull} {
		o = o.With(op)
	}
	if k == Bool {
		return o
	}
	for _, op := range []Op{Gt, Gte, Lt, Lte, Range} {
		o = o.With(op)
	}
	if k == String {
		for _, op := range []Op{IExact, Contains, IContains, StartsWith, IStartsWith} {
			o = o.With(op)
		}
	}
	return o
}

// Value is one parsed value; which member holds it depends on the field's
// Kind.
type Value struct {
	S string
	I int64
	U uint64
	F float64
	B bool
	T time.Time
}

// Field is one field a query may name.
type Field struct {
	Name string // the key in the grammar: the field's JSON name
	Kind Kind
	Bits int // size of Int, Uint and Float fields: 8, 16, 32 or 64
}

// Schema is what a query is parsed against: the fields of a model and how
// its database compares them.
type Schema struct {
	Fields []Field
	// Fold is the case folding of iexact, icontains, istartswith and
	// search: the database's lower().
	Fold func(string) string
	// Precision is the resolution of the database's times: values and rows
	// are truncated to it before they are compared. Zero means nanoseconds.
	Precision time.Duration
}

// Pred is one predicate: Field Op Vals. IsNull holds one Bool value.
type Pred struct {
	Field int // index in Schema.Fields
	Op    Op
	Vals  []Value
	// Scope marks predicates of a server-side scope, preferred as anchors.
	Scope bool
}

// Query is a conjunction of predicates and search terms. Its zero value
// matches every row.
type Query struct {
	Preds []Pred
	// Search holds terms that must each be found (icontains) in one of
	// SearchFields.
	SearchFields []int
	Terms        []string
}

// Row gives a query the values of one row.
type Row interface {
	// Value returns field's value, or null true for SQL NULL.
	Value(field int) (v Value, null bool)
}

// Match reports whether r is in q's set: whether the SQL WHERE compiled from
// q would select it. A NULL compares as SQL's NULL does: no predicate but
// isnull holds on it.
func (s *Schema) Match(q *Query, r Row) bool {
	for i := range q.Preds {
		if !s.holds(&q.Preds[i], r) {
			return false
		}
	}
	for _, term := range q.Terms {
		t := s.Fold(term)
		found := false
		for _, f := range q.SearchFields {
			if v, null := r.Value(f); !null && strings.Contains(s.Fold(v.S), t) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func (s *Schema) holds(p *Pred, r Row) bool {
	v, null := r.Value(p.Field)
	if p.Op == IsNull {
		return null == p.Vals[0].B
	}
	if null {
		return false
	}
	k := s.Fields[p.Field].Kind
	if k == Time {
		v.T = s.truncate(v.T)
	}
	switch p.Op {
	case Exact:
		return compare(k, v, p.Vals[0]) == 0
	case In:
		for _, w := range p.Vals {
			if compare(k, v, w) == 0 {
				return true
			}
		}
		return false
	case Gt:
		return compare(k, v, p.Vals[0]) > 0
	case Gte:
		return compare(k, v, p.Vals[0]) >= 0
	case Lt:
		return compare(k, v, p.Vals[0]) < 0
	case Lte:
		return compare(k, v, p.Vals[0]) <= 0
	case Range:
		return compare(k, v, p.Vals[0]) >= 0 && compare(k, v, p.Vals[1]) <= 0
	case IExact:
		return s.Fold(v.S) == s.Fold(p.Vals[0].S)
	case Contains:
		return strings.Contains(v.S, p.Vals[0].S)
	case IContains:
		return strings.Contains(s.Fold(v.S), s.Fold(p.Vals[0].S))
	case StartsWith:
		return strings.HasPrefix(v.S, p.Vals[0].S)
	case IStartsWith:
		return strings.HasPrefix(s.Fold(v.S), s.Fold(p.Vals[0].S))
	}
	return false
}

// compare orders two values of kind k as the database does: strings by
// their bytes (code points), times as instants.
func compare(k Kind, a, b Value) int {
	switch k {
	case String:
		return strings.Compare(a.S, b.S)
	case Int:
		return cmp3(a.I < b.I, a.I > b.I)
	case Uint:
		return cmp3(a.U < b.U, a.U > b.U)
	case Float:
		return cmp3(a.F < b.F, a.F > b.F)
	case Bool:
		return cmp3(!a.B && b.B, a.B && !b.B)
	case Time:
		return a.T.Compare(b.T)
	}
	return 0
}

func cmp3(less, more bool) int {
	switch {
	case less:
		return -1
	case more:
		return 1
	}
	return 0
}

func (s *Schema) truncate(t time.Time) time.Time {
	if s.Precision > 1 {
		return t.Truncate(s.Precision)
	}
	return t
}

// Key returns the canonical text of v for a field of kind k: equal values
// have equal keys.
func Key(k Kind, v Value) string {
	switch k {
	case String:
		return v.S
	case Int:
		return strconv.FormatInt(v.I, 10)
	case Uint:
		return strconv.FormatUint(v.U, 10)
	case Float:
		if v.F == 0 {
			return "0" // -0 equals 0
		}
		return strconv.FormatFloat(v.F, 'g', -1, 64)
	case Bool:
		return strconv.FormatBool(v.B)
	case Time:
		return v.T.UTC().Format(time.RFC3339Nano)
	}
	return ""
}

// RowKey returns the canonical text of r's value of field, as Key does,
// or false when it is NULL.
func (s *Schema) RowKey(r Row, field int) (string, bool) {
	v, null := r.Value(field)
	if null {
		return "", false
	}
	k := s.Fields[field].Kind
	if k == Time {
		v.T = s.truncate(v.T)
	}
	return Key(k, v), true
}
