//! Fencing at the resource: a PostgreSQL row that refuses a stale lock holder.
//!
//! The row keeps the highest fencing token it has accepted in a `fence` column, and
//! every write is one guarded statement:
//!
//! ```sql
//! UPDATE fencing_example SET value = $1, fence = $2 WHERE id = $3 AND fence <= $2
//! ```
//!
//! One row affected: accepted. None: refused, a newer holder has written. PostgreSQL
//! evaluates the `WHERE` on the newest version of the row under its row lock, so two
//! concurrent writers cannot both pass the check against the same old fence.
//!
//! Holder A takes the lock on a throwaway 3-node Redis cluster (Docker), writes, stalls
//! past its validity; holder B takes the lock and writes; A's late write touches no row.
//!
//! It needs a PostgreSQL server; `fencing_example` is a temporary table of the example's
//! session, so nothing is left there and no table of yours is touched. A throwaway server on 127.0.0.1:54329, trusting every local
//! connection, as root on Debian (`apt-get install -y postgresql`):
//!
//! ```sh
//! bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
//! dir=$(mktemp -d) && chown postgres "$dir"
//! runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres --auth=trust
//! runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start \
//!     -o "-c listen_addresses=127.0.0.1 -p 54329 -k $dir"
//! FREDLOCK_POSTGRES_URL="host=127.0.0.1 port=54329 user=postgres dbname=postgres" \
//! FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh | tail -n 1) \
//!     cargo run --example fencing_postgres
//! runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast stop && rm -rf "$dir"
//! ```
//!
//! `FREDLOCK_POSTGRES_URL` is a tokio-postgres connection string (key=value or a
//! `postgresql://` URL); the connection is plain TCP, without TLS.

use std::time::Duration;

use fredlock::Redlock;
use fredlock_testcluster::Cluster;
use tokio_postgres::{Client, NoTls};

const URL_ENV: &str = "FREDLOCK_POSTGRES_URL";
const ROW: &str = "ledger";

/// The guarded write: refused (0 rows) when the row has accepted a higher token. An
/// equal token is the same holder writing again.
async fn write(db: &Client, token: u64, value: &str) -> Result<bool, Box<dyn std::error::Error>> {
    // BIGINT is signed; fredlock's tokens stay below 2^53.
    let fence = i64::try_from(token)?;
    let rows = db
        .execute(
            "UPDATE fencing_example SET value = $1, fence = $2 WHERE id = $3 AND fence <= $2",
            &[&value, &fence, &ROW],
        )
        .await?;
    Ok(rows == 1)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var(URL_ENV).map_err(|_| {
        format!("set {URL_ENV} to a PostgreSQL connection string (see this example's doc comment)")
    })?;
    let (db, connection) = tokio_postgres::connect(&url, NoTls).await?;
    let connection = tokio::spawn(connection);

    // The row exists before any holder writes: the guarded UPDATE cannot tell a
    // missing row from a refusal.
    db.batch_execute(
        "CREATE TEMPORARY TABLE fencing_example (
             id    TEXT PRIMARY KEY,
             value TEXT NOT NULL,
             fence BIGINT NOT NULL
         );
         INSERT INTO fencing_example VALUES ('ledger', '', 0);",
    )
    .await?;
    println!("0. temporary table fencing_example: row {ROW:?} with fence 0");

    let cluster = Cluster::start(3).await?;
    let client = || {
        Redlock::builder(cluster.urls())
            .acquire_timeout(Duration::from_secs(5))
            .build()
    };
    let (first, second) = (client().await?, client().await?);
    // A new deployment: no lock can be held yet (docs/safety.md).
    first.lift_restart_quarantine().await;

    let stale = first.lock(ROW, Duration::from_millis(500)).await?;
    let a = stale.fencing_token().await?;
    println!("1. holder A has the lock, token {a}");
    for value in ["A's first write", "A's second write"] {
        if !write(&db, a, value).await? {
            return Err(format!("A's write {value:?} with the current token was refused").into());
        }
    }
    println!("   A writes twice with its token: 1 row each, accepted");

    println!("2. A stalls for 1 s, past its validity...");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fresh = second.lock(ROW, Duration::from_secs(10)).await?;
    let b = fresh.fencing_token().await?;
    println!("3. holder B has the lock, token {b}");
    if !write(&db, b, "B's write").await? {
        return Err("B's write was refused".into());
    }
    println!("   B writes: 1 row, accepted");

    println!(
        "4. A wakes up (its lock valid: {}) and writes",
        stale.is_valid()
    );
    if write(&db, a, "A's stale write").await? {
        return Err("the stale write was accepted".into());
    }
    println!("   0 rows: refused, the row's fence is above A's token {a}");

    let row = db
        .query_one(
            "SELECT value, fence FROM fencing_example WHERE id = $1",
            &[&ROW],
        )
        .await?;
    let (value, fence): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
    println!("5. the row holds {value:?}, fence {fence}");

    fresh.release().await?;
    if let Err(e) = stale.release().await {
        println!("6. A's release says: {e}");
    }
    drop(db);
    connection.await??;
    Ok(())
}
