package channelsapi_test

// This file tests apidoc.go and its builders: the OpenAPI and AsyncAPI
// documents of WithAPIDocs, checked with an OpenAPI 3.1 validator, a JSON
// Schema 2020-12 compiler and the AsyncAPI parser, and the example app's
// documents against testdata/apidocs.

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// docProject is a model with the field kinds and binding rules the
// documents describe.
type docProject struct {
	gorm.Model
	Name     string          `json:"name" binding:"required,min=3,max=10"`
	Color    string          `json:"color" binding:"omitempty,oneof=red green blue"`
	Priority int             `json:"priority" binding:"gte=0,lte=5"`
	Email    string          `json:"email" binding:"omitempty,email"`
	Site     *string         `json:"site" binding:"omitempty,url"`
	Due      *time.Time      `json:"due"`
	Meta     json.RawMessage `json:"meta" gorm:"type:text"`
	Tags     []string        `json:"tags,omitempty" gorm:"serializer:json"`
	Secret   string          `json:"-"`
	Owner    *docOwner       `json:"owner,omitempty" gorm:"foreignKey:OwnerID"`
	OwnerID  *uint           `json:"owner_id"`
}

type docOwner struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
}

// docsServer serves docProject and the conformance model with WithAPIDocs.
func docsServer(t *testing.T) *testServer {
	t.Helper()
	db := openDB(t, &TestModel{}, &docProject{}, &docOwner{})
	return newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api)
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[docProject]{
			Stream:         "projects",
			Filters:        map[string][]string{"name": {"exact", "icontains", "in"}, "priority": {"gte", "range"}, "due": {"isnull"}},
			OrderingFields: []string{"name"},
			SearchFields:   []string{"name"},
			ReadOnlyFields: []string{"email"},
		}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[docOwner]{Stream: "owners", ReadOnly: true}))
	}, channelsapi.WithAPIDocs(channelsapi.APIDocs{OpenAPIPath: "/docs/openapi.json", AsyncAPIPath: "/docs/asyncapi.json", Title: "Docs"}))
}

// TestAPIDocsServed: both documents are served as JSON at the paths given,
// equal to what OpenAPI and AsyncAPI return, and valid: the OpenAPI
// document by kin-openapi's 3.1 validator, every schema of both by a JSON
// Schema 2020-12 compiler.
func TestAPIDocsServed(t *testing.T) {
	srv := docsServer(t)
	for _, doc := range []struct {
		path string
		get  func() ([]byte, error)
	}{{"/docs/openapi.json", srv.API.OpenAPI}, {"/docs/asyncapi.json", srv.API.AsyncAPI}} {
		status, body, header := srv.restRaw(t, http.MethodGet, doc.path, nil)
		require.Equal(t, http.StatusOK, status, "%s: %s", doc.path, body)
		assert.Equal(t, "application/json; charset=utf-8", header.Get("Content-Type"))
		want, err := doc.get()
		require.NoError(t, err)
		assert.JSONEq(t, string(want), string(body))
	}
	openAPI, err := srv.API.OpenAPI()
	require.NoError(t, err)
	validateOpenAPI(t, openAPI)
	asyncAPI, err := srv.API.AsyncAPI()
	require.NoError(t, err)
	compileSchemas(t, asyncAPI)
}

// validateOpenAPI checks b with kin-openapi's OpenAPI 3.1 validator and
// compiles its schemas.
func validateOpenAPI(t *testing.T, b []byte) {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(b)
	require.NoError(t, err)
	require.True(t, doc.IsOpenAPI31OrLater())
	require.NoError(t, doc.Validate(context.Background()))
	compileSchemas(t, b)
}

