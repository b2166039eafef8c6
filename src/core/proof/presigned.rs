//! The presigned `GetCallerIdentity` URL: the EKS authentication token (`k8s-aws-v1.` and the
//! URL in unpadded base64url) that `aws eks get-token`, aws-iam-authenticator and every AWS SDK
//! can make, checked into a `GET` [`Replay`].
//!
//! The challenge is not in the URL: it rides in a signed header whose value only the signer
//! knew, `x-k8s-aws-id` (so `aws eks get-token --cluster-name <challenge>` signs it) or the
//! configured challenge header. The verifier replays the URL with that header set to the
//! challenge it issued, as aws-iam-authenticator does with its cluster id; a URL signed for
//! another challenge is then refused by STS (`signature_rejected`).
//!
//! The query is read strictly (aws-iam-authenticator's CVE-2022-2385 came from a lenient one,
//! where `action=…&Action=…` meant two things to two parsers): only the nine parameters
//! `GetCallerIdentity` presigning produces, each exactly once and spelled exactly, a duplicate in
//! any letter case refused; keys are never percent-decoded. The replay sends the query as
//! received, so what STS checks is what was checked here.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;

use crate::core::challenge;
use crate::core::endpoint::Endpoint;
use crate::core::error::{Error, ErrorKind};
use crate::core::proof::policy::RequestPolicy;
use crate::core::proof::replay::{Method, Replay};
use crate::core::sigv4;
use crate::core::text::quoted_shown;

/// The longest presigned proof accepted, as received (the token or the URL). A presigned
/// `GetCallerIdentity` with a long session token is about 1.5 KiB.
pub const MAX_PRESIGNED_BYTES: usize = 4 * 1024;
/// What an EKS token starts with; the URL follows in unpadded base64url.
pub const EKS_TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// The header `aws eks get-token --cluster-name NAME` signs with the value `NAME`.
pub const EKS_CHALLENGE_HEADER: &str = "x-k8s-aws-id";
/// The longest `X-Amz-Expires` accepted, in seconds: STS's own limit for a presigned URL of this
/// kind is 15 minutes, and the freshness window is no wider.
pub const MAX_PRESIGNED_EXPIRES: u64 = 900;

/// The query parameters a presigned `GetCallerIdentity` holds, spelled as AWS signers spell them.
const KEYS: [&str; 9] = [
    "Action",
    "Version",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
];
const ACTION: usize = 0;
const VERSION: usize = 1;
const ALGORITHM: usize = 2;
const CREDENTIAL: usize = 3;
const DATE: usize = 4;
const EXPIRES: usize = 5;
const SIGNED_HEADERS: usize = 6;
const SECURITY_TOKEN: usize = 7;
const SIGNATURE: usize = 8;

/// A presigned `GetCallerIdentity` URL that passed every local check: `GET https://<endpoint>/?`
/// and the query as received, with `host` and the challenge header set by the server.
///
/// What is checked: the size, the token prefix and base64url; `https`, no user, port or fragment;
/// an STS endpoint the policy trusts; the path `/`; the query's keys (each of the nine at most
/// once, exactly spelled, no other), `Action`, `Version`, the algorithm, the credential scope
/// (service `sts`, the date of `X-Amz-Date`, the endpoint's signing region), `X-Amz-Expires` (1
/// to 900) and freshness, the signed headers (`host` and one challenge header, nothing else),
/// the signature's shape. What is not: the signature itself, which only STS can verify.
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedUrl {
    replay: Replay,
    access_key_id: String,
    signed_at: SystemTime,
    expires_at: SystemTime,
    /// The index in the replay's headers of the challenge header.
    challenge_at: usize,
}

/// RFC 3986 unreserved characters, and `%` for the escapes checked separately.
fn is_query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%')
}

/// Decodes a query value: only unreserved characters and `%XX` escapes (of any byte) are
/// accepted; the result must be visible ASCII.
fn decode_value(raw: &str, key: &str) -> Result<String, Error> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
                else {
                    return Err(Error::malformed_request(format!("query parameter {key} has a bad percent escape")));
                };
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            c if is_query_byte(c) => {
                out.push(c);
                i += 1;
            }
            _ => {
                return Err(Error::malformed_request(format!(
                    "query parameter {key} has a character that must be escaped"
                )));
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) if s.bytes().all(|c| c.is_ascii_graphic()) => Ok(s),
        _ => {
            Err(Error::malformed_request(format!("query parameter {key} decodes to a control or non-ASCII character")))
        }
    }
}

