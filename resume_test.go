package channelsapi_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi"
)

// rawFrame is a frame as sent, offsets and positions included.
type rawFrame struct {
	Stream  string `json:"stream"`
	Payload struct {
		Action         string          `json:"action"`
		PK             json.RawMessage `json:"pk"`
		Data           json.RawMessage `json:"data"`
		Offset         uint64          `json:"offset"`
		ResponseStatus int             `json:"response_status"`
		RequestID      json.RawMessage `json:"request_id"`
		Meta           struct {
			Position channelsapi.Position `json:"position"`
		} `json:"meta"`
	} `json:"payload"`
}

func (c *wsClient) readFrame() rawFrame {
	c.tb.Helper()
	var f rawFrame
	b := c.readRaw()
	require.NoError(c.tb, json.Unmarshal(b, &f), "frame %s", b)
	return f
}

// listPosition lists testmodel and returns the position of the reply.
func (c *wsClient) listPosition() channelsapi.Position {
	c.tb.Helper()
	c.send("testmodel", map[string]any{"action": "list", "request_id": "l"})
	f := c.readFrame()
	require.Equal(c.tb, 200, f.Payload.ResponseStatus)
	require.NotEmpty(c.tb, f.Payload.Meta.Position.Epoch)
	return f.Payload.Meta.Position
}

type resumeReply struct {
	Action    string               `json:"action"`
	Recovered bool                 `json:"recovered"`
	Position  channelsapi.Position `json:"position"`
}

// subscribeSince subscribes to event with since and returns the reply's data.
func (c *wsClient) subscribeSince(event string, since channelsapi.Position) resumeReply {
	c.tb.Helper()
	c.send("testmodel", map[string]any{"action": "subscribe", "request_id": "s", "data": map[string]any{"action": event, "since": since}})
	f := c.readFrame()
	require.Equal(c.tb, "subscribe", f.Payload.Action, "reply %s", f.Payload.Data)
	require.Equal(c.tb, 200, f.Payload.ResponseStatus, "reply %s", f.Payload.Data)
	var r resumeReply
	require.NoError(c.tb, json.Unmarshal(f.Payload.Data, &r))
	return r
}

// TestResumeReplaysWhatWasMissed: a client that was away resumes from the
// position of its last list and receives exactly the events it missed, in
// order of offset, then the live ones with no gap.
func TestResumeReplaysWhatWasMissed(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "before")
	first := srv.dial(t, nil)
	at := first.listPosition()
	assert.EqualValues(t, 1, at.Offset, "one create so far")
	require.NoError(t, first.conn.Close())

	// 200 writes while nobody listens: creates, and updates the create
	// subscription must not see.
	for i := range 100 {
		row := TestModel{Name: fmt.Sprintf("away-%d", i)}
		require.NoError(t, srv.DB.Create(&row).Error)
		require.NoError(t, srv.DB.Model(&row).Update("name", row.Name+"!").Error)
	}

	ws := srv.dial(t, nil)
	reply := ws.subscribeSince("create", at)
	assert.True(t, reply.Recovered)
	assert.Equal(t, channelsapi.Position{Epoch: at.Epoch, Offset: 201}, reply.Position)
	for i := range 100 {
		f := ws.readFrame()
		require.Equal(t, "create", f.Payload.Action)
		require.EqualValues(t, 2+2*i, f.Payload.Offset, "create %d", i)
		require.JSONEq(t, fmt.Sprintf(`{"id":%d,"name":"away-%d"}`, i+2, i), string(f.Payload.Data))
	}
	// Live again, straight after the replay.
	seed(t, srv.DB, "live")
	f := ws.readFrame()
	assert.Equal(t, "create", f.Payload.Action)
	assert.EqualValues(t, 202, f.Payload.Offset)
	assert.JSONEq(t, `{"id":102,"name":"live"}`, string(f.Payload.Data))
}

// TestResumeThatCannotRecover: a position of another epoch, or one the
// history no longer reaches, is answered "recovered": false with the
// position live events start after; nothing is replayed.
func TestResumeThatCannotRecover(t *testing.T) {
	srv := testModelServer(t, channelsapi.WithHistory(10, 0))
	seed(t, srv.DB, names(30)...)
	ws := srv.dial(t, nil)
	at := ws.listPosition()
	require.EqualValues(t, 30, at.Offset)

	for _, since := range []channelsapi.Position{
		{Epoch: "another", Offset: 29}, // a restart since
		{Epoch: at.Epoch, Offset: 5},   // older than the history
		{Epoch: at.Epoch, Offset: 31},  // never reached
	} {
		reply := ws.subscribeSince("create", since)
		assert.False(t, reply.Recovered, "since %v", since)
		assert.Equal(t, at, reply.Position, "since %v", since)
	}
	reply := ws.subscribeSince("create", channelsapi.Position{Epoch: at.Epoch, Offset: 25})
	assert.True(t, reply.Recovered, "the last 10 are held")
	for i := range 5 {
		assert.EqualValues(t, 26+i, ws.readFrame().Payload.Offset)
	}
	seed(t, srv.DB, "live")
	assert.EqualValues(t, 31, ws.readFrame().Payload.Offset, "one event, not one per subscribe")
	ws.assertAlive()
}

