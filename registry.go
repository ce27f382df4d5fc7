package channelsapi

import (
	"reflect"
	"sync"
)

// registry holds the added streams. Add writes it, normally before the
// router serves; every other reader (capture, delivery's relay, the socket,
// the schema) takes the read lock and touches nothing else of the API.
type registry struct {
	mu      sync.RWMutex
	streams map[string]resource
	byType  map[reflect.Type][]resource
}

func newRegistry() *registry {
	return &registry{streams: map[string]resource{}, byType: map[reflect.Type][]resource{}}
}

// add registers r; mount, run under the lock, mounts its routes first.
func (g *registry) add(r resource, mount func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, dup := g.streams[r.name()]; dup {
		return errDuplicateStream
	}
	if err := mount(); err != nil {
		return err
	}
	g.streams[r.name()] = r
	t := r.model().schema.ModelType
	g.byType[t] = append(g.byType[t], r)
	return nil
}

// stream returns the resource of a stream name.
func (g *registry) stream(name string) (resource, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	r, ok := g.streams[name]
	return r, ok
}

// ofType returns the streams that serve the model type t, in the order they
// were added.
func (g *registry) ofType(t reflect.Type) []resource {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.byType[t]
}

// rowsBefore reports whether an update of t whose statement may assign
// the columns assigned says yes to needs the rows as they were: a stream
// of t authorizes events per recipient (who could see the row before), or
// takes live queries on a column it may assign (was the row in the set).
// An update of columns no live query reads leaves every row where it was.
func (g *registry) rowsBefore(t reflect.Type, assigned func(column string) bool) bool {
	for _, r := range g.ofType(t) {
		if r.guarded() {
			return true
		}
		for _, column := range r.queried() {
			if assigned(column) {
				return true
			}
		}
	}
	return false
}

// stateful reports whether some stream of t needs its events' row states:
// it authorizes them per recipient or takes live queries.
func (g *registry) stateful(t reflect.Type) bool {
	for _, r := range g.ofType(t) {
		if r.stateful() {
			return true
		}
	}
	return false
}

// modelOf returns the registered model of a statement's struct type, or
// else the first registered model of its table, or nil.
func (g *registry) modelOf(t reflect.Type, table string) *model {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if rs := g.byType[t]; t != nil && len(rs) > 0 {
		return rs[0].model()
	}
	if table == "" {
		return nil
	}
	for _, rs := range g.byType {
		if rs[0].model().schema.Table == table {
			return rs[0].model()
		}
	}
	return nil
}

// all returns every stream, in no order.
func (g *registry) all() []resource {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := make([]resource, 0, len(g.streams))
	for _, r := range g.streams {
		out = append(out, r)
	}
	return out
}
