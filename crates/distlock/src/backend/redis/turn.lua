-- distlock: whether a waiter may take the key now. Read-only.
-- KEYS[1] the lock, KEYS[2] the waiters' queue; for a waiter for a permit,
-- KEYS[3] the permits' expiries. ARGV[1] the waiter's owner token, or ""
-- for anyone; for a permit, ARGV[2] its limit.
-- Returns 1 when the key is free (for a permit: holds fewer live permits
-- than the limit) and the queue is empty or (for a given owner) starts
-- with that owner; else 0.
if not KEYS[3] then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
  end
else
  local value = redis.call('GET', KEYS[1])
  if value then
    if string.byte(value) ~= 42 then
      return 0
    end
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    if redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf') >= tonumber(ARGV[2]) then
      return 0
    end
  end
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
if not head or head == ARGV[1] then
  return 1
end
return 0
