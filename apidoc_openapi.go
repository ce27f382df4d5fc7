package channelsapi

import (
	"cmp"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/channelsapi/channelsapi/internal/apispec"
)

// openAPIDoc builds the OpenAPI 3.1 document of the REST routes of
// streams (PROTOCOL.md sections 7, 8 and 12).
func (a *API) openAPIDoc(info apispec.Info, streams []streamSchema, components *schemaSet) *apispec.OpenAPI {
	doc := &apispec.OpenAPI{
		OpenAPI:           "3.1.0",
		Info:              info,
		JSONSchemaDialect: "https://json-schema.org/draft/2020-12/schema",
		// WithBaseURL's, else relative: the document never names a host
		// taken from a request.
		Servers: []apispec.Server{{URL: cmp.Or(a.cfg.baseURL, "/")}},
		Paths:   map[string]*apispec.PathItem{},
		Components: apispec.Components{
			Schemas:   components.components,
			Responses: restResponses(),
		},
	}
	for _, s := range streams {
		doc.Tags = append(doc.Tags, apispec.Tag{Name: s.Name, Description: fmt.Sprintf("The %q stream (model %q).", s.Name, s.Model)})
		for _, act := range s.Actions {
			if act.Path == "" {
				continue // a subscription action: WebSocket only
			}
			path := openAPIPath(act.Path)
			item := doc.Paths[path]
			if item == nil {
				item = &apispec.PathItem{}
				doc.Paths[path] = item
				if strings.Contains(path, "{pk}") {
					item.Parameters = []*apispec.Parameter{pkParameter(s)}
				}
				setOperation(item, http.MethodOptions, optionsOperation(s, path))
			}
			op := restOperation(s, act)
			setOperation(item, act.Method, op)
			if act.Method == http.MethodGet {
				setOperation(item, http.MethodHead, headOperation(op))
			}
		}
		if s.ReadOnly {
			// The write routes exist and refuse (rest.go).
			for _, act := range []actionSchema{
				{Name: actionCreate, Method: http.MethodPost, Path: s.RESTPath},
				{Name: actionUpdate, Method: http.MethodPut, Path: s.RESTPath + "/:pk", Detail: true},
				{Name: actionPatch, Method: http.MethodPatch, Path: s.RESTPath + "/:pk", Detail: true},
				{Name: actionDelete, Method: http.MethodDelete, Path: s.RESTPath + "/:pk", Detail: true},
			} {
				setOperation(doc.Paths[openAPIPath(act.Path)], act.Method, readOnlyOperation(s, act))
			}
		}
	}
	return doc
}

// openAPIPath turns a Gin route into an OpenAPI path: ":pk" -> "{pk}".
func openAPIPath(route string) string {
	parts := strings.Split(route, "/")
	for i, p := range parts {
		if strings.HasPrefix(p, ":") || strings.HasPrefix(p, "*") {
			parts[i] = "{" + p[1:] + "}"
		}
	}
	return strings.Join(parts, "/")
}

func setOperation(item *apispec.PathItem, method string, op *apispec.Operation) {
	switch method {
	case http.MethodGet:
		item.Get = op
	case http.MethodPost:
		item.Post = op
	case http.MethodPut:
		item.Put = op
	case http.MethodPatch:
		item.Patch = op
	case http.MethodDelete:
		item.Delete = op
	case http.MethodHead:
		item.Head = op
	case http.MethodOptions:
		item.Options = op
	}
}

// Components of the responses of every route.
const (
	responseError            = "Error"
	responseDenied           = "Denied"
	responseNotFound         = "NotFound"
	responseServerError      = "ServerError"
	responseBusy             = "Busy"
	responseConflict         = "Conflict"
	responseKeyReused        = "IdempotencyKeyReused"
	responseTooLarge         = "TooLarge"
	responseUnsupportedMedia = "UnsupportedMediaType"
	// ResponseMethodNotAllowed answers a method a path has no operation
	// for; it belongs to no operation.
	responseMethodNotAllowed = "MethodNotAllowed"
)

