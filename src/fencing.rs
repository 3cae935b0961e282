//! Fencing tokens, the pure part: the floor a client proposes for the counters, and
//! the tokens handed out from the counters a quorum returned (docs/fencing.md).

/// The largest fencing floor sent: 2^53 - 2^40. Lua's numbers are doubles, exact up to
/// 2^53; a clock far in the future (past the year 2250) is held here, leaving 2^40
/// increments below the limit where the script refuses to count further.
pub(crate) const MAX_FENCING_FLOOR: u64 = (1 << 53) - (1 << 40);

/// The floor proposed for fencing counters: this client's clock in microseconds since
/// the Unix epoch (0 if the clock is before it), taken once per attempt so that every
/// node gets the same one, and at most [`MAX_FENCING_FLOOR`]. Only a floor: the
/// counters, not the clock, make the tokens increase.
pub(crate) fn floor() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    micros.min(MAX_FENCING_FLOOR)
}

/// A semaphore's most slots (`MAX_PERMITS`): a permit's token keeps its slot's number
/// below this.
pub(crate) const PERMIT_SLOTS: u64 = 1024;

/// A permit's fencing token: its semaphore's counter times [`PERMIT_SLOTS`] plus the
/// number of the slot it holds. Permits held at once hold different slots, so their
/// tokens differ; and a permit whose counter is greater than another's has the greater
/// token whatever their slots, so the order of the counters (docs/fencing.md) is kept.
/// Exact for every counter the scripts hand out (below 2^53, and 2^53 × 1024 = 2^63).
pub(crate) fn permit_token(counter: u64, slot: usize) -> u64 {
    let slot = u64::try_from(slot).unwrap_or(u64::MAX) % PERMIT_SLOTS;
    counter.saturating_mul(PERMIT_SLOTS).saturating_add(slot)
}

/// The fencing tokens to hand out, from the counters that the nodes that voted yes
/// returned (one list per node, one counter per resource): per resource, the maximum.
/// Also whether they must be written back to a quorum first: not when, for every
/// resource, at least `quorum` of those nodes already hold its maximum. `None` without
/// any yes vote or with lists of different lengths.
pub(crate) fn tokens(yes: &[&[u64]], quorum: usize) -> Option<(Vec<u64>, bool)> {
    let first = yes.first()?;
    if yes.iter().any(|f| f.len() != first.len()) {
        return None;
    }
    let tokens: Vec<u64> = (0..first.len())
        .map(|i| yes.iter().map(|f| f[i]).max().unwrap_or(0))
        .collect();
    let write_back = tokens
        .iter()
        .enumerate()
        .any(|(i, max)| yes.iter().filter(|f| f[i] == *max).count() < quorum);
    Some((tokens, write_back))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_stays_exact_in_lua() {
        assert_eq!((MAX_FENCING_FLOOR as f64) as u64, MAX_FENCING_FLOOR);
        assert!(floor() <= MAX_FENCING_FLOOR);
        assert!(floor() > 1_700_000_000_000_000);
    }

    #[test]
    fn permit_tokens_differ_by_slot_and_keep_the_counters_order() {
        assert_ne!(permit_token(7, 0), permit_token(7, 1));
        assert!(permit_token(8, 0) > permit_token(7, 1023));
        let largest = (1 << 53) - 1;
        assert_eq!(permit_token(largest, 1023), u64::MAX >> 1);
        assert!(permit_token(largest, 1023) > permit_token(largest - 1, 1023));
    }

    #[test]
    fn tokens_take_the_maximum_and_write_back_only_when_needed() {
        assert_eq!(tokens(&[&[7], &[7], &[7]], 3), Some((vec![7], false)));
        // A lagging node in the quorum: write back.
        assert_eq!(tokens(&[&[7], &[5], &[7]], 3), Some((vec![7], true)));
        // More yes votes than the quorum: enough already at the maximum.
        assert_eq!(tokens(&[&[7], &[5], &[7], &[7]], 3), Some((vec![7], false)));
        // Per resource.
        assert_eq!(
            tokens(&[&[3, 9], &[4, 8], &[4, 9]], 2),
            Some((vec![4, 9], false))
        );
        assert_eq!(
            tokens(&[&[3, 9], &[4, 8], &[4, 7]], 2),
            Some((vec![4, 9], true))
        );
        assert_eq!(tokens(&[], 1), None);
        assert_eq!(tokens(&[&[1], &[1, 2]], 1), None);
    }
}
