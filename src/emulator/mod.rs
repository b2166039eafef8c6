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
//! It answers presigned `GET /?Action=GetCallerIdentity&…` URLs too, checking their query
//! signature (and expiry) as STS does, and plays outbound identity federation:
//! `GetWebIdentityToken` (signed) returns a JWT with AWS's claims, signed RS256 or ES384, and each
//! account's issuer ([`StsEmulator::issuer_url`]) serves its OpenID configuration and JWKS on the
//! same address; [`StsEmulatorBuilder::organization`] puts an account in an organization for the
//! token's `org_id` and `ou_path` claims.
//!
//! Plain HTTP on a loopback address only; point a transport at it with
//! [`crate::EndpointOverride::Url`]. It is not STS and not for production.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::core::response::STS_NAMESPACE;

pub(crate) mod sigv4;
mod web_identity;

use sigv4::{Signed, canonical_query, decode_query, payload_hash, signature};

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

/// A role session: its credentials, when they expire, and the role's IAM ARN.
type Session = (EmulatedPrincipal, SystemTime, String);

/// What the emulator knows: fixed principals, roles, the sessions of those roles, where accounts
/// sit in organizations, and its issuers' keys.
#[derive(Debug, Default)]
struct Directory {
    principals: Vec<EmulatedPrincipal>,
    roles: Vec<EmulatedRole>,
    /// Role sessions, oldest first.
    sessions: Mutex<VecDeque<Session>>,
    placements: Vec<web_identity::Placement>,
    /// `http://ADDR`, known once listening.
    base: String,
    signer: Option<web_identity::Signer>,
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

