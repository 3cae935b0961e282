//! Lifecycle of a 3-node cluster, checked with raw RESP over TCP (no Redis client).
//!
//! Needs a Docker engine and a Redis image:
//! `FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh) cargo test -p fredlock-testcluster`

use std::time::{Duration, Instant};

use fredlock_testcluster::{Cluster, Error};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// What a raw `PING` to a node gave.
#[derive(Debug, PartialEq, Eq)]
enum Ping {
    Pong,
    /// Connected (or not) but no `+PONG` within the limit.
    NoAnswer,
    /// The connection was refused or closed without a reply.
    Failed(String),
}

async fn ping(port: u16, limit: Duration) -> Ping {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match timeout(limit, attempt).await {
        Err(_) => Ping::NoAnswer,
        Ok(Err(e)) => Ping::Failed(e.to_string()),
        Ok(Ok(buf)) if &buf == b"+PONG\r\n" => Ping::Pong,
        Ok(Ok(buf)) => Ping::Failed(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&buf)
        )),
    }
}

async fn set_key(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"SET k v\r\n").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"+OK\r\n");
}

async fn key_exists(port: u16) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"EXISTS k\r\n").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    &buf == b":1\r\n"
}

/// Containers (any state) created by this test process. Keep one test per file: the
/// count is per process.
fn running_containers_named_like_ours() -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "name=fredlock-testcluster-",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker ps failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("-{}-", std::process::id())))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn start_kill_restart_pause_unpause() {
    const SECOND: Duration = Duration::from_secs(1);

    let t = Instant::now();
    let cluster = Cluster::start(3).await.expect("cluster starts");
    eprintln!("start(3): {:?}", t.elapsed());

    assert_eq!(cluster.len(), 3);
    assert!(!cluster.is_empty());
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    for (i, url) in urls.iter().enumerate() {
        assert_eq!(*url, format!("redis://127.0.0.1:{}", cluster.port(i)));
        assert_eq!(cluster.url(i), *url);
        assert_eq!(ping(cluster.port(i), SECOND).await, Ping::Pong, "node {i}");
    }
    let mut ports: Vec<u16> = (0..3).map(|i| cluster.port(i)).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "distinct ports");

    // Kill node 0: refused (or closed) at once, and it stays on its port when restarted.
    let port0 = cluster.port(0);
    set_key(port0).await;
    let t = Instant::now();
    cluster.kill(0).await.expect("kill");
    eprintln!("kill: {:?}", t.elapsed());
    let after_kill = ping(port0, SECOND).await;
    assert_ne!(after_kill, Ping::Pong);
    eprintln!("ping after kill: {after_kill:?}");
    cluster.kill(0).await.expect("killing a killed node is Ok");
    assert!(matches!(cluster.pause(0).await, Err(Error::NodeKilled(0))));

    let t = Instant::now();
    cluster.restart(0).await.expect("restart");
    eprintln!("restart: {:?}", t.elapsed());
    assert_eq!(cluster.port(0), port0);
    assert_eq!(ping(port0, SECOND).await, Ping::Pong);
    assert!(!key_exists(port0).await, "a restarted node has no data");

    // Restarting a running node also gives a fresh, empty node on the same port.
    let port2 = cluster.port(2);
    set_key(port2).await;
    assert!(key_exists(port2).await);
    cluster.restart(2).await.expect("restart of a running node");
    assert_eq!(cluster.port(2), port2);
    assert!(!key_exists(port2).await);

    // Pause node 1: no answer, then the answer after unpause.
    let port1 = cluster.port(1);
    let t = Instant::now();
    cluster.pause(1).await.expect("pause");
    eprintln!("pause: {:?}", t.elapsed());
    cluster.pause(1).await.expect("pausing a paused node is Ok");
    assert_eq!(
        ping(port1, Duration::from_millis(300)).await,
        Ping::NoAnswer
    );
    let t = Instant::now();
    cluster.unpause(1).await.expect("unpause");
    eprintln!("unpause: {:?}", t.elapsed());
    assert_eq!(ping(port1, SECOND).await, Ping::Pong);
    cluster
        .unpause(1)
        .await
        .expect("unpausing a running node is Ok");

    // Out of range.
    assert!(matches!(
        cluster.kill(3).await,
        Err(Error::NoSuchNode { index: 3, len: 3 })
    ));

    // Leave node 1 paused and node 2 killed: drop must still remove everything.
    cluster.pause(1).await.expect("pause again");
    cluster.kill(2).await.expect("kill 2");
    assert_eq!(running_containers_named_like_ours(), 3);
    let t = Instant::now();
    drop(cluster);
    eprintln!("drop: {:?}", t.elapsed());
    assert_eq!(running_containers_named_like_ours(), 0, "containers left");
    for p in [port0, port1] {
        assert_ne!(ping(p, Duration::from_millis(300)).await, Ping::Pong);
    }
}
