// Package debugpage serves the channelsapi debugger page: one HTML page,
// generated in the browser from a schema of the streams, that connects to the
// WebSocket endpoint, lets a developer run every action of every stream from
// forms (or from raw JSON) over the socket or as REST requests, and logs every
// frame and request in both directions. The socket of the first connection is
// window.ws, as in channels-api, for use from the browser console.
//
// The page holds one connection, or two side by side ("as another user"),
// each with its own credential, subscriptions and log. A credential is a
// bearer token, offered to the socket as the subprotocols "bearer, <token>"
// when the server selects "bearer" and sent to REST routes as Authorization,
// or a cookie the page sets; the tab's session storage keeps them. When a
// socket cannot open, the page requests the endpoint over plain HTTP with the
// same credential and shows a 401 or 403 it answers, and does not retry until
// the credential changes. Each connection keeps the last version of every
// object it has seen, and shows an update with its difference from it.
//
// The log shows the offset of every event and the position of every reply
// that carries one (channelsapi's PROTOCOL.md section 10). After a
// reconnect the page subscribes again, each subscription with "since" the
// position it had reached when the page knows one, and marks those whose
// missed events the server could not replay ("state lost: reload").
//
// The page, its script and its style sheet are embedded in the binary and load
// nothing from other origins, so the page works offline; its requests go to
// the page's own server only. It is a development tool: mount it only when
// asked (channelsapi.WithDebugPage does, and only in Gin's debug mode),
// never in production.
//
// Routes under Config.Path, relative to the router:
//
//	GET <Path>              redirect to <Path>/
//	GET <Path>/             the page
//	GET <Path>/app.js       its script
//	GET <Path>/app.css      its style sheet
//	GET <Path>/favicon.svg  its icon
//	GET <Path>/schema.json  {"websocket_path": ..., "subprotocols": [...], "streams": Config.Schema()}
//
// # Schema
//
// The page builds its forms from schema.json. Each stream that Config.Schema
// returns (channelsapi describes its ViewSets, sorted by name) looks like
//
//	{"name": "questions", "model": "polls.question", "rest_path": "/api/questions",
//	 "pk": "id", "pk_type": "integer", "read_only": false,
//	 "page_size": 25, "max_page_size": 100,
//	 "fields": [
//	   {"name": "id", "type": "integer", "nullable": false, "required": false,
//	    "read_only": true, "rules": []},
//	   {"name": "question_text", "type": "string", "nullable": false, "required": true,
//	    "read_only": false, "rules": ["required", "max=200"]}],
//	 "actions": [
//	   {"name": "list", "builtin": true, "detail": false, "method": "GET", "path": "/api/questions"},
//	   {"name": "subscribe", "builtin": true, "detail": false},
//	   {"name": "subscribe_list", "builtin": true, "detail": false},
//	   {"name": "unsubscribe_list", "builtin": true, "detail": false},
//	   {"name": "vote", "builtin": false, "detail": true, "method": "POST",
//	    "path": "/api/questions/:pk/vote"}],
//	 "filters": [
//	   {"name": "question_text", "type": "string", "lookups": ["exact", "icontains"]},
//	   {"name": "pub_date", "type": "datetime", "lookups": ["gte", "lte", "range"]}],
//	 "ordering_fields": ["pub_date", "id"],
//	 "search_fields": ["question_text"]}
//
// A field's type is "string", "integer", "number", "boolean", "datetime",
// "object", "array" or "any"; its rules are the parts of its binding tag. An
// action without method and path exists on the WebSocket only.
//
// Filters, ordering_fields and search_fields are what list and
// subscribe_list accept (channelsapi's PROTOCOL.md sections 8 and 9), each
// an empty list when nothing is declared. A filter's type is the JSON type
// of its values ("string", "integer", "number", "boolean" or "datetime");
// its lookups are those declared, in the protocol's order. subscribe_list
// and unsubscribe_list are listed only for streams that take live queries.
package debugpage

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"

	"github.com/gin-gonic/gin"
)

//go:embed static
var static embed.FS

// Config configures Mount. Every field is required.
type Config struct {
	// Path is where the page is mounted, relative to the router given to
	// Mount, for example "/channels-api". It must start with "/" and must not
	// be "/" or hold Gin wildcards (":" or "*"); a trailing "/" is ignored.
	Path string
	// WebSocketPath is the absolute path of the WebSocket endpoint, for
	// example "/ws". The page connects to it on the page's own host.
	WebSocketPath string
	// Subprotocols are the WebSocket subprotocols the server selects (may be
	// empty). The page offers a credential as the subprotocols
	// "bearer, <token>" only when "bearer" is one of them.
	Subprotocols []string
	// Schema returns the streams the page offers: a value whose JSON is an
	// array of stream descriptions (see Schema in the package doc). It is
	// called for each request of schema.json, concurrently, so it must be
	// safe for concurrent use.
	Schema func() any
}