    /// Puts `account` in organization `org_id` under `ou_path` (`o-…/r-…/ou-…/…/`, root first), for
    /// the organization claims of its web identity tokens.
    pub fn organization(mut self, account: &str, org_id: &str, ou_path: &str) -> Self {
        self.directory.placements.push(web_identity::Placement {
            account: account.to_owned(),
            org_id: org_id.to_owned(),
            ou_path: ou_path.to_owned(),
        });
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
        let mut directory = self.directory;
        directory.base = format!("http://{addr}");
        directory.signer = Some(web_identity::Signer::new()?);
        let directory = Arc::new(directory);
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

    /// How many requests it has answered (issuer documents included).
    pub fn requests(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// The web identity issuer of `account`: `http://ADDR/issuers/ACCOUNT`, which serves
    /// `/.well-known/openid-configuration` and `/.well-known/jwks.json` below it.
    pub fn issuer_url(&self, account: &str) -> String {
        web_identity::issuer(&format!("http://{}", self.addr), account)
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

pub(crate) const REQUEST_ID: &str = "4c0ac7f4-2a9f-4f8a-9c5f-5d3b2a1f0e9d";

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
    let path = req.path.unwrap_or("");
    match req.method {
        Some("GET") if path.starts_with("/issuers/") => return issuer_document(path, directory),
        Some("GET") => return presigned(path, &get, directory, now),
        Some("POST") => {}
        _ => return error(400, "InvalidAction", "Only GET and POST are emulated", json),
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let param = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let action = param("Action");
    if action == Some("AssumeRoleWithWebIdentity") {
        // Unsigned, as STS takes it: the web identity token is the proof.
        return assume_role_with_web_identity(&param, directory, now);
    }
    let gci = body == crate::core::proof::forwarded::GET_CALLER_IDENTITY_BODY;
    if !gci && action != Some("GetWebIdentityToken") {
        return error(
            400,
            "InvalidAction",
            "Only GetCallerIdentity, GetWebIdentityToken and AssumeRoleWithWebIdentity are emulated",
            json,
        );
    }
    let Some(auth) = get("authorization") else {
        return error(403, "MissingAuthenticationToken", "Request is missing Authentication Token", json);
    };
    let Ok(parsed) = crate::core::sigv4::parse_authorization(&auth) else {
        return error(400, "IncompleteSignature", "Authorization header is malformed", json);
    };
    let Some((principal, role_arn)) = directory.find(parsed.access_key_id, now) else {
        return error(403, "InvalidClientTokenId", "The security token included in the request is invalid.", json);
    };
    if principal.session_token.is_some() && get("x-amz-security-token") != principal.session_token {
        return error(403, "InvalidClientTokenId", "The security token included in the request is invalid.", json);
    }
    let Some(amz_date) = get("x-amz-date") else {
        return error(400, "IncompleteSignature", "X-Amz-Date is missing", json);
    };
    let signed = Signed {
        method: "POST",
        canonical_query: String::new(),
        headers: parsed.signed_headers.iter().map(|n| ((*n).to_owned(), get(n).unwrap_or_default())).collect(),
        signed_headers: parsed.signed_headers.join(";"),
        payload_hash: payload_hash(body),
        amz_date: &amz_date,
        date: parsed.date,
        region: parsed.region,
    };
    if signature(&principal.secret_access_key, &signed) != auth.rsplit("Signature=").next().unwrap_or("") {
        return signature_mismatch(json);
    }
    if gci {
        return caller_identity(&principal, json);
    }
    // GetWebIdentityToken: not on the global endpoint, as STS says.
    if get("host").as_deref() == Some("sts.amazonaws.com") {
        return error(400, "InvalidAction", "GetWebIdentityToken is not available on the STS global endpoint", false);
    }
    let req = match web_identity::request(&param) {
        Ok(r) => r,
        Err(why) => return error(400, "ValidationError", why, false),
    };
    let account = principal.arn.split(':').nth(4).unwrap_or("");
    let placement = directory.placements.iter().find(|p| p.account == account);
    let subject = role_arn.as_deref().unwrap_or(&principal.arn);
    let Some(signer) = &directory.signer else {
        return error(500, "InternalFailure", "the emulator has no keys", false);
    };
    match web_identity::answer(signer, &directory.base, account, subject, parsed.region, placement, &req, now) {
        Some(body) => (200, "text/xml", body),
        None => error(500, "InternalFailure", "signing the token failed", false),
    }
}

fn signature_mismatch(json: bool) -> (u16, &'static str, String) {
    error(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided.",
        json,
    )
}

fn caller_identity(principal: &EmulatedPrincipal, json: bool) -> (u16, &'static str, String) {
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

/// A presigned `GET /?Action=GetCallerIdentity&…`: the query signature checked as STS checks it
/// (every parameter but the signature in the canonical query, the hash of the empty body), then
/// expiry.
fn presigned(
    path: &str,
    get: &dyn Fn(&str) -> Option<String>,
    directory: &Directory,
    now: SystemTime,
) -> (u16, &'static str, String) {
    let Some(query) = path.strip_prefix("/?") else {
        return error(400, "InvalidAction", "Only presigned GetCallerIdentity is emulated for GET", false);
    };
    let params = decode_query(query);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if param("Action") != Some("GetCallerIdentity") || param("Version") != Some("2011-06-15") {
        return error(400, "InvalidAction", "Only presigned GetCallerIdentity is emulated for GET", false);
    }
    let (Some(credential), Some(amz_date), Some(signed_headers), Some(given), Some(expires)) = (
        param("X-Amz-Credential"),
        param("X-Amz-Date"),
        param("X-Amz-SignedHeaders"),
        param("X-Amz-Signature"),
        param("X-Amz-Expires").and_then(|e| e.parse::<u64>().ok()),
    ) else {
        return error(403, "MissingAuthenticationToken", "Request is missing Authentication Token", false);
    };
    let Ok(scope) = crate::core::sigv4::parse_credential(credential) else {
        return error(400, "IncompleteSignature", "X-Amz-Credential is malformed", false);
    };
    let Some((principal, _)) = directory.find(scope.access_key_id, now) else {
        return error(403, "InvalidClientTokenId", "The security token included in the request is invalid.", false);
    };
    if principal.session_token.is_some() && param("X-Amz-Security-Token") != principal.session_token.as_deref() {
        return error(403, "InvalidClientTokenId", "The security token included in the request is invalid.", false);
    }
    let signed = Signed {
        method: "GET",
        canonical_query: canonical_query(&params),
        headers: signed_headers.split(';').map(|n| (n.to_owned(), get(n).unwrap_or_default())).collect(),
        signed_headers: signed_headers.to_owned(),
        // Outside S3, a presigned request signs the hash of its (empty) body, as botocore and
        // STS compute it, not UNSIGNED-PAYLOAD.
        payload_hash: payload_hash(b""),
        amz_date,
        date: scope.date,
        region: scope.region,
    };
    if signature(&principal.secret_access_key, &signed) != given {
        return signature_mismatch(false);
    }
    let signed_at = crate::core::sigv4::parse_amz_date(amz_date).ok();
    if signed_at.is_none_or(|t| sigv4::expired(t, expires, now)) {
        return error(403, "ExpiredToken", "The presigned request has expired", false);
    }
    caller_identity(&principal, false)
}

/// `GET /issuers/ACCOUNT/.well-known/openid-configuration` or `…/jwks.json`.
fn issuer_document(path: &str, directory: &Directory) -> (u16, &'static str, String) {
    let not_found = || (404, "application/json", r#"{"error":"not found"}"#.to_owned());
    let Some(rest) = path.strip_prefix("/issuers/") else { return not_found() };
    let Some((account, doc)) = rest.split_once('/') else { return not_found() };
    if crate::core::arn::AccountId::parse(account).is_none() {
        return not_found();
    }
    let issuer = web_identity::issuer(&directory.base, account);
    match (doc, &directory.signer) {
        (".well-known/openid-configuration", _) => (200, "application/json", web_identity::discovery(&issuer)),
        (".well-known/jwks.json", Some(signer)) => (200, "application/json", signer.jwks()),
        _ => not_found(),
    }
}

impl Directory {
    /// The principal with this access key: a fixed one, or an unexpired role session (with its
    /// role's IAM ARN).
    fn find(&self, access_key_id: &str, now: SystemTime) -> Option<(EmulatedPrincipal, Option<String>)> {
        if let Some(p) = self.principals.iter().find(|p| p.access_key_id == access_key_id) {
            return Some((p.clone(), None));
        }
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .iter()
            .find(|(p, expires, _)| p.access_key_id == access_key_id && *expires > now)
            .map(|(p, _, role)| (p.clone(), Some(role.clone())))
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
    sessions.retain(|(_, e, _)| *e > now);
    if sessions.len() >= MAX_EMULATED_SESSIONS {
        sessions.pop_front();
    }
    sessions.push_back((principal, expires, role.role_arn.clone()));
    (200, "text/xml", body)
}
