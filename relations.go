package channelsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"
)

// Relation declares one relation of a ViewSet's model, in
// ViewSet.Relations under its JSON name: a relation field of the model
// (belongs-to, has-one or has-many; many-to-many is refused), or a foreign
// key field without one ("owner_id").
//
// The foreign key of a belongs-to relation, or the declared foreign key
// field, is checked on every create, update and patch that writes it: the
// row it names must be visible to the requesting user through the related
// ViewSet's Scope and ScopeFilter, else the write is a 400
// {"owner_id": ["Invalid pk \"99\" - object does not exist."]}.
//
// An expandable relation is rendered, when a client asks for it
// (?expand=owner on REST, "expand": ["owner"] in a WebSocket payload), as
// the related ViewSet renders its objects, and only those the related
// ViewSet's Permission (for retrieve, or list for has-many), Scope,
// ScopeFilter and ObjectPermission let the user see: a belongs-to or
// has-one relation is null otherwise, a has-many relation lists the
// visible ones. Events are never expanded.
type Relation struct {
	// Stream is the added ViewSet serving the related model. It may be
	// added after this one.
	Stream string
	// Expand lets clients expand the relation. Only a relation field can
	// be expanded.
	Expand bool
}

// keyExpand is the query key (REST) and payload key (WebSocket) naming the
// relations to expand.
const keyExpand = "expand"

// relation is a declared Relation resolved on the model.
type relation struct {
	name   string
	stream string
	expand bool
	rel    *schema.Relationship // nil for a bare foreign key
	// key is the model's foreign key field checked on writes (belongs-to
	// or a bare foreign key), or nil.
	key     *field
	related reflect.Type // the related model, nil for a bare foreign key
}

// resolveRelations checks the declared relations of m.
func resolveRelations(m *model, declared map[string]Relation) ([]*relation, error) {
	var out []*relation
	for _, name := range slices.Sorted(maps.Keys(declared)) {
		d := declared[name]
		r := &relation{name: name, stream: d.Stream, expand: d.Expand}
		if d.Stream == "" {
			return nil, fmt.Errorf("relation %q has no Stream", name)
		}
		rel, isRelation := m.relations[name]
		switch {
		case isRelation:
			if rel.Type == schema.Many2Many {
				return nil, fmt.Errorf("relation %q is many-to-many, which Relations does not support", name)
			}
			if len(rel.References) != 1 || rel.References[0].PrimaryKey == nil || rel.References[0].ForeignKey == nil {
				return nil, fmt.Errorf("relation %q must have exactly one foreign key", name)
			}
			ref := rel.References[0]
			r.rel, r.related = rel, rel.FieldSchema.ModelType
			switch rel.Type {
			case schema.BelongsTo:
				if !ref.PrimaryKey.PrimaryKey {
					return nil, fmt.Errorf("relation %q must reference the related model's primary key", name)
				}
				r.key = m.byGo[ref.ForeignKey.Name]
			case schema.HasOne, schema.HasMany:
				if ref.ForeignKey.DBName == "" {
					return nil, fmt.Errorf("relation %q has no foreign key column", name)
				}
			default:
				return nil, fmt.Errorf("relation %q: %s relations are not supported", name, rel.Type)
			}
		case m.byJSON[name] != nil:
			if d.Expand {
				return nil, fmt.Errorf("relation %q is a foreign key field: only a relation field can be expanded", name)
			}
			r.key = m.byJSON[name]
		default:
			return nil, fmt.Errorf("relation %q is neither a relation field nor a field of the model", name)
		}
		if r.key != nil && r.key.json == "" {
			r.key = nil // hidden from JSON: clients never write it
		}
		out = append(out, r)
	}
	return out, nil
}

// relatedTo returns the added ViewSet of r, checked to serve its model.
func (v *viewSet[T]) relatedTo(r *relation) (resource, error) {
	res, ok := v.api.reg.stream(r.stream)
	if !ok {
		return nil, fmt.Errorf("%s: relation %q: stream %q is not added", v.Stream, r.name, r.stream)
	}
	if r.related != nil && res.model().schema.ModelType != r.related {
		return nil, fmt.Errorf("%s: relation %q: stream %q serves %s, not %s", v.Stream, r.name, r.stream, res.model().schema.ModelType, r.related)
	}
	return res, nil
}

// relatedRequest is req as the related stream sees it.
func relatedRequest(req *Request, stream, action string, pk any) *Request {
	return &Request{Transport: req.Transport, Stream: stream, Action: action, Method: http.MethodGet,
		PK: pk, User: req.User, Header: req.Header}
}

