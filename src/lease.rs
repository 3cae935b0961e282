//! [`Lease`]: a cheap, cloneable view of a held lock for other tasks, and its
//! fencing tokens.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::core::Core;
use crate::error::{Error, LostReason};
use crate::protocol;
use crate::request::Request;
use crate::shared::Shared;

/// A view of a held lock, cheap to clone and to move into tasks: its resource, token,
/// validity and fencing tokens, and the signal that it was lost.
///
/// ```no_run
/// use std::time::Duration;
/// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
/// let mut lock = redlock.lock("reindex", Duration::from_secs(10)).await?;
/// lock.keep_alive();
/// let lease = lock.lease();
/// tokio::select! {
///     reason = lease.lost() => eprintln!("stopped: the lock was lost: {reason}"),
///     () = async { /* the protected work */ } => {}
/// }
/// lock.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lease {
    pub(crate) core: Arc<Core>,
    /// The request as held (its TTL is the acquisition's; `Shared` has the latest).
    pub(crate) request: Request,
    pub(crate) token: Arc<str>,
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("resource", &self.request.resource)
            .field("remaining", &self.remaining())
            .field("lost", &self.shared.lost_reason())
            .finish()
    }
}

impl Lease {
    /// The locked resource.
    pub fn resource(&self) -> &str {
        &self.request.resource
    }

    /// The lock's random token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lock's fencing token (the first resource's, for several); see
    /// [`Lock::fencing_token`](crate::Lock::fencing_token). The lock and its leases
    /// share one set of tokens, made at the first request from any of them.
    ///
    /// # Errors
    /// As [`Lock::fencing_token`](crate::Lock::fencing_token).
    pub async fn fencing_token(&self) -> Result<u64, Error> {
        let tokens = self.fencing_tokens().await?;
        Ok(tokens.first().copied().unwrap_or(0))
    }

    /// The fencing tokens, one per resource; see
    /// [`Lock::fencing_tokens`](crate::Lock::fencing_tokens).
    ///
    /// # Errors
    /// As [`Lock::fencing_token`](crate::Lock::fencing_token).
    pub async fn fencing_tokens(&self) -> Result<Arc<[u64]>, Error> {
        fencing_tokens(&self.core, &self.request, &self.token, &self.shared).await
    }

    /// The validity left on the monotonic clock; zero once it ran out.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// Whether the lock is still trusted: validity left and no loss signalled.
    pub fn is_valid(&self) -> bool {
        self.remaining() > Duration::ZERO && self.shared.lost_reason().is_none()
    }

    /// Resolves as soon as the lock can no longer be trusted, with the reason: its
    /// validity ran out, keeping it alive failed, or it was released. Resolves at once
    /// if that already happened. Cancel-safe.
    pub async fn lost(&self) -> LostReason {
        self.shared.lost().await
    }
}

/// The held lock's fencing tokens: made by one fencing round at the first request
/// (concurrent requests wait for it), then the same for every later one. A round that
/// failed makes none: the next request tries again. The round does not wait for an
/// extension in flight, nor an extension for it: the keep-alive's renewals keep their
/// schedule.
pub(crate) async fn fencing_tokens(
    core: &Core,
    request: &Request,
    token: &Arc<str>,
    shared: &Shared,
) -> Result<Arc<[u64]>, Error> {
    let fences = shared
        .fences
        .get_or_try_init(|| protocol::fence(core, request, token, shared))
        .await?;
    Ok(Arc::clone(fences))
}