// TestResumeBadSince: a since that is not a position is a 400 that names
// it, and the connection goes on.
func TestResumeBadSince(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	for _, since := range []any{"1", 3, map[string]any{"epoch": "e"}, map[string]any{"offset": 1}, map[string]any{"epoch": 1, "offset": 1}, map[string]any{"epoch": "e", "offset": -1}} {
		got := ws.request("testmodel", map[string]any{"action": "subscribe", "data": map[string]any{"action": "create", "since": since}})
		assert.EqualValues(t, 400, got["response_status"], "since %v", since)
		assert.Equal(t, []any{map[string]any{"since": []any{`Must be a position: {"epoch": "<string>", "offset": <integer>}.`}}}, got["errors"], "since %v", since)
	}
	ws.assertAlive()
}

// TestListThenSubscribeNoGapNoDuplicate: under four writers, a list and a
// subscribe since its position hold every row once: the rows the list
// read, then the creates after it, each id once, none missing.
func TestListThenSubscribeNoGapNoDuplicate(t *testing.T) {
	// Writers go flat out: the queue is sized so that the reader never
	// falls behind it (slow clients are TestSlowClientClosedWith1013's).
	srv := testModelServer(t, channelsapi.WithPageSize(100000, 100000), channelsapi.WithQueueSize(1<<20), channelsapi.WithHistory(1<<20, 0))
	const writers, reps = 4, 100
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range 1000 { // the list below reads every row in one page
				select {
				case <-stop:
					return
				default:
				}
				if !assert.NoError(t, srv.DB.Create(&TestModel{Name: fmt.Sprintf("w%d-%d", w, i)}).Error) {
					return
				}
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for rep := range reps {
		ws := srv.dial(t, nil)
		ws.send("testmodel", map[string]any{"action": "list", "request_id": "l"})
		f := ws.readFrame()
		require.Equal(t, 200, f.Payload.ResponseStatus)
		var rows []TestModel
		require.NoError(t, json.Unmarshal(f.Payload.Data, &rows))
		seen := map[uint]bool{}
		for _, r := range rows {
			seen[r.ID] = true
		}
		reply := ws.subscribeSince("create", f.Payload.Meta.Position)
		require.True(t, reply.Recovered, "rep %d", rep)
		// A sentinel written now is the last create to wait for.
		sentinel := TestModel{Name: fmt.Sprintf("sentinel-%d", rep)}
		require.NoError(t, srv.DB.Create(&sentinel).Error)
		next := f.Payload.Meta.Position.Offset + 1
		receive := func() uint {
			e := ws.readFrame()
			require.Equal(t, next, e.Payload.Offset, "rep %d: offsets follow the list's position with no gap", rep)
			next++
			var row TestModel
			require.NoError(t, json.Unmarshal(e.Payload.Data, &row))
			if !outboxAtLeastOnce() {
				require.False(t, seen[row.ID], "rep %d: row %d listed and sent", rep, row.ID)
			}
			seen[row.ID] = true
			return row.ID
		}
		for receive() != sentinel.ID {
		}
		// Every row below the sentinel is listed or comes: on PostgreSQL
		// an id taken before the sentinel's may commit after it, and its
		// event then follows the sentinel's (a row that never comes fails
		// the read).
		var ids []uint
		require.NoError(t, srv.DB.Model(&TestModel{}).Where("id <= ?", sentinel.ID).Pluck("id", &ids).Error)
		missing := map[uint]bool{}
		for _, id := range ids {
			if !seen[id] {
				missing[id] = true
			}
		}
		for len(missing) > 0 {
			delete(missing, receive())
		}
		require.NoError(t, ws.conn.Close())
	}
}

// TestResumeBeyondTheQueue: a replay longer than the connection's queue is
// written as the socket drains, not taken for a slow client.
func TestResumeBeyondTheQueue(t *testing.T) {
	srv := testModelServer(t, channelsapi.WithQueueSize(8))
	ws := srv.dial(t, nil)
	at := ws.listPosition()
	seed(t, srv.DB, names(100)...)
	reply := ws.subscribeSince("create", at)
	require.True(t, reply.Recovered)
	for i := range 100 {
		require.EqualValues(t, at.Offset+1+uint64(i), ws.readFrame().Payload.Offset)
	}
	ws.assertAlive()
}
