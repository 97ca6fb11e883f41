-- distlock: read the holder of a lock. Read-only.
-- KEYS[1] the lock.
-- Returns {} when free, else {token, pttl, metadata or false}; the owner
-- token never leaves the server.
local value = redis.call('GET', KEYS[1])
if not value then
  return {}
end
local token, meta = string.match(value, '^%x+:(%d+):(.*)$')
local metadata = false
if meta and string.sub(meta, 1, 1) == '=' then
  metadata = string.sub(meta, 2)
end
return {token or '0', redis.call('PTTL', KEYS[1]), metadata}
