package channelsapi_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// TestResumeUnderDisconnects: a client keeps a copy of a filtered
// collection (subscribe_list with a snapshot, then events) while four
// writers make 1,000 writes; its connection is cut 20 times, and each time
// it reconnects, to any instance, and resumes from the last offset it
// received. At the end its copy equals the database's rows.
func TestResumeUnderDisconnects(t *testing.T) {
	setup := func(api *channelsapi.API, _ *gorm.DB) {
		vs := pollQuestions()
		ownQuestions(&vs)
		require.NoError(t, channelsapi.Add(api, vs))
	}
	// Four writers flat out: large queues, as this is no test of slow
	// clients, and a history that holds what a cut connection misses.
	opts := []channelsapi.Option{channelsapi.WithQueueSize(1 << 14), channelsapi.WithHistory(100000, 0)}
	t.Run("one instance", func(t *testing.T) {
		srv := newServerOn(t, openDB(t, &pollQuestion{}), setup, opts...)
		runResumeUnderDisconnects(t, []*testServer{srv})
	})
	t.Run("two instances over Redis", func(t *testing.T) {
		url := redisURL(t)
		dbs := openShared(t, 2, &pollQuestion{})
		prefix := testPrefix()
		a := newServerOn(t, dbs[0], setup, append(opts, withRedis(t, url, prefix))...)
		b := newServerOn(t, dbs[1], setup, append(opts, withRedis(t, url, prefix))...)
		runResumeUnderDisconnects(t, []*testServer{a, b})
	})
}

func runResumeUnderDisconnects(t *testing.T, servers []*testServer) {
	const writers, writes, cuts = 4, 250, 20
	filter := map[string]any{"votes__gte": 5}
	db := servers[0].DB
	seedQuestions(t, db)

	var wg sync.WaitGroup
	var progress sync.WaitGroup
	progress.Add(writers)
	start := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			srv := servers[w%len(servers)]
			<-start
			for i := range writes {
				if i == writes/10 {
					progress.Done()
				}
				var err error
				id := uint(1 + rng.IntN(40))
				if len(servers) > 1 {
					// Each writer changes rows of its own: two instances
					// publish the writes of one row in commit order only
					// when one instance makes them (README, Running
					// several instances).
					id = uint(1 + w + writers*rng.IntN(10))
				}
				switch rng.IntN(5) {
				case 0:
					err = srv.DB.Create(&pollQuestion{QuestionText: fmt.Sprintf("w%d-%d", w, i), Votes: rng.IntN(10), Owner: "alice", PubDate: pollBase}).Error
				case 1:
					err = srv.DB.Where("id = ?", id).Delete(&pollQuestion{}).Error
				default: // moves rows in and out of the filter
					err = srv.DB.Model(&pollQuestion{}).Where("id = ?", id).Update("votes", rng.IntN(10)).Error
				}
				if !assert.NoError(t, err) {
					return
				}
			}
		})
	}

	// The client's copy, by id, and the position it has reached.
	view := map[float64]map[string]any{}
	var at channelsapi.Position
	apply := func(p map[string]any) {
		data := p["data"].(map[string]any)
		switch p["action"] {
		case "create", "update":
			view[data["id"].(float64)] = data
		case "delete":
			delete(view, data["id"].(float64))
		}
	}
	// read consumes the frames of c until it is cut (an error), or, when
	// until is set, until an event at or beyond until.
	read := func(c *wsClient, until uint64) {
		for {
			if err := c.conn.SetReadDeadline(time.Now().Add(readTimeout)); err != nil {
				return
			}
			_, b, err := c.conn.ReadMessage()
			if err != nil {
				require.True(t, until == 0, "reading up to %d: %v", until, err)
				return
			}
			var f struct{ Payload map[string]any }
			require.NoError(t, json.Unmarshal(b, &f))
			offset := uint64(f.Payload["offset"].(float64))
			// A filtered subscription skips offsets, never goes back.
			require.Greater(t, offset, at.Offset, "none twice: %s", b)
			at.Offset = offset
			apply(f.Payload)
			if until != 0 && offset >= until {
				return
			}
		}
	}
	subscribe := func(srv *testServer, since *channelsapi.Position) *wsClient {
		c := srv.dial(t, asUser("root"))
		data := map[string]any{"snapshot": true, "page_size": 1000}
		for k, v := range filter {
			data[k] = v
		}
		if since != nil {
			data["since"] = since
		}
		c.send("questions", map[string]any{"action": "subscribe_list", "request_id": "q", "data": data})
		var reply struct {
			Payload struct {
				Data struct {
					Results   []map[string]any     `json:"results"`
					Recovered *bool                `json:"recovered"`
					Position  channelsapi.Position `json:"position"`
				} `json:"data"`
				Status int `json:"response_status"`
			} `json:"payload"`
		}
		b := c.readRaw()
		require.NoError(t, json.Unmarshal(b, &reply))
		require.Equal(t, http.StatusOK, reply.Payload.Status, "%s", b)
		d := reply.Payload.Data
		if since != nil {
			require.NotNil(t, d.Recovered, "%s", b)
			require.True(t, *d.Recovered, "the history holds every write: %s", b)
			require.Nil(t, d.Results, "a recovered subscription sends no snapshot")
			// The replay follows, up to d.Position, then live events.
			require.GreaterOrEqual(t, d.Position.Offset, since.Offset)
		} else {
			for _, row := range d.Results {
				view[row["id"].(float64)] = row
			}
			at = d.Position
		}
		return c
	}

	c := subscribe(servers[0], nil)
	close(start)
	progress.Wait() // the writers are under way
	for cut := range cuts {
		// Cut without a close handshake, as a network does, after
		// reading a little.
		go func() {
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			_ = c.conn.UnderlyingConn().Close()
		}()
		read(c, 0)
		since := at
		c = subscribe(servers[(cut+1)%len(servers)], &since)
	}
	wg.Wait()
	// A sentinel ends the stream: every write is before it.
	sentinel := pollQuestion{QuestionText: "sentinel", Votes: 9, Owner: "alice", PubDate: pollBase}
	require.NoError(t, db.Create(&sentinel).Error)
	for {
		read(c, at.Offset+1)
		if _, ok := view[float64(sentinel.ID)]; ok {
			break
		}
	}

	var rows []pollQuestion
	require.NoError(t, db.Where("votes >= ?", 5).Find(&rows).Error)
	want := map[float64]map[string]any{}
	for _, r := range rows {
		want[float64(r.ID)] = jsonOf(t, r).(map[string]any)
	}
	assert.Equal(t, want, view)
}
