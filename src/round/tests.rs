//! Round verdicts against in-memory nodes: decided at the quorum, without waiting for
//! the nodes that are slow or frozen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Round;
use crate::node::memory::{self, Mode};
use crate::quorum::{Decision, Vote};
use crate::request::Request;
use crate::scripts::Op;
use crate::settings::Settings;

const TIMEOUT: Duration = Duration::from_millis(200);

fn op(token: &str) -> Op {
    let request = Request::one("r", Duration::from_secs(10), &Settings::default()).expect("valid");
    Op::acquire(&request, &Arc::from(token), None, 0)
}

#[tokio::test]
async fn a_quorum_decides_without_the_frozen_minority() {
    let (nodes, memories) = memory::nodes(5, TIMEOUT);
    memories[3].set_mode(Mode::Frozen);
    memories[4].set_mode(Mode::Frozen);
    let start = Instant::now();
    let mut round = Round::new(&nodes, op("t"));
    assert_eq!(round.decide().await, Decision::Quorum);
    assert!(start.elapsed() < TIMEOUT / 2, "{:?}", start.elapsed());
    let votes = round.votes();
    assert_eq!((votes.yes(), votes.failed()), (3, 0), "{votes}");
    assert!(
        votes.iter().skip(3).all(|v| v.vote == Vote::Pending),
        "{votes}"
    );
}

#[tokio::test]
async fn no_quorum_is_decided_as_soon_as_it_is_out_of_reach() {
    let (nodes, memories) = memory::nodes(5, TIMEOUT);
    for m in &memories[..3] {
        m.set_mode(Mode::Down);
    }
    memories[4].set_mode(Mode::Frozen);
    let start = Instant::now();
    let mut round = Round::new(&nodes, op("t"));
    assert_eq!(round.decide().await, Decision::NoQuorum);
    assert!(start.elapsed() < TIMEOUT / 2, "{:?}", start.elapsed());
    assert_eq!(round.votes().failed(), 3);
}

#[tokio::test]
async fn taken_votes_rule_out_a_quorum() {
    let (nodes, _memories) = memory::nodes(3, TIMEOUT);
    Round::new(&nodes, op("first")).decide().await;
    let mut round = Round::new(&nodes, op("second"));
    assert_eq!(round.decide().await, Decision::NoQuorum);
    assert!(round.tally().taken_rules_out_quorum());
}
