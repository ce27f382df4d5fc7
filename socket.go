package channelsapi

import (
	"context"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/gin-gonic/gin"
	"github.com/olahol/melody"
	"golang.org/x/time/rate"
)

// Close codes the server sends (PROTOCOL.md section 6).
const (
	closeGoingAway = 1001
	closePolicy    = 1008
	closeInternal  = 1011
	closeTryAgain  = 1013
)

const connKey = "channelsapi.conn"

func (a *API) newMelody() *melody.Melody {
	m := melody.New()
	m.Config.MaxMessageSize = a.cfg.maxMessageSize
	// Every frame is written by the connection's writer (writer.go): melody's
	// write goroutine gets none, no queue and no ping.
	m.Config.MessageBufferSize = 0
	m.Config.PingPeriod = neverPing
	m.Config.PongWait = a.cfg.pongWait
	m.Upgrader.CheckOrigin = a.checkOrigin
	m.Upgrader.Error = upgradeError
	m.Upgrader.Subprotocols = a.cfg.subprotocols
	// Reads reuse the buffer of the HTTP server's connection; gorilla's
	// writes (the upgrade response, a protocol error's close frame) take a
	// buffer from the pool for the time of one write.
	m.Upgrader.ReadBufferSize = 0
	m.Upgrader.WriteBufferSize = 4096
	m.Upgrader.WriteBufferPool = &sync.Pool{}
	m.HandleConnect(func(s *melody.Session) {
		c := sessionConn(s)
		c.session = s
		c.w.releaseHTTPBuffer()
		a.conns.Add(1)
		s.WebsocketConnection().SetPingHandler(func(p string) error {
			c.w.answerPing(p)
			return nil
		})
		c.w.startPings()
		// A socket upgraded while Shutdown runs can register with melody
		// after Shutdown closed the ones it had; it is closed here.
		a.mu.RLock()
		closing := a.closing
		a.mu.RUnlock()
		if closing {
			c.closeWith(closeGoingAway, "server shutting down")
		}
	})
	// Once the connection is closing, what the client sends is dropped
	// (linger.go).
	m.HandleMessage(func(s *melody.Session, msg []byte) {
		if c := sessionConn(s); !c.w.dropAfterClose(len(msg)) && !c.closing.Load() {
			c.serveFrame(msg)
		}
	})
	m.HandleMessageBinary(func(s *melody.Session, msg []byte) {
		if c := sessionConn(s); !c.w.dropAfterClose(len(msg)) && !c.closing.Load() {
			c.serveFrame(nil)
		}
	})
	// The client's close frame is answered before the read side ends, and
	// the connection does not linger.
	m.HandleClose(func(s *melody.Session, code int, _ string) error {
		c := sessionConn(s)
		c.w.peerClosed.Store(true)
		c.closing.Store(true)
		c.w.answerClose(code)
		return nil
	})
	m.HandleDisconnect(func(s *melody.Session) {
		c := sessionConn(s)
		a.hub.Remove(c)
		c.cancel()
		a.conns.Add(-1)
	})
	return m
}

// neverPing is melody's ping period: beyond the life of any connection (the
// writer sends the pings).
const neverPing = 1<<63 - 1

func sessionConn(s *melody.Session) *conn {
	c, _ := s.Get(connKey)
	return c.(*conn)
}

// mountSocket adds the WebSocket endpoint to router: GET upgrades, every
// other method is a 405 with a JSON body.
func (a *API) mountSocket(router gin.IRouter) {
	router.GET(a.cfg.path, a.serveSocket)
	allow := methodNotAllowed(http.MethodGet)
	for _, m := range methodOrder[1:] {
		router.Handle(m, a.cfg.path, allow)
	}
}

// upgradeError answers an upgrade request gorilla/websocket refuses (not a
// WebSocket handshake, an unsupported version) with a JSON body.
func upgradeError(w http.ResponseWriter, _ *http.Request, status int, reason error) {
	w.Header().Set("Sec-Websocket-Version", "13")
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	b, _ := encodeJSON(map[string]string{"detail": reason.Error()})
	_, _ = w.Write(b)
}

