-- fredlock's operations on one node, run as a batch: one call carries every operation
-- that was waiting for this node, and each gets its own result. An operation that
-- fails (WRONGTYPE on its key, a quarantined node, an exhausted fencing counter)
-- fails alone; the others run as if they had come by themselves, in order.
--
-- ARGV[1] = m, the number of operations. Then, for operation i, ARGV[3i - 1 .. 3i + 1]
-- = its kind, its number of keys, its number of arguments. Then every operation's
-- arguments, in order. KEYS = every operation's keys, in order.
-- Returns m results: an operation's reply, or a string "!<message>" when it failed.
--
-- Each operation reads and checks before it writes, so one that fails has changed
-- nothing. Operations read their keys and arguments in place: KEYS[k + j] is an
-- operation's j-th key, ARGV[a + j] its j-th argument, and nk its number of keys.

-- The restart quarantine, once per batch: the milliseconds this node still sits out
-- of acquisitions (0 when it votes). run_id changes with every start of the server
-- process, and a replica promoted in its place has its own; a marker that is missing
-- (flushed, evicted, never written) or holds another run_id means locks this node
-- granted may be gone.
local quarantine_left = nil
local function quarantine(marker, guard, period)
    if quarantine_left then
        return quarantine_left
    end
    local run_id = string.match(redis.call("INFO", "server"), "run_id:(%x+)")
    if not run_id then
        error({err = "ERR fredlock: INFO server has no run_id"})
    end
    if redis.call("GET", marker) ~= run_id then
        -- A whole period from now; never shorten a guard that another client set with
        -- a longer period.
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
    quarantine_left = math.max(left, 0)
    return quarantine_left
end

-- 2^53 - 1: the largest integer a double holds with its successor.
local MAX_COUNTER = 9007199254740991

-- One key, the healthy path in two calls: SET NX is the check and the write of the
-- lock, and SET ... GET writes the floor and returns the counter it replaced, which
-- almost always lies below the floor (the floor is a clock in microseconds). Only a
-- counter at or above the floor needs a third call. A counter of another type fails
-- the SET ... GET and the lock key is deleted again; an exhausted or unreadable one is
-- put back (with the new expiry) and the lock key deleted: nothing of the lock stays.
local function acquire_one(key, counter, token, ttl, floor, keep)
    if not redis.call("SET", key, token, "NX", "PX", ttl) then
        return 0
    end
    local old = redis.pcall("SET", counter, floor, "PX", keep, "GET")
    if type(old) == "table" and old.err then
        redis.call("DEL", key)
        error(old)
    end
    local current = tonumber(old or "0")
    if not current or current >= MAX_COUNTER then
        redis.call("SET", counter, old, "PX", keep)
        redis.call("DEL", key)
        error({err = current and "FENCE_EXHAUSTED 1" or "ERR fredlock: fencing counter 1 is not a number"})
    end
    local fence = tonumber(floor)
    if current >= fence then
        fence = current + 1
        redis.call("SET", counter, string.format("%d", fence), "PX", keep)
    end
    return {fence}
end

-- Acquire: all-or-nothing SET NX PX of the n lock keys, raising each resource's
-- fencing counter in the same step.
-- keys = the n lock keys, the n counters, then (when a period is given) the node's
-- incarnation marker and quarantine guard. args = token, TTL ms, period ms or -1,
-- fencing floor, counter retention ms.
-- Returns the n raised counters, or 0 if a lock key is taken (nothing set).
local function acquire(k, nk, a)
    local period = tonumber(ARGV[a + 3])
    local n = period >= 0 and (nk - 2) / 2 or nk / 2
    if period >= 0 then
        local left = quarantine(KEYS[k + 2 * n + 1], KEYS[k + 2 * n + 2], period)
        if left > 0 then
            error({err = string.format("QUARANTINED %d", left)})
        end
    end
    -- Each counter moves to max(counter + 1, floor), the floor the client proposes (its
    -- clock in microseconds): nodes that saw the same acquisitions return the same
    -- value, and a counter that was lost or expired comes back at the floor
    -- (docs/fencing.md).
    local token, ttl, floor = ARGV[a + 1], ARGV[a + 2], ARGV[a + 4]
    local keep = tonumber(ttl) + tonumber(ARGV[a + 5])
    if n == 1 then
        return acquire_one(KEYS[k + 1], KEYS[k + 2], token, ttl, floor, keep)
    end
    -- Several keys: every counter read and checked, then every key checked, before
    -- anything is written.
    local fences = {}
    for i = 1, n do
        local current = tonumber(redis.call("GET", KEYS[k + n + i]) or "0")
        if not current then
            error({err = string.format("ERR fredlock: fencing counter %d is not a number", i)})
        elseif current >= MAX_COUNTER then
            error({err = string.format("FENCE_EXHAUSTED %d", i)})
        end
        fences[i] = math.max(current + 1, tonumber(floor))
    end
    for i = 1, n do
        if redis.call("EXISTS", KEYS[k + i]) == 1 then
            return 0
        end
    end
    for i = 1, n do
        redis.call("SET", KEYS[k + i], token, "PX", ttl)
        -- The counter outlives this lock by the retention. An earlier lock of the
        -- resource has ended (its key was free), so from now is long enough for it.
        redis.call("SET", KEYS[k + n + i], string.format("%d", fences[i]), "PX", keep)
    end
    return fences
