package channelsapi

import (
	"context"
	"net/http"
)

// Permission decides whether a request may run. It returns nil to allow,
// ErrPermissionDenied (401 for an anonymous request, 403 otherwise),
// ErrNotAuthenticated (401) or an *Error. It is asked before the action is
// looked up, on both transports, and for every event a subscriber would
// receive (with Action "retrieve").
type Permission func(ctx context.Context, r *Request) error

// ObjectPermission decides whether a request may act on one object, after
// it was looked up: retrieve, update, patch, delete, detail actions and
// subscribe_instance, and every event about the object, for each recipient.
type ObjectPermission[T any] func(ctx context.Context, r *Request, obj *T) error

// AllowAny allows every request. It is the default when neither the ViewSet
// nor WithDefaultPermission sets a permission.
func AllowAny() Permission { return allowAny }

// IsAuthenticated allows requests that have a user.
func IsAuthenticated() Permission {
	return func(_ context.Context, r *Request) error {
		if !r.Authenticated() {
			return ErrNotAuthenticated
		}
		return nil
	}
}

// IsAuthenticatedOrReadOnly allows reads to everyone and writes to requests
// that have a user. Reads are the actions whose REST method is GET, HEAD or
// OPTIONS: retrieve, list, the subscription actions, and custom actions
// declared with such a method.
func IsAuthenticatedOrReadOnly() Permission {
	return func(_ context.Context, r *Request) error {
		if r.ReadOnly() || r.Authenticated() {
			return nil
		}
		return ErrNotAuthenticated
	}
}

// And allows a request when every permission allows it, and answers with the
// first refusal.
func And(ps ...Permission) Permission {
	return func(ctx context.Context, r *Request) error {
		for _, p := range ps {
			if err := p(ctx, r); err != nil {
				return err
			}
		}
		return nil
	}
}

// Or allows a request when at least one permission allows it; when none
// does, it answers with the last refusal.
func Or(ps ...Permission) Permission {
	return func(ctx context.Context, r *Request) error {
		err := error(ErrPermissionDenied)
		for _, p := range ps {
			if err = p(ctx, r); err == nil {
				return nil
			}
		}
		return err
	}
}

// Not allows a request when p refuses it, and refuses with
// ErrPermissionDenied when p allows it.
func Not(p Permission) Permission {
	return func(ctx context.Context, r *Request) error {
		if p(ctx, r) == nil {
			return ErrPermissionDenied
		}
		return nil
	}
}

// ReadOnly reports whether the request only reads: its REST method is GET,
// HEAD or OPTIONS.
func (r *Request) ReadOnly() bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
}
