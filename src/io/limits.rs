//! Limits on one process's STS exchanges, as an [`AwsTransport`] around another:
//! [`LimitedTransport`] caps the exchanges in flight (a join waits a short, bounded time for a
//! slot, then is refused retryably) and backs every join off while STS answers with throttling,
//! so a flood of joins, or a fleet restarting at once, never makes STS throttle harder.
//!
//! A refusal by either limit is `sts_unavailable`, retryable, with [`Error::retry_after`] set;
//! nothing is sent to STS for it, and the verifier does not retry it itself.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::core::error::{Error, ErrorKind};
use crate::core::response::{HttpAnswer, is_throttling_answer};
use crate::io::driver::jittered_backoff;
use crate::io::transport::{AwsCall, AwsService, AwsTransport, BoxFuture};

/// The default cap on STS exchanges in flight at once in one process.
pub const DEFAULT_MAX_STS_INFLIGHT: usize = 64;
/// The default longest a join waits for a free STS slot before it is refused as busy.
pub const DEFAULT_STS_SLOT_WAIT: Duration = Duration::from_millis(250);
/// The first backoff after a throttling answer; each further one in a row doubles it.
pub const DEFAULT_THROTTLE_BACKOFF: Duration = Duration::from_millis(250);
/// The longest backoff while STS keeps throttling.
pub const DEFAULT_MAX_THROTTLE_BACKOFF: Duration = Duration::from_secs(4);

/// The settings of a [`LimitedTransport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StsLimits {
    max_inflight: usize,
    slot_wait: Duration,
    backoff: Duration,
    max_backoff: Duration,
}

impl Default for StsLimits {
    fn default() -> Self {
        Self {
            max_inflight: DEFAULT_MAX_STS_INFLIGHT,
            slot_wait: DEFAULT_STS_SLOT_WAIT,
            backoff: DEFAULT_THROTTLE_BACKOFF,
            max_backoff: DEFAULT_MAX_THROTTLE_BACKOFF,
        }
    }
}

impl StsLimits {
    /// At most `n` STS exchanges in flight at once (at least 1); default 64.
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n.max(1);
        self
    }

    /// How long a join may wait for a slot (default 250 ms; at most 5 s).
    pub fn slot_wait(mut self, d: Duration) -> Self {
        self.slot_wait = d.min(Duration::from_secs(5));
        self
    }

    /// The first backoff after a throttling answer, and the longest one (defaults 250 ms and
    /// 4 s). Each throttling answer after a backoff has ended doubles it, with up to 20% jitter.
    pub fn throttle_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.backoff);
        self
    }
}

/// What a [`LimitedTransport`] has done, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitStats {
    /// STS exchanges in flight now.
    pub in_flight: usize,
    /// The cap on them.
    pub max_inflight: usize,
    /// Throttling answers STS gave (each starts or extends a backoff).
    pub throttling_answers: u64,
    /// Calls refused without a slot, after the wait.
    pub refused_busy: u64,
    /// Calls refused during a throttling backoff.
    pub refused_backoff: u64,
}

/// The backoff while STS throttles.
#[derive(Debug, Default)]
struct Backoff {
    /// Throttling answers in a row (0: not throttled).
    level: u32,
    /// No STS call before then.
    until: Option<Instant>,
    /// After a backoff, one call probes STS; the others wait for its answer.
    probing: bool,
}

/// An [`AwsTransport`] that limits the STS calls of the transport inside it (other services'
/// calls pass through): at most [`StsLimits::max_inflight`] in flight, each waiting at most
/// [`StsLimits::slot_wait`] for a slot; after a throttling answer (HTTP 429, or `Throttling`,
/// `ThrottlingException`, `RequestLimitExceeded`, `TooManyRequestsException`) no call for a
/// growing interval, then one probe, then all again once STS answers without throttling.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use iam_join::{LimitedTransport, ReqwestTransport, StsLimits};
/// let transport = LimitedTransport::new(ReqwestTransport::new()?, StsLimits::default().max_inflight(16));
/// assert_eq!(transport.stats().max_inflight, 16);
/// // Then: Verifier::builder(tokens).transport(transport)...
/// # Ok::<(), iam_join::Error>(()) }).unwrap();
/// ```
pub struct LimitedTransport {
    inner: Arc<dyn AwsTransport>,
    limits: StsLimits,
    slots: Semaphore,
    backoff: Mutex<Backoff>,
    throttling_answers: AtomicU64,
    refused_busy: AtomicU64,
    refused_backoff: AtomicU64,
}

impl fmt::Debug for LimitedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedTransport").field("limits", &self.limits).field("stats", &self.stats()).finish()
    }
}

