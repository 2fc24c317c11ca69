"""The Lua scripts that make a consumer's recovery steps atomic."""

from __future__ import annotations

# Moves every item of a dead consumer's processing list back to the head of
# its source list, oldest first in line, then forgets the consumer; all in one
# atomic step, so that a consumer whose heartbeat returns meanwhile is never
# robbed. KEYS: heartbeat, processing list, source list, registry; ARGV: id.
REQUEUE_IF_DEAD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'LEFT') do moved = moved + 1 end
redis.call('SREM', KEYS[4], ARGV[1])
return moved
"""

# Claims up to ARGV[4] entries pending for a dead consumer, or deletes the
# consumer once it has none left; all in one atomic step, so that a consumer
# whose heartbeat returns meanwhile is never robbed, and two live consumers
# never claim the same entry. KEYS: stream, heartbeat, registry; ARGV: group,
# dead consumer, claiming consumer, count. Returns nil when the consumer is
# alive, else {{id, {field, value, ...}, deliveries}, ...}.
CLAIM_FROM_DEAD = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[2])
if #pending == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SREM', KEYS[3], ARGV[2])
  return {}
end
local ids, deliveries = {}, {}
for i, entry in ipairs(pending) do
  ids[i] = entry[1]
  deliveries[entry[1]] = entry[4] + 1  -- XCLAIM counts this delivery too
end
local claimed = {}
for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(ids))) do
  if entry and entry[2] then
    claimed[#claimed + 1] = {entry[1], entry[2], deliveries[entry[1]]}
    deliveries[entry[1]] = nil
  end
end
-- Left over: entries deleted from the stream meanwhile, which nothing can handle.
for id in pairs(deliveries) do redis.call('XACK', KEYS[1], ARGV[1], id) end
return claimed
"""
