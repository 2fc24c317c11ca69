"""The Lua scripts that make a step atomic: a consumer's recovery, load shedding, idempotency."""

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


# Load shedding: pushes ARGV[1] onto list KEYS[1] unless it holds ARGV[2]
# items or more; then answers minus its length, and pushes nothing.
RPUSH_IF_ROOM = """
local n = redis.call('LLEN', KEYS[1])
if n >= tonumber(ARGV[2]) then return -n end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""

# Load shedding: adds ARGV[1] to stream KEYS[1] unless group ARGV[3] has
# ARGV[2] entries or more still to read (its lag, Redis 7.0 or newer); then
# answers minus the lag, and adds nothing. ARGV[4]: MAXLEN ~, or ''.
XADD_IF_ROOM = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, lag
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1]
      elseif group[i] == 'lag' then lag = group[i + 1] end
    end
    if name == ARGV[3] and lag and tonumber(lag) >= tonumber(ARGV[2]) then
      return -tonumber(lag)
    end
  end
end
if ARGV[4] == '' then
  return redis.call('XADD', KEYS[1], '*', '__data__', ARGV[1])
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', '__data__', ARGV[1])
"""


# Idempotency: claims record KEYS[1] for owner ARGV[1] for ARGV[2] ms when it
# is free, and answers {'run'}; or answers {'done', data, headers} when a
# handler finished with it, or {'running', ms left} while one runs.
IDEMPOTENCY_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'run'}
end
if state == 'done' then
  local done = redis.call('HMGET', KEYS[1], 'data', 'headers')
  return {'done', done[1], done[2]}
end
return {'running', redis.call('PTTL', KEYS[1])}
"""

# Idempotency: owner ARGV[1] stores its result (ARGV[2] the body, ARGV[3] the
# headers as JSON) in record KEYS[1], kept ARGV[4] ms; answers 0 when the
# record is no longer its own (its claim ran out and another took it).
IDEMPOTENCY_STORE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'data', ARGV[2], 'headers', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# Idempotency: owner ARGV[1] gives record KEYS[1] up (its handler raised),
# so that a retry runs again.
IDEMPOTENCY_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and
   redis.call('HGET', KEYS[1], 'state') == 'running' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
