package channelsapi

import "context"

// broker carries committed changes from this instance's publisher to the
// subscribers of every instance of the application. The default,
// localBroker, serves one process; redisBroker (broker_redis.go) serves
// several through Redis.
type broker interface {
	// publish takes committed changes in commit order. It runs under the
	// publisher's lock: it must not block.
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
	// shutdown stops what the broker started and waits for it, or until ctx
	// is done. It may be called more than once.
	shutdown(ctx context.Context) error
}

// localBroker hands changes straight to this instance's subscribers.
type localBroker struct{ api *API }

func (b localBroker) publish(changes []change) {
	for _, ch := range changes {
		b.api.deliver(ch)
	}
}

func (localBroker) interest(string, bool)          {}
func (localBroker) ready(context.Context, string)  {}
func (localBroker) shutdown(context.Context) error { return nil }
