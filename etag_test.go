package channelsapi_test

// This file tests etag.go: the ETag of objects on both transports and in
// events, If-Match on update, patch and delete (412 with the current
// object, "*", malformed values), the version column the capture raises on
// every update, and no lost update under concurrent increments.

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// versionedCounter has a version column: its ETag is "v<N>".
type versionedCounter struct {
	ID      uint   `json:"id" gorm:"primaryKey"`
	Name    string `json:"name"`
	N       int    `json:"n"`
	Version int64  `json:"version"`
}

// hashedCounter has none: its ETag is a hash of its JSON.
type hashedCounter struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
	N    int    `json:"n"`
}

// newCounterServer serves both counters, "vcounters" and "hcounters",
// without a rate limit (the concurrency tests send many frames).
func newCounterServer(tb testing.TB, opts ...channelsapi.Option) *testServer {
	tb.Helper()
	db := openDB(tb, &versionedCounter{}, &hashedCounter{})
	opts = append([]channelsapi.Option{channelsapi.WithRateLimit(1e6, 1e6)}, opts...)
	return newServerOn(tb, db, addCounters(tb), opts...)
}

// addCounters adds the ViewSets of both counters.
func addCounters(tb testing.TB) func(api *channelsapi.API, db *gorm.DB) {
	return func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(tb, channelsapi.Add(api, channelsapi.ViewSet[versionedCounter]{Stream: "vcounters", VersionField: "version"}))
		require.NoError(tb, channelsapi.Add(api, channelsapi.ViewSet[hashedCounter]{Stream: "hcounters"}))
	}
}

var (
	versionETag = regexp.MustCompile(`^"v[0-9]+"$`)
	hashETag    = regexp.MustCompile(`^"[0-9a-f]{32}"$`)
)

func counterStreams() []struct {
	stream string
	etag   *regexp.Regexp
} {
	return []struct {
		stream string
		etag   *regexp.Regexp
	}{{"vcounters", versionETag}, {"hcounters", hashETag}}
}

func TestETagOnBothTransportsAndEvents(t *testing.T) {
	srv := newCounterServer(t)
	for _, tt := range counterStreams() {
		t.Run(tt.stream, func(t *testing.T) {
			ws := srv.dial(t, nil)
			ws.keepETag = true
			sub := ws.request(tt.stream, map[string]any{"action": "subscribe", "data": map[string]any{"action": "update"}, "request_id": "s"})
			require.EqualValues(t, 200, sub["response_status"], "%v", sub)

			status, body, h := srv.restWith(t, http.MethodPost, "/"+tt.stream, `{"name":"a"}`, nil)
			require.Equal(t, http.StatusCreated, status, "%v", body)
			created := h.Get("ETag")
			require.Regexp(t, tt.etag, created)
			id := body.(map[string]any)["id"]
			path := fmt.Sprintf("/%s/%v", tt.stream, id)

			status, _, h = srv.restWith(t, http.MethodGet, path, "", nil)
			require.Equal(t, http.StatusOK, status)
			assert.Equal(t, created, h.Get("ETag"), "retrieve after create")

			got := ws.request(tt.stream, map[string]any{"action": "retrieve", "pk": id, "request_id": 1})
			assert.Equal(t, created, got["etag"], "retrieve on the socket")

			status, _, h = srv.restWith(t, http.MethodPatch, path, `{"n":1}`, nil)
			require.Equal(t, http.StatusOK, status)
			patched := h.Get("ETag")
			assert.NotEqual(t, created, patched)
			ev := ws.readPayload(tt.stream)
			assert.Equal(t, "update", ev["action"])
			assert.Equal(t, patched, ev["etag"], "the event's etag")

			got = ws.request(tt.stream, map[string]any{"action": "update", "pk": id, "data": map[string]any{"name": "b", "n": 2}, "request_id": 2})
			require.EqualValues(t, 200, got["response_status"], "%v", got)
			updated, _ := got["etag"].(string)
			assert.Regexp(t, tt.etag, updated)
			assert.NotEqual(t, patched, updated)
			ev = ws.readPayload(tt.stream)
			assert.Equal(t, updated, ev["etag"])
			_, _, h = srv.restWith(t, http.MethodGet, path, "", nil)
			assert.Equal(t, updated, h.Get("ETag"), "retrieve after a socket update")

			got = ws.request(tt.stream, map[string]any{"action": "create", "data": map[string]any{"name": "c"}, "request_id": 3})
			require.EqualValues(t, 201, got["response_status"], "%v", got)
			assert.Regexp(t, tt.etag, got["etag"])
		})
	}
}