// restResponses are the responses every route shares (PROTOCOL.md
// sections 6 and 7).
func restResponses() map[string]*apispec.Response {
	detail := func(desc string) *apispec.Response {
		return &apispec.Response{Description: desc, Content: jsonContent(apispec.Ref(schemaDetail))}
	}
	r := map[string]*apispec.Response{
		responseError: {
			Description: "Refused: {\"detail\": ...} or messages by field. Hooks, permissions and custom actions may answer any status this way.",
			Content:     jsonContent(apispec.Ref(schemaError)),
		},
		responseDenied:      detail("Permission denied: {\"detail\": \"Permission Denied\"} (401 without an authenticated user, 403 with one)."),
		responseNotFound:    detail("{\"detail\": \"Not found.\"}: no object with this pk within the stream's scope, or a pk that cannot be parsed."),
		responseServerError: detail("{\"detail\": \"A server error occurred.\"}, with no internal detail."),
		responseConflict: detail("The object conflicts with an existing one (a unique constraint), or a request with the same Idempotency-Key " +
			"is still running: {\"detail\": \"A request with this idempotency key is still running.\"}."),
		responseKeyReused: detail("{\"detail\": \"Idempotency key reused with a different request.\"}: the Idempotency-Key was used by this user for another request."),
		responseBusy:      detail("{\"detail\": \"Server busy, try again.\"}: the write or read could not be ordered against the stream's events in time."),
		responseTooLarge:  detail("{\"detail\": \"Request body too large.\"}: the body is over the size limit (WithMaxMessageSize)."),
		responseUnsupportedMedia: detail(
			"{\"detail\": \"Unsupported media type \\\"text/plain\\\" in request.\"}: a body that is not application/json."),
		responseMethodNotAllowed: {
			Description: "{\"detail\": \"Method \\\"X\\\" not allowed.\"}, for a method the path has no operation for; the Allow header lists those it has.",
			Headers:     map[string]*apispec.Header{"Allow": {Description: "The methods of the path.", Schema: &apispec.Schema{Type: "string"}}},
			Content:     jsonContent(apispec.Ref(schemaDetail)),
		},
	}
	return r
}

func jsonContent(s *apispec.Schema) map[string]apispec.MediaType {
	return map[string]apispec.MediaType{"application/json": {Schema: s}}
}

func responseRef(name string) *apispec.Response {
	return &apispec.Response{Ref: "#/components/responses/" + name}
}

// refusals returns the error responses of an operation: permission first
// (401 and 403), 404 for one that looks an object up, 413 and 415 for one
// that takes a body, 500, 503 and, for any other status a hook or custom
// action chooses, the error body as default.
func refusals(detail, body bool, extra map[string]*apispec.Response) map[string]*apispec.Response {
	r := map[string]*apispec.Response{
		"401":     responseRef(responseDenied),
		"403":     responseRef(responseDenied),
		"500":     responseRef(responseServerError),
		"503":     responseRef(responseBusy),
		"default": responseRef(responseError),
	}
	if detail {
		r["404"] = responseRef(responseNotFound)
	}
	if body {
		r["400"] = responseRef(responseError)
		r["413"] = responseRef(responseTooLarge)
		r["415"] = responseRef(responseUnsupportedMedia)
	}
	for k, v := range extra {
		r[k] = v
	}
	return r
}

// pkParameter is the {pk} of a detail route.
func pkParameter(s streamSchema) *apispec.Parameter {
	schema := &apispec.Schema{Type: s.PKType}
	if s.PKType == "string" {
		schema = newSchemaSet().typeSchema(s.model.pk.FieldType) // with its format, uuid for example
		if schema.Format == "" {
			schema.Format = formatOf(rules(s.model.pk.Tag.Get("binding")))
		}
	}
	return &apispec.Parameter{
		Name: "pk", In: "path", Required: true, Schema: schema,
		Description: "The primary key. One that cannot be parsed for the key's type is 404.",
	}
}

