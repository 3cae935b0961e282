//! The protocol: acquire, extend, fence and release, each a short function over one
//! round of the fan-out (`round`), with the validity arithmetic of `ttl` and the
//! fencing tokens of `fencing`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::task::JoinHandle;
use tracing::Instrument;
use tracing::field::display;

use crate::acquisition::Acquisition;
use crate::core::Core;
use crate::error::{Error, LostReason};
use crate::metrics::{self, RoundKind};
use crate::quorum::{Decision, Tally, Votes};
use crate::request::Request;
use crate::round::Round;
use crate::scripts::Op;
use crate::shared::Shared;

/// Bytes of CSPRNG output in a lock token (hex-encoded: 40 characters).
const TOKEN_BYTES: usize = 20;

/// A lock granted by one attempt.
pub(crate) struct Granted {
    /// The request as held: for a permit, the slot granted.
    pub(crate) held: Request,
    pub(crate) token: Arc<str>,
    pub(crate) valid_until: Instant,
    /// The votes of the round that granted it, for `Lock::votes`.
    pub(crate) votes: Votes,
}

/// A failed attempt: its error, and the task still removing its token from the nodes
/// that had not answered.
pub(crate) struct Failed {
    pub(crate) error: Error,
    pub(crate) cleanup: Option<JoinHandle<()>>,
}

/// The span of one round, at DEBUG: the resource, then what the round records.
macro_rules! round_span {
    ($name:literal, $request:expr $(, $field:ident)*) => {
        tracing::debug_span!(
            $name,
            resource = %$request.resource,
            $($field,)*
            outcome = tracing::field::Empty,
            votes = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
            validity_ms = tracing::field::Empty,
        )
    };
}

/// One acquisition attempt: the round and the validity left; on failure our token is
/// removed.
pub(crate) async fn acquire(
    core: &Core,
    request: &Request,
    attempt: u32,
) -> Result<Granted, Failed> {
    acquire_then_retry(core, request, attempt, false).await
}

/// [`acquire`] for an attempt that another will follow if it fails: a writer that
/// finds readers then claims the resource on the nodes until its next attempt, so
/// that new readers cannot keep it out for ever.
pub(crate) async fn acquire_then_retry(
    core: &Core,
    request: &Request,
    attempt: u32,
    retry_follows: bool,
) -> Result<Granted, Failed> {
    let span = round_span!("fredlock.acquire", request, attempt);
    let claim = retry_follows.then(|| core.settings.writer_claim());
    acquire_in(core, request, claim, &span)
        .instrument(span.clone())
        .await
}

async fn acquire_in(
    core: &Core,
    request: &Request,
    claim: Option<Duration>,
    span: &tracing::Span,
) -> Result<Granted, Failed> {
    let token: Arc<str> = new_token().into();
    let start = Instant::now();
    // A permit's free slots are tried from a random one on: clients that race for
    // free permits mostly ask for different ones.
    let first_slot = request
        .semaphore()
        .map_or(0, |s| rand::random_range(0..s.len().max(1)));
    let op = Op::acquire(request, &token, core.quarantine(), first_slot).claiming(claim);
    // Dropped before its verdict (this future was dropped), it removes our token from
    // every node in the background.
    let mut acquisition = Acquisition::new(&core.nodes, op);
    let decision = acquisition.decide().await;
    let elapsed = start.elapsed();
    let validity = request.ttl.validity(elapsed);
    let min_validity = core.settings.min_validity;
    if decision == Decision::Quorum && validity > min_validity {
        let held = match acquisition.best_slot() {
            Some((_, key)) => request.held_slot(key),
            None => request.clone(),
        };
        let votes = acquisition.round().votes();
        metrics::votes(RoundKind::Acquire, &votes);
        if !span.is_disabled() {
            record(span, &votes, elapsed, Some(validity), "acquired");
        }
        acquisition.keep();
        return Ok(Granted {
            held,
            token,
            valid_until: request.ttl.valid_until(start, elapsed),
            votes,
        });
    }
    let permits_held = acquisition.permits_held(core.quorum());
    // Our token is removed from the nodes that set it before the error is returned
    // (they answered quickly: one more fast round trip); the others remove it in the
    // background, after their own acquisition, so a late SET is undone too.
    let (votes, tally, cleanup) = acquisition.give_up().await;
    metrics::votes(RoundKind::Acquire, &votes);
    let resource = request.resource.to_string();
    let error = if let (Some(held), Some(semaphore)) = (permits_held, request.semaphore()) {
        Error::PermitsMismatch {
            semaphore: resource,
            permits: semaphore.permits,
            held,
            votes,
        }
    } else if decision == Decision::Quorum {
        Error::TooLate {
            resource,
            validity,
            min_validity,
            votes,
        }
    } else {
        verdict(request, tally, votes, |resource, votes| Error::Taken {
            resource,
            votes,
        })
    };
    if let Some(votes) = error.votes() {
        record(span, votes, elapsed, Some(validity), outcome_label(&error));
    }
    tracing::debug!(parent: span, %error, "attempt failed");
    Err(Failed { error, cleanup })
}

/// One extension round for `request.ttl`, updating the shared validity: renewed from
/// this round trip on success; on failure kept, but shortened to what the nodes that
/// applied a shorter TTL allow, and marked lost when the nodes say it is not ours.
pub(crate) async fn extend(
    core: &Core,
    request: &Request,
    token: &Arc<str>,
    shared: &Shared,
) -> Result<(), Error> {
    let span = round_span!("fredlock.extend", request);
    let result = extend_in(core, request, token, shared, &span)
        .instrument(span.clone())
        .await;
    // An extension refused before any request records only its outcome.
    if let Err(error) = &result {
        span.record("outcome", outcome_label(error));
    }
    result
}

