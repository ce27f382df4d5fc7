package channelsapi_test

// This file tests capture.go, capture_tx.go and returning.go, the GORM
// plugin that turns statements into changes (PROTOCOL.md section 5): an
// event is the row exactly as the database committed it, one per row the
// statement touched, with the action the row's change is for subscribers (it
// appeared: create; it changed: update; it went: delete); only committed
// work is published, in commit order, a transaction's changes in statement
// order, and what cannot be followed makes subscribers resync. Each
// TestCapture case ends with a sentinel write whose event must be the next
// frame after the expected ones, so that nothing else was published.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/channelsapi/channelsapi"
)

// captureItem is the registered model of the capture tests, on "items". Its
// name is unique (for the upsert cases), text and votes have column
// defaults, and owner_id makes it the child of captureOwner, which is not
// registered.
type captureItem struct {
	ID      uint   `json:"id" gorm:"primaryKey"`
	Name    string `json:"name" gorm:"uniqueIndex"`
	Text    string `json:"text" gorm:"not null;default:dflt"`
	Votes   int    `json:"votes" gorm:"not null;default:0"`
	OwnerID *uint  `json:"owner_id"`
}

// captureItemsTable is captureItem's table.
const captureItemsTable = "capture_items"

// captureOwner has many captureItems; it is not registered.
type captureOwner struct {
	ID    uint
	Name  string
	Items []captureItem `gorm:"foreignKey:OwnerID"`
}

// captureItemName is a second struct type on captureItem's table, mapping
// only some of its columns.
type captureItemName struct {
	ID   uint
	Name string
}

func (captureItemName) TableName() string { return captureItemsTable }

// captureSoftItem is soft-deleted, on "softitems".
type captureSoftItem struct {
	ID        uint           `json:"id"`
	Name      string         `json:"name"`
	DeletedAt gorm.DeletedAt `json:"-"`
}

// capture is a server with captureItem and captureSoftItem added, on a
// fresh database (openDB), each with a sentinel row.
type capture struct {
	srv  *testServer
	db   *gorm.DB
	item captureStream
	soft captureStream
}

// captureStream is what a listener needs of a stream: its name and label,
// and how to write its sentinel change.
type captureStream struct {
	name, label string
	sentinelPK  uint
	sentinel    func(tb testing.TB, name string) // renames the sentinel row
}

func newCapture(t *testing.T) *capture {
	t.Helper()
	db := openDB(t, &captureOwner{}, &captureItem{}, &captureSoftItem{})
	srv := newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[captureItem]{Stream: "items", Label: "tests.item"}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[captureSoftItem]{Stream: "softitems", Label: "tests.softitem"}))
	})
	// The sentinel rows are made first: the rows of a case come after them.
	item := captureItem{Name: "sentinel", Text: "sentinel"}
	require.NoError(t, db.Create(&item).Error)
	soft := captureSoftItem{Name: "sentinel"}
	require.NoError(t, db.Create(&soft).Error)
	return &capture{
		srv: srv,
		db:  db,
		item: captureStream{name: "items", label: "tests.item", sentinelPK: item.ID, sentinel: func(tb testing.TB, name string) {
			require.NoError(tb, db.Model(&captureItem{ID: item.ID}).Update("name", name).Error)
		}},
		soft: captureStream{name: "softitems", label: "tests.softitem", sentinelPK: soft.ID, sentinel: func(tb testing.TB, name string) {
			require.NoError(tb, db.Model(&captureSoftItem{ID: soft.ID}).Update("name", name).Error)
		}},
	}
}

// seed creates items one by one and returns them with their keys.
func (c *capture) seed(tb testing.TB, items ...captureItem) []captureItem {
	tb.Helper()
	for i := range items {
		require.NoError(tb, c.db.Create(&items[i]).Error)
	}
	return items
}

// listener is two clients of one stream: group is subscribed to create,
// update and delete of every object, instance subscribes with
// subscribe_instance to the sentinel (request_id "sentinel") and to the
// objects a case names (request_id "pk-<pk>").
type listener struct {
	s               captureStream
	group, instance *wsClient
	n               int // sentinel writes so far
}

// listen connects a listener to s, subscribed to the objects pks (which
// must exist) besides the sentinel.
func (c *capture) listen(t *testing.T, s captureStream, pks ...uint) *listener {
	t.Helper()
	l := &listener{s: s, group: c.srv.dial(t, nil), instance: c.srv.dial(t, nil)}
	for _, e := range []string{"create", "update", "delete"} {
		got := l.group.request(s.name, map[string]any{"action": "subscribe", "data": map[string]any{"action": e}, "request_id": e})
		require.EqualValues(t, 200, got["response_status"], "%v", got)
	}
	subscribe := func(pk uint, rid string) {
		got := l.instance.request(s.name, map[string]any{"action": "subscribe_instance", "pk": pk, "request_id": rid})
		require.EqualValues(t, 201, got["response_status"], "%v", got)
	}
	subscribe(s.sentinelPK, "sentinel")
	for _, pk := range pks {
		subscribe(pk, fmt.Sprintf("pk-%d", pk))
	}
	// The events of changes committed before the subscriptions may still
	// arrive after them: they are read and dropped here.
	l.next(t)
	return l
}

