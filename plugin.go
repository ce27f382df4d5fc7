package channelsapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"reflect"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/olahol/melody"
	"golang.org/x/time/rate"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi/debugpage"
	"github.com/channelsapi/channelsapi/internal/fanout"
)

// Defaults of the options.
const (
	DefaultPath           = "/ws"
	DefaultMaxMessageSize = 64 << 10
	DefaultQueueSize      = 256
	DefaultBulkEventLimit = 10000
	DefaultDeliveryQueue  = 10000
	DefaultHistorySize    = 1000 // events kept per stream for clients that resume
	DefaultHistoryTTL     = 5 * time.Minute
	DefaultRate           = 50  // messages per second and connection
	DefaultBurst          = 200 // messages a connection may send at once
	DefaultSubscriptions  = 1000
	DefaultPingPeriod     = 25 * time.Second
	DefaultPongWait       = 30 * time.Second
	defaultWriteWait      = 10 * time.Second
)

// Option configures Register.
type Option func(*config)

type config struct {
	path           string
	restPrefix     string
	baseURL        string // WithBaseURL, without a trailing slash
	baseOrigin     string // its scheme://host, lower case
	origins        map[string]bool
	maxMessageSize int64
	queueSize      int
	pageSize       int
	maxPageSize    int
	bulkLimit      int
	deliveryQueue  int
	logger         *slog.Logger
	user           func(*gin.Context) any
	permission     Permission
	connect        func(c *gin.Context, user any) error
	subprotocols   []string
	debugAnyMode   bool
	rate           rate.Limit
	burst          int
	subscriptions  int
	pingPeriod     time.Duration
	pongWait       time.Duration
	debugPath      string
	broker         Broker // broker.go
	historySize    int
	historyTTL     time.Duration
	outbox         *OutboxConfig      // outbox.go
	idempotency    *IdempotencyConfig // idempotency.go
	docs           APIDocs            // apidoc.go
}

// WithPath sets the WebSocket endpoint's path, relative to the router given
// to Register. The default is "/ws".
func WithPath(path string) Option { return func(c *config) { c.path = path } }

// WithRESTPrefix mounts the REST routes under prefix (for example "/api")
// on the router given to Register; the default is the router itself.
func WithRESTPrefix(prefix string) Option { return func(c *config) { c.restPrefix = prefix } }

// WithBaseURL sets the public address of the application, an absolute
// http or https URL such as "https://example.com" (with a path when it is
// served under one, "https://example.com/app"): the next and previous links
// of REST lists are this URL followed by the route's path, and its origin
// counts as the same origin for the WebSocket's and the REST routes' origin
// check. Without it, the links are relative to the host ("/notes?page=2"):
// they are never built from the request's Host header, which a client or a
// proxy chooses. Register returns an error for a URL that is not absolute
// http or https, or that has a query or fragment.
func WithBaseURL(u string) Option { return func(c *config) { c.baseURL = u } }

// WithAllowedOrigins allows WebSocket upgrades, and REST writes from
// browsers, from these exact origins (scheme://host[:port]) in addition to
// the same origin (and that of WithBaseURL). Requests without an Origin
// header (non-browser clients) are always allowed; "null" never is.
func WithAllowedOrigins(origins ...string) Option {
	return func(c *config) {
		for _, o := range origins {
			c.origins[strings.ToLower(strings.TrimRight(o, "/"))] = true
		}
	}
}

// WithMaxMessageSize sets the largest inbound WebSocket frame and REST body
// in bytes; a larger frame closes the socket with 1009, a larger body is a
// 413. The default is 64 KiB.
func WithMaxMessageSize(n int64) Option { return func(c *config) { c.maxMessageSize = n } }

// WithQueueSize sets how many outbound frames may wait for one connection.
// A connection whose queue is full is closed with 1013 (it must resync);
// nothing is dropped silently. The default is 256.
func WithQueueSize(n int) Option { return func(c *config) { c.queueSize = n } }

// WithPageSize sets the default list page size and its cap for every
// ViewSet that does not set its own. The defaults are 25 and 100.
func WithPageSize(size, max int) Option {
	return func(c *config) { c.pageSize, c.maxPageSize = size, max }
}

// WithBulkEventLimit sets how many rows a bulk update or delete (one with no
// loaded object) may touch and still produce one event per row. Beyond it,
// the subscribers of the stream are closed with 1013 so that they resync.
// The default is 10000.
func WithBulkEventLimit(n int) Option { return func(c *config) { c.bulkLimit = n } }