/// Clears the probe flag however the probing call ends (answered, failed or dropped).
struct Probe<'a>(Option<&'a Mutex<Backoff>>);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            lock(m).probing = false;
        }
    }
}

fn lock(m: &Mutex<Backoff>) -> std::sync::MutexGuard<'_, Backoff> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LimitedTransport {
    /// Limits `inner`'s STS calls.
    pub fn new(inner: impl AwsTransport + 'static, limits: StsLimits) -> Self {
        Self::from_arc(Arc::new(inner), limits)
    }

    /// Limits a shared transport's STS calls.
    pub fn from_arc(inner: Arc<dyn AwsTransport>, limits: StsLimits) -> Self {
        Self {
            inner,
            limits,
            slots: Semaphore::new(limits.max_inflight),
            backoff: Mutex::new(Backoff::default()),
            throttling_answers: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            refused_backoff: AtomicU64::new(0),
        }
    }

    /// What the limits have done so far.
    pub fn stats(&self) -> LimitStats {
        LimitStats {
            in_flight: self.limits.max_inflight.saturating_sub(self.slots.available_permits()),
            max_inflight: self.limits.max_inflight,
            throttling_answers: self.throttling_answers.load(Ordering::Relaxed),
            refused_busy: self.refused_busy.load(Ordering::Relaxed),
            refused_backoff: self.refused_backoff.load(Ordering::Relaxed),
        }
    }

    /// `Ok(true)` when this call is the probe after a backoff; a refusal while backing off.
    fn admit(&self, now: Instant) -> Result<bool, Error> {
        let mut b = lock(&self.backoff);
        let wait = match b.until {
            Some(until) if until > now => until - now,
            Some(_) if b.probing => self.limits.backoff,
            Some(_) => {
                b.probing = true;
                return Ok(true);
            }
            None => return Ok(false),
        };
        drop(b);
        self.refused_backoff.fetch_add(1, Ordering::Relaxed);
        Err(Error::new(
            ErrorKind::StsUnavailable,
            format!("STS is throttling this process: no STS call for {} ms more (backing off)", wait.as_millis()),
        )
        .with_client_fact("the service is backing off while STS throttles it; try again shortly")
        .with_retry_after(wait))
    }

    /// Reads STS's answer: a throttling answer starts (or, after a backoff, lengthens) a
    /// backoff; any other answer ends it.
    fn observe(&self, answer: &HttpAnswer) {
        let throttled = is_throttling_answer(answer);
        let mut b = lock(&self.backoff);
        if !throttled {
            if answer.status < 500 {
                *b = Backoff { probing: b.probing, ..Backoff::default() };
            }
            return;
        }
        self.throttling_answers.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // Answers to calls sent before the backoff began do not lengthen it.
        if b.until.is_some_and(|until| until > now) {
            return;
        }
        b.level = b.level.saturating_add(1);
        let wait = jittered_backoff(b.level, self.limits.backoff, self.limits.max_backoff, 0.2);
        b.until = Some(now + wait);
        tracing::warn!(
            backoff_ms = wait.as_millis() as u64,
            in_a_row = b.level,
            "STS is throttling: no STS call until the backoff ends"
        );
    }
}

