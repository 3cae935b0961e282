//! The cluster also works (start, pause, drop with a paused node) on the default
//! current-thread runtime of `#[tokio::test]`.

use std::time::Duration;

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
    let cluster = Cluster::start(2).await.expect("cluster starts");
    let ports = [cluster.port(0), cluster.port(1)];
    for p in ports {
        assert!(pong(p, Duration::from_secs(1)).await);
    }
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
