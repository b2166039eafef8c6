//! Hostile forwarded requests. Each is a mutation of the byte-exact Teleport request; all must
//! be refused before anything is sent.

use iam_join::ErrorKind::{self, *};

use crate::{FakeSts, Report, Where, expect_refusal, teleport_request};

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) mutate: fn(String) -> String,
    pub(crate) want: ErrorKind,
}

const VAULT: &str = "Vault CVE-2020-16250 (request not rebuilt, other action or service)";
const AUTHENTICATOR: &str = "aws-iam-authenticator CVE-2022-2385 (duplicate parameters differing in case)";
const HOST_REPLAY: &str = "Host / X-Forwarded-Host replay to an attacker host";
const SSRF: &str = "SSRF through the signed Host (cloud metadata, loopback)";
const REGION: &str = "region injected into the endpoint host name";
const OMIT: &str = "SigV4: a header the server relies on left out of SignedHeaders";
const AUTHZ: &str = "duplicated, split or malformed Authorization";
const SMUGGLE: &str = "request smuggling (RFC 9112 section 6.3: Transfer-Encoding / Content-Length)";
const CRLF: &str = "CRLF / bare-LF injection (RFC 9112 section 2.2)";
const SIZE: &str = "resource exhaustion: oversized head or body";
const DATE: &str = "replay outside the freshness window (SigV4 allows 15 minutes)";
const CHALLENGE: &str = "challenge replay or substitution (Teleport join protocol)";

const SIGNED: &str = "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge";
const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// Replaces the first `from` (which must be present) with `to`.
fn swap(s: String, from: &str, to: &str) -> String {
    assert!(s.contains(from), "vector lacks {from:?}");
    s.replacen(from, to, 1)
}

/// Adds a raw header line (or lines) before User-Agent.
fn add(s: String, lines: &str) -> String {
    swap(s, "User-Agent:", &format!("{lines}\r\nUser-Agent:"))
}

/// Replaces the SignedHeaders list.
fn signed(s: String, list: &str) -> String {
    swap(s, SIGNED, list)
}

/// Replaces the body and sets a matching Content-Length.
fn body(s: String, new: &str) -> String {
    swap(swap(s, BODY, new), "Content-Length: 43", &format!("Content-Length: {}", new.len()))
}

/// Removes the header line starting with `name:`.
fn remove(s: String, name: &str) -> String {
    let i = s.find(&format!("\r\n{name}:")).unwrap_or_else(|| panic!("no {name}")) + 2;
    let j = i + s[i..].find("\r\n").unwrap() + 2;
    format!("{}{}", &s[..i], &s[j..])
}

fn host(s: String, h: &str) -> String {
    swap(s, "Host: sts.us-east-1.amazonaws.com", &format!("Host: {h}"))
}

fn scope_region(s: String, r: &str) -> String {
    swap(s, "/20261128/us-east-1/sts/", &format!("/20261128/{r}/sts/"))
}

fn date(s: String, d: &str) -> String {
    swap(s, "X-Amz-Date: 20261128T150000Z", &format!("X-Amz-Date: {d}"))
}

/// A date and a matching credential-scope day.
fn date_and_scope(s: String, d: &str) -> String {
    let s = swap(s, "/20261128/us-east-1/", &format!("/{}/us-east-1/", &d[..8]));
    date(s, d)
}

macro_rules! cases {
    ($($name:ident [$source:expr]: $mutate:expr => $want:ident;)*) => {
        pub(crate) const CASES: &[Case] = &[$(Case {
            name: stringify!($name),
            source: $source,
            mutate: $mutate,
            want: $want,
        }),*];
    };
}

