-- Compare-and-pexpire: renew the expiry of the lock keys only if every one of them
-- still holds our token; otherwise change nothing.
-- KEYS = the lock keys, ARGV[1] = token, ARGV[2] = new TTL in milliseconds.
-- Returns 1 if renewed, 0 if not ours.
for _, key in ipairs(KEYS) do
    if redis.call("GET", key) ~= ARGV[1] then
        return 0
    end
end
for _, key in ipairs(KEYS) do
    redis.call("PEXPIRE", key, ARGV[2])
end
return 1
