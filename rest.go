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
}

// mountREST adds the routes of PROTOCOL.md section 7 for v.
func (v *viewSet[T]) mountREST(a *API) {
	g := a.rest.Group("/" + v.Stream)
	g.GET("", a.restHandler(v, actionList))
	g.GET("/:pk", a.restHandler(v, actionRetrieve))
	if !v.ReadOnly {
		g.POST("", a.restHandler(v, actionCreate))
		g.PUT("/:pk", a.restHandler(v, actionUpdate))
		g.PATCH("/:pk", a.restHandler(v, actionPatch))
		g.DELETE("/:pk", a.restHandler(v, actionDelete))
	}
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
}

// restHandler serves one action over REST through the same code path as
// the WebSocket.
func (a *API) restHandler(r resource, action string) gin.HandlerFunc {
	return func(c *gin.Context) {
		req := &Request{
			Transport: TransportREST, Stream: r.name(), Action: action,
			User: a.cfg.user(c), Header: c.Request.Header,
		}
		if pk, ok := c.Params.Get("pk"); ok {
			req.rawPK, _ = json.Marshal(pk)
		}
		if action == actionList {
			req.Data = listData(c.Request.URL.Query())
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
			c.JSON(res.status, listPage{
				Count:    res.page.Count,
				Next:     pageURL(c, res.page, res.page.Page+1),
				Previous: pageURL(c, res.page, res.page.Page-1),
				Results:  res.data,
			})
		default:
			c.JSON(res.status, res.data)
		}
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
