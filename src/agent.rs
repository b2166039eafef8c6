//! The joining side (feature `agent`): sign `sts:GetCallerIdentity` with the challenge in a signed
//! header, using `aws-sigv4`, and write the raw HTTP/1.1 bytes the way Go's `http.Request.Write`
//! does (what Teleport agents send).

use std::time::SystemTime;

use crate::challenge::DEFAULT_CHALLENGE_HEADER;
pub use crate::credentials::Credentials;
use crate::credentials::sign_headers;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::request::GET_CALLER_IDENTITY_BODY;

/// What to sign.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    region: Option<String>,
    fips: bool,
    challenge: String,
    challenge_header: String,
    accept_json: bool,
    user_agent: String,
}

impl JoinRequest {
    /// A request carrying `challenge` in `x-teleport-challenge`, to the global endpoint.
    pub fn new(challenge: impl Into<String>) -> Self {
        Self {
            region: None,
            fips: false,
            challenge: challenge.into(),
            challenge_header: DEFAULT_CHALLENGE_HEADER.to_owned(),
            accept_json: false,
            user_agent: "Go-http-client/1.1".to_owned(),
        }
    }

    /// Sign for this region's endpoint instead of the global one.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Use the region's FIPS endpoint.
    pub fn fips(mut self, fips: bool) -> Self {
        self.fips = fips;
        self
    }

    /// Carry the challenge in this header.
    pub fn challenge_header(mut self, name: impl Into<String>) -> Self {
        self.challenge_header = name.into();
        self
    }

    /// Sign `Accept: application/json`, as Teleport agents do (STS then answers JSON).
    pub fn accept_json(mut self, yes: bool) -> Self {
        self.accept_json = yes;
        self
    }

    /// The STS endpoint this request will be signed for.
    pub fn endpoint(&self) -> Result<&'static Endpoint, Error> {
        let found = match &self.region {
            None if !self.fips => Endpoint::lookup("sts.amazonaws.com"),
            None => None,
            Some(r) => Endpoint::all()
                .iter()
                .find(|e| e.signing_region() == r && e.is_fips() == self.fips && !e.is_dual_stack() && !e.is_global()),
        };
        found.ok_or_else(|| {
            Error::new(
                ErrorKind::UntrustedEndpoint,
                format!(
                    "no {}STS endpoint for {}",
                    if self.fips { "FIPS " } else { "" },
                    self.region.as_deref().unwrap_or("the global endpoint")
                ),
            )
        })
    }
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: `x-teleport-challenge` → `X-Teleport-Challenge`.
fn canonical(name: &str) -> String {
    let mut up = true;
    name.chars()
        .map(|c| {
            let out = if up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            up = c == '-';
            out
        })
        .collect()
}

/// Signs the join request at `time` and returns the raw HTTP/1.1 bytes, laid out as Go's
/// `Request.Write` writes them: `Host`, `User-Agent`, `Content-Length`, then the other headers
/// sorted by canonical name.
///
/// ```
/// use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
/// let creds = Credentials::new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None);
/// let raw = sign_join_request(&creds, &JoinRequest::new("challenge").region("eu-west-1"), std::time::SystemTime::now()).unwrap();
/// assert!(raw.starts_with(b"POST / HTTP/1.1\r\nHost: sts.eu-west-1.amazonaws.com\r\n"));
/// ```
pub fn sign_join_request(creds: &Credentials, join: &JoinRequest, time: SystemTime) -> Result<Vec<u8>, Error> {
    let endpoint = join.endpoint()?;
    let host = endpoint.host();
    let content_length = GET_CALLER_IDENTITY_BODY.len().to_string();
    let challenge_header = join.challenge_header.to_ascii_lowercase();
    let mut to_sign: Vec<(&str, &str)> = vec![
        ("host", host),
        ("content-length", &content_length),
        ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
        (challenge_header.as_str(), join.challenge.as_str()),
    ];
    if join.accept_json {
        to_sign.push(("accept", "application/json"));
    }
    let added = sign_headers(creds, "sts", endpoint.signing_region(), host, &to_sign, GET_CALLER_IDENTITY_BODY, time)
        .map_err(|e| Error::new(ErrorKind::MalformedRequest, format!("signing failed: {}", e.detail())))?;

    let mut rest: Vec<(String, String)> = to_sign
        .iter()
        .filter(|(n, _)| !matches!(*n, "host" | "content-length"))
        .map(|(n, v)| (canonical(n), (*v).to_owned()))
        .chain(added.into_iter().map(|(n, v)| (canonical(&n), v)))
        .collect();
    rest.sort();
    let mut out = Vec::with_capacity(2048);
    out.extend_from_slice(
        format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {}\r\nContent-Length: {content_length}\r\n",
            join.user_agent
        )
        .as_bytes(),
    );
    for (n, v) in rest {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(GET_CALLER_IDENTITY_BODY);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_header_names() {
        assert_eq!(canonical("x-teleport-challenge"), "X-Teleport-Challenge");
        assert_eq!(canonical("x-amz-security-token"), "X-Amz-Security-Token");
        assert_eq!(canonical("accept"), "Accept");
    }

    #[test]
    fn endpoints() {
        assert_eq!(JoinRequest::new("c").endpoint().unwrap().host(), "sts.amazonaws.com");
        assert_eq!(
            JoinRequest::new("c").region("us-west-2").fips(true).endpoint().unwrap().host(),
            "sts-fips.us-west-2.amazonaws.com"
        );
        assert_eq!(
            JoinRequest::new("c").region("cn-north-1").endpoint().unwrap().host(),
            "sts.cn-north-1.amazonaws.com.cn"
        );
        assert!(JoinRequest::new("c").region("eu-west-1").fips(true).endpoint().is_err());
    }
}
