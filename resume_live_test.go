package channelsapi_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi"
)

// TestResumeMatchesLive: for each subscribe action, a client that
// disconnects, misses 200 writes (some it may see, some not) and resumes
// with since, on the same instance or on another, receives exactly the
// frames, byte for byte and in order, that a client subscribed the same way
// received live meanwhile; then live frames follow with no gap.
func TestResumeMatchesLive(t *testing.T) {
	setup := func(api *channelsapi.API) { require.NoError(t, channelsapi.Add(api, scopedNotes(false, nil))) }
	t.Run("one instance", func(t *testing.T) {
		srv := newScopedServer(t, openDB(t, &scopedNote{}), setup)
		runResumeMatchesLive(t, srv, srv)
	})
	t.Run("two instances over Redis", func(t *testing.T) {
		url := redisURL(t)
		dbs := openShared(t, 2, &scopedNote{})
		prefix := testPrefix()
		a := newScopedServer(t, dbs[0], setup, withRedis(t, url, prefix))
		b := newScopedServer(t, dbs[1], setup, withRedis(t, url, prefix))
		runResumeMatchesLive(t, a, b)
	})
}

// noteFrame is what the test reads of a frame on "notes".
type noteFrame struct {
	raw     []byte
	action  string
	status  int
	data    scopedNote
	offset  uint64
	request json.RawMessage
	reply   json.RawMessage // the data of a reply
}

func readNote(tb testing.TB, c *wsClient) noteFrame {
	tb.Helper()
	b := c.readRaw()
	var f struct {
		Payload struct {
			Action         string          `json:"action"`
			Data           json.RawMessage `json:"data"`
			Offset         uint64          `json:"offset"`
			ResponseStatus int             `json:"response_status"`
			RequestID      json.RawMessage `json:"request_id"`
		} `json:"payload"`
	}
	require.NoError(tb, json.Unmarshal(b, &f), "frame %s", b)
	nf := noteFrame{raw: b, action: f.Payload.Action, status: f.Payload.ResponseStatus, offset: f.Payload.Offset, request: f.Payload.RequestID, reply: f.Payload.Data}
	_ = json.Unmarshal(f.Payload.Data, &nf.data)
	return nf
}

