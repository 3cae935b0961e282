//! A clock jump on one real node (issue 13): nodes run with a wall clock the test steps
//! forward by more than the lock's TTL (`Cluster::start_with_fake_clocks`), which makes
//! the holder's key expire on those nodes at once while the holder's own clock says
//! the lock is valid.
//!
//! A second client B gets in if and only if the nodes without the holder's key reach a
//! quorum (3 of 5). A jump removes the holder's key from the jumping node only, so:
//! holding all 5, even two jumps leave it 3; holding 4 (the fifth busy when it
//! acquired), one jump leaves it 3 and B at most 2; two jumps leave it 2 and let B in.
//! docs/safety.md describes these tests.

use std::time::{Duration, Instant};

use fred::prelude::Value;
use fredlock::{Error, Lock, LostReason, Redlock, Vote, Votes};

use crate::support::{Nodes, TestResult, lift_quarantine, resource};

/// Generous for a loaded 2-core machine running containers.
const NODE_TIMEOUT: Duration = Duration::from_millis(150);
/// The holder's TTL: long enough that its own validity outlasts every step below.
const TTL: Duration = Duration::from_secs(10);
/// The jump: well beyond the TTL, so the key is past its expiry on the jumped node.
const JUMP: Duration = Duration::from_secs(30);
/// The third client's key on the node the holder must not get: it expires (by real
/// time) soon after the holder acquired.
const THIRD_PX_MS: i64 = 1_500;
/// How often B tries in the cases where it must never get in, so that a refusal is not
/// the luck of one round.
const ATTEMPTS: usize = 10;

/// A client with the default restart quarantine, so that the tests also show a jump
/// does not quarantine a node (the quarantine reads `run_id`, not the clock).
async fn client(nodes: &Nodes) -> Result<Redlock, Error> {
    Redlock::builder(nodes.urls())
        .node_timeout(NODE_TIMEOUT)
        .build()
        .await
}

/// Two clients; the fresh nodes' quarantine lifted once (the guard lives on the node).
async fn clients(nodes: &Nodes) -> Result<(Redlock, Redlock), Error> {
    let a = client(nodes).await?;
    let b = client(nodes).await?;
    lift_quarantine(&a).await;
    Ok((a, b))
}

/// The node's `run_id` from `INFO server`.
async fn run_id(nodes: &Nodes, i: usize) -> String {
    let info = nodes
        .cmd(i, "INFO", vec![Value::from("server")])
        .await
        .expect("INFO")
        .as_string()
        .expect("text");
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .expect("a run_id line")
        .trim()
        .to_string()
}

