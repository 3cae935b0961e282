-- Acquire: all-or-nothing SET NX PX of the lock keys, raising each resource's fencing
-- counter in the same step.
-- KEYS = the n lock keys, then the n fencing-counter keys, then (when ARGV[4] is "1")
-- the node's incarnation marker.
-- ARGV[1] = token, ARGV[2] = TTL in milliseconds, ARGV[3] = n, ARGV[4] = "1" to
-- require the incarnation marker (restart quarantine), ARGV[5] = the fencing floor.
-- Returns -1 if the marker is missing (this node lost its data: nothing is set), 0 if
-- a lock key is taken (nothing is set), else the n raised counters.
local n = tonumber(ARGV[3])
if ARGV[4] == "1" and redis.call("EXISTS", KEYS[2 * n + 1]) == 0 then
    return -1
end
for i = 1, n do
    if redis.call("EXISTS", KEYS[i]) == 1 then
        return 0
    end
end
-- Fencing counters first: a counter key of another type fails the script before any
-- SET. Each counter moves to max(counter + 1, ARGV[5]), the floor the client proposes
-- (its clock in microseconds): nodes that saw the same acquisitions return the same
-- value, and a node that lost its counters comes back at the floor, above the tokens
-- handed out before as long as the clients' clocks roughly agree (docs/fencing.md).
local floor = tonumber(ARGV[5])
local fences = {}
for i = 1, n do
    local current = tonumber(redis.call("GET", KEYS[n + i]) or "0")
    local fence = math.max(current + 1, floor)
    redis.call("SET", KEYS[n + i], string.format("%d", fence))
    fences[i] = fence
end
for i = 1, n do
    redis.call("SET", KEYS[i], ARGV[1], "PX", ARGV[2])
end
return fences