// assets are the embedded files by route, relative to Config.Path.
var assets = []struct{ route, file, contentType string }{
	{"/", "index.html", "text/html; charset=utf-8"},
	{"/app.js", "app.js", "text/javascript; charset=utf-8"},
	{"/app.css", "app.css", "text/css; charset=utf-8"},
	{"/favicon.svg", "favicon.svg", "image/svg+xml"},
}

// contentSecurityPolicy keeps the page on its own origin: no inline code, no
// request elsewhere.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Mount serves the page on router. It returns an error, and mounts nothing,
// for an invalid Config; it also returns one if Gin refuses a route (for
// example one that conflicts with a route of the application), in which case
// the routes mounted before it stay.
func Mount(router gin.IRouter, cfg Config) (err error) {
	if router == nil {
		return errors.New("debugpage: nil router")
	}
	p, err := cleanPath(cfg.Path)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(cfg.WebSocketPath, "/") {
		return fmt.Errorf("debugpage: WebSocket path %q must start with /", cfg.WebSocketPath)
	}
	if cfg.Schema == nil {
		return errors.New("debugpage: nil Schema")
	}
	bodies := make([][]byte, len(assets))
	for i, a := range assets {
		b, err := static.ReadFile("static/" + a.file)
		if err != nil {
			return fmt.Errorf("debugpage: read embedded %s: %w", a.file, err)
		}
		bodies[i] = b
	}

	// Gin panics on a conflicting route; Mount reports it instead.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("debugpage: mount %s: %v", p, r)
		}
	}()
	g := router.Group(p)
	g.GET("", redirect(path.Base(p)+"/"))
	for i, a := range assets {
		g.GET(a.route, serveAsset(bodies[i], a.contentType))
	}
	g.GET("/schema.json", serveSchema(cfg))
	return nil
}

// cleanPath validates a mount path and drops its trailing slash.
func cleanPath(p string) (string, error) {
	trimmed := strings.TrimRight(p, "/")
	switch {
	case !strings.HasPrefix(p, "/"):
		return "", fmt.Errorf("debugpage: path %q must start with /", p)
	case trimmed == "":
		return "", fmt.Errorf("debugpage: path %q must name a directory below /", p)
	case strings.ContainsAny(trimmed, ":*?#% \t\r\n"):
		return "", fmt.Errorf("debugpage: path %q must not hold wildcards, spaces or escapes", p)
	case path.Clean(trimmed) != trimmed:
		return "", fmt.Errorf("debugpage: path %q is not clean (want %q)", p, path.Clean(trimmed))
	}
	return trimmed, nil
}

// securityHeaders are sent with every response of the page.
func securityHeaders(c *gin.Context) {
	h := c.Writer.Header()
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", contentSecurityPolicy)
}

// redirect answers with a relative redirect to target, so that it works
// behind a proxy that mounts the application under another prefix.
func redirect(target string) gin.HandlerFunc {
	return func(c *gin.Context) {
		location := target
		if q := c.Request.URL.RawQuery; q != "" {
			location += "?" + q
		}
		// Not c.Redirect: http.Redirect makes the location absolute.
		c.Header("Location", location)
		c.Status(http.StatusMovedPermanently)
	}
}

func serveAsset(body []byte, contentType string) gin.HandlerFunc {
	return func(c *gin.Context) {
		securityHeaders(c)
		c.Data(http.StatusOK, contentType, body)
	}
}

// document is the JSON of schema.json.
type document struct {
	WebSocketPath string   `json:"websocket_path"`
	Subprotocols  []string `json:"subprotocols"`
	Streams       any      `json:"streams"`
}

func serveSchema(cfg Config) gin.HandlerFunc {
	subprotocols := append([]string{}, cfg.Subprotocols...)
	return func(c *gin.Context) {
		securityHeaders(c)
		c.Header("Cache-Control", "no-store")
		body, err := json.Marshal(document{WebSocketPath: cfg.WebSocketPath, Subprotocols: subprotocols, Streams: cfg.Schema()})
		if err != nil {
			_ = c.Error(err)
			c.AbortWithStatusJSON(http.StatusInternalServerError, gin.H{"detail": "A server error occurred."})
			return
		}
		c.Data(http.StatusOK, "application/json; charset=utf-8", body)
	}
}
