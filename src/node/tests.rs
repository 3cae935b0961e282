//! The group commit against in-memory nodes: what goes out alone, what goes out
//! together, in which order, and what one operation's failure does to the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::{MAX_BATCH, MAX_IN_FLIGHT};
use super::memory::{self, Mode};
use super::resend::MAX_PENDING;
use super::{Answer, Node, Reach, Reply};
use crate::quorum::Vote;
use crate::request::Request;
use crate::scripts::{Kind, Op};
use crate::settings::{Quarantine, Settings};

const TIMEOUT: Duration = Duration::from_millis(100);

fn request(resource: &str) -> Request {
    let settings = Settings {
        quarantine: Quarantine::Off,
        ..Settings::default()
    };
    Request::one(resource, Duration::from_secs(10), &settings).expect("valid")
}

fn acquire(resource: &str, token: &str) -> Arc<Op> {
    let token = Arc::from(token);
    Arc::new(Op::acquire(&request(resource), &token, None, 0))
}

fn release(resource: &str, token: &str) -> Arc<Op> {
    Arc::new(Op::release_keys(&request(resource).keys, &Arc::from(token)))
}

fn one() -> (Arc<Node>, Arc<memory::Memory>) {
    let (nodes, memories) = memory::nodes(1, TIMEOUT);
    (Arc::clone(&nodes[0]), Arc::clone(&memories[0]))
}

#[tokio::test]
async fn a_lone_operation_goes_out_alone_and_at_once() {
    let (node, memory) = one();
    let answer = Arc::clone(&node).call(acquire("a", "t1")).await;
    assert_eq!(answer, Answer::from(Vote::Yes));
    let answer = Arc::clone(&node).call(release("a", "t1")).await;
    assert_eq!(answer, Answer::from(Vote::Yes));
    assert_eq!(memory.batches(), vec![1, 1]);
}

#[tokio::test]
async fn operations_that_meet_a_call_in_flight_go_out_together() {
    let (node, memory) = one();
    memory.set_mode(Mode::Slow(Duration::from_millis(20)));
    let calls = (0..10).map(|i| Arc::clone(&node).call(acquire(&format!("r{i}"), "t")));
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.vote == Vote::Yes), "{answers:?}");
    // The first ones went out alone, one per slot; the others that met them, in one
    // call.
    let mut expected = vec![1; MAX_IN_FLIGHT];
    expected.push(10 - MAX_IN_FLIGHT);
    assert_eq!(memory.batches(), expected);
}

#[tokio::test]
async fn a_batch_carries_at_most_max_batch_operations() {
    let (node, memory) = one();
    memory.set_mode(Mode::Slow(Duration::from_millis(10)));
    let n = 2 * MAX_BATCH + 5;
    let calls = (0..n).map(|i| Arc::clone(&node).call(release(&format!("r{i}"), "t")));
    let answers = futures::future::join_all(calls).await;
    assert!(
        answers.iter().all(|a| a.vote == Vote::Taken),
        "{:?}",
        answers[0]
    );
    let batches = memory.batches();
    assert_eq!(batches.iter().sum::<usize>(), n);
    assert!(batches.iter().all(|b| *b <= MAX_BATCH), "{batches:?}");
}