// checkKeys checks the foreign keys of declared relations that the client
// wrote (columns) against the related ViewSets' scopes.
func (v *viewSet[T]) checkKeys(ctx context.Context, tx *gorm.DB, req *Request, obj reflect.Value, columns []string) error {
	errs := FieldErrors{}
	for _, r := range v.rels {
		if r.key == nil || !slices.Contains(columns, r.key.gorm.DBName) {
			continue
		}
		val := r.key.gorm.ReflectValueOf(ctx, obj)
		if val.Kind() == reflect.Pointer {
			if val.IsNil() {
				continue
			}
			val = val.Elem()
		}
		related, err := v.relatedTo(r)
		if err != nil {
			return err
		}
		pk := val.Interface()
		ok, err := related.referable(ctx, tx, relatedRequest(req, r.stream, actionRetrieve, pk), pk)
		if err != nil {
			return err
		}
		if !ok {
			errs[r.key.json] = []string{fmt.Sprintf("Invalid pk \"%s\" - object does not exist.", pkKey(pk))}
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// referable reports whether the row pk is within req's Scope and ScopeFilter.
// A scope that refuses the request sees nothing; its other errors are
// returned.
func (v *viewSet[T]) referable(ctx context.Context, db *gorm.DB, req *Request, pk any) (bool, error) {
	db, err := v.scoped(ctx, db, req)
	if err != nil {
		if denied(err) {
			return false, nil
		}
		return false, err
	}
	var n int64
	err = db.Where(clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: v.m.pk.DBName}, Value: pk}).Limit(1).Count(&n).Error
	if err != nil {
		return false, fmt.Errorf("check %s %v: %w", v.Stream, pk, err)
	}
	return n > 0, nil
}

// expansions reads the relations req asks to expand and checks that each
// is declared expandable.
func (v *viewSet[T]) expansions(req *Request) ([]*relation, error) {
	if req.expandErr != nil {
		return nil, req.expandErr
	}
	var out []*relation
	for _, name := range req.expand {
		i := slices.IndexFunc(v.rels, func(r *relation) bool { return r.name == name && r.expand })
		if i < 0 {
			return nil, FieldError(keyExpand, fmt.Sprintf("Unknown relation %q.", name))
		}
		if !slices.Contains(out, v.rels[i]) {
			out = append(out, v.rels[i])
		}
	}
	return out, nil
}

// expand renders data (a *T or a []T) with the relations rels expanded.
func (v *viewSet[T]) expand(ctx context.Context, req *Request, rels []*relation, data any) (any, error) {
	switch d := data.(type) {
	case *T:
		return v.expandOne(ctx, req, rels, d)
	case []T:
		out := make([]json.RawMessage, len(d))
		for i := range d {
			var err error
			if out[i], err = v.expandOne(ctx, req, rels, &d[i]); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return data, nil
}

// expandOne renders obj with rels expanded.
func (v *viewSet[T]) expandOne(ctx context.Context, req *Request, rels []*relation, obj *T) (json.RawMessage, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(b, &members); err != nil {
		return nil, fmt.Errorf("%s: expand: the model does not encode as a JSON object: %w", v.Stream, err)
	}
	rv := reflect.ValueOf(obj).Elem()
	for _, r := range rels {
		related, err := v.relatedTo(r)
		if err != nil {
			return nil, err
		}
		ref := r.rel.References[0]
		var val any
		if r.rel.Type == schema.BelongsTo {
			if pk, zero := ref.ForeignKey.ValueOf(ctx, rv); !zero {
				val, err = related.expandObject(ctx, relatedRequest(req, r.stream, actionRetrieve, pk))
			}
		} else {
			key, _ := ref.PrimaryKey.ValueOf(ctx, rv)
			action := actionRetrieve
			if r.rel.Type == schema.HasMany {
				action = actionList
			}
			val, err = related.expandWhere(ctx, relatedRequest(req, r.stream, action, nil), ref.ForeignKey.DBName, key, r.rel.Type == schema.HasMany)
		}
		if err != nil {
			return nil, err
		}
		if members[r.name], err = json.Marshal(val); err != nil {
			return nil, err
		}
	}
	return json.Marshal(members)
}

// denied reports whether err refuses the request rather than failing.
func denied(err error) bool {
	var e *Error
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrPermissionDenied) ||
		errors.Is(err, ErrNotAuthenticated) || errors.As(err, &e)
}

// expandObject is the object req.PK names as req's user may see it through
// this ViewSet (Permission, scopes, ObjectPermission), or nil.
func (v *viewSet[T]) expandObject(ctx context.Context, req *Request) (any, error) {
	if err := v.Permission(ctx, req); err != nil {
		return nil, nil
	}
	obj, err := v.find(ctx, v.api.db.WithContext(ctx), req)
	if err != nil {
		if denied(err) {
			return nil, nil
		}
		return nil, err
	}
	return obj, nil
}

// expandWhere is the rows whose column equals value that req's user may see
// through this ViewSet, in its order, at most its MaxPageSize: a list when
// many, else the first or nil.
func (v *viewSet[T]) expandWhere(ctx context.Context, req *Request, column string, value any, many bool) (any, error) {
	var none any
	if many {
		none = []T{}
	}
	if err := v.Permission(ctx, req); err != nil {
		return none, nil
	}
	db, err := v.scoped(ctx, v.api.db.WithContext(ctx), req)
	if err != nil {
		if denied(err) {
			return none, nil
		}
		return nil, err
	}
	db = db.Where(clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: column}, Value: value})
	var objs []T
	if err := v.qs.orderBy(db, nil, v.Ordering, v.m.pk.DBName).Limit(v.MaxPageSize).Find(&objs).Error; err != nil {
		return nil, fmt.Errorf("expand %s: %w", v.Stream, err)
	}
	visible := make([]T, 0, len(objs))
	for i := range objs {
		if v.ObjectPermission != nil {
			if err := v.ObjectPermission(ctx, req, &objs[i]); err != nil {
				if denied(err) {
					continue
				}
				return nil, err
			}
		}
		visible = append(visible, objs[i])
	}
	if many {
		return visible, nil
	}
	if len(visible) == 0 {
		return nil, nil
	}
	return &visible[0], nil
}

// readExpand reads the relations to expand: the REST query's "expand"
// (comma-separated, possibly repeated) or a WebSocket payload's "expand" (a
// list of names, or one comma-separated string).
func (r *Request) readExpand(values []string, raw json.RawMessage) {
	if present(raw) {
		var list []string
		if s, ok := jsonString(raw); ok {
			values = []string{s}
		} else if json.Unmarshal(raw, &list) == nil {
			values = list
		} else {
			r.expandErr = FieldError(keyExpand, "Expected a list of items.")
			return
		}
	}
	for _, v := range values {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				r.expand = append(r.expand, name)
			}
		}
	}
}