// next writes the sentinel change and returns the payloads each client
// received before the sentinel's event: everything published since the
// last call.
func (l *listener) next(t *testing.T) (group, instance []map[string]any) {
	t.Helper()
	l.n++
	name := fmt.Sprintf("sentinel-%d", l.n)
	l.s.sentinel(t, name)
	for {
		p := l.group.readPayload(l.s.name)
		if p["pk"] == float64(l.s.sentinelPK) && p["action"] == "update" && dataOf(p)["name"] == name {
			break
		}
		group = append(group, p)
	}
	for {
		p := l.instance.readPayload(l.s.name)
		if p["request_id"] == "sentinel" && dataOf(p)["name"] == name {
			break
		}
		instance = append(instance, p)
	}
	return group, instance
}

// expect checks that the clients received exactly the events given before
// the sentinel, in any order (a statement touching several rows has no
// order of its own).
func (l *listener) expect(t *testing.T, group, instance []map[string]any) {
	t.Helper()
	gotGroup, gotInstance := l.next(t)
	assert.ElementsMatch(t, texts(t, group), texts(t, gotGroup), "create/update/delete subscriber")
	assert.ElementsMatch(t, texts(t, instance), texts(t, gotInstance), "subscribe_instance subscriber")
}

// texts encodes payloads as JSON texts, one a line in a failure message.
func texts(tb testing.TB, payloads []map[string]any) []string {
	tb.Helper()
	out := make([]string, len(payloads))
	for i, p := range payloads {
		b, err := json.Marshal(p)
		require.NoError(tb, err)
		out[i] = string(b)
	}
	return out
}

func dataOf(p map[string]any) map[string]any {
	d, _ := p["data"].(map[string]any)
	return d
}

// event is the channels-api event of a change of row (as JSON) on l's stream.
func (l *listener) event(action string, row map[string]any) map[string]any {
	return map[string]any{"action": action, "pk": row["id"], "model": l.s.label, "data": row}
}

// instanceEvent is the event of a change of row for its subscribe_instance
// subscriber ("pk-<pk>").
func instanceEvent(action string, row map[string]any) map[string]any {
	data, status := any(row), 200.0
	if action == "delete" {
		data, status = map[string]any{"pk": row["id"]}, 204.0
	}
	return map[string]any{"action": action, "data": data, "errors": []any{}, "response_status": status,
		"request_id": fmt.Sprintf("pk-%v", row["id"])}
}

// rowOf reads one row of T (soft-deleted ones too) as the database holds
// it, as JSON: conds are First's conditions.
func rowOf[T any](tb testing.TB, db *gorm.DB, conds ...any) map[string]any {
	tb.Helper()
	var v T
	require.NoError(tb, db.Unscoped().First(&v, conds...).Error)
	return jsonOf(tb, v).(map[string]any)
}

