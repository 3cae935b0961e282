-- fredlock's operations on one node, run as a batch: one call carries every operation
-- that was waiting for this node, and each gets its own result. An operation that
-- fails (WRONGTYPE on its key, a quarantined node, an exhausted fencing counter)
-- fails alone; the others run as if they had come by themselves, in order.
--
-- This file defines `batch`, the call. src/scripts.rs makes two scripts of it: a
-- function library that registers `batch` (Redis 7 and later, by FCALL: the file runs
-- once, when the library is loaded), and an EVAL script that ends with
-- `return batch(KEYS, ARGV)` (for servers without functions, and as the fallback of a
-- call the library cannot take: the file then runs on every call).
--
-- argv[1] = m, the number of operations; argv[2] = the restart quarantine's period in
-- ms, or -1 when it is off; with a period, keys[1] and keys[2] are the node's
-- incarnation marker and quarantine guard. Then, for operation i, argv[3i .. 3i + 2] =
-- its name, its number of keys, its number of arguments. Then every operation's
-- arguments, in order, and its keys, in order, after the two quarantine keys.
-- Returns m results: an operation's reply, or a string "!<message>" when it failed.
--
-- Each operation reads and checks before it writes, so one that fails has changed
-- nothing. Operations read their keys and arguments in place: keys[k + j] is an
-- operation's j-th key, argv[a + j] its j-th argument, nk and na their numbers.

-- The restart quarantine, once per batch: the milliseconds this node still sits out
-- of acquisitions (0 when it votes). run_id changes with every start of the server
-- process, and a replica promoted in its place has its own; a marker that is missing
-- (flushed, evicted, never written) or holds another run_id means locks this node
-- granted may be gone. INFO server is the one source of run_id a script can call; a
-- plain search finds the field (a pattern match over the whole reply cost as much as
-- INFO itself). run_id is fixed for the life of the process, and a function library's
-- Lua state lives no longer than the process (a restart, FUNCTION FLUSH or a reload
-- starts a new one, with nothing read yet), so the library reads INFO once and keeps
-- run_id; the marker is read on every batch, which is what sees a flush. As an EVAL
-- script, this file starts afresh each call and reads INFO each time.
local keys, argv, PERIOD, quarantine_left, now_ms
-- This server process's run_id, read once per Lua state: see quarantine().
local run_id_here = nil
local function quarantine()
    if quarantine_left then
        return quarantine_left
    end
    local marker, guard = keys[1], keys[2]
    if not run_id_here then
        local info = redis.call("INFO", "server")
        local at = string.find(info, "\nrun_id:", 1, true)
        run_id_here = at and string.match(info, "^%x+", at + 8)
        if not run_id_here then
            error({err = "ERR fredlock: INFO server has no run_id"})
        end
    end
    local run_id = run_id_here
    if redis.call("GET", marker) ~= run_id then
        -- A whole period from now; never shorten a guard that another client set with
        -- a longer period.
        if redis.call("PTTL", guard) < PERIOD then
            redis.call("SET", guard, run_id, "PX", PERIOD)
        end
        redis.call("SET", marker, run_id)
    end
    local left = redis.call("PTTL", guard)
    if left == -1 then
        -- A guard without expiry (set or PERSISTed by hand) would keep the node out
        -- for good: give it the period.
        redis.call("PEXPIRE", guard, PERIOD)
        left = PERIOD
    end
    quarantine_left = math.max(left, 0)
    return quarantine_left
end

-- Fails an acquisition while the node sits out of them (never with the quarantine off).
local function refuse_if_quarantined()
    if PERIOD >= 0 then
        local left = quarantine()
        if left > 0 then
            error({err = string.format("QUARANTINED %d", left)})
        end
    end
end

-- The node's clock in milliseconds, read once per batch: the expiry of a reader or of
-- a writer's claim is a score on this clock (Redis freezes its own clock for a script
-- too, so every operation of a batch sees one instant).
local function now()
    if not now_ms then
        local t = redis.call("TIME")
        now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    return now_ms
end

-- A read-locked resource's key is a sorted set of its readers' tokens, each scored by
-- its expiry on the node's clock; a writer that found readers adds WRITER, scored by
-- the end of its claim, which keeps new readers out until the readers have left and
-- the writer has come back (docs/design.md). The key expires with its last member.
-- OWN, scored -inf, marks the set as fredlock's: a sorted set without it is another
-- application's key, which no operation changes.
local WRITER = "#writer"
local OWN = "#fredlock"

-- Whether `key`, a sorted set, is fredlock's (read-only).
local function own_set(key)
    return redis.call("ZSCORE", key, OWN) == "-inf"
end

