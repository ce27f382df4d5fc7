package channelsapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"

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

// mountREST adds the routes of PROTOCOL.md section 7 for v. Gin panics on
// a route that conflicts with one the router has; that is returned as an
// error (the routes mounted before it stay).
func (v *viewSet[T]) mountREST(a *API) error {
	return mount(func() {
		g := a.rest.Group("/" + v.Stream)
		g.GET("", a.restHandler(v, actionList))
		g.GET("/:pk", a.restHandler(v, actionRetrieve))
		// A ReadOnly ViewSet has these routes too: they answer 400
		// {"detail": "Invalid Action"}, as the WebSocket does.
		g.POST("", a.restHandler(v, actionCreate))
		g.PUT("/:pk", a.restHandler(v, actionUpdate))
		g.PATCH("/:pk", a.restHandler(v, actionPatch))
		g.DELETE("/:pk", a.restHandler(v, actionDelete))
		for name, act := range v.Actions {
			method := act.Method
			if method == "" {
				method = http.MethodGet
			}
			path := "/" + name
			if act.Detail {
				path = "/:pk/" + name
			}
			g.Handle(method, path, a.restHandler(v, name))
		}
	})
}

// restHandler serves one action over REST through the same code path as
// the WebSocket.
func (a *API) restHandler(r resource, action string) gin.HandlerFunc {
	return func(c *gin.Context) {
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
		req.readExpand(req.Query[keyExpand], nil)
		if action == actionList {
			req.Data = listData(req.Query)
			req.params = restQuery(req.Query)
		} else if c.Request.Body != nil {
			body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, a.cfg.maxMessageSize))
			var tooLarge *http.MaxBytesError
			switch {
			case errors.As(err, &tooLarge):
				c.AbortWithStatusJSON(http.StatusRequestEntityTooLarge, gin.H{"detail": "Request body too large."})
				return
			case err != nil:
				c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"detail": "Could not read the request body."})
				return
			case len(bytes.TrimSpace(body)) > 0 && !json.Valid(body):
				c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"detail": "JSON parse error."})
				return
			}
			req.Data = body
		}
		res, werr := a.run(c.Request.Context(), r, req, nil)
		switch {
		case werr != nil:
			c.AbortWithStatusJSON(werr.status, werr.restBody())
		case action == actionDelete:
			c.Status(http.StatusNoContent)
		case res.page != nil:
			a.writeJSON(c, res.status, listPage{
				Count:    res.page.Count,
				Next:     pageURL(c, res.page, res.page.Page+1),
				Previous: pageURL(c, res.page, res.page.Page-1),
				Results:  res.data,
				Position: res.page.Position,
			})
		default:
			a.writeJSON(c, res.status, res.data)
		}
	}
}

// writeJSON writes v encoded as the WebSocket encodes it. A value that cannot
// be encoded (a model whose MarshalJSON fails, a NaN) is a 500, as on the
// WebSocket; c.JSON would send the status with an empty body.
func (a *API) writeJSON(c *gin.Context, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		a.log.ErrorContext(c.Request.Context(), "channelsapi: encode reply", "path", c.FullPath(), "err", err)
		c.AbortWithStatusJSON(http.StatusInternalServerError, gin.H{"detail": msgServerError})
		return
	}
	c.Data(status, "application/json; charset=utf-8", b)
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

// pageURL is the absolute URL of page n of the list, or nil when there is no
// such page.
func pageURL(c *gin.Context, m *pageMeta, n int) *string {
	if n < 1 || n > m.NumPages {
		return nil
	}
	u := *c.Request.URL
	u.Host = c.Request.Host
	u.Scheme = "http"
	if c.Request.TLS != nil {
		u.Scheme = "https"
	}
	q := u.Query()
	q.Set("page", strconv.Itoa(n))
	u.RawQuery = q.Encode()
	s := u.String()
	return &s
}
