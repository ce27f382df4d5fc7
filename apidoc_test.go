package channelsapi_test

// This file tests apidoc.go and its builders: the OpenAPI and AsyncAPI
// documents of WithAPIDocs, checked with an OpenAPI 3.1 validator, a JSON
// Schema 2020-12 compiler and the AsyncAPI parser, and the example app's
// documents against testdata/apidocs.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// docTicket has a UUID primary key.
type docTicket struct {
	ID    string  `json:"id" gorm:"primaryKey" binding:"uuid"`
	Title string  `json:"title" binding:"required,len=4"`
	Score float64 `json:"score" binding:"gt=0,lt=1"`
}

// docsServer serves docProject and the conformance model with WithAPIDocs.
func docsServer(t *testing.T) *testServer {
	t.Helper()
	db := openDB(t, &TestModel{}, &docProject{}, &docOwner{}, &docTicket{})
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
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[docTicket]{Stream: "tickets"}))
	}, channelsapi.WithAPIDocs(channelsapi.APIDocs{OpenAPIPath: "/docs/openapi.json", AsyncAPIPath: "/docs/asyncapi.json", Title: "Docs"}),
		channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
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
	// Nothing in them comes from the request: not its Host.
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/docs/openapi.json", nil)
	require.NoError(t, err)
	req.Host = "evil.example"
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	assert.NotContains(t, string(body), "evil")
	assert.Equal(t, "/", docValue(t, body, "/servers/0/url"), "servers are relative")

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

// updateDocs rewrites testdata/apidocs from the example app:
// go test -run TestExampleAppDocs -update .
var updateDocs = flag.Bool("update", false, "rewrite testdata/apidocs/*.json from the example app")

// TestExampleAppDocs: the example app serves its documents at
// /api/openapi.json and /api/asyncapi.json; they are valid, and equal to
// testdata/apidocs (rewritten with -update), so that a change to them
// shows in review.
func TestExampleAppDocs(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	bin := buildExample(t)
	app := startInstance(t, bin, "-db", filepath.Join(t.TempDir(), "polls.db"))
	for _, name := range []string{"openapi.json", "asyncapi.json"} {
		status, body, _ := app.restRaw(t, http.MethodGet, "/"+name, nil)
		require.Equal(t, http.StatusOK, status, "%s: %s", name, body)
		var pretty bytes.Buffer
		require.NoError(t, json.Indent(&pretty, body, "", "  "))
		pretty.WriteByte('\n')
		golden := filepath.Join("testdata", "apidocs", name)
		if *updateDocs {
			require.NoError(t, os.WriteFile(golden, pretty.Bytes(), 0o644))
		}
		want, err := os.ReadFile(golden)
		require.NoError(t, err)
		assert.Equal(t, string(want), pretty.String(), "%s is not current: go test -run TestExampleAppDocs -update .", golden)
		if name == "openapi.json" {
			validateOpenAPI(t, body)
		} else {
			compileSchemas(t, body)
			validateAsyncAPI(t, body)
		}
	}
}

// docValue returns the value at a JSON pointer of the JSON b ("/a/b").
func docValue(t *testing.T, b []byte, ptr string) any {
	t.Helper()
	v, err := docLookup(b, ptr)
	require.NoError(t, err)
	return v
}

// docLookup returns the value at a JSON pointer of the JSON b, or an error
// naming what is missing.
func docLookup(b []byte, ptr string) (any, error) {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		if a, ok := v.([]any); ok {
			i, err := strconv.Atoi(tok)
			if err != nil || i >= len(a) {
				return nil, fmt.Errorf("%s: no %s", ptr, tok)
			}
			v = a[i]
			continue
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: %s is not in an object", ptr, tok)
		}
		if v, ok = m[tok]; !ok {
			return nil, fmt.Errorf("%s: no %s", ptr, tok)
		}
	}
	return v, nil
}

