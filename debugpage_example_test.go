package channelsapi_test

// The debugger page against the example app, in a real headless Chromium:
// signing in, a refused connection, REST requests, the differences of
// updates, two users side by side, small screens, and the screenshots under
// debugpage/testdata. Also when the page mounts (Gin's mode).

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

func TestDebugPageMountsOnlyInDebugMode(t *testing.T) {
	tests := []struct {
		name      string
		mode      string
		anyMode   bool
		mounted   bool
		logsItOff bool
	}{
		{name: "debug mode", mode: gin.DebugMode, mounted: true},
		{name: "release mode", mode: gin.ReleaseMode, logsItOff: true},
		{name: "test mode", mode: gin.TestMode, logsItOff: true},
		{name: "release mode, asked for", mode: gin.ReleaseMode, anyMode: true, mounted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setGinMode(t, tt.mode)
			var logged bytes.Buffer
			opts := []channelsapi.Option{
				channelsapi.WithDebugPage(""),
				channelsapi.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))),
			}
			if tt.anyMode {
				opts = append(opts, channelsapi.WithDebugPageInReleaseMode())
			}
			srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, opts...)
			for _, path := range []string{"/channels-api/", "/channels-api/schema.json", "/channels-api/app.js"} {
				status, _ := getBody(t, srv.URL+path)
				if tt.mounted {
					assert.Equal(t, http.StatusOK, status, path)
				} else {
					assert.Equal(t, http.StatusNotFound, status, path)
				}
			}
			if tt.logsItOff {
				assert.Contains(t, logged.String(), "the debugger page stays off: Gin is in "+tt.mode+" mode")
				assert.Contains(t, logged.String(), "WithDebugPageInReleaseMode")
			} else {
				assert.NotContains(t, logged.String(), "debugger page")
			}
		})
	}
}

func TestDebugPageSchemaSubprotocols(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) },
		channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode(), channelsapi.WithSubprotocols("bearer"))
	status, body := getBody(t, srv.URL+"/channels-api/schema.json")
	require.Equal(t, http.StatusOK, status)
	var doc struct {
		Subprotocols []string `json:"subprotocols"`
	}
	require.NoError(t, json.Unmarshal(body, &doc), "%s", body)
	assert.Equal(t, []string{"bearer"}, doc.Subprotocols)
}

// debugExample starts the example app with its debugger page (-debug, Gin
// in debug mode) on a fresh SQLite file and opens the page.
func debugExample(t *testing.T) (*instance, *debugPage) {
	t.Helper()
	bin := buildExample(t)
	app := startInstanceEnv(t, bin, []string{"GIN_MODE=debug"}, "-db", filepath.Join(t.TempDir(), "polls.db"), "-debug")
	p := openDebugPageAt(t, strings.TrimSuffix(app.URL, "/api"), "/channels-api/")
	return app, p
}

// waitJS waits until the JavaScript expression is true in the page.
func (p *debugPage) waitJS(expr string) {
	p.t.Helper()
	_, err := chromedp.Run(p.ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(20*time.Millisecond)))
	require.NoError(p.t, err, "waiting for %s", expr)
}

// signIn types token into the credential of connection sfx ("" for A,
// "-b" for B), signs in and waits until the connection's socket opened
// with it (the server selected the "bearer" subprotocol).
func (p *debugPage) signIn(sfx, token string) {
	p.t.Helper()
	p.fill("#cred-token"+sfx, token)
	p.do(chromedp.Click(chromedp.CSS("#sign-in" + sfx)))
	p.waitJS(fmt.Sprintf(`(() => {
		const c = channelsapi.connections.find((c) => c.id === %s);
		return c.state === "open" && c.socket.protocol === "bearer";
	})()`, jsString(connID(sfx))))
}

// socketsOpened counts the WebSockets the page created.
func (p *debugPage) socketsOpened() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, u := range p.requests {
		if strings.HasPrefix(u, "ws") {
			n++
		}
	}
	return n
}

// connID is the id of the connection whose elements have the suffix sfx.
func connID(sfx string) string {
	if sfx == "" {
		return "a"
	}
	return strings.TrimPrefix(sfx, "-")
}