// serveSocket upgrades the request and serves the connection until it ends.
func (a *API) serveSocket(c *gin.Context) {
	a.mu.Lock()
	if a.closing {
		a.mu.Unlock()
		refuse(c, http.StatusServiceUnavailable, "Server is shutting down.")
		return
	}
	a.sockets.Add(1)
	a.mu.Unlock()
	defer a.sockets.Done()

	if origin := c.GetHeader("Origin"); !a.allowedOrigin(c.Request, origin) {
		refuse(c, http.StatusForbidden, "Origin checking failed - "+origin+" does not match any trusted origins.")
		return
	}
	user := a.userOf(c)
	if a.cfg.connect != nil {
		if err := a.cfg.connect(c, user); err != nil {
			e := translate(err, user != nil)
			if e.internal {
				a.log.Error("channelsapi: connect check failed", "err", err)
			}
			_ = writeJSON(c, e.status, e.restBody())
			c.Abort()
			return
		}
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(c.Request.Context()))
	defer cancel()
	conn := &conn{
		api: a, ctx: ctx, cancel: cancel, user: user, header: c.Request.Header,
		limiter: rate.NewLimiter(a.cfg.rate, a.cfg.burst),
		w:       &writer{limit: a.cfg.queueSize, ping: a.cfg.pingPeriod, wakes: &a.delivery.wakes, tooBig: a.tooBig, stop: a.lingerStop},
	}
	_ = a.melody.HandleRequestWithKeys(hijacker{ResponseWriter: c.Writer, w: conn.w}, c.Request, map[string]any{connKey: conn})
	if conn.w.Conn != nil {
		conn.w.finish()
	}
}

// conn is one WebSocket connection. Frames are handled one at a time on the
// connection's read goroutine; subscription events that arrive while a frame
// is being handled wait until its reply is written (PROTOCOL.md section 1).
type conn struct {
	api     *API
	ctx     context.Context
	cancel  context.CancelFunc
	user    any
	header  http.Header
	session *melody.Session
	limiter *rate.Limiter // used by the read goroutine only
	w       *writer

	mu        sync.Mutex
	busy      bool
	pending   [][]byte
	replaying bool        // a replay is queued in pending: no bound until written
	closing   atomic.Bool // closeWith ran: nothing more is delivered

	scopeMu sync.Mutex
	scopes  []connScope // one per stream, a few (authorize.go)
}

// Deliver queues an event frame without blocking. It reports false when the
// connection's queue is full; the connection is then closed with 1013.
func (c *conn) Deliver(frame []byte) bool {
	if c.closing.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy {
		if len(c.pending) >= c.api.cfg.queueSize && !c.replaying {
			c.resync(reasonSlowClient)
			return false
		}
		c.pending = append(c.pending, frame)
		return true
	}
	c.write(frame)
	return !c.closing.Load()
}

// serveFrame handles one frame on a goroutine of its own and waits for it:
// frames are still handled one at a time, in order, but the read goroutine,
// which lives as long as the connection, keeps the small stack of reading
// while the deep one of an action is given back when the action ends. A
// panic outside the actions' own recovery closes the connection with 1011
// instead of the process.
func (c *conn) serveFrame(msg []byte) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if p := recover(); p != nil {
				c.api.log.Error("channelsapi: panic while handling a frame", "panic", p, "stack", string(debug.Stack()))
				c.closeWith(closeInternal, "internal error")
			}
		}()
		c.handleFrame(msg)
	}()
	<-done
}

func (c *conn) handleFrame(msg []byte) {
	c.mu.Lock()
	c.busy = true
	c.mu.Unlock()

	out := c.api.dispatch(c.ctx, c, msg)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.write(out)
	// A replay may hold more frames than the writer's queue takes: they are
	// written as it drains, without c.mu held, while what arrives
	// meanwhile queues behind them.
	limit := c.api.cfg.queueSize
	for len(c.pending) > 0 && !c.closing.Load() {
		f := c.pending[0]
		if c.w.queued() >= limit {
			c.mu.Unlock()
			ok := c.w.waitRoom(c.ctx.Done())
			c.mu.Lock()
			if !ok {
				c.resync(reasonSlowClient)
				break
			}
			continue
		}
		c.pending[0] = nil
		c.pending = c.pending[1:]
		c.write(f)
	}
	c.busy, c.replaying, c.pending = false, false, nil
}