end

-- Whether every one of the n lock keys from KEYS[k + 1] holds the token.
local function ours(k, n, token)
    for i = 1, n do
        if redis.call("GET", KEYS[k + i]) ~= token then
            return false
        end
    end
    return true
end

-- Extend: compare-and-pexpire. keys = the n lock keys, then the n counters.
-- args = token, TTL ms, counter retention ms. Returns 1 if renewed, 0 if not ours
-- (nothing changed).
local function extend(k, nk, a)
    local n = nk / 2
    if not ours(k, n, ARGV[a + 1]) then
        return 0
    end
    local ttl = ARGV[a + 2]
    local keep = tonumber(ttl) + tonumber(ARGV[a + 3])
    for i = 1, n do
        redis.call("PEXPIRE", KEYS[k + i], ttl)
        -- A counter lost meanwhile stays lost: PEXPIRE does not create it.
        redis.call("PEXPIRE", KEYS[k + n + i], keep)
    end
    return 1
end

-- Fencing write-back: while the lock keys hold the token, raise each counter to at
-- least the token handed out. keys = the n lock keys, then the n counters. args =
-- token, counter life ms (TTL + retention), then the n fencing tokens. Returns 1 if
-- the keys are ours (counters raised), 0 otherwise (nothing changed).
local function fence(k, nk, a)
    local n = nk / 2
    if not ours(k, n, ARGV[a + 1]) then
        return 0
    end
    for i = 1, n do
        local counter, token = KEYS[k + n + i], ARGV[a + 2 + i]
        local current = tonumber(redis.call("GET", counter) or "0")
        if current < tonumber(token) then
            redis.call("SET", counter, token, "PX", ARGV[a + 2])
        end
    end
    return 1
end

-- Compare-and-delete of each lock key that holds the token. args = token, and for a
-- release the channel prefix: each deleted key is announced on prefix .. key with
-- the token, which wakes the clients waiting for it. Returns 1 if every key held the
-- token, 0 otherwise (those that did were deleted anyway).
local function delete(k, nk, a, na)
    local token, channel = ARGV[a + 1], na > 1 and ARGV[a + 2]
    local all = 1
    for i = 1, nk do
        local key = KEYS[k + i]
        if redis.call("GET", key) == token then
            redis.call("DEL", key)
            if channel then
                redis.call("PUBLISH", channel .. key, token)
            end
        else
            all = 0
        end
    end
    return all
end

local kinds = {a = acquire, e = extend, f = fence, d = delete}

local m = tonumber(ARGV[1])
local k, a = 0, 1 + 3 * m
local results = {}
for i = 1, m do
    local kind = ARGV[3 * i - 1]
    local nk, na = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
    local run = kinds[kind]
    if not run then
        results[i] = "!ERR fredlock: unknown operation " .. tostring(kind)
    else
        local ok, reply = pcall(run, k, nk, a, na)
        if ok then
            results[i] = reply
        elseif type(reply) == "table" then
            results[i] = "!" .. tostring(reply.err)
        else
            results[i] = "!" .. tostring(reply)
        end
    end
    k, a = k + nk, a + na
end
return results
