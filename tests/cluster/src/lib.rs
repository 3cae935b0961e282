//! Test support for `fredlock`: a set of independent Redis nodes (no replication
//! between them, as Redlock wants), each in its own Docker container, that a test can
//! kill, restart, pause and unpause one by one.
//!
//! Every node is published on a *fixed* host port on `127.0.0.1`, chosen when the
//! cluster starts, so a node that is killed and started again comes back at the same
//! address and a client configured with that address can reconnect. By default Docker
//! maps that port to the container's; [`Cluster::start_on_host_network`] instead runs
//! each container on the host's network, where Redis listens on the port itself and no
//! port proxy sits between client and node (partitions are then refused).
//!
//! The image comes from the `FREDLOCK_REDIS_IMAGE` environment variable and defaults to
//! `redis:7.4`. On a machine that cannot pull images, `scripts/redis-image.sh` makes one
//! from the host's Redis binary and prints its name:
//!
//! ```sh
//! FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh) cargo test
//! ```
//!
//! Two more faults (the "nemesis") are available:
//!
//! * [`Cluster::partition`] / [`Cluster::heal`]: the node keeps running but its network
//!   drops every packet to and from Redis (an `iptables` rule in the container's
//!   network namespace; needs root, `nsenter` and `iptables` on the host). Clients hang
//!   until their timeouts instead of being refused.
//! * [`Cluster::set_latency`]: with [`Cluster::start_with_proxies`], every node sits
//!   behind a loopback TCP proxy on its own fixed port, and the proxy can delay the bytes
//!   of each direction.
//!
//! And one node's clock can be stepped: [`Cluster::start_with_fake_clocks`] runs the
//! nodes it names with a small preloaded library (`src/clockshift.c`, compiled on the
//! host with `cc`) that adds an offset to the wall clock, and [`Cluster::jump_clock`]
//! moves it forward while the other nodes keep real time. Redis's key expiry follows
//! the wall clock, so keys with a TTL shorter than the jump expire on that node at once.
//!
//! All containers are removed when the [`Cluster`] is dropped, whatever state its nodes
//! are in, and the proxies are stopped. Dropping needs a Tokio runtime (testcontainers
//! removes containers from `Drop` via the current runtime): drop the cluster inside the
//! test's runtime.

