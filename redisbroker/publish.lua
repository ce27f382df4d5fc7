-- Publishes one message or resync marker of a topic: numbers it in the
-- topic's epoch, adds it to the topic's history and publishes it on the
-- topic's channel with its place, unless the publishing broker published
-- it already (a pipeline retried after a lost reply).
--
-- KEYS[1]  the topic's meta hash: e, the epoch; s, the last offset
-- KEYS[2]  the topic's history, a stream: the entry of offset n has the id
--          n-0 and the fields k (kind), o (origin) and d (data)
-- KEYS[3]  the id of the last item the publishing broker published on the
--          topic, decimal digits of a fixed width
-- ARGV[1]  kind        ARGV[2]  origin       ARGV[3]  id
-- ARGV[4]  data        ARGV[5]  channel      ARGV[6]  a new epoch, taken if the topic has none
-- ARGV[7]  history size (approximate)        ARGV[8]  history TTL, ms
-- ARGV[9]  meta TTL, ms                      ARGV[10] TTL of KEYS[3], ms
--
-- The channel's payload is kind, origin, offset, ':', epoch, ':', data.
-- Returns the offset, or 0 when the item was published already.

local meta, history, sent = KEYS[1], KEYS[2], KEYS[3]
local kind, origin, id, data, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local last = redis.call("get", sent)
if last and #last == #id and last >= id then
	return 0
end

local epoch = redis.call("hget", meta, "e")
if not epoch then
	epoch = ARGV[6]
	redis.call("hset", meta, "e", epoch, "s", 0)
end
local offset = redis.call("hincrby", meta, "s", 1)
redis.call("pexpire", meta, ARGV[9])
if offset == 1 then
	-- A new epoch: what a history of an older one still holds goes.
	redis.call("del", history)
end
local o = string.format("%d", offset)
redis.call("xadd", history, "MAXLEN", "~", ARGV[7], o .. "-0", "k", kind, "o", origin, "d", data)
redis.call("pexpire", history, ARGV[8])
redis.call("publish", channel, kind .. origin .. o .. ":" .. epoch .. ":" .. data)
redis.call("set", sent, id, "px", ARGV[10])
return offset
