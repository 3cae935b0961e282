//! Bad input gets a typed error naming what is wrong, and leaves nothing behind.

use std::time::Duration;

use fredlock::{Error, MAX_TTL, Redlock};

use crate::support::{Nodes, TestResult, resource};

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
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
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
