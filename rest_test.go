package channelsapi_test

// This file tests rest.go: the REST routes of a ViewSet, their bodies and
// status codes, pagination, custom actions, the REST prefix, malformed and
// oversized bodies, and list pages equal to those of the WebSocket.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// restNote has a required and an optional field, to tell PUT from PATCH.
type restNote struct {
	ID    uint   `json:"id" gorm:"primaryKey"`
	Title string `json:"title" binding:"required,max=20"`
	Body  string `json:"body"`
}

// restStep is one request of a REST conversation and its expected answer.
type restStep struct {
	name       string
	method     string
	path       string
	give       string
	wantStatus int
	want       any // parsed JSON body; nil means an empty body
}

// runSteps runs steps in order on srv, each as a subtest.
func runSteps(t *testing.T, srv *testServer, steps []restStep) {
	t.Helper()
	for _, tt := range steps {
		t.Run(tt.name, func(t *testing.T) {
			status, body := srv.doREST(t, tt.method, tt.path, tt.give)
			assert.Equal(t, tt.wantStatus, status)
			assert.Equal(t, jsonOf(t, tt.want), body)
		})
	}
}

func TestRESTCRUD(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	long := strings.Repeat("x", 256)
	notFound := map[string]any{"detail": "Not found."}
	required := map[string]any{"name": []any{"This field is required."}}
	runSteps(t, srv, []restStep{
		{"create", http.MethodPost, "/testmodel", `{"name":"a"}`, 201, map[string]any{"id": 1, "name": "a"}},
		{"create without name", http.MethodPost, "/testmodel", `{}`, 400, required},
		{"create with empty body", http.MethodPost, "/testmodel", ``, 400, required},
		{"create too long", http.MethodPost, "/testmodel", `{"name":"` + long + `"}`, 400,
			map[string]any{"name": []any{"Ensure this field has no more than 255 characters."}}},
		{"retrieve", http.MethodGet, "/testmodel/1", ``, 200, map[string]any{"id": 1, "name": "a"}},
		{"update", http.MethodPut, "/testmodel/1", `{"name":"b"}`, 200, map[string]any{"id": 1, "name": "b"}},
		{"update without required field", http.MethodPut, "/testmodel/1", `{}`, 400, required},
		{"update to empty", http.MethodPut, "/testmodel/1", `{"name":""}`, 400, required},
		{"retrieve after failed update", http.MethodGet, "/testmodel/1", ``, 200, map[string]any{"id": 1, "name": "b"}},
		{"patch nothing", http.MethodPatch, "/testmodel/1", `{}`, 200, map[string]any{"id": 1, "name": "b"}},
		{"patch", http.MethodPatch, "/testmodel/1", `{"name":"c"}`, 200, map[string]any{"id": 1, "name": "c"}},
		{"patch invalid", http.MethodPatch, "/testmodel/1", `{"name":""}`, 400, required},
		{"delete", http.MethodDelete, "/testmodel/1", ``, 204, nil},
		{"retrieve deleted", http.MethodGet, "/testmodel/1", ``, 404, notFound},
		{"update missing", http.MethodPut, "/testmodel/1", `{"name":"d"}`, 404, notFound},
		{"patch missing", http.MethodPatch, "/testmodel/1", `{"name":"d"}`, 404, notFound},
		{"delete missing", http.MethodDelete, "/testmodel/1", ``, 404, notFound},
		{"retrieve invalid pk", http.MethodGet, "/testmodel/abc", ``, 404, notFound},
	})
	assert.EqualValues(t, 0, countRows[TestModel](t, srv.DB))
}

func TestRESTDeleteHasNoBody(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	seed(t, srv.DB, "x")
	status, body, _ := srv.restRaw(t, http.MethodDelete, "/testmodel/1", nil)
	assert.Equal(t, http.StatusNoContent, status)
	assert.Empty(t, body)
	assert.EqualValues(t, 0, countRows[TestModel](t, srv.DB))
}

