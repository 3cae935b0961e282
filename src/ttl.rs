//! A validated lock TTL, made once per request: whole milliseconds as sent to the
//! nodes, its clock drift allowance, and the validity a round leaves.
//!
//! Pure arithmetic on [`Duration`] and [`Instant`]: nothing here can overflow or
//! underflow (every subtraction saturates, every addition is checked).

use std::time::{Duration, Instant};

use crate::error::Error;

/// The largest TTL accepted: 2^40 ms, about 34.8 years.
pub const MAX_TTL: Duration = Duration::from_millis(1 << 40);

/// The fixed part of the clock drift allowance: 1 ms for the precision of Redis key
/// expiry plus 1 ms of minimum drift, as in the reference implementation.
pub const DRIFT_FLOOR: Duration = Duration::from_millis(2);

/// A TTL between 1 ms and [`MAX_TTL`], in whole milliseconds, larger than its drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ttl {
    ms: u64,
    drift: Duration,
}

impl Ttl {
    /// Validates `ttl` (truncated to whole milliseconds) for `drift_factor`.
    pub(crate) fn new(ttl: Duration, drift_factor: f64) -> Result<Ttl, Error> {
        if ttl > MAX_TTL {
            return Err(Error::invalid(
                "ttl",
                format!("{ttl:?} is larger than the maximum {MAX_TTL:?}"),
            ));
        }
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Err(Error::invalid(
                "ttl",
                format!("must be at least 1 ms, got {ttl:?}"),
            ));
        }
        let whole = Duration::from_millis(ms);
        let drift = drift(whole, drift_factor);
        if whole <= drift {
            return Err(Error::invalid(
                "ttl",
                format!("{whole:?} is not larger than the clock drift allowance {drift:?}"),
            ));
        }
        Ok(Ttl { ms, drift })
    }

    /// The TTL, whole milliseconds.
    pub(crate) fn duration(&self) -> Duration {
        Duration::from_millis(self.ms)
    }

    /// The TTL in milliseconds, as the scripts get it (at most 2^40: exact in Lua).
    pub(crate) fn ms(&self) -> u64 {
        self.ms
    }

    #[cfg(test)]
    pub(crate) fn drift(&self) -> Duration {
        self.drift
    }

    /// What a round that took `elapsed` leaves: `ttl - elapsed - drift`, floored at 0.
    pub(crate) fn validity(&self, elapsed: Duration) -> Duration {
        self.duration()
            .saturating_sub(elapsed)
            .saturating_sub(self.drift)
    }

    /// When the validity of a round that began at `start` and took `elapsed` ends.
    pub(crate) fn valid_until(&self, start: Instant, elapsed: Duration) -> Instant {
        let decided = start.checked_add(elapsed).unwrap_or(start);
        decided.checked_add(self.validity(elapsed)).unwrap_or(start)
    }

    /// The earliest a node that applied this TTL in a round begun at `start` expires
    /// the key, less the drift: a bound on a lock some nodes renewed with it.
    pub(crate) fn renewed_until(&self, start: Instant) -> Instant {
        start
            .checked_add(self.duration().saturating_sub(self.drift))
            .unwrap_or(start)
    }
}

/// The clock drift allowance for a TTL: `ttl * drift_factor + 2 ms`.
///
/// The builder validates `drift_factor` to lie in `[0, 1)`; for any other value the
/// whole TTL is returned, which makes every lock fail safe rather than overflow.
pub(crate) fn drift(ttl: Duration, drift_factor: f64) -> Duration {
    let scaled = if (0.0..1.0).contains(&drift_factor) {
        Duration::try_from_secs_f64(ttl.as_secs_f64() * drift_factor).unwrap_or(ttl)
    } else {
        ttl
    };
    scaled.saturating_add(DRIFT_FLOOR)
}

/// Milliseconds for a script argument, at most [`MAX_TTL`]'s (exact in Lua's doubles,
/// and so is a sum of two).
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.min(MAX_TTL).as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bounds() {
        assert!(Ttl::new(Duration::ZERO, 0.01).is_err());
        assert!(Ttl::new(Duration::from_micros(999), 0.01).is_err());
        assert_eq!(Ttl::new(Duration::from_micros(3999), 0.0).unwrap().ms(), 3);
        assert_eq!(Ttl::new(MAX_TTL, 0.01).unwrap().ms(), 1 << 40);
        assert!(Ttl::new(MAX_TTL + MS, 0.01).is_err());
        assert!(Ttl::new(Duration::MAX, 0.01).is_err());
        // Not larger than its drift: 2 ms at factor 0.
        let err = Ttl::new(2 * MS, 0.0).unwrap_err();
        assert!(err.to_string().contains("drift allowance"), "{err}");
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms() {
        let d = drift(Duration::from_secs(10), 0.01);
        assert!(
            d >= 102 * MS && d <= Duration::from_micros(102_001),
            "{d:?}"
        );
        assert_eq!(drift(Duration::from_secs(10), 0.0), DRIFT_FLOOR);
    }

    #[test]
    fn drift_never_panics_or_overflows() {
        for ttl in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            for f in [0.0, 0.5, 0.999_999, 1.0, -1.0, f64::NAN, f64::INFINITY] {
                assert!(drift(ttl, f) >= DRIFT_FLOOR, "ttl={ttl:?} f={f}");
            }
        }
        let half = drift(Duration::MAX, 0.5);
        assert!(half > Duration::MAX / 3 && half < Duration::MAX, "{half:?}");
        assert_eq!(drift(Duration::from_secs(1), f64::NAN), 1002 * MS);
    }

    #[test]
    fn validity_subtracts_elapsed_and_drift_and_floors_at_zero() {
        let ttl = Ttl::new(Duration::from_secs(10), 0.01).unwrap();
        assert_eq!(
            ttl.validity(5 * MS),
            Duration::from_secs(10) - 5 * MS - ttl.drift()
        );
        assert_eq!(ttl.validity(Duration::from_secs(11)), Duration::ZERO);
        assert_eq!(ttl.validity(Duration::MAX), Duration::ZERO);
        let start = Instant::now();
        assert_eq!(
            ttl.valid_until(start, 5 * MS),
            start + 5 * MS + ttl.validity(5 * MS)
        );
        assert_eq!(
            ttl.renewed_until(start),
            start + Duration::from_secs(10) - ttl.drift()
        );
    }

    #[test]
    fn script_milliseconds_are_capped() {
        assert_eq!(ms(Duration::MAX), 1 << 40);
        assert_eq!(ms(1500 * MS), 1500);
    }
}
