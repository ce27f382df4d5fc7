package channelsapi_test

// This file holds the Examples of Register, Add and a ViewSet's Scope: the
// documentation of the public API, run as tests.

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
)

// exampleDB opens a SQLite database with the tables of models in a new
// temporary directory; cleanup closes it and removes the directory.
func exampleDB(models ...any) (db *gorm.DB, cleanup func()) {
	dir, err := os.MkdirTemp("", "channelsapi-example")
	if err != nil {
		log.Fatal(err)
	}
	db, err = gorm.Open(sqlite.Open(filepath.Join(dir, "polls.db")+"?_journal_mode=WAL&_busy_timeout=5000&_txlock=immediate"), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := db.AutoMigrate(models...); err != nil {
		log.Fatal(err)
	}
	return db, func() {
		if sqlDB, err := db.DB(); err == nil {
			_ = sqlDB.Close()
		}
		_ = os.RemoveAll(dir)
	}
}

func ExampleRegister() {
	type Question struct {
		ID           uint   `json:"id" gorm:"primaryKey"`
		QuestionText string `json:"question_text" binding:"required,max=200"`
	}

	dir, _ := os.MkdirTemp("", "polls")
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "polls.db")+"?_journal_mode=WAL&_busy_timeout=5000&_txlock=immediate"), &gorm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	if err := db.AutoMigrate(&Question{}); err != nil {
		log.Fatal(err)
	}

	router := gin.New()
	api, err := channelsapi.Register(router, db) // the WebSocket is at /ws
	if err != nil {
		log.Fatal(err)
	}
	defer api.Shutdown(context.Background())
	if err := channelsapi.Add(api, channelsapi.ViewSet[Question]{Stream: "questions"}); err != nil {
		log.Fatal(err)
	}

	// router.Run(":8080") would serve it; here, one REST request:
	rec := httptest.NewRecorder()
	body := strings.NewReader(`{"question_text": "What's new?"}`)
	req := httptest.NewRequest(http.MethodPost, "/questions", body)
	req.Header.Set("Content-Type", "application/json")
	router.ServeHTTP(rec, req)
	fmt.Println(rec.Code, rec.Body.String())
	// Output:
	// 201 {"id":1,"question_text":"What's new?"}
}

// ExampleAdd adds a resource with a custom detail action and calls it over
// the WebSocket.
func ExampleAdd() {
	type Question struct {
		ID           uint   `json:"id" gorm:"primaryKey"`
		QuestionText string `json:"question_text" binding:"required,max=200"`
		Published    bool   `json:"published"`
	}
	db, cleanup := exampleDB(&Question{}) // a *gorm.DB on a temporary SQLite file
	defer cleanup()
	router := gin.New()
	api, err := channelsapi.Register(router, db)
	if err != nil {
		log.Fatal(err)
	}
	defer api.Shutdown(context.Background())

	err = channelsapi.Add(api, channelsapi.ViewSet[Question]{
		Stream: "questions",
		Actions: map[string]channelsapi.Action[Question]{
			// {"action": "publish", "pk": 1} on the socket, POST /questions/1/publish over REST.
			"publish": {
				Detail: true,
				Method: http.MethodPost,
				Handle: func(ctx context.Context, r *channelsapi.Request, q *Question) (any, int, error) {
					if q.Published {
						return nil, 0, channelsapi.NewError(http.StatusConflict, "Already published.")
					}
					q.Published = true
					return q, http.StatusOK, db.WithContext(ctx).Save(q).Error
				},
			},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	db.Create(&Question{QuestionText: "What's new?"})

	srv := httptest.NewServer(router)
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ws.Close()
	for range 2 {
		_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"stream": "questions", "payload": {"action": "publish", "pk": 1, "request_id": "r1"}}`))
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, reply, err := ws.ReadMessage()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(string(reply))
	}
	// Output:
	// {"stream":"questions","payload":{"action":"publish","data":{"id":1,"question_text":"What's new?","published":true},"errors":[],"response_status":200,"request_id":"r1"}}
	// {"stream":"questions","payload":{"action":"publish","data":null,"errors":["Already published."],"response_status":409,"request_id":"r1"}}
}

// ExampleViewSet_scope limits every query of a resource to the requesting
// user's rows. The user comes from the application's authentication
// middleware (here a header, for brevity) through the gin.Context key "user".
func ExampleViewSet_scope() {
	type Question struct {
		ID           uint   `json:"id" gorm:"primaryKey"`
		QuestionText string `json:"question_text" binding:"required,max=200"`
		Owner        string `json:"owner"`
	}
	db, cleanup := exampleDB(&Question{}) // a *gorm.DB on a temporary SQLite file
	defer cleanup()
	router := gin.New()
	router.Use(func(c *gin.Context) { // stand-in for real authentication
		if user := c.GetHeader("X-User"); user != "" {
			c.Set("user", user)
		}
	})
	api, err := channelsapi.Register(router, db)
	if err != nil {
		log.Fatal(err)
	}
	defer api.Shutdown(context.Background())

	err = channelsapi.Add(api, channelsapi.ViewSet[Question]{
		Stream: "questions",
		Scope: func(_ context.Context, r *channelsapi.Request, q *gorm.DB) (*gorm.DB, error) {
			user, _ := r.User.(string)
			return q.Where("owner = ?", user), nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	db.Create(&[]Question{{QuestionText: "Alice's", Owner: "alice"}, {QuestionText: "Bob's", Owner: "bob"}})

	get := func(path, user string) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("X-User", user)
		router.ServeHTTP(rec, req)
		var body struct {
			Count    int
			Results  []Question
			Position channelsapi.Position // the stream's offset the rows were read at
			Detail   string
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		fmt.Printf("%s %s %d count=%d results=%d offset=%d detail=%q\n", user, path, rec.Code, body.Count, len(body.Results), body.Position.Offset, body.Detail)
	}
	get("/questions", "alice")
	get("/questions/1", "bob")
	// Output:
	// alice /questions 200 count=1 results=1 offset=2 detail=""
	// bob /questions/1 404 count=0 results=0 offset=0 detail="Not found."
}
