"""The Redis side of dedupe: key layout and the Lua scripts that keep every write owner-checked
and idempotent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.exceptions import RedisError

from aftershock.backend.dedupe.config import OwnerLost
from aftershock.v1 import generation_pb2 as pb

_LAST_SEQ = """
local function last_seq(stream)
  local r = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #r == 0 then return 0 end
  return tonumber(string.match(r[1][1], '^0%-(%d+)$')) or 0
end
"""

# KEYS: meta, lease. ARGV: fp, token, lease_ms, running_ttl_ms, stream key prefix.
_BEGIN = """
local meta, lease = KEYS[1], KEYS[2]
local fp, token = ARGV[1], ARGV[2]
local holder = redis.call('GET', lease)
if holder == token then return {'claimed', token} end  -- a resent begin that had already won
local stored = redis.call('HMGET', meta, 'fp', 'state', 'owner')
local outcome = 'claimed'
if stored[1] then
  if stored[1] ~= fp then return {'conflict', ''} end
  if stored[2] == 'done' then return {'replayed', stored[3]} end
  if holder then return {'joined', holder} end
  -- running, but the lease lapsed: the owner died; its partial stream goes
  if stored[3] then redis.call('DEL', ARGV[5] .. stored[3]) end
  outcome = 'taken_over'
elseif holder then
  return {'joined', holder}
end
redis.call('SET', lease, token, 'NX', 'PX', ARGV[3])
redis.call('DEL', meta)
redis.call('HSET', meta, 'fp', fp, 'state', 'running', 'owner', token)
redis.call('PEXPIRE', meta, ARGV[4])
return {outcome, token}
"""

# KEYS: lease, meta, stream. ARGV: token, lease_ms, running_ttl_ms. Only the holder renews.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: lease, meta, stream. ARGV: token, lease_ms, running_ttl_ms, first seq, messages...
_PUBLISH = (
    _LAST_SEQ
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
_FINISH = (
    _LAST_SEQ
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
_ABANDON = (
    _LAST_SEQ
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('XADD', KEYS[3], '0-' .. (last_seq(KEYS[3]) + 1), 'abandon', '1')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""
)

# KEYS: lease, meta. ARGV: token. Is the generation a joiner follows live, done or lost?
_STATUS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 'live' end
local m = redis.call('HMGET', KEYS[2], 'owner', 'state')
if m[1] == ARGV[1] and m[2] == 'done' then return 'done' end
return 'lost'
"""


@dataclass(frozen=True)
class _Keys:
    meta: str
    lease: str
    stream_prefix: str

    def stream(self, token: str) -> str:
        return self.stream_prefix + token


def _is_redis_failure(exc: BaseException) -> bool:
    # Only Redis being unreachable or failing counts; a cancelled call or our own bug does not.
    return isinstance(exc, (RedisError, OSError, asyncio.TimeoutError))


def _parse_entry(fields: dict[bytes, bytes]) -> pb.GenerateResponse | None:
    """The message in a stream entry; None for the `end` marker; OwnerLost for `abandon`."""
    data = fields.get(b"m")
    if data is not None:
        return pb.GenerateResponse.FromString(data)
    if b"abandon" in fields:
        raise OwnerLost("The request this one joined was abandoned.")
    return None


# --- outcomes ----------------------------------------------------------------------------------
