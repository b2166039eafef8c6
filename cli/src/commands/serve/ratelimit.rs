//! Rate limits per client on `/v1/challenge` and `/v1/join` (governor's GCRA, one state per
//! client), and who the client is: the connection's peer, or, when the peer is a trusted proxy,
//! the right-most `X-Forwarded-For` address that is not one.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

/// The default limit per client: 20 requests a second, bursts of 40. An agent's join is two
/// requests (a challenge, then the join); a retry is two more.
pub(crate) const DEFAULT_RATE_LIMIT: &str = "20:40";
/// The most clients whose state is kept at once. Past it, state idle long enough to be fresh
/// again is dropped; if every entry is busy, new clients share one overflow limit, so memory
/// stays bounded (about 100 bytes an entry) however many addresses send.
pub(crate) const MAX_TRACKED_CLIENTS: usize = 100_000;
/// How often idle clients' state is dropped.
pub(crate) const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// The most `X-Forwarded-For` entries read, right to left.
const MAX_FORWARDED_HOPS: usize = 32;

/// `PER_SECOND[:BURST]`, e.g. `20:40`; `0` turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateLimit {
    per_second: u32,
    burst: u32,
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not PER_SECOND[:BURST] (whole numbers, e.g. 20:40; 0 turns the limit off)");
        let (rate, burst) = match s.split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let per_second: u32 = rate.trim().parse().map_err(|_| bad())?;
        let burst = match burst {
            Some(b) => b.trim().parse().map_err(|_| bad())?,
            None => per_second.saturating_mul(2),
        };
        if per_second > 0 && burst == 0 {
            return Err(bad());
        }
        if per_second > 1_000_000 || burst > 1_000_000 {
            return Err(format!("{s:?}: at most 1000000 a second and a burst of 1000000"));
        }
        Ok(Self { per_second, burst })
    }
}

/// Who a request is from, for the limit: an IPv4 address, an IPv6 /64 (one host usually holds
/// a whole /64), or the shared overflow key.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum ClientKey {
    V4([u8; 4]),
    V6Prefix(u64),
    Overflow,
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The limiter and the proxies whose `X-Forwarded-For` is believed.
#[derive(Debug)]
pub(crate) struct ClientLimits {
    limiter: Option<DefaultKeyedRateLimiter<ClientKey>>,
    trusted: Vec<IpNet>,
    started: std::time::Instant,
    /// When the limiter, full, was last pruned (ms since `started`).
    last_full_prune: AtomicU64,
}

