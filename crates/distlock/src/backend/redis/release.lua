-- distlock: release a lock only if the owner still holds it, or take the
-- owner out of the waiters' queue when it gave up waiting; when the lock
-- is free, tell the waiter whose turn it is on the key's release channel.
-- KEYS[1] the lock, KEYS[2] the waiters' queue, KEYS[3] the waiters'
-- leases. ARGV[1] owner token, ARGV[2] the release channel.
-- The message is the owner token of the queue's head, or "" when nobody
-- is queued (every waiter may try).
-- Returns 0 when the lock is gone or someone else's; else it is released
-- and the reply is 1 + the number of subscriptions that were told.
local function tell()
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1] or ''
  return redis.call('PUBLISH', ARGV[2], head)
end
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  -- A holder is never queued: its grant took it out of the queue.
  redis.call('DEL', KEYS[1])
  return 1 + tell()
end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  if not value then
    tell()
  end
end
return 0