func TestRESTPatchChangesOnlyGivenFields(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, db.AutoMigrate(&restNote{}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[restNote]{Stream: "notes"}))
	})
	require.NoError(t, srv.DB.Create(&restNote{Title: "t", Body: "keep"}).Error)

	runSteps(t, srv, []restStep{
		{"patch title", http.MethodPatch, "/notes/1", `{"title":"u"}`, 200, map[string]any{"id": 1, "title": "u", "body": "keep"}},
		{"patch body", http.MethodPatch, "/notes/1", `{"body":"new"}`, 200, map[string]any{"id": 1, "title": "u", "body": "new"}},
		{"put without body field", http.MethodPut, "/notes/1", `{"title":"v"}`, 200, map[string]any{"id": 1, "title": "v", "body": "new"}},
		{"put without title", http.MethodPut, "/notes/1", `{"body":"x"}`, 400, map[string]any{"title": []any{"This field is required."}}},
	})
	var n restNote
	require.NoError(t, srv.DB.First(&n, 1).Error)
	assert.Equal(t, restNote{ID: 1, Title: "v", Body: "new"}, n)
}

func TestRESTList(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) { vs.MaxPageSize = 10 })
	})
	seed(t, srv.DB, names(26)...)
	link := func(query string) any { return "/testmodel?" + query }
	items := func(from, to int) []any {
		var out []any
		for i := from; i < to; i++ {
			out = append(out, map[string]any{"id": i + 1, "name": fmt.Sprintf("Name-%d", i)})
		}
		return out
	}
	invalid := map[string]any{"detail": "Invalid page."}

	tests := []struct {
		name       string
		give       string // query string
		wantStatus int
		want       any
	}{
		{"default page", "", 200, map[string]any{"count": 26, "next": link("page=2"), "previous": nil, "results": items(0, 10)}},
		{"page 2", "page=2", 200, map[string]any{"count": 26, "next": link("page=3"), "previous": link("page=1"), "results": items(10, 20)}},
		{"last page", "page=3", 200, map[string]any{"count": 26, "next": nil, "previous": link("page=2"), "results": items(20, 26)}},
		{"page size", "page=2&page_size=5", 200, map[string]any{"count": 26, "next": link("page=3&page_size=5"), "previous": link("page=1&page_size=5"), "results": items(5, 10)}},
		{"page size capped", "page_size=1000", 200, map[string]any{"count": 26, "next": link("page=2&page_size=1000"), "previous": nil, "results": items(0, 10)}},
		{"page size not a number", "page_size=abc", 200, map[string]any{"count": 26, "next": link("page=2&page_size=abc"), "previous": nil, "results": items(0, 10)}},
		{"page 0", "page=0", 404, invalid},
		{"negative page", "page=-1", 404, invalid},
		{"page beyond the last", "page=4", 404, invalid},
		{"page not a number", "page=abc", 404, invalid},
		{"fractional page", "page=1.5", 404, invalid},
		{"empty page", "page=", 200, map[string]any{"count": 26, "next": link("page=2"), "previous": nil, "results": items(0, 10)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := srv.doREST(t, http.MethodGet, "/testmodel?"+tt.give, "")
			assert.Equal(t, tt.wantStatus, status)
			assert.Equal(t, jsonOf(t, tt.want), body)
		})
	}
}

func TestRESTListEmpty(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })

	status, body := srv.doREST(t, http.MethodGet, "/testmodel", "")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, map[string]any{"count": 0.0, "next": nil, "previous": nil, "results": []any{}}, body)

	status, body = srv.doREST(t, http.MethodGet, "/testmodel?page=2", "")
	assert.Equal(t, http.StatusNotFound, status)
	assert.Equal(t, map[string]any{"detail": "Invalid page."}, body)
}

