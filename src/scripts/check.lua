-- Permission check at build(): runs every command the lock scripts use, on a probe key
-- in fredlock's namespace, and reports the first one the node refuses.
-- KEYS = the probe key. ARGV[1] = the release channel prefix, ARGV[2] = "1" when the
-- restart quarantine is on (the scripts then read INFO server).
-- Returns {} when every command ran, else {command, error}.
local probe = KEYS[1]
local calls = {
    {"SET", probe, "probe", "PX", "1000"},
    {"EXISTS", probe},
    {"GET", probe},
    {"PTTL", probe},
    {"PEXPIRE", probe, "1000"},
    {"DEL", probe},
    {"PUBLISH", ARGV[1] .. probe, "probe"},
}
if ARGV[2] == "1" then
    table.insert(calls, {"INFO", "server"})
end
for _, call in ipairs(calls) do
    local reply = redis.pcall(unpack(call))
    if type(reply) == "table" and reply.err then
        return {call[1], reply.err}
    end
end
return {}