// lastText is the text of the last element sel matches.
func (p *debugPage) lastText(sel string) string {
	p.t.Helper()
	var s string
	p.evaluate(fmt.Sprintf(`[...document.querySelectorAll(%s)].pop().textContent.trim()`, jsString(sel)), &s)
	return s
}

// sendAs makes connection id ("a" or "b") the one the form sends as.
func (p *debugPage) sendAs(id string) {
	p.t.Helper()
	p.do(chromedp.Click(chromedp.CSS("#target-" + id)))
	p.waitJS(fmt.Sprintf(`document.querySelector("#target-%s").checked`, id))
}

// framesOf returns what connection id logged, as channelsapi.frames() does.
func (p *debugPage) framesOf(id, kind string) []map[string]any {
	p.t.Helper()
	var out []map[string]any
	p.evaluate(fmt.Sprintf(`JSON.stringify(channelsapi.frames().filter((f) => f.connection === %s && f.kind === %s))`,
		jsString(id), jsString(kind)), &out)
	return out
}

// noteTexts returns the texts of the notes in the data of the last list
// reply of connection id.
func (p *debugPage) noteTexts(id string) []string {
	p.t.Helper()
	replies := p.framesOf(id, "reply")
	for i := len(replies) - 1; i >= 0; i-- {
		payload, _ := replies[i]["frame"].(map[string]any)["payload"].(map[string]any)
		if payload["action"] != "list" {
			continue
		}
		texts := []string{}
		for _, n := range payload["data"].([]any) {
			texts = append(texts, n.(map[string]any)["text"].(string))
		}
		return texts
	}
	p.t.Fatalf("connection %s logged no list reply", id)
	return nil
}

func TestDebugPageTwoUsers(t *testing.T) {
	_, p := debugExample(t)

	// Anonymous, notes answer 401.
	p.choose("#stream", "notes")
	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="error"][data-action="list"][data-status="401"]`)

	p.signIn("", "alice-token")
	assert.Equal(t, "token alice-…", p.text("#who"))
	p.choose("#action", "subscribe")
	p.choose("#sub-event", "create")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#subscriptions .sub[data-stream="notes"][data-event="create"]`)

	// A second connection, as bob, beside the first.
	p.do(chromedp.Click(chromedp.CSS("#add-conn")))
	p.waitVisible("#session-b")
	p.signIn("-b", "bob-token")
	assert.Equal(t, "token bob-to…", p.text("#who-b"))
	p.sendAs("b")
	assert.Equal(t, "Send as B", p.text("#send"))
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#subscriptions-b .sub[data-stream="notes"][data-event="create"]`)
	assert.Equal(t, 0, p.count(`#subscriptions-b .sub[data-event="update"]`))

	// Alice writes a note: she sees her event.
	p.sendAs("a")
	p.choose("#action", "create")
	p.fill("#field-text", "alice's secret")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="create"][data-status="201"]`)
	p.waitVisible(`#log .entry[data-kind="event"][data-stream="notes"]`)

	// Bob writes one after it: once his own event arrived, alice's, committed
	// before, would have arrived before it.
	p.sendAs("b")
	p.fill("#field-text", "bob's note")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log-b .entry[data-kind="event"][data-stream="notes"]`)
	events := p.framesOf("b", "event")
	require.Len(t, events, 1)
	assert.Contains(t, fmt.Sprint(events[0]["frame"]), "bob's note")
	aliceEvents := p.framesOf("a", "event")
	require.Len(t, aliceEvents, 1, "alice sees her event and not bob's")
	assert.Contains(t, fmt.Sprint(aliceEvents[0]["frame"]), "alice's secret")

	// Each lists their own notes.
	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log-b .entry[data-kind="reply"][data-action="list"]`)
	assert.Equal(t, []string{"bob's note"}, p.noteTexts("b"))
	p.sendAs("a")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="list"]`)
	assert.Equal(t, []string{"alice's secret"}, p.noteTexts("a"))

	// The credentials are kept for the tab: a reload signs both in again.
	p.do(chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`body[data-ready="true"]`)))
	p.waitJS(`channelsapi.connections.length === 2 && channelsapi.connections.every((c) => c.state === "open" && c.socket.protocol === "bearer")`)
	assert.Equal(t, "token alice-…", p.text("#who"))
	assert.Equal(t, "token bob-to…", p.text("#who-b"))
	p.sendAs("b")
	p.choose("#stream", "notes")
	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log-b .entry[data-kind="reply"][data-action="list"]`)
	assert.Equal(t, []string{"bob's note"}, p.noteTexts("b"), "B is bob again after the reload")

	// Closing B ends its connection; a new B starts anonymous.
	p.do(chromedp.Click(chromedp.CSS("#conn-close-b")))
	p.do(chromedp.WaitNotPresent(chromedp.CSS("#session-b")))
	p.waitJS(`channelsapi.connections.length === 1 && document.activeElement.id === "add-conn"`)
	assert.Equal(t, "Send", p.text("#send"))
	p.do(chromedp.Click(chromedp.CSS("#add-conn")))
	p.waitJS(`channelsapi.connections.length === 2 && channelsapi.connections[1].state === "open"`)
	assert.Equal(t, "anonymous", p.text("#who-b"))
}

