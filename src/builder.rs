//! The builder: every option and its validation.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;

use crate::connect;
use crate::error::Error;
use crate::node::Node;
use crate::settings::*;
use crate::ttl::MAX_TTL;

/// Where the nodes come from.
enum Source {
    Urls(Vec<String>),
    Clients(Vec<Client>),
}

/// Configures and connects a [`Redlock`](crate::Redlock). Made by
/// [`Redlock::builder`](crate::Redlock::builder) or
/// [`Redlock::from_clients`](crate::Redlock::from_clients).
///
/// ```no_run
/// use std::time::Duration;
/// use fredlock::Redlock;
///
/// # async fn run() -> Result<(), fredlock::Error> {
/// let redlock = Redlock::builder([
///     "redis://10.0.0.1:6379",
///     "redis://10.0.0.2:6379",
///     "redis://:secret@10.0.0.3:6379",
/// ])
/// .node_timeout(Duration::from_millis(20))
/// .retry_delay(Duration::from_millis(50))
/// .key_prefix("locks:")
/// .build()
/// .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `.build().await`"]
pub struct Builder {
    source: Source,
    /// The options as set; [`validate`](Builder::validate) checks them.
    settings: Settings,
    /// Resolved by `validate`: its default depends on whether a deadline is set.
    retry_count: Option<u32>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = match &self.source {
            Source::Urls(urls) => urls.len(),
            Source::Clients(clients) => clients.len(),
        };
        f.debug_struct("Builder")
            .field("nodes", &nodes)
            .field("retry_count", &self.retry_count)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Builder {
    fn new(source: Source) -> Self {
        Builder {
            source,
            settings: Settings::default(),
            retry_count: None,
        }
    }

    pub(crate) fn from_urls(urls: Vec<String>) -> Self {
        Builder::new(Source::Urls(urls))
    }

    pub(crate) fn from_clients(clients: Vec<Client>) -> Self {
        Builder::new(Source::Clients(clients))
    }

    /// How many times [`Redlock::lock`](crate::Redlock::lock) tries again after a failed
    /// attempt.
    ///
    /// Default: 3, or unlimited (until the deadline) when an
    /// [`acquire_timeout`](Self::acquire_timeout) is set.
    pub fn retry_count(mut self, retries: u32) -> Self {
        self.retry_count = Some(retries);
        self
    }

    /// The fixed part of the pause between two attempts. Default: 100 ms.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.settings.retry_delay = delay;
        self
    }

    /// The random part of the pause between two attempts: each pause is
    /// `retry_delay + uniform(0..=retry_jitter)`, so competing clients fall out of step
    /// instead of splitting the votes again and again. Default: 100 ms.
    pub fn retry_jitter(mut self, jitter: Duration) -> Self {
        self.settings.retry_jitter = jitter;
        self
    }

