-- All-or-nothing SET NX PX of several lock keys (a multi-resource lock; a single
-- resource uses plain SET NX PX). If any key exists, nothing is set.
-- KEYS = the lock keys, ARGV[1] = token, ARGV[2] = TTL in milliseconds.
-- Returns 1 if every key was set, 0 if one was taken.
for _, key in ipairs(KEYS) do
    if redis.call("EXISTS", key) == 1 then
        return 0
    end
end
for _, key in ipairs(KEYS) do
    redis.call("SET", key, ARGV[1], "PX", ARGV[2])
end
return 1
