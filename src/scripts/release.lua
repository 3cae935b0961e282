-- Compare-and-delete: remove each lock key that still holds our token.
-- KEYS = the lock keys (one, or several for a multi-resource lock), ARGV[1] = token,
-- ARGV[2] (optional) = a channel prefix: each deleted key is announced on
-- ARGV[2] .. key with the token as the message, which wakes the clients waiting for
-- it (once per release, however many nodes announce it).
-- Returns 1 if every key held our token (all deleted), 0 otherwise (those that did
-- were deleted anyway).
local all = 1
for _, key in ipairs(KEYS) do
    if redis.call("GET", key) == ARGV[1] then
        redis.call("DEL", key)
        if ARGV[2] then
            redis.call("PUBLISH", ARGV[2] .. key, ARGV[1])
        end
    else
        all = 0
    end
end
return all