mod clock;
mod partition;
mod proxy;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clock::FakeClock;
use testcontainers::core::{AccessMode, Mount};
use testcontainers::{
    ContainerAsync, GenericImage, ImageExt, TestcontainersError,
    core::{IntoContainerPort, WaitFor, client::ClientError},
    runners::AsyncRunner,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

pub use partition::IPTABLES_ENV;
use proxy::Proxy;

/// Environment variable naming the Redis image (`name:tag`) to run.
pub const IMAGE_ENV: &str = "FREDLOCK_REDIS_IMAGE";
/// Image used when [`IMAGE_ENV`] is not set.
pub const DEFAULT_IMAGE: &str = "redis:7.4";

/// Port Redis listens on inside each container.
const REDIS_PORT: u16 = 6379;
/// Arguments given to `redis-server`: no persistence at all, and reachable through the
/// port mapping (connections arrive from the bridge gateway, not from loopback).
const REDIS_ARGS: [&str; 6] = ["--save", "", "--appendonly", "no", "--protected-mode", "no"];
/// How many times a node's container is created when its host port turns out to be
/// taken by someone else between choosing it and binding it.
const PORT_ATTEMPTS: usize = 5;
/// Upper bound for one container to start and log that it is ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for a restarted node to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of [`Cluster`] operations.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Docker (through testcontainers) refused or failed an operation.
    Docker(TestcontainersError),
    /// The node index is out of range.
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// How many nodes the cluster has.
        len: usize,
    },
    /// The operation needs a running (or paused) node, but the node was killed.
    NodeKilled(usize),
    /// A (re)started node did not answer `PING` in time.
    NotReady {
        /// The node index.
        index: usize,
        /// Its host port.
        port: u16,
        /// How long it was waited for.
        waited: Duration,
    },
    /// No free host port could be found or the host port stayed taken.
    Port(String),
    /// A start-up task panicked or was cancelled.
    Task(String),
    /// A host tool needed for [`Cluster::partition`] is not installed.
    MissingTool {
        /// The executable looked for (in `PATH` and the `sbin` directories).
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// An external command (`nsenter … iptables …`, `docker inspect`) failed or could
    /// not be run.
    Command {
        /// The command line.
        command: String,
        /// Exit status and standard error, or why it could not run.
        message: String,
    },
    /// [`Cluster::try_set_latency`] on a cluster started without proxies (use
    /// [`Cluster::start_with_proxies`]).
    NoProxy(usize),
    /// A proxy could not be started.
    Proxy(std::io::Error),
    /// [`Cluster::jump_clock`] on a node started without a controllable clock (see
    /// [`Cluster::start_with_fake_clocks`]).
    NoFakeClock(usize),
    /// [`Cluster::partition`] on a node that shares the host's network (see
    /// [`Cluster::start_on_host_network`]): its rules would cut the host.
    HostNetwork(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Docker(e) => write!(f, "docker: {e}"),
            Error::NoSuchNode { index, len } => {
                write!(f, "no node {index} in a cluster of {len}")
            }
            Error::NodeKilled(i) => write!(f, "node {i} is killed; restart it first"),
            Error::NotReady {
                index,
                port,
                waited,
            } => write!(
                f,
                "node {index} (127.0.0.1:{port}) did not answer PING within {waited:?}"
            ),
            Error::Port(msg) => write!(f, "host port: {msg}"),
            Error::Task(msg) => write!(f, "start-up task failed: {msg}"),
            Error::MissingTool { tool, package } => write!(
                f,
                "`{tool}` not found in PATH or the sbin directories; \
                 install the Debian package `{package}`"
            ),
            Error::Command { command, message } => write!(f, "`{command}`: {message}"),
            Error::NoProxy(i) => write!(
                f,
                "node {i} has no proxy; start the cluster with Cluster::start_with_proxies"
            ),
            Error::Proxy(e) => write!(f, "cannot start a proxy: {e}"),
            Error::NoFakeClock(i) => write!(
                f,
                "node {i} has real time; name it in Cluster::start_with_fake_clocks"
            ),
            Error::HostNetwork(i) => write!(
                f,
                "node {i} shares the host's network, where a partition would cut the host; \
                 start the cluster without Cluster::start_on_host_network"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Docker(e) => Some(e),
            Error::Proxy(e) => Some(e),
            _ => None,
        }
    }
}

impl From<TestcontainersError> for Error {
    fn from(e: TestcontainersError) -> Self {
        Error::Docker(e)
    }
}

/// What a test has done to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Running,
    Paused,
    Killed,
}

struct Node {
    container: ContainerAsync<GenericImage>,
    /// The container's fixed host port.
    port: u16,
    /// Redis listens on `port` in the host's network namespace, not behind a mapping.
    host_network: bool,
    state: Mutex<NodeState>,
    /// The `iptables` binary that added partition rules in the current container
    /// process's network namespace, if any. An async lock: it is held across the
    /// `nsenter` commands, so partition, heal and kill of one node do not interleave.
    partition: tokio::sync::Mutex<Option<PathBuf>>,
    /// The latency proxy in front of the node, if the cluster has proxies.
    proxy: Option<Proxy>,
    /// The node's controllable clock, if it has one. After `container`, so the
    /// container is removed before the directory it mounts.
    clock: Option<FakeClock>,
}

impl Node {
    fn state(&self) -> MutexGuard<'_, NodeState> {
        // A panic while holding this lock cannot leave the state half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, s: NodeState) {
        *self.state() = s;
    }

    fn get_state(&self) -> NodeState {
        *self.state()
    }
}

/// A set of independent Redis nodes, one Docker container each, published on fixed
/// ports of `127.0.0.1`.
///
/// Node operations take `&self`, so a cluster can be shared (for example in an `Arc`)
/// between a test and the tasks it spawns.
pub struct Cluster {
    nodes: Vec<Node>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for n in &self.nodes {
            match &n.proxy {
                None => list.entry(&format_args!(
                    "{} 127.0.0.1:{} {:?}",
                    n.container.id(),
                    n.port,
                    n.get_state()
                )),
                Some(p) => list.entry(&format_args!(
                    "{} 127.0.0.1:{} via proxy 127.0.0.1:{} (latency {:?}) {:?}",
                    n.container.id(),
                    n.port,
                    p.port(),
                    p.latency(),
                    n.get_state()
                )),
            };
        }
        list.finish()
    }
}

