package channelsapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/channelsapi/channelsapi/internal/apispec"
)

// The channel of the WebSocket in the AsyncAPI document, and the messages
// every stream shares.
const (
	asyncChannel    = "socket"
	messageError    = "error"
	channelRef      = "#/channels/" + asyncChannel
	channelMessages = channelRef + "/messages/"
)

// asyncAPIDoc builds the AsyncAPI 3.0 document of the WebSocket: one
// channel, an operation per action of every stream with its request and
// replies, and an operation per stream for its events (PROTOCOL.md
// sections 1-4, 6 and 9-11).
func (a *API) asyncAPIDoc(info apispec.Info, streams []streamSchema, components *schemaSet) *apispec.AsyncAPI {
	ch := &apispec.Channel{
		Address:     a.docs.wsPath,
		Title:       "The WebSocket",
		Description: "One WebSocket carries every stream. Text frames, each a JSON object {\"stream\": ..., \"payload\": {...}}. Every request gets exactly one reply, written before the next frame is handled.",
		Messages:    map[string]*apispec.Reference{},
		Bindings:    map[string]json.RawMessage{"ws": json.RawMessage(`{"bindingVersion":"0.1.0"}`)},
		CloseCodes:  closeCodes(),
	}
	doc := &apispec.AsyncAPI{
		AsyncAPI:           "3.0.0",
		Info:               info,
		DefaultContentType: "application/json",
		Channels:           map[string]*apispec.Channel{asyncChannel: ch},
		Operations:         map[string]*apispec.AsyncOp{},
		Components: apispec.AsyncComponents{
			Schemas:  components.components,
			Messages: map[string]*apispec.Message{},
		},
	}
	add := func(m *apispec.Message) apispec.Reference {
		doc.Components.Messages[m.Name] = m
		ch.Messages[m.Name] = &apispec.Reference{Ref: "#/components/messages/" + m.Name}
		return apispec.Reference{Ref: channelMessages + m.Name}
	}
	errRef := add(errorMessage())
	for _, s := range streams {
		for _, act := range s.Actions {
			req, rep := add(requestMessage(s, act)), add(replyMessage(s, act))
			replies := []apispec.Reference{rep, errRef}
			switch act.Name {
			case actionUpdate, actionPatch, actionDelete:
				replies = append(replies, add(staleMessage(s)))
			}
			doc.Operations[s.Name+"."+act.Name] = &apispec.AsyncOp{
				Action:   "receive",
				Channel:  apispec.Reference{Ref: channelRef},
				Summary:  fmt.Sprintf("%s on %s", act.Name, s.Name),
				Messages: []apispec.Reference{req},
				Reply:    &apispec.AsyncReply{Channel: apispec.Reference{Ref: channelRef}, Messages: replies},
			}
		}
		events := []apispec.Reference{add(groupEventMessage(s))}
		events = append(events, instanceEventMessages(s, add)...)
		doc.Operations[s.Name+".events"] = &apispec.AsyncOp{
			Action:      "send",
			Channel:     apispec.Reference{Ref: channelRef},
			Summary:     "Events of " + s.Name,
			Description: "Sent after the commit of a change, to the connections whose subscriptions match it and who may see the object.",
			Messages:    events,
		}
	}
	return doc
}

// closeCodes are the close codes the server sends (PROTOCOL.md section 6).
func closeCodes() []apispec.CloseCode {
	return []apispec.CloseCode{
		{Code: closeGoingAway, Meaning: "The server is shutting down.", Reasons: []string{"server shutting down"}},
		{Code: closePolicy, Meaning: "Authorization was withdrawn (Disconnect).", Reasons: []string{"authorization withdrawn"}},
		{Code: 1009, Meaning: "A frame was over the size limit."},
		{Code: 1011, Meaning: "An internal failure of the connection itself."},
		{Code: closeTryAgain, Meaning: "The server can no longer guarantee the connection's events: reconnect and resume (PROTOCOL.md section 10), or reload.",
			Reasons: []string{reasonSlowClient, reasonBulkChange, reasonUntracked, reasonConcurrent, reasonUpsert, reasonEncoding,
				reasonAuthorize, reasonQueueFull, reasonBrokerGap, reasonUndecodable, reasonOutboxGap}},
	}
}

// frame is the schema of a frame of stream s (null: stream null) whose
// payload is payload.
func frame(stream *apispec.Schema, payload *apispec.Schema) *apispec.Schema {
	return &apispec.Schema{
		Type:       "object",
		Properties: map[string]*apispec.Schema{"stream": stream, "payload": payload},
		Required:   []string{"stream", "payload"},
	}
}

func object(props map[string]*apispec.Schema, required ...string) *apispec.Schema {
	return &apispec.Schema{Type: "object", Properties: props, Required: required}
}

