-- distlock: one atomic acquisition attempt, with a fair queue of waiters.
-- KEYS[1] the lock, KEYS[2] its fencing counter; in full mode also
-- KEYS[3] the waiters' queue (a sorted set of owner tokens by arrival) and
-- KEYS[4] the waiters' leases (a hash: owner token -> server time in ms
-- until which the waiter counts as alive); all in one hash slot.
-- ARGV[1] owner token (32 hex digits), ARGV[2] TTL in milliseconds,
-- ARGV[3] metadata: "-" for none, or "=" followed by the metadata,
-- ARGV[4] "1" if the caller waits (it joins the queue when it does not get
-- the lock); in full mode ARGV[5] the waiter lease in milliseconds.
-- The lock's value is "<owner>:<fencing token>:<ARGV[3]>". The counter
-- holds the last token granted, negated while waiters may be queued (the
-- queue flag): the lean mode (two keys) then answers -1 instead of
-- touching the queue, and the caller asks again in full mode. Measured on
-- Redis 7.0.15 (INFO commandstats, 64 pipelined calls): each key passed
-- costs a call about 0.45 µs of server time and each argument about
-- 0.2 µs, as much as a redis.call; hence two keys unless the queue is
-- needed, and no INCR (the counter's value is read with the lock anyway).
-- Returns the token (> 0) when granted (again, with the stored token and a
-- fresh TTL, when the owner already holds it); -1 when the queue must be
-- consulted and the call was lean; {token, pttl, metadata or false} when
-- someone else holds it; {} when it is free but a waiter ahead of the
-- caller has the next turn.
local lock, fence = KEYS[1], KEYS[2]
local owner = ARGV[1]
local v = redis.call('MGET', lock, fence)
local value = v[1]
local last = tonumber(v[2] or '0')
local queued = last < 0
if queued then
  last = -last
end
if value then
  if string.sub(value, 1, 33) == owner .. ':' then
    redis.call('PEXPIRE', lock, ARGV[2])
    return tonumber(string.match(value, '^%x+:(%d+):'))
  end
  if ARGV[4] == '1' then
    if not KEYS[3] then
      return -1
    end
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    local lease = tonumber(ARGV[5])
    redis.call('ZADD', KEYS[3], 'NX', now, owner)
    redis.call('HSET', KEYS[4], owner, now + lease)
    redis.call('PEXPIRE', KEYS[3], lease)
    redis.call('PEXPIRE', KEYS[4], lease)
    if not queued then
      -- Raise the flag; a lost counter takes the holder's token.
      local base = last
      if base == 0 then
        base = tonumber(string.match(value, '^%x+:(%d+):') or '1')
      end
      redis.call('SET', fence, string.format('%d', -math.max(base, 1)))
    end
  end
  local token, meta = string.match(value, '^%x+:(%d+):(.*)$')
  local metadata = false
  if meta and string.sub(meta, 1, 1) == '=' then
    metadata = string.sub(meta, 2)
  end
  return {token or '0', redis.call('PTTL', lock), metadata}
end
local t = redis.call('TIME')
if queued then
  if not KEYS[3] then
    return -1
  end
  local queue, leases = KEYS[3], KEYS[4]
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  -- The head of the queue, after forgetting waiters that stopped asking.
  local head = redis.call('ZRANGE', queue, 0, 0)[1]
  while head and tonumber(redis.call('HGET', leases, head) or '0') <= now do
    redis.call('ZREM', queue, head)
    redis.call('HDEL', leases, head)
    head = redis.call('ZRANGE', queue, 0, 0)[1]
  end
  if head and head ~= owner then
    if ARGV[4] == '1' then
      local lease = tonumber(ARGV[5])
      redis.call('ZADD', queue, 'NX', now, owner)
      redis.call('HSET', leases, owner, now + lease)
      redis.call('PEXPIRE', queue, lease)
      redis.call('PEXPIRE', leases, lease)
    end
    return {}
  end
  if head then
    redis.call('ZREM', queue, owner)
    redis.call('HDEL', leases, owner)
    queued = redis.call('ZRANGE', queue, 0, 0)[1] ~= nil
  else
    queued = false
  end
end
-- Floored by the server's clock in microseconds, so that tokens never go
-- back even when the counter is lost (FLUSHALL, eviction, a restart or a
-- failover without it): max(last + 1, now in µs). Below 2^53 a double
-- holds it exactly; '%d' writes it out whole ('%.14g' would round), and a
-- number returned from Lua is an exact integer reply.
local granted = last + 1
local floor = t[1] * 1000000 + t[2]
if granted < floor then
  granted = floor
end
local token = string.format('%d', granted)
if queued then
  redis.call('SET', fence, '-' .. token)
else
  redis.call('SET', fence, token)
end
redis.call('SET', lock, owner .. ':' .. token .. ':' .. ARGV[3], 'PX', ARGV[2])
return granted
