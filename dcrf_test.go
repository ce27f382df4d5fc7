package channelsapi_test

// This file tests the wire protocol against its reference client:
// dcrf-client 0.3.0 (npm), the JavaScript client of
// djangochannelsrestframework, unchanged, run by Node over a real socket
// (testdata/dcrf/run.mjs), with this test as its driver.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// dcrfItem is the model of the "items" stream that run.mjs drives.
type dcrfItem struct {
	ID    uint   `json:"id" gorm:"primaryKey"`
	Name  string `json:"name" binding:"required,max=100"`
	Votes int    `json:"votes"`
	Done  bool   `json:"done"`
}

// dcrfScript is the Node script, relative to the package directory, and
// dcrfModules the directory `npm ci --prefix testdata/dcrf` fills.
const (
	dcrfScript  = "testdata/dcrf/run.mjs"
	dcrfModules = "testdata/dcrf/node_modules"
)

// dcrfNode returns the path of node. Without node or without
// testdata/dcrf/node_modules the test is skipped, except on CI (CI=true),
// where it fails.
func dcrfNode(t *testing.T) string {
	t.Helper()
	missing := func(what, install string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("dcrf-client test: %s and CI=true, so it may not be skipped: .ci/run must %s", what, install)
		}
		t.Skipf("dcrf-client test skipped: %s (%s)", what, install)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not installed", "install Node 20 or later, then run `npm ci --prefix testdata/dcrf`")
	}
	if _, err := os.Stat(dcrfModules + "/dcrf-client/package.json"); err != nil {
		missing(dcrfModules+" is missing", "run `npm ci --prefix testdata/dcrf`")
	}
	return node
}

// dcrfLine is a line run.mjs writes: a request to its driver, or its result.
type dcrfLine struct {
	Ask    string          `json:"ask"`
	PK     uint            `json:"pk"`
	Name   string          `json:"name"`
	Result json.RawMessage `json:"result"`
}

// dcrfAnswer is what the driver writes back to an ask.
type dcrfAnswer struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// dcrfResult is what run.mjs observed; see the script.
type dcrfResult struct {
	Created       []dcrfItem     `json:"created"`
	CreateInvalid map[string]any `json:"create_invalid"`
	List          struct {
		All   []dcrfItem     `json:"all"`
		Page2 map[string]any `json:"page2"`
	} `json:"list"`
	Filters map[string]struct {
		Data []string       `json:"data"`
		Meta map[string]any `json:"meta"`
	} `json:"filters"`
	FilterErrors    map[string]any `json:"filter_errors"`
	RetrieveMissing map[string]any `json:"retrieve_missing"`
	Patched         dcrfItem       `json:"patched"`
	Updated         dcrfItem       `json:"updated"`
	Subscribe       struct {
		Reply   map[string]any `json:"reply"`
		Missing map[string]any `json:"missing"`
	} `json:"subscribe"`
	Events []struct {
		Action string         `json:"action"`
		Data   map[string]any `json:"data"`
	} `json:"events"`
	RawEvents []map[string]any `json:"raw_events"`
	Reconnect struct {
		Close struct {
			Code   int    `json:"code"`
			Reason string `json:"reason"`
		} `json:"close"`
		Resubscribed []map[string]any `json:"resubscribed"`
	} `json:"reconnect"`
	Unsubscribe map[string]any `json:"unsubscribe"`
	Live        struct {
		Reply  map[string]any   `json:"reply"`
		Events []map[string]any `json:"events"`
	} `json:"live"`
	AfterUnsubscribe []any `json:"after_unsubscribe"`
}

// runDCRF runs run.mjs against srv, answers its asks (a rename through
// GORM, a disconnect from the server side) and returns its result. The
// script has deadlines of its own; the process is killed after two minutes.
func runDCRF(t *testing.T, node string, srv *testServer) dcrfResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, node, dcrfScript, srv.WSURL)
	cmd.WaitDelay = 10 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	waited := false
	t.Cleanup(func() {
		cancel()
		if !waited {
			_ = cmd.Wait()
		}
	})

	var result json.RawMessage
	lines := bufio.NewScanner(stdout)
	lines.Buffer(nil, 16<<20)
	for lines.Scan() {
		var line dcrfLine
		require.NoError(t, json.Unmarshal(lines.Bytes(), &line), "run.mjs wrote %q", lines.Bytes())
		if line.Result != nil {
			result = line.Result
			continue
		}
		answer := dcrfDo(srv, line)
		if !answer.OK {
			t.Errorf("ask %+v: %s", line, answer.Error)
		}
		_, err := fmt.Fprintf(stdin, "%s\n", jsonBytes(t, answer))
		require.NoError(t, err)
	}
	_, _ = io.Copy(io.Discard, stdout)
	err = cmd.Wait()
	waited = true
	require.NoError(t, err, "node %s failed:\n%s", dcrfScript, stderr.String())
	require.NotNil(t, result, "run.mjs printed no result; stderr:\n%s", stderr.String())
	var res dcrfResult
	require.NoError(t, json.Unmarshal(result, &res))
	return res
}

