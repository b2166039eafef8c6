//! Hostile presigned URLs. Each is a mutation of a presigned `GetCallerIdentity` URL made by the
//! agent at the corpus's signing time; all must be refused before anything is sent. The
//! duplicates of aws-iam-authenticator's CVE-2022-2385 are tried for every key in every letter
//! case.

use iam_join::ErrorKind::{self, *};
use iam_join::Proof;
use iam_join::agent::{Credentials, JoinRequest, eks_token, presign_join_url};

use crate::{AUTHENTICATOR, FakeSts, Report, Where, challenge, expect_refusal_of, signed_at};

const QUERY: &str = "presigned query: keys and values the server must not pass on";
const SIGNED: &str = "SigV4: signed headers the server cannot reproduce, or the challenge left unsigned";
const EXPIRY: &str = "presigned URL lifetime (X-Amz-Expires, 1 to 900 s) and freshness";
const HOST: &str = "SSRF / replay through the URL's host";
const SHAPE: &str = "URL and token shape (scheme, user, port, fragment, path, encoding, size)";

/// The keys a presigned GetCallerIdentity holds.
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

fn agent() -> Credentials {
    Credentials::new(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        Some("FwoGZXIvYXdzEXAMPLESESSIONTOKEN0123456789abcdef".into()),
    )
}

/// The untouched URL: presigned by the agent at the corpus's signing time, for us-east-1.
pub(crate) fn url() -> String {
    presign_join_url(
        &agent(),
        &JoinRequest::new(challenge()).region("us-east-1"),
        std::time::Duration::from_secs(60),
        signed_at(),
    )
    .unwrap()
}

fn swap(s: String, from: &str, to: &str) -> String {
    assert!(s.contains(from), "URL lacks {from:?}: {s}");
    s.replacen(from, to, 1)
}

/// Replaces the value of `key`.
fn set(s: String, key: &str, value: &str) -> String {
    let start = s.find(&format!("{key}=")).unwrap_or_else(|| panic!("no {key}")) + key.len() + 1;
    let end = s[start..].find('&').map_or(s.len(), |i| start + i);
    format!("{}{value}{}", &s[..start], &s[end..])
}

/// Removes `key` and its value.
fn remove(s: String, key: &str) -> String {
    let start = s.find(&format!("{key}=")).unwrap_or_else(|| panic!("no {key}"));
    let end = s[start..].find('&').map_or(s.len(), |i| start + i + 1);
    let out = format!("{}{}", &s[..start], &s[end..]);
    out.trim_end_matches('&').to_owned()
}

/// The value of X-Amz-Signature.
fn signature_of(s: &str) -> String {
    s.split("X-Amz-Signature=").nth(1).unwrap().split('&').next().unwrap().to_owned()
}

fn add(s: String, param: &str) -> String {
    format!("{s}&{param}")
}