// TestAPIDocsModelSchemas: the JSON Schemas of the models follow the Go
// types as encoding/json writes them and the binding tags: required,
// bounds, formats, oneof as an enum, nullable pointers, times, JSON
// columns, read-only keys and automatic fields, a UUID key.
func TestAPIDocsModelSchemas(t *testing.T) {
	srv := docsServer(t)
	b, err := srv.API.OpenAPI()
	require.NoError(t, err)
	obj := "/components/schemas/projects/properties/"
	write := "/components/schemas/projects.write/properties/"
	for ptr, want := range map[string]string{
		obj + "ID":         `{"type":"integer","minimum":0,"readOnly":true}`,
		obj + "CreatedAt":  `{"type":"string","format":"date-time","readOnly":true}`,
		obj + "DeletedAt":  `{"type":["string","null"],"format":"date-time","readOnly":true}`,
		obj + "email":      `{"type":"string","format":"email","readOnly":true}`,
		obj + "due":        `{"type":["string","null"],"format":"date-time"}`,
		obj + "meta":       `{"description":"Any JSON value."}`,
		obj + "tags":       `{"type":["array","null"],"items":{"type":"string"}}`,
		obj + "owner":      `{"anyOf":[{"$ref":"#/components/schemas/docOwner"},{"type":"null"}]}`,
		obj + "owner_id":   `{"type":["integer","null"],"minimum":0}`,
		write + "name":     `{"type":"string","minLength":3,"maxLength":10}`,
		write + "color":    `{"type":"string","anyOf":[{"const":""},{"enum":["red","green","blue"]}]}`,
		write + "priority": `{"type":"integer","minimum":0,"maximum":5}`,
		write + "site":     `{"type":["string","null"],"anyOf":[{"type":"null"},{"format":"uri"}]}`,
		"/components/schemas/projects.write/required":  `["name"]`,
		"/components/schemas/projects.patch/required":  `null`,
		"/components/schemas/projects/required":        `["ID","CreatedAt","UpdatedAt","DeletedAt","name","color","priority","email","site","due","meta","owner_id"]`,
		"/components/schemas/tickets/properties/id":    `{"type":"string","format":"uuid","readOnly":true}`,
		"/components/schemas/projects/x-primary-key":   `"ID"`,
		"/components/schemas/tickets/x-primary-key":    `"id"`,
		"/components/schemas/tickets.write/properties": `{"title":{"type":"string","minLength":4,"maxLength":4},"score":{"type":"number","exclusiveMinimum":0,"exclusiveMaximum":1}}`,
		"/paths/~1tickets~1{pk}/parameters/0/schema":   `{"type":"string","format":"uuid"}`,
	} {
		if want == "null" {
			assert.NotContains(t, docValue(t, b, strings.TrimSuffix(ptr, "/required")), "required", ptr)
			continue
		}
		got, err := json.Marshal(docValue(t, b, ptr))
		require.NoError(t, err)
		assert.JSONEq(t, want, string(got), ptr)
	}
	for _, key := range []string{"Secret", "secret"} {
		assert.NotContains(t, docValue(t, b, "/components/schemas/projects/properties"), key, "json:\"-\" is not sent")
	}
	assert.NotContains(t, docValue(t, b, "/components/schemas/projects.write/properties"), "ID", "the primary key is not written")

	// The debugger's schema is the same description: oneof is its choices.
	status, body, _ := srv.restRaw(t, http.MethodGet, "/channels-api/schema.json", nil)
	require.Equal(t, http.StatusOK, status)
	var schema struct {
		Streams []struct {
			Name   string
			Fields []struct {
				Name    string
				Choices []string
			}
		}
	}
	require.NoError(t, json.Unmarshal(body, &schema))
	var choices []string
	for _, s := range schema.Streams {
		for _, f := range s.Fields {
			if s.Name == "projects" && f.Name == "color" {
				choices = f.Choices
			}
		}
	}
	assert.Equal(t, []string{"red", "green", "blue"}, choices)
}

// TestAPIDocsFollowAdd: the documents are built again after an Add, and
// what a caller does with the bytes it got does not change them.
func TestAPIDocsFollowAdd(t *testing.T) {
	db := openDB(t, &TestModel{}, &docOwner{})
	srv := newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	before, err := srv.API.OpenAPI()
	require.NoError(t, err)
	assert.NotContains(t, string(before), `"/owners"`)
	clear(before)

	require.NoError(t, channelsapi.Add(srv.API, channelsapi.ViewSet[docOwner]{Stream: "owners"}))
	after, err := srv.API.OpenAPI()
	require.NoError(t, err)
	assert.Contains(t, string(after), `"/owners"`)
	assert.Contains(t, string(after), `"/testmodel"`)
	async, err := srv.API.AsyncAPI()
	require.NoError(t, err)
	assert.Contains(t, string(async), `"owners.create"`)
	status, _ := srv.doREST(t, http.MethodPost, "/owners", `{"name":"ann"}`)
	assert.Equal(t, http.StatusCreated, status)
}

// TestAPIDocsRelations: the declared Relations are in both documents: the
// "expand" query key of the REST routes that take it, the "expand" key of
// the WebSocket payloads, and expandable fields that may be null (an
// object the user may not see). TestRelationsExpand's replies, validated
// against these documents by the recording check, hold them to it.
func TestAPIDocsRelations(t *testing.T) {
	f := newRelFixture(t)
	openAPI, err := f.srv.API.OpenAPI()
	require.NoError(t, err)
	validateOpenAPI(t, openAPI)
	expandOf := func(path, method string) string {
		docValue(t, openAPI, "/paths/"+strings.ReplaceAll(path, "/", "~1")+"/"+method) // the operation is there
		found, _ := docLookup(openAPI, "/paths/"+strings.ReplaceAll(path, "/", "~1")+"/"+method+"/parameters")
		params, _ := found.([]any)
		for _, p := range params {
			if p := p.(map[string]any); p["name"] == "expand" {
				return p["description"].(string)
			}
		}
		return ""
	}
	assert.Contains(t, expandOf("/projects/{pk}", "get"), "owner, todos")
	assert.Contains(t, expandOf("/projects", "get"), "owner, todos")
	assert.Contains(t, expandOf("/projects", "post"), "owner, todos")
	assert.Contains(t, expandOf("/todos/{pk}", "patch"), "project")
	assert.Empty(t, expandOf("/owners/{pk}", "get"), "owners declare no relations")
	assert.Empty(t, expandOf("/todos/{pk}", "delete"))

	owner, err := json.Marshal(docValue(t, openAPI, "/components/schemas/projects/properties/owner"))
	require.NoError(t, err)
	assert.Contains(t, string(owner), `"null"`, "an expanded owner the user may not see is null")
	project, err := json.Marshal(docValue(t, openAPI, "/components/schemas/todos/properties/project"))
	require.NoError(t, err)
	assert.Contains(t, string(project), `"null"`, "a project held by value is null when not visible")

	asyncAPI, err := f.srv.API.AsyncAPI()
	require.NoError(t, err)
	compileSchemas(t, asyncAPI)
	names, err := json.Marshal(docValue(t, asyncAPI, "/components/messages/projects.retrieve.request/payload/properties/payload/properties/expand/items/enum"))
	require.NoError(t, err)
	assert.JSONEq(t, `["owner", "todos"]`, string(names))
	docValue(t, asyncAPI, "/components/messages/owners.retrieve.request/payload/properties/payload/properties/action")
	_, err = docLookup(asyncAPI, "/components/messages/owners.retrieve.request/payload/properties/payload/properties/expand")
	assert.Error(t, err, "owners declare no relations")
}
