package channelsapi

// Position is a place in a stream's history (PROTOCOL.md section 10): the
// epoch names the generation of the history, and the offset grows by one
// per event of the stream, in commit order. A list reply carries the
// position its rows were read at; a subscribe given it as "since" receives
// every event after it.
type Position struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}
