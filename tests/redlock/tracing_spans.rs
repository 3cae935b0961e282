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
    // Node 1's yes must come in time for the votes to be the ones asserted: 1 s holds
    // when both cores are busy. The dead node refuses at once.
    let redlock = nodes.redlock(Duration::from_secs(1)).await;
    nodes.cluster.kill(2).await?;

    let (captured, _guard) = capture();

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

/// A subscriber that writes every DEBUG event and span close into a buffer, set as
/// the default on this thread for as long as the guard lives.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // A span's callsite caches whether any subscriber wants it when it is first hit;
    // a test on another thread (without a subscriber) may hit fredlock's callsites at
    // the moment this one registers, and leave them cached as unwanted. Asking every
    // callsite again, now that this subscriber exists, closes that race.
    tracing::callsite::rebuild_interest_cache();
    (captured, guard)
}

fn text_of(captured: &Captured) -> String {
    String::from_utf8(captured.0.lock().expect("poisoned").clone()).expect("utf-8")
}

/// The close line of the `span` span whose outcome is `outcome`.
fn closed<'t>(text: &'t str, span: &str, outcome: &str) -> &'t str {
    let open = format!("{span}{{");
    text.lines()
        .find(|l| {
            l.contains(&open)
                && l.contains(": close ")
                && (l.contains(&format!("outcome=\"{outcome}\""))
                    || l.contains(&format!("outcome={outcome} ")))
        })
        .unwrap_or_else(|| panic!("no closed {span} span with outcome {outcome} in:\n{text}"))
}

/// `host:port` of node `i`, as votes name it.
fn address(nodes: &Nodes, i: usize) -> String {
    nodes
        .cluster
        .url(i)
        .trim_start_matches("redis://")
        .to_string()
}

/// The `fredlock.extend`, `fredlock.fence` and `fredlock.release` spans carry the
/// resource, the outcome (`expired` when our token is gone, `extended`, `fenced`,
/// `released`), the votes naming each
/// node (a dead one with its error) and the elapsed time; an extend that reached its
/// quorum also carries the new validity.
#[tokio::test(flavor = "current_thread")]
async fn extend_and_release_spans_carry_outcome_votes_and_elapsed_time() -> TestResult {
    let nodes = Nodes::start(3).await?;
    // The rounds below need both live nodes' answers: a loopback round trip takes a
    // millisecond or two, and 1 s holds when both cores are busy (200 ms once did
    // not). The dead node refuses at once.
    let redlock = nodes.redlock(Duration::from_secs(1)).await;
    let (captured, guard) = capture();

    // Taken over on every node (all up, so the `Taken` answers decide the rounds).
    let lost = resource("traced-lost");
    let mut lock = redlock.lock(&lost, Duration::from_secs(30)).await?;
    nodes.assert_held(&[0, 1, 2], &lost, lock.token()).await;
    for i in 0..3 {
        nodes.set(i, &lost, "someone-else", 30_000).await;
    }
    let extend_err = lock
        .extend(Duration::from_secs(20))
        .await
        .expect_err("taken over");
    assert!(
        matches!(extend_err, fredlock::Error::Expired { .. }),
        "{extend_err}"
    );
    let release_err = lock.release().await.expect_err("taken over");
    assert!(
        matches!(release_err, fredlock::Error::Expired { .. }),
        "{release_err}"
    );

    // Held on two nodes, the third dead.
    let held = resource("traced-held");
    let mut lock = redlock.lock(&held, Duration::from_secs(30)).await?;
    nodes.cluster.kill(2).await?;
    lock.extend(Duration::from_secs(20)).await?;
    lock.fencing_token().await?;
    lock.release().await?;
    drop(guard);

    let text = text_of(&captured);
    let dead = address(&nodes, 2);
    for (span, outcome, resource, votes) in [
        ("fredlock.extend", "expired", &lost, "taken"),
        ("fredlock.release", "expired", &lost, "taken"),
        ("fredlock.extend", "extended", &held, "yes"),
        ("fredlock.fence", "fenced", &held, "yes"),
        ("fredlock.release", "released", &held, "yes"),
    ] {
        let line = closed(&text, span, outcome);
        assert!(line.contains(&format!("resource={resource} ")), "{line}");
        // `votes=2 taken, ...` or `votes=3 taken [...]`: at least a quorum of them.
        let summary: Vec<&str> = line
            .split("votes=")
            .nth(1)
            .unwrap_or_default()
            .split(' ')
            .take(2)
            .collect();
        let enough = matches!(summary.first(), Some(&("2" | "3")))
            && summary.get(1).map(|kind| kind.trim_end_matches(',')) == Some(votes);
        assert!(enough, "votes do not count a quorum {votes}: {line}");
        for i in 0..3 {
            assert!(
                line.contains(&address(&nodes, i)),
                "node {i} not named: {line}"
            );
        }
        assert!(line.contains("elapsed_us="), "{line}");
    }
    for (span, outcome) in [
        ("fredlock.extend", "extended"),
        ("fredlock.fence", "fenced"),
        ("fredlock.release", "released"),
    ] {
        let line = closed(&text, span, outcome);
        assert!(
            line.contains(&format!("{dead} error")),
            "the dead node's error is not in the votes: {line}"
        );
    }
    let extended = closed(&text, "fredlock.extend", "extended");
    let validity = extended
        .split("validity_ms=")
        .nth(1)
        .and_then(|rest| rest.split([' ', '}']).next())
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no validity_ms: {extended}"));
    assert!((19_000..20_000).contains(&validity), "{extended}");
    Ok(())
}

