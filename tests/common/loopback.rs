//! The one loopback HTTP/1.1 server the test suites share (the attack corpus's fake STS, the
//! fault tests, the fake Organizations endpoint and the soak's fault proxy). It accepts on
//! 127.0.0.1, reads each request whole (head and `Content-Length` body), counts it, keeps the
//! last one, and hands the connection with the request to a handler. The handler answers,
//! stalls, drips, forwards or resets as its test needs, and gives the connection back to keep it
//! alive for the next request, or drops it.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Reads one HTTP/1.1 message (a request or a response): the head and its `Content-Length`
/// body. `None` when the peer closed first.
pub(crate) async fn read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.truncate(end + 4 + len);
                return Some(buf);
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A whole HTTP/1.1 response with a `Content-Length` body.
pub(crate) fn reply(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    reply_with(status, content_type, &[], body)
}

/// [`reply`] with `Connection: close`, for handlers that close the connection after answering.
pub(crate) fn reply_and_close(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    reply_with(status, content_type, &[("Connection", "close")], body)
}

/// [`reply`] with more headers (`Retry-After`, `Connection`).
pub(crate) fn reply_with(status: u16, content_type: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    [head.as_bytes(), body].concat()
}

/// A loopback HTTP server; stopped when dropped.
pub(crate) struct Loopback {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    last: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Loopback {
    /// Serves every request read on every connection with `handle`, which gets the connection
    /// and the request's bytes, and returns the connection to read the next request from it.
    pub(crate) async fn start<F, Fut>(handle: F) -> Self
    where
        F: Fn(TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<TcpStream>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let requests = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(Vec::new()));
        let handle = Arc::new(handle);
        let (count, seen) = (requests.clone(), last.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (handle, count, seen) = (handle.clone(), count.clone(), seen.clone());
                tokio::spawn(async move {
                    while let Some(request) = read_message(&mut stream).await {
                        count.fetch_add(1, Ordering::SeqCst);
                        seen.lock().expect("lock").clone_from(&request);
                        match handle(stream, request).await {
                            Some(s) => stream = s,
                            None => return,
                        }
                    }
                });
            }
        });
        Self { addr, requests, last, task }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Requests read so far.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// A shared handle on the request count, for tests that keep it past the server.
    pub(crate) fn request_counter(&self) -> Arc<AtomicUsize> {
        self.requests.clone()
    }

    /// The bytes of the last request read.
    pub(crate) fn last_request(&self) -> Vec<u8> {
        self.last.lock().expect("lock").clone()
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}
