//! The read-write model checked: with claims left by a failed attempt's cleanup, a
//! waiting writer is granted within the bound while readers keep coming and one node
//! does not answer it; without them (the current protocol), or with a claim shorter
//! than the writer's return, the checker finds readers that keep it out.

use std::collections::BTreeSet;
use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model};

use super::node::Key;
use super::{Config, Far, ReadWrite, representative};

fn report(name: &str, config: &Config, checker: &impl Checker<ReadWrite>, started: Instant) {
    println!(
        "rw model {name}: {} states, {} unique, depth {}, {:.1} s; {config:?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64(),
    );
}

const ALWAYS: [&str; 2] = [
    "no writer overlaps a reader",
    "the writer is granted within the bound",
];

/// Explores every state of `config` (one per renaming of the readers); no `always`
/// property fails, each of `reached` is seen and none of `unreached` is.
fn exhaustive(name: &str, config: Config, reached: &[&'static str], unreached: &[&'static str]) {
    let started = Instant::now();
    let checker = ReadWrite {
        config: config.clone(),
    }
    .checker()
    .threads(2)
    .symmetry_fn(representative)
    .spawn_dfs()
    .join();
    report(name, &config, &checker, started);
    for property in ALWAYS {
        checker.assert_no_discovery(property);
    }
    for &property in reached {
        checker.assert_any_discovery(property);
    }
    for &property in unreached {
        checker.assert_no_discovery(property);
    }
}

/// Finds a shortest counterexample to `property` (breadth-first) and prints it.
fn finds(name: &str, config: Config, property: &'static str) {
    let started = Instant::now();
    let checker = ReadWrite {
        config: config.clone(),
    }
    .checker()
    .threads(2)
    .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
    .spawn_bfs()
    .join();
    report(name, &config, &checker, started);
    let path = checker.assert_any_discovery(property);
    println!("counterexample to {property:?}:");
    for (state, action) in path.into_vec() {
        let keys: Vec<String> = state.keys.iter().map(show).collect();
        let phases: Vec<String> = state
            .clients
            .iter()
            .map(|c| format!("{:?}", c.phase))
            .collect();
        println!(
            "  t={} keys [{}] clients [{}] failed {}",
            state.now,
            keys.join(", "),
            phases.join(", "),
            state.failed
        );
        if let Some(action) = action {
            println!("    {action:?}");
        }
    }
}

/// A key in short: `-` free, `w3<4` the writer's attempt 3 until tick 4, `{r1.2<3
/// claim<4}` reader 1's second read lock until 3 and a claim until 4.
fn show(key: &Key) -> String {
    match key {
        Key::Free => "-".into(),
        Key::Writer(t, until) => format!("w{}<{until}", t.attempt),
        Key::Set { readers, claim } => {
            let mut members: Vec<String> = readers
                .iter()
                .map(|(t, until)| format!("r{}.{}<{until}", t.client, t.attempt))
                .collect();
            members.extend(claim.map(|until| format!("claim<{until}")));
            format!("{{{}}}", members.join(" "))
        }
    }
}

#[test]
fn with_cleanup_claims_a_waiting_writer_is_granted_within_the_bound() {
    exhaustive(
        "fixed, far node partitioned",
        Config::fixed(),
        &[
            "the writer is granted after the bound",
            "two readers hold at once",
            "a claim refuses a reader",
        ],
        &["the writer fails every attempt"],
    );
}

#[test]
fn with_cleanup_claims_a_slow_node_does_not_keep_the_writer_out() {
    let config = Config {
        far: Far::Slow,
        reads: 2,
        ..Config::fixed()
    };
    exhaustive(
        "fixed, far node slow",
        config,
        &[
            "the writer is granted after the bound",
            "a claim refuses a reader",
        ],
        &["the writer fails every attempt"],
    );
}

#[test]
fn with_cleanup_claims_readers_that_release_early_do_not_keep_the_writer_out() {
    let config = Config {
        releases: true,
        reads: 1,
        ..Config::fixed()
    };
    exhaustive(
        "fixed, early releases",
        config,
        &[
            "the writer is granted after the bound",
            "two readers hold at once",
        ],
        &["the writer fails every attempt"],
    );
}

#[test]
fn claiming_only_where_readers_are_found_lets_readers_keep_the_writer_out() {
    let config = Config {
        cleanup_claims: false,
        ..Config::fixed()
    };
    finds(
        "current protocol",
        config,
        "the writer is granted within the bound",
    );
}

#[test]
fn a_claim_shorter_than_the_writers_return_lets_readers_in() {
    let config = Config {
        claim: 1,
        ..Config::fixed()
    };
    finds(
        "claim of one tick",
        config,
        "the writer is granted within the bound",
    );
}

#[test]
fn a_writer_that_replaces_live_readers_overlaps_them() {
    let mut config = Config::fixed();
    config.faults.replace_readers = true;
    finds(
        "writer replaces readers",
        config,
        "no writer overlaps a reader",
    );
}

/// The larger configurations of docs/safety.md. Not in CI:
/// `cargo test --release -p fredlock-model rw::tests::larger -- --ignored --nocapture`.
#[test]
#[ignore = "a minute or more in a release build; run by hand"]
fn larger() {
    let reached = ["the writer is granted after the bound"];
    let never = ["the writer fails every attempt"];
    let slow = Config {
        far: Far::Slow,
        ..Config::fixed()
    };
    exhaustive("larger, far node slow", slow, &reached, &never);
    let releases = Config {
        releases: true,
        reads: 2,
        ..Config::fixed()
    };
    exhaustive("larger, early releases", releases, &reached, &never);
}

#[test]
fn without_cleanup_claims_readers_keep_the_writer_out_for_every_attempt() {
    let config = Config {
        cleanup_claims: false,
        ..Config::fixed()
    };
    finds(
        "current protocol, every attempt",
        config,
        "the writer fails every attempt",
    );
}

/// The current protocol keeps readers and the writer apart; it only starves them.
/// `cargo test --release -p fredlock-model rw::tests::current -- --ignored --nocapture`.
#[test]
#[ignore = "seconds in a release build; run by hand"]
fn current_protocol_is_safe() {
    let config = Config {
        cleanup_claims: false,
        ..Config::fixed()
    };
    let started = Instant::now();
    let model = ReadWrite {
        config: config.clone(),
    };
    let checker = model.checker().threads(2).symmetry_fn(representative);
    let checker = checker.spawn_dfs().join();
    report("current protocol", &config, &checker, started);
    checker.assert_no_discovery("no writer overlaps a reader");
    checker.assert_any_discovery("the writer fails every attempt");
}