func TestDebugPageRefusedConnection(t *testing.T) {
	_, p := debugExample(t)
	// The browser logs the refused handshake and the probe's 401.
	p.allowConsoleError("WebSocket connection to")
	p.allowConsoleError("401")

	p.fill("#cred-token", "not-a-token")
	p.do(chromedp.Click(chromedp.CSS("#sign-in")))
	p.waitJS(`channelsapi.connections[0].state === "refused"`)
	p.waitVisible("#refusal")
	refusal := p.text("#refusal")
	assert.Contains(t, refusal, "The server refused the connection: 401 Unauthorized")
	assert.Contains(t, refusal, `"detail": "Invalid token."`)
	assert.Contains(t, refusal, "WWW-Authenticate: Bearer")
	assert.Equal(t, "refused: 401 Unauthorized", p.text("#conn-text"))
	var c struct {
		Refused  int  `json:"refused"`
		Retrying bool `json:"retrying"`
	}
	p.evaluate(`JSON.stringify(channelsapi.connections[0])`, &c)
	assert.Equal(t, 401, c.Refused)
	assert.False(t, c.Retrying, "no retry until the credential changes: no reconnect is scheduled")
	assert.Equal(t, 2, p.socketsOpened(), "the anonymous socket, then the refused one, and no other")
	p.waitVisible(`#log .entry.sys-error`)
	assert.Contains(t, p.lastText(`#log .entry.sys-error`), `refused it with 401 Unauthorized {"detail":"Invalid token."}`)

	// A valid credential connects.
	p.signIn("", "alice-token")
	p.waitJS(`document.querySelector("#refusal").hidden`)
}

