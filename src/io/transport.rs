//! The one HTTP trait for the signed AWS calls the crate makes (STS replays and Organizations
//! lookups), [`AwsTransport`], and its reqwest/rustls implementation.
//!
//! The transport knows HTTP, not tokens or rules. It is created once per verifier and shared, so
//! connections are pooled and kept alive (no TLS handshake per join).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::core::error::{Error, ErrorKind};
use crate::core::proof::{Method, Replay};
use crate::core::response::{HttpAnswer, MAX_STS_RESPONSE_BYTES};

/// Default time to establish a connection (TCP and TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time for one whole exchange, body included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A boxed future, as returned by [`AwsTransport::call`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where requests go instead of their signed host's address. The `Host` header (and, for
/// [`EndpointOverride::Address`], the TLS server name) stays the signed host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointOverride {
    /// HTTPS to this address, with SNI and certificate checks for the signed host.
    Address(SocketAddr),
    /// This base URL (e.g. a VPC interface endpoint `https://vpce-....sts.REGION.vpce.amazonaws.com`).
    /// `http://` is accepted only for a loopback IP address (tests, demos, local emulators).
    Url(String),
}

/// Which certificate authorities the transport trusts.
#[derive(Clone, Debug, Default)]
pub enum TrustRoots {
    /// The Mozilla root program, bundled (`webpki-roots`).
    #[default]
    Mozilla,
    /// Only these DER certificates (e.g. a private CA in front of a VPC endpoint, or tests).
    Custom(Vec<Vec<u8>>),
}

/// Builds a [`ReqwestTransport`].
#[derive(Clone, Debug)]
pub struct ReqwestTransportBuilder {
    connect_timeout: Duration,
    timeout: Duration,
    roots: TrustRoots,
    endpoint_override: Option<EndpointOverride>,
    proxy: Option<String>,
}

impl Default for ReqwestTransportBuilder {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            roots: TrustRoots::Mozilla,
            endpoint_override: None,
            proxy: None,
        }
    }
}

/// Resolves every name to one address: how [`EndpointOverride::Address`] applies to every
/// service the transport carries (STS and Organizations alike), whatever the host name.
#[derive(Debug)]
struct OneAddress(SocketAddr);

impl reqwest::dns::Resolve for OneAddress {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}

impl ReqwestTransportBuilder {
    /// Connection timeout (TCP and TLS); default 2 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Timeout for one whole exchange, body included; default 10 s.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Which CAs to trust; default the bundled Mozilla roots.
    pub fn trust_roots(mut self, roots: TrustRoots) -> Self {
        self.roots = roots;
        self
    }

    /// Sends requests somewhere other than the signed host's address, keeping the signed host.
    pub fn endpoint_override(mut self, o: EndpointOverride) -> Self {
        self.endpoint_override = Some(o);
        self
    }

    /// Sends through this HTTP(S) proxy. No proxy is used unless set (environment variables are
    /// ignored).
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// Builds the transport. Fails on an unusable override, proxy or root certificate.
    pub fn build(self) -> Result<ReqwestTransport, Error> {
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&self.roots)?)
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .no_proxy();
        let mut base = None;
        match &self.endpoint_override {
            None => builder = builder.https_only(true),
            Some(EndpointOverride::Address(addr)) => {
                builder = builder.https_only(true).dns_resolver(OneAddress(*addr));
            }
            Some(EndpointOverride::Url(url)) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| Error::config_invalid(format!("endpoint override is not a URL: {e}")))?;
                match parsed.scheme() {
                    "https" => builder = builder.https_only(true),
                    "http" if is_loopback_ip(&parsed) => {}
                    "http" => {
                        return Err(Error::config_invalid(
                            "a plain http:// endpoint override must be a loopback IP address",
                        ));
                    }
                    other => {
                        return Err(Error::config_invalid(format!("endpoint override scheme {other} is not https")));
                    }
                }
                if parsed.path() != "/" || parsed.query().is_some() || !parsed.username().is_empty() {
                    return Err(Error::config_invalid("endpoint override must be a bare scheme://host[:port]/"));
                }
                base = Some(parsed);
            }
        }
        if let Some(p) = &self.proxy {
            let proxy =
                reqwest::Proxy::all(p).map_err(|e| Error::config_invalid(format!("proxy is not usable: {e}")))?;
            builder = builder.proxy(proxy);
        }
        let client = builder.build().map_err(|e| Error::config_invalid(format!("HTTP client setup failed: {e}")))?;
        Ok(ReqwestTransport { client, base })
    }
}

