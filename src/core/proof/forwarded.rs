//! The forwarded request (Teleport's proof): untrusted HTTP/1.1 bytes → a validated request and
//! the [`Replay`] rebuilt from its signed parts.
//!
//! The auth server cannot check a SigV4 signature (only STS holds the secret), so it must make
//! sure that everything it forwards was signed and that nothing the agent controls steers where
//! the request goes or what it asks. Every published bypass of this design came from forwarding
//! something unchecked; here the output is rebuilt from validated parts only.

use std::fmt;
use std::time::SystemTime;

use crate::core::challenge;
use crate::core::endpoint::Endpoint;
use crate::core::error::Error;
use crate::core::proof::policy::{RequestPolicy, is_forbidden_signed};
use crate::core::proof::replay::{Method, Replay};
use crate::core::sigv4;

/// The largest request head (request line and headers) accepted. A signed GetCallerIdentity with
/// a long session token is about 2 KiB; 16 KiB leaves room for large tokens and stops abuse.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header lines accepted. Signers send about ten.
pub const MAX_HEADERS: usize = 64;
/// The one body a GetCallerIdentity request may carry, byte for byte.
pub const GET_CALLER_IDENTITY_BODY: &[u8] = b"Action=GetCallerIdentity&Version=2011-06-15";
/// The hex SHA-256 of [`GET_CALLER_IDENTITY_BODY`]: the only `x-amz-content-sha256` a request
/// may carry. Any other value (`STREAMING-…`, `UNSIGNED-PAYLOAD`) declares a payload that is not
/// the fixed body. A test recomputes it.
const BODY_SHA256_HEX: &str = "ab821ae955788b0e33ebd34c208442ccfc2d406e2edc5e7a39bd6458fbb4f843";
/// A forwarded `sts:GetCallerIdentity` request that passed every local check, rebuilt from
/// validated parts: `POST https://<endpoint>/`, the fixed body, exactly the signed headers with
/// the values received, plus `Authorization` and `X-Amz-Security-Token`. Nothing unsigned is kept.
///
/// What is checked: the request line, framing and sizes; the body; header names and values;
/// the SigV4 `Authorization` shape and scope; that `host`, `x-amz-date`, `content-type` and the
/// challenge header are signed and present once; the endpoint policy; the challenge; freshness.
/// What is not: the signature itself, which only STS can verify.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardedRequest {
    /// `POST https://<endpoint>/` with the signed headers, as it will be sent.
    replay: Replay,
    access_key_id: String,
    signed_at: SystemTime,
    accept_json: bool,
    /// The index in the replay's headers of the signed challenge header.
    challenge_at: usize,
}

/// Every CR is followed by LF and every LF preceded by CR.
fn crlf_only(head: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', head).all(|i| match head[i] {
        b'\r' => head.get(i + 1) == Some(&b'\n'),
        _ => i > 0 && head[i - 1] == b'\r',
    })
}

/// The request's headers, names lowercased once into one buffer so that the many lookups by
/// (lowercase) name are plain comparisons.
struct Headers<'h> {
    names: String,
    /// (end of the name in `names`, value).
    entries: Vec<(usize, &'h str)>,
    /// Whether any header is `x-amz-content-sha256` (rare: only then is it looked up).
    payload_hash: bool,
}

impl<'h> Headers<'h> {
    fn with_capacity(n: usize) -> Self {
        Self { names: String::with_capacity(n * 24), entries: Vec::with_capacity(n), payload_hash: false }
    }

    fn push(&mut self, name: &str, value: &'h str) {
        let start = self.names.len();
        self.names.push_str(name);
        self.names[start..].make_ascii_lowercase();
        self.payload_hash |= &self.names[start..] == "x-amz-content-sha256";
        self.entries.push((self.names.len(), value));
    }

    /// The values of every header named `name` (lowercase).
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'h str> + 'a {
        let mut start = 0;
        self.entries.iter().filter_map(move |&(end, value)| {
            let n = &self.names[start..end];
            start = end;
            (n == name).then_some(value)
        })
    }

