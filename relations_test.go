package channelsapi_test

// This file tests relations.go: declared relations expanded as the related
// ViewSet lets the user see them, foreign keys checked against the related
// ViewSet's scope, and the Validate hook, on both transports.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// relOwner is a project's owner; a user sees the owner named like them.
type relOwner struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
}

// relProject belongs to a team (a user sees their team's projects), has an
// optional owner and has many todos.
type relProject struct {
	ID      uint      `json:"id" gorm:"primaryKey"`
	Name    string    `json:"name"`
	Team    string    `json:"team"`
	OwnerID *uint     `json:"owner_id"`
	Owner   *relOwner `json:"owner"`
	Todos   []relTodo `json:"todos" gorm:"foreignKey:ProjectID"`
}

// relTodo belongs to a project, held by value; every todo is visible.
type relTodo struct {
	ID        uint       `json:"id" gorm:"primaryKey"`
	Title     string     `json:"title" binding:"required"`
	ProjectID uint       `json:"project_id"`
	Project   relProject `json:"project"`
	Start     int        `json:"start"`
	End       int        `json:"end"`
}

// relFixture is a server of owners, projects and todos, with a project of
// alice's team and one of bob's, and a todo in each.
type relFixture struct {
	srv                   *testServer
	alice, bob            relProject
	aliceTodo, bobTodo    relTodo
	aliceOwner, bobOwner  relOwner
	validated, beforeHook int
}

func newRelFixture(t *testing.T) *relFixture {
	t.Helper()
	f := &relFixture{}
	db := openDB(t, &relOwner{}, &relProject{}, &relTodo{})
	f.srv = newScopedServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[relTodo]{
			Stream:    "todos",
			Relations: map[string]channelsapi.Relation{"project": {Stream: "projects", Expand: true}},
			Validate: func(_ context.Context, _ *channelsapi.Request, td *relTodo) error {
				f.validated++
				if td.End < td.Start {
					return channelsapi.FieldErrors{"end": {"Must be after start."}}
				}
				return nil
			},
			Hooks: channelsapi.Hooks[relTodo]{
				BeforeCreate: func(context.Context, *gorm.DB, *channelsapi.Request, *relTodo) error { f.beforeHook++; return nil },
				BeforeUpdate: func(context.Context, *gorm.DB, *channelsapi.Request, *relTodo) error { f.beforeHook++; return nil },
			},
		}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[relProject]{
			Stream: "projects",
			Scope: func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
				return db.Where("team = ?", scopeUserName(r)), nil
			},
			Relations: map[string]channelsapi.Relation{
				"owner": {Stream: "owners", Expand: true},
				"todos": {Stream: "todos", Expand: true},
			},
		}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[relOwner]{
			Stream: "owners",
			Scope: func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
				return db.Where("name = ?", scopeUserName(r)), nil
			},
		}))
	}, quietLog())
	f.aliceOwner, f.bobOwner = relOwner{Name: "alice"}, relOwner{Name: "bob"}
	require.NoError(t, db.Create(&f.aliceOwner).Error)
	require.NoError(t, db.Create(&f.bobOwner).Error)
	// alice's project is owned by bob, whom alice cannot see.
	f.alice = relProject{Name: "garden", Team: "alice", OwnerID: &f.bobOwner.ID}
	f.bob = relProject{Name: "garage", Team: "bob", OwnerID: &f.bobOwner.ID}
	require.NoError(t, db.Omit("Owner").Create(&f.alice).Error)
	require.NoError(t, db.Omit("Owner").Create(&f.bob).Error)
	f.aliceTodo = relTodo{Title: "dig", ProjectID: f.alice.ID}
	f.bobTodo = relTodo{Title: "sweep", ProjectID: f.bob.ID}
	require.NoError(t, db.Omit("Project").Create(&f.aliceTodo).Error)
	require.NoError(t, db.Omit("Project").Create(&f.bobTodo).Error)
	return f
}

// both sends one action as alice over the WebSocket (payload extra merged
// into the payload) and over REST, requires the same status on both, and
// returns it with the WebSocket's data or errors[0] and the REST body.
func (f *relFixture) both(t *testing.T, action string, pk uint, data string, extra map[string]any, query string) (int, any, any) {
	t.Helper()
	ws := f.srv.dialUser(t, "alice")
	p := map[string]any{"action": action, "request_id": 1}
	if pk != 0 {
		p["pk"] = pk
	}
	if data != "" {
		p["data"] = json.RawMessage(data)
	}
	for k, v := range extra {
		p[k] = v
	}
	got := ws.request("todos", p)
	method := map[string]string{"create": http.MethodPost, "retrieve": http.MethodGet, "list": http.MethodGet,
		"update": http.MethodPut, "patch": http.MethodPatch}[action]
	path := "/todos"
	if pk != 0 {
		path += fmt.Sprintf("/%d", pk)
	}
	status, body := f.srv.doREST(t, method, path+query, data, "X-User", "alice")
	require.EqualValues(t, status, got["response_status"], "WebSocket %v, REST %v", got, body)
	if status >= 400 {
		errs := got["errors"].([]any)
		require.Len(t, errs, 1)
		return status, errs[0], body
	}
	return status, got["data"], body
}

