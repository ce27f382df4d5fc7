package channelsapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// ViewSet serves the GORM model T as one stream: the built-in actions of
// PROTOCOL.md (create, retrieve, update, patch, delete, list and the
// subscription actions) plus custom Actions, on the WebSocket and over REST.
// The zero value of every field is valid; add it with Add.
type ViewSet[T any] struct {
	// Stream names the resource on the socket and is its REST path segment.
	// Empty means the model's table name (for example "questions").
	Stream string
	// Label is the "model" of channels-api events. Empty means the lower-case
	// "<package>.<type>", for example "main.question".
	Label string
	// Scope narrows every query of this ViewSet for a request (retrieve,
	// list, and the lookup before update, patch, delete and detail actions),
	// for example to the rows a user owns. Nil means every row.
	Scope func(r *Request, db *gorm.DB) *gorm.DB
	// Ordering is the ORDER BY of list, written by the developer (never taken
	// from clients), for example "pub_date desc, id". Empty means primary key
	// order.
	Ordering string
	// PageSize is the default list page size; 0 means the API default (25).
	PageSize int
	// MaxPageSize caps page_size; 0 means the API default (100).
	MaxPageSize int
	// ReadOnly refuses create, update, patch and delete with 400 "Invalid Action".
	ReadOnly bool
	// ReadOnlyFields lists JSON keys clients may not write, in addition to the
	// primary key, CreatedAt, UpdatedAt, DeletedAt and `json:"-"` fields.
	ReadOnlyFields []string
	// Permission is asked before every action, before the action is even
	// looked up. It returns nil to allow, ErrPermissionDenied (401 for an
	// anonymous request, 403 otherwise), ErrNotAuthenticated (401) or an
	// *Error. Nil allows everything.
	Permission func(ctx context.Context, r *Request) error
	// Actions are custom actions by name, served on the WebSocket as actions
	// and over REST under the stream's path.
	Actions map[string]Action[T]
}

// Action is a custom action. A list action (Detail false) runs without an
// object and its handler receives a nil obj; a detail action looks its object
// up first (404 if missing, within Scope).
type Action[T any] struct {
	Detail bool
	// Method is the HTTP method of its REST route; empty means GET.
	// REST paths: list actions /<stream>/<name>, detail actions /<stream>/:pk/<name>.
	Method string
	// Handle returns the reply's data and status (0 means 200).
	Handle func(ctx context.Context, r *Request, obj *T) (data any, status int, err error)
}

// The built-in actions.
const (
	actionCreate              = "create"
	actionRetrieve            = "retrieve"
	actionUpdate              = "update"
	actionPatch               = "patch"
	actionDelete              = "delete"
	actionList                = "list"
	actionSubscribe           = "subscribe"
	actionUnsubscribe         = "unsubscribe"
	actionSubscribeInstance   = "subscribe_instance"
	actionUnsubscribeInstance = "unsubscribe_instance"
)

