//! The cluster also works (start with proxies, latency, partition, pause, drop with a
//! paused node) on the default current-thread runtime of `#[tokio::test]`.

use std::time::{Duration, Instant};

use fredlock_testcluster::Cluster;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

async fn pong(port: u16, limit: Duration) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(timeout(limit, attempt).await, Ok(Some(true)))
}

#[tokio::test]
async fn current_thread_runtime_start_pause_drop() {
    let cluster = Cluster::start_with_proxies(2)
        .await
        .expect("cluster starts");
    let ports = [cluster.port(0), cluster.port(1)];
    for p in ports {
        assert!(pong(p, Duration::from_secs(1)).await);
    }
    // The proxies run on this runtime's single thread.
    cluster.set_latency(1, Duration::from_millis(50));
    let t = Instant::now();
    assert!(pong(ports[1], Duration::from_secs(1)).await);
    assert!(t.elapsed() >= Duration::from_millis(100));
    cluster.set_latency(1, Duration::ZERO);
    // nsenter/iptables run as tokio child processes on this runtime too.
    cluster.partition(1).await.expect("partition");
    assert!(!pong(ports[1], Duration::from_millis(300)).await);
    cluster.heal(1).await.expect("heal");
    assert!(pong(ports[1], Duration::from_secs(1)).await);
    cluster.pause(0).await.expect("pause");
    assert!(!pong(ports[0], Duration::from_millis(300)).await);
    cluster.kill(1).await.expect("kill");
    drop(cluster);
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("name=fredlock-testcluster-{}-", std::process::id()))
        .output()
        .expect("docker ps");
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "containers left after drop");
}
