package channelsapi_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
	"github.com/channelsapi/channelsapi/internal/outboxtest"
)

// withOutbox is the outbox as the tests run it: polled often, so that
// what only the poll finds arrives soon.
func withOutbox() channelsapi.Option {
	return channelsapi.WithOutbox(channelsapi.OutboxConfig{PollInterval: 100 * time.Millisecond})
}

// outboxRows counts the rows of the outbox.
func outboxRows(t *testing.T, db *gorm.DB) int64 {
	var n int64
	require.NoError(t, db.Raw(`SELECT COUNT(*) FROM channelsapi_outbox`).Row().Scan(&n))
	return n
}

// TestOutboxRollbackWritesNothing: the outbox rows of a transaction commit
// or roll back with it, savepoints included. 400 writes rolled back leave
// no row and no offset taken; of a transaction that rolls back to a
// savepoint, only the changes kept are numbered, and their events carry
// those numbers.
func TestOutboxRollbackWritesNothing(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, db.AutoMigrate(&outboxtest.Item{}))
		require.NoError(t, outboxtest.Add(api))
	}, quietLog(), withOutbox())
	db := srv.DB
	require.NoError(t, db.Create(&outboxtest.Item{Name: "kept"}).Error)
	require.Equal(t, uint64(1), outboxPosition(t, db).Offset)
	sub := dialCrash(t, srv.WSURL, nil, 1)
	for range 2 {
		ev, err := sub.next()
		require.NoError(t, err)
		require.Nil(t, ev)
	}
	rollback := errors.New("roll back")
	for i := range 100 {
		err := db.Transaction(func(tx *gorm.DB) error {
			item := outboxtest.Item{Name: fmt.Sprintf("gone-%d", i)}
			if err := tx.Create(&item).Error; err != nil {
				return err
			}
			if err := tx.Model(&item).Update("n", 7).Error; err != nil {
				return err
			}
			if err := tx.Model(&outboxtest.Item{ID: 1}).Update("n", i).Error; err != nil {
				return err
			}
			if err := tx.Delete(&item).Error; err != nil {
				return err
			}
			return rollback
		})
		require.ErrorIs(t, err, rollback)
	}
	assert.Equal(t, uint64(1), outboxPosition(t, db).Offset)
	assert.EqualValues(t, 1, outboxRows(t, db), "only the create committed before")

	// A savepoint rolled back: the nested create is not numbered.
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&outboxtest.Item{Name: "outer"}).Error; err != nil {
			return err
		}
		_ = tx.Transaction(func(nested *gorm.DB) error {
			if err := nested.Create(&outboxtest.Item{Name: "inner"}).Error; err != nil {
				return err
			}
			return rollback
		})
		return tx.Model(&outboxtest.Item{ID: 1}).Update("n", 99).Error
	}))
	assert.Equal(t, uint64(3), outboxPosition(t, db).Offset)
	assert.EqualValues(t, 3, outboxRows(t, db))
	evs := sub.until(3, 1)
	require.Len(t, evs, 2)
	assert.Equal(t, "create", evs[0].action)
	assert.Equal(t, "outer", evs[0].item.Name)
	assert.Equal(t, uint64(2), evs[0].offset)
	assert.Equal(t, "update", evs[1].action)
	assert.Equal(t, 99, evs[1].item.N)
	assert.Equal(t, uint64(3), evs[1].offset)
}

// TestOutboxQueueOverflowReadsBack: with the outbox, a stream whose
// delivery queue overflows reads what it dropped back from the outbox:
// its subscribers receive every event, in order, and are not closed.
func TestOutboxQueueOverflowReadsBack(t *testing.T) {
	gate := newDeliveryGate()
	srv := newScopedServer(t, openDB(t, &scopedNote{}), func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, scopedNotes(false, gate)))
	}, quietLog(), channelsapi.WithDeliveryQueueSize(4), withOutbox())
	alice := srv.dialUser(t, "alice")
	alice.subscribeTo("notes", "create")
	release := stallDelivery(t, srv, gate)
	var texts []string
	for i := range 10 {
		texts = append(texts, fmt.Sprintf("a-%d", i))
		require.NoError(t, srv.DB.Create(&scopedNote{Owner: "alice", Text: texts[i]}).Error, "a write never waits for delivery")
	}
	release()
	var got []string
	for range texts {
		p := alice.readPayload("notes")
		data, _ := p["data"].(map[string]any)
		got = append(got, fmt.Sprint(data["text"]))
	}
	assert.Equal(t, texts, got)
	alice.assertAliveOn("notes")
}

