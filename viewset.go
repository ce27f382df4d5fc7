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

	"github.com/channelsapi/channelsapi/internal/fanout"
	"github.com/channelsapi/channelsapi/internal/query"
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
	// for example to the rows a user owns. An error answers the request
	// (ErrNotAuthenticated, ErrPermissionDenied, an *Error). Nil means every
	// row. Events are judged by it on their own row values, with one query
	// per event (authorize.go); ScopeFilter needs none.
	Scope func(ctx context.Context, r *Request, db *gorm.DB) (*gorm.DB, error)
	// ScopeFilter narrows like Scope, declared in the filter grammar with
	// values taken from the request, for example
	// Filter{"owner_id": user.ID}. It is SQL for queries and is evaluated
	// in memory for events, so a stream guarded by it costs no query per
	// event. A nil Filter means every row; an error answers the request.
	// With Scope as well, a row must pass both. For events it is asked
	// once per connection, when it subscribes: it may depend on the
	// Request's user and headers only.
	ScopeFilter func(ctx context.Context, r *Request) (Filter, error)
	// Filters declares the fields clients may filter on (PROTOCOL.md
	// section 8), by JSON name, with their lookups: "exact", "iexact",
	// "in", "gt", "gte", "lt", "lte", "contains", "icontains",
	// "startswith", "istartswith", "isnull", "range", as the field's type
	// allows. A stream with filters takes live queries (subscribe_list,
	// section 9). Nil allows no filter: every filter key is a 400.
	Filters map[string][]string
	// OrderingFields are the JSON names a client's "ordering" may use.
	// Empty allows no client ordering.
	OrderingFields []string
	// SearchFields are the string fields "search" looks in (case
	// insensitive, every term in some field). Empty disables search.
	SearchFields []string
	// Ordering is the ORDER BY of list, written by the developer (never taken
	// from clients), for example "pub_date desc". It follows a client's
	// ordering, and the primary key follows it, so that pages are stable.
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
	// VersionField names an integer column (by JSON name, Go field name or
	// column name) that counts the updates of a row: every update
	// statement of the model through the registered *gorm.DB, made by the
	// API or by any other code, sets it to itself plus one, and the struct
	// updated gets the new value. Clients may not write it. The ETag of an
	// object is then "v<N>" (PROTOCOL.md section 11) and If-Match is checked
	// by the write statement itself. Empty means no version: the ETag is a
	// hash of the object's JSON, compared under a row lock. Every ViewSet
	// of one model must name the same field.
	VersionField string
	// Permission is asked before every action, before the action is even
	// looked up, and for every event a subscriber would receive. Nil means
	// the API's default (WithDefaultPermission), itself AllowAny unless set.
	Permission Permission
	// ObjectPermission is asked after an object is looked up (retrieve,
	// update, patch, delete, detail actions, subscribe_instance) and for
	// every event about an object, per recipient. A subscriber that could
	// see an object before an update and cannot after receives a delete
	// event for it. Nil allows every object the Scope lets through.
	ObjectPermission ObjectPermission[T]
	// Validate checks a create, update or patch as a whole, for rules
	// across fields: it runs inside the write's transaction, after the
	// `binding` rules and the foreign keys of Relations, before the
	// Before hooks, on both transports. A FieldErrors (or any error
	// Hooks may return) aborts the write with it; nil lets it through.
	Validate func(ctx context.Context, r *Request, obj *T) error
	// Relations declares the model's relations clients may expand, and the
	// foreign keys checked against the related ViewSet's scope, by JSON
	// name (relations.go).
	Relations map[string]Relation
	// Hooks run around the writes of the built-in actions, on both
	// transports.
	Hooks Hooks[T]
	// Actions are custom actions by name, served on the WebSocket as actions
	// and over REST under the stream's path.
	Actions map[string]Action[T]
}

