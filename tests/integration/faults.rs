//! The real network stack under faults: a loopback TLS server (rcgen certificate for
//! `sts.amazonaws.com`, tokio-rustls) proves SNI, Host and certificate checks; raw loopback
//! servers misbehave in each way STS or the network might, and every verification must end in a
//! bounded, correctly classified refusal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use iam_join::agent::{JoinRequest, sign_join_request};
use iam_join::{Challenge, Proof};
use iam_join::{EndpointOverride, ErrorKind, RequestPolicy, ReqwestTransport, TokenSet, TrustRoots, Verifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::fixtures::{TOKENS, user};
use crate::common::loopback::Loopback;

const OK_XML: &str = "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult><Arn>arn:aws:iam::111111111111:user/ci-deployer</Arn><UserId>AIDAEXAMPLEUSERID0001</UserId><Account>111111111111</Account></GetCallerIdentityResult></GetCallerIdentityResponse>";

/// Reads one HTTP request head (and its 43-byte body); returns the head text.
async fn read_request(s: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The shared loopback server, answering each request with `respond` on its connection: its
/// address, its request counter, and the server itself (stopped when dropped).
async fn server<F, Fut>(respond: F) -> (SocketAddr, Arc<AtomicUsize>, Loopback)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let server = Loopback::start(move |stream, _request| {
        let done = respond(stream);
        async move {
            done.await;
            None
        }
    })
    .await;
    (server.addr(), server.request_counter(), server)
}

fn verifier(base: String, timeout: Duration) -> Verifier {
    builder(base, timeout).build()
}

fn builder(base: String, timeout: Duration) -> iam_join::VerifierBuilder {
    let transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Url(base))
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .build()
        .unwrap();
    Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap()).transport(transport).deadline(Duration::from_secs(5))
}

async fn join(v: &Verifier) -> (Result<iam_join::Verdict, iam_join::Error>, Duration) {
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign_join_request(&user(), &JoinRequest::new(&challenge), SystemTime::now()).unwrap();
    let t = Instant::now();
    let r = v.verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now()).await;
    (r, t.elapsed())
}

async fn respond_with(mut s: TcpStream, head: &str, body: &[u8]) {
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body).await;
    let _ = s.shutdown().await;
}

#[tokio::test]
async fn connection_refused_is_unavailable_and_bounded() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (r, took) = join(&verifier(format!("http://{addr}/"), Duration::from_secs(1))).await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StsUnavailable, "{e}");
    assert!(e.is_retryable());
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let (addr, count, _addr_server) = server(|s| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let (r, took) = join(&verifier(format!("http://{addr}/"), Duration::from_millis(300))).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::StsUnavailable);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(count.load(Ordering::SeqCst), 3, "one attempt and two retries");
}

#[tokio::test]
async fn reset_mid_body_is_unavailable() {
    let (addr, _, _addr_server) = server(|mut s| async move {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 1000\r\n\r\n<GetCaller").await;
        // Abort with RST rather than a clean close.
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let (r, _) = join(&verifier(format!("http://{addr}/"), Duration::from_secs(1))).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::StsUnavailable);
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let (elsewhere, elsewhere_count, _elsewhere_server) =
        server(|s| respond_with(s, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"")).await;
    let location = format!("HTTP/1.1 302 Found\r\nLocation: http://{elsewhere}/\r\nContent-Length: 0\r\n\r\n");
    let (addr, count, _addr_server) = server(move |s| {
        let location = location.clone();
        async move { respond_with(s, &location, b"").await }
    })
    .await;
    let (r, _) = join(&verifier(format!("http://{addr}/"), Duration::from_secs(1))).await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StsUnavailable);
    assert!(!e.is_retryable());
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(elsewhere_count.load(Ordering::SeqCst), 0, "the redirect target must never be contacted");
}

#[tokio::test]
async fn twenty_mib_body_is_cut_at_the_cap() {
    let (addr, _, _addr_server) = server(|mut s| async move {
        let total = 20 * 1024 * 1024;
        let _ = s
            .write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
            )
            .await;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..(total / chunk.len()) {
            if s.write_all(&chunk).await.is_err() {
                return; // the client stopped reading: good
            }
        }
    })
    .await;
    let (r, took) = join(&verifier(format!("http://{addr}/"), Duration::from_secs(5))).await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StsResponseInvalid, "{e}");
    assert!(e.to_string().contains("larger than 65536"), "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn dripping_body_hits_the_timeout() {
    let (addr, _, _addr_server) = server(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 100\r\n\r\n").await;
        for _ in 0..100 {
            if s.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let (r, took) = join(&builder(format!("http://{addr}/"), Duration::from_millis(1500)).retries(0).build()).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::StsUnavailable);
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn html_500_is_retried_then_unavailable() {
    let (addr, count, _addr_server) = server(|s| {
        respond_with(
            s,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: 22\r\n\r\n",
            b"<html>oops</html>     ",
        )
    })
    .await;
    let (r, _) = join(&verifier(format!("http://{addr}/"), Duration::from_secs(1))).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::StsUnavailable);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn throttling_is_retried_then_unavailable() {
    let body = std::fs::read(crate::common::vectors("sts/err_throttling.xml")).unwrap();
    let (addr, count, _addr_server) = server(move |s| {
        let body = body.clone();
        async move {
            let head =
                format!("HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n", body.len());
            respond_with(s, &head, &body).await
        }
    })
    .await;
    let (r, _) = join(&verifier(format!("http://{addr}/"), Duration::from_secs(1))).await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StsUnavailable);
    assert_eq!(e.sts_error().unwrap().code, "Throttling");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn throttling_then_success_is_allowed() {
    let n = Arc::new(AtomicUsize::new(0));
    let (addr, _, _addr_server) = server(move |s| {
        let first = n.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                respond_with(s, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", b"").await
            } else {
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n", OK_XML.len());
                respond_with(s, &head, OK_XML.as_bytes()).await
            }
        }
    })
    .await;
    let (r, _) = join(&verifier(format!("http://{addr}/"), Duration::from_secs(1))).await;
    assert_eq!(r.unwrap().identity().account().as_str(), "111111111111");
}

#[test]
fn plain_http_override_must_be_loopback() {
    for bad in [
        "http://10.0.0.1/",
        "http://example.com/",
        "ftp://127.0.0.1/",
        "http://127.0.0.1/path",
        "http://user@127.0.0.1/",
    ] {
        let r = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(bad.into())).build();
        assert!(r.is_err(), "{bad} must be refused");
    }
    for good in ["http://127.0.0.1:8080/", "http://[::1]:8080/", "https://vpce-0abc.sts.us-east-1.vpce.amazonaws.com/"]
    {
        assert!(
            ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(good.into())).build().is_ok(),
            "{good}"
        );
    }
}