// TestCaptureUpserts: an upsert that updates an existing row publishes an
// update carrying the row as committed (heard by update and
// subscribe_instance subscribers), not a create carrying the Go value; a
// row an upsert really inserts is a create.
func TestCaptureUpserts(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, c *capture)
	}{
		{"OnConflict UpdateAll of an existing row", func(t *testing.T, c *capture) {
			old := c.seed(t, captureItem{Name: "a", Text: "old", Votes: 3})[0]
			l := c.listen(t, c.item, old.ID)
			require.NoError(t, c.db.Clauses(clause.OnConflict{UpdateAll: true}).
				Create(&captureItem{ID: old.ID, Name: "a2", Text: "new", Votes: 4}).Error)
			row := rowOf[captureItem](t, c.db, old.ID)
			require.Equal(t, "new", row["text"])
			l.expect(t, []map[string]any{l.event("update", row)}, []map[string]any{instanceEvent("update", row)})
		}},
		{"OnConflict updating some columns carries the committed row", func(t *testing.T, c *capture) {
			old := c.seed(t, captureItem{Name: "a", Text: "old", Votes: 3})[0]
			l := c.listen(t, c.item, old.ID)
			require.NoError(t, c.db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoUpdates: clause.AssignmentColumns([]string{"name"})}).
				Create(&captureItem{ID: old.ID, Name: "a2", Text: "never written", Votes: 99}).Error)
			row := rowOf[captureItem](t, c.db, old.ID)
			require.Equal(t, map[string]any{"id": float64(old.ID), "name": "a2", "text": "old", "votes": 3.0, "owner_id": nil}, row)
			l.expect(t, []map[string]any{l.event("update", row)}, []map[string]any{instanceEvent("update", row)})
		}},
		{"batch upsert of an existing and a new row", func(t *testing.T, c *capture) {
			old := c.seed(t, captureItem{Name: "a", Text: "old"})[0]
			l := c.listen(t, c.item, old.ID)
			// The new row has a key of its own: in a batch where some keys
			// are set GORM writes the zero key of the others as 0.
			rows := []captureItem{{ID: old.ID, Name: "a2", Text: "new"}, {ID: 500, Name: "inserted", Text: "new row"}}
			res := c.db.Clauses(clause.OnConflict{UpdateAll: true}).Create(&rows)
			require.NoError(t, res.Error)
			updated, inserted := rowOf[captureItem](t, c.db, old.ID), rowOf[captureItem](t, c.db, 500)
			l.expect(t, []map[string]any{l.event("update", updated), l.event("create", inserted)},
				[]map[string]any{instanceEvent("update", updated)})
		}},
		{"Save of a slice of existing rows", func(t *testing.T, c *capture) {
			seeded := c.seed(t, captureItem{Name: "a", Text: "ta"}, captureItem{Name: "b", Text: "tb"})
			l := c.listen(t, c.item, seeded[0].ID, seeded[1].ID)
			var rows []captureItem
			require.NoError(t, c.db.Order("id").Find(&rows, []uint{seeded[0].ID, seeded[1].ID}).Error)
			rows[0].Name, rows[1].Text = "a2", "tb2"
			require.NoError(t, c.db.Save(&rows).Error) // GORM saves a slice with INSERT ... ON CONFLICT DO UPDATE
			a, b := rowOf[captureItem](t, c.db, seeded[0].ID), rowOf[captureItem](t, c.db, seeded[1].ID)
			require.Equal(t, "a2", a["name"])
			l.expect(t, []map[string]any{l.event("update", a), l.event("update", b)},
				[]map[string]any{instanceEvent("update", a), instanceEvent("update", b)})
		}},
		{"Association Append of an existing child", func(t *testing.T, c *capture) {
			owner := captureOwner{Name: "o"}
			require.NoError(t, c.db.Create(&owner).Error)
			child := c.seed(t, captureItem{Name: "child", Text: "c"})[0]
			l := c.listen(t, c.item, child.ID)
			// GORM upserts the child: INSERT ... ON CONFLICT (id) DO UPDATE SET owner_id.
			require.NoError(t, c.db.Model(&owner).Association("Items").Append(&child))
			row := rowOf[captureItem](t, c.db, child.ID)
			require.Equal(t, float64(owner.ID), row["owner_id"])
			l.expect(t, []map[string]any{l.event("update", row)}, []map[string]any{instanceEvent("update", row)})
		}},
		{"Save of a parent with loaded children", func(t *testing.T, c *capture) {
			created := captureOwner{Name: "o", Items: []captureItem{{Name: "c1", Text: "t1"}, {Name: "c2", Text: "t2"}}}
			require.NoError(t, c.db.Create(&created).Error)
			var owner captureOwner
			require.NoError(t, c.db.Preload("Items", func(db *gorm.DB) *gorm.DB { return db.Order("id") }).First(&owner, created.ID).Error)
			require.Len(t, owner.Items, 2)
			l := c.listen(t, c.item, owner.Items[0].ID, owner.Items[1].ID)
			owner.Name = "o2"
			// Without FullSaveAssociations GORM writes only the children's
			// owner_id (ON CONFLICT (id) DO UPDATE SET owner_id): this name
			// is never written, and no event may carry it.
			owner.Items[0].Name = "never written"
			require.NoError(t, c.db.Save(&owner).Error)
			c1, c2 := rowOf[captureItem](t, c.db, owner.Items[0].ID), rowOf[captureItem](t, c.db, owner.Items[1].ID)
			require.Equal(t, "c1", c1["name"])
			l.expect(t, []map[string]any{l.event("update", c1), l.event("update", c2)},
				[]map[string]any{instanceEvent("update", c1), instanceEvent("update", c2)})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newCapture(t)) })
	}
}

// TestCaptureOnConflictDoNothing: a batch insert that skips a conflicting
// row publishes one create, for the row inserted, with its real key and its
// own data, and nothing for the row that conflicted.
func TestCaptureOnConflictDoNothing(t *testing.T) {
	c := newCapture(t)
	taken := c.seed(t, captureItem{Name: "taken", Text: "kept"})[0]
	l := c.listen(t, c.item, taken.ID)
	rows := []captureItem{{Name: "taken", Text: "conflicts"}, {Name: "fresh", Text: "inserted"}}
	res := c.db.Clauses(clause.OnConflict{DoNothing: true}).Create(&rows)
	require.NoError(t, res.Error)
	require.EqualValues(t, 1, res.RowsAffected)
	fresh := rowOf[captureItem](t, c.db, "name = ?", "fresh")
	require.Equal(t, "inserted", fresh["text"])
	require.Equal(t, "kept", rowOf[captureItem](t, c.db, taken.ID)["text"])
	l.expect(t, []map[string]any{l.event("create", fresh)}, nil)
}

