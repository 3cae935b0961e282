-- Lift the restart quarantine: record the node's current incarnation and delete its
-- guard. For an operator who knows that no lock this node granted is still held (a
-- first deployment, or every client stopped for the quarantine period).
-- KEYS = the incarnation marker, the quarantine guard.
-- Returns the run_id recorded.
local run_id = string.match(redis.call("INFO", "server"), "run_id:(%x+)")
if not run_id then
    return redis.error_reply("ERR fredlock: INFO server has no run_id")
end
redis.call("SET", KEYS[1], run_id)
redis.call("DEL", KEYS[2])
return run_id