/// The TLS every HTTPS client of the crate uses: rustls with ring (the crate's one crypto
/// provider, whatever the process installed), safe default versions, HTTP/1.1, these roots.
pub(crate) fn tls_config(trust: &TrustRoots) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        TrustRoots::Mozilla => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TrustRoots::Custom(ders) => {
            for der in ders {
                roots
                    .add(rustls::pki_types::CertificateDer::from(der.clone()))
                    .map_err(|e| Error::config_invalid(format!("trust root is not a usable certificate: {e}")))?;
            }
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config_invalid(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Whether the URL's host is a loopback IP address: the only place plain `http://` may carry
/// what is signed (a name could resolve anywhere). Shared by the transport's override and the
/// join client's server URL.
pub(crate) fn is_loopback_ip(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    }
}

/// The default transport: reqwest over rustls (ring), HTTP/1.1 only, verified TLS, no redirects,
/// no proxy unless configured, connect and total timeouts, body capped while streaming.
#[derive(Clone, Debug)]
pub struct ReqwestTransport {
    client: reqwest::Client,
    base: Option<reqwest::Url>,
}

impl ReqwestTransport {
    /// A transport with the defaults.
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    /// A builder to change timeouts, roots, override or proxy.
    pub fn builder() -> ReqwestTransportBuilder {
        ReqwestTransportBuilder::default()
    }

    /// Sends one call to `https://{host}{target}` (or the override's base with the same target)
    /// with exactly its headers, `Host` included, under the same rules for every AWS service it
    /// carries: verified TLS, no redirects, timeouts, the body read up to `max_body` (+1 byte,
    /// for the parser to refuse). Failures are retryable `sts_unavailable` errors worded for the
    /// service; callers for other services re-kind them, keeping the source.
    async fn send(&self, call: AwsCall<'_>) -> Result<HttpAnswer, Error> {
        let (service, host, max_body) = (call.service.as_str(), call.host, call.max_body);
        let url = match &self.base {
            Some(base) => base.join(call.target),
            None => reqwest::Url::parse(&format!("https://{host}{}", call.target)),
        }
        .map_err(|e| Error::config_invalid(format!("bad URL: {e}")))?;
        let method = match call.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
        };
        let mut req = self.client.request(method, url).body(call.body.to_vec());
        let headers = call.headers.into_iter();
        for (name, value) in headers {
            // reqwest sets Content-Length from the body (the same length); every other header,
            // Host included, is sent exactly as given.
            if name != "content-length" {
                req = req.header(name, value);
            }
        }
        let unavailable = |e| unavailable(service, host, self.base.as_ref(), e);
        let mut resp = req.send().await.map_err(unavailable)?;
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unavailable)? {
            let room = max_body + 1 - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() > max_body {
                break; // stop reading: the parser refuses it as oversized
            }
        }
        Ok(HttpAnswer { status, content_type, body })
    }
}

/// Why an HTTP exchange failed, as an operator needs it: which step, not just "it failed".
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The host name did not resolve. `permanent` when the resolver said the name does not
    /// exist (a typo, a missing record), not that it could not answer now.
    NameResolution {
        /// The name does not exist (`EAI_NONAME`), as opposed to a resolver failing for now.
        permanent: bool,
    },
    /// Nothing listens there (the connection was refused).
    Refused,
    /// The TLS handshake failed: an untrusted or mismatched certificate, or no TLS at all.
    Tls,
    /// A connect or exchange timeout.
    Timeout,
    /// The peer closed or reset the connection before answering completely.
    Closed,
    /// Anything else.
    Other,
}

impl FailureClass {
    /// A short name for logs and messages: `name resolution`, `refused`, `TLS`, `timeout`,
    /// `closed`, `failed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NameResolution { .. } => "name resolution",
            Self::Refused => "refused",
            Self::Tls => "TLS",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Other => "failed",
        }
    }
}

/// The class of a failed HTTP exchange and its innermost cause (bounded, printable), read from
/// an error's `source()` chain as reqwest, hyper and rustls build it. Holds no secret: the chain
/// names hosts, system error texts and certificate problems.
///
/// ```
/// use iam_join::FailureClass;
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(iam_join::failure_cause(&refused).0, FailureClass::Refused);
/// ```
pub fn failure_cause(error: &(dyn std::error::Error + 'static)) -> (FailureClass, String) {
    let mut class = FailureClass::Other;
    let mut innermost = error.to_string();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => class = FailureClass::Refused,
                K::TimedOut => class = FailureClass::Timeout,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    class = FailureClass::Closed;
                }
                _ => {}
            }
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && r.is_timeout()
        {
            class = FailureClass::Timeout;
        }
        if lower.contains("dns error") || lower.contains("resolving dns") || lower.contains("lookup address") {
            // getaddrinfo's EAI_NONAME / EAI_NODATA texts say the name does not exist; EAI_AGAIN
            // ("temporary failure") and the rest may pass.
            let permanent = lower.contains("name or service not known")
                || lower.contains("no address associated")
                || lower.contains("nodename nor servname");
            if !matches!(class, FailureClass::NameResolution { permanent: true }) {
                class = FailureClass::NameResolution { permanent };
            }
        } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
            class = FailureClass::Tls;
        } else if lower.contains("connection closed") || lower.contains("connection reset") {
            class = FailureClass::Closed;
        } else if lower.contains("timed out") || lower.contains("deadline has elapsed") {
            class = FailureClass::Timeout;
        }
        innermost = text;
        next = e.source();
    }
    (class, innermost.chars().take(160).collect::<String>().escape_debug().collect())
}

