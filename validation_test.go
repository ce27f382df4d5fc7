package channelsapi_test

// This file tests validation.go: the binding rules of a model answered as
// Django REST Framework messages, on both transports.

import (
	"encoding/json"
	"fmt"
	"github.com/go-playground/validator/v10"
	"maps"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// validatedModel carries many binding rules; it is served on "validated".
type validatedModel struct {
	ID       uint    `json:"id" gorm:"primaryKey"`
	Title    string  `json:"title" binding:"required,min=3,max=10"`
	Email    string  `json:"email" binding:"omitempty,email"`
	Age      int     `json:"age" binding:"gte=0,lte=130"`
	Score    float64 `json:"score" binding:"min=0,max=10"`
	Color    string  `json:"color" binding:"omitempty,oneof=red green blue"`
	Level    int     `json:"level" binding:"omitempty,oneof=1 2 3"`
	Website  string  `json:"website" binding:"omitempty,url"`
	Code     string  `json:"code" binding:"omitempty,len=4"`
	Handle   string  `json:"handle" binding:"omitempty,alphanum"`
	Nickname *string `json:"nickname" binding:"omitempty,max=5"`
	Active   bool    `json:"active"`
}

// validBase is a valid validatedModel's data; cases override its keys.
func validBase() map[string]any {
	return map[string]any{"title": "Hello", "age": 30, "score": 5}
}

// newValidationServer serves validatedModel on the stream "validated".
func newValidationServer(tb testing.TB) *testServer {
	tb.Helper()
	return newServer(tb, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(tb, db.AutoMigrate(&validatedModel{}))
		require.NoError(tb, channelsapi.Add(api, channelsapi.ViewSet[validatedModel]{Stream: "validated"}))
	}, quietLog())
}

// bothTransports sends data as a create over the WebSocket and as a REST
// POST, requires the same status on both, and returns it with the field
// errors of both (nil on success).
func bothTransports(tb testing.TB, srv *testServer, ws *wsClient, data string) (int, any, any) {
	tb.Helper()
	got := ws.request("validated", map[string]any{"action": "create", "data": json.RawMessage(data), "request_id": "v"})
	wsStatus := int(got["response_status"].(float64))
	status, body := srv.doREST(tb, http.MethodPost, "/validated", data)
	require.Equal(tb, wsStatus, status, "WebSocket %v, REST %v", got, body)
	if status != http.StatusBadRequest {
		return status, nil, nil
	}
	errs, _ := got["errors"].([]any)
	require.Len(tb, errs, 1, "errors %v", got["errors"])
	assert.Nil(tb, got["data"])
	return status, errs[0], body
}

