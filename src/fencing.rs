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
