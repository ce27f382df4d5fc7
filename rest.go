package channelsapi

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
)

// listPage is the Django REST Framework list envelope (PROTOCOL.md 7).
type listPage struct {
	Count    int64   `json:"count"`
	Next     *string `json:"next"`
	Previous *string `json:"previous"`
	Results  any     `json:"results"`
	// Position is the stream position the rows were read at (PROTOCOL.md
	// 10).
	Position *Position `json:"position,omitempty"`
}

// restRoute is one route of a ViewSet: method, path under the stream's
// group, action.
type restRoute struct{ method, path, action string }

// mountREST adds the routes of PROTOCOL.md section 7 for v. Each path also
// answers HEAD where it answers GET, OPTIONS with its metadata, and every
// other standard method with a 405: the paths are registered once per
// method, so that the router's other routes are left as they are (Gin's
// HandleMethodNotAllowed would change the 404s of every route of the
// engine). Gin panics on a route that conflicts with one the router has;
// that is returned as an error (the routes mounted before it stay).
func (v *viewSet[T]) mountREST(a *API) error {
	routes := []restRoute{
		{http.MethodGet, "", actionList},
		{http.MethodGet, "/:pk", actionRetrieve},
		// A ReadOnly ViewSet has these routes too: they answer 400
		// {"detail": "Invalid Action"}, as the WebSocket does.
		{http.MethodPost, "", actionCreate},
		{http.MethodPut, "/:pk", actionUpdate},
		{http.MethodPatch, "/:pk", actionPatch},
		{http.MethodDelete, "/:pk", actionDelete},
	}
	names := slices.Sorted(maps.Keys(v.Actions))
	for _, name := range names {
		act := v.Actions[name]
		path := "/" + name
		if act.Detail {
			path = "/:pk/" + name
		}
		routes = append(routes, restRoute{cmp.Or(act.Method, http.MethodGet), path, name})
	}
	model := reflect.TypeFor[T]().Name()
	return mount(func() {
		g := a.rest.Group("/" + v.Stream)
		var paths []string
		byPath := map[string][]restRoute{}
		for _, r := range routes {
			if byPath[r.path] == nil {
				paths = append(paths, r.path)
			}
			byPath[r.path] = append(byPath[r.path], r)
		}
		allowed := func(path string) []string {
			var methods []string
			for _, r := range byPath[path] {
				methods = append(methods, r.method)
			}
			if slices.Contains(methods, http.MethodGet) && !slices.Contains(methods, http.MethodHead) {
				methods = append(methods, http.MethodHead)
			}
			if !slices.Contains(methods, http.MethodOptions) {
				methods = append(methods, http.MethodOptions)
			}
			return methods
		}
		// object serves method on an object, or returns nil.
		object := func(method string) gin.HandlerFunc {
			i := slices.IndexFunc(byPath["/:pk"], func(r restRoute) bool { return r.method == method })
			if i < 0 {
				return nil
			}
			return a.restHandler(v, byPath["/:pk"][i].action, allowHeader(allowed("/:pk")))
		}
		for _, path := range paths {
			methods := allowed(path)
			allow := allowHeader(methods)
			meta := restMetadata{Renders: []string{jsonMedia}, Parses: []string{jsonMedia}}
			write := ""
			switch path {
			case "":
				meta.Name, write = model+" List", http.MethodPost
			case "/:pk":
				meta.Name, write = model+" Instance", http.MethodPut
			default:
				meta.Name = prettyName(byPath[path][0].action)
			}
			for _, r := range byPath[path] {
				h := a.restHandler(v, r.action, allow)
				g.Handle(r.method, path, h)
				if r.method == http.MethodGet && !slices.ContainsFunc(byPath[path], func(r restRoute) bool { return r.method == http.MethodHead }) {
					g.HEAD(path, h)
				}
			}
			if !slices.ContainsFunc(byPath[path], func(r restRoute) bool { return r.method == http.MethodOptions }) {
				g.OPTIONS(path, a.restOptions(v, meta, write, allow))
			}
			for _, m := range methodOrder {
				if slices.Contains(methods, m) {
					continue
				}
				// A list action's path is also an object's, whose pk is
				// the action's name: the router prefers the static path,
				// so the methods the action does not take go to the
				// object, as they would without the action.
				if name, ok := strings.CutPrefix(path, "/"); ok && !strings.Contains(name, "/") && name != ":pk" {
					om := m
					if m == http.MethodHead {
						om = http.MethodGet
					}
					if h := object(om); h != nil {
						g.Handle(m, path, withPK(name, h))
						continue
					}
				}
				g.Handle(m, path, methodNotAllowed(allow))
			}
		}
	})
}