func TestValidationMessages(t *testing.T) {
	srv := newValidationServer(t)
	ws := srv.dial(t, nil)

	tests := []struct {
		name   string
		give   map[string]any // overrides of validBase; a nil value deletes the key
		remove []string
		want   map[string][]string // nil means valid (201)
	}{
		{name: "valid", give: map[string]any{}},
		{name: "required missing", remove: []string{"title"}, want: map[string][]string{"title": {"This field is required."}}},
		{name: "required empty", give: map[string]any{"title": ""}, want: map[string][]string{"title": {"This field is required."}}},
		{name: "string min", give: map[string]any{"title": "ab"}, want: map[string][]string{"title": {"Ensure this field has at least 3 characters."}}},
		{name: "string max", give: map[string]any{"title": "abcdefghijk"}, want: map[string][]string{"title": {"Ensure this field has no more than 10 characters."}}},
		{name: "string max counts characters", give: map[string]any{"title": "éééééééééé"}},
		{name: "pointer string max", give: map[string]any{"nickname": "toolong"}, want: map[string][]string{"nickname": {"Ensure this field has no more than 5 characters."}}},
		{name: "pointer null", give: map[string]any{"nickname": json.RawMessage("null")}},
		{name: "number gte", give: map[string]any{"age": -1}, want: map[string][]string{"age": {"Ensure this value is greater than or equal to 0."}}},
		{name: "number lte", give: map[string]any{"age": 131}, want: map[string][]string{"age": {"Ensure this value is less than or equal to 130."}}},
		{name: "number min", give: map[string]any{"score": -0.5}, want: map[string][]string{"score": {"Ensure this value is greater than or equal to 0."}}},
		{name: "number max", give: map[string]any{"score": 10.5}, want: map[string][]string{"score": {"Ensure this value is less than or equal to 10."}}},
		{name: "number at the bounds", give: map[string]any{"age": 130, "score": 10}},
		{name: "email", give: map[string]any{"email": "not-an-email"}, want: map[string][]string{"email": {"Enter a valid email address."}}},
		{name: "valid email", give: map[string]any{"email": "a@example.com"}},
		{name: "oneof string", give: map[string]any{"color": "purple"}, want: map[string][]string{"color": {`"purple" is not a valid choice.`}}},
		{name: "oneof number", give: map[string]any{"level": 7}, want: map[string][]string{"level": {`"7" is not a valid choice.`}}},
		{name: "oneof valid", give: map[string]any{"color": "green", "level": 3}},
		{name: "url", give: map[string]any{"website": "not a url"}, want: map[string][]string{"website": {"Enter a valid URL."}}},
		{name: "len", give: map[string]any{"code": "abc"}, want: map[string][]string{"code": {"Ensure this field has exactly 4 characters."}}},
		{name: "alphanum", give: map[string]any{"handle": "a-b"}, want: map[string][]string{"handle": {"Enter only letters and numbers."}}},
		{name: "several fields", give: map[string]any{"title": "", "age": 200, "email": "x"}, want: map[string][]string{
			"title": {"This field is required."},
			"age":   {"Ensure this value is less than or equal to 130."},
			"email": {"Enter a valid email address."},
		}},
		{name: "string given a number", give: map[string]any{"title": 5}, want: map[string][]string{"title": {"Not a valid string."}}},
		{name: "integer given a string", give: map[string]any{"age": "x"}, want: map[string][]string{"age": {"A valid integer is required."}}},
		{name: "integer given a fraction", give: map[string]any{"age": 1.5}, want: map[string][]string{"age": {"A valid integer is required."}}},
		{name: "integer overflow", give: map[string]any{"age": json.RawMessage("99999999999999999999")}, want: map[string][]string{"age": {"A valid integer is required."}}},
		{name: "number given a string", give: map[string]any{"score": "high"}, want: map[string][]string{"score": {"A valid number is required."}}},
		{name: "bool given a string", give: map[string]any{"active": "yes"}, want: map[string][]string{"active": {"Must be a valid boolean."}}},
		{name: "string given an object", give: map[string]any{"title": map[string]any{"$gt": ""}}, want: map[string][]string{"title": {"Not a valid string."}}},
		{name: "string given a list", give: map[string]any{"title": []any{"a", "b", "c"}}, want: map[string][]string{"title": {"Not a valid string."}}},
		{name: "null for a string", give: map[string]any{"title": json.RawMessage("null")}, want: map[string][]string{"title": {"This field may not be null."}}},
		{name: "null for an integer", give: map[string]any{"age": json.RawMessage("null")}, want: map[string][]string{"age": {"This field may not be null."}}},
		{name: "null for a bool", give: map[string]any{"active": json.RawMessage("null")}, want: map[string][]string{"active": {"This field may not be null."}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := validBase()
			maps.Copy(data, tt.give)
			for _, k := range tt.remove {
				delete(data, k)
			}
			before := countRows[validatedModel](t, srv.DB)
			status, wsErrs, restErrs := bothTransports(t, srv, ws, string(jsonBytes(t, data)))
			if tt.want == nil {
				assert.Equal(t, http.StatusCreated, status)
				assert.EqualValues(t, before+2, countRows[validatedModel](t, srv.DB))
				return
			}
			require.Equal(t, http.StatusBadRequest, status)
			assert.Equal(t, jsonOf(t, tt.want), wsErrs, "WebSocket")
			assert.Equal(t, jsonOf(t, tt.want), restErrs, "REST")
			assert.Equal(t, before, countRows[validatedModel](t, srv.DB))
		})
	}
}

