package main

import (
	"context"
	"crypto/subtle"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// User is an account of the example app.
type User struct {
	ID    uint
	Name  string
	Admin bool
}

// demoUsers are the example's accounts, by token. A real application looks
// tokens up in its own store.
var demoUsers = map[string]*User{
	"alice-token": {ID: 1, Name: "alice"},
	"bob-token":   {ID: 2, Name: "bob"},
	"admin-token": {ID: 3, Name: "admin", Admin: true},
}

// authenticate is the application's own Gin middleware: it stores the user
// of a valid token in the context as "user", which channelsapi reads. The
// token comes from "Authorization: Bearer <token>" (REST and non-browser
// clients), the "token" cookie, or, for browsers opening a WebSocket, the
// subprotocol offer "bearer, <token>". Tokens in URLs are not accepted: they
// end up in logs. A request without a token is anonymous; one with a token
// that is not valid is refused with 401, as DRF's TokenAuthentication does,
// the WebSocket upgrade included.
func authenticate(c *gin.Context) {
	t := token(c.Request)
	if t == "" {
		c.Next()
		return
	}
	u := userForToken(t)
	if u == nil {
		c.Header("WWW-Authenticate", "Bearer")
		c.AbortWithStatusJSON(http.StatusUnauthorized, gin.H{"detail": "Invalid token."})
		return
	}
	c.Set("user", u)
	c.Next()
}

func token(r *http.Request) string {
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	if c, err := r.Cookie("token"); err == nil {
		return c.Value
	}
	if protos := strings.Split(r.Header.Get("Sec-WebSocket-Protocol"), ","); len(protos) == 2 &&
		strings.TrimSpace(protos[0]) == "bearer" {
		return strings.TrimSpace(protos[1])
	}
	return ""
}

func userForToken(t string) *User {
	for tok, u := range demoUsers {
		if t != "" && subtle.ConstantTimeCompare([]byte(t), []byte(tok)) == 1 {
			return u
		}
	}
	return nil
}

// Note is a private note, readable and writable only by its owner (and an
// admin).
type Note struct {
	ID      uint   `json:"id" gorm:"primaryKey"`
	OwnerID uint   `json:"owner_id" gorm:"index"`
	Text    string `json:"text" binding:"required,max=1000"`
}

// userKey keeps the idempotency keys of each user apart; anonymous
// clients share one space of keys.
func userKey(r *channelsapi.Request) string {
	if u := currentUser(r); u != nil {
		return strconv.FormatUint(uint64(u.ID), 10)
	}
	return "anonymous"
}

func currentUser(r *channelsapi.Request) *User {
	u, _ := r.User.(*User)
	return u
}

// notes serves Note: only authenticated users, each sees only their own
// notes and an admin every note (a ScopeFilter, which is SQL for queries
// and is evaluated in memory for events), and a new note belongs to
// whoever creates it.
func notes() channelsapi.ViewSet[Note] {
	return channelsapi.ViewSet[Note]{
		Stream:         "notes",
		Label:          "polls.note",
		ReadOnlyFields: []string{"owner_id"},
		Permission:     channelsapi.IsAuthenticated(),
		ScopeFilter: func(_ context.Context, r *channelsapi.Request) (channelsapi.Filter, error) {
			u := currentUser(r)
			switch {
			case u == nil:
				return nil, channelsapi.ErrNotAuthenticated
			case u.Admin:
				return nil, nil
			}
			return channelsapi.Filter{"owner_id": u.ID}, nil
		},
		Filters:      map[string][]string{"text": {"icontains"}},
		SearchFields: []string{"text"},
		Hooks: channelsapi.Hooks[Note]{
			BeforeCreate: func(_ context.Context, _ *gorm.DB, r *channelsapi.Request, n *Note) error {
				n.OwnerID = currentUser(r).ID
				return nil
			},
		},
	}
}
