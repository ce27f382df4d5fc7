package channelsapi_test

// This file tests subscription.go, the subscribe actions: group and
// instance subscriptions and their errors, each change once per connection,
// the bound on a request_id and the subscription limit.

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi"
)

func TestSubscribeThenRESTCreate(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	ws.subscribe("create", nil)
	status, _ := srv.doREST(t, "POST", "/testmodel", `{"name":"over rest"}`)
	require.Equal(t, 201, status)
	assert.Equal(t, event("create", 1, "over rest"), ws.readPayload("testmodel"))
}

func TestSubscribeUpdateAndDelete(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "one", "two")
	ws := srv.dial(t, nil)
	ws.subscribe("update", 2)
	ws.subscribe("delete", nil)

	require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", "one!").Error) // not subscribed
	require.NoError(t, srv.DB.Model(&TestModel{ID: 2}).Update("name", "two!").Error)
	assert.Equal(t, event("update", 2, "two!"), ws.readPayload("testmodel"), "a pk-scoped subscription receives only its pk")

	require.NoError(t, srv.DB.Delete(&TestModel{}, 1).Error)
	assert.Equal(t, event("delete", 1, "one!"), ws.readPayload("testmodel"), "a delete event carries the object as it was")

	got := ws.request("testmodel", map[string]any{"action": "unsubscribe", "data": map[string]any{"action": "update"}, "pk": 2, "request_id": 3})
	assert.Equal(t, map[string]any{"action": "unsubscribe", "data": map[string]any{"action": "update"}, "errors": []any{},
		"response_status": 200.0, "request_id": 3.0}, got)
	require.NoError(t, srv.DB.Model(&TestModel{ID: 2}).Update("name", "unheard").Error)
	require.NoError(t, srv.DB.Delete(&TestModel{}, 2).Error)
	assert.Equal(t, event("delete", 2, "unheard"), ws.readPayload("testmodel"), "no update event after unsubscribe")
}

func TestSubscribeErrors(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	tests := []struct {
		name string
		give map[string]any
		want []any
		code float64
	}{
		{"no data", map[string]any{"action": "subscribe"}, []any{"action required"}, 400},
		{"empty data", map[string]any{"action": "subscribe", "data": map[string]any{}}, []any{"action required"}, 400},
		{"data not an object", map[string]any{"action": "subscribe", "data": "create"}, []any{"action required"}, 400},
		{"unknown event", map[string]any{"action": "subscribe", "data": map[string]any{"action": "retrieve"}}, []any{"Invalid subscription action"}, 400},
		{"keys are case-sensitive", map[string]any{"action": "subscribe", "data": map[string]any{"ACTION": "create"}}, []any{"action required"}, 400},
		{"event not a string", map[string]any{"action": "subscribe", "data": map[string]any{"action": 1}}, []any{"Invalid subscription action"}, 400},
		{"pk that cannot exist", map[string]any{"action": "subscribe", "data": map[string]any{"action": "update"}, "pk": "x"}, []any{"Not found."}, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ws.request("testmodel", tt.give)
			assert.Equal(t, tt.code, got["response_status"])
			assert.Equal(t, tt.want, got["errors"])
			assert.Nil(t, got["data"])
		})
	}
	assert.Zero(t, srv.API.Stats().Subscriptions, "failed subscribes leave nothing in the index")
}

func TestEachChangeOncePerConnection(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "a")
	ws := srv.dial(t, nil)
	ws.subscribe("update", nil)
	ws.subscribe("update", 1)
	ws.subscribe("update", "1") // the same subscription: "1" is the key 1
	for i := range 3 {
		name := fmt.Sprintf("v%d", i)
		require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", name).Error)
		assert.Equal(t, event("update", 1, name), ws.readPayload("testmodel"), "one event per change, never a duplicate")
	}
}