// TestDocCheckerRejects: the check of the test helpers fails what the
// documents do not describe, so that its passing over the suite means
// something.
func TestDocCheckerRejects(t *testing.T) {
	srv := docsServer(t)
	c := srv.docs(t)
	if c == nil {
		t.Skip("SKIP: " + envNoDocs + " is set")
	}
	for _, f := range []string{
		`{"stream":"projects","payload":{"action":"create","data":{"id":1},"errors":[],"response_status":201,"request_id":null}}`,
		`{"stream":"projects","payload":{"action":"retrieve","data":null,"errors":[],"response_status":200,"request_id":1}}`,
		`{"stream":"projects","payload":{"action":"list","data":[],"errors":[],"response_status":200,"request_id":1}}`,
		`{"stream":"projects","payload":{"action":"update","pk":1,"data":{},"model":"x"}}`,
		`{"stream":"nope","payload":{"action":"x","data":null,"errors":[],"response_status":400,"request_id":1}}`,
		`{"stream":null,"payload":{"action":null,"data":null,"errors":"Invalid frame.","response_status":400,"request_id":null}}`,
	} {
		assert.Error(t, c.checkFrame([]byte(f)), "%s", f)
	}
	assert.NoError(t, c.checkFrame([]byte(`{"stream":null,"payload":{"action":null,"data":null,"errors":["Invalid frame."],"response_status":400,"request_id":null}}`)))
	for _, r := range []struct {
		method, path string
		status       int
		body         string
	}{
		{http.MethodGet, "/projects/1", http.StatusOK, `{"id":1}`},
		{http.MethodGet, "/projects", http.StatusOK, `[]`},
		{http.MethodGet, "/projects/1", http.StatusNotFound, `{"error":"Not found."}`},
		{http.MethodDelete, "/projects/1", http.StatusNoContent, `{}`},
		{http.MethodPost, "/projects", http.StatusBadRequest, `not json`},
		{http.MethodTrace, "/projects", http.StatusMethodNotAllowed, `{}`},
	} {
		assert.Error(t, c.checkREST(r.method, r.path, r.status, []byte(r.body)), "%+v", r)
	}
	assert.NoError(t, c.checkREST(http.MethodGet, "/projects/1", http.StatusNotFound, []byte(`{"detail":"Not found."}`)))
}

// asyncAPIModules is the directory `npm ci --prefix testdata/asyncapi`
// fills with the AsyncAPI parser that testdata/asyncapi/validate.mjs runs.
const asyncAPIModules = "testdata/asyncapi/node_modules"

// validateAsyncAPI checks b with the official AsyncAPI parser
// (@asyncapi/parser, pinned in testdata/asyncapi), run by Node: it must
// report neither an error nor a warning. Without node or the parser the
// check is skipped, except on CI (CI=true), where it fails.
func validateAsyncAPI(t *testing.T, b []byte) {
	t.Helper()
	missing := func(what string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("AsyncAPI parser: %s and CI=true, so the check may not be skipped: .ci/run must run `npm ci --prefix testdata/asyncapi`", what)
		}
		t.Skipf("SKIP: AsyncAPI parser: %s (install Node 20 or later and run `npm ci --prefix testdata/asyncapi`)", what)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not installed")
	}
	if _, err := os.Stat(asyncAPIModules + "/@asyncapi/parser/package.json"); err != nil {
		missing(asyncAPIModules + " is missing")
	}
	file := filepath.Join(t.TempDir(), "asyncapi.json")
	require.NoError(t, os.WriteFile(file, b, 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, node, "testdata/asyncapi/validate.mjs", file).CombinedOutput()
	require.NoError(t, err, "the AsyncAPI parser rejects the document:\n%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)), "the AsyncAPI parser warns")
}

// TestAsyncAPIParser: the AsyncAPI document passes the official parser
// without an error or a warning.
func TestAsyncAPIParser(t *testing.T) {
	srv := docsServer(t)
	b, err := srv.API.AsyncAPI()
	require.NoError(t, err)
	validateAsyncAPI(t, b)
	// The parser is no rubber stamp.
	var doc map[string]any
	require.NoError(t, json.Unmarshal(b, &doc))
	doc["operations"].(map[string]any)["projects.create"].(map[string]any)["channel"] = map[string]any{"$ref": "#/channels/nope"}
	bad, err := json.Marshal(doc)
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "bad.json")
	require.NoError(t, os.WriteFile(file, bad, 0o600))
	out, err := exec.Command("node", "testdata/asyncapi/validate.mjs", file).CombinedOutput()
	require.Error(t, err, "a dangling $ref passes: %s", out)
}
