package channelsapi_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// These tests pin down defects found in review.

func TestPreparedStatementTransactionsPublishAfterCommit(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	ws.subscribe("create", nil)
	prepared := srv.DB.Session(&gorm.Session{PrepareStmt: true})
	require.Error(t, prepared.Transaction(func(tx *gorm.DB) error {
		require.NoError(t, tx.Create(&TestModel{Name: "rolled back"}).Error)
		return errRollback
	}))
	require.NoError(t, prepared.Transaction(func(tx *gorm.DB) error {
		return tx.Create(&TestModel{Name: "committed"}).Error
	}))
	got := ws.readPayload("testmodel")
	assert.Equal(t, "create", got["action"])
	assert.Equal(t, "committed", got["data"].(map[string]any)["name"], "nothing for the rolled-back work")
}

func TestUntrackedTransactionResyncs(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	ws.subscribe("create", nil)
	err := srv.DB.Connection(func(conn *gorm.DB) error {
		return conn.Transaction(func(tx *gorm.DB) error {
			require.NoError(t, tx.Create(&TestModel{Name: "rolled back"}).Error)
			return errRollback
		})
	})
	require.ErrorIs(t, err, errRollback)
	assert.Equal(t, 1013, ws.closeCode(), "a transaction begun on db.Connection cannot be followed: subscribers resync, no event")
}

func TestScopeQueriesDoNotDeadlockCommits(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.Scope = func(_ *channelsapi.Request, db *gorm.DB) *gorm.DB { return db.Where("name <> ?", "hidden") }
		})
	})
	sqlDB, err := srv.DB.DB()
	require.NoError(t, err)
	sqlDB.SetMaxOpenConns(1) // authorizing an event needs the connection a waiting writer holds
	ws := srv.dial(t, nil)
	ws.subscribe("create", nil)

	txA := srv.DB.Begin()
	require.NoError(t, txA.Create(&TestModel{Name: "a"}).Error)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- srv.DB.Create(&TestModel{Name: "b"}).Error })
	wg.Go(func() { errs <- txA.Commit().Error })
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(readTimeout):
		sqlDB.SetMaxOpenConns(2) // let the test end
		<-done
		t.Fatal("commits deadlocked")
	}
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	got := []any{ws.readPayload("testmodel")["data"], ws.readPayload("testmodel")["data"]}
	assert.ElementsMatch(t, []any{map[string]any{"id": 1.0, "name": "a"}, map[string]any{"id": 2.0, "name": "b"}}, got)
}

func TestLateSubscriberToAScopedDeleteGetsTheEvent(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.Scope = func(_ *channelsapi.Request, db *gorm.DB) *gorm.DB { return db.Where("name <> ?", "hidden") }
		})
	})
	seed(t, srv.DB, "x", "hidden")
	ws := srv.dial(t, nil)
	tx := srv.DB.Begin()
	require.NoError(t, tx.Delete(&TestModel{ID: 2}).Error)
	require.NoError(t, tx.Delete(&TestModel{ID: 1}).Error)
	ws.subscribe("delete", nil) // after the statements, before the commit
	require.NoError(t, tx.Commit().Error)
	assert.Equal(t, event("delete", 1, "x"), ws.readPayload("testmodel"),
		"its Scope is judged on the deleted row the event carries: the row it could see arrives, the hidden one does not")
}

func TestPanickingPermissionDuringDelivery(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.ObjectPermission = func(_ context.Context, r *channelsapi.Request, _ *TestModel) error {
				_ = r.User.(string) // panics for an anonymous recipient
				return nil
			}
		})
	})
	anonymous := srv.dial(t, nil)
	anonymous.subscribe("create", nil)
	status, _ := srv.doREST(t, http.MethodPost, "/testmodel", `{"name":"x"}`, "X-User", "alice")
	assert.Equal(t, http.StatusCreated, status, "the write committed and is answered as such")
	assert.Equal(t, 1013, anonymous.closeCode(), "the stream's subscribers resync")
	status, _ = srv.doREST(t, http.MethodGet, "/testmodel/1", "", "X-User", "alice")
	assert.Equal(t, http.StatusOK, status, "the server keeps serving")
}

func TestUpdateWithKeysAndConditionsPublishesOnlyTouchedRows(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "a", "b")
	ws := srv.dial(t, nil)
	ws.subscribe("update", nil)
	objs := []TestModel{{ID: 1}, {ID: 2}}
	res := srv.DB.Model(&objs).Where("name = ?", "a").Update("name", "a2")
	require.NoError(t, res.Error)
	require.EqualValues(t, 1, res.RowsAffected)
	require.NoError(t, srv.DB.Model(&TestModel{ID: 2}).Update("name", "sentinel").Error)
	assert.Equal(t, event("update", 1, "a2"), ws.readPayload("testmodel"))
	assert.Equal(t, event("update", 2, "sentinel"), ws.readPayload("testmodel"), "no event for the row the condition excluded")
}

func TestReadOnlyOverREST(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) { vs.ReadOnly = true })
	})
	seed(t, srv.DB, "x")
	for _, m := range []struct{ method, path string }{
		{http.MethodPost, "/testmodel"}, {http.MethodPut, "/testmodel/1"},
		{http.MethodPatch, "/testmodel/1"}, {http.MethodDelete, "/testmodel/1"},
	} {
		status, body := srv.doREST(t, m.method, m.path, `{"name":"y"}`)
		assert.Equal(t, http.StatusBadRequest, status, m.method)
		assert.Equal(t, map[string]any{"detail": "Invalid Action"}, body, m.method)
	}
	assert.EqualValues(t, 1, countRows[TestModel](t, srv.DB))
}
