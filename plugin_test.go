package channelsapi_test

// This file tests plugin.go: Register and Add refuse a bad configuration
// with an error, WithDefaultPermission, WithUser's typed nil, Shutdown,
// Disconnect, and Stats after connections come and go.

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

func TestRegisterConfigurationErrors(t *testing.T) {
	tests := []struct {
		name string
		give []channelsapi.Option
	}{
		{"zero max message size", []channelsapi.Option{channelsapi.WithMaxMessageSize(0)}},
		{"negative max message size", []channelsapi.Option{channelsapi.WithMaxMessageSize(-1)}},
		{"zero queue size", []channelsapi.Option{channelsapi.WithQueueSize(0)}},
		{"zero page size", []channelsapi.Option{channelsapi.WithPageSize(0, 10)}},
		{"max page size below page size", []channelsapi.Option{channelsapi.WithPageSize(10, 5)}},
		{"zero bulk event limit", []channelsapi.Option{channelsapi.WithBulkEventLimit(0)}},
		{"relative path", []channelsapi.Option{channelsapi.WithPath("ws")}},
		{"empty path", []channelsapi.Option{channelsapi.WithPath("")}},
		{"nil logger", []channelsapi.Option{channelsapi.WithLogger(nil)}},
		{"nil user resolver", []channelsapi.Option{channelsapi.WithUser(nil)}},
		{"origin without scheme", []channelsapi.Option{channelsapi.WithAllowedOrigins("app.example")}},
		{"origin with a path", []channelsapi.Option{channelsapi.WithAllowedOrigins("https://app.example/path")}},
		{"origin of another scheme", []channelsapi.Option{channelsapi.WithAllowedOrigins("ftp://app.example")}},
		{"origin null", []channelsapi.Option{channelsapi.WithAllowedOrigins("null")}},
		{"origin wildcard", []channelsapi.Option{channelsapi.WithAllowedOrigins("*")}},
		{"relative OpenAPI path", []channelsapi.Option{channelsapi.WithAPIDocs(channelsapi.APIDocs{OpenAPIPath: "openapi.json"})}},
		{"relative AsyncAPI path", []channelsapi.Option{channelsapi.WithAPIDocs(channelsapi.APIDocs{AsyncAPIPath: "asyncapi.json"})}},
		{"AsyncAPI path taken by the WebSocket", []channelsapi.Option{channelsapi.WithAPIDocs(channelsapi.APIDocs{AsyncAPIPath: "/ws"})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openDB(t, &TestModel{})
			require.NotPanics(t, func() {
				api, err := channelsapi.Register(gin.New(), db, tt.give...)
				assert.Error(t, err)
				assert.Nil(t, api)
			})
		})
	}
	t.Run("nil router", func(t *testing.T) {
		db := openDB(t, &TestModel{})
		require.NotPanics(t, func() {
			_, err := channelsapi.Register(nil, db)
			assert.Error(t, err)
		})
	})
	t.Run("nil db", func(t *testing.T) {
		require.NotPanics(t, func() {
			_, err := channelsapi.Register(gin.New(), nil)
			assert.Error(t, err)
		})
	})
	t.Run("registered twice on one router", func(t *testing.T) {
		router := gin.New()
		api, err := channelsapi.Register(router, openDB(t, &TestModel{}))
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, api.Shutdown(context.Background())) })
		require.NotPanics(t, func() {
			api2, err := channelsapi.Register(router, openDB(t, &TestModel{}))
			if err == nil {
				assert.NoError(t, api2.Shutdown(context.Background()))
			}
			assert.Error(t, err)
		})
	})
}

// noKeyModel has no primary key.
type noKeyModel struct {
	Name string `json:"name"`
}

// twoKeyModel has a composite primary key.
type twoKeyModel struct {
	A int `json:"a" gorm:"primaryKey"`
	B int `json:"b" gorm:"primaryKey"`
}

// floatKeyModel has a primary key type that cannot be parsed from a path.
type floatKeyModel struct {
	ID float64 `json:"id" gorm:"primaryKey"`
}

