package channelsapi_test

// This file runs the test suite of channels-api 0.4.1, restated as wire
// cases in testdata/channels-api-0.4.1.json, and what its code implies beyond
// its tests.

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// conformanceCase is one case of testdata/channels-api-0.4.1.json, the test
// suite of channels-api 0.4.1 restated as wire cases.
type conformanceCase struct {
	Name     string         `json:"name"`
	Setup    string         `json:"setup"`
	Request  map[string]any `json:"request"`
	Reply    map[string]any `json:"reply"`
	After    string         `json:"after"`
	Event    map[string]any `json:"event"`
	Requests []struct {
		Request map[string]any `json:"request"`
		Check   string         `json:"check"`
	} `json:"requests"`
}

var rowName = regexp.MustCompile(`name: '([^']*)'`)

func TestConformance(t *testing.T) {
	raw, err := os.ReadFile("testdata/channels-api-0.4.1.json")
	require.NoError(t, err)
	var suite struct {
		Cases []conformanceCase `json:"cases"`
	}
	require.NoError(t, json.Unmarshal(raw, &suite))
	require.Len(t, suite.Cases, 19)

	for _, tc := range suite.Cases {
		t.Run(tc.Name, func(t *testing.T) {
			var permission func(context.Context, *channelsapi.Request) error
			switch tc.Setup {
			case "the resource's permission check refuses everything; the connection has no authenticated user":
				permission = func(context.Context, *channelsapi.Request) error { return channelsapi.ErrPermissionDenied }
			case "the resource requires an authenticated user":
				permission = func(_ context.Context, r *channelsapi.Request) error {
					if !r.Authenticated() {
						return channelsapi.ErrPermissionDenied
					}
					return nil
				}
			}
			srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
				addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) { vs.Permission = permission })
			})
			switch m := rowName.FindStringSubmatch(tc.Setup); {
			case m != nil:
				require.NoError(t, srv.DB.Create(&TestModel{ID: 1, Name: m[1]}).Error)
			case tc.Setup == "26 rows named Name-0 .. Name-25":
				seed(t, srv.DB, names(26)...)
			}
			ws := srv.dial(t, nil)

			if tc.Request != nil {
				got := ws.request("testmodel", tc.Request)
				assert.Equal(t, jsonOf(t, tc.Reply), jsonOf(t, got))
			}
			switch tc.After {
			case "exactly 1 row":
				assert.EqualValues(t, 1, countRows[TestModel](t, srv.DB))
			case "0 rows":
				assert.EqualValues(t, 0, countRows[TestModel](t, srv.DB))
			case "":
			default:
				t.Fatalf("unknown after %q", tc.After)
			}
			if tc.Event != nil {
				require.NoError(t, srv.DB.Create(&TestModel{Name: "test-name"}).Error)
				assert.Equal(t, jsonOf(t, tc.Event), jsonOf(t, ws.readPayload("testmodel")))
			}

			switch tc.Name {
			case "list":
				require.Len(t, tc.Requests, 2)
				first := ws.request("testmodel", tc.Requests[0].Request)
				assert.EqualValues(t, 200, first["response_status"])
				assert.Len(t, first["data"], 25)
				second := ws.request("testmodel", tc.Requests[1].Request)
				assert.EqualValues(t, 200, second["response_status"])
				assert.Equal(t, "client-request-id", second["request_id"])
				require.Len(t, second["data"], 1)
				assert.Equal(t, "Name-25", second["data"].([]any)[0].(map[string]any)["name"])
			case "is_authenticated_permission":
				require.Len(t, tc.Requests, 2)
				anon := ws.request("testmodel", tc.Requests[0].Request)
				assert.EqualValues(t, http.StatusUnauthorized, anon["response_status"])
				assert.Equal(t, []any{"Permission Denied"}, anon["errors"])
				authed := srv.dial(t, http.Header{"X-User": {"alice"}})
				ok := authed.request("testmodel", tc.Requests[1].Request)
				assert.EqualValues(t, http.StatusOK, ok["response_status"])
				assert.Equal(t, "some data", ok["data"])
			default:
				require.Empty(t, tc.Requests, "case %s has requests this test does not check", tc.Name)
			}
		})
	}
}

// TestConformanceImplied covers what the channels-api code implies beyond
// its tests.
func TestConformanceImplied(t *testing.T) {
	t.Run("patch changes only the given fields", func(t *testing.T) {
		type Pair struct {
			ID    uint   `json:"id"`
			Name  string `json:"name" binding:"required"`
			Other string `json:"other"`
		}
		srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
			require.NoError(t, db.AutoMigrate(&Pair{}))
			require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[Pair]{Stream: "pairs"}))
		})
		require.NoError(t, srv.DB.Create(&Pair{Name: "a", Other: "keep"}).Error)
		ws := srv.dial(t, nil)
		got := ws.request("pairs", map[string]any{"action": "patch", "pk": 1, "data": map[string]any{"name": "b"}, "request_id": 1})
		assert.EqualValues(t, 200, got["response_status"])
		assert.Equal(t, map[string]any{"id": 1.0, "name": "b", "other": "keep"}, got["data"])
		var p Pair
		require.NoError(t, srv.DB.First(&p, 1).Error)
		assert.Equal(t, Pair{ID: 1, Name: "b", Other: "keep"}, p)
	})

	t.Run("a read-only resource refuses writes", func(t *testing.T) {
		srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
			addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) { vs.ReadOnly = true })
		})
		seed(t, srv.DB, "x")
		ws := srv.dial(t, nil)
		for _, action := range []string{"create", "update", "patch", "delete"} {
			got := ws.request("testmodel", map[string]any{"action": action, "pk": 1, "data": map[string]any{"name": "y"}, "request_id": action})
			assert.EqualValues(t, 400, got["response_status"], action)
			assert.Equal(t, []any{"Invalid Action"}, got["errors"], action)
			assert.Equal(t, action, got["action"])
		}
		got := ws.request("testmodel", map[string]any{"action": "retrieve", "pk": 1})
		assert.EqualValues(t, 200, got["response_status"])
		var m TestModel
		require.NoError(t, srv.DB.First(&m, 1).Error)
		assert.Equal(t, "x", m.Name)
	})
}
