//! The validated settings a [`Redlock`](crate::Redlock) runs with: every option's
//! default, the restart quarantine, and the retry pauses they give.

use std::time::Duration;

use rand::Rng;

/// Default number of retries after the first attempt when no acquire timeout is set.
pub const DEFAULT_RETRY_COUNT: u32 = 3;
/// Default fixed part of the delay between two attempts.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Default random part of the delay between two attempts.
pub const DEFAULT_RETRY_JITTER: Duration = Duration::from_millis(100);
/// Default clock drift factor: 1% of the TTL.
pub const DEFAULT_DRIFT_FACTOR: f64 = 0.01;
/// Default bound on every request to one node.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(50);
/// Default bound on connecting to the nodes in `build()`, and on each reconnection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default delay between two reconnection attempts to a node that is down.
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Default share of the validity left when the keep-alive task extends a lock.
pub const DEFAULT_KEEP_ALIVE_AT: f64 = 0.5;

/// Default restart quarantine period, and so the longest TTL accepted by default.
pub const DEFAULT_QUARANTINE_PERIOD: Duration = Duration::from_secs(60);
/// Default time a resource's fencing counter outlives its last lock: a lock per job id
/// that asks for a fencing token leaves one key per node for at most its TTL plus this
/// (one that does not ask leaves none).
pub const DEFAULT_FENCING_RETENTION: Duration = Duration::from_secs(60);

/// The restart quarantine: how long a node that lost or changed its data stays out of
/// acquisitions. Such a node may have forgotten locks it granted; counted at once, it
/// could help a second client win a second majority for a resource that is still
/// locked. See docs/safety.md.
///
/// The acquisition script compares the node's `run_id` (new on every start of the
/// server process, and different on a promoted replica) with the one fredlock recorded
/// on the node; a missing or different record (a restart, with or without a snapshot,
/// a `FLUSHALL`, a failover) starts the quarantine on that node, for every client, in
/// the same atomic step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quarantine {
    /// No quarantine: for nodes that keep every write across restarts (`appendonly yes`
    /// with `appendfsync always`) and never fail over to a replica.
    Off,
    /// Keep such a node out for this long from the moment any client notices. It must
    /// be at least the longest TTL any client of the deployment uses, so locks with a
    /// longer TTL (at acquire and at extend) are refused (`InvalidArgument` naming
    /// `restart_quarantine`). Give every client the same period; the default,
    /// [`DEFAULT_QUARANTINE_PERIOD`], is one all clients share without configuration.
    Period(Duration),
}

impl Default for Quarantine {
    /// `Period(DEFAULT_QUARANTINE_PERIOD)`.
    fn default() -> Self {
        Quarantine::Period(DEFAULT_QUARANTINE_PERIOD)
    }
}

/// A [`Redlock`]'s settings: every option of its builder, checked by
/// [`Builder::build`](crate::Builder::build) before a `Redlock` runs with them.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Retries after the first attempt (`u32::MAX`: until the acquire deadline).
    pub(crate) retry_count: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) retry_jitter: Duration,
    pub(crate) drift_factor: f64,
    pub(crate) node_timeout: Duration,
    pub(crate) min_validity: Duration,
    pub(crate) key_prefix: String,
    pub(crate) acquire_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    /// For the clients fredlock creates from URLs.
    pub(crate) reconnect_delay: Duration,
    pub(crate) keep_alive_at: f64,
    pub(crate) quarantine: Quarantine,
    pub(crate) fencing_retention: Duration,
}

/// Every option's default.
impl Default for Settings {
    fn default() -> Self {
        Settings {
            retry_count: DEFAULT_RETRY_COUNT,
            retry_delay: DEFAULT_RETRY_DELAY,
            retry_jitter: DEFAULT_RETRY_JITTER,
            drift_factor: DEFAULT_DRIFT_FACTOR,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            min_validity: Duration::ZERO,
            key_prefix: String::new(),
            acquire_timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_delay: DEFAULT_RECONNECT_DELAY,
            keep_alive_at: DEFAULT_KEEP_ALIVE_AT,
            quarantine: Quarantine::default(),
            fencing_retention: DEFAULT_FENCING_RETENTION,
        }
    }
}

