"""The rate limiter's Lua script: check and charge both token buckets in one atomic call."""

from __future__ import annotations

# KEYS: one bucket each. ARGV: capacity, window_ms, cost for each bucket in turn.
# Returns {allowed, retry_ms, then per bucket: remaining, reset_ms, short}; integers only, because
# Redis truncates Lua numbers in replies.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local level, cap, win, cost = {}, {}, {}, {}
local allowed, wait = 1, 0
-- Milliseconds to refill `deficit` tokens, computed as deficit * window / capacity so that round
-- numbers stay exact (100 of 1000 tokens per 60000 ms is 6000 ms, not 6000.0000001).
local function refill_ms(i, deficit) return math.ceil(deficit * win[i] / cap[i]) end
for i = 1, n do
  cap[i] = tonumber(ARGV[3 * i - 2])
  win[i] = tonumber(ARGV[3 * i - 1])
  cost[i] = tonumber(ARGV[3 * i])
  local s = redis.call('HMGET', KEYS[i], 't', 'ts')
  local v = cap[i]
  if s[1] then
    local elapsed_us = math.max(0, now - tonumber(s[2]))
    v = math.min(cap[i], tonumber(s[1]) + elapsed_us * cap[i] / (win[i] * 1000))
  end
  level[i] = v
  if v < cost[i] then
    allowed = 0
    wait = math.max(wait, refill_ms(i, cost[i] - v))
  end
end
local out = {allowed, wait}
for i = 1, n do
  local v = level[i]
  local short = 0
  if v < cost[i] then short = 1 end
  if allowed == 1 then
    v = v - cost[i]
    -- Numbers, not tostring(): Redis converts them round-trip exact, tostring() keeps 14 digits.
    redis.call('HSET', KEYS[i], 't', v, 'ts', now)
    redis.call('PEXPIRE', KEYS[i], refill_ms(i, cap[i] - v) + 1000)
  end
  out[#out + 1] = math.floor(v)
  out[#out + 1] = refill_ms(i, cap[i] - v)
  out[#out + 1] = short
end
return out
"""