func TestDebugPageREST(t *testing.T) {
	app, p := debugExample(t)
	p.signIn("", "alice-token")
	p.do(chromedp.Click(chromedp.CSS(`#transport [data-transport="rest"]`)))
	p.waitJS(`document.body.dataset.transport === "rest"`)
	p.choose("#stream", "notes")
	p.choose("#action", "create")
	assert.Equal(t, 1, p.count(`#action option[value="subscribe"][disabled]`), "WebSocket-only actions cannot be chosen")

	for i, text := range []string{"first", "second", "third"} {
		p.fill("#field-text", text)
		assert.True(t, strings.HasPrefix(p.value("#raw"), "POST /api/notes\nContent-Type: application/json\n\n{"), p.value("#raw"))
		if i == 2 {
			// From the keyboard: Ctrl+Enter sends.
			p.do(chromedp.Focus(chromedp.CSS("#field-text")), chromedp.KeyEvent("\r", chromedp.KeyModifiers(chromedp.ModifierCtrl)))
		} else {
			p.do(chromedp.Click(chromedp.CSS("#send")))
		}
		p.waitJS(fmt.Sprintf(`document.querySelectorAll('#log .entry[data-transport="rest"][data-kind="reply"][data-status="201"]').length === %d`, i+1))
	}
	created := p.framesOf("a", "reply")
	require.Len(t, created, 3)
	firstID := created[0]["body"].(map[string]any)["id"].(float64)

	// A list of two per page, and its next page.
	p.choose("#action", "list")
	p.fill("#page-size", "2")
	assert.Equal(t, "GET /api/notes?page_size=2", p.value("#raw"))
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-method="GET"][data-url="/api/notes?page_size=2"]`)
	p.waitJS(`!document.querySelector("#page-next").disabled && document.querySelector("#page-prev").disabled`)
	p.do(chromedp.Click(chromedp.CSS("#page-next")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-method="GET"][data-url*="page=2"]`)
	replies := p.framesOf("a", "reply")
	page2 := replies[len(replies)-1]
	assert.Equal(t, float64(200), page2["status"])
	body := page2["body"].(map[string]any)
	assert.Equal(t, float64(3), body["count"])
	require.Len(t, body["results"], 1)
	assert.Equal(t, "third", body["results"].([]any)[0].(map[string]any)["text"])
	assert.Nil(t, body["next"])
	p.waitJS(`document.querySelector("#page-next").disabled && !document.querySelector("#page-prev").disabled`)

	// The response shows its status and headers.
	last := `#log .entry[data-kind="reply"][data-url*="page=2"]`
	p.do(chromedp.Click(chromedp.CSS(last + " > summary")))
	head := p.text(last + " pre.http-head")
	assert.Contains(t, head, "200 OK")
	assert.Contains(t, strings.ToLower(head), "content-type: application/json")

	// Delete the first note.
	p.choose("#action", "delete")
	p.fill("#pk", fmt.Sprint(firstID))
	assert.Equal(t, fmt.Sprintf("DELETE /api/notes/%v", firstID), p.value("#raw"))
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-method="DELETE"][data-status="204"]`)
	assert.Contains(t, p.text("#result"), "204 No Content")

	status, got := app.doREST(t, http.MethodGet, "/notes", "", "Authorization", "Bearer alice-token")
	require.Equal(t, http.StatusOK, status)
	var texts []any
	for _, n := range got.(map[string]any)["results"].([]any) {
		texts = append(texts, n.(map[string]any)["text"])
	}
	assert.Equal(t, []any{"second", "third"}, texts)

	// A custom detail action over REST.
	q := createQuestion(t, app, "Which?")
	status, ch := app.doREST(t, http.MethodPost, "/choices", fmt.Sprintf(`{"question_id":%d,"choice_text":"This"}`, q.ID))
	require.Equal(t, http.StatusCreated, status, "%v", ch)
	choiceID := ch.(map[string]any)["id"].(float64)
	p.choose("#stream", "choices")
	p.choose("#action", "vote")
	p.fill("#pk", "")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	assert.Equal(t, "Enter a pk: the route needs one.", p.text("#result"))
	p.fill("#pk", fmt.Sprint(choiceID))
	assert.Equal(t, fmt.Sprintf("POST /api/choices/%v/vote", choiceID), p.value("#raw"))
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-url$="/vote"][data-status="200"]`)
	status, got = app.doREST(t, http.MethodGet, fmt.Sprintf("/choices/%v", choiceID), "")
	require.Equal(t, http.StatusOK, status)
	assert.EqualValues(t, 1, got.(map[string]any)["votes"])

	// A field error of a REST write is shown next to its field (the browser
	// logs the 400).
	p.allowConsoleError("status of 400")
	p.choose("#stream", "notes")
	p.choose("#action", "create")
	p.fill("#field-text", "")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#fields .field[data-field="text"].invalid .field-error`)
	assert.Contains(t, p.text("#result"), "400 Bad Request")
}

