package channelsapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
)

// Page sizes used when neither the ViewSet nor WithPageSize sets one.
const (
	DefaultPageSize    = 25
	DefaultMaxPageSize = 100
)

// pageMeta is the "meta" key of a WebSocket list reply (PROTOCOL.md 4.6).
type pageMeta struct {
	Count    int64 `json:"count"`
	Page     int   `json:"page"`
	PageSize int   `json:"page_size"`
	NumPages int   `json:"num_pages"`
	// Position is the stream position the rows were read at (PROTOCOL.md
	// 10).
	Position *Position `json:"position,omitempty"`
}

var errInvalidPage = NewError(http.StatusNotFound, msgInvalidPage)

// pageQuery is a requested page, as text from JSON or a query string; empty
// means not given.
type pageQuery struct{ page, size string }

// pageOf reads the page of a list from a WebSocket request's data: null,
// {} or absent mean page 1 with the default size.
func pageOf(data json.RawMessage) (pageQuery, error) {
	var q pageQuery
	if !present(data) {
		return q, nil
	}
	opts, ok := jsonObject(data)
	if !ok {
		return q, FieldError("non_field_errors", "Invalid data. Expected a dictionary, but got "+jsonKind(bytes.TrimSpace(data))+".")
	}
	if q.page, ok = scalarText(opts["page"]); !ok {
		return q, errInvalidPage
	}
	q.size, _ = scalarText(opts["page_size"])
	return q, nil
}

// scalarText returns a JSON number's literal or a JSON string's content; ""
// for an absent or null value; false for anything else.
func scalarText(raw json.RawMessage) (string, bool) {
	if !present(raw) {
		return "", true
	}
	if s, ok := jsonString(raw); ok {
		return s, true
	}
	raw = bytes.TrimSpace(raw)
	if raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9') {
		return string(raw), true
	}
	return "", false
}

// resolve turns the query into a page number and size. A page that is not a
// positive integer is "Invalid page."; a page size that is not a positive
// integer falls back to the default and one above max is capped, as in Django
// REST Framework. The default is capped too, so that a ViewSet whose
// MaxPageSize is below the default page size never returns more than max.
func (q pageQuery) resolve(def, max int) (page, size int, err error) {
	page = 1
	if q.page != "" {
		n, err := strconv.Atoi(q.page)
		if err != nil || n < 1 {
			return 0, 0, errInvalidPage
		}
		page = n
	}
	size = min(def, max)
	if n, err := strconv.Atoi(q.size); err == nil && n > 0 {
		size = min(n, max)
	}
	return page, size, nil
}

// numPages is the number of pages for count objects; an empty collection has
// one (empty) page.
func numPages(count int64, size int) int {
	if count == 0 {
		return 1
	}
	return int((count + int64(size) - 1) / int64(size))
}
