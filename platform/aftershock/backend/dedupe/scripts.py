"""The Lua scripts that keep every dedupe write owner-checked and idempotent (run by store.py)."""

from __future__ import annotations

LAST_SEQ = """
local function last_seq(stream)
  local r = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #r == 0 then return 0 end
  return tonumber(string.match(r[1][1], '^0%-(%d+)$')) or 0
end
"""

# KEYS: meta, lease. ARGV: fp, token, lease_ms, running_ttl_ms, stream key prefix, completion_id,
# created. Returns {outcome, owner token, completion_id, created}: the identity (the OpenAI id and
# created time) of the first request for the key, which every duplicate and replay answers with.
BEGIN = """
local meta, lease = KEYS[1], KEYS[2]
local fp, token = ARGV[1], ARGV[2]
local cid, created = ARGV[6], ARGV[7]
local holder = redis.call('GET', lease)
local stored = redis.call('HMGET', meta, 'fp', 'state', 'owner', 'cid', 'created')
if stored[4] then cid, created = stored[4], stored[5] end
if holder == token then return {'claimed', token, cid, created} end  -- a resent begin that had won
local outcome = 'claimed'
if stored[1] then
  if stored[1] ~= fp then return {'conflict', '', '', '0'} end
  if stored[2] == 'done' then return {'replayed', stored[3], cid, created} end
  if holder then return {'joined', holder, cid, created} end
  -- running, but the lease lapsed: the owner died; its partial stream goes (its identity stays)
  if stored[3] then redis.call('DEL', ARGV[5] .. stored[3]) end
  outcome = 'taken_over'
elseif holder then
  return {'joined', holder, cid, created}
end
redis.call('SET', lease, token, 'NX', 'PX', ARGV[3])
redis.call('DEL', meta)
redis.call('HSET', meta, 'fp', fp, 'state', 'running', 'owner', token, 'cid', cid, 'created', created)
redis.call('PEXPIRE', meta, ARGV[4])
return {outcome, token, cid, created}
"""

# KEYS: lease, meta, stream. ARGV: token, lease_ms, running_ttl_ms. Only the holder renews.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: lease, meta, stream. ARGV: token, lease_ms, running_ttl_ms, first seq, messages...
PUBLISH = (
    LAST_SEQ
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local last = last_seq(KEYS[3])
local seq = tonumber(ARGV[4])
for i = 5, #ARGV do
  if seq > last then redis.call('XADD', KEYS[3], '0-' .. seq, 'm', ARGV[i]) end
  seq = seq + 1
end
-- publishing is proof of life: it renews like the renewer does
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""
)

# KEYS: lease, meta, stream. ARGV: token, result_ttl_ms, first seq, messages...
FINISH = (
    LAST_SEQ
    + """
local m = redis.call('HMGET', KEYS[2], 'owner', 'state')
if m[1] == ARGV[1] and m[2] == 'done' then return 1 end  -- a resent finish
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local last = last_seq(KEYS[3])
local seq = tonumber(ARGV[3])
for i = 4, #ARGV do
  if seq > last then redis.call('XADD', KEYS[3], '0-' .. seq, 'm', ARGV[i]) end
  seq = seq + 1
end
if seq > last then redis.call('XADD', KEYS[3], '0-' .. seq, 'end', '1') end
redis.call('HSET', KEYS[2], 'state', 'done')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""
)

# KEYS: lease, meta, stream. ARGV: token, marker_ttl_ms. The marker wakes blocked joiners now.
ABANDON = (
    LAST_SEQ
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('XADD', KEYS[3], '0-' .. (last_seq(KEYS[3]) + 1), 'abandon', '1')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""
)

# KEYS: lease, meta. ARGV: token. Is the generation a joiner follows live, done or lost?
STATUS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 'live' end
local m = redis.call('HMGET', KEYS[2], 'owner', 'state')
if m[1] == ARGV[1] and m[2] == 'done' then return 'done' end
return 'lost'
"""
