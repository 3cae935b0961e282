//! Acquire/release cycles end to end (`try_lock` + `release`) against a throwaway
//! cluster of Redis containers on this host: one at a time for 1, 3 and 5 nodes (each
//! operation goes out alone), and 64 at once on 5 nodes (operations that meet a call
//! in flight reach each node in one batch). Needs Docker and the
//! image named by `FREDLOCK_REDIS_IMAGE` (see `scripts/redis-image.sh`); without Docker
//! it says so and measures nothing.
//!
//! ```sh
//! FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh) cargo bench --bench end_to_end
//! ```
//!
//! The full comparison with the floor and the peers is `quorum-bench` (bench/).

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fredlock::Redlock;
use fredlock_testcluster::Cluster;

const TTL: Duration = Duration::from_secs(10);

fn acquire_release(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = match runtime.block_on(Cluster::start(5)) {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("end_to_end: skipped, cannot start the Redis containers: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group("acquire_release");
    group.measurement_time(Duration::from_secs(5));
    for n in [1, 3, 5] {
        let urls: Vec<String> = cluster.urls().into_iter().take(n).collect();
        let redlock = runtime
            .block_on(
                Redlock::builder(urls)
                    .node_timeout(Duration::from_millis(50))
                    .retry_count(0)
                    .build(),
            )
            .expect("connects");
        // Fresh throwaway nodes: lift the restart quarantine, as for a new deployment.
        runtime.block_on(redlock.lift_restart_quarantine());
        let resource = format!("criterion-e2e-{n}");
        group.bench_function(format!("nodes={n}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let lock = redlock
                    .try_lock(&resource, TTL)
                    .await
                    .expect("uncontended lock");
                lock.release().await.expect("release");
            })
        });
        if n == 5 {
            // 64 cycles at once, on 64 resources: the group-commit path.
            let resources: Vec<String> = (0..64).map(|i| format!("criterion-e2e-c{i}")).collect();
            group.bench_function("nodes=5/concurrent=64", |b| {
                b.to_async(&runtime).iter(|| {
                    futures::future::join_all(resources.iter().map(|resource| async {
                        let lock = redlock.try_lock(resource, TTL).await.expect("uncontended");
                        lock.release().await.expect("release");
                    }))
                })
            });
        }
        runtime.block_on(redlock.quit());
    }
    group.finish();
    // The containers are removed by the cluster's drop, inside the runtime.
    runtime.block_on(async move { drop(cluster) });
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