// restOperation describes the route of act on s.
func restOperation(s streamSchema, act actionSchema) *apispec.Operation {
	op := &apispec.Operation{OperationID: s.Name + "." + act.Name, Tags: []string{s.Name}}
	obj := apispec.Ref(s.Name)
	ok := func(status int, desc string, schema *apispec.Schema) map[string]*apispec.Response {
		r := &apispec.Response{Description: desc}
		if schema != nil {
			r.Content = jsonContent(schema)
		}
		return map[string]*apispec.Response{strconv.Itoa(status): r}
	}
	body := func(component, desc string) *apispec.RequestBody {
		return &apispec.RequestBody{Description: desc, Required: true, Content: jsonContent(apispec.Ref(component))}
	}
	switch act.Name {
	case actionList:
		op.Summary = "List " + s.Name
		op.Description = "A page of the objects, in the stream's ordering, then by primary key. A page beyond the last, below 1 or not an integer is 404 {\"detail\": \"Invalid page.\"}; a query key that is not declared, or a bad value, is 400 (PROTOCOL.md section 8)."
		op.Parameters = listParameters(s)
		extra := ok(http.StatusOK, "The page.", listPageSchema(s))
		extra["400"] = &apispec.Response{Description: "A query key that is not declared, or a bad value.", Content: jsonContent(apispec.Ref(schemaFieldErrors))}
		extra["404"] = &apispec.Response{Description: "{\"detail\": \"Invalid page.\"}", Content: jsonContent(apispec.Ref(schemaDetail))}
		op.Responses = refusals(false, false, extra)
	case actionCreate:
		op.Summary = "Create a " + s.Name + " object"
		op.RequestBody = body(s.Name+".write", "The fields of the object.")
		op.Parameters = append(expandParameters(s), idempotencyParameter())
		extra := withETag(ok(http.StatusCreated, "The object created.", obj))
		extra["409"] = responseRef(responseConflict)
		extra["422"] = responseRef(responseKeyReused)
		op.Responses = refusals(false, true, extra)
	case actionRetrieve:
		op.Summary = "Retrieve a " + s.Name + " object"
		op.Parameters = expandParameters(s)
		op.Responses = refusals(true, false, withETag(ok(http.StatusOK, "The object.", obj)))
	case actionUpdate, actionPatch:
		op.Summary = "Update a " + s.Name + " object"
		component := s.Name + ".write"
		if act.Name == actionPatch {
			op.Summary, component = "Change fields of a "+s.Name+" object", s.Name+".patch"
		}
		op.RequestBody = body(component, "The fields to write.")
		op.Parameters = append(expandParameters(s), ifMatchParameter(), idempotencyParameter())
		extra := withETag(ok(http.StatusOK, "The object after the write.", obj))
		extra["409"] = responseRef(responseConflict)
		extra["412"] = staleResponse(obj)
		extra["422"] = responseRef(responseKeyReused)
		op.Responses = refusals(true, true, extra)
	case actionDelete:
		op.Summary = "Delete a " + s.Name + " object"
		op.Parameters = []*apispec.Parameter{ifMatchParameter(), idempotencyParameter()}
		extra := ok(http.StatusNoContent, "Deleted; no body.", nil)
		extra["400"] = responseRef(responseError)
		extra["409"] = responseRef(responseConflict)
		extra["412"] = staleResponse(obj)
		extra["422"] = responseRef(responseKeyReused)
		op.Responses = refusals(true, false, extra)
	default: // a custom action
		op.Summary = "The custom action " + act.Name
		op.Description = "Its status and body are the action's (Action.Handle)."
		hasBody := act.Method != http.MethodGet && act.Method != http.MethodHead
		if hasBody {
			op.RequestBody = &apispec.RequestBody{Description: "The action's data: any JSON.", Content: jsonContent(&apispec.Schema{})}
		}
		op.Responses = refusals(act.Detail, hasBody, map[string]*apispec.Response{
			"2XX": {Description: "What the action returns.", Content: jsonContent(&apispec.Schema{Description: "Any JSON value."})},
		})
	}
	return op
}

// etagHeader is the ETag of an object (PROTOCOL.md section 11).
func etagHeader() *apispec.Header {
	return &apispec.Header{
		Description: "The object's entity tag, strong: \"v<N>\" from the stream's version field, else a hash of the object's JSON. Send it as If-Match.",
		Schema:      &apispec.Schema{Type: "string"},
	}
}

// withETag adds the ETag header, and Idempotent-Replayed, to the success
// response in r.
func withETag(r map[string]*apispec.Response) map[string]*apispec.Response {
	for _, resp := range r {
		resp.Headers = map[string]*apispec.Header{"ETag": etagHeader(), "Idempotent-Replayed": replayedHeader()}
	}
	return r
}

// replayedHeader marks the stored reply of an Idempotency-Key.
func replayedHeader() *apispec.Header {
	return &apispec.Header{
		Description: "\"true\" on the stored reply of a repeated Idempotency-Key.",
		Schema:      &apispec.Schema{Type: "string", Enum: apispec.Enum("true")},
	}
}