// Hooks run inside the transaction of a create, update, patch or delete
// made through the API; tx is that transaction. A Before hook runs after
// validation and may modify obj (changed fields are written) or abort with
// an error that reaches the client, for example an *Error with status 400 or
// ErrPermissionDenied. An After hook runs after the statement; an error
// rolls the write back, so no event is published. Nil hooks are skipped.
type Hooks[T any] struct {
	BeforeCreate, AfterCreate func(ctx context.Context, tx *gorm.DB, r *Request, obj *T) error
	BeforeUpdate, AfterUpdate func(ctx context.Context, tx *gorm.DB, r *Request, obj *T) error
	BeforeDelete, AfterDelete func(ctx context.Context, tx *gorm.DB, r *Request, obj *T) error
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
	actionSubscribeList       = "subscribe_list"
	actionUnsubscribeList     = "unsubscribe_list"
)

var (
	builtinActions = []string{actionCreate, actionRetrieve, actionUpdate, actionPatch, actionDelete, actionList,
		actionSubscribe, actionUnsubscribe, actionSubscribeInstance, actionUnsubscribeInstance,
		actionSubscribeList, actionUnsubscribeList}
	nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

// result is the outcome of an action, rendered by each transport.
type result struct {
	status int
	data   any
	page   *pageMeta // list only
	etag   string    // the object's ETag (etag.go), for retrieve, create, update and patch
	// replayed is set on the stored reply of an idempotency key
	// (idempotency.go).
	replayed bool
	err      error
}

// resource is what the API keeps of a ViewSet[T], without the type parameter.
type resource interface {
	name() string
	serve(ctx context.Context, req *Request, conn *conn) result
	model() *model
	label() string
	mountREST(api *API) error
	guarded() bool
	stateful() bool
	queried() []string
	scoper
	authorize(ctx context.Context, ch change, ev *fanout.Event) (authorization, error)
	states(ctx context.Context, ch change) (before, after fanout.State)
	describe() streamSchema
	mayWrite(ctx context.Context, req *Request) bool
	// for the Relations of other ViewSets (relations.go)
	referable(ctx context.Context, db *gorm.DB, req *Request, pk any) (bool, error)
	expandObject(ctx context.Context, req *Request) (any, error)
	expandWhere(ctx context.Context, req *Request, column string, value any, many bool) (any, error)
}

// viewSet is an added ViewSet[T].
type viewSet[T any] struct {
	ViewSet[T]
	api  *API
	m    *model
	qs   *queries
	rels []*relation // the declared Relations
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
	if err := api.valid.check(new(T)); err != nil {
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
	if vs.MaxPageSize <= 0 {
		vs.MaxPageSize = max(api.cfg.maxPageSize, vs.PageSize)
	}
	if vs.PageSize <= 0 {
		vs.PageSize = min(api.cfg.pageSize, vs.MaxPageSize)
	}
	if vs.PageSize > vs.MaxPageSize {
		return fmt.Errorf("channelsapi: add %s: page size %d is above the max page size %d", typ, vs.PageSize, vs.MaxPageSize)
	}
	if vs.Permission == nil {
		vs.Permission = api.cfg.permission
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
	qs, err := newQueries(m, api.fold, api.precision, vs.Filters, vs.OrderingFields, vs.SearchFields)
	if err != nil {
		return fmt.Errorf("channelsapi: add %s: %w", vs.Stream, err)
	}
	rels, err := resolveRelations(m, vs.Relations)
	if err != nil {
		return fmt.Errorf("channelsapi: add %s: %w", vs.Stream, err)
	}
	if err := m.setVersion(vs.VersionField); err != nil {
		return fmt.Errorf("channelsapi: add %s: %w", vs.Stream, err)
	}
	for _, other := range api.reg.ofType(typ) {
		if o := other.model().version; (o == nil) != (m.version == nil) || o != nil && o.DBName != m.version.DBName {
			return fmt.Errorf("channelsapi: add %s: stream %s of the same model has another VersionField", vs.Stream, other.name())
		}
	}
	r := &viewSet[T]{ViewSet: vs, api: api, m: m, qs: qs, rels: rels}
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
	req.Method = v.method(req.Action)
	if err := v.Permission(ctx, req); err != nil {
		return result{err: err}
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
	case actionUpdate, actionPatch, actionDelete:
		if req.ifMatchErr != nil {
			return result{err: req.ifMatchErr}
		}
	default:
		req.ifMatch = nil // a precondition of the writes of an object only
	}
	if err := v.readKey(req); err != nil {
		return result{err: err}
	}
	switch req.Action {
	case actionCreate, actionRetrieve, actionUpdate, actionPatch, actionList:
		rels, err := v.expansions(req)
		if err != nil {
			return result{err: err}
		}
		req.rels = rels
		res = v.builtin(ctx, req, conn)
		var stale *staleError
		switch {
		case len(rels) == 0:
		case res.err == nil:
			res.data, res.err = v.expand(ctx, req, rels, res.data)
		case errors.As(res.err, &stale):
			if cur, err := v.expand(ctx, req, rels, stale.current); err == nil {
				stale.current = cur
			}
		}
		return res
	}
	return v.builtin(ctx, req, conn)
}

// builtin runs a built-in or custom action.
func (v *viewSet[T]) builtin(ctx context.Context, req *Request, conn *conn) result {
	switch req.Action {
	case actionCreate:
		return v.create(ctx, req)
	case actionRetrieve:
		obj, err := v.find(ctx, v.api.db.WithContext(ctx), req)
		if err != nil {
			return result{err: err}
		}
		return result{status: http.StatusOK, data: obj, etag: v.m.etagOf(obj, nil)}
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
	case actionSubscribe, actionUnsubscribe, actionSubscribeInstance, actionUnsubscribeInstance,
		actionSubscribeList, actionUnsubscribeList:
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
		if obj, err = v.find(ctx, v.api.db.WithContext(ctx), req); err != nil {
			return result{err: err}
		}
	}
	data, status, err := a.Handle(ctx, req, obj)
	if status == 0 {
		status = http.StatusOK
	}
	return result{status: status, data: data, err: err}
}

// method is the HTTP method of action's REST route, which also tells
// whether it only reads.
func (v *viewSet[T]) method(action string) string {
	switch action {
	case actionCreate:
		return http.MethodPost
	case actionUpdate:
		return http.MethodPut
	case actionPatch:
		return http.MethodPatch
	case actionDelete:
		return http.MethodDelete
	case actionRetrieve, actionList, actionSubscribe, actionUnsubscribe, actionSubscribeInstance, actionUnsubscribeInstance,
		actionSubscribeList, actionUnsubscribeList:
		return http.MethodGet
	}
	if a, ok := v.Actions[action]; ok {
		if a.Method == "" {
			return http.MethodGet
		}
		return a.Method
	}
	return ""
}

// mayWrite reports whether req's user may run req.Action, create or update
// (of the object req names, which must exist within the user's scope and
// pass the object permission), for the actions of an OPTIONS response. A
// check that fails or panics counts as no.
func (v *viewSet[T]) mayWrite(ctx context.Context, req *Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			v.api.log.ErrorContext(ctx, "channelsapi: permission panic", "stream", v.Stream, "action", req.Action, "panic", p)
			ok = false
		}
	}()
	if v.ReadOnly {
		return false
	}
	req.Method = v.method(req.Action)
	if v.Permission(ctx, req) != nil {
		return false
	}
	if req.Action != actionUpdate {
		return true
	}
	req.PK, _ = v.m.parsePK(req.rawPK)
	_, err := v.find(ctx, v.api.db.WithContext(ctx), req)
	return err == nil
}

// find looks the object up within req's scope and asks the object
// permission.
func (v *viewSet[T]) find(ctx context.Context, db *gorm.DB, req *Request) (*T, error) {
	db, err := v.scoped(ctx, db, req)
	if err != nil {
		return nil, err
	}
	return v.object(ctx, db, req)
}

// object looks the object up and asks the object permission.
func (v *viewSet[T]) object(ctx context.Context, db *gorm.DB, req *Request) (*T, error) {
	obj, err := v.lookup(db, req)
	if err != nil {
		return nil, err
	}
	if v.ObjectPermission != nil {
		if err := v.ObjectPermission(ctx, req, obj); err != nil {
			return nil, err
		}
	}
	return obj, nil
}

// scoped narrows db to the rows req may see: the Scope and the ScopeFilter.
func (v *viewSet[T]) scoped(ctx context.Context, db *gorm.DB, req *Request) (*gorm.DB, error) {
	sf, err := v.scopeFilter(ctx, req)
	if err != nil {
		return nil, err
	}
	return v.within(ctx, db, req, sf)
}

// within narrows db to the rows of the ScopeFilter's query sf (nil: every
// row) and of req's Scope.
func (v *viewSet[T]) within(ctx context.Context, db *gorm.DB, req *Request, sf *query.Query) (*gorm.DB, error) {
	db = db.Model(new(T))
	if sf != nil {
		db = db.Where(v.qs.where(db, sf))
	}
	if v.Scope != nil {
		var err error
		if db, err = v.Scope(ctx, req, db); err != nil {
			return nil, err
		}
		if db == nil {
			return nil, fmt.Errorf("scope of %s returned no query", v.Stream)
		}
	}
	return db, nil
}

// scopeFilter is the ScopeFilter of req as a query; nil without one.
func (v *viewSet[T]) scopeFilter(ctx context.Context, req *Request) (*query.Query, error) {
	if v.ScopeFilter == nil {
		return nil, nil
	}
	f, err := v.ScopeFilter(ctx, req)
	if err != nil {
		return nil, err
	}
	q, err := v.qs.scope(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", v.Stream, err)
	}
	return q, nil
}

// lookup loads the object req.PK names. The key is compared to the primary
// key column only, as a bound value.
func (v *viewSet[T]) lookup(db *gorm.DB, req *Request) (*T, error) {
	if req.PK == nil {
		return nil, ErrNotFound
	}
	// Find with a limit, not Take: no row is an answer, not an error that
	// GORM's logger reports on every 404.
	var objs []T
	err := db.Where(clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: v.m.pk.DBName}, Value: req.PK}).Limit(1).Find(&objs).Error
	if err != nil {
		return nil, fmt.Errorf("retrieve %s %v: %w", v.Stream, req.PK, err)
	}
	if len(objs) == 0 {
		return nil, ErrNotFound
	}
	return &objs[0], nil
}

