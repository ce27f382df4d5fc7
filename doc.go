// Package channelsapi serves GORM models over REST and one multiplexed
// WebSocket from a single definition, in a Gin application, and publishes
// every committed change to the sockets subscribed to it.
//
// Register mounts the WebSocket endpoint on a Gin router and installs a GORM
// plugin on the database; Add serves a model as a ViewSet:
//
//	api, err := channelsapi.Register(router, db)
//	if err != nil { ... }
//	err = channelsapi.Add(api, channelsapi.ViewSet[Question]{Stream: "questions"})
//
// The wire format is the one of the Python projects channels-api and
// djangochannelsrestframework, described in docs/PROTOCOL.md: every frame is
// {"stream": ..., "payload": {...}}, every request gets exactly one reply
// carrying action, data, errors, response_status and request_id, and the
// REST routes follow Django REST Framework.
//
// # Events
//
// Writes made through the registered *gorm.DB, by any code, are captured by
// GORM callbacks and held by their transaction; they are published once the
// database has accepted the commit, never for work that was rolled back
// (including a rollback to a savepoint), in statement order within a
// transaction and in commit order for one row. Bulk updates and deletes
// select the rows they touch first, up to a limit beyond which subscribers
// are closed with 1013 to resync. A connection that cannot keep up is closed
// with 1013 instead of losing events silently; every 1013 names its cause.
// Each event is authorized for each recipient on the state it carries: the
// Permission and ObjectPermission on its object, the Scope on its row values,
// the ScopeFilter in memory.
//
// # Queries
//
// A ViewSet declares the fields clients may filter on, with their lookups
// (Filters), order by (OrderingFields) and search in (SearchFields), in the
// grammar of django-filter (docs/PROTOCOL.md section 8), on both
// transports. The same parsed query is compiled to SQL for lists and
// evaluated in memory for live queries: subscribe_list (section 9) sends a
// create when a row enters a subscriber's filtered set, an update while it
// stays, and a delete when it leaves, decided per recipient on the row
// before and after each change.
//
// # Resume
//
// Every event carries its offset in its stream, and every list the
// position its rows were read at (docs/PROTOCOL.md section 10). A client
// that reconnects subscribes with "since", its last position, and is sent
// the events it missed, then the live ones, with no gap and none twice, as
// long as the history holds them (WithHistory; with a broker, the
// broker's shared history, so on any instance).
//
// # Crash-safe delivery
//
// Without further options, a committed change lives in the process's
// memory until it is published. WithOutbox writes it, in its own
// transaction, to an outbox table the library owns, numbered in commit
// order: a change whose process died right after COMMIT still reaches
// every subscriber, once and in order, and clients resume from the
// database, across restarts.
//
// # Safe retries and concurrent edits
//
// Objects carry an entity tag (the ETag header, "etag" on the WebSocket):
// "v<N>" from a ViewSet's VersionField, which every update of the model
// raises in its own statement, else a hash of the object's JSON. If-Match
// (REST) or "if_match" (WebSocket) on update, patch and delete writes only
// when the object is unchanged, else answers 412 with the current object.
// WithIdempotency lets a client repeat a create, update, patch or delete
// with the same Idempotency-Key and get the first reply back: the key is
// recorded with its reply in the write's own transaction
// (docs/PROTOCOL.md section 11).
//
// # Errors
//
// Hooks, permission checks and custom actions return errors: ErrNotFound,
// ErrPermissionDenied, ErrNotAuthenticated, ErrInvalidAction or an *Error
// reach the client as documented; any other error is a 500 whose cause is
// logged and never sent.
package channelsapi
