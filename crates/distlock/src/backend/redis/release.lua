-- distlock: release a lock only if the owner still holds it, and tell
-- waiters on the key's release channel.
-- KEYS[1] the lock. ARGV[1] owner token, ARGV[2] the release channel.
-- Returns 0 when the lock is gone or someone else's; else it is released
-- and the reply is 1 + the number of subscriptions that were told.
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('DEL', KEYS[1])
  return 1 + redis.call('PUBLISH', ARGV[2], '')
end
return 0
