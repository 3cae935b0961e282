//! [`Semaphore`] and its [`Permit`]s: at most N holders at once, on a quorum.
//!
//! A semaphore of N permits is N lock keys (its slots). A permit is one slot held as a
//! lock: set on a quorum of nodes, with its own expiry, validity, fencing token,
//! extension and release. Each node sets the first free slot in an order that starts
//! at a random one; a permit needs a quorum of nodes that set the **same** slot. So at
//! most one holder per slot at once, by the lock's own argument, and so at most N
//! holders (docs/design.md, "Semaphores").

use std::sync::Arc;
use std::time::Duration;

use crate::core::Core;
use crate::error::Error;
use crate::lease::Lease;
use crate::lock::Lock;
use crate::request::{Request, check_semaphore};
use crate::retry;

/// A counting semaphore over the nodes of a [`Redlock`](crate::Redlock): at most
/// [`permits`](Semaphore::permits) holders of a [`Permit`] at once.
///
/// Made by [`Redlock::semaphore`](crate::Redlock::semaphore). Cheap to clone. Every
/// client of one semaphore name must use the same number of permits: a client that
/// asks with another number while a permit may still be held gets
/// [`Error::PermitsMismatch`].
///
/// ```no_run
/// use std::time::Duration;
/// # async fn call_the_api() {}
/// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
/// // At most 3 workers call the rate-limited API at once.
/// let api = redlock.semaphore("partner-api", 3)?;
/// let mut permit = api.acquire(Duration::from_secs(10)).await?;
/// permit.keep_alive();
/// call_the_api().await;
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    core: Arc<Core>,
    name: Arc<str>,
    permits: u32,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .finish()
    }
}

impl Semaphore {
    pub(crate) fn new(core: &Arc<Core>, name: &str, permits: u32) -> Result<Self, Error> {
        check_semaphore(name, permits)?;
        Ok(Semaphore {
            core: Arc::clone(core),
            name: name.into(),
            permits,
        })
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of permits: the most holders at once.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Acquires a permit for `ttl`, trying again while the configured retries and
    /// acquire timeout allow, as [`Redlock::lock`](crate::Redlock::lock) does: a waiter
    /// is woken when a permit of this semaphore is released.
    ///
    /// # Errors
    /// [`Error::Taken`] when every permit is held (`resource` is the semaphore's
    /// name), and the other errors of [`Redlock::lock`](crate::Redlock::lock);
    /// [`Error::PermitsMismatch`] at once when the nodes hold this semaphore with
    /// another number of permits; [`Error::InvalidArgument`] for an unusable TTL.
    pub async fn acquire(&self, ttl: Duration) -> Result<Permit, Error> {
        let request = self.request(ttl)?;
        Ok(Permit(retry::lock(&self.core, request).await?))
    }

    /// Makes one attempt to acquire a permit for `ttl`, without retries.
    ///
    /// # Errors
    /// As [`acquire`](Semaphore::acquire).
    pub async fn try_acquire(&self, ttl: Duration) -> Result<Permit, Error> {
        let request = self.request(ttl)?;
        Ok(Permit(retry::once(&self.core, request).await?))
    }

    fn request(&self, ttl: Duration) -> Result<Request, Error> {
        Request::permit(&self.name, self.permits, ttl, &self.core.settings)
    }
}

/// One permit of a [`Semaphore`], held on a quorum of nodes.
///
/// It behaves as a [`Lock`] on one of the semaphore's slots: trusted only while
/// [`remaining`](Permit::remaining) is above zero, extended by hand or kept alive in
/// the background, and released by [`release`](Permit::release) or, when dropped, in
/// the background.
#[derive(Debug)]
pub struct Permit(Lock);

impl Permit {
    /// The semaphore's name.
    pub fn semaphore(&self) -> &str {
        self.0.resource()
    }

    /// The key of the slot this permit holds on the nodes.
    pub fn key(&self) -> &str {
        self.0.key()
    }

    /// The random token stored in the slot.
    pub fn token(&self) -> &str {
        self.0.token()
    }

    /// The fencing token: strictly greater than that of every permit of this
    /// semaphore that asked for one before, under the assumptions of
    /// [`Lock::fencing_token`], and different from that of every permit held at the
    /// same time: it is the semaphore's counter times
    /// [`MAX_PERMITS`](crate::MAX_PERMITS) plus the number of the slot held
    /// (docs/fencing.md, "Permits' tokens"). Made at the first request, as
    /// [`Lock::fencing_token`] does.
    ///
    /// # Errors
    /// As [`Lock::fencing_token`].
    pub async fn fencing_token(&self) -> Result<u64, Error> {
        self.0.fencing_token().await
    }

    /// The validity left on the monotonic clock; zero once it ran out.
    pub fn remaining(&self) -> Duration {
        self.0.remaining()
    }

    /// Whether the permit is still trusted: validity left and no loss signalled.
    pub fn is_valid(&self) -> bool {
        self.0.is_valid()
    }

    /// A cheap, cloneable view for other tasks: the validity and the lost signal.
    pub fn lease(&self) -> Lease {
        self.0.lease()
    }

    /// The votes of the round that granted the permit; see [`Lock::votes`].
    pub fn votes(&self) -> &crate::Votes {
        self.0.votes()
    }

    /// The TTL of the last successful acquire or extend.
    pub fn ttl(&self) -> Duration {
        self.0.ttl()
    }

    /// Keeps the permit alive in the background, as [`Lock::keep_alive`] does.
    pub fn keep_alive(&mut self) {
        self.0.keep_alive();
    }

    /// Extends the permit to `ttl` from now, as [`Lock::extend`] does.
    ///
    /// # Errors
    /// As [`Lock::extend`].
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), Error> {
        self.0.extend(ttl).await
    }

    /// Releases the permit at once, as [`Lock::release`] does, and wakes the
    /// semaphore's waiters.
    ///
    /// # Errors
    /// As [`Lock::release`].
    pub async fn release(self) -> Result<(), Error> {
        self.0.release().await
    }
}