// TestOutboxInstancesShareChanges: two instances on one database, with no
// broker and with Redis, writers on both updating the same rows: the
// subscriber of each instance receives every change once, in offset order,
// and its events add up to the rows. Without the outbox, two instances
// may publish one row's updates to Redis in the other order than they
// committed (README, Running several instances); with it, the offsets
// are taken in commit order.
func TestOutboxInstancesShareChanges(t *testing.T) {
	for _, broker := range []string{"none", "redis"} {
		t.Run(broker, func(t *testing.T) {
			const rows, writers, writes = 10, 4, 150
			dbs := openShared(t, 2, &outboxtest.Item{})
			for i := range rows {
				require.NoError(t, dbs[0].Create(&outboxtest.Item{Name: fmt.Sprintf("seed%d", i)}).Error)
			}
			var prefix, url string
			if broker == "redis" {
				url, prefix = redisURL(t), testPrefix()
			}
			srvs := make([]*testServer, 2)
			for i := range srvs {
				opts := []channelsapi.Option{quietLog(), withOutbox(), channelsapi.WithQueueSize(4096)} // the subscribers read after the writes
				if broker == "redis" {
					opts = append(opts, withRedis(t, url, prefix))
				}
				srvs[i] = newServerOn(t, dbs[i], func(api *channelsapi.API, _ *gorm.DB) {
					require.NoError(t, outboxtest.Add(api))
				}, opts...)
			}
			subs := make([]*crashClient, 2)
			for i, srv := range srvs {
				subs[i] = dialCrash(t, srv.WSURL, nil, 0)
				for range 2 {
					ev, err := subs[i].next()
					require.NoError(t, err)
					require.Nil(t, ev)
				}
			}
			var wg sync.WaitGroup
			for w := range writers {
				db := dbs[w%2]
				wg.Go(func() {
					for i := range writes {
						var err error
						if i%5 == 0 {
							err = db.Create(&outboxtest.Item{Name: fmt.Sprintf("w%d-%d", w, i)}).Error
						} else {
							err = db.Model(&outboxtest.Item{ID: uint(1 + rand.IntN(rows))}).
								Updates(map[string]any{"n": gorm.Expr("n + 1"), "name": fmt.Sprintf("w%d-%d", w, i)}).Error
						}
						if !assert.NoError(t, err) {
							return
						}
					}
				})
			}
			wg.Wait()
			top := outboxPosition(t, dbs[0]).Offset
			require.EqualValues(t, writers*writes, top)
			var want []outboxtest.Item
			require.NoError(t, dbs[0].Find(&want).Error)
			for i, sub := range subs {
				evs := sub.until(top, 0)
				state := map[uint]outboxtest.Item{}
				for j, ev := range evs {
					require.Equal(t, uint64(j+1), ev.offset, "instance %d: out of order", i)
					state[ev.item.ID] = ev.item
				}
				for _, r := range want {
					if r.ID > rows || state[r.ID] != (outboxtest.Item{}) {
						assert.Equal(t, r, state[r.ID], "instance %d, item %d", i, r.ID)
					}
				}
			}
		})
	}
}

// TestOutboxResumeAcrossRestart: the outbox's numbering outlives the
// process: a client resumes on a new instance, after the one it was on
// shut down, from the position it had, and receives what was committed
// meanwhile.
func TestOutboxResumeAcrossRestart(t *testing.T) {
	dbs := openShared(t, 2, &outboxtest.Item{})
	add := func(api *channelsapi.API, _ *gorm.DB) { require.NoError(t, outboxtest.Add(api)) }
	first := newServerOn(t, dbs[0], add, quietLog(), withOutbox())
	sub := dialCrash(t, first.WSURL, nil, 0)
	for range 2 {
		ev, err := sub.next()
		require.NoError(t, err)
		require.Nil(t, ev)
	}
	for i := range 5 {
		require.NoError(t, dbs[0].Create(&outboxtest.Item{Name: fmt.Sprintf("before-%d", i)}).Error)
	}
	seen := sub.until(5, 0)
	at := outboxPosition(t, dbs[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, first.API.Shutdown(ctx))
	for i := range 3 {
		require.NoError(t, dbs[0].Create(&outboxtest.Item{Name: fmt.Sprintf("between-%d", i)}).Error)
	}

	second := newServerOn(t, dbs[1], add, quietLog(), withOutbox())
	resumed := dialCrash(t, second.WSURL, &channelsapi.Position{Epoch: at.Epoch, Offset: seen[len(seen)-1].offset}, 5)
	evs := resumed.until(8, 5)
	require.Len(t, evs, 3)
	for i, ev := range evs {
		assert.Equal(t, fmt.Sprintf("between-%d", i), ev.item.Name)
	}
	// And live after the replay.
	require.NoError(t, dbs[1].Create(&outboxtest.Item{Name: "after"}).Error)
	evs = resumed.until(9, 8)
	require.Len(t, evs, 1)
	assert.Equal(t, "after", evs[0].item.Name)
}