// WithDeliveryQueueSize sets how many committed changes may wait to be
// delivered to the subscribers of one stream (each stream is delivered by a
// goroutine of its own). When a stream's queue is full its subscribers are
// closed with 1013 (reason "delivery queue full") after the events queued
// before, and must load their state again; nothing is dropped silently.
// The default is 10000.
func WithDeliveryQueueSize(n int) Option { return func(c *config) { c.deliveryQueue = n } }

// WithHistory bounds the history this process keeps of each stream, from
// which a client that reconnects is sent the events it missed (PROTOCOL.md
// section 10): at most size events, none older than ttl (0: no age limit).
// The defaults are DefaultHistorySize and DefaultHistoryTTL. Size 0 keeps
// none: a client that resumes is told that it must load its state again,
// unless it missed nothing. With a broker the history is the broker's,
// shared by every instance, and bounded by the broker's own settings.
func WithHistory(size int, ttl time.Duration) Option {
	return func(c *config) { c.historySize, c.historyTTL = size, ttl }
}

// WithLogger sets where internal errors are logged; the default is
// slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithUser sets how the user of a REST request or of a WebSocket upgrade is
// found, typically from what the application's authentication middleware
// stored in the gin.Context. A nil result means anonymous. The default reads
// the context key "user".
func WithUser(resolve func(*gin.Context) any) Option { return func(c *config) { c.user = resolve } }

// WithDebugPage mounts the debugger page, a browser console for the socket
// and the REST routes generated from the added ViewSets, and its schema at
// path (empty means "/channels-api") on the router given to Register. The
// page is for development only: it is mounted only while Gin runs in debug
// mode (gin.IsDebugging() at Register, Gin's default unless GIN_MODE or
// gin.SetMode says otherwise). In release or test mode it stays off and
// Register logs so, unless WithDebugPageInReleaseMode is given too. Without
// this option the page is never mounted.
func WithDebugPage(path string) Option {
	return func(c *config) {
		if path == "" {
			path = "/channels-api"
		}
		c.debugPath = path
	}
}

// WithDebugPageInReleaseMode mounts the page of WithDebugPage whatever Gin's
// mode, in release mode too. Anyone who can reach the page can drive the API
// with the credentials they type into it, and reads the schema of every
// stream: give it only to servers that are not exposed.
func WithDebugPageInReleaseMode() Option { return func(c *config) { c.debugAnyMode = true } }

// WithDefaultPermission sets the Permission of every ViewSet that sets
// none. The default is AllowAny.
func WithDefaultPermission(p Permission) Option { return func(c *config) { c.permission = p } }

// WithConnect sets a check run on every WebSocket upgrade request, before
// the upgrade, with the user WithUser resolved. An error refuses the
// connection with 401 or 403 (as for a Permission) and a JSON body
// {"detail": ...}; nil accepts it. The default accepts every connection.
func WithConnect(check func(c *gin.Context, user any) error) Option {
	return func(c *config) { c.connect = check }
}

// WithSubprotocols lists the WebSocket subprotocols the server accepts; the
// first one a client offers is selected. Browsers cannot set headers on a
// WebSocket, so an application may take a credential from the
// Sec-WebSocket-Protocol header (for example the offer "bearer, <token>"),
// which needs the server to select a protocol ("bearer").
func WithSubprotocols(protocols ...string) Option {
	return func(c *config) { c.subprotocols = protocols }
}

// WithRateLimit sets each connection's token bucket: perSecond messages per
// second on average and burst at once. A frame over the limit is answered
// with 429 ["Too many requests."] without being handled; the connection
// stays open. The defaults are 50 per second and a burst of 200.
func WithRateLimit(perSecond float64, burst int) Option {
	return func(c *config) { c.rate, c.burst = rate.Limit(perSecond), burst }
}

// WithMaxSubscriptions caps the subscriptions of one connection (group and
// instance subscriptions together); one more is answered with 429
// ["Too many subscriptions."]. The default is 1000.
func WithMaxSubscriptions(n int) Option { return func(c *config) { c.subscriptions = n } }

// WithKeepalive sets how often the server pings each connection and how long
// it waits for a pong before it closes the connection as dead (messages do
// not count: every WebSocket client answers pings while it reads). The
// defaults are 25 and 30 seconds; pongWait must be longer than pingPeriod.
func WithKeepalive(pingPeriod, pongWait time.Duration) Option {
	return func(c *config) { c.pingPeriod, c.pongWait = pingPeriod, pongWait }
}

