//! A loopback TCP proxy in front of one node that can add latency.
//!
//! This kernel has no `netem` qdisc, so latency is added in user space: the proxy
//! listens on its own fixed `127.0.0.1` port and, for every accepted client connection,
//! opens a new connection to the node's host port. Each direction of each connection
//! reads chunks of bytes and queues them with a delivery time (`now + latency`); a
//! writer delivers them in order once due. Connections do not wait for each other, and
//! a latency change applies to chunks read after it.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::{JoinHandle, JoinSet},
    time::{Instant, sleep, sleep_until},
};

/// Bytes read at most per chunk.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction before the reader waits (back-pressure).
const QUEUE_CHUNKS: usize = 256;
/// Pause after a failed `accept` (for example too many open files) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A running proxy. Dropping it aborts the accept loop and, with it, every connection.
pub(crate) struct Proxy {
    port: u16,
    /// One-way latency in nanoseconds, read for every chunk.
    latency: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Binds `127.0.0.1:0` (the port then stays the proxy's until it is dropped) and
    /// starts forwarding to `127.0.0.1:upstream_port`. Must be called within a Tokio
    /// runtime.
    pub(crate) async fn start(upstream_port: u16) -> io::Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let latency = Arc::new(AtomicU64::new(0));
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
        let task = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&latency)));
        Ok(Proxy {
            port,
            latency,
            task,
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn set_latency(&self, one_way: Duration) {
        let nanos = u64::try_from(one_way.as_nanos()).unwrap_or(u64::MAX);
        self.latency.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency.load(Ordering::Relaxed))
    }
}

impl Drop for Proxy {
    /// Aborts the accept loop; its `JoinSet` of connections is dropped with it, which
    /// aborts every connection. The listening socket closes when the runtime next
    /// drops the cancelled task (at once on a multi-thread runtime, at the next
    /// `.await` on a current-thread one).
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, latency: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(serve(client, upstream, Arc::clone(&latency)));
                }
                Err(_) => sleep(ACCEPT_BACKOFF).await,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one client connection. The upstream connection is opened now, so a node
/// that was restarted is reached by new connections; if it cannot be opened (node
/// killed: refused) the client connection is closed. When the upstream side ends
/// (node closed it, died, or an error), the client side is closed after the bytes
/// already queued for it are delivered.
async fn serve(client: TcpStream, upstream: SocketAddr, latency: Arc<AtomicU64>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // dropping `client` closes it
    };
    // Best effort: latency should come from the proxy, not from Nagle's algorithm.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let to_server = pipe(client_read, server_write, &latency);
    let to_client = pipe(server_read, client_write, &latency);
    tokio::pin!(to_server, to_client);
    tokio::select! {
        _ = &mut to_client => {}
        // The client finished sending (EOF, forwarded as a shutdown): let the server
        // answer what it got. On an error, close both sides.
        sent = &mut to_server => if sent.is_ok() {
            let _ = to_client.await;
        },
    }
}

/// Copies `from` to `to`, delaying each chunk by the latency current when it was read,
/// in order. On EOF from `from`, delivers what is queued and shuts `to` down.
async fn pipe<R, W>(mut from: R, mut to: W, latency: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(()); // dropping `tx` lets the writer drain and finish
            }
            let delay = Duration::from_nanos(latency.load(Ordering::Relaxed));
            let due = Instant::now() + delay;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return Ok(()); // the writer failed; its error is reported
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            if due > Instant::now() {
                sleep_until(due).await;
            }
            to.write_all(&bytes).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        time::Instant,
    };

    use super::Proxy;

    /// An echo server on 127.0.0.1 (no Docker needed).
    async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (port, task)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bytes_are_delayed_in_order_and_connections_do_not_wait_for_each_other() {
        let (port, server) = echo_server().await;
        let proxy = Proxy::start(port).await.unwrap();
        proxy.set_latency(Duration::from_millis(50));
        assert_eq!(proxy.latency(), Duration::from_millis(50));

        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..8u8 {
            let proxy_port = proxy.port();
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", proxy_port)).await.unwrap();
                let mut expected = Vec::new();
                for k in 0..5u8 {
                    let chunk = [c, k, b'\n'];
                    s.write_all(&chunk).await.unwrap();
                    expected.extend_from_slice(&chunk);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let mut got = vec![0u8; expected.len()];
                s.read_exact(&mut got).await.unwrap();
                assert_eq!(got, expected);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed();
        // One round trip is 100 ms; eight serialised connections would need 800 ms.
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");

        proxy.set_latency(Duration::ZERO);
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let started = Instant::now();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(50));

        // The proxy stops with its handle: the port is closed soon after.
        let proxy_port = proxy.port();
        drop(proxy);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let refused = TcpStream::connect(("127.0.0.1", proxy_port)).await.is_err();
            if refused {
                break;
            }
            assert!(Instant::now() < deadline, "proxy port still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_upstream_closes_the_client_connection() {
        let port = {
            let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let proxy = Proxy::start(port).await.unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
            .await
            .expect("closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