var (
	etagValue = &apispec.Schema{Type: "string", Description: "The object's entity tag (PROTOCOL.md section 11): \"v<N>\" from the stream's version field, else a hash of the object's JSON."}
	anyJSON   = &apispec.Schema{Description: "Any JSON value."}
	// replayedValue marks the stored reply of a repeated idempotency_key.
	replayedValue = &apispec.Schema{Const: json.RawMessage("true"), Description: "The stored reply of a repeated idempotency_key (PROTOCOL.md section 11)."}
	nullValue     = &apispec.Schema{Type: "null"}
	noErrors      = &apispec.Schema{Type: "array", MaxItems: apispec.Int(0)}
	offset        = &apispec.Schema{Type: "integer", Minimum: apispec.Float(1), Description: "The event's place in the stream (PROTOCOL.md section 10)."}
)

// errorMessage is every error reply (PROTOCOL.md sections 3 and 6).
func errorMessage() *apispec.Message {
	return &apispec.Message{
		Name:  messageError,
		Title: "Error reply",
		Description: strings.Join([]string{
			"The reply to a request that failed, on its stream (null when the stream is not one):",
			"400 [\"Invalid frame.\"] (stream null: not JSON, not an object, or binary);",
			"404 [\"Invalid stream.\"]; 400 [\"Invalid Action\"] (action null when missing);",
			"401/403 [\"Permission Denied\"]; 404 [\"Not found.\"] or [\"Invalid page.\"];",
			"400 [{\"field\": [\"message\"]}] for validation; 409 on a conflict or an idempotency_key still running;",
			"422 [\"Idempotency key reused with a different request.\"]; 429 [\"Too many requests.\"] over the rate limit",
			"or [\"Too many subscriptions.\"]; 500 [\"A server error occurred.\"]; 503 [\"Server busy, try again.\"].",
			"Hooks, permissions and custom actions may answer other statuses the same way.",
		}, " "),
		Payload: frame(&apispec.Schema{Type: []string{"string", "null"}}, object(map[string]*apispec.Schema{
			"action":          {Type: []string{"string", "null"}},
			"data":            nullValue,
			"errors":          apispec.Ref(schemaErrorList),
			"response_status": {Type: "integer", Minimum: apispec.Float(400), Maximum: apispec.Float(599)},
			"request_id":      anyJSON,
		}, "action", "data", "errors", "response_status", "request_id")),
	}
}

// pkValue is the schema of the pk of a request of s: a number or a string
// (for an integer key, a numeric string).
func pkValue(s streamSchema) *apispec.Schema {
	if s.PKType == "integer" {
		return &apispec.Schema{Type: []string{"integer", "string"}}
	}
	return &apispec.Schema{Type: "string"}
}

// requestMessage is the request of act on s.
func requestMessage(s streamSchema, act actionSchema) *apispec.Message {
	props := map[string]*apispec.Schema{
		"action":     apispec.Const(act.Name),
		"request_id": &apispec.Schema{Description: "Any JSON value, echoed in the reply."},
	}
	required := []string{"action"}
	if act.Detail {
		props["pk"] = pkValue(s)
		required = append(required, "pk")
	}
	since := apispec.Ref(schemaPosition)
	if names := expandable(s); len(names) > 0 && slices.Contains([]string{actionRetrieve, actionList, actionCreate, actionUpdate, actionPatch}, act.Name) {
		props[keyExpand] = &apispec.Schema{
			Type: "array", Items: &apispec.Schema{Type: "string", Enum: apispec.Enum(names...)},
			Description: "Relations to include in the reply's objects (a comma-separated string is also accepted).",
		}
	}
	switch act.Name {
	case actionCreate, actionUpdate, actionPatch, actionDelete:
		props[keyIdempotency] = &apispec.Schema{
			Type: "string", MinLength: apispec.Int(1), MaxLength: apispec.Int(maxKeyLength),
			Description: "With WithIdempotency: a repeat with the same key (same user, same request) returns the stored reply, marked \"replayed\": true, " +
				"without running again; the same key for another request is 422, one still running 409. Without it, 400.",
		}
	}
	switch act.Name {
	case actionUpdate, actionPatch, actionDelete:
		props[keyIfMatch] = &apispec.Schema{
			Type:        "string",
			Description: "Write only if the object's etag is one of these (comma-separated quoted entity tags), or with \"*\" if it exists; else 412 with the current object.",
		}
	}
	switch act.Name {
	case actionCreate, actionUpdate:
		props["data"] = apispec.Ref(s.Name + ".write")
	case actionPatch:
		props["data"] = apispec.Ref(s.Name + ".patch")
	case actionList:
		props["data"] = orNull(queryData(s, true))
	case actionSubscribe, actionUnsubscribe:
		props["pk"] = pkValue(s)
		data := object(map[string]*apispec.Schema{
			"action": {Type: "string", Enum: apispec.Enum(actionCreate, actionUpdate, actionDelete)},
			"pk":     pkValue(s),
		}, "action")
		if act.Name == actionSubscribe {
			data.Properties["since"] = since
		}
		props["data"] = data
		required = append(required, "data")
	case actionSubscribeInstance:
		props["data"] = orNull(object(map[string]*apispec.Schema{"since": since}))
		required = append(required, "request_id")
	case actionUnsubscribeInstance, actionUnsubscribeList:
		required = append(required, "request_id")
	case actionSubscribeList:
		data := queryData(s, false)
		data.Properties["snapshot"] = &apispec.Schema{Type: "boolean", Description: "Reply with the first page of matching rows."}
		data.Properties["since"] = since
		props["data"] = orNull(data)
		required = append(required, "request_id")
	default:
		props["data"] = anyJSON
	}
	return &apispec.Message{
		Name:    s.Name + "." + act.Name + ".request",
		Title:   act.Name + " " + s.Name,
		Payload: frame(apispec.Const(s.Name), object(props, required...)),
	}
}

