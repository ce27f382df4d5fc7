package debugpage_test

// This file tests debugpage.go: Mount refuses a bad configuration and a
// route conflict, serves the page, and answers a schema that cannot be
// encoded.

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/channelsapi/channelsapi/debugpage"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	goleak.VerifyTestMain(m)
}

func schema() any { return []map[string]string{{"name": "things"}} }

func TestMountRejectsBadConfig(t *testing.T) {
	good := debugpage.Config{Path: "/debug", WebSocketPath: "/ws", Schema: schema}
	tests := []struct {
		name   string
		mutate func(*debugpage.Config)
	}{
		{"empty path", func(c *debugpage.Config) { c.Path = "" }},
		{"relative path", func(c *debugpage.Config) { c.Path = "debug" }},
		{"root", func(c *debugpage.Config) { c.Path = "/" }},
		{"slashes only", func(c *debugpage.Config) { c.Path = "///" }},
		{"parameter", func(c *debugpage.Config) { c.Path = "/debug/:id" }},
		{"catch-all", func(c *debugpage.Config) { c.Path = "/debug/*rest" }},
		{"space", func(c *debugpage.Config) { c.Path = "/de bug" }},
		{"escape", func(c *debugpage.Config) { c.Path = "/de%2Fbug" }},
		{"dot dot", func(c *debugpage.Config) { c.Path = "/a/../debug" }},
		{"double slash", func(c *debugpage.Config) { c.Path = "/a//debug" }},
		{"relative websocket path", func(c *debugpage.Config) { c.WebSocketPath = "ws" }},
		{"no websocket path", func(c *debugpage.Config) { c.WebSocketPath = "" }},
		{"no schema", func(c *debugpage.Config) { c.Schema = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mutate(&cfg)
			router := gin.New()
			require.Error(t, debugpage.Mount(router, cfg))
			assert.Empty(t, router.Routes(), "nothing is mounted")
		})
	}
	t.Run("nil router", func(t *testing.T) {
		require.Error(t, debugpage.Mount(nil, good))
	})
}

func TestMountReportsRouteConflict(t *testing.T) {
	router := gin.New()
	router.GET("/debug/*any", func(*gin.Context) {})
	err := debugpage.Mount(router, debugpage.Config{Path: "/debug", WebSocketPath: "/ws", Schema: schema})
	require.Error(t, err, "an error, not a panic")
	assert.Contains(t, err.Error(), "/debug")
}

func TestMountServesPage(t *testing.T) {
	router := gin.New()
	group := router.Group("/v1")
	require.NoError(t, debugpage.Mount(group, debugpage.Config{Path: "/tools/debug/", WebSocketPath: "/v1/ws", Subprotocols: []string{"bearer"}, Schema: schema}))
	srv := httptest.NewServer(router)
	defer srv.Close()

	tests := []struct {
		name, path      string
		status          int
		location, body  string
		contentTypeWant string
	}{
		{name: "page", path: "/v1/tools/debug/", status: 200, body: "<title>channelsapi debugger</title>", contentTypeWant: "text/html; charset=utf-8"},
		{name: "redirect", path: "/v1/tools/debug", status: 301, location: "debug/"},
		{name: "redirect keeps the query", path: "/v1/tools/debug?x=1", status: 301, location: "debug/?x=1"},
		{name: "schema", path: "/v1/tools/debug/schema.json", status: 200,
			body:            `{"websocket_path":"/v1/ws","subprotocols":["bearer"],"streams":[{"name":"things"}]}`,
			contentTypeWant: "application/json; charset=utf-8"},
		{name: "no listing", path: "/v1/tools/debug/static/app.js", status: 404},
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Get(srv.URL + tt.path)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, tt.status, resp.StatusCode)
			if tt.location != "" {
				assert.Equal(t, tt.location, resp.Header.Get("Location"))
			}
			if tt.contentTypeWant != "" {
				assert.Equal(t, tt.contentTypeWant, resp.Header.Get("Content-Type"))
				assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
			}
			assert.Contains(t, string(body), tt.body)
		})
	}
}

func TestSchemaThatCannotBeEncoded(t *testing.T) {
	router := gin.New()
	require.NoError(t, debugpage.Mount(router, debugpage.Config{
		Path: "/debug", WebSocketPath: "/ws", Schema: func() any { return func() {} },
	}))
	w := httptest.NewRecorder()
	router.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/debug/schema.json", nil))
	assert.Equal(t, http.StatusInternalServerError, w.Code)
	assert.JSONEq(t, `{"detail": "A server error occurred."}`, w.Body.String())
}