impl AwsTransport for LimitedTransport {
    fn call<'a>(&'a self, call: AwsCall<'a>) -> BoxFuture<'a, Result<HttpAnswer, Error>> {
        Box::pin(async move {
            if call.service != AwsService::Sts {
                return self.inner.call(call).await;
            }
            let probe = Probe(self.admit(Instant::now())?.then_some(&self.backoff));
            let Ok(Ok(_slot)) = tokio::time::timeout(self.limits.slot_wait, self.slots.acquire()).await else {
                self.refused_busy.fetch_add(1, Ordering::Relaxed);
                return Err(Error::new(
                    ErrorKind::StsUnavailable,
                    format!(
                        "all {} STS slots stayed in use for {} ms: the service is busy",
                        self.limits.max_inflight,
                        self.limits.slot_wait.as_millis()
                    ),
                )
                .with_client_fact("the service is busy; try again shortly")
                .with_retry_after(self.limits.slot_wait));
            };
            let result = self.inner.call(call).await;
            if let Ok(answer) = &result {
                self.observe(answer);
            }
            drop(probe);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::core::proof::Method;

    const THROTTLING: &str = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>t</RequestId></ErrorResponse>";
    const DENIED: &str = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error><RequestId>t</RequestId></ErrorResponse>";

    /// A fake STS: answers after `delay` with `status`/`body`, counting calls and the most in
    /// flight at once.
    #[derive(Debug, Default)]
    struct Fake {
        delay: Duration,
        status: std::sync::atomic::AtomicU16,
        body: Mutex<&'static str>,
        calls: AtomicUsize,
        open: AtomicUsize,
        most_open: AtomicUsize,
    }

    impl AwsTransport for Arc<Fake> {
        fn call<'a>(&'a self, _: AwsCall<'a>) -> BoxFuture<'a, Result<HttpAnswer, Error>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_open.fetch_max(open, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                self.open.fetch_sub(1, Ordering::SeqCst);
                let body = *self.body.lock().unwrap();
                Ok(HttpAnswer::new(self.status.load(Ordering::SeqCst), Some("text/xml"), body.as_bytes().to_vec()))
            })
        }
    }

    fn fake(delay: Duration, status: u16, body: &'static str) -> Arc<Fake> {
        let f = Fake { delay, body: Mutex::new(body), ..Fake::default() };
        f.status.store(status, Ordering::SeqCst);
        Arc::new(f)
    }

    fn call(service: AwsService) -> AwsCall<'static> {
        AwsCall {
            service,
            method: Method::Post,
            host: "sts.amazonaws.com",
            target: "/",
            headers: vec![],
            body: b"",
            max_body: 1024,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_max_inflight_exchanges_and_the_rest_are_refused_within_the_wait() {
        let sts = fake(Duration::from_millis(400), 200, "");
        let t = Arc::new(LimitedTransport::new(
            sts.clone(),
            StsLimits::default().max_inflight(4).slot_wait(Duration::from_millis(50)),
        ));
        let started = Instant::now();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move {
                    let s = Instant::now();
                    (t.call(call(AwsService::Sts)).await, s.elapsed())
                })
            })
            .collect();
        let mut refused = 0;
        for c in calls {
            let (result, took) = c.await.unwrap();
            if let Err(e) = result {
                refused += 1;
                assert_eq!(e.kind(), ErrorKind::StsUnavailable);
                assert!(e.is_retryable() && e.retry_after().is_some(), "{e}");
                assert!(e.client_message().contains("busy"), "{}", e.client_message());
                assert!(took < Duration::from_secs(1), "a refused call waited {took:?} (the wait is 50 ms)");
            }
        }
        assert_eq!(sts.most_open.load(Ordering::SeqCst), 4, "the cap is exact");
        assert_eq!(sts.calls.load(Ordering::SeqCst), 4, "the refused calls sent nothing");
        assert_eq!(refused, 16);
        assert_eq!(t.stats().refused_busy, 16);
        assert!(started.elapsed() < Duration::from_secs(2));
        // Other services are not limited.
        let sts2 = fake(Duration::ZERO, 200, "");
        let t2 = LimitedTransport::new(sts2.clone(), StsLimits::default().max_inflight(1));
        assert!(t2.call(call(AwsService::Organizations)).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_throttling_sts_is_backed_off_with_growing_intervals_then_used_again() {
        let sts = fake(Duration::ZERO, 400, THROTTLING);
        let t = LimitedTransport::new(
            sts.clone(),
            StsLimits::default().throttle_backoff(Duration::from_millis(100), Duration::from_millis(400)),
        );
        // Positive control: a refusal that is not throttling starts no backoff.
        *sts.body.lock().unwrap() = DENIED;
        for _ in 0..3 {
            assert!(t.call(call(AwsService::Sts)).await.is_ok());
        }
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
        assert_eq!(t.stats().throttling_answers, 0);
        // Throttling: calls every 5 ms for 1.2 s reach STS only at the end of each backoff.
        *sts.body.lock().unwrap() = THROTTLING;
        let start = Instant::now();
        let mut refused = 0;
        while start.elapsed() < Duration::from_millis(1200) {
            if let Err(e) = t.call(call(AwsService::Sts)).await {
                assert_eq!(e.kind(), ErrorKind::StsUnavailable);
                assert!(e.retry_after().is_some_and(|d| d <= Duration::from_millis(480)), "{e}");
                refused += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = sts.calls.load(Ordering::SeqCst) - 3;
        // 100, 200, 400, 400 ms (+ up to 20%) fit at most 6 calls into 1.2 s; without the
        // backoff it would be about 200.
        assert!((2..=6).contains(&sent), "{sent} calls reached a throttling STS");
        assert!(refused > 150, "{refused}");
        assert_eq!(t.stats().refused_backoff, refused);
        // Recovery: after the backoff, the probe's good answer lets every call through.
        sts.status.store(200, Ordering::SeqCst);
        *sts.body.lock().unwrap() = "";
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..5 {
            assert!(t.call(call(AwsService::Sts)).await.is_ok());
        }
        // And HTTP 429 counts as throttling too.
        sts.status.store(429, Ordering::SeqCst);
        let _ = t.call(call(AwsService::Sts)).await;
        assert!(t.call(call(AwsService::Sts)).await.is_err(), "a 429 starts a backoff");
    }
}