impl Cluster {
    /// Starts `n` Redis containers, all concurrently, each mapped to a fixed free host
    /// port on `127.0.0.1` (so a node that is killed and started again comes back at the
    /// same address), and waits until every node has logged "Ready to accept
    /// connections" and answers `PING`.
    ///
    /// The image is taken from `FREDLOCK_REDIS_IMAGE` (default `redis:7.4`); Redis runs
    /// with `--save '' --appendonly no --protected-mode no`. Free ports are found by
    /// binding `127.0.0.1:0` and releasing the port; if Docker then finds the port taken,
    /// the node is created again on another port.
    ///
    /// If any node fails to start, the nodes already started are removed and the first
    /// error is returned.
    pub async fn start(n: usize) -> Result<Cluster, Error> {
        Self::start_inner(n, Network::Mapped, false, &[]).await
    }

    /// Like [`Cluster::start`], and the nodes in `fake` run with a wall clock that
    /// [`Cluster::jump_clock`] can move forward; the other nodes keep real time.
    ///
    /// Each such node gets a host directory (in the temporary folder, removed with the
    /// cluster) holding `clockshift.so` and its offset file, bind-mounted read-only at
    /// `/fredlock-clock`, and `LD_PRELOAD` names the library. It shifts
    /// `clock_gettime(CLOCK_REALTIME…)`, `gettimeofday` and `time` by the offset, read
    /// again on every call, and leaves the monotonic clocks alone. The library is built
    /// on the host with `cc` (`$CC` if set) the first time; it needs only libc, so it
    /// runs in glibc-based images (the locally built one, the official `redis:7.4`),
    /// not in musl (Alpine) ones. The offset survives [`Cluster::restart`].
    ///
    /// # Errors
    /// [`Error::NoSuchNode`] for an index not below `n`, [`Error::Command`] when the
    /// library cannot be built or its directory written, and those of
    /// [`Cluster::start`].
    pub async fn start_with_fake_clocks(n: usize, fake: &[usize]) -> Result<Cluster, Error> {
        Self::start_inner(n, Network::Mapped, false, fake).await
    }

    /// Like [`Cluster::start`], and puts each node behind its own loopback TCP proxy
    /// (a Tokio task of this crate) listening on a fixed `127.0.0.1` port, so that
    /// [`Cluster::set_latency`] can delay its traffic.
    ///
    /// [`Cluster::urls`], [`Cluster::url`] and [`Cluster::port`] then give the proxy
    /// addresses; [`Cluster::direct_url`] and [`Cluster::direct_port`] give the node's
    /// own port (for admin clients that should not be delayed).
    ///
    /// The proxy opens a new connection to the node for every connection it accepts,
    /// so it keeps working across [`Cluster::kill`] and [`Cluster::restart`]. While a
    /// node is killed, connections to its proxy are *accepted and then closed* (not
    /// refused). Pause and partition act inside the container, so they work behind the
    /// proxy as without it. The proxies stop when the cluster is dropped.
    ///
    /// Must be called within a Tokio runtime (the proxies are spawned on it).
    pub async fn start_with_proxies(n: usize) -> Result<Cluster, Error> {
        Self::start_inner(n, Network::Mapped, true, &[]).await
    }

    /// Like [`Cluster::start`], but each container shares the host's network and its
    /// Redis listens on its own free port of `127.0.0.1`: clients reach it as they
    /// reach a `redis-server` process on their own machine, without Docker's port
    /// mapping (`docker-proxy`, a user-space process that copies every byte between
    /// two sockets and charges every message). Kill, restart and pause work as on
    /// any cluster; [`Cluster::partition`] is refused ([`Error::HostNetwork`]), since
    /// its rules would apply to the host. With `proxies`, each node also gets its
    /// latency proxy, as with [`Cluster::start_with_proxies`].
    pub async fn start_on_host_network(n: usize, proxies: bool) -> Result<Cluster, Error> {
        Self::start_inner(n, Network::Host, proxies, &[]).await
    }