cases! {
    // Vault CVE-2020-16250: Vault forwarded what the client sent, so a signed request to another
    // action or service, with an answer the client could shape, passed as an identity.
    vault_action_in_query [VAULT]: |s| swap(s, "POST / ", "POST /?Action=AssumeRoleWithWebIdentity&Version=2011-06-15 ") => MalformedRequest;
    vault_get_with_query [VAULT]: |s| swap(s, "POST / ", "GET /?Action=GetCallerIdentity&Version=2011-06-15 ") => MalformedRequest;
    vault_body_second_action [VAULT]: |s| body(s, "Action=GetCallerIdentity&Version=2011-06-15&Action=ListUsers") => MalformedRequest;
    vault_body_other_action [VAULT]: |s| body(s, "Action=GetAccessKeyInfo&Version=2011-06-15") => MalformedRequest;
    vault_body_percent_encoded_action [VAULT]: |s| body(s, "Action=GetCaller%49dentity&Version=2011-06-15") => MalformedRequest;
    vault_body_trailing_separator [VAULT]: |s| body(s, "Action=GetCallerIdentity&Version=2011-06-15&") => MalformedRequest;
    vault_body_other_version [VAULT]: |s| body(s, "Action=GetCallerIdentity&Version=2010-05-08") => MalformedRequest;
    vault_path_other_service [VAULT]: |s| swap(s, "POST / ", "POST /iam/ ") => MalformedRequest;
    vault_path_traversal [VAULT]: |s| swap(s, "POST / ", "POST /../ ") => MalformedRequest;
    vault_host_iam [VAULT]: |s| host(s, "iam.amazonaws.com") => UntrustedEndpoint;
    vault_host_s3 [VAULT]: |s| host(s, "s3.amazonaws.com") => UntrustedEndpoint;
    vault_scope_service_iam [VAULT]: |s| swap(s, "/us-east-1/sts/aws4_request", "/us-east-1/iam/aws4_request") => MalformedRequest;
    vault_content_type_json [VAULT]: |s| swap(s, "application/x-www-form-urlencoded; charset=utf-8", "application/x-amz-json-1.1") => MalformedRequest;

    // aws-iam-authenticator CVE-2022-2385: the validator read one spelling of a parameter while
    // AWS honoured another.
    authenticator_lowercase_action_duplicate [AUTHENTICATOR]: |s| body(s, "Action=GetCallerIdentity&Version=2011-06-15&action=AssumeRole") => MalformedRequest;
    authenticator_lowercase_action_only [AUTHENTICATOR]: |s| body(s, "action=GetCallerIdentity&Version=2011-06-15") => MalformedRequest;
    authenticator_signedheaders_query_two_cases [AUTHENTICATOR]: |s| swap(s, "POST / ", "POST /?X-Amz-SignedHeaders=host&x-amz-signedheaders=host%3Bx-teleport-challenge ") => MalformedRequest;
    authenticator_presigned_query [AUTHENTICATOR]: |s| swap(s, "POST / ", "POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEVIL%2F20261128%2Fus-east-1%2Fsts%2Faws4_request&X-Amz-SignedHeaders=host&X-Amz-Signature=00 ") => MalformedRequest;
    authenticator_signedheaders_component_lowercase [AUTHENTICATOR]: |s| swap(s, "SignedHeaders=", "signedheaders=") => MalformedRequest;
    authenticator_signedheaders_twice_differing_case [AUTHENTICATOR]: |s| swap(s, ", Signature=", ", signedHeaders=host, Signature=") => MalformedRequest;
    authenticator_credential_twice [AUTHENTICATOR]: |s| swap(s, ", SignedHeaders=", ", Credential=AKIAEVILEXAMPLE00000/20261128/us-east-1/sts/aws4_request, SignedHeaders=") => MalformedRequest;
    authenticator_signature_twice [AUTHENTICATOR]: |s| swap(s, "\r\nContent-Type:", &format!(", Signature={}\r\nContent-Type:", "0".repeat(64))) => MalformedRequest;
    authenticator_challenge_header_lowercase_duplicate [AUTHENTICATOR]: |s| add(s, "x-teleport-challenge: attacker-chosen") => ChallengeMismatch;
    authenticator_host_lowercase_duplicate [AUTHENTICATOR]: |s| add(s, "host: evil.example") => MalformedRequest;
    authenticator_date_lowercase_duplicate [AUTHENTICATOR]: |s| add(s, "x-amz-date: 20261128T150000Z") => MalformedRequest;
    authenticator_content_length_lowercase_duplicate [AUTHENTICATOR]: |s| add(s, "content-length: 43") => MalformedRequest;

    // Host and X-Forwarded-Host replays: make the server send the signed request (and trust the
    // answer) somewhere else.
    host_attacker [HOST_REPLAY]: |s| host(s, "attacker.example") => UntrustedEndpoint;
    host_sts_suffix_of_attacker [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com.evil.example") => UntrustedEndpoint;
    host_attacker_prefix [HOST_REPLAY]: |s| host(s, "evil-sts.us-east-1.amazonaws.com") => UntrustedEndpoint;
    host_userinfo [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com@evil.example") => UntrustedEndpoint;
    host_fragment [HOST_REPLAY]: |s| host(s, "evil.example#sts.us-east-1.amazonaws.com") => UntrustedEndpoint;
    host_with_path [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com/evil") => UntrustedEndpoint;
    host_default_port [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com:443") => UntrustedEndpoint;
    host_other_port [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com:8443") => UntrustedEndpoint;
    host_trailing_dot [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com.") => UntrustedEndpoint;
    host_uppercase [HOST_REPLAY]: |s| host(s, "STS.US-EAST-1.AMAZONAWS.COM") => UntrustedEndpoint;
    host_punycode_lookalike [HOST_REPLAY]: |s| host(s, "xn--st-zcc.us-east-1.amazonaws.com") => UntrustedEndpoint;
    host_cyrillic_homoglyph [HOST_REPLAY]: |s| host(s, "\u{455}ts.us-east-1.amazonaws.com") => MalformedRequest;
    host_vpc_endpoint_not_configured [HOST_REPLAY]: |s| host(s, "vpce-0123456789abcdef0-abcdefgh.sts.us-east-1.vpce.amazonaws.com") => UntrustedEndpoint;
    host_empty [HOST_REPLAY]: |s| host(s, "") => UntrustedEndpoint;
    host_twice_second_attacker [HOST_REPLAY]: |s| add(s, "Host: evil.example") => MalformedRequest;
    x_forwarded_host_signed [HOST_REPLAY]: |s| add(signed(s, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-forwarded-host;x-teleport-challenge"), "X-Forwarded-Host: evil.example") => MalformedRequest;
    forwarded_signed [HOST_REPLAY]: |s| add(signed(s, "accept;content-length;content-type;forwarded;host;x-amz-date;x-amz-security-token;x-teleport-challenge"), "Forwarded: host=evil.example") => MalformedRequest;
    absolute_form_attacker [HOST_REPLAY]: |s| swap(s, "POST / ", "POST https://evil.example/ ") => MalformedRequest;
    absolute_form_sts [HOST_REPLAY]: |s| swap(s, "POST / ", "POST https://sts.us-east-1.amazonaws.com/ ") => MalformedRequest;
    authority_form [HOST_REPLAY]: |s| swap(s, "POST / ", "POST evil.example:443 ") => MalformedRequest;
    asterisk_form [HOST_REPLAY]: |s| swap(s, "POST / ", "POST * ") => MalformedRequest;

    ssrf_instance_metadata [SSRF]: |s| host(s, "169.254.169.254") => UntrustedEndpoint;
    ssrf_ipv6_metadata [SSRF]: |s| host(s, "[fd00:ec2::254]") => UntrustedEndpoint;
    ssrf_loopback_name [SSRF]: |s| host(s, "localhost") => UntrustedEndpoint;
    ssrf_loopback_ipv4 [SSRF]: |s| host(s, "127.0.0.1:6443") => UntrustedEndpoint;
    ssrf_decimal_ip [SSRF]: |s| host(s, "2852039166") => UntrustedEndpoint;

    // Region strings that end up in a host name.
    region_query_in_scope [REGION]: |s| scope_region(s, "evil.org?us-east-1") => MalformedRequest;
    region_query_in_host [REGION]: |s| host(s, "sts.evil.org?us-east-1.amazonaws.com") => UntrustedEndpoint;
    region_query_in_host_and_scope [REGION]: |s| scope_region(host(s, "sts.evil.org?us-east-1.amazonaws.com"), "evil.org?us-east-1") => MalformedRequest;
    region_fragment_in_host [REGION]: |s| host(s, "sts.evil.org#us-east-1.amazonaws.com") => UntrustedEndpoint;
    region_slash_in_scope [REGION]: |s| scope_region(s, "us-east-1/../evil.org") => MalformedRequest;
    region_dotted_in_scope [REGION]: |s| scope_region(s, "us-east-1.evil.org") => MalformedRequest;
    region_unknown_host [REGION]: |s| scope_region(host(s, "sts.xx-evil-1.amazonaws.com"), "xx-evil-1") => UntrustedEndpoint;
    region_other_partition_scope [REGION]: |s| scope_region(s, "cn-north-1") => MalformedRequest;

    // Headers the server relies on must be signed, or an attacker could change them.
    omit_host [OMIT]: |s| signed(s, "accept;content-length;content-type;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest;
    omit_date [OMIT]: |s| signed(s, "accept;content-length;content-type;host;x-amz-security-token;x-teleport-challenge") => MalformedRequest;
    omit_content_type [OMIT]: |s| signed(s, "accept;content-length;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest;
    omit_challenge [OMIT]: |s| signed(s, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token") => ChallengeMismatch;
    omit_everything_but_host [OMIT]: |s| signed(s, "host") => MalformedRequest;
    signed_headers_empty [OMIT]: |s| signed(s, "") => MalformedRequest;
    signed_headers_uppercase [OMIT]: |s| signed(s, "accept;content-length;content-type;Host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest;
    signed_headers_repeated_entry [OMIT]: |s| signed(s, "accept;content-length;content-type;host;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest;
    signed_header_absent [OMIT]: |s| signed(s, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-evil;x-teleport-challenge") => MalformedRequest;
    signed_authorization_itself [OMIT]: |s| signed(s, "accept;authorization;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest;
    signed_headers_trailing_separator [OMIT]: |s| signed(s, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge;") => MalformedRequest;

    // Authorization duplicated, split or not SigV4.
    authorization_twice [AUTHZ]: |s| add(s, "Authorization: AWS4-HMAC-SHA256 Credential=AKIAEVILEXAMPLE00000/20261128/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=00") => MalformedRequest;
    authorization_two_signed_headers_components [AUTHZ]: |s| swap(s, ", Signature=", ", SignedHeaders=host;x-amz-date, Signature=") => MalformedRequest;
    authorization_split_over_two_headers [AUTHZ]: |s| swap(s, ", SignedHeaders=", "\r\nAuthorization: SignedHeaders=") => MalformedRequest;
    authorization_obs_fold [AUTHZ]: |s| swap(s, ", SignedHeaders=", ",\r\n SignedHeaders=") => MalformedRequest;
    authorization_missing [AUTHZ]: |s| remove(s, "Authorization") => MalformedRequest;
    authorization_scheme_lowercase [AUTHZ]: |s| swap(s, "AWS4-HMAC-SHA256 Credential", "aws4-hmac-sha256 Credential") => MalformedRequest;
    authorization_sigv4a [AUTHZ]: |s| swap(s, "AWS4-HMAC-SHA256 Credential", "AWS4-ECDSA-P256-SHA256 Credential") => MalformedRequest;
    authorization_sigv2 [AUTHZ]: |s| { let i = s.find("Authorization: ").unwrap() + 15; let j = i + s[i..].find("\r\n").unwrap(); format!("{}AWS ASIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg={}", &s[..i], &s[j..]) } => MalformedRequest;
    authorization_bearer [AUTHZ]: |s| { let i = s.find("Authorization: ").unwrap() + 15; let j = i + s[i..].find("\r\n").unwrap(); format!("{}Bearer eyJhbGciOiJub25lIn0.e30.{}", &s[..i], &s[j..]) } => MalformedRequest;
    authorization_no_signature [AUTHZ]: |s| { let i = s.find(", Signature=").unwrap(); let j = i + s[i..].find("\r\n").unwrap(); format!("{}{}", &s[..i], &s[j..]) } => MalformedRequest;
    authorization_signature_not_hex [AUTHZ]: |s| swap(s, "Signature=4f0a2b6d0c1e3f5a", "Signature=zz0a2b6d0c1e3f5a") => MalformedRequest;
    authorization_signature_short [AUTHZ]: |s| swap(s, "Signature=4f0a2b6d0c1e3f5a", "Signature=4f0a") => MalformedRequest;
    authorization_unknown_component [AUTHZ]: |s| swap(s, ", Signature=", ", Evil=1, Signature=") => MalformedRequest;
    authorization_scope_terminator [AUTHZ]: |s| swap(s, "/sts/aws4_request", "/sts/aws4_requestx") => MalformedRequest;
    authorization_empty [AUTHZ]: |s| { let i = s.find("Authorization: ").unwrap() + 15; let j = i + s[i..].find("\r\n").unwrap(); format!("{}{}", &s[..i], &s[j..]) } => MalformedRequest;

    // Smuggling: a second request, or a different body, hidden from one parser but not another.
    smuggle_te_chunked [SMUGGLE]: |s| add(s, "Transfer-Encoding: chunked") => MalformedRequest;
    smuggle_te_and_cl_chunked_body [SMUGGLE]: |s| swap(add(s, "Transfer-Encoding: chunked"), "\r\n\r\nAction", "\r\n\r\n0\r\n\r\nAction") => MalformedRequest;
    smuggle_te_space_before_colon [SMUGGLE]: |s| add(s, "Transfer-Encoding : chunked") => MalformedRequest;
    smuggle_te_obfuscated_value [SMUGGLE]: |s| add(s, "Transfer-Encoding: xchunked") => MalformedRequest;
    smuggle_te_tab_value [SMUGGLE]: |s| add(s, "Transfer-Encoding:\tchunked") => MalformedRequest;
    smuggle_te_signed [SMUGGLE]: |s| add(signed(s, "accept;content-length;content-type;host;transfer-encoding;x-amz-date;x-amz-security-token;x-teleport-challenge"), "Transfer-Encoding: identity") => MalformedRequest;
    smuggle_cl_conflicting [SMUGGLE]: |s| add(s, "Content-Length: 0") => MalformedRequest;
    smuggle_cl_list [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: 43, 43") => MalformedRequest;
    smuggle_cl_plus_sign [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: +43") => MalformedRequest;
    smuggle_cl_negative [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: -43") => MalformedRequest;
    smuggle_cl_overflow [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: 99999999999999999999999") => MalformedRequest;
    smuggle_cl_zero_with_body [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: 0") => MalformedRequest;
    smuggle_pipelined_request [SMUGGLE]: |s| s + "POST / HTTP/1.1\r\nHost: sts.us-east-1.amazonaws.com\r\nContent-Length: 0\r\n\r\n" => MalformedRequest;
    smuggle_body_longer_than_cl [SMUGGLE]: |s| s + "&Action=AssumeRole" => MalformedRequest;
    smuggle_body_shorter_than_cl [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: 60") => MalformedRequest;
    smuggle_http2_preface [SMUGGLE]: |_| "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned() => MalformedRequest;
    smuggle_http_1_0 [SMUGGLE]: |s| swap(s, "HTTP/1.1\r\n", "HTTP/1.0\r\n") => MalformedRequest;
    smuggle_expect_signed [SMUGGLE]: |s| add(signed(s, "accept;content-length;content-type;expect;host;x-amz-date;x-amz-security-token;x-teleport-challenge"), "Expect: 100-continue") => MalformedRequest;
    smuggle_upgrade_signed [SMUGGLE]: |s| add(signed(s, "accept;content-length;content-type;host;upgrade;x-amz-date;x-amz-security-token;x-teleport-challenge"), "Upgrade: h2c") => MalformedRequest;

    // Line-ending and control-character injection.
    crlf_bare_lf_line [CRLF]: |s| swap(s, "User-Agent: Go-http-client/1.1\r\n", "User-Agent: Go-http-client/1.1\n") => MalformedRequest;
    crlf_all_bare_lf [CRLF]: |s| s.replace("\r\n", "\n") => MalformedRequest;
    crlf_bare_cr_in_value [CRLF]: |s| swap(s, "Go-http-client/1.1", "Go-http\rHost: evil.example") => MalformedRequest;
    crlf_injected_host_line [CRLF]: |s| swap(s, "Go-http-client/1.1", "x\r\nHost: evil.example") => MalformedRequest;
    crlf_injected_challenge_line [CRLF]: |s| swap(s, "Go-http-client/1.1", "x\r\nX-Teleport-Challenge: attacker-chosen") => ChallengeMismatch;
    crlf_nul_in_value [CRLF]: |s| swap(s, "Go-http-client/1.1", "Go-http-client\0/1.1") => MalformedRequest;
    crlf_obs_fold_line [CRLF]: |s| swap(s, "User-Agent: Go-http-client/1.1\r\n", "User-Agent: Go-http-client/1.1\r\n continued\r\n") => MalformedRequest;
    crlf_space_before_colon [CRLF]: |s| add(s, "X-Amz-Date : 20261128T150000Z") => MalformedRequest;
    crlf_request_line_double_space [CRLF]: |s| swap(s, "POST / HTTP/1.1", "POST  / HTTP/1.1") => MalformedRequest;
    crlf_request_line_bare_lf [CRLF]: |s| swap(s, "POST / HTTP/1.1\r\n", "POST / HTTP/1.1\n") => MalformedRequest;
    crlf_header_without_colon [CRLF]: |s| add(s, "X-Evil") => MalformedRequest;
    crlf_no_blank_line [CRLF]: |s| s.replacen("\r\n\r\n", "\r\n", 1) => MalformedRequest;

    // Size: refused by the named limits before any large allocation.
    size_head_over_limit [SIZE]: |s| add(s, &format!("X-Pad: {}", "a".repeat(17_000))) => MalformedRequest;
    size_too_many_headers [SIZE]: |s| add(s, &"X-Pad: 1\r\n".repeat(70)) => MalformedRequest;
    size_huge_security_token [SIZE]: |s| swap(s, "X-Amz-Security-Token: IQoJ", &format!("X-Amz-Security-Token: {}IQoJ", "A".repeat(20_000))) => MalformedRequest;
    size_huge_signed_headers_list [SIZE]: |s| signed(s, &format!("{SIGNED};{}", vec!["x-zz"; 4_000].join(";"))) => MalformedRequest;
    size_huge_body [SIZE]: |s| body(s, &"A".repeat(1 << 20)) => MalformedRequest;
    size_megabytes_without_head_end [SIZE]: |_| format!("POST / HTTP/1.1\r\nX-Pad: {}", "a".repeat(8 << 20)) => MalformedRequest;
    size_empty_input [SIZE]: |_| String::new() => MalformedRequest;

    // Dates: stale and future requests, and dates that do not parse.
    date_stale_901s [DATE]: |s| date(s, "20261128T144459Z") => RequestExpired;
    date_future_901s [DATE]: |s| date(s, "20261128T151501Z") => RequestExpired;
    date_replayed_next_day [DATE]: |s| date_and_scope(s, "20261127T150000Z") => RequestExpired;
    date_epoch [DATE]: |s| date_and_scope(s, "19700101T000000Z") => RequestExpired;
    date_year_9999 [DATE]: |s| date_and_scope(s, "99991231T235959Z") => RequestExpired;
    date_february_30 [DATE]: |s| date_and_scope(s, "20260230T150000Z") => MalformedRequest;
    date_hour_25 [DATE]: |s| date(s, "20261128T250000Z") => MalformedRequest;
    date_without_zone [DATE]: |s| date(s, "20261128T150000") => MalformedRequest;
    date_iso_8601_extended [DATE]: |s| date(s, "2026-11-28T15:00:00Z") => MalformedRequest;
    date_http_date_header_instead [DATE]: |s| add(signed(remove(s, "X-Amz-Date"), "accept;content-length;content-type;date;host;x-amz-security-token;x-teleport-challenge"), "Date: Sat, 28 Nov 2026 15:00:00 GMT") => MalformedRequest;
    date_scope_day_differs [DATE]: |s| swap(s, "/20261128/us-east-1/", "/20261129/us-east-1/") => MalformedRequest;

    // The challenge binds the request to this join attempt.
    challenge_missing [CHALLENGE]: |s| remove(s, "X-Teleport-Challenge") => ChallengeMismatch;
    challenge_from_another_attempt [CHALLENGE]: |s| swap(s, "X-Teleport-Challenge: kXr0", "X-Teleport-Challenge: AAAA") => ChallengeMismatch;
    challenge_prefix [CHALLENGE]: |s| swap(s, "F5gA7iK9sLu\r\n", "F5gA7iK9sL\r\n") => ChallengeMismatch;
    challenge_extended [CHALLENGE]: |s| swap(s, "F5gA7iK9sLu\r\n", "F5gA7iK9sLuX\r\n") => ChallengeMismatch;
    challenge_case_changed [CHALLENGE]: |s| swap(s, "X-Teleport-Challenge: kXr0", "X-Teleport-Challenge: KXr0") => ChallengeMismatch;
    challenge_empty [CHALLENGE]: |s| { let i = s.find("X-Teleport-Challenge: ").unwrap() + 22; let j = i + s[i..].find("\r\n").unwrap(); format!("{}{}", &s[..i], &s[j..]) } => ChallengeMismatch;
    challenge_in_query [CHALLENGE]: |s| swap(remove(s, "X-Teleport-Challenge"), "POST / ", "POST /?x-teleport-challenge=kXr0Vg7oQ3lT2x0yVv9pJ6mN4bH8cD1eF5gA7iK9sLu ") => MalformedRequest;
    challenge_twice [CHALLENGE]: |s| add(s, "X-Teleport-Challenge: kXr0Vg7oQ3lT2x0yVv9pJ6mN4bH8cD1eF5gA7iK9sLu") => ChallengeMismatch;
}

#[tokio::test]
async fn the_untouched_request_is_allowed() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let verdict = v.verify("iam-token", &crate::challenge(), teleport_request().as_bytes(), crate::signed_at()).await;
    assert_eq!(verdict.unwrap().identity().arn().as_str(), crate::IDENTITY_ARN);
    assert_eq!(sts.requests(), 1);
}

#[tokio::test]
async fn every_hostile_request_is_refused_locally() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let mut report = Report::default();
    for case in CASES {
        let raw = (case.mutate)(teleport_request());
        assert_ne!(raw, teleport_request(), "{} must change the request", case.name);
        let result = expect_refusal(&sts, &v, "iam-token", raw.as_bytes(), case.want, Where::Local).await;
        report.record(case.name, case.source, result);
    }
    report.finish(100);
    assert_eq!(sts.requests(), 0, "no hostile request may reach STS");
}

/// Unsigned headers an attacker adds are not refused (agents and proxies add some), but they
/// never reach STS: only the signed headers and Authorization are sent.
#[tokio::test]
async fn unsigned_hostile_headers_are_dropped_not_forwarded() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let raw = add(
        teleport_request(),
        "X-Forwarded-Host: evil.example\r\nX-Forwarded-For: 169.254.169.254\r\nForwarded: host=evil.example\r\n\
         X-Amz-Target: AWSSecurityTokenServiceV20110615.AssumeRole\r\nX-HTTP-Method-Override: GET\r\nCookie: a=b",
    );
    let verdict = v.verify("iam-token", &crate::challenge(), raw.as_bytes(), crate::signed_at()).await;
    assert!(verdict.is_ok(), "{verdict:?}");
    let sent = sts.last_request().to_ascii_lowercase();
    for name in [
        "x-forwarded-host",
        "x-forwarded-for",
        "forwarded:",
        "x-amz-target",
        "x-http-method-override",
        "cookie",
        "user-agent",
    ] {
        assert!(!sent.contains(name), "{name} was forwarded:\n{sent}");
    }
    assert!(sent.contains("\r\nhost: sts.us-east-1.amazonaws.com\r\n"), "{sent}");
    assert!(sts.last_request().ends_with("\r\n\r\nAction=GetCallerIdentity&Version=2011-06-15"), "{sent}");
}