func TestDebugPageShowsUpdateDiff(t *testing.T) {
	app, p := debugExample(t)
	q := createQuestion(t, app, "Old?")

	p.choose("#stream", "questions")
	p.choose("#action", "subscribe")
	p.choose("#sub-event", "update")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#subscriptions .sub[data-stream="questions"][data-event="update"]`)
	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="list"]`)

	patch := func(id int, text string) {
		status, body := app.doREST(t, http.MethodPatch, fmt.Sprintf("/questions/%d", id), fmt.Sprintf(`{"question_text":%q}`, text))
		require.Equal(t, http.StatusOK, status, "%v", body)
	}
	patch(q.ID, "New?")
	first := fmt.Sprintf(`#log .entry[data-kind="event"][data-pk="%d"][data-diff="question_text,version"]`, q.ID)
	p.waitVisible(first)
	assert.Equal(t, `question_text: "Old?" → "New?"; version: 0 → 1`, p.text(first+" .diff-badge"))
	p.do(chromedp.Click(chromedp.CSS(first + " > summary")))
	assert.Equal(t, `"Old?"`, p.text(first+` table.diff tr[data-key="question_text"] td.before`))
	assert.Equal(t, `"New?"`, p.text(first+` table.diff tr[data-key="question_text"] td.after`))

	// The next update is shown against the version the event carried.
	patch(q.ID, "Newer?")
	p.waitJS(fmt.Sprintf(`document.querySelectorAll('#log .entry[data-kind="event"][data-pk="%d"]').length === 2`, q.ID))
	assert.Equal(t, `question_text: "New?" → "Newer?"; version: 1 → 2`, p.lastText(fmt.Sprintf(`#log .entry[data-kind="event"][data-pk="%d"] .diff-badge`, q.ID)))

	// An object the page never saw has no difference to show.
	unseen := createQuestion(t, app, "Unseen?")
	patch(unseen.ID, "Seen now?")
	sel := fmt.Sprintf(`#log .entry[data-kind="event"][data-pk="%d"][data-diff="none"]`, unseen.ID)
	p.waitVisible(sel)
	assert.Equal(t, "first version seen", p.text(sel+" .diff-badge"))

	// A WebSocket patch reply is shown against the last version too.
	p.choose("#action", "patch")
	p.fill("#pk", fmt.Sprint(q.ID))
	p.fill("#field-question_text", "From the page?")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	reply := `#log .entry[data-kind="reply"][data-action="patch"][data-diff="question_text,version"]`
	p.waitVisible(reply)
	assert.Equal(t, `question_text: "Newer?" → "From the page?"; version: 2 → 3`, p.text(reply+" .diff-badge"))
}

// createQuestion creates a question of the example app over REST.
func createQuestion(t *testing.T, app *instance, text string) (q struct{ ID int }) {
	t.Helper()
	status, body := app.doREST(t, http.MethodPost, "/questions", fmt.Sprintf(`{"question_text":%q}`, text))
	require.Equal(t, http.StatusCreated, status, "%v", body)
	q.ID = int(body.(map[string]any)["id"].(float64))
	return q
}