fn unavailable(service: &str, host: &str, sent_to: Option<&reqwest::Url>, e: reqwest::Error) -> Error {
    let (class, cause) = failure_cause(&e);
    let via = sent_to
        .map(|u| {
            format!(
                " via {}",
                u.host_str().map_or(String::new(), |h| format!("{h}:{}", u.port_or_known_default().unwrap_or(443)))
            )
        })
        .unwrap_or_default();
    let what = match class {
        FailureClass::NameResolution { permanent: true } => "name resolution: no such name",
        FailureClass::NameResolution { permanent: false } => "name resolution",
        FailureClass::Refused => "refused: nothing listens there",
        FailureClass::Tls => "TLS handshake",
        FailureClass::Timeout => "timeout",
        FailureClass::Closed => "closed before the answer was complete",
        FailureClass::Other if e.is_body() || e.is_decode() => "broke off while answering",
        FailureClass::Other => "other",
    };
    Error::new(ErrorKind::StsUnavailable, format!("{service} request to {host}{via} failed ({what}): {cause}"))
        .with_retryable(true)
        .with_source(e)
}

impl AwsTransport for ReqwestTransport {
    fn call<'a>(&'a self, call: AwsCall<'a>) -> BoxFuture<'a, Result<HttpAnswer, Error>> {
        Box::pin(self.send(call))
    }
}

/// The AWS service a call is for: it names the call in errors and metrics.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AwsService {
    /// AWS STS: the replay of a proof.
    Sts,
    /// AWS Organizations: a membership lookup.
    Organizations,
}

impl AwsService {
    /// `STS` or `Organizations`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AwsService::Sts => "STS",
            AwsService::Organizations => "Organizations",
        }
    }
}

/// One signed AWS call as the crate makes it: `METHOD https://{host}{target}` with exactly
/// `headers` (`host` included) and `body`, reading at most `max_body` bytes of the answer (+1, so
/// the parser can refuse an oversized one).
#[non_exhaustive]
#[derive(Debug)]
pub struct AwsCall<'a> {
    /// The service, for messages and metrics.
    pub service: AwsService,
    /// The method.
    pub method: Method,
    /// The signed host; the request goes to `https://{host}{target}` (or the transport's
    /// override, with the same target).
    pub host: &'a str,
    /// The path and query, e.g. `/`.
    pub target: &'a str,
    /// Every header to send, as signed, `host` included.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The body, as signed.
    pub body: &'a [u8],
    /// The largest answer body the caller will read.
    pub max_body: usize,
}

impl<'a> AwsCall<'a> {
    /// The STS call that sends a [`Replay`] as is.
    pub fn replay(replay: &'a Replay) -> Self {
        Self {
            service: AwsService::Sts,
            method: replay.method(),
            host: replay.endpoint().host(),
            target: replay.target(),
            headers: replay.headers().collect(),
            body: replay.body(),
            max_body: MAX_STS_RESPONSE_BYTES,
        }
    }

    /// A signed call to AWS Organizations (AWS JSON 1.1 `POST /`).
    pub(crate) fn organizations(
        host: &'a str,
        headers: Vec<(&'a str, &'a str)>,
        body: &'a [u8],
        max_body: usize,
    ) -> Self {
        Self { service: AwsService::Organizations, method: Method::Post, host, target: "/", headers, body, max_body }
    }
}

/// The one HTTP trait for the signed AWS calls the crate makes (STS replays and Organizations
/// lookups), so that overrides, caps, timeouts and TLS behave the same for both.
/// [`ReqwestTransport`] implements it; so does an HTTP stack of your own.
///
/// An implementation must send exactly the call's method, headers and body to its host (or an
/// operator-configured equivalent that keeps the signed `Host`), must not follow redirects,
/// must stop reading the answer past `max_body` + 1 bytes, and must report a failed exchange as
/// [`Error::sts_unavailable`] (the Organizations client re-kinds it as `lookup_failed`).
pub trait AwsTransport: Send + Sync + fmt::Debug {
    /// Makes one call and returns the raw answer.
    fn call<'a>(&'a self, call: AwsCall<'a>) -> BoxFuture<'a, Result<HttpAnswer, Error>>;
}
