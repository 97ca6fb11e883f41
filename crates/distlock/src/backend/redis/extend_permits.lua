-- distlock: extend many permits in one call, each only if its owner still
-- holds it. KEYS[3i - 2], KEYS[3i - 1], KEYS[3i]: the i-th permit's marker
-- (the lock), expiries and permits (see acquire.lua); ARGV[i] its owner
-- token, ARGV[n + i] its TTL in milliseconds (n = #KEYS / 3).
-- Returns one 1 (extended) or 0 (expired, or never held) per permit.
local n = #KEYS / 3
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local done = {}
for i = 1, n do
  local lock, expiries, permits = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local owner = ARGV[i]
  -- A marker deleted behind the permits' backs takes them all.
  local value = redis.call('GET', lock)
  local expiry = value and string.byte(value) == 42 and redis.call('ZSCORE', expiries, owner)
  if expiry and tonumber(expiry) > now then
    redis.call('ZADD', expiries, now + tonumber(ARGV[n + i]), owner)
    -- The marker and the permits expire with the last permit.
    local top = redis.call('ZRANGE', expiries, -1, -1, 'WITHSCORES')[2]
    for _, key in ipairs({lock, expiries, permits}) do
      redis.call('PEXPIREAT', key, top)
    end
    done[i] = 1
  else
    done[i] = 0
  end
end
return done
