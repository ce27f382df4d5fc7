package channelsapi_test

// This file runs the example app (go run ./example) and README.md's Quick
// Start (example/quickstart) as a newcomer would.

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestExampleApp runs `go run ./example` as a newcomer would (built, on a
// fresh SQLite file): it answers the documented create message with 201,
// serves REST under /api, keeps notes private, refuses cross-site writes
// made with the cookie of its user, and closes its sockets with
// 1001 on SIGTERM.
func TestExampleApp(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	bin := buildExample(t)
	app := startInstance(t, bin, "-db", filepath.Join(t.TempDir(), "polls.db"))

	ws := app.dial(t, nil)
	ws.sendRaw([]byte(`{"stream":"questions","payload":{"action":"create","data":{"question_text":"What is your favorite python package?"},"request_id":"some-guid"}}`))
	got := ws.readPayload("questions")
	assert.EqualValues(t, 201, got["response_status"], "%v", got)
	assert.Equal(t, "some-guid", got["request_id"])
	data, _ := got["data"].(map[string]any)
	assert.Equal(t, "What is your favorite python package?", data["question_text"])
	assert.NotEmpty(t, data["pub_date"])

	status, body := app.doREST(t, http.MethodGet, "/questions", "")
	assert.Equal(t, http.StatusOK, status)
	assert.EqualValues(t, 1, body.(map[string]any)["count"])

	status, _ = app.doREST(t, http.MethodPost, "/notes", `{"text":"mine"}`)
	assert.Equal(t, http.StatusUnauthorized, status, "notes need a token")
	status, _ = app.doREST(t, http.MethodPost, "/notes", `{"text":"mine"}`, "Authorization", "Bearer alice-token")
	assert.Equal(t, http.StatusCreated, status)
	status, body = app.doREST(t, http.MethodGet, "/notes", "", "Authorization", "Bearer bob-token")
	assert.Equal(t, http.StatusOK, status)
	assert.EqualValues(t, 0, body.(map[string]any)["count"], "bob sees none of alice's notes")

	// A token that is not valid is refused, as DRF's TokenAuthentication
	// does: over REST and for the socket (its subprotocol offer).
	status, body = app.doREST(t, http.MethodGet, "/notes", "", "Authorization", "Bearer not-a-token")
	assert.Equal(t, http.StatusUnauthorized, status)
	assert.Equal(t, map[string]any{"detail": "Invalid token."}, body)
	conn, status, raw := dialStatus(t, app.testServer, &websocket.Dialer{Subprotocols: []string{"bearer", "not-a-token"}}, nil)
	assert.Nil(t, conn)
	assert.Equal(t, http.StatusUnauthorized, status)
	assert.JSONEq(t, `{"detail": "Invalid token."}`, string(raw))

	// A form on another site, posted by alice's browser with her cookie.
	origin := strings.TrimSuffix(app.URL, "/api")
	for _, h := range [][]string{
		{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site", "Content-Type", "text/plain"},
		{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"},
		{"Sec-Fetch-Site", "cross-site"},
	} {
		status, body = app.doREST(t, http.MethodPost, "/notes", `{"text":"forged","x":"="}`, append([]string{"Cookie", "token=alice-token"}, h...)...)
		assert.Equal(t, http.StatusForbidden, status, "%v: %v", h, body)
	}
	status, _ = app.doREST(t, http.MethodPost, "/notes", `{"text":"from the app's page"}`, "Cookie", "token=alice-token", "Origin", origin, "Sec-Fetch-Site", "same-origin")
	assert.Equal(t, http.StatusCreated, status)
	status, body = app.doREST(t, http.MethodGet, "/notes", "", "Cookie", "token=alice-token")
	assert.Equal(t, http.StatusOK, status)
	assert.EqualValues(t, 2, body.(map[string]any)["count"], "no forged note: %v", body)

	t.Run("subscribe with the pk in data", func(t *testing.T) { exampleSubscribePKInData(t, app) })

	require.NoError(t, app.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 1001, ws.closeCode(), "SIGTERM closes sockets with 1001")
}

// exampleSubscribePKInData subscribes to one question as a client of the
// example does in the channels-api README form, the pk inside data, given
// as a JSON string and as a number: the change of another question does
// not arrive. Each check changes the other question first, then the one
// subscribed to, and reads the first event: events of a stream arrive in
// the order of the changes.
func exampleSubscribePKInData(t *testing.T, app *instance) {
	question := func(text string) float64 {
		status, body := app.doREST(t, http.MethodPost, "/questions", `{"question_text":"`+text+`"}`)
		require.Equal(t, http.StatusCreated, status, "%v", body)
		return body.(map[string]any)["id"].(float64)
	}
	rename := func(id float64, text string) {
		status, body := app.doREST(t, http.MethodPatch, fmt.Sprintf("/questions/%v", id), `{"question_text":"`+text+`"}`)
		require.Equal(t, http.StatusOK, status, "%v", body)
	}
	subscribe := func(ws *wsClient, action, event string, pk any) {
		got := ws.request("questions", map[string]any{"action": action, "data": map[string]any{"action": event, "pk": pk}, "request_id": "r"})
		require.EqualValues(t, 200, got["response_status"], "%v", got)
		require.Equal(t, map[string]any{"action": event}, got["data"])
	}
	next := func(ws *wsClient) (action string, id float64) {
		p := ws.readPayload("questions")
		action, _ = p["action"].(string)
		id, _ = p["pk"].(float64)
		return action, id
	}
	for _, form := range []struct {
		name string
		pk   func(id float64) any
	}{
		{"string", func(id float64) any { return fmt.Sprint(id) }},
		{"number", func(id float64) any { return id }},
	} {
		t.Run(form.name, func(t *testing.T) {
			mine, other := question("mine"), question("other")

			ws := app.dial(t, nil)
			subscribe(ws, "subscribe", "update", form.pk(mine))
			rename(other, "other, renamed")
			rename(mine, "mine, renamed")
			action, id := next(ws)
			assert.Equal(t, "update", action)
			assert.Equal(t, mine, id, "only the question of data.pk")

			subscribe(ws, "subscribe", "update", form.pk(other))
			subscribe(ws, "unsubscribe", "update", form.pk(other))
			rename(other, "other, renamed again")
			rename(mine, "mine, renamed again")
			_, id = next(ws)
			assert.Equal(t, mine, id, "unsubscribed from the other question")

			created := app.dial(t, nil)
			subscribe(created, "subscribe", "create", form.pk(other+2))
			assert.Equal(t, other+1, question("before"))
			assert.Equal(t, other+2, question("subscribed"))
			action, id = next(created)
			assert.Equal(t, "create", action)
			assert.Equal(t, other+2, id, "only the creation of data.pk")

			deleted := app.dial(t, nil)
			subscribe(deleted, "subscribe", "delete", form.pk(mine))
			for _, id := range []float64{other, mine} {
				status, body := app.doREST(t, http.MethodDelete, fmt.Sprintf("/questions/%v", id), "")
				require.Equal(t, http.StatusNoContent, status, "%v", body)
			}
			action, id = next(deleted)
			assert.Equal(t, "delete", action)
			assert.Equal(t, mine, id, "only the deletion of data.pk")
		})
	}
}

// TestReadmeQuickStart checks that README.md's Quick Start is
// example/quickstart/main.go whole, then runs that program as a newcomer
// would (in a fresh directory, on $PORT) and creates a question over REST
// and over the WebSocket.
func TestReadmeQuickStart(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	program, err := os.ReadFile("example/quickstart/main.go")
	require.NoError(t, err)
	_, rest, found := strings.Cut(string(readme), "\n## Quick start\n")
	require.True(t, found, "README.md has a Quick start section")
	_, block, found := strings.Cut(rest, "```go\n")
	require.True(t, found, "the Quick start has a go block")
	block, _, found = strings.Cut(block, "```\n")
	require.True(t, found)
	require.Equal(t, string(program), block, "README.md's Quick Start is example/quickstart/main.go")

	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	bin := filepath.Join(t.TempDir(), "quickstart")
	out, err := exec.Command("go", "build", "-o", bin, "./example/quickstart").CombinedOutput()
	require.NoError(t, err, "build the Quick Start: %s", out)
	port := freePort(t)
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "GIN_MODE=release")
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("output of the Quick Start:\n%s", log.String())
		}
	})
	srv := &testServer{URL: "http://127.0.0.1:" + strconv.Itoa(port), WSURL: "ws://127.0.0.1:" + strconv.Itoa(port) + "/ws"}
	require.Eventually(t, func() bool {
		resp, err := http.Get(srv.URL + "/questions")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "the Quick Start does not serve")

	status, body := srv.doREST(t, http.MethodPost, "/questions", `{"question_text":"What's new?"}`)
	assert.Equal(t, http.StatusCreated, status, "%v", body)
	ws := srv.dial(t, nil)
	got := ws.request("questions", map[string]any{"action": "create", "data": map[string]any{"question_text": "And now?"}, "request_id": 1})
	assert.EqualValues(t, 201, got["response_status"], "%v", got)
	_, err = os.Stat(filepath.Join(cmd.Dir, "polls.db"))
	assert.NoError(t, err, "the database is polls.db in the working directory")
}