// TestCaptureCreateOfSomeColumns: a create that writes only some columns
// publishes what was written (the column defaults for the others), not the
// values the Go struct holds in the columns left out.
func TestCaptureCreateOfSomeColumns(t *testing.T) {
	tests := []struct {
		name string
		give func(db *gorm.DB) *gorm.DB
		want map[string]any // of the row, without its id
	}{
		{"Omit", func(db *gorm.DB) *gorm.DB { return db.Omit("text") }, map[string]any{"name": "n", "text": "dflt", "votes": 7.0, "owner_id": nil}},
		{"Select", func(db *gorm.DB) *gorm.DB { return db.Select("name") }, map[string]any{"name": "n", "text": "dflt", "votes": 0.0, "owner_id": nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCapture(t)
			l := c.listen(t, c.item)
			item := captureItem{Name: "n", Text: "in the struct only", Votes: 7}
			require.NoError(t, tt.give(c.db).Create(&item).Error)
			row := rowOf[captureItem](t, c.db, item.ID)
			want := map[string]any{"id": float64(item.ID)}
			for k, v := range tt.want {
				want[k] = v
			}
			require.Equal(t, want, row)
			l.expect(t, []map[string]any{l.event("create", row)}, nil)
		})
	}
}

// TestCaptureCreateFromMap: a create from a map, on the model or on its
// table, publishes a create with the row.
func TestCaptureCreateFromMap(t *testing.T) {
	tests := []struct {
		name string
		give func(db *gorm.DB) *gorm.DB
	}{
		{"Model", func(db *gorm.DB) *gorm.DB { return db.Model(&captureItem{}) }},
		{"Table", func(db *gorm.DB) *gorm.DB { return db.Table(captureItemsTable) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCapture(t)
			l := c.listen(t, c.item)
			require.NoError(t, tt.give(c.db).Create(map[string]any{"name": "from a map", "text": "m"}).Error)
			row := rowOf[captureItem](t, c.db, "name = ?", "from a map")
			l.expect(t, []map[string]any{l.event("create", row)}, nil)
		})
	}
}

// TestCaptureSecondTypeOnTheTable: writes through another struct type
// mapped on the registered model's table are changes of the registered
// stream.
func TestCaptureSecondTypeOnTheTable(t *testing.T) {
	t.Run("create", func(t *testing.T) {
		c := newCapture(t)
		l := c.listen(t, c.item)
		other := captureItemName{Name: "through another type"}
		require.NoError(t, c.db.Create(&other).Error)
		row := rowOf[captureItem](t, c.db, other.ID)
		require.Equal(t, "dflt", row["text"])
		l.expect(t, []map[string]any{l.event("create", row)}, nil)
	})
	t.Run("update", func(t *testing.T) {
		c := newCapture(t)
		item := c.seed(t, captureItem{Name: "a", Text: "t", Votes: 2})[0]
		l := c.listen(t, c.item, item.ID)
		require.NoError(t, c.db.Model(&captureItemName{ID: item.ID}).Update("name", "renamed").Error)
		row := rowOf[captureItem](t, c.db, item.ID)
		require.Equal(t, "renamed", row["name"])
		l.expect(t, []map[string]any{l.event("update", row)}, []map[string]any{instanceEvent("update", row)})
	})
	t.Run("delete", func(t *testing.T) {
		c := newCapture(t)
		item := c.seed(t, captureItem{Name: "a", Text: "t", Votes: 2})[0]
		before := rowOf[captureItem](t, c.db, item.ID)
		l := c.listen(t, c.item, item.ID)
		res := c.db.Delete(&captureItemName{ID: item.ID})
		require.NoError(t, res.Error)
		require.EqualValues(t, 1, res.RowsAffected)
		l.expect(t, []map[string]any{l.event("delete", before)}, []map[string]any{instanceEvent("delete", before)})
	})
}

// TestCaptureAliasedTable: bulk writes on the registered table under an
// alias publish one event per row touched.
func TestCaptureAliasedTable(t *testing.T) {
	aliased := captureItemsTable + " AS i"
	setup := func(t *testing.T) (*capture, *listener, []captureItem) {
		c := newCapture(t)
		items := c.seed(t, captureItem{Name: "a", Text: "tagged"}, captureItem{Name: "b", Text: "other"}, captureItem{Name: "c", Text: "tagged"})
		return c, c.listen(t, c.item, items[0].ID, items[1].ID, items[2].ID), items
	}
	t.Run("update", func(t *testing.T) {
		c, l, items := setup(t)
		res := c.db.Table(aliased).Where("i.text = ?", "tagged").Updates(map[string]any{"votes": 5})
		require.NoError(t, res.Error)
		require.EqualValues(t, 2, res.RowsAffected)
		a, cc := rowOf[captureItem](t, c.db, items[0].ID), rowOf[captureItem](t, c.db, items[2].ID)
		require.Equal(t, 5.0, a["votes"])
		l.expect(t, []map[string]any{l.event("update", a), l.event("update", cc)},
			[]map[string]any{instanceEvent("update", a), instanceEvent("update", cc)})
	})
	t.Run("delete", func(t *testing.T) {
		c, l, items := setup(t)
		a, cc := rowOf[captureItem](t, c.db, items[0].ID), rowOf[captureItem](t, c.db, items[2].ID)
		res := c.db.Table(aliased).Where("i.text = ?", "tagged").Delete(&captureItem{})
		require.NoError(t, res.Error)
		require.EqualValues(t, 2, res.RowsAffected)
		l.expect(t, []map[string]any{l.event("delete", a), l.event("delete", cc)},
			[]map[string]any{instanceEvent("delete", a), instanceEvent("delete", cc)})
	})
}

