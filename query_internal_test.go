package channelsapi

// This file checks, against real databases, the promise of query_sql.go
// and internal/query: a parsed filter query compiled to SQL selects exactly
// the rows the in-memory matcher accepts. Random rows of edge values and
// random queries (seeded: CHANNELSAPI_TEST_FILTER_SEED replays another
// seed, CHANNELSAPI_TEST_FILTER_QUERIES sets how many queries) are run both
// ways on SQLite and, when CHANNELSAPI_TEST_POSTGRES is set, on PostgreSQL.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi/internal/query"
)

// filterRow has a column of every type the filter grammar compares
// (kindOf). No JSON name holds "__", which separates a field from its
// lookup.
type filterRow struct {
	ID    uint            `gorm:"primaryKey" json:"id"`
	S     string          `json:"s"`
	PS    *string         `json:"ps"`
	NS    sql.NullString  `json:"ns"`
	I     int             `json:"i"`
	I8    int8            `json:"i8"`
	I16   int16           `json:"i16"`
	I32   int32           `json:"i32"`
	I64   int64           `json:"i64"`
	PI64  *int64          `json:"pi64"`
	NI64  sql.NullInt64   `json:"ni64"`
	NI32  sql.NullInt32   `json:"ni32"`
	NI16  sql.NullInt16   `json:"ni16"`
	U     uint            `json:"u"`
	U8    uint8           `json:"u8"`
	U16   uint16          `json:"u16"`
	U32   uint32          `json:"u32"`
	U64   uint64          `json:"u64"`
	PU32  *uint32         `json:"pu32"`
	NByte sql.NullByte    `json:"nbyte"`
	F64   float64         `json:"f64"`
	F32   float32         `json:"f32"`
	PF64  *float64        `json:"pf64"`
	NF64  sql.NullFloat64 `json:"nf64"`
	B     bool            `json:"b"`
	PB    *bool           `json:"pb"`
	NB    sql.NullBool    `json:"nb"`
	T     time.Time       `json:"t"`
	PT    *time.Time      `json:"pt"`
	NT    sql.NullTime    `json:"nt"`
}

const (
	envFilterSeed        = "CHANNELSAPI_TEST_FILTER_SEED"
	envFilterQueries     = "CHANNELSAPI_TEST_FILTER_QUERIES"
	defaultFilterSeed    = 20260301
	defaultFilterQueries = 400
	filterRowCount       = 10000
	filterBatch          = 500
)

// TestFilterSQLMatchesMemory runs random queries on 10,000 random rows of
// edge values and asserts that, for every (row, query), the SQL WHERE of
// query_sql.go and query.Schema.Match over the row as GORM reads it back
// agree.
func TestFilterSQLMatchesMemory(t *testing.T) {
	seed := uint64(defaultFilterSeed)
	if s := os.Getenv(envFilterSeed); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envFilterSeed, s, err)
		}
		seed = n
	}
	queries := defaultFilterQueries
	if s := os.Getenv(envFilterQueries); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: not a positive number", envFilterQueries, s)
		}
		queries = n
	}
	t.Logf("seed %d (%s=<n> replays another), %d queries on %d rows per dialect", seed, envFilterSeed, queries, filterRowCount)
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "filter.db")
		db, err := gorm.Open(sqlite.Open("file:"+path+"?_journal_mode=WAL&_busy_timeout=10000&_txlock=immediate"),
			&gorm.Config{Logger: logger.Discard})
		if err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, db)
		checkFilters(t, db, seed, queries)
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := os.Getenv("CHANNELSAPI_TEST_POSTGRES")
		if dsn == "" {
			t.Skip("CHANNELSAPI_TEST_POSTGRES is not set")
		}
		db, err := gorm.Open(postgres.Open(propertySchema(t, dsn)), &gorm.Config{Logger: logger.Discard})
		if err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, db)
		// The database's locale decides lower() (caseFolding); PostgreSQL 16
		// no longer has the lc_ctype and lc_collate settings to SHOW.
		var locale struct{ Version, Ctype, Collate string }
		if err := db.Raw(`SELECT current_setting('server_version') AS version, datctype AS ctype, datcollate AS collate
			FROM pg_database WHERE datname = current_database()`).Scan(&locale).Error; err != nil {
			t.Fatal(err)
		}
		t.Logf("PostgreSQL %s, database ctype %s, collate %s", locale.Version, locale.Ctype, locale.Collate)
		checkFilters(t, db, seed, queries)
	})
}