// TestDebugPageScreenshots checks the layout from 360 px up with two
// connections and a log, and keeps the screenshots under
// debugpage/testdata up to date: when the page's files change, the test
// takes them again (under CI=true it fails instead, as they should have
// been committed with the change).
func TestDebugPageScreenshots(t *testing.T) {
	app, p := debugExample(t)
	createQuestion(t, app, "What is new?")

	p.signIn("", "alice-token")
	p.choose("#stream", "questions")
	p.choose("#action", "subscribe")
	p.choose("#sub-event", "update")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#subscriptions .sub[data-event="update"]`)
	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="list"]`)
	p.do(chromedp.Click(chromedp.CSS("#add-conn")))
	p.signIn("-b", "bob-token")
	status, body := app.doREST(t, http.MethodPatch, "/questions/1", `{"question_text":"What is newer?"}`)
	require.Equal(t, http.StatusOK, status, "%v", body)
	p.waitVisible(`#log .entry[data-kind="event"][data-diff="question_text,version"]`)
	p.do(chromedp.Click(chromedp.CSS(`#log .entry[data-kind="event"][data-diff="question_text,version"] > summary`)))
	p.choose("#action", "create")
	p.fill("#field-question_text", "Is it readable?")

	shots := map[string][]byte{}
	for _, size := range []struct{ w, h int64 }{{1440, 900}, {420, 900}, {390, 844}, {360, 740}} {
		p.do(chromedp.EmulateViewport(size.w, size.h))
		p.waitJS(fmt.Sprintf(`window.innerWidth === %d`, size.w))
		// Nothing is wider than the screen, and every control of the header,
		// the connections and the form is on it.
		var overflow struct {
			Page    int      `json:"page"`
			Outside []string `json:"outside"`
		}
		p.evaluate(`JSON.stringify({
			page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
			outside: [...document.querySelectorAll("header *, .session-head button, .cred button, .cred input, .cred select, #send, #add-conn, #transport button, #stream, #action, .sub button, .chips label")]
				.filter((e) => e.offsetParent !== null)
				.filter((e) => { const r = e.getBoundingClientRect(); return r.left < 0 || r.right > document.documentElement.clientWidth + 0.5; })
				.map((e) => (e.id || e.className || e.tagName) + " " + Math.round(e.getBoundingClientRect().right)),
		})`, &overflow)
		assert.LessOrEqual(t, overflow.Page, 0, "the page scrolls sideways at %d px", size.w)
		// Each log scrolls inside its pane, which fits on the screen.
		var logs []int
		p.evaluate(`JSON.stringify([...document.querySelectorAll(".log")].map((l) => l.closest(".session").offsetHeight))`, &logs)
		require.Len(t, logs, 2)
		for _, h := range logs {
			assert.LessOrEqual(t, h, int(size.h), "a connection's pane is taller than the screen at %d px", size.w)
		}
		assert.Empty(t, overflow.Outside, "controls outside the screen at %d px", size.w)
		if size.w == 1440 || size.w == 390 {
			name := fmt.Sprintf("debugger-%dx%d", size.w, size.h)
			shots[name+".png"] = p.screenshot()
			if size.w == 390 {
				// On a phone the connections are below the form.
				p.evaluate(`document.querySelector("#sessions").scrollIntoView(); window.scrollY > 0`, nil)
				shots[name+"-connections.png"] = p.screenshot()
				p.evaluate(`window.scrollTo(0, 0); true`, nil)
			}
		}
	}

	// At 1440 px the two connections are side by side, below 1200 px one
	// above the other.
	p.do(chromedp.EmulateViewport(1440, 900))
	p.waitJS(`(() => {
		const a = document.querySelector("#session").getBoundingClientRect();
		const b = document.querySelector("#session-b").getBoundingClientRect();
		return b.left >= a.right - 1 && Math.abs(a.top - b.top) < 1;
	})()`)

	updateScreenshots(t, shots)
}

// screenshot captures what the page's viewport shows.
func (p *debugPage) screenshot() []byte {
	p.t.Helper()
	png, err := chromedp.Run(p.ctx, chromedp.CaptureScreenshot())
	require.NoError(p.t, err)
	return png
}

