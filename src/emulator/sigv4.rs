//! The emulator's own SigV4 check (independent of `aws-sigv4`), for both places a signature
//! travels: the `Authorization` header of a POST, and the query of a presigned GET.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub(crate) fn hex(bytes: &[u8]) -> String {
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

/// What was signed, and how.
pub(super) struct Signed<'a> {
    pub(super) method: &'a str,
    /// The canonical query string (empty for a POST).
    pub(super) canonical_query: String,
    /// `name:value` lines of the signed headers, in the order of `signed_headers`.
    pub(super) headers: Vec<(String, String)>,
    pub(super) signed_headers: String,
    pub(super) payload_hash: String,
    pub(super) amz_date: &'a str,
    /// `DATE/REGION/SERVICE/aws4_request` parts.
    pub(super) date: &'a str,
    pub(super) region: &'a str,
}

/// The signature `secret` gives this request.
pub(super) fn signature(secret: &str, s: &Signed<'_>) -> String {
    let mut canonical = format!("{}\n/\n{}\n", s.method, s.canonical_query);
    for (name, value) in &s.headers {
        let collapsed = value.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(canonical, "{name}:{collapsed}");
    }
    let _ = write!(canonical, "\n{}\n{}", s.signed_headers, s.payload_hash);
    let scope = format!("{}/{}/sts/aws4_request", s.date, s.region);
    let to_sign = format!("AWS4-HMAC-SHA256\n{}\n{scope}\n{}", s.amz_date, hex(&Sha256::digest(canonical.as_bytes())));
    let key = [s.date, s.region, "sts", "aws4_request"]
        .iter()
        .fold(format!("AWS4{secret}").into_bytes(), |k, part| hmac(&k, part.as_bytes()));
    hex(&hmac(&key, to_sign.as_bytes()))
}

/// The SHA-256 of a body, hex.
pub(super) fn payload_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// A presigned query, decoded: (key, value) pairs as received, percent-decoded.
pub(super) fn decode_query(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// The canonical query of a presigned request: every parameter but the signature, encoded and
/// sorted.
pub(super) fn canonical_query(params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "X-Amz-Signature")
        .map(|(k, v)| (crate::core::text::percent_encode(k, b""), crate::core::text::percent_encode(v, b"")))
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// Whether a presigned request signed at `amz_date` for `expires` seconds has expired at `now`.
pub(super) fn expired(signed_at: SystemTime, expires: u64, now: SystemTime) -> bool {
    now > signed_at + Duration::from_secs(expires)
}
