package channelsapi

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
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
)

// wireError is an error in the form both transports render: a status and
// either one message or per-field messages. internal is true for errors whose
// cause must be logged and hidden.
type wireError struct {
	status   int
	message  string
	fields   map[string][]string
	internal bool
}

// translate is the one place where errors become client-visible. Anything
// it does not recognise is a 500 whose cause the caller logs.
func translate(err error, authenticated bool) wireError {
	var e *Error
	switch {
	case errors.As(err, &e):
		return wireError{status: e.status(), message: e.Message, fields: e.Fields}
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
	if e.fields != nil {
		return e.fields
	}
	return map[string]string{"detail": e.message}
}
