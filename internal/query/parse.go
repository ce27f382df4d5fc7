package query

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits against abuse; beyond them a query is answered 400.
const (
	MaxFilters     = 20   // filter keys in one query
	MaxValues      = 100  // values of one in
	MaxTerms       = 10   // search terms
	MaxValueLength = 1024 // bytes of one value
)

// Param is the value of one key: the text of a query-string parameter or
// of a JSON scalar, or the elements of a JSON array (List).
type Param struct {
	Vals []string
	List bool // given as a list: its elements are not split on commas
}

// Declared is what clients may query: the lookups of each field (by index
// in Schema.Fields; a field absent or with no lookups cannot be filtered),
// the fields they may order by, and the fields search looks in.
type Declared struct {
	Lookups  map[int]Ops
	Ordering []int
	Search   []int
}

// Order is one key of an ordering.
type Order struct {
	Field int
	Desc  bool
}

// Errors are messages per key, in the shape of a validation error.
type Errors map[string][]string

func (e Errors) add(key, msg string) { e[key] = append(e[key], msg) }

// Messages of the errors (Django REST Framework's wording where it has one).
const (
	MsgUnknownFilter = "Unknown filter."
	msgNumber        = "Enter a number."
	msgTime          = "Enter a valid date/time."
	msgBool          = "Must be a valid boolean."
	msgNull          = "Null characters are not allowed."
	msgInvalid       = "Enter a valid value."
	msgSingle        = "Enter a single value."
	msgRange         = "Enter two values."
)

// The keys of ordering and search.
const (
	KeyOrdering = "ordering"
	KeySearch   = "search"
)

// Parse reads a client's query: every key of in is a filter
// ("<field>" or "<field>__<lookup>"), "ordering" or "search". Keys that d
// does not declare are errors. An empty value means the key is not given,
// as in django-filter.
func (s *Schema) Parse(in map[string]Param, d *Declared) (*Query, []Order, Errors) {
	q := &Query{}
	var order []Order
	errs := Errors{}
	filters := 0
	for _, key := range slices.Sorted(maps.Keys(in)) {
		p := in[key]
		switch key {
		case KeyOrdering:
			order = s.parseOrdering(p, d, errs)
			continue
		case KeySearch:
			s.parseSearch(q, p, d, errs)
			continue
		}
		field, op, ok := s.lookup(key)
		if !ok || !d.Lookups[field].Has(op) {
			errs.add(key, MsgUnknownFilter)
			continue
		}
		if filters++; filters > MaxFilters {
			errs.add(key, "Too many filters: at most "+strconv.Itoa(MaxFilters)+" may be given.")
			continue
		}
		pred, given, msg := s.Pred(field, op, p)
		switch {
		case msg != "":
			errs.add(key, msg)
		case given:
			q.Preds = append(q.Preds, pred)
		}
	}
	if len(errs) > 0 {
		return nil, nil, errs
	}
	return q, order, nil
}

// lookup splits "<field>__<lookup>"; a key without a lookup is exact.
func (s *Schema) lookup(key string) (field int, op Op, ok bool) {
	name, opName, found := strings.Cut(key, "__")
	op = Exact
	if found {
		if op, ok = ParseOp(opName); !ok {
			return 0, 0, false
		}
	}
	field = s.Field(name)
	return field, op, field >= 0
}

// Field returns the index of the field named name, or -1.
func (s *Schema) Field(name string) int {
	for i := range s.Fields {
		if s.Fields[i].Name == name {
			return i
		}
	}
	return -1
}

func (s *Schema) parseOrdering(p Param, d *Declared, errs Errors) []Order {
	var order []Order
	for _, part := range p.values(true) {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, desc := strings.CutPrefix(part, "-")
		f := s.Field(name)
		if f < 0 || !slices.Contains(d.Ordering, f) {
			errs.add(KeyOrdering, "Unknown ordering field "+strconv.Quote(name)+".")
			continue
		}
		order = append(order, Order{Field: f, Desc: desc})
	}
	return order
}

// Terms splits a search into its terms as Django REST Framework does: on
// white space and commas, without null characters.
func Terms(search string) []string {
	search = strings.ReplaceAll(search, "\x00", "")
	return strings.Fields(strings.ReplaceAll(search, ",", " "))
}

func (s *Schema) parseSearch(q *Query, p Param, d *Declared, errs Errors) {
	text := strings.Join(p.values(false), " ")
	terms := Terms(text)
	switch {
	case len(terms) == 0:
		return
	case len(d.Search) == 0:
		errs.add(KeySearch, MsgUnknownFilter)
	case !utf8.ValidString(text):
		errs.add(KeySearch, msgInvalid)
	case len(terms) > MaxTerms:
		errs.add(KeySearch, "Enter at most "+strconv.Itoa(MaxTerms)+" search terms.")
	default:
		q.SearchFields, q.Terms = slices.Clone(d.Search), terms
	}
}