func closeOnCleanup(t *testing.T, db *gorm.DB) {
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sqlDB.Close() })
}

// propertySchema creates a schema of the test's own on the server of dsn,
// dropped when the test ends, and returns a DSN working in it.
func propertySchema(t *testing.T, dsn string) string {
	admin, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlAdmin, err := admin.DB()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := "channelsapi_test_" + hex.EncodeToString(b)
	if err := admin.Exec("CREATE SCHEMA " + name).Error; err != nil {
		_ = sqlAdmin.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := admin.Exec("DROP SCHEMA " + name + " CASCADE").Error; err != nil {
			t.Errorf("drop schema %s: %v", name, err)
		}
		_ = sqlAdmin.Close()
	})
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("search_path", name)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + name
}

// checkFilters fills db with random rows and compares random queries.
func checkFilters(t *testing.T, db *gorm.DB, seed uint64, nQueries int) {
	start := time.Now()
	ctx := context.Background()
	if err := db.AutoMigrate(&filterRow{}); err != nil {
		t.Fatal(err)
	}
	fold, err := caseFolding(db)
	if err != nil {
		t.Fatal(err)
	}
	precision := timePrecision(db)
	folding := "ASCII"
	if fold("ÀΣ") == "àσ" {
		folding = "Unicode"
	}
	t.Logf("%s: case folding %s, time precision %v", db.Dialector.Name(), folding, precision)

	m, err := newModel(db, reflect.TypeFor[filterRow](), nil)
	if err != nil {
		t.Fatal(err)
	}
	// A ViewSet declaring every field with every lookup its kind allows,
	// and search in every string field.
	filters := map[string][]string{}
	var search []string
	for _, f := range m.fields {
		k, _, _, ok := kindOf(f.gorm.FieldType)
		if !ok {
			t.Fatalf("field %s: kindOf does not support %s", f.json, f.gorm.FieldType)
		}
		for op := query.Exact; op <= query.Range; op++ {
			if query.Allowed(k).Has(op) {
				filters[f.json] = append(filters[f.json], op.String())
			}
		}
		if k == query.String {
			search = append(search, f.json)
		}
	}
	qs, err := newQueries(m, fold, precision, filters, nil, search)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs.schema.Fields) != len(m.fields) {
		t.Fatalf("%d filterable fields of %d", len(qs.schema.Fields), len(m.fields))
	}

	g := &filterGen{rng: mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), qs: qs}
	rows := make([]filterRow, filterRowCount)
	for i := range rows {
		rows[i] = g.row()
	}
	if err := db.CreateInBatches(rows, filterBatch).Error; err != nil {
		t.Fatal(err)
	}
	// The matcher judges rows as they come from the database, as events
	// carry them.
	var stored []filterRow
	if err := db.Order("id").Find(&stored).Error; err != nil {
		t.Fatal(err)
	}
	if len(stored) != filterRowCount {
		t.Fatalf("read back %d rows of %d", len(stored), filterRowCount)
	}
	index := make(map[uint]int, len(stored))
	for i := range stored {
		index[stored[i].ID] = i
	}
	g.learn(ctx, stored)
	loaded := time.Since(start)

	var comparisons, disagreements, selective, empty, full, rejected int
	inSQL := make([]bool, len(stored))
	for n := range nQueries {
		in := g.query(n)
		p, err := qs.parse(in)
		if err != nil {
			if g.mayReject {
				rejected++
			} else {
				t.Errorf("query %s is rejected: %v", describeParams(in), errorFields(err))
			}
			continue
		}
		var pks []uint
		if err := db.Model(&filterRow{}).Where(qs.where(db, p.q)).Pluck("id", &pks).Error; err != nil {
			t.Errorf("query %s: SQL error: %v", describeParams(in), err)
			continue
		}
		clear(inSQL)
		for _, pk := range pks {
			i, ok := index[pk]
			if !ok || inSQL[i] {
				t.Fatalf("query %s: SQL returns primary key %d, unknown or twice", describeParams(in), pk)
			}
			inSQL[i] = true
		}
		var bad []string
		matched := 0
		for i := range stored {
			mem := qs.schema.Match(p.q, qs.row(ctx, &stored[i]))
			comparisons++
			if mem {
				matched++
			}
			if mem != inSQL[i] {
				disagreements++
				bad = append(bad, fmt.Sprintf("row %s: SQL %v, matcher %v", g.describeRow(ctx, &stored[i], p.q), inSQL[i], mem))
			}
		}
		switch {
		case len(pks) == 0:
			empty++
		case len(pks) == len(stored):
			full++
		default:
			selective++
		}
		if len(bad) > 0 {
			const shown = 10
			n, more := len(bad), ""
			if n > shown {
				more = fmt.Sprintf("\n\t... and %d more rows", n-shown)
				bad = bad[:shown]
			}
			t.Errorf("query %s: SQL selects %d rows, the matcher %d; they disagree on %d rows:\n\t%s%s",
				describeParams(in), len(pks), matched, n, strings.Join(bad, "\n\t"), more)
		}
	}
	t.Logf("%s: %d (row, query) comparisons, %d disagreements; queries selecting some rows %d, none %d, all %d, rejected (a value beyond its type) %d; load %v, total %v",
		db.Dialector.Name(), comparisons, disagreements, selective, empty, full, rejected, loaded.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if disagreements != 0 {
		t.Errorf("%d disagreements between SQL and the matcher", disagreements)
	}
}

