//! Partition and heal of one node (iptables DROP rules in the container's network
//! namespace), checked with raw RESP over TCP.
//!
//! Needs a Docker engine, a Redis image, root, `nsenter` (util-linux) and `iptables`:
//! `FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh) cargo test -p fredlock-testcluster`

use std::{
    process::Command,
    time::{Duration, Instant},
};

use fredlock_testcluster::{Cluster, Error};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant as TokioInstant, timeout_at},
};

const SECOND: Duration = Duration::from_secs(1);
const SHORT: Duration = Duration::from_millis(300);

/// What a raw `PING` on a new connection gave.
#[derive(Debug, PartialEq, Eq)]
enum Ping {
    Pong,
    /// The TCP connect did not complete within the limit.
    ConnectHung,
    /// Connected, but no reply within the limit.
    NoAnswer,
    /// Refused, closed, or an unexpected reply.
    Failed(String),
}

async fn ping(port: u16, limit: Duration) -> Ping {
    let deadline = TokioInstant::now() + limit;
    let stream = match timeout_at(deadline, TcpStream::connect(("127.0.0.1", port))).await {
        Err(_) => return Ping::ConnectHung,
        Ok(Err(e)) => return Ping::Failed(e.to_string()),
        Ok(Ok(s)) => s,
    };
    ping_on(stream, deadline).await
}

async fn ping_on(mut stream: TcpStream, deadline: TokioInstant) -> Ping {
    let exchange = async {
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match timeout_at(deadline, exchange).await {
        Err(_) => Ping::NoAnswer,
        Ok(Err(e)) => Ping::Failed(e.to_string()),
        Ok(Ok(buf)) if &buf == b"+PONG\r\n" => Ping::Pong,
        Ok(Ok(buf)) => Ping::Failed(format!("reply {:?}", String::from_utf8_lossy(&buf))),
    }
}

/// Rules mentioning Redis' port in the network namespace of node `i`'s container, over
/// both iptables backends (whichever exist on this host).
fn partition_rules(cluster: &Cluster, i: usize) -> usize {
    let pid = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", cluster.container_id(i)])
        .output()
        .expect("docker inspect");
    assert!(pid.status.success());
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let mut count = 0;
    let mut backends = 0;
    for backend in ["iptables-nft", "iptables-legacy"] {
        let Ok(out) = Command::new("nsenter")
            .args(["-t", &pid, "-n", backend, "-w", "5", "-S"])
            .output()
        else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        backends += 1;
        count += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("6379") && l.contains("DROP"))
            .count();
    }
    assert!(backends > 0, "no iptables backend could list rules");
    count
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
async fn partition_blackholes_one_node_and_heal_restores_it() {
    let cluster = Cluster::start(3).await.expect("cluster starts");
    let port0 = cluster.port(0);
    for i in 0..3 {
        assert_eq!(ping(cluster.port(i), SECOND).await, Ping::Pong, "node {i}");
    }
    // A connection opened before the partition.
    let old = TcpStream::connect(("127.0.0.1", port0)).await.unwrap();

    let t = Instant::now();
    cluster.partition(0).await.expect("partition");
    eprintln!("partition (first, with backend probe): {:?}", t.elapsed());
    let t = Instant::now();
    cluster.partition(0).await.expect("partition again is Ok");
    eprintln!("partition (again): {:?}", t.elapsed());
    assert_eq!(
        partition_rules(&cluster, 0),
        2,
        "one INPUT + one OUTPUT rule"
    );

    // Docker's userland proxy accepts the connection on the host port, so the connect
    // succeeds and then nothing comes back. (An engine without the userland proxy
    // would make the connect itself hang; both are a blackhole, neither is a refusal.)
    let t = Instant::now();
    let new = ping(port0, SHORT).await;
    eprintln!(
        "ping of the partitioned node: {new:?} after {:?}",
        t.elapsed()
    );
    assert!(
        matches!(new, Ping::NoAnswer | Ping::ConnectHung),
        "partitioned node must hang, not fail: {new:?}"
    );
    assert!(t.elapsed() >= SHORT, "must hang until the timeout");
    let deadline = TokioInstant::now() + SHORT;
    assert_eq!(
        ping_on(old, deadline).await,
        Ping::NoAnswer,
        "old connection"
    );
    for i in [1, 2] {
        assert_eq!(ping(cluster.port(i), SECOND).await, Ping::Pong, "node {i}");
    }

    let t = Instant::now();
    cluster.heal(0).await.expect("heal");
    eprintln!("heal: {:?}", t.elapsed());
    let t = Instant::now();
    assert_eq!(
        ping(port0, SECOND).await,
        Ping::Pong,
        "new connection after heal"
    );
    eprintln!("first PONG after heal: {:?}", t.elapsed());
    assert_eq!(partition_rules(&cluster, 0), 0);
    cluster.heal(0).await.expect("healing a healed node is Ok");
    cluster
        .heal(1)
        .await
        .expect("healing a never partitioned node is Ok");

    // A paused node can be partitioned; unpausing it does not heal it.
    cluster.pause(1).await.expect("pause");
    cluster.partition(1).await.expect("partition a paused node");
    cluster.unpause(1).await.expect("unpause");
    assert_eq!(ping(cluster.port(1), SHORT).await, Ping::NoAnswer);
    cluster.heal(1).await.expect("heal");
    assert_eq!(ping(cluster.port(1), SECOND).await, Ping::Pong);

    // Restart ends a partition: the new container process has a new namespace.
    cluster.partition(2).await.expect("partition");
    assert_eq!(ping(cluster.port(2), SHORT).await, Ping::NoAnswer);
    cluster
        .restart(2)
        .await
        .expect("restart of a partitioned node");
    assert_eq!(ping(cluster.port(2), SECOND).await, Ping::Pong);
    assert_eq!(partition_rules(&cluster, 2), 0);
    cluster
        .heal(2)
        .await
        .expect("heal after restart is a no-op");

    // A killed node cannot be partitioned; healing it is Ok.
    cluster.partition(1).await.expect("partition");
    cluster.kill(1).await.expect("kill a partitioned node");
    cluster.heal(1).await.expect("heal of a killed node is Ok");
    assert!(matches!(
        cluster.partition(1).await,
        Err(Error::NodeKilled(1))
    ));
    cluster.restart(1).await.expect("restart");
    assert_eq!(ping(cluster.port(1), SECOND).await, Ping::Pong);
    assert!(matches!(
        cluster.partition(3).await,
        Err(Error::NoSuchNode { index: 3, len: 3 })
    ));

    // Latency needs proxies (Cluster::start_with_proxies).
    assert!(matches!(
        cluster.try_set_latency(0, Duration::from_millis(10)),
        Err(Error::NoProxy(0))
    ));
    assert_eq!(cluster.proxy_port(0), None);
    assert_eq!(cluster.direct_url(0), cluster.url(0));

    // Drop with a node partitioned and one paused: no healing needed, nothing left.
    cluster.partition(0).await.expect("partition");
    cluster.pause(2).await.expect("pause");
    assert_eq!(containers_of_this_process(), 3);
    drop(cluster);
    assert_eq!(containers_of_this_process(), 0, "containers left");
}
