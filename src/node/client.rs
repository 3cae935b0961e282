//! The fred side of a node: how its client is made, how a script is sent with the
//! request's options, and how fred's errors read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::clients::WithOptions;
use fred::prelude::{
    Builder, Client, ClientLike, Config, FromValue, Options, ReconnectPolicy, ServerConfig, Value,
};
use fred::types::CustomCommand;

use crate::quorum::Vote;
use crate::scripts::{LIBRARY, OPS_EVAL};
use crate::settings::Settings;

/// The bound on loading the scripts into a node, in the background.
pub(crate) const SCRIPT_LOAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates (but does not connect) a fred client for `config` that never hangs on a
/// dead node and reconnects by itself when the node comes back.
pub(crate) fn client_for(
    mut config: Config,
    settings: &Settings,
) -> Result<Client, fred::error::Error> {
    // Keep reconnecting in the background when the first connection fails, rather
    // than giving up on a node that is down at start-up.
    config.fail_fast = false;
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1);
    let unresponsive = settings
        .node_timeout
        .saturating_mul(20)
        .max(Duration::from_secs(2));
    Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = settings.connect_timeout;
            c.internal_command_timeout = settings.connect_timeout;
            c.max_command_attempts = 1;
            c.tcp.nodelay = Some(true);
            // A connection on which nothing has come back for this long (a host that
            // vanished without a reset) is closed and reconnected.
            c.unresponsive.max_timeout = Some(unresponsive);
            c.unresponsive.interval = unresponsive / 4;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = settings.node_timeout;
        })
        // Unlimited attempts at a constant delay: a node that comes back is used again
        // without any action by the caller.
        .set_policy({
            let mut policy = ReconnectPolicy::new_constant(0, ms(settings.reconnect_delay));
            // fred adds up to 100 ms of jitter by default; the delay is ours to set.
            policy.set_jitter(0);
            policy
        })
        .build()
}

/// Options for one request: one write attempt (a command is never replayed on a new
/// connection), at most `timeout`, and with `fail_fast` a disconnected node answers at
/// once instead of queueing the command until it reconnects.
///
/// fred's command timeout is the only one around such a request: when it fires it
/// marks the command as timed out, and fred then never writes it (fred 10.1 skips such
/// a command when its turn to be written comes, and when it would replay it from its
/// retry buffer after a reconnection; a SET replayed that way would set a key that
/// nobody removes). So a request's future must be polled until it ends.
pub(crate) fn options(timeout: Duration, fail_fast: bool) -> Options {
    Options {
        max_attempts: Some(1),
        timeout: Some(timeout.max(Duration::from_millis(1))),
        fail_fast,
        ..Options::default()
    }
}

/// Options for a request that must run however late: one write attempt, fail-fast,
/// and no fred timeout (a zero one is none), so that fred never drops the command
/// from the connection's order; the caller bounds its own wait.
pub(crate) fn kept_in_order() -> Options {
    Options {
        max_attempts: Some(1),
        timeout: Some(Duration::ZERO),
        fail_fast: true,
        ..Options::default()
    }
}

/// A script command sent as a custom command. fred 10.1 implements its Lua methods
/// (`eval`, `evalsha`, `script_load`) for `Client` but not for `WithOptions`, so
/// calling them on a `WithOptions` reaches the plain client through `Deref` and drops
/// the request's timeout, attempt count and fail-fast; a custom command keeps them.
pub(crate) async fn script_command<R: FromValue>(
    client: &WithOptions<Client>,
    command: &'static str,
    args: Vec<Value>,
) -> Result<R, fred::error::Error> {
    client
        .custom(CustomCommand::new_static(command, None::<u16>, false), args)
        .await
}

/// Loads the batch into the node: as a function library, setting `no_library` for good
/// if the node refuses it ([`refuses_library`]: its batches go by `EVALSHA`; a load
/// that fails for a passing reason is made again when a call misses the library); and
/// into the script cache, so that `EVALSHA` finds it.
/// Returns the script's failure message; a node without the script answers
/// `NOSCRIPT`, which costs a second command and loads it again.
pub(crate) async fn load_scripts(client: Client, no_library: Arc<AtomicBool>) -> Option<String> {
    let client = client.with_options(&options(SCRIPT_LOAD_TIMEOUT, false));
    let args = vec![Value::from("LOAD"), Value::from(LIBRARY.code.as_str())];
    match script_command::<String>(&client, "FUNCTION", args).await {
        // Loaded now, or before (by this client or another of the same version).
        Ok(_) => {}
        Err(e) if e.details().contains("already exists") => {}
        Err(e) => {
            tracing::debug!(error = %e, "loading the lock function library failed");
            if refuses_library(&e) {
                no_library.store(true, Ordering::Release);
            }
        }
    }
    let args = vec![Value::from("LOAD"), Value::from(OPS_EVAL)];
    match script_command::<String>(&client, "SCRIPT", args).await {
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "loading the lock script failed");
            Some(error_message(&e))
        }
    }
}

