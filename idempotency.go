package channelsapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"
)

// This file holds idempotency keys (PROTOCOL.md section 11).
//
// A keyed write claims its key in its own transaction, as the first
// statement: INSERT ... ON CONFLICT DO NOTHING into channelsapi_idempotency.
// A duplicate running at the same time waits there for the first one's
// transaction (PostgreSQL: the unique index; SQLite: the database's write
// lock) and, once it commits, finds the key with its reply and replays it;
// if the first rolls back, the duplicate claims the key and runs. The reply
// is stored in the same transaction before COMMIT, so a key is there if and
// only if its write committed: no state "running" is ever committed, and a
// crash leaves nothing behind. On PostgreSQL a duplicate waits at most
// IdempotencyConfig.Wait and is then answered 409.

// DefaultIdempotencyRetention is how long a key's reply is kept by default.
const DefaultIdempotencyRetention = 24 * time.Hour

// DefaultIdempotencyWait is how long a duplicate waits by default for the
// request running with its key (PostgreSQL).
const DefaultIdempotencyWait = 5 * time.Second

// IdempotencyConfig configures idempotency keys (WithIdempotency). The zero
// value is valid.
type IdempotencyConfig struct {
	// Retention is how long the reply of a key is kept and replayed; after
	// it the key is free again. Zero means DefaultIdempotencyRetention.
	Retention time.Duration
	// UserKey names the user of a request, so that the keys of different
	// users never meet (the user of a Request is opaque to the library).
	// Nil means that every user shares one space of keys: only safe when
	// keys are unguessable and users may see each other's replies.
	UserKey func(r *Request) string
	// Wait is how long, on PostgreSQL, a request waits for another one
	// running with the same key before it is answered 409. Zero means
	// DefaultIdempotencyWait. On SQLite a duplicate waits as any write
	// waits for the database's lock (its busy timeout).
	Wait time.Duration
	// CleanupInterval is how often keys older than Retention are deleted;
	// zero means Retention/10, at most one hour, at least one second.
	CleanupInterval time.Duration
}

// WithIdempotency turns idempotency keys on (PROTOCOL.md section 11): a
// create, update, patch or delete may carry an Idempotency-Key header
// (REST) or "idempotency_key" (WebSocket), and a repeat of it returns the
// stored reply without running again. Register creates the table
// channelsapi_idempotency (SQLite or PostgreSQL) and the API deletes
// expired keys until Shutdown. Without this option a request with a key is
// refused with 400, so that a client relying on it learns that it cannot.
func WithIdempotency(cfg IdempotencyConfig) Option {
	return func(c *config) { c.idempotency = &cfg }
}

// Messages of idempotency keys.
const (
	msgKeyReused   = "Idempotency key reused with a different request."
	msgKeyRunning  = "A request with this idempotency key is still running."
	msgKeyDisabled = "Idempotency keys are not enabled on this server."
	msgBadKey      = "Idempotency-Key must be 1 to 255 visible ASCII characters."
	msgKeyType     = "idempotency_key must be a string of 1 to 255 visible ASCII characters."
	msgKeyAction   = "Idempotency keys are taken by create, update, patch and delete only."
	keyIdempotency = "idempotency_key"
	maxKeyLength   = 255
)

// idempotency is the store of keys.
type idempotency struct {
	db       *gorm.DB
	cfg      IdempotencyConfig
	postgres bool
	log      *slog.Logger
	stop     chan struct{}
	done     sync.WaitGroup
	once     sync.Once
}

func newIdempotency(db *gorm.DB, cfg IdempotencyConfig, log *slog.Logger) (*idempotency, error) {
	if cfg.Retention < 0 || cfg.Wait < 0 || cfg.CleanupInterval < 0 {
		return nil, errors.New("channelsapi: idempotency retention, wait and cleanup interval must not be negative")
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultIdempotencyRetention
	}
	if cfg.Wait == 0 {
		cfg.Wait = DefaultIdempotencyWait
	}
	if cfg.CleanupInterval == 0 {
		cfg.CleanupInterval = min(max(cfg.Retention/10, time.Second), time.Hour)
	}
	s := &idempotency{db: db, cfg: cfg, log: log, stop: make(chan struct{})}
	var ddl string
	switch db.Dialector.Name() {
	case "postgres":
		s.postgres = true
		ddl = `CREATE TABLE IF NOT EXISTS channelsapi_idempotency (user_key text NOT NULL, idem_key text NOT NULL, fingerprint text NOT NULL,
	status integer NOT NULL, body bytea, etag text NOT NULL, created_at bigint NOT NULL, PRIMARY KEY (user_key, idem_key))`
	case "sqlite":
		ddl = `CREATE TABLE IF NOT EXISTS channelsapi_idempotency (user_key TEXT NOT NULL, idem_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
	status INTEGER NOT NULL, body BLOB, etag TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (user_key, idem_key)) WITHOUT ROWID`
	default:
		return nil, fmt.Errorf("channelsapi: idempotency keys need SQLite or PostgreSQL, not %s", db.Dialector.Name())
	}
	for _, q := range []string{ddl, `CREATE INDEX IF NOT EXISTS channelsapi_idempotency_created ON channelsapi_idempotency (created_at)`} {
		if err := db.Exec(q).Error; err != nil {
			return nil, fmt.Errorf("channelsapi: create the idempotency table: %w", err)
		}
	}
	s.done.Add(1)
	go s.cleanup()
	return s, nil
}

