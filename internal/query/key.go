package query

import (
	"slices"
	"strconv"
	"strings"
)

// And returns the conjunction of q and scope, whose predicates are marked
// as a scope's. scope may have no search terms.
func And(q, scope *Query) *Query {
	out := &Query{SearchFields: q.SearchFields, Terms: q.Terms}
	out.Preds = make([]Pred, 0, len(q.Preds)+len(scope.Preds))
	out.Preds = append(out.Preds, q.Preds...)
	for _, p := range scope.Preds {
		p.Scope = true
		out.Preds = append(out.Preds, p)
	}
	return out
}

// Key returns q's canonical text: queries with equal keys select the same
// rows, whatever the order their keys were given in.
func (s *Schema) Key(q *Query) string {
	preds := make([]string, len(q.Preds))
	for i, p := range q.Preds {
		var b strings.Builder
		b.WriteString(strconv.Itoa(p.Field))
		b.WriteByte(' ')
		b.WriteString(p.Op.String())
		vals := make([]string, len(p.Vals))
		for j, v := range p.Vals {
			if p.Op == IsNull {
				vals[j] = strconv.FormatBool(v.B)
			} else {
				vals[j] = Key(s.Fields[p.Field].Kind, v)
			}
		}
		if p.Op == In {
			slices.Sort(vals)
			vals = slices.Compact(vals)
		}
		for _, v := range vals {
			b.WriteByte(0)
			b.WriteString(strconv.Itoa(len(v)))
			b.WriteByte(':')
			b.WriteString(v)
		}
		preds[i] = b.String()
	}
	slices.Sort(preds)
	preds = slices.Compact(preds)
	var b strings.Builder
	for _, p := range preds {
		b.WriteString(p)
		b.WriteByte(1)
	}
	if len(q.Terms) > 0 {
		fields := slices.Clone(q.SearchFields)
		slices.Sort(fields)
		terms := make([]string, len(q.Terms))
		for i, t := range q.Terms {
			terms[i] = s.Fold(t)
		}
		slices.Sort(terms)
		b.WriteString("search")
		for _, f := range fields {
			b.WriteByte(' ')
			b.WriteString(strconv.Itoa(f))
		}
		for _, t := range slices.Compact(terms) {
			b.WriteByte(0)
			b.WriteString(strconv.Itoa(len(t)))
			b.WriteByte(':')
			b.WriteString(t)
		}
	}
	return b.String()
}

// Anchor returns an equality condition every row of q's set satisfies: the
// field and the keys (Key) of its values, so that an index on them finds
// the queries an event may concern. A scope's predicate is preferred (it
// usually tells users apart), an exact one over an in, and any over one on
// a boolean. ok is false when q has none.
func (s *Schema) Anchor(q *Query) (field int, keys []string, ok bool) {
	best, rank := -1, 0
	for i, p := range q.Preds {
		if p.Op != Exact && p.Op != In {
			continue
		}
		r := 1
		if p.Op == Exact {
			r += 1
		}
		if p.Scope {
			r += 2
		}
		if s.Fields[p.Field].Kind != Bool {
			r += 4
		}
		if r > rank {
			best, rank = i, r
		}
	}
	if best < 0 {
		return 0, nil, false
	}
	p := q.Preds[best]
	keys = make([]string, 0, len(p.Vals))
	for _, v := range p.Vals {
		keys = append(keys, Key(s.Fields[p.Field].Kind, v))
	}
	slices.Sort(keys)
	return p.Field, slices.Compact(keys), true
}