// TestCapturePrimaryKeyChange: an update that changes a row's primary key
// is, by our definition, the delete of the object with the old key followed
// by the create of an object with the new one. A subscriber holds objects
// by key: an update event could only say which key it is about, not which
// it was.
func TestCapturePrimaryKeyChange(t *testing.T) {
	c := newCapture(t)
	item := c.seed(t, captureItem{Name: "a", Text: "t"})[0]
	before := rowOf[captureItem](t, c.db, item.ID)
	l := c.listen(t, c.item, item.ID)
	const newPK = 50
	res := c.db.Model(&captureItem{}).Where("id = ?", item.ID).Update("id", newPK)
	require.NoError(t, res.Error)
	require.EqualValues(t, 1, res.RowsAffected)
	after := rowOf[captureItem](t, c.db, newPK)
	group, instance := l.next(t)
	assert.Equal(t, texts(t, []map[string]any{l.event("delete", before), l.event("create", after)}), texts(t, group),
		"the old key goes, then the new one comes")
	assert.Equal(t, texts(t, []map[string]any{instanceEvent("delete", before)}), texts(t, instance), "the object subscribed to is gone")
}

// TestCaptureOrderWithoutDefaultTransaction: with SkipDefaultTransaction,
// concurrent increments of one row are published in commit order, each
// once.
func TestCaptureOrderWithoutDefaultTransaction(t *testing.T) {
	c := newCapture(t)
	item := c.seed(t, captureItem{Name: "counter", Text: "c"})[0]
	l := c.listen(t, c.item)
	db := c.db.Session(&gorm.Session{SkipDefaultTransaction: true})
	// 200 events and the sentinel's fit in a connection's queue (256)
	// while the listener reads only after the writes.
	const writers, each = 8, 25
	concurrently(t, writers, each, func() error {
		return db.Model(&captureItem{ID: item.ID}).Update("votes", gorm.Expr("votes + 1")).Error
	})
	group, _ := l.next(t)
	want, got := make([]any, writers*each), make([]any, len(group))
	for i := range want {
		want[i] = fmt.Sprintf("update %d votes=%d", item.ID, i+1)
	}
	for i, p := range group {
		got[i] = fmt.Sprintf("%v %v votes=%v", p["action"], p["pk"], dataOf(p)["votes"])
	}
	assert.Equal(t, want, got, "votes 1..%d, each once, in commit order", writers*each)
}

// TestCaptureRowCommittedDuringBulkStatement: under READ COMMITTED each
// statement sees the rows committed before it starts, so a bulk UPDATE or
// DELETE may touch a row another transaction committed after anything the
// writing transaction ran before it. That row gets its event too. A
// callback registered just before GORM's statement (after Register, so it
// runs after whatever the plugin runs before the statement) commits such a
// row from another connection, through the same *gorm.DB: its create is
// published too.
func TestCaptureRowCommittedDuringBulkStatement(t *testing.T) {
	if postgresDSN() == "" {
		t.Skip("SKIP: PostgreSQL only: SQLite runs one write transaction at a time, so no row can be committed while a statement's transaction is open")
	}
	tests := []struct {
		action string
		// hook registers fn on GORM's chain of the statement, just before
		// GORM's callback that runs it.
		hook func(db *gorm.DB, fn func(*gorm.DB)) error
		run  func(tx *gorm.DB) *gorm.DB
	}{
		{"update",
			func(db *gorm.DB, fn func(*gorm.DB)) error {
				return db.Callback().Update().Before("gorm:update").Register("test:commit_meanwhile", fn)
			},
			func(tx *gorm.DB) *gorm.DB {
				return tx.Model(&captureItem{}).Where("name LIKE ?", "x%").Updates(map[string]any{"text": "bulk"})
			}},
		{"delete",
			func(db *gorm.DB, fn func(*gorm.DB)) error {
				return db.Callback().Delete().Before("gorm:delete").Register("test:commit_meanwhile", fn)
			},
			func(tx *gorm.DB) *gorm.DB { return tx.Where("name LIKE ?", "x%").Delete(&captureItem{}) }},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			c := newCapture(t)
			items := c.seed(t, captureItem{Name: "x1", Text: "t"}, captureItem{Name: "y", Text: "t"}, captureItem{Name: "x2", Text: "t"})
			l := c.listen(t, c.item)
			late := captureItem{Name: "x-late", Text: "committed meanwhile"}
			var lateRow map[string]any // as committed by the other connection
			var armed atomic.Bool
			require.NoError(t, tt.hook(c.db, func(tx *gorm.DB) {
				if tx.Statement.Table == captureItemsTable && armed.CompareAndSwap(true, false) {
					require.NoError(t, c.db.Create(&late).Error, "another connection commits a matching row")
					lateRow = rowOf[captureItem](t, c.db, late.ID)
				}
			}))
			before := []map[string]any{rowOf[captureItem](t, c.db, items[0].ID), rowOf[captureItem](t, c.db, items[2].ID)}
			var res *gorm.DB
			require.NoError(t, c.db.Transaction(func(tx *gorm.DB) error {
				armed.Store(true)
				res = tt.run(tx)
				return res.Error
			}))
			require.False(t, armed.Load(), "the callback ran")
			require.EqualValues(t, 3, res.RowsAffected, "the statement touched the row committed meanwhile")
			want := []map[string]any{l.event("create", lateRow)}
			if tt.action == "update" {
				for _, id := range []uint{items[0].ID, items[2].ID, late.ID} {
					want = append(want, l.event("update", rowOf[captureItem](t, c.db, id)))
				}
			} else {
				want = append(want, l.event("delete", before[0]), l.event("delete", before[1]), l.event("delete", lateRow))
			}
			l.expect(t, want, nil)
		})
	}
}

