//! Wake-up on release: clients waiting for a lock subscribe to its keys' release
//! channels on every node, and retry as soon as one node announces the release instead
//! of at their next polling time. Polling with jitter remains the fallback when a
//! notification is missed (a node down, a subscription not yet active, another
//! Redlock client releasing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface, ReconnectPolicy};
use tokio::sync::watch;

use crate::node::{Node, RELEASE_CHANNEL_PREFIX};

/// One subscriber connection per node, shared by every waiter of a `Redlock`.
pub(crate) struct Wakeup {
    subscribers: Vec<SubscriberClient>,
    /// Per channel: how many waiters want it, and a counter bumped on each message.
    channels: Mutex<HashMap<String, Channel>>,
    timeout: Duration,
}

struct Channel {
    waiters: usize,
    announced: watch::Sender<u64>,
}

impl Wakeup {
    /// Starts one subscriber connection per node, configured like the node's client,
    /// without waiting for them: until they are up, waiters simply poll.
    pub(crate) fn start(nodes: &[Arc<Node>], timeout: Duration) -> Arc<Wakeup> {
        Arc::new_cyclic(|weak: &std::sync::Weak<Wakeup>| {
            let subscribers = nodes
                .iter()
                .map(|node| {
                    let client = node.client();
                    let mut perf = client.perf_config();
                    // Subscriptions are not lock rounds: no node-timeout bound here.
                    perf.default_command_timeout = timeout;
                    let subscriber = SubscriberClient::new(
                        client.client_config(),
                        Some(perf),
                        Some(client.connection_config().clone()),
                        client
                            .client_reconnect_policy()
                            .or(Some(ReconnectPolicy::new_constant(0, 100))),
                    );
                    drop(subscriber.connect());
                    drop(subscriber.manage_subscriptions());
                    let weak = weak.clone();
                    drop(subscriber.on_message(move |message| {
                        if let Some(wakeup) = weak.upgrade() {
                            wakeup.announce(&message.channel);
                        }
                        async { Ok(()) }
                    }));
                    subscriber
                })
                .collect();
            Wakeup {
                subscribers,
                channels: Mutex::new(HashMap::new()),
                timeout,
            }
        })
    }

    /// Subscribes to the release channels of `keys` for as long as the returned
    /// [`Subscription`] lives.
    pub(crate) fn subscribe(self: &Arc<Self>, keys: &[Arc<str>]) -> Subscription {
        let mut receivers = Vec::with_capacity(keys.len());
        let mut new_channels = Vec::new();
        let names: Vec<String> = keys
            .iter()
            .map(|key| format!("{RELEASE_CHANNEL_PREFIX}{key}"))
            .collect();
        if let Ok(mut channels) = self.channels.lock() {
            for name in &names {
                let channel = channels.entry(name.clone()).or_insert_with(|| {
                    new_channels.push(name.clone());
                    Channel {
                        waiters: 0,
                        announced: watch::Sender::new(0),
                    }
                });
                channel.waiters += 1;
                receivers.push(channel.announced.subscribe());
            }
        }
        if !new_channels.is_empty() {
            self.send_to_all(new_channels, true);
        }
        Subscription {
            wakeup: Arc::clone(self),
            channels: names,
            receivers,
        }
    }

    fn announce(&self, channel: &str) {
        if let Ok(channels) = self.channels.lock() {
            if let Some(channel) = channels.get(channel) {
                channel.announced.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    fn unsubscribe(&self, names: &[String]) {
        let mut gone = Vec::new();
        if let Ok(mut channels) = self.channels.lock() {
            for name in names {
                if let Some(channel) = channels.get_mut(name) {
                    channel.waiters = channel.waiters.saturating_sub(1);
                    if channel.waiters == 0 {
                        channels.remove(name);
                        gone.push(name.clone());
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.send_to_all(gone, false);
        }
    }

    /// (Un)subscribes on every node in the background, each bounded by the timeout.
    fn send_to_all(&self, channels: Vec<String>, subscribe: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for subscriber in &self.subscribers {
            let (subscriber, channels, timeout) =
                (subscriber.clone(), channels.clone(), self.timeout);
            runtime.spawn(async move {
                let request = async {
                    if !subscriber.is_connected() {
                        // A command sent before the connection is up can time out
                        // before it is ever written.
                        let _ = subscriber.wait_for_connect().await;
                    }
                    if subscribe {
                        subscriber.subscribe(channels).await
                    } else {
                        subscriber.unsubscribe(channels).await
                    }
                };
                let _ = tokio::time::timeout(timeout, request).await;
            });
        }
    }

    /// Closes the subscriber connections in the background.
    pub(crate) fn quit(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for subscriber in &self.subscribers {
            let (subscriber, timeout) = (subscriber.clone(), self.timeout);
            runtime.spawn(async move {
                let _ = tokio::time::timeout(timeout, subscriber.quit()).await;
            });
        }
    }
}

/// A waiter's interest in some keys' releases.
pub(crate) struct Subscription {
    wakeup: Arc<Wakeup>,
    channels: Vec<String>,
    receivers: Vec<watch::Receiver<u64>>,
}

impl Subscription {
    /// Resolves when one of the keys was announced released since the last call (or
    /// since the subscription began).
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