func TestRelationsForeignKeyScope(t *testing.T) {
	f := newRelFixture(t)
	invalid := func(pk uint) any {
		return jsonOf(t, map[string][]string{"project_id": {fmt.Sprintf(`Invalid pk "%d" - object does not exist.`, pk)}})
	}
	tests := []struct {
		name   string
		action string
		pk     uint
		data   string
		want   any // nil: success
	}{
		{"create in another team's project", "create", 0, fmt.Sprintf(`{"title":"x","project_id":%d}`, f.bob.ID), invalid(f.bob.ID)},
		{"create in a missing project", "create", 0, `{"title":"x","project_id":99}`, invalid(99)},
		{"create in one's own project", "create", 0, fmt.Sprintf(`{"title":"x","project_id":%d}`, f.alice.ID), nil},
		{"patch into another team's project", "patch", f.aliceTodo.ID, fmt.Sprintf(`{"project_id":%d}`, f.bob.ID), invalid(f.bob.ID)},
		{"update into a missing project", "update", f.aliceTodo.ID, `{"title":"x","project_id":99}`, invalid(99)},
		{"patch of another field keeps an unchecked key", "patch", f.bobTodo.ID, `{"title":"swept"}`, nil},
		{"relation key is read-only", "patch", f.aliceTodo.ID, `{"project":{"id":1}}`, jsonOf(t, map[string][]string{"project": {"This field is read-only."}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dumpRows[relTodo](t, f.srv.DB)
			status, wsOut, restOut := f.both(t, tt.action, tt.pk, tt.data, nil, "")
			if tt.want == nil {
				assert.Less(t, status, 300, "%v", restOut)
				return
			}
			assert.Equal(t, http.StatusBadRequest, status)
			assert.Equal(t, tt.want, wsOut, "WebSocket")
			assert.Equal(t, tt.want, restOut, "REST")
			assert.Equal(t, before, dumpRows[relTodo](t, f.srv.DB), "nothing is written")
		})
	}
}

func TestRelationsExpand(t *testing.T) {
	f := newRelFixture(t)
	project := func(p relProject) map[string]any {
		return map[string]any{"id": float64(p.ID), "name": p.Name, "team": p.Team, "owner_id": float64(*p.OwnerID), "owner": nil, "todos": nil}
	}
	t.Run("retrieve", func(t *testing.T) {
		_, wsOut, restOut := f.both(t, "retrieve", f.aliceTodo.ID, "", map[string]any{"expand": []string{"project"}}, "?expand=project")
		assert.Equal(t, wsOut, restOut)
		assert.Equal(t, project(f.alice), restOut.(map[string]any)["project"])
		assert.Equal(t, "dig", restOut.(map[string]any)["title"])
	})
	t.Run("invisible related row is null", func(t *testing.T) {
		_, wsOut, restOut := f.both(t, "retrieve", f.bobTodo.ID, "", map[string]any{"expand": []string{"project"}}, "?expand=project")
		assert.Equal(t, wsOut, restOut)
		assert.Nil(t, restOut.(map[string]any)["project"])
		assert.Contains(t, restOut.(map[string]any), "project")
	})
	t.Run("list", func(t *testing.T) {
		_, wsOut, restOut := f.both(t, "list", 0, "", map[string]any{"expand": "project"}, "?expand=project")
		assert.Equal(t, restOut.(map[string]any)["results"], wsOut)
		rows := wsOut.([]any)
		require.Len(t, rows, 2)
		assert.Equal(t, project(f.alice), rows[0].(map[string]any)["project"])
		assert.Nil(t, rows[1].(map[string]any)["project"])
	})
	t.Run("create reply", func(t *testing.T) {
		status, wsOut, restOut := f.both(t, "create", 0, fmt.Sprintf(`{"title":"plant","project_id":%d}`, f.alice.ID), map[string]any{"expand": []string{"project"}}, "?expand=project")
		require.Equal(t, http.StatusCreated, status)
		assert.Equal(t, project(f.alice), wsOut.(map[string]any)["project"])
		assert.Equal(t, project(f.alice), restOut.(map[string]any)["project"])
	})
	t.Run("unexpanded relation as the model encodes it", func(t *testing.T) {
		_, _, restOut := f.both(t, "retrieve", f.aliceTodo.ID, "", nil, "")
		assert.Equal(t, "", restOut.(map[string]any)["project"].(map[string]any)["name"])
	})
	t.Run("belongs-to and has-many through the related ViewSets", func(t *testing.T) {
		status, body := f.srv.doREST(t, http.MethodGet, fmt.Sprintf("/projects/%d?expand=owner,todos", f.alice.ID), "", "X-User", "alice")
		require.Equal(t, http.StatusOK, status, "%v", body)
		got := body.(map[string]any)
		assert.Nil(t, got["owner"], "bob is not visible to alice")
		todos := got["todos"].([]any)
		require.NotEmpty(t, todos)
		assert.Equal(t, "dig", todos[0].(map[string]any)["title"])
		for _, td := range todos {
			assert.EqualValues(t, f.alice.ID, td.(map[string]any)["project_id"], "only the project's todos")
		}

		status, body = f.srv.doREST(t, http.MethodGet, fmt.Sprintf("/projects/%d?expand=owner", f.bob.ID), "", "X-User", "bob")
		require.Equal(t, http.StatusOK, status, "%v", body)
		assert.Equal(t, map[string]any{"id": float64(f.bobOwner.ID), "name": "bob"}, body.(map[string]any)["owner"])
	})
	for _, name := range []string{"owner", "nope", "title"} {
		t.Run("unknown relation "+name, func(t *testing.T) {
			before := countRows[relTodo](t, f.srv.DB)
			want := jsonOf(t, map[string][]string{"expand": {fmt.Sprintf("Unknown relation %q.", name)}})
			for _, action := range []string{"retrieve", "list", "create"} {
				pk, data := f.aliceTodo.ID, ""
				if action != "retrieve" {
					pk = 0
				}
				if action == "create" {
					data = fmt.Sprintf(`{"title":"x","project_id":%d}`, f.alice.ID)
				}
				status, wsOut, restOut := f.both(t, action, pk, data, map[string]any{"expand": []string{name}}, "?expand="+name)
				assert.Equal(t, http.StatusBadRequest, status, action)
				assert.Equal(t, want, wsOut, action)
				assert.Equal(t, want, restOut, action)
			}
			assert.Equal(t, before, countRows[relTodo](t, f.srv.DB), "a refused create writes nothing")
		})
	}
	t.Run("malformed expand", func(t *testing.T) {
		got := f.srv.dialUser(t, "alice").request("todos", map[string]any{"action": "retrieve", "pk": f.aliceTodo.ID, "expand": map[string]any{"a": 1}, "request_id": 1})
		assert.EqualValues(t, http.StatusBadRequest, got["response_status"])
		assert.Equal(t, []any{jsonOf(t, map[string][]string{"expand": {"Expected a list of items."}})}, got["errors"])
	})
}

func TestValidateHook(t *testing.T) {
	f := newRelFixture(t)
	want := jsonOf(t, map[string][]string{"end": {"Must be after start."}})
	tests := []struct {
		name   string
		action string
		pk     uint
		data   string
		want   any
	}{
		{"create", "create", 0, fmt.Sprintf(`{"title":"x","project_id":%d,"start":5,"end":1}`, f.alice.ID), want},
		{"update", "update", f.aliceTodo.ID, fmt.Sprintf(`{"title":"x","project_id":%d,"start":5,"end":1}`, f.alice.ID), want},
		{"patch", "patch", f.aliceTodo.ID, `{"start":5}`, want},
		{"foreign key first", "create", 0, `{"title":"x","project_id":99,"start":5,"end":1}`,
			jsonOf(t, map[string][]string{"project_id": {`Invalid pk "99" - object does not exist.`}})},
		{"binding rules first", "create", 0, `{"start":5,"end":1}`, jsonOf(t, map[string][]string{"title": {"This field is required."}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dumpRows[relTodo](t, f.srv.DB)
			validated := f.validated
			status, wsOut, restOut := f.both(t, tt.action, tt.pk, tt.data, nil, "")
			assert.Equal(t, http.StatusBadRequest, status)
			assert.Equal(t, tt.want, wsOut, "WebSocket")
			assert.Equal(t, tt.want, restOut, "REST")
			assert.Equal(t, before, dumpRows[relTodo](t, f.srv.DB), "nothing is written")
			if strings.Contains(tt.name, "first") {
				assert.Equal(t, validated, f.validated, "Validate does not run")
			} else {
				assert.Equal(t, validated+2, f.validated, "Validate runs on both transports")
			}
		})
	}
	assert.Zero(t, f.beforeHook, "no Before hook runs after a refusal")
	status, _, _ := f.both(t, "patch", f.aliceTodo.ID, `{"start":1,"end":2}`, nil, "")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, 2, f.beforeHook)
}

// relTag is related to relTagged many-to-many.
type relTag struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
}

