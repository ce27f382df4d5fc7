package channelsapi_test

// This file tests refusals.go: what the REST routes and the WebSocket
// endpoint refuse before an action runs (bodies that are not JSON,
// cross-site requests, methods a path does not serve), the OPTIONS and HEAD
// answers, and the JSON bodies of every refusal.

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// hdr builds a header from key, value pairs.
func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func TestUnsupportedMediaType(t *testing.T) {
	srv := testModelServer(t, channelsapi.WithMaxMessageSize(1024))
	seed(t, srv.DB, "a")
	unsupported := func(ct string) string {
		return `{"detail":"Unsupported media type \"` + ct + `\" in request."}`
	}
	tests := []struct {
		name       string
		method     string
		path       string
		ct         string // "" sends no Content-Type
		body       string
		wantStatus int
		wantBody   string // exact, when not ""
	}{
		{"text/plain", http.MethodPost, "/testmodel", "text/plain", `{"name":"x"}`, 415, unsupported("text/plain")},
		{"text/plain with charset", http.MethodPost, "/testmodel", "text/plain; charset=utf-8", `{"name":"x"}`, 415, unsupported("text/plain; charset=utf-8")},
		{"form", http.MethodPost, "/testmodel", "application/x-www-form-urlencoded", `name=x`, 415, unsupported("application/x-www-form-urlencoded")},
		{"multipart", http.MethodPost, "/testmodel", "multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--b--\r\n", 415, unsupported("multipart/form-data; boundary=b")},
		{"no Content-Type", http.MethodPost, "/testmodel", "", `{"name":"x"}`, 415, unsupported("")},
		{"a +json type", http.MethodPost, "/testmodel", "application/vnd.api+json", `{"name":"x"}`, 415, unsupported("application/vnd.api+json")},
		{"<script> in the type is not escaped", http.MethodPost, "/testmodel", "text/<script>&", `{"name":"x"}`, 415, unsupported("text/<script>&")},
		{"PUT text/plain", http.MethodPut, "/testmodel/1", "text/plain", `{"name":"x"}`, 415, unsupported("text/plain")},
		{"PATCH form", http.MethodPatch, "/testmodel/1", "application/x-www-form-urlencoded", `name=x`, 415, unsupported("application/x-www-form-urlencoded")},
		{"too large is 413 still", http.MethodPost, "/testmodel", "text/plain", strings.Repeat("x", 2048), 413, `{"detail":"Request body too large."}`},
		{"empty body without type", http.MethodPost, "/testmodel", "", "", 400, `{"name":["This field is required."]}`},
		{"json", http.MethodPost, "/testmodel", "application/json", `{"name":"x"}`, 201, ""},
		{"json with charset", http.MethodPost, "/testmodel", "application/json; charset=utf-8", `{"name":"y"}`, 201, ""},
		{"json in capitals", http.MethodPatch, "/testmodel/1", "Application/JSON", `{"name":"z"}`, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dumpRows[TestModel](t, srv.DB)
			h := http.Header{}
			if tt.ct != "" {
				h.Set("Content-Type", tt.ct)
			}
			status, body, header := srv.send(t, tt.method, tt.path, tt.body, h)
			assert.Equal(t, tt.wantStatus, status, "%s", body)
			if tt.wantBody != "" {
				assert.Equal(t, tt.wantBody, string(body))
				assert.Equal(t, "application/json; charset=utf-8", header.Get("Content-Type"))
				assert.Equal(t, before, dumpRows[TestModel](t, srv.DB), "a refused request writes nothing")
			}
		})
	}
}