#[tokio::test]
async fn one_operations_error_fails_only_that_operation() {
    let (node, memory) = one();
    memory.set_wrong_type("bad");
    memory.set_mode(Mode::Slow(Duration::from_millis(20)));
    let first: Vec<_> = (0..MAX_IN_FLIGHT)
        .map(|i| tokio::spawn(Arc::clone(&node).call(acquire(&format!("first{i}"), "t"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (good, bad, after) = tokio::join!(
        Arc::clone(&node).call(acquire("good", "t")),
        Arc::clone(&node).call(acquire("bad", "t")),
        Arc::clone(&node).call(acquire("after", "t")),
    );
    for first in first {
        assert_eq!(first.await.expect("task").vote, Vote::Yes);
    }
    assert_eq!(good.vote, Vote::Yes);
    assert!(
        matches!(&bad.vote, Vote::Error(e) if e.starts_with("WRONGTYPE")),
        "{bad:?}"
    );
    assert_eq!(after.vote, Vote::Yes);
    let mut expected = vec![1; MAX_IN_FLIGHT];
    expected.push(3);
    assert_eq!(memory.batches(), expected);
    assert_eq!(memory.holder("after").as_deref(), Some("t"));
}

#[tokio::test]
async fn a_release_made_after_an_acquisition_runs_after_it_on_a_frozen_node() {
    let (node, memory) = one();
    memory.set_mode(Mode::Frozen);
    // Every slot busy with an earlier call: the acquisition waits in the queue, and
    // the release, made while it waits, behind it.
    let earlier: Vec<_> = (0..MAX_IN_FLIGHT)
        .map(|i| tokio::spawn(Arc::clone(&node).call(release(&format!("e{i}"), "t"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let acquired = tokio::spawn(Arc::clone(&node).call(acquire("a", "t")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let released = tokio::spawn(Arc::clone(&node).call(release("a", "t")));
    for call in earlier {
        assert_eq!(call.await.expect("task").vote, Vote::Timeout);
    }
    assert_eq!(acquired.await.expect("task").vote, Vote::Timeout);
    memory.set_mode(Mode::Up);
    assert_eq!(released.await.expect("task").vote, Vote::Timeout);
    assert_eq!(memory.batches(), [vec![1; MAX_IN_FLIGHT], vec![2]].concat());
    let log: Vec<Kind> = memory.log().into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(&log[MAX_IN_FLIGHT..], [Kind::Acquire, Kind::Release]);
    assert_eq!(memory.holder("a"), None);
    assert_eq!(memory.live_keys(), 0, "no key is left");
}

#[tokio::test]
async fn every_call_answers_by_the_node_timeout() {
    let (node, memory) = one();
    memory.set_mode(Mode::Frozen);
    let start = Instant::now();
    let calls = (0..5).map(|i| Arc::clone(&node).call(acquire(&format!("r{i}"), "t")));
    let answers = futures::future::join_all(calls).await;
    assert!(
        answers.iter().all(|a| a.vote == Vote::Timeout),
        "{answers:?}"
    );
    assert!(start.elapsed() < 3 * TIMEOUT, "{:?}", start.elapsed());
    // A down node answers at once.
    memory.set_mode(Mode::Down);
    let start = Instant::now();
    let answer = Arc::clone(&node).call(acquire("x", "t")).await;
    assert!(matches!(&answer.vote, Vote::Error(e) if e.starts_with("not connected")));
    assert!(start.elapsed() < TIMEOUT);
}

#[tokio::test]
async fn a_call_whose_future_is_no_longer_polled_holds_its_node_for_at_most_two_timeouts() {
    let (node, memory) = one();
    memory.set_mode(Mode::Frozen);
    // Polled once (sent), then kept without being polled: its slot stays taken.
    let mut stalled = Box::pin(Arc::clone(&node).call(acquire("a", "t")));
    assert!(futures::poll!(stalled.as_mut()).is_pending());
    memory.set_mode(Mode::Up);
    let waited = Arc::clone(&node).call(acquire("b", "t")).await;
    assert_eq!(waited.vote, Vote::Timeout);
    tokio::time::sleep(TIMEOUT).await;
    // Past the stalled call's deadline by a node timeout: this waiter's timeout frees
    // the node, and the next operation goes out.
    let freeing = Arc::clone(&node).call(acquire("c", "t")).await;
    assert_eq!(freeing.vote, Vote::Timeout);
    let answer = Arc::clone(&node).call(acquire("d", "t")).await;
    assert_eq!(answer.vote, Vote::Yes);
    drop(stalled);
}

#[tokio::test]
async fn closing_lets_what_is_queued_go_out_first() {
    // The drain waits two node timeouts: far more than two 25 ms calls on a busy machine.
    let (nodes, memories) = memory::nodes(1, Duration::from_secs(5));
    let (node, memory) = (Arc::clone(&nodes[0]), Arc::clone(&memories[0]));
    memory.set_mode(Mode::Slow(Duration::from_millis(25)));
    // The acquisition in flight, the release waiting behind it, both not yet answered.
    let mut acquired = Box::pin(Arc::clone(&node).call(acquire("a", "t")));
    assert!(futures::poll!(acquired.as_mut()).is_pending());
    let mut released = Box::pin(Arc::clone(&node).call(release("a", "t")));
    assert!(futures::poll!(released.as_mut()).is_pending());
    let (acquired, released) = (tokio::spawn(acquired), tokio::spawn(released));
    node.close(TIMEOUT).await;
    let log: Vec<Kind> = memory.log().into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(log, [Kind::Acquire, Kind::Release]);
    assert_eq!(acquired.await.expect("task").vote, Vote::Yes);
    assert_eq!(released.await.expect("task").vote, Vote::Yes);
    assert_eq!(memory.holder("a"), None);
}

#[tokio::test]
async fn closing_a_node_that_never_answers_ends() {
    let (node, memory) = one();
    memory.set_mode(Mode::Frozen);
    let mut stalled = Box::pin(Arc::clone(&node).call(acquire("a", "t")));
    assert!(futures::poll!(stalled.as_mut()).is_pending());
    let queued = tokio::spawn(Arc::clone(&node).call(release("a", "t")));
    // At most two node timeouts, however long the stalled call stays unpolled; this
    // bound only tells a hang from an end.
    let closed = tokio::time::timeout(TIMEOUT * 50, node.close(TIMEOUT)).await;
    assert!(closed.is_ok(), "closing a silent node never ended");
    assert_eq!(queued.await.expect("task").vote, Vote::Timeout);
    drop(stalled);
}

/// Polls `done` every 10 ms for at most 2 s; returns whether it came true.
async fn eventually(done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > Duration::from_secs(2) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A node holding `a` for token `t`, put in `mode`, and the answer to its release.
async fn released_in(mode: Mode) -> (Arc<Node>, Arc<memory::Memory>, Answer) {
    let (node, memory) = one();
    let acquired = Arc::clone(&node).call(acquire("a", "t")).await;
    assert_eq!(acquired.vote, Vote::Yes);
    memory.set_mode(mode);
    let first = Arc::clone(&node).call(release("a", "t")).await;
    (node, memory, first)
}

/// A removal that was not written (the node is down): sent again once it is up.
#[tokio::test]
async fn an_unsent_removal_is_sent_again_once_the_node_is_up() {
    let (node, memory, first) = released_in(Mode::Down).await;
    assert_eq!(first.reach, Reach::Unsent, "{first:?}");
    node.resend(
        release("a", "t"),
        &first,
        Instant::now() + Duration::from_secs(10),
    );
    // Looked at after 100 ms: still down, nothing sent.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(memory.holder("a").as_deref(), Some("t"));
    memory.set_mode(Mode::Up);
    assert!(eventually(|| memory.holder("a").is_none()).await);
    assert!(eventually(|| node.pending_len() == 0).await);
}

/// A removal written on a connection that the client then replaced may be lost with
/// it: sent again on the new one. One still on its connection is not.
#[tokio::test]
async fn a_removal_is_sent_again_only_once_its_connection_is_replaced() {
    let (node, memory, first) = released_in(Mode::Frozen).await;
    assert_eq!(first.reach, Reach::Unknown { connection: 0 }, "{first:?}");
    node.resend(
        release("a", "t"),
        &first,
        Instant::now() + Duration::from_secs(10),
    );
    // Still on its connection: looked at, at 100 and 300 ms, and not sent again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(node.pending_len(), 1);
    memory.reconnect();
    memory.set_mode(Mode::Up);
    assert!(eventually(|| memory.holder("a").is_none()).await);
    let log: Vec<Kind> = memory.log().into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(
        log,
        [Kind::Acquire, Kind::Release],
        "the lost one never ran"
    );
}

/// On a slow node the removal is still on its connection when it times out: it runs
/// there, once, and is never sent again.
#[tokio::test]
async fn a_removal_that_times_out_on_a_slow_node_is_not_sent_again() {
    let (node, memory, first) = released_in(Mode::Slow(TIMEOUT * 3)).await;
    assert_eq!(first.vote, Vote::Timeout);
    node.resend(
        release("a", "t"),
        &first,
        Instant::now() + Duration::from_millis(500),
    );
    // Kept until its bound, then dropped without a send.
    assert!(eventually(|| node.pending_len() == 0).await);
    assert_eq!(memory.holder("a"), None, "the first one ran, late");
    assert_eq!(memory.log().len(), 2, "the acquisition and the one release");
}

#[tokio::test]
async fn a_removal_is_not_kept_past_its_bound() {
    let (node, memory) = one();
    memory.set_mode(Mode::Down);
    node.resend(
        release("a", "t"),
        &unsent(),
        Instant::now() + Duration::from_millis(150),
    );
    assert_eq!(node.pending_len(), 1);
    assert!(eventually(|| node.pending_len() == 0).await);
    memory.set_mode(Mode::Up);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(memory.log().is_empty(), "nothing was sent");
    // Past its bound already: not kept at all.
    node.resend(release("a", "t"), &unsent(), Instant::now());
    assert_eq!(node.pending_len(), 0);
}

#[tokio::test]
async fn a_retired_node_sends_no_removal_again() {
    let (node, memory) = one();
    memory.set_mode(Mode::Down);
    let until = Instant::now() + Duration::from_secs(60);
    node.resend(release("a", "t"), &unsent(), until);
    tokio::time::sleep(Duration::from_millis(150)).await;
    node.retire();
    assert!(eventually(|| node.pending_len() == 0).await);
    memory.set_mode(Mode::Up);
    // Retired: nothing is kept, nothing is sent.
    node.resend(release("a", "t"), &unsent(), until);
    assert_eq!(node.pending_len(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(memory.log().is_empty());
}

#[tokio::test]
async fn a_removal_the_script_refuses_is_not_sent_again() {
    let (node, memory) = one();
    memory.set_wrong_type("bad");
    let until = Instant::now() + Duration::from_secs(60);
    node.resend(release("bad", "t"), &unsent(), until);
    assert!(eventually(|| node.pending_len() == 0).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(memory.batches(), vec![1], "one send, answered WRONGTYPE");
}

#[tokio::test]
async fn a_node_keeps_at_most_max_pending_removals() {
    let (node, memory) = one();
    memory.set_mode(Mode::Down);
    let until = Instant::now() + Duration::from_secs(60);
    for i in 0..MAX_PENDING + 5 {
        node.resend(release(&format!("r{i}"), "t"), &unsent(), until);
    }
    assert_eq!(node.pending_len(), MAX_PENDING);
    node.retire();
}

fn unsent() -> Answer {
    Answer {
        reach: Reach::Unsent,
        ..Vote::Error("not connected".into()).into()
    }
}

/// A permit's reply names the slot it set by its position from 1 among the
/// operation's keys; a position outside them is a failed vote, not a slot.
#[test]
fn a_permit_reply_naming_no_slot_of_the_operation_is_an_error() {
    let settings = Settings {
        quarantine: Quarantine::Off,
        ..Settings::default()
    };
    let request = Request::permit("jobs", 3, Duration::from_secs(10), &settings).expect("valid");
    let op = Op::acquire(&request, &Arc::from("t"), None, 0);
    let (node, _) = one();
    let granted = node.answer(&op, Reply::List(vec![3]), 0);
    assert_eq!((granted.vote, granted.slot), (Vote::Yes, Some(2)));
    for position in [0, 4, u64::MAX] {
        let answer = node.answer(&op, Reply::List(vec![position]), 0);
        assert!(
            matches!(&answer.vote, Vote::Error(e) if e.starts_with("unexpected reply to a permit")),
            "position {position}: {answer:?}"
        );
        assert_eq!(answer.slot, None);
    }
    let answer = node.answer(&op, Reply::List(vec![3, 1]), 0);
    assert!(matches!(answer.vote, Vote::Error(_)), "{answer:?}");
}