// withoutETags checks that the create and update events carry an ETag
// (PROTOCOL.md 11), which dcrf-client passes through, and removes it.
func withoutETags(t *testing.T, events []map[string]any) {
	t.Helper()
	for _, e := range events {
		if e["action"] == "delete" {
			assert.NotContains(t, e, "etag", "a delete event has no ETag")
			continue
		}
		etag, _ := e["etag"].(string)
		assert.Regexp(t, `^"[0-9a-f]{32}"$`, etag, "event %v", e)
		delete(e, "etag")
	}
}

// dcrfDo does what run.mjs asks of the server's side.
func dcrfDo(srv *testServer, line dcrfLine) dcrfAnswer {
	switch line.Ask {
	case "update":
		var it dcrfItem
		if err := srv.DB.First(&it, line.PK).Error; err != nil {
			return dcrfAnswer{Error: err.Error()}
		}
		if err := srv.DB.Model(&it).Update("name", line.Name).Error; err != nil {
			return dcrfAnswer{Error: err.Error()}
		}
		return dcrfAnswer{OK: true}
	case "disconnect":
		if n := srv.API.Disconnect(func(any) bool { return true }); n != 1 {
			return dcrfAnswer{Error: fmt.Sprintf("closed %d connections, want 1", n)}
		}
		return dcrfAnswer{OK: true}
	}
	return dcrfAnswer{Error: "unknown ask " + line.Ask}
}