func errorFields(err error) any {
	if e, ok := err.(*Error); ok {
		return e.Fields
	}
	return err
}

func describeParams(in map[string]query.Param) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(in)) {
		if i > 0 {
			b.WriteString(" & ")
		}
		p := in[k]
		if p.List {
			fmt.Fprintf(&b, "%s=%q (list)", k, p.Vals)
		} else {
			fmt.Fprintf(&b, "%s=%q", k, p.Vals[0])
		}
	}
	return "{" + b.String() + "}"
}

// describeRow shows r's primary key and the values q looks at, as GORM
// read them.
func (g *filterGen) describeRow(ctx context.Context, r *filterRow, q *query.Query) string {
	fields := []int{g.qs.schema.Field("id")}
	for _, p := range q.Preds {
		fields = append(fields, p.Field)
	}
	if len(q.Terms) > 0 {
		fields = append(fields, q.SearchFields...)
	}
	slices.Sort(fields)
	v := reflect.ValueOf(r).Elem()
	var parts []string
	for _, f := range slices.Compact(fields) {
		parts = append(parts, g.qs.schema.Fields[f].Name+"="+showValue(g.qs.gorm[f].ReflectValueOf(ctx, v).Interface()))
	}
	return strings.Join(parts, " ")
}

func showValue(v any) string {
	switch x := v.(type) {
	case time.Time:
		return x.Format(time.RFC3339Nano)
	case *time.Time:
		if x == nil {
			return "NULL"
		}
		return x.Format(time.RFC3339Nano)
	case sql.NullTime:
		if !x.Valid {
			return "NULL"
		}
		return x.Time.Format(time.RFC3339Nano)
	case string:
		return strconv.Quote(x)
	case *string:
		if x == nil {
			return "NULL"
		}
		return strconv.Quote(*x)
	case sql.NullString:
		if !x.Valid {
			return "NULL"
		}
		return strconv.Quote(x.String)
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return "NULL"
		}
		return fmt.Sprint(rv.Elem().Interface())
	}
	if val, ok := v.(interface{ Value() (any, error) }); ok {
		dv, _ := val.Value()
		if dv == nil {
			return "NULL"
		}
		return fmt.Sprint(dv)
	}
	return fmt.Sprint(v)
}

