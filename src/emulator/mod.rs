//! An STS emulator on a loopback port (feature `emulator`), for tests, demos and trying the crate
//! without an AWS account. It answers `GetCallerIdentity` for a set of principals and really
//! checks SigV4 signatures, with its own implementation (independent of `aws-sigv4`): a wrong
//! secret, a changed signed header or an unknown key is refused as STS would refuse it. It also
//! plays an EKS cluster's IRSA: `AssumeRoleWithWebIdentity` for the roles it is given, with the
//! one web identity token each accepts, hands out temporary credentials (`ASIA…` with a session
//! token, for an hour) whose `GetCallerIdentity` is the role's session,
//! `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`. So the AWS SDKs' web identity provider
//! (aws-config's, botocore's), pointed at it with `AWS_ENDPOINT_URL_STS`, works against it.
//!
//! Plain HTTP on a loopback address only; point a transport at it with
//! [`crate::EndpointOverride::Url`]. It is not STS and not for production.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::core::response::STS_NAMESPACE;

/// A principal the emulator knows.
#[derive(Clone)]
#[non_exhaustive]
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

impl EmulatedPrincipal {
    /// A principal: its keys (a session token makes them temporary credentials, required on its
    /// requests), and the ARN and user id GetCallerIdentity returns for it.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
        arn: impl Into<String>,
        user_id: impl Into<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
            arn: arn.into(),
            user_id: user_id.into(),
        }
    }
}

impl std::fmt::Debug for EmulatedPrincipal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedPrincipal")
            .field("access_key_id", &self.access_key_id)
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

/// A role the emulator lets a web identity assume (`AssumeRoleWithWebIdentity`), as IRSA does.
#[derive(Clone)]
#[non_exhaustive]
pub struct EmulatedRole {
    /// The role's IAM ARN, `arn:aws:iam::ACCOUNT:role/NAME`.
    pub role_arn: String,
    /// The role's unique id (`AROA…`), the first half of its sessions' user ids.
    pub role_id: String,
    /// The one web identity token (a projected service-account token, in EKS) that may assume it.
    pub web_identity_token: String,
}

impl EmulatedRole {
    /// The role `role_arn` (its unique id `role_id`), assumable with `web_identity_token`.
    pub fn new(role_arn: impl Into<String>, role_id: impl Into<String>, web_identity_token: impl Into<String>) -> Self {
        Self { role_arn: role_arn.into(), role_id: role_id.into(), web_identity_token: web_identity_token.into() }
    }
}

impl std::fmt::Debug for EmulatedRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedRole").field("role_arn", &self.role_arn).finish_non_exhaustive()
    }
}

/// The most role sessions the emulator holds; the oldest is forgotten past it.
pub const MAX_EMULATED_SESSIONS: usize = 10_000;
/// How long the credentials of a role session last unless `DurationSeconds` says otherwise.
const SESSION_LIFETIME: Duration = Duration::from_secs(3600);

/// What the emulator knows: fixed principals, roles, and the sessions of those roles.
#[derive(Debug, Default)]
struct Directory {
    principals: Vec<EmulatedPrincipal>,
    roles: Vec<EmulatedRole>,
    /// Role sessions, oldest first, each with when its credentials expire.
    sessions: Mutex<VecDeque<(EmulatedPrincipal, SystemTime)>>,
}

/// Configures an emulator: its principals, its roles, and where it listens.
#[derive(Debug)]
pub struct StsEmulatorBuilder {
    directory: Directory,
    listen: SocketAddr,
}

impl StsEmulatorBuilder {
    /// A principal whose signed `GetCallerIdentity` the emulator answers.
    pub fn principal(mut self, p: EmulatedPrincipal) -> Self {
        self.directory.principals.push(p);
        self
    }

    /// A role a web identity may assume.
    pub fn role(mut self, r: EmulatedRole) -> Self {
        self.directory.roles.push(r);
        self
    }

