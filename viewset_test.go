package channelsapi_test

// This file tests viewset.go: the Hooks of a ViewSet, and a ReadOnly
// ViewSet over REST.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
)

// hookNote is written through hooks that change it, refuse it or fail.
type hookNote struct {
	ID    uint   `json:"id" gorm:"primaryKey"`
	Text  string `json:"text" binding:"required,max=100"`
	Stamp string `json:"stamp"`
}

// hookViewSet's Before hooks stamp the object, or refuse it when its text
// is "bad" (400) or "deny" (permission denied); its After hooks fail when
// the text is "after-fail" (a plain error: 500) or "after-error" (409).
func hookViewSet() channelsapi.ViewSet[hookNote] {
	before := func(stamp string) func(context.Context, *gorm.DB, *channelsapi.Request, *hookNote) error {
		return func(_ context.Context, _ *gorm.DB, _ *channelsapi.Request, n *hookNote) error {
			switch n.Text {
			case "bad":
				return channelsapi.NewError(http.StatusBadRequest, "Refused by hook.")
			case "deny":
				return channelsapi.ErrPermissionDenied
			}
			n.Stamp = stamp + n.Text
			return nil
		}
	}
	after := func(_ context.Context, _ *gorm.DB, _ *channelsapi.Request, n *hookNote) error {
		switch n.Text {
		case "after-fail":
			return errors.New("after hook failed: secret detail")
		case "after-error":
			return channelsapi.NewError(http.StatusConflict, "Rejected after write.")
		}
		return nil
	}
	return channelsapi.ViewSet[hookNote]{
		Stream:         "hooked",
		Label:          "tests.hooked",
		ReadOnlyFields: []string{"stamp"},
		Hooks: channelsapi.Hooks[hookNote]{
			BeforeCreate: before("created:"), AfterCreate: after,
			BeforeUpdate: before("updated:"), AfterUpdate: after,
			BeforeDelete: before("deleted:"), AfterDelete: after,
		},
	}
}