func TestAddConfigurationErrors(t *testing.T) {
	handle := func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) { return nil, 0, nil }
	tests := []struct {
		name string
		give func(api *channelsapi.API) error
	}{
		{"duplicate stream", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "testmodel"})
		}},
		{"duplicate default stream", func(api *channelsapi.API) error {
			if err := channelsapi.Add(api, channelsapi.ViewSet[TestModel]{}); err != nil {
				return nil // the first one must work
			}
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{})
		}},
		{"stream with a slash", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "a/b"})
		}},
		{"stream with a wildcard", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: ":pk"})
		}},
		{"stream on the socket's path", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "ws"})
		}},
		{"action named create", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"create": {Handle: handle}}})
		}},
		{"action named list", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"list": {Handle: handle}}})
		}},
		{"action named subscribe_instance", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"subscribe_instance": {Detail: true, Handle: handle}}})
		}},
		{"action without handler", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"noop": {}}})
		}},
		{"action name with a slash", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"a/b": {Handle: handle}}})
		}},
		{"unknown read-only field", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", ReadOnlyFields: []string{"nope"}})
		}},
		{"model is an int", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[int]{Stream: "x"})
		}},
		{"model is a pointer", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[*TestModel]{Stream: "x"})
		}},
		{"model is a slice", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[[]TestModel]{Stream: "x"})
		}},
		{"model is a map", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[map[string]any]{Stream: "x"})
		}},
		{"model without a primary key", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[noKeyModel]{Stream: "x"})
		}},
		{"model with a composite key", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[twoKeyModel]{Stream: "x"})
		}},
		{"model with a float key", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[floatKeyModel]{Stream: "x"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
				addTestModel(t, api)
				require.NotPanics(t, func() { assert.Error(t, tt.give(api)) })
			})
			// the API serves what was added before
			srv.dial(t, nil).assertAlive()
		})
	}
	t.Run("stream on an application route", func(t *testing.T) {
		router := gin.New()
		router.GET("/health", func(c *gin.Context) { c.String(http.StatusOK, "ok") })
		api, err := channelsapi.Register(router, openDB(t, &TestModel{}))
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, api.Shutdown(context.Background())) })
		require.NotPanics(t, func() {
			assert.Error(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "health"}))
		})
	})
}

func TestDefaultPermission(t *testing.T) {
	db := openDB(t, &TestModel{})
	seed(t, db, "row")
	srv := newAuthServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "defaulted"}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "open", Permission: channelsapi.AllowAny()}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "alice", Permission: onlyUser(userA)}))
	}, channelsapi.WithDefaultPermission(channelsapi.IsAuthenticated()))
	anon, alice, bob := srv.dialAs(t, nil), srv.dialAs(t, userA), srv.dialAs(t, userB)

	tests := []struct {
		stream string
		user   *authUser
		ws     *wsClient
		want   int
	}{
		{"defaulted", nil, anon, 401},
		{"defaulted", userA, alice, 200},
		{"defaulted", userB, bob, 200},
		{"open", nil, anon, 200},
		{"alice", nil, anon, 401},
		{"alice", userA, alice, 200},
		{"alice", userB, bob, 403},
	}
	for _, tt := range tests {
		t.Run(tt.stream+"/"+userName(tt.user), func(t *testing.T) {
			got := tt.ws.in(t).request(tt.stream, map[string]any{"action": "retrieve", "pk": 1, "request_id": 1})
			assert.EqualValues(t, tt.want, got["response_status"], "websocket: %v", got)
			status, body := srv.restAs(t, tt.user, http.MethodGet, "/"+tt.stream+"/1", "")
			assert.Equal(t, tt.want, status, "rest: %s", body)
		})
	}
}

// TestTypedNilUserIsAnonymous resolves the user as a *authUser, which is a
// nil pointer for an anonymous request (a common shape: `u, _ :=
// c.Get("user"); return u.(*User)`-like code): such a request is
// anonymous, or a Scope written for "no user" would show it every row.
func TestTypedNilUserIsAnonymous(t *testing.T) {
	db := openDB(t, &authNote{})
	require.NoError(t, db.Create(&authNote{OwnerID: userA.ID, Text: "private"}).Error)
	var (
		mu         sync.Mutex
		connectNil []bool
	)
	srv := newAuthServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, notesViewSet()))
	},
		channelsapi.WithUser(func(c *gin.Context) any {
			u, _ := c.Get("user")
			au, _ := u.(*authUser)
			return au
		}),
		channelsapi.WithConnect(func(_ *gin.Context, user any) error {
			mu.Lock()
			defer mu.Unlock()
			connectNil = append(connectNil, user == nil)
			return nil
		}))

	ws := srv.dialAs(t, nil)
	got := ws.request("notes", map[string]any{"action": "list", "request_id": 1})
	assert.EqualValues(t, 401, got["response_status"], "websocket: %v", got)
	status, body := srv.restAs(t, nil, http.MethodGet, "/notes", "")
	assert.Equal(t, http.StatusUnauthorized, status, "rest: %s", body)
	alice := srv.dialAs(t, userA)
	got = alice.request("notes", map[string]any{"action": "list", "request_id": 1})
	assert.EqualValues(t, 200, got["response_status"], "alice: %v", got)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []bool{true, false}, connectNil, "the connect check sees no user for the anonymous upgrade")
}

