//! Fencing tokens against a stale holder, on a throwaway 3-node Redis cluster.
//!
//! A holder takes the lock, then stalls past its validity (a GC pause, a stalled VM).
//! Meanwhile a second holder takes the lock and writes to the protected resource. When
//! the first holder wakes up and writes, the resource rejects it: its fencing token is
//! lower than the highest the resource has seen.
//!
//! ```sh
//! FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh) cargo run --example fencing
//! ```

use std::sync::Mutex;
use std::time::Duration;

use fredlock::Redlock;
use fredlock_testcluster::Cluster;

/// The protected resource: it remembers the highest fencing token it has accepted and
/// refuses any write that carries a lower one. An equal token is the same holder
/// writing again, which is accepted.
#[derive(Default)]
struct Storage {
    highest_token: Mutex<u64>,
    value: Mutex<String>,
}

impl Storage {
    fn write(&self, token: u64, value: &str) -> Result<(), String> {
        let mut highest = self.highest_token.lock().map_err(|e| e.to_string())?;
        if token < *highest {
            return Err(format!("rejected: token {token} is below {}", *highest));
        }
        *highest = token;
        *self.value.lock().map_err(|e| e.to_string())? = value.to_string();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::start(3).await?;
    let client = || {
        Redlock::builder(cluster.urls())
            .acquire_timeout(Duration::from_secs(5))
            .build()
    };
    let (first, second) = (client().await?, client().await?);
    // A new deployment: no lock can be held yet, so the operator lifts the restart
    // quarantine instead of waiting out its period (docs/safety.md).
    first.lift_restart_quarantine().await;
    let storage = Storage::default();

    let stale = first.lock("ledger", Duration::from_millis(500)).await?;
    // The first request makes the token (one more round trip); later ones return it.
    let a = stale.fencing_token().await?;
    println!(
        "1. holder A has the lock, token {a}, valid for {:?}",
        stale.remaining()
    );
    storage.write(a, "written by A")?;
    storage.write(a, "written by A again")?;
    println!("   A writes twice with its token: both accepted");

    println!("2. A stalls for 1 s, past its validity...");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fresh = second.lock("ledger", Duration::from_secs(10)).await?;
    let b = fresh.fencing_token().await?;
    println!("3. holder B has the lock, token {b}");
    storage.write(b, "written by B")?;
    println!("   B writes: accepted");

    println!(
        "4. A wakes up; its lock has {:?} left (valid: {})",
        stale.remaining(),
        stale.is_valid()
    );
    match storage.write(a, "written by A, stale") {
        Ok(()) => return Err("the stale write was accepted".into()),
        Err(reason) => println!("   A writes: {reason}"),
    }
    println!(
        "5. the resource holds {:?}",
        storage.value.lock().map_err(|e| e.to_string())?
    );

    fresh.release().await?;
    if let Err(e) = stale.release().await {
        println!("6. A's release says: {e}");
    }
    Ok(())
}
