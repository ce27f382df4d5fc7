package channelsapi

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/channelsapi/channelsapi/internal/query"
)

// This file binds the filter grammar (PROTOCOL.md section 8) to a model:
// which fields a ViewSet lets clients query, how a request's query is
// read, and the rows the in-memory matcher reads. query_sql.go compiles the
// same parsed query to SQL.

// Filter is a scope in the filter grammar: keys as clients write them
// ("owner_id", "status__in", "due_at__lte") and Go values, for example
// Filter{"owner_id": user.ID}. A slice is the value of in and range. Its
// keys may name any column of the model (a field hidden from JSON by its
// column name), with every lookup its type allows.
type Filter map[string]any

// Keys a list query reads besides filters (PROTOCOL.md 4.6, 8 and 9); no
// filterable field may be named like them.
const (
	keyPage     = "page"
	keyPageSize = "page_size"
	keySnapshot = "snapshot"
)

var reservedKeys = []string{keyPage, keyPageSize, keyExpand, query.KeyOrdering, query.KeySearch, keySnapshot, keySince, "cursor"}

// queries is what a model offers to the filter grammar: every column of a
// filterable type, and what the ViewSet lets clients do with them.
type queries struct {
	schema   *query.Schema
	gorm     []*schema.Field // by field index
	nullable []bool
	declared query.Declared
	// live is true when the ViewSet declares filters: its stream takes
	// list subscriptions, whose events need the row before an update.
	live bool
}

var (
	valuerType = reflect.TypeFor[driver.Valuer]()
	// nullTypeKinds are the kinds and sizes of the sql.Null types: the size
	// of the value they hold, which is the column's (GORM types the column
	// by it, smallint for a NullInt16), so that a value beyond it is a 400
	// as for an int16 field rather than a value PostgreSQL cannot bind.
	nullTypeKinds = map[reflect.Type]nullKind{
		reflect.TypeFor[sql.NullString]():  {query.String, 0},
		reflect.TypeFor[sql.NullInt64]():   {query.Int, 64},
		reflect.TypeFor[sql.NullInt32]():   {query.Int, 32},
		reflect.TypeFor[sql.NullInt16]():   {query.Int, 16},
		reflect.TypeFor[sql.NullByte]():    {query.Uint, 8},
		reflect.TypeFor[sql.NullFloat64](): {query.Float, 64},
		reflect.TypeFor[sql.NullBool]():    {query.Bool, 0},
		reflect.TypeFor[sql.NullTime]():    {query.Time, 0},
	}
)

type nullKind struct {
	kind query.Kind
	bits int
}

// kindOf returns the query kind of a field of type t, and whether it can
// be NULL; ok is false for a type the grammar cannot compare.
func kindOf(t reflect.Type) (k query.Kind, bits int, nullable, ok bool) {
	if t.Kind() == reflect.Pointer {
		t, nullable = t.Elem(), true
	}
	if nk, ok := nullTypeKinds[t]; ok {
		return nk.kind, nk.bits, true, true
	}
	if t == timeType {
		return query.Time, 64, nullable, true
	}
	if t.Implements(valuerType) || reflect.PointerTo(t).Implements(valuerType) {
		return 0, 0, false, false // stored in a form of its own
	}
	switch t.Kind() {
	case reflect.String:
		return query.String, 0, nullable, true
	case reflect.Bool:
		return query.Bool, 0, nullable, true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return query.Int, t.Bits(), nullable, true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return query.Uint, t.Bits(), nullable, true
	case reflect.Float32, reflect.Float64:
		return query.Float, t.Bits(), nullable, true
	}
	return 0, 0, false, false
}