// API serves the added ViewSets. It is safe for concurrent use; add every
// ViewSet before the router starts serving.
type API struct {
	db       *gorm.DB
	cfg      config
	rest     gin.IRouter
	melody   *melody.Melody
	hub      *fanout.Hub
	log      *slog.Logger
	capture  *capture
	outbox   *outbox      // WithOutbox, else nil
	idem     *idempotency // WithIdempotency, else nil
	relay    relay        // localRelay, or brokerRelay with WithBroker
	delivery *delivery
	valid    *validation // the `binding` rules (validation.go)
	// fold and precision are how the database compares strings case
	// insensitively and keeps times (query.go).
	fold      func(string) string
	precision time.Duration

	reg       *registry
	docs      apiDocs      // apidoc.go
	mu        sync.RWMutex // guards closing
	closing   bool
	conns     atomic.Int64   // open WebSocket connections (melody's count keeps those registered after Shutdown)
	sockets   sync.WaitGroup // one per WebSocket connection handler
	closeOnce sync.Once
	// tooBig is the 1009 close frame, with its reason; lingerStop ends the
	// lingering closes when Shutdown's ctx ends (linger.go).
	tooBig     []byte
	lingerStop context.Context
	stopLinger context.CancelFunc
}

// Register mounts the WebSocket endpoint on router, installs the change
// capture plugin on db, and returns the API on which models are added with
// Add. Use db (or sessions derived from it after Register) for writes that
// should reach subscribers. When it fails, it closes the broker of
// WithBroker.
func Register(router gin.IRouter, db *gorm.DB, opts ...Option) (_ *API, err error) {
	cfg := config{
		path:           DefaultPath,
		origins:        map[string]bool{},
		maxMessageSize: DefaultMaxMessageSize,
		queueSize:      DefaultQueueSize,
		pageSize:       DefaultPageSize,
		maxPageSize:    DefaultMaxPageSize,
		bulkLimit:      DefaultBulkEventLimit,
		deliveryQueue:  DefaultDeliveryQueue,
		historySize:    DefaultHistorySize,
		historyTTL:     DefaultHistoryTTL,
		logger:         slog.Default(),
		user:           contextUser,
		permission:     AllowAny(),
		rate:           DefaultRate,
		burst:          DefaultBurst,
		subscriptions:  DefaultSubscriptions,
		pingPeriod:     DefaultPingPeriod,
		pongWait:       DefaultPongWait,
	}
	for _, opt := range opts {
		opt(&cfg)
	}
	if cfg.broker != nil {
		defer func() {
			if err != nil {
				_ = cfg.broker.Close(context.Background())
			}
		}()
	}
	switch {
	case router == nil || db == nil:
		return nil, errors.New("channelsapi: Register needs a router and a *gorm.DB")
	case cfg.maxMessageSize <= 0:
		return nil, fmt.Errorf("channelsapi: max message size must be positive, got %d", cfg.maxMessageSize)
	case cfg.queueSize <= 0:
		return nil, fmt.Errorf("channelsapi: queue size must be positive, got %d", cfg.queueSize)
	case cfg.pageSize <= 0 || cfg.maxPageSize < cfg.pageSize:
		return nil, fmt.Errorf("channelsapi: invalid page sizes %d (max %d)", cfg.pageSize, cfg.maxPageSize)
	case cfg.bulkLimit <= 0:
		return nil, fmt.Errorf("channelsapi: bulk event limit must be positive, got %d", cfg.bulkLimit)
	case cfg.historySize < 0 || cfg.historyTTL < 0:
		return nil, fmt.Errorf("channelsapi: history size and age must not be negative, got %d and %s", cfg.historySize, cfg.historyTTL)
	case cfg.deliveryQueue <= 0:
		return nil, fmt.Errorf("channelsapi: delivery queue size must be positive, got %d", cfg.deliveryQueue)
	case !strings.HasPrefix(cfg.path, "/"):
		return nil, fmt.Errorf("channelsapi: WebSocket path %q must start with /", cfg.path)
	case cfg.user == nil || cfg.logger == nil || cfg.permission == nil:
		return nil, errors.New("channelsapi: nil user resolver, logger or default permission")
	case cfg.rate <= 0 || cfg.burst <= 0:
		return nil, fmt.Errorf("channelsapi: rate limit must be positive, got %v per second, burst %d", cfg.rate, cfg.burst)
	case !docPath(cfg.docs.OpenAPIPath) || !docPath(cfg.docs.AsyncAPIPath):
		return nil, fmt.Errorf("channelsapi: description document paths %q and %q must be empty or start with /", cfg.docs.OpenAPIPath, cfg.docs.AsyncAPIPath)
	case cfg.subscriptions <= 0:
		return nil, fmt.Errorf("channelsapi: subscription limit must be positive, got %d", cfg.subscriptions)
	case cfg.pingPeriod <= 0 || cfg.pongWait <= cfg.pingPeriod:
		return nil, fmt.Errorf("channelsapi: keepalive needs 0 < ping period (%v) < pong wait (%v)", cfg.pingPeriod, cfg.pongWait)
	}
	if cfg.baseURL != "" {
		u, err := url.Parse(cfg.baseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("channelsapi: base URL %q is not an absolute http or https URL without query", cfg.baseURL)
		}
		if p := u.Port(); p == "80" && u.Scheme == "http" || p == "443" && u.Scheme == "https" {
			u.Host = strings.TrimSuffix(u.Host, ":"+p) // as browsers write the Origin
		}
		cfg.baseURL = strings.TrimRight(u.String(), "/")
		cfg.baseOrigin = strings.ToLower(u.Scheme + "://" + u.Host)
	}
	for o := range cfg.origins {
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" {
			return nil, fmt.Errorf("channelsapi: allowed origin %q is not scheme://host[:port]", o)
		}
	}
	a := &API{
		db:   db,
		cfg:  cfg,
		rest: router,
		hub:  fanout.New(),
		log:  cfg.logger,
		reg:  newRegistry(),
	}
	if a.valid, err = newValidation(); err != nil {
		return nil, err
	}
	a.tooBig = tooBigFrame(cfg.maxMessageSize)
	a.lingerStop, a.stopLinger = context.WithCancel(context.Background())
	if a.fold, err = caseFolding(db); err != nil {
		return nil, fmt.Errorf("channelsapi: %w", err)
	}
	a.precision = timePrecision(db)
	if cfg.restPrefix != "" {
		a.rest = router.Group(cfg.restPrefix)
	}
	a.melody = a.newMelody()
	if err := mount(func() { a.mountSocket(router) }); err != nil {
		return nil, fmt.Errorf("channelsapi: mount WebSocket endpoint %s: %w", cfg.path, err)
	}
	switch {
	case cfg.debugPath == "":
	case gin.IsDebugging() || cfg.debugAnyMode:
		err := debugpage.Mount(router, debugpage.Config{
			Path:          cfg.debugPath,
			WebSocketPath: basePath(router) + cfg.path,
			Subprotocols:  cfg.subprotocols,
			Schema:        a.schema,
		})
		if err != nil {
			return nil, fmt.Errorf("channelsapi: mount debug page: %w", err)
		}
	default:
		a.log.Warn("channelsapi: the debugger page stays off: Gin is in "+gin.Mode()+" mode, and the page is for development (debug mode) only; add WithDebugPageInReleaseMode to mount it anyway",
			"path", cfg.debugPath)
	}
	if err := a.mountDocs(router); err != nil {
		return nil, fmt.Errorf("channelsapi: mount description documents: %w", err)
	}
	if cfg.outbox != nil {
		if a.outbox, err = newOutbox(db, *cfg.outbox, a.reg); err != nil {
			return nil, err
		}
	}
	if cfg.idempotency != nil {
		if a.idem, err = newIdempotency(db, *cfg.idempotency, a.log); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				a.idem.close()
			}
		}()
	}
	a.delivery = newDelivery(a.hub, a.log, cfg.deliveryQueue, retention{size: cfg.historySize, ttl: cfg.historyTTL, broker: cfg.broker}, a.outbox)
	if err := a.startRelay(); err != nil {
		return nil, err
	}
	a.capture = newCapture(a)
	if err := db.Use(a.capture); err != nil {
		_ = a.relay.shutdown(context.Background())
		_ = a.delivery.close(context.Background())
		return nil, fmt.Errorf("channelsapi: install change capture: %w", err)
	}
	a.delivery.startOutbox(a.relay.numbered)
	return a, nil
}