// Pools of edge values.
var (
	filterStrings = []string{
		"", "abc", "ABC", "Abc", "Straße", "STRASSE", "strasse", "ß", "ẞ", "ÄÖÜ", "äöü", "Ä",
		"İstanbul", "istanbul", "ISTANBUL", "ı", "ΣΊΣΥΦΟΣ", "σίσυφος", "ς", "Σ",
		"K", "k", "\u212A", "ǅ", "Ǆ", "ǆ", "é", "e\u0301", "ﬀ", "日本語",
		"%", "_", `\`, "a%b", "a_b", `a\b`, "axb", "a", "b", "%%", `\%`, "_%",
		" ", "  ", "a b", " lead", "trail ", "\t", "\u00a0", "x,y", "'", `"`,
		"😀", "👍🏽", "🇩🇪",
	}
	filterFloats = []float64{
		0, math.Copysign(0, -1), 0.1, -0.1, 1e300, -1e300, 5e-324, -5e-324, 1e-300,
		1, -1, 0.5, 2.5, 0.30000000000000004, 1.0000000000000002, 123456.789,
		math.MaxFloat64, -math.MaxFloat64, float64(float32(0.1)),
	}
	filterFloat32s = []float32{
		0, float32(math.Copysign(0, -1)), 0.1, -0.1, 1, -1, 0.5, 0.3, 123.456, 16777216, 16777217,
		1.0000001, math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32, 1e-38, 3.4e38,
	}
	filterZones = []*time.Location{
		time.UTC, time.FixedZone("+05:30", 5*3600+1800), time.FixedZone("-08:00", -8*3600), time.FixedZone("+14:00", 14*3600),
	}
	filterInstants = []time.Time{
		time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1960, 6, 15, 12, 30, 0, 500000000, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 999999, time.UTC),
		time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1970, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 1000, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 999, time.UTC),
		time.Date(2020, 2, 29, 23, 59, 59, 999999999, time.UTC),
		time.Date(2020, 2, 29, 23, 59, 59, 999999000, time.UTC),
		time.Date(2020, 2, 29, 23, 59, 59, 999999500, time.UTC),
		time.Date(2020, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 6, 1, 12, 0, 0, 500000000, time.UTC),
		time.Date(2024, 6, 1, 12, 0, 0, 123456789, time.UTC),
		time.Date(2038, 1, 19, 3, 14, 7, 0, time.UTC),
		time.Date(2038, 1, 19, 3, 14, 8, 0, time.UTC),
		time.Date(2199, 12, 31, 23, 59, 59, 999999999, time.UTC),
	}
	filterTimeLayouts = []string{
		time.RFC3339Nano,
		"2006-01-02T15:04:05.999999999",
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999",
		"2006-01-02",
		time.RFC3339,
	}
)

// filterGen draws rows and queries.
type filterGen struct {
	rng *mrand.Rand
	qs  *queries
	// present holds the text of every non-NULL value of each field in the
	// stored rows, by field index; strs those of every string field.
	present [][]query.Value
	strs    []string
	combos  [][2]int // every (field, lookup), for the first predicate
	bits    []int    // of Int, Uint and Float fields, from their Go types
	byKind  map[query.Kind][]int
	// Values from the rows are often the target row's, so that the
	// predicates of a query often select it together.
	ctx    context.Context
	rows   []filterRow
	target int
	// mayReject is set when the query being drawn has a value beyond its
	// field's type, which the parser may answer 400.
	mayReject bool
}

// goBits is the size of a numeric Go type (of the value of a sql.Null*).
func goBits(t reflect.Type) int {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct {
		t = t.Field(0).Type
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return t.Bits()
	}
	return 0
}

func pick[T any](rng *mrand.Rand, s []T) T { return s[rng.IntN(len(s))] }

func (g *filterGen) chance(p float64) bool { return g.rng.Float64() < p }

func (g *filterGen) str() string {
	if g.chance(0.4) {
		return pick(g.rng, filterStrings)
	}
	n := 2 + g.rng.IntN(2)
	var b strings.Builder
	for range n {
		b.WriteString(pick(g.rng, filterStrings))
	}
	return b.String()
}

func (g *filterGen) int(bits int) int64 {
	lo, hi := int64(math.MinInt64)>>(64-bits), int64(math.MaxInt64)>>(64-bits)
	switch r := g.rng.IntN(10); {
	case r < 4:
		return pick(g.rng, []int64{lo, hi, 0, -1, 1, lo + 1, hi - 1})
	case r < 8:
		return g.rng.Int64N(11) - 5
	case bits == 64:
		return int64(g.rng.Uint64())
	default:
		return lo + int64(g.rng.Uint64N(uint64(hi-lo)+1))
	}
}

func (g *filterGen) uint(bits int) uint64 {
	hi := min(uint64(math.MaxUint64)>>(64-bits), math.MaxInt64)
	switch r := g.rng.IntN(10); {
	case r < 4:
		return pick(g.rng, []uint64{0, 1, hi, hi - 1})
	case r < 8:
		return g.rng.Uint64N(6)
	default:
		return g.rng.Uint64N(hi + 1)
	}
}

func (g *filterGen) float() float64 {
	if g.chance(0.8) {
		return pick(g.rng, filterFloats)
	}
	return (g.rng.Float64() - 0.5) * math.Pow(10, float64(g.rng.IntN(20)-10))
}