func TestRESTCustomActions(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.Actions["rename"] = channelsapi.Action[TestModel]{
				Detail: true, Method: http.MethodPost,
				Handle: func(_ context.Context, r *channelsapi.Request, m *TestModel) (any, int, error) {
					return map[string]any{"old": m.Name, "body": r.Data}, http.StatusAccepted, nil
				},
			}
			vs.Actions["guarded"] = channelsapi.Action[TestModel]{
				Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
					return nil, 0, channelsapi.ErrPermissionDenied
				},
			}
			vs.Actions["refuse"] = channelsapi.Action[TestModel]{
				Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
					return nil, 0, channelsapi.FieldError("reason", "Not today.")
				},
			}
			vs.Actions["transport"] = channelsapi.Action[TestModel]{
				Handle: func(_ context.Context, r *channelsapi.Request, _ *TestModel) (any, int, error) {
					return r.Transport, 0, nil
				},
			}
		})
	})
	seed(t, srv.DB, "some-test")

	tests := []struct {
		name       string
		method     string
		give       string // path
		header     []string
		wantStatus int
		want       any
	}{
		{"list action", http.MethodGet, "/testmodel/test_list", nil, 200, "some data"},
		{"named list action", http.MethodGet, "/testmodel/named_list", nil, 200, "some data"},
		{"detail action", http.MethodGet, "/testmodel/1/test_detail", nil, 200, "some-test"},
		{"named detail action", http.MethodGet, "/testmodel/1/named_detail", nil, 200, "some-test"},
		{"detail action missing object", http.MethodGet, "/testmodel/2/test_detail", nil, 404, map[string]any{"detail": "Not found."}},
		{"detail action invalid pk", http.MethodGet, "/testmodel/x/test_detail", nil, 404, map[string]any{"detail": "Not found."}},
		{"post action", http.MethodPost, "/testmodel/1/rename", nil, 202, map[string]any{"old": "some-test", "body": map[string]any{"name": "z"}}},
		{"permission denied anonymous", http.MethodGet, "/testmodel/guarded", nil, 401, map[string]any{"detail": "Permission Denied"}},
		{"permission denied user", http.MethodGet, "/testmodel/guarded", []string{"X-User", "alice"}, 403, map[string]any{"detail": "Permission Denied"}},
		{"field error", http.MethodGet, "/testmodel/refuse", nil, 400, map[string]any{"reason": []any{"Not today."}}},
		{"transport", http.MethodGet, "/testmodel/transport", nil, 200, "rest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := srv.doREST(t, tt.method, tt.give, `{"name":"z"}`, tt.header...)
			assert.Equal(t, tt.wantStatus, status)
			assert.Equal(t, jsonOf(t, tt.want), body)
		})
	}

	t.Run("wrong method", func(t *testing.T) {
		status, _ := srv.doREST(t, http.MethodGet, "/testmodel/1/rename", "")
		assert.Contains(t, []int{http.StatusNotFound, http.StatusMethodNotAllowed}, status)
		status, _ = srv.doREST(t, http.MethodPost, "/testmodel/test_list", "")
		assert.Contains(t, []int{http.StatusNotFound, http.StatusMethodNotAllowed}, status)
	})
	var m TestModel
	require.NoError(t, srv.DB.First(&m, 1).Error)
	assert.Equal(t, "some-test", m.Name)
}

// newGroupServer registers channelsapi on router.Group(group) of a new
// router, with the conformance ViewSet and 30 rows.
func newGroupServer(tb testing.TB, group string, opts ...channelsapi.Option) *testServer {
	tb.Helper()
	db := openDB(tb, &TestModel{})
	router := gin.New()
	api, err := channelsapi.Register(router.Group(group), db, opts...)
	require.NoError(tb, err)
	addTestModel(tb, api)
	seed(tb, db, names(30)...)
	srv := httptest.NewServer(router)
	tb.Cleanup(srv.Close)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(tb, api.Shutdown(ctx))
	})
	return &testServer{URL: srv.URL, WSURL: "ws" + strings.TrimPrefix(srv.URL, "http") + group + "/ws", DB: db, API: api, Router: router}
}