// TestCaptureSoftDeletedRows: a row that is soft-deleted is gone for
// subscribers: deleting it for good publishes nothing more, and restoring
// it is a create.
func TestCaptureSoftDeletedRows(t *testing.T) {
	t.Run("hard delete of a soft-deleted row", func(t *testing.T) {
		c := newCapture(t)
		item := captureSoftItem{Name: "soft"}
		require.NoError(t, c.db.Create(&item).Error)
		row := rowOf[captureSoftItem](t, c.db, item.ID)
		l := c.listen(t, c.soft)
		require.NoError(t, c.db.Delete(&item).Error)
		l.expect(t, []map[string]any{l.event("delete", row)}, nil)
		res := c.db.Unscoped().Delete(&item)
		require.NoError(t, res.Error)
		require.EqualValues(t, 1, res.RowsAffected)
		l.expect(t, nil, nil)
	})
	t.Run("undelete", func(t *testing.T) {
		c := newCapture(t)
		item := captureSoftItem{Name: "soft"}
		require.NoError(t, c.db.Create(&item).Error)
		require.NoError(t, c.db.Delete(&item).Error)
		l := c.listen(t, c.soft)
		res := c.db.Unscoped().Model(&item).Update("deleted_at", nil)
		require.NoError(t, res.Error)
		require.EqualValues(t, 1, res.RowsAffected)
		l.expect(t, []map[string]any{l.event("create", rowOf[captureSoftItem](t, c.db, item.ID))}, nil)
	})
	t.Run("update of a soft-deleted row", func(t *testing.T) {
		c := newCapture(t)
		item := captureSoftItem{Name: "soft"}
		require.NoError(t, c.db.Create(&item).Error)
		require.NoError(t, c.db.Delete(&item).Error)
		l := c.listen(t, c.soft)
		res := c.db.Unscoped().Model(&item).Update("name", "still deleted")
		require.NoError(t, res.Error)
		require.EqualValues(t, 1, res.RowsAffected)
		l.expect(t, nil, nil) // subscribers were told it is gone
	})
}

// TestCaptureUpsertWithoutConflictColumns: on SQLite an upsert that names
// no conflict target cannot tell the rows it inserted from those it
// updated, so the stream's subscribers resync rather than be told a guess.
func TestCaptureUpsertWithoutConflictColumns(t *testing.T) {
	if postgresDSN() != "" {
		t.Skip("SKIP: SQLite only: PostgreSQL refuses ON CONFLICT DO UPDATE without a conflict target, and tells inserted rows by xmax")
	}
	c := newCapture(t)
	old := c.seed(t, captureItem{Name: "a", Text: "old"})[0]
	l := c.listen(t, c.item)
	require.NoError(t, c.db.Clauses(clause.OnConflict{DoUpdates: clause.AssignmentColumns([]string{"text"})}).
		Create(&captureItem{ID: old.ID, Name: "a", Text: "new"}).Error)
	code, reason := l.group.closeFrame()
	assert.Equal(t, 1013, code)
	assert.Equal(t, "upsert without conflict columns", reason)
}

// SoftModel has a DeletedAt: deleting it is a soft delete.
type SoftModel struct {
	ID        uint           `json:"id"`
	Name      string         `json:"name"`
	DeletedAt gorm.DeletedAt `json:"-"`
}

func TestSoftDeleteIsDeleteEvent(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, db.AutoMigrate(&SoftModel{}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[SoftModel]{Stream: "soft", Label: "tests.soft"}))
	})
	require.NoError(t, srv.DB.Create(&SoftModel{Name: "gone soon"}).Error)
	ws := srv.dial(t, nil)
	got := ws.request("soft", map[string]any{"action": "subscribe", "data": map[string]any{"action": "delete"}})
	require.EqualValues(t, 200, got["response_status"])

	status, _ := srv.doREST(t, "DELETE", "/soft/1", "")
	require.Equal(t, 204, status)
	assert.Equal(t, map[string]any{"action": "delete", "pk": 1.0, "model": "tests.soft",
		"data": map[string]any{"id": 1.0, "name": "gone soon"}}, ws.readPayload("soft"))
	var n int64
	require.NoError(t, srv.DB.Unscoped().Model(&SoftModel{}).Count(&n).Error)
	assert.EqualValues(t, 1, n, "the row is kept, soft-deleted")
	status, _ = srv.doREST(t, "GET", "/soft/1", "")
	assert.Equal(t, 404, status)
}