func (g *filterGen) float32() float32 {
	if g.chance(0.8) {
		return pick(g.rng, filterFloat32s)
	}
	return float32((g.rng.Float64() - 0.5) * math.Pow(10, float64(g.rng.IntN(20)-10)))
}

// time is an instant in one of the zones: often one of the pool, so that
// equal instants are written in different zones.
func (g *filterGen) time() time.Time {
	var t time.Time
	if g.chance(0.7) {
		t = pick(g.rng, filterInstants)
	} else {
		lo := time.Date(1900, 1, 2, 0, 0, 0, 0, time.UTC).Unix()
		hi := time.Date(2199, 12, 30, 0, 0, 0, 0, time.UTC).Unix()
		t = time.Unix(lo+g.rng.Int64N(hi-lo), pick(g.rng, []int64{0, 0, 500000000, 999999999, 999999, 1, g.rng.Int64N(1e9)}))
	}
	return t.In(pick(g.rng, filterZones))
}

func (g *filterGen) null() bool { return g.chance(0.2) }

func ptr[T any](v T) *T { return &v }

func (g *filterGen) row() filterRow {
	r := filterRow{
		S: g.str(), I: int(g.int(64)), I8: int8(g.int(8)), I16: int16(g.int(16)), I32: int32(g.int(32)), I64: g.int(64),
		U: uint(g.uint(64)), U8: uint8(g.uint(8)), U16: uint16(g.uint(16)), U32: uint32(g.uint(32)), U64: g.uint(64),
		F64: g.float(), F32: g.float32(), B: g.chance(0.5), T: g.time(),
	}
	if !g.null() {
		r.PS = ptr(g.str())
	}
	if !g.null() {
		r.NS = sql.NullString{String: g.str(), Valid: true}
	}
	if !g.null() {
		r.PI64 = ptr(g.int(64))
	}
	if !g.null() {
		r.NI64 = sql.NullInt64{Int64: g.int(64), Valid: true}
	}
	if !g.null() {
		r.NI32 = sql.NullInt32{Int32: int32(g.int(32)), Valid: true}
	}
	if !g.null() {
		r.NI16 = sql.NullInt16{Int16: int16(g.int(16)), Valid: true}
	}
	if !g.null() {
		r.PU32 = ptr(uint32(g.uint(32)))
	}
	if !g.null() {
		r.NByte = sql.NullByte{Byte: uint8(g.uint(8)), Valid: true}
	}
	if !g.null() {
		r.PF64 = ptr(g.float())
	}
	if !g.null() {
		r.NF64 = sql.NullFloat64{Float64: g.float(), Valid: true}
	}
	if !g.null() {
		r.PB = ptr(g.chance(0.5))
	}
	if !g.null() {
		r.NB = sql.NullBool{Bool: g.chance(0.5), Valid: true}
	}
	if !g.null() {
		r.PT = ptr(g.time())
	}
	if !g.null() {
		r.NT = sql.NullTime{Time: g.time(), Valid: true}
	}
	return r
}

// targetValue is field f of the target row.
func (g *filterGen) targetValue(f int) (query.Value, bool) {
	return g.qs.row(g.ctx, &g.rows[g.target]).Value(f)
}

// learn records the values of the stored rows, for queries to hit them.
func (g *filterGen) learn(ctx context.Context, rows []filterRow) {
	s := g.qs.schema
	g.ctx, g.rows = ctx, rows
	g.present = make([][]query.Value, len(s.Fields))
	for i := range rows {
		r := g.qs.row(ctx, &rows[i])
		for f := range s.Fields {
			if v, null := r.Value(f); !null {
				g.present[f] = append(g.present[f], v)
				if s.Fields[f].Kind == query.String {
					g.strs = append(g.strs, v.S)
				}
			}
		}
	}
	g.byKind = map[query.Kind][]int{}
	for f := range s.Fields {
		g.byKind[s.Fields[f].Kind] = append(g.byKind[s.Fields[f].Kind], f)
		g.bits = append(g.bits, goBits(g.qs.gorm[f].FieldType))
		for op := query.Exact; op <= query.Range; op++ {
			if query.Allowed(s.Fields[f].Kind).Has(op) {
				g.combos = append(g.combos, [2]int{f, int(op)})
			}
		}
	}
}

