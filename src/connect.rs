//! What `build()` does with the nodes: connect them, load the script, and check that
//! each node's ACL allows every command fredlock needs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Client, ClientLike, EventInterface};

use crate::endpoints::parse_endpoints;
use crate::error::Error;
use crate::node::{
    Node, SCRIPT_LOAD_TIMEOUT, client_for, error_message, is_acl_refusal, server_name,
};
use crate::quorum::{NodeVote, Vote, Votes, quorum};
use crate::request::RESERVED_PREFIX;
use crate::settings::{Quarantine, Settings};

fn to_nodes(clients: Vec<Client>, timeout: Duration) -> Arc<[Arc<Node>]> {
    clients
        .into_iter()
        .map(|c| Arc::new(Node::new(c, timeout)))
        .collect()
}

/// Starts every node's connection task and waits until each node has connected or
/// failed its first attempt (at most `timeout`). Fails unless a quorum connected; the
/// other nodes keep reconnecting in the background.
async fn connect(nodes: &[Arc<Node>], timeout: Duration) -> Result<(), Error> {
    let outcomes = futures::future::join_all(nodes.iter().filter_map(|node| {
        let client = node.client()?;
        Some(async move {
            // Subscribed before the connection task starts, so no outcome is missed.
            let mut errors = client.error_rx();
            // The connection task runs until the node is closed.
            node.connect();
            let first = tokio::time::timeout(timeout, async {
                tokio::select! {
                    connected = client.wait_for_connect() => connected.err(),
                    failed = errors.recv() => failed.ok().map(|(e, _)| e),
                }
            })
            .await;
            let vote = match first {
                _ if client.is_connected() => Vote::Yes,
                Ok(None) => Vote::Yes,
                Ok(Some(e)) => Vote::Error(error_message(&e)),
                Err(_) => Vote::Timeout,
            };
            NodeVote {
                node: Arc::clone(node.name()),
                vote,
            }
        })
    }))
    .await;
    let votes = Votes(outcomes);
    if votes.yes() >= quorum(nodes.len()) {
        return Ok(());
    }
    futures::future::join_all(nodes.iter().map(|n| n.close(timeout))).await;
    Err(Error::Connect { votes })
}

/// On every connected node: loads the lock function library and script (the node loads
/// them on each connection too, but in the background: waiting here means the first
/// acquisition finds them), then checks that its ACL allows every command fredlock
/// needs.
async fn prepare(nodes: &[Arc<Node>], settings: &Settings) -> Result<(), Error> {
    let probe = format!("{}{RESERVED_PREFIX}probe", settings.key_prefix);
    let quarantine = settings.quarantine != Quarantine::Off;
    let checks = nodes
        .iter()
        .filter(|node| node.client().is_some_and(|client| client.is_connected()))
        .map(|node| {
            let probe = &probe;
            async move {
                let denied = match node.load().await {
                    Some(message) if is_acl_refusal(&message) => {
                        Err(("SCRIPT LOAD".to_string(), message))
                    }
                    _ => node.check(probe, quarantine, SCRIPT_LOAD_TIMEOUT).await,
                };
                denied.map_err(|(command, message)| Error::Denied {
                    node: node.name().to_string(),
                    command,
                    message,
                })
            }
        });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .collect()
}

/// Nodes for the endpoint URLs: clients created, connected (a quorum within the
/// connect timeout), the script loaded and the permissions checked.
pub(crate) async fn from_urls(
    urls: &[String],
    settings: &Settings,
) -> Result<Arc<[Arc<Node>]>, Error> {
    let configs = parse_endpoints(urls)?;
    let mut clients = Vec::with_capacity(configs.len());
    for (i, config) in configs.into_iter().enumerate() {
        let client = client_for(config, settings)
            .map_err(|e| Error::config("endpoints", format!("endpoint {i}: {}", e.details())))?;
        clients.push(client);
    }
    // Nodes first: they listen for connection errors from the start.
    let nodes = to_nodes(clients, settings.node_timeout);
    connect(&nodes, settings.connect_timeout).await?;
    if let Err(denied) = prepare(&nodes, settings).await {
        let timeout = settings.connect_timeout;
        futures::future::join_all(nodes.iter().map(|n| n.close(timeout))).await;
        return Err(denied);
    }
    Ok(nodes)
}

/// Nodes over the service's own clients, used as they are (connected or not), each
/// checked to be one independent master; the script loaded and the permissions
/// checked on those that are connected.
pub(crate) async fn from_clients(
    clients: Vec<Client>,
    settings: &Settings,
) -> Result<Arc<[Arc<Node>]>, Error> {
    if clients.is_empty() {
        return Err(Error::config("clients", "at least one client is required"));
    }
    let mut seen = HashSet::new();
    for client in &clients {
        let name = server_name(&client.client_config());
        if client.is_clustered() || client.uses_sentinels() {
            return Err(Error::config(
                "clients",
                format!(
                    "{name}: a cluster or sentinel client; each client must be one \
                     independent master"
                ),
            ));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(Error::config(
                "clients",
                format!("two clients point at {name}: the masters must be independent"),
            ));
        }
    }
    let nodes = to_nodes(clients, settings.node_timeout);
    prepare(&nodes, settings).await?;
    Ok(nodes)
}
