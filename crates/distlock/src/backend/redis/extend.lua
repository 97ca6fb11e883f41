-- distlock: extend a lock only if the owner still holds it.
-- KEYS[1] the lock. ARGV[1] owner token, ARGV[2] TTL in milliseconds.
-- Returns 1 when extended, 0 when the lock is gone or someone else's.
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