func TestHooks(t *testing.T) {
	db := openDB(t, &hookNote{})
	srv := newAuthServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, hookViewSet()))
	}, quietLog())
	listener := srv.dialAs(t, nil)
	for _, e := range []string{"create", "update", "delete"} {
		got := listener.request("hooked", map[string]any{"action": "subscribe", "data": map[string]any{"action": e}})
		require.EqualValues(t, 200, got["response_status"])
	}
	sockets := map[*authUser]*wsClient{nil: srv.dialAs(t, nil), userA: srv.dialAs(t, userA)}

	tests := []struct {
		name    string
		text    string
		user    *authUser
		status  int    // 0: success
		message string // the error's message
	}{
		{name: "before hook changes the object", text: "ok", user: userA},
		{name: "before hook refuses with an Error", text: "bad", user: userA, status: 400, message: "Refused by hook."},
		{name: "before hook denies an authenticated user", text: "deny", user: userA, status: 403, message: "Permission Denied"},
		{name: "before hook denies an anonymous user", text: "deny", status: 401, message: "Permission Denied"},
		{name: "after hook fails", text: "after-fail", user: userA, status: 500, message: "A server error occurred."},
		{name: "after hook returns an Error", text: "after-error", user: userA, status: 409, message: "Rejected after write."},
	}
	var cases, mismatches int
	for _, tt := range tests {
		for _, action := range []string{"create", "update", "patch", "delete"} {
			for _, transport := range []string{"websocket", "rest"} {
				cases++
				t.Run(tt.name+"/"+action+"/"+transport, func(t *testing.T) {
					listener, ws := listener.in(t), sockets[tt.user].in(t)
					defer func() {
						if t.Failed() {
							mismatches++
						}
					}()
					// create: the text is sent; update, patch: sent over "orig";
					// delete: the text of the row deleted.
					row := hookNote{Text: "orig"}
					if action == "delete" {
						row.Text = tt.text
					}
					if action != "create" {
						require.NoError(t, db.Create(&row).Error)
						require.Equal(t, "create", listener.readPayload("hooked")["action"], "the row's own event")
					}
					before := dumpRows[hookNote](t, db)

					var status int
					var obj map[string]any
					var errs any
					if transport == "websocket" {
						p := map[string]any{"action": action, "request_id": cases}
						if action != "create" {
							p["pk"] = row.ID
						}
						if action != "delete" {
							p["data"] = map[string]any{"text": tt.text}
						}
						got := ws.request("hooked", p)
						require.EqualValues(t, cases, got["request_id"])
						status = int(got["response_status"].(float64))
						obj, _ = got["data"].(map[string]any)
						errs = got["errors"]
					} else {
						method, path, body := map[string]string{"create": http.MethodPost, "update": http.MethodPut,
							"patch": http.MethodPatch, "delete": http.MethodDelete}[action], "/hooked", ""
						if action != "create" {
							path = fmt.Sprintf("/hooked/%d", row.ID)
						}
						if action != "delete" {
							body = string(jsonBytes(t, map[string]any{"text": tt.text}))
						}
						var b []byte
						status, b = srv.restAs(t, tt.user, method, path, body)
						v := parseJSON(b)
						obj, _ = v.(map[string]any)
						errs = v
						assertNoSQL(t, b)
						assert.NotContains(t, string(b), "secret")
					}
					after := dumpRows[hookNote](t, db)
					sentinel := hookNote{Text: fmt.Sprint("sentinel ", cases)}
					require.NoError(t, db.Create(&sentinel).Error)
					var events []map[string]any
					for {
						p := listener.readPayload("hooked")
						if d, _ := p["data"].(map[string]any); d["text"] == sentinel.Text {
							break
						}
						events = append(events, p)
					}

					if tt.status != 0 {
						assert.Equal(t, tt.status, status)
						if transport == "websocket" {
							assert.Equal(t, []any{tt.message}, errs)
						} else {
							assert.Equal(t, map[string]any{"detail": tt.message}, errs)
						}
						assert.Equal(t, before, after, "nothing is written")
						assert.Empty(t, events, "nothing is published")
						return
					}
					var want hookNote
					switch action {
					case "create":
						assert.Equal(t, http.StatusCreated, status)
						require.NotNil(t, obj)
						want = hookNote{ID: uint(obj["id"].(float64)), Text: "ok", Stamp: "created:ok"}
					case "update", "patch":
						assert.Equal(t, http.StatusOK, status)
						want = hookNote{ID: row.ID, Text: "ok", Stamp: "updated:ok"}
					case "delete":
						assert.Equal(t, map[string]int{"websocket": 200, "rest": 204}[transport], status)
						want = row // as it was: the stamp of a Before hook of a delete is not written
					}
					var got hookNote
					found := db.Limit(1).Find(&got, want.ID).RowsAffected == 1
					if action == "delete" {
						assert.False(t, found, "the row is deleted")
					} else {
						assert.Equal(t, jsonOf(t, want), jsonOf(t, obj), "the reply carries the hook's change")
						assert.Equal(t, want, got, "the hook's change is written")
					}
					eventAction := map[string]string{"create": "create", "update": "update", "patch": "update", "delete": "delete"}[action]
					assert.Equal(t, []map[string]any{{"action": eventAction, "pk": float64(want.ID), "model": "tests.hooked",
						"data": jsonOf(t, want)}}, events, "the event carries the hook's change")
				})
			}
		}
	}
	t.Logf("hooks: %d cases, %d mismatches", cases, mismatches)
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

func TestNotFoundLogsNothing(t *testing.T) {
	var out logBuffer
	db := openDB(t, &TestModel{})
	db.Logger = logger.New(log.New(&out, "", 0), logger.Config{LogLevel: logger.Warn})
	srv := newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	seed(t, db, "a")

	for _, r := range []struct{ method, path string }{
		{http.MethodGet, "/testmodel/99"},
		{http.MethodPut, "/testmodel/99"},
		{http.MethodPatch, "/testmodel/99"},
		{http.MethodDelete, "/testmodel/99"},
		{http.MethodGet, "/testmodel/99/test_detail"},
	} {
		status, _ := srv.doREST(t, r.method, r.path, `{"name":"x"}`)
		assert.Equal(t, http.StatusNotFound, status, r.method+" "+r.path)
	}
	ws := srv.dial(t, nil)
	got := ws.request("testmodel", map[string]any{"action": "retrieve", "pk": 99, "request_id": 1})
	assert.EqualValues(t, 404, got["response_status"])
	status, _ := srv.doREST(t, http.MethodGet, "/testmodel/1", "")
	assert.Equal(t, http.StatusOK, status)
	assert.Empty(t, out.String(), "a 404 is no error of GORM's")

	require.ErrorIs(t, db.Take(&TestModel{}, 99).Error, gorm.ErrRecordNotFound)
	assert.Contains(t, out.String(), "record not found", "the logger is the one GORM uses")
}