// cleanup deletes expired keys every CleanupInterval until close.
func (s *idempotency) cleanup() {
	defer s.done.Done()
	t := time.NewTicker(s.cfg.CleanupInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if _, err := s.expire(context.Background()); err != nil {
				s.log.Error("channelsapi: delete expired idempotency keys", "err", err)
			}
		}
	}
}

// close stops the cleanup and waits for it.
func (s *idempotency) close() {
	s.once.Do(func() { close(s.stop) })
	s.done.Wait()
}

// expire deletes the keys older than the retention and returns how many.
func (s *idempotency) expire(ctx context.Context) (int64, error) {
	res := s.db.WithContext(ctx).Exec(`DELETE FROM channelsapi_idempotency WHERE created_at < ?`, s.oldest())
	return res.RowsAffected, res.Error
}

// oldest is the creation time, in Unix nanoseconds, of the oldest key
// still kept.
func (s *idempotency) oldest() int64 { return time.Now().Add(-s.cfg.Retention).UnixNano() }

// ExpireIdempotencyKeys deletes the idempotency keys older than the
// retention now, rather than at the next periodic cleanup, and returns how
// many it deleted. A key older than the retention is free again whether
// or not it was deleted. Without WithIdempotency it does nothing.
func (a *API) ExpireIdempotencyKeys(ctx context.Context) (int64, error) {
	if a.idem == nil {
		return 0, nil
	}
	return a.idem.expire(ctx)
}

// idemKey is the idempotency key of a request, read from its transport.
type idemKey struct {
	key  string
	user string
	fp   string // fingerprint of the request (fingerprint)
}

// readIdempotencyKey reads an Idempotency-Key header's values.
func (r *Request) readIdempotencyKey(values []string) {
	if len(values) == 0 {
		return
	}
	k := strings.Join(values, ",")
	if !validKey(k) {
		r.idemErr = NewError(http.StatusBadRequest, msgBadKey)
		return
	}
	r.idem = &idemKey{key: k}
}

// readIdempotencyKeyKey reads the "idempotency_key" of a WebSocket payload.
func (r *Request) readIdempotencyKeyKey(raw json.RawMessage) {
	if !present(raw) {
		return
	}
	s, ok := jsonString(raw)
	if !ok || !validKey(s) {
		r.idemErr = NewError(http.StatusBadRequest, msgKeyType)
		return
	}
	r.idem = &idemKey{key: s}
}