    /// Listens here instead of an ephemeral port on 127.0.0.1; a loopback address only.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Starts serving.
    pub async fn start(self) -> std::io::Result<StsEmulator> {
        if !self.listen.ip().is_loopback() {
            return Err(std::io::Error::other("the STS emulator listens on a loopback address only"));
        }
        let listener = TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicUsize::new(0));
        let directory = Arc::new(self.directory);
        let counter = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (d, c) = (directory.clone(), counter.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &d, &c).await;
                });
            }
        });
        Ok(StsEmulator { addr, served, task })
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
    /// Starts on 127.0.0.1 with an ephemeral port, knowing these principals and no role.
    pub async fn start(principals: Vec<EmulatedPrincipal>) -> std::io::Result<Self> {
        principals.into_iter().fold(Self::builder(), StsEmulatorBuilder::principal).start().await
    }

    /// An emulator to configure: principals, roles, listen address (default: 127.0.0.1, an
    /// ephemeral port).
    pub fn builder() -> StsEmulatorBuilder {
        StsEmulatorBuilder { directory: Directory::default(), listen: SocketAddr::from(([127, 0, 0, 1], 0)) }
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

async fn serve(mut stream: TcpStream, directory: &Directory, served: &AtomicUsize) -> std::io::Result<()> {
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
        let (status, content_type, body) = answer(&buf[..head_len + body_len], head_len, directory, SystemTime::now());
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
fn answer(raw: &[u8], head_len: usize, directory: &Directory, now: SystemTime) -> (u16, &'static str, String) {
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
    if req.method != Some("POST") {
        return error(400, "InvalidAction", "Only POST is emulated", json);
    }
    if body != crate::core::proof::forwarded::GET_CALLER_IDENTITY_BODY {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
        let param = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        return match param("Action") {
            // Unsigned, as STS takes it: the web identity token is the proof.
            Some("AssumeRoleWithWebIdentity") => assume_role_with_web_identity(&param, directory, now),
            _ => error(400, "InvalidAction", "Only GetCallerIdentity and AssumeRoleWithWebIdentity are emulated", json),
        };
    }
    let Some(auth) = get("authorization") else {
        return error(403, "MissingAuthenticationToken", "Request is missing Authentication Token", json);
    };
    let Ok(parsed) = crate::core::sigv4::parse_authorization(&auth) else {
        return error(400, "IncompleteSignature", "Authorization header is malformed", json);
    };
    let Some(principal) = directory.find(parsed.access_key_id, now) else {
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

impl Directory {
    /// The principal with this access key: a fixed one, or an unexpired role session.
    fn find(&self, access_key_id: &str, now: SystemTime) -> Option<EmulatedPrincipal> {
        if let Some(p) = self.principals.iter().find(|p| p.access_key_id == access_key_id) {
            return Some(p.clone());
        }
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.iter().find(|(p, expires)| p.access_key_id == access_key_id && *expires > now).map(|(p, _)| p.clone())
    }
}

/// `n` random characters of `alphabet`.
fn random_text(n: usize, alphabet: &[u8]) -> String {
    let mut bytes = vec![0u8; n];
    let _ = getrandom::fill(&mut bytes); // the emulator's keys need not be secret
    bytes.iter().map(|b| alphabet[usize::from(*b) % alphabet.len()] as char).collect()
}

/// `AssumeRoleWithWebIdentity`, as STS answers it for IRSA: the role must be known and the token
/// the one it accepts; the session's credentials then sign `GetCallerIdentity` as
/// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
fn assume_role_with_web_identity<'a>(
    param: &dyn Fn(&str) -> Option<&'a str>,
    directory: &Directory,
    now: SystemTime,
) -> (u16, &'static str, String) {
    let (Some(role_arn), Some(session), Some(token)) =
        (param("RoleArn"), param("RoleSessionName"), param("WebIdentityToken"))
    else {
        return error(400, "MissingParameter", "RoleArn, RoleSessionName and WebIdentityToken are required", false);
    };
    let session_ok = (2..=64).contains(&session.len())
        && session.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
    if !session_ok {
        return error(400, "ValidationError", "RoleSessionName is not a valid session name", false);
    }
    let lifetime = match param("DurationSeconds").map(str::parse::<u64>) {
        None => SESSION_LIFETIME,
        Some(Ok(s)) if (900..=43_200).contains(&s) => Duration::from_secs(s),
        Some(_) => return error(400, "ValidationError", "DurationSeconds must be between 900 and 43200", false),
    };
    let Some(role) = directory.roles.iter().find(|r| r.role_arn == role_arn) else {
        return error(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", false);
    };
    if role.web_identity_token != token {
        return error(
            400,
            "InvalidIdentityToken",
            "The web identity token that was passed could not be validated",
            false,
        );
    }
    let mut fields = role.role_arn.splitn(6, ':');
    let (account, name) = (fields.nth(4).unwrap_or(""), role.role_arn.rsplit('/').next().unwrap_or(""));
    let upper = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let any = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let principal = EmulatedPrincipal {
        access_key_id: format!("ASIA{}", random_text(16, upper)),
        secret_access_key: random_text(40, any),
        session_token: Some(random_text(356, any)),
        arn: format!("arn:aws:sts::{account}:assumed-role/{name}/{session}"),
        user_id: format!("{}:{session}", role.role_id),
    };
    let expires = now + lifetime;
    let expiration = time::OffsetDateTime::from(expires)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let body = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"{STS_NAMESPACE}\">\n  <AssumeRoleWithWebIdentityResult>\n    <SubjectFromWebIdentityToken>system:serviceaccount:emulated:{name}</SubjectFromWebIdentityToken>\n    <Audience>sts.amazonaws.com</Audience>\n    <AssumedRoleUser>\n      <Arn>{}</Arn>\n      <AssumedRoleId>{}</AssumedRoleId>\n    </AssumedRoleUser>\n    <Credentials>\n      <SessionToken>{}</SessionToken>\n      <SecretAccessKey>{}</SecretAccessKey>\n      <Expiration>{expiration}</Expiration>\n      <AccessKeyId>{}</AccessKeyId>\n    </Credentials>\n    <Provider>oidc.emulated.iam-join</Provider>\n  </AssumeRoleWithWebIdentityResult>\n  <ResponseMetadata>\n    <RequestId>{REQUEST_ID}</RequestId>\n  </ResponseMetadata>\n</AssumeRoleWithWebIdentityResponse>\n",
        principal.arn,
        principal.user_id,
        principal.session_token.as_deref().unwrap_or_default(),
        principal.secret_access_key,
        principal.access_key_id,
    );
    let mut sessions = directory.sessions.lock().unwrap_or_else(|p| p.into_inner());
    sessions.retain(|(_, e)| *e > now);
    if sessions.len() >= MAX_EMULATED_SESSIONS {
        sessions.pop_front();
    }
    sessions.push_back((principal, expires));
    (200, "text/xml", body)
}