func TestValidationDataNotAnObject(t *testing.T) {
	srv := newValidationServer(t)
	ws := srv.dial(t, nil)

	tests := []struct {
		name string
		give string
		want string
	}{
		{"list", `[{"title":"Hello"}]`, "list"},
		{"string", `"Hello"`, "str"},
		{"number", `5`, "number"},
		{"bool", `true`, "bool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := jsonOf(t, map[string][]string{"non_field_errors": {"Invalid data. Expected a dictionary, but got " + tt.want + "."}})
			status, wsErrs, restErrs := bothTransports(t, srv, ws, tt.give)
			require.Equal(t, http.StatusBadRequest, status)
			assert.Equal(t, want, wsErrs)
			assert.Equal(t, want, restErrs)
		})
	}
	t.Run("null is no data", func(t *testing.T) {
		want := jsonOf(t, map[string][]string{"title": {"This field is required."}})
		status, wsErrs, restErrs := bothTransports(t, srv, ws, `null`)
		require.Equal(t, http.StatusBadRequest, status)
		assert.Equal(t, want, wsErrs)
		assert.Equal(t, want, restErrs)
	})
	assert.EqualValues(t, 0, countRows[validatedModel](t, srv.DB))
}

// TestValidationUpdate checks that update and patch validate the object
// after the change, on both transports, and leave the row alone on failure.
func TestValidationUpdate(t *testing.T) {
	srv := newValidationServer(t)
	ws := srv.dial(t, nil)
	nick := "nick"
	row := validatedModel{Title: "Hello", Age: 30, Score: 5, Nickname: &nick}
	require.NoError(t, srv.DB.Create(&row).Error)

	tests := []struct {
		name   string
		action string // "update" or "patch"
		give   string
		want   map[string][]string // nil means 200
	}{
		{"patch required to empty", "patch", `{"title":""}`, map[string][]string{"title": {"This field is required."}}},
		{"patch required to null", "patch", `{"title":null}`, map[string][]string{"title": {"This field may not be null."}}},
		{"patch beyond max", "patch", `{"age":500}`, map[string][]string{"age": {"Ensure this value is less than or equal to 130."}}},
		{"patch wrong type", "patch", `{"age":"old"}`, map[string][]string{"age": {"A valid integer is required."}}},
		{"patch another field", "patch", `{"age":31}`, nil},
		{"patch nothing", "patch", `{}`, nil},
		{"patch pointer to null", "patch", `{"nickname":null}`, nil},
		{"update without required field", "update", `{"age":31}`, map[string][]string{"title": {"This field is required."}}},
		{"update invalid", "update", `{"title":"ab","age":31}`, map[string][]string{"title": {"Ensure this field has at least 3 characters."}}},
		{"update", "update", `{"title":"World","age":32}`, nil},
		{"update data not an object", "update", `["title"]`, map[string][]string{"non_field_errors": {"Invalid data. Expected a dictionary, but got list."}}},
	}
	method := map[string]string{"update": http.MethodPut, "patch": http.MethodPatch}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before validatedModel
			require.NoError(t, srv.DB.First(&before, row.ID).Error)

			got := ws.request("validated", map[string]any{"action": tt.action, "pk": row.ID, "data": json.RawMessage(tt.give), "request_id": 1})
			status, body := srv.doREST(t, method[tt.action], "/validated/1", tt.give)
			if tt.want == nil {
				assert.EqualValues(t, http.StatusOK, got["response_status"], "WebSocket %v", got)
				assert.Equal(t, http.StatusOK, status, "REST %v", body)
				assert.Equal(t, got["data"], body)
				return
			}
			assert.EqualValues(t, http.StatusBadRequest, got["response_status"])
			assert.Equal(t, []any{jsonOf(t, tt.want)}, got["errors"])
			assert.Equal(t, http.StatusBadRequest, status)
			assert.Equal(t, jsonOf(t, tt.want), body)
			var after validatedModel
			require.NoError(t, srv.DB.First(&after, row.ID).Error)
			assert.Equal(t, before, after)
		})
	}
	var final validatedModel
	require.NoError(t, srv.DB.First(&final, row.ID).Error)
	assert.Equal(t, validatedModel{ID: row.ID, Title: "World", Age: 32, Score: 5}, final)
}

