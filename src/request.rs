//! A validated lock request: the resources, their keys on the nodes, and the TTL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::settings::{Quarantine, Settings};
use crate::ttl::Ttl;

/// fredlock's own keys (fencing counters, each node's incarnation marker and
/// quarantine guard) live under the key prefix followed by this; resource names that
/// start with it are refused, so no resource's key under the same prefix is ever one
/// of them. (Clients with different prefixes on the same nodes can still collide: a
/// resource `app:fredlock:fence:x` without a prefix is the counter of `x` under the
/// prefix `app:`.)
pub const RESERVED_PREFIX: &str = "fredlock:";

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
}

impl Request {
    /// One resource.
    pub(crate) fn one(resource: &str, ttl: Duration, settings: &Settings) -> Result<Self, Error> {
        if resource.is_empty() {
            return Err(Error::invalid("resource", "must not be empty"));
        }
        Request::new(vec![Arc::from(resource)], ttl, settings)
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
        })
    }
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