    async fn start_inner(
        n: usize,
        network: Network,
        with_proxies: bool,
        fake: &[usize],
    ) -> Result<Cluster, Error> {
        let image = std::env::var(IMAGE_ENV).unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
        if let Some(&index) = fake.iter().find(|&&i| i >= n) {
            return Err(Error::NoSuchNode { index, len: n });
        }
        let mut clocks = (0..n)
            .map(|i| fake.contains(&i).then(|| FakeClock::new(i)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        // Choose all ports while holding every listener, so that the nodes of this
        // cluster get distinct ports.
        let ports = free_ports(n)?;

        let mut set = JoinSet::new();
        for (index, port) in ports.into_iter().enumerate() {
            let image = image.clone();
            let clock = clocks[index].take();
            set.spawn(
                async move { (index, start_node(&image, index, port, network, clock).await) },
            );
        }

        let mut slots: Vec<Option<Node>> = (0..n).map(|_| None).collect();
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((index, Ok(node))) => slots[index] = Some(node),
                Ok((_, Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(Error::Task(e.to_string()));
                }
            }
        }
        if let Some(e) = first_err {
            // Dropping `slots` removes the containers that did start.
            return Err(e);
        }
        let mut nodes = slots.into_iter().flatten().collect::<Vec<_>>();
        debug_assert_eq!(nodes.len(), n);
        if with_proxies {
            for node in &mut nodes {
                // On error, dropping `nodes` removes the containers and stops the
                // proxies already started.
                node.proxy = Some(Proxy::start(node.port).await.map_err(Error::Proxy)?);
            }
        }
        Ok(Cluster { nodes })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (only when started with `n = 0`).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `redis://127.0.0.1:PORT` for each node, in node order: the addresses clients
    /// should use (the proxies' when the cluster has proxies).
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// `redis://127.0.0.1:PORT` of node `i`, with the port of [`Cluster::port`]. Stable
    /// across kill and restart.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.port(i))
    }

    /// Port (on `127.0.0.1`) clients should use for node `i`: its proxy's port when the
    /// cluster was started with [`Cluster::start_with_proxies`], else the node's own
    /// host port. Stable across kill and restart.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn port(&self, i: usize) -> u16 {
        let node = &self.nodes[i];
        node.proxy.as_ref().map_or(node.port, Proxy::port)
    }