func TestInstanceSubscription(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "thing")
	ws := srv.dial(t, nil)

	got := ws.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "r9"})
	assert.Equal(t, map[string]any{"action": "subscribe_instance", "data": nil, "errors": []any{}, "response_status": 201.0, "request_id": "r9"}, got)
	got = ws.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "r9"})
	assert.EqualValues(t, 201, got["response_status"], "subscribing again is harmless")
	got = ws.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": "1", "request_id": 7})
	assert.EqualValues(t, 201, got["response_status"])

	require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", "new").Error)
	updates := map[any]map[string]any{}
	for range 2 {
		p := ws.readPayload("testmodel")
		updates[p["request_id"]] = p
	}
	for _, rid := range []any{"r9", 7.0} {
		assert.Equal(t, map[string]any{"action": "update", "data": map[string]any{"id": 1.0, "name": "new"},
			"errors": []any{}, "response_status": 200.0, "request_id": rid}, updates[rid], "one event per request_id")
	}

	got = ws.request("testmodel", map[string]any{"action": "unsubscribe_instance", "pk": 1, "request_id": 7})
	assert.Equal(t, map[string]any{"action": "unsubscribe_instance", "data": nil, "errors": []any{}, "response_status": 204.0, "request_id": 7.0}, got)

	require.NoError(t, srv.DB.Delete(&TestModel{ID: 1}).Error)
	assert.Equal(t, map[string]any{"action": "delete", "data": map[string]any{"pk": 1.0},
		"errors": []any{}, "response_status": 204.0, "request_id": "r9"}, ws.readPayload("testmodel"))

	tests := []struct {
		name string
		give map[string]any
		code float64
		want []any
	}{
		{"no request_id", map[string]any{"action": "subscribe_instance", "pk": 1}, 400, []any{"request_id required"}},
		{"no such object", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "x"}, 404, []any{"Not found."}},
		{"no pk", map[string]any{"action": "subscribe_instance", "request_id": "x"}, 404, []any{"Not found."}},
		{"unsubscribe without request_id", map[string]any{"action": "unsubscribe_instance", "pk": 1}, 400, []any{"request_id required"}},
		{"unsubscribe from a gone object", map[string]any{"action": "unsubscribe_instance", "pk": 1, "request_id": "r9"}, 204, []any{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ws.request("testmodel", tt.give)
			assert.Equal(t, tt.code, got["response_status"])
			assert.Equal(t, tt.want, got["errors"])
		})
	}
}

func TestSubscriptionLimit(t *testing.T) {
	srv := newItemsServer(t, channelsapi.WithMaxSubscriptions(3))
	ws := srv.dial(t, nil)
	subscribe := func(c *wsClient, event string) map[string]any {
		return c.request("items", map[string]any{"action": "subscribe", "data": map[string]any{"action": event}, "request_id": event})
	}
	tooMany := []any{"Too many subscriptions."}

	for _, e := range []string{"create", "update"} {
		require.EqualValues(t, 200, subscribe(ws, e)["response_status"])
	}
	got := ws.request("items", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "i1"})
	require.EqualValues(t, 201, got["response_status"], "%v", got)

	got = subscribe(ws, "delete")
	assert.EqualValues(t, 429, got["response_status"], "the 4th subscription")
	assert.Equal(t, tooMany, got["errors"])
	got = ws.request("items", map[string]any{"action": "subscribe_instance", "pk": 2, "request_id": "i2"})
	assert.EqualValues(t, 429, got["response_status"], "the 4th subscription, an instance one")
	assert.Equal(t, tooMany, got["errors"])
	assert.Equal(t, channelsapi.Stats{Connections: 1, Subscribers: 1, Subscriptions: 3}, srv.API.Stats())

	// The limit is per connection, and unsubscribing makes room.
	other := srv.dial(t, nil)
	for _, e := range []string{"create", "update", "delete"} {
		assert.EqualValues(t, 200, subscribe(other, e)["response_status"])
	}
	got = ws.request("items", map[string]any{"action": "unsubscribe", "data": map[string]any{"action": "create"}})
	require.EqualValues(t, 200, got["response_status"])
	assert.EqualValues(t, 200, subscribe(ws, "delete")["response_status"])

	// The subscriptions that were refused are not there: a delete is heard
	// once, an update of item 2 is not heard as an instance event.
	require.NoError(t, srv.DB.Model(&limitItem{ID: 2}).Update("name", "deux").Error)
	got = ws.readPayload("items")
	assert.Equal(t, "update", got["action"])
	assert.Nil(t, got["request_id"], "a group event, no instance event for item 2")
	require.NoError(t, srv.DB.Delete(&limitItem{ID: 3}).Error)
	assert.Equal(t, "delete", ws.readPayload("items")["action"])
	ws.assertAliveOn("items")
}