/// Credentials in the endpoint URLs (an ACL user with a password) never reach a span,
/// an event, an error's `Display` or `Debug`, `Redlock`'s `Debug` or `nodes()`, even
/// when nodes fail: one refuses the password, one is dead, a resource is taken, and a
/// second client cannot connect to a quorum.
#[tokio::test(flavor = "current_thread")]
async fn no_credential_reaches_a_span_or_an_error() -> TestResult {
    const SECRET: &str = "s3cr3t-Pa55word-7f1c";
    let nodes = Nodes::start(5).await?;
    for i in 0..5 {
        let password = if i == 3 {
            ">a-different-one"
        } else {
            ">s3cr3t-Pa55word-7f1c"
        };
        let acl = ["SETUSER", "locker", "on", password, "~*", "&*", "+@all"];
        nodes
            .cmd(i, "ACL", acl.iter().map(|&a| a.into()).collect())
            .await?;
    }
    let url = |i: usize| {
        format!(
            "redis://locker:{SECRET}@127.0.0.1:{}",
            nodes.cluster.port(i)
        )
    };
    nodes.cluster.kill(4).await?;
    let (captured, guard) = capture();
    let mut shown = Vec::new();

    // Nodes 0-2 are the only quorum: each must answer in time. A loopback round trip
    // takes a millisecond or two; 1 s holds when both cores are busy.
    let builder = fredlock::Redlock::builder((0..5).map(url))
        .restart_quarantine(fredlock::Quarantine::Off)
        .node_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1));
    shown.push(format!("{builder:?}"));
    let redlock = builder.build().await?;
    shown.push(format!("{redlock:?}"));
    shown.push(redlock.nodes().collect::<Vec<_>>().join(" "));

    let res = resource("credentials");
    for i in 0..3 {
        nodes.set(i, &res, "someone-else", 30_000).await;
    }
    let taken = redlock
        .try_lock(&res, Duration::from_secs(5))
        .await
        .expect_err("taken");
    shown.push(format!("{taken} {taken:?}"));
    let waited = redlock
        .lock(&res, Duration::from_secs(5))
        .await
        .expect_err("taken");
    shown.push(format!("{waited} {waited:?}"));

    let other = resource("credentials-held");
    let mut lock = redlock.lock(&other, Duration::from_secs(5)).await?;
    lock.extend(Duration::from_secs(5)).await?;
    shown.push(format!("{lock:?} {:?}", lock.lease()));
    lock.release().await?;

    let refused = fredlock::Redlock::builder([url(3), url(4), url(0)])
        .restart_quarantine(fredlock::Quarantine::Off)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect_err("only one node of three accepts");
    assert!(
        matches!(refused, fredlock::Error::Connect { .. }),
        "{refused}"
    );
    shown.push(format!("{refused} {refused:?}"));
    let bad = fredlock::Redlock::builder([format!("redis://locker:{SECRET}@127.0.0.1:x")])
        .build()
        .await
        .expect_err("not a port");
    shown.push(format!("{bad} {bad:?}"));
    drop(guard);

    let traced = text_of(&captured);
    let shown = shown.join("\n");
    // The failures were there to be shown: the refusal, the dead node, the spans.
    assert!(shown.contains("WRONGPASS"), "{shown}");
    assert!(shown.contains("refused"), "{shown}");
    assert!(shown.contains(&address(&nodes, 3)), "{shown}");
    for span in ["fredlock.acquire", "fredlock.extend", "fredlock.release"] {
        assert!(traced.contains(span), "no {span} in:\n{traced}");
    }
    assert!(traced.contains("WRONGPASS"), "{traced}");
    assert!(
        !traced.contains(SECRET),
        "the password is in the trace:\n{traced}"
    );
    assert!(!shown.contains(SECRET), "the password is shown:\n{shown}");
    Ok(())
}