mutations! {
    presigned_extra_unknown_key [QUERY]: |s| add(s, "X-Amz-Foo=bar") => MalformedRequest, "is not one a presigned GetCallerIdentity has";
    presigned_extra_other_api_key [QUERY]: |s| add(s, "RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx") => MalformedRequest, "is not one a presigned GetCallerIdentity has";
    presigned_percent_encoded_key [AUTHENTICATOR]: |s| swap(s, "X-Amz-Date=", "X%2DAmz-Date=") => MalformedRequest, "is not one a presigned GetCallerIdentity has";
    presigned_empty_parameter [QUERY]: |s| swap(s, "&Version=", "&&Version=") => MalformedRequest, "parameter without '='";
    presigned_missing_action [QUERY]: |s| remove(s, "Action") => MalformedRequest, "query has no Action";
    presigned_missing_version [QUERY]: |s| remove(s, "Version") => MalformedRequest, "query has no Version";
    presigned_missing_algorithm [QUERY]: |s| remove(s, "X-Amz-Algorithm") => MalformedRequest, "query has no X-Amz-Algorithm";
    presigned_missing_credential [QUERY]: |s| remove(s, "X-Amz-Credential") => MalformedRequest, "query has no X-Amz-Credential";
    presigned_missing_date [QUERY]: |s| remove(s, "X-Amz-Date") => MalformedRequest, "query has no X-Amz-Date";
    presigned_missing_expires [QUERY]: |s| remove(s, "X-Amz-Expires") => MalformedRequest, "query has no X-Amz-Expires";
    presigned_missing_signed_headers [QUERY]: |s| remove(s, "X-Amz-SignedHeaders") => MalformedRequest, "query has no X-Amz-SignedHeaders";
    presigned_missing_signature [QUERY]: |s| remove(s, "X-Amz-Signature") => MalformedRequest, "query has no X-Amz-Signature";
    presigned_other_action [QUERY]: |s| set(s, "Action", "AssumeRole") => MalformedRequest, "Action is not GetCallerIdentity";
    presigned_other_version [QUERY]: |s| set(s, "Version", "2010-05-08") => MalformedRequest, "Version is not 2011-06-15";
    presigned_other_algorithm [QUERY]: |s| set(s, "X-Amz-Algorithm", "AWS4-ECDSA-P256-SHA256") => MalformedRequest, "X-Amz-Algorithm is not AWS4-HMAC-SHA256";
    presigned_scope_service_iam [QUERY]: |s| swap(s, "%2Fsts%2Faws4_request", "%2Fiam%2Faws4_request") => MalformedRequest, "Credential scope service is \"iam\", not \"sts\"";
    presigned_scope_region_other [QUERY]: |s| swap(s, "%2Fus-east-1%2F", "%2Feu-west-1%2F") => MalformedRequest, "signed for region \"eu-west-1\"";
    presigned_scope_date_other [QUERY]: |s| swap(s, "%2F20261128%2F", "%2F20261127%2F") => MalformedRequest, "scope date is not the date of X-Amz-Date";
    presigned_lowercase_access_key [QUERY]: |s| swap(s, "AKIAIOSFODNN7EXAMPLE", "akiaiosfodnn7example") => MalformedRequest, "access key id";
    presigned_short_signature [QUERY]: |s| { let sig = signature_of(&s); swap(s, &sig, &sig[..63]) } => MalformedRequest, "X-Amz-Signature is not 64 lowercase hex digits";
    presigned_uppercase_signature [QUERY]: |s| { let sig = signature_of(&s); swap(s, &sig, &sig.to_uppercase()) } => MalformedRequest, "X-Amz-Signature is not 64 lowercase hex digits";
    presigned_empty_security_token [QUERY]: |s| set(s, "X-Amz-Security-Token", "") => MalformedRequest, "X-Amz-Security-Token is empty";
    presigned_raw_slash_in_value [QUERY]: |s| swap(s, "%2F20261128%2F", "/20261128/") => MalformedRequest, "has a character that must be escaped";
    presigned_bad_percent_escape [QUERY]: |s| swap(s, "%2F20261128%2F", "%ZZ20261128%2F") => MalformedRequest, "bad percent escape";
    presigned_crlf_in_value [QUERY]: |s| set(s, "X-Amz-Security-Token", "a%0D%0AHost%3A%20evil") => MalformedRequest, "decodes to a control or non-ASCII character";
    presigned_plus_in_value [QUERY]: |s| set(s, "X-Amz-Security-Token", "a+b") => MalformedRequest, "has a character that must be escaped";

    presigned_signed_header_unreproducible [SIGNED]: |s| set(s, "X-Amz-SignedHeaders", "host%3Bx-evil%3Bx-k8s-aws-id") => MalformedRequest, "holds \"x-evil\", which the server cannot reproduce";
    presigned_signed_user_agent [SIGNED]: |s| set(s, "X-Amz-SignedHeaders", "host%3Buser-agent%3Bx-k8s-aws-id") => MalformedRequest, "holds \"user-agent\", which the server cannot reproduce";
    presigned_signed_both_challenge_headers [SIGNED]: |s| set(s, "X-Amz-SignedHeaders", "host%3Bx-k8s-aws-id%3Bx-teleport-challenge") => MalformedRequest, "signs both x-k8s-aws-id and x-teleport-challenge";
    presigned_challenge_unsigned [SIGNED]: |s| set(s, "X-Amz-SignedHeaders", "host") => ChallengeMismatch, "no challenge header (x-k8s-aws-id or x-teleport-challenge) is among X-Amz-SignedHeaders";
    presigned_host_unsigned [SIGNED]: |s| set(s, "X-Amz-SignedHeaders", "x-k8s-aws-id") => MalformedRequest, "host is not among X-Amz-SignedHeaders";
    presigned_signed_headers_unsorted [SIGNED]: |s| set(s, "X-Amz-SignedHeaders", "x-k8s-aws-id%3Bhost") => MalformedRequest, "sorted";
    presigned_signed_headers_uppercase [SIGNED]: |s| set(s, "X-Amz-SignedHeaders", "Host%3Bx-k8s-aws-id") => MalformedRequest, "non-lowercase";

    presigned_expires_zero [EXPIRY]: |s| set(s, "X-Amz-Expires", "0") => MalformedRequest, "X-Amz-Expires is not a whole number of seconds from 1 to 900";
    presigned_expires_901 [EXPIRY]: |s| set(s, "X-Amz-Expires", "901") => MalformedRequest, "X-Amz-Expires is not a whole number of seconds from 1 to 900";
    presigned_expires_negative [EXPIRY]: |s| set(s, "X-Amz-Expires", "-1") => MalformedRequest, "X-Amz-Expires is not a whole number of seconds from 1 to 900";
    presigned_expires_leading_zero [EXPIRY]: |s| set(s, "X-Amz-Expires", "060") => MalformedRequest, "X-Amz-Expires is not a whole number of seconds from 1 to 900";
    presigned_expires_huge [EXPIRY]: |s| set(s, "X-Amz-Expires", "99999999999999999999") => MalformedRequest, "X-Amz-Expires is not a whole number of seconds from 1 to 900";
    presigned_expired [EXPIRY]: |s| set(set(s, "X-Amz-Date", "20261128T145900Z"), "X-Amz-Expires", "30") => RequestExpired, "the presigned URL expired 30s ago";
    presigned_date_old [EXPIRY]: |s| set(s, "X-Amz-Date", "20261128T140000Z") => RequestExpired, "X-Amz-Date is 3600s old";
    presigned_date_future [EXPIRY]: |s| set(s, "X-Amz-Date", "20261128T160000Z") => RequestExpired, "X-Amz-Date is 3600s in the future";
    presigned_date_malformed [EXPIRY]: |s| set(s, "X-Amz-Date", "2026-11-28T15%3A00%3A00Z") => MalformedRequest, "X-Amz-Date is not YYYYMMDDTHHMMSSZ";

    presigned_http_scheme [SHAPE]: |s| swap(s, "https://", "http://") => MalformedRequest, "presigned URL is not https://";
    presigned_userinfo [SHAPE]: |s| swap(s, "https://", "https://attacker@") => MalformedRequest, "presigned URL has user information";
    presigned_port [SHAPE]: |s| swap(s, ".amazonaws.com/", ".amazonaws.com:443/") => MalformedRequest, "presigned URL names a port";
    presigned_fragment [SHAPE]: |s| format!("{s}#x") => MalformedRequest, "presigned URL has a fragment";
    presigned_other_path [SHAPE]: |s| swap(s, ".com/?", ".com/iam/?") => MalformedRequest, "path is not exactly \"/\"";
    presigned_path_traversal [SHAPE]: |s| swap(s, ".com/?", ".com/../?") => MalformedRequest, "path is not exactly \"/\"";
    presigned_no_query [SHAPE]: |s| s.split('?').next().unwrap().to_owned() => MalformedRequest, "path is not exactly \"/\"";
    presigned_space [SHAPE]: |s| swap(s, "Action=", "Action= ") => MalformedRequest, "space, control or non-ASCII";
    presigned_oversized [SHAPE]: |s| set(s, "X-Amz-Security-Token", &"A".repeat(4200)) => MalformedRequest, "presigned proof is longer than 4096 bytes";
    presigned_token_other_version [SHAPE]: |s| eks_token(&s).replacen("k8s-aws-v1.", "k8s-aws-v2.", 1) => MalformedRequest, "an EKS token must start with k8s-aws-v1.";
    presigned_token_padded [SHAPE]: |s| { use base64::Engine as _; format!("k8s-aws-v1.{}", base64::engine::general_purpose::URL_SAFE.encode(format!("{s}&"))) } => MalformedRequest, "is not unpadded base64url";
    presigned_token_standard_alphabet [SHAPE]: |s| format!("k8s-aws-v1.{}+/", &eks_token(&s)["k8s-aws-v1.".len()..]) => MalformedRequest, "is not unpadded base64url";

    presigned_host_foreign [HOST]: |s| swap(s, "sts.us-east-1.amazonaws.com", "sts.evil.example") => UntrustedEndpoint, "signed host \"sts.evil.example\" is not an AWS STS endpoint";
    presigned_host_suffix [HOST]: |s| swap(s, "sts.us-east-1.amazonaws.com", "sts.us-east-1.amazonaws.com.evil.example") => UntrustedEndpoint, "is not an AWS STS endpoint";
    presigned_host_metadata [HOST]: |s| swap(s, "sts.us-east-1.amazonaws.com", "169.254.169.254") => UntrustedEndpoint, "is not an AWS STS endpoint";
    presigned_host_loopback [HOST]: |s| swap(s, "sts.us-east-1.amazonaws.com", "127.0.0.1") => UntrustedEndpoint, "is not an AWS STS endpoint";
    presigned_host_uppercase [HOST]: |s| swap(s, "sts.us-east-1.amazonaws.com", "STS.us-east-1.amazonaws.com") => UntrustedEndpoint, "is not an AWS STS endpoint";
}

