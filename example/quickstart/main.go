// Command quickstart is the Quick Start of README.md, which shows this file
// whole (TestReadmeQuickStart keeps them the same).
package main

import (
	"context"
	"log"

	"github.com/gin-gonic/gin"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// Question is a poll question.
type Question struct {
	ID           uint   `json:"id" gorm:"primaryKey"`
	QuestionText string `json:"question_text" binding:"required,max=200"`
}

func main() {
	// WAL, a busy timeout and immediate transactions: concurrent writers
	// wait for each other instead of failing with "database is locked".
	db, err := gorm.Open(sqlite.Open("polls.db?_journal_mode=WAL&_busy_timeout=5000&_txlock=immediate"), &gorm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := db.AutoMigrate(&Question{}); err != nil {
		log.Fatal(err)
	}

	router := gin.Default()
	api, err := channelsapi.Register(router, db) // the WebSocket is at /ws
	if err != nil {
		log.Fatal(err)
	}
	defer api.Shutdown(context.Background())
	if err := channelsapi.Add(api, channelsapi.ViewSet[Question]{Stream: "questions"}); err != nil {
		log.Fatal(err)
	}
	if err := router.Run(); err != nil { // on :8080, or on $PORT
		log.Println(err)
	}
}
