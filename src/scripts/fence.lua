-- Fencing write-back: while the lock keys still hold our token, raise each fencing
-- counter to at least the value the client will hand out.
-- KEYS = the n lock keys, then the n counter keys. ARGV[1] = token, ARGV[2] = how long
-- a counter must live, in milliseconds (TTL + retention), ARGV[2 + i] = the fencing
-- token for resource i.
-- Returns 1 if every lock key holds our token (counters now at least those values),
-- 0 otherwise (nothing changed).
local n = #KEYS / 2
for i = 1, n do
    if redis.call("GET", KEYS[i]) ~= ARGV[1] then
        return 0
    end
end
local keep = tonumber(ARGV[2])
for i = 1, n do
    local current = tonumber(redis.call("GET", KEYS[n + i]) or "0")
    if current < tonumber(ARGV[2 + i]) then
        redis.call("SET", KEYS[n + i], ARGV[2 + i], "PX", keep)
    end
end
return 1