// query draws the n-th query: its first predicate cycles through every
// (field, lookup), one or two more are random, and some have a search.
func (g *filterGen) query(n int) map[string]query.Param {
	in := map[string]query.Param{}
	s := g.qs.schema
	g.mayReject = false
	g.target = g.rng.IntN(len(g.rows))
	c := g.combos[n%len(g.combos)]
	preds := 1 + g.rng.IntN(3)
	for i := range preds {
		f, op := c[0], query.Op(c[1])
		if i > 0 {
			// Strings and times, whose SQL is the least plain, more often.
			switch r := g.rng.Float64(); {
			case r < 0.4:
				f = pick(g.rng, g.byKind[query.String])
			case r < 0.6:
				f = pick(g.rng, g.byKind[query.Time])
			default:
				f = g.rng.IntN(len(s.Fields))
			}
			op = pick(g.rng, g.ops(s.Fields[f].Kind))
		}
		key := s.Fields[f].Name
		if op != query.Exact || g.chance(0.5) {
			key += "__" + op.String()
		}
		in[key] = g.param(f, op)
	}
	if g.chance(0.25) {
		terms := make([]string, 1+g.rng.IntN(3))
		for i := range terms {
			terms[i] = g.strValue(true)
		}
		in[query.KeySearch] = query.Param{Vals: []string{strings.Join(terms, pick(g.rng, []string{" ", ",", " , "}))}}
	}
	return in
}

func (g *filterGen) ops(k query.Kind) []query.Op {
	var ops []query.Op
	for op := query.Exact; op <= query.Range; op++ {
		if query.Allowed(k).Has(op) {
			ops = append(ops, op)
		}
	}
	return ops
}

// param is the value of f's lookup op, as a query string gives it (or,
// sometimes, as a JSON array).
func (g *filterGen) param(f int, op query.Op) query.Param {
	switch op {
	case query.IsNull:
		if !g.qs.nullable[f] && g.chance(0.5) {
			return query.Param{Vals: []string{pick(g.rng, []string{"false", "0"})}}
		}
		return query.Param{Vals: []string{pick(g.rng, []string{"true", "false", "1", "0", "True", " FALSE "})}}
	case query.In, query.Range:
		n := 2
		if op == query.In {
			n = g.rng.IntN(6)
		}
		vals := make([]string, n)
		list := n == 0 || g.chance(0.2)
		for i := range vals {
			vals[i] = g.value(f, op)
			if strings.Contains(vals[i], ",") {
				list = true
			}
		}
		if op == query.Range && g.chance(0.8) && g.less(f, vals[1], vals[0]) {
			vals[0], vals[1] = vals[1], vals[0] // mostly a range that is not empty
		}
		if list {
			return query.Param{Vals: vals, List: true}
		}
		return query.Param{Vals: []string{strings.Join(vals, ",")}}
	}
	return query.Param{Vals: []string{g.value(f, op)}}
}

// less reports whether text a is a value of f below text b.
func (g *filterGen) less(f int, a, b string) bool {
	va, _, msgA := g.qs.schema.Pred(f, query.Exact, query.Param{Vals: []string{a}})
	vb, _, msgB := g.qs.schema.Pred(f, query.Exact, query.Param{Vals: []string{b}})
	if msgA != "" || msgB != "" || len(va.Vals) == 0 || len(vb.Vals) == 0 {
		return false
	}
	x, y := va.Vals[0], vb.Vals[0]
	switch g.qs.schema.Fields[f].Kind {
	case query.String:
		return x.S < y.S
	case query.Int:
		return x.I < y.I
	case query.Uint:
		return x.U < y.U
	case query.Float:
		return x.F < y.F
	case query.Time:
		return x.T.Before(y.T)
	}
	return false
}

