package channelsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
)

var (
	errActionRequired    = NewError(http.StatusBadRequest, "action required")
	errInvalidSubscribe  = NewError(http.StatusBadRequest, "Invalid subscription action")
	errRequestIDRequired = NewError(http.StatusBadRequest, "request_id required")
	errRequestIDTooLong  = NewError(http.StatusBadRequest, "request_id too long")
	errSubscriptionLimit = NewError(http.StatusTooManyRequests, "Too many subscriptions.")
)

// maxRequestIDSize bounds the compact JSON of a request_id that identifies
// an instance subscription: the connection keeps it for as long as the
// subscription lasts.
const maxRequestIDSize = 256

// subscription serves subscribe and unsubscribe (PROTOCOL.md 4.7) and
// subscribe_instance and unsubscribe_instance (4.8) for connection c.
func (v *viewSet[T]) subscription(ctx context.Context, req *Request, c *conn) result {
	hub := v.api.hub
	switch req.Action {
	case actionSubscribe, actionUnsubscribe:
		event, err := subscribeAction(req.Data)
		if err != nil {
			return result{err: err}
		}
		key := ""
		if present(req.rawPK) {
			if req.PK == nil {
				return result{err: ErrNotFound}
			}
			key = pkKey(req.PK)
		}
		if req.Action == actionSubscribe {
			if _, err := c.scopeKey(v); err != nil {
				return result{err: err}
			}
			if hub.Subscribe(c, v.Stream, event, key) && hub.Count(c) > v.api.cfg.subscriptions {
				hub.Unsubscribe(c, v.Stream, event, key)
				return result{err: errSubscriptionLimit}
			}
			v.api.relay.ready(ctx, v.Stream)
		} else {
			hub.Unsubscribe(c, v.Stream, event, key)
		}
		return result{status: http.StatusOK, data: map[string]string{"action": event}}
	case actionSubscribeInstance:
		rid, err := requestID(req.RequestID)
		if err != nil {
			return result{err: err}
		}
		if _, err := v.object(ctx, v.query(ctx, req), req); err != nil {
			return result{err: err}
		}
		if _, err := c.scopeKey(v); err != nil {
			return result{err: err}
		}
		if hub.SubscribeInstance(c, v.Stream, pkKey(req.PK), rid) && hub.Count(c) > v.api.cfg.subscriptions {
			hub.UnsubscribeInstance(c, v.Stream, pkKey(req.PK), rid)
			return result{err: errSubscriptionLimit}
		}
		v.api.relay.ready(ctx, v.Stream)
		return result{status: http.StatusCreated}
	default: // actionUnsubscribeInstance
		rid, err := requestID(req.RequestID)
		if err != nil {
			return result{err: err}
		}
		if req.PK != nil {
			hub.UnsubscribeInstance(c, v.Stream, pkKey(req.PK), rid)
		}
		return result{status: http.StatusNoContent}
	}
}

// subscribeAction reads {"action": "create"|"update"|"delete"}.
func subscribeAction(data json.RawMessage) (string, error) {
	d, ok := jsonObject(data)
	if !ok && present(data) {
		return "", errActionRequired
	}
	if !present(d["action"]) {
		return "", errActionRequired
	}
	switch a, _ := jsonString(d["action"]); a {
	case actionCreate, actionUpdate, actionDelete:
		return a, nil
	}
	return "", errInvalidSubscribe
}

// requestID returns the compact JSON of a request_id, which identifies an
// instance subscription and is spliced into its events; at most
// maxRequestIDSize bytes.
func requestID(raw json.RawMessage) ([]byte, error) {
	if !present(raw) {
		return nil, errRequestIDRequired
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return nil, errRequestIDRequired
	}
	if b.Len() > maxRequestIDSize {
		return nil, errRequestIDTooLong
	}
	return b.Bytes(), nil
}