func TestRESTPrefix(t *testing.T) {
	tests := []struct {
		name     string
		group    string
		opts     []channelsapi.Option
		give     string // the list's path
		wantGone string // a path that must not serve the list
	}{
		{"rest prefix", "/", []channelsapi.Option{channelsapi.WithRESTPrefix("/api")}, "/api/testmodel", "/testmodel"},
		{"router group", "/v1", nil, "/v1/testmodel", "/testmodel"},
		{"router group and rest prefix", "/v1", []channelsapi.Option{channelsapi.WithRESTPrefix("/api")}, "/v1/api/testmodel", "/v1/testmodel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newGroupServer(t, tt.group, tt.opts...)
			if tt.group == "/" {
				srv.WSURL = "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
			}

			status, body := srv.doREST(t, http.MethodGet, tt.give, "")
			require.Equal(t, http.StatusOK, status)
			page := body.(map[string]any)
			assert.EqualValues(t, 30, page["count"])
			assert.Equal(t, tt.give+"?page=2", page["next"])

			status, body = srv.doREST(t, http.MethodGet, tt.give+"/1", "")
			assert.Equal(t, http.StatusOK, status)
			assert.Equal(t, map[string]any{"id": 1.0, "name": "Name-0"}, body)

			status, body = srv.doREST(t, http.MethodGet, tt.give+"/1/test_detail", "")
			assert.Equal(t, http.StatusOK, status)
			assert.Equal(t, "Name-0", body)

			status, body = srv.doREST(t, http.MethodPost, tt.give, `{"name":"new"}`)
			assert.Equal(t, http.StatusCreated, status)
			assert.Equal(t, map[string]any{"id": 31.0, "name": "new"}, body)

			status, _ = srv.doREST(t, http.MethodGet, tt.wantGone, "")
			assert.Equal(t, http.StatusNotFound, status)

			ws := srv.dial(t, nil)
			got := ws.request("testmodel", map[string]any{"action": "retrieve", "pk": 31, "request_id": 1})
			assert.EqualValues(t, 200, got["response_status"])
			assert.Equal(t, map[string]any{"id": 31.0, "name": "new"}, got["data"])
		})
	}
}

func TestRESTMalformedBody(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, quietLog())
	seed(t, srv.DB, "keep")

	bodies := []string{`{`, `{"name": }`, `not json`, `{"name":"a"} x`, `{"name":"a",}`, "\x00", `{'name':'a'}`, `"unterminated`}
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodPatch} {
		path := "/testmodel"
		if method != http.MethodPost {
			path += "/1"
		}
		for _, give := range bodies {
			t.Run(method+" "+give, func(t *testing.T) {
				status, body := srv.doREST(t, method, path, give)
				assert.Equal(t, http.StatusBadRequest, status)
				detail, _ := body.(map[string]any)["detail"].(string)
				assert.True(t, strings.HasPrefix(detail, "JSON parse error"), "body %v", body)
			})
		}
	}
	var m TestModel
	require.NoError(t, srv.DB.First(&m, 1).Error)
	assert.Equal(t, "keep", m.Name)
	assert.EqualValues(t, 1, countRows[TestModel](t, srv.DB))
}

// hideLength hides the length of r, so that the body is sent chunked.
type hideLength struct{ r io.Reader }

func (h hideLength) Read(p []byte) (int, error) { return h.r.Read(p) }

func TestRESTBodyTooLarge(t *testing.T) {
	const limit = 1024
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) },
		channelsapi.WithMaxMessageSize(limit))
	seed(t, srv.DB, "keep")
	big := `{"name":"` + strings.Repeat("x", 2*limit) + `"}`

	tests := []struct {
		name       string
		method     string
		path       string
		give       io.Reader
		wantStatus int
	}{
		{"create", http.MethodPost, "/testmodel", strings.NewReader(big), http.StatusRequestEntityTooLarge},
		{"create chunked", http.MethodPost, "/testmodel", hideLength{strings.NewReader(big)}, http.StatusRequestEntityTooLarge},
		{"update", http.MethodPut, "/testmodel/1", strings.NewReader(big), http.StatusRequestEntityTooLarge},
		{"patch chunked", http.MethodPatch, "/testmodel/1", hideLength{strings.NewReader(big)}, http.StatusRequestEntityTooLarge},
		{"create under the limit", http.MethodPost, "/testmodel", strings.NewReader(`{"name":"small"}`), http.StatusCreated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := srv.restRaw(t, tt.method, tt.path, tt.give)
			assert.Equal(t, tt.wantStatus, status, "body %s", body)
		})
	}
	var m TestModel
	require.NoError(t, srv.DB.First(&m, 1).Error)
	assert.Equal(t, "keep", m.Name)
	assert.EqualValues(t, 2, countRows[TestModel](t, srv.DB))
}