// values returns p's values; a single text is split on commas when split.
func (p Param) values(split bool) []string {
	if p.List || len(p.Vals) == 0 {
		return p.Vals
	}
	last := p.Vals[len(p.Vals)-1] // a repeated query parameter: the last one, as Django reads it
	if split {
		return strings.Split(last, ",")
	}
	return []string{last}
}

// Pred parses the predicate field op p. given is false when p is empty (the
// filter is not applied); msg is the error for a bad value.
func (s *Schema) Pred(field int, op Op, p Param) (pred Pred, given bool, msg string) {
	pred = Pred{Field: field, Op: op}
	f := s.Fields[field]
	switch op {
	case In, Range:
		vals := p.values(true)
		if !p.List && len(vals) == 1 && vals[0] == "" {
			return pred, false, ""
		}
		if op == Range && len(vals) != 2 {
			return pred, false, msgRange
		}
		if len(vals) > MaxValues {
			return pred, false, "Enter at most " + strconv.Itoa(MaxValues) + " values."
		}
		for _, text := range vals {
			v, msg := s.parse(f, text)
			if msg != "" {
				return pred, false, msg
			}
			pred.Vals = append(pred.Vals, v)
		}
		return pred, true, ""
	}
	if p.List {
		return pred, false, msgSingle
	}
	vals := p.values(false)
	if len(vals) == 0 || vals[0] == "" {
		return pred, false, ""
	}
	var v Value
	if op == IsNull {
		b, ok := parseBool(vals[0])
		if !ok {
			return pred, false, msgBool
		}
		v.B = b
	} else {
		var msg string
		if v, msg = s.parse(f, vals[0]); msg != "" {
			return pred, false, msg
		}
	}
	pred.Vals = []Value{v}
	return pred, true, ""
}

// parse reads one value of f from its text.
func (s *Schema) parse(f Field, text string) (Value, string) {
	var v Value
	if len(text) > MaxValueLength {
		return v, "Ensure this value has at most " + strconv.Itoa(MaxValueLength) + " characters."
	}
	switch f.Kind {
	case String:
		switch {
		case strings.IndexByte(text, 0) >= 0:
			return v, msgNull
		case !utf8.ValidString(text):
			return v, msgInvalid
		}
		v.S = text
	case Int:
		n, err := strconv.ParseInt(strings.TrimSpace(text), 10, 64)
		if err != nil {
			return v, msgNumber
		}
		lo, hi := int64(math.MinInt64)>>(64-f.bits()), int64(math.MaxInt64)>>(64-f.bits())
		if msg := bounds(n < lo, n > hi, strconv.FormatInt(lo, 10), strconv.FormatInt(hi, 10)); msg != "" {
			return v, msg
		}
		v.I = n
	case Uint:
		t := strings.TrimSpace(text)
		if strings.HasPrefix(t, "-") {
			if _, err := strconv.ParseInt(t, 10, 64); err == nil {
				return v, bounds(true, false, "0", "")
			}
			return v, msgNumber
		}
		n, err := strconv.ParseUint(t, 10, 64)
		if err != nil {
			return v, msgNumber
		}
		// Databases hold signed 64-bit integers at most.
		hi := min(uint64(math.MaxUint64)>>(64-f.bits()), math.MaxInt64)
		if n > hi {
			return v, bounds(false, true, "0", strconv.FormatUint(hi, 10))
		}
		v.U = n
	case Float:
		x, err := strconv.ParseFloat(strings.TrimSpace(text), f.bits())
		if err != nil || math.IsInf(x, 0) || math.IsNaN(x) {
			return v, msgNumber
		}
		if f.bits() == 32 {
			x = float64(float32(x)) // as the database holds a 32-bit float
		}
		v.F = x
	case Bool:
		b, ok := parseBool(text)
		if !ok {
			return v, msgBool
		}
		v.B = b
	case Time:
		t, ok := parseTime(text)
		if !ok {
			return v, msgTime
		}
		v.T = s.truncate(t)
	}
	return v, ""
}

func (f Field) bits() int {
	if f.Bits == 0 {
		return 64
	}
	return f.Bits
}

func bounds(below, above bool, lo, hi string) string {
	switch {
	case below:
		return "Ensure this value is greater than or equal to " + lo + "."
	case above:
		return "Ensure this value is less than or equal to " + hi + "."
	}
	return ""
}

func parseBool(text string) (bool, bool) {
	switch strings.ToLower(strings.TrimSpace(text)) {
	case "true", "1":
		return true, true
	case "false", "0":
		return false, true
	}
	return false, false
}

// timeLayouts are the forms a time may be written in; without a zone it
// is UTC.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02",
}

func parseTime(text string) (time.Time, bool) {
	text = strings.TrimSpace(text)
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, text); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}