/// Whether the node's answer to `FUNCTION LOAD` refuses the library for good: any
/// error reply (no functions, an ACL refusal, a proxy that does not pass the command, a
/// server that cannot compile it) but those that pass (a timeout, a lost connection,
/// `OOM`, `LOADING`, `BUSY`).
fn refuses_library(error: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    let passing = matches!(
        error.kind(),
        ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled
    ) || ["OOM", "LOADING", "BUSY"]
        .iter()
        .any(|prefix| error.details().starts_with(prefix));
    !passing
}

/// Whether `error` answers a function command with "no such command" (a server
/// without functions) or an ACL refusal of that command (not of a key): `FCALL` and
/// `FUNCTION LOAD` are then not sent again.
pub(super) fn refuses_functions(error: &str) -> bool {
    error.starts_with("ERR unknown command")
        || (error.starts_with("NOPERM")
            && (error.contains("'fcall'") || error.contains("'function")))
}

/// The vote for a node's error `message`: an ACL refusal names the commands fredlock
/// needs; any other error is its text.
pub(crate) fn error_vote(message: String) -> Vote {
    if is_acl_refusal(&message) {
        Vote::Error(format!(
            "{message}: the node's ACL refuses a command fredlock's scripts use (EVAL, \
             EVALSHA, SCRIPT LOAD, SET, GET, EXISTS, PTTL, PEXPIRE, DEL, PUBLISH, and INFO for \
             the restart quarantine)"
        ))
    } else {
        Vote::Error(message)
    }
}

/// Whether a reply is an ACL refusal: `NOPERM ...` for a command sent directly, and
/// Redis's message for a command a script called.
pub(crate) fn is_acl_refusal(message: &str) -> bool {
    message.starts_with("NOPERM") || message.contains("user executing the script can't run")
}

/// The server's reply text when there is one (`WRONGTYPE ...`), else fred's message;
/// an I/O error as its text.
pub(crate) fn error_message(e: &fred::error::Error) -> String {
    let details = e.details();
    if details.is_empty() {
        format!("{:?}", e.kind())
    } else if *e.kind() == fred::error::ErrorKind::IO {
        io_text(details)
    } else {
        details.to_string()
    }
}

/// fred keeps an I/O error as its debug form (`Os { code: 111, kind:
/// ConnectionRefused, message: "Connection refused" }`); this gives it as
/// `std::io::Error` displays it (`Connection refused (os error 111)`), and anything
/// else unchanged.
fn io_text(debug: &str) -> String {
    let field = |name: &str| {
        let start = debug.find(name)? + name.len();
        let rest = &debug[start..];
        let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim_matches('"'))
    };
    let message = debug.find("message: \"").and_then(|start| {
        let rest = &debug[start + "message: \"".len()..];
        rest.find('"').map(|end| &rest[..end])
    });
    match (message, field("code: ")) {
        (Some(message), Some(code)) if debug.starts_with("Os {") => {
            format!("{message} (os error {code})")
        }
        (Some(message), _) => message.to_string(),
        _ => match debug.find("error: \"") {
            Some(start) => {
                let rest = &debug[start + "error: \"".len()..];
                rest.split('"').next().unwrap_or(rest).to_string()
            }
            None => debug.to_string(),
        },
    }
}

/// `host:port` for a centralized config; for the others (refused by the builder), their
/// kind and hosts, never their credentials.
pub(crate) fn server_name(config: &Config) -> Arc<str> {
    let hosts = |hosts: &[fred::types::config::Server]| {
        hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &config.server {
        ServerConfig::Centralized { server } => server.to_string().into(),
        ServerConfig::Clustered { hosts: list, .. } => format!("cluster at {}", hosts(list)).into(),
        ServerConfig::Sentinel {
            hosts: list,
            service_name,
            ..
        } => format!("sentinel service `{service_name}` at {}", hosts(list)).into(),
        #[allow(unreachable_patterns)]
        _ => "a non-TCP server".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_as_text() {
        assert_eq!(
            io_text(r#"Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }"#),
            "Connection refused (os error 111)"
        );
        assert_eq!(
            io_text(r#"Custom { kind: InvalidData, error: "bad frame" }"#),
            "bad frame"
        );
        assert_eq!(io_text("Kind(UnexpectedEof)"), "Kind(UnexpectedEof)");
    }
}
