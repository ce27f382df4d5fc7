package redisbroker

import (
	"context"
	"crypto/rand"
	_ "embed" // the Lua scripts
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// publishLua numbers a message, adds it to its topic's history and
// publishes it, in one step.
//
//go:embed publish.lua
var publishLua string

// historyLua reads a topic's position and a range of its history.
//
//go:embed history.lua
var historyLua string

// fillTimeout bounds a read of the history that fills a gap, which holds up
// the subscription connection's reader.
const fillTimeout = 5 * time.Second

// A topic's keys start with Prefix+"#", as no topic's channel does, and put
// the topic between braces, so that in a cluster they share a hash slot.
//
// keys returns the topic's meta hash (its epoch, e, and last offset, s) and
// its history stream.
func (b *Broker) keys(topic string) (meta, history string) {
	base := b.cfg.Prefix + "#{" + topic + "}"
	return base + ":meta", base + ":history"
}

// sentKey holds the id of the last item this broker published on topic.
func (b *Broker) sentKey(topic string) string {
	return b.cfg.Prefix + "#{" + topic + "}:sent:" + b.origin
}

// newEpoch returns a random epoch, for a topic that has none yet.
func newEpoch() string {
	e := make([]byte, 6)
	_, _ = rand.Read(e)
	return hex.EncodeToString(e)
}

// ms is d in whole milliseconds, at least one: PEXPIRE 0 would delete.
func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// position is a place in a topic's history.
type position struct {
	epoch  string
	offset uint64
}

// entry is a message or a resync marker of a topic, with its offset and the
// broker that published it.
type entry struct {
	offset uint64
	kind   byte
	origin string
	data   string
}

// parsePayload decodes a payload of a topic's channel (see publish.lua).
func parsePayload(p string) (epoch string, e entry, ok bool) {
	if len(p) < 1+idLen {
		return "", entry{}, false
	}
	e.kind, e.origin = p[0], p[1:1+idLen]
	offset, rest, ok1 := strings.Cut(p[1+idLen:], ":")
	epoch, data, ok2 := strings.Cut(rest, ":")
	n, err := strconv.ParseUint(offset, 10, 64)
	if !ok1 || !ok2 || err != nil || n == 0 || epoch == "" {
		return "", entry{}, false
	}
	e.offset, e.data = n, data
	return epoch, e, true
}

// read runs historyLua on topic: it returns the topic's epoch and last
// offset and, when from is not 0, the entries from offset from up to to (0:
// up to the last).
func (b *Broker) read(ctx context.Context, topic string, from, to uint64) (epoch string, top uint64, entries []entry, err error) {
	meta, history := b.keys(topic)
	first, last := "", "+"
	if from > 0 {
		first = strconv.FormatUint(from, 10)
	}
	if to > 0 {
		last = strconv.FormatUint(to, 10)
	}
	res, err := b.historyScript.Run(ctx, b.client, []string{meta, history},
		newEpoch(), ms(b.cfg.HistoryMetaTTL), first, last).Slice()
	if err != nil {
		return "", 0, nil, fmt.Errorf("redisbroker: read the history of %q: %w", topic, err)
	}
	if epoch, top, entries, err = parseRead(res); err != nil {
		return "", 0, nil, fmt.Errorf("redisbroker: read the history of %q: %w", topic, err)
	}
	return epoch, top, entries, nil
}

// parseRead decodes the reply of historyLua.
func parseRead(res []any) (epoch string, top uint64, entries []entry, err error) {
	bad := errors.New("unexpected reply")
	if len(res) != 3 {
		return "", 0, nil, bad
	}
	epoch, ok1 := res[0].(string)
	s, ok2 := res[1].(string)
	list, ok3 := res[2].([]any)
	top, err = strconv.ParseUint(s, 10, 64)
	if !ok1 || !ok2 || !ok3 || err != nil {
		return "", 0, nil, bad
	}
	entries = make([]entry, 0, len(list))
	for _, x := range list {
		xs, _ := x.([]any)
		if len(xs) != 2 {
			return "", 0, nil, bad
		}
		id, _ := xs[0].(string)
		fields, _ := xs[1].([]any)
		n, rest, _ := strings.Cut(id, "-")
		offset, err := strconv.ParseUint(n, 10, 64)
		if err != nil || rest != "0" || len(fields)%2 != 0 {
			return "", 0, nil, bad
		}
		e := entry{offset: offset}
		for i := 0; i < len(fields); i += 2 {
			k, _ := fields[i].(string)
			v, _ := fields[i+1].(string)
			switch k {
			case "k":
				if len(v) == 1 {
					e.kind = v[0]
				}
			case "o":
				e.origin = v
			case "d":
				e.data = v
			}
		}
		entries = append(entries, e)
	}
	return epoch, top, entries, nil
}

// covers reports whether entries are exactly the offsets after after up to
// to, one each, in order.
func covers(entries []entry, after, to uint64) bool {
	if to < after || uint64(len(entries)) != to-after {
		return false
	}
	for i, e := range entries {
		if e.offset != after+1+uint64(i) {
			return false
		}
	}
	return true
}

// Position returns topic's epoch and the offset of its last message, 0
// before the first. A topic that has no epoch yet (never published, or its
// history expired or was lost) gets one now, the one its next message will
// have: a position read before the first message stays valid after it.
func (b *Broker) Position(ctx context.Context, topic string) (epoch string, offset uint64, err error) {
	epoch, offset, _, err = b.read(ctx, topic, 0, 0)
	return epoch, offset, err
}

// History hands each message of topic after offset after in epoch to each,
// in order, up to the topic's last message, and returns the topic's
// position as Position does: the range and the position are read at one
// point of the topic's order. It reports ok false, having handed nothing,
// when epoch is not the topic's, when after is above the last offset, and
// when the history no longer holds every message after after: Redis keeps
// about [Config.HistorySize] messages of a topic, for [Config.HistoryTTL]
// after its last, and a resync marker takes an offset of its own, which no
// History reaches across. each is called on the caller's goroutine.
func (b *Broker) History(ctx context.Context, topic, epoch string, after uint64, each func(offset uint64, payload []byte)) (top string, last uint64, ok bool, err error) {
	from := after + 1
	if from == 0 {
		from = after // no offset is above it
	}
	top, last, entries, err := b.read(ctx, topic, from, 0)
	if err != nil {
		return "", 0, false, err
	}
	if top != epoch || !covers(entries, after, last) {
		return top, last, false, nil
	}
	for _, e := range entries {
		if e.kind != kindMessage {
			return top, last, false, nil
		}
	}
	for _, e := range entries {
		each(e.offset, []byte(e.data))
	}
	return top, last, true, nil
}

// The receive goroutine keeps, per topic subscribed, the place of what it
// handed last (handed), so that every offset of a topic is handed once, in
// order: a message at or below it was handed already; one above the next
// offset means that messages went missing on the way, which the history
// fills.

// dispatch hands a message or resync marker of a topic's channel over, in
// order. A gap before it is filled from the history first (a round trip to
// Redis on the reader, bounded by fillTimeout); when the history cannot
// fill it, or the epoch changed, the topic is reported lost before it.
func (b *Broker) dispatch(m *redis.Message) {
	topic, ok := strings.CutPrefix(m.Channel, b.cfg.Prefix)
	if !ok || m.Payload == "" {
		return
	}
	epoch, e, ok := parsePayload(m.Payload)
	if !ok {
		delete(b.handed, topic)
		b.lost([]string{topic})
		return
	}
	last, known := b.handed[topic]
	switch {
	case !known:
	case epoch != last.epoch:
		b.lost([]string{topic})
	case e.offset <= last.offset:
		return // handed already
	case e.offset > last.offset+1:
		b.fillGap(topic, last, e.offset-1)
	}
	b.hand(topic, epoch, e)
}

// hand hands e over: a message to the message handler, a marker to the
// lost one (except this broker's own marker of a loss it reported already).
func (b *Broker) hand(topic, epoch string, e entry) {
	b.handed[topic] = position{epoch, e.offset}
	switch e.kind {
	case kindMessage:
		b.message(topic, epoch, e.offset, []byte(e.data))
	case kindResyncO:
		if e.origin != b.origin {
			b.lost([]string{topic})
		}
	default: // kindResync, or a kind from a newer version
		b.lost([]string{topic})
	}
}

// fillGap hands what topic's history holds after last up to offset to (0: up
// to its last message). When the history no longer holds all of it, or
// topic's epoch is no longer last's, it reports topic lost instead and
// forgets what was handed: the next message starts over.
func (b *Broker) fillGap(topic string, last position, to uint64) {
	ctx, cancel := context.WithTimeout(b.ctx, fillTimeout)
	defer cancel()
	epoch, top, entries, err := b.read(ctx, topic, last.offset+1, to)
	if err != nil && b.stopped() {
		return
	}
	if to == 0 {
		to = top
	}
	if err != nil || epoch != last.epoch || !covers(entries, last.offset, to) {
		if err != nil {
			b.log.Warn("redisbroker: the history cannot fill a gap; its listeners resync", "topic", topic, "err", err)
		}
		delete(b.handed, topic)
		b.lost([]string{topic})
		return
	}
	for _, e := range entries {
		b.hand(topic, epoch, e)
	}
}

// catchUp hands, after the subscription connection came back, what each of
// topics missed since what was handed last, in order, before what the new
// connection brings: the handlers see no difference with a connection that
// never dropped. A topic the history cannot fill is reported lost.
func (b *Broker) catchUp(topics []string) {
	for _, t := range topics {
		if last, ok := b.handed[t]; ok {
			b.fillGap(t, last, 0)
		}
	}
}