    /// The value of the one header named `name`; an error naming it as `shown` if it is absent
    /// or repeated.
    fn one(&self, name: &str, shown: &str) -> Result<&'h str, Error> {
        let mut it = self.values(name);
        match (it.next(), it.next()) {
            (Some(v), None) => Ok(v),
            (None, _) => Err(Error::malformed_request(format!("request has no {shown} header"))),
            (Some(_), Some(_)) => Err(Error::malformed_request(format!("request has more than one {shown} header"))),
        }
    }
}

fn is_visible_ascii(v: &[u8]) -> bool {
    // No short circuit, so the loop vectorizes: values are short and almost always valid.
    v.iter().fold(true, |ok, &b| ok & (b.wrapping_sub(0x20) < 0x5f))
}

fn is_form_content_type(v: &str) -> bool {
    let v = v.to_ascii_lowercase();
    v == "application/x-www-form-urlencoded" || v == "application/x-www-form-urlencoded; charset=utf-8"
}

impl ForwardedRequest {
    /// Parses and validates the raw bytes the agent sent, against the challenge the server issued.
    ///
    /// `now` is the time freshness is judged against; the library never reads the clock itself.
    /// Every refusal is one of `malformed_request`, `untrusted_endpoint`, `challenge_mismatch`,
    /// `request_expired`.
    pub fn parse(raw: &[u8], challenge: &str, policy: &RequestPolicy, now: SystemTime) -> Result<Self, Error> {
        Self::parse_checked(raw, Some(challenge), policy, now)
    }

    /// Every check of [`ForwardedRequest::parse`] but the comparison with an issued challenge, and the
    /// challenge value the agent signed: for servers whose envelope does not carry the
    /// challenge, to look it up (and check its MAC or expiry) before verifying. The value is the
    /// agent's claim until [`ForwardedRequest::parse`] (or `Verifier::prepare`) compares it with what
    /// was issued; never skip that step.
    ///
    /// ```
    /// let raw = b"GET / HTTP/1.1\r\n\r\n";
    /// let e = iam_join::ForwardedRequest::peek_challenge(raw, &iam_join::RequestPolicy::new(), std::time::SystemTime::now());
    /// assert_eq!(e.unwrap_err().kind(), iam_join::ErrorKind::MalformedRequest);
    /// ```
    pub fn peek_challenge(raw: &[u8], policy: &RequestPolicy, now: SystemTime) -> Result<String, Error> {
        Self::parse_checked(raw, None, policy, now).map(|r| r.signed_challenge().to_owned())
    }

    /// Every check of [`ForwardedRequest::parse`] but the comparison with an issued challenge: for the
    /// verifier, which then checks [`ForwardedRequest::signed_challenge`] against its key ring.
    pub(crate) fn parse_unchecked(raw: &[u8], policy: &RequestPolicy, now: SystemTime) -> Result<Self, Error> {
        Self::parse_checked(raw, None, policy, now)
    }