// validKey reports whether k is 1 to 255 visible ASCII characters or
// spaces.
func validKey(k string) bool {
	if k == "" || len(k) > maxKeyLength {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// fingerprint identifies what a request asks: stream, action, method, pk,
// its body with insignificant differences (spacing, key order) removed,
// and the relations it expands. The transport does not count.
func fingerprint(req *Request) string {
	body := []byte(bytes.TrimSpace(req.Data))
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) == nil {
		if b, err := json.Marshal(v); err == nil {
			body = b
		}
	}
	h := sha256.New()
	for _, part := range []string{req.Stream, req.Action, req.Method, fmt.Sprint(req.PK), string(body), strings.Join(req.expand, ",")} {
		fmt.Fprintf(h, "%d:%s;", len(part), part)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// keptReply is a stored reply: status, the body as the reply's data, and
// the ETag.
type keptReply struct {
	fp     string
	status int
	body   []byte
	etag   string
}

// replayError ends the transaction of a request whose key is taken; the
// action then answers with kept.
type replayError struct{ kept keptReply }

func (e *replayError) Error() string { return "idempotency key taken" }

// claim claims req's key in tx, its write's transaction, as the first
// statement. A key taken by a committed request (within the retention)
// returns a *replayError with its reply.
func (s *idempotency) claim(tx *gorm.DB, k *idemKey) error {
	now := time.Now().UnixNano()
	if s.postgres {
		if err := tx.Exec(fmt.Sprintf(`SET LOCAL lock_timeout = %d`, s.cfg.Wait.Milliseconds())).Error; err != nil {
			return err
		}
	}
	res := tx.Exec(`INSERT INTO channelsapi_idempotency (user_key, idem_key, fingerprint, status, body, etag, created_at)
VALUES (?, ?, ?, 0, NULL, '', ?) ON CONFLICT (user_key, idem_key) DO NOTHING`, k.user, k.key, k.fp, now)
	if res.Error != nil {
		if s.postgres && strings.Contains(res.Error.Error(), "55P03") { // lock_not_available
			return NewError(http.StatusConflict, msgKeyRunning)
		}
		return res.Error
	}
	if s.postgres {
		if err := tx.Exec(`SET LOCAL lock_timeout TO DEFAULT`).Error; err != nil {
			return err
		}
	}
	if res.RowsAffected == 1 {
		return nil
	}
	var kept struct {
		Fingerprint string
		Status      int
		Body        []byte
		Etag        string
		CreatedAt   int64
	}
	err := tx.Raw(`SELECT fingerprint, status, body, etag, created_at FROM channelsapi_idempotency WHERE user_key = ? AND idem_key = ?`, k.user, k.key).
		Scan(&kept).Error
	if err != nil {
		return err
	}
	if kept.CreatedAt < s.oldest() {
		// Expired, not yet deleted: the key is free again.
		return tx.Exec(`UPDATE channelsapi_idempotency SET fingerprint = ?, status = 0, body = NULL, etag = '', created_at = ? WHERE user_key = ? AND idem_key = ?`,
			k.fp, now, k.user, k.key).Error
	}
	return &replayError{kept: keptReply{fp: kept.Fingerprint, status: kept.Status, body: kept.Body, etag: kept.Etag}}
}

// keep stores a reply (status, body, ETag) as the reply of k, in tx, the
// write's transaction, before COMMIT.
func (s *idempotency) keep(tx *gorm.DB, k *idemKey, status int, body []byte, etag string) error {
	return tx.Exec(`UPDATE channelsapi_idempotency SET status = ?, body = ?, etag = ? WHERE user_key = ? AND idem_key = ?`,
		status, body, etag, k.user, k.key).Error
}

// transaction runs write in a transaction. With req's idempotency key the
// key is claimed in it first and the reply write returns is stored before
// COMMIT, rendered with the relations req expands; a key already used
// returns its stored reply, marked replayed, or 422 for another request.
func (v *viewSet[T]) transaction(ctx context.Context, req *Request, write func(tx *gorm.DB) (result, error)) (result, error) {
	k := req.idem
	var res result
	err := v.api.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if k != nil {
			if err := v.api.idem.claim(tx, k); err != nil {
				return err
			}
		}
		var err error
		if res, err = write(tx); err != nil || k == nil {
			return err
		}
		if len(req.rels) > 0 {
			if res.data, err = v.expand(ctx, req, req.rels, res.data); err != nil {
				return err
			}
		}
		body, err := json.Marshal(res.data)
		if err != nil {
			return err
		}
		res.data = json.RawMessage(body)
		return v.api.idem.keep(tx, k, res.status, body, res.etag)
	})
	var replay *replayError
	if errors.As(err, &replay) {
		if replay.kept.fp != k.fp {
			return result{}, NewError(http.StatusUnprocessableEntity, msgKeyReused)
		}
		return result{status: replay.kept.status, data: json.RawMessage(replay.kept.body), etag: replay.kept.etag, replayed: true}, nil
	}
	return res, err
}

// readKey checks req's idempotency key, after the permission: taken by
// the writes, refused by custom actions and when keys are not enabled,
// ignored by reads. It fixes the key's user and fingerprint.
func (v *viewSet[T]) readKey(req *Request) error {
	if req.idem == nil && req.idemErr == nil {
		return nil
	}
	switch req.Action {
	case actionCreate, actionUpdate, actionPatch, actionDelete:
	default:
		if _, custom := v.Actions[req.Action]; !custom {
			req.idem = nil // a read: running it again changes nothing
			return nil
		}
		if v.api.idem == nil {
			return NewError(http.StatusBadRequest, msgKeyDisabled)
		}
		return NewError(http.StatusBadRequest, msgKeyAction)
	}
	switch {
	case req.idemErr != nil:
		return req.idemErr
	case v.api.idem == nil:
		return NewError(http.StatusBadRequest, msgKeyDisabled)
	}
	if uk := v.api.idem.cfg.UserKey; uk != nil {
		req.idem.user = uk(req)
	}
	req.idem.fp = fingerprint(req)
	return nil
}