/// Reads the proof as received into the URL: `k8s-aws-v1.` and unpadded base64url, or the URL.
fn url_text(raw: &[u8]) -> Result<String, Error> {
    if raw.len() > MAX_PRESIGNED_BYTES {
        return Err(Error::malformed_request(format!("presigned proof is longer than {MAX_PRESIGNED_BYTES} bytes")));
    }
    let text = std::str::from_utf8(raw)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| Error::malformed_request("presigned proof has a space, control or non-ASCII character"))?;
    if let Some(b64) = text.strip_prefix(EKS_TOKEN_PREFIX) {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).map_err(|_| {
            Error::malformed_request(format!("the text after {EKS_TOKEN_PREFIX} is not unpadded base64url"))
        })?;
        return String::from_utf8(bytes).ok().filter(|t| t.bytes().all(|b| b.is_ascii_graphic())).ok_or_else(|| {
            Error::malformed_request("the EKS token's URL has a space, control or non-ASCII character")
        });
    }
    if text.starts_with("k8s-aws-") {
        return Err(Error::malformed_request(format!("an EKS token must start with {EKS_TOKEN_PREFIX}")));
    }
    Ok(text.to_owned())
}

impl PresignedUrl {
    /// Parses and validates a presigned proof (an EKS token or the URL) against the challenge the
    /// server issued, which the replay puts in the signed challenge header. `now` is the time
    /// freshness is judged at. Every refusal is one of `malformed_request` (the shape of the URL
    /// or query), `untrusted_endpoint` (the host), `request_expired` (the date or expiry),
    /// `challenge_mismatch` (no signed challenge header).
    ///
    /// ```
    /// use iam_join::{ErrorKind, PresignedUrl, RequestPolicy};
    /// let url = b"https://sts.amazonaws.com/?Action=GetCallerIdentity&action=GetCallerIdentity";
    /// let e = PresignedUrl::parse(url, "c", &RequestPolicy::new(), std::time::SystemTime::now()).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::MalformedRequest);
    /// ```
    pub fn parse(raw: &[u8], challenge: &str, policy: &RequestPolicy, now: SystemTime) -> Result<Self, Error> {
        let url = url_text(raw)?;
        let rest =
            url.strip_prefix("https://").ok_or_else(|| Error::malformed_request("presigned URL is not https://"))?;
        let (authority, path_and_query) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(Error::malformed_request("presigned URL has user information"));
        }
        if authority.contains(':') {
            return Err(Error::malformed_request("presigned URL names a port"));
        }
        if path_and_query.contains('#') {
            return Err(Error::malformed_request("presigned URL has a fragment"));
        }
        let Some(query) = path_and_query.strip_prefix("/?") else {
            return Err(Error::malformed_request("presigned URL's path is not exactly \"/\" followed by its query"));
        };
        let endpoint = policy.endpoints.check(authority)?;