func TestIfMatch(t *testing.T) {
	srv := newCounterServer(t)
	for _, tt := range counterStreams() {
		t.Run(tt.stream, func(t *testing.T) {
			ifMatch := func(etag string) http.Header { return http.Header{"If-Match": {etag}} }
			status, body, h := srv.restWith(t, http.MethodPost, "/"+tt.stream, `{"name":"a"}`, nil)
			require.Equal(t, http.StatusCreated, status)
			first := h.Get("ETag")
			id := body.(map[string]any)["id"]
			path := fmt.Sprintf("/%s/%v", tt.stream, id)

			status, body, h = srv.restWith(t, http.MethodPatch, path, `{"n":1}`, ifMatch(first))
			require.Equal(t, http.StatusOK, status, "%v", body)
			second := h.Get("ETag")
			current := body

			// A stale ETag: 412 with the current object and its ETag,
			// nothing written.
			status, body, h = srv.restWith(t, http.MethodPatch, path, `{"n":9}`, ifMatch(first))
			assert.Equal(t, http.StatusPreconditionFailed, status)
			assert.Equal(t, current, body)
			assert.Equal(t, second, h.Get("ETag"))
			status, body, _ = srv.restWith(t, http.MethodPut, path, `{"name":"x","n":9}`, ifMatch(first))
			assert.Equal(t, http.StatusPreconditionFailed, status)
			assert.Equal(t, current, body)
			status, body, _ = srv.restWith(t, http.MethodDelete, path, "", ifMatch(first))
			assert.Equal(t, http.StatusPreconditionFailed, status)
			assert.Equal(t, current, body)

			ws := srv.dial(t, nil)
			ws.keepETag = true
			got := ws.request(tt.stream, map[string]any{"action": "patch", "pk": id, "data": map[string]any{"n": 9}, "if_match": first, "request_id": "p"})
			assert.EqualValues(t, 412, got["response_status"], "%v", got)
			assert.Equal(t, []any{"Precondition failed."}, got["errors"])
			assert.Equal(t, current, got["data"])
			assert.Equal(t, second, got["etag"])
			assert.Equal(t, "p", got["request_id"])
			got = ws.request(tt.stream, map[string]any{"action": "delete", "pk": id, "if_match": first, "request_id": "d"})
			assert.EqualValues(t, 412, got["response_status"], "%v", got)
			assert.Equal(t, current, got["data"])

			status, body, _ = srv.restWith(t, http.MethodGet, path, "", nil)
			require.Equal(t, http.StatusOK, status)
			assert.Equal(t, current, body, "nothing was written")

			// A list with the current ETag matches; a weak one never does.
			status, _, h = srv.restWith(t, http.MethodPatch, path, `{"n":2}`, ifMatch(`"nope", `+second))
			require.Equal(t, http.StatusOK, status)
			third := h.Get("ETag")
			status, _, _ = srv.restWith(t, http.MethodPatch, path, `{"n":3}`, ifMatch("W/"+third))
			assert.Equal(t, http.StatusPreconditionFailed, status)

			// The socket's if_match with the current ETag.
			got = ws.request(tt.stream, map[string]any{"action": "patch", "pk": id, "data": map[string]any{"n": 3}, "if_match": third, "request_id": "q"})
			require.EqualValues(t, 200, got["response_status"], "%v", got)
			fourth := got["etag"].(string)

			// "*" matches any existing object, and no missing one.
			status, _, _ = srv.restWith(t, http.MethodPatch, path, `{"n":4}`, ifMatch("*"))
			assert.Equal(t, http.StatusOK, status)
			status, _, _ = srv.restWith(t, http.MethodDelete, fmt.Sprintf("/%s/999", tt.stream), "", ifMatch("*"))
			assert.Equal(t, http.StatusNotFound, status)

			// Delete with the current ETag.
			_, _, h = srv.restWith(t, http.MethodGet, path, "", nil)
			assert.NotEqual(t, fourth, h.Get("ETag"))
			status, _, _ = srv.restWith(t, http.MethodDelete, path, "", ifMatch(h.Get("ETag")))
			assert.Equal(t, http.StatusNoContent, status)
			status, _, _ = srv.restWith(t, http.MethodGet, path, "", nil)
			assert.Equal(t, http.StatusNotFound, status)
		})
	}
}

