package channelsapi

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"golang.org/x/time/rate"
)

// Close codes the server sends (PROTOCOL.md section 6).
const (
	closeGoingAway = 1001
	closePolicy    = 1008
	closeTryAgain  = 1013
)

const connKey = "channelsapi.conn"

func (a *API) newMelody() *melody.Melody {
	m := melody.New()
	m.Config.MaxMessageSize = a.cfg.maxMessageSize
	m.Config.MessageBufferSize = a.cfg.queueSize
	m.Config.WriteWait = defaultWriteWait
	m.Config.PingPeriod = a.cfg.pingPeriod
	m.Config.PongWait = a.cfg.pongWait
	m.Upgrader.CheckOrigin = a.checkOrigin
	m.Upgrader.Error = upgradeError
	m.Upgrader.Subprotocols = a.cfg.subprotocols
	// Reads reuse the buffer of the HTTP server's connection; a write
	// buffer is taken from the pool for the time of one message only, so an
	// idle connection holds none.
	m.Upgrader.ReadBufferSize = 0
	m.Upgrader.WriteBufferSize = 4096
	m.Upgrader.WriteBufferPool = &sync.Pool{}
	m.HandleConnect(func(s *melody.Session) {
		c := sessionConn(s)
		c.session = s
		a.conns.Add(1)
		// A socket upgraded while Shutdown runs can register with melody
		// after Shutdown closed the ones it had; it is closed here.
		a.mu.RLock()
		closing := a.closing
		a.mu.RUnlock()
		if closing {
			_ = s.CloseWithMsg(melody.FormatCloseMessage(closeGoingAway, "server shutting down"))
		}
	})
	// After the server's close frame, what the client sends is dropped
	// (linger.go).
	m.HandleMessage(func(s *melody.Session, msg []byte) {
		if c := sessionConn(s); !c.cork.dropAfterClose(len(msg)) {
			c.handleFrame(msg)
		}
	})
	m.HandleSentMessage(func(s *melody.Session, _ []byte) { sessionConn(s).cork.sent() })
	m.HandleMessageBinary(func(s *melody.Session, msg []byte) {
		if c := sessionConn(s); !c.cork.dropAfterClose(len(msg)) {
			c.handleFrame(nil)
		}
	})
	m.HandleDisconnect(func(s *melody.Session) {
		c := sessionConn(s)
		a.hub.Remove(c)
		c.cancel()
		a.conns.Add(-1)
	})
	m.HandleError(func(s *melody.Session, err error) {
		var ce *websocket.CloseError
		switch {
		case errors.Is(err, melody.ErrMessageBufferFull):
			sessionConn(s).resync(reasonSlowClient)
		case errors.As(err, &ce): // the client's close frame: no linger
			sessionConn(s).cork.peerClosed.Store(true)
		}
	})
	return m
}

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
		api: a, ctx: ctx, cancel: cancel, user: user, header: c.Request.Header.Clone(),
		limiter: rate.NewLimiter(a.cfg.rate, a.cfg.burst), cork: &cork{tooBig: a.tooBig, stop: a.lingerStop},
	}
	w := corkWriter{ResponseWriter: c.Writer, k: conn.cork}
	err := a.melody.HandleRequestWithKeys(w, c.Request, map[string]any{connKey: conn})
	if conn.cork.Conn != nil {
		conn.cork.finish()
	}
	if errors.Is(err, melody.ErrClosed) {
		refuse(c, http.StatusServiceUnavailable, "Server is shutting down.")
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
	cork    *cork

	mu        sync.Mutex
	busy      bool
	pending   [][]byte
	replaying bool        // a replay is queued in pending: no bound until written
	closing   atomic.Bool // closeWith ran: nothing more is delivered

	scopeMu sync.Mutex
	scopes  map[string]connScope // by stream (authorize.go)
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

func (c *conn) handleFrame(msg []byte) {
	c.mu.Lock()
	c.busy = true
	c.mu.Unlock()

	out := c.api.dispatch(c.ctx, c, msg)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.write(out)
	// A replay may hold more frames than melody's queue takes: they are
	// written as it drains, without c.mu held, while what arrives
	// meanwhile queues behind them.
	limit := int64(c.api.cfg.queueSize)
	for len(c.pending) > 0 && !c.closing.Load() {
		f := c.pending[0]
		if c.cork.queued.Load() >= limit {
			c.mu.Unlock()
			ok := c.cork.waitBelow(limit/2, c.ctx.Done())
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

// write queues frame on melody's writer; the cork counts it until it is
// written. Callers hold c.mu.
func (c *conn) write(frame []byte) {
	c.cork.queued.Add(1)
	closing := c.closing.Load()
	if c.session.Write(frame) != nil || (!closing && c.closing.Load()) {
		c.cork.sent() // not queued: closed, or the queue overflowed
	}
}

// resync closes the connection with 1013 and reason (delivery.go names
// them): the server can no longer guarantee its event stream, and the
// client must load its state again. It never blocks.
func (c *conn) resync(reason string) { c.closeWith(c.session, closeTryAgain, reason) }

// closeWith closes the connection with code, once, without blocking the
// caller: the close frame is written by a goroutine of its own that waits at
// most the write timeout for the writer. Nothing is delivered after it.
func (c *conn) closeWith(s *melody.Session, code int, reason string) {
	if s == nil || c.closing.Swap(true) {
		return
	}
	a := c.api
	a.mu.RLock()
	if a.closing { // Shutdown closes it with 1001
		a.mu.RUnlock()
		return
	}
	a.closers.Add(1)
	a.mu.RUnlock()
	go func() {
		defer a.closers.Done()
		ws := s.WebsocketConnection()
		msg := websocket.FormatCloseMessage(code, reason)
		_ = ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(defaultWriteWait))
		c.cork.flush()
		_ = ws.Close()
	}()
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
