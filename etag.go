package channelsapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"
)

// This file holds optimistic concurrency (PROTOCOL.md section 11): the ETag
// of an object, the If-Match precondition of a write and its 412.
//
// An object's ETag is strong and quoted. With ViewSet.VersionField it is
// "v<N>", N the version column, which the capture plugin raises by one in
// every update statement of the model (capture.go), so that writes made
// outside the API change it too; the precondition is then checked by the
// write itself (UPDATE ... WHERE version = N, no row: stale). Without one it
// is the hex of the first 16 bytes of the SHA-256 of the object as
// encoding/json writes it, read in the write's transaction, locked where the
// dialect can (FOR UPDATE), and compared before the write.

// Messages of the preconditions.
const (
	msgPreconditionFailed = "Precondition failed."
	msgBadIfMatch         = `Invalid If-Match: expected "*" or a comma-separated list of quoted entity tags such as "v3".`
	msgIfMatchType        = `if_match must be a string: "*" or a comma-separated list of quoted entity tags such as "\"v3\"".`
)

// precondition is a parsed If-Match: any existing object (*), or one of
// tags, strong entity tags with their quotes. Weak tags never match (RFC
// 9110 13.1.1: strong comparison) and are not kept.
type precondition struct {
	any  bool
	tags []string
}

// parseIfMatch parses the value of an If-Match header (several header
// lines joined by commas) or of the "if_match" key.
func parseIfMatch(value string) (*precondition, error) {
	value = strings.TrimSpace(value)
	if value == "*" {
		return &precondition{any: true}, nil
	}
	p := &precondition{}
	n := 0
	for part := range strings.SplitSeq(value, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue // empty list elements are allowed (RFC 9110 5.6.1)
		}
		weak := strings.HasPrefix(part, "W/")
		tag := strings.TrimPrefix(part, "W/")
		if len(tag) < 2 || tag[0] != '"' || tag[len(tag)-1] != '"' || !etagChars(tag[1:len(tag)-1]) {
			return nil, NewError(http.StatusBadRequest, msgBadIfMatch)
		}
		n++
		if !weak {
			p.tags = append(p.tags, tag)
		}
	}
	if n == 0 {
		return nil, NewError(http.StatusBadRequest, msgBadIfMatch)
	}
	return p, nil
}

// etagChars reports whether s holds only etagc characters: visible ASCII
// but the double quote, and obs-text.
func etagChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' || c < 0x21 || c == 0x7f {
			return false
		}
	}
	return true
}

// matches reports whether an object whose ETag is etag meets p.
func (p *precondition) matches(etag string) bool {
	if p.any {
		return true
	}
	for _, t := range p.tags {
		if t == etag {
			return true
		}
	}
	return false
}

// errStale ends a write's transaction whose precondition failed; the
// action then reads the current object for the 412 (staleError).
var errStale = errors.New("precondition failed")

// staleError answers a write whose If-Match does not match: 412 with the
// current object and its ETag.
type staleError struct {
	current any
	etag    string
}

func (e *staleError) Error() string { return msgPreconditionFailed }

// versionField resolves ViewSet.VersionField on m: a JSON name, Go field
// name or column of an integer column.
func versionField(m *model, name string) (*schema.Field, error) {
	if name == "" {
		return nil, nil
	}
	var f *schema.Field
	if jf, ok := m.byJSON[name]; ok {
		f = jf.gorm
	} else if gf := m.schema.LookUpField(name); gf != nil {
		f = gf
	}
	if f == nil || f.DBName == "" {
		return nil, fmt.Errorf("version field %q is not a column of the model", name)
	}
	switch f.FieldType.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
	default:
		return nil, fmt.Errorf("version field %q must be an integer, is %s", name, f.FieldType)
	}
	if f.PrimaryKey {
		return nil, fmt.Errorf("version field %q is the primary key", name)
	}
	return f, nil
}