// newQueries binds the grammar to m for a ViewSet declaring filters (JSON
// name -> lookups), ordering and search fields.
func newQueries(m *model, fold func(string) string, precision time.Duration, filters map[string][]string, ordering, search []string) (*queries, error) {
	q := &queries{schema: &query.Schema{Fold: fold, Precision: precision}, declared: query.Declared{Lookups: map[int]query.Ops{}}}
	// The fields seen in JSON come first, named by their JSON names; then
	// the hidden ones, by their column names, which only a ScopeFilter may
	// use: a name is looked up in that order, so a hidden column named
	// like a visible field's JSON key is never reached by it.
	for _, hidden := range []bool{false, true} {
		for _, gf := range m.schema.Fields {
			if gf.DBName == "" || gf == m.softDelete {
				continue
			}
			k, bits, nullable, ok := kindOf(gf.FieldType)
			if !ok {
				continue
			}
			name, visible := jsonName(gf.StructField)
			if visible == hidden {
				continue
			}
			if hidden {
				name = gf.DBName
			}
			q.schema.Fields = append(q.schema.Fields, query.Field{Name: name, Kind: k, Bits: bits})
			q.gorm = append(q.gorm, gf)
			q.nullable = append(q.nullable, nullable)
		}
	}
	visible := func(what, name string) (int, error) {
		if slices.Contains(reservedKeys, name) {
			return 0, fmt.Errorf("%s field %q is named like a reserved key", what, name)
		}
		if _, ok := m.byJSON[name]; !ok {
			return 0, fmt.Errorf("%s field %q is not a JSON field of the model", what, name)
		}
		f := q.schema.Field(name)
		if f < 0 || q.gorm[f] != m.byJSON[name].gorm {
			return 0, fmt.Errorf("%s field %q has a type the filter grammar cannot compare", what, name)
		}
		return f, nil
	}
	for _, name := range slices.Sorted(maps.Keys(filters)) {
		f, err := visible("filter", name)
		if err != nil {
			return nil, err
		}
		kind := q.schema.Fields[f].Kind
		var ops query.Ops
		for _, l := range filters[name] {
			op, ok := query.ParseOp(l)
			if !ok || !query.Allowed(kind).Has(op) {
				return nil, fmt.Errorf("filter field %q: lookup %q is not one of %s", name, l, lookupNames(kind))
			}
			ops = ops.With(op)
		}
		if ops == 0 {
			return nil, fmt.Errorf("filter field %q has no lookups", name)
		}
		q.declared.Lookups[f] = ops
		q.live = true
	}
	for _, name := range ordering {
		f, err := visible("ordering", name)
		if err != nil {
			return nil, err
		}
		q.declared.Ordering = append(q.declared.Ordering, f)
	}
	for _, name := range search {
		f, err := visible("search", name)
		if err != nil {
			return nil, err
		}
		if q.schema.Fields[f].Kind != query.String {
			return nil, fmt.Errorf("search field %q is not a string", name)
		}
		q.declared.Search = append(q.declared.Search, f)
		q.live = true
	}
	return q, nil
}

func lookupNames(k query.Kind) string {
	var names []string
	for op := query.Exact; op <= query.Range; op++ {
		if query.Allowed(k).Has(op) {
			names = append(names, op.String())
		}
	}
	return strings.Join(names, ", ")
}

// parsed is a list query: its filters and search, its ordering.
type parsed struct {
	q     *query.Query
	order []query.Order
}

// parse reads a client's query from in (reserved keys already taken out).
func (q *queries) parse(in map[string]query.Param) (parsed, error) {
	lq, order, errs := q.schema.Parse(in, &q.declared)
	if errs != nil {
		return parsed{}, &Error{Status: http.StatusBadRequest, Fields: errs}
	}
	return parsed{q: lq, order: order}, nil
}

// scope converts a ScopeFilter's Filter into a query on every column.
func (q *queries) scope(f Filter) (*query.Query, error) {
	out := &query.Query{}
	for _, key := range slices.Sorted(maps.Keys(f)) {
		name, opName, hasOp := strings.Cut(key, "__")
		field := q.schema.Field(name)
		op := query.Exact
		if hasOp {
			var ok bool
			if op, ok = query.ParseOp(opName); !ok {
				return nil, fmt.Errorf("scope filter %q: unknown lookup", key)
			}
		}
		if field < 0 || !query.Allowed(q.schema.Fields[field].Kind).Has(op) {
			return nil, fmt.Errorf("scope filter %q: no such field or lookup", key)
		}
		p, err := goParam(f[key])
		if err != nil {
			return nil, fmt.Errorf("scope filter %q: %w", key, err)
		}
		pred, given, msg := q.schema.Pred(field, op, p)
		switch {
		case msg != "":
			return nil, fmt.Errorf("scope filter %q: %s", key, msg)
		case !given:
			// An empty value selects nothing in a scope, rather than
			// everything: a zero user ID must not widen it.
			pred = query.Pred{Field: field, Op: query.In}
		}
		out.Preds = append(out.Preds, pred)
	}
	return out, nil
}

// goParam writes a Go value of a Filter as the grammar's text.
func goParam(v any) (query.Param, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Slice && rv.Type().Elem().Kind() != reflect.Uint8 || rv.Kind() == reflect.Array {
		p := query.Param{List: true}
		for i := range rv.Len() {
			s, err := goText(rv.Index(i).Interface())
			if err != nil {
				return p, err
			}
			p.Vals = append(p.Vals, s)
		}
		return p, nil
	}
	s, err := goText(v)
	return query.Param{Vals: []string{s}}, err
}

func goText(v any) (string, error) {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return "", nil
		}
		rv = rv.Elem()
	}
	if !rv.IsValid() {
		return "", nil
	}
	if t, ok := rv.Interface().(time.Time); ok {
		return t.Format(time.RFC3339Nano), nil
	}
	switch rv.Kind() {
	case reflect.String:
		return rv.String(), nil
	case reflect.Bool:
		return strconv.FormatBool(rv.Bool()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(rv.Uint(), 10), nil
	case reflect.Float32, reflect.Float64:
		return strconv.FormatFloat(rv.Float(), 'g', -1, rv.Type().Bits()), nil
	}
	return "", fmt.Errorf("a value of type %T cannot be compared", v)
}

