package channelsapi

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/gin-gonic/gin"
)

// What the REST routes and the WebSocket endpoint refuse before an action
// runs, each answered with a JSON body {"detail": ...} as Django REST
// Framework words it: cross-site requests, bodies that are not JSON, methods
// a path does not serve.

// allowedOrigin reports whether a request from origin may act: an empty
// origin (a client that is not a browser), the same origin (the request's
// Host, with https when the request came over TLS, or the origin of
// WithBaseURL), and the exact origins of
// WithAllowedOrigins. "null" and anything that is not http(s)://host never
// are.
func (a *API) allowedOrigin(r *http.Request, origin string) bool {
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) && (r.TLS == nil || u.Scheme == "https") {
		return true // the same host; over TLS, the same scheme too
	}
	o := strings.ToLower(u.Scheme + "://" + u.Host)
	return o == a.cfg.baseOrigin || a.cfg.origins[o]
}

// checkOrigin is the WebSocket upgrader's origin check.
func (a *API) checkOrigin(r *http.Request) bool { return a.allowedOrigin(r, r.Header.Get("Origin")) }

// crossSite returns why a request may not act on behalf of the user whose
// cookies it carries, or "" when it may: a request with an Origin must come
// from an allowed one (allowedOrigin); one without must not be marked
// "Sec-Fetch-Site: cross-site" by the browser. Requests with neither header
// (curl, servers) pass.
func (a *API) crossSite(r *http.Request) string {
	origin := r.Header.Get("Origin")
	switch {
	case origin != "":
		if !a.allowedOrigin(r, origin) {
			return "CSRF Failed: Origin checking failed - " + origin + " does not match any trusted origins."
		}
	case strings.EqualFold(r.Header.Get("Sec-Fetch-Site"), "cross-site"):
		return "CSRF Failed: Cross-site request refused."
	}
	return ""
}

// safeMethod reports whether method only reads (RFC 9110 9.2.1); the others
// are checked by crossSite.
func safeMethod(method string) bool {
	return method == http.MethodGet || method == http.MethodHead || method == http.MethodOptions
}

// unsupportedMedia returns the 415 message for a request body whose
// Content-Type is not application/json (parameters such as charset are
// allowed, as Django REST Framework's JSONParser allows them), or "".
func unsupportedMedia(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if t, _, err := mime.ParseMediaType(ct); err == nil && t == "application/json" {
		return ""
	}
	return `Unsupported media type "` + ct + `" in request.`
}

// methodOrder is the order of the methods of an Allow header, Django REST
// Framework's.
var methodOrder = []string{
	http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete,
	http.MethodHead, http.MethodOptions,
}

// allowHeader lists methods in methodOrder, any others after them sorted.
func allowHeader(methods []string) string {
	out := make([]string, 0, len(methods))
	for _, m := range methodOrder {
		if slices.Contains(methods, m) {
			out = append(out, m)
		}
	}
	var rest []string
	for _, m := range methods {
		if !slices.Contains(methodOrder, m) && !slices.Contains(rest, m) {
			rest = append(rest, m)
		}
	}
	slices.Sort(rest)
	return strings.Join(append(out, rest...), ", ")
}

// methodNotAllowed answers a method the path does not serve: 405 with an
// Allow header.
func methodNotAllowed(allow string) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Header("Allow", allow)
		refuse(c, http.StatusMethodNotAllowed, `Method "`+c.Request.Method+`" not allowed.`)
	}
}

// refuse ends the request with status and {"detail": detail}.
func refuse(c *gin.Context, status int, detail string) {
	writeJSON(c, status, map[string]string{"detail": detail})
	c.Abort()
}

// writeJSON writes the body of every REST response and refusal: JSON as
// encoding/json writes it but without escaping <, > and & (a link's query
// keeps its &), and without a trailing newline.
func writeJSON(c *gin.Context, status int, v any) error {
	b, err := encodeJSON(v)
	if err != nil {
		return err
	}
	c.Data(status, "application/json; charset=utf-8", b)
	return nil
}

// encodeJSON is encoding/json's Marshal without HTML escaping.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