// idempotencyParameter is the Idempotency-Key of create, update, patch
// and delete.
func idempotencyParameter() *apispec.Parameter {
	return &apispec.Parameter{
		Name: "Idempotency-Key", In: "header", Schema: &apispec.Schema{Type: "string", MinLength: apispec.Int(1), MaxLength: apispec.Int(maxKeyLength)},
		Description: "With WithIdempotency: a repeat of this request with the same key (same user, same request) within the retention returns the stored " +
			"status and body without running again, with the header Idempotent-Replayed: true. The same key for another request is 422. " +
			"Without WithIdempotency, 400.",
	}
}

// ifMatchParameter is the If-Match of update, patch and delete.
func ifMatchParameter() *apispec.Parameter {
	return &apispec.Parameter{
		Name: "If-Match", In: "header", Schema: &apispec.Schema{Type: "string"},
		Description: "Write only if the object's ETag is one of these (a comma-separated list of quoted entity tags), or, with \"*\", if it exists; " +
			"else 412 with the current object. Weak tags never match. A malformed value is 400.",
	}
}

// staleResponse is the 412 of a write whose If-Match does not match.
func staleResponse(obj *apispec.Schema) *apispec.Response {
	return &apispec.Response{
		Description: "Precondition failed: the object changed since the ETag of If-Match. The body is the current object, the ETag header its entity tag.",
		Headers:     map[string]*apispec.Header{"ETag": etagHeader()},
		Content:     jsonContent(obj),
	}
}

// readOnlyOperation describes a write route of a read-only stream.
func readOnlyOperation(s streamSchema, act actionSchema) *apispec.Operation {
	return &apispec.Operation{
		OperationID: s.Name + "." + act.Name,
		Tags:        []string{s.Name},
		Summary:     "Refused: the stream is read-only",
		Description: "Always 400 {\"detail\": \"Invalid Action\"} once the permission allows the request.",
		Responses: refusals(false, false, map[string]*apispec.Response{
			"400": {Description: "{\"detail\": \"Invalid Action\"}", Content: jsonContent(apispec.Ref(schemaDetail))},
		}),
	}
}

// The REST behaviours beyond PROTOCOL.md section 7 that the documents
// describe: HEAD on GET routes (headOperation), OPTIONS metadata
// (optionsOperation), the 405 of a method a path does not have, the 415 of
// a body that is not JSON (restResponses), and "expand" (expandParameters,
// with the relations of a stream from expandable).

// headOperation is op's GET answered without a body.
func headOperation(get *apispec.Operation) *apispec.Operation {
	op := *get
	op.OperationID = get.OperationID + ".head"
	op.Summary = "The headers of " + strings.ToLower(get.Summary[:1]) + get.Summary[1:] + ", without the body"
	op.Responses = map[string]*apispec.Response{}
	for status := range get.Responses {
		op.Responses[status] = &apispec.Response{Description: "As GET, without a body."}
	}
	return &op
}

// optionsOperation describes OPTIONS on a path: its metadata, as Django
// REST Framework's.
func optionsOperation(s streamSchema, path string) *apispec.Operation {
	str := &apispec.Schema{Type: "string"}
	list := &apispec.Schema{Type: "array", Items: str}
	return &apispec.Operation{
		OperationID: s.Name + ".options" + strings.NewReplacer("/", ".", "{pk}", "detail").Replace(strings.TrimPrefix(path, s.RESTPath)),
		Tags:        []string{s.Name},
		Summary:     "The metadata of the route",
		Responses: map[string]*apispec.Response{
			"200": {
				Description: "What the route renders and parses; the Allow header lists its methods.",
				Headers:     map[string]*apispec.Header{"Allow": {Schema: str}},
				Content: jsonContent(&apispec.Schema{
					Type: "object",
					Properties: map[string]*apispec.Schema{
						"name": str, "description": str, "renders": list, "parses": list,
						"actions": {Type: "object", Description: "The fields each write method takes, by method."},
					},
					Required: []string{"name", "description", "renders", "parses"},
				}),
			},
			"default": responseRef(responseError),
		},
	}
}