func (v *viewSet[T]) create(ctx context.Context, req *Request) result {
	obj := new(T)
	columns, err := v.m.assign(ctx, reflect.ValueOf(obj).Elem(), req.Data, writeCreate)
	if err != nil {
		return result{err: err}
	}
	if err := v.m.validate(v.api.valid, obj); err != nil {
		return result{err: err}
	}
	res, err := v.transaction(ctx, req, func(tx *gorm.DB) (result, error) {
		if err := v.check(ctx, tx, req, obj, columns); err != nil {
			return result{}, err
		}
		if err := hook(ctx, tx, req, obj, v.Hooks.BeforeCreate); err != nil {
			return result{}, err
		}
		if err := tx.Create(obj).Error; err != nil {
			return result{}, err
		}
		if err := hook(ctx, tx, req, obj, v.Hooks.AfterCreate); err != nil {
			return result{}, err
		}
		etag, err := v.stateTag(tx, obj)
		return result{status: http.StatusCreated, data: obj, etag: etag}, err
	})
	if err != nil {
		return result{err: v.dbError("create", err)}
	}
	return res
}

// update applies req.Data to the object: all writable fields that are
// required must be present for a full update, only the given ones are
// written for a patch. The merged object is validated as a whole.
func (v *viewSet[T]) update(ctx context.Context, req *Request, w write) result {
	res, err := v.transaction(ctx, req, func(tx *gorm.DB) (result, error) {
		obj, err := v.forWrite(ctx, tx, req)
		if err != nil {
			return result{}, err
		}
		columns, err := v.m.assign(ctx, reflect.ValueOf(obj).Elem(), req.Data, w)
		if err != nil {
			return result{}, err
		}
		if err := v.m.validate(v.api.valid, obj); err != nil {
			return result{}, err
		}
		if err := v.check(ctx, tx, req, obj, columns); err != nil {
			return result{}, err
		}
		if v.Hooks.BeforeUpdate != nil {
			before := *obj
			if err := v.Hooks.BeforeUpdate(ctx, tx, req, obj); err != nil {
				return result{}, err
			}
			columns = append(columns, v.m.changed(ctx, reflect.ValueOf(&before).Elem(), reflect.ValueOf(obj).Elem())...)
		}
		if columns = append(columns, v.m.updated...); len(columns) > 0 {
			q, conditional := v.conditional(tx, req, obj)
			done := q.Model(obj).Select(columns).Updates(obj)
			if err := done.Error; err != nil {
				return result{}, err
			}
			if conditional && done.RowsAffected == 0 {
				return result{}, errStale
			}
		}
		if err := hook(ctx, tx, req, obj, v.Hooks.AfterUpdate); err != nil {
			return result{}, err
		}
		etag, err := v.stateTag(tx, obj)
		return result{status: http.StatusOK, data: obj, etag: etag}, err
	})
	if err != nil {
		return result{err: v.dbError("update", v.stale(ctx, req, err))}
	}
	return res
}

