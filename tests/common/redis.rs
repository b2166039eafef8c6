//! A real `redis-server` (Debian's package) on a loopback port, started and stopped by the test
//! that needs it. Those tests live in `tests/system`, whose harness shows them as ignored when
//! `redis-server` is not on the PATH (a failure with `IAM_JOIN_REQUIRE_REDIS=1`).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on 127.0.0.1, killed when dropped.
pub(crate) struct Redis {
    child: Child,
    pub(crate) port: u16,
}

impl Redis {
    /// Starts one on `port` (a free one when `None`) and waits, at most 10 s, until it accepts.
    pub(crate) fn start(port: Option<u16>) -> Redis {
        let port = port.unwrap_or_else(|| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let args =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(str::to_owned);
        Self::spawn(&args, port)
    }

    /// `redis-server ARGS` (a replica, a Sentinel), once it accepts on `port` (at most 10 s).
    pub(crate) fn spawn(args: &[String], port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