// write queues frame on the connection's writer; a full queue closes the
// connection with 1013. Callers hold c.mu.
func (c *conn) write(frame []byte) {
	if !c.w.send(frame) && !c.closing.Load() {
		c.resync(reasonSlowClient)
	}
}

// resync closes the connection with 1013 and reason (delivery.go names
// them): the server can no longer guarantee its event stream, and the
// client must load its state again. It never blocks.
func (c *conn) resync(reason string) { c.closeWith(closeTryAgain, reason) }

// closeWith closes the connection with code, once, without blocking: the
// writer sends the close frame after what is queued, or in its place for a
// client too slow to read it. Nothing is delivered after it.
func (c *conn) closeWith(code int, reason string) {
	c.closing.Store(true)
	c.w.close(code, reason, reason == reasonSlowClient)
	c.cancel() // an action still running is cancelled
}

// dispatch handles one client frame and returns the encoded reply
// (PROTOCOL.md sections 2, 3 and 6, checks in that order).
func (a *API) dispatch(ctx context.Context, c *conn, msg []byte) []byte {
	rawStream, p, ok := decodeFrame(msg)
	// Every frame takes a token, also one that is not valid: over the limit
	// it is answered 429 and not handled further.
	limited := !c.limiter.Allow()
	if !ok {
		if limited {
			return a.encodeReply(nil, reply{Errors: []any{msgTooManyRequests}, ResponseStatus: http.StatusTooManyRequests})
		}
		return a.encodeReply(nil, reply{Errors: []any{msgInvalidFrame}, ResponseStatus: http.StatusBadRequest})
	}
	var streamOut, actionOut any
	stream, isString := jsonString(rawStream)
	if isString {
		streamOut = stream
	}
	action, actionOK := jsonString(p.Action)
	if actionOK {
		actionOut = action
	}
	rep := reply{Action: actionOut, RequestID: p.RequestID}
	r, found := a.reg.stream(stream)
	switch {
	case limited:
		rep.Errors, rep.ResponseStatus = []any{msgTooManyRequests}, http.StatusTooManyRequests
	case !isString || !found:
		rep.Errors, rep.ResponseStatus = []any{msgInvalidStream}, http.StatusNotFound
	case !actionOK:
		rep.Errors, rep.ResponseStatus = []any{msgInvalidAction}, http.StatusBadRequest
	default:
		req := &Request{
			Transport: TransportWebSocket, Stream: stream, Action: action,
			Data: p.Data, RequestID: p.RequestID, User: c.user, Header: c.header, rawPK: p.PK,
		}
		if pk, ok := scalarText(p.PK); ok && pk != "" {
			req.Params = map[string]string{"pk": pk}
		}
		req.readExpand(nil, p.Expand)
		req.readIfMatchKey(p.IfMatch)
		req.readIdempotencyKeyKey(p.IdemKey)
		if action == actionList || action == actionSubscribeList {
			req.readQuery()
		}
		res, werr := a.run(ctx, r, req, c)
		if werr != nil {
			rep.Errors, rep.ResponseStatus = werr.socketErrors(), werr.status
			rep.Data, rep.ETag = werr.current, werr.etag // a 412's current object
		} else {
			rep.Data, rep.Errors, rep.ResponseStatus, rep.Meta, rep.ETag = res.data, []any{}, res.status, res.page, res.etag
			rep.Replayed = res.replayed
		}
	}
	return a.encodeReply(streamOut, rep)
}

// encodeReply encodes a reply; a value that cannot be encoded (a model whose
// MarshalJSON fails) becomes a 500 on the same stream.
func (a *API) encodeReply(stream any, rep reply) []byte {
	out, err := encodeFrame(stream, rep)
	if err == nil {
		return out
	}
	a.log.Error("channelsapi: encode reply", "stream", stream, "err", err)
	rep.Data, rep.Meta = nil, nil
	rep.Errors, rep.ResponseStatus = []any{msgServerError}, http.StatusInternalServerError
	out, _ = encodeFrame(stream, rep)
	return out
}