func TestValidationErrorsNeverLeakInternals(t *testing.T) {
	srv := newValidationServer(t)
	ws := srv.dial(t, nil)
	// Values of every JSON type in every field: each answer is a 201 or a
	// 400 naming only fields of the model.
	values := []string{`5`, `-1.5e300`, `"x"`, `true`, `null`, `[]`, `{}`, `[1,{"a":null}]`, `"` + strings.Repeat("ü", 50) + `"`}
	fields := []string{"title", "email", "age", "score", "color", "level", "website", "code", "handle", "nickname", "active"}
	for _, f := range fields {
		for _, v := range values {
			data := `{"title":"Hello","` + f + `":` + v + `}`
			status, wsErrs, restErrs := bothTransports(t, srv, ws, data)
			require.Contains(t, []int{http.StatusCreated, http.StatusBadRequest}, status, data)
			if status == http.StatusBadRequest {
				assert.Equal(t, wsErrs, restErrs, data)
				for k := range wsErrs.(map[string]any) {
					assert.Contains(t, fields, k, data)
				}
			}
		}
	}
}

// valOwner is the related model of valTodo.
type valOwner struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name" binding:"required"`
}

// valSettings is a JSON column with rules of its own.
type valSettings struct {
	Theme string `json:"theme" binding:"omitempty,oneof=dark light"`
}

// valTodo holds a belongs-to relation by value, a JSON column, a list of
// tags with rules on each, a rule without a hand-written message and a
// field hidden from JSON.
type valTodo struct {
	ID       uint        `json:"id" gorm:"primaryKey"`
	Name     string      `json:"name" binding:"required"`
	OwnerID  uint        `json:"owner_id"`
	Owner    valOwner    `json:"owner"`
	Settings valSettings `json:"settings" gorm:"serializer:json"`
	Tags     []string    `json:"tags" gorm:"serializer:json" binding:"dive,max=3"`
	Color    string      `json:"color" binding:"omitempty,hexcolor"`
	Secret   string      `json:"-" binding:"omitempty,min=2"`
}

func newValTodoServer(tb testing.TB, vs channelsapi.ViewSet[valTodo]) *testServer {
	tb.Helper()
	return newServer(tb, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(tb, db.AutoMigrate(&valOwner{}, &valTodo{}))
		require.NoError(tb, db.Create(&valOwner{Name: "alice"}).Error)
		vs.Stream = "todos"
		require.NoError(tb, channelsapi.Add(api, vs))
	}, quietLog())
}

// createBoth creates data on stream over the WebSocket and over REST,
// requires the same status and body on both and returns them.
func createBoth(tb testing.TB, srv *testServer, stream, data string) (int, any) {
	tb.Helper()
	ws := srv.dial(tb, nil)
	got := ws.request(stream, map[string]any{"action": "create", "data": json.RawMessage(data), "request_id": 1})
	status, body := srv.doREST(tb, http.MethodPost, "/"+stream, data)
	require.EqualValues(tb, status, got["response_status"], "WebSocket %v, REST %v", got, body)
	if status >= 400 {
		assert.Equal(tb, []any{body}, got["errors"], "WebSocket")
	}
	return status, body
}

