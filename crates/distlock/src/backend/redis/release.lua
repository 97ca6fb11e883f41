-- distlock: release a lock or a permit only if the owner still holds it,
-- or take the owner out of the waiters' queue when it gave up waiting;
-- when the key is free (or may have a place for a permit) and waiters may
-- be queued, tell the waiter whose turn it is on the key's release channel.
-- KEYS[1] the lock (or the permits' marker, see acquire.lua), KEYS[2] its
-- fencing counter (negative while waiters may be queued: the queue flag),
-- KEYS[3] the waiters' queue, KEYS[4] the waiters' leases; for a permit,
-- KEYS[5] the permits' expiries and KEYS[6] the permits.
-- ARGV[1] owner token, ARGV[2] the release channel.
-- The message is the owner token of the queue's head. A release that
-- tells no waiter (the flag is clear, or the queue was found empty, which
-- clears it) publishes "-" instead, for observers of the key (waiters
-- ignore it); a waiter leaving the queue publishes only to wake the next.
-- Only a queued owner's lease is looked up: a holder's release reads
-- neither the queue nor the leases.
-- Returns 0 when the lock or permit is gone or someone else's; else it is
-- released and the reply is 1 + the number of subscriptions that were told.
local lock, fence, queue = KEYS[1], KEYS[2], KEYS[3]
local owner = ARGV[1]
local v = redis.call('MGET', lock, fence)
local value = v[1]
local last = tonumber(v[2] or '0')
-- Tells the queue's head; nil (and the flag cleared) if it is empty.
local function tell()
  local head = redis.call('ZRANGE', queue, 0, 0)[1]
  if not head then
    redis.call('SET', fence, string.format('%d', -last))
    return nil
  end
  return redis.call('PUBLISH', ARGV[2], head)
end
-- A holder left: tell the waiter whose turn it is, else the observers.
local function released()
  local told = last < 0 and tell()
  if told then
    return told
  end
  redis.call('PUBLISH', ARGV[2], '-')
  return 0
end
-- A lease is its owner and its mode: a permit's release never takes the
-- lock.
if value and not KEYS[5] and string.sub(value, 1, 33) == owner .. ':' then
  -- A holder is never queued: its grant took it out of the queue.
  redis.call('DEL', lock)
  return 1 + released()
end
local marked = value and string.byte(value) == 42
if marked and KEYS[5] then
  local expiries, permits = KEYS[5], KEYS[6]
  local expiry = redis.call('ZSCORE', expiries, owner)
  if expiry then
    redis.call('ZREM', expiries, owner)
    redis.call('HDEL', permits, owner)
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    -- The marker and the permits expire with the last live permit, and go
    -- with it.
    local top = redis.call('ZRANGE', expiries, -1, -1, 'WITHSCORES')[2]
    if top and tonumber(top) > now then
      for _, key in ipairs({lock, expiries, permits}) do
        redis.call('PEXPIREAT', key, top)
      end
    else
      redis.call('DEL', lock, expiries, permits)
    end
    -- An expired permit was no longer held.
    if tonumber(expiry) > now then
      return 1 + released()
    end
  end
end
if last < 0 and redis.call('ZREM', queue, owner) == 1 then
  redis.call('HDEL', KEYS[4], owner)
  if not value or marked then
    tell()
  end
end
return 0
