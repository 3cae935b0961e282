//! Option validation: every bad value names its option.

use super::*;

fn field(err: Error) -> &'static str {
    match err {
        Error::Config { field, .. } => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn builder() -> Builder {
    Builder::from_urls(vec!["redis://127.0.0.1:1".to_string()])
}

#[test]
fn option_validation_names_the_field() {
    for f in [-0.1, 1.0, 2.0, f64::NAN, f64::INFINITY] {
        assert_eq!(
            field(builder().drift_factor(f).validate().unwrap_err()),
            "drift_factor"
        );
    }
    assert!(builder().drift_factor(0.0).validate().is_ok());
    assert!(builder().drift_factor(0.999).validate().is_ok());
    for share in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let err = builder().keep_alive_at(share).validate().unwrap_err();
        assert_eq!(field(err), "keep_alive_at");
    }
    assert!(builder().keep_alive_at(0.01).validate().is_ok());
    assert_eq!(
        field(
            builder()
                .node_timeout(Duration::ZERO)
                .validate()
                .unwrap_err()
        ),
        "node_timeout"
    );
    assert_eq!(
        field(
            builder()
                .connect_timeout(Duration::ZERO)
                .validate()
                .unwrap_err()
        ),
        "connect_timeout"
    );
    for huge in [MAX_TTL + Duration::from_millis(1), Duration::MAX] {
        let node = builder().node_timeout(huge).validate().unwrap_err();
        assert_eq!(field(node), "node_timeout");
        let connect = builder().connect_timeout(huge).validate().unwrap_err();
        assert_eq!(field(connect), "connect_timeout");
    }
    let short = builder()
        .node_timeout(Duration::from_millis(50))
        .acquire_timeout(Duration::from_millis(49));
    assert_eq!(field(short.validate().unwrap_err()), "acquire_timeout");
}

#[test]
fn retry_count_defaults_depend_on_the_deadline() {
    assert_eq!(
        builder().validate().unwrap().retry_count,
        DEFAULT_RETRY_COUNT
    );
    let deadline = builder().acquire_timeout(Duration::from_secs(1));
    assert_eq!(deadline.validate().unwrap().retry_count, u32::MAX);
    let both = builder()
        .acquire_timeout(Duration::from_secs(1))
        .retry_count(5);
    assert_eq!(both.validate().unwrap().retry_count, 5);
}