type relTagged struct {
	ID     uint     `json:"id" gorm:"primaryKey"`
	Tags   []relTag `json:"tags" gorm:"many2many:rel_tagged_tags"`
	Expand string   `json:"expand"`
}

func TestRelationsRefusedAtAdd(t *testing.T) {
	db := openDB(t, &relTag{}, &relTagged{})
	newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) {
		for _, tt := range []struct {
			name string
			vs   channelsapi.ViewSet[relTagged]
			want string
		}{
			{"many-to-many", channelsapi.ViewSet[relTagged]{Relations: map[string]channelsapi.Relation{"tags": {Stream: "tags", Expand: true}}}, "many-to-many"},
			{"no stream", channelsapi.ViewSet[relTagged]{Relations: map[string]channelsapi.Relation{"tags": {}}}, "no Stream"},
			{"not a field", channelsapi.ViewSet[relTagged]{Relations: map[string]channelsapi.Relation{"nope": {Stream: "tags"}}}, "neither"},
			{"expanding a plain field", channelsapi.ViewSet[relTagged]{Relations: map[string]channelsapi.Relation{"id": {Stream: "tags", Expand: true}}}, "only a relation field"},
			{"filter named expand", channelsapi.ViewSet[relTagged]{Filters: map[string][]string{"expand": {"exact"}}}, "reserved"},
		} {
			err := channelsapi.Add(api, tt.vs)
			if assert.Error(t, err, tt.name) {
				assert.Contains(t, err.Error(), tt.want, tt.name)
			}
		}
	})
}

