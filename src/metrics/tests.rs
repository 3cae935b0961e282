//! The labels of every outcome, lost reason and vote.

use std::sync::Arc;
use std::time::Duration;

use super::enabled::{lost_label, outcome, vote_label};
use crate::error::{Error, LostReason};
use crate::quorum::{Vote, Votes};

#[test]
fn labels_name_every_outcome_reason_and_vote() {
    let votes = Votes::default();
    let resource = String::new;
    let errors = [
        (
            Error::Taken {
                resource: resource(),
                votes: votes.clone(),
            },
            "taken",
        ),
        (
            Error::NoQuorum {
                resource: resource(),
                votes: votes.clone(),
            },
            "no_quorum",
        ),
        (
            Error::TooLate {
                resource: resource(),
                validity: Duration::ZERO,
                min_validity: Duration::ZERO,
                votes: votes.clone(),
            },
            "too_late",
        ),
        (
            Error::FencingFailed {
                resource: resource(),
                votes: votes.clone(),
            },
            "fencing_failed",
        ),
        (Error::invalid("ttl", "zero"), "other"),
    ];
    for (error, label) in errors {
        assert_eq!(outcome(&error), label, "{error}");
    }
    let extend_failed = LostReason::ExtendFailed(Arc::new(Error::Expired {
        resource: resource(),
        votes,
    }));
    assert_eq!(lost_label(&LostReason::Expired, || false), Some("expired"));
    assert_eq!(lost_label(&extend_failed, || false), Some("extend_failed"));
    assert_eq!(lost_label(&LostReason::Released, || false), None);
    assert_eq!(lost_label(&LostReason::Released, || true), Some("expired"));
    let labels: Vec<&str> = [
        Vote::Yes,
        Vote::Taken,
        Vote::Error("x".into()),
        Vote::Timeout,
        Vote::Pending,
    ]
    .iter()
    .map(vote_label)
    .collect();
    assert_eq!(labels, ["yes", "taken", "error", "timeout", "pending"]);
}
