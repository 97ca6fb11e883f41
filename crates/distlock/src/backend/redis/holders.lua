-- distlock: read the holders of a key. Read-only.
-- KEYS[1] the lock, KEYS[2] the permits' expiries, KEYS[3] the permits
-- (see acquire.lua). ARGV[1] "1" for every permit holder, "0" for only the
-- latest grant.
-- Returns {} when free; {token, pttl, metadata} for a lock's holder;
-- {limit, {token, pttl, metadata, ...}} for permits, three items per live
-- holder, in no particular order; the metadata as stored ("-" for none, or
-- "=" and the metadata). The owner tokens never leave the server.
local value = redis.call('GET', KEYS[1])
if not value then
  return {}
end
if string.byte(value) ~= 42 then
  local token, meta = string.match(value, '^%x+:(%d+):(.*)$')
  return {token or '0', redis.call('PTTL', KEYS[1]), meta or '-'}
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local live = redis.call('ZRANGE', KEYS[2], '(' .. now, '+inf', 'BYSCORE', 'WITHSCORES')
local all, latest = {}, nil
for i = 1, #live, 2 do
  local token, meta = string.match(redis.call('HGET', KEYS[3], live[i]) or '', '^(%d+):(.*)$')
  if token then
    local one = {token, live[i + 1] - now, meta}
    if ARGV[1] == '1' then
      for _, item in ipairs(one) do
        all[#all + 1] = item
      end
    elseif not latest or tonumber(token) > tonumber(latest[1]) then
      latest = one
    end
  end
end
if latest then
  all = latest
end
return {tonumber(string.sub(value, 2)), all}