// TestRelationsExpandManyCapped: a has-many relation expands to at most
// the related ViewSet's MaxPageSize rows, in its order.
func TestRelationsExpandManyCapped(t *testing.T) {
	db := openDB(t, &relOwner{}, &relProject{}, &relTodo{})
	srv := newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[relTodo]{Stream: "todos", MaxPageSize: 2}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[relProject]{
			Stream:    "projects",
			Relations: map[string]channelsapi.Relation{"todos": {Stream: "todos", Expand: true}},
		}))
	}, quietLog())
	p := relProject{Name: "p"}
	require.NoError(t, db.Create(&p).Error)
	for _, title := range []string{"a", "b", "c"} {
		require.NoError(t, db.Omit("Project").Create(&relTodo{Title: title, ProjectID: p.ID}).Error)
	}
	status, body := srv.doREST(t, http.MethodGet, fmt.Sprintf("/projects/%d?expand=todos", p.ID), "")
	require.Equal(t, http.StatusOK, status, "%v", body)
	todos := body.(map[string]any)["todos"].([]any)
	require.Len(t, todos, 2)
	assert.Equal(t, "a", todos[0].(map[string]any)["title"])
	assert.Equal(t, "b", todos[1].(map[string]any)["title"])
}

// TestRelationsForeignKeyScopeFails: a related Scope that fails (not a
// refusal) fails the write with a 500; it does not pass for a missing row.
func TestRelationsForeignKeyScopeFails(t *testing.T) {
	db := openDB(t, &relOwner{}, &relProject{}, &relTodo{})
	srv := newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[relTodo]{
			Stream:    "todos",
			Relations: map[string]channelsapi.Relation{"project": {Stream: "projects"}},
		}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[relProject]{
			Stream: "projects",
			Scope: func(context.Context, *channelsapi.Request, *gorm.DB) (*gorm.DB, error) {
				return nil, errors.New("the scope's lookup failed")
			},
		}))
	}, quietLog())
	p := relProject{Name: "p"}
	require.NoError(t, db.Create(&p).Error)
	status, body := srv.doREST(t, http.MethodPost, "/todos", fmt.Sprintf(`{"title":"t","project_id":%d}`, p.ID))
	assert.Equal(t, http.StatusInternalServerError, status, "%v", body)
	assert.NotContains(t, fmt.Sprint(body), "Invalid pk")
	var n int64
	require.NoError(t, db.Model(&relTodo{}).Count(&n).Error)
	assert.Zero(t, n, "nothing written")
}
