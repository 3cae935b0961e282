//! A granted lock carries the votes of the round that granted it, as a failed one's
//! error does: which nodes said yes, and what the others said by the decision.

use std::time::Duration;

use fredlock::Vote;

use crate::support::{Nodes, ROOMY, TestResult, resource};

/// With the resource held elsewhere on node 2, and then with node 2 dead, the lock is
/// granted by nodes 0 and 1: both must have said yes (a quorum of 3 needs both), and
/// node 2's vote is never a yes. The round returns at the quorum, so node 2 may not
/// have answered by then (`Pending`); what it said otherwise is its real answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_granted_lock_carries_the_votes_of_its_round() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let names: Vec<String> = redlock.nodes().map(str::to_string).collect();
    let address = |i: usize| {
        nodes
            .cluster
            .url(i)
            .trim_start_matches("redis://")
            .to_string()
    };

    let held = resource("votes-held-elsewhere");
    nodes.set(2, &held, "someone-else", 30_000).await;
    let mut lock = redlock.try_lock(&held, Duration::from_secs(10)).await?;
    let votes = lock.votes().clone();
    assert_eq!(votes.len(), 3, "{votes}");
    assert_eq!(votes.yes(), 2, "{votes}");
    for (i, nv) in votes.iter().enumerate() {
        assert_eq!(&*nv.node, names[i], "configuration order: {votes}");
        assert_eq!(*nv.node, address(i), "{votes}");
    }
    let kinds: Vec<&Vote> = votes.iter().map(|nv| &nv.vote).collect();
    assert_eq!(kinds[..2], [&Vote::Yes, &Vote::Yes], "{votes}");
    assert!(
        matches!(kinds[2], Vote::Taken | Vote::Pending),
        "node 2 holds another token: {votes}"
    );
    // An extension is a round of its own; the grant's votes stay.
    lock.extend(Duration::from_secs(10)).await?;
    assert_eq!(*lock.votes(), votes);
    lock.release().await?;

    nodes.cluster.kill(2).await?;
    let dead = resource("votes-node-dead");
    let lock = redlock.try_lock(&dead, Duration::from_secs(10)).await?;
    let votes = lock.votes();
    assert_eq!((votes.len(), votes.yes()), (3, 2), "{votes}");
    let kinds: Vec<&Vote> = votes.iter().map(|nv| &nv.vote).collect();
    assert_eq!(kinds[..2], [&Vote::Yes, &Vote::Yes], "{votes}");
    assert!(
        matches!(kinds[2], Vote::Error(_) | Vote::Timeout | Vote::Pending),
        "node 2 is dead: {votes}"
    );
    assert_eq!(*votes.iter().nth(2).expect("3 votes").node, address(2));
    lock.release().await?;
    Ok(())
}