// setVersion makes the field of ViewSet.VersionField m's version: read
// only for clients, raised by every update.
func (m *model) setVersion(name string) error {
	f, err := versionField(m, name)
	if err != nil || f == nil {
		return err
	}
	m.version = f
	if vf := m.byGo[f.Name]; vf != nil {
		vf.writable = false
		for _, n := range []string{vf.json, f.Name, f.DBName} {
			if n != "" {
				m.ignored[strings.ToLower(n)] = true
			}
		}
	}
	return nil
}

// etagOf returns the ETag of obj (a *T of m), whose JSON is data when
// known (nil: encoded here). It is "" when obj cannot be encoded.
func (m *model) etagOf(obj any, data json.RawMessage) string {
	rv := reflect.ValueOf(obj)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		if m.version != nil || data == nil {
			return ""
		}
	} else if m.version != nil {
		v, _ := m.version.ValueOf(context.Background(), rv.Elem())
		return `"v` + fmt.Sprint(v) + `"`
	}
	if data == nil {
		var err error
		if data, err = json.Marshal(obj); err != nil {
			return ""
		}
	}
	sum := sha256.Sum256(data)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}

// versionOf returns the version of obj (a *T of m with a version field).
func (m *model) versionOf(obj any) any {
	v, _ := m.version.ValueOf(context.Background(), reflect.ValueOf(obj).Elem())
	return v
}

// stateTag returns the ETag of obj as committed by the write in tx: from
// its version, or else from the row read back in tx (the object in memory
// may hold values the database keeps otherwise, such as a time's
// precision), so that a retrieve afterwards answers the same ETag.
func (v *viewSet[T]) stateTag(tx *gorm.DB, obj *T) (string, error) {
	if v.m.version != nil {
		return v.m.etagOf(obj, nil), nil
	}
	pk, _ := v.m.pkOf(tx.Statement.Context, reflect.ValueOf(obj).Elem())
	row, err := v.lookup(tx.Model(new(T)), &Request{PK: pk})
	if err != nil {
		return "", err
	}
	return v.m.etagOf(row, nil), nil
}

// forWrite looks the object of a write up in its transaction tx and checks
// req's If-Match: without a version field the row is locked where the
// dialect can, so that the comparison holds until the write. It returns
// errStale when the precondition fails.
func (v *viewSet[T]) forWrite(ctx context.Context, tx *gorm.DB, req *Request) (*T, error) {
	if req.ifMatch != nil && v.m.version == nil {
		tx = tx.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate, Table: clause.Table{Name: clause.CurrentTable}})
	}
	obj, err := v.find(ctx, tx, req)
	if err != nil {
		return nil, err
	}
	if req.ifMatch != nil && !req.ifMatch.matches(v.m.etagOf(obj, nil)) {
		return nil, errStale
	}
	return obj, nil
}

// conditional narrows a write statement on obj to its version as read,
// when req has a precondition and the model a version field: the write
// then affects no row when another committed meanwhile.
func (v *viewSet[T]) conditional(tx *gorm.DB, req *Request, obj *T) (*gorm.DB, bool) {
	if req.ifMatch == nil || req.ifMatch.any || v.m.version == nil {
		return tx, false
	}
	col := clause.Column{Table: clause.CurrentTable, Name: v.m.version.DBName}
	return tx.Where(clause.Eq{Column: col, Value: v.m.versionOf(obj)}), true
}

// stale turns errStale into the 412 of req: the current object, read
// again, with its ETag (404 when it is gone). Other errors pass.
func (v *viewSet[T]) stale(ctx context.Context, req *Request, err error) error {
	if !errors.Is(err, errStale) {
		return err
	}
	cur, ferr := v.find(ctx, v.api.db.WithContext(ctx), req)
	if ferr != nil {
		return ferr
	}
	return &staleError{current: cur, etag: v.m.etagOf(cur, nil)}
}

// werrETag is the ETag of a 412's current object, "" for other errors.
func werrETag(e *wireError) string {
	if e == nil {
		return ""
	}
	return e.etag
}