// restQuery reads a REST query string; page and page_size are
// pagination's, expand names relations.
func restQuery(values url.Values) map[string]query.Param {
	in := make(map[string]query.Param, len(values))
	for k, vs := range values {
		if k != keyPage && k != keyPageSize && k != keyExpand {
			in[k] = query.Param{Vals: vs}
		}
	}
	return in
}

// jsonQuery reads the query keys of a WebSocket request's data, skipping
// skip; values are JSON scalars or arrays of scalars. It returns them also
// as url.Values, the form Request.Query has on both transports.
func jsonQuery(data map[string]json.RawMessage, skip ...string) (map[string]query.Param, url.Values, error) {
	in := make(map[string]query.Param, len(data))
	values := url.Values{}
	errs := map[string][]string{}
	for k, raw := range data {
		if slices.Contains(skip, k) {
			continue
		}
		raw = bytes.TrimSpace(raw)
		var p query.Param
		if len(raw) > 0 && raw[0] == '[' {
			var elems []json.RawMessage
			if json.Unmarshal(raw, &elems) != nil {
				errs[k] = []string{"Enter a valid value."}
				continue
			}
			p.List = true
			for _, e := range elems {
				s, ok := jsonScalar(e)
				if !ok {
					errs[k] = []string{"Enter a valid value."}
					break
				}
				p.Vals = append(p.Vals, s)
			}
		} else {
			s, ok := jsonScalar(raw)
			if !ok {
				errs[k] = []string{"Enter a valid value."}
				continue
			}
			p.Vals = []string{s}
		}
		in[k] = p
		values[k] = p.Vals
	}
	if len(errs) > 0 {
		return nil, nil, &Error{Status: http.StatusBadRequest, Fields: errs}
	}
	return in, values, nil
}

// jsonScalar is the grammar's text of a JSON string, number, boolean or
// null ("", not given).
func jsonScalar(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0:
		return "", false
	case string(raw) == "null":
		return "", true
	case string(raw) == "true", string(raw) == "false":
		return string(raw), true
	case raw[0] == '"':
		return jsonString(raw)
	case raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'):
		return string(raw), true
	}
	return "", false
}

// row gives the matcher the values of one object of the model.
type row struct {
	q   *queries
	ctx context.Context
	v   reflect.Value // the struct
}

func (q *queries) row(ctx context.Context, obj any) row {
	return row{q: q, ctx: ctx, v: reflect.ValueOf(obj).Elem()}
}

// Value implements query.Row.
func (r row) Value(field int) (query.Value, bool) {
	var out query.Value
	fv := r.q.gorm[field].ReflectValueOf(r.ctx, r.v)
	if fv.Kind() == reflect.Pointer {
		if fv.IsNil() {
			return out, true
		}
		fv = fv.Elem()
	}
	k := r.q.schema.Fields[field].Kind
	if _, isNull := nullTypeKinds[fv.Type()]; isNull {
		dv, err := fv.Interface().(driver.Valuer).Value()
		if err != nil || dv == nil {
			return out, true
		}
		fv = reflect.ValueOf(dv)
	}
	switch k {
	case query.String:
		out.S = fv.String()
	case query.Bool:
		out.B = fv.Bool()
	case query.Int:
		out.I = fv.Int()
	case query.Uint:
		if fv.CanUint() {
			out.U = fv.Uint()
		} else {
			out.U = uint64(fv.Int()) // sql.NullByte's Value is an int64
		}
	case query.Float:
		out.F = fv.Float()
	case query.Time:
		out.T = fv.Interface().(time.Time)
	}
	return out, false
}

// caseFolding asks the database how its lower() folds case: ASCII only
// (SQLite, PostgreSQL under the C locale) or every letter (PostgreSQL under
// a Unicode locale). The matcher folds the same way.
func caseFolding(db *gorm.DB) (func(string) string, error) {
	var lowered string
	// (À has no context rules: an ICU collation lowers a final Σ to ς.)
	if err := db.Raw("SELECT lower(?)", "À").Scan(&lowered).Error; err != nil {
		return nil, fmt.Errorf("ask the database how it folds case: %w", err)
	}
	if lowered == "à" {
		return foldUnicode, nil
	}
	return foldASCII, nil
}

func foldASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// foldUnicode lowers each letter on its own, as the C library's towlower
// does for PostgreSQL's lower().
func foldUnicode(s string) string { return strings.Map(unicode.ToLower, s) }

// timePrecision is the resolution the database keeps of times:
// PostgreSQL's timestamps hold microseconds.
func timePrecision(db *gorm.DB) time.Duration {
	if db.Dialector.Name() == "postgres" {
		return time.Microsecond
	}
	return 0
}

// queried returns the columns a client's live query may read: those of
// the declared filters and search fields.
func (v *viewSet[T]) queried() []string {
	var columns []string
	for f := range v.qs.declared.Lookups {
		columns = append(columns, v.qs.gorm[f].DBName)
	}
	for _, f := range v.qs.declared.Search {
		columns = append(columns, v.qs.gorm[f].DBName)
	}
	return columns
}
