//! One bare fred client to one node, connected within a bound: the floor's, the INFO
//! probe's and the environment's Redis-version query differ only in their settings.

use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config};

/// Builds a client for `url` with `setup` applied to its builder and waits at most
/// `bound` for it to connect.
pub async fn connect(
    url: &str,
    bound: Duration,
    setup: impl FnOnce(&mut Builder),
) -> Result<Client, String> {
    let config = Config::from_url(url).map_err(|e| format!("{url}: {e}"))?;
    let mut builder = Builder::from_config(config);
    setup(&mut builder);
    let client = builder.build().map_err(|e| format!("{url}: {e}"))?;
    tokio::time::timeout(bound, client.init())
        .await
        .map_err(|_| format!("{url}: no connection within {bound:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(client)
}
