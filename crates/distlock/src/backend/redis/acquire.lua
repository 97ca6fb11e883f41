-- distlock: one atomic acquisition attempt, of the lock or of one of the
-- key's permits, with a fair queue of waiters.
-- KEYS[1] the lock, KEYS[2] its fencing counter; in full mode also
-- KEYS[3] the waiters' queue (a sorted set of owner tokens by arrival, in
-- µs of server time),
-- KEYS[4] the waiters' leases (a hash: owner token -> server time in ms
-- until which the waiter counts as alive), KEYS[5] the permits' expiries
-- (a sorted set: owner token -> server time in ms) and KEYS[6] the permits
-- (a hash: owner token -> "<fencing token>:<ARGV[3]>"); all in one slot.
-- ARGV[1] owner token (32 hex digits), ARGV[2] TTL in milliseconds,
-- ARGV[3] metadata: "-" for none, or "=" followed by the metadata,
-- ARGV[4] "1" if the caller waits (it joins the queue when it does not get
-- the key); in lean mode ARGV[5] the release channel; in full mode ARGV[5]
-- the waiter lease in milliseconds, ARGV[6] the permit limit, or "x" for
-- the lock, and ARGV[7] the release channel.
-- Every grant publishes "+" on the release channel, for observers of the
-- key (waiters ignore it): no round trip, and a channel nobody listens
-- on costs the server a lookup.
-- The lock's value is "<owner>:<fencing token>:<ARGV[3]>", or, while
-- permits hold the key, "*<limit>" (the marker), expiring with the last
-- permit: so the lean mode, which reads only the lock and the counter,
-- sees a key held by permits as taken. The counter holds the last token
-- granted, negated while waiters may be queued (the queue flag): the lean
-- mode (two keys, locks only) then answers -1 instead of touching the
-- queue, as it does for a marker or a waiting caller, and the caller asks
-- again in full mode. Measured on Redis 7.0.15 (INFO commandstats, 64
-- pipelined calls): each key passed costs a call about 0.45 µs of server
-- time and each argument about 0.2 µs, as much as a redis.call; hence two
-- keys unless the queue or permits are needed, and no INCR (the counter's
-- value is read with the lock anyway).
-- Returns the token (> 0) when granted (again, with the stored token and a
-- fresh TTL, when the owner already holds it); -1 when the call was lean
-- and must be made in full; {token, pttl, ARGV[3] as stored} when someone
-- else holds it (for permits, the holder that frees the key or a place
-- first); {} when it is free but a waiter ahead of the caller has the next
-- turn; {limit} when the caller asked for a permit of another limit than
-- the live permits'.
local lock, fence = KEYS[1], KEYS[2]
local owner = ARGV[1]
local v = redis.call('MGET', lock, fence)
local value = v[1]
local last = tonumber(v[2] or '0')
local queued = last < 0
if queued then
  last = -last
end
-- The lock's own holder asking again (never for a permit: a lease is its
-- owner and its mode).
if value and (not KEYS[3] or ARGV[6] == 'x') and string.sub(value, 1, 33) == owner .. ':' then
  redis.call('PEXPIRE', lock, ARGV[2])
  return tonumber(string.match(value, '^%x+:(%d+):'))
end
-- Set in full mode: the permit limit asked for (nil for the lock), the
-- live permits, the waiter after the caller, and the marker's upkeep.
local t, limit, count, after, settle
if not KEYS[3] then
  if value then
    if ARGV[4] == '1' or string.byte(value) == 42 then
      return -1
    end
    local token, meta = string.match(value, '^%x+:(%d+):(.*)$')
    return {token or '0', redis.call('PTTL', lock), meta or '-'}
  end
  if queued then
    return -1
  end
  t = redis.call('TIME')