// withPK serves h with the path parameter pk set to pk.
func withPK(pk string, h gin.HandlerFunc) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Params = append(c.Params, gin.Param{Key: "pk", Value: pk})
		h(c)
	}
}

// restRequest is the Request of a REST call of action.
func (a *API) restRequest(c *gin.Context, r resource, action string) *Request {
	req := &Request{
		Transport: TransportREST, Stream: r.name(), Action: action,
		User: a.userOf(c), Header: c.Request.Header, Query: c.Request.URL.Query(),
	}
	if len(c.Params) > 0 {
		req.Params = make(map[string]string, len(c.Params))
		for _, p := range c.Params {
			req.Params[p.Key] = p.Value
		}
	}
	if pk, ok := c.Params.Get("pk"); ok {
		req.rawPK, _ = json.Marshal(pk)
	}
	return req
}

// restHandler serves one action over REST through the same code path as
// the WebSocket. allow is the Allow header of its path, sent with every
// response as Django REST Framework sends it.
func (a *API) restHandler(r resource, action, allow string) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Header("Allow", allow)
		if !safeMethod(c.Request.Method) {
			if why := a.crossSite(c.Request); why != "" {
				refuse(c, http.StatusForbidden, why)
				return
			}
		}
		req := a.restRequest(c, r, action)
		req.readExpand(req.Query[keyExpand], nil)
		req.readIfMatch(c.Request.Header.Values("If-Match"))
		req.readIdempotencyKey(c.Request.Header.Values("Idempotency-Key"))
		if action == actionList {
			req.Data = listData(req.Query)
			req.params = restQuery(req.Query)
		} else if c.Request.Body != nil {
			body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, a.cfg.maxMessageSize))
			var tooLarge *http.MaxBytesError
			switch {
			case errors.As(err, &tooLarge):
				refuse(c, http.StatusRequestEntityTooLarge, "Request body too large.")
				return
			case err != nil:
				refuse(c, http.StatusBadRequest, "Could not read the request body.")
				return
			case len(body) == 0:
			case unsupportedMedia(c.Request) != "":
				refuse(c, http.StatusUnsupportedMediaType, unsupportedMedia(c.Request))
				return
			case len(bytes.TrimSpace(body)) > 0 && !json.Valid(body):
				refuse(c, http.StatusBadRequest, "JSON parse error.")
				return
			}
			req.Data = body
		}
		res, werr := a.run(c.Request.Context(), r, req, nil)
		if etag := cmp.Or(res.etag, werrETag(werr)); etag != "" {
			c.Header("ETag", etag)
		}
		if res.replayed && werr == nil {
			c.Header("Idempotent-Replayed", "true")
		}
		switch {
		case werr != nil:
			a.writeJSON(c, werr.status, werr.restBody())
			c.Abort()
		case action == actionDelete:
			c.Status(http.StatusNoContent)
		case res.page != nil:
			a.writeJSON(c, res.status, listPage{
				Count:    res.page.Count,
				Next:     a.pageURL(c, res.page, res.page.Page+1),
				Previous: a.pageURL(c, res.page, res.page.Page-1),
				Results:  res.data,
				Position: res.page.Position,
			})
		default:
			a.writeJSON(c, res.status, res.data)
		}
	}
}

const jsonMedia = "application/json"

// restMetadata is the body of an OPTIONS response, Django REST Framework's
// SimpleMetadata.
type restMetadata struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Renders     []string `json:"renders"`
	Parses      []string `json:"parses"`
	// Actions holds, for the collection's POST and the instance's PUT when
	// the user may use them, the fields of the body.
	Actions map[string]fieldsMetadata `json:"actions,omitempty"`
}

// restOptions answers OPTIONS on a path with meta. write is the method whose
// fields it describes when the user may use it ("POST" on the collection,
// "PUT" on an instance; "" for none).
func (a *API) restOptions(r resource, meta restMetadata, write, allow string) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Header("Allow", allow)
		action := actionCreate
		if write == http.MethodPut {
			action = actionUpdate
		}
		m := meta
		if write != "" && r.mayWrite(c.Request.Context(), a.restRequest(c, r, action)) {
			m.Actions = map[string]fieldsMetadata{write: fieldsOf(r.describe().Fields)}
		}
		a.writeJSON(c, http.StatusOK, m)
	}
}

