package channelsapi_test

// This file runs the example app (go run ./example) as a newcomer would.

import (
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

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

	require.NoError(t, app.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 1001, ws.closeCode(), "SIGTERM closes sockets with 1001")
}
