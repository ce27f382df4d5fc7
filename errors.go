package channelsapi

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"unicode"

	"gorm.io/gorm"
)

// Sentinel errors a hook, permission check or custom action may return. They
// are translated to wire form in one place (translate), together with *Error.
var (
	// ErrNotFound answers 404 "Not found.".
	ErrNotFound = errors.New("not found")
	// ErrPermissionDenied answers 401 "Permission Denied" when the request has
	// no authenticated user and 403 otherwise.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrNotAuthenticated answers 401 "Permission Denied" whatever the user.
	ErrNotAuthenticated = errors.New("not authenticated")
	// ErrInvalidAction answers 400 "Invalid Action".
	ErrInvalidAction = errors.New("invalid action")
)

// Error is an error with a status and a client-facing message or per-field
// messages. Its text is sent to clients as it is, so it must never carry
// internal detail. The zero Status means 400.
type Error struct {
	Status  int                 // HTTP-like status; 0 means 400
	Message string              // a non-field message, sent as ["Message"]
	Fields  map[string][]string // per-field messages, sent as [{"field": [...]}]
}

// NewError returns an *Error with one non-field message.
func NewError(status int, message string) *Error {
	return &Error{Status: status, Message: message}
}

// FieldError returns a 400 *Error naming one field.
func FieldError(field string, messages ...string) *Error {
	return &Error{Status: http.StatusBadRequest, Fields: map[string][]string{field: messages}}
}

// FieldErrors are per-field messages keyed by JSON name, NonFieldErrors for
// the object as a whole, for example
// FieldErrors{"end": {"Must be after start."}}. As an error (from a
// Validate hook, any hook or an action) it answers 400 with them.
type FieldErrors map[string][]string

func (e FieldErrors) Error() string { return (&Error{Fields: e}).Error() }

func (e *Error) Error() string {
	if e.Message != "" {
		return e.Message
	}
	keys := slices.Sorted(maps.Keys(e.Fields))
	if len(keys) == 0 {
		return "invalid request"
	}
	return fmt.Sprintf("%s: %v", keys[0], e.Fields[keys[0]])
}

func (e *Error) status() int {
	if e.Status == 0 {
		return http.StatusBadRequest
	}
	return e.Status
}

// Messages clients see for the statuses this package produces itself.
const (
	msgNotFound      = "Not found."
	msgDenied        = "Permission Denied"
	msgInvalidAction = "Invalid Action"
	msgServerError   = "A server error occurred."
	msgInvalidFrame  = "Invalid frame."
	msgInvalidStream = "Invalid stream."
	msgInvalidPage   = "Invalid page."

	msgTooManyRequests = "Too many requests."
)

// wireError is an error in the form both transports render: a status and
// either one message or per-field messages. internal is true for errors whose
// cause must be logged and hidden.
type wireError struct {
	status   int
	message  string
	fields   map[string][]string
	internal bool
	// current is the object of a 412, rendered instead of the error, and
	// etag its ETag (etag.go).
	current any
	etag    string
}

// translate is the one place where errors become client-visible. Anything
// it does not recognise is a 500 whose cause the caller logs.
func translate(err error, authenticated bool) wireError {
	var (
		e  *Error
		fe FieldErrors
		se *staleError
	)
	switch {
	case errors.As(err, &se):
		return wireError{status: http.StatusPreconditionFailed, message: msgPreconditionFailed, current: se.current, etag: se.etag}
	case errors.As(err, &e):
		return wireError{status: e.status(), message: e.Message, fields: e.Fields}
	case errors.As(err, &fe):
		return wireError{status: http.StatusBadRequest, fields: fe}
	case errors.Is(err, ErrNotFound):
		return wireError{status: http.StatusNotFound, message: msgNotFound}
	case errors.Is(err, ErrNotAuthenticated):
		return wireError{status: http.StatusUnauthorized, message: msgDenied}
	case errors.Is(err, ErrPermissionDenied):
		if authenticated {
			return wireError{status: http.StatusForbidden, message: msgDenied}
		}
		return wireError{status: http.StatusUnauthorized, message: msgDenied}
	case errors.Is(err, ErrInvalidAction):
		return wireError{status: http.StatusBadRequest, message: msgInvalidAction}
	default:
		return wireError{status: http.StatusInternalServerError, message: msgServerError, internal: true}
	}
}

// socketErrors renders e as the "errors" list of a WebSocket reply.
func (e wireError) socketErrors() []any {
	if e.fields != nil {
		return []any{e.fields}
	}
	return []any{e.message}
}

// restBody renders e as a Django REST Framework error body.
func (e wireError) restBody() any {
	if e.current != nil {
		return e.current
	}
	if e.fields != nil {
		return e.fields
	}
	return map[string]string{"detail": e.message}
}

// constraint kinds a database reports.
type constraint int

const (
	noConstraint constraint = iota
	uniqueViolation
	notNullViolation
	foreignKeyViolation
	checkViolation
	invalidValue // a value the column cannot hold (SQLSTATE class 22), e.g. a NUL byte in PostgreSQL text
)