func TestCrossSiteRequests(t *testing.T) {
	const allowed = "https://app.example"
	srv := testModelServer(t, channelsapi.WithAllowedOrigins(allowed), channelsapi.WithBaseURL("https://public.example:443/") /* a default port, which browsers leave out of Origin */)
	seed(t, srv.DB, "a")
	evil := `{"detail":"CSRF Failed: Origin checking failed - https://evil.example does not match any trusted origins."}`
	json := "application/json"
	tests := []struct {
		name       string
		method     string
		path       string
		header     http.Header
		wantStatus int
		wantBody   string // exact, when not ""
	}{
		{"POST from another origin", http.MethodPost, "/testmodel", hdr("Origin", "https://evil.example", "Content-Type", json), 403, evil},
		{"text/plain form from another origin", http.MethodPost, "/testmodel", hdr("Origin", "https://evil.example", "Content-Type", "text/plain"), 403, evil},
		{"PUT from another origin", http.MethodPut, "/testmodel/1", hdr("Origin", "https://evil.example", "Content-Type", json), 403, evil},
		{"PATCH from another origin", http.MethodPatch, "/testmodel/1", hdr("Origin", "https://evil.example", "Content-Type", json), 403, evil},
		{"DELETE from another origin", http.MethodDelete, "/testmodel/1", hdr("Origin", "https://evil.example"), 403, evil},
		{"origin null", http.MethodPost, "/testmodel", hdr("Origin", "null", "Content-Type", json), 403,
			`{"detail":"CSRF Failed: Origin checking failed - null does not match any trusted origins."}`},
		{"cross-site without Origin", http.MethodPost, "/testmodel", hdr("Sec-Fetch-Site", "cross-site", "Content-Type", json), 403,
			`{"detail":"CSRF Failed: Cross-site request refused."}`},
		{"GET from another origin reads", http.MethodGet, "/testmodel/1", hdr("Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"), 200, ""},
		{"same origin", http.MethodPost, "/testmodel", hdr("Origin", srv.URL, "Sec-Fetch-Site", "same-origin", "Content-Type", json), 201, ""},
		{"allowed origin, cross-site", http.MethodPost, "/testmodel", hdr("Origin", allowed, "Sec-Fetch-Site", "cross-site", "Content-Type", json), 201, ""},
		{"origin of the base URL", http.MethodPost, "/testmodel", hdr("Origin", "https://public.example", "Content-Type", json), 201, ""},
		{"same-origin without Origin", http.MethodPost, "/testmodel", hdr("Sec-Fetch-Site", "same-origin", "Content-Type", json), 201, ""},
		{"neither header (curl)", http.MethodPatch, "/testmodel/1", hdr("Content-Type", json), 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dumpRows[TestModel](t, srv.DB)
			body := `{"name":"pwned"}`
			if tt.method == http.MethodGet || tt.method == http.MethodDelete {
				body = ""
			}
			status, got, _ := srv.send(t, tt.method, tt.path, body, tt.header)
			assert.Equal(t, tt.wantStatus, status, "%s", got)
			if tt.wantBody != "" {
				assert.Equal(t, tt.wantBody, string(got))
				assert.Equal(t, before, dumpRows[TestModel](t, srv.DB), "a refused request writes nothing")
			}
		})
	}
}

