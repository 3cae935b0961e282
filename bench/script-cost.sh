#!/usr/bin/env bash
# What fredlock's batch costs a node, as a function library (FCALL) and as a script
# (EVALSHA): Redis's own time per call (`INFO commandstats`, usec_per_call), on a
# throwaway redis-server on 127.0.0.1, for a lone operation and for batches of 10,
# against the floor's SET NX PX and DEL. Needs
# redis-server and redis-cli (Debian's redis-server package). Optionally a git
# revision whose acquire.lua and release.lua (the scripts before the batch script)
# are measured too:  bench/script-cost.sh [REV]
set -euo pipefail
cd "$(dirname "$0")/.."
port=${FREDLOCK_COST_PORT:-7987}
calls=${FREDLOCK_COST_CALLS:-3000}
redis-server --port "$port" --save '' --appendonly no --daemonize yes >/dev/null
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
cli() { redis-cli -p "$port" "$@"; }

# Runs `calls` commands made by the function named $2 (given the call number) and
# prints Redis's microseconds per call of command $1.
measure() {
    local command=$1 make=$2
    cli flushall >/dev/null
    cli set fredlock:incarnation "$(cli info server | sed -n 's/^run_id:\([0-9a-f]*\).*/\1/p')" >/dev/null
    # Made first, then sent back to back: Redis sees a steady stream, not one call
    # every few milliseconds (which reads slower, from cold caches).
    local file
    file=$(mktemp)
    for i in $(seq "$calls"); do "$make" "$i"; done >"$file"
    cli config resetstat >/dev/null
    cli <"$file" >/dev/null
    rm -f "$file"
    cli info commandstats | tr -d '\r' |
        sed -n "s/^cmdstat_${command}:.*usec_per_call=\([0-9.]*\).*/\1/p"
}

# The batch as fredlock sends it: the function library (FCALL, where the server has
# functions) and the script (EVALSHA, else), both made of src/scripts/ops.lua as
# src/scripts.rs makes them.
lua=$(cat src/scripts/ops.lua)
cli function load replace "#!lua name=fredlock_cost
$lua
redis.register_function('fredlock_cost', batch)" >/dev/null
sha=$(cli script load "$lua
return batch(KEYS, ARGV)")
# The command each operation below is sent with: FCALL or EVALSHA.
call=
q="fredlock:incarnation fredlock:quarantine"
acquire_off() { echo "$call 1 k$1 1 -1 lock 1 3 tok 10000 0"; }
acquire_on() { echo "$call 3 $q k$1 1 60000 lock 1 3 tok 10000 0"; }
# A held lock's first fencing_token(): the counter lives the TTL (10 s) plus the
# default retention (60 s).
fence() { echo "$call 2 k$1 fredlock:fence:k$1 1 -1 fence 2 3 tok 100 70000"; }
acquire_fence() {
    acquire_on "$1"
    fence "$1"
}
release() { echo "$call 1 k$1 1 -1 release 1 3 tok fredlock:released: \"\""; }
acquire_release() {
    acquire_on "$1"
    release "$1"
}
batch() {
    local keys="" heads="" args=""
    for j in $(seq 10); do
        keys="$keys k$1-$j"; heads="$heads lock 1 3"; args="$args tok 10000 0"
    done
    echo "$call 12 $q $keys 10 60000 $heads $args"
}
release_batch() {
    local keys="" heads="" args=""
    for j in $(seq 10); do
        keys="$keys k$1-$j"; heads="$heads release 1 3"; args="$args tok fredlock:released: \"\""
    done
    echo "$call 10 $keys 10 -1 $heads $args"
}
set_nx() { echo "SET k$1 tok NX PX 10000"; }
set_del() { echo "SET k$1 tok NX PX 10000"; echo "DEL k$1"; }

printf '%-62s %10s\n' "call (Redis 7: $(cli info server | tr -d '\r' | sed -n 's/^redis_version://p'))" "µs/call"
for via in fcall evalsha; do
    case $via in
        fcall) call="FCALL fredlock_cost" ;;
        evalsha) call="EVALSHA $sha" ;;
    esac
    printf '%-62s %10s\n' "$via: one acquisition, quarantine off" "$(measure $via acquire_off)"
    printf '%-62s %10s\n' "$via: one acquisition, quarantine on" "$(measure $via acquire_on)"
    printf '%-62s %10s\n' "$via: acquisition then release, one call each (mean)" "$(measure $via acquire_release)"
    printf '%-62s %10s\n' "$via: 10 acquisitions in one call, quarantine on" "$(measure $via batch)"
    printf '%-62s %10s\n' "$via: acquisition then its fence, one call each (mean)" "$(measure $via acquire_fence)"
    printf '%-62s %10s\n' "$via: one release (key absent)" "$(measure $via release)"
    printf '%-62s %10s\n' "$via: 10 releases in one call (keys absent)" "$(measure $via release_batch)"
done
printf '%-62s %10s\n' "floor: SET NX PX" "$(measure set set_nx)"
printf '%-62s %10s\n' "floor: DEL (after SET NX PX)" "$(measure del set_del)"
if [ -n "${1:-}" ]; then
    old=$(cli script load "$(git show "$1:src/scripts/acquire.lua")")
    rel=$(cli script load "$(git show "$1:src/scripts/release.lua")")
    old_acquire() { echo "EVALSHA $old 4 k$1 fredlock:fence:k$1 $q tok 10000 1 60000 100 600000"; }
    old_pair() { old_acquire "$1"; echo "EVALSHA $rel 1 k$1 tok fredlock:released:"; }
    printf '%-62s %10s\n' "$1 acquire.lua: one acquisition, quarantine on" "$(measure evalsha old_acquire)"
    printf '%-62s %10s\n' "$1 acquire.lua + release.lua (mean)" "$(measure evalsha old_pair)"
fi
