-- distlock: whether a waiter may take the lock now. Read-only.
-- KEYS[1] the lock, KEYS[2] the waiters' queue. ARGV[1] the waiter's
-- owner token, or "" for anyone.
-- Returns 1 when the lock is free and the queue is empty or (for a given
-- owner) starts with that owner; else 0.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
if not head or head == ARGV[1] then
  return 1
end
return 0
