//! A validated lock request: the resources, their keys on the nodes, and the TTL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::fencing;
use crate::settings::{Quarantine, Settings};
use crate::ttl::Ttl;

/// fredlock's own keys (fencing counters, each node's incarnation marker and
/// quarantine guard) live under the key prefix followed by this; resource names that
/// start with it are refused, so no resource's key under the same prefix is ever one
/// of them. (Clients with different prefixes on the same nodes can still collide: a
/// resource `app:fredlock:fence:x` without a prefix is the counter of `x` under the
/// prefix `app:`.)
pub const RESERVED_PREFIX: &str = "fredlock:";

/// The most permits a semaphore may have: an acquisition carries one key per permit.
pub const MAX_PERMITS: u32 = 1024;

/// How a request holds its key.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// Exclusively: a lock, or the writer of a read-write lock.
    Write,
    /// Shared with other readers, excluding writers.
    Read,
    /// One of a semaphore's permits: a slot that is a lock key of its own.
    Permit(Arc<Semaphore>),
}

/// A semaphore's keys on a node: its record (the number of permits, while any may be
/// held) and one slot per permit.
#[derive(Debug)]
pub(crate) struct Semaphore {
    pub(crate) record: Arc<str>,
    pub(crate) permits: u32,
    slots: Arc<[Arc<str>]>,
}

impl Semaphore {
    /// Every slot, starting from `first` and going round.
    pub(crate) fn slots_from(&self, first: usize) -> Arc<[Arc<str>]> {
        let first = first % self.slots.len().max(1);
        let (before, after) = self.slots.split_at(first);
        after.iter().chain(before).cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

/// The resources of one lock, with their keys and TTL.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    /// The resource name; for several resources, their names joined by `", "`.
    pub(crate) resource: Arc<str>,
    pub(crate) resources: Arc<[Arc<str>]>,
    /// One key per resource: the key prefix followed by the resource name.
    pub(crate) keys: Arc<[Arc<str>]>,
    /// One fencing-counter key per resource, in the reserved namespace.
    pub(crate) fence_keys: Arc<[Arc<str>]>,
    pub(crate) ttl: Ttl,
    pub(crate) mode: Mode,
}

impl Request {
    /// One resource.
    pub(crate) fn one(resource: &str, ttl: Duration, settings: &Settings) -> Result<Self, Error> {
        if resource.is_empty() {
            return Err(Error::invalid("resource", "must not be empty"));
        }
        Request::new(vec![Arc::from(resource)], ttl, settings)
    }

    /// A read lock on one resource (the same key as its writer's).
    pub(crate) fn read(resource: &str, ttl: Duration, settings: &Settings) -> Result<Self, Error> {
        Ok(Request {
            mode: Mode::Read,
            ..Request::one(resource, ttl, settings)?
        })
    }

    /// A permit of the semaphore `name` with `permits` permits. Its keys are the slots
    /// until one is granted ([`held_slot`](Request::held_slot)); they live in
    /// fredlock's namespace, apart from the locks'.
    pub(crate) fn permit(
        name: &str,
        permits: u32,
        ttl: Duration,
        settings: &Settings,
    ) -> Result<Self, Error> {
        check_semaphore(name, permits)?;
        let prefix = &settings.key_prefix;
        let slots: Arc<[Arc<str>]> = (0..permits)
            .map(|i| Arc::from(format!("{prefix}{RESERVED_PREFIX}permit:{i}:{name}")))
            .collect();
        let semaphore = Semaphore {
            record: format!("{prefix}{RESERVED_PREFIX}semaphore:{name}").into(),
            permits,
            slots: Arc::clone(&slots),
        };
        Ok(Request {
            resource: name.into(),
            resources: Arc::from([Arc::from(name)]),
            keys: slots,
            fence_keys: Arc::from([Arc::from(format!(
                "{prefix}{RESERVED_PREFIX}permit-fence:{name}"
            ))]),
            ttl: checked_ttl(ttl, settings)?,
            mode: Mode::Permit(Arc::new(semaphore)),
        })
    }