    /// The clock drift factor: the validity of a lock is
    /// `ttl - elapsed - (ttl * drift_factor + 2 ms)`. Must be in `[0, 1)`.
    /// Default: 0.01.
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.settings.drift_factor = factor;
        self
    }

    /// The bound on every request to one node (acquire, extend, release). A node that
    /// does not answer within it is a failed vote. Should be small next to the TTL;
    /// at most [`MAX_TTL`](crate::MAX_TTL). Default: 50 ms.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.settings.node_timeout = timeout;
        self
    }

    /// A lock is granted only if more than this much validity is left once the quorum
    /// is reached. Default: zero (any positive validity).
    pub fn min_validity(mut self, min: Duration) -> Self {
        self.settings.min_validity = min;
        self
    }

    /// A prefix put before every resource name to make its key. Default: none, so the
    /// key is the resource name and fredlock excludes other Redlock clients that lock
    /// the same resource on the same nodes.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.key_prefix = prefix.into();
        self
    }

    /// Bounds the total wait of [`Redlock::lock`](crate::Redlock::lock): no attempt starts
    /// unless it can end before this deadline (give or take the lateness of a timer on a
    /// busy runtime).
    /// Without an explicit [`retry_count`](Self::retry_count), `lock()` then retries
    /// until the deadline. Must be at least the node timeout.
    /// Default: none (the retry count bounds the wait).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.settings.acquire_timeout = Some(timeout);
        self
    }

    /// How long `build()` waits for the nodes to connect, and the bound on each
    /// reconnection attempt; at most [`MAX_TTL`](crate::MAX_TTL). Default: 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// The pause between two reconnection attempts to a node that is down; a node that
    /// comes back is used again without any action by the caller. Default: 100 ms.
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.settings.reconnect_delay = delay;
        self
    }

    /// When a kept-alive lock ([`Lock::keep_alive`](crate::Lock::keep_alive),
    /// [`Redlock::with_lock`](crate::Redlock::with_lock)) is extended: once this share of
    /// its validity is left. Must be in `(0, 1)`. Default: 0.5.
    pub fn keep_alive_at(mut self, share: f64) -> Self {
        self.settings.keep_alive_at = share;
        self
    }

    /// The restart quarantine: how long a node that lost or changed its data stays out
    /// of acquisitions, and so the longest TTL accepted. Default:
    /// `Quarantine::Period(DEFAULT_QUARANTINE_PERIOD)` (60 s). While a node is
    /// quarantined, the cluster tolerates one failure fewer. A fresh deployment's nodes
    /// are quarantined by the first acquisition; see
    /// [`Redlock::lift_restart_quarantine`](crate::Redlock::lift_restart_quarantine).
    /// Every client of a deployment should use the same setting.
    pub fn restart_quarantine(mut self, quarantine: Quarantine) -> Self {
        self.settings.quarantine = quarantine;
        self
    }

    /// How long a resource's fencing counter outlives its lock on each node. Counters
    /// exist only for locks that asked for a fencing token: the fencing round gives a
    /// counter this beyond its lock key's life on the node, and each later extension of
    /// that lock the new TTL plus this, so a resource used once leaves no key behind
    /// after that. A counter that expired comes back at the asking client's clock
    /// (docs/fencing.md): tokens keep increasing as long as no two clients' clocks
    /// differ by more than this. Default: 60 s; at most [`MAX_TTL`](crate::MAX_TTL).
    pub fn fencing_retention(mut self, retention: Duration) -> Self {
        self.settings.fencing_retention = retention;
        self
    }

    /// Validates the configuration and connects the nodes: all of
    /// [`build`](Builder::build) but making the client. Also whether fredlock created
    /// the clients (and so closes them).
    pub(crate) async fn connect(self) -> Result<(Arc<[Arc<Node>]>, Settings, bool), Error> {
        let settings = self.validate()?;
        match self.source {
            Source::Urls(urls) => {
                let nodes = connect::from_urls(&urls, &settings).await?;
                Ok((nodes, settings, true))
            }
            Source::Clients(clients) => {
                let nodes = connect::from_clients(clients, &settings).await?;
                Ok((nodes, settings, false))
            }
        }
    }

    /// Validates every option except the endpoints.
    fn validate(&self) -> Result<Settings, Error> {
        let set = &self.settings;
        if !(set.drift_factor.is_finite() && (0.0..1.0).contains(&set.drift_factor)) {
            return Err(Error::config(
                "drift_factor",
                format!("must be in [0, 1), got {}", set.drift_factor),
            ));
        }
        if !(set.keep_alive_at.is_finite() && set.keep_alive_at > 0.0 && set.keep_alive_at < 1.0) {
            return Err(Error::config(
                "keep_alive_at",
                format!("must be in (0, 1), got {}", set.keep_alive_at),
            ));
        }
        if let Quarantine::Period(period) = set.quarantine {
            if period.is_zero() {
                return Err(Error::config(
                    "restart_quarantine",
                    "a zero period quarantines nothing: use Quarantine::Off to mean that",
                ));
            }
            if period > MAX_TTL {
                return Err(Error::config(
                    "restart_quarantine",
                    format!("{period:?} is longer than the longest TTL ({MAX_TTL:?})"),
                ));
            }
        }
        if set.fencing_retention > MAX_TTL {
            return Err(Error::config(
                "fencing_retention",
                format!(
                    "{:?} is longer than the longest TTL ({MAX_TTL:?})",
                    set.fencing_retention
                ),
            ));
        }
        for (name, timeout) in [
            ("node_timeout", set.node_timeout),
            ("connect_timeout", set.connect_timeout),
        ] {
            if timeout.is_zero() {
                return Err(Error::config(name, "must be greater than zero"));
            }
            // Deadlines are `Instant::now() + timeout`: keep that far from overflowing.
            if timeout > MAX_TTL {
                return Err(Error::config(
                    name,
                    format!("{timeout:?} is longer than the longest TTL ({MAX_TTL:?})"),
                ));
            }
        }
        if let Some(deadline) = set.acquire_timeout {
            if deadline < set.node_timeout {
                return Err(Error::config(
                    "acquire_timeout",
                    format!(
                        "{deadline:?} is shorter than one attempt (node_timeout {:?})",
                        set.node_timeout
                    ),
                ));
            }
        }
        let retry_count = match (self.retry_count, set.acquire_timeout) {
            (Some(n), _) => n,
            (None, Some(_)) => u32::MAX,
            (None, None) => DEFAULT_RETRY_COUNT,
        };
        Ok(Settings {
            retry_count,
            ..set.clone()
        })
    }
}

#[cfg(test)]
mod tests;
