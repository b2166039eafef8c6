//! An STS emulator on a loopback port (feature `emulator`), for tests, demos and trying the crate
//! without an AWS account. It answers `GetCallerIdentity` for a fixed set of principals and really
//! checks SigV4 signatures, with its own implementation (independent of `aws-sigv4`): a wrong
//! secret, a changed signed header or an unknown key is refused as STS would refuse it.
//!
//! Plain HTTP on 127.0.0.1 only; point a transport at it with
//! [`crate::EndpointOverride::Url`]. It is not STS and not for production.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::response::STS_NAMESPACE;

/// A principal the emulator knows.
#[derive(Clone)]
pub struct EmulatedPrincipal {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token, required on requests when set (temporary credentials).
    pub session_token: Option<String>,
    /// The ARN GetCallerIdentity returns.
    pub arn: String,
    /// The user id GetCallerIdentity returns.
    pub user_id: String,
}

impl std::fmt::Debug for EmulatedPrincipal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedPrincipal")
            .field("access_key_id", &self.access_key_id)
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

/// A running emulator; stops when dropped.
#[derive(Debug)]
pub struct StsEmulator {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StsEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StsEmulator {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start(principals: Vec<EmulatedPrincipal>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicUsize::new(0));
        let principals = Arc::new(principals);
        let counter = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (p, c) = (principals.clone(), counter.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &p, &c).await;
                });
            }
        });
        Ok(Self { addr, served, task })
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has answered.
    pub fn requests(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// Largest request the emulator reads.
const MAX_REQUEST: usize = 64 * 1024;

async fn serve(mut stream: TcpStream, principals: &[EmulatedPrincipal], served: &AtomicUsize) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read one request (head + Content-Length body); keep-alive between requests.
        let (head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= n + len {
                    break (n, len);
                }
            }
            if buf.len() > MAX_REQUEST {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let (status, content_type, body) = answer(&buf[..head_len + body_len], head_len, principals);
        served.fetch_add(1, Ordering::SeqCst);
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nx-amzn-RequestId: 4c0ac7f4-2a9f-4f8a-9c5f-5d3b2a1f0e9d\r\n\r\n",
            if status == 200 { "OK" } else { "Error" },
            body.len()
        );
        // One write: head and body split over two segments would meet delayed ACKs.
        stream.write_all(format!("{head}{body}").as_bytes()).await?;
        buf.drain(..head_len + body_len);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

const REQUEST_ID: &str = "4c0ac7f4-2a9f-4f8a-9c5f-5d3b2a1f0e9d";

fn error(status: u16, code: &str, message: &str, json: bool) -> (u16, &'static str, String) {
    if json {
        let body = format!(
            r#"{{"Error":{{"Code":"{code}","Message":"{message}","Type":"Sender"}},"RequestId":"{REQUEST_ID}"}}"#
        );
        (status, "application/json", body)
    } else {
        let body = format!(
            "<ErrorResponse xmlns=\"{STS_NAMESPACE}\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  <RequestId>{REQUEST_ID}</RequestId>\n</ErrorResponse>\n"
        );
        (status, "text/xml", body)
    }
}

/// Checks the request as STS would and builds the answer.
fn answer(raw: &[u8], head_len: usize, principals: &[EmulatedPrincipal]) -> (u16, &'static str, String) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(raw).is_err() {
        return error(400, "MalformedRequest", "Could not parse the request", false);
    }
    let body = &raw[head_len..];
    let get = |name: &str| -> Option<String> {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_owned)
    };
    let json = get("accept").is_some_and(|a| a.eq_ignore_ascii_case("application/json"));
    if body != crate::request::GET_CALLER_IDENTITY_BODY || req.method != Some("POST") {
        return error(400, "InvalidAction", "Only GetCallerIdentity is emulated", json);
    }
    let Some(auth) = get("authorization") else {
        return error(403, "MissingAuthenticationToken", "Request is missing Authentication Token", json);
    };
    let Ok(parsed) = crate::sigv4::parse_authorization(&auth) else {
        return error(400, "IncompleteSignature", "Authorization header is malformed", json);
    };
    let Some(principal) = principals.iter().find(|p| p.access_key_id == parsed.access_key_id) else {
        return error(403, "InvalidClientTokenId", "The security token included in the request is invalid.", json);
    };
    if principal.session_token.is_some() && get("x-amz-security-token") != principal.session_token {
        return error(403, "InvalidClientTokenId", "The security token included in the request is invalid.", json);
    }
    let Some(amz_date) = get("x-amz-date") else {
        return error(400, "IncompleteSignature", "X-Amz-Date is missing", json);
    };
    let signature = auth.rsplit("Signature=").next().unwrap_or("");

    let mut canonical = String::from("POST\n/\n\n");
    for name in &parsed.signed_headers {
        let value = get(name).unwrap_or_default();
        let collapsed = value.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(canonical, "{name}:{collapsed}");
    }
    let _ = write!(canonical, "\n{}\n{}", parsed.signed_headers.join(";"), hex(&Sha256::digest(body)));
    let scope = format!("{}/{}/sts/aws4_request", parsed.date, parsed.region);
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let key = [parsed.date, parsed.region, "sts", "aws4_request"]
        .iter()
        .fold(format!("AWS4{}", principal.secret_access_key).into_bytes(), |k, part| hmac(&k, part.as_bytes()));
    if hex(&hmac(&key, to_sign.as_bytes())) != signature {
        return error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
            json,
        );
    }
    let account = principal.arn.split(':').nth(4).unwrap_or("");
    if json {
        let body = format!(
            r#"{{"GetCallerIdentityResponse":{{"GetCallerIdentityResult":{{"Account":"{account}","Arn":"{}","UserId":"{}"}},"ResponseMetadata":{{"RequestId":"{REQUEST_ID}"}}}}}}"#,
            principal.arn, principal.user_id
        );
        (200, "application/json", body)
    } else {
        let body = format!(
            "<GetCallerIdentityResponse xmlns=\"{STS_NAMESPACE}\">\n  <GetCallerIdentityResult>\n    <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{account}</Account>\n  </GetCallerIdentityResult>\n  <ResponseMetadata>\n    <RequestId>{REQUEST_ID}</RequestId>\n  </ResponseMetadata>\n</GetCallerIdentityResponse>\n",
            principal.arn, principal.user_id
        );
        (200, "text/xml", body)
    }
}
