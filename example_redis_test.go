package channelsapi_test

// This file holds the Example of WithBroker with the Redis broker; it is
// compiled, not run, as it needs PostgreSQL and Redis.

import (
	"context"
	"log"
	"time"

	"github.com/gin-gonic/gin"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
	"github.com/channelsapi/channelsapi/redisbroker"
)

// Several instances of an application share one PostgreSQL database and one
// Redis server; a client of any instance receives the events of the writes
// made on every instance.
func ExampleWithBroker() {
	type Question struct {
		ID           uint   `json:"id" gorm:"primaryKey"`
		QuestionText string `json:"question_text" binding:"required,max=200"`
	}
	db, err := gorm.Open(postgres.Open("postgres://app@db.internal:5432/polls?sslmode=disable"), &gorm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	broker, err := redisbroker.New(redisbroker.Config{URL: "redis://redis.internal:6379/0"})
	if err != nil {
		log.Fatal(err) // an invalid URL, not an unreachable server
	}
	router := gin.New()
	api, err := channelsapi.Register(router, db,
		channelsapi.WithBroker(broker), // does not wait for Redis
	)
	if err != nil {
		log.Fatal(err)
	}
	if err := channelsapi.Add(api, channelsapi.ViewSet[Question]{Stream: "questions"}); err != nil {
		log.Fatal(err)
	}
	// ... serve router; on the way out, Shutdown publishes what is still
	// queued for the other instances and closes the broker, which closes
	// its Redis connections.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = api.Shutdown(ctx)
}