func runResumeMatchesLive(t *testing.T, a, b *testServer) {
	alice := scopedNote{Owner: "alice", Text: "watched"}
	require.NoError(t, a.DB.Create(&alice).Error)
	subscriptions := []struct {
		name    string
		payload func(since *channelsapi.Position) map[string]any
		// sentinel tells the frame a writer's sentinel makes.
		sentinel func(f noteFrame, text string) bool
	}{
		{"subscribe create", func(since *channelsapi.Position) map[string]any {
			return map[string]any{"action": "subscribe", "request_id": "g", "data": withSince(map[string]any{"action": "create"}, since)}
		}, func(f noteFrame, text string) bool { return f.action == "create" && f.data.Text == text }},
		{"subscribe update", func(since *channelsapi.Position) map[string]any {
			return map[string]any{"action": "subscribe", "request_id": "u", "data": withSince(map[string]any{"action": "update"}, since)}
		}, func(f noteFrame, text string) bool {
			return f.action == "update" && f.data.ID == alice.ID && f.data.Text == text
		}},
		{"subscribe_instance", func(since *channelsapi.Position) map[string]any {
			return map[string]any{"action": "subscribe_instance", "request_id": "i", "pk": alice.ID, "data": withSince(map[string]any{}, since)}
		}, func(f noteFrame, text string) bool {
			return f.action == "update" && f.data.ID == alice.ID && f.data.Text == text
		}},
		{"subscribe_list", func(since *channelsapi.Position) map[string]any {
			return map[string]any{"action": "subscribe_list", "request_id": "q", "data": withSince(map[string]any{}, since)}
		}, func(f noteFrame, text string) bool {
			return f.action == "update" && f.data.ID == alice.ID && f.data.Text == text
		}},
	}
	// sentinel writes what every subscription sees last: a create of
	// alice's, then an update of the watched note.
	sentinel := func(text string) {
		require.NoError(t, a.DB.Create(&scopedNote{Owner: "alice", Text: text}).Error)
		require.NoError(t, a.DB.Model(&alice).Update("text", text).Error)
	}
	for _, sub := range subscriptions {
		t.Run(sub.name, func(t *testing.T) {
			live := a.dialUser(t, "alice")
			live.send("notes", sub.payload(nil))
			reply := readNote(t, live)
			require.Less(t, reply.status, 300, "%s", reply.raw)
			away := a.dialUser(t, "alice")
			away.send("notes", map[string]any{"action": "list", "request_id": "l"})
			var list struct {
				Payload struct {
					Meta struct{ Position channelsapi.Position } `json:"meta"`
				} `json:"payload"`
			}
			require.NoError(t, json.Unmarshal(away.readRaw(), &list))
			at := list.Payload.Meta.Position
			away.send("notes", sub.payload(&at))
			require.Less(t, readNote(t, away).status, 300)

			// Both see the first sentinel; away then leaves at the last
			// offset it received.
			first := "first " + sub.name
			sentinel(first)
			var last uint64
			for _, c := range []*wsClient{live, away} {
				for {
					f := readNote(t, c)
					last = max(last, f.offset)
					if sub.sentinel(f, first) {
						break
					}
				}
			}
			require.NoError(t, away.conn.Close())

			missedWrites(t, a, alice.ID, 200)

			back := b.dialUser(t, "alice")
			back.send("notes", sub.payload(&channelsapi.Position{Epoch: at.Epoch, Offset: last}))
			reply = readNote(t, back)
			require.Less(t, reply.status, 300, "%s", reply.raw)
			var r struct {
				Recovered bool
				Position  channelsapi.Position
			}
			require.NoError(t, json.Unmarshal(reply.reply, &r))
			require.True(t, r.Recovered, "%s", reply.raw)

			final := "final " + sub.name
			sentinel(final)
			var want, got []string
			for _, reader := range []struct {
				c      *wsClient
				frames *[]string
			}{{live, &want}, {back, &got}} {
				for {
					f := readNote(t, reader.c)
					*reader.frames = append(*reader.frames, string(f.raw))
					if sub.sentinel(f, final) {
						break
					}
				}
			}
			assert.Greater(t, len(want), 20, "the writes reached the subscription")
			assert.Equal(t, want, got)
			live.assertAliveOn("notes")
			back.assertAliveOn("notes")
		})
	}
}

// missedWrites writes n notes' worth of changes: alice's and bob's,
// creates, updates, moves between them and deletes, and updates of the
// watched note.
func missedWrites(t *testing.T, srv *testServer, watched uint, n int) {
	var mine, theirs []scopedNote
	for i := range n {
		switch i % 8 {
		case 0, 1:
			note := scopedNote{Owner: "alice", Text: fmt.Sprintf("a%d", i)}
			require.NoError(t, srv.DB.Create(&note).Error)
			mine = append(mine, note)
		case 2:
			note := scopedNote{Owner: "bob", Text: fmt.Sprintf("b%d", i)}
			require.NoError(t, srv.DB.Create(&note).Error)
			theirs = append(theirs, note)
		case 3:
			require.NoError(t, srv.DB.Model(&scopedNote{ID: watched}).Update("text", fmt.Sprintf("w%d", i)).Error)
		case 4: // alice's note leaves her sight
			note := mine[0]
			mine = mine[1:]
			require.NoError(t, srv.DB.Model(&note).Update("owner", "bob").Error)
			theirs = append(theirs, note)
		case 5: // bob's note enters it
			note := theirs[0]
			theirs = theirs[1:]
			require.NoError(t, srv.DB.Model(&note).Updates(map[string]any{"owner": "alice", "text": fmt.Sprintf("moved%d", i)}).Error)
			mine = append(mine, note)
		case 6:
			require.NoError(t, srv.DB.Delete(&mine[len(mine)-1]).Error)
			mine = mine[:len(mine)-1]
		case 7:
			require.NoError(t, srv.DB.Model(&theirs[0]).Update("text", fmt.Sprintf("b%d", i)).Error)
		}
	}
}

// withSince adds since to data, when there is one.
func withSince(data map[string]any, since *channelsapi.Position) map[string]any {
	if since != nil {
		data["since"] = since
	}
	return data
}