async fn extend_in(
    core: &Core,
    request: &Request,
    token: &Arc<str>,
    shared: &Shared,
    span: &tracing::Span,
) -> Result<(), Error> {
    let expired = |votes| Error::Expired {
        resource: request.resource.to_string(),
        votes,
    };
    if shared.remaining().is_zero() || shared.lost_reason().is_some() {
        // Nothing is sent: the lock is already known lost (`lost()` says why).
        return Err(expired(Votes::default()));
    }
    let start = Instant::now();
    // The counters are renewed with the keys once fencing tokens were handed out.
    let retention = shared.fenced().then_some(core.settings.fencing_retention);
    let mut round = Round::new(&core.nodes, Op::extend(request, token, retention));
    let decision = round.decide().await;
    round.count_votes(RoundKind::Extend);
    let elapsed = start.elapsed();
    let validity = request.ttl.validity(elapsed);
    let min_validity = core.settings.min_validity;
    let error = if decision == Decision::NoQuorum {
        verdict(request, round.tally(), round.votes(), expired_error)
    } else if start + elapsed >= shared.valid_until() {
        // The quorum must be reached while the lock was still valid.
        expired(round.votes())
    } else if validity <= min_validity {
        Error::TooLate {
            resource: request.resource.to_string(),
            validity,
            min_validity,
            votes: round.votes(),
        }
    } else {
        if !span.is_disabled() {
            record(span, &round.votes(), elapsed, Some(validity), "extended");
        }
        shared.set_valid_until(request.ttl.valid_until(start, elapsed));
        return Ok(());
    };
    if let Some(votes) = error.votes() {
        record(span, votes, elapsed, Some(validity), outcome_label(&error));
    }
    // The nodes that renewed the key expire it `ttl` after the round began at the
    // earliest; the others at their former time. The lock lasts no longer than the
    // sooner of the two: a failed extend with a shorter TTL shortens it.
    let renewed_until = request.ttl.renewed_until(start);
    if renewed_until < shared.valid_until() {
        shared.set_valid_until(renewed_until);
    }
    if matches!(error, Error::Expired { .. }) {
        // The nodes say the key is no longer ours, or the quorum came too late: the
        // lock cannot be trusted any more, whatever its deadline says.
        shared.mark_lost(LostReason::ExtendFailed(Arc::new(error.clone())));
    }
    Err(error)
}

/// A compare-and-delete round. Returns at the decision; the calls to the other nodes
/// run on in the background, so every node deletes our key. `was_valid`: whether the
/// lock was still valid when the release began; if not, the keys are still removed
/// but the outcome is [`Error::Expired`].
pub(crate) async fn release(
    core: &Core,
    request: &Request,
    token: &Arc<str>,
    was_valid: bool,
) -> Result<(), Error> {
    let span = round_span!("fredlock.release", request);
    let start = Instant::now();
    let op = Arc::new(Op::release(request, token));
    let mut round = Round::shared(&core.nodes, &op);
    let decision = round.decide().instrument(span.clone()).await;
    round.count_votes(RoundKind::Release);
    // The nodes the release may not have reached, now or once they answer, are sent
    // it again until the keys have expired: a node that comes back keeps no key of ours.
    round.resend_unreached(
        &op,
        start.checked_add(request.ttl.duration()).unwrap_or(start),
    );
    let result = match decision {
        Decision::Quorum if was_valid => Ok(()),
        Decision::Quorum => Err(Error::Expired {
            resource: request.resource.to_string(),
            votes: round.votes(),
        }),
        Decision::NoQuorum => Err(verdict(
            request,
            round.tally(),
            round.votes(),
            expired_error,
        )),
    };
    if !span.is_disabled() {
        let outcome = result.as_ref().map_or_else(outcome_label, |()| "released");
        record(&span, &round.votes(), start.elapsed(), None, outcome);
    }
    result
}

/// The error of a round without a quorum: `taken` (the `Taken` answers alone rule
/// out a quorum: another owner has the resource, or our lock is gone), else
/// [`Error::NoQuorum`].
fn verdict(
    request: &Request,
    tally: Tally,
    votes: Votes,
    taken: impl FnOnce(String, Votes) -> Error,
) -> Error {
    let resource = request.resource.to_string();
    if tally.taken_rules_out_quorum() {
        taken(resource, votes)
    } else {
        Error::NoQuorum { resource, votes }
    }
}

fn expired_error(resource: String, votes: Votes) -> Error {
    Error::Expired { resource, votes }
}

/// Records a round's end in its span (a release has no validity to record).
fn record(
    span: &tracing::Span,
    votes: &Votes,
    elapsed: Duration,
    validity: Option<Duration>,
    outcome: &str,
) {
    span.record("votes", display(votes));
    span.record("elapsed_us", elapsed.as_micros());
    if let Some(validity) = validity {
        span.record("validity_ms", validity.as_millis());
    }
    span.record("outcome", outcome);
}

fn outcome_label(error: &Error) -> &'static str {
    match error {
        Error::Taken { .. } => "taken",
        Error::NoQuorum { .. } => "no_quorum",
        Error::TooLate { .. } => "too_late",
        Error::FencingFailed { .. } => "fencing_failed",
        Error::Expired { .. } => "expired",
        Error::PermitsMismatch { .. } => "permits_mismatch",
        _ => "error",
    }
}

/// A fresh token: [`TOKEN_BYTES`] bytes from the thread-local CSPRNG, hex-encoded.
fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let mut hex = String::with_capacity(TOKEN_BYTES * 2);
    for b in bytes {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    hex
}

mod fence;
#[cfg(test)]
mod tests;

pub(crate) use fence::fence;
