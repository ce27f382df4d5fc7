package channelsapi_test

// This file tests apidoc.go and its builders: the OpenAPI and AsyncAPI
// documents of WithAPIDocs, checked with an OpenAPI 3.1 validator, a JSON
// Schema 2020-12 compiler and the AsyncAPI parser, and the example app's
// documents against testdata/apidocs.

import (
	"context"
	"encoding/json"
	"net/http"
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
