//! Bad input gets a typed error naming what is wrong, and leaves nothing behind.

use std::time::Duration;

use fredlock::{Error, MAX_TTL, Redlock, Vote};

use crate::support::{Nodes, ROOMY, TestResult, resource};

fn config_field(result: Result<Redlock, Error>) -> &'static str {
    match result {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_configuration_names_the_field() {
    let no_endpoints: Vec<String> = Vec::new();
    assert_eq!(
        config_field(Redlock::builder(no_endpoints).build().await),
        "endpoints"
    );
    assert_eq!(
        config_field(
            Redlock::builder(["redis://127.0.0.1:notaport"])
                .build()
                .await
        ),
        "endpoints"
    );
    assert_eq!(
        config_field(Redlock::builder(["localhost:6379"]).build().await),
        "endpoints"
    );
    assert_eq!(
        config_field(
            Redlock::builder(["redis://127.0.0.1:7001", "redis://127.0.0.1:7001"])
                .build()
                .await
        ),
        "endpoints"
    );
    for factor in [-0.5, 1.0, f64::NAN] {
        let built = Redlock::builder(["redis://127.0.0.1:7001"])
            .drift_factor(factor)
            .build()
            .await;
        assert_eq!(config_field(built), "drift_factor");
    }
    let built = Redlock::builder(["redis://127.0.0.1:7001"])
        .node_timeout(Duration::from_millis(100))
        .acquire_timeout(Duration::from_millis(10))
        .build()
        .await;
    assert_eq!(config_field(built), "acquire_timeout");
    assert_eq!(
        config_field(Redlock::from_clients(Vec::new()).build().await),
        "clients"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_quorum_at_build_is_a_connect_error() {
    // Ports 1 and 2 on loopback have no listener: connection refused.
    let built = Redlock::builder(["redis://127.0.0.1:1", "redis://127.0.0.1:2"])
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await;
    match built {
        Err(Error::Connect { votes }) => assert_eq!(votes.yes(), 0, "{votes}"),
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_lock_arguments_name_the_argument_and_leave_nothing() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let argument = |r: Result<fredlock::Lock, Error>| match r {
        Err(Error::InvalidArgument { argument, .. }) => argument,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let res = resource("bad-input");
    assert_eq!(
        argument(redlock.lock("", Duration::from_secs(1)).await),
        "resource"
    );
    assert_eq!(
        argument(redlock.try_lock(&res, Duration::ZERO).await),
        "ttl"
    );
    assert_eq!(
        argument(redlock.lock(&res, Duration::from_micros(900)).await),
        "ttl"
    );
    // 2 ms is not more than the drift allowance (2 ms + 1%).
    assert_eq!(
        argument(redlock.lock(&res, Duration::from_millis(2)).await),
        "ttl"
    );
    assert_eq!(argument(redlock.lock(&res, Duration::MAX).await), "ttl");
    assert_eq!(
        argument(redlock.lock(&res, MAX_TTL + Duration::from_millis(1)).await),
        "ttl"
    );
    assert!(nodes.holding(0..3, &res).await.is_empty());

    // The largest TTL is accepted by the nodes and the validity arithmetic.
    let mut lock = redlock.lock(&res, MAX_TTL).await?;
    assert!(lock.remaining() > MAX_TTL / 2);
    match lock.extend(Duration::ZERO).await {
        Err(Error::InvalidArgument { argument, .. }) => assert_eq!(argument, "ttl"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    lock.release().await?;
    nodes.assert_released(&[0, 1, 2], &res).await;
    Ok(())
}

/// fredlock's own keys live in a reserved namespace: a resource named like another's
/// fencing counter is an ordinary resource, and names inside the namespace are refused.
#[tokio::test(flavor = "multi_thread")]
async fn fredlock_keys_never_collide_with_resources() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("x");
    redlock
        .lock(&res, Duration::from_secs(5))
        .await?
        .release()
        .await?;
    let lookalike = format!("{res}:fence");
    let lock = redlock.try_lock(&lookalike, Duration::from_secs(5)).await?;
    lock.release().await?;
    let lock = redlock.try_lock(&res, Duration::from_secs(5)).await?;
    lock.release().await?;
    for reserved in ["fredlock:incarnation", "fredlock:fence:x", "fredlock:"] {
        match redlock.try_lock(reserved, Duration::from_secs(5)).await {
            Err(Error::InvalidArgument {
                argument: "resource",
                reason,
            }) => assert!(reason.contains("fredlock:"), "{reason}"),
            other => panic!("`{reserved}`: {other:?}"),
        }
    }
    Ok(())
}

/// A sentinel client is refused by `from_clients`, and the refusal does not print
/// the sentinel password (fred's debug form of the config would).
#[tokio::test]
async fn a_refused_sentinel_client_does_not_show_its_password() -> TestResult {
    let config = fred::prelude::Config::from_url(
        "redis-sentinel://user:hunter2@127.0.0.1:26379/0?sentinelServiceName=main&sentinelUsername=su&sentinelPassword=swordfish",
    )?;
    let client = fred::prelude::Builder::from_config(config).build()?;
    let err = Redlock::from_clients([client])
        .build()
        .await
        .expect_err("a sentinel client");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("swordfish") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(text.contains("127.0.0.1:26379"), "{text}");
    Ok(())
}

/// A node that refuses connections votes with the OS error as text, not as the debug
/// form of an `io::Error`.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_reads_as_text() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    nodes.cluster.kill(2).await?;
    let res = resource("refused");
    let start = std::time::Instant::now();
    let message = loop {
        // The node's vote is only in an error: make one with a held resource.
        let held = redlock.lock(&res, Duration::from_secs(5)).await?;
        let refused = redlock
            .try_lock(&res, Duration::from_secs(5))
            .await
            .expect_err("held");
        held.release().await?;
        let vote = refused
            .votes()
            .and_then(|votes| votes.iter().nth(2).map(|nv| nv.vote.clone()));
        if let Some(Vote::Error(m)) = &vote {
            if m.contains("refused") || m.contains("Os {") {
                break m.clone();
            }
        }
        // Bounded, not hung: fred notices the killed node within its reconnect delay;
        // 10 s only bounds a loaded machine.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no connection error from the killed node: {vote:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!message.contains("Os {"), "{message}");
    assert!(message.contains("Connection refused"), "{message}");
    Ok(())
}

/// A `retry_delay` of `Duration::MAX` is a very long wait between attempts, not a
/// panic: the waiter is still waiting (and can be dropped) in its pause.
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_retry_delay_waits_without_a_panic() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let holder = nodes.redlock(ROOMY).await;
    let waiter = nodes
        .builder()
        .node_timeout(ROOMY)
        .retry_delay(Duration::MAX)
        .retry_jitter(Duration::MAX)
        .build()
        .await?;
    let res = resource("largest-retry-delay");
    let held = holder.lock(&res, Duration::from_secs(30)).await?;
    nodes.assert_held(&[0, 1, 2], &res, held.token()).await;
    let base = nodes.calls_on(&[0, 1, 2], "fcall").await;
    let waiting = tokio::spawn({
        let (waiter, res) = (waiter.clone(), res.clone());
        async move { waiter.lock(&res, Duration::from_secs(30)).await.map(drop) }
    });
    // The waiter's first attempt ran on every node (and was refused); its pause
    // begins as soon as that attempt is decided, within its node timeout.
    nodes
        .wait_calls_above(&[0, 1, 2], "fcall", &base, Duration::from_secs(3))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    waiting.abort();
    held.release().await?;
    Ok(())
}
