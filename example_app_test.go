package channelsapi_test

// This file runs the example app (go run ./example) as a newcomer would.

import (
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestExampleApp runs `go run ./example` as a newcomer would (built, on a
// fresh SQLite file): it answers the documented create message with 201,
// serves REST under /api, keeps notes private, and closes its sockets with
// 1001 on SIGTERM.
func TestExampleApp(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	bin := filepath.Join(t.TempDir(), "example")
	out, err := exec.Command("go", "build", "-o", bin, "./example").CombinedOutput()
	require.NoError(t, err, "build the example: %s", out)
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
