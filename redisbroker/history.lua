-- Reads a topic's position and, when asked, a range of its history, at one
-- point of its order. A topic without an epoch gets one, as publish.lua
-- would give it, so that a position read before the first message stays
-- valid after it.
--
-- KEYS[1]  the topic's meta hash (see publish.lua)
-- KEYS[2]  the topic's history
-- ARGV[1]  a new epoch, taken if the topic has none
-- ARGV[2]  meta TTL, ms
-- ARGV[3]  the first offset of the range, or "" for no range
-- ARGV[4]  the last offset of the range, or "+" for up to the last
--
-- Returns the epoch, the last offset and the entries of the range.

local meta, history = KEYS[1], KEYS[2]

local pos = redis.call("hmget", meta, "e", "s")
local epoch, top = pos[1], pos[2]
if not epoch then
	epoch, top = ARGV[1], "0"
	redis.call("hset", meta, "e", epoch, "s", 0)
end
redis.call("pexpire", meta, ARGV[2])
if not top then
	top = "0"
end
local entries = {}
if ARGV[3] ~= "" then
	entries = redis.call("xrange", history, ARGV[3], ARGV[4])
end
return { epoch, top, entries }