func TestMethodNotAllowed(t *testing.T) {
	srv := testModelServer(t)
	srv.Router.GET("/other", func(c *gin.Context) { c.String(http.StatusOK, "other") })
	seed(t, srv.DB, "a")
	const (
		collection = "GET, POST, HEAD, OPTIONS"
		instance   = "GET, PUT, PATCH, DELETE, HEAD, OPTIONS"
	)
	tests := []struct {
		method, path, wantAllow string
	}{
		{http.MethodPatch, "/testmodel", collection},
		{http.MethodPut, "/testmodel", collection},
		{http.MethodDelete, "/testmodel", collection},
		{http.MethodPost, "/testmodel/1", instance},
		{http.MethodPost, "/testmodel/test_list", "GET, HEAD, OPTIONS"},
		{http.MethodDelete, "/testmodel/1/test_detail", "GET, HEAD, OPTIONS"},
		{http.MethodPost, "/ws", "GET"},
		{http.MethodOptions, "/ws", "GET"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			before := dumpRows[TestModel](t, srv.DB)
			status, body, header := srv.send(t, tt.method, tt.path, `{"name":"x"}`, hdr("Content-Type", "application/json"))
			assert.Equal(t, http.StatusMethodNotAllowed, status)
			assert.Equal(t, `{"detail":"Method \"`+tt.method+`\" not allowed."}`, string(body))
			assert.Equal(t, tt.wantAllow, header.Get("Allow"))
			assert.Equal(t, "application/json; charset=utf-8", header.Get("Content-Type"))
			assert.Equal(t, before, dumpRows[TestModel](t, srv.DB))
		})
	}

	t.Run("an object named like a list action", func(t *testing.T) {
		// The router prefers the action's static path: the methods the
		// action does not take still reach the object whose pk is its name.
		srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
			require.NoError(t, db.AutoMigrate(&keyedModel{}))
			handle := func(context.Context, *channelsapi.Request, *keyedModel) (any, int, error) { return "action", 0, nil }
			require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[keyedModel]{Stream: "keyed", Actions: map[string]channelsapi.Action[keyedModel]{
				"recent": {Handle: handle},
				"bulk":   {Method: http.MethodPost, Handle: handle},
			}}))
		}, quietLog())
		require.NoError(t, srv.DB.Create(&[]keyedModel{{"recent", "r"}, {"bulk", "b"}}).Error)
		json := hdr("Content-Type", "application/json")
		status, body, _ := srv.send(t, http.MethodGet, "/keyed/recent", "", nil)
		assert.Equal(t, http.StatusOK, status)
		assert.JSONEq(t, `"action"`, string(body), "GET is the action's")
		status, body, _ = srv.send(t, http.MethodPatch, "/keyed/recent", `{"label":"R"}`, json)
		assert.Equal(t, http.StatusOK, status, "%s", body)
		assert.JSONEq(t, `{"code":"recent","label":"R"}`, string(body))
		status, body, _ = srv.send(t, http.MethodPost, "/keyed/bulk", `{}`, json)
		assert.Equal(t, http.StatusOK, status)
		assert.JSONEq(t, `"action"`, string(body), "POST is the action's")
		status, body, _ = srv.send(t, http.MethodGet, "/keyed/bulk", "", nil)
		assert.Equal(t, http.StatusOK, status)
		assert.JSONEq(t, `{"code":"bulk","label":"b"}`, string(body), "GET is the object's")
		status, _, header := srv.send(t, http.MethodHead, "/keyed/bulk", "", nil)
		assert.Equal(t, http.StatusOK, status)
		assert.Equal(t, "GET, PUT, PATCH, DELETE, HEAD, OPTIONS", header.Get("Allow"))
		status, _, _ = srv.send(t, http.MethodDelete, "/keyed/recent", "", nil)
		assert.Equal(t, http.StatusNoContent, status)
		var left []keyedModel
		require.NoError(t, srv.DB.Order("code").Find(&left).Error)
		assert.Equal(t, []keyedModel{{"bulk", "b"}}, left)
	})
	t.Run("the application's own routes are left alone", func(t *testing.T) {
		status, _, header := srv.send(t, http.MethodPost, "/other", "", nil)
		assert.Equal(t, http.StatusNotFound, status)
		assert.Empty(t, header.Get("Allow"))
	})
	t.Run("Allow on every response", func(t *testing.T) {
		_, _, header := srv.send(t, http.MethodGet, "/testmodel/1", "", nil)
		assert.Equal(t, instance, header.Get("Allow"))
	})
}

func TestHead(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "a", "b")
	for _, path := range []string{"/testmodel", "/testmodel/1", "/testmodel/test_list", "/testmodel/1/test_detail", "/testmodel/99"} {
		t.Run(path, func(t *testing.T) {
			getStatus, getBody, getHeader := srv.send(t, http.MethodGet, path, "", nil)
			status, body, header := srv.send(t, http.MethodHead, path, "", nil)
			assert.Equal(t, getStatus, status)
			assert.Empty(t, body)
			for _, k := range []string{"Content-Type", "Content-Length", "Allow"} {
				assert.Equal(t, getHeader.Get(k), header.Get(k), k)
			}
			assert.NotEmpty(t, getBody)
		})
	}
}

