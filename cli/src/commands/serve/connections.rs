//! The connection bounds of the service: at most `--max-connections` open at once. At the cap a
//! new connection takes the place of the connection idle the longest (no request in the
//! handler: a kept-alive connection between requests, or one still sending its head), as nginx
//! reuses its keep-alive connections when it runs short; only when every connection has a
//! request in the handler is the new one refused, with a 503 refusal (plain HTTP) or a close
//! (TLS), so one client holding idle connections cannot lock everyone out.
//!
//! It is an [`Accept`] wrapper: each accepted stream is counted and can be told to end (its next
//! read returns end of file, which hyper takes as the client closing), and each connection's
//! service counts the requests in its handler.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower_service::Service;

use super::metrics::Metrics;

/// The default `--max-connections`.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The connection cap for `wanted` under the process's open-file limit: at most half the
/// descriptors go to clients, the rest stay for STS, Redis, Organizations, files and logs.
pub(crate) fn connection_cap(wanted: usize) -> usize {
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let half = open_files.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    wanted.min(half).max(1)
}

/// What a refused connection is told (plain HTTP only), in the API's refusal shape.
fn shed_answer() -> Vec<u8> {
    let refusal = iam_join::wire::Refusal::busy("the join service is at its connection limit; retry shortly");
    let body = serde_json::to_string(&refusal).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One open connection, as the gate sees it.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// Requests of this connection in the handler now.
    in_flight: AtomicUsize,
    /// When it last finished a request (or was accepted), in microseconds since the gate began.
    idle_since_us: AtomicU64,
    /// Set when the gate reclaims it: its next read is an end of file.
    ending: AtomicBool,
    /// The waker of a read waiting for data, to end it at once.
    reader: Mutex<Option<Waker>>,
}

impl Conn {
    fn end(&self) {
        self.ending.store(true, Ordering::SeqCst);
        if let Some(w) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct Shared {
    max: usize,
    tls: bool,
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A place for a new connection: a free one, or the one idle the longest. `None` when every
    /// open connection has a request in the handler.
    fn admit(&self) -> Option<Arc<Conn>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= self.max {
            let victim = open
                .values()
                .filter(|c| c.in_flight.load(Ordering::SeqCst) == 0)
                .min_by_key(|c| c.idle_since_us.load(Ordering::SeqCst))
                .map(|c| c.id)?;
            if let Some(c) = open.remove(&victim) {
                c.end();
                self.metrics.connection_reclaimed();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let conn = Arc::new(Conn {
            id,
            in_flight: AtomicUsize::new(0),
            idle_since_us: AtomicU64::new(self.now_us()),
            ending: AtomicBool::new(false),
            reader: Mutex::new(None),
        });
        open.insert(id, Arc::clone(&conn));
        self.metrics.set_connections(open.len());
        Some(conn)
    }

    fn close(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&id);
        self.metrics.set_connections(open.len());
    }
}

/// The acceptor: wraps the plain TCP stream (under TLS, it runs before the handshake).
#[derive(Clone, Debug)]
pub(crate) struct Gate(Arc<Shared>);

impl Gate {
    pub(crate) fn new(max: usize, tls: bool, metrics: Arc<Metrics>) -> Self {
        Gate(Arc::new(Shared {
            max,
            tls,
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            metrics,
        }))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<I, S> Accept<I, S> for Gate
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = Counted<I>;
    type Service = Tracked<S>;
    type Future = BoxFuture<io::Result<(Counted<I>, Tracked<S>)>>;

    fn accept(&self, mut stream: I, service: S) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            let Some(conn) = shared.admit() else {
                shared.metrics.connection_refused();
                if !shared.tls {
                    // Told, briefly; a client that does not read is not waited for.
                    let write = async {
                        stream.write_all(&shed_answer()).await?;
                        stream.shutdown().await
                    };
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
                }
                return Err(io::Error::other("connection limit reached; the connection was refused"));
            };
            let service = Tracked { inner: service, conn: Arc::clone(&conn), shared: Arc::clone(&shared) };
            Ok((Counted { inner: stream, conn, shared }, service))
        })
    }
}

/// A connection's stream: counted while open; reads end once the gate reclaims it.
#[derive(Debug)]
pub(crate) struct Counted<I> {
    inner: I,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl<I> Drop for Counted<I> {
    fn drop(&mut self) {
        self.shared.close(self.conn.id);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let conn = Arc::clone(&self.conn);
        if conn.ending.load(Ordering::SeqCst) && conn.in_flight.load(Ordering::SeqCst) == 0 {
            return Poll::Ready(Ok(())); // end of file: hyper closes an idle connection
        }
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_pending() {
            *conn.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            // Reclaimed between the check and storing the waker: end now.
            if conn.ending.load(Ordering::SeqCst) && conn.in_flight.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's service: counts its requests in the handler, so that it is never reclaimed
/// while one is being answered.
#[derive(Clone, Debug)]
pub(crate) struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

/// Marks the request done when dropped: answered, failed, or cancelled.
struct InHandler {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl Drop for InHandler {
    fn drop(&mut self) {
        self.conn.idle_since_us.store(self.shared.now_us(), Ordering::SeqCst);
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, R> Service<R> for Tracked<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.conn.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InHandler { conn: Arc::clone(&self.conn), shared: Arc::clone(&self.shared) };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let out = answer.await;
            drop(guard);
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize) -> Gate {
        Gate::new(max, false, Arc::new(Metrics::new()))
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room_and_busy_ones_never_do() {
        let g = gate(2);
        let a = g.0.admit().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = g.0.admit().unwrap();
        // Full: the new one takes the place of the one idle the longest (a).
        let c = g.0.admit().unwrap();
        assert!(a.ending.load(Ordering::SeqCst) && !b.ending.load(Ordering::SeqCst));
        // With requests in the handler on both, nothing is reclaimed: the next one is refused.
        b.in_flight.fetch_add(1, Ordering::SeqCst);
        c.in_flight.fetch_add(1, Ordering::SeqCst);
        assert!(g.0.admit().is_none());
        // One finishes its request: it is idle again, and can make room.
        c.in_flight.fetch_sub(1, Ordering::SeqCst);
        assert!(g.0.admit().is_some());
        assert!(c.ending.load(Ordering::SeqCst) && !b.ending.load(Ordering::SeqCst));
    }

    #[test]
    fn the_cap_leaves_half_the_open_files_to_the_rest() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        assert!(connection_cap(usize::MAX) as u64 <= limit / 2 + 1);
        assert_eq!(connection_cap(3), 3.min((limit / 2) as usize));
    }

    #[test]
    fn the_refusal_is_json_in_the_refusal_shape() {
        let text = String::from_utf8(shed_answer()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 ") && head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!((v["allowed"].as_bool(), v["error"]["retryable"].as_bool()), (Some(false), Some(true)));
    }
}
