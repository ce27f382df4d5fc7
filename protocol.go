package channelsapi

import (
	"bytes"
	"encoding/json"
)

// inPayload is a request payload (PROTOCOL.md section 2). Fields stay raw so
// that wrong types are answered precisely and request_id is echoed verbatim.
type inPayload struct {
	Action    json.RawMessage
	PK        json.RawMessage
	Data      json.RawMessage
	RequestID json.RawMessage
	Expand    json.RawMessage // the relations to expand (relations.go)
	IfMatch   json.RawMessage // "if_match" (etag.go)
	IdemKey   json.RawMessage // "idempotency_key" (idempotency.go)
}

// outFrame is every server frame.
type outFrame struct {
	Stream  any `json:"stream"`
	Payload any `json:"payload"`
}

// reply is the payload of an answer to a request (PROTOCOL.md section 3).
type reply struct {
	Action         any             `json:"action"`
	Data           any             `json:"data"`
	Errors         []any           `json:"errors"`
	ResponseStatus int             `json:"response_status"`
	RequestID      json.RawMessage `json:"request_id"`
	Meta           *pageMeta       `json:"meta,omitempty"`
	ETag           string          `json:"etag,omitempty"`     // of the object (PROTOCOL.md 11)
	Replayed       bool            `json:"replayed,omitempty"` // the stored reply of an idempotency key (11)
	Offset         uint64          `json:"offset,omitempty"`   // of an event (PROTOCOL.md 10)
}

// groupEvent is the payload of a channels-api subscription event (4.7).
// The payload of a live-query event (9) is the same with "request_id" after
// its other keys (queryFrames in delivery.go).
type groupEvent struct {
	Action string          `json:"action"`
	PK     json.RawMessage `json:"pk"`
	Data   json.RawMessage `json:"data"`
	Model  string          `json:"model"`
	ETag   string          `json:"etag,omitempty"` // of the object, but in a delete (PROTOCOL.md 11)
	Offset uint64          `json:"offset,omitempty"`
}

// The top-level payload keys of section 11.
const keyIfMatch = "if_match"

// decodeFrame parses a client frame: {"stream": ..., "payload": {...}}. ok
// is false when the frame is not a JSON object or its payload is neither an
// object nor absent. Keys are matched exactly, as channels-api matches them
// ("PK" is an unknown key, not "pk"), so they are read from maps: a struct
// would fold their case.
func decodeFrame(msg []byte) (stream json.RawMessage, p inPayload, ok bool) {
	f, ok := jsonObject(msg)
	if !ok {
		return nil, p, false
	}
	if !present(f["payload"]) {
		return f["stream"], p, true
	}
	keys, ok := jsonObject(f["payload"])
	if !ok {
		return f["stream"], p, false
	}
	p = inPayload{Action: keys["action"], PK: keys["pk"], Data: keys["data"], RequestID: keys["request_id"], Expand: keys[keyExpand],
		IfMatch: keys[keyIfMatch], IdemKey: keys[keyIdempotency]}
	return f["stream"], p, true
}

// jsonObject decodes a JSON object into its members, keyed exactly as sent
// (a struct would fold the keys' case). ok is false for anything else.
func jsonObject(raw json.RawMessage) (members map[string]json.RawMessage, ok bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &members) != nil {
		return nil, false
	}
	return members, true
}

// jsonString returns raw as a Go string when it is a JSON string.
func jsonString(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// present reports whether a raw JSON value was sent and is not null.
func present(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

// encodeFrame marshals a server frame. Values come from this package and
// json.Marshal of the application's models, so a failure is a programming
// error in a model's MarshalJSON; it is reported to the caller.
func encodeFrame(stream any, payload any) ([]byte, error) {
	return json.Marshal(outFrame{Stream: stream, Payload: payload})
}