// ---- TLS ----------------------------------------------------------------------------------------

/// (SNI, request head) of each request the TLS server saw.
type Seen = Arc<Mutex<Vec<(Option<String>, String)>>>;

struct TlsServer {
    addr: SocketAddr,
    ca_der: Vec<u8>,
    seen: Seen,
}

/// A TLS server on loopback with a certificate for `names`; records (SNI, request head).
async fn tls_server(names: &[&str]) -> TlsServer {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let head = read_request(&mut tls).await;
                seen.lock().unwrap().push((sni, head));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{OK_XML}",
                    OK_XML.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsServer { addr, ca_der: cert.to_vec(), seen }
}

fn tls_verifier(server: &TlsServer, roots: TrustRoots) -> Verifier {
    let transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Address(server.addr))
        .trust_roots(roots)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
        .policy(RequestPolicy::new())
        .transport(transport)
        .retries(0)
        .build()
}

#[tokio::test]
async fn tls_sends_sni_and_host_of_the_signed_endpoint() {
    let server = tls_server(&["sts.amazonaws.com"]).await;
    let v = tls_verifier(&server, TrustRoots::Custom(vec![server.ca_der.clone()]));
    let (r, _) = join(&v).await;
    assert_eq!(r.unwrap().identity().arn().as_str(), "arn:aws:iam::111111111111:user/ci-deployer");
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.as_deref(), Some("sts.amazonaws.com"));
    assert!(seen[0].1.to_ascii_lowercase().contains("\r\nhost: sts.amazonaws.com\r\n"), "{}", seen[0].1);
    assert!(
        !seen[0].1.to_ascii_lowercase().contains("user-agent: go-http-client"),
        "unsigned headers are not forwarded"
    );
}

#[tokio::test]
async fn tls_certificate_for_another_name_is_refused() {
    let server = tls_server(&["evil.example"]).await;
    let v = tls_verifier(&server, TrustRoots::Custom(vec![server.ca_der.clone()]));
    let (r, _) = join(&v).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::StsUnavailable);
    assert!(server.seen.lock().unwrap().is_empty(), "no request over an unverified connection");
}

#[tokio::test]
async fn tls_untrusted_ca_is_refused() {
    let server = tls_server(&["sts.amazonaws.com"]).await;
    let v = tls_verifier(&server, TrustRoots::Mozilla);
    let (r, _) = join(&v).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::StsUnavailable);
    assert!(server.seen.lock().unwrap().is_empty());
}

/// EndpointOverride::Address applies to Organizations calls too (it used to resolve only STS
/// host names, so Organizations calls went to the real host): the call reaches the loopback TLS
/// server with the Organizations host as SNI and Host, over a certificate verified for it.
#[tokio::test]
async fn organizations_calls_honour_the_address_override() {
    use iam_join::organizations::OrganizationsClient;
    const HOST: &str = "organizations.us-east-1.amazonaws.com";
    let server = tls_server(&[HOST]).await;
    let transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Address(server.addr))
        .trust_roots(TrustRoots::Custom(vec![server.ca_der.clone()]))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let reader = iam_join::agent::Credentials::new("AKIAORGREADER000000", "org-reader-secret", None);
    let client = OrganizationsClient::new(reader, transport);
    let account = iam_join::AccountId::parse("333333333333").unwrap();
    // The server answers STS XML, which is no DescribeAccount answer: refused after the call.
    let e = client.membership(iam_join::Partition::Aws, account, SystemTime::now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LookupFailed, "{e}");
    assert!(e.detail().contains("DescribeAccount"), "{e}");
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the call reached the override address");
    assert_eq!(seen[0].0.as_deref(), Some(HOST));
    let head = seen[0].1.to_ascii_lowercase();
    assert!(head.contains(&format!("\r\nhost: {HOST}\r\n")), "{head}");
    assert!(head.contains("x-amz-target: awsorganizationsv20161128.describeaccount"), "{head}");

    // A closed override address: the error names Organizations, not STS, and keeps its cause.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let transport = ReqwestTransport::builder().endpoint_override(EndpointOverride::Address(dead)).build().unwrap();
    let reader = iam_join::agent::Credentials::new("AKIAORGREADER000000", "org-reader-secret", None);
    let e = OrganizationsClient::new(reader, transport)
        .membership(iam_join::Partition::Aws, account, SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LookupFailed);
    assert!(
        e.detail().starts_with("Organizations request to organizations.us-east-1.amazonaws.com failed (refused"),
        "{e}"
    );
    assert!(!e.detail().contains("STS"), "{e}");
    assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
}