// queryData is the data of list and subscribe_list: the query keys of
// section 8 with JSON values (ordering only for list).
func queryData(s streamSchema, ordering bool) *apispec.Schema {
	number := &apispec.Schema{Type: []string{"integer", "string"}}
	props := map[string]*apispec.Schema{"page": number, "page_size": number}
	for _, f := range s.Filters {
		for _, lookup := range f.Lookups {
			value := filterValue(f.Type)
			switch lookup {
			case "in":
				value = &apispec.Schema{Type: []string{"array", "string"}, Items: filterValue(f.Type)}
			case "range":
				value = &apispec.Schema{Type: []string{"array", "string"}, Items: filterValue(f.Type)}
			case "isnull":
				value = &apispec.Schema{Type: "boolean"}
			}
			props[f.Name+"__"+lookup] = value
			if lookup == "exact" {
				props[f.Name] = value
			}
		}
	}
	if ordering && len(s.OrderingFields) > 0 {
		props["ordering"] = &apispec.Schema{Type: "string", Description: "Comma-separated fields of: " + strings.Join(s.OrderingFields, ", ") + "."}
	}
	if len(s.SearchFields) > 0 {
		props["search"] = &apispec.Schema{Type: "string"}
	}
	if !ordering {
		delete(props, "page")
	}
	return object(props)
}

// replyMessage is the successful reply to act on s (PROTOCOL.md section 4).
func replyMessage(s streamSchema, act actionSchema) *apispec.Message {
	status := func(n int) *apispec.Schema { return apispec.Const(n) }
	obj := apispec.Ref(s.Name)
	resumed := map[string]*apispec.Schema{
		"recovered": {Type: "boolean", Description: "Whether every event since the given position follows."},
		"position":  apispec.Ref(schemaPosition),
	}
	props := map[string]*apispec.Schema{
		"action":     apispec.Const(act.Name),
		"errors":     noErrors,
		"request_id": anyJSON,
	}
	required := []string{"action", "data", "errors", "response_status", "request_id"}
	switch act.Name {
	case actionCreate:
		props["data"], props["response_status"] = obj, status(http.StatusCreated)
		props["etag"], required = etagValue, append(required, "etag")
		props["replayed"] = replayedValue
	case actionRetrieve, actionUpdate, actionPatch:
		props["data"], props["response_status"] = obj, status(http.StatusOK)
		props["etag"], required = etagValue, append(required, "etag")
		if act.Name != actionRetrieve {
			props["replayed"] = replayedValue
		}
	case actionDelete:
		props["data"], props["response_status"] = &apispec.Schema{Type: "object", MaxProperties: apispec.Int(0)}, status(http.StatusOK)
		props["replayed"] = replayedValue
	case actionList:
		props["data"], props["response_status"] = &apispec.Schema{Type: "array", Items: obj}, status(http.StatusOK)
		props["meta"] = object(map[string]*apispec.Schema{
			"count":     {Type: "integer", Minimum: apispec.Float(0)},
			"page":      {Type: "integer", Minimum: apispec.Float(1)},
			"page_size": {Type: "integer", Minimum: apispec.Float(1)},
			"num_pages": {Type: "integer", Minimum: apispec.Float(0)},
			"position":  apispec.Ref(schemaPosition),
		}, "count", "page", "page_size", "num_pages")
		required = append(required, "meta")
	case actionSubscribe, actionUnsubscribe:
		data := object(map[string]*apispec.Schema{"action": {Type: "string", Enum: apispec.Enum(actionCreate, actionUpdate, actionDelete)}}, "action")
		if act.Name == actionSubscribe {
			data.Properties["recovered"], data.Properties["position"] = resumed["recovered"], resumed["position"]
		}
		props["data"], props["response_status"] = data, status(http.StatusOK)
	case actionSubscribeInstance:
		props["data"] = &apispec.Schema{AnyOf: []*apispec.Schema{nullValue, object(resumed, "recovered", "position")}}
		props["response_status"] = status(http.StatusCreated)
	case actionUnsubscribeInstance:
		props["data"], props["response_status"] = nullValue, status(http.StatusNoContent)
	case actionSubscribeList:
		props["data"] = object(map[string]*apispec.Schema{
			"subscription": {Description: "The request_id of the subscription."},
			"results":      {Type: "array", Items: obj, Description: "With \"snapshot\": the first page of matching rows."},
			"count":        {Type: "integer", Minimum: apispec.Float(0)},
			"recovered":    resumed["recovered"],
			"position":     resumed["position"],
		}, "subscription")
		props["response_status"] = status(http.StatusOK)
	case actionUnsubscribeList:
		props["data"] = object(map[string]*apispec.Schema{"subscription": anyJSON}, "subscription")
		props["response_status"] = status(http.StatusOK)
	default: // a custom action: its data and status
		props["data"], props["response_status"] = anyJSON, &apispec.Schema{Type: "integer"}
	}
	return &apispec.Message{
		Name:    s.Name + "." + act.Name + ".reply",
		Title:   "Reply to " + act.Name + " " + s.Name,
		Payload: frame(apispec.Const(s.Name), object(props, required...)),
	}
}

