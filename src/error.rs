//! The error type of every fallible fredlock operation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::quorum::Votes;

/// Why a fredlock operation failed.
///
/// The variants tell apart what a caller usually wants to react to differently:
/// somebody else holds the resource ([`Error::Taken`]), the nodes could not be reached
/// ([`Error::NoQuorum`]), the lock came back with too little time left
/// ([`Error::TooLate`]), our lock is gone ([`Error::Expired`]), or the caller asked for
/// something invalid ([`Error::Config`], [`Error::InvalidArgument`]).
///
/// Round errors carry every node's [`Vote`](crate::Vote), so a log line says which node
/// failed and how.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nodes answered that the resource's key holds another token: another owner has
    /// the lock, and no quorum is possible whatever the other nodes say.
    #[error("resource `{resource}` is locked by another owner: {votes}")]
    Taken {
        /// The resource that was asked for.
        resource: String,
        /// Every node's answer in the last attempt.
        votes: Votes,
    },

    /// No quorum because nodes were unreachable, answered with an error or timed out
    /// (possibly together with nodes where the key is taken: the votes tell). The round
    /// is decided as soon as a quorum is out of reach, so nodes that had not answered
    /// by then show as [`Vote::Pending`](crate::Vote::Pending).
    #[error("no quorum for resource `{resource}`: {votes}")]
    NoQuorum {
        /// The resource that was asked for.
        resource: String,
        /// Every node's answer in the last attempt.
        votes: Votes,
    },

    /// A quorum said yes, but the round took so long that the validity left is not
    /// above the configured minimum. At acquisition the keys were removed again; at
    /// extend the lock keeps its former validity.
    #[error(
        "lock on `{resource}` acquired too late: {validity:?} of validity left, \
         but more than {min_validity:?} is required: {votes}"
    )]
    TooLate {
        /// The resource that was asked for.
        resource: String,
        /// The validity left when the quorum was reached.
        validity: Duration,
        /// The configured minimum validity.
        min_validity: Duration,
        /// Every node's answer.
        votes: Votes,
    },

    /// A held lock's fencing counters disagreed among the nodes that raised them, and
    /// too many nodes failed or did not answer the write-back of the largest to a
    /// quorum. No token is handed out; the lock is still held, and asking again makes a
    /// new attempt. (Nodes that answer that the lock is no longer ours make it
    /// [`Error::Expired`] instead.)
    #[error(
        "the fencing token of the lock on `{resource}` could not be recorded on a quorum: \
         {votes}"
    )]
    FencingFailed {
        /// The resource that was asked for.
        resource: String,
        /// Every node's answer to the write-back.
        votes: Votes,
    },

    /// The lock has expired or is no longer held by this owner: its validity ran out
    /// before the operation, or nodes answered that the key no longer holds our token.
    #[error("lock on `{resource}` has expired or is no longer ours: {votes}")]
    Expired {
        /// The locked resource.
        resource: String,
        /// Every node's answer; empty when the validity had already run out on this
        /// client's clock and no request was sent.
        votes: Votes,
    },

    /// A semaphore was asked for with another number of permits than the one its nodes
    /// hold for that name while a permit may still be held: every client of a
    /// semaphore must use the same number. Returned when the nodes that said so alone
    /// rule out a quorum (fewer are failed votes of another error); not retried. A node
    /// forgets the number when a failed attempt leaves no slot there, and otherwise
    /// when the longest TTL given to a permit there has run out (docs/design.md, 1.15).
    #[error(
        "semaphore `{semaphore}` was asked for with {permits} permits, but its nodes hold it \
         with {held}: {votes}"
    )]
    PermitsMismatch {
        /// The semaphore's name.
        semaphore: String,
        /// The number of permits this client asked with.
        permits: u32,
        /// The number a node holds (the first that refused).
        held: u32,
        /// Every node's answer in the attempt.
        votes: Votes,
    },

    /// The lock was lost while [`Redlock::with_lock`](crate::Redlock::with_lock) ran the
    /// protected work: the work was cancelled (dropped) and the lock released in the
    /// background.
    #[error("lock on `{resource}` was lost: {reason}")]
    Lost {
        /// The locked resource.
        resource: String,
        /// Why the lock could no longer be trusted.
        reason: LostReason,
    },

    /// The builder was given an invalid value. `field` names the builder option.
    #[error("invalid configuration: `{field}`: {reason}")]
    Config {
        /// The builder option that is wrong, for example `"drift_factor"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A call was given an invalid argument. `argument` names it.
    #[error("invalid argument `{argument}`: {reason}")]
    InvalidArgument {
        /// The argument that is wrong, for example `"ttl"`.
        argument: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// At `build()`, a node's ACL refused a command fredlock needs (for example `INFO`,
    /// which the restart quarantine uses to read the node's `run_id`). Grant it to the
    /// user fredlock connects as, or turn off what needs it.
    #[error("node {node} refuses the command `{command}` that fredlock needs: {message}")]
    Denied {
        /// The node's address, `host:port`.
        node: String,
        /// The command refused, as the node's reply names it.
        command: String,
        /// The node's reply (`NOPERM ...`).
        message: String,
    },

    /// `build()` could not connect to a quorum of the endpoints within the connect
    /// timeout. Carries each node's connection outcome.
    #[error("could not connect to a quorum of nodes: {votes}")]
    Connect {
        /// Each node: `Yes` if connected, otherwise the error or `Timeout`.
        votes: Votes,
    },
}

impl Error {
    /// The per-node votes carried by round errors, if any.
    pub fn votes(&self) -> Option<&Votes> {
        match self {
            Error::Taken { votes, .. }
            | Error::NoQuorum { votes, .. }
            | Error::TooLate { votes, .. }
            | Error::FencingFailed { votes, .. }
            | Error::Expired { votes, .. }
            | Error::PermitsMismatch { votes, .. }
            | Error::Connect { votes } => Some(votes),
            Error::Lost { reason, .. } => match reason {
                LostReason::ExtendFailed(error) => error.votes(),
                _ => None,
            },
            Error::Config { .. } | Error::InvalidArgument { .. } | Error::Denied { .. } => None,
        }
    }

    /// Whether another attempt (to acquire, extend or make fencing tokens) may
    /// succeed: [`Error::Taken`], [`Error::NoQuorum`], [`Error::TooLate`] and
    /// [`Error::FencingFailed`]. Invalid
    /// input, [`Error::Expired`], [`Error::Lost`], [`Error::Connect`] and
    /// [`Error::Denied`] (`build()` failures) are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Taken { .. }
                | Error::NoQuorum { .. }
                | Error::TooLate { .. }
                | Error::FencingFailed { .. }
        )
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(argument: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }
}

/// Why a lock can no longer be trusted.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LostReason {
    /// The validity ran out on this client's clock.
    Expired,
    /// Keeping the lock alive failed: an extension could not reach a quorum in the
    /// validity that was left, or the nodes answered that the lock is no longer ours.
    /// Signalled as soon as it is known, before the validity ends when possible.
    ExtendFailed(Arc<Error>),
    /// The lock was released or dropped by its holder.
    Released,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Expired => f.write_str("its validity ran out"),
            LostReason::ExtendFailed(error) => write!(f, "keeping it alive failed: {error}"),
            LostReason::Released => f.write_str("it was released"),
        }
    }
}