// fieldMetadata describes one field as Django REST Framework's
// SimpleMetadata does.
type fieldMetadata struct {
	Type      string `json:"type"`
	Required  bool   `json:"required"`
	ReadOnly  bool   `json:"read_only"`
	Label     string `json:"label"`
	MinLength *int   `json:"min_length,omitempty"`
	MaxLength *int   `json:"max_length,omitempty"`
	MinValue  *int   `json:"min_value,omitempty"`
	MaxValue  *int   `json:"max_value,omitempty"`
}

// fieldsMetadata is the fields of a body, in the order of the model's; it
// encodes as a JSON object.
type fieldsMetadata []namedField

type namedField struct {
	name string
	fieldMetadata
}

func (fs fieldsMetadata) MarshalJSON() ([]byte, error) {
	buf := []byte{'{'}
	for i, f := range fs {
		if i > 0 {
			buf = append(buf, ',')
		}
		k, err := encodeJSON(f.name)
		if err != nil {
			return nil, err
		}
		v, err := encodeJSON(f.fieldMetadata)
		if err != nil {
			return nil, err
		}
		buf = append(append(append(buf, k...), ':'), v...)
	}
	return append(buf, '}'), nil
}

// drfTypes names the schema's field types as Django REST Framework's
// metadata does.
var drfTypes = map[string]string{
	"string": "string", "integer": "integer", "number": "float", "boolean": "boolean",
	"datetime": "datetime", "object": "nested object", "array": "list", "any": "field",
}

// fieldsOf turns the schema's fields (schema.go) into metadata. The limits
// come from the binding rules min= and max=: lengths for strings, values
// for numbers.
func fieldsOf(fields []fieldSchema) fieldsMetadata {
	out := make(fieldsMetadata, 0, len(fields))
	for _, f := range fields {
		m := fieldMetadata{Type: cmp.Or(drfTypes[f.Type], "field"), Required: f.Required, ReadOnly: f.ReadOnly, Label: prettyName(f.Name)}
		if f.Name == "id" {
			m.Label = "ID"
		}
		for _, rule := range f.Rules {
			key, val, _ := strings.Cut(rule, "=")
			n, err := strconv.Atoi(val)
			if err != nil {
				continue
			}
			switch {
			case f.Type == "string" && key == "min":
				m.MinLength = &n
			case f.Type == "string" && key == "max":
				m.MaxLength = &n
			case (f.Type == "integer" || f.Type == "number") && (key == "min" || key == "gte"):
				m.MinValue = &n
			case (f.Type == "integer" || f.Type == "number") && (key == "max" || key == "lte"):
				m.MaxValue = &n
			}
		}
		out = append(out, namedField{f.Name, m})
	}
	return out
}

// prettyName is Django's pretty_name: "owner_id" is "Owner id".
func prettyName(name string) string {
	name = strings.ReplaceAll(name, "_", " ")
	if name == "" {
		return ""
	}
	return strings.ToUpper(name[:1]) + name[1:]
}

// writeJSON writes v (writeJSON of refusals.go). A value that cannot be
// encoded (a model whose MarshalJSON fails, a NaN) is a 500, as on the
// WebSocket; c.JSON would send the status with an empty body.
func (a *API) writeJSON(c *gin.Context, status int, v any) {
	if err := writeJSON(c, status, v); err != nil {
		a.log.ErrorContext(c.Request.Context(), "channelsapi: encode reply", "path", c.FullPath(), "err", err)
		refuse(c, http.StatusInternalServerError, msgServerError)
	}
}

// listData turns ?page= and ?page_size= into list options.
func listData(q url.Values) json.RawMessage {
	opts := map[string]string{}
	for _, k := range []string{"page", "page_size"} {
		if q.Has(k) {
			opts[k] = q.Get(k)
		}
	}
	b, _ := json.Marshal(opts)
	return b
}

// pageURL is the link to page n of the list, or nil when there is no such
// page: the route's path with the request's query, after WithBaseURL's URL
// when it is set, else relative to the host. The request's Host header is
// never used.
func (a *API) pageURL(c *gin.Context, m *pageMeta, n int) *string {
	if n < 1 || n > m.NumPages {
		return nil
	}
	path := c.FullPath()
	if strings.ContainsAny(path, ":*") {
		path = c.Request.URL.Path
	}
	q := c.Request.URL.Query()
	q.Set("page", strconv.Itoa(n))
	s := a.cfg.baseURL + (&url.URL{Path: path, RawQuery: q.Encode()}).String()
	return &s
}