func (v *viewSet[T]) delete(ctx context.Context, req *Request) result {
	res, err := v.transaction(ctx, req, func(tx *gorm.DB) (result, error) {
		obj, err := v.forWrite(ctx, tx, req)
		if err != nil {
			return result{}, err
		}
		if err := hook(ctx, tx, req, obj, v.Hooks.BeforeDelete); err != nil {
			return result{}, err
		}
		q, conditional := v.conditional(tx, req, obj)
		done := q.Delete(obj)
		if err := done.Error; err != nil {
			return result{}, err
		}
		if conditional && done.RowsAffected == 0 {
			return result{}, errStale
		}
		return result{status: http.StatusOK, data: struct{}{}}, hook(ctx, tx, req, obj, v.Hooks.AfterDelete)
	})
	if err != nil {
		return result{err: v.dbError("delete", v.stale(ctx, req, err))}
	}
	return res
}

// check runs the checks of a write after the binding rules: the foreign
// keys among columns (those the client wrote) against the related
// ViewSets' scopes, then the Validate hook.
func (v *viewSet[T]) check(ctx context.Context, tx *gorm.DB, req *Request, obj *T, columns []string) error {
	if err := v.checkKeys(ctx, tx, req, reflect.ValueOf(obj).Elem(), columns); err != nil {
		return err
	}
	if v.Validate != nil {
		return v.Validate(ctx, req, obj)
	}
	return nil
}

