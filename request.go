package channelsapi

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/channelsapi/channelsapi/internal/query"
)

// Transport names the way a request arrived.
type Transport string

// The transports a Request can come on.
const (
	TransportWebSocket Transport = "websocket"
	TransportREST      Transport = "rest"
)

// Request describes one action, whichever transport it came on. Permission
// checks, scopes and custom actions receive it, so that REST and WebSocket
// cannot drift apart. A Request must not be modified by the callee.
type Request struct {
	Transport Transport
	Stream    string
	Action    string
	// Method is the HTTP method of the action's REST route (GET for
	// retrieve, list and the subscription actions), whatever the transport.
	Method string
	// PK is the parsed primary key for detail actions (of the model's key
	// type), or nil when the request has none or it does not parse.
	PK any
	// Data is the request body: the payload's "data" on the WebSocket, the
	// JSON body on REST. It may be nil.
	Data json.RawMessage
	// RequestID is the raw JSON request_id of a WebSocket request; nil on REST.
	RequestID json.RawMessage
	// User is what the user resolver returned for the REST request or for the
	// WebSocket upgrade request; nil means anonymous.
	User any
	// Header is the header of the REST request or of the upgrade request.
	Header http.Header
	// Query is the request's query: the REST query string, or on the
	// WebSocket the keys of a list or subscribe_list request's data, with
	// a JSON array as several values. It may be nil.
	Query url.Values
	// Params are the REST route's path parameters (Gin's, pk included); on
	// the WebSocket, "pk" when the request has one. It may be nil.
	Params map[string]string

	rawPK     json.RawMessage
	params    map[string]query.Param // the query, for the filter grammar
	queryErr  error                  // the query could not be read
	expand    []string               // the relations to expand (relations.go)
	expandErr error                  // they could not be read
	// ifMatch is the If-Match precondition of an update, patch or
	// delete, nil without one; ifMatchErr says why it could not be read
	// (etag.go).
	ifMatch    *precondition
	ifMatchErr error
	// idem is the idempotency key of a write, nil without one; idemErr
	// says why it could not be read (idempotency.go).
	idem    *idemKey
	idemErr error
	// rels are the relations the reply expands (relations.go).
	rels []*relation
}

// readIfMatch reads an If-Match header's values. Several lines are one
// list.
func (r *Request) readIfMatch(values []string) {
	if len(values) == 0 {
		return
	}
	r.ifMatch, r.ifMatchErr = parseIfMatch(strings.Join(values, ","))
}

// readIfMatchKey reads the "if_match" key of a WebSocket payload.
func (r *Request) readIfMatchKey(raw json.RawMessage) {
	if !present(raw) {
		return
	}
	s, ok := jsonString(raw)
	if !ok {
		r.ifMatchErr = NewError(http.StatusBadRequest, msgIfMatchType)
		return
	}
	r.readIfMatch([]string{s})
}

// Authenticated reports whether the request has a user.
func (r *Request) Authenticated() bool { return r.User != nil }

// readQuery reads the query of a WebSocket list or subscribe_list from its
// data. A malformed one is answered by the action, after the permission.
func (r *Request) readQuery() {
	data, ok := jsonObject(r.Data)
	if !ok {
		return // pageOf answers it
	}
	skip := []string{keyPage, keyPageSize}
	if r.Action == actionSubscribeList {
		skip = append(skip, keySnapshot, keySince)
	}
	r.params, r.Query, r.queryErr = jsonQuery(data, skip...)
}