// TestRequestIDSizeBound checks the bound on a request_id, which an instance
// subscription keeps for as long as it lasts: 256 bytes of compact JSON.
func TestRequestIDSizeBound(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "x")
	ws := srv.dial(t, nil)
	tests := []struct {
		name   string
		length int // of the request_id, a JSON string, quotes included
		status float64
		errors []any
		subs   int // subscriptions held afterwards
	}{
		{"60 KiB", 60 << 10, 400, []any{"request_id too long"}, 0},
		{"257 bytes", 257, 400, []any{"request_id too long"}, 0},
		{"256 bytes", 256, 201, []any{}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rid := `"` + strings.Repeat("r", tt.length-2) + `"`
			ws.in(t).sendRaw([]byte(`{"stream":"testmodel","payload":{"action":"subscribe_instance","pk":1,"request_id":` + rid + `}}`))
			got := ws.in(t).readPayload("testmodel")
			assert.Equal(t, tt.status, got["response_status"])
			assert.Equal(t, tt.errors, got["errors"])
			assert.Equal(t, tt.subs, srv.API.Stats().Subscriptions)
		})
	}
	require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", "y").Error)
	rid, _ := ws.readPayload("testmodel")["request_id"].(string)
	assert.True(t, rid == strings.Repeat("r", 254), "the event of the one subscription, with its request_id whole: got %d bytes", len(rid))
}

// TestSubscribePKInData checks the form of the channels-api README: the pk
// inside data.
func TestSubscribePKInData(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "one", "two")
	ws := srv.dial(t, nil)
	got := ws.request("testmodel", map[string]any{"action": "subscribe", "data": map[string]any{"action": "update", "pk": "2"}, "request_id": 1})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", "one!").Error)
	require.NoError(t, srv.DB.Model(&TestModel{ID: 2}).Update("name", "two!").Error)
	assert.Equal(t, event("update", 2, "two!"), ws.readPayload("testmodel"), "only the pk of data.pk")

	got = ws.request("testmodel", map[string]any{"action": "subscribe", "pk": 1, "data": map[string]any{"action": "update", "pk": 2}, "request_id": 2})
	assert.Equal(t, []any{"pk and data.pk differ"}, got["errors"])
	assert.EqualValues(t, 400, got["response_status"])
	got = ws.request("testmodel", map[string]any{"action": "subscribe", "pk": 2, "data": map[string]any{"action": "update", "pk": "2"}, "request_id": 3})
	assert.EqualValues(t, 200, got["response_status"], "the same pk twice")
	got = ws.request("testmodel", map[string]any{"action": "subscribe", "data": map[string]any{"action": "update", "pk": "x"}, "request_id": 4})
	assert.EqualValues(t, 404, got["response_status"], "a pk that does not parse")

	got = ws.request("testmodel", map[string]any{"action": "unsubscribe", "data": map[string]any{"action": "update", "pk": 2}, "request_id": 5})
	require.EqualValues(t, 200, got["response_status"])
	require.NoError(t, srv.DB.Model(&TestModel{ID: 2}).Update("name", "unheard").Error)
	ws.assertAlive()
}