// constraintError turns a constraint violation into a client error, as
// Django REST Framework words it: a unique violation on one writable field
// is a 400 on that field ("member with this email already exists."), on
// several writable fields a 400 NonFieldErrors ("The fields code, region
// must make a unique set."), on anything else a 409; not-null, foreign-key
// and check violations and values the column cannot hold are a 400. It
// returns nil for any other error. No table, column or SQL text reaches
// the client.
func constraintError(db *gorm.DB, m *model, err error) error {
	kind, columns := classify(db, err)
	switch kind {
	case uniqueViolation:
		names := make([]string, 0, len(columns))
		for _, c := range columns {
			if f := m.writableColumn(c); f != nil {
				names = append(names, f.json)
			}
		}
		switch {
		case len(names) == 0 || len(names) != len(columns):
		case len(names) == 1:
			return FieldError(names[0], fmt.Sprintf("%s with this %s already exists.", m.verboseName(), names[0]))
		default:
			return FieldError(NonFieldErrors, fmt.Sprintf("The fields %s must make a unique set.", strings.Join(names, ", ")))
		}
		return NewError(http.StatusConflict, "The object conflicts with an existing one.")
	case notNullViolation, checkViolation, invalidValue:
		return NewError(http.StatusBadRequest, "Invalid data.")
	case foreignKeyViolation:
		return NewError(http.StatusBadRequest, "A related object does not exist or is still referenced.")
	}
	return nil
}

// writableColumn is the writable field of column, or nil.
func (m *model) writableColumn(column string) *field {
	for _, f := range m.fields {
		if f.writable && f.gorm.DBName == column {
			return f
		}
	}
	return nil
}

// verboseName is the model's name as Django derives a verbose_name from a
// class name: the Go type's words in lower case ("TodoItem": "todo item").
func (m *model) verboseName() string {
	name := m.schema.ModelType.Name()
	var b strings.Builder
	rs := []rune(name)
	for i, r := range rs {
		if i > 0 && unicode.IsUpper(r) && (unicode.IsLower(rs[i-1]) || i+1 < len(rs) && unicode.IsLower(rs[i+1])) {
			b.WriteByte(' ')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// classify recognises constraint violations through the dialect's error
// translation, PostgreSQL's SQLSTATE codes and SQLite's messages; columns
// are those of a unique violation when the error names them.
func classify(db *gorm.DB, err error) (kind constraint, columns []string) {
	var state interface{ SQLState() string }
	if errors.As(err, &state) {
		switch state.SQLState() {
		case "23505":
			// The driver's Error() text has no detail: the column is in it.
			columns := pgKeyColumns(pgDetail(state))
			if columns == nil {
				columns = pgKeyColumns(err.Error())
			}
			return uniqueViolation, columns
		case "23502":
			return notNullViolation, nil
		case "23503":
			return foreignKeyViolation, nil
		case "23514":
			return checkViolation, nil
		}
		if strings.HasPrefix(state.SQLState(), "22") {
			return invalidValue, nil
		}
	}
	msg := err.Error()
	for prefix, k := range map[string]constraint{
		"UNIQUE constraint failed: ":      uniqueViolation,
		"NOT NULL constraint failed: ":    notNullViolation,
		"FOREIGN KEY constraint failed":   foreignKeyViolation,
		"CHECK constraint failed":         checkViolation,
		"PRIMARY KEY constraint failed: ": uniqueViolation,
	} {
		if _, rest, ok := strings.Cut(msg, prefix); ok {
			if k == uniqueViolation {
				// "UNIQUE constraint failed: notes.a, notes.b"
				for c := range strings.SplitSeq(rest, ",") {
					_, column, _ := strings.Cut(strings.TrimSpace(c), ".")
					columns = append(columns, column)
				}
			}
			return k, columns
		}
	}
	if t, ok := db.Dialector.(gorm.ErrorTranslator); ok {
		switch terr := t.Translate(err); {
		case errors.Is(terr, gorm.ErrDuplicatedKey):
			return uniqueViolation, nil
		case errors.Is(terr, gorm.ErrForeignKeyViolated):
			return foreignKeyViolation, nil
		case errors.Is(terr, gorm.ErrCheckConstraintViolated):
			return checkViolation, nil
		}
	}
	return noConstraint, nil
}

// pgDetail returns the Detail field of a PostgreSQL driver's error (pgx's
// *pgconn.PgError, lib/pq's *pq.Error), read by reflection so that this
// package imports no driver; "" when err has none.
func pgDetail(err any) string {
	v := reflect.ValueOf(err)
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return ""
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return ""
	}
	if f := v.FieldByName("Detail"); f.IsValid() && f.Kind() == reflect.String {
		return f.String()
	}
	return ""
}

// pgKeyColumns reads the columns of a PostgreSQL unique violation from its
// detail, `Key (a, b)=(x, y) already exists.`; nil when it has none.
func pgKeyColumns(msg string) []string {
	_, rest, ok := strings.Cut(msg, "Key (")
	if !ok {
		return nil
	}
	list, _, ok := strings.Cut(rest, ")=")
	if !ok {
		return nil
	}
	var columns []string
	for c := range strings.SplitSeq(list, ",") {
		columns = append(columns, strings.Trim(strings.TrimSpace(c), `"`))
	}
	return columns
}
