-- Compare-and-pexpire: renew the expiry of the lock keys only if every one of them
-- still holds our token; otherwise change nothing. The fencing counters are kept as
-- long as the renewed lock plus the retention.
-- KEYS = the n lock keys, then the n counter keys. ARGV[1] = token, ARGV[2] = new TTL
-- in milliseconds, ARGV[3] = the counters' retention in milliseconds.
-- Returns 1 if renewed, 0 if not ours.
local n = #KEYS / 2
for i = 1, n do
    if redis.call("GET", KEYS[i]) ~= ARGV[1] then
        return 0
    end
end
local keep = tonumber(ARGV[2]) + tonumber(ARGV[3])
for i = 1, n do
    redis.call("PEXPIRE", KEYS[i], ARGV[2])
    -- A counter lost meanwhile stays lost: PEXPIRE does not create it.
    redis.call("PEXPIRE", KEYS[n + i], keep)
end
return 1