// mount runs a route registration, returning Gin's panic on a conflicting
// route as an error.
func mount(register func()) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v", p)
		}
	}()
	register()
	return nil
}

// basePath is the absolute path of router (a *gin.Engine or a group).
func basePath(router gin.IRouter) string {
	if b, ok := router.(interface{ BasePath() string }); ok {
		return strings.TrimRight(b.BasePath(), "/")
	}
	return ""
}

func contextUser(c *gin.Context) any {
	u, _ := c.Get("user")
	return u
}

// userOf resolves the user of c. A nil pointer, map, slice or func the
// resolver returns (a nil *User stored for an unknown token) is anonymous
// too: the Request, the connect check and every permission see nil, never
// a typed nil that would count as authenticated.
func (a *API) userOf(c *gin.Context) any {
	u := a.cfg.user(c)
	switch v := reflect.ValueOf(u); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		if v.IsNil() {
			return nil
		}
	}
	return u
}

var errDuplicateStream = errors.New("stream is added already")

func (a *API) add(r resource) error {
	err := a.reg.add(r, func() error { return r.mountREST(a) })
	switch {
	case errors.Is(err, errDuplicateStream):
		return fmt.Errorf("channelsapi: stream %q is added already", r.name())
	case err != nil:
		return fmt.Errorf("channelsapi: add %s: %w", r.name(), err)
	}
	return a.delivery.add(r)
}