async fn refuse(sts: &FakeSts, v: &iam_join::Verifier, url: &str, want: (ErrorKind, &str)) -> Result<(), String> {
    let proof = Proof::Presigned(url.as_bytes());
    expect_refusal_of(sts, v, ("iam-token", &challenge(), signed_at()), proof, want, Where::Local).await
}

#[tokio::test]
async fn every_hostile_presigned_url_is_refused_locally() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let mut report = Report::default();
    for case in CASES {
        let mutated = (case.mutate)(url());
        assert_ne!(mutated, url(), "{} must change the URL", case.name);
        report.record(case.name, case.source, refuse(&sts, &v, &mutated, (case.want, case.because)).await);
    }
    report.finish(55);
    assert_eq!(sts.requests(), 0, "no hostile URL may reach STS");
}

/// CVE-2022-2385: every key, repeated in every letter case (and exactly), whether first or
/// second, is refused before anything is sent; so is each key spelled in another case alone.
#[tokio::test]
async fn duplicates_of_every_key_in_every_letter_case_are_refused() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let mut report = Report::default();
    let swapcase = |k: &str| {
        k.chars()
            .map(|c| if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() })
            .collect::<String>()
    };
    for key in KEYS {
        let value = "GetCallerIdentity";
        for spelled in [key.to_owned(), key.to_lowercase(), key.to_uppercase(), swapcase(key)] {
            let appended = format!("{}&{spelled}={value}", url());
            let because =
                if spelled == key { "appears more than once" } else { "in another letter case (CVE-2022-2385)" };
            report.record(
                &format!("dup_{spelled}_after"),
                "CVE-2022-2385",
                refuse(&sts, &v, &appended, (MalformedRequest, because)).await,
            );
            let prepended = url().replacen("/?", &format!("/?{spelled}={value}&"), 1);
            report.record(
                &format!("dup_{spelled}_before"),
                "CVE-2022-2385",
                refuse(&sts, &v, &prepended, (MalformedRequest, because)).await,
            );
        }
        if key != "X-Amz-Security-Token" {
            let alone = url().replacen(&format!("{key}="), &format!("{}=", key.to_lowercase()), 1);
            report.record(
                &format!("respelled_{key}"),
                "CVE-2022-2385",
                refuse(&sts, &v, &alone, (MalformedRequest, "in another letter case (CVE-2022-2385)")).await,
            );
        }
    }
    report.finish(9 * 8 + 8);
    assert_eq!(sts.requests(), 0);
}

