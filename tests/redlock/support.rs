//! Shared support for the container tests: a cluster with an admin connection to each
//! node, and fredlock clients configured for tests. Used by tests/redlock and
//! tests/safety, which each use a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use fred::prelude::{Builder as FredBuilder, Client, ClientLike, Config, ReconnectPolicy, Value};
use fred::types::CustomCommand;
use fredlock::{Builder, Quarantine, Redlock};
use fredlock_testcluster::Cluster;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The node timeout of clients whose test makes no claim about time, only about
/// outcomes and votes: a loopback round trip takes a millisecond or two, and 1 s holds
/// when both cores are busy, where 50-200 ms once did not (a round that needed every
/// node's answer got a timed-out vote instead, and `NoQuorum` instead of its outcome).
pub const ROOMY: Duration = Duration::from_secs(1);

/// A started cluster plus one admin client per node (independent of fredlock's own).
pub struct Nodes {
    pub cluster: Cluster,
    admin: Vec<Client>,
}

impl Nodes {
    pub async fn start(n: usize) -> Result<Nodes, Box<dyn std::error::Error + Send + Sync>> {
        Nodes::admin_for(Cluster::start(n).await?).await
    }

    /// Like [`Nodes::start`], with a loopback proxy in front of each node so that
    /// latency can be added to one node; fredlock goes through the proxies, the admin
    /// connections do not.
    pub async fn start_with_proxies(
        n: usize,
    ) -> Result<Nodes, Box<dyn std::error::Error + Send + Sync>> {
        Nodes::admin_for(Cluster::start_with_proxies(n).await?).await
    }

    /// Like [`Nodes::start`], with the nodes in `fake` running on a wall clock that
    /// `cluster.jump_clock` can step (tests/safety/clock_jump.rs).
    pub async fn start_with_fake_clocks(
        n: usize,
        fake: &[usize],
    ) -> Result<Nodes, Box<dyn std::error::Error + Send + Sync>> {
        Nodes::admin_for(Cluster::start_with_fake_clocks(n, fake).await?).await
    }

    async fn admin_for(
        cluster: Cluster,
    ) -> Result<Nodes, Box<dyn std::error::Error + Send + Sync>> {
        let n = cluster.len();
        let mut admin = Vec::with_capacity(n);
        for url in (0..n).map(|i| cluster.direct_url(i)) {
            let client = FredBuilder::from_config(Config::from_url(&url)?)
                .set_policy(ReconnectPolicy::new_constant(0, 50))
                .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
                .build()?;
            client.init().await?;
            admin.push(client);
        }
        Ok(Nodes { cluster, admin })
    }

    pub fn urls(&self) -> Vec<String> {
        self.cluster.urls()
    }

    /// A builder over all nodes, without the restart quarantine: these nodes are new
    /// and get restarted, and with it each would sit out its 60 s period. The
    /// quarantine tests (tests/safety/quarantine.rs) use the defaults themselves. The
    /// node timeout is [`ROOMY`] unless the test sets its own.
    pub fn builder(&self) -> Builder {
        Redlock::builder(self.urls())
            .restart_quarantine(Quarantine::Off)
            .node_timeout(ROOMY)
    }

    /// A builder for a waiter that polls only every 30 s, without jitter: a test that
    /// sees it acquire within seconds shows it was woken by a release.
    pub fn slow_poller(&self, node_timeout: Duration) -> Builder {
        self.builder()
            .node_timeout(node_timeout)
            .retry_delay(Duration::from_secs(30))
            .retry_jitter(Duration::ZERO)
    }

    /// A fredlock client over all nodes with the given per-node timeout.
    pub async fn redlock(&self, node_timeout: Duration) -> Redlock {
        self.builder()
            .node_timeout(node_timeout)
            .build()
            .await
            .expect("build redlock")
    }

    /// Runs a raw command on node `i` with the admin connection.
    pub async fn cmd(
        &self,
        i: usize,
        name: &'static str,
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        self.admin[i]
            .custom(CustomCommand::new_static(name, None::<u16>, false), args)
            .await
    }