// staleMessage is the 412 of an update, patch or delete whose if_match
// does not match (PROTOCOL.md section 11).
func staleMessage(s streamSchema) *apispec.Message {
	return &apispec.Message{
		Name:        s.Name + ".precondition_failed",
		Title:       "Precondition failed on " + s.Name,
		Description: "The object changed since the etag of if_match: data is the current object, etag its entity tag.",
		Payload: frame(apispec.Const(s.Name), object(map[string]*apispec.Schema{
			"action":          {Type: "string", Enum: apispec.Enum(actionUpdate, actionPatch, actionDelete)},
			"data":            apispec.Ref(s.Name),
			"errors":          {Type: "array", Items: apispec.Const(msgPreconditionFailed), MinItems: apispec.Int(1), MaxItems: apispec.Int(1)},
			"response_status": apispec.Const(http.StatusPreconditionFailed),
			"request_id":      anyJSON,
			"etag":            etagValue,
		}, "action", "data", "errors", "response_status", "request_id", "etag")),
	}
}

// groupEventMessage is the event of a subscribe (4.7) and of a live query
// (9), which carries the live query's request_id.
func groupEventMessage(s streamSchema) *apispec.Message {
	return &apispec.Message{
		Name:  s.Name + ".event",
		Title: "Event of " + s.Name,
		Description: "A change, to the subscribers of its action (subscribe), or to a live query (subscribe_list, with its request_id): " +
			"create when a row starts matching, update when it still matches, delete when it stops matching, with the last state the recipient could see.",
		Payload: frame(apispec.Const(s.Name), object(map[string]*apispec.Schema{
			"action":     {Type: "string", Enum: apispec.Enum(actionCreate, actionUpdate, actionDelete)},
			"pk":         {Type: s.PKType},
			"data":       apispec.Ref(s.Name),
			"model":      apispec.Const(s.Model),
			"etag":       etagValue,
			"offset":     offset,
			"request_id": &apispec.Schema{Description: "The live query's request_id; absent for subscribe."},
		}, "action", "pk", "data", "model")),
	}
}

// instanceEventMessages are the events of subscribe_instance (4.8): an
// update and a delete.
func instanceEventMessages(s streamSchema, add func(*apispec.Message) apispec.Reference) []apispec.Reference {
	payload := func(action string, data *apispec.Schema, status int) *apispec.Schema {
		return frame(apispec.Const(s.Name), object(map[string]*apispec.Schema{
			"action":          apispec.Const(action),
			"data":            data,
			"errors":          noErrors,
			"response_status": apispec.Const(status),
			"request_id":      &apispec.Schema{Description: "The request_id of the subscribe_instance."},
			"etag":            etagValue,
			"offset":          offset,
		}, "action", "data", "errors", "response_status", "request_id"))
	}
	return []apispec.Reference{
		add(&apispec.Message{
			Name: s.Name + ".instance.update", Title: "Update of a subscribed " + s.Name + " object",
			Payload: payload(actionUpdate, apispec.Ref(s.Name), http.StatusOK),
		}),
		add(&apispec.Message{
			Name: s.Name + ".instance.delete", Title: "Delete of a subscribed " + s.Name + " object",
			Payload: payload(actionDelete, object(map[string]*apispec.Schema{"pk": {Type: s.PKType}}, "pk"), http.StatusNoContent),
		}),
	}
}
