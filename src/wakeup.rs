//! Wake-up on release: clients waiting for a lock subscribe to its keys' release
//! channels on every node, and retry as soon as a release is announced instead of at
//! their next polling time. Polling with jitter remains the fallback when a
//! notification is missed (a node down, a subscription not yet active, another
//! Redlock client releasing).
//!
//! Each node has one subscriber connection and one task that owns it: waiters change
//! the set of wanted channels, and the task brings the connection's subscriptions to
//! that set, in order, trying again after a failure. Every node announces each
//! release with the released token; a waiter is woken once per token, not once per
//! node.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface, ReconnectPolicy};
use tokio::sync::{Notify, watch};

use crate::node::Node;
use crate::scripts::RELEASE_CHANNEL_PREFIX;

/// How many recently announced tokens a channel remembers, to ignore the same
/// release announced by the other nodes.
const SEEN_TOKENS: usize = 16;

/// The subscriber connections of a `Redlock`, shared by all its waiters.
pub(crate) struct Wakeup {
    /// Per channel: how many waiters want it, and what was announced on it.
    channels: Mutex<HashMap<String, Channel>>,
    /// Woken when the set of wanted channels changes; one per node's task.
    changed: Vec<Arc<Notify>>,
    /// Set by [`close`](Wakeup::close).
    closed: AtomicBool,
}

struct Channel {
    waiters: usize,
    /// Bumped once per newly announced token.
    announced: watch::Sender<u64>,
    /// Recent tokens, with how many nodes announced each.
    seen: VecDeque<(String, usize)>,
}

impl Wakeup {
    /// Starts one subscriber connection per node, configured like the node's client,
    /// and the task that manages it, without waiting for them: until they are up,
    /// waiters simply poll. The tasks end when the `Wakeup` is dropped.
    pub(crate) fn start(nodes: &[Arc<Node>], timeout: Duration) -> Arc<Wakeup> {
        let changed: Vec<Arc<Notify>> = nodes.iter().map(|_| Arc::default()).collect();
        let wakeup = Arc::new(Wakeup {
            channels: Mutex::new(HashMap::new()),
            changed: changed.clone(),
            closed: AtomicBool::new(false),
        });
        // Spawned once the `Wakeup` exists: a task that ran before could not upgrade
        // its reference and would end at once.
        for (node, changed) in nodes.iter().zip(changed) {
            // A node without a fred client (in unit tests) announces nothing.
            let Some(subscriber) = subscriber_for(node, timeout) else {
                continue;
            };
            tokio::spawn(manage(
                subscriber,
                Arc::downgrade(&wakeup),
                changed,
                timeout,
            ));
        }
        wakeup
    }

    /// Subscribes to the release channels of `keys` for as long as the returned
    /// [`Subscription`] lives.
    pub(crate) fn subscribe(self: &Arc<Self>, keys: &[Arc<str>]) -> Subscription {
        let names: Vec<String> = keys
            .iter()
            .map(|key| format!("{RELEASE_CHANNEL_PREFIX}{key}"))
            .collect();
        let mut receivers = Vec::with_capacity(keys.len());
        let mut added = false;
        if let Ok(mut channels) = self.channels.lock() {
            for name in &names {
                let channel = channels.entry(name.clone()).or_insert_with(|| {
                    added = true;
                    Channel {
                        waiters: 0,
                        announced: watch::Sender::new(0),
                        seen: VecDeque::new(),
                    }
                });
                channel.waiters += 1;
                receivers.push(channel.announced.subscribe());
            }
        }
        if added {
            self.notify_all();
        }
        Subscription {
            wakeup: Arc::clone(self),
            channels: names,
            receivers,
        }
    }

    /// A message on `channel`: wakes its waiters at the first node's announcement of
    /// `token`, and again at a quorum's. The first is the earliest a retry can
    /// succeed; but the nodes run the release and a waiter's acquisition in any order
    /// (they come on different connections), so that retry may still find the key on
    /// a quorum, and once a quorum announced it, one cannot.
    fn announce(&self, channel: &str, token: String) {
        let quorum = crate::quorum::quorum(self.changed.len());
        if let Ok(mut channels) = self.channels.lock() {
            if let Some(channel) = channels.get_mut(channel) {
                let count = match channel.seen.iter_mut().find(|(seen, _)| *seen == token) {
                    Some((_, count)) => {
                        *count += 1;
                        *count
                    }
                    None => {
                        if channel.seen.len() == SEEN_TOKENS {
                            channel.seen.pop_front();
                        }
                        channel.seen.push_back((token, 1));
                        1
                    }
                };
                if count == 1 || count == quorum {
                    channel.announced.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }

    fn unsubscribe(&self, names: &[String]) {
        let mut removed = false;
        if let Ok(mut channels) = self.channels.lock() {
            for name in names {
                if let Some(channel) = channels.get_mut(name) {
                    channel.waiters = channel.waiters.saturating_sub(1);
                    if channel.waiters == 0 {
                        channels.remove(name);
                        removed = true;
                    }
                }
            }
        }
        if removed {
            self.notify_all();
        }
    }

    /// The channels to subscribe to, or `None` once closed.
    fn wanted(&self) -> Option<HashSet<String>> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.channels
                .lock()
                .map(|channels| channels.keys().cloned().collect())
                .unwrap_or_default(),
        )
    }

    /// Ends the subscription tasks and closes their connections ([`Redlock::quit`]);
    /// waiters then only poll.
    ///
    /// [`Redlock::quit`]: crate::Redlock::quit
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify_all();
    }