// hook runs h when it is set.
func hook[T any](ctx context.Context, tx *gorm.DB, req *Request, obj *T, h func(context.Context, *gorm.DB, *Request, *T) error) error {
	if h == nil {
		return nil
	}
	return h(ctx, tx, req, obj)
}

func (v *viewSet[T]) list(ctx context.Context, req *Request) result {
	pq, err := pageOf(req.Data)
	if err != nil {
		return result{err: err}
	}
	lq, err := v.parseQuery(req)
	if err != nil {
		return result{err: err}
	}
	page, size, err := pq.resolve(v.PageSize, v.MaxPageSize)
	if err != nil {
		return result{err: err}
	}
	sf, err := v.scopeFilter(ctx, req)
	if err != nil {
		return result{err: err}
	}
	var (
		objs []T
		meta *pageMeta
	)
	at, err := v.readAtPosition(ctx, func(db *gorm.DB) error {
		objs, meta, err = v.page(ctx, db, req, sf, lq, page, size)
		return err
	})
	if err != nil {
		return result{err: err}
	}
	meta.Position = &at
	return result{status: http.StatusOK, data: objs, page: meta}
}

// readAtPosition runs read and returns the stream position it read at. On
// one instance, or with the outbox, it is exact: read runs in a read-only transaction whose
// snapshot is fixed while no commit is under way, and the position is the
// stream's then, so that a subscribe since it receives exactly the changes
// the rows do not hold. With a broker, offsets are assigned after commit:
// the broker's position is read first, and a change committed before the
// read may come after it as well.
func (v *viewSet[T]) readAtPosition(ctx context.Context, read func(*gorm.DB) error) (at Position, err error) {
	if ob := v.api.outbox; ob != nil {
		// The position is read in the rows' own snapshot: exact on any
		// number of instances on SQLite, at least once on PostgreSQL
		// (settle).
		if err := v.settle(ctx); err != nil {
			return at, err
		}
		err = v.readSnapshot(ctx, noFix, func(db *gorm.DB) error {
			if at, err = ob.position(db, v.Stream); err != nil {
				return err
			}
			return read(db)
		})
		return at, err
	}
	if b := v.api.cfg.broker; b != nil {
		epoch, offset, err := b.Position(ctx, v.Stream)
		if err != nil {
			v.api.log.Error("channelsapi: read the broker's position", "stream", v.Stream, "err", err)
			return at, errResumeBusy
		}
		return Position{epoch, offset}, read(v.api.db.WithContext(ctx))
	}
	err = v.readSnapshot(ctx, func() (func(), error) {
		release, err := v.api.capture.order.hold()
		if err == nil {
			at = v.api.delivery.position(v.Stream)
		}
		return release, err
	}, read)
	return at, err
}