    /// The request as held once `key` (one of a permit's slots) was granted.
    pub(crate) fn held_slot(&self, key: &Arc<str>) -> Self {
        Request {
            keys: Arc::from([Arc::clone(key)]),
            ..self.clone()
        }
    }

    /// The fencing tokens a held request hands out: the counters; for a permit, each
    /// counter's permit token for the slot held ([`fencing::permit_token`]), so that
    /// permits held at once never share one.
    pub(crate) fn tokens(&self, counters: Arc<[u64]>) -> Arc<[u64]> {
        let slot = self.semaphore().and_then(|semaphore| {
            let held = self.keys.first()?;
            semaphore.slots.iter().position(|slot| slot == held)
        });
        match slot {
            Some(slot) => counters
                .iter()
                .map(|&counter| fencing::permit_token(counter, slot))
                .collect(),
            None => counters,
        }
    }

    pub(crate) fn semaphore(&self) -> Option<&Arc<Semaphore>> {
        match &self.mode {
            Mode::Permit(semaphore) => Some(semaphore),
            Mode::Write | Mode::Read => None,
        }
    }

    /// The keys whose release wakes a waiter: a semaphore's record, for any of its
    /// permits; otherwise the lock's keys.
    pub(crate) fn wake_keys(&self) -> Arc<[Arc<str>]> {
        match &self.mode {
            Mode::Permit(semaphore) => Arc::from([Arc::clone(&semaphore.record)]),
            Mode::Write | Mode::Read => Arc::clone(&self.keys),
        }
    }

    /// Several resources: at least one, none empty, no duplicates.
    pub(crate) fn many(
        resources: &[&str],
        ttl: Duration,
        settings: &Settings,
    ) -> Result<Self, Error> {
        if resources.is_empty() {
            return Err(Error::invalid(
                "resources",
                "at least one resource is required",
            ));
        }
        let mut seen = HashSet::new();
        for resource in resources {
            if resource.is_empty() {
                return Err(Error::invalid("resources", "a resource name is empty"));
            }
            if !seen.insert(*resource) {
                return Err(Error::invalid(
                    "resources",
                    format!("`{resource}` is listed twice"),
                ));
            }
        }
        Request::new(
            resources.iter().map(|r| Arc::from(*r)).collect(),
            ttl,
            settings,
        )
    }

    /// The same resources for another TTL.
    pub(crate) fn retimed(&self, ttl: Duration, settings: &Settings) -> Result<Self, Error> {
        Ok(Request {
            ttl: checked_ttl(ttl, settings)?,
            ..self.clone()
        })
    }

    fn new(resources: Vec<Arc<str>>, ttl: Duration, settings: &Settings) -> Result<Self, Error> {
        let argument = if resources.len() == 1 {
            "resource"
        } else {
            "resources"
        };
        if let Some(reserved) = resources.iter().find(|r| r.starts_with(RESERVED_PREFIX)) {
            return Err(Error::invalid(
                argument,
                format!(
                    "`{reserved}` is in fredlock's reserved namespace: names starting with \
                     `{RESERVED_PREFIX}` hold its counters and markers"
                ),
            ));
        }
        let ttl = checked_ttl(ttl, settings)?;
        let prefix = &settings.key_prefix;
        let keys = resources
            .iter()
            .map(|r| Arc::from(format!("{prefix}{r}")))
            .collect();
        let fence_keys = resources
            .iter()
            .map(|r| Arc::from(format!("{prefix}{RESERVED_PREFIX}fence:{r}")))
            .collect();
        let resource = resources
            .iter()
            .map(|r| &**r)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Request {
            resource: resource.into(),
            resources: resources.into(),
            keys,
            fence_keys,
            ttl,
            mode: Mode::Write,
        })
    }
}

