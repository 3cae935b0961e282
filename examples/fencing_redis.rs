//! Fencing at the resource: a value in Redis that refuses a stale lock holder.
//!
//! The protected value lives on a Redis of its own (not one of the lock's masters), in
//! a hash that keeps the highest fencing token accepted next to the value. Every write
//! is one Lua script (`EVAL`), which Redis runs without interleaving any other command:
//! it compares the writer's token with the stored one, refuses a lower one, and
//! otherwise stores the value and the token together.
//!
//! Holder A takes the lock on a throwaway 3-node Redis cluster (Docker), writes, stalls
//! past its validity; holder B takes the lock and writes; A's late write is refused by
//! the script. A fourth container is the resource's Redis.
//!
//! ```sh
//! FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh | tail -n 1) cargo run --example fencing_redis
//! ```

use std::time::Duration;

use fredlock::Redlock;
use fredlock::fred::prelude::{Client, ClientLike, Config, LuaInterface};
use fredlock_testcluster::Cluster;

/// KEYS[1]: the resource's hash. ARGV[1]: the writer's fencing token, ARGV[2]: the
/// value. Returns 1 if written, 0 if refused (a higher token was accepted before; an
/// equal one is the same holder writing again). Lua numbers are doubles, exact up to
/// 2^53, the bound fredlock keeps its tokens under.
const FENCED_WRITE: &str = r"
local highest = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
local token = tonumber(ARGV[1])
if token == nil then
    return redis.error_reply('the fencing token is not a number')
end
if token < highest then
    return 0
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return 1
";

/// KEYS[1]: the resource's hash. Returns `{value, fence}`.
const READ: &str = "return redis.call('HMGET', KEYS[1], 'value', 'fence')";

const KEY: &str = "ledger";

async fn write(
    resource: &Client,
    token: u64,
    value: &str,
) -> Result<bool, Box<dyn std::error::Error>> {
    let written: i64 = resource
        .eval(
            FENCED_WRITE,
            KEY,
            vec![token.to_string(), value.to_string()],
        )
        .await?;
    Ok(written == 1)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (cluster, store) = tokio::try_join!(Cluster::start(3), Cluster::start(1))?;
    let resource = Client::new(Config::from_url(&store.url(0))?, None, None, None);
    resource.init().await?;
    println!("0. the lock's masters: {:?}", cluster.urls());
    println!("   the resource's Redis: {}", store.url(0));

    let client = || {
        Redlock::builder(cluster.urls())
            .acquire_timeout(Duration::from_secs(5))
            .build()
    };
    let (first, second) = (client().await?, client().await?);
    // A new deployment: no lock can be held yet (docs/safety.md).
    first.lift_restart_quarantine().await;

    let stale = first.lock(KEY, Duration::from_millis(500)).await?;
    let a = stale.fencing_token().await?;
    println!("1. holder A has the lock, token {a}");
    for value in ["A's first write", "A's second write"] {
        if !write(&resource, a, value).await? {
            return Err(format!("A's write {value:?} with the current token was refused").into());
        }
    }
    println!("   A writes twice with its token: the script returns 1 each time, accepted");

    println!("2. A stalls for 1 s, past its validity...");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fresh = second.lock(KEY, Duration::from_secs(10)).await?;
    let b = fresh.fencing_token().await?;
    println!("3. holder B has the lock, token {b}");
    if !write(&resource, b, "B's write").await? {
        return Err("B's write was refused".into());
    }
    println!("   B writes: 1, accepted");

    println!(
        "4. A wakes up (its lock valid: {}) and writes",
        stale.is_valid()
    );
    if write(&resource, a, "A's stale write").await? {
        return Err("the stale write was accepted".into());
    }
    println!("   the script returns 0: refused, the stored fence is above A's token {a}");

    let (value, fence): (String, u64) = resource.eval(READ, KEY, Vec::<String>::new()).await?;
    println!("5. the resource holds {value:?}, fence {fence}");

    fresh.release().await?;
    if let Err(e) = stale.release().await {
        println!("6. A's release says: {e}");
    }
    resource.quit().await?;
    Ok(())
}