    /// `redis://127.0.0.1:PORT` of node `i` itself, bypassing its proxy (no added
    /// latency). The same as [`Cluster::url`] when the cluster has no proxies.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn direct_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.direct_port(i))
    }

    /// Host port (on `127.0.0.1`) of node `i`'s container, bypassing its proxy. Stable
    /// across kill and restart.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn direct_port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Port of node `i`'s proxy, or `None` when the cluster has no proxies.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn proxy_port(&self, i: usize) -> Option<u16> {
        self.nodes[i].proxy.as_ref().map(Proxy::port)
    }

    /// Docker id of node `i`'s container (the same container across kill and restart).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn container_id(&self, i: usize) -> &str {
        self.nodes[i].container.id()
    }

    /// Delays the traffic of node `i` through its proxy by `one_way` in each direction:
    /// every chunk of bytes read from the client is written to the node `one_way` later,
    /// and every chunk from the node is written to the client `one_way` later, in order,
    /// so a request/response round trip takes at least `2 * one_way`. Connections are
    /// delayed independently of each other. The change applies to chunks read after the
    /// call, on open and new connections alike; connecting itself is not delayed.
    /// `Duration::ZERO` removes the delay. The latency survives kill and restart of the
    /// node.
    ///
    /// # Panics
    /// If `i >= self.len()` or the cluster was started without proxies (with
    /// [`Cluster::start`] rather than [`Cluster::start_with_proxies`]); see
    /// [`Cluster::try_set_latency`] for a version that returns these as errors.
    pub fn set_latency(&self, i: usize, one_way: Duration) {
        if let Err(e) = self.try_set_latency(i, one_way) {
            panic!("set_latency({i}, {one_way:?}): {e}");
        }
    }

    /// [`Cluster::set_latency`], returning [`Error::NoSuchNode`] or [`Error::NoProxy`]
    /// instead of panicking.
    pub fn try_set_latency(&self, i: usize, one_way: Duration) -> Result<(), Error> {
        let proxy = self.node(i)?.proxy.as_ref().ok_or(Error::NoProxy(i))?;
        proxy.set_latency(one_way);
        Ok(())
    }

    /// The one-way latency currently set for node `i` (zero when none or without
    /// proxies).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn latency(&self, i: usize) -> Duration {
        self.nodes[i]
            .proxy
            .as_ref()
            .map_or(Duration::ZERO, Proxy::latency)
    }

    /// Moves node `i`'s wall clock forward by `by`, on top of earlier jumps. The node
    /// sees the new time at its next wall-clock read (the offset file is replaced
    /// atomically); its monotonic clock does not move. Keys whose TTL is shorter than
    /// the jump are expired for every command from then on, like keys whose time ran
    /// out.
    ///
    /// # Errors
    /// [`Error::NoSuchNode`], [`Error::NoFakeClock`] when the node was not named in
    /// [`Cluster::start_with_fake_clocks`], [`Error::Command`] when the offset file
    /// cannot be written.
    pub fn jump_clock(&self, i: usize, by: Duration) -> Result<(), Error> {
        let clock = self.node(i)?.clock.as_ref().ok_or(Error::NoFakeClock(i))?;
        clock.jump(by)
    }

    /// How far node `i`'s clock has been moved forward in total, or `None` for a node
    /// with real time.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn clock_offset(&self, i: usize) -> Option<Duration> {
        self.nodes[i].clock.as_ref().map(FakeClock::offset)
    }

    /// Kills node `i` with no grace period (`docker stop -t 0`: the process gets
    /// SIGKILL at once); its data is lost. Connections to its port are then refused.
    /// Killing a killed node is `Ok`; a paused or partitioned node can be killed (the
    /// partition ends with the process: see [`Cluster::partition`]).
    pub async fn kill(&self, i: usize) -> Result<(), Error> {
        let node = self.node(i)?;
        let mut partition = node.partition.lock().await;
        if node.get_state() == NodeState::Killed {
            return Ok(());
        }
        node.container.stop_with_timeout(Some(0)).await?;
        node.set_state(NodeState::Killed);
        // The network namespace that held the partition rules went with the process;
        // the next start gets a new one.
        *partition = None;
        Ok(())
    }

    /// Starts node `i` again, empty (no data survives), on the same host port, and waits
    /// until it answers `PING`. A node that is running or paused is killed first, so
    /// this always yields a fresh, empty, running node, not partitioned (the new
    /// container process has a new network namespace; on the host's network there are
    /// no partitions). Its proxy and latency, if any, stay as they were.
    pub async fn restart(&self, i: usize) -> Result<(), Error> {
        let node = self.node(i)?;
        if node.get_state() != NodeState::Killed {
            self.kill(i).await?;
        }
        node.container.start().await?;
        node.set_state(NodeState::Running);
        wait_ready(i, node.port, READY_TIMEOUT).await
    }

    /// Freezes node `i` (`docker pause`, a cgroup freeze): nothing is answered until
    /// [`Cluster::unpause`]. Through the port mapping, connections are still accepted;
    /// on the host's network, the kernel still completes new connections to the
    /// frozen Redis's listening socket, up to its backlog.
    /// Pausing a paused node is `Ok`; pausing a killed node is [`Error::NodeKilled`].
    pub async fn pause(&self, i: usize) -> Result<(), Error> {
        let node = self.node(i)?;
        match node.get_state() {
            NodeState::Paused => Ok(()),
            NodeState::Killed => Err(Error::NodeKilled(i)),
            NodeState::Running => {
                node.container.pause().await?;
                node.set_state(NodeState::Paused);
                Ok(())
            }
        }
    }

    /// Resumes node `i` after [`Cluster::pause`]; commands sent meanwhile are then
    /// executed. Unpausing a running node is `Ok`; unpausing a killed node is
    /// [`Error::NodeKilled`].
    pub async fn unpause(&self, i: usize) -> Result<(), Error> {
        let node = self.node(i)?;
        match node.get_state() {
            NodeState::Running => Ok(()),
            NodeState::Killed => Err(Error::NodeKilled(i)),
            NodeState::Paused => {
                node.container.unpause().await?;
                node.set_state(NodeState::Running);
                Ok(())
            }
        }
    }

    fn node(&self, i: usize) -> Result<&Node, Error> {
        self.nodes.get(i).ok_or(Error::NoSuchNode {
            index: i,
            len: self.nodes.len(),
        })
    }
}

