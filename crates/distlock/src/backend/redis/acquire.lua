-- distlock: one atomic acquisition attempt.
-- KEYS[1] the lock, KEYS[2] its fencing counter (same hash slot).
-- ARGV[1] owner token (32 hex digits), ARGV[2] TTL in milliseconds,
-- ARGV[3] metadata: "-" for none, or "=" followed by the metadata.
-- The lock's value is "<owner>:<fencing token>:<ARGV[3]>".
-- Returns {1, token} when granted (again, with the stored token and a
-- fresh TTL, when the owner already holds it), or
-- {0, token, pttl, metadata or false} when someone else holds it.
local value = redis.call('GET', KEYS[1])
if value then
  local owner, token, meta = string.match(value, '^(%x+):(%d+):(.*)$')
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, token}
  end
  local metadata = false
  if meta and string.sub(meta, 1, 1) == '=' then
    metadata = string.sub(meta, 2)
  end
  return {0, token or '0', redis.call('PTTL', KEYS[1]), metadata}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%d', token) .. ':' .. ARGV[3], 'PX', ARGV[2])
return {1, token}