func TestIfMatchMalformed(t *testing.T) {
	srv := newCounterServer(t)
	status, _, _ := srv.restWith(t, http.MethodPost, "/hcounters", `{"name":"a"}`, nil)
	require.Equal(t, http.StatusCreated, status)
	for _, give := range []string{`v1`, `"a"b"`, `W/`, `,`, `"a" "b"`, `""x`, "\"a\tb\""} {
		t.Run(give, func(t *testing.T) {
			status, body, _ := srv.restWith(t, http.MethodPatch, "/hcounters/1", `{"n":1}`, http.Header{"If-Match": {give}})
			assert.Equal(t, http.StatusBadRequest, status)
			assert.Equal(t, map[string]any{"detail": `Invalid If-Match: expected "*" or a comma-separated list of quoted entity tags such as "v3".`}, body)
		})
	}
	ws := srv.dial(t, nil)
	for _, give := range []any{5, true, []any{`"a"`}, map[string]any{}} {
		got := ws.request("hcounters", map[string]any{"action": "patch", "pk": 1, "data": map[string]any{"n": 1}, "if_match": give, "request_id": 1})
		assert.EqualValues(t, 400, got["response_status"], "%v", got)
		assert.Equal(t, []any{`if_match must be a string: "*" or a comma-separated list of quoted entity tags such as "\"v3\"".`}, got["errors"])
	}
	got := ws.request("hcounters", map[string]any{"action": "delete", "pk": 1, "if_match": "v1", "request_id": 2})
	assert.EqualValues(t, 400, got["response_status"], "%v", got)
	// A precondition is one of writes: elsewhere it is not read.
	got = ws.request("hcounters", map[string]any{"action": "retrieve", "pk": 1, "if_match": 5, "request_id": 3})
	assert.EqualValues(t, 200, got["response_status"], "%v", got)
	var c hashedCounter
	require.NoError(t, srv.DB.First(&c, 1).Error)
	assert.Equal(t, 0, c.N, "nothing was written")
}

func TestVersionRaisedByEveryUpdate(t *testing.T) {
	srv := newCounterServer(t)
	c := versionedCounter{Name: "a"}
	require.NoError(t, srv.DB.Create(&c).Error)
	require.EqualValues(t, 0, c.Version)
	path := fmt.Sprintf("/vcounters/%d", c.ID)
	_, _, h := srv.restWith(t, http.MethodGet, path, "", nil)
	require.Equal(t, `"v0"`, h.Get("ETag"))

	// Updates made outside the API raise it too, and the struct updated
	// gets the new value.
	require.NoError(t, srv.DB.Model(&c).Update("n", 5).Error)
	assert.EqualValues(t, 1, c.Version)
	c.N = 6
	require.NoError(t, srv.DB.Save(&c).Error)
	assert.EqualValues(t, 2, c.Version)
	require.NoError(t, srv.DB.Model(&versionedCounter{}).Where("id = ?", c.ID).Updates(map[string]any{"n": 7, "version": 100}).Error)
	var got versionedCounter
	require.NoError(t, srv.DB.First(&got, c.ID).Error)
	assert.EqualValues(t, 3, got.Version, "an assignment of the version is replaced")
	assert.Equal(t, 7, got.N)

	status, body, h := srv.restWith(t, http.MethodPatch, path, `{"n":8}`, http.Header{"If-Match": {`"v0"`}})
	assert.Equal(t, http.StatusPreconditionFailed, status)
	assert.Equal(t, `"v3"`, h.Get("ETag"))
	assert.EqualValues(t, 3, body.(map[string]any)["version"])

	// Clients cannot write it.
	status, body, h = srv.restWith(t, http.MethodPatch, path, `{"n":8,"version":50}`, http.Header{"If-Match": {`"v3"`}})
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, `"v4"`, h.Get("ETag"))
	assert.EqualValues(t, 4, body.(map[string]any)["version"])
}