/// A semaphore's name and number of permits, as `Redlock::semaphore` accepts them.
pub(crate) fn check_semaphore(name: &str, permits: u32) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if permits == 0 {
        return Err(Error::invalid(
            "permits",
            "must be at least 1: a semaphore without permits could never be acquired",
        ));
    }
    if permits > MAX_PERMITS {
        return Err(Error::invalid(
            "permits",
            format!(
                "{permits} is more than {MAX_PERMITS}: an acquisition carries one key per \
                 permit"
            ),
        ));
    }
    Ok(())
}

/// A TTL valid for the drift factor and within the restart quarantine period.
fn checked_ttl(ttl: Duration, settings: &Settings) -> Result<Ttl, Error> {
    let checked = Ttl::new(ttl, settings.drift_factor)?;
    if let Quarantine::Period(period) = settings.quarantine {
        if checked.duration() > period {
            return Err(Error::invalid(
                "ttl",
                format!(
                    "{:?} is longer than the restart_quarantine period {period:?}: a node \
                     that lost its data would vote again while this lock may still be \
                     held. Use a shorter TTL with keep_alive(), or raise \
                     Builder::restart_quarantine on every client",
                    checked.duration()
                ),
            ));
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permits_token_carries_the_number_of_the_slot_it_holds() {
        assert_eq!(fencing::PERMIT_SLOTS, u64::from(MAX_PERMITS));
        let settings = Settings::default();
        let ttl = Duration::from_secs(1);
        let permit = Request::permit("api", 3, ttl, &settings).unwrap();
        // Tried from slot 2: positions 0, 1, 2 are slots 2, 0, 1.
        let counters: Arc<[u64]> = Arc::from([5]);
        for (position, slot) in [(0, 2), (1, 0), (2, 1)] {
            assert_eq!(
                permit.semaphore().unwrap().slots_from(2)[position].as_ref(),
                format!("fredlock:permit:{slot}:api")
            );
            let key = &permit.semaphore().unwrap().slots_from(2)[position];
            let held = permit.held_slot(key);
            assert_eq!(held.tokens(Arc::clone(&counters))[0], 5 * 1024 + slot);
        }
        // A lock's tokens are its counters.
        let lock = Request::one("api", ttl, &settings).unwrap();
        assert_eq!(lock.tokens(Arc::clone(&counters))[0], 5);
    }

    #[test]
    fn keys_take_the_prefix_and_counters_the_reserved_namespace() {
        let settings = Settings {
            key_prefix: "app:".into(),
            ..Settings::default()
        };
        let r = Request::many(&["a", "b"], Duration::from_secs(1), &settings).unwrap();
        assert_eq!(&*r.resource, "a, b");
        assert_eq!(&*r.keys[1], "app:b");
        assert_eq!(&*r.fence_keys[0], "app:fredlock:fence:a");
    }

    #[test]
    fn bad_requests_name_the_argument() {
        let s = Settings::default();
        let second = Duration::from_secs(1);
        let argument = |e: Error| match e {
            Error::InvalidArgument { argument, .. } => argument,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            argument(Request::one("", second, &s).unwrap_err()),
            "resource"
        );
        assert_eq!(
            argument(Request::many(&[], second, &s).unwrap_err()),
            "resources"
        );
        assert_eq!(
            argument(Request::many(&["a", "a"], second, &s).unwrap_err()),
            "resources"
        );
        assert_eq!(
            argument(Request::one("fredlock:x", second, &s).unwrap_err()),
            "resource"
        );
        let long = Request::one("a", Duration::from_secs(61), &s).unwrap_err();
        assert!(long.to_string().contains("restart_quarantine"), "{long}");
        let off = Settings {
            quarantine: Quarantine::Off,
            ..Settings::default()
        };
        assert!(Request::one("a", Duration::from_secs(61), &off).is_ok());
    }
}