    fn parse_checked(
        raw: &[u8],
        challenge: Option<&str>,
        policy: &RequestPolicy,
        now: SystemTime,
    ) -> Result<Self, Error> {
        // httparse finds the end of the head itself; it only ever sees the first 16 KiB.
        let window = &raw[..raw.len().min(MAX_HEAD_BYTES)];
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let head_len = match req.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if raw.len() >= MAX_HEAD_BYTES => {
                return Err(Error::malformed_request(format!("request head is larger than {MAX_HEAD_BYTES} bytes")));
            }
            Ok(httparse::Status::Partial) => {
                return Err(Error::malformed_request("request head does not end with an empty CRLF line"));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::malformed_request(format!("request has more than {MAX_HEADERS} headers")));
            }
            Err(e) => return Err(Error::malformed_request(format!("request head is not valid HTTP/1.1: {e}"))),
        };
        let head = &raw[..head_len];
        // CRLF only: a bare CR or LF is how requests get split differently by different parsers
        // (httparse itself tolerates bare LF line endings).
        if !crlf_only(head) || !head.ends_with(b"\r\n\r\n") {
            return Err(Error::malformed_request("request head has a bare CR or LF; lines must end in CRLF"));
        }
        if req.method != Some("POST") {
            return Err(Error::malformed_request("request method is not POST"));
        }
        if req.path != Some("/") {
            return Err(Error::malformed_request("request target is not exactly \"/\""));
        }
        if req.version != Some(1) {
            return Err(Error::malformed_request("request is not HTTP/1.1"));
        }

        // Names as received (looked up case-insensitively), values as received (httparse has
        // trimmed surrounding whitespace).
        let mut headers = Headers::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            if !is_visible_ascii(h.value) {
                return Err(Error::malformed_request(format!(
                    "header {} has a control or non-ASCII character",
                    h.name
                )));
            }
        }
        // Every value is visible ASCII now, and the rest of the head was checked by httparse, so
        // one UTF-8 check of the whole head lets values be sliced from it as text.
        let text = std::str::from_utf8(head).map_err(|_| Error::malformed_request("request head is not ASCII"))?;
        for h in req.headers.iter() {
            let start = h.value.as_ptr() as usize - head.as_ptr() as usize;
            let value = text
                .get(start..start + h.value.len())
                .ok_or_else(|| Error::malformed_request("header value is not ASCII"))?;
            headers.push(h.name, value);
        }
        let count = |name: &str| headers.values(name).count();
        let one = |name: &str, shown: &str| headers.one(name, shown);

        if count("transfer-encoding") > 0 {
            return Err(Error::malformed_request(
                "request has Transfer-Encoding; only a Content-Length body is accepted",
            ));
        }
        let content_length = one("content-length", "Content-Length")?;
        if content_length != GET_CALLER_IDENTITY_BODY.len().to_string() {
            return Err(Error::malformed_request("Content-Length is not the length of the GetCallerIdentity body"));
        }
        let body = &raw[head_len..];
        if body != GET_CALLER_IDENTITY_BODY {
            return Err(Error::malformed_request(format!(
                "body is not exactly {:?} (or has trailing bytes)",
                String::from_utf8_lossy(GET_CALLER_IDENTITY_BODY)
            )));
        }
        let host = one("host", "Host")?;
        let authorization = one("authorization", "Authorization")?;
        let amz_date = one("x-amz-date", "X-Amz-Date")?;
        let security_token = headers.values("x-amz-security-token").next();
        if count("x-amz-security-token") > 1 {
            return Err(Error::malformed_request("request has more than one X-Amz-Security-Token header"));
        }

        let auth = sigv4::parse_authorization(authorization)?;
        for required in ["host", "x-amz-date", "content-type"] {
            if !auth.signed_headers.contains(&required) {
                return Err(Error::malformed_request(format!("{required} is not among the signed headers")));
            }
        }
        let challenge_name = policy.challenge_header.as_str();
        let mut signed_values = Vec::with_capacity(auth.signed_headers.len());
        for &name in &auth.signed_headers {
            if is_forbidden_signed(name) {
                return Err(Error::malformed_request(format!(
                    "{name} must not be signed: it is a hop-by-hop or proxy header"
                )));
            }
            if name == "authorization" {
                // It carries the signature, so no signer can have signed it; listing it would
                // also make the rebuilt request carry it twice.
                return Err(Error::malformed_request("authorization cannot be among the signed headers"));
            }
            // Present exactly once (the challenge is checked below, with its own error kind).
            signed_values.push(if name == challenge_name { "" } else { one(name, name)? });
        }
        let content_type = one("content-type", "Content-Type")?;
        if !is_form_content_type(content_type) {
            return Err(Error::malformed_request("Content-Type is not application/x-www-form-urlencoded"));
        }
        // The payload is the fixed body, sent whole: no streaming or chunked signing, no encoding.
        if headers.payload_hash && one("x-amz-content-sha256", "X-Amz-Content-Sha256")? != BODY_SHA256_HEX {
            return Err(Error::malformed_request(
                "X-Amz-Content-Sha256 is not the SHA-256 of the GetCallerIdentity body (streaming, chunked or unsigned payloads are refused)",
            ));
        }
        if auth.signed_headers.contains(&"content-encoding") {
            return Err(Error::malformed_request("Content-Encoding is signed; the body must be sent as is"));
        }

        // Freshness and scope: the date signed into the scope must be the date of X-Amz-Date.
        let signed_at = sigv4::parse_amz_date(amz_date)?;
        if !amz_date.starts_with(auth.date) {
            return Err(Error::malformed_request("the Credential scope date is not the date of X-Amz-Date"));
        }
        policy.check_fresh("X-Amz-Date", signed_at, now)?;

        let endpoint = policy.endpoints.check(host)?;
        if auth.region != endpoint.signing_region() {
            return Err(Error::malformed_request(format!(
                "request is signed for region {} but {} signs as {}",
                auth.region,
                endpoint.host(),
                endpoint.signing_region()
            )));
        }

        let received = match (count(challenge_name), headers.values(challenge_name).next()) {
            (1, Some(v)) => v,
            (0, _) => return Err(challenge::mismatch(format!("request has no {challenge_name} header"))),
            _ => return Err(challenge::mismatch(format!("request has more than one {challenge_name} header"))),
        };
        if !auth.signed_headers.contains(&challenge_name) {
            return Err(challenge::mismatch(format!("{challenge_name} is not among the signed headers")));
        }
        if let Some(challenge) = challenge
            && !challenge::matches(received, challenge)
        {
            return Err(challenge::mismatch(format!(
                "{challenge_name} does not hold the challenge this server issued"
            )));
        }
        let accept_json = headers.values("accept").next().is_some_and(|v| v.eq_ignore_ascii_case("application/json"))
            && auth.signed_headers.contains(&"accept");
        let endpoint_ref: &'static Endpoint = endpoint;
        let mut out = Replay::new(Method::Post, endpoint_ref, "/", GET_CALLER_IDENTITY_BODY)
            .with_capacity(head_len + 64, auth.signed_headers.len() + 2);
        let mut challenge_at = 0;
        for (i, (&name, &value)) in auth.signed_headers.iter().zip(&signed_values).enumerate() {
            let value = if name == challenge_name {
                challenge_at = i;
                received
            } else {
                value
            };
            out.push_header(name, value);
        }
        out.push_header("authorization", authorization);
        if let Some(token) = security_token
            && !auth.signed_headers.contains(&"x-amz-security-token")
        {
            out.push_header("x-amz-security-token", token);
        }
        Ok(Self { replay: out, access_key_id: auth.access_key_id.to_owned(), signed_at, accept_json, challenge_at })
    }

    /// The challenge value the agent signed (equal to the issued one when this request came from
    /// [`ForwardedRequest::parse`]).
    pub fn signed_challenge(&self) -> &str {
        self.replay.header_value(self.challenge_at)
    }

    /// What is sent to STS: `POST https://<endpoint>/` with exactly the signed headers
    /// (`host` and `content-length` included), then `authorization`, then
    /// `x-amz-security-token` when the agent sent one without signing it; the fixed body.
    pub fn replay(&self) -> &Replay {
        &self.replay
    }

    /// The validated STS endpoint the request is signed for.
    pub fn endpoint(&self) -> &'static Endpoint {
        self.replay.endpoint()
    }

    /// The access key id the request is signed with (identifies the credentials, is not secret).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The signing time from `X-Amz-Date`.
    pub fn signed_at(&self) -> SystemTime {
        self.signed_at
    }

    /// Whether the agent signed `Accept: application/json` (Teleport agents do; STS then answers
    /// JSON instead of XML).
    pub fn accepts_json(&self) -> bool {
        self.accept_json
    }
}

/// Redacted: the replay's endpoint and header names with value lengths, never values.
impl fmt::Debug for ForwardedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardedRequest")
            .field("replay", &self.replay)
            .field("accept_json", &self.accept_json)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_challenges_live_no_longer_than_the_freshness_window() {
        assert_eq!(challenge::MAX_CHALLENGE_TTL, crate::core::proof::policy::MAX_CLOCK_SKEW);
    }

    #[test]
    fn body_sha256_is_the_hash_of_the_body() {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(GET_CALLER_IDENTITY_BODY);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, BODY_SHA256_HEX);
    }
}
