//! A fenced resource on a Redis node of its own, and the checker of its history.
//!
//! Holders write to the resource through a compare-on-token script: it refuses a token
//! lower than the highest it has accepted and appends every accepted write to a log.
//! Each holder also records, on the run's one monotonic clock, when it sent each write
//! and when the answer came. From both the checker verifies, per resource:
//!
//! 1. the log is in token order: every accepted write carried a token at least as high
//!    as every write accepted before it;
//! 2. the log is the holders' history: it holds exactly the writes the holders were
//!    told were accepted, at the positions they were told;
//! 3. fencing: no write was accepted that was sent after a write with a higher token
//!    had been acknowledged (after the resource knew of a later holder);
//! 4. the lock: no write was accepted that was sent after a later holder had been
//!    granted the lock. A holder within its validity must never do that; a holder
//!    past it can, until the later holder's first write lands (the gap fencing leaves,
//!    counted).

use fred::prelude::Value;

use crate::support::Nodes;

/// `KEYS[1]`: the highest token accepted; `KEYS[2]`: the log of accepted writes.
/// `ARGV[1]`: the writer's token; `ARGV[2]`: the write's id. Returns the write's
/// 1-based position in the log, or 0 when refused. Lua numbers are doubles: exact for
/// the tokens fredlock hands out (below 2^53).
const WRITE: &str = r"
local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < highest then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('RPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
";

/// One write to the fenced resource, as its holder saw it.
#[derive(Clone, Copy, Debug)]
pub struct Write {
    pub id: u64,
    pub token: u64,
    /// Microseconds on the run's clock: just before sending, and when the answer came.
    pub sent: u128,
    pub replied: u128,
    /// Its position in the log when accepted.
    pub position: Option<u64>,
    /// From a holder that worked past its validity on purpose.
    pub overran: bool,
}

/// A holder's grant: when `lock()` returned it, with which token.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    pub at: u128,
    pub token: u64,
}

fn keys(resource: usize) -> [String; 2] {
    [
        format!("fenced:{resource}:highest"),
        format!("fenced:{resource}:log"),
    ]
}

/// Sends one write; returns its position when accepted.
pub async fn write(
    store: &Nodes,
    resource: usize,
    token: u64,
    id: u64,
) -> Result<Option<u64>, fred::error::Error> {
    let [highest, log] = keys(resource);
    let args = vec![
        WRITE.into(),
        2.into(),
        highest.into(),
        log.into(),
        token.to_string().into(),
        id.to_string().into(),
    ];
    match store.cmd(0, "EVAL", args).await? {
        Value::Integer(0) => Ok(None),
        Value::Integer(position) => Ok(u64::try_from(position).ok()),
        other => Err(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            format!("the fenced resource answered {other:?}"),
        )),
    }
}

/// The log of accepted writes, `(token, write id)` in the order they were accepted.
pub async fn log(store: &Nodes, resource: usize) -> Result<Vec<(u64, u64)>, String> {
    let [_, log] = keys(resource);
    let args = vec![log.into(), 0.into(), (-1).into()];
    let entries = match store.cmd(0, "LRANGE", args).await {
        Ok(Value::Array(entries)) => entries,
        other => return Err(format!("LRANGE answered {other:?}")),
    };
    entries
        .into_iter()
        .map(|entry| {
            let text = entry.as_string().unwrap_or_default();
            let (token, id) = text.split_once(' ').ok_or(format!("log entry {text:?}"))?;
            let parse = |s: &str| s.parse::<u64>().map_err(|e| format!("{text:?}: {e}"));
            Ok((parse(token)?, parse(id)?))
        })
        .collect()
}

/// What the checker found on one resource.
#[derive(Debug, Default)]
pub struct Findings {
    pub accepted: usize,
    pub refused: usize,
    /// Check 1: log entries whose token is below an earlier entry's.
    pub out_of_order: Vec<String>,
    /// Check 2: differences between the log and the holders' history.
    pub mismatched: Vec<String>,
    /// Check 3: accepted writes sent after a higher token's write was acknowledged.
    pub stale_accepted: Vec<Write>,
    /// Check 4, holders within their validity: accepted writes sent after a later
    /// holder was granted the lock.
    pub after_takeover: Vec<Write>,
    /// Check 4, overrunning holders: the same, counted (fencing's gap).
    pub overrun_after_takeover: usize,
    /// Writes of overrunning holders that the resource refused.
    pub overrun_refused: usize,
}

impl Findings {
    pub fn violations(&self) -> usize {
        self.out_of_order.len()
            + self.mismatched.len()
            + self.stale_accepted.len()
            + self.after_takeover.len()
    }
}

