-- distlock: one atomic acquisition attempt, with a fair queue of waiters.
-- KEYS[1] the lock, KEYS[2] its fencing counter, KEYS[3] the waiters'
-- queue (a sorted set of owner tokens by arrival), KEYS[4] the waiters'
-- leases (a hash: owner token -> server time in ms until which the waiter
-- counts as alive); all in one hash slot.
-- ARGV[1] owner token (32 hex digits), ARGV[2] TTL in milliseconds,
-- ARGV[3] metadata: "-" for none, or "=" followed by the metadata,
-- ARGV[4] "1" if the caller waits (it joins the queue when it does not get
-- the lock), ARGV[5] the waiter lease in milliseconds.
-- The lock's value is "<owner>:<fencing token>:<ARGV[3]>".
-- Returns {1, token} when granted (again, with the stored token and a
-- fresh TTL, when the owner already holds it); {0, token, pttl, metadata
-- or false} when someone else holds it; {0} when it is free but a waiter
-- ahead of the caller has the next turn.
local lock, fence, queue, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner = ARGV[1]
local value = redis.call('GET', lock)
local token, meta
if value then
  local holder
  holder, token, meta = string.match(value, '^(%x+):(%d+):(.*)$')
  if holder == owner then
    redis.call('PEXPIRE', lock, ARGV[2])
    return {1, token}
  end
end
-- The server's clock in ms: for the queue (to look at it or join it).
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local now
local head = redis.call('ZRANGE', queue, 0, 0)[1]
if head then
  now = server_ms()
end
-- The head of the queue, after forgetting waiters that stopped asking.
while head and tonumber(redis.call('HGET', leases, head) or '0') <= now do
  redis.call('ZREM', queue, head)
  redis.call('HDEL', leases, head)
  head = redis.call('ZRANGE', queue, 0, 0)[1]
end
if not value and (not head or head == owner) then
  if head then
    redis.call('ZREM', queue, owner)
    redis.call('HDEL', leases, owner)
  end
  -- Floored by the server's clock in microseconds, so that tokens never go
  -- back even when the counter is lost (FLUSHALL, eviction, a restart or a
  -- failover without it): max(last + 1, now in µs). Below 2^53 a double
  -- holds it exactly; '%d' writes it out whole ('%.14g' would round).
  local granted = redis.call('INCR', fence)
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if granted < floor then
    granted = floor
    redis.call('SET', fence, string.format('%d', granted))
  end
  redis.call('SET', lock, owner .. ':' .. string.format('%d', granted) .. ':' .. ARGV[3], 'PX', ARGV[2])
  return {1, granted}
end
if ARGV[4] == '1' then
  local lease = tonumber(ARGV[5])
  now = now or server_ms()
  redis.call('ZADD', queue, 'NX', now, owner)
  redis.call('HSET', leases, owner, now + lease)
  redis.call('PEXPIRE', queue, lease)
  redis.call('PEXPIRE', leases, lease)
end
if not value then
  return {0}
end
local metadata = false
if meta and string.sub(meta, 1, 1) == '=' then
  metadata = string.sub(meta, 2)
end
return {0, token or '0', redis.call('PTTL', lock), metadata}