    fn notify_all(&self) {
        for changed in &self.changed {
            changed.notify_one();
        }
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        // The tasks see the `Wakeup` gone once woken.
        self.notify_all();
    }
}

fn subscriber_for(node: &Node, timeout: Duration) -> Option<SubscriberClient> {
    let client = node.client()?;
    let mut perf = client.perf_config();
    // Subscriptions are not lock rounds: no node-timeout bound here.
    perf.default_command_timeout = timeout;
    Some(SubscriberClient::new(
        client.client_config(),
        Some(perf),
        Some(client.connection_config().clone()),
        client
            .client_reconnect_policy()
            .or(Some(ReconnectPolicy::new_constant(0, 100))),
    ))
}

/// The task that owns one node's subscriber connection: it keeps the connection's
/// subscriptions equal to the wanted channels, one change at a time and in order, and
/// tries again every `timeout` after a failure. It ends, closing the connection, when
/// the `Wakeup` is gone.
async fn manage(
    subscriber: SubscriberClient,
    wakeup: Weak<Wakeup>,
    changed: Arc<Notify>,
    timeout: Duration,
) {
    let connection = subscriber.connect();
    let resubscriber = subscriber.manage_subscriptions();
    let messages = subscriber.on_message({
        let wakeup = wakeup.clone();
        move |message| {
            if let Some(wakeup) = wakeup.upgrade() {
                let token = message.value.as_string().unwrap_or_default();
                wakeup.announce(&message.channel, token);
            }
            async { Ok(()) }
        }
    });
    // Channels a SUBSCRIBE was sent for (it may have run on the node even if it timed
    // out here), and those the node confirmed.
    let mut sent: HashSet<String> = HashSet::new();
    let mut confirmed: HashSet<String> = HashSet::new();
    while let Some(wanted) = wakeup.upgrade().and_then(|wakeup| wakeup.wanted()) {
        let mut failed = false;
        let gone: Vec<String> = sent.difference(&wanted).cloned().collect();
        if !gone.is_empty() {
            let request = subscriber.unsubscribe(gone.clone());
            match tokio::time::timeout(timeout, request).await {
                Ok(Ok(())) => {
                    sent.retain(|c| !gone.contains(c));
                    confirmed.retain(|c| !gone.contains(c));
                }
                _ => failed = true,
            }
        }
        let new: Vec<String> = wanted.difference(&confirmed).cloned().collect();
        if !new.is_empty() {
            let request = async {
                if !subscriber.is_connected() {
                    // A command sent before the connection is up can time out before
                    // it is ever written.
                    subscriber.wait_for_connect().await?;
                }
                subscriber.subscribe(new.clone()).await
            };
            sent.extend(new.iter().cloned());
            match tokio::time::timeout(timeout, request).await {
                Ok(Ok(())) => confirmed.extend(new),
                _ => failed = true,
            }
        }
        if failed {
            // Try again after a pause, or at once when the wanted set changes.
            tokio::select! {
                () = tokio::time::sleep(timeout) => {}
                () = changed.notified() => {}
            }
        } else {
            changed.notified().await;
        }
    }
    messages.abort();
    resubscriber.abort();
    let _ = tokio::time::timeout(timeout, subscriber.quit()).await;
    connection.abort();
}

/// A waiter's interest in some keys' releases.
pub(crate) struct Subscription {
    wakeup: Arc<Wakeup>,
    channels: Vec<String>,
    receivers: Vec<watch::Receiver<u64>>,
}

impl Subscription {
    /// Resolves when a release of one of the keys was announced since the last call
    /// (or since the subscription began).
    pub(crate) async fn released(&mut self) {
        if self.receivers.is_empty() {
            return std::future::pending().await;
        }
        let changes = self.receivers.iter_mut().map(|rx| Box::pin(rx.changed()));
        // A closed channel cannot happen while the Wakeup lives; treat it as a wake-up.
        let _ = futures::future::select_all(changes).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.wakeup.unsubscribe(&self.channels);
    }
}
