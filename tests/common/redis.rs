//! A real `redis-server` (Debian's package) on a loopback port, started and stopped by the test
//! that needs it. Without `redis-server` on the PATH such a test says loudly that it skipped; with
//! `IAM_JOIN_REQUIRE_REDIS=1` (as `.ci/run` sets after installing it) that is a failure.

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
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
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

/// Whether the test can run; a loud skip, or a failure when Redis is required.
pub(crate) fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("IAM_JOIN_REQUIRE_REDIS").as_deref() != Ok("1"),
            "IAM_JOIN_REQUIRE_REDIS=1 but redis-server is not installed (apt-get install -y redis-server)"
        );
        eprintln!(
            "SKIPPED {test}: redis-server is not installed (apt-get install -y redis-server); \
             set IAM_JOIN_REQUIRE_REDIS=1 to make this a failure"
        );
    }
    found
}