/// The positive controls: the untouched URL, its EKS token, and a URL that signs the configured
/// challenge header instead of x-k8s-aws-id are allowed; the replay is a GET of the query as
/// received, with the issued challenge in the header that was signed.
#[tokio::test]
async fn the_untouched_presigned_url_is_allowed_and_replayed_as_signed() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let verify = |proof: String| {
        let v = v.clone();
        async move {
            v.verify(
                "iam-token",
                iam_join::Challenge::Plain(&challenge()),
                Proof::Presigned(proof.as_bytes()),
                signed_at(),
            )
            .await
        }
    };
    let u = url();
    assert_eq!(verify(u.clone()).await.unwrap().identity().arn().as_str(), crate::IDENTITY_ARN);
    let sent = sts.last_request();
    let target = &u["https://sts.us-east-1.amazonaws.com".len()..];
    assert!(sent.starts_with(&format!("GET {target} HTTP/1.1\r\n")), "{sent}");
    assert!(sent.contains(&format!("\r\nx-k8s-aws-id: {}\r\n", challenge())), "{sent}");
    assert!(sent.to_ascii_lowercase().contains("\r\nhost: sts.us-east-1.amazonaws.com\r\n"), "{sent}");
    assert!(verify(eks_token(&u)).await.is_ok());
    let own_header = set(u, "X-Amz-SignedHeaders", "host%3Bx-teleport-challenge");
    assert!(verify(own_header).await.is_ok());
    let sent = sts.last_request();
    assert!(
        sent.contains(&format!("\r\nx-teleport-challenge: {}\r\n", challenge())) && !sent.contains("x-k8s-aws-id"),
        "{sent}"
    );
    assert_eq!(sts.requests(), 3);
}