impl ClientLimits {
    pub(crate) fn new(limit: RateLimit, trusted: Vec<IpNet>) -> Self {
        let limiter = NonZeroU32::new(limit.per_second).map(|rate| {
            let burst = NonZeroU32::new(limit.burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self { limiter, trusted, started: std::time::Instant::now(), last_full_prune: AtomicU64::new(0) }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// The client a request is from: the peer, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` address that is not a trusted proxy (every entry trusted:
    /// the left-most). An entry that is not an address ends the walk at the last one read, so
    /// a client's own garbage never picks its key.
    pub(crate) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        // Several headers read as one list, in order; walked from the right.
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.rsplit(','))
            .take(MAX_FORWARDED_HOPS);
        for entry in entries {
            let Some(ip) = parse_forwarded(entry.trim()) else { break };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// `Err(wait)` when `client` is over its limit.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        let mut key = ClientKey::from(client);
        if limiter.len() >= MAX_TRACKED_CLIENTS {
            // Full: drop state that is fresh again (at most once a second, as it walks every
            // entry); while still full, clients share the overflow limit.
            let now = self.started.elapsed().as_millis() as u64;
            let last = self.last_full_prune.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && self.last_full_prune.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                limiter.retain_recent();
            }
            if limiter.len() >= MAX_TRACKED_CLIENTS {
                key = ClientKey::Overflow;
            }
        }
        limiter.check_key(&key).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Drops the state of clients idle long enough to be fresh again.
    pub(crate) fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub(crate) fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// One `X-Forwarded-For` entry: an address, maybe `[v6]`, maybe with a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    entry.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(|v6| IpAddr::V6(v6).to_canonical())
}

/// `--trusted-proxy`: an address or a CIDR.
pub(crate) fn parse_trusted_proxy(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR (e.g. 10.0.0.0/8)"))
}

/// The `Retry-After` value: whole seconds, at least 1.
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn rate_limit_flags() {
        assert_eq!("20:40".parse(), Ok(RateLimit { per_second: 20, burst: 40 }));
        assert_eq!("5".parse(), Ok(RateLimit { per_second: 5, burst: 10 }));
        assert_eq!("0".parse(), Ok(RateLimit { per_second: 0, burst: 0 }));
        for bad in ["", "x", "5:", "5:0", "-1", "1.5", "5:2000001", "2000000"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?} accepted");
        }
        assert!(!ClientLimits::new("0".parse().unwrap(), vec![]).enabled());
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let proxies = vec![parse_trusted_proxy("10.0.0.0/8").unwrap(), parse_trusted_proxy("192.0.2.7").unwrap()];
        let l = ClientLimits::new("1".parse().unwrap(), proxies);
        let cases = [
            // (peer, X-Forwarded-For headers, client)
            ("203.0.113.5", &["198.51.100.1"][..], "203.0.113.5"), // not a proxy: the header is ignored
            ("10.1.2.3", &["198.51.100.1"][..], "198.51.100.1"),   // positive control
            ("10.1.2.3", &["6.6.6.6, 198.51.100.1"][..], "198.51.100.1"), // the client's own entry is left of it
            ("10.1.2.3", &["198.51.100.1, 10.9.9.9"][..], "198.51.100.1"), // two trusted hops
            ("10.1.2.3", &["6.6.6.6", "198.51.100.1, 192.0.2.7"][..], "198.51.100.1"), // two headers
            ("10.1.2.3", &["10.3.3.3, 10.4.4.4"][..], "10.3.3.3"), // all trusted: the left-most
            ("10.1.2.3", &["garbage, 10.4.4.4"][..], "10.4.4.4"),  // stops at what it cannot read
            ("10.1.2.3", &[][..], "10.1.2.3"),                     // no header: the proxy itself
            ("10.1.2.3", &["[2001:db8::1]:443"][..], "2001:db8::1"),
            ("10.1.2.3", &["198.51.100.1:5000"][..], "198.51.100.1"),
            ("::ffff:10.1.2.3", &["198.51.100.1"][..], "198.51.100.1"), // mapped peer
        ];
        for (peer, headers, want) in cases {
            assert_eq!(l.client(ip(peer), &xff(headers)), ip(want), "{peer} {headers:?}");
        }
    }

    #[test]
    fn each_client_has_its_own_limit_and_ipv6_counts_by_64() {
        let l = ClientLimits::new("1:2".parse().unwrap(), vec![]);
        assert!(l.check(ip("127.0.0.1")).is_ok() && l.check(ip("127.0.0.1")).is_ok());
        let wait = l.check(ip("127.0.0.1")).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
        assert!(l.check(ip("127.0.0.2")).is_ok(), "another address has its own limit");
        assert!(l.check(ip("2001:db8::1")).is_ok() && l.check(ip("2001:db8::2")).is_ok());
        assert!(l.check(ip("2001:db8::3")).is_err(), "one /64 is one client");
        assert!(l.check(ip("2001:db8:0:1::1")).is_ok(), "another /64 is another");
        assert_eq!(l.tracked(), 4);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(2100)), 3);
    }

    #[test]
    fn memory_stays_bounded_however_many_addresses_send() {
        let l = ClientLimits::new("1:1".parse().unwrap(), vec![]);
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 5_000) {
            let _ = l.check(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert!(l.tracked() <= MAX_TRACKED_CLIENTS + 1, "{} entries", l.tracked());
        // Past the bound, new addresses share the overflow limit: one got through, the rest wait.
        let fresh = IpAddr::V4(std::net::Ipv4Addr::new(11, 0, 0, 1));
        assert!(l.check(fresh).is_err(), "the overflow limit is used up");
    }
}
