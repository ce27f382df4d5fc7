package channelsapi

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/channelsapi/channelsapi/internal/apispec"
)

// schemaSet builds the JSON Schemas of the models of the added ViewSets
// from their Go types, as encoding/json writes them, and their `binding`
// tags: the components both documents share. For a stream s it holds
// "s" (an object as the server sends it), "s.write" (the body of create
// and update) and "s.patch" (the body of patch); named struct types inside
// a model are components of their own, by type name.
type schemaSet struct {
	components map[string]*apispec.Schema
	named      map[reflect.Type]string
}

func newSchemaSet() *schemaSet {
	b := &schemaSet{components: map[string]*apispec.Schema{}, named: map[reflect.Type]string{}}
	for name, s := range wireSchemas() {
		b.components[name] = s
	}
	return b
}

// addStream adds the schemas of s's model.
func (b *schemaSet) addStream(s streamSchema) {
	m := s.model
	obj := b.structSchema(m.schema.ModelType, m)
	obj.Title = s.Name
	obj.PrimaryKey = s.PK // "" (left out) when the key is not serialized
	for _, r := range s.Relations {
		if fs := obj.Properties[r.Name]; r.Expand && fs != nil {
			// Expanded, it is what the related stream renders, or null
			// when the user may not see it.
			fs = orNull(fs)
			fs.Description = "Expanded (expand=" + r.Name + "): the " + r.Stream + " object, or null if it is not visible to the user; otherwise its zero value."
			obj.Properties[r.Name] = fs
		}
	}
	b.components[s.Name] = obj

	write := &apispec.Schema{Type: "object", Properties: map[string]*apispec.Schema{}}
	patch := &apispec.Schema{Type: "object", Properties: map[string]*apispec.Schema{}}
	for _, f := range m.fields {
		if !f.writable {
			continue
		}
		fs := b.inputSchema(f.gorm.FieldType, rules(f.gorm.Tag.Get("binding")))
		write.Properties[f.json], patch.Properties[f.json] = fs, fs
		if f.required {
			write.Required = append(write.Required, f.json)
		}
	}
	write.Title, patch.Title = s.Name+".write", s.Name+".patch"
	write.Description = "The fields of a create or update. Keys of read-only fields are ignored; any other key is 400 \"Unknown field.\"."
	patch.Description = "The fields a patch changes. Keys of read-only fields are ignored; any other key is 400 \"Unknown field.\"."
	b.components[s.Name+".write"], b.components[s.Name+".patch"] = write, patch
}

