//! A tour of fredlock against a throwaway 5-node Redis cluster in Docker.
//!
//! Step by step, with timings: acquire a lock (validity, token); a second client is
//! refused with `Error::Taken`; extend; release; with 2 of 5 nodes killed a lock is still
//! granted; with 3 of 5 unavailable `try_lock` fails with `Error::NoQuorum` (its message
//! carries every node's vote) after about one node timeout; once the nodes are back,
//! a lock is again taken on all 5 nodes (checked by reading the key on each node).
//!
//! Needs a Docker engine, no registry:
//!
//! ```sh
//! FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh) cargo run --example demo
//! ```
//!
//! The containers are removed when the `Cluster` is dropped at the end.

use std::time::{Duration, Instant};

use fredlock::fred::prelude::{Client, ClientLike, Config, KeysInterface};
use fredlock::{Error, Lock, Quarantine, Redlock};
use fredlock_testcluster::Cluster;

const RESOURCE: &str = "demo-resource";
const TTL: Duration = Duration::from_secs(10);
const NODE_TIMEOUT: Duration = Duration::from_millis(50);
/// How long step 8 waits for all 5 nodes to take part again.
const RECOVERY: Duration = Duration::from_secs(5);

async fn connect(urls: &[String]) -> Result<Redlock, Error> {
    // The demo restarts nodes and uses them again at once, so it runs without the
    // restart quarantine, which would keep each restarted node out for its period
    // (60 s); docs/safety.md says when that is safe and what the quarantine costs.
    let builder = Redlock::builder(urls.iter().cloned()).restart_quarantine(Quarantine::Off);
    builder.node_timeout(NODE_TIMEOUT).build().await
}

/// The nodes whose key does not hold `lock`'s token, and what they hold instead.
async fn not_holding(probes: &[Client], lock: &Lock) -> Vec<String> {
    let mut others = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        let read = tokio::time::timeout(NODE_TIMEOUT, probe.get(lock.key())).await;
        match read {
            Ok(Ok(Some::<String>(token))) if token == lock.token() => {}
            Ok(Ok(Some(token))) => {
                let pttl: i64 = probe.pttl(lock.key()).await.unwrap_or(-3);
                others.push(format!("node {i} holds token {token} (pttl {pttl} ms)"));
            }
            Ok(Ok(None)) => others.push(format!("node {i} has no key")),
            Ok(Err(e)) => others.push(format!("node {i}: {e}")),
            Err(_) => others.push(format!("node {i}: timeout")),
        }
    }
    others
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let cluster = Cluster::start(5).await?;
    let urls = cluster.urls();
    let redlock = connect(&urls).await?;
    let nodes: Vec<&str> = redlock.nodes().collect();
    println!("1. cluster started in {:?}: {nodes:?}", t.elapsed());
    println!("   quorum {} of {}", redlock.quorum(), nodes.len());

    let t = Instant::now();
    let mut lock = redlock.lock(RESOURCE, TTL).await?;
    println!("2. locked `{RESOURCE}` (TTL {TTL:?}) in {:?}", t.elapsed());
    let (remaining, token) = (lock.remaining(), lock.token());
    println!("   remaining {remaining:?}, token {token}");

    // A second client, with its own connections, competes for the same resource.
    let other = connect(&urls).await?;
    let t = Instant::now();
    match other.try_lock(RESOURCE, TTL).await {
        Err(Error::Taken { votes, .. }) => {
            println!("3. second client: Error::Taken after {:?}", t.elapsed());
            println!("   votes: {votes}");
        }
        Err(e) => return Err(format!("3. expected Error::Taken, got: {e}").into()),
        Ok(_) => return Err("3. the second client got a lock that is held".into()),
    }
    other.quit().await;

    let t = Instant::now();
    lock.extend(Duration::from_secs(20)).await?;
    let (dt, remaining) = (t.elapsed(), lock.remaining());
    println!("4. extended to 20 s in {dt:?}: remaining {remaining:?}");

    let t = Instant::now();
    lock.release().await?;
    println!("5. released in {:?}", t.elapsed());

    cluster.kill(0).await?;
    cluster.kill(1).await?;
    let t = Instant::now();
    let lock = redlock.lock(RESOURCE, TTL).await?;
    let dt = t.elapsed();
    println!("6. killed nodes 0 and 1; lock still acquired in {dt:?}");
    let (remaining, token) = (lock.remaining(), lock.token());
    println!("   remaining {remaining:?}, token {token}");
    lock.release().await?;
    println!("   released");

    cluster.pause(2).await?;
    println!("7. paused node 2: 3 of 5 nodes unavailable");
    let t = Instant::now();
    match redlock.try_lock(RESOURCE, TTL).await {
        Err(e @ Error::NoQuorum { .. }) => {
            let dt = t.elapsed();
            println!("   try_lock: Error::NoQuorum after {dt:?} (node timeout {NODE_TIMEOUT:?})");
            println!("   {e}");
        }
        Err(e) => return Err(format!("7. expected Error::NoQuorum, got: {e}").into()),
        Ok(_) => return Err("7. got a lock with 3 of 5 nodes unavailable".into()),
    }

    let t = Instant::now();
    cluster.unpause(2).await?;
    cluster.restart(0).await?;
    cluster.restart(1).await?;
    let dt = t.elapsed();
    println!("8. unpaused node 2, restarted nodes 0 and 1 (empty) in {dt:?}");
    // A Lock does not expose votes, and a round returns once 3 nodes agreed: read the
    // key on every node with separate fred clients to see that all 5 hold our token.
    let mut probes = Vec::new();
    for url in &urls {
        let probe = Client::new(Config::from_url(url)?, None, None, None);
        probe.init().await?;
        probes.push(probe);
    }
    let t = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let missing = match redlock.try_lock(RESOURCE, TTL).await {
            Ok(lock) => {
                // Requests to nodes not needed for the quorum land within the timeout.
                tokio::time::sleep(NODE_TIMEOUT).await;
                let missing = not_holding(&probes, &lock).await;
                lock.release().await?;
                missing
            }
            Err(e) if e.is_retryable() => vec![e.to_string()],
            Err(e) => return Err(e.into()),
        };
        let dt = t.elapsed();
        if missing.is_empty() {
            println!("   all 5 nodes held the lock after {dt:?} ({attempts} attempts); released");
            break;
        }
        if dt >= RECOVERY {
            let missing = missing.join("; ");
            let msg =
                format!("8. not on all 5 nodes after {dt:?} ({attempts} attempts): {missing}");
            return Err(msg.into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for probe in &probes {
        probe.quit().await?;
    }

    redlock.quit().await;
    println!("9. done");
    Ok(())
}
