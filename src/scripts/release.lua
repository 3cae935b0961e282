-- Compare-and-delete: remove each lock key that still holds our token.
-- KEYS = the lock keys (one, or several for a multi-resource lock), ARGV[1] = token.
-- Returns 1 if every key held our token (all deleted), 0 otherwise (those that did
-- were deleted anyway).
local all = 1
for _, key in ipairs(KEYS) do
    if redis.call("GET", key) == ARGV[1] then
        redis.call("DEL", key)
    else
        all = 0
    end
end
return all