impl Drop for Cluster {
    /// Removes every container and stops the proxies. Partitions need no healing: their
    /// rules live in the containers' network namespaces, which go with the containers.
    /// Docker removes (`rm -f`) paused and stopped containers alike on the engines we
    /// measured, but some engines refuse to kill a frozen process, so nodes still paused
    /// are first unpaused, best effort, with a blocking `docker unpause` (Drop cannot
    /// await). The containers themselves are then removed by testcontainers' own
    /// `Drop`, which needs the Tokio runtime; each proxy's task is aborted.
    fn drop(&mut self) {
        let paused: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.get_state() == NodeState::Paused)
            .map(|n| n.container.id().to_string())
            .collect();
        if !paused.is_empty() {
            // Best effort: errors (no docker CLI, engine gone) are ignored and the
            // forced removal below is still attempted.
            let _ = std::process::Command::new("docker")
                .arg("unpause")
                .args(&paused)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        // `self.nodes` is dropped after this: each ContainerAsync removes its container.
    }
}

/// Picks `n` distinct free ports on 127.0.0.1 by binding port 0 `n` times, holding all
/// listeners until every port is known, then releasing them.
fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Port(format!("cannot bind 127.0.0.1:0: {e}")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Port(format!("cannot read a bound port: {e}")))
}

/// Whether a container failed to start because its host port was taken.
fn is_port_clash(e: &TestcontainersError) -> bool {
    let TestcontainersError::Client(ClientError::StartContainer(inner)) = e else {
        return false;
    };
    let msg = inner.to_string();
    msg.contains("address already in use") || msg.contains("port is already allocated")
}

/// A name unique to this process, node and attempt, so that a container left behind by
/// a failed start can be found and removed.
fn container_name(index: usize, attempt: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "fredlock-testcluster-{}-{nanos}-{index}-{attempt}",
        std::process::id()
    )
}

/// Splits `name[:tag]` into name and tag (`latest` when absent). A `:` inside a
/// registry host (`host:5000/redis`) is not a tag separator.
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

async fn start_node(
    image: &str,
    index: usize,
    first_port: u16,
    network: Network,
    clock: Option<FakeClock>,
) -> Result<Node, Error> {
    let (name, tag) = split_image(image);
    let mut port = first_port;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cname = container_name(index, attempt);
        let request = GenericImage::new(name.clone(), tag.clone())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_container_name(cname.clone())
            .with_startup_timeout(STARTUP_TIMEOUT);
        let request = match network {
            Network::Mapped => request
                .with_cmd(REDIS_ARGS)
                .with_mapped_port(port, REDIS_PORT.tcp())
                // testcontainers publishes mapped ports on all interfaces; keep them on
                // loopback only.
                .with_host_config_modifier(|hc| {
                    if let Some(bindings) = hc.port_bindings.as_mut() {
                        for b in bindings.values_mut().flatten().flatten() {
                            b.host_ip = Some(Ipv4Addr::LOCALHOST.to_string());
                        }
                    }
                }),
            Network::Host => {
                let mut cmd = REDIS_ARGS.map(str::to_string).to_vec();
                cmd.extend(["--port".into(), port.to_string()]);
                cmd.extend(["--bind".into(), Ipv4Addr::LOCALHOST.to_string()]);
                request.with_cmd(cmd).with_network("host")
            }
        };
        let request = match &clock {
            None => request,
            Some(clock) => request
                .with_mount(
                    Mount::bind_mount(clock.host_dir().to_string_lossy(), clock::CONTAINER_DIR)
                        .with_access_mode(AccessMode::ReadOnly),
                )
                .with_env_var("LD_PRELOAD", FakeClock::preload())
                .with_env_var(clock::OFFSET_ENV, FakeClock::offset_file()),
        };
        match request.start().await {
            Ok(container) => {
                let node = Node {
                    container,
                    port,
                    host_network: network == Network::Host,
                    state: Mutex::new(NodeState::Running),
                    partition: tokio::sync::Mutex::new(None),
                    proxy: None,
                    clock,
                };
                wait_ready(index, port, READY_TIMEOUT).await?;
                return Ok(node);
            }
            Err(e) if clashed(&e, network, port) && attempt < PORT_ATTEMPTS => {
                // testcontainers leaves a created-but-not-started container behind
                // when `docker start` fails; remove it before trying another port.
                remove_by_name(&cname).await;
                port = free_ports(1)?[0];
            }
            Err(e) => {
                if clashed(&e, network, port) {
                    remove_by_name(&cname).await;
                }
                return Err(e.into());
            }
        }
    }
}

