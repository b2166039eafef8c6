//! Single use of challenges across joins (and, with a shared store, across auth-server
//! replicas): the [`ReplayGuard`] trait and a bounded, expiring in-memory guard for one process.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::core::error::Error;
#[cfg(test)]
use crate::core::error::ErrorKind;
use crate::io::transport::BoxFuture;

/// The default bound of [`MemoryReplayGuard`]: claims live at most 15 minutes, so this holds a
/// sustained 110 joins a second.
pub const DEFAULT_REPLAY_GUARD_ENTRIES: usize = 100_000;

/// Claims challenges so that each signed request joins once. A claim is made only after every
/// local check of the request has passed, and before the STS round trip, so neither a refused
/// request nor a replay reaches STS.
pub trait ReplayGuard: Send + Sync + fmt::Debug {
    /// Claims `key` until `until`: `Ok(true)` when this call claimed it, `Ok(false)` when it was
    /// claimed before and the claim has not expired at `now`. An error (the store could not
    /// answer) fails the join closed, as `replay_store_unavailable`.
    fn claim<'a>(&'a self, key: &'a str, until: SystemTime, now: SystemTime) -> BoxFuture<'a, Result<bool, Error>>;
}

/// The store could not answer: fail closed, retryably.
pub(crate) fn store_unavailable(detail: impl Into<String>) -> Error {
    Error::new_replay_store_unavailable(detail)
}

/// Single use within one process: claims in memory, expiring, at most `max_entries` at once.
/// When full of unexpired claims it refuses new joins (`replay_store_unavailable`) rather than
/// forget a claim. Behind a load balancer with several replicas, use a shared store instead:
/// this guard cannot see another process's claims.
#[derive(Debug)]
pub struct MemoryReplayGuard {
    claims: Mutex<HashMap<String, SystemTime>>,
    max_entries: usize,
}

impl Default for MemoryReplayGuard {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_GUARD_ENTRIES)
    }
}

impl MemoryReplayGuard {
    /// A guard holding at most `max_entries` unexpired claims.
    pub fn new(max_entries: usize) -> Self {
        Self { claims: Mutex::new(HashMap::new()), max_entries: max_entries.max(1) }
    }

    /// Unexpired and expired claims held now.
    pub fn len(&self) -> usize {
        self.claims.lock().map_or(0, |c| c.len())
    }

    /// Whether no claim is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn claim_now(&self, key: &str, until: SystemTime, now: SystemTime) -> Result<bool, Error> {
        let mut claims = self.claims.lock().map_err(|_| store_unavailable("the in-memory replay guard is poisoned"))?;
        if claims.get(key).is_some_and(|&expires| expires > now) {
            return Ok(false);
        }
        if claims.len() >= self.max_entries {
            claims.retain(|_, expires| *expires > now);
        }
        if claims.len() >= self.max_entries {
            return Err(store_unavailable(format!(
                "the in-memory replay guard holds {} unexpired claims, its limit",
                self.max_entries
            )));
        }
        claims.insert(key.to_owned(), until);
        Ok(true)
    }
}

impl ReplayGuard for MemoryReplayGuard {
    fn claim<'a>(&'a self, key: &'a str, until: SystemTime, now: SystemTime) -> BoxFuture<'a, Result<bool, Error>> {
        let result = self.claim_now(key, until, now);
        Box::pin(async move { result })
    }
}

/// Single use across every replica that shares one Redis: each claim is
/// `SET iam-join:c:<sha256> <value> NX PX <ms until the claim ends>`, so Redis itself expires
/// claims. The value is random per claim, so a claim retried after its reply was lost is
/// recognised (`GET` finds its own value) as the same claim, not a replay.
///
/// Redis is reached directly (`redis://`, the `redis` crate's connection manager, remade after
/// Redis restarts) or through Sentinel (`redis+sentinel://`), which names the current primary:
/// after a failover the guard asks the Sentinels again and follows the promoted replica. A claim
/// that fails on a dead connection (or on a primary demoted to replica, `READONLY`) is retried
/// once on a new one; while Redis cannot answer, joins fail closed as
/// `replay_store_unavailable`.
///
/// With [`RedisReplayGuard::min_replicas`] `N > 0`, each claim is followed by `WAIT N`: the
/// join goes on only once the claim is on `N` replicas, so a failover that loses the primary
/// cannot lose an acknowledged claim (Sentinel promotes the most up-to-date replica). Fewer
/// acknowledgements in time fail the join closed.
#[cfg(feature = "redis")]
#[derive(Clone)]
pub struct RedisReplayGuard {
    backend: Backend,
    timeout: std::time::Duration,
    min_replicas: u32,
}

