package channelsapi

import (
	"cmp"
	"encoding"
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"strings"

	"gorm.io/gorm/schema"

	"github.com/channelsapi/channelsapi/internal/query"
)

// streamSchema describes one added ViewSet: what a client may send on its
// stream and where its REST routes are. It is the one description the
// debugger page's schema (served only when WithDebugPage is given) and the
// documents of WithAPIDocs (apidoc.go) are built from.
type streamSchema struct {
	Name        string         `json:"name"`      // the stream
	Model       string         `json:"model"`     // the "model" label of its events
	RESTPath    string         `json:"rest_path"` // absolute path of its REST collection
	PK          string         `json:"pk"`        // JSON key of the primary key, "" if not serialized
	PKType      string         `json:"pk_type"`   // "integer" or "string"
	ReadOnly    bool           `json:"read_only"` // no create, update, patch or delete
	PageSize    int            `json:"page_size"`
	MaxPageSize int            `json:"max_page_size"`
	Fields      []fieldSchema  `json:"fields"`
	Actions     []actionSchema `json:"actions"`
	// Filters are the fields list and subscribe_list filter on, in the
	// order of Fields, with their lookups (PROTOCOL.md section 8); never
	// nil, empty when the ViewSet declares none.
	Filters []filterSchema `json:"filters"`
	// OrderingFields are the JSON names a list's "ordering" may use, as
	// declared; never nil, empty when clients may not order.
	OrderingFields []string `json:"ordering_fields"`
	// SearchFields are the fields "search" looks in, as declared; never
	// nil, empty when search is disabled.
	SearchFields []string `json:"search_fields"`
	// Relations are the declared Relations (relations.go), by name.
	Relations []relationSchema `json:"relations"`

	// model is the model, whose Go type the documents' JSON Schemas
	// are built from (apidoc_schema.go).
	model *model
}

// relationSchema describes one declared Relation.
type relationSchema struct {
	Name   string `json:"name"`
	Stream string `json:"stream"` // the related stream
	Expand bool   `json:"expand"` // clients may expand it
	Many   bool   `json:"many"`   // expanded as a list (has-many)
}

// filterSchema describes one filterable field: the keys "<name>" and
// "<name>__<lookup>".
type filterSchema struct {
	Name string `json:"name"`
	// Type is the JSON type of its values: "string", "integer", "number",
	// "boolean" or "datetime" (an RFC 3339 string). The values of in and
	// range are arrays of it; the value of isnull is a boolean.
	Type string `json:"type"`
	// Lookups are the declared lookups, in the order of PROTOCOL.md
	// section 8: "exact", "iexact", "in", "gt", "gte", "lt", "lte",
	// "contains", "icontains", "startswith", "istartswith", "isnull",
	// "range".
	Lookups []string `json:"lookups"`
}

// fieldSchema describes one JSON key of a serialized object.
type fieldSchema struct {
	Name string `json:"name"`
	// Type is one of "string", "integer", "number", "boolean", "datetime",
	// "object", "array" or "any" (a type with its own JSON encoding).
	Type     string `json:"type"`
	Nullable bool   `json:"nullable"` // null is a valid value
	// Required: a full update must send it (its binding tag has "required"
	// and clients may write it).
	Required bool `json:"required"`
	// ReadOnly: sent in objects, ignored in client data (PROTOCOL.md 4.5).
	ReadOnly bool `json:"read_only"`
	// Rules are the parts of its `binding` tag, for example
	// ["required", "max=200"]; never nil.
	Rules []string `json:"rules"`
	// Choices are the values its "oneof" rule allows, nil without one.
	Choices []string `json:"choices,omitempty"`
}

// actionSchema describes one action a stream serves.
type actionSchema struct {
	Name    string `json:"name"`
	Builtin bool   `json:"builtin"`
	// Detail: the action needs a pk (for subscribe and unsubscribe it is
	// optional, and Detail is false).
	Detail bool `json:"detail"`
	// Method and Path are its REST route, both empty for the subscription
	// actions, which exist on the WebSocket only. subscribe_list and
	// unsubscribe_list are listed only for a stream that takes live
	// queries (PROTOCOL.md section 9).
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
}

// schema describes the added ViewSets, sorted by stream name, for the
// debugger page (which adds the WebSocket path to it). It is safe to call
// while the API serves.
func (a *API) schema() any { return a.describeAll() }

// describeAll describes the added ViewSets, sorted by stream name.
func (a *API) describeAll() []streamSchema {
	streams := []streamSchema{}
	for _, r := range a.reg.all() {
		streams = append(streams, r.describe())
	}
	slices.SortFunc(streams, func(x, y streamSchema) int { return cmp.Compare(x.Name, y.Name) })
	return streams
}

