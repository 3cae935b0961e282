//! The public parts of the lock path that need no network: the quorum size, the clock
//! drift allowance and the `Display` of a round error (what every failed attempt
//! formats when it is logged). The crate-private arithmetic (votes, validity, fencing
//! tokens) has unit tests; what it costs next to a round trip is measured end to end
//! (`benches/end_to_end.rs`, `quorum-bench`).
//!
//! ```sh
//! cargo bench --bench hot_path
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fredlock::fred::prelude::{Client, Config};
use fredlock::{Error, Redlock};

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

criterion_group!(benches, quorum, drift, error_display);
criterion_main!(benches);