// page reads page of lq's rows within sf (req's ScopeFilter) and req's
// Scope, in the list's order.
func (v *viewSet[T]) page(ctx context.Context, db *gorm.DB, req *Request, sf *query.Query, lq parsed, page, size int) ([]T, *pageMeta, error) {
	base, err := v.within(ctx, db, req, sf)
	if err != nil {
		return nil, nil, err
	}
	base = base.Where(v.qs.where(base, lq.q)).Session(&gorm.Session{})
	var count int64
	if err := base.Count(&count).Error; err != nil {
		return nil, nil, fmt.Errorf("count %s: %w", v.Stream, err)
	}
	pages := numPages(count, size)
	if page > pages {
		return nil, nil, errInvalidPage
	}
	objs := make([]T, 0, min(int64(size), count))
	ordered := v.qs.orderBy(base, lq.order, v.Ordering, v.m.pk.DBName)
	if err := ordered.Limit(size).Offset((page - 1) * size).Find(&objs).Error; err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", v.Stream, err)
	}
	return objs, &pageMeta{Count: count, Page: page, PageSize: size, NumPages: pages}, nil
}

// parseQuery parses req's list query.
func (v *viewSet[T]) parseQuery(req *Request) (parsed, error) {
	if req.queryErr != nil {
		return parsed{}, req.queryErr
	}
	return v.qs.parse(req.params)
}

// dbError adds context to an error of a write, leaving errors meant for the
// client (not found, validation, hooks' errors) recognisable by translate
// and turning constraint violations into client errors that name no table.
func (v *viewSet[T]) dbError(op string, err error) error {
	var (
		e  *Error
		fe FieldErrors
		se *staleError
	)
	switch {
	case errors.As(err, &e), errors.As(err, &fe), errors.As(err, &se), errors.Is(err, ErrNotFound), errors.Is(err, ErrPermissionDenied),
		errors.Is(err, ErrNotAuthenticated), errors.Is(err, ErrInvalidAction):
		return err
	}
	if ce := constraintError(v.api.db, v.m, err); ce != nil {
		v.api.log.Info("channelsapi: constraint violated", "stream", v.Stream, "action", op, "err", err)
		return ce
	}
	return fmt.Errorf("%s %s: %w", op, v.Stream, err)
}