var (
	builtinActions = []string{actionCreate, actionRetrieve, actionUpdate, actionPatch, actionDelete, actionList,
		actionSubscribe, actionUnsubscribe, actionSubscribeInstance, actionUnsubscribeInstance}
	nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

// result is the outcome of an action, rendered by each transport.
type result struct {
	status int
	data   any
	page   *pageMeta // list only
	err    error
}

// resource is what the API keeps of a ViewSet[T], without the type parameter.
type resource interface {
	name() string
	serve(ctx context.Context, req *Request, conn *conn) result
	model() *model
	label() string
	mountREST(api *API) error
	describe() streamSchema
}

// viewSet is an added ViewSet[T].
type viewSet[T any] struct {
	ViewSet[T]
	api *API
	m   *model
}

// Add serves vs on api. Add every ViewSet before the router starts serving.
// It returns an error for an invalid configuration: a stream already added,
// a model GORM cannot parse, a custom action named like a built-in.
func Add[T any](api *API, vs ViewSet[T]) error {
	typ := reflect.TypeFor[T]()
	if typ.Kind() != reflect.Struct {
		return fmt.Errorf("channelsapi: add %s: model must be a struct type", typ)
	}
	m, err := newModel(api.db, typ, vs.ReadOnlyFields)
	if err != nil {
		return fmt.Errorf("channelsapi: add %s: %w", typ, err)
	}
	if vs.Stream == "" {
		vs.Stream = m.schema.Table
	}
	if vs.Label == "" {
		pkg := typ.PkgPath()
		pkg = pkg[strings.LastIndex(pkg, "/")+1:]
		vs.Label = strings.ToLower(pkg + "." + typ.Name())
	}
	if vs.PageSize <= 0 {
		vs.PageSize = api.cfg.pageSize
	}
	if vs.MaxPageSize <= 0 {
		vs.MaxPageSize = max(api.cfg.maxPageSize, vs.PageSize)
	}
	if !nameRE.MatchString(vs.Stream) {
		return fmt.Errorf("channelsapi: add %s: invalid stream name %q", typ, vs.Stream)
	}
	for name, a := range vs.Actions {
		switch {
		case !nameRE.MatchString(name):
			return fmt.Errorf("channelsapi: add %s: invalid action name %q", vs.Stream, name)
		case isBuiltin(name):
			return fmt.Errorf("channelsapi: add %s: action %q is built in", vs.Stream, name)
		case a.Handle == nil:
			return fmt.Errorf("channelsapi: add %s: action %q has no Handle", vs.Stream, name)
		}
	}
	r := &viewSet[T]{ViewSet: vs, api: api, m: m}
	return api.add(r)
}

func isBuiltin(action string) bool {
	for _, a := range builtinActions {
		if a == action {
			return true
		}
	}
	return false
}

func (v *viewSet[T]) name() string  { return v.Stream }
func (v *viewSet[T]) model() *model { return v.m }
func (v *viewSet[T]) label() string { return v.Label }

// serve runs one action: permission first, then the action (PROTOCOL.md 6).
// conn is the WebSocket connection, nil on REST.
func (v *viewSet[T]) serve(ctx context.Context, req *Request, conn *conn) (res result) {
	if v.Permission != nil {
		if err := v.Permission(ctx, req); err != nil {
			return result{err: err}
		}
	}
	if present(req.rawPK) {
		req.PK, _ = v.m.parsePK(req.rawPK)
	}
	switch req.Action {
	case actionCreate, actionUpdate, actionPatch, actionDelete:
		if v.ReadOnly {
			return result{err: ErrInvalidAction}
		}
	}
	switch req.Action {
	case actionCreate:
		return v.create(ctx, req)
	case actionRetrieve:
		obj, err := v.lookup(v.query(ctx, req), req)
		return result{status: http.StatusOK, data: obj, err: err}
	case actionUpdate, actionPatch:
		w := writePatch
		if req.Action == actionUpdate {
			w = writeUpdate
		}
		return v.update(ctx, req, w)
	case actionDelete:
		return v.delete(ctx, req)
	case actionList:
		return v.list(ctx, req)
	case actionSubscribe, actionUnsubscribe, actionSubscribeInstance, actionUnsubscribeInstance:
		if conn == nil {
			return result{err: ErrInvalidAction}
		}
		return v.subscription(ctx, req, conn)
	}
	a, ok := v.Actions[req.Action]
	if !ok {
		return result{err: ErrInvalidAction}
	}
	var obj *T
	if a.Detail {
		var err error
		if obj, err = v.lookup(v.query(ctx, req), req); err != nil {
			return result{err: err}
		}
	}
	data, status, err := a.Handle(ctx, req, obj)
	if status == 0 {
		status = http.StatusOK
	}
	return result{status: status, data: data, err: err}
}

// query is the ViewSet's scoped query for req.
func (v *viewSet[T]) query(ctx context.Context, req *Request) *gorm.DB {
	return v.scoped(v.api.db.WithContext(ctx), req)
}

func (v *viewSet[T]) scoped(db *gorm.DB, req *Request) *gorm.DB {
	db = db.Model(new(T))
	if v.Scope != nil {
		db = v.Scope(req, db)
	}
	return db
}

// lookup loads the object req.PK names. The key is compared to the primary
// key column only, as a bound value.
func (v *viewSet[T]) lookup(db *gorm.DB, req *Request) (*T, error) {
	if req.PK == nil {
		return nil, ErrNotFound
	}
	obj := new(T)
	err := db.Where(clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: v.m.pk.DBName}, Value: req.PK}).Take(obj).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("retrieve %s %v: %w", v.Stream, req.PK, err)
	}
	return obj, nil
}