/// How a node's port reaches the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Network {
    /// Docker maps a host port to Redis' port in the container's own namespace.
    Mapped,
    /// The container shares the host's network; Redis listens on the port itself.
    Host,
}

/// Whether a container failed to start because its port was taken meanwhile: Docker
/// says so for a mapping; on the host's network Redis exits before it is ready, and
/// the port is found taken.
fn clashed(e: &TestcontainersError, network: Network, port: u16) -> bool {
    match network {
        Network::Mapped => is_port_clash(e),
        Network::Host => TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err(),
    }
}

/// Removes a container by name, ignoring errors (best-effort cleanup).
async fn remove_by_name(name: &str) {
    use testcontainers::bollard::{Docker, query_parameters::RemoveContainerOptionsBuilder};
    if let Ok(docker) = Docker::connect_with_defaults() {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let _ = docker.remove_container(name, Some(opts)).await;
    }
}

/// Waits until the node at `127.0.0.1:port` answers `PING` with `+PONG`.
///
/// A TCP connect alone is not enough: Docker's userland proxy accepts connections on the
/// host port before Redis listens in the container.
async fn wait_ready(index: usize, port: u16, limit: Duration) -> Result<(), Error> {
    let started = Instant::now();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while started.elapsed() < limit {
        if ping(addr, Duration::from_millis(250)).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(Error::NotReady {
        index,
        port,
        waited: started.elapsed(),
    })
}

/// One raw RESP `PING`; true when `+PONG` comes back within `limit`.
async fn ping(addr: SocketAddr, limit: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{Cluster, DEFAULT_IMAGE, Error, IMAGE_ENV, Network, ping, split_image, start_node};

    /// Taken by the tests here that start containers: the taken-port test counts the
    /// containers of this process, which another test's nodes would add to.
    static CONTAINERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// One inline command on node `i`; the reply's first line, or for an array (TIME)
    /// its first element.
    async fn inline(cluster: &Cluster, i: usize, command: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", cluster.port(i)))
            .await
            .expect("connect");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .expect("write");
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "node {i} closed the connection on `{command}`");
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply).to_string();
            let lines: Vec<&str> = text.split("\r\n").collect();
            if text.starts_with('*') {
                // *2 $10 <seconds> ...: wait for the first element.
                if lines.len() > 3 {
                    return lines[2].to_string();
                }
            } else if lines.len() > 1 {
                return lines[0].to_string();
            }
        }
    }

    /// A jump of one node's clock expires that node's keys at once (its wall clock
    /// passed their expiry) and leaves the other node's keys alone; its TIME moves by
    /// the jump, and the offset survives a restart. Needs Docker, the image and `cc`.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_jumping_node_expires_its_keys_and_the_others_keep_them() {
        let _alone = CONTAINERS.lock().await;
        let cluster = Cluster::start_with_fake_clocks(2, &[1])
            .await
            .expect("cluster starts");
        assert_eq!(cluster.clock_offset(0), None);
        assert_eq!(cluster.clock_offset(1), Some(Duration::ZERO));
        assert!(matches!(
            cluster.jump_clock(0, Duration::from_secs(1)),
            Err(Error::NoFakeClock(0))
        ));
        let now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_secs() as i64
        };
        let time_of = async |i| {
            inline(&cluster, i, "TIME")
                .await
                .parse::<i64>()
                .expect("seconds")
        };
        // Unjumped, the preloaded node tells real time.
        assert!((time_of(1).await - now()).abs() <= 1);
        for i in 0..2 {
            assert_eq!(inline(&cluster, i, "SET k v PX 20000").await, "+OK");
        }
        cluster
            .jump_clock(1, Duration::from_secs(30))
            .expect("jump");
        assert_eq!(cluster.clock_offset(1), Some(Duration::from_secs(30)));
        assert_eq!(
            inline(&cluster, 1, "PTTL k").await,
            ":-2",
            "expired on the jumped node"
        );
        let kept: i64 = inline(&cluster, 0, "PTTL k").await[1..]
            .parse()
            .expect("ms");
        assert!(kept > 15_000, "the other node keeps its key: {kept} ms");
        let ahead = time_of(1).await - now();
        assert!((29..=31).contains(&ahead), "TIME is {ahead} s ahead");

        cluster.restart(1).await.expect("restart");
        let ahead = time_of(1).await - now();
        assert!(
            (29..=31).contains(&ahead),
            "after a restart TIME is {ahead} s ahead"
        );
    }

    /// Docker fails `start` with "address already in use" when the chosen host port was
    /// taken meanwhile; the node must come up on another port and the container left
    /// behind by the failed start must be removed. Needs Docker and the image.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_taken_port_is_replaced_and_the_failed_container_removed() {
        let _alone = CONTAINERS.lock().await;
        let began = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos();
        let image = std::env::var(IMAGE_ENV).unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let node = start_node(&image, 0, taken_port, Network::Mapped, None)
            .await
            .expect("node starts");
        assert_ne!(node.port, taken_port);
        let names = std::process::Command::new("docker")
            .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
            .arg(format!("name=fredlock-testcluster-{}-", std::process::id()))
            .output()
            .unwrap();
        // Only the containers created since this test began (their names carry the
        // creation time): another test's, made before it took the lock, may still be
        // on their way out.
        let names: Vec<String> = String::from_utf8_lossy(&names.stdout)
            .lines()
            .filter(|name| {
                let nanos = name.split('-').nth(3).and_then(|n| n.parse::<u128>().ok());
                nanos.is_some_and(|n| n >= began)
            })
            .map(str::to_string)
            .collect();
        assert_eq!(names.len(), 1, "only the started node: {names:?}");
        drop(node);
    }

    /// On the host's network a node listens on its own port of 127.0.0.1 (no mapping),
    /// comes back there after a kill, and refuses a partition, whose rules would apply
    /// to the host. A port taken meanwhile is replaced, as with a mapping. Needs Docker
    /// and the image.
    #[tokio::test(flavor = "multi_thread")]
    async fn host_network_nodes_listen_on_their_own_port() {
        let _alone = CONTAINERS.lock().await;
        let image = std::env::var(IMAGE_ENV).unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let node = start_node(&image, 0, taken_port, Network::Host, None)
            .await
            .expect("node starts");
        assert_ne!(node.port, taken_port);
        drop(node);

        let cluster = Cluster::start_on_host_network(2, false)
            .await
            .expect("start");
        for i in 0..2 {
            assert_eq!(cluster.port(i), cluster.direct_port(i));
            assert!(
                ping(
                    ([127, 0, 0, 1], cluster.port(i)).into(),
                    Duration::from_secs(2)
                )
                .await
            );
        }
        // No docker-proxy process serves the port: the container publishes none.
        let ports = std::process::Command::new("docker")
            .args(["port", cluster.container_id(0)])
            .output()
            .unwrap();
        assert!(
            ports.stdout.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&ports.stdout)
        );
        assert!(matches!(
            cluster.partition(0).await,
            Err(Error::HostNetwork(0))
        ));
        cluster.kill(0).await.expect("kill");
        assert!(
            !ping(
                ([127, 0, 0, 1], cluster.port(0)).into(),
                Duration::from_secs(1)
            )
            .await
        );
        cluster.restart(0).await.expect("restart");
        assert!(
            ping(
                ([127, 0, 0, 1], cluster.port(0)).into(),
                Duration::from_secs(2)
            )
            .await
        );
    }

    #[test]
    fn image_names_split_into_name_and_tag() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(split_image("redis:7.4"), s("redis", "7.4"));
        assert_eq!(split_image("redis"), s("redis", "latest"));
        assert_eq!(
            split_image("fredlock/redis:local"),
            s("fredlock/redis", "local")
        );
        assert_eq!(
            split_image("host:5000/redis"),
            s("host:5000/redis", "latest")
        );
        assert_eq!(split_image("host:5000/redis:7"), s("host:5000/redis", "7"));
    }
}
