package channelsapi

import (
	"encoding/json"
	"fmt"
)

// This file holds the encoding of committed changes between the instances
// of an application: what brokerRelay publishes and decodes (broker.go).

// wireChange is a change as a Broker carries it; the stream is the topic.
type wireChange struct {
	Action string          `json:"a"`
	Key    string          `json:"k"` // pkKey of the primary key
	Data   json.RawMessage `json:"d"`
	// For models whose events need the row's states (authorized per
	// recipient, or live queries): the row before an update, and the
	// column values of the row and of the row before (every column, also
	// those the JSON hides), which scopes, permissions and filters are
	// evaluated on.
	Before    json.RawMessage `json:"b,omitempty"`
	Same      bool            `json:"s,omitempty"` // change.same
	Row       json.RawMessage `json:"r,omitempty"`
	BeforeRow json.RawMessage `json:"p,omitempty"`
	// With the outbox (outbox.go): the change's offset in the stream, and
	// the reason of a resync, which has no action.
	Offset uint64 `json:"o,omitempty"`
	Resync string `json:"x,omitempty"`
	// ETag is the object's ETag (etag.go), but in a delete.
	ETag string `json:"e,omitempty"`
}

// encodeWireChange encodes ch for the streams of r's model; stateful says
// whether one of them needs the row's states (registry.stateful), which
// carry the column values. offset is its place in r's stream, 0 unless the
// outbox numbered it.
func encodeWireChange(r resource, stateful bool, ch change, offset uint64) ([]byte, error) {
	if ch.resync != "" {
		return json.Marshal(wireChange{Offset: offset, Resync: ch.resync})
	}
	if err := ch.encode(); err != nil {
		return nil, err
	}
	w := wireChange{Action: ch.action, Key: pkKey(ch.pk), Data: ch.data, Same: ch.same, Offset: offset, ETag: ch.etagFor(r)}
	if stateful {
		m := r.model()
		w.Before = ch.before
		var err error
		if w.Row, err = m.columns(ch.obj); err != nil {
			return nil, err
		}
		if w.BeforeRow, err = m.columns(ch.beforeObj); err != nil {
			return nil, err
		}
	}
	return json.Marshal(w)
}

// decodeWireChange decodes a change of r's stream from a broker.
func decodeWireChange(r resource, payload []byte) (change, error) {
	var w wireChange
	if err := json.Unmarshal(payload, &w); err != nil {
		return change{}, err
	}
	if w.Resync != "" {
		return change{typ: r.model().schema.ModelType, resync: w.Resync, offset: w.Offset}, nil
	}
	if w.Action != actionCreate && w.Action != actionUpdate && w.Action != actionDelete {
		return change{}, fmt.Errorf("unknown action %q", w.Action)
	}
	m := r.model()
	pk, ok := m.parsePKText(w.Key)
	if !ok {
		return change{}, fmt.Errorf("invalid key %q", w.Key)
	}
	ch := change{typ: m.schema.ModelType, action: w.Action, pk: pk, data: w.Data, before: w.Before, same: w.Same, offset: w.Offset, etag: w.ETag}
	if !r.stateful() {
		return ch, nil
	}
	var err error
	if ch.obj, err = m.decodeObject(w.Data, w.Row); err != nil {
		return change{}, err
	}
	if w.Before != nil {
		if ch.beforeObj, err = m.decodeObject(w.Before, w.BeforeRow); err != nil {
			return change{}, err
		}
	}
	return ch, nil
}