else
  local queue, leases, expiries, permits = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
  limit = tonumber(ARGV[6])
  t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  -- The marker and the permits expire with the last permit.
  settle = function()
    local top = redis.call('ZRANGE', expiries, -1, -1, 'WITHSCORES')[2]
    for _, key in ipairs({lock, expiries, permits}) do
      redis.call('PEXPIREAT', key, top)
    end
  end
  -- A caller that waits takes (or keeps) its place in the queue.
  local function join()
    if ARGV[4] ~= '1' then
      return
    end
    local lease = tonumber(ARGV[5])
    if not redis.call('ZSCORE', queue, owner) then
      -- Scored by arrival in µs, strictly after the last one whatever the
      -- clock did: members of equal score would sort by owner token.
      local at = t[1] * 1000000 + t[2]
      local tail = redis.call('ZRANGE', queue, -1, -1, 'WITHSCORES')[2]
      if tail and tonumber(tail) >= at then
        at = tonumber(tail) + 1
      end
      redis.call('ZADD', queue, string.format('%d', at), owner)
    end
    redis.call('HSET', leases, owner, now + lease)
    redis.call('PEXPIRE', queue, lease)
    redis.call('PEXPIRE', leases, lease)
    if not queued then
      -- Raise the flag; a lost counter takes the highest token held.
      local base = last
      if base == 0 and value and string.byte(value) == 42 then
        for _, held in ipairs(redis.call('HVALS', permits)) do
          base = math.max(base, tonumber(string.match(held, '^(%d+):')))
        end
      elseif base == 0 and value then
        base = tonumber(string.match(value, '^%x+:(%d+):') or '1')
      end
      redis.call('SET', fence, string.format('%d', -math.max(base, 1)))
    end
  end
  if value and string.byte(value) ~= 42 then
    join()
    local token, meta = string.match(value, '^%x+:(%d+):(.*)$')
    return {token or '0', redis.call('PTTL', lock), meta or '-'}
  end
  count = 0
  if value then
    -- Permits hold the key: forget those that expired first.
    for _, gone in ipairs(redis.call('ZRANGE', expiries, '-inf', now, 'BYSCORE')) do
      redis.call('ZREM', expiries, gone)
      redis.call('HDEL', permits, gone)
    end
    count = redis.call('ZCARD', expiries)
  end
  if count > 0 then
    if limit then
      local mine = redis.call('HGET', permits, owner)
      if mine then
        redis.call('ZADD', expiries, now + tonumber(ARGV[2]), owner)
        settle()
        return tonumber(string.match(mine, '^(%d+):'))
      end
      local held = tonumber(string.sub(value, 2))
      if held ~= limit then
        return {held}
      end
    end
    if not limit or count >= limit then
      join()
      -- The permit that frees the key (for a permit: a place) first.
      local first
      if limit then
        first = redis.call('ZRANGE', expiries, 0, 0, 'WITHSCORES')
      else
        first = redis.call('ZRANGE', expiries, -1, -1, 'WITHSCORES')
      end
      local held = redis.call('HGET', permits, first[1]) or ''
      local token, meta = string.match(held, '^(%d+):(.*)$')
      return {token or '0', first[2] - now, meta or '-'}
    end
  end
  if queued then
    -- The head of the queue, after forgetting waiters that stopped asking.
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    while head and tonumber(redis.call('HGET', leases, head) or '0') <= now do
      redis.call('ZREM', queue, head)
      redis.call('HDEL', leases, head)
      head = redis.call('ZRANGE', queue, 0, 0)[1]
    end
    if head and head ~= owner then
      join()
      return {}
    end
    if head then
      redis.call('ZREM', queue, owner)
      redis.call('HDEL', leases, owner)
      after = redis.call('ZRANGE', queue, 0, 0)[1]
    end
    queued = after ~= nil
  end
end
-- Floored by the server's clock in microseconds, so that tokens never go
-- back even when the counter is lost (FLUSHALL, eviction, a restart or a
-- failover without it): max(last + 1, now in µs). Below 2^53 a double
-- holds it exactly; '%d' writes it out whole ('%.14g' would round), and a
-- number returned from Lua is an exact integer reply.
local granted = last + 1
local floor = t[1] * 1000000 + t[2]
if granted < floor then
  granted = floor
end
local token = string.format('%d', granted)
if queued then
  redis.call('SET', fence, '-' .. token)
else
  redis.call('SET', fence, token)
end
redis.call('PUBLISH', KEYS[3] and ARGV[7] or ARGV[5], '+')
if not limit then
  redis.call('SET', lock, owner .. ':' .. token .. ':' .. ARGV[3], 'PX', ARGV[2])
  return granted
end
local expiries, permits = KEYS[5], KEYS[6]
if count == 0 then
  -- The first permit: anything left of earlier ones is stale (their
  -- marker was deleted behind their backs).
  redis.call('DEL', expiries, permits)
  redis.call('SET', lock, '*' .. ARGV[6])
end
redis.call('HSET', permits, owner, token .. ':' .. ARGV[3])
redis.call('ZADD', expiries, t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2]), owner)
settle()
if after and count + 1 < limit then
  -- A place is left: the next waiter need not wait for a release.
  redis.call('PUBLISH', ARGV[7], after)
end
return granted
