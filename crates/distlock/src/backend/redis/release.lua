-- distlock: release a lock only if the owner still holds it, or take the
-- owner out of the waiters' queue when it gave up waiting; tell waiters on
-- the key's release channel when the lock is free.
-- KEYS[1] the lock, KEYS[2] the waiters' queue, KEYS[3] the waiters'
-- leases. ARGV[1] owner token, ARGV[2] the release channel.
-- Returns 0 when the lock is gone or someone else's; else it is released
-- and the reply is 1 + the number of subscriptions that were told.
local value = redis.call('GET', KEYS[1])
local released = value and string.sub(value, 1, #ARGV[1] + 1) == ARGV[1] .. ':'
if released then
  redis.call('DEL', KEYS[1])
end
local left = redis.call('ZREM', KEYS[2], ARGV[1]) == 1
if left then
  redis.call('HDEL', KEYS[3], ARGV[1])
end
if released then
  return 1 + redis.call('PUBLISH', ARGV[2], '')
end
if left and not value then
  -- The next waiter may be first now.
  redis.call('PUBLISH', ARGV[2], '')
end
return 0
