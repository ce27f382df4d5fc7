package channelsapi

import (
	"context"
	"database/sql"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"
)

// connPool wraps the database's pool so that transactions begun on it are
// wrapped too. It deliberately does not implement gorm.TxCommitter.
type connPool struct {
	gorm.ConnPool
	capture *capture
}

// BeginTx implements gorm.ConnPoolBeginner.
func (c *connPool) BeginTx(ctx context.Context, opts *sql.TxOptions) (gorm.ConnPool, error) {
	var (
		tx  gorm.ConnPool
		err error
	)
	switch b := c.ConnPool.(type) {
	case gorm.TxBeginner:
		tx, err = b.BeginTx(ctx, opts)
	case gorm.ConnPoolBeginner:
		tx, err = b.BeginTx(ctx, opts)
	default:
		return nil, gorm.ErrInvalidTransaction
	}
	if err != nil {
		return nil, err
	}
	committer, ok := tx.(gorm.TxCommitter)
	if !ok {
		return nil, gorm.ErrInvalidTransaction
	}
	return &txPool{ConnPool: tx, committer: committer, capture: c.capture}, nil
}

// GetDBConn implements gorm.GetDBConnector, so that db.DB() keeps working.
func (c *connPool) GetDBConn() (*sql.DB, error) {
	switch p := c.ConnPool.(type) {
	case *sql.DB:
		return p, nil
	case gorm.GetDBConnector:
		return p.GetDBConn()
	}
	return nil, gorm.ErrInvalidDB
}

// Ping lets gorm.Open-style health checks through.
func (c *connPool) Ping() error {
	if p, ok := c.ConnPool.(interface{ Ping() error }); ok {
		return p.Ping()
	}
	return nil
}

// txPool is a transaction that holds its changes until it commits.
type txPool struct {
	gorm.ConnPool
	committer gorm.TxCommitter
	capture   *capture

	mu         sync.Mutex
	changes    []change
	savepoints []savepoint
}

type savepoint struct {
	name string
	n    int // len(changes) when it was made
}

func (t *txPool) add(changes []change) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.changes = append(t.changes, changes...)
}

// ExecContext runs the statement and follows the savepoints GORM makes for
// nested transactions (SAVEPOINT, ROLLBACK TO SAVEPOINT, RELEASE SAVEPOINT).
func (t *txPool) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if r, ok := markedStatement(ctx); ok {
		return r.exec(ctx, t.ConnPool, query, args)
	}
	res, err := t.ConnPool.ExecContext(ctx, query, args...)
	if err == nil {
		t.track(query)
	}
	return res, err
}

func (t *txPool) track(query string) {
	fields := strings.Fields(strings.ToUpper(query))
	name := func() string { return strings.Fields(query)[len(fields)-1] }
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case len(fields) == 2 && fields[0] == "SAVEPOINT":
		t.savepoints = append(t.savepoints, savepoint{name: name(), n: len(t.changes)})
	case len(fields) == 4 && fields[0] == "ROLLBACK" && fields[1] == "TO" && fields[2] == "SAVEPOINT",
		len(fields) == 3 && fields[0] == "ROLLBACK" && fields[1] == "TO":
		if i := t.savepointIndex(name()); i >= 0 {
			t.changes = t.changes[:t.savepoints[i].n]
			t.savepoints = t.savepoints[:i+1]
		}
	case len(fields) == 3 && fields[0] == "RELEASE" && fields[1] == "SAVEPOINT",
		len(fields) == 2 && fields[0] == "RELEASE":
		if i := t.savepointIndex(name()); i >= 0 {
			t.savepoints = t.savepoints[:i]
		}
	}
}

func (t *txPool) savepointIndex(name string) int {
	for i := len(t.savepoints) - 1; i >= 0; i-- {
		if t.savepoints[i].name == name {
			return i
		}
	}
	return -1
}

// StmtContext lets GORM's prepared-statement mode use the transaction.
func (t *txPool) StmtContext(ctx context.Context, stmt *sql.Stmt) *sql.Stmt {
	if s, ok := t.ConnPool.(interface {
		StmtContext(context.Context, *sql.Stmt) *sql.Stmt
	}); ok {
		return s.StmtContext(ctx, stmt)
	}
	return stmt
}

// Commit implements gorm.TxCommitter. The transaction takes its place in
// the order of changes just before COMMIT, under a short lock that no I/O
// runs under, and fills it once the database has accepted the commit (or
// gives it up): two transactions that write one row are serialized by the
// database's row lock, so the later one reserves its place only after the
// earlier one's COMMIT began, and the events of a row go out in commit
// order while commits themselves run in parallel.
//
// From before its place until it is filled, the commit is inside the
// sequencer's gate (so across COMMIT): commits never wait for each other
// there, only for a live query's snapshot taking its point, which waits for
// the commits under way and holds new ones back for one statement; a
// snapshot that cannot get its point in time gives up (see gate).
func (t *txPool) Commit() error {
	t.mu.Lock()
	changes := t.changes
	t.changes, t.savepoints = nil, nil
	t.mu.Unlock()
	if len(changes) == 0 {
		return t.committer.Commit()
	}
	t.capture.prepare(changes)
	if ob := t.capture.outbox; ob != nil {
		if err := ob.write(context.Background(), t.ConnPool, changes); err != nil {
			_ = t.committer.Rollback()
			return err
		}
	}
	order := t.capture.order
	order.gate.enter()
	defer order.gate.leave()
	place := order.reserve()
	if err := t.committer.Commit(); err != nil {
		place.fill(nil)
		return err
	}
	failpoint("after-commit")
	place.fill(changes)
	return nil
}

