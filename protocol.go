package channelsapi

import (
	"bytes"
	"encoding/json"
)

// inFrame is a client frame: {"stream": ..., "payload": {...}}.
type inFrame struct {
	Stream  json.RawMessage `json:"stream"`
	Payload json.RawMessage `json:"payload"`
}

// inPayload is a request payload (PROTOCOL.md section 2). Fields stay raw so
// that wrong types are answered precisely and request_id is echoed verbatim.
type inPayload struct {
	Action    json.RawMessage `json:"action"`
	PK        json.RawMessage `json:"pk"`
	Data      json.RawMessage `json:"data"`
	RequestID json.RawMessage `json:"request_id"`
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
}

// groupEvent is the payload of a channels-api subscription event (4.7).
type groupEvent struct {
	Action string          `json:"action"`
	PK     json.RawMessage `json:"pk"`
	Data   json.RawMessage `json:"data"`
	Model  string          `json:"model"`
}

// decodeFrame parses a client frame. ok is false when the frame is not a
// JSON object or its payload is neither an object nor absent.
func decodeFrame(msg []byte) (stream json.RawMessage, p inPayload, ok bool) {
	var f inFrame
	msg = bytes.TrimSpace(msg)
	if len(msg) == 0 || msg[0] != '{' || json.Unmarshal(msg, &f) != nil {
		return nil, p, false
	}
	body := bytes.TrimSpace(f.Payload)
	if len(body) == 0 || bytes.Equal(body, []byte("null")) {
		return f.Stream, p, true
	}
	if body[0] != '{' || json.Unmarshal(body, &p) != nil {
		return f.Stream, p, false
	}
	return f.Stream, p, true
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