#[cfg(feature = "redis")]
#[derive(Clone)]
enum Backend {
    Direct(redis::aio::ConnectionManager),
    Sentinel(std::sync::Arc<SentinelBackend>),
}

/// The Sentinels and the connection to the primary they last named.
#[cfg(feature = "redis")]
struct SentinelBackend {
    sentinels: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    primary: Mutex<Option<redis::aio::MultiplexedConnection>>,
    config: redis::AsyncConnectionConfig,
}

#[cfg(feature = "redis")]
impl fmt::Debug for RedisReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: never printed.
        let via = match self.backend {
            Backend::Direct(_) => "redis",
            Backend::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisReplayGuard")
            .field("via", &via)
            .field("timeout", &self.timeout)
            .field("min_replicas", &self.min_replicas)
            .finish_non_exhaustive()
    }
}

/// The parts of a `redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME` URL.
#[cfg(feature = "redis")]
#[derive(Debug, PartialEq, Eq)]
struct SentinelUrl {
    sentinels: Vec<(String, u16)>,
    master: String,
    password: Option<String>,
}

#[cfg(feature = "redis")]
impl SentinelUrl {
    fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::config_invalid(format!(
                "the Sentinel URL is not redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME: {why}"
            ))
        };
        let rest = url.strip_prefix("redis+sentinel://").ok_or_else(|| bad("another scheme"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let password = match auth {
            None => None,
            Some(a) => Some(a.strip_prefix(':').unwrap_or(a).to_owned()).filter(|p| !p.is_empty()),
        };
        let (hosts, master) = rest.split_once('/').ok_or_else(|| bad("no /MASTER_NAME"))?;
        if master.is_empty() || master.contains(['/', '?', '#']) || master.chars().any(char::is_control) {
            return Err(bad("the master name is empty or not a plain name"));
        }
        let sentinels = hosts
            .split(',')
            .map(|h| {
                let (host, port) = h.rsplit_once(':').ok_or_else(|| bad("a Sentinel without :PORT"))?;
                let port = port.parse::<u16>().map_err(|_| bad("a port that is not a number"))?;
                let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                if host.is_empty() {
                    return Err(bad("an empty host"));
                }
                Ok((host.to_owned(), port))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { sentinels, master: master.to_owned(), password })
    }
}

#[cfg(feature = "redis")]
impl RedisReplayGuard {
    /// The longest a claim may wait for Redis, connecting included, before the join fails closed.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

    /// How long `WAIT` may wait for replicas (with [`RedisReplayGuard::min_replicas`]).
    pub const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

    /// A guard for the Redis at `url`: `redis://[:password@]host:port[/db]`, or through
    /// Sentinel, `redis+sentinel://[:password@]host:port[,host:port...]/master_name` (the
    /// password is the data nodes'; the Sentinels are asked without one). Connects lazily: a
    /// server can start while Redis is down, and its joins fail closed until Redis answers.
    /// Must be called inside a tokio runtime.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use iam_join::RedisReplayGuard;
    /// let guard = RedisReplayGuard::new("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/joins")?.min_replicas(1);
    /// assert!(format!("{guard:?}").contains("sentinel"));
    /// assert!(RedisReplayGuard::new("redis+sentinel://10.0.0.1:26379").is_err(), "no master name");
    /// # Ok::<(), iam_join::Error>(()) }).unwrap();
    /// ```
    pub fn new(url: &str) -> Result<Self, Error> {
        let timeout = Self::DEFAULT_TIMEOUT;
        let backend = if url.starts_with("redis+sentinel://") {
            Backend::Sentinel(std::sync::Arc::new(Self::sentinel(url, timeout)?))
        } else {
            let client = redis::Client::open(url)
                .map_err(|e| Error::config_invalid(format!("the Redis URL is not usable: {}", redis_kind(&e))))?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout + Self::REPLICA_WAIT))
                .set_number_of_retries(1);
            let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| Error::config_invalid(format!("the Redis client cannot start: {}", redis_kind(&e))))?;
            Backend::Direct(conn)
        };
        Ok(Self { backend, timeout, min_replicas: 0 })
    }

    fn sentinel(url: &str, timeout: std::time::Duration) -> Result<SentinelBackend, Error> {
        let parsed = SentinelUrl::parse(url)?;
        let mut node = redis::RedisConnectionInfo::default();
        if let Some(pw) = &parsed.password {
            node = node.set_password(pw);
        }
        let info = redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
        let urls: Vec<String> = parsed
            .sentinels
            .iter()
            .map(|(h, p)| if h.contains(':') { format!("redis://[{h}]:{p}/") } else { format!("redis://{h}:{p}/") })
            .collect();
        let client = redis::sentinel::SentinelClient::build(
            urls,
            parsed.master,
            Some(info),
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| Error::config_invalid(format!("the Sentinel client cannot start: {}", redis_kind(&e))))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout + Self::REPLICA_WAIT));
        Ok(SentinelBackend { sentinels: tokio::sync::Mutex::new(client), primary: Mutex::new(None), config })
    }

    /// Waits (`WAIT n`) until each claim is on `n` replicas before the join goes on; fewer
    /// within [`RedisReplayGuard::REPLICA_WAIT`] fail the join closed. Default 0: a failover
    /// can then forget the claims made in its last moments.
    pub fn min_replicas(mut self, n: u32) -> Self {
        self.min_replicas = n;
        self
    }

    /// Whether Redis answers a `PING` now (for readiness checks).
    pub async fn ping(&self) -> Result<(), Error> {
        let pong = async {
            let mut conn = self.connection().await?;
            let result = redis::cmd("PING").query_async::<String>(&mut conn).await;
            if result.as_ref().is_err_and(reconnect_after) {
                self.forget();
            }
            result
        };
        match tokio::time::timeout(self.timeout, pong).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(store_unavailable(format!("Redis did not answer PING: {}", redis_kind(&e)))),
            Err(_) => Err(store_unavailable("Redis did not answer PING in time")),
        }
    }

    /// A connection to the primary: the manager's, or the one to the primary the Sentinels
    /// last named (asked for again once that one failed).
    async fn connection(&self) -> Result<Conn, redis::RedisError> {
        match &self.backend {
            Backend::Direct(conn) => Ok(Conn::Direct(conn.clone())),
            Backend::Sentinel(s) => {
                if let Some(conn) = s.primary.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    return Ok(Conn::Sentinel(conn));
                }
                let client = s.sentinels.lock().await.async_get_client().await?;
                let conn = client.get_multiplexed_async_connection_with_config(&s.config).await?;
                *s.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                Ok(Conn::Sentinel(conn))
            }
        }
    }

    /// After a failure that a new connection may fix: the next claim asks the Sentinels again.
    fn forget(&self) {
        if let Backend::Sentinel(s) = &self.backend {
            *s.primary.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// A connection of either backend.
#[cfg(feature = "redis")]
#[derive(Clone)]
enum Conn {
    Direct(redis::aio::ConnectionManager),
    Sentinel(redis::aio::MultiplexedConnection),
}

#[cfg(feature = "redis")]
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Direct(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Direct(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// A failure a new connection (to a new primary) may fix: the connection died, or the node is
/// a replica now (`READONLY`, after a failover).
#[cfg(feature = "redis")]
fn reconnect_after(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A Redis error's kind (`IoError`, `ResponseError`, ...): never its text, which may hold the URL.
#[cfg(feature = "redis")]
fn redis_kind(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

/// Why a claim failed.
#[cfg(feature = "redis")]
enum ClaimFailure {
    Redis(redis::RedisError),
    /// `WAIT` saw fewer replicas than asked for: (acknowledged, asked).
    Replicas(i64, u32),
}

#[cfg(feature = "redis")]
impl From<redis::RedisError> for ClaimFailure {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

#[cfg(feature = "redis")]
impl RedisReplayGuard {
    /// One claim, with the value only this claim holds. A retry after a reply that never came
    /// back finds that value under the key: the first attempt did claim it, so this is the same
    /// claim, not a replay. A claim made waits for `min_replicas`.
    async fn claim_once(
        &self,
        conn: &mut Conn,
        key: &str,
        value: &str,
        ttl_ms: u64,
        retry: bool,
    ) -> Result<bool, ClaimFailure> {
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value).arg("NX").arg("PX").arg(ttl_ms);
        let claimed = if set.query_async::<Option<String>>(conn).await?.is_some() {
            true
        } else if retry {
            let held: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
            held.as_deref() == Some(value)
        } else {
            false
        };
        if claimed && self.min_replicas > 0 {
            let wait_ms = Self::REPLICA_WAIT.as_millis() as u64;
            let acked: i64 = redis::cmd("WAIT").arg(self.min_replicas).arg(wait_ms).query_async(conn).await?;
            if acked < i64::from(self.min_replicas) {
                return Err(ClaimFailure::Replicas(acked, self.min_replicas));
            }
        }
        Ok(claimed)
    }

    /// The claim, retried once on a fresh connection when the first attempt failed on the
    /// connection (a replica idle while Redis restarted finds its connection dead only on use;
    /// after a failover the old primary is gone or read-only). Each attempt waits at most
    /// [`RedisReplayGuard::DEFAULT_TIMEOUT`] (plus [`RedisReplayGuard::REPLICA_WAIT`]).
    async fn claim_idempotent(&self, key: &str, ttl_ms: u64) -> Result<bool, Error> {
        let value = claim_value()?;
        let budget = self.timeout + if self.min_replicas > 0 { Self::REPLICA_WAIT } else { std::time::Duration::ZERO };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let once = async {
                let mut conn = self.connection().await?;
                self.claim_once(&mut conn, key, &value, ttl_ms, attempt > 1).await
            };
            let result = tokio::time::timeout(budget, once).await;
            // A dead connection, a demoted primary or no answer in time: a new connection (the
            // primary the Sentinels name now) may fix it, for this claim's retry or the next.
            let reconnect = match &result {
                Ok(Ok(claimed)) => return Ok(*claimed),
                Ok(Err(ClaimFailure::Redis(e))) => reconnect_after(e),
                // Too few replicas: the claim stands on the primary; the join fails closed.
                Ok(Err(ClaimFailure::Replicas(..))) => false,
                Err(_) => true,
            };
            if reconnect {
                self.forget();
                if attempt == 1 {
                    continue;
                }
            }
            return Err(match result {
                Ok(Err(ClaimFailure::Redis(e))) => {
                    store_unavailable(format!("the replay store (Redis) failed: {}", redis_kind(&e)))
                }
                Ok(Err(ClaimFailure::Replicas(acked, asked))) => store_unavailable(format!(
                    "the claim reached {acked} of the {asked} Redis replicas required within {} ms",
                    Self::REPLICA_WAIT.as_millis()
                )),
                _ => store_unavailable(format!(
                    "the replay store (Redis) did not answer within {} ms",
                    budget.as_millis()
                )),
            });
        }
    }
}

/// A value no other claim holds: 16 random bytes, hex.
#[cfg(feature = "redis")]
fn claim_value() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| store_unavailable(format!("no random source: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(feature = "redis")]
impl ReplayGuard for RedisReplayGuard {
    fn claim<'a>(&'a self, key: &'a str, until: SystemTime, now: SystemTime) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let ttl_ms = until.duration_since(now).map_or(1, |d| d.as_millis().max(1));
            self.claim_idempotent(key, u64::try_from(ttl_ms).unwrap_or(u64::MAX)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_claim_holds_until_it_expires_and_a_full_guard_fails_closed() {
        let g = MemoryReplayGuard::new(2);
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(g.claim_now("a", at(60), at(0)).unwrap());
        assert!(!g.claim_now("a", at(60), at(59)).unwrap(), "a replay");
        assert!(g.claim_now("a", at(120), at(60)).unwrap(), "claimable again once expired");
        assert!(g.claim_now("b", at(120), at(60)).unwrap());
        // Full of unexpired claims: refuse, retryably, rather than forget one.
        let e = g.claim_now("c", at(120), at(61)).unwrap_err();
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::ReplayStoreUnavailable, true));
        assert!(!g.claim_now("a", at(120), at(61)).unwrap(), "the held claims still hold");
        // Expired claims make room.
        assert!(g.claim_now("c", at(200), at(120)).unwrap());
        assert_eq!(g.len(), 1);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn sentinel_urls() {
        let u = SentinelUrl::parse("redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380,sentinel-2:1/joins").unwrap();
        assert_eq!(
            u,
            SentinelUrl {
                sentinels: vec![("10.0.0.1".into(), 26379), ("::1".into(), 26380), ("sentinel-2".into(), 1)],
                master: "joins".into(),
                password: Some("s3cret".into()),
            }
        );
        assert_eq!(SentinelUrl::parse("redis+sentinel://h:1/m").unwrap().password, None);
        for bad in [
            "redis://h:1/m",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h/m",
            "redis+sentinel://h:x/m",
            "redis+sentinel://:1/m",
            "redis+sentinel://h:1/m/x",
            "redis+sentinel://:pw@h:1,/m",
        ] {
            let e = SentinelUrl::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{bad}");
            assert!(!e.detail().contains("pw"), "the password is never shown: {e}");
        }
    }
}