func (v *viewSet[T]) create(ctx context.Context, req *Request) result {
	obj := new(T)
	if _, err := v.m.assign(ctx, reflect.ValueOf(obj).Elem(), req.Data, writeCreate); err != nil {
		return result{err: err}
	}
	if err := v.m.validate(obj); err != nil {
		return result{err: err}
	}
	err := v.api.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		return tx.Create(obj).Error
	})
	if err != nil {
		return result{err: fmt.Errorf("create %s: %w", v.Stream, err)}
	}
	return result{status: http.StatusCreated, data: obj}
}

// update applies req.Data to the object: all writable fields that are
// required must be present for a full update, only the given ones are
// written for a patch. The merged object is validated as a whole.
func (v *viewSet[T]) update(ctx context.Context, req *Request, w write) result {
	var obj *T
	err := v.api.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var err error
		if obj, err = v.lookup(v.scoped(tx, req), req); err != nil {
			return err
		}
		columns, err := v.m.assign(ctx, reflect.ValueOf(obj).Elem(), req.Data, w)
		if err != nil {
			return err
		}
		if err := v.m.validate(obj); err != nil {
			return err
		}
		columns = append(columns, v.m.updated...)
		if len(columns) == 0 {
			return nil
		}
		return tx.Model(obj).Select(columns).Updates(obj).Error
	})
	if err != nil {
		return result{err: wrapDB("update", v.Stream, err)}
	}
	return result{status: http.StatusOK, data: obj}
}

func (v *viewSet[T]) delete(ctx context.Context, req *Request) result {
	err := v.api.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		obj, err := v.lookup(v.scoped(tx, req), req)
		if err != nil {
			return err
		}
		return tx.Delete(obj).Error
	})
	if err != nil {
		return result{err: wrapDB("delete", v.Stream, err)}
	}
	return result{status: http.StatusOK, data: struct{}{}}
}

func (v *viewSet[T]) list(ctx context.Context, req *Request) result {
	q, err := listQuery(req.Data)
	if err != nil {
		return result{err: err}
	}
	page, size, err := q.resolve(v.PageSize, v.MaxPageSize)
	if err != nil {
		return result{err: err}
	}
	base := v.query(ctx, req).Session(&gorm.Session{})
	var count int64
	if err := base.Count(&count).Error; err != nil {
		return result{err: fmt.Errorf("count %s: %w", v.Stream, err)}
	}
	pages := numPages(count, size)
	if page > pages {
		return result{err: errInvalidPage}
	}
	ordered := base
	if v.Ordering != "" {
		ordered = ordered.Order(v.Ordering)
	} else {
		ordered = ordered.Order(clause.OrderByColumn{Column: clause.Column{Table: clause.CurrentTable, Name: v.m.pk.DBName}})
	}
	objs := make([]T, 0, size)
	if err := ordered.Limit(size).Offset((page - 1) * size).Find(&objs).Error; err != nil {
		return result{err: fmt.Errorf("list %s: %w", v.Stream, err)}
	}
	return result{status: http.StatusOK, data: objs, page: &pageMeta{Count: count, Page: page, PageSize: size, NumPages: pages}}
}

// wrapDB adds context to a database error, leaving errors meant for the
// client (not found, validation) recognisable by translate.
func wrapDB(op, stream string, err error) error {
	var e *Error
	if errors.As(err, &e) || errors.Is(err, ErrNotFound) {
		return err
	}
	return fmt.Errorf("%s %s: %w", op, stream, err)
}
