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
/// recognised (`GET` finds its own value) as the same claim, not a replay. The connection is made
/// lazily and remade after Redis restarts (the `redis` crate's connection manager); a claim that
/// fails on a dead connection is retried once on the new one; while Redis cannot answer, joins
/// fail closed as `replay_store_unavailable`.
#[cfg(feature = "redis")]
#[derive(Clone)]
pub struct RedisReplayGuard {
    conn: redis::aio::ConnectionManager,
    timeout: std::time::Duration,
}

#[cfg(feature = "redis")]
impl fmt::Debug for RedisReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("RedisReplayGuard").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
impl RedisReplayGuard {
    /// The longest a claim may wait for Redis, connecting included, before the join fails closed.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

    /// A guard for the Redis at `url` (`redis://[:password@]host:port[/db]`). Connects lazily:
    /// a server can start while Redis is down, and its joins fail closed until Redis answers.
    /// Must be called inside a tokio runtime.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::config_invalid(format!("the Redis URL is not usable: {}", redis_kind(&e))))?;
        let timeout = Self::DEFAULT_TIMEOUT;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::config_invalid(format!("the Redis client cannot start: {}", redis_kind(&e))))?;
        Ok(Self { conn, timeout })
    }

    /// Whether Redis answers a `PING` now (for readiness checks).
    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let pong = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.timeout, pong).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(store_unavailable(format!("Redis did not answer PING: {}", redis_kind(&e)))),
            Err(_) => Err(store_unavailable("Redis did not answer PING in time")),
        }
    }
}

/// A Redis error's kind (`IoError`, `ResponseError`, ...): never its text, which may hold the URL.
#[cfg(feature = "redis")]
fn redis_kind(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

#[cfg(feature = "redis")]
impl RedisReplayGuard {
    /// One claim, with the value only this claim holds. A retry after a reply that never came
    /// back finds that value under the key: the first attempt did claim it, so this is the same
    /// claim, not a replay.
    async fn claim_once(&self, key: &str, value: &str, ttl_ms: u64, retry: bool) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value).arg("NX").arg("PX").arg(ttl_ms);
        if set.query_async::<Option<String>>(&mut conn).await?.is_some() {
            return Ok(true);
        }
        if !retry {
            return Ok(false);
        }
        let held: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        Ok(held.as_deref() == Some(value))
    }

    /// The claim, retried once on a fresh connection when the first attempt failed on the
    /// connection (a replica idle while Redis restarted finds its connection dead only on use).
    /// Each attempt waits at most [`RedisReplayGuard::DEFAULT_TIMEOUT`].
    async fn claim_idempotent(&self, key: &str, ttl_ms: u64) -> Result<bool, Error> {
        let value = claim_value()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::time::timeout(self.timeout, self.claim_once(key, &value, ttl_ms, attempt > 1)).await;
            let retryable = match &result {
                Ok(Ok(claimed)) => return Ok(*claimed),
                // Server errors (OOM, a wrong password, read-only) fail closed at once.
                Ok(Err(e)) => e.is_io_error() || e.is_connection_dropped() || e.is_timeout(),
                Err(_) => true,
            };
            if attempt == 1 && retryable {
                continue;
            }
            return Err(match result {
                Ok(Err(e)) => store_unavailable(format!("the replay store (Redis) failed: {}", redis_kind(&e))),
                _ => store_unavailable(format!(
                    "the replay store (Redis) did not answer within {} ms",
                    self.timeout.as_millis()
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
}