// TestShutdown closes 100 sockets, a third of them subscribed, with 1001.
func TestShutdown(t *testing.T) {
	const sockets = 100
	srv := newItemsServer(t)
	clients := make([]*wsClient, sockets)
	subscribed := 0
	for i := range clients {
		clients[i] = srv.dial(t, nil)
		if i%3 == 0 {
			got := clients[i].request("items", map[string]any{"action": "subscribe", "data": map[string]any{"action": "update"}})
			require.EqualValues(t, 200, got["response_status"])
			got = clients[i].request("items", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": i})
			require.EqualValues(t, 201, got["response_status"])
			subscribed++
		}
	}
	require.Eventually(t, func() bool { return srv.API.Stats().Connections == sockets }, readTimeout, time.Millisecond)
	assert.Equal(t, subscribed, srv.API.Stats().Subscribers)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	require.NoError(t, srv.API.Shutdown(ctx))
	took := time.Since(start)

	codes := map[int]int{}
	for _, c := range clients {
		codes[c.closeCode()]++
	}
	assert.Equal(t, map[int]int{websocket.CloseGoingAway: sockets}, codes, "close codes")

	_, status, body := dialStatus(t, srv, websocket.DefaultDialer, nil)
	assert.Equal(t, http.StatusServiceUnavailable, status, "an upgrade after shutdown")
	assert.JSONEq(t, `{"detail":"Server is shutting down."}`, string(body))
	assert.NoError(t, srv.API.Shutdown(ctx), "a second Shutdown")
	assert.Equal(t, channelsapi.Stats{}, srv.API.Stats())
	t.Logf("shutdown: %d sockets (%d subscribed) closed in %v, close codes %v, upgrade after it: %d",
		sockets, subscribed, took.Round(time.Millisecond), codes, status)
}

// TestShutdownRacingUpgrades shuts down while clients upgrade as fast as
// they can: every upgrade either fails with 503 or gets a socket that is
// closed with 1001, and Shutdown waits for them all.
func TestShutdownRacingUpgrades(t *testing.T) {
	const dialers, perDialer, shutdownAt = 8, 60, 100
	srv := newItemsServer(t)
	var (
		connected atomic.Int64
		mu        sync.Mutex
		conns     []*websocket.Conn
		wg        sync.WaitGroup
	)
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for d := range dialers {
		wg.Go(func() {
			for range perDialer {
				ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
				conn, resp, err := websocket.DefaultDialer.DialContext(ctx, srv.WSURL, nil)
				cancel()
				if resp != nil {
					_ = resp.Body.Close()
				}
				if err != nil {
					if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
						t.Errorf("dialer %d: %v", d, err)
					}
					return // refused: the API is shut down
				}
				connected.Add(1)
				mu.Lock()
				conns = append(conns, conn)
				mu.Unlock()
			}
		})
	}
	require.Eventually(t, func() bool { return connected.Load() >= shutdownAt }, readTimeout, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, srv.API.Shutdown(ctx), "Shutdown waits for every socket, also those upgraded while it ran")
	wg.Wait()

	codes := map[int]int{}
	for _, conn := range conns {
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(readTimeout)))
		_, _, err := conn.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			codes[ce.Code]++
		} else {
			codes[-1]++
			t.Errorf("socket ended with %v, want close 1001", err)
		}
	}
	assert.Equal(t, map[int]int{websocket.CloseGoingAway: len(conns)}, codes)
	assert.Equal(t, channelsapi.Stats{}, srv.API.Stats())
	t.Logf("shutdown racing upgrades: %d sockets upgraded, close codes %v", len(conns), codes)
}

// TestDisconnectWithdrawsAuthorization closes the connections of one user
// with 1008 and leaves the others open.
func TestDisconnectWithdrawsAuthorization(t *testing.T) {
	srv := testModelServer(t)
	alice1 := srv.dial(t, http.Header{"X-User": {"alice"}})
	alice2 := srv.dial(t, http.Header{"X-User": {"alice"}})
	bob := srv.dial(t, http.Header{"X-User": {"bob"}})
	anonymous := srv.dial(t, nil)
	for _, c := range []*wsClient{alice1, alice2, bob, anonymous} {
		c.subscribe("create", nil) // the connection is registered and serving
	}

	n := srv.API.Disconnect(func(user any) bool { return user == "alice" })
	assert.Equal(t, 2, n)
	assert.Equal(t, 1008, alice1.closeCode())
	assert.Equal(t, 1008, alice2.closeCode())
	for _, c := range []*wsClient{bob, anonymous} {
		got := c.request("testmodel", map[string]any{"action": "list", "request_id": 1})
		assert.EqualValues(t, 200, got["response_status"], "others stay connected")
	}
	require.Eventually(t, func() bool { return srv.API.Stats().Connections == 2 }, readTimeout, time.Millisecond)
}

// TestConnectSubscribeDisconnectLeavesNothing runs 2,000 connection cycles
// and checks that no connection, subscription or goroutine remains.
func TestConnectSubscribeDisconnectLeavesNothing(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "a")
	for i := range 2000 {
		conn, resp, err := websocket.DefaultDialer.Dial(srv.WSURL, nil)
		require.NoError(t, err)
		_ = resp.Body.Close()
		c := &wsClient{tb: t, conn: conn}
		c.subscribe("update", nil)
		if i%2 == 0 {
			got := c.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": i})
			require.EqualValues(t, 201, got["response_status"])
		}
		require.NoError(t, conn.Close())
	}
	require.Eventually(t, func() bool { return srv.API.Stats() == channelsapi.Stats{} }, 10*time.Second, 5*time.Millisecond,
		"stats after 2,000 cycles: %+v", srv.API.Stats())
}
