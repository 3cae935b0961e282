-- Acquire: all-or-nothing SET NX PX of the lock keys, raising each resource's fencing
-- counter in the same step, and (with the restart quarantine on) the check of the
-- node's incarnation. One command does everything, so that an acquisition never needs
-- a second request that a later release could overtake.
-- KEYS = the n lock keys, then the n fencing-counter keys, then (when ARGV[4] is not
-- "-1") the node's incarnation marker and its quarantine guard.
-- ARGV[1] = token, ARGV[2] = TTL in milliseconds, ARGV[3] = n, ARGV[4] = the restart
-- quarantine period in milliseconds, or "-1" for none, ARGV[5] = the fencing floor,
-- ARGV[6] = how long a counter outlives the lock, in milliseconds.
-- Returns 0 if a lock key is taken (nothing is set), else the n raised counters.
-- Errors (nothing of the lock is set): "QUARANTINED <ms left>" while the node sits
-- out after a lost or changed incarnation; "FENCE_EXHAUSTED <i>" when counter i
-- cannot grow by one any more in Lua's doubles.
local n = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
if period >= 0 then
    local marker, guard = KEYS[2 * n + 1], KEYS[2 * n + 2]
    -- run_id changes with every start of the server process; a replica promoted in
    -- its place has its own. A marker that is missing (flushed, evicted, never
    -- written) or holds another run_id means locks this node granted may be gone.
    local run_id = string.match(redis.call("INFO", "server"), "run_id:(%x+)")
    if not run_id then
        return redis.error_reply("ERR fredlock: INFO server has no run_id")
    end
    if redis.call("GET", marker) ~= run_id then
        -- Keep the node out for a whole period from now; never shorten a guard that
        -- another client set with a longer period.
        if redis.call("PTTL", guard) < period then
            redis.call("SET", guard, run_id, "PX", period)
        end
        redis.call("SET", marker, run_id)
    end
    local left = redis.call("PTTL", guard)
    if left == -1 then
        -- A guard without expiry (set or PERSISTed by hand) would keep the node out
        -- for good: give it the period.
        redis.call("PEXPIRE", guard, period)
        left = period
    end
    if left > 0 then
        return redis.error_reply(string.format("QUARANTINED %d", left))
    end
end
for i = 1, n do
    if redis.call("EXISTS", KEYS[i]) == 1 then
        return 0
    end
end
-- Each counter moves to max(counter + 1, floor), the floor the client proposes (its
-- clock in microseconds): nodes that saw the same acquisitions return the same value,
-- and a node that lost its counter (or whose counter expired) comes back at the floor,
-- above the tokens handed out before as long as the clients' clocks roughly agree
-- (docs/fencing.md). Counters are read and checked before anything is written, so a
-- counter of another type (WRONGTYPE) or an exhausted one fails the script with
-- nothing set.
local floor = tonumber(ARGV[5])
local keep = tonumber(ARGV[2]) + tonumber(ARGV[6])
local fences = {}
for i = 1, n do
    local current = tonumber(redis.call("GET", KEYS[n + i]) or "0")
    -- 2^53 - 1: the largest integer a double holds with its successor.
    if current >= 9007199254740991 then
        return redis.error_reply(string.format("FENCE_EXHAUSTED %d", i))
    end
    fences[i] = math.max(current + 1, floor)
end
for i = 1, n do
    -- The counter outlives this lock by the retention. An earlier lock of the resource
    -- has ended (its key is gone), so from now is also long enough for it.
    redis.call("SET", KEYS[n + i], string.format("%d", fences[i]), "PX", keep)
    redis.call("SET", KEYS[i], ARGV[1], "PX", ARGV[2])
end
return fences
