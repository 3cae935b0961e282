//! Symmetry reduction: nodes are interchangeable, and so are clients, so the checker
//! needs to explore one state of each class of states that differ only by their names.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::State;
use super::node::Token;

/// A canonical member of the state's class under renaming the nodes and the clients.
/// Nodes are interchangeable, and so are clients (same start, same bounds, no property
/// names one), so the checker needs to explore one state of each class. Nodes are
/// ordered by a hash of their column (their keys, their wires, the votes for them);
/// of the orders of the clients, the one whose state hashes lowest is kept. A hash
/// collision only costs some reduction, never soundness: the result is always the
/// same state with nodes and clients renamed.
pub fn representative(s: &State) -> State {
    let mut clients: Vec<usize> = (0..s.clients.len()).collect();
    let mut best: Option<(u64, State)> = None;
    loop {
        let r = order_nodes(&rename_clients(s, &clients));
        let h = hash(&r);
        if best.as_ref().is_none_or(|(b, _)| h < *b) {
            best = Some((h, r));
        }
        if !next_permutation(&mut clients) {
            break;
        }
    }
    best.map_or_else(|| s.clone(), |(_, r)| r)
}

fn hash(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
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

/// Client `j` of the result is client `order[j]` of `s`, and tokens follow.
fn rename_clients(s: &State, order: &[usize]) -> State {
    let n = s.nodes.len();
    let mut new_id = vec![0u8; order.len()];
    for (j, &i) in order.iter().enumerate() {
        new_id[i] = j as u8;
    }
    let rename = |t: Token| Token {
        client: new_id[usize::from(t.client)],
        ..t
    };
    let mut r = s.clone();
    for (j, &i) in order.iter().enumerate() {
        r.clients[j] = s.clients[i].clone();
        for node in 0..n {
            r.wires[j * n + node] = s.wires[i * n + node]
                .iter()
                .map(|&(t, round, op)| (rename(t), round, op))
                .collect();
            r.lossy[j * n + node] = s.lossy[i * n + node];
        }
    }
    for node in &mut r.nodes {
        node.key = node.key.map(|(t, until)| (rename(t), until));
    }
    r
}

/// Nodes ordered by a hash of their column.
fn order_nodes(s: &State) -> State {
    let (n, k) = (s.nodes.len(), s.clients.len());
    let column = |i: usize| {
        let wires: Vec<_> = (0..k)
            .map(|c| {
                (
                    &s.wires[c * n + i],
                    s.lossy[c * n + i],
                    s.clients[c].ballot(i),
                )
            })
            .collect();
        hash(&(&s.nodes[i], wires))
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_cached_key(|&i| column(i));
    let mut r = s.clone();
    for (j, &i) in order.iter().enumerate() {
        r.nodes[j] = s.nodes[i].clone();
        for c in 0..k {
            r.wires[c * n + j] = s.wires[c * n + i].clone();
            r.lossy[c * n + j] = s.lossy[c * n + i];
        }
    }
    for client in &mut r.clients {
        client.permute(&order);
    }
    r
}
