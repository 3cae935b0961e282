//! The fencing round of a held lock: its counters raised on the nodes that still hold
//! it, written back to a quorum when they disagree (docs/fencing.md).

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::{expired_error, outcome_label, record, verdict};
use crate::core::Core;
use crate::error::{Error, LostReason};
use crate::fencing;
use crate::metrics::RoundKind;
use crate::quorum::{Decision, Vote, Votes};
use crate::request::Request;
use crate::round::Round;
use crate::scripts::Op;
use crate::shared::Shared;

/// The fencing tokens of a held lock, one per resource: a round raises the counters
/// on the nodes that still hold our keys, and when the largest is not on a quorum, a
/// second round writes it back to a quorum. Handed out only if the rounds ended while
/// the lock was valid.
pub(crate) async fn fence(
    core: &Core,
    request: &Request,
    token: &Arc<str>,
    shared: &Shared,
) -> Result<Arc<[u64]>, Error> {
    let span = round_span!("fredlock.fence", request);
    let result = fence_in(core, request, token, shared, &span)
        .instrument(span.clone())
        .await;
    if let Err(error) = &result {
        span.record("outcome", outcome_label(error));
    }
    result
}

async fn fence_in(
    core: &Core,
    request: &Request,
    token: &Arc<str>,
    shared: &Shared,
    span: &tracing::Span,
) -> Result<Arc<[u64]>, Error> {
    let resource = || request.resource.to_string();
    let expired = |votes| Error::Expired {
        resource: resource(),
        votes,
    };
    if shared.remaining().is_zero() || shared.lost_reason().is_some() {
        return Err(expired(Votes::default()));
    }
    let start = Instant::now();
    let retention = core.settings.fencing_retention;
    let op = Op::fence(request, token, fencing::floor(), retention);
    // A round without a quorum: nodes that say the keys are not ours rule the lock out
    // (it is lost); otherwise `NoQuorum`.
    let refused = |round: &Round| {
        let error = verdict(request, round.tally(), round.votes(), expired_error);
        if matches!(error, Error::Expired { .. }) {
            shared.mark_lost(LostReason::ExtendFailed(Arc::new(error.clone())));
        }
        error
    };
    let mut round = Round::new(&core.nodes, op);
    let decision = round.decide().await;
    round.count_votes(RoundKind::Fence);
    if decision == Decision::NoQuorum {
        return Err(refused(&round));
    }
    let yes: Vec<&[u64]> = (round.answers().iter().flatten())
        .filter(|a| a.vote == Vote::Yes)
        .map(|a| a.fences.as_slice())
        .collect();
    let Some((counters, write_back)) = fencing::tokens(&yes, core.quorum()) else {
        return Err(Error::FencingFailed {
            resource: resource(),
            votes: round.votes(),
        });
    };
    let counters: Arc<[u64]> = counters.into();
    if write_back {
        let op = Op::catch_up(request, token, &counters, retention);
        let mut catch_up = Round::new(&core.nodes, op);
        // The first round's calls still running are polled meanwhile: a node's next
        // operation may wait for its call in flight to end (1.9).
        if round.listen_during(catch_up.decide()).await == Decision::NoQuorum {
            // Failed nodes leave the lock held, without a token.
            return Err(match refused(&catch_up) {
                Error::NoQuorum { resource, votes } => Error::FencingFailed { resource, votes },
                error => error,
            });
        }
    }
    // Only a holder may hand out a token: the rounds must end within the validity.
    if Instant::now() >= shared.valid_until() || shared.lost_reason().is_some() {
        return Err(expired(round.votes()));
    }
    if !span.is_disabled() {
        record(span, &round.votes(), start.elapsed(), None, "fenced");
    }
    Ok(request.tokens(counters))
}