// listPageSchema is the body of a REST list (PROTOCOL.md section 7).
func listPageSchema(s streamSchema) *apispec.Schema {
	url := &apispec.Schema{Type: []string{"string", "null"}, Description: "The URL of the next (previous) page with every query key kept, or null."}
	return &apispec.Schema{
		Type: "object",
		Properties: map[string]*apispec.Schema{
			"count":    {Type: "integer", Minimum: apispec.Float(0)},
			"next":     url,
			"previous": url,
			"results":  {Type: "array", Items: apispec.Ref(s.Name)},
			"position": apispec.Ref(schemaPosition),
		},
		Required: []string{"count", "next", "previous", "results"},
	}
}

// listParameters are the query keys of a list (PROTOCOL.md sections 4.6
// and 8).
func listParameters(s streamSchema) []*apispec.Parameter {
	params := []*apispec.Parameter{
		{Name: "page", In: "query", Description: "The page, from 1.", Schema: &apispec.Schema{Type: "integer", Minimum: apispec.Float(1)}},
		{Name: "page_size", In: "query", Schema: &apispec.Schema{Type: "integer", Minimum: apispec.Float(1)},
			Description: fmt.Sprintf("Objects per page: %d by default, at most %d (a larger size is capped).", s.PageSize, s.MaxPageSize)},
	}
	for _, f := range s.Filters {
		for _, lookup := range f.Lookups {
			name, desc := f.Name+"__"+lookup, lookupDoc[lookup]
			if lookup == "exact" {
				params = append(params, &apispec.Parameter{Name: f.Name, In: "query", Description: desc, Schema: filterValue(f.Type)})
			}
			schema := filterValue(f.Type)
			switch lookup {
			case "in":
				schema = &apispec.Schema{Type: "string", Description: "Comma-separated values."}
			case "range":
				schema = &apispec.Schema{Type: "string", Description: "Two comma-separated values: low,high."}
			case "isnull":
				schema = &apispec.Schema{Type: "boolean"}
			}
			params = append(params, &apispec.Parameter{Name: name, In: "query", Description: desc, Schema: schema})
		}
	}
	if len(s.OrderingFields) > 0 {
		params = append(params, &apispec.Parameter{
			Name: "ordering", In: "query", Schema: &apispec.Schema{Type: "string"},
			Description: "Comma-separated fields, \"-\" for descending, of: " + strings.Join(s.OrderingFields, ", ") + ". Ties are broken by primary key.",
		})
	}
	if len(s.SearchFields) > 0 {
		params = append(params, &apispec.Parameter{
			Name: "search", In: "query", Schema: &apispec.Schema{Type: "string"},
			Description: "Terms separated by spaces, each matching some of " + strings.Join(s.SearchFields, ", ") + ", case insensitive.",
		})
	}
	return append(params, expandParameters(s)...)
}

// lookupDoc describes the lookups of section 8.
var lookupDoc = map[string]string{
	"exact": "Equal.", "iexact": "Equal, case insensitive.", "in": "One of the values.",
	"gt": "Greater than.", "gte": "Greater than or equal.", "lt": "Less than.", "lte": "Less than or equal.",
	"contains": "Contains the text.", "icontains": "Contains the text, case insensitive.",
	"startswith": "Starts with the text.", "istartswith": "Starts with the text, case insensitive.",
	"isnull": "true: is null; false: is not null.", "range": "Between two values, inclusive.",
}

// filterValue is the schema of a filter value of a field whose values
// have the type named by filterSchema.Type.
func filterValue(typ string) *apispec.Schema {
	if typ == "datetime" {
		return &apispec.Schema{Type: "string", Format: "date-time"}
	}
	return &apispec.Schema{Type: typ}
}

// expandParameters is the "expand" query key of retrieve, list, create,
// update and patch, for a stream with relations clients may expand (expandable).
func expandParameters(s streamSchema) []*apispec.Parameter {
	names := expandable(s)
	if len(names) == 0 {
		return nil
	}
	return []*apispec.Parameter{{
		Name: "expand", In: "query", Schema: &apispec.Schema{Type: "string"},
		Description: "Comma-separated relations to include, of: " + strings.Join(names, ", ") + ".",
	}}
}

// expandable returns the relations of s a client may expand.
func expandable(s streamSchema) []string {
	var names []string
	for _, r := range s.Relations {
		if r.Expand {
			names = append(names, r.Name)
		}
	}
	return names
}