    /// `CONFIG SET parameter value` on node `i`.
    pub async fn config_set(
        &self,
        i: usize,
        parameter: &str,
        value: &str,
    ) -> Result<(), fred::error::Error> {
        self.cmd(
            i,
            "CONFIG",
            vec!["SET".into(), parameter.into(), value.into()],
        )
        .await
        .map(drop)
    }

    /// Replaces `key` on node `i` by a list, so scripts reading it get `WRONGTYPE`.
    pub async fn make_list(&self, i: usize, key: &str) -> Result<(), fred::error::Error> {
        self.cmd(i, "DEL", vec![key.into()]).await?;
        self.cmd(i, "LPUSH", vec![key.into(), Value::from("x")])
            .await
            .map(drop)
    }

    /// The value stored under `key` on node `i` (`None` if absent).
    pub async fn get(&self, i: usize, key: &str) -> Option<String> {
        match self.cmd(i, "GET", vec![key.into()]).await.expect("GET") {
            Value::Null => None,
            v => Some(v.as_string().expect("string value")),
        }
    }

    /// `SET key value PX ttl_ms` on node `i`, as another client holding the resource.
    pub async fn set(&self, i: usize, key: &str, value: &str, ttl_ms: i64) {
        self.cmd(
            i,
            "SET",
            vec![key.into(), value.into(), "PX".into(), ttl_ms.into()],
        )
        .await
        .expect("SET");
    }

    /// The key's remaining TTL on node `i` in ms (-2 if absent).
    pub async fn pttl(&self, i: usize, key: &str) -> i64 {
        self.cmd(i, "PTTL", vec![key.into()])
            .await
            .expect("PTTL")
            .as_i64()
            .expect("integer")
    }

    /// The nodes (by index) on which `key` exists, among `which`.
    pub async fn holding(&self, which: impl IntoIterator<Item = usize>, key: &str) -> Vec<usize> {
        let mut found = Vec::new();
        for i in which {
            if self.get(i, key).await.is_some() {
                found.push(i);
            }
        }
        found
    }

