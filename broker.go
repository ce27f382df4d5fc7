package channelsapi

import (
	"context"
	"sync"
)

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

// localBroker hands changes to this instance's subscribers. Commits append
// them to a queue under the publisher's lock; one goroutine delivers them in
// that order, so that authorizing events, which may query the database, never
// runs under the lock (nor holds up the committing goroutine).
type localBroker struct {
	api    *API
	wake   chan struct{} // a change was queued
	done   chan struct{} // closed by shutdown
	exited chan struct{} // closed when the goroutine has returned
	once   sync.Once

	mu      sync.Mutex
	queue   []change
	stopped bool
}

func newLocalBroker(a *API) *localBroker {
	b := &localBroker{api: a, wake: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{})}
	go b.run()
	return b
}

func (b *localBroker) publish(changes []change) {
	b.mu.Lock()
	if !b.stopped {
		b.queue = append(b.queue, changes...)
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// run delivers queued changes in order until shutdown, then delivers what
// was queued before it and returns.
func (b *localBroker) run() {
	defer close(b.exited)
	for {
		b.mu.Lock()
		batch := b.queue
		b.queue = nil
		b.mu.Unlock()
		for _, ch := range batch {
			b.api.deliver(ch)
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-b.wake:
		case <-b.done:
			b.mu.Lock()
			batch, b.queue, b.stopped = b.queue, nil, true
			b.mu.Unlock()
			for _, ch := range batch {
				b.api.deliver(ch)
			}
			return
		}
	}
}

func (*localBroker) interest(string, bool)         {}
func (*localBroker) ready(context.Context, string) {}

func (b *localBroker) shutdown(ctx context.Context) error {
	b.once.Do(func() { close(b.done) })
	select {
	case <-b.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