/// Polls until `key` is absent on node `i` (PTTL -2), for at most `limit`.
async fn wait_expired(nodes: &Nodes, i: usize, key: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let pttl = nodes.pttl(i, key).await;
        if pttl == -2 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "`{key}` still on node {i} after {limit:?} (PTTL {pttl})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jumps the clocks of `jumping` by [`JUMP`] and checks the effect at once: the key is
/// gone there (no waiting: the node's next wall-clock read is past its expiry) and
/// still has most of its TTL on the `others`. The run_ids show the nodes were not
/// restarted, only their clocks moved.
async fn jump(nodes: &Nodes, jumping: &[usize], others: &[usize], key: &str) {
    let before: Vec<String> = run_ids_of(nodes, jumping).await;
    for &i in jumping {
        nodes.cluster.jump_clock(i, JUMP).expect("jump the clock");
    }
    for &i in jumping {
        assert_eq!(nodes.pttl(i, key).await, -2, "expired on jumped node {i}");
    }
    for &i in others {
        let pttl = nodes.pttl(i, key).await;
        assert!(pttl > 5_000, "node {i} keeps the key: PTTL {pttl}");
    }
    assert_eq!(run_ids_of(nodes, jumping).await, before, "same processes");
}

async fn run_ids_of(nodes: &Nodes, which: &[usize]) -> Vec<String> {
    let mut ids = Vec::new();
    for &i in which {
        ids.push(run_id(nodes, i).await);
    }
    ids
}

/// Each node's vote, by index (votes come in configuration order).
fn by_node(votes: &Votes) -> Vec<Vote> {
    votes.iter().map(|nv| nv.vote.clone()).collect()
}

/// B tries [`ATTEMPTS`] times and is refused each time with `Taken`: the nodes holding
/// A's token answer taken, and B's yes votes come from exactly `b_yes` (so those nodes,
/// jumped ones included, were not quarantined). After each attempt B's keys are gone
/// again and A's token is still on `a_holds`.
async fn assert_b_never_gets_in(
    nodes: &Nodes,
    b: &Redlock,
    a: &Lock,
    a_holds: &[usize],
    b_yes: &[usize],
) {
    let res = a.resource();
    for attempt in 0..ATTEMPTS {
        let err = b
            .try_lock(res, TTL)
            .await
            .expect_err("B must not get a quorum");
        let Error::Taken { votes, .. } = &err else {
            panic!("attempt {attempt}: expected Taken, got {err}");
        };
        let votes = by_node(votes);
        for (i, vote) in votes.iter().enumerate() {
            if a_holds.contains(&i) {
                // The round is decided once a quorum is out of reach: a node may not
                // have answered by then.
                assert!(
                    matches!(vote, Vote::Taken | Vote::Pending),
                    "attempt {attempt}: node {i} holds A's key but voted {vote}"
                );
            } else if !matches!(vote, Vote::Yes | Vote::Pending) {
                panic!("attempt {attempt}: node {i} is free for B but voted {vote}");
            }
        }
        let yes: Vec<usize> = (0..votes.len())
            .filter(|&i| votes[i] == Vote::Yes)
            .collect();
        assert!(
            yes.iter().all(|i| b_yes.contains(i)),
            "attempt {attempt}: B's yes votes {yes:?}"
        );
        assert!(yes.len() < b.quorum(), "attempt {attempt}: B had a quorum");
        // B's failed attempt removes what it set (the removals may finish just after
        // the error is returned).
        let left = nodes.wait_absent(b_yes, res, Duration::from_secs(3)).await;
        assert!(
            left.is_empty(),
            "attempt {attempt}: B left keys on {left:?}"
        );
        for &i in a_holds {
            assert_eq!(
                nodes.get(i, res).await.as_deref(),
                Some(a.token()),
                "attempt {attempt}: A's key on node {i}"
            );
        }
        assert!(a.is_valid(), "A's lock is still valid on its own clock");
    }
}

/// A acquires with node 4 held by a third client's short key, so A holds 0-3; the
/// third key then expires by real time. Returns A's lock.
async fn a_holds_all_but_node_4(nodes: &Nodes, a: &Redlock, res: &str) -> Lock {
    nodes.set(4, res, "third-client", THIRD_PX_MS).await;
    let lock = a.lock(res, TTL).await.expect("A acquires 4 of 5");
    nodes.assert_held(&[0, 1, 2, 3], res, lock.token()).await;
    wait_expired(nodes, 4, res, Duration::from_secs(5)).await;
    assert!(nodes.holding(0..5, res).await.len() == 4);
    lock
}

/// A holds 4 of 5 (node 4 was busy); node 3's clock jumps past A's expiry, so A keeps
/// 3 nodes. B, tried ten times, gets at most nodes 3 and 4 and is refused each time;
/// A's extend then succeeds on the 3 nodes it still holds and does not bring the key
/// back on node 3.
#[tokio::test(flavor = "multi_thread")]
async fn one_jumping_node_of_five_never_lets_a_second_client_in() -> TestResult {
    let nodes = Nodes::start_with_fake_clocks(5, &[3]).await?;
    let (a, b) = clients(&nodes).await?;
    let res = resource("clock-jump-one");
    let mut held = a_holds_all_but_node_4(&nodes, &a, &res).await;

    jump(&nodes, &[3], &[0, 1, 2], &res).await;
    assert_b_never_gets_in(&nodes, &b, &held, &[0, 1, 2], &[3, 4]).await;

    held.extend(TTL).await?;
    nodes.assert_pttl_above(&[0, 1, 2], &res, 8_000).await;
    assert_eq!(
        nodes.pttl(3, &res).await,
        -2,
        "an extend renews, never sets"
    );
    assert!(held.is_valid());
    held.release().await?;
    nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
    Ok(())
}

/// A holds all 5 nodes; nodes 3 and 4 jump. A keeps 3, a quorum, so B, tried ten
/// times, is refused each time, and A's extend succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn two_jumping_nodes_of_five_cannot_let_a_second_client_in_when_the_holder_has_all_five()
-> TestResult {
    let nodes = Nodes::start_with_fake_clocks(5, &[3, 4]).await?;
    let (a, b) = clients(&nodes).await?;
    let res = resource("clock-jump-two-of-five");
    let mut held = a.lock(&res, TTL).await?;
    nodes
        .assert_held(&[0, 1, 2, 3, 4], &res, held.token())
        .await;

    jump(&nodes, &[3, 4], &[0, 1, 2], &res).await;
    assert_b_never_gets_in(&nodes, &b, &held, &[0, 1, 2], &[3, 4]).await;

    held.extend(TTL).await?;
    nodes.assert_pttl_above(&[0, 1, 2], &res, 8_000).await;
    held.release().await?;
    Ok(())
}

/// Checks that A's extend after B got in is refused with `Expired`: the jumped nodes
/// and B's node answer taken (all three: the round can only be decided by them), A's
/// two nodes yes (or not yet answered when it was decided).
fn assert_not_ours(err: &Error) {
    let Error::Expired { votes, .. } = err else {
        panic!("expected Expired, got {err}");
    };
    let votes = by_node(votes);
    for i in [2, 3, 4] {
        assert_eq!(votes[i], Vote::Taken, "node {i}: {err}");
    }
    for i in [0, 1] {
        assert!(
            matches!(votes[i], Vote::Yes | Vote::Pending),
            "node {i}: {err}"
        );
    }
}

/// The documented non-guarantee: A holds 4 of 5 (node 4 was busy), nodes 2 and 3
/// jump, and B acquires nodes 2, 3 and 4 while A's lock is still valid on A's clock:
/// two holders at once. A's next extend fails with `Expired` (taken on 2, 3 and 4)
/// and A's lock is then no longer valid; B's lock is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn two_jumping_nodes_of_five_let_a_second_client_in_while_the_first_still_holds() -> TestResult
{
    let nodes = Nodes::start_with_fake_clocks(5, &[2, 3]).await?;
    let (a, b) = clients(&nodes).await?;
    let res = resource("clock-jump-overlap");
    let mut held_by_a = a_holds_all_but_node_4(&nodes, &a, &res).await;

    jump(&nodes, &[2, 3], &[0, 1], &res).await;
    let held_by_b = b.try_lock(&res, TTL).await?;
    // Both hold: A's validity, measured on A's monotonic clock, has not run out.
    assert!(held_by_a.remaining() > Duration::ZERO && held_by_a.is_valid());
    assert!(held_by_b.is_valid());
    nodes.assert_held(&[0, 1], &res, held_by_a.token()).await;
    nodes.assert_held(&[2, 3, 4], &res, held_by_b.token()).await;

    let err = held_by_a.extend(TTL).await.expect_err("no longer A's");
    assert_not_ours(&err);
    assert!(!held_by_a.is_valid(), "A's lock is lost after Expired");
    assert!(held_by_b.is_valid());
    held_by_b.release().await?;
    Ok(())
}

/// As above with A kept alive: its next renewal finds the key taken on 2, 3 and 4, and
/// A's lease says so (`ExtendFailed` carrying `Expired`) before A's validity would
/// have run out.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_holder_is_told_it_lost_the_lock_when_two_jumps_let_a_second_client_in()
-> TestResult {
    let nodes = Nodes::start_with_fake_clocks(5, &[2, 3]).await?;
    let (a, b) = clients(&nodes).await?;
    let res = resource("clock-jump-kept-alive");
    let mut held_by_a = a_holds_all_but_node_4(&nodes, &a, &res).await;
    held_by_a.keep_alive();
    let lease = held_by_a.lease();

    jump(&nodes, &[2, 3], &[0, 1], &res).await;
    let held_by_b = b.try_lock(&res, TTL).await?;
    assert!(lease.is_valid() && held_by_b.is_valid());

    // The renewal runs at half the validity at the latest; bounded by the TTL.
    let reason = tokio::time::timeout(TTL, lease.lost())
        .await
        .expect("the loss is signalled within the TTL");
    let LostReason::ExtendFailed(err) = &reason else {
        panic!("expected ExtendFailed, got {reason}");
    };
    assert_not_ours(err);
    assert!(
        lease.remaining() > Duration::ZERO,
        "signalled before A's validity ran out"
    );
    assert!(!lease.is_valid() && held_by_b.is_valid());
    held_by_b.release().await?;
    Ok(())
}
