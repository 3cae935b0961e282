//! Added latency through the per-node proxies of `Cluster::start_with_proxies`, checked
//! with raw RESP over TCP. Wide margins: these are behaviour checks, not benchmarks.
//!
//! Needs a Docker engine and a Redis image:
//! `FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh) cargo test -p fredlock-testcluster`

use std::{
    process::Command,
    time::{Duration, Instant},
};

use fredlock_testcluster::{Cluster, Error};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

const SECOND: Duration = Duration::from_secs(1);
const FAST: Duration = Duration::from_millis(50);
const ONE_WAY: Duration = Duration::from_millis(100);

async fn connect(port: u16) -> TcpStream {
    timeout(SECOND, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Round trip of one `PING` on an open connection; `None` if no `+PONG` within `limit`.
async fn rtt(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let exchange = async {
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        (&buf == b"+PONG\r\n").then_some(())
    };
    timeout(limit, exchange).await.ok().flatten()?;
    Some(started.elapsed())
}

/// Round trip of one `PING` on a new connection (connect excluded).
async fn rtt_new(port: u16, limit: Duration) -> Option<Duration> {
    let mut s = timeout(limit, TcpStream::connect(("127.0.0.1", port)))
        .await
        .ok()?
        .ok()?;
    rtt(&mut s, limit).await
}

/// Mean round trip of `n` sequential `PING`s on one connection.
async fn mean_rtt(port: u16, n: u32) -> Duration {
    let mut s = connect(port).await;
    let started = Instant::now();
    for _ in 0..n {
        rtt(&mut s, SECOND).await.expect("PONG");
    }
    started.elapsed() / n
}

fn containers_of_this_process() -> usize {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("name=fredlock-testcluster-{}-", std::process::id()))
        .output()
        .expect("docker ps");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn latency_through_proxies_survives_kill_and_restart() {
    let cluster = Cluster::start_with_proxies(2)
        .await
        .expect("cluster starts");
    for i in 0..2 {
        let proxy = cluster.proxy_port(i).expect("has a proxy");
        assert_eq!(cluster.port(i), proxy);
        assert_ne!(cluster.direct_port(i), proxy);
        assert_eq!(cluster.url(i), format!("redis://127.0.0.1:{proxy}"));
        assert_eq!(
            cluster.direct_url(i),
            format!("redis://127.0.0.1:{}", cluster.direct_port(i))
        );
        assert_eq!(cluster.urls()[i], cluster.url(i));
        assert_eq!(cluster.latency(i), Duration::ZERO);
    }
    let (p0, p1) = (cluster.port(0), cluster.port(1));

    let direct = mean_rtt(cluster.direct_port(1), 200).await;
    let proxied = mean_rtt(p1, 200).await;
    eprintln!("mean PING round trip: direct {direct:?}, through the proxy {proxied:?}");

    // A connection opened before the latency is set is delayed too.
    let mut conn0 = connect(p0).await;
    assert!(rtt(&mut conn0, SECOND).await.expect("PONG") < FAST);

    cluster.set_latency(0, ONE_WAY);
    assert_eq!(cluster.latency(0), ONE_WAY);
    let slow = rtt(&mut conn0, SECOND).await.expect("PONG");
    let slow_new = rtt_new(p0, SECOND).await.expect("PONG");
    let other = rtt_new(p1, SECOND).await.expect("PONG");
    let admin = rtt_new(cluster.direct_port(0), SECOND).await.expect("PONG");
    eprintln!(
        "100 ms one way: node 0 {slow:?} (open conn), {slow_new:?} (new conn); \
         node 1 {other:?}; node 0 direct {admin:?}"
    );
    assert!(slow >= 2 * ONE_WAY, "{slow:?}");
    assert!(slow_new >= 2 * ONE_WAY, "{slow_new:?}");
    assert!(other < FAST, "node 1 has no latency: {other:?}");
    assert!(
        admin < FAST,
        "the direct port bypasses the proxy: {admin:?}"
    );

    // Connections are delayed side by side, not one after the other.
    let started = Instant::now();
    let parallel: Vec<_> = (0..10)
        .map(|_| tokio::spawn(rtt_new(p0, Duration::from_secs(5))))
        .collect();
    for t in parallel {
        assert!(t.await.expect("task").is_some());
    }
    let all = started.elapsed();
    eprintln!("10 parallel connections at 100 ms one way: {all:?}");
    assert!(
        all >= 2 * ONE_WAY && all < Duration::from_millis(1000),
        "{all:?}"
    );

    // Pipelined commands in several chunks come back complete and in order.
    let mut s = connect(p0).await;
    let started = Instant::now();
    for _ in 0..5 {
        s.write_all(b"PING\r\nPING\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut buf = vec![0u8; 70];
    timeout(SECOND, s.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(buf, b"+PONG\r\n".repeat(10));
    assert!(started.elapsed() >= 2 * ONE_WAY);

    cluster.set_latency(0, Duration::ZERO);
    let fast = rtt(&mut conn0, SECOND).await.expect("PONG");
    eprintln!("latency removed: {fast:?}");
    assert!(fast < FAST, "{fast:?}");

    // Kill: the proxy accepts, then closes (no upstream); open connections close too.
    cluster.set_latency(0, Duration::from_millis(20));
    cluster.kill(0).await.expect("kill");
    assert_eq!(rtt_new(p0, SECOND).await, None);
    assert_eq!(
        rtt(&mut conn0, SECOND).await,
        None,
        "old connection is closed"
    );
    let t = Instant::now();
    cluster.restart(0).await.expect("restart");
    eprintln!("restart behind a proxy: {:?}", t.elapsed());
    let after = rtt_new(p0, SECOND).await.expect("PONG through the proxy");
    assert!(
        after >= Duration::from_millis(40),
        "latency kept: {after:?}"
    );
    cluster.set_latency(0, Duration::ZERO);
    assert!(rtt_new(p0, SECOND).await.expect("PONG") < FAST);

    // Pause and partition act inside the container, so they work behind the proxy.
    cluster.pause(1).await.expect("pause");
    assert_eq!(rtt_new(p1, Duration::from_millis(300)).await, None);
    cluster.unpause(1).await.expect("unpause");
    assert!(rtt_new(p1, SECOND).await.is_some());
    cluster.partition(1).await.expect("partition");
    assert_eq!(rtt_new(p1, Duration::from_millis(300)).await, None);
    cluster.heal(1).await.expect("heal");
    assert!(rtt_new(p1, SECOND).await.is_some());

    assert!(matches!(
        cluster.try_set_latency(2, ONE_WAY),
        Err(Error::NoSuchNode { index: 2, len: 2 })
    ));

    // Dropping the cluster stops the proxies and removes the containers.
    eprintln!("{cluster:?}");
    drop(cluster);
    assert_eq!(containers_of_this_process(), 0, "containers left");
    let deadline = Instant::now() + SECOND;
    for port in [p0, p1] {
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(Instant::now() < deadline, "proxy {port} still listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
