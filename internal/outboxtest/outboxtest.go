// Package outboxtest holds what the outbox's crash tests share with the
// writer process they kill (outboxtest/writer): the model and its stream.
package outboxtest

import (
	"github.com/channelsapi/channelsapi"
)

// Item is the model the writer writes.
type Item struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
	N    int    `json:"n"`
}

// Stream is the name Item is served as.
const Stream = "items"

// Add serves Item on api.
func Add(api *channelsapi.API) error {
	return channelsapi.Add(api, channelsapi.ViewSet[Item]{Stream: Stream})
}