        // Each known key at most once, spelled exactly; nothing else.
        let mut raw_values: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
        for part in query.split('&') {
            let (key, value) =
                part.split_once('=').ok_or_else(|| Error::malformed_request("query has a parameter without '='"))?;
            let slot = match KEYS.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    return Err(match KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) {
                        Some(k) => Error::malformed_request(format!(
                            "query parameter {} is {k} in another letter case (CVE-2022-2385)",
                            quoted_shown(key)
                        )),
                        None => Error::malformed_request(format!(
                            "query parameter {} is not one a presigned GetCallerIdentity has",
                            quoted_shown(key)
                        )),
                    });
                }
            };
            if raw_values[slot].replace(value).is_some() {
                return Err(Error::malformed_request(format!("query parameter {} appears more than once", KEYS[slot])));
            }
        }
        let get = |i: usize| -> Result<String, Error> {
            let raw = raw_values[i].ok_or_else(|| Error::malformed_request(format!("query has no {}", KEYS[i])))?;
            decode_value(raw, KEYS[i])
        };
        if get(ACTION)? != "GetCallerIdentity" {
            return Err(Error::malformed_request("Action is not GetCallerIdentity"));
        }
        if get(VERSION)? != "2011-06-15" {
            return Err(Error::malformed_request("Version is not 2011-06-15"));
        }
        if get(ALGORITHM)? != sigv4::ALGORITHM {
            return Err(Error::malformed_request(format!("X-Amz-Algorithm is not {}", sigv4::ALGORITHM)));
        }
        if !sigv4::is_signature(&get(SIGNATURE)?) {
            return Err(Error::malformed_request("X-Amz-Signature is not 64 lowercase hex digits"));
        }
        let credential_text = get(CREDENTIAL)?;
        let credential = sigv4::parse_credential(&credential_text)?;
        let amz_date = get(DATE)?;
        let signed_at = sigv4::parse_amz_date(&amz_date)?;
        if !amz_date.starts_with(credential.date) {
            return Err(Error::malformed_request("the X-Amz-Credential scope date is not the date of X-Amz-Date"));
        }
        let expires = get(EXPIRES)?;
        let expires = expires
            .parse::<u64>()
            .ok()
            .filter(|e| (1..=MAX_PRESIGNED_EXPIRES).contains(e) && !expires.starts_with('0'))
            .ok_or_else(|| {
                Error::malformed_request(format!(
                    "X-Amz-Expires is not a whole number of seconds from 1 to {MAX_PRESIGNED_EXPIRES}"
                ))
            })?;
        if let Some(token) = raw_values[SECURITY_TOKEN] {
            let token = decode_value(token, KEYS[SECURITY_TOKEN])?;
            if token.is_empty() {
                return Err(Error::malformed_request("X-Amz-Security-Token is empty"));
            }
        }
        if credential.region != endpoint.signing_region() {
            return Err(Error::malformed_request(format!(
                "the URL is signed for region {} but {} signs as {}",
                quoted_shown(credential.region),
                endpoint.host(),
                endpoint.signing_region()
            )));
        }

        // The headers the server sets, and nothing else: `host` and one challenge header.
        let signed_text = get(SIGNED_HEADERS)?;
        let signed = sigv4::parse_signed_headers(&signed_text)?;
        let configured = policy.challenge_header.as_str();
        if !signed.contains(&"host") {
            return Err(Error::malformed_request("host is not among X-Amz-SignedHeaders"));
        }
        if let Some(other) = signed.iter().find(|&&n| n != "host" && n != EKS_CHALLENGE_HEADER && n != configured) {
            return Err(Error::malformed_request(format!(
                "X-Amz-SignedHeaders holds {}, which the server cannot reproduce",
                quoted_shown(other)
            )));
        }
        let challenge_header = match (signed.contains(&EKS_CHALLENGE_HEADER), signed.contains(&configured)) {
            (true, true) if configured != EKS_CHALLENGE_HEADER => {
                return Err(Error::malformed_request(format!(
                    "the URL signs both {EKS_CHALLENGE_HEADER} and {configured}; sign one"
                )));
            }
            (true, _) => EKS_CHALLENGE_HEADER,
            (false, true) => configured,
            (false, false) => {
                return Err(challenge::mismatch(format!(
                    "no challenge header ({EKS_CHALLENGE_HEADER} or {configured}) is among X-Amz-SignedHeaders"
                )));
            }
        };

        policy.check_fresh("X-Amz-Date", signed_at, now)?;
        let expires_at = signed_at + Duration::from_secs(expires);
        if now >= expires_at {
            let ago = now.duration_since(expires_at).unwrap_or_default().as_secs();
            return Err(Error::new(
                ErrorKind::RequestExpired,
                format!(
                    "the presigned URL expired {ago}s ago (X-Amz-Expires {expires}); the agent must presign a new one"
                ),
            )
            .with_client_fact(format!("the presigned URL expired {ago}s ago")));
        }

        let endpoint: &'static Endpoint = endpoint;
        let mut replay = Replay::new(Method::Get, endpoint, format!("/?{query}"), b"");
        // Canonical order (sorted names), as a signer lists them.
        let mut challenge_at = 0;
        for (i, name) in signed.iter().enumerate() {
            if *name == "host" {
                replay.push_header("host", endpoint.host());
            } else {
                challenge_at = i;
                replay.push_header(challenge_header, challenge);
            }
        }
        Ok(Self { replay, access_key_id: credential.access_key_id.to_owned(), signed_at, expires_at, challenge_at })
    }

    /// The challenge the replay carries (the issued one).
    pub fn signed_challenge(&self) -> &str {
        self.replay.header_value(self.challenge_at)
    }

    /// What is sent to STS: `GET https://<endpoint>/?<query as received>` with `host` and the
    /// challenge header.
    pub fn replay(&self) -> &Replay {
        &self.replay
    }

    /// The access key id the URL is signed with (identifies the credentials, is not secret).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The signing time from `X-Amz-Date`.
    pub fn signed_at(&self) -> SystemTime {
        self.signed_at
    }

    /// When STS stops accepting the URL (`X-Amz-Date` + `X-Amz-Expires`).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

/// Redacted: the replay (no query values) and the key id's length.
impl fmt::Debug for PresignedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresignedUrl").field("replay", &self.replay).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_strictly() {
        assert_eq!(decode_value("AKIA%2F2026%2Fus-east-1", "k").unwrap(), "AKIA/2026/us-east-1");
        assert_eq!(decode_value("host%3Bx-k8s-aws-id", "k").unwrap(), "host;x-k8s-aws-id", "positive control");
        for bad in ["a%2", "a%zz", "a b", "a+b", "a%0Ab", "a%00", "a/b", "%C3%A9"] {
            assert_eq!(decode_value(bad, "k").unwrap_err().kind(), ErrorKind::MalformedRequest, "{bad}");
        }
    }
}