-- Sets the key's expiry to its latest member's, or deletes it when none is left alive
-- (OWN alone is nobody).
local function settle(key)
    local last = redis.call("ZREVRANGE", key, 0, 0, "WITHSCORES")
    if #last == 0 then
        return
    end
    if last[1] == OWN or tonumber(last[2]) <= now() then
        redis.call("DEL", key)
    else
        redis.call("PEXPIREAT", key, string.format("%d", tonumber(last[2])))
    end
end

-- What a writer finds in a key that exists, reading only: "free" (fredlock's set with
-- no live reader in it: expired readers, a claim), "readers" (live readers) or "taken"
-- (a writer's key, or a key fredlock did not write).
local function writer_finds(key)
    if redis.call("TYPE", key).ok ~= "zset" or not own_set(key) then
        return "taken"
    end
    local alive = redis.call("ZCOUNT", key, string.format("(%d", now()), "+inf")
    local claimed = redis.call("ZSCORE", key, WRITER)
    if claimed and tonumber(claimed) > now() then
        alive = alive - 1
    end
    return alive > 0 and "readers" or "free"
end

-- A writer that will try again claims a key that readers hold, until `claim` ms from
-- now (0: no claim).
local function claim_key(key, claim)
    if tonumber(claim) > 0 then
        redis.call("ZADD", key, "GT", now() + tonumber(claim), WRITER)
        settle(key)
    end
end

-- One key, the healthy path in one call: SET NX is the check and the write of the
-- lock. Refused by live readers, a writer that will try again claims the key
-- (returns 2).
local function acquire_one(key, token, ttl, claim)
    if not redis.call("SET", key, token, "NX", "PX", ttl) then
        local found = writer_finds(key)
        if found == "readers" and tonumber(claim) > 0 then
            claim_key(key, claim)
            return 2
        elseif found ~= "free" then
            return 0
        end
        -- A set of expired readers or a claim: replaced by the writer's key.
        redis.call("SET", key, token, "PX", ttl)
    end
    return 1
end

-- lock: all-or-nothing SET NX PX of the n lock keys. No fencing counter is touched:
-- a holder that asks for a fencing token raises them afterwards (fence).
-- keys = the n lock keys. args = token, TTL ms, and how long to claim a key that
-- readers hold (0: no claim).
-- Returns 1 if set, 2 if a lock key is taken and keys that readers hold were claimed
-- (nothing else set), or 0 if a lock key is taken (nothing set).
local function lock(k, nk, a)
    refuse_if_quarantined()
    local token, ttl, claim = argv[a + 1], argv[a + 2], argv[a + 3]
    if nk == 1 then
        return acquire_one(keys[k + 1], token, ttl, claim)
    end
    -- Several keys: every key checked before anything is written.
    local blocked, readers = false, {}
    for i = 1, nk do
        if redis.call("EXISTS", keys[k + i]) == 1 then
            local found = writer_finds(keys[k + i])
            blocked = blocked or found ~= "free"
            if found == "readers" then
                readers[#readers + 1] = keys[k + i]
            end
        end
    end
    if blocked then
        if #readers == 0 or tonumber(claim) == 0 then
            return 0
        end
        for _, key in ipairs(readers) do
            claim_key(key, claim)
        end
        return 2
    end
    for i = 1, nk do
        redis.call("SET", keys[k + i], token, "PX", ttl)
    end
    return 1
end

-- read: the token joins the key's readers unless a writer holds the key or has
-- claimed it. keys = the lock key. args = token, TTL ms. Returns 1, or 0 if a writer
-- holds or claims the key, or the key is not fredlock's (nothing set).
local function read(k, nk, a)
    refuse_if_quarantined()
    local key = keys[k + 1]
    local kind = redis.call("TYPE", key).ok
    if kind == "zset" and own_set(key) then
        -- Expired readers and an expired claim leave; OWN (at -inf) stays.
        redis.call("ZREMRANGEBYSCORE", key, "(-inf", now())
        if redis.call("ZSCORE", key, WRITER) then
            return 0
        end
    elseif kind ~= "none" then
        -- A writer's key, or one fredlock did not write.
        return 0
    end
    local token, ttl = argv[a + 1], argv[a + 2]
    redis.call("ZADD", key, "-inf", OWN, now() + tonumber(ttl), token)
    settle(key)
    return 1
end

-- permit: the first free slot of a semaphore, in the order given, is set to the token,
-- as a lock key; the semaphore's record holds its number of permits and lives at least
-- as long as every slot, so that a client configured with another number is refused
-- while a permit may be held. keys = the m slot keys, the record. args = token, TTL
-- ms, the number of permits.
-- Returns {the slot's position from 1}, or 0 if every slot is taken.
local function permit(k, nk, a)
    refuse_if_quarantined()
    local m = nk - 1
    local record, permits = keys[k + m + 1], argv[a + 3]
    local held = redis.call("GET", record)
    if held and held ~= permits then
        error({err = "PERMITS " .. held})
    end
    local token, ttl = argv[a + 1], argv[a + 2]
    for i = 1, m do
        if redis.call("SET", keys[k + i], token, "NX", "PX", ttl) then
            if redis.call("PTTL", record) < tonumber(ttl) then
                redis.call("SET", record, permits, "PX", ttl)
            end
            return {i}
        end
    end
    return 0
end

-- How the token holds a key: "string" (a lock or permit), "zset" (a live reader), or
-- nil when it does not. A key of another type fails the operation (WRONGTYPE).
local function held_as(key, token)
    local value = redis.pcall("GET", key)
    if type(value) ~= "table" then
        return value == token and "string" or nil
    end
    local score = redis.pcall("ZSCORE", key, token)
    if type(score) == "table" then
        error(score)
    end
    if score and tonumber(score) > now() then
        return "zset"
    end
    return nil
end

-- How each of the n lock keys from keys[k + 1] holds the token (see held_as), or nil
-- if one does not.
local function ours(k, n, token)
    local kinds = {}
    for i = 1, n do
        kinds[i] = held_as(keys[k + i], token)
        if not kinds[i] then
            return nil
        end
    end
    return kinds
end

-- Fencing counters, one per resource, touched only for a holder that asks for its
-- fencing token. 2^53 - 1 is the largest integer a double holds with its successor.
local MAX_COUNTER = 9007199254740991

-- A counter's life: `keep` ms (an extension's TTL plus retention), or what it has left
-- if longer, so that a holder with a short TTL does not cut the counter of another that
-- shares it (readers, permits) or of an earlier holder's longer retention.
local function longer_life(counter, keep)
    return math.max(tonumber(keep), redis.call("PTTL", counter))
end

-- A counter's life when it is raised: `retention` ms beyond its lock key's own life on
-- this node (whatever TTL set it), or what it has left if longer.
local function beyond_key(key, counter, retention)
    return longer_life(counter, redis.call("PTTL", key) + tonumber(retention))
end

-- The counters' values, each read and checked (a number below MAX_COUNTER, or none);
-- raises the error of the first that is not, so that nothing is written.
local function counters(k, n)
    local values = {}
    for i = 1, n do
        local value = redis.pcall("GET", keys[k + i])
        if type(value) == "table" then
            error(value)
        end
        local current = tonumber(value or "0")
        if not current then
            error({err = string.format("ERR fredlock: fencing counter %d is not a number", i)})
        elseif current >= MAX_COUNTER then
            error({err = string.format("FENCE_EXHAUSTED %d", i)})
        end
        values[i] = current
    end
    return values
end

-- extend: compare-and-pexpire. keys = the n lock keys, their n fencing counters when
-- the lock has fencing tokens, then for a permit the semaphore's record. args = token,
-- TTL ms, the counters' life ms (TTL plus retention; "" without counters), "permit"
-- for a permit (the last key is then the record) or "". Returns 1 if renewed, 0 if
-- not ours (nothing changed).
local function extend(k, nk, a)
    local token, ttl, keep = argv[a + 1], argv[a + 2], argv[a + 3]
    local record = argv[a + 4] == "permit" and keys[k + nk]
    local n = record and nk - 1 or nk
    if keep ~= "" then
        n = n / 2
    end
    local kinds = ours(k, n, token)
    if not kinds then
        return 0
    end
    for i = 1, n do
        local key = keys[k + i]
        if kinds[i] == "zset" then
            redis.call("ZADD", key, "XX", now() + tonumber(ttl), token)
            settle(key)
        else
            redis.call("PEXPIRE", key, ttl)
        end
        -- A counter lost meanwhile stays lost: PEXPIRE does not create it.
        if keep ~= "" then
            local counter = keys[k + n + i]
            redis.call("PEXPIRE", counter, longer_life(counter, keep))
        end
    end
    if record and redis.call("PTTL", record) < tonumber(ttl) then
        redis.call("PEXPIRE", record, ttl)
    end
    return 1
end

-- fence: while the n lock keys hold the token, raise each counter to
-- max(counter + 1, floor), the floor the client proposes (its clock in microseconds):
-- nodes that saw the same holders return the same value, and a counter that was lost
-- or expired comes back at the floor (docs/fencing.md). keys = the n lock keys, then
-- their n counters. args = token, fencing floor, retention ms (how long a counter
-- outlives its key). Returns the n raised counters, or 0 if a key is not ours (nothing
-- changed).
local function fence(k, nk, a)
    local n = nk / 2
    local token, floor, keep = argv[a + 1], argv[a + 2], argv[a + 3]
    if not ours(k, n, token) then
        return 0
    end
    local values = counters(k + n, n)
    local low = tonumber(floor)
    for i = 1, n do
        local counter = keys[k + n + i]
        local life = beyond_key(keys[k + i], counter, keep)
        if values[i] < low then
            -- The usual case (the floor is the client's clock): the argument goes as is.
            values[i] = low
            redis.call("SET", counter, floor, "PX", life)
        else
            values[i] = values[i] + 1
            redis.call("SET", counter, string.format("%d", values[i]), "PX", life)
        end
    end
    return values
end

-- catch_up: the write-back; while the lock keys hold the token, raise each counter to
-- at least the token handed out. keys = the n lock keys, then their n counters. args =
-- token, retention ms, then the n fencing tokens. Returns 1 if the keys are ours
-- (counters raised), 0 otherwise (nothing changed).
local function catch_up(k, nk, a)
    local n = nk / 2
    if not ours(k, n, argv[a + 1]) then
        return 0
    end
    local values = counters(k + n, n)
    for i = 1, n do
        local counter, token = keys[k + n + i], argv[a + 2 + i]
        if values[i] < tonumber(token) then
            redis.call("SET", counter, token, "PX", beyond_key(keys[k + i], counter, argv[a + 2]))
        end
    end
    return 1
end

-- Compare-and-delete of each of the first `slots` keys from keys[k + 1] that holds the
-- token (a reader's token leaves the set, expired or not). With `channel`, each
-- deletion is announced on channel .. (name or the key) with the token, which wakes
-- the clients waiting for it. With `claim` > 0, a writer whose attempt failed and that
-- will try again leaves its claim where it deletes its key, so that readers cannot
-- take the nodes it had while it waits for those that readers hold (docs/design.md
-- 1.16). With `permits`, keys[k + slots + 1] is the semaphore's record, deleted when it
-- holds that number and none of its slots is left, so a failed attempt leaves no record
-- behind. Returns 1 if every key held the token, 0 otherwise (those that did were
-- deleted anyway).
local function delete(k, slots, token, channel, name, claim, permits)
    local all = 1
    for i = 1, slots do
        local key = keys[k + i]
        local held = held_as(key, token)
        if held == "string" then
            redis.call("DEL", key)
            if claim > 0 then
                redis.call("ZADD", key, "-inf", OWN, now() + claim, WRITER)
                settle(key)
            end
        elseif redis.pcall("ZREM", key, token) == 1 then
            -- An expired reader is removed too, but was not holding the key.
            settle(key)
            held = held or "expired"
        end
        if held ~= "zset" and held ~= "string" then
            all = 0
        end
        if held and channel then
            redis.call("PUBLISH", channel .. (name or key), token)
        end
    end
    if permits and redis.call("GET", keys[k + slots + 1]) == permits then
        for i = 1, slots do
            if redis.call("EXISTS", keys[k + i]) == 1 then
                return all
            end
        end
        redis.call("DEL", keys[k + slots + 1])
    end
    return all
end

-- release: the holder's compare-and-delete, announced. keys = the n lock keys. args =
-- token, the channel prefix, the name to announce ("" for each key's own: a permit is
-- announced on its semaphore's name, whichever slot it frees).
local function release(k, nk, a)
    local name = argv[a + 3] ~= "" and argv[a + 3]
    return delete(k, nk, argv[a + 1], argv[a + 2], name, 0, nil)
end

-- remove: the compare-and-delete of a failed or cancelled attempt's token, not
-- announced (nobody held the lock). keys = the n keys asked for, then for a permit the
-- semaphore's record. args = token, the writer's claim in ms (0: none), the number of
-- permits ("" when not a permit).
local function remove(k, nk, a)
    local permits = argv[a + 3] ~= "" and argv[a + 3]
    local slots = permits and nk - 1 or nk
    return delete(k, slots, argv[a + 1], nil, nil, tonumber(argv[a + 2]), permits)
end

local operations = {
    lock = lock, read = read, permit = permit, extend = extend, fence = fence,
    catch_up = catch_up, release = release, remove = remove,
}

-- One call: runs the batch of operations in keys and argv (see the top) and returns
-- their results. Everything read per call is reset here, as a function library keeps
-- its locals from one call to the next.
local function batch(call_keys, call_args)
    keys, argv = call_keys, call_args
    PERIOD = tonumber(argv[2])
    quarantine_left, now_ms = nil, nil
    local m = tonumber(argv[1])
    local k, a = PERIOD >= 0 and 2 or 0, 2 + 3 * m
    local results = {}
    for i = 1, m do
        local name = argv[3 * i]
        local nk, na = tonumber(argv[3 * i + 1]), tonumber(argv[3 * i + 2])
        local run = operations[name]
        if not run then
            results[i] = "!ERR fredlock: unknown operation " .. tostring(name)
        else
            local ok, reply = pcall(run, k, nk, a)
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
    keys, argv = nil, nil
    return results
end