// run executes an action with the one error translation and panic recovery
// both transports share. Internal causes are logged, never returned.
func (a *API) run(ctx context.Context, r resource, req *Request, c *conn) (res result, werr *wireError) {
	defer func() {
		if p := recover(); p != nil {
			a.log.ErrorContext(ctx, "channelsapi: handler panic", "stream", req.Stream, "action", req.Action, "panic", p, "stack", string(debug.Stack()))
			res, werr = result{}, &wireError{status: http.StatusInternalServerError, message: msgServerError, internal: true}
		}
	}()
	res = r.serve(ctx, req, c)
	if res.err == nil {
		return res, nil
	}
	e := translate(res.err, req.Authenticated())
	if e.internal {
		a.log.ErrorContext(ctx, "channelsapi: action failed", "stream", req.Stream, "action", req.Action, "err", res.err)
	}
	return res, &e
}

// Shutdown closes every WebSocket with 1001, answers new upgrades with 503
// and waits until the connection handlers and the goroutines the API started
// have returned, or ctx is done. In order: the sockets are closed; with
// WithBroker, the broker is closed (it sends what is still queued for the
// other instances and stops receiving); the delivery goroutines finish
// what is queued (when ctx ends first, the queries and checks they run are
// cancelled); then it waits for the connection handlers. It may be called
// more than once. It does not stop the HTTP server; call
// http.Server.Shutdown for that.
func (a *API) Shutdown(ctx context.Context) error {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closing = true
		a.mu.Unlock()
		sessions, _ := a.melody.Sessions()
		for _, s := range sessions {
			sessionConn(s).closeWith(closeGoingAway, "server shutting down")
		}
	})
	if a.idem != nil {
		a.idem.close()
	}
	// Then the outbox's numbering, which publishes through the relay; then
	// the relay: it sends what is queued for the other instances and
	// stops receiving; then delivery drains what it holds.
	a.delivery.stopNumbering()
	if err := a.relay.shutdown(ctx); err != nil {
		return err
	}
	if err := a.delivery.close(ctx); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		a.sockets.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		a.stopLinger()
		return ctx.Err()
	}
}

// Stats is a snapshot of an API's connections and subscription index.
type Stats struct {
	Connections   int // open WebSocket connections
	Subscribers   int // connections with at least one subscription
	Subscriptions int // distinct index keys (stream, action, pk) in use
}

// Stats reports current figures, for monitoring and tests.
func (a *API) Stats() Stats {
	keys, subs := a.hub.Stats()
	return Stats{Connections: int(a.conns.Load()), Subscribers: subs, Subscriptions: keys}
}

// Disconnect closes, with code 1008 (policy violation), every WebSocket
// connection whose user match reports true, for example when an
// application revokes a user's token or changes their rights: a
// connection keeps the user it was opened with, so withdrawing
// authorization means closing it. It returns how many connections it
// closes; the client may reconnect with new credentials.
func (a *API) Disconnect(match func(user any) bool) int {
	sessions, err := a.melody.Sessions()
	if err != nil {
		return 0
	}
	n := 0
	for _, s := range sessions {
		if c, ok := s.Get(connKey); ok && match(c.(*conn).user) {
			c.(*conn).closeWith(closePolicy, "authorization withdrawn")
			n++
		}
	}
	return n
}