// describe returns the schema of v.
func (v *viewSet[T]) describe() streamSchema {
	base := basePath(v.api.rest) + "/" + v.Stream
	s := streamSchema{
		Name:        v.Stream,
		Model:       v.Label,
		RESTPath:    base,
		PKType:      "string",
		ReadOnly:    v.ReadOnly,
		PageSize:    v.PageSize,
		MaxPageSize: v.MaxPageSize,
		Fields:      make([]fieldSchema, 0, len(v.m.fields)),
		model:       v.m,
	}
	s.Filters, s.OrderingFields, s.SearchFields = v.qs.queryable()
	s.Relations = make([]relationSchema, 0, len(v.rels))
	for _, r := range v.rels {
		many := r.rel != nil && r.rel.Type == schema.HasMany
		s.Relations = append(s.Relations, relationSchema{Name: r.name, Stream: r.stream, Expand: r.expand, Many: many})
	}
	if t := fieldType(v.m.pk.FieldType); t == "integer" {
		s.PKType = t
	}
	for _, f := range v.m.fields {
		if f.gorm == v.m.pk {
			s.PK = f.json
		}
		s.Fields = append(s.Fields, fieldSchema{
			Name:     f.json,
			Type:     fieldType(f.gorm.FieldType),
			Nullable: nullable(f.gorm.FieldType),
			Required: f.required && f.writable,
			ReadOnly: !f.writable,
			Rules:    rules(f.gorm.Tag.Get("binding")),
			Choices:  choices(f.gorm.Tag.Get("binding")),
		})
	}

	detail := base + "/:pk"
	builtin := func(name string, isDetail bool, method, path string) actionSchema {
		return actionSchema{Name: name, Builtin: true, Detail: isDetail, Method: method, Path: path}
	}
	s.Actions = append(s.Actions,
		builtin(actionList, false, http.MethodGet, base),
		builtin(actionRetrieve, true, http.MethodGet, detail))
	if !v.ReadOnly {
		s.Actions = append(s.Actions,
			builtin(actionCreate, false, http.MethodPost, base),
			builtin(actionUpdate, true, http.MethodPut, detail),
			builtin(actionPatch, true, http.MethodPatch, detail),
			builtin(actionDelete, true, http.MethodDelete, detail))
	}
	s.Actions = append(s.Actions,
		builtin(actionSubscribe, false, "", ""),
		builtin(actionUnsubscribe, false, "", ""),
		builtin(actionSubscribeInstance, true, "", ""),
		builtin(actionUnsubscribeInstance, true, "", ""))
	if v.stateful() {
		s.Actions = append(s.Actions,
			builtin(actionSubscribeList, false, "", ""),
			builtin(actionUnsubscribeList, false, "", ""))
	}

	custom := make([]actionSchema, 0, len(v.Actions))
	for name, act := range v.Actions {
		a := actionSchema{Name: name, Detail: act.Detail, Method: cmp.Or(act.Method, http.MethodGet), Path: base + "/" + name}
		if act.Detail {
			a.Path = detail + "/" + name
		}
		custom = append(custom, a)
	}
	slices.SortFunc(custom, func(x, y actionSchema) int { return cmp.Compare(x.Name, y.Name) })
	s.Actions = append(s.Actions, custom...)
	return s
}

// queryable returns what q lets clients query, for the schema: the
// filters, in the order of the model's fields, the ordering fields and the
// search fields.
func (q *queries) queryable() (filters []filterSchema, ordering, search []string) {
	filters, ordering, search = []filterSchema{}, []string{}, []string{}
	for f, field := range q.schema.Fields {
		ops := q.declared.Lookups[f]
		if ops == 0 {
			continue
		}
		fs := filterSchema{Name: field.Name, Type: kindType(field.Kind), Lookups: []string{}}
		for op := query.Exact; op <= query.Range; op++ {
			if ops.Has(op) {
				fs.Lookups = append(fs.Lookups, op.String())
			}
		}
		filters = append(filters, fs)
	}
	for _, f := range q.declared.Ordering {
		ordering = append(ordering, q.schema.Fields[f].Name)
	}
	for _, f := range q.declared.Search {
		search = append(search, q.schema.Fields[f].Name)
	}
	return filters, ordering, search
}

// kindType names the JSON type of the values of a field of kind k.
func kindType(k query.Kind) string {
	switch k {
	case query.Int, query.Uint:
		return "integer"
	case query.Float:
		return "number"
	case query.Bool:
		return "boolean"
	case query.Time:
		return "datetime"
	}
	return "string"
}

var (
	jsonMarshalerType = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

// fieldType names the JSON type of values of t, as encoding/json writes them.
func fieldType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == timeType || t == deletedAtType:
		return "datetime"
	case t.Implements(jsonMarshalerType) || reflect.PointerTo(t).Implements(jsonMarshalerType):
		return "any"
	case t.Implements(textMarshalerType) || reflect.PointerTo(t).Implements(textMarshalerType):
		return "string"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "string" // base64
		}
		return "array"
	case reflect.Array:
		return "array"
	case reflect.Struct, reflect.Map:
		return "object"
	}
	return "any"
}

// nullable reports whether encoding/json may write null for a value of t.
func nullable(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice:
		return true
	}
	return t == deletedAtType
}

// rules splits a binding tag into its rules.
func rules(tag string) []string {
	out := []string{}
	for r := range strings.SplitSeq(tag, ",") {
		if r = strings.TrimSpace(r); r != "" {
			out = append(out, r)
		}
	}
	return out
}