// updateScreenshots writes the screenshots to debugpage/testdata when the
// page's files (or this test) changed since they were taken, as recorded
// in screenshots.sum.
func updateScreenshots(t *testing.T, shots map[string][]byte) {
	t.Helper()
	h := sha256.New()
	for _, f := range []string{"debugpage/static/index.html", "debugpage/static/app.js", "debugpage/static/app.css",
		"debugpage/static/favicon.svg", "debugpage_example_test.go"} {
		b, err := os.ReadFile(filepath.FromSlash(f))
		require.NoError(t, err)
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	sum := hex.EncodeToString(h.Sum(nil)) + "\n"
	sumPath := filepath.Join("debugpage", "testdata", "screenshots.sum")
	recorded, _ := os.ReadFile(sumPath)
	if string(recorded) == sum {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the screenshots in debugpage/testdata are older than the page: run go test -run TestDebugPageScreenshots . and commit them")
	}
	require.NoError(t, os.MkdirAll(filepath.Dir(sumPath), 0o755))
	for name, png := range shots {
		require.NoError(t, os.WriteFile(filepath.Join("debugpage", "testdata", name), png, 0o644))
	}
	require.NoError(t, os.WriteFile(sumPath, []byte(sum), 0o644))
	t.Logf("the page changed: screenshots written to debugpage/testdata")
}

func TestDebugPageCookieCredential(t *testing.T) {
	_, p := debugExample(t)
	p.choose("#cred-mode", "cookie")
	p.waitVisible("#cred-cookie")
	p.fill("#cred-cookie", "token")
	p.fill("#cred-token", "alice-token")
	// Enter in the token field signs in.
	p.do(chromedp.Focus(chromedp.CSS("#cred-token")), chromedp.KeyEvent("\r"))
	p.waitJS(`(() => {
		const c = channelsapi.connections[0];
		return c.credential === "cookie" && c.state === "open" && c.opens === 2;
	})()`)
	assert.Equal(t, "cookie alice-…", p.text("#who"))
	assert.Contains(t, evalString(p, `document.cookie`), "token=alice-token")

	// The socket was opened with the cookie: notes answer.
	p.choose("#stream", "notes")
	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="list"][data-status="200"]`)
	// So do REST requests.
	p.do(chromedp.Click(chromedp.CSS(`#transport [data-transport="rest"]`)))
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-transport="rest"][data-kind="reply"][data-status="200"]`)

	// Signing out removes the cookie.
	p.do(chromedp.Click(chromedp.CSS("#sign-out")))
	p.waitJS(`channelsapi.connections[0].credential === null && channelsapi.connections[0].state === "open" && channelsapi.connections[0].opens === 3`)
	assert.NotContains(t, evalString(p, `document.cookie`), "token=")
	assert.Equal(t, "anonymous", p.text("#who"))
}

func evalString(p *debugPage, expr string) string {
	p.t.Helper()
	var s string
	p.evaluate(expr, &s)
	return s
}

func TestDebugPageETagsAndIdempotencyKeys(t *testing.T) {
	app, p := debugExample(t)
	q := createQuestion(t, app, "Stable?")

	// Load takes the object and its ETag for the edit.
	p.choose("#stream", "questions")
	p.choose("#action", "patch")
	p.fill("#pk", fmt.Sprint(q.ID))
	p.do(chromedp.Click(chromedp.CSS("#load-object")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="retrieve"][data-etag='"v0"']`)
	p.waitJS(`document.querySelector("#if-match").value === '"v0"'`)

	// Someone else writes first: the patch on v0 fails with 412 and the
	// current object, shown against the version the page had.
	status, body := app.doREST(t, http.MethodPatch, fmt.Sprintf("/questions/%d", q.ID), `{"question_text":"Changed elsewhere?"}`)
	require.Equal(t, http.StatusOK, status, "%v", body)
	p.fill("#field-question_text", "Mine?")
	assert.Equal(t, `"v0"`, p.rawFrame().Payload["if_match"])
	p.do(chromedp.Click(chromedp.CSS("#send")))
	failed := `#log .entry[data-kind="error"][data-action="patch"][data-status="412"]`
	p.waitVisible(failed)
	assert.Equal(t, `"v1"`, p.attr(failed, "data-etag"))
	assert.Equal(t, `question_text: "Stable?" → "Changed elsewhere?"; version: 0 → 1`, p.text(failed+" .diff-badge"))
	assert.Contains(t, p.text("#result"), "412 Precondition Failed")

	// "last seen" takes the ETag of the current version: the patch passes.
	p.do(chromedp.Click(chromedp.CSS("#use-etag")))
	p.waitJS(`document.querySelector("#if-match").value === '"v1"'`)
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="patch"][data-status="200"][data-etag='"v2"']`)

	// A create sent twice with one idempotency key is written once; the
	// second reply is the first one, replayed.
	p.choose("#action", "create")
	p.fill("#field-question_text", "Once?")
	p.do(chromedp.Click(chromedp.CSS("#new-idem")))
	key := p.value("#idem-key")
	require.Regexp(t, `^[0-9a-f-]{36}$`, key)
	assert.Equal(t, key, p.rawFrame().Payload["idempotency_key"])
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="create"][data-status="201"]`)
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="create"][data-status="201"][data-replayed="true"]`)
	assert.Equal(t, "replayed", p.text(`#log .entry[data-action="create"][data-replayed="true"] .replayed`))

	// Over REST, as the Idempotency-Key header.
	p.do(chromedp.Click(chromedp.CSS(`#transport [data-transport="rest"]`)))
	p.waitJS(`document.body.dataset.transport === "rest"`)
	assert.Contains(t, p.value("#raw"), "\nIdempotency-Key: "+key+"\n")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-transport="rest"][data-kind="reply"][data-status="201"][data-replayed="true"]`)

	status, got := app.doREST(t, http.MethodGet, "/questions?question_text=Once%3F", "")
	require.Equal(t, http.StatusOK, status)
	assert.EqualValues(t, 1, got.(map[string]any)["count"], "written once")
}