    /// Polls until `key` is absent on every node in `which`, for at most `limit`.
    /// Returns the nodes that still hold it at the end.
    pub async fn wait_absent(&self, which: &[usize], key: &str, limit: Duration) -> Vec<usize> {
        let start = Instant::now();
        loop {
            let left = self.holding(which.iter().copied(), key).await;
            if left.is_empty() || start.elapsed() > limit {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that `key` is gone from every node in `which` within 3 s: a release
    /// returns at its quorum, and the other nodes' requests finish right after.
    pub async fn assert_released(&self, which: &[usize], key: &str) {
        let left = self.wait_absent(which, key, Duration::from_secs(3)).await;
        assert!(left.is_empty(), "`{key}` is still on nodes {left:?}");
    }

    /// Polls until `key` holds `value` on every node in `which`, for at most 2 s: an
    /// acquisition returns at its quorum, and the other nodes' SETs land right after.
    pub async fn assert_held(&self, which: &[usize], key: &str, value: &str) {
        let start = Instant::now();
        loop {
            let mut missing = Vec::new();
            for &i in which {
                if self.get(i, key).await.as_deref() != Some(value) {
                    missing.push(i);
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "`{key}` does not hold {value} on nodes {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many subscribers `channel` has on every node together (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> usize {
        let mut total = 0;
        for i in 0..self.admin.len() {
            let reply = self
                .cmd(i, "PUBSUB", vec!["NUMSUB".into(), channel.into()])
                .await
                .expect("PUBSUB NUMSUB");
            if let Value::Array(pair) = reply {
                let n = pair.get(1).and_then(Value::as_i64).unwrap_or(0);
                total += usize::try_from(n).unwrap_or(0);
            }
        }
        total
    }

    /// Polls until `channel` has a subscriber on each of the `n` nodes, for at most
    /// 15 s (a waiter subscribes after its first attempt failed).
    pub async fn wait_subscribers(&self, channel: &str, n: usize) {
        let start = Instant::now();
        while self.subscribers(channel).await < n {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "`{channel}` has fewer than {n} subscribers after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until `key`'s TTL is above `ms` on every node in `which`, for at most
    /// 2 s: an extension returns at its quorum, the other nodes follow right after.
    pub async fn assert_pttl_above(&self, which: &[usize], key: &str, ms: i64) {
        let start = Instant::now();
        loop {
            let mut short = Vec::new();
            for &i in which {
                let pttl = self.pttl(i, key).await;
                if pttl <= ms {
                    short.push((i, pttl));
                }
            }
            if short.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "`{key}` TTL not above {ms} ms on (node, pttl) {short:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The connections node `i` has open, apart from the admin connection asking
    /// (`CLIENT LIST`).
    pub async fn other_connections(&self, i: usize) -> usize {
        let own = self
            .cmd(i, "CLIENT", vec!["ID".into()])
            .await
            .expect("CLIENT ID")
            .as_i64()
            .expect("an id");
        let list = self
            .cmd(i, "CLIENT", vec!["LIST".into()])
            .await
            .expect("CLIENT LIST")
            .as_string()
            .expect("text");
        let own = format!("id={own} ");
        list.lines().filter(|l| !l.starts_with(&own)).count()
    }

    /// How many times node `i` has run `command` (lower case, from `INFO
    /// commandstats`); zero while the node does not answer.
    pub async fn calls(&self, i: usize, command: &str) -> u64 {
        self.commandstat(i, command, "calls").await
    }

    /// How many times node `i` refused `command` before running it (an ACL refusal,
    /// `OOM`); zero while the node does not answer.
    pub async fn rejected(&self, i: usize, command: &str) -> u64 {
        self.commandstat(i, command, "rejected_calls").await
    }

    /// The counter `field` of `command` in node `i`'s `INFO commandstats`, whose lines
    /// read `cmdstat_fcall:calls=12,usec=30,...,rejected_calls=1,failed_calls=0`.
    async fn commandstat(&self, i: usize, command: &str, field: &str) -> u64 {
        let info = match self.cmd(i, "INFO", vec!["commandstats".into()]).await {
            Ok(reply) => reply.as_string().unwrap_or_default(),
            Err(_) => return 0,
        };
        let (prefix, field) = (format!("cmdstat_{command}:"), format!("{field}="));
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').find_map(|f| f.strip_prefix(&field)))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Creates the user `name` (password `pw`) on every node with `+@all` and then
    /// `rules` (such as `-evalsha`), and returns the nodes' URLs for that user.
    pub async fn user_urls(
        &self,
        name: &str,
        rules: &[&str],
    ) -> Result<Vec<String>, fred::error::Error> {
        let mut urls = Vec::new();
        for i in 0..self.admin.len() {
            let acl: Vec<Value> = ["SETUSER", name, "on", ">pw", "~*", "&*", "+@all"]
                .iter()
                .chain(rules)
                .map(|&rule| rule.to_string().into())
                .collect();
            self.cmd(i, "ACL", acl).await?;
            urls.push(format!(
                "redis://{name}:pw@127.0.0.1:{}",
                self.cluster.port(i)
            ));
        }
        Ok(urls)
    }

    /// Node `i` forgets fredlock's function library and script (`FUNCTION FLUSH`,
    /// `SCRIPT FLUSH`), as a restarted node without persistence does.
    pub async fn forget_scripts(&self, i: usize) -> Result<(), fred::error::Error> {
        self.cmd(i, "FUNCTION", vec!["FLUSH".into()]).await?;
        self.cmd(i, "SCRIPT", vec!["FLUSH".into()]).await?;
        Ok(())
    }

    /// How many of fredlock's script calls (`FCALL`, `EVALSHA`, `EVAL`) node `i` has
    /// run.
    pub async fn script_calls(&self, i: usize) -> u64 {
        let mut total = 0;
        for command in ["fcall", "evalsha", "eval"] {
            total += self.calls(i, command).await;
        }
        total
    }

    /// Whether node `i` has a function library of fredlock's (`FUNCTION LIST`).
    pub async fn has_library(&self, i: usize) -> bool {
        let args = vec!["LIST".into(), "LIBRARYNAME".into(), "fredlock_*".into()];
        matches!(
            self.cmd(i, "FUNCTION", args).await,
            Ok(Value::Array(list)) if !list.is_empty()
        )
    }

    /// `calls(i, command)` for every node in `which`.
    pub async fn calls_on(&self, which: &[usize], command: &str) -> Vec<u64> {
        let mut counts = Vec::with_capacity(which.len());
        for &i in which {
            counts.push(self.calls(i, command).await);
        }
        counts
    }

    /// Polls until every node in `which` has run `command` more often than `since`
    /// says, for at most `limit`; panics naming the nodes that did not.
    pub async fn wait_calls_above(
        &self,
        which: &[usize],
        command: &str,
        since: &[u64],
        limit: Duration,
    ) {
        let start = Instant::now();
        loop {
            let now = self.calls_on(which, command).await;
            let behind: Vec<usize> = which
                .iter()
                .zip(now.iter().zip(since))
                .filter(|(_, (now, since))| now <= since)
                .map(|(&i, _)| i)
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "nodes {behind:?} never ran {command} (counts {now:?}, before {since:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until node `i`'s admin connection answers again (after a restart).
    pub async fn wait_admin(&self, i: usize, limit: Duration) {
        let start = Instant::now();
        while self.cmd(i, "PING", vec![]).await.is_err() {
            assert!(
                start.elapsed() < limit,
                "node {i} did not come back within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A resource name unique to this test run.
pub fn resource(name: &str) -> String {
    format!("fredlock-test:{name}")
}

/// Connected fred clients for `urls`, as a service that passes its own clients to
/// `Redlock::from_clients` would make them (with a reconnect policy).
pub async fn service_clients(
    urls: Vec<String>,
) -> Result<Vec<Client>, Box<dyn std::error::Error + Send + Sync>> {
    let mut clients = Vec::new();
    for url in urls {
        let client = FredBuilder::from_config(Config::from_url(&url)?)
            .set_policy(ReconnectPolicy::new_constant(0, 100))
            .build()?;
        client.init().await?;
        clients.push(client);
    }
    Ok(clients)
}

/// The key of a resource's fencing counter, in fredlock's reserved namespace.
pub fn fence_key(prefix: &str, resource: &str) -> String {
    format!("{prefix}fredlock:fence:{resource}")
}

/// The incarnation marker fredlock keeps on each node (for an empty key prefix).
pub const MARKER: &str = "fredlock:incarnation";

/// Lifts the restart quarantine of fresh nodes (the operator's step for a first
/// deployment) and checks that every node took it.
pub async fn lift_quarantine(redlock: &Redlock) {
    let votes = redlock.lift_restart_quarantine().await;
    assert_eq!(votes.yes(), votes.len(), "lifting the quarantine: {votes}");
}

/// Whether `err` is the typed error for a command the node's ACL denies, naming it.
pub fn is_denied(err: &fredlock::Error, command: &str) -> bool {
    matches!(err, fredlock::Error::Denied { command: c, .. } if c.eq_ignore_ascii_case(command))
}

/// How many keys matching `pattern` node `i` holds.
pub async fn count_keys(nodes: &Nodes, i: usize, pattern: &str) -> usize {
    match nodes
        .cmd(i, "KEYS", vec![pattern.into()])
        .await
        .expect("KEYS")
    {
        Value::Array(keys) => keys.len(),
        other => panic!("KEYS answered {other:?}"),
    }
}

/// The number of tasks alive on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Polls until at most `limit` tasks are alive, for at most `within`; returns the
/// last count.
pub async fn settle_tasks(limit: usize, within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let alive = alive_tasks();
        if alive <= limit || start.elapsed() > within {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