// TestListSameOnBothTransports compares a WebSocket list page with the REST
// page of the same query.
func TestListSameOnBothTransports(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	seed(t, srv.DB, names(26)...)
	ws := srv.dial(t, nil)

	tests := []struct {
		name     string
		page     int
		size     int
		wantMeta map[string]any // nil: the page is invalid
	}{
		{"first page", 1, 10, map[string]any{"count": 26, "page": 1, "page_size": 10, "num_pages": 3}},
		{"last page", 3, 10, map[string]any{"count": 26, "page": 3, "page_size": 10, "num_pages": 3}},
		{"one page", 1, 26, map[string]any{"count": 26, "page": 1, "page_size": 26, "num_pages": 1}},
		{"capped size", 1, 1000, map[string]any{"count": 26, "page": 1, "page_size": 100, "num_pages": 1}},
		{"beyond the last page", 4, 10, nil},
		{"page 0", 0, 10, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ws.request("testmodel", map[string]any{"action": "list", "data": map[string]any{"page": tt.page, "page_size": tt.size}, "request_id": 1})
			status, body := srv.doREST(t, http.MethodGet, fmt.Sprintf("/testmodel?page=%d&page_size=%d", tt.page, tt.size), "")
			if tt.wantMeta == nil {
				assert.EqualValues(t, http.StatusNotFound, got["response_status"])
				assert.Equal(t, []any{"Invalid page."}, got["errors"])
				assert.Equal(t, http.StatusNotFound, status)
				assert.Equal(t, map[string]any{"detail": "Invalid page."}, body)
				return
			}
			assert.EqualValues(t, http.StatusOK, got["response_status"])
			assert.Equal(t, jsonOf(t, tt.wantMeta), got["meta"])
			require.Equal(t, http.StatusOK, status)
			page := body.(map[string]any)
			assert.Equal(t, got["data"], page["results"])
			assert.EqualValues(t, 26, page["count"])
		})
	}
}

func TestRESTPageLinks(t *testing.T) {
	setup := func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }
	t.Run("relative to the host, never from Host", func(t *testing.T) {
		srv := newServer(t, setup)
		seed(t, srv.DB, names(3)...)
		status, body, _ := srv.send(t, http.MethodGet, "/testmodel?page=2&page_size=1", "",
			hdr("Host", "evil.example", "X-Forwarded-Host", "evil.example", "X-Forwarded-Proto", "https"))
		require.Equal(t, http.StatusOK, status, "%s", body)
		assert.Contains(t, string(body), `"next":"/testmodel?page=3&page_size=1","previous":"/testmodel?page=1&page_size=1"`, "& is not escaped")
		assert.NotContains(t, string(body), "evil")
	})
	t.Run("WithBaseURL", func(t *testing.T) {
		srv := newServer(t, setup, channelsapi.WithBaseURL("https://api.example/app/"))
		seed(t, srv.DB, names(3)...)
		status, body, _ := srv.send(t, http.MethodGet, "/testmodel?page=2&page_size=1", "", hdr("Host", "evil.example"))
		require.Equal(t, http.StatusOK, status, "%s", body)
		assert.Contains(t, string(body),
			`"next":"https://api.example/app/testmodel?page=3&page_size=1","previous":"https://api.example/app/testmodel?page=1&page_size=1"`)
	})
	t.Run("invalid base URLs", func(t *testing.T) {
		for _, u := range []string{"api.example", "/app", "ftp://api.example", "https://", "https://api.example/?x=1", "https://api.example/#f", "://x", "https://user@api.example"} {
			_, err := channelsapi.Register(gin.New(), openDB(t, &TestModel{}), channelsapi.WithBaseURL(u))
			assert.ErrorContains(t, err, "base URL", u)
		}
	})
}

func TestRESTNotHTMLEscaped(t *testing.T) {
	srv := testModelServer(t)
	const name = `<b>Tom & Jerry</b>`
	status, body, _ := srv.send(t, http.MethodPost, "/testmodel", `{"name":"`+name+`"}`, hdr("Content-Type", "application/json"))
	require.Equal(t, http.StatusCreated, status, "%s", body)
	assert.Equal(t, `{"id":1,"name":"`+name+`"}`, string(body))
	_, body, _ = srv.send(t, http.MethodGet, "/testmodel", "", nil)
	assert.Contains(t, string(body), `"name":"`+name+`"`)
}