func TestBulkStatements(t *testing.T) {
	t.Run("per-row events within the limit", func(t *testing.T) {
		srv := testModelServer(t)
		seed(t, srv.DB, "bulk-a", "keep", "bulk-b")
		ws := srv.dial(t, nil)
		ws.subscribe("update", nil)
		ws.subscribe("delete", nil)

		res := srv.DB.Model(&TestModel{}).Where("name LIKE ?", "bulk-%").Update("name", gorm.Expr("name || '!'"))
		require.NoError(t, res.Error)
		require.EqualValues(t, 2, res.RowsAffected)
		assert.Equal(t, event("update", 1, "bulk-a!"), ws.readPayload("testmodel"))
		assert.Equal(t, event("update", 3, "bulk-b!"), ws.readPayload("testmodel"))

		require.NoError(t, srv.DB.Where("name LIKE ?", "bulk-%").Delete(&TestModel{}).Error)
		assert.Equal(t, event("delete", 1, "bulk-a!"), ws.readPayload("testmodel"))
		assert.Equal(t, event("delete", 3, "bulk-b!"), ws.readPayload("testmodel"))

		require.NoError(t, srv.DB.Table("test_models").Where("name = ?", "keep").Update("name", "kept").Error)
		assert.Equal(t, event("update", 2, "kept"), ws.readPayload("testmodel"), "a write naming only the table is captured too")
	})
	t.Run("beyond the limit subscribers must resync", func(t *testing.T) {
		srv := testModelServer(t, channelsapi.WithBulkEventLimit(3))
		seed(t, srv.DB, "a", "b", "c", "d")
		ws := srv.dial(t, nil)
		ws.subscribe("update", nil)
		other := srv.dial(t, nil) // not subscribed: unaffected
		require.NoError(t, srv.DB.Model(&TestModel{}).Where("id > 0").Update("name", "x").Error)
		assert.Equal(t, 1013, ws.closeCode())
		got := other.request("testmodel", map[string]any{"action": "list"})
		assert.EqualValues(t, 200, got["response_status"])
	})
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

var errRollback = errors.New("roll back")

// TestOnlyCommittedWorkIsPublished runs 400 operations that roll back and
// 400 that commit, over every way GORM has to run a transaction, and checks
// that exactly the 400 committed ones are published, in order.
func TestOnlyCommittedWorkIsPublished(t *testing.T) {
	srv := testModelServer(t)
	require.NoError(t, srv.DB.Exec("CREATE UNIQUE INDEX idx_name ON test_models(name)").Error)
	db := srv.DB
	ws := srv.dial(t, nil)
	for _, e := range []string{"create", "update", "delete"} {
		ws.subscribe(e, nil)
	}
	const rounds = 50
	scenarios := []struct {
		name string
		run  func(i int) // commits exactly one change named ok-..., rolls back one named bad-...
	}{
		{"failed statement in GORM's implicit transaction", func(i int) {
			require.NoError(t, db.Create(&TestModel{Name: fmt.Sprintf("ok-implicit-%d", i)}).Error)
			require.Error(t, db.Create(&TestModel{Name: fmt.Sprintf("ok-implicit-%d", i)}).Error, "duplicate name")
		}},
		{"db.Transaction returning an error", func(i int) {
			require.ErrorIs(t, db.Transaction(func(tx *gorm.DB) error {
				require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("bad-tx-%d", i)}).Error)
				return errRollback
			}), errRollback)
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
				return tx.Create(&TestModel{Name: fmt.Sprintf("ok-tx-%d", i)}).Error
			}))
		}},
		{"manual Begin and Rollback", func(i int) {
			tx := db.Begin()
			require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("bad-begin-%d", i)}).Error)
			require.NoError(t, tx.Rollback().Error)
			tx = db.Begin()
			require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("ok-begin-%d", i)}).Error)
			require.NoError(t, tx.Commit().Error)
		}},
		{"nested transaction rolled back to its savepoint", func(i int) {
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
				require.ErrorIs(t, tx.Transaction(func(inner *gorm.DB) error {
					require.NoError(t, inner.Create(&TestModel{Name: fmt.Sprintf("bad-nested-%d", i)}).Error)
					return errRollback
				}), errRollback)
				return tx.Create(&TestModel{Name: fmt.Sprintf("ok-nested-%d", i)}).Error
			}))
		}},
		{"manual savepoint", func(i int) {
			tx := db.Begin()
			require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("ok-sp-%d", i)}).Error)
			require.NoError(t, tx.SavePoint("sp").Error)
			require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("bad-sp-%d", i)}).Error)
			require.NoError(t, tx.RollbackTo("sp").Error)
			require.NoError(t, tx.Commit().Error)
		}},
		{"update and delete rolled back", func(i int) {
			m := TestModel{Name: fmt.Sprintf("ok-ud-%d", i)}
			require.NoError(t, db.Create(&m).Error)
			require.ErrorIs(t, db.Transaction(func(tx *gorm.DB) error {
				require.NoError(t, tx.Model(&m).Update("name", fmt.Sprintf("bad-ud-%d", i)).Error)
				require.NoError(t, tx.Delete(&m).Error)
				return errRollback
			}), errRollback)
		}},
		{"update of no row", func(i int) {
			res := db.Model(&TestModel{}).Where("name = ?", "bad-nothing").Update("name", fmt.Sprintf("bad-none-%d", i))
			require.NoError(t, res.Error)
			require.Zero(t, res.RowsAffected)
			require.NoError(t, db.Create(&TestModel{Name: fmt.Sprintf("ok-none-%d", i)}).Error)
		}},
		{"delete of no row", func(i int) {
			res := db.Delete(&TestModel{}, 1_000_000+i)
			require.NoError(t, res.Error)
			require.Zero(t, res.RowsAffected)
			require.NoError(t, db.Create(&TestModel{Name: fmt.Sprintf("ok-nodel-%d", i)}).Error)
		}},
	}
	var want []string
	for i := range rounds {
		for _, s := range scenarios {
			s.run(i)
		}
		for _, s := range []string{"implicit", "tx", "begin", "nested", "sp", "ud", "none", "nodel"} {
			want = append(want, fmt.Sprintf("ok-%s-%d", s, i))
		}
	}
	require.Len(t, want, 400)
	// The sentinel is the last change; everything published before it is
	// in the frames read up to it.
	require.NoError(t, db.Create(&TestModel{Name: "sentinel"}).Error)
	var got []string
	for {
		p := ws.readPayload("testmodel")
		name := p["data"].(map[string]any)["name"].(string)
		if name == "sentinel" {
			break
		}
		assert.Equal(t, "create", p["action"], "only creates committed: %v", p)
		got = append(got, name)
	}
	assert.Equal(t, want, got, "exactly the committed changes, in commit order")
	t.Logf("rolled back: %d operations, committed: %d, events received: %d", 400, len(want), len(got))
}

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