// typeSchema is the schema of the JSON encoding/json writes for a value of t.
func (b *schemaSet) typeSchema(t reflect.Type) *apispec.Schema {
	if t.Kind() == reflect.Pointer {
		return orNull(b.typeSchema(t.Elem()))
	}
	switch {
	case t == timeType:
		return &apispec.Schema{Type: "string", Format: "date-time"}
	case t == deletedAtType:
		return &apispec.Schema{Type: []string{"string", "null"}, Format: "date-time"}
	case t.Implements(jsonMarshalerType) || reflect.PointerTo(t).Implements(jsonMarshalerType):
		return &apispec.Schema{Description: "Any JSON value."} // a JSON column, or a type with its own encoding
	case t.Implements(textMarshalerType) || reflect.PointerTo(t).Implements(textMarshalerType):
		s := &apispec.Schema{Type: "string"}
		if strings.EqualFold(t.Name(), "uuid") {
			s.Format = "uuid"
		}
		return s
	}
	switch t.Kind() {
	case reflect.String:
		return &apispec.Schema{Type: "string"}
	case reflect.Bool:
		return &apispec.Schema{Type: "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return &apispec.Schema{Type: "integer"}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return &apispec.Schema{Type: "integer", Minimum: apispec.Float(0)}
	case reflect.Float32, reflect.Float64:
		return &apispec.Schema{Type: "number"}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 && !reflect.PointerTo(t.Elem()).Implements(jsonMarshalerType) {
			return &apispec.Schema{Type: []string{"string", "null"}, ContentEncoding: "base64"}
		}
		return &apispec.Schema{Type: []string{"array", "null"}, Items: b.typeSchema(t.Elem())}
	case reflect.Array:
		return &apispec.Schema{Type: "array", Items: b.typeSchema(t.Elem()), MinItems: apispec.Int(t.Len()), MaxItems: apispec.Int(t.Len())}
	case reflect.Map:
		return &apispec.Schema{Type: []string{"object", "null"}, AdditionalProperties: b.typeSchema(t.Elem())}
	case reflect.Struct:
		if t.Name() == "" {
			return b.structSchema(t, nil)
		}
		return apispec.Ref(b.component(t))
	}
	return &apispec.Schema{Description: "Any JSON value."}
}

// component returns the component name of the named struct type t,
// adding its schema on first use.
func (b *schemaSet) component(t reflect.Type) string {
	if name, ok := b.named[t]; ok {
		return name
	}
	name := t.Name()
	if i := strings.IndexByte(name, '['); i >= 0 { // a generic type
		name = name[:i]
	}
	for n := 2; b.components[name] != nil; n++ {
		name = fmt.Sprintf("%s%d", t.Name(), n)
	}
	b.named[t] = name
	b.components[name] = &apispec.Schema{} // taken while its fields refer to it
	b.components[name] = b.structSchema(t, nil)
	return name
}

// structSchema is the schema of a struct as encoding/json writes it. With
// m, t is m's model: the fields clients may not write are read-only.
func (b *schemaSet) structSchema(t reflect.Type, m *model) *apispec.Schema {
	s := &apispec.Schema{Type: "object", Properties: map[string]*apispec.Schema{}}
	for _, f := range jsonFields(t) {
		fs := b.typeSchema(f.typ)
		if f.quoted {
			fs = quotedSchema(fs)
		}
		if mf := m.field(f.name); mf != nil {
			if format := formatOf(rules(mf.gorm.Tag.Get("binding"))); format != "" && fs.Type == "string" && fs.Format == "" {
				fs.Format = format // an annotation, also of what clients do not write
			}
			if !mf.writable {
				fs = readOnly(fs)
			}
		}
		s.Properties[f.name] = fs
		if !f.omittable {
			s.Required = append(s.Required, f.name)
		}
	}
	return s
}

// field returns the field of m with JSON key name; nil when m is nil.
func (m *model) field(name string) *field {
	if m == nil {
		return nil
	}
	return m.byJSON[name]
}

// formatOf returns the JSON Schema format a binding rule names, "" if none.
func formatOf(rules []string) string {
	for _, r := range rules {
		switch name, _, _ := strings.Cut(r, "="); {
		case name == "email":
			return "email"
		case name == "url" || name == "uri" || name == "http_url":
			return "uri"
		case strings.HasPrefix(name, "uuid"):
			return "uuid"
		}
	}
	return ""
}

// readOnly marks s read-only; a $ref, which takes no siblings, is wrapped.
func readOnly(s *apispec.Schema) *apispec.Schema {
	if s.Ref != "" {
		return &apispec.Schema{AllOf: []*apispec.Schema{s}, ReadOnly: true}
	}
	s.ReadOnly = true
	return s
}

// orNull returns s that also allows null.
func orNull(s *apispec.Schema) *apispec.Schema {
	switch t := s.Type.(type) {
	case string:
		s.Type = []string{t, "null"}
		if s.Enum != nil {
			s.Enum = append(s.Enum, json.RawMessage("null"))
		}
		return s
	case []string:
		if !slices.Contains(t, "null") {
			s.Type = append(t, "null")
		}
		return s
	}
	if s.Ref == "" && len(s.AnyOf) == 0 && len(s.AllOf) == 0 && s.Const == nil {
		return s // any value
	}
	return &apispec.Schema{AnyOf: []*apispec.Schema{s, {Type: "null"}}}
}

// quotedSchema is the schema of a number or boolean written with the
// ",string" option: a string.
func quotedSchema(s *apispec.Schema) *apispec.Schema {
	switch s.Type {
	case "integer", "number", "boolean":
		return &apispec.Schema{Type: "string"}
	}
	return s
}

// jsonField is a key encoding/json writes for a struct.
type jsonField struct {
	name      string
	typ       reflect.Type
	index     []int
	tagged    bool
	quoted    bool // ",string"
	omittable bool // ",omitempty", ",omitzero", or inside a nil embedded pointer
}

// jsonFields returns the keys encoding/json writes for values of the
// struct type t, with its rules: embedded structs' fields promoted, the
// shallowest field of a name winning, a tagged one among equals, none if
// still ambiguous.
func jsonFields(t reflect.Type) []jsonField {
	type candidate struct {
		jsonField
		depth int
	}
	var all []candidate
	var walk func(t reflect.Type, index []int, omittable bool, depth int, seen map[reflect.Type]bool)
	walk = func(t reflect.Type, index []int, omittable bool, depth int, seen map[reflect.Type]bool) {
		if seen[t] {
			return
		}
		seen[t] = true
		defer delete(seen, t)
		for i := range t.NumField() {
			sf := t.Field(i)
			ft := sf.Type
			if sf.Anonymous {
				if ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if !sf.IsExported() && ft.Kind() != reflect.Struct {
					continue
				}
			} else if !sf.IsExported() {
				continue
			}
			tag := sf.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(slices.Clone(index), i)
			if name == "" && sf.Anonymous && ft.Kind() == reflect.Struct {
				walk(ft, idx, omittable || sf.Type.Kind() == reflect.Pointer, depth+1, seen)
				continue
			}
			if !sf.IsExported() {
				continue
			}
			f := jsonField{name: name, typ: sf.Type, index: idx, tagged: name != "", omittable: omittable}
			if name == "" {
				f.name = sf.Name
			}
			for o := range strings.SplitSeq(opts, ",") {
				switch o {
				case "omitempty", "omitzero":
					f.omittable = true
				case "string":
					f.quoted = true
				}
			}
			all = append(all, candidate{f, depth})
		}
	}
	walk(t, nil, false, 0, map[reflect.Type]bool{})

	var out []jsonField
	for i, c := range all {
		winner, ambiguous := c, false
		for j, o := range all {
			if j == i || o.name != c.name {
				continue
			}
			switch {
			case o.depth < winner.depth || (o.depth == winner.depth && o.tagged && !winner.tagged):
				winner, ambiguous = o, false
			case o.depth == winner.depth && o.tagged == winner.tagged:
				ambiguous = true
			}
		}
		if !ambiguous && slices.Equal(winner.index, c.index) {
			out = append(out, c.jsonField)
		}
	}
	return out
}

// inputSchema is the schema of a value clients write to a field of type t
// whose binding tag has rules: t's schema narrowed by them.
func (b *schemaSet) inputSchema(t reflect.Type, rules []string) *apispec.Schema {
	base := b.typeSchema(t)
	elem := t
	for elem.Kind() == reflect.Pointer {
		elem = elem.Elem()
	}
	c := &apispec.Schema{}
	omitempty, constrained := false, false
	length := elem.Kind() == reflect.String || elem.Kind() == reflect.Slice || elem.Kind() == reflect.Map || elem.Kind() == reflect.Array
	number := base.Type != nil && slices.ContainsFunc([]string{"integer", "number"}, func(k string) bool { return typeHas(base.Type, k) })
	lower := func(n float64, exclusive bool) {
		switch {
		case length && elem.Kind() == reflect.String:
			c.MinLength = apispec.Int(int(n) + btoi(exclusive))
		case length:
			c.MinItems = apispec.Int(int(n) + btoi(exclusive))
		case number && exclusive:
			c.ExclusiveMinimum = apispec.Float(n)
		case number:
			c.Minimum = apispec.Float(n)
		default:
			return
		}
		constrained = true
	}
	upper := func(n float64, exclusive bool) {
		switch {
		case length && elem.Kind() == reflect.String:
			c.MaxLength = apispec.Int(int(n) - btoi(exclusive))
		case length:
			c.MaxItems = apispec.Int(int(n) - btoi(exclusive))
		case number && exclusive:
			c.ExclusiveMaximum = apispec.Float(n)
		case number:
			c.Maximum = apispec.Float(n)
		default:
			return
		}
		constrained = true
	}
rules:
	for _, r := range rules {
		name, param, _ := strings.Cut(r, "=")
		n, numErr := strconv.ParseFloat(param, 64)
		switch {
		case name == "dive":
			break rules // the rest is about elements
		case name == "omitempty":
			omitempty = true
		case name == "required" && elem.Kind() == reflect.String && c.MinLength == nil:
			c.MinLength, constrained = apispec.Int(1), true
		case (name == "min" || name == "gte") && numErr == nil:
			lower(n, false)
		case name == "gt" && numErr == nil:
			lower(n, true)
		case (name == "max" || name == "lte") && numErr == nil:
			upper(n, false)
		case name == "lt" && numErr == nil:
			upper(n, true)
		case name == "len" && numErr == nil:
			lower(n, false)
			upper(n, false)
		case name == "oneof":
			if values := oneOf(param, number); values != nil {
				c.Enum, constrained = values, true
			}
		case formatOf([]string{name}) != "":
			c.Format, constrained = formatOf([]string{name}), true
		case name == "alphanum":
			c.Pattern, constrained = "^[a-zA-Z0-9]+$", true
		case name == "alpha":
			c.Pattern, constrained = "^[a-zA-Z]+$", true
		}
	}
	if !constrained {
		return base
	}
	if omitempty {
		// The rules hold for a value that is not the zero value.
		var zero *apispec.Schema
		switch {
		case t.Kind() == reflect.Pointer:
			zero = &apispec.Schema{Type: "null"}
		case elem.Kind() == reflect.String:
			zero = apispec.Const("")
		case number:
			zero = apispec.Const(0)
		case length:
			zero = &apispec.Schema{MaxItems: apispec.Int(0), MaxProperties: apispec.Int(0)}
		}
		if zero != nil {
			c = &apispec.Schema{AnyOf: []*apispec.Schema{zero, c}}
		}
	}
	if base.Ref != "" || len(base.AnyOf) > 0 {
		return &apispec.Schema{AllOf: []*apispec.Schema{base, c}}
	}
	if c.AnyOf != nil {
		base.AnyOf = c.AnyOf
		return base
	}
	merged := *c
	merged.Type, merged.ContentEncoding, merged.Items, merged.AdditionalProperties = base.Type, base.ContentEncoding, base.Items, base.AdditionalProperties
	if merged.Format == "" {
		merged.Format = base.Format
	}
	if merged.Minimum == nil {
		merged.Minimum = base.Minimum
	}
	if merged.Enum != nil && typeHas(base.Type, "null") {
		merged.Enum = append(merged.Enum, json.RawMessage("null"))
	}
	return &merged
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// typeHas reports whether a Schema's Type names k.
func typeHas(typ any, k string) bool {
	switch t := typ.(type) {
	case string:
		return t == k
	case []string:
		return slices.Contains(t, k)
	}
	return false
}

// oneOfRE splits the parameter of the "oneof" rule as the validator does:
// words, or 'quoted words'.
var oneOfRE = regexp.MustCompile(`'[^']*'|\S+`)

// choices returns the values of the "oneof" rule of a binding tag, nil
// without one.
func choices(tag string) []string {
	for _, r := range rules(tag) {
		if name, param, _ := strings.Cut(r, "="); name == "oneof" {
			var out []string
			for _, v := range oneOfRE.FindAllString(param, -1) {
				out = append(out, strings.Trim(v, "'"))
			}
			return out
		}
	}
	return nil
}

// oneOf returns the values of a "oneof" parameter for Schema.Enum, as
// numbers for a number field.
func oneOf(param string, number bool) []json.RawMessage {
	values := choices("oneof=" + param)
	if !number {
		return apispec.Enum(values...)
	}
	out := make([]json.RawMessage, 0, len(values))
	for _, v := range values {
		if _, err := strconv.ParseFloat(v, 64); err != nil {
			return nil
		}
		out = append(out, json.RawMessage(v))
	}
	return out
}