// value is the text of one value of field f for op: from the stored rows
// (so that equality hits) or their neighbours, or from the pools.
func (g *filterGen) value(f int, op query.Op) string {
	fd := g.qs.schema.Fields[f]
	bits := g.bits[f] // of the column's Go type, whatever the schema says
	var v query.Value
	fromRow := len(g.present[f]) > 0 && g.chance(0.6)
	if fromRow {
		v = pick(g.rng, g.present[f])
		if tv, null := g.targetValue(f); !null && g.chance(0.7) {
			v = tv
		}
	}
	switch fd.Kind {
	case query.String:
		if fromRow {
			switch op {
			case query.Contains, query.IContains, query.StartsWith, query.IStartsWith:
				return g.caseVariant(substring(g.rng, v.S, op == query.StartsWith || op == query.IStartsWith))
			}
			return g.caseVariant(v.S)
		}
		return g.strValue(false)
	case query.Int:
		lo, hi := int64(math.MinInt64)>>(64-bits), int64(math.MaxInt64)>>(64-bits)
		if g.chance(0.03) { // beyond the column's type: a 400, or no row
			g.mayReject = true
			if bits == 64 {
				return pick(g.rng, []string{"9223372036854775808", "-9223372036854775809"})
			}
			return strconv.FormatInt(pick(g.rng, []int64{lo - 1, hi + 1, lo * 2, hi * 2}), 10)
		}
		n := g.int(bits)
		if fromRow {
			n = v.I
			if d := g.rng.IntN(3) - 1; (d < 0 && n > lo) || (d > 0 && n < hi) {
				n += int64(d)
			}
		}
		return fmt.Sprintf(pick(g.rng, []string{"%d", "%d", "%d", " %d ", "%+d"}), n)
	case query.Uint:
		hi := min(uint64(math.MaxUint64)>>(64-bits), math.MaxInt64)
		if g.chance(0.03) {
			g.mayReject = true
			return pick(g.rng, []string{"-1", strconv.FormatUint(hi+1, 10), strconv.FormatUint(hi*2+1, 10)})
		}
		n := g.uint(bits)
		if fromRow {
			n = v.U
			if d := g.rng.IntN(3) - 1; (d < 0 && n > 0) || (d > 0 && n < hi) {
				n = uint64(int64(n) + int64(d))
			}
		}
		return strconv.FormatUint(n, 10)
	case query.Float:
		x := g.float()
		if bits == 32 && math.Abs(x) > math.MaxFloat32 && g.chance(0.9) || g.chance(0.5) {
			x = float64(g.float32())
		}
		if bits == 32 && math.Abs(x) > math.MaxFloat32 {
			g.mayReject = true
		}
		if fromRow {
			x = v.F
			switch g.rng.IntN(4) {
			case 0:
				if bits == 32 {
					x = float64(math.Nextafter32(float32(x), float32(math.Inf(pick(g.rng, []int{1, -1})))))
				} else {
					x = math.Nextafter(x, math.Inf(pick(g.rng, []int{1, -1})))
				}
				if math.IsInf(x, 0) {
					x = v.F
				}
			}
		}
		textBits := 64 // the shortest text of a float32 is often shorter
		if bits == 32 && g.chance(0.5) {
			textBits = 32
		}
		return strconv.FormatFloat(x, pick(g.rng, []byte{'g', 'g', 'e', 'f'}), -1, textBits)
	case query.Bool:
		return pick(g.rng, []string{"true", "false", "1", "0", "TRUE", " False"})
	case query.Time:
		t := g.time()
		if fromRow {
			t = v.T
			t = t.Add(pick(g.rng, []time.Duration{0, 0, 0, 1, -1, time.Microsecond, -time.Microsecond, 500, time.Second, -time.Second}))
		}
		layout := pick(g.rng, filterTimeLayouts)
		if strings.Contains(layout, "07") {
			t = t.In(pick(g.rng, filterZones))
		} else {
			t = t.UTC()
		}
		return t.Format(layout)
	}
	panic("kind")
}

// strValue is a string from the pools or from the stored rows; a search
// term is often a piece of one.
func (g *filterGen) strValue(term bool) string {
	if len(g.strs) > 0 && g.chance(0.5) {
		s := pick(g.rng, g.strs)
		if tv, null := g.targetValue(pick(g.rng, g.byKind[query.String])); !null && g.chance(0.7) {
			s = tv.S
		}
		if term {
			s = substring(g.rng, s, false)
		}
		return g.caseVariant(s)
	}
	return g.str()
}

// caseVariant returns s, or s in upper or lower case, in ASCII or in
// Unicode.
func (g *filterGen) caseVariant(s string) string {
	switch g.rng.IntN(6) {
	case 0:
		return strings.ToUpper(s)
	case 1:
		return strings.ToLower(s)
	case 2:
		return foldASCII(s)
	}
	return s
}

// substring returns a piece of s cut at rune boundaries: a prefix when
// prefix is true.
func substring(rng *mrand.Rand, s string, prefix bool) string {
	n := utf8.RuneCountInString(s)
	if n == 0 {
		return s
	}
	runes := []rune(s)
	i := 0
	if !prefix {
		i = rng.IntN(n)
	}
	j := i + 1 + rng.IntN(n-i)
	return string(runes[i:j])
}
