//! The parts of the lock path that need no network: token generation, vote counting,
//! the validity arithmetic and fencing tokens (crate-private, reached through the hidden
//! `fredlock::__bench` module), the quorum size, the clock drift allowance and the
//! `Display` of a round error with its votes (what every failed attempt formats when it
//! is logged).
//!
//! ```sh
//! cargo bench --bench hot_path
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fredlock::__bench;
use fredlock::fred::prelude::{Client, Config};
use fredlock::{Error, Redlock, Vote};

/// A `Redlock` over clients that never connect: `from_clients(..).build()` does not
/// connect, and `drift` does not touch the nodes.
fn offline_redlock(runtime: &tokio::runtime::Runtime, n: u16) -> Redlock {
    runtime.block_on(async {
        let clients = (0..n).map(|i| {
            let url = format!("redis://127.0.0.1:{}", 1 + i);
            Client::new(Config::from_url(&url).expect("url"), None, None, None)
        });
        Redlock::from_clients(clients)
            .build()
            .await
            .expect("builds without connecting")
    })
}

fn token(c: &mut Criterion) {
    c.bench_function("token", |b| b.iter(__bench::new_token));
}

fn votes(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    // A healthy round: the third yes of five decides.
    let healthy = [Vote::Yes, Vote::Yes, Vote::Yes, Vote::Yes, Vote::Yes];
    // Two nodes down and one taken: decided on the fifth vote.
    let failing = [
        Vote::Timeout,
        Vote::Yes,
        Vote::Error("not connected: Connection refused".into()),
        Vote::Yes,
        Vote::Taken,
    ];
    group.bench_function("n=5/quorum", |b| {
        b.iter(|| __bench::decide(5, black_box(&healthy)))
    });
    group.bench_function("n=5/no_quorum", |b| {
        b.iter(|| __bench::decide(5, black_box(&failing)))
    });
    group.finish();
}

fn validity(c: &mut Criterion) {
    c.bench_function("validity", |b| {
        b.iter(|| {
            __bench::validity(
                black_box(Duration::from_secs(10)),
                black_box(Duration::from_micros(420)),
                black_box(0.01),
            )
        })
    });
}

fn fencing(c: &mut Criterion) {
    let agreeing: [&[u64]; 3] = [&[1_764_300_000_000_001]; 3];
    let differing: [&[u64]; 3] = [
        &[1_764_300_000_000_001],
        &[1_764_300_000_000_007],
        &[1_764_300_000_000_003],
    ];
    let mut group = c.benchmark_group("fencing_tokens");
    group.bench_function("agree", |b| {
        b.iter(|| __bench::fencing_tokens(black_box(&agreeing), 3))
    });
    group.bench_function("write_back", |b| {
        b.iter(|| __bench::fencing_tokens(black_box(&differing), 3))
    });
    group.finish();
}

fn quorum(c: &mut Criterion) {
    c.bench_function("quorum/n=1..=9", |b| {
        b.iter(|| {
            (1..=9usize)
                .map(|n| fredlock::quorum(black_box(n)))
                .sum::<usize>()
        })
    });
}

fn drift(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redlock = offline_redlock(&runtime, 5);
    let mut group = c.benchmark_group("drift");
    for ttl in [
        Duration::from_millis(250),
        Duration::from_secs(10),
        fredlock::MAX_TTL,
    ] {
        group.bench_function(format!("ttl={ttl:?}"), |b| {
            b.iter(|| redlock.drift(black_box(ttl)))
        });
    }
    group.finish();
    runtime.block_on(redlock.quit());
}

fn error_display(c: &mut Criterion) {
    let error = Error::Taken {
        resource: "nightly-report".into(),
        votes: Default::default(),
    };
    c.bench_function("error_display/taken", |b| {
        b.iter(|| black_box(&error).to_string())
    });
}

criterion_group!(
    benches,
    token,
    votes,
    validity,
    fencing,
    quorum,
    drift,
    error_display
);
criterion_main!(benches);
