//! A lock's life against your own Redis masters: connect, lock, extend, release.
//!
//! ```sh
//! cargo run --example quickstart -- redis://127.0.0.1:6379 redis://127.0.0.1:6380 redis://127.0.0.1:6381
//! cargo run --example quickstart -- --fresh-deployment --resource report URL URL URL
//! ```
//!
//! Each argument that is not a flag is one master's URL (`redis://[:password@]host:port`,
//! or `rediss://` with the `tls-rustls` or `tls-native` feature). The example builds a
//! [`Redlock`] over them, takes a lock on the resource (`--resource NAME`, default
//! `quickstart`) for 10 s, prints its fencing token and remaining validity, extends it
//! to 20 s from then, and releases it, printing each step. A failure is printed (a
//! round's with every node's vote) and the exit status is 1; bad arguments print the
//! usage text and exit with 2.
//!
//! `--fresh-deployment` lifts the restart quarantine before locking. fredlock keeps a
//! node that lost or changed its data out of acquisitions (for 60 s by default),
//! because such a node may have forgotten a lock it granted. New, empty nodes look the
//! same to fredlock, so on a fresh deployment the first acquisition quarantines every
//! node and fails. Lifting the quarantine is safe only when no lock granted by these
//! nodes can still be held: on nodes that other clients already use, it can let a
//! second holder in.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use fredlock::{Error, Redlock, Vote};

const USAGE: &str = "\
usage: quickstart [--fresh-deployment] [--resource NAME] URL [URL...]

  URL                 a Redis master, e.g. redis://127.0.0.1:6379 (give 3 or 5)
  --resource NAME     the resource to lock (default: quickstart)
  --fresh-deployment  lift the restart quarantine first; only for nodes on which no
                      lock can be held yet (see the example's documentation)";

const TTL: Duration = Duration::from_secs(10);
/// Longer than `TTL`, so that the extension shows in the remaining validity.
const EXTENDED_TTL: Duration = Duration::from_secs(20);

struct Args {
    urls: Vec<String>,
    resource: String,
    fresh_deployment: bool,
}

/// Parses the command line; `Err` holds what to print before the usage text.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        urls: Vec::new(),
        resource: "quickstart".to_owned(),
        fresh_deployment: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fresh-deployment" => parsed.fresh_deployment = true,
            "--resource" => match args.next() {
                Some(name) if !name.is_empty() => parsed.resource = name,
                _ => return Err("--resource needs a non-empty NAME".to_owned()),
            },
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with('-') => return Err(format!("unknown flag `{flag}`")),
            _ => parsed.urls.push(arg),
        }
    }
    if parsed.urls.is_empty() {
        return Err(String::new());
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("quickstart: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("quickstart: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let t = Instant::now();
    let redlock = Redlock::builder(args.urls)
        .build()
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let nodes: Vec<&str> = redlock.nodes().collect();
    let quorum = redlock.quorum();
    println!(
        "connected in {:?} to {nodes:?} (quorum {quorum})",
        t.elapsed()
    );
    // From here on, close the connections whatever the outcome, then report it.
    let outcome = lock_extend_release(&redlock, &args.resource, args.fresh_deployment).await;
    redlock.quit().await;
    outcome
}

async fn lock_extend_release(
    redlock: &Redlock,
    resource: &str,
    fresh_deployment: bool,
) -> Result<(), String> {
    if fresh_deployment {
        let votes = redlock.lift_restart_quarantine().await;
        println!("restart quarantine lifted: {votes}");
        // A node that did not say yes keeps its quarantine and will refuse to vote;
        // the lock may still be granted by the others, so go on and let it tell.
        if votes.yes() < votes.len() {
            eprintln!("quickstart: warning: not every node lifted its quarantine");
        }
    }

    let t = Instant::now();
    let mut lock = match redlock.lock(resource, TTL).await {
        Ok(lock) => lock,
        Err(e) if !fresh_deployment && quarantined(&e) => {
            return Err(format!(
                "locking: {e}\n(new nodes are quarantined at their first use, like nodes that \
                 lost their data: if no lock on these nodes can be held yet, pass \
                 --fresh-deployment; otherwise wait for the quarantine to end)"
            ));
        }
        Err(e) => return Err(format!("locking: {e}")),
    };
    println!("locked `{resource}` (TTL {TTL:?}) in {:?}", t.elapsed());
    // The first request for a fencing token raises the counters: one more round trip.
    let t = Instant::now();
    let token = lock
        .fencing_token()
        .await
        .map_err(|e| format!("fencing: {e}"))?;
    println!("  fencing token {token} (made in {:?})", t.elapsed());
    println!("  remaining validity {:?}", lock.remaining());

    let t = Instant::now();
    lock.extend(EXTENDED_TTL)
        .await
        .map_err(|e| format!("extending: {e}"))?;
    println!("extended to {EXTENDED_TTL:?} in {:?}", t.elapsed());
    println!("  remaining validity {:?}", lock.remaining());

    let t = Instant::now();
    lock.release()
        .await
        .map_err(|e| format!("releasing: {e}"))?;
    println!("released in {:?}", t.elapsed());
    Ok(())
}

/// Whether a node refused the lock because it is in the restart quarantine. There is
/// no vote of its own for that: the node's error message says `quarantined after a
/// restart for another ...` (or the lock script's `QUARANTINED <ms left>`).
fn quarantined(e: &Error) -> bool {
    e.votes().is_some_and(|votes| {
        votes.iter().any(|v| match &v.vote {
            Vote::Error(message) => message.to_ascii_lowercase().contains("quarantined"),
            _ => false,
        })
    })
}
