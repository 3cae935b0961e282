//! Fencing at the resource: a local file that refuses a stale lock holder.
//!
//! The file holds the highest fencing token accepted and the data together (first line
//! the token, then the data). A write follows one protocol:
//!
//! 1. take an exclusive `flock` on a sidecar `<file>.lock` (waits for another writer);
//! 2. read the token in the file (0 if there is no file yet);
//! 3. if the writer's token is lower, refuse and stop;
//! 4. otherwise write token and data to `<file>.tmp`, fsync it, rename it over the file
//!    and fsync the directory;
//! 5. close the sidecar, which releases the `flock`.
//!
//! The `flock` makes steps 2 to 4 one step for every writer that follows the protocol,
//! so no two writers both pass the check against the same old token; the rename makes a
//! reader see the old file or the new one, whole, never a mix.
//!
//! Holder A takes the lock on a throwaway 3-node Redis cluster (Docker), writes, stalls
//! past its validity; holder B takes the lock and writes; A's late write is refused.
//! The file lives in a directory under the system's temporary folder, removed at the
//! end.
//!
//! ```sh
//! FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh | tail -n 1) cargo run --example fencing_file
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fredlock::Redlock;
use fredlock_testcluster::Cluster;
use rustix::fs::{FlockOperation, flock};

/// A file written only through [`FencedFile::write`].
#[derive(Clone)]
struct FencedFile {
    path: PathBuf,
}

impl FencedFile {
    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// The stored token and data; `(0, "")` before the first write.
    fn read(&self) -> io::Result<(u64, String)> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, String::new())),
            Err(e) => return Err(e),
        };
        let (token, data) = text.split_once('\n').unwrap_or((&text, ""));
        let token = token.parse().map_err(|e| {
            let msg = format!("{}: bad token {token:?}: {e}", self.path.display());
            io::Error::new(io::ErrorKind::InvalidData, msg)
        })?;
        Ok((token, data.to_string()))
    }

    /// Writes `data` with `token` unless the file holds a higher token. Returns
    /// whether it wrote. Blocking: call it off the async runtime's workers.
    fn write(&self, token: u64, data: &str) -> io::Result<bool> {
        let sidecar = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.sibling(".lock"))?;
        // Held until `sidecar` is closed at the end of this function.
        flock(&sidecar, FlockOperation::LockExclusive)?;

        let (highest, _) = self.read()?;
        if token < highest {
            return Ok(false);
        }
        let tmp = self.sibling(".tmp");
        let mut file = File::create(&tmp)?;
        write!(file, "{token}\n{data}")?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()?;
        Ok(true)
    }
}

async fn write(file: &FencedFile, token: u64, data: &str) -> io::Result<bool> {
    let (file, data) = (file.clone(), data.to_string());
    tokio::task::spawn_blocking(move || file.write(token, &data)).await?
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("fredlock-fencing-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let outcome = run(&dir).await;
    fs::remove_dir_all(&dir)?;
    outcome
}

async fn run(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let file = FencedFile {
        path: dir.join("ledger"),
    };
    println!("0. the protected file: {}", file.path.display());

    let cluster = Cluster::start(3).await?;
    let client = || {
        Redlock::builder(cluster.urls())
            .acquire_timeout(Duration::from_secs(5))
            .build()
    };
    let (first, second) = (client().await?, client().await?);
    // A new deployment: no lock can be held yet (docs/safety.md).
    first.lift_restart_quarantine().await;

    let stale = first.lock("ledger", Duration::from_millis(500)).await?;
    let a = stale.fencing_token().await?;
    println!("1. holder A has the lock, token {a}");
    for data in ["A's first write", "A's second write"] {
        if !write(&file, a, data).await? {
            return Err(format!("A's write {data:?} with the current token was refused").into());
        }
    }
    println!("   A writes twice with its token: both accepted");

    println!("2. A stalls for 1 s, past its validity...");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fresh = second.lock("ledger", Duration::from_secs(10)).await?;
    let b = fresh.fencing_token().await?;
    println!("3. holder B has the lock, token {b}");
    if !write(&file, b, "B's write").await? {
        return Err("B's write was refused".into());
    }
    println!("   B writes: accepted");

    println!(
        "4. A wakes up (its lock valid: {}) and writes",
        stale.is_valid()
    );
    if write(&file, a, "A's stale write").await? {
        return Err("the stale write was accepted".into());
    }
    println!("   refused: the file's token is above A's token {a}");

    let (token, data) = file.read()?;
    println!("5. the file holds {data:?}, token {token}");

    fresh.release().await?;
    if let Err(e) = stale.release().await {
        println!("6. A's release says: {e}");
    }
    Ok(())
}
