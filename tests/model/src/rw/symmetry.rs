//! Symmetry reduction of the read-write model: the readers are interchangeable, and so
//! are the two nodes the writer reaches (the far node is not).

use std::hash::{DefaultHasher, Hash, Hasher};

use super::node::Key;
use super::{NODES, State, Token};

/// A canonical member of the state's class under renaming the readers and swapping
/// nodes 0 and 1: of the renamings, the one whose state hashes lowest (a collision
/// only costs some reduction; the result is always the same state renamed).
pub fn representative(s: &State) -> State {
    let mut readers: Vec<usize> = (1..s.clients.len()).collect();
    let mut best: Option<(u64, State)> = None;
    loop {
        for swap in [false, true] {
            let r = rename(s, &readers, swap);
            let mut h = DefaultHasher::new();
            r.hash(&mut h);
            let h = h.finish();
            if best.as_ref().is_none_or(|(b, _)| h < *b) {
                best = Some((h, r));
            }
        }
        if !next_permutation(&mut readers) {
            break;
        }
    }
    best.map_or_else(|| s.clone(), |(_, r)| r)
}

/// The lexicographically next permutation, or `false` after the last.
fn next_permutation(p: &mut [usize]) -> bool {
    let Some(i) = (1..p.len()).rev().find(|&i| p[i - 1] < p[i]) else {
        return false;
    };
    let j = (i..p.len()).rev().find(|&j| p[j] > p[i - 1]).unwrap_or(i);
    p.swap(i - 1, j);
    p[i..].reverse();
    true
}

/// Reader `j + 1` of the result is reader `order[j]` of `s` (tokens follow); with
/// `swap`, nodes 0 and 1 trade places.
fn rename(s: &State, order: &[usize], swap: bool) -> State {
    let mut new_id: Vec<u8> = (0..s.clients.len() as u8).collect();
    for (j, &i) in order.iter().enumerate() {
        new_id[i] = (j + 1) as u8;
    }
    let token = |t: Token| Token {
        client: new_id[usize::from(t.client)],
        ..t
    };
    let node = |n: usize| if swap && n < 2 { 1 - n } else { n };
    let mut r = s.clone();
    for (c, &to) in new_id.iter().enumerate() {
        let to = usize::from(to);
        let mut client = s.clients[c].clone();
        if !client.votes.is_empty() {
            client.votes = (0..NODES).map(|n| s.clients[c].votes[node(n)]).collect();
        }
        r.clients[to] = client;
        for n in 0..NODES {
            r.wires[to * NODES + node(n)] = s.wires[c * NODES + n]
                .iter()
                .map(|&(t, op)| (token(t), op))
                .collect();
        }
    }
    for n in 0..NODES {
        r.keys[node(n)] = match &s.keys[n] {
            Key::Writer(t, until) => Key::Writer(token(*t), *until),
            Key::Set { readers, claim } => {
                let mut readers: Vec<_> = readers.iter().map(|&(t, u)| (token(t), u)).collect();
                readers.sort();
                Key::Set {
                    readers,
                    claim: *claim,
                }
            }
            Key::Free => Key::Free,
        };
    }
    r
}
