package channelsapi

import (
	"bytes"
	"context"
	"encoding"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// field is one JSON-visible, database-backed field of a model.
type field struct {
	json     string        // key in client data and serialized objects
	gorm     *schema.Field // the GORM field behind it
	writable bool          // clients may set it (PROTOCOL.md 4.5)
	required bool          // its binding tag has "required"
}

// model describes a GORM model for the wire: which JSON keys exist, which
// can be written, and how its primary key is parsed.
type model struct {
	schema  *schema.Schema
	pk      *schema.Field
	fields  []*field
	byJSON  map[string]*field // exact JSON key -> field
	ignored map[string]bool   // lower-cased names of protected fields and keys
	byGo    map[string]*field // Go field name -> field, for validation errors
	updated []string          // auto-update-time columns written on every update
	// relation holds the Go names of relation fields (a struct, pointer or
	// slice of a model GORM relates), which are not client input.
	relation map[string]bool
	// relations are the relations visible in JSON, by JSON name.
	relations map[string]*schema.Relationship
	// softDelete is the gorm.DeletedAt field, or nil.
	softDelete *schema.Field
	// version is the field of ViewSet.VersionField, or nil (etag.go).
	version *schema.Field
}

var deletedAtType = reflect.TypeFor[gorm.DeletedAt]()

// newModel parses T with db's naming strategy and schema cache.
func newModel(db *gorm.DB, typ reflect.Type, readOnly []string) (*model, error) {
	stmt := &gorm.Statement{DB: db}
	if err := stmt.Parse(reflect.New(typ).Interface()); err != nil {
		return nil, err
	}
	s := stmt.Schema
	if len(s.PrimaryFields) != 1 {
		return nil, fmt.Errorf("model %s must have exactly one primary key field, has %d", typ, len(s.PrimaryFields))
	}
	m := &model{
		schema:  s,
		pk:      s.PrioritizedPrimaryField,
		byJSON:  map[string]*field{},
		ignored: map[string]bool{},
		byGo:    map[string]*field{},

		relation:  map[string]bool{},
		relations: map[string]*schema.Relationship{},
	}
	for _, rel := range s.Relationships.Relations {
		if rel.Field == nil {
			continue
		}
		m.relation[rel.Field.Name] = true
		if name, visible := jsonName(rel.Field.StructField); visible {
			m.relations[name] = rel
		}
	}
	if m.pk == nil {
		m.pk = s.PrimaryFields[0]
	}
	if !pkSupported(m.pk.FieldType) {
		return nil, fmt.Errorf("model %s: primary key type %s is not supported (use an integer, a string or an encoding.TextUnmarshaler)", typ, m.pk.FieldType)
	}
	for _, gf := range s.Fields {
		if gf.FieldType == deletedAtType && gf.DBName != "" {
			m.softDelete = gf
		}
		name, visible := jsonName(gf.StructField)
		if gf.DBName == "" { // relations and ignored fields
			if visible {
				m.ignored[strings.ToLower(name)] = true
			}
			continue
		}
		if gf.AutoUpdateTime > 0 {
			m.updated = append(m.updated, gf.DBName)
		}
		f := &field{json: name, gorm: gf, required: hasRule(gf.Tag.Get("binding"), "required")}
		f.writable = visible && !gf.PrimaryKey && gf.AutoCreateTime == 0 && gf.AutoUpdateTime == 0 &&
			gf.FieldType != deletedAtType && (gf.Creatable || gf.Updatable) && !slices.Contains(readOnly, name)
		if !f.writable {
			for _, n := range []string{name, gf.Name, gf.DBName} {
				if n != "" { // name is "" for `json:"-"`; "" is no key of it
					m.ignored[strings.ToLower(n)] = true
				}
			}
		}
		m.byGo[gf.Name] = f
		if !visible {
			continue
		}
		m.fields = append(m.fields, f)
		m.byJSON[name] = f
	}
	for _, name := range readOnly {
		if _, ok := m.byJSON[name]; !ok {
			return nil, fmt.Errorf("model %s: read-only field %q is not a JSON field of the model", typ, name)
		}
	}
	return m, nil
}

// jsonName returns the key encoding/json uses for sf, and false for `json:"-"`.
func jsonName(sf reflect.StructField) (string, bool) {
	tag := sf.Tag.Get("json")
	if tag == "-" {
		return "", false
	}
	name, _, _ := strings.Cut(tag, ",")
	if name == "" {
		name = sf.Name
	}
	return name, true
}

func hasRule(tag, rule string) bool {
	for r := range strings.SplitSeq(tag, ",") {
		if r == rule {
			return true
		}
	}
	return false
}

var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

func pkSupported(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.String:
		return true
	}
	return reflect.PointerTo(t).Implements(textUnmarshalerType)
}

