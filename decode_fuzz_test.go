package channelsapi

// This file fuzzes protocol.go's frame decoder, and etag.go's reader of
// If-Match, from inside the package.

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzDecodeFrame fuzzes the frame decoder directly: it never panics, a
// frame it accepts is a JSON object whose payload, when present and not
// null, is an object too, and the values it returns are those of the exact
// keys.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"stream":"items","payload":{"action":"list","request_id":1}}`,
		`{"stream":"items","payload":{"action":"create","data":{"name":"x"},"pk":1}}`,
		`{"stream":"items"}`,
		`{"stream":"items","payload":null}`,
		`{"stream":"items","payload":[]}`,
		`{"stream":"items","payload":{"action":"list"}} x`,
		` {"stream":1} `,
		"\xef\xbb\xbf{}",
		"{\"stream\":\"\xff\"}",
		`{"stream":"a","stream":"b","payload":{"action":"list","action":1}}`,
		`{"payload":{"pk":1e400,"request_id":99999999999999999999}}`,
		`{"STREAM":"items","Payload":{"ACTION":"delete","PK":1},"payload":{"action":"list"}}`,
		`{"stream":"items","payload":{"data":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}}`,
		`[]`, `null`, `""`, ``, `{`, `}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		_, p, ok := decodeFrame(msg)
		if !ok {
			return
		}
		trimmed := bytes.TrimSpace(msg)
		var frame map[string]json.RawMessage
		if len(trimmed) == 0 || trimmed[0] != '{' || json.Unmarshal(trimmed, &frame) != nil {
			t.Fatalf("accepted %q, which is not a JSON object", msg)
		}
		for _, raw := range []json.RawMessage{p.Action, p.PK, p.Data, p.RequestID} {
			if len(raw) > 0 && !json.Valid(raw) {
				t.Fatalf("accepted %q with a payload value %q that is not JSON", msg, raw)
			}
		}
		var payload map[string]json.RawMessage
		if body := bytes.TrimSpace(frame["payload"]); len(body) > 0 && !bytes.Equal(body, []byte("null")) {
			if body[0] != '{' || json.Unmarshal(body, &payload) != nil {
				t.Fatalf("accepted %q, whose payload is not an object", msg)
			}
		}
		// Keys are matched exactly: "PK" or "Action" is no key of the payload.
		if !bytes.Equal(p.PK, payload["pk"]) || !bytes.Equal(p.Action, payload["action"]) ||
			!bytes.Equal(p.IfMatch, payload["if_match"]) || !bytes.Equal(p.IdemKey, payload["idempotency_key"]) {
			t.Fatalf("decoded %q as pk %q, action %q", msg, p.PK, p.Action)
		}
	})
}

// FuzzParseIfMatch fuzzes the reader of If-Match: it never panics, and what
// it accepts is "*" or quoted tags with no quote, control character or
// space inside, each of which matches itself.
func FuzzParseIfMatch(f *testing.F) {
	for _, s := range []string{`*`, `"v1"`, `"a", W/"b"`, ` "x" ,, "y" `, `W/"w"`, `v1`, `"a"b"`, `,`, ``, `"`, `""`, `W/`, "\"\xff\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		p, err := parseIfMatch(value)
		if err != nil {
			return
		}
		if p.any {
			if strings.TrimSpace(value) != "*" {
				t.Fatalf("%q read as *", value)
			}
			return
		}
		for _, tag := range p.tags {
			inner := tag[1 : len(tag)-1]
			if tag[0] != '"' || tag[len(tag)-1] != '"' || strings.ContainsAny(inner, "\" \t\x00\x7f") {
				t.Fatalf("%q gave the tag %q", value, tag)
			}
			if !p.matches(tag) {
				t.Fatalf("%q: tag %q does not match itself", value, tag)
			}
		}
	})
}
