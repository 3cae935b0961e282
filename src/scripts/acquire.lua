-- Acquire: all-or-nothing SET NX PX of the lock keys, raising each resource's fencing
-- counter in the same step. One command does everything, so that an acquisition never
-- needs a second request that a later release could overtake.
-- KEYS = the n lock keys, then the n fencing-counter keys, then (when ARGV[4] is not
-- "-1") the node's incarnation marker.
-- ARGV[1] = token, ARGV[2] = TTL in milliseconds, ARGV[3] = n, ARGV[4] = the restart
-- quarantine period in milliseconds, or "-1" for none, ARGV[5] = the fencing floor.
-- Returns 0 if a lock key is taken (no lock key or counter is set), else the n raised
-- counters; the error "QUARANTINED <ms left> <uptime s>" if the node lost its data too
-- recently (nothing is set). The marker may be written in both cases: it only says the
-- node has been up for the quarantine period.
local n = tonumber(ARGV[3])
local quarantine = tonumber(ARGV[4])
if quarantine >= 0 and redis.call("EXISTS", KEYS[2 * n + 1]) == 0 then
    -- No marker: the node lost its data (or has never been used by fredlock). Every
    -- lock it granted before is expired once it has been up for the quarantine period;
    -- uptime counts whole seconds, so take it as up to one second shorter.
    local info = redis.call("INFO", "server")
    local uptime = tonumber(string.match(info, "uptime_in_seconds:(%d+)") or "0")
    local up_ms = math.max(uptime - 1, 0) * 1000
    if up_ms < quarantine then
        return redis.error_reply(string.format("QUARANTINED %d %d", quarantine - up_ms, uptime))
    end
    redis.call("SET", KEYS[2 * n + 1], "1")
end
for i = 1, n do
    if redis.call("EXISTS", KEYS[i]) == 1 then
        return 0
    end
end
-- Fencing counters first: a counter key of another type fails the script before any
-- lock key is set (counters raised before it only go up, which is harmless). Each counter moves to max(counter + 1, ARGV[5]), the floor the client proposes
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
