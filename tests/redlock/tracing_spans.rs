//! The tracing spans say why an acquisition failed: resource, per-node votes, elapsed.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::support::{Nodes, TestResult, resource};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// On a current-thread runtime every task runs on this thread, under this subscriber.
#[tokio::test(flavor = "current_thread")]
async fn spans_carry_resource_votes_and_elapsed_time() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    nodes.cluster.kill(2).await?;

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let res = resource("traced");
    nodes.set(0, &res, "someone-else", 30_000).await;
    let err = redlock
        .try_lock(&res, Duration::from_secs(5))
        .await
        .expect_err("1 taken, 1 dead");
    drop(_guard);

    let text = String::from_utf8(captured.0.lock().expect("poisoned").clone())?;
    let line = text
        .lines()
        .find(|l| l.contains("fredlock.acquire") && l.contains("close"))
        .unwrap_or_else(|| panic!("no acquire span in:\n{text}"));
    assert!(line.contains(&format!("resource={res}")), "{line}");
    assert!(
        line.contains("outcome=\"no_quorum\"") || line.contains("outcome=no_quorum"),
        "{line}"
    );
    assert!(line.contains("votes="), "{line}");
    assert!(line.contains("taken"), "{line}");
    assert!(line.contains("elapsed_us="), "{line}");
    let dead = nodes
        .cluster
        .url(2)
        .trim_start_matches("redis://")
        .to_string();
    assert!(line.contains(&dead), "the dead node is named: {line}");
    assert!(text.contains("attempt failed"), "{text}");
    assert!(err.to_string().contains(&dead), "{err}");
    Ok(())
}
