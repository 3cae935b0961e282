//! The endpoint URLs of `Redlock::builder`: parsed, checked, and shown without their
//! credentials.

use std::collections::HashSet;

use fred::prelude::Config;

use crate::error::Error;
use crate::node::server_name;

/// Parses and checks the endpoint URLs: at least one, `redis://` or `rediss://` only
/// (the latter needs a TLS feature), no two for the same `host:port`.
pub(crate) fn parse_endpoints(urls: &[String]) -> Result<Vec<Config>, Error> {
    if urls.is_empty() {
        return Err(Error::config(
            "endpoints",
            "at least one endpoint is required",
        ));
    }
    let mut seen = HashSet::new();
    let mut configs = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let shown = redact(url);
        let bad = |reason: String| {
            Error::config("endpoints", format!("endpoint {i} `{shown}`: {reason}"))
        };
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(bad(
                "not a URL; expected redis://host:port or rediss://host:port".into(),
            ));
        };
        match scheme {
            "redis" => {}
            "rediss" if cfg!(any(feature = "tls-rustls", feature = "tls-native")) => {}
            "rediss" => {
                return Err(bad(
                    "rediss:// needs the crate feature `tls-rustls` or `tls-native`".into(),
                ));
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme `{other}`; each endpoint is one independent master, \
                     redis:// or rediss://"
                )));
            }
        }
        let config = Config::from_url_centralized(url).map_err(|e| bad(e.details().to_string()))?;
        let name = server_name(&config);
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(bad(format!(
                "duplicate endpoint {name}: the masters must be independent"
            )));
        }
        configs.push(config);
    }
    Ok(configs)
}

/// The URL with any `user:password@` part hidden.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) if at > scheme.len() + 3 => {
            format!("{scheme}://***@{}", &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn field(err: Error) -> &'static str {
        match err {
            Error::Config { field, .. } => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn endpoints_parse_with_credentials_and_default_port() {
        let configs = parse_endpoints(&urls(&[
            "redis://127.0.0.1:7001",
            "redis://user:pw@127.0.0.1:7002/2",
            "redis://localhost",
        ]))
        .expect("valid endpoints");
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[1].username.as_deref(), Some("user"));
        assert_eq!(configs[1].password.as_deref(), Some("pw"));
        assert_eq!(configs[1].database, Some(2));
        assert_eq!(&*server_name(&configs[2]), "localhost:6379");
    }

    #[test]
    fn bad_endpoints_name_the_problem() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "at least one endpoint"),
            (&["127.0.0.1:6379"], "not a URL"),
            (&["http://127.0.0.1:6379"], "unsupported scheme `http`"),
            (&["redis-cluster://127.0.0.1:6379"], "unsupported scheme"),
            (&["redis://127.0.0.1:notaport"], "endpoint 0"),
            (
                &["redis://a:1", "redis://b:2", "redis://A:1"],
                "duplicate endpoint",
            ),
        ];
        for (list, expected) in cases {
            let err = parse_endpoints(&urls(list)).expect_err("must be rejected");
            let text = err.to_string();
            assert!(text.contains(expected), "{list:?}: {text}");
            assert_eq!(field(err), "endpoints");
        }
    }

    #[cfg(not(any(feature = "tls-rustls", feature = "tls-native")))]
    #[test]
    fn rediss_without_a_tls_feature_is_rejected() {
        let err = parse_endpoints(&urls(&["rediss://127.0.0.1:6380"])).expect_err("no TLS");
        assert!(err.to_string().contains("tls-rustls"), "{err}");
    }

    #[test]
    fn errors_never_show_passwords() {
        let err = parse_endpoints(&urls(&["redis://u:hunter2@host:bad"])).expect_err("bad port");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(redact("redis://u:p@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