/// Checks one resource's log against its holders' writes and grants.
pub fn check(log: &[(u64, u64)], writes: &[Write], grants: &[Grant]) -> Findings {
    let mut found = Findings::default();
    let mut highest = 0;
    for (i, (token, id)) in log.iter().enumerate() {
        if *token < highest {
            found.out_of_order.push(format!(
                "entry {} (write {id}) has token {token} after {highest}",
                i + 1
            ));
        }
        highest = highest.max(*token);
    }

    let accepted: Vec<&Write> = writes.iter().filter(|w| w.position.is_some()).collect();
    found.accepted = accepted.len();
    found.refused = writes.len() - accepted.len();
    found.overrun_refused = writes
        .iter()
        .filter(|w| w.overran && w.position.is_none())
        .count();
    if accepted.len() != log.len() {
        found.mismatched.push(format!(
            "{} writes were told they were accepted, the log holds {}",
            accepted.len(),
            log.len()
        ));
    }
    for w in &accepted {
        let position = w.position.unwrap_or(0);
        let entry = usize::try_from(position)
            .ok()
            .and_then(|p| p.checked_sub(1))
            .and_then(|p| log.get(p));
        if entry != Some(&(w.token, w.id)) {
            found.mismatched.push(format!(
                "write {} (token {}) told position {position}, the log has {entry:?}",
                w.id, w.token
            ));
        }
    }

    // Check 3: the highest token acknowledged before each write was sent.
    let acknowledged = HighestBefore::new(accepted.iter().map(|w| (w.replied, w.token)));
    for w in &accepted {
        if acknowledged.at(w.sent) > w.token {
            found.stale_accepted.push(**w);
        }
    }

    // Check 4: the highest token granted before each write was sent.
    let granted = HighestBefore::new(grants.iter().map(|g| (g.at, g.token)));
    for w in &accepted {
        if granted.at(w.sent) > w.token {
            if w.overran {
                found.overrun_after_takeover += 1;
            } else {
                found.after_takeover.push(**w);
            }
        }
    }
    found
}

/// The highest token among events `(time, token)` strictly before a given time.
struct HighestBefore {
    /// The events' times, in order, and the running maximum of their tokens.
    times: Vec<u128>,
    highest: Vec<u64>,
}

impl HighestBefore {
    fn new(events: impl Iterator<Item = (u128, u64)>) -> HighestBefore {
        let mut events: Vec<(u128, u64)> = events.collect();
        events.sort_unstable();
        let times = events.iter().map(|(t, _)| *t).collect();
        let highest = events
            .iter()
            .scan(0, |max, (_, token)| {
                *max = (*token).max(*max);
                Some(*max)
            })
            .collect();
        HighestBefore { times, highest }
    }

    /// 0 when nothing came before `at`.
    fn at(&self, at: u128) -> u64 {
        let n = self.times.partition_point(|t| *t < at);
        n.checked_sub(1).map_or(0, |i| self.highest[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: u64, token: u64, sent: u128, position: Option<u64>) -> Write {
        Write {
            id,
            token,
            sent,
            replied: sent + 1,
            position,
            overran: false,
        }
    }

    #[test]
    fn a_clean_history_has_no_findings() {
        let writes = [
            write(1, 5, 10, Some(1)),
            write(2, 5, 20, Some(2)),
            write(3, 7, 30, Some(3)),
        ];
        let grants = [Grant { at: 5, token: 5 }, Grant { at: 25, token: 7 }];
        let found = check(&[(5, 1), (5, 2), (7, 3)], &writes, &grants);
        assert_eq!(found.violations(), 0, "{found:?}");
        assert_eq!((found.accepted, found.refused), (3, 0));
    }

    #[test]
    fn each_kind_of_violation_is_found() {
        // A log out of token order.
        let writes = [write(1, 7, 10, Some(1)), write(2, 5, 20, Some(2))];
        let found = check(&[(7, 1), (5, 2)], &writes, &[]);
        assert_eq!(found.out_of_order.len(), 1, "{found:?}");
        // The stale write was sent after token 7's write was acknowledged (at 11).
        assert_eq!(found.stale_accepted.len(), 1, "{found:?}");

        // A write the holder was told was accepted, missing from the log.
        let found = check(&[], &[write(1, 5, 10, Some(1))], &[]);
        assert_eq!(found.mismatched.len(), 2, "{found:?}");

        // A holder within its validity wrote after a later holder was granted the
        // lock, before that holder wrote: the resource cannot tell; the lock broke.
        let writes = [write(1, 5, 30, Some(1)), write(2, 7, 40, Some(2))];
        let grants = [Grant { at: 5, token: 5 }, Grant { at: 25, token: 7 }];
        let found = check(&[(5, 1), (7, 2)], &writes, &grants);
        assert_eq!(found.after_takeover.len(), 1, "{found:?}");
        assert_eq!(found.stale_accepted.len(), 0, "{found:?}");

        // The same from a holder past its validity on purpose: counted, not a
        // violation.
        let mut late = writes;
        late[0].overran = true;
        let found = check(&[(5, 1), (7, 2)], &late, &grants);
        assert_eq!(found.violations(), 0, "{found:?}");
        assert_eq!(found.overrun_after_takeover, 1);
    }
}