func TestTransactionEventsInStatementOrder(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	for _, e := range []string{"create", "update", "delete"} {
		ws.subscribe(e, nil)
	}
	require.NoError(t, srv.DB.Transaction(func(tx *gorm.DB) error {
		m := TestModel{Name: "first"}
		require.NoError(t, tx.Create(&m).Error)
		require.NoError(t, tx.Model(&m).Update("name", "second").Error)
		require.NoError(t, tx.Create(&TestModel{Name: "other"}).Error)
		return tx.Delete(&m).Error
	}))
	assert.Equal(t, event("create", 1, "first"), ws.readPayload("testmodel"))
	assert.Equal(t, event("update", 1, "second"), ws.readPayload("testmodel"))
	assert.Equal(t, event("create", 2, "other"), ws.readPayload("testmodel"))
	assert.Equal(t, event("delete", 1, "second"), ws.readPayload("testmodel"))
}

// Counter counts votes; concurrent increments show the commit order.
type Counter struct {
	ID    uint `json:"id"`
	Votes int  `json:"votes"`
}

func TestPerObjectOrderUnderConcurrentWriters(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, db.AutoMigrate(&Counter{}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[Counter]{Stream: "counters"}))
	})
	require.NoError(t, srv.DB.Create(&Counter{}).Error)
	ws := srv.dial(t, nil)
	got := ws.request("counters", map[string]any{"action": "subscribe", "pk": 1, "data": map[string]any{"action": "update"}})
	require.EqualValues(t, 200, got["response_status"])

	const writers, each = 8, 25
	concurrently(t, writers, each, func() error {
		return srv.DB.Model(&Counter{ID: 1}).Update("votes", gorm.Expr("votes + 1")).Error
	})
	for want := 1; want <= writers*each; want++ {
		p := ws.readPayload("counters")
		require.EqualValues(t, want, p["data"].(map[string]any)["votes"], "events in commit order, never an older state after a newer one")
	}
}

func TestScopeQueriesDoNotDeadlockCommits(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.Scope = func(_ context.Context, _ *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
				return db.Where("name <> ?", "hidden"), nil
			}
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

// TestCaptureTableCreateBeyondTheBulkLimit: a create that names only the
// table, of more rows than the bulk event limit, resyncs the stream's
// subscribers rather than publish some of its rows.
func TestCaptureTableCreateBeyondTheBulkLimit(t *testing.T) {
	srv := testModelServer(t, channelsapi.WithBulkEventLimit(2))
	ws := srv.dial(t, nil)
	ws.subscribe("create", nil)
	rows := []map[string]any{{"name": "m0"}, {"name": "m1"}, {"name": "m2"}, {"name": "m3"}, {"name": "m4"}}
	require.NoError(t, srv.DB.Table("test_models").Create(&rows).Error)
	code, reason := ws.closeFrame()
	assert.Equal(t, 1013, code)
	assert.Equal(t, "bulk change", reason)
}

// concurrently runs write each times in each of writers goroutines and
// requires that every call succeeded.
func concurrently(t *testing.T, writers, each int, write func() error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for range writers {
		wg.Go(func() {
			for range each {
				errs <- write()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}