func TestOptions(t *testing.T) {
	t.Run("plain server", func(t *testing.T) {
		srv := testModelServer(t)
		seed(t, srv.DB, "a")
		fields := `{"id":{"type":"integer","required":false,"read_only":true,"label":"ID"},` +
			`"name":{"type":"string","required":true,"read_only":false,"label":"Name","max_length":255}}`
		meta := func(name, actions string) string {
			s := `{"name":"` + name + `","description":"","renders":["application/json"],"parses":["application/json"]`
			if actions != "" {
				s += `,"actions":` + actions
			}
			return s + "}"
		}
		tests := []struct {
			path, wantAllow, wantBody string
		}{
			{"/testmodel", "GET, POST, HEAD, OPTIONS", meta("TestModel List", `{"POST":`+fields+`}`)},
			{"/testmodel/1", "GET, PUT, PATCH, DELETE, HEAD, OPTIONS", meta("TestModel Instance", `{"PUT":`+fields+`}`)},
			{"/testmodel/99", "GET, PUT, PATCH, DELETE, HEAD, OPTIONS", meta("TestModel Instance", "")},
			{"/testmodel/test_list", "GET, HEAD, OPTIONS", meta("Test list", "")},
			{"/testmodel/1/named_detail", "GET, HEAD, OPTIONS", meta("Named detail", "")},
		}
		for _, tt := range tests {
			t.Run(tt.path, func(t *testing.T) {
				status, body, header := srv.send(t, http.MethodOptions, tt.path, "", nil)
				assert.Equal(t, http.StatusOK, status)
				assert.Equal(t, tt.wantBody, string(body), "fields in the model's order")
				assert.Equal(t, tt.wantAllow, header.Get("Allow"))
				assert.Equal(t, "application/json; charset=utf-8", header.Get("Content-Type"))
			})
		}
	})

	t.Run("actions only where the user may write", func(t *testing.T) {
		srv := newNotesServer(t)
		require.NoError(t, srv.DB.Create(&authNote{OwnerID: userA.ID, Text: "a"}).Error)
		actions := func(u *authUser, path string) []string {
			h := http.Header{}
			if u != nil {
				h.Set("X-User", u.Name)
			}
			status, body, _ := srv.send(t, http.MethodOptions, path, "", h)
			require.Equal(t, http.StatusOK, status, "%s", body)
			m, _ := parseJSON(body).(map[string]any)
			acts, _ := m["actions"].(map[string]any)
			var out []string
			for k := range acts {
				out = append(out, k)
			}
			return out
		}
		assert.Empty(t, actions(nil, "/notes"), "anonymous may not create")
		assert.Equal(t, []string{"POST"}, actions(userA, "/notes"))
		assert.Equal(t, []string{"PUT"}, actions(userA, "/notes/1"), "alice's note")
		assert.Empty(t, actions(userB, "/notes/1"), "bob may not touch alice's note")
	})

	t.Run("read-only ViewSet", func(t *testing.T) {
		srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
			addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) { vs.ReadOnly = true })
		})
		seed(t, srv.DB, "a")
		for _, path := range []string{"/testmodel", "/testmodel/1"} {
			_, body, _ := srv.send(t, http.MethodOptions, path, "", nil)
			assert.NotContains(t, string(body), "actions", path)
		}
	})
}

func TestSocketRefusalsAreJSON(t *testing.T) {
	srv := testModelServer(t)

	_, status, body := dialStatus(t, srv, websocket.DefaultDialer, hdr("Origin", "https://evil.example"))
	assert.Equal(t, http.StatusForbidden, status)
	assert.Equal(t, `{"detail":"Origin checking failed - https://evil.example does not match any trusted origins."}`, string(body))

	status, body, header := srv.send(t, http.MethodGet, "/ws", "", nil)
	assert.Equal(t, http.StatusBadRequest, status, "a GET that is no upgrade")
	assert.Equal(t, "application/json; charset=utf-8", header.Get("Content-Type"))
	detail, _ := parseJSON(body).(map[string]any)
	assert.Contains(t, detail["detail"], "websocket", "%s", body)

	status, body, header = srv.send(t, http.MethodPost, "/ws", "", nil)
	assert.Equal(t, http.StatusMethodNotAllowed, status)
	assert.Equal(t, `{"detail":"Method \"POST\" not allowed."}`, string(body))
	assert.Equal(t, "GET", header.Get("Allow"))
}

// TestCrossSiteSchemeOverTLS: over TLS, a page of the same host served
// over plain http is another origin (a network attacker can write such a
// page): its writes and its WebSocket are refused.
func TestCrossSiteSchemeOverTLS(t *testing.T) {
	router := gin.New()
	api, err := channelsapi.Register(router, openDB(t, &TestModel{}), quietLog())
	require.NoError(t, err)
	addTestModel(t, api)
	ts := httptest.NewTLSServer(router)
	t.Cleanup(ts.Close)
	t.Cleanup(func() { require.NoError(t, api.Shutdown(context.Background())) })
	host := strings.TrimPrefix(ts.URL, "https://")
	post := func(origin string) int {
		req, err := http.NewRequest(http.MethodPost, ts.URL+"/testmodel", strings.NewReader(`{"name":"x"}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", origin)
		resp, err := ts.Client().Do(req)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusForbidden, post("http://"+host))
	assert.Equal(t, http.StatusCreated, post("https://"+host))

	dialer := websocket.Dialer{TLSClientConfig: ts.Client().Transport.(*http.Transport).TLSClientConfig}
	_, resp, err := dialer.Dial("wss://"+host+"/ws", http.Header{"Origin": {"http://" + host}})
	require.Error(t, err)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	_ = resp.Body.Close()
	conn, resp, err := dialer.Dial("wss://"+host+"/ws", http.Header{"Origin": {"https://" + host}})
	require.NoError(t, err)
	_ = resp.Body.Close()
	_ = conn.Close()
}
