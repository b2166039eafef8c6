//! Forwarded requests: the Teleport (Go `req.Write`) and botocore vectors, and one table line per
//! rule, each a mutation of the Teleport vector with the refusal it must get.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iam_join::{EndpointPolicy, ErrorKind, FipsMode, ForwardedRequest, Partition, RequestPolicy};

use crate::common::vectors;

/// 2026-11-28T15:00:00Z, the vectors' X-Amz-Date.
pub(crate) fn signed_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_878_000)
}

pub(crate) fn teleport() -> String {
    std::fs::read_to_string(vectors("requests/teleport_go_request_write.http")).unwrap()
}

fn botocore() -> String {
    std::fs::read_to_string(vectors("requests/botocore_global.http")).unwrap()
}

pub(crate) fn challenge() -> String {
    std::fs::read_to_string(vectors("requests/CHALLENGE")).unwrap()
}

fn parse(raw: &str) -> Result<ForwardedRequest, iam_join::Error> {
    ForwardedRequest::parse(raw.as_bytes(), &challenge(), &RequestPolicy::new(), signed_at())
}

#[test]
fn teleport_vector_is_accepted_and_rebuilt() {
    let req = parse(&teleport()).unwrap();
    assert_eq!(req.replay().url(), "https://sts.us-east-1.amazonaws.com/");
    assert_eq!(req.endpoint().signing_region(), "us-east-1");
    assert_eq!(req.access_key_id(), "ASIAIOSFODNN7EXAMPLE");
    assert!(req.accepts_json());
    assert_eq!(req.signed_at(), signed_at());
    let names: Vec<&str> = req.replay().headers().map(|(n, _)| n).collect();
    // Exactly the signed headers, in SignedHeaders order, then Authorization. No User-Agent.
    assert_eq!(
        names,
        [
            "accept",
            "content-length",
            "content-type",
            "host",
            "x-amz-date",
            "x-amz-security-token",
            "x-teleport-challenge",
            "authorization"
        ]
    );
    let raw = teleport();
    for (n, v) in req.replay().headers() {
        assert!(raw.contains(v), "{n} value must be forwarded as received");
    }
    assert_eq!(req.replay().body(), b"Action=GetCallerIdentity&Version=2011-06-15");
}

#[test]
fn botocore_vector_is_accepted_without_json_and_without_unsigned_headers() {
    let req = parse(&botocore()).unwrap();
    assert_eq!(req.replay().url(), "https://sts.amazonaws.com/");
    assert!(req.endpoint().is_global());
    assert!(!req.accepts_json());
    let names: Vec<&str> = req.replay().headers().map(|(n, _)| n).collect();
    assert_eq!(names, ["content-type", "host", "x-amz-date", "x-teleport-challenge", "authorization"]);
}

#[test]
fn unsigned_security_token_is_still_forwarded() {
    let raw = teleport().replace(
        "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;",
        "accept;content-length;content-type;host;x-amz-date;",
    );
    let req = parse(&raw).unwrap();
    let last: Vec<&str> = req.replay().headers().map(|(n, _)| n).rev().take(2).collect();
    assert_eq!(last, ["x-amz-security-token", "authorization"]);
}

#[test]
fn rebuilt_request_reparses_to_itself() {
    for raw in [teleport(), botocore()] {
        let req = parse(&raw).unwrap();
        let again = ForwardedRequest::parse(&req.replay().to_http1(), &challenge(), &RequestPolicy::new(), signed_at())
            .unwrap();
        assert_eq!(again, req);
    }
}

#[test]
fn debug_prints_lengths_not_values() {
    let req = parse(&teleport()).unwrap();
    let dbg = format!("{req:?}");
    assert_eq!(
        dbg,
        "ForwardedRequest { replay: Replay { method: Post, endpoint: \"sts.us-east-1.amazonaws.com\", path: \"/\", \
         query: <0 bytes>, headers: {\"accept\": \"<16 bytes>\", \"content-length\": \"<2 bytes>\", \
         \"content-type\": \"<48 bytes>\", \"host\": \"<27 bytes>\", \"x-amz-date\": \"<16 bytes>\", \
         \"x-amz-security-token\": \"<657 bytes>\", \"x-teleport-challenge\": \"<43 bytes>\", \
         \"authorization\": \"<268 bytes>\"}, .. }, accept_json: true, .. }"
    );
}

