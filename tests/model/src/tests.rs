//! The model checked: the protocol as implemented keeps its properties in every
//! interleaving within the bounds, and each known hazard, switched on, is found.

use std::collections::BTreeSet;
use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model};

use super::{Config, Redlock, representative};

/// Prints the figures docs/safety.md quotes.
fn report(name: &str, config: &Config, checker: &impl Checker<Redlock>, started: Instant) {
    println!(
        "model {name}: {} states, {} unique, depth {}, {:.1} s; {config:?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64(),
    );
}

/// The safety properties, which no reachable state may break.
const SAFETY: [&str; 3] = [
    "mutual exclusion",
    "fencing tokens increase",
    "no key of a finished attempt stays",
];

/// Explores every state of `config`, depth-first, one state per renaming of nodes and
/// clients; asserts that no safety property fails and that each of `reached` (the
/// hazards the bounds must let happen) was seen.
fn exhaustive(name: &str, config: Config, reached: &[&'static str]) {
    let started = Instant::now();
    let checker = Redlock::new(config.clone())
        .checker()
        .threads(2)
        .symmetry_fn(representative)
        .spawn_dfs()
        .join();
    report(name, &config, &checker, started);
    for property in SAFETY {
        checker.assert_no_discovery(property);
    }
    for &property in reached {
        checker.assert_any_discovery(property);
    }
}

/// Finds a shortest counterexample to `property` (breadth-first) and prints it.
fn finds(name: &str, config: Config, property: &'static str) {
    let started = Instant::now();
    let checker = Redlock::new(config.clone())
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    report(name, &config, &checker, started);
    let path = checker.assert_any_discovery(property);
    println!("counterexample to {property:?}:");
    let steps = path.into_vec();
    for pair in steps.windows(2) {
        let (after, action) = (&pair[1].0, pair[0].1);
        if let Some(action) = action {
            let phases: Vec<_> = after.clients.iter().map(|c| c.phase).collect();
            println!("  {action:?} -> t={} clients {phases:?}", after.now);
        }
    }
}

#[test]
fn the_protocol_keeps_its_properties_through_a_crash_and_a_restart() {
    // A node may crash at any moment and come back empty, from an old snapshot, or
    // with every write; the second client may come before, during or after.
    exhaustive(
        "crash",
        Config::protocol(),
        &[
            "two holders, one after the other",
            "a quarantined node refuses",
            "two fencing tokens handed out",
        ],
    );
}

#[test]
fn the_protocol_keeps_its_properties_through_a_lost_message_and_an_extension() {
    let config = Config {
        crashes: 0,
        losses: 1,
        extends: 1,
        fences: 0,
        ..Config::protocol()
    };
    exhaustive("loss", config, &["two holders, one after the other"]);
}

#[test]
fn the_fencing_round_keeps_its_properties_through_a_lost_message() {
    let config = Config {
        crashes: 0,
        losses: 1,
        ..Config::protocol()
    };
    exhaustive(
        "fence loss",
        config,
        &[
            "two holders, one after the other",
            "two fencing tokens handed out",
        ],
    );
}

#[test]
fn without_the_quarantine_a_restart_without_data_lets_a_second_client_in() {
    let config = Config {
        quarantine: false,
        ..Config::protocol()
    };
    finds("no quarantine", config, "mutual exclusion");
}

#[test]
fn a_forward_clock_jump_on_one_node_of_three_lets_a_second_client_in() {
    let config = Config {
        jumps: 1,
        crashes: 0,
        ..Config::protocol()
    };
    finds("clock jump", config, "mutual exclusion");
}

#[test]
fn without_the_drift_allowance_a_slow_client_clock_outlives_the_keys() {
    let config = Config {
        drift: false,
        crashes: 0,
        ..Config::protocol()
    };
    finds("no drift", config, "mutual exclusion");
}

#[test]
fn without_cleanup_a_failed_attempt_leaves_its_key() {
    let config = Config {
        cleanup: false,
        crashes: 0,
        ..Config::protocol()
    };
    finds("no cleanup", config, "no key of a finished attempt stays");
}

#[test]
fn without_the_write_back_fencing_tokens_can_repeat() {
    // Three holders within one tick (one clock floor): a holder's raise misses a node
    // that another client's key held, the next holder's quorum meets that lagging node,
    // and without the write-back a third holder's quorum of lagging nodes hands out the
    // second one's token again.
    let config = Config {
        write_back: false,
        crashes: 0,
        losses: 1,
        attempts: 2,
        fences: 2,
        horizon: 0,
        ..Config::protocol()
    };
    finds("no write-back", config, "fencing tokens increase");
}

/// The larger configuration of docs/safety.md: a crash, an extension and three ticks.
/// Not in CI: `cargo test --release -p fredlock-model larger -- --ignored --nocapture`.
#[test]
#[ignore = "minutes in a release build; run by hand"]
fn larger() {
    let config = Config {
        extends: 1,
        horizon: 3,
        ..Config::protocol()
    };
    exhaustive(
        "larger",
        config,
        &[
            "two holders, one after the other",
            "a quarantined node refuses",
        ],
    );
}