// parsePK parses a primary key sent as JSON (number or string) or as REST
// path text. It reports false for anything the key type cannot hold; the
// caller answers 404 and never queries anything but the key column.
func (m *model) parsePK(raw json.RawMessage) (any, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, false
	}
	var text string
	switch raw[0] {
	case '"':
		if json.Unmarshal(raw, &text) != nil {
			return nil, false
		}
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		text = string(raw)
	default:
		return nil, false
	}
	return m.parsePKText(text)
}

func (m *model) parsePKText(text string) (any, bool) {
	t := m.pk.FieldType
	v := reflect.New(t).Elem()
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(text, 10, t.Bits())
		if err != nil {
			return nil, false
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(text, 10, t.Bits())
		if err != nil {
			return nil, false
		}
		v.SetUint(n)
	case reflect.String:
		if text == "" {
			return nil, false
		}
		v.SetString(text)
	default:
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(text)); err != nil {
			return nil, false
		}
	}
	return v.Interface(), true
}

// pkKey is the canonical text of a primary key value, used to index
// subscriptions.
func pkKey(v any) string {
	if tm, ok := v.(encoding.TextMarshaler); ok {
		if b, err := tm.MarshalText(); err == nil {
			return string(b)
		}
	}
	return fmt.Sprint(v)
}

// pkOf returns the primary key of obj (a struct value).
func (m *model) pkOf(ctx context.Context, obj reflect.Value) (any, bool) {
	v, zero := m.pk.ValueOf(ctx, obj)
	return v, !zero
}

// write says what a client write is: a create, a full update or a patch.
type write int

const (
	writeCreate write = iota
	writeUpdate
	writePatch
)

// writableOn reports whether clients may set f in a write of kind w; GORM's
// create-only and update-only permissions (`gorm:"<-:create"`) are kept.
func (f *field) writableOn(w write) bool {
	if w == writeCreate {
		return f.writable && f.gorm.Creatable
	}
	return f.writable && f.gorm.Updatable
}

// assign writes the client's data onto obj (an addressable struct) and returns
// the columns it set. Protected keys are skipped, unknown keys and values of
// the wrong type are field errors. For a full update every required field
// must be present in data (PROTOCOL.md 4.3).
func (m *model) assign(ctx context.Context, obj reflect.Value, data json.RawMessage, w write) ([]string, error) {
	in, ok := jsonObject(data)
	if !ok && present(data) {
		return nil, FieldError("non_field_errors", "Invalid data. Expected a dictionary, but got "+jsonKind(bytes.TrimSpace(data))+".")
	}
	errs := map[string][]string{}
	var columns []string
	for _, key := range slices.Sorted(maps.Keys(in)) {
		f, ok := m.byJSON[key]
		switch {
		case ok && f.writableOn(w):
			if msg := setField(ctx, f, obj, in[key]); msg != "" {
				errs[key] = []string{msg}
				continue
			}
			columns = append(columns, f.gorm.DBName)
		case !ok && m.relations[key] != nil:
			// A relation is not client input. What a read shows of a
			// relation it did not expand (null, an empty list, the
			// zero value of a relation held by value) is accepted and
			// ignored, so that a read object can be written back.
			if present(in[key]) && !unexpanded(m.relations[key], in[key]) {
				errs[key] = []string{"This field is read-only."}
			}
		case ok || m.ignored[strings.ToLower(key)]:
			// read-only: ignored, never written
		default:
			errs[key] = []string{"Unknown field."}
		}
	}
	if w == writeUpdate {
		for _, f := range m.fields {
			if _, sent := in[f.json]; f.writableOn(w) && f.required && !sent {
				errs[f.json] = []string{"This field is required."}
			}
		}
	}
	if len(errs) > 0 {
		return nil, &Error{Fields: errs}
	}
	return columns, nil
}