// TestValidationRelationByValue checks that a relation held by value is not
// validated as client input, that its key in write data is read-only, and
// that errors are keyed by JSON name and path.
func TestValidationRelationByValue(t *testing.T) {
	srv := newValTodoServer(t, channelsapi.ViewSet[valTodo]{})
	tests := []struct {
		name string
		give string
		want map[string][]string // nil: 201
	}{
		{"relation by value", `{"name":"write","owner_id":1}`, nil},
		{"relation key null", `{"name":"write","owner_id":1,"owner":null}`, nil},
		{"relation key given", `{"name":"write","owner":{"id":1,"name":"x"}}`, map[string][]string{"owner": {"This field is read-only."}}},
		{"own field still required", `{"owner_id":1}`, map[string][]string{"name": {"This field is required."}}},
		{"nested field by path", `{"name":"a","settings":{"theme":"blue"}}`, map[string][]string{"settings.theme": {`"blue" is not a valid choice.`}}},
		{"list element by index", `{"name":"a","tags":["ok","long"]}`, map[string][]string{"tags.1": {"Ensure this field has no more than 3 characters."}}},
		{"translated fallback", `{"name":"a","color":"nope"}`, map[string][]string{"color": {"This field must be a valid HEX color."}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := createBoth(t, srv, "todos", tt.give)
			if tt.want == nil {
				assert.Equal(t, http.StatusCreated, status, "%v", body)
				return
			}
			assert.Equal(t, http.StatusBadRequest, status)
			assert.Equal(t, jsonOf(t, tt.want), body)
		})
	}
	// What a read shows of a relation it did not expand (here the zero
	// value of the owner held by value) can be written back.
	t.Run("a read object written back", func(t *testing.T) {
		status, created := srv.doREST(t, http.MethodPost, "/todos", `{"name":"round","owner_id":1}`)
		require.Equal(t, http.StatusCreated, status, "%v", created)
		path := fmt.Sprintf("/todos/%v", created.(map[string]any)["id"])
		status, read := srv.doREST(t, http.MethodGet, path, "")
		require.Equal(t, http.StatusOK, status)
		require.Contains(t, read.(map[string]any), "owner")
		back, err := json.Marshal(read)
		require.NoError(t, err)
		status, body := srv.doREST(t, http.MethodPut, path, string(back))
		assert.Equal(t, http.StatusOK, status, "%v", body)
		assert.Equal(t, read, body)
	})
	// A rule broken on a field hidden from JSON (a row written by the
	// application) is no field of the client's.
	t.Run("hidden field", func(t *testing.T) {
		row := valTodo{Name: "a", OwnerID: 1, Secret: "x"}
		require.NoError(t, srv.DB.Create(&row).Error)
		status, body := srv.doREST(t, http.MethodPatch, fmt.Sprintf("/todos/%d", row.ID), `{"name":"b"}`)
		assert.Equal(t, http.StatusBadRequest, status)
		assert.Equal(t, jsonOf(t, map[string][]string{channelsapi.NonFieldErrors: {"Ensure this field has at least 2 characters."}}), body)
	})
}

// ValOwned is embedded in valEmbedded, with its relation.
type ValOwned struct {
	OwnerID uint     `json:"owner_id"`
	Owner   valOwner `json:"owner"`
}

type valEmbedded struct {
	ID uint `json:"id" gorm:"primaryKey"`
	ValOwned
	Title string `json:"title" binding:"required"`
}

// TestValidationEmbeddedRelation checks that a relation of an embedded
// struct is not client input either.
func TestValidationEmbeddedRelation(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, db.AutoMigrate(&valOwner{}, &valEmbedded{}))
		require.NoError(t, db.Create(&valOwner{Name: "alice"}).Error)
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[valEmbedded]{Stream: "embedded"}))
	}, quietLog())
	status, body := createBoth(t, srv, "embedded", `{"title":"a","owner_id":1}`)
	assert.Equal(t, http.StatusCreated, status, "%v", body)
	status, body = createBoth(t, srv, "embedded", `{"owner_id":1}`)
	assert.Equal(t, http.StatusBadRequest, status)
	assert.Equal(t, jsonOf(t, map[string][]string{"title": {"This field is required."}}), body)
}

// slugged has a rule of the application's own.
type slugged struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Slug string `json:"slug" binding:"required,slug"`
}

// TestValidatorCustomRules: Add refuses a model whose binding rules the
// API's validator does not know (rather than panicking at its first
// write); a rule registered on API.Validator applies, on both transports.
func TestValidatorCustomRules(t *testing.T) {
	db := openDB(t, &slugged{})
	newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) {
		err := channelsapi.Add(api, channelsapi.ViewSet[slugged]{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "slug")
	}, quietLog())

	srv := newServerOn(t, openDB(t, &slugged{}), func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, api.Validator().RegisterValidation("slug", func(fl validator.FieldLevel) bool {
			return !strings.ContainsAny(fl.Field().String(), " /")
		}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[slugged]{Stream: "slugs"}))
	}, quietLog())
	status, body := srv.doREST(t, http.MethodPost, "/slugs", `{"slug":"a b"}`)
	assert.Equal(t, http.StatusBadRequest, status)
	assert.Equal(t, map[string]any{"slug": []any{`Invalid value (rule "slug").`}}, body)
	status, _ = srv.doREST(t, http.MethodPost, "/slugs", `{"slug":"a-b"}`)
	assert.Equal(t, http.StatusCreated, status)
	ws := srv.dial(t, nil)
	reply := ws.request("slugs", map[string]any{"action": "create", "request_id": 1, "data": map[string]any{"slug": "x/y"}})
	assert.EqualValues(t, http.StatusBadRequest, reply["response_status"], "%v", reply)
}
