package channelsapi_test

// Tests of query_sql.go: a list query compiled to SQL.

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// Search narrows the filters on both transports, with one search field as
// with several.
func TestListSearchNarrowsFilters(t *testing.T) {
	tests := []struct {
		name   string
		search []string
	}{
		{name: "one search field", search: []string{"name"}},
		{name: "a term ORed over two fields", search: []string{"name", "name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
				addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
					vs.Filters = map[string][]string{"id": {"gte"}}
					vs.SearchFields = tt.search
				})
			})
			seed(t, srv.DB, "a", "ab", "b")
			want := []any{map[string]any{"id": float64(2), "name": "ab"}}

			status, body := srv.doREST(t, http.MethodGet, "/testmodel?id__gte=2&search=a", "")
			require.Equal(t, http.StatusOK, status, "%v", body)
			assert.Equal(t, want, body.(map[string]any)["results"])

			c := srv.dial(t, nil)
			reply := c.request("testmodel", map[string]any{"action": "list", "data": map[string]any{"id__gte": 2, "search": "a"}, "request_id": 1})
			assert.Equal(t, want, reply["data"], "%v", reply)
		})
	}
}
