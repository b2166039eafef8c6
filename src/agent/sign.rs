//! What an agent signs: `sts:GetCallerIdentity` with the challenge in a signed header, signed
//! with aws-sigv4 and written as the raw HTTP/1.1 bytes Go's `http.Request.Write` writes (what
//! Teleport agents send).

use std::time::SystemTime;

use crate::core::challenge::DEFAULT_CHALLENGE_HEADER;
use crate::core::endpoint::Endpoint;
use crate::core::error::Error;
use crate::core::proof::forwarded::GET_CALLER_IDENTITY_BODY;
use crate::io::credentials::{Credentials, presign_query, sign_headers};

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

    /// The STS endpoint this request will be signed for ([`sts_endpoint`]).
    pub fn endpoint(&self) -> Result<&'static Endpoint, Error> {
        sts_endpoint(self.region.as_deref(), self.fips)
    }
}

/// The STS endpoint an agent signs for, as Teleport's agent and the AWS SDKs pick it: the
/// region's own endpoint (regional, as EKS pods use by default), its `sts-fips` host with `fips`,
/// and the global `sts.amazonaws.com` only when no region is known. Every endpoint it returns is
/// one of AWS's STS hosts, which the verifier's default policy accepts (FIPS hosts exist in the
/// US regions and GovCloud; elsewhere `fips` is an error, as is `fips` without a region).
///
/// ```
/// use iam_join::agent::sts_endpoint;
/// assert_eq!(sts_endpoint(Some("eu-west-1"), false).unwrap().host(), "sts.eu-west-1.amazonaws.com");
/// assert_eq!(sts_endpoint(Some("us-east-2"), true).unwrap().host(), "sts-fips.us-east-2.amazonaws.com");
/// assert_eq!(sts_endpoint(None, false).unwrap().host(), "sts.amazonaws.com");
/// ```
pub fn sts_endpoint(region: Option<&str>, fips: bool) -> Result<&'static Endpoint, Error> {
    let found = match region {
        None if !fips => Endpoint::lookup("sts.amazonaws.com"),
        None => None,
        Some(r) => Endpoint::all()
            .iter()
            .find(|e| e.signing_region() == r && e.is_fips() == fips && !e.is_dual_stack() && !e.is_global()),
    };
    // A region with no such endpoint is the agent's setup, not a join outcome.
    found.ok_or_else(|| {
        Error::config_invalid(format!(
            "no {}STS endpoint for {}",
            if fips { "FIPS " } else { "" },
            region.unwrap_or("the global endpoint (FIPS needs a region)")
        ))
    })
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
        .map_err(|e| Error::config_invalid(format!("signing failed: {}", e.detail())))?;

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

/// How long a presigned join URL stays valid by default: 60 s, as `aws eks get-token` signs it.
pub const DEFAULT_PRESIGN_EXPIRES: std::time::Duration = std::time::Duration::from_secs(60);

/// Presigns the join as a URL: `GET https://<endpoint>/?Action=GetCallerIdentity&Version=2011-06-15`
/// and the SigV4 query, with the challenge in the signed header `x-k8s-aws-id` (as
/// `aws eks get-token --cluster-name <challenge>` signs it), valid for `expires` (1 to 900 s).
/// The challenge is not in the URL: the verifier replays it with the challenge it issued.
///
/// ```
/// use iam_join::agent::{Credentials, JoinRequest, eks_token, presign_join_url};
/// let creds = Credentials::new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None);
/// let url = presign_join_url(&creds, &JoinRequest::new("challenge").region("eu-west-1"),
///     iam_join::agent::DEFAULT_PRESIGN_EXPIRES, std::time::SystemTime::now()).unwrap();
/// assert!(url.starts_with("https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"));
/// assert!(url.contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id") && !url.contains("challenge"));
/// assert!(eks_token(&url).starts_with("k8s-aws-v1."));
/// ```
pub fn presign_join_url(
    creds: &Credentials,
    join: &JoinRequest,
    expires: std::time::Duration,
    time: SystemTime,
) -> Result<String, Error> {
    if !(1..=crate::core::proof::presigned::MAX_PRESIGNED_EXPIRES).contains(&expires.as_secs()) {
        return Err(Error::config_invalid("a presigned join URL expires after 1 to 900 seconds"));
    }
    let endpoint = join.endpoint()?;
    let host = endpoint.host();
    let base = "Action=GetCallerIdentity&Version=2011-06-15";
    let header = crate::core::proof::presigned::EKS_CHALLENGE_HEADER;
    let signed = [("host", host), (header, join.challenge.as_str())];
    let params = presign_query(creds, "sts", endpoint.signing_region(), host, base, &signed, expires, time)?;
    let mut url = format!("https://{host}/?{base}");
    for (name, value) in params {
        url.push('&');
        url.push_str(&crate::core::text::percent_encode(&name, b""));
        url.push('=');
        url.push_str(&crate::core::text::percent_encode(&value, b""));
    }
    Ok(url)
}

/// The EKS token of a presigned URL: `k8s-aws-v1.` and the URL in unpadded base64url.
pub fn eks_token(url: &str) -> String {
    use base64::Engine as _;
    format!(
        "{}{}",
        crate::core::proof::presigned::EKS_TOKEN_PREFIX,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::ErrorKind;

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

    /// The region and endpoint choice: a region gives its regional host, FIPS its `sts-fips`
    /// host, no region the global host; and the verifier's default policy accepts every one.
    #[test]
    fn region_and_endpoint_choice_passes_the_default_policy() {
        let policy = crate::core::endpoint::EndpointPolicy::new();
        let cases: &[(Option<&str>, bool, Result<&str, ()>)] = &[
            (Some("us-west-2"), false, Ok("sts.us-west-2.amazonaws.com")),
            (Some("eu-central-1"), false, Ok("sts.eu-central-1.amazonaws.com")),
            (Some("us-east-1"), false, Ok("sts.us-east-1.amazonaws.com")),
            (Some("us-west-2"), true, Ok("sts-fips.us-west-2.amazonaws.com")),
            (Some("us-east-1"), true, Ok("sts-fips.us-east-1.amazonaws.com")),
            (Some("ca-central-1"), true, Err(())),
            (None, false, Ok("sts.amazonaws.com")),
            (None, true, Err(())),
            (Some("eu-west-1"), true, Err(())),
            (Some("mars-north-1"), false, Err(())),
        ];
        for (region, fips, want) in cases {
            let got = sts_endpoint(*region, *fips);
            match want {
                Ok(host) => {
                    let e = got.unwrap_or_else(|e| panic!("{region:?} fips={fips}: {e}"));
                    assert_eq!(e.host(), *host);
                    assert_eq!(e.is_fips(), *fips);
                    assert_eq!(e.signing_region(), region.unwrap_or("us-east-1"));
                    policy.check(e.host()).unwrap_or_else(|e| panic!("{host} refused by the default policy: {e}"));
                }
                Err(()) => assert_eq!(got.unwrap_err().kind(), ErrorKind::ConfigInvalid, "{region:?} fips={fips}"),
            }
        }
        // Every regional endpoint the chain can pick in the aws partition passes the default policy.
        for e in
            Endpoint::all().iter().filter(|e| e.partition() == crate::core::arn::Partition::Aws && !e.is_dual_stack())
        {
            let chosen =
                sts_endpoint(if e.is_global() { None } else { Some(e.signing_region()) }, e.is_fips()).unwrap();
            policy.check(chosen.host()).unwrap();
        }
    }
}
