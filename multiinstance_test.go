package channelsapi_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// instance is a process of the example app.
type instance struct {
	*testServer
	cmd *exec.Cmd
	log string // its output
}

// startInstance runs the example binary on a free port of 127.0.0.1 and
// waits until it serves; it is stopped (SIGTERM, then SIGKILL) and waited for
// at cleanup, and its output is logged when the test failed.
func startInstance(t *testing.T, bin string, args ...string) *instance {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logPath := filepath.Join(t.TempDir(), "instance.log")
	out, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.Command(bin, append([]string{"-addr", addr}, args...)...)
	cmd.Env = append(os.Environ(), "GIN_MODE=release")
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	in := &instance{
		testServer: &testServer{URL: "http://" + addr + "/api", WSURL: "ws://" + addr + "/ws"},
		cmd:        cmd,
		log:        logPath,
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("output of the instance on %s:\n%s", addr, b)
		}
	})
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.URL+"/questions", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "the instance on %s does not serve", addr)
	return in
}

// summary is what the multi-instance test compares of an event.
func summary(p map[string]any) string {
	data, _ := p["data"].(map[string]any)
	return fmt.Sprintf("%v %v %v", p["action"], p["pk"], data["question_text"])
}

// TestMultiInstance runs two processes of the example app on one PostgreSQL
// database and one Redis server, with WebSocket clients on each. Writes are
// made on both, over REST and over the WebSocket, at the same time; every
// client receives every committed change exactly once, each object's changes
// in order, and the stream's changes in the same order as every other
// client. Then Redis is restarted: every client is closed with 1013, writes
// go on succeeding, and once Redis is back clients that reconnect and
// resubscribe receive the changes of both instances again.
func TestMultiInstance(t *testing.T) {
	pg, rd := postgresDSN(), os.Getenv(envRedis)
	if pg == "" || rd == "" {
		t.Skip("SKIP: set CHANNELSAPI_TEST_POSTGRES and CHANNELSAPI_TEST_REDIS to run the multi-instance test (two example processes on PostgreSQL and Redis)")
	}
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	r := startRedis(t) // of its own, to restart it
	bin := filepath.Join(t.TempDir(), "example")
	build := exec.Command("go", "build", "-o", bin, "./example")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build the example: %s", out)
	args := []string{"-db", postgresSchema(t, pg), "-redis", r.URL}
	a := startInstance(t, bin, args...) // migrates the schema first
	b := startInstance(t, bin, args...)

	subscribe := func(c *wsClient) {
		for _, e := range []string{"create", "update", "delete"} {
			got := c.request("questions", map[string]any{"action": "subscribe", "data": map[string]any{"action": e}, "request_id": e})
			require.EqualValues(t, 200, got["response_status"], "%v", got)
		}
	}
	readers := []*wsClient{a.dial(t, nil), a.dial(t, nil), b.dial(t, nil), b.dial(t, nil)}
	for _, c := range readers {
		subscribe(c)
	}

	rest := func(s *instance) objectWriter { return restWriter(t, s.testServer, "questions", "question_text") }
	socket := func(s *instance) objectWriter { return socketWriter(t, s.testServer, "questions", "question_text") }
	writers := map[string]objectWriter{"rest-a": rest(a), "rest-b": rest(b), "ws-a": socket(a), "ws-b": socket(b)}
	const objects = 10
	var mu sync.Mutex
	want := map[float64][]string{}
	var wg sync.WaitGroup
	for name, w := range writers {
		wg.Go(func() {
			for i := range objects {
				n := fmt.Sprintf("%s-%d", name, i)
				id := w.create(n + "-v0")
				w.update(id, n+"-v1")
				w.update(id, n+"-v2")
				w.remove(id)
				mu.Lock()
				want[id] = []string{
					fmt.Sprintf("create %v %s-v0", id, n), fmt.Sprintf("update %v %s-v1", id, n),
					fmt.Sprintf("update %v %s-v2", id, n), fmt.Sprintf("delete %v %s-v2", id, n),
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	total := len(writers) * objects * 4
	var first []string
	for i, c := range readers {
		got := make([]string, total)
		perObject := map[float64][]string{}
		for j := range got {
			p := c.readPayload("questions")
			got[j] = summary(p)
			pk, _ := p["pk"].(float64)
			perObject[pk] = append(perObject[pk], got[j])
		}
		assert.Equal(t, want, perObject, "reader %d: each change once, each object's in order", i)
		if i == 0 {
			first = got
		} else {
			assert.Equal(t, first, got, "reader %d sees the stream in the same order as reader 0", i)
		}
	}
	fences := map[string]bool{}
	for name, s := range map[string]*instance{"a": a, "b": b} {
		id := rest(s).create("fence-" + name)
		fences[fmt.Sprintf("create %v fence-%s", id, name)] = true
	}
	for i, c := range readers {
		got := map[string]bool{summary(c.readPayload("questions")): true, summary(c.readPayload("questions")): true}
		assert.Equal(t, fences, got, "reader %d: no duplicate before the last changes", i)
	}

	// Redis restarts: clients resync, writes go on.
	r.stop()
	for i, c := range readers {
		assert.Equal(t, 1013, c.closeCode(), "reader %d is told to resync", i)
	}
	rest(a).create("while Redis is down")
	rest(b).create("while Redis is down")
	r.start()
	receivesAgain(t, a.testServer, b.testServer, "questions", "question_text")
	receivesAgain(t, b.testServer, a.testServer, "questions", "question_text")
	receivesAgain(t, a.testServer, a.testServer, "questions", "question_text")
}

// TestMultiInstancePeerKilled runs two processes of the example app and
// kills one with SIGKILL, as a crash would: it may have died with changes
// committed and still queued for Redis, so the other instance closes its
// subscribers with 1013, reason "broker gap", once the dead instance missed
// three heartbeats (one second each, the default): 2 to 3 seconds after the
// kill. They load their state again.
func TestMultiInstancePeerKilled(t *testing.T) {
	if os.Getenv(envRedis) == "" {
		t.Skip("SKIP: set CHANNELSAPI_TEST_REDIS to run the multi-instance tests (example processes on Redis)")
	}
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	r := startRedis(t) // of its own: the example uses the default prefix
	bin := filepath.Join(t.TempDir(), "example")
	build := exec.Command("go", "build", "-o", bin, "./example")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build the example: %s", out)
	db := filepath.Join(t.TempDir(), "polls.db")
	if pg := postgresDSN(); pg != "" {
		db = postgresSchema(t, pg)
	}
	args := []string{"-db", db, "-redis", r.URL}
	a := startInstance(t, bin, args...) // migrates the schema first
	b := startInstance(t, bin, args...)

	c := a.dial(t, nil)
	got := c.request("questions", map[string]any{"action": "subscribe", "data": map[string]any{"action": "create"}, "request_id": 1})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	// a has heard b: b's first heartbeat went out before its first change.
	id := restWriter(t, b.testServer, "questions", "question_text").create("from b")
	assert.Equal(t, fmt.Sprintf("create %v from b", id), summary(c.readPayload("questions")))

	killed := time.Now()
	require.NoError(t, b.cmd.Process.Kill())
	code, reason := c.closeFrame()
	elapsed := time.Since(killed)
	t.Logf("a's subscriber closed %v after b was killed", elapsed.Round(time.Millisecond))
	assert.Equal(t, 1013, code)
	assert.Equal(t, "broker gap", reason)
	assert.Greater(t, elapsed, 2*time.Second, "not before b missed its heartbeats")
	assert.Less(t, elapsed, 5*time.Second, "within three heartbeats of b, and some slack")
	receivesAgain(t, a.testServer, a.testServer, "questions", "question_text")
}