// unexpanded reports whether raw is what a read shows of rel when it is not
// expanded: an empty list, or the zero value of rel's field as JSON.
func unexpanded(rel *schema.Relationship, raw json.RawMessage) bool {
	var got any
	if json.Unmarshal(raw, &got) != nil {
		return false
	}
	if list, ok := got.([]any); ok && len(list) == 0 {
		return true
	}
	zero, err := json.Marshal(reflect.Zero(rel.Field.FieldType).Interface())
	if err != nil {
		return false
	}
	var want any
	return json.Unmarshal(zero, &want) == nil && reflect.DeepEqual(got, want)
}

var jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// setField decodes raw into f of obj, returning a client message on failure.
// obj is left untouched when decoding fails.
func setField(ctx context.Context, f *field, obj reflect.Value, raw json.RawMessage) string {
	t := f.gorm.FieldType
	nv := reflect.New(t)
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		switch t.Kind() {
		case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice:
		default:
			if !nv.Type().Implements(jsonUnmarshalerType) {
				return "This field may not be null."
			}
		}
	}
	if err := json.Unmarshal(raw, nv.Interface()); err != nil {
		return typeMessage(t)
	}
	f.gorm.ReflectValueOf(ctx, obj).Set(nv.Elem())
	return ""
}

var timeType = reflect.TypeFor[time.Time]()

// typeMessage is the Django REST Framework message for a value of the wrong
// type, by the field's JSON type (fieldType).
func typeMessage(t reflect.Type) string {
	switch fieldType(t) {
	case "datetime":
		return "Datetime has wrong format. Use RFC 3339, e.g. 2006-01-02T15:04:05Z."
	case "string":
		return "Not a valid string."
	case "integer":
		return "A valid integer is required."
	case "number":
		return "A valid number is required."
	case "boolean":
		return "Must be a valid boolean."
	case "array":
		return "Expected a list of items."
	default:
		return "Invalid value."
	}
}

// jsonKind names the JSON type of raw for messages.
func jsonKind(raw []byte) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '[':
		return "list"
	case '"':
		return "str"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	case '{':
		return "invalid JSON"
	default:
		return "number"
	}
}

// changed returns the columns whose values differ between two versions of
// an object (structs of the model's type).
func (m *model) changed(ctx context.Context, before, after reflect.Value) []string {
	var columns []string
	for _, gf := range m.schema.Fields {
		if gf.DBName == "" || gf.PrimaryKey {
			continue
		}
		b, _ := gf.ValueOf(ctx, before)
		a, _ := gf.ValueOf(ctx, after)
		if !reflect.DeepEqual(a, b) {
			columns = append(columns, gf.DBName)
		}
	}
	return columns
}

// columns encodes the column values of obj (a *T of m, or nil) as a JSON
// object by column name: every column, also those the model's JSON hides,
// so that another instance can rebuild the row (decodeObject).
func (m *model) columns(obj any) (json.RawMessage, error) {
	if obj == nil {
		return nil, nil
	}
	rv := reflect.ValueOf(obj)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return nil, nil
	}
	rv = rv.Elem()
	values := make(map[string]any, len(m.schema.DBNames))
	for _, name := range m.schema.DBNames {
		values[name] = m.schema.FieldsByDBName[name].ReflectValueOf(context.Background(), rv).Interface()
	}
	return json.Marshal(values)
}

// decodeObject rebuilds a *T of m from its JSON and, when given, its column
// values (columns).
func (m *model) decodeObject(data, columns json.RawMessage) (any, error) {
	obj := reflect.New(m.schema.ModelType)
	if err := json.Unmarshal(data, obj.Interface()); err != nil {
		return nil, err
	}
	if len(columns) == 0 {
		return obj.Interface(), nil
	}
	var values map[string]json.RawMessage
	if err := json.Unmarshal(columns, &values); err != nil {
		return nil, err
	}
	for name, raw := range values {
		f, ok := m.schema.FieldsByDBName[name]
		if !ok {
			continue
		}
		dst := f.ReflectValueOf(context.Background(), obj.Elem())
		if err := json.Unmarshal(raw, dst.Addr().Interface()); err != nil {
			return nil, fmt.Errorf("column %s: %w", name, err)
		}
	}
	return obj.Interface(), nil
}

// deleted reports whether row (a struct of m) is soft-deleted.
func (m *model) deleted(ctx context.Context, row reflect.Value) bool {
	if m.softDelete == nil {
		return false
	}
	_, zero := m.softDelete.ValueOf(ctx, row)
	return !zero
}