func TestVersionFieldInvalid(t *testing.T) {
	for _, tt := range []struct{ name, give, want string }{
		{"unknown", "nope", `version field "nope" is not a column of the model`},
		{"not an integer", "name", `version field "name" must be an integer`},
		{"primary key", "id", `version field "id" is the primary key`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			newServerOn(t, openDB(t, &versionedCounter{}), func(api *channelsapi.API, _ *gorm.DB) {
				err := channelsapi.Add(api, channelsapi.ViewSet[versionedCounter]{Stream: "vcounters", VersionField: tt.give})
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.want)
			})
		})
	}
	newServerOn(t, openDB(t, &versionedCounter{}), func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[versionedCounter]{Stream: "a", VersionField: "Version"}))
		err := channelsapi.Add(api, channelsapi.ViewSet[versionedCounter]{Stream: "b"})
		require.ErrorContains(t, err, "another VersionField")
	})
}

// TestIfMatchNoLostUpdate: 8 clients, half on REST and half on the
// socket, increment one counter 1,000 times in all, each increment a read
// and a conditional write retried on 412 with the current object the 412
// carries. Every increment counts.
func TestIfMatchNoLostUpdate(t *testing.T) {
	const clients, increments = 8, 1000
	srv := newCounterServer(t)
	for _, tt := range counterStreams() {
		t.Run(tt.stream, func(t *testing.T) {
			status, body, _ := srv.restWith(t, http.MethodPost, "/"+tt.stream, `{"name":"c"}`, nil)
			require.Equal(t, http.StatusCreated, status)
			id := body.(map[string]any)["id"]
			path := fmt.Sprintf("/%s/%v", tt.stream, id)
			var wg sync.WaitGroup
			for i := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if i%2 == 0 {
						incrementREST(t, srv, path, increments/clients)
					} else {
						incrementSocket(t, srv, tt.stream, id, increments/clients)
					}
				}()
			}
			wg.Wait()
			_, body, _ = srv.restWith(t, http.MethodGet, path, "", nil)
			assert.EqualValues(t, increments, body.(map[string]any)["n"])
		})
	}
}

// incrementREST adds 1 to the counter at path n times over REST.
func incrementREST(t *testing.T, srv *testServer, path string, n int) {
	status, body, h := srv.restWith(t, http.MethodGet, path, "", nil)
	if !assert.Equal(t, http.StatusOK, status) {
		return
	}
	for range n {
		for {
			next := int(body.(map[string]any)["n"].(float64)) + 1
			status, body, h = srv.restWith(t, http.MethodPatch, path, `{"n":`+strconv.Itoa(next)+`}`, http.Header{"If-Match": {h.Get("ETag")}})
			if status == http.StatusOK {
				break
			}
			if !assert.Equal(t, http.StatusPreconditionFailed, status, "%v", body) {
				return
			}
		}
	}
}

// incrementSocket adds 1 to the counter id of stream n times over a
// socket of its own.
func incrementSocket(t *testing.T, srv *testServer, stream string, id any, n int) {
	ws := srv.dial(t, nil)
	ws.keepETag = true
	got := ws.request(stream, map[string]any{"action": "retrieve", "pk": id, "request_id": 0})
	for i := range n {
		for {
			next := int(got["data"].(map[string]any)["n"].(float64)) + 1
			got = ws.request(stream, map[string]any{"action": "patch", "pk": id, "data": map[string]any{"n": next}, "if_match": got["etag"], "request_id": i})
			if got["response_status"] == float64(http.StatusOK) {
				break
			}
			if !assert.EqualValues(t, http.StatusPreconditionFailed, got["response_status"], "%v", got) {
				return
			}
		}
	}
}
