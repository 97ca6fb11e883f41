-- distlock: extend many locks in one call, each only if its owner still
-- holds it. KEYS[i] the i-th lock; ARGV[i] its owner token, ARGV[n + i]
-- its TTL in milliseconds (n = #KEYS).
-- Returns one 1 (extended) or 0 (gone or someone else's) per lock.
local n = #KEYS
local done = {}
for i = 1, n do
  local value = redis.call('GET', KEYS[i])
  local owner = ARGV[i]
  if value and string.sub(value, 1, #owner + 1) == owner .. ':' then
    redis.call('PEXPIRE', KEYS[i], ARGV[n + i])
    done[i] = 1
  else
    done[i] = 0
  end
end
return done