// Rollback implements gorm.TxCommitter: the changes are forgotten.
func (t *txPool) Rollback() error {
	t.mu.Lock()
	t.changes, t.savepoints = nil, nil
	t.mu.Unlock()
	return t.committer.Rollback()
}

// sequencer hands committed changes to the relay in the order their
// transactions reserved their places.
//
// Every commit is inside its gate from before its place is reserved until
// the place is released; hold waits until no commit is inside and keeps
// new ones out, so that a reader can take a database snapshot that holds
// exactly the changes released so far (a live query's snapshot,
// subscription.go).
type sequencer struct {
	publish func([]change)
	log     *slog.Logger
	gate    gate

	mu      sync.Mutex
	pending []*place // reserved and not yet released, in order
}

// holdTimeout bounds how long a snapshot waits for the commits under way.
// A COMMIT may itself wait for another transaction (a deferred constraint)
// that cannot reach its own COMMIT while new commits are held back: giving
// up breaks that cycle.
const holdTimeout = 5 * time.Second

var errBusy = NewError(http.StatusServiceUnavailable, "Server busy, try again.")

// hold waits until no commit is under way and keeps new ones from
// starting until release is called: every change committed so far has been
// released, at its offset. Hold it only for the time a database snapshot
// takes to begin. It fails with errBusy when the commits under way do not
// end within holdTimeout.
func (s *sequencer) hold() (release func(), err error) {
	release, ok := s.gate.hold(holdTimeout)
	if !ok {
		return nil, errBusy
	}
	return release, nil
}

// gate lets any number of commits in at once, or one holder with no commit
// inside. Unlike a sync.RWMutex, a holder waiting for the commits inside
// can give up, and lets the commits it held back in.
type gate struct {
	mu      sync.Mutex
	inside  int
	closed  chan struct{} // while a holder waits or holds: closed when it is done
	drained chan struct{} // closed when the last commit inside leaves, for a waiting holder
}

// enter waits while the gate is held, then counts a commit inside.
func (g *gate) enter() {
	g.mu.Lock()
	for g.closed != nil {
		c := g.closed
		g.mu.Unlock()
		<-c
		g.mu.Lock()
	}
	g.inside++
	g.mu.Unlock()
}

// leave counts a commit out.
func (g *gate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inside--; g.inside == 0 && g.drained != nil {
		close(g.drained)
		g.drained = nil
	}
}

// hold closes the gate to new commits and waits until those inside have
// left, at most timeout: ok is false when they have not, and the gate is
// open again.
func (g *gate) hold(timeout time.Duration) (release func(), ok bool) {
	g.mu.Lock()
	for g.closed != nil { // one holder at a time
		c := g.closed
		g.mu.Unlock()
		<-c
		g.mu.Lock()
	}
	closed := make(chan struct{})
	g.closed = closed
	var drained chan struct{}
	if g.inside > 0 {
		drained = make(chan struct{})
		g.drained = drained
	}
	g.mu.Unlock()
	open := func() {
		g.mu.Lock()
		g.closed, g.drained = nil, nil
		g.mu.Unlock()
		close(closed)
	}
	if drained != nil {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-drained:
		case <-t.C:
			open()
			return nil, false
		}
	}
	return open, true
}

// place is one transaction's place in the order of changes.
type place struct {
	s       *sequencer
	filled  bool
	changes []change
}

// reserve takes the next place. It never blocks on I/O.
func (s *sequencer) reserve() *place {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &place{s: s}
	s.pending = append(s.pending, p)
	return p
}

// fill gives the place its changes (none: the commit failed) and releases,
// in order, every place that is filled from the head on.
func (p *place) fill(changes []change) {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	p.filled, p.changes = true, changes
	for len(s.pending) > 0 && s.pending[0].filled {
		head := s.pending[0]
		s.pending[0] = nil
		s.pending = s.pending[1:]
		s.release(head.changes)
	}
}

// release hands changes to the relay. A panic there (it runs the
// application's JSON encoding with a broker) is logged, the streams of the
// changes resync, and the order goes on.
func (s *sequencer) release(changes []change) {
	if len(changes) == 0 {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("channelsapi: panic while publishing changes", "panic", p)
			resyncs := make([]change, len(changes))
			for i, ch := range changes {
				resyncs[i] = change{typ: ch.typ, resync: reasonEncoding}
			}
			s.publish(resyncs)
		}
	}()
	s.publish(changes)
}
