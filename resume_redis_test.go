package channelsapi_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi"
	"github.com/channelsapi/channelsapi/internal/redistest"
)

// TestRedisCutFilledFromHistory: the connections of both instances to
// Redis are cut (CLIENT KILL) while a writer writes 200 rows: no subscriber
// is closed, and each receives every event once, in order of offset,
// since the shared history fills what the instances missed.
func TestRedisCutFilledFromHistory(t *testing.T) {
	r := redistest.Start(t)
	a, b := redisPair(t, r.URL)
	ca, cb := a.dial(t, nil), b.dial(t, nil)
	ca.subscribe("create", nil)
	cb.subscribe("create", nil)
	rdb := redisClient(t, r.URL)

	const rows = 200
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range rows {
			if i%40 == 20 {
				// Both instances' subscription connections, mid-stream.
				assert.NoError(t, rdb.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err())
			}
			srv := a
			if i%2 == 1 {
				srv = b
			}
			if !assert.NoError(t, srv.DB.Create(&TestModel{Name: fmt.Sprintf("row %d", i)}).Error) {
				return
			}
		}
	})
	for _, c := range []*wsClient{ca, cb} {
		seen := map[string]bool{}
		last := uint64(0)
		for range rows {
			f := c.readFrame()
			require.Equal(t, "create", f.Payload.Action, "%s", f.Payload.Data)
			require.Greater(t, f.Payload.Offset, last, "in order, once")
			last = f.Payload.Offset
			require.False(t, seen[string(f.Payload.Data)], "twice: %s", f.Payload.Data)
			seen[string(f.Payload.Data)] = true
		}
		assert.EqualValues(t, rows, last, "one offset per create, none skipped")
		c.assertAlive()
	}
	wg.Wait()
}

// TestRedisRestartLosesHistory: a Redis that restarts without persistence
// loses the shared history: the subscribers are closed with 1013, and a
// client that resumes from before is told "recovered": false, on either
// instance; the position it is given works for the next resume.
func TestRedisRestartLosesHistory(t *testing.T) {
	r := redistest.Start(t)
	a, b := redisPair(t, r.URL)
	ca := a.dial(t, nil)
	at := ca.listPosition()
	ca.subscribe("create", nil)
	status, _ := b.doREST(t, http.MethodPost, "/testmodel", `{"name":"before"}`)
	require.Equal(t, http.StatusCreated, status)
	assert.EqualValues(t, at.Offset+1, ca.readFrame().Payload.Offset)

	r.Stop()
	assert.Equal(t, 1013, ca.closeCode())
	r.Start()
	receivesAgain(t, a, b, "testmodel", "name")
	receivesAgain(t, b, a, "testmodel", "name")
	for _, srv := range []*testServer{a, b} {
		c := srv.dial(t, nil)
		reply := c.subscribeSince("create", channelsapi.Position{Epoch: at.Epoch, Offset: at.Offset + 1})
		assert.False(t, reply.Recovered)
		assert.NotEqual(t, at.Epoch, reply.Position.Epoch, "a new epoch")
		status, _ := b.doREST(t, http.MethodPost, "/testmodel", `{"name":"after"}`)
		require.Equal(t, http.StatusCreated, status)
		f := c.readFrame()
		assert.Equal(t, reply.Position.Offset+1, f.Payload.Offset, "live from the position the reply gave")
	}
}