/// One line per rule: a mutation of the Teleport vector, the kind it must get, and a phrase of
/// the message. The challenge, signature and session token must never appear in the message.
macro_rules! refuse {
    ($($name:ident: $mutate:expr => $kind:ident, $msg:expr;)*) => {$(
        #[test]
        fn $name() {
            let mutate: fn(String) -> String = $mutate;
            let raw = mutate(teleport());
            let err = parse(&raw).expect_err("must be refused");
            assert_eq!(err.kind(), ErrorKind::$kind, "{err}");
            let text = err.to_string();
            assert!(text.contains($msg), "{text:?} lacks {:?}", $msg);
            assert!(!text.contains("4f0a2b6d0c1e3f5a"), "signature leaked: {text}");
            assert!(!text.contains("IQoJb3JpZ2lu"), "session token leaked: {text}");
            assert!(!text.contains(&challenge()), "challenge leaked: {text}");
        }
    )*};
}

fn swap(s: String, from: &str, to: &str) -> String {
    assert!(s.contains(from), "vector lacks {from:?}");
    s.replacen(from, to, 1)
}

const SIGNED: &str = "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge";

refuse! {
    method_get: |s| swap(s, "POST / ", "GET / ") => MalformedRequest, "not POST";
    method_lowercase: |s| swap(s, "POST / ", "post / ") => MalformedRequest, "not POST";
    target_with_query: |s| swap(s, "POST / ", "POST /?Action=GetCallerIdentity ") => MalformedRequest, "target";
    target_absolute: |s| swap(s, "POST / ", "POST https://evil.example/ ") => MalformedRequest, "target";
    target_path: |s| swap(s, "POST / ", "POST /x ") => MalformedRequest, "target";
    http_1_0: |s| swap(s, "HTTP/1.1", "HTTP/1.0") => MalformedRequest, "HTTP/1.1";
    bare_lf_line: |s| swap(s, "User-Agent: Go-http-client/1.1\r\n", "User-Agent: Go-http-client/1.1\n") => MalformedRequest, "bare CR or LF";
    bare_cr_in_value: |s| swap(s, "Go-http-client/1.1", "Go-http\rclient/1.1") => MalformedRequest, "not valid HTTP/1.1";
    no_blank_line: |s| s.split("\r\n\r\n").next().unwrap().to_owned() => MalformedRequest, "empty CRLF line";
    oversized_head: |s| swap(s, "User-Agent: ", &format!("X-Pad: {}\r\nUser-Agent: ", "a".repeat(17_000))) => MalformedRequest, "larger than 16384";
    too_many_headers: |s| swap(s, "User-Agent: ", &format!("{}User-Agent: ", "X-Pad: 1\r\n".repeat(60))) => MalformedRequest, "more than 64 headers";
    transfer_encoding: |s| swap(s, "User-Agent: ", "Transfer-Encoding: chunked\r\nUser-Agent: ") => MalformedRequest, "Transfer-Encoding";
    transfer_encoding_identity: |s| swap(s, "User-Agent: ", "Transfer-Encoding: identity\r\nUser-Agent: ") => MalformedRequest, "Transfer-Encoding";
    two_content_lengths: |s| swap(s, "Content-Length: 43\r\n", "Content-Length: 43\r\nContent-Length: 43\r\n") => MalformedRequest, "more than one Content-Length";
    conflicting_content_lengths: |s| swap(s, "Content-Length: 43\r\n", "Content-Length: 43\r\nContent-Length: 10\r\n") => MalformedRequest, "more than one Content-Length";
    no_content_length: |s| swap(s, "Content-Length: 43\r\n", "") => MalformedRequest, "no Content-Length";
    content_length_padded: |s| swap(s, "Content-Length: 43", "Content-Length: 043") => MalformedRequest, "Content-Length";
    trailing_bytes: |s| s + "GET / HTTP/1.1\r\n\r\n" => MalformedRequest, "trailing bytes";
    short_body: |s| swap(s, "&Version=2011-06-15", "&Version=2011-06-1") => MalformedRequest, "body is not exactly";
    other_action: |s| swap(s, "Action=GetCallerIdentity", "Action=GetSessionToken_") => MalformedRequest, "body is not exactly";
    reordered_body: |s| swap(s, "Action=GetCallerIdentity&Version=2011-06-15", "Version=2011-06-15&Action=GetCallerIdentity") => MalformedRequest, "body is not exactly";
    duplicate_param_case: |s| swap(s, "Action=GetCallerIdentity&Version=2011-06-15", "action=GetCallerIdentity&Version=2011-06-15") => MalformedRequest, "body is not exactly";
    control_char_in_value: |s| swap(s, "Go-http-client/1.1", "Go-http-client/1.1\x01") => MalformedRequest, "not valid HTTP/1.1";
    tab_in_value: |s| swap(s, "Go-http-client/1.1", "Go-http\tclient/1.1") => MalformedRequest, "control or non-ASCII";
    non_ascii_in_value: |s| swap(s, "Go-http-client/1.1", "Go-http-cli\u{e9}nt/1.1") => MalformedRequest, "control or non-ASCII";
    non_token_header_name: |s| swap(s, "User-Agent: ", "User Agent: ") => MalformedRequest, "not valid HTTP/1.1";
    two_hosts: |s| swap(s, "Host: sts.us-east-1.amazonaws.com\r\n", "Host: sts.us-east-1.amazonaws.com\r\nHost: evil.example\r\n") => MalformedRequest, "more than one Host";
    no_host: |s| swap(s, "Host: sts.us-east-1.amazonaws.com\r\n", "") => MalformedRequest, "no Host";
    two_authorizations: |s| swap(s, "Content-Type:", "Authorization: AWS4-HMAC-SHA256 x\r\nContent-Type:") => MalformedRequest, "more than one Authorization";
    no_authorization: |s| { let i = s.find("Authorization:").unwrap(); let j = i + s[i..].find("\r\n").unwrap() + 2; format!("{}{}", &s[..i], &s[j..]) } => MalformedRequest, "no Authorization";
    two_dates: |s| swap(s, "X-Amz-Date: 20261128T150000Z\r\n", "X-Amz-Date: 20261128T150000Z\r\nX-Amz-Date: 20261128T150000Z\r\n") => MalformedRequest, "more than one X-Amz-Date";
    two_security_tokens: |s| swap(s, "X-Amz-Security-Token:", "X-Amz-Security-Token: other\r\nX-Amz-Security-Token:") => MalformedRequest, "more than one X-Amz-Security-Token";
    two_signed_headers_params: |s| swap(s, ", Signature=", &format!(", SignedHeaders={SIGNED}, Signature=")) => MalformedRequest, "SignedHeaders more than once";
    host_not_signed: |s| swap(s, SIGNED, "accept;content-length;content-type;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "host is not among the signed headers";
    date_not_signed: |s| swap(s, SIGNED, "accept;content-length;content-type;host;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "x-amz-date is not among";
    content_type_not_signed: |s| swap(s, SIGNED, "accept;content-length;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "content-type is not among";
    signed_header_missing: |s| swap(s, SIGNED, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-extra;x-teleport-challenge") => MalformedRequest, "no x-extra header";
    signed_header_duplicated: |s| swap(s, "Accept: application/json\r\n", "Accept: application/json\r\nAccept: text/xml\r\n") => MalformedRequest, "more than one accept header";
    signed_connection: |s| swap(swap(s, "accept;content-length", "accept;connection;content-length"), "User-Agent:", "Connection: keep-alive\r\nUser-Agent:") => MalformedRequest, "connection must not be signed";
    signed_x_forwarded_host: |s| swap(swap(s, "x-amz-security-token;x-teleport-challenge", "x-amz-security-token;x-forwarded-host;x-teleport-challenge"), "User-Agent:", "X-Forwarded-Host: evil.example\r\nUser-Agent:") => MalformedRequest, "x-forwarded-host must not be signed";
    signed_proxy_authorization: |s| swap(swap(s, "host;x-amz-date", "host;proxy-authorization;x-amz-date"), "User-Agent:", "Proxy-Authorization: x\r\nUser-Agent:") => MalformedRequest, "proxy-authorization must not be signed";
    signed_expect: |s| swap(swap(s, "content-type;host", "content-type;expect;host"), "User-Agent:", "Expect: 100-continue\r\nUser-Agent:") => MalformedRequest, "expect must not be signed";
    wrong_content_type: |s| swap(s, "application/x-www-form-urlencoded; charset=utf-8", "application/json") => MalformedRequest, "Content-Type";
    scope_region_differs_from_host: |s| swap(s, "/20261128/us-east-1/sts/", "/20261128/us-west-2/sts/") => MalformedRequest, "signed for region us-west-2";
    scope_date_differs: |s| swap(s, "/20261128/us-east-1/sts/", "/20261127/us-east-1/sts/") => MalformedRequest, "scope date";
    scope_service_iam: |s| swap(s, "/us-east-1/sts/aws4_request", "/us-east-1/iam/aws4_request") => MalformedRequest, "not \"sts\"";
    untrusted_host: |s| swap(s, "Host: sts.us-east-1.amazonaws.com", "Host: sts.evil.amazonaws.com") => UntrustedEndpoint, "not an AWS STS endpoint";
    host_with_port: |s| swap(s, "Host: sts.us-east-1.amazonaws.com", "Host: sts.us-east-1.amazonaws.com:443") => UntrustedEndpoint, "not an AWS STS endpoint";
    host_attacker: |s| swap(s, "Host: sts.us-east-1.amazonaws.com", "Host: attacker.example") => UntrustedEndpoint, "not an AWS STS endpoint";
    host_uppercase: |s| swap(s, "Host: sts.us-east-1.amazonaws.com", "Host: STS.us-east-1.amazonaws.com") => UntrustedEndpoint, "not an AWS STS endpoint";
    no_challenge: |s| { let i = s.find("X-Teleport-Challenge:").unwrap(); let j = i + s[i..].find("\r\n").unwrap() + 2; format!("{}{}", &s[..i], &s[j..]) } => ChallengeMismatch, "no x-teleport-challenge header";
    two_challenges: |s| swap(s, "X-Teleport-Challenge:", "X-Teleport-Challenge: other\r\nX-Teleport-Challenge:") => ChallengeMismatch, "more than one x-teleport-challenge";
    challenge_not_signed: |s| swap(s, SIGNED, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token") => ChallengeMismatch, "not among the signed headers";
    challenge_differs: |s| swap(s, "X-Teleport-Challenge: kXr0", "X-Teleport-Challenge: AAAA") => ChallengeMismatch, "does not hold the challenge";
    challenge_prefix_only: |s| swap(s, "F5gA7iK9sLu\r\n", "F5gA7iK9sL\r\n") => ChallengeMismatch, "does not hold the challenge";
    stale_date: |s| swap(swap(s, "X-Amz-Date: 20261128T150000Z", "X-Amz-Date: 20261128T144459Z"), "", "") => RequestExpired, "901s old";
    future_date: |s| swap(s, "X-Amz-Date: 20261128T150000Z", "X-Amz-Date: 20261128T151501Z") => RequestExpired, "in the future";
    malformed_date: |s| swap(s, "X-Amz-Date: 20261128T150000Z", "X-Amz-Date: 2026-11-28T15:00:00Z") => MalformedRequest, "YYYYMMDDTHHMMSSZ";
}

#[test]
fn dates_at_the_edge_of_the_window_pass() {
    for date in ["20261128T144500Z", "20261128T151500Z"] {
        let raw = teleport().replace("X-Amz-Date: 20261128T150000Z", &format!("X-Amz-Date: {date}"));
        assert!(parse(&raw).is_ok(), "{date}");
    }
    let tight = RequestPolicy::new().max_skew(Duration::from_secs(60)).unwrap();
    let raw = teleport().replace("X-Amz-Date: 20261128T150000Z", "X-Amz-Date: 20261128T150200Z");
    let err = ForwardedRequest::parse(raw.as_bytes(), &challenge(), &tight, signed_at()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RequestExpired);
    assert!(RequestPolicy::new().max_skew(Duration::from_secs(15 * 60 + 1)).is_err());
}

#[test]
fn configured_challenge_header_is_honoured() {
    let raw =
        teleport().replace("x-teleport-challenge", "x-my-challenge").replace("X-Teleport-Challenge", "X-My-Challenge");
    let policy = RequestPolicy::new().challenge_header("X-My-Challenge").unwrap();
    let req = ForwardedRequest::parse(raw.as_bytes(), &challenge(), &policy, signed_at()).unwrap();
    assert!(req.replay().headers().any(|(n, _)| n == "x-my-challenge"));
    // The default header name no longer counts.
    let err = parse(&raw).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ChallengeMismatch);
    for bad in ["host", "Authorization", "x-forwarded-for", "bad header", ""] {
        assert!(RequestPolicy::new().challenge_header(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn endpoint_policy_applies() {
    let fips = RequestPolicy::new().endpoints(EndpointPolicy::new().fips(FipsMode::Required));
    let err = ForwardedRequest::parse(teleport().as_bytes(), &challenge(), &fips, signed_at()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UntrustedEndpoint);
    let fips_host = teleport().replace("Host: sts.us-east-1.amazonaws.com", "Host: sts-fips.us-east-1.amazonaws.com");
    assert!(ForwardedRequest::parse(fips_host.as_bytes(), &challenge(), &fips, signed_at()).is_ok());
    let gov = teleport()
        .replace("Host: sts.us-east-1.amazonaws.com", "Host: sts.us-gov-west-1.amazonaws.com")
        .replace("/us-east-1/sts/", "/us-gov-west-1/sts/");
    assert_eq!(parse(&gov).unwrap_err().kind(), ErrorKind::UntrustedEndpoint);
    let gov_ok = RequestPolicy::new().endpoints(EndpointPolicy::new().allow_partition(Partition::AwsUsGov));
    assert!(ForwardedRequest::parse(gov.as_bytes(), &challenge(), &gov_ok, signed_at()).is_ok());
}

#[test]
fn every_aws_regional_host_passes_when_signed_for_its_region() {
    let mut n = 0;
    for e in iam_join::Endpoint::all().iter().filter(|e| e.partition() == Partition::Aws) {
        let raw = teleport()
            .replace("Host: sts.us-east-1.amazonaws.com", &format!("Host: {}", e.host()))
            .replace("/us-east-1/sts/", &format!("/{}/sts/", e.signing_region()));
        let req = parse(&raw).unwrap_or_else(|err| panic!("{}: {err}", e.host()));
        assert_eq!(req.endpoint().host(), e.host());
        n += 1;
    }
    assert!(n >= 70);
}

/// A server whose envelope does not carry the challenge peeks at the signed value, looks it up,
/// and then verifies against what it issued; peeking never accepts an unsigned challenge.
#[test]
fn peek_returns_the_signed_challenge_after_every_other_check() {
    let policy = RequestPolicy::new();
    let peeked = ForwardedRequest::peek_challenge(teleport().as_bytes(), &policy, signed_at()).unwrap();
    assert_eq!(peeked, challenge());
    let parsed = ForwardedRequest::parse(teleport().as_bytes(), &peeked, &policy, signed_at()).unwrap();
    assert_eq!(parsed.signed_challenge(), challenge());
    // An unsigned challenge header is no challenge, peeked or not.
    let unsigned = teleport().replace(";x-teleport-challenge", "");
    let e = ForwardedRequest::peek_challenge(unsigned.as_bytes(), &policy, signed_at()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChallengeMismatch, "{e}");
    // Every other check still runs: a stale request is refused before any challenge is read.
    let e = ForwardedRequest::peek_challenge(teleport().as_bytes(), &policy, signed_at() + Duration::from_secs(3600))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RequestExpired);
}

/// The `http` feature: the rebuilt request as an `http::Request` holds exactly what `to_http1`
/// sends, and an `http::Response` becomes the `HttpAnswer` that `conclude` reads.
#[cfg(feature = "http")]
#[test]
fn http_crate_conversions_carry_exactly_the_rebuilt_request() {
    let parsed = parse(&teleport()).unwrap();
    let req = parsed.replay().to_http().unwrap();
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.uri().to_string(), "https://sts.us-east-1.amazonaws.com/");
    let want: Vec<(String, String)> = parsed.replay().headers().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
    let got: Vec<(String, String)> =
        req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
    assert_eq!(got, want);
    assert_eq!(req.body().as_slice(), iam_join::GET_CALLER_IDENTITY_BODY);

    let body = std::fs::read(vectors("sts/ok_assumed_role.xml")).unwrap();
    let resp = http::Response::builder().status(200).header("content-type", "text/xml").body(body.clone()).unwrap();
    let answer = iam_join::HttpAnswer::from(resp);
    assert_eq!((answer.status, answer.content_type.as_deref(), answer.body), (200, Some("text/xml"), body));
}
