package channelsapi

import "context"

// relay carries committed changes from this instance's capture to the
// delivery of every instance of the application. The default, localRelay,
// serves one process; redisBroker (broker_redis.go) serves several through
// Redis and hands what it receives, this instance's own changes included,
// to delivery.received.
type relay interface {
	// publish takes committed changes in commit order. It runs under the
	// capture's lock: it must not block.
	publish(changes []change)
	// interest says that stream gained its first local subscription (active)
	// or lost its last. It is called with the hub's lock held: it must not
	// block and must not call the hub.
	interest(stream string, active bool)
	// ready waits, boundedly, until the changes of stream committed from now
	// on reach this instance's subscribers, after a subscribe. When that
	// cannot be promised the subscribers of stream are resynced later,
	// once it can.
	ready(ctx context.Context, stream string)
	// shutdown stops what the relay started and waits for it, or until ctx
	// is done. It may be called more than once.
	shutdown(ctx context.Context) error
}

// localRelay hands changes straight to this process's delivery.
type localRelay struct{ d *delivery }

func (r localRelay) publish(changes []change)     { r.d.committed(changes) }
func (localRelay) interest(string, bool)          {}
func (localRelay) ready(context.Context, string)  {}
func (localRelay) shutdown(context.Context) error { return nil }
