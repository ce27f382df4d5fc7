package channelsapi

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/gin-gonic/gin"

	"github.com/channelsapi/channelsapi/internal/apispec"
)

// APIDocs configures the description documents of WithAPIDocs
// (PROTOCOL.md section 12). The zero value serves nothing; the documents
// are still available from (*API).OpenAPI and (*API).AsyncAPI.
type APIDocs struct {
	// OpenAPIPath is where the OpenAPI 3.1 document of the REST routes is
	// served, relative to the router given to Register, for example
	// "/api/openapi.json". Empty means not served.
	OpenAPIPath string
	// AsyncAPIPath is where the AsyncAPI 3.0 document of the WebSocket is
	// served, for example "/api/asyncapi.json". Empty means not served.
	AsyncAPIPath string
	// Title and Version are the documents' info; empty means "channelsapi"
	// and "1.0.0".
	Title, Version string
	// Description is the documents' info description; empty means none.
	Description string
}

// WithAPIDocs serves the OpenAPI document of the REST routes and the
// AsyncAPI document of the WebSocket, generated from the added ViewSets,
// as JSON at the paths of docs. Their servers are relative: nothing in
// them comes from a request.
func WithAPIDocs(docs APIDocs) Option { return func(c *config) { c.docs = docs } }

// apiDocs holds the documents of an API, built from the description of
// its ViewSets (describe) when first asked for and again only after Add.
type apiDocs struct {
	mu       sync.Mutex
	wsPath   string // absolute path of the WebSocket
	streams  int    // how many streams the documents describe
	openAPI  []byte
	asyncAPI []byte
}

// OpenAPI returns the OpenAPI 3.1 document of the REST routes of the
// added ViewSets, as JSON; the caller may keep and modify it. It is safe
// to call while the API serves.
func (a *API) OpenAPI() ([]byte, error) {
	openAPI, _, err := a.documents()
	return bytes.Clone(openAPI), err
}

// AsyncAPI returns the AsyncAPI 3.0 document of the WebSocket of the added
// ViewSets, as JSON; the caller may keep and modify it. It is safe to call
// while the API serves.
func (a *API) AsyncAPI() ([]byte, error) {
	_, asyncAPI, err := a.documents()
	return bytes.Clone(asyncAPI), err
}

// documents returns both documents, built once for the ViewSets added so
// far. The caller must not modify them.
func (a *API) documents() (openAPI, asyncAPI []byte, err error) {
	streams := a.describeAll()
	d := &a.docs
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.openAPI != nil && d.streams == len(streams) {
		return d.openAPI, d.asyncAPI, nil
	}
	info := docInfo(a.cfg.docs)
	components := newSchemaSet()
	for _, s := range streams {
		components.addStream(s)
	}
	o, err := json.Marshal(a.openAPIDoc(info, streams, components))
	if err != nil {
		return nil, nil, fmt.Errorf("channelsapi: encode the OpenAPI document: %w", err)
	}
	as, err := json.Marshal(a.asyncAPIDoc(info, streams, components))
	if err != nil {
		return nil, nil, fmt.Errorf("channelsapi: encode the AsyncAPI document: %w", err)
	}
	d.streams, d.openAPI, d.asyncAPI = len(streams), o, as
	return o, as, nil
}

// mountDocs adds the routes of WithAPIDocs to router.
func (a *API) mountDocs(router gin.IRouter) error {
	serve := func(pick func(openAPI, asyncAPI []byte) []byte) gin.HandlerFunc {
		return func(c *gin.Context) {
			openAPI, asyncAPI, err := a.documents()
			if err != nil {
				a.log.ErrorContext(c.Request.Context(), "channelsapi: description document", "err", err)
				c.AbortWithStatusJSON(http.StatusInternalServerError, gin.H{"detail": msgServerError})
				return
			}
			c.Data(http.StatusOK, "application/json; charset=utf-8", pick(openAPI, asyncAPI))
		}
	}
	a.docs.wsPath = basePath(router) + a.cfg.path
	return mount(func() {
		if p := a.cfg.docs.OpenAPIPath; p != "" {
			router.GET(p, serve(func(o, _ []byte) []byte { return o }))
		}
		if p := a.cfg.docs.AsyncAPIPath; p != "" {
			router.GET(p, serve(func(_, as []byte) []byte { return as }))
		}
	})
}

// docPath reports whether p is a valid path of WithAPIDocs.
func docPath(p string) bool { return p == "" || p[0] == '/' }

// docInfo returns the info of both documents.
func docInfo(d APIDocs) apispec.Info {
	return apispec.Info{Title: cmp.Or(d.Title, "channelsapi"), Version: cmp.Or(d.Version, "1.0.0"), Description: d.Description}
}

// Names of the components both documents share, besides the models'.
const (
	schemaDetail      = "channelsapi.Detail"
	schemaFieldErrors = "channelsapi.FieldErrors"
	schemaError       = "channelsapi.Error"
	schemaPosition    = "channelsapi.Position"
	schemaErrorList   = "channelsapi.ErrorList"
)

// wireSchemas are the shapes of PROTOCOL.md that no model decides: the
// error bodies of section 6 and 7 and the position of section 10.
func wireSchemas() map[string]*apispec.Schema {
	str := &apispec.Schema{Type: "string"}
	messages := &apispec.Schema{Type: "array", Items: str}
	fieldErrors := &apispec.Schema{
		Type:                 "object",
		Description:          "Messages by field (JSON name); \"non_field_errors\" for messages about the request as a whole.",
		AdditionalProperties: messages,
		MinProperties:        apispec.Int(1),
	}
	return map[string]*apispec.Schema{
		schemaDetail: {
			Type:        "object",
			Description: "A refusal with one message, for example {\"detail\": \"Not found.\"}.",
			Properties:  map[string]*apispec.Schema{"detail": str},
			Required:    []string{"detail"},
		},
		schemaFieldErrors: fieldErrors,
		schemaError: {
			Description: "A Django REST Framework error body: {\"detail\": ...} or messages by field.",
			AnyOf:       []*apispec.Schema{apispec.Ref(schemaDetail), apispec.Ref(schemaFieldErrors)},
		},
		schemaErrorList: {
			Type:        "array",
			Description: "The errors of a WebSocket reply: messages, or one object of messages by field.",
			MinItems:    apispec.Int(1),
			Items:       &apispec.Schema{AnyOf: []*apispec.Schema{str, apispec.Ref(schemaFieldErrors)}},
		},
		schemaPosition: {
			Type:        "object",
			Description: "A place in a stream's history (PROTOCOL.md section 10).",
			Properties: map[string]*apispec.Schema{
				"epoch":  str,
				"offset": {Type: "integer", Minimum: apispec.Float(0)},
			},
			Required: []string{"epoch", "offset"},
		},
	}
}