impl Settings {
    /// The pause before the next attempt (or keep-alive renewal).
    pub(crate) fn retry_pause(&self, rng: &mut impl Rng) -> Duration {
        retry_pause(self.retry_delay, self.retry_jitter, rng)
    }

    /// How long a writer that will try again claims a key that readers hold: the
    /// longest it takes to come back to a node (the rest of its attempt, its round and
    /// the removal of its token; the pause, or the cleanup if longer; the next send),
    /// each part bounded by a node timeout.
    pub(crate) fn writer_claim(&self) -> Duration {
        (self.retry_delay)
            .saturating_add(self.retry_jitter)
            .saturating_add(self.node_timeout.saturating_mul(4))
    }
}

/// The pause before the next attempt: `delay + uniform(0..=jitter)`.
pub(crate) fn retry_pause(delay: Duration, jitter: Duration, rng: &mut impl Rng) -> Duration {
    let jitter_ns = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
    delay.saturating_add(Duration::from_nanos(rng.random_range(0..=jitter_ns)))
}

/// The pause of a waiter woken by a release before it tries: up to one round trip
/// (`round_trip`, its last attempt's), divided by the attempts it has made. Woken
/// waiters then reach the nodes spread over about a round trip instead of splitting
/// the votes, and those that have waited longer go first.
pub(crate) fn wake_jitter(round_trip: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    retry_pause(Duration::ZERO, round_trip, rng) / attempt.saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::HashSet;

    #[test]
    fn wake_jitter_scales_with_the_round_trip_and_favours_older_waiters() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for rtt in [Duration::from_micros(200), Duration::from_millis(40)] {
            let first: Vec<Duration> = (0..1000).map(|_| wake_jitter(rtt, 0, &mut rng)).collect();
            assert!(first.iter().all(|j| *j <= rtt));
            // Spread over the round trip: some near its end, not all near zero.
            assert!(first.iter().any(|j| *j > rtt * 3 / 4), "{rtt:?}");
            let later: Vec<Duration> = (0..1000).map(|_| wake_jitter(rtt, 3, &mut rng)).collect();
            assert!(later.iter().all(|j| *j <= rtt / 4), "{rtt:?}");
        }
        assert_eq!(wake_jitter(Duration::ZERO, 0, &mut rng), Duration::ZERO);
        assert!(wake_jitter(Duration::MAX, u32::MAX, &mut rng) <= Duration::MAX);
    }

    #[test]
    fn retry_pause_stays_within_delay_plus_jitter_and_varies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (delay, jitter) = (Duration::from_millis(100), Duration::from_millis(100));
        let pauses: Vec<Duration> = (0..1000)
            .map(|_| retry_pause(delay, jitter, &mut rng))
            .collect();
        assert!(pauses.iter().all(|p| *p >= delay && *p <= delay + jitter));
        let distinct: HashSet<_> = pauses.iter().collect();
        assert!(distinct.len() > 900, "jitter should spread the pauses");
        let low = pauses.iter().filter(|p| **p < delay + jitter / 2).count();
        assert!(
            (400..=600).contains(&low),
            "roughly uniform: {low} of 1000 in the lower half"
        );
        assert_eq!(retry_pause(delay, Duration::ZERO, &mut rng), delay);
        assert_eq!(
            retry_pause(Duration::MAX, Duration::MAX, &mut rng),
            Duration::MAX
        );
    }

    #[test]
    fn a_writers_claim_covers_the_pause_and_four_node_timeouts_and_saturates() {
        let ms = Duration::from_millis;
        assert_eq!(Settings::default().writer_claim(), ms(100 + 100 + 4 * 50));
        let largest = Settings {
            retry_delay: Duration::MAX,
            node_timeout: Duration::MAX,
            ..Settings::default()
        };
        assert_eq!(largest.writer_claim(), Duration::MAX);
    }
}