func TestDCRFClient(t *testing.T) {
	node := dcrfNode(t)
	db := openDB(t, &dcrfItem{})
	srv := newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[dcrfItem]{
			Stream: "items",
			Label:  "tests.item",
			Filters: map[string][]string{
				"name":  {"exact", "icontains", "istartswith"},
				"votes": {"exact", "gte", "lte", "in", "range"},
				"done":  {"exact"},
			},
			OrderingFields: []string{"id", "name", "votes"},
			SearchFields:   []string{"name"},
		}))
	})

	res := runDCRF(t, node, srv)
	withoutPosition(t, res.List.Page2["meta"].(map[string]any))
	for _, f := range res.Filters {
		if f.Meta != nil {
			withoutPosition(t, f.Meta)
		}
	}
	withoutPosition(t, res.Live.Reply["data"].(map[string]any))
	// Events carry offsets that grow (PROTOCOL.md 10); compared without.
	for _, events := range [][]map[string]any{res.RawEvents, res.Live.Events} {
		last := 0.0
		for _, e := range events {
			offset, _ := e["offset"].(float64)
			assert.Greater(t, offset, last, "offset of %v", e)
			last = offset
			delete(e, "offset")
		}
	}

	require.Len(t, res.Created, 3)
	alpha, beta, gamma := res.Created[0], res.Created[1], res.Created[2]
	assert.Equal(t, dcrfItem{ID: alpha.ID, Name: "alpha", Votes: 3}, alpha)
	assert.Equal(t, dcrfItem{ID: gamma.ID, Name: "Gamma", Votes: 7, Done: true}, gamma)
	assert.Equal(t, []dcrfItem{alpha, beta, gamma}, res.List.All)
	assert.Equal(t, map[string]any{"count": 3.0, "page": 2.0, "page_size": 2.0, "num_pages": 2.0}, res.List.Page2["meta"])
	assert.Equal(t, []any{map[string]any{"name": []any{"This field is required."}}}, res.CreateInvalid["errors"])
	assert.Equal(t, []any{"Not found."}, res.RetrieveMissing["errors"])
	assert.Equal(t, dcrfItem{ID: alpha.ID, Name: "alpha2", Votes: 5}, res.Updated)

	t.Run("filters", func(t *testing.T) {
		tests := []struct {
			name string
			want []string
		}{
			{"name exact", []string{"beta"}},
			{"name__icontains", []string{"Gamma"}},
			{"name__istartswith and done", []string{"Gamma"}},
			{"votes__gte with ordering", []string{"beta", "Gamma"}},
			{"votes__in array", []string{"alpha", "Gamma"}},
			{"votes__in string", []string{"alpha", "beta"}},
			{"votes__range", []string{"Gamma"}},
			{"done", []string{"Gamma"}},
			{"search", []string{"alpha"}},
			{"empty value", []string{"alpha", "beta", "Gamma"}},
			{"ordering and page", []string{"Gamma", "beta"}},
		}
		require.Len(t, res.Filters, len(tests))
		for _, tt := range tests {
			assert.Equal(t, tt.want, res.Filters[tt.name].Data, tt.name)
		}
		assert.Equal(t, map[string]any{"count": 3.0, "page": 1.0, "page_size": 2.0, "num_pages": 2.0},
			res.Filters["ordering and page"].Meta)
		assert.Equal(t, map[string]any{
			"unknown filter":   map[string]any{"colour": []any{"Unknown filter."}},
			"unknown lookup":   map[string]any{"name__regex": []any{"Unknown filter."}},
			"bad value":        map[string]any{"votes__gte": []any{"Enter a number."}},
			"unknown ordering": map[string]any{"ordering": []any{`Unknown ordering field "colour".`}},
		}, res.FilterErrors)
	})

	t.Run("instance subscription", func(t *testing.T) {
		subID := fmt.Sprintf("sub-alpha-%d", alpha.ID)
		pk := float64(alpha.ID)
		assert.Equal(t, map[string]any{"action": "subscribe_instance", "data": nil, "errors": []any{},
			"response_status": 201.0, "request_id": subID}, res.Subscribe.Reply)
		assert.Equal(t, []any{"Not found."}, res.Subscribe.Missing["errors"])
		assert.EqualValues(t, 404, res.Subscribe.Missing["response_status"])

		object := func(name string, votes int) map[string]any {
			return map[string]any{"id": pk, "name": name, "votes": float64(votes), "done": false}
		}
		instanceEvent := func(action string, status int, data map[string]any) map[string]any {
			return map[string]any{"action": action, "data": data, "errors": []any{},
				"response_status": float64(status), "request_id": subID}
		}
		// PROTOCOL.md 4.8, as received: the Go change, the client's patch,
		// the Go change after reconnecting, the delete.
		withoutETags(t, res.RawEvents)
		assert.Equal(t, []map[string]any{
			instanceEvent("update", 200, object("from-go", 5)),
			instanceEvent("update", 200, object("from-go", 6)),
			instanceEvent("update", 200, object("after-reconnect", 6)),
			instanceEvent("delete", 204, map[string]any{"pk": pk}),
		}, res.RawEvents)
		// What the client's callback saw: the delete's pk moved to pkField.
		require.Len(t, res.Events, 4)
		assert.Equal(t, "delete", res.Events[3].Action)
		assert.Equal(t, map[string]any{"id": pk}, res.Events[3].Data)

		assert.Equal(t, 1008, res.Reconnect.Close.Code)
		assert.Equal(t, "authorization withdrawn", res.Reconnect.Close.Reason)
		require.Len(t, res.Reconnect.Resubscribed, 1)
		assert.EqualValues(t, 201, res.Reconnect.Resubscribed[0]["response_status"])

		assert.Equal(t, map[string]any{"action": "unsubscribe_instance", "data": nil, "errors": []any{},
			"response_status": 204.0, "request_id": subID}, res.Unsubscribe)
	})

	t.Run("live query", func(t *testing.T) {
		liveID := fmt.Sprintf("live-beta-%d", beta.ID)
		assert.Equal(t, map[string]any{"action": "subscribe_list", "errors": []any{}, "response_status": 200.0,
			"request_id": liveID, "data": map[string]any{"subscription": liveID, "results": []any{}, "count": 0.0}},
			res.Live.Reply)
		liveEvent := func(action string, votes int) map[string]any {
			return map[string]any{"action": action, "pk": float64(beta.ID), "model": "tests.item", "request_id": liveID,
				"data": map[string]any{"id": float64(beta.ID), "name": "beta", "votes": float64(votes), "done": false}}
		}
		// PROTOCOL.md 9: votes__gte=11 entered at 11, changed at 12, left at
		// 2 with the last state it matched in.
		withoutETags(t, res.Live.Events)
		assert.Equal(t, []map[string]any{liveEvent("create", 11), liveEvent("update", 12), liveEvent("delete", 12)},
			res.Live.Events)
	})

	// Nothing for the ended instance subscription and live query.
	assert.Empty(t, res.AfterUnsubscribe)

	var rows []dcrfItem
	require.NoError(t, db.Order("id").Find(&rows).Error)
	assert.Equal(t, []dcrfItem{{ID: beta.ID, Name: "beta", Votes: 14}, gamma}, rows)
}
