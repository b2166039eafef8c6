//! Hostile forwarded requests. Each is a mutation of the byte-exact Teleport request; all must
//! be refused before anything is sent.

use iam_join::ErrorKind::*;

use crate::{AUTHENTICATOR, FakeSts, Report, Where, expect_refusal, teleport_request};

const VAULT: &str = "Vault CVE-2020-16250 (request not rebuilt, other action or service)";
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

const STREAM: &str = "streaming, chunked or encoded payloads (SigV4 x-amz-content-sha256, aws-chunked)";
/// The hex SHA-256 of BODY, the only payload hash a GetCallerIdentity request may declare.
pub(crate) const BODY_SHA256: &str = "ab821ae955788b0e33ebd34c208442ccfc2d406e2edc5e7a39bd6458fbb4f843";
const SIGNED_WITH_SHA256: &str =
    "accept;content-length;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-teleport-challenge";

/// Adds `X-Amz-Content-Sha256: value` and signs it.
fn payload_hash(s: String, value: &str) -> String {
    signed(add(s, &format!("X-Amz-Content-Sha256: {value}")), SIGNED_WITH_SHA256)
}

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

/// Replaces the body and keeps `Content-Length: 43`, so that the framing checks pass and only
/// the body check can refuse: the body must be exactly the fixed 43 bytes with nothing after.
fn body(s: String, new: &str) -> String {
    swap(s, BODY, new)
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

mutations! {
    // Vault CVE-2020-16250: Vault forwarded what the client sent, so a signed request to another
    // action or service, with an answer the client could shape, passed as an identity.
    vault_action_in_query [VAULT]: |s| swap(s, "POST / ", "POST /?Action=AssumeRoleWithWebIdentity&Version=2011-06-15 ") => MalformedRequest, "request target is not exactly \"/\"";
    vault_get_with_query [VAULT]: |s| swap(s, "POST / ", "GET /?Action=GetCallerIdentity&Version=2011-06-15 ") => MalformedRequest, "request method is not POST";
    vault_body_second_action [VAULT]: |s| body(s, "Action=GetCallerIdentity&Version=2011-06-15&Action=ListUsers") => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    vault_body_other_action [VAULT]: |s| body(s, "Action=GetAccessKeyInfo&Version=2011-06-15") => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    vault_body_percent_encoded_action [VAULT]: |s| body(s, "Action=GetCaller%49dentity&Version=2011-06-15") => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    vault_body_trailing_separator [VAULT]: |s| body(s, "Action=GetCallerIdentity&Version=2011-06-15&") => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    vault_body_other_version [VAULT]: |s| body(s, "Action=GetCallerIdentity&Version=2010-05-08") => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    vault_path_other_service [VAULT]: |s| swap(s, "POST / ", "POST /iam/ ") => MalformedRequest, "request target is not exactly \"/\"";
    vault_path_traversal [VAULT]: |s| swap(s, "POST / ", "POST /../ ") => MalformedRequest, "request target is not exactly \"/\"";
    vault_host_iam [VAULT]: |s| host(s, "iam.amazonaws.com") => UntrustedEndpoint, "signed host \"iam.amazonaws.com\" is not an AWS STS endpoint";
    vault_host_s3 [VAULT]: |s| host(s, "s3.amazonaws.com") => UntrustedEndpoint, "signed host \"s3.amazonaws.com\" is not an AWS STS endpoint";
    vault_scope_service_iam [VAULT]: |s| swap(s, "/us-east-1/sts/aws4_request", "/us-east-1/iam/aws4_request") => MalformedRequest, "Credential scope service is \"iam\", not \"sts\"";
    vault_content_type_json [VAULT]: |s| swap(s, "application/x-www-form-urlencoded; charset=utf-8", "application/x-amz-json-1.1") => MalformedRequest, "Content-Type is not application/x-www-form-urlencoded";

    // aws-iam-authenticator CVE-2022-2385: the validator read one spelling of a parameter while
    // AWS honoured another.
    authenticator_lowercase_action_duplicate [AUTHENTICATOR]: |s| body(s, "Action=GetCallerIdentity&Version=2011-06-15&action=AssumeRole") => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    authenticator_lowercase_action_only [AUTHENTICATOR]: |s| body(s, "action=GetCallerIdentity&Version=2011-06-15") => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    authenticator_signedheaders_query_two_cases [AUTHENTICATOR]: |s| swap(s, "POST / ", "POST /?X-Amz-SignedHeaders=host&x-amz-signedheaders=host%3Bx-teleport-challenge ") => MalformedRequest, "request target is not exactly \"/\"";
    authenticator_presigned_query [AUTHENTICATOR]: |s| swap(s, "POST / ", "POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEVIL%2F20261128%2Fus-east-1%2Fsts%2Faws4_request&X-Amz-SignedHeaders=host&X-Amz-Signature=00 ") => MalformedRequest, "request target is not exactly \"/\"";
    authenticator_signedheaders_component_lowercase [AUTHENTICATOR]: |s| swap(s, "SignedHeaders=", "signedheaders=") => MalformedRequest, "Authorization has a parameter other than Credential, SignedHeaders, Signature";
    authenticator_signedheaders_twice_differing_case [AUTHENTICATOR]: |s| swap(s, ", Signature=", ", signedHeaders=host, Signature=") => MalformedRequest, "Authorization has a parameter other than Credential, SignedHeaders, Signature";
    authenticator_credential_twice [AUTHENTICATOR]: |s| swap(s, ", SignedHeaders=", ", Credential=AKIAEVILEXAMPLE00000/20261128/us-east-1/sts/aws4_request, SignedHeaders=") => MalformedRequest, "Authorization has Credential more than once";
    authenticator_signature_twice [AUTHENTICATOR]: |s| swap(s, "\r\nContent-Type:", &format!(", Signature={}\r\nContent-Type:", "0".repeat(64))) => MalformedRequest, "Authorization has Signature more than once";
    authenticator_challenge_header_lowercase_duplicate [AUTHENTICATOR]: |s| add(s, "x-teleport-challenge: attacker-chosen") => ChallengeMismatch, "request has more than one x-teleport-challenge header";
    authenticator_host_lowercase_duplicate [AUTHENTICATOR]: |s| add(s, "host: evil.example") => MalformedRequest, "request has more than one Host header";
    authenticator_date_lowercase_duplicate [AUTHENTICATOR]: |s| add(s, "x-amz-date: 20261128T150000Z") => MalformedRequest, "request has more than one X-Amz-Date header";
    authenticator_content_length_lowercase_duplicate [AUTHENTICATOR]: |s| add(s, "content-length: 43") => MalformedRequest, "request has more than one Content-Length header";

    // Host and X-Forwarded-Host replays: make the server send the signed request (and trust the
    // answer) somewhere else.
    host_attacker [HOST_REPLAY]: |s| host(s, "attacker.example") => UntrustedEndpoint, "signed host \"attacker.example\" is not an AWS STS endpoint";
    host_sts_suffix_of_attacker [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com.evil.example") => UntrustedEndpoint, "signed host \"sts.us-east-1.amazonaws.com.evil.example\" is not an AWS STS endpoint";
    host_attacker_prefix [HOST_REPLAY]: |s| host(s, "evil-sts.us-east-1.amazonaws.com") => UntrustedEndpoint, "signed host \"evil-sts.us-east-1.amazonaws.com\" is not an AWS STS endpoint";
    host_userinfo [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com@evil.example") => UntrustedEndpoint, "signed host \"sts.us-east-1.amazonaws.com@evil.example\" is not an AWS STS endpoint";
    host_fragment [HOST_REPLAY]: |s| host(s, "evil.example#sts.us-east-1.amazonaws.com") => UntrustedEndpoint, "signed host \"evil.example#sts.us-east-1.amazonaws.com\" is not an AWS STS endpoint";
    host_with_path [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com/evil") => UntrustedEndpoint, "signed host \"sts.us-east-1.amazonaws.com/evil\" is not an AWS STS endpoint";
    host_default_port [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com:443") => UntrustedEndpoint, "signed host \"sts.us-east-1.amazonaws.com:443\" is not an AWS STS endpoint";
    host_other_port [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com:8443") => UntrustedEndpoint, "signed host \"sts.us-east-1.amazonaws.com:8443\" is not an AWS STS endpoint";
    host_trailing_dot [HOST_REPLAY]: |s| host(s, "sts.us-east-1.amazonaws.com.") => UntrustedEndpoint, "signed host \"sts.us-east-1.amazonaws.com.\" is not an AWS STS endpoint";
    host_uppercase [HOST_REPLAY]: |s| host(s, "STS.US-EAST-1.AMAZONAWS.COM") => UntrustedEndpoint, "signed host \"STS.US-EAST-1.AMAZONAWS.COM\" is not an AWS STS endpoint";
    host_punycode_lookalike [HOST_REPLAY]: |s| host(s, "xn--st-zcc.us-east-1.amazonaws.com") => UntrustedEndpoint, "signed host \"xn--st-zcc.us-east-1.amazonaws.com\" is not an AWS STS endpoint";
    host_cyrillic_homoglyph [HOST_REPLAY]: |s| host(s, "\u{455}ts.us-east-1.amazonaws.com") => MalformedRequest, "header Host has a control or non-ASCII character";
    host_vpc_endpoint_not_configured [HOST_REPLAY]: |s| host(s, "vpce-0123456789abcdef0-abcdefgh.sts.us-east-1.vpce.amazonaws.com") => UntrustedEndpoint, "signed host \"vpce-0123456789abcdef0-abcdefgh.sts.us-east-1.vpce.amazonaws.com\" is not an AWS STS endpoint";
    host_empty [HOST_REPLAY]: |s| host(s, "") => UntrustedEndpoint, "signed host \"\" is not an AWS STS endpoint";
    host_twice_second_attacker [HOST_REPLAY]: |s| add(s, "Host: evil.example") => MalformedRequest, "request has more than one Host header";
    x_forwarded_host_signed [HOST_REPLAY]: |s| add(signed(s, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-forwarded-host;x-teleport-challenge"), "X-Forwarded-Host: evil.example") => MalformedRequest, "x-forwarded-host must not be signed: it is a hop-by-hop or proxy header";
    forwarded_signed [HOST_REPLAY]: |s| add(signed(s, "accept;content-length;content-type;forwarded;host;x-amz-date;x-amz-security-token;x-teleport-challenge"), "Forwarded: host=evil.example") => MalformedRequest, "forwarded must not be signed: it is a hop-by-hop or proxy header";
    absolute_form_attacker [HOST_REPLAY]: |s| swap(s, "POST / ", "POST https://evil.example/ ") => MalformedRequest, "request target is not exactly \"/\"";
    absolute_form_sts [HOST_REPLAY]: |s| swap(s, "POST / ", "POST https://sts.us-east-1.amazonaws.com/ ") => MalformedRequest, "request target is not exactly \"/\"";
    authority_form [HOST_REPLAY]: |s| swap(s, "POST / ", "POST evil.example:443 ") => MalformedRequest, "request target is not exactly \"/\"";
    asterisk_form [HOST_REPLAY]: |s| swap(s, "POST / ", "POST * ") => MalformedRequest, "request target is not exactly \"/\"";

    ssrf_instance_metadata [SSRF]: |s| host(s, "169.254.169.254") => UntrustedEndpoint, "signed host \"169.254.169.254\" is not an AWS STS endpoint";
    ssrf_ipv6_metadata [SSRF]: |s| host(s, "[fd00:ec2::254]") => UntrustedEndpoint, "signed host \"[fd00:ec2::254]\" is not an AWS STS endpoint";
    ssrf_loopback_name [SSRF]: |s| host(s, "localhost") => UntrustedEndpoint, "signed host \"localhost\" is not an AWS STS endpoint";
    ssrf_loopback_ipv4 [SSRF]: |s| host(s, "127.0.0.1:6443") => UntrustedEndpoint, "signed host \"127.0.0.1:6443\" is not an AWS STS endpoint";
    ssrf_decimal_ip [SSRF]: |s| host(s, "2852039166") => UntrustedEndpoint, "signed host \"2852039166\" is not an AWS STS endpoint";

    // Region strings that end up in a host name.
    region_query_in_scope [REGION]: |s| scope_region(s, "evil.org?us-east-1") => MalformedRequest, "Credential scope region is not a region name";
    region_query_in_host [REGION]: |s| host(s, "sts.evil.org?us-east-1.amazonaws.com") => UntrustedEndpoint, "signed host \"sts.evil.org?us-east-1.amazonaws.com\" is not an AWS STS endpoint";
    region_query_in_host_and_scope [REGION]: |s| scope_region(host(s, "sts.evil.org?us-east-1.amazonaws.com"), "evil.org?us-east-1") => MalformedRequest, "Credential scope region is not a region name";
    region_fragment_in_host [REGION]: |s| host(s, "sts.evil.org#us-east-1.amazonaws.com") => UntrustedEndpoint, "signed host \"sts.evil.org#us-east-1.amazonaws.com\" is not an AWS STS endpoint";
    region_slash_in_scope [REGION]: |s| scope_region(s, "us-east-1/../evil.org") => MalformedRequest, "Credential is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request";
    region_dotted_in_scope [REGION]: |s| scope_region(s, "us-east-1.evil.org") => MalformedRequest, "Credential scope region is not a region name";
    region_unknown_host [REGION]: |s| scope_region(host(s, "sts.xx-evil-1.amazonaws.com"), "xx-evil-1") => UntrustedEndpoint, "signed host \"sts.xx-evil-1.amazonaws.com\" is not an AWS STS endpoint";
    region_other_partition_scope [REGION]: |s| scope_region(s, "cn-north-1") => MalformedRequest, "request is signed for region cn-north-1 but sts.us-east-1.amazonaws.com signs as us-east-1";

    // Headers the server relies on must be signed, or an attacker could change them.
    omit_host [OMIT]: |s| signed(s, "accept;content-length;content-type;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "host is not among the signed headers";
    omit_date [OMIT]: |s| signed(s, "accept;content-length;content-type;host;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "x-amz-date is not among the signed headers";
    omit_content_type [OMIT]: |s| signed(s, "accept;content-length;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "content-type is not among the signed headers";
    omit_challenge [OMIT]: |s| signed(s, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token") => ChallengeMismatch, "x-teleport-challenge is not among the signed headers";
    omit_everything_but_host [OMIT]: |s| signed(s, "host") => MalformedRequest, "x-amz-date is not among the signed headers";
    signed_headers_empty [OMIT]: |s| signed(s, "") => MalformedRequest, "SignedHeaders holds an empty or non-lowercase header name";
    signed_headers_uppercase [OMIT]: |s| signed(s, "accept;content-length;content-type;Host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "SignedHeaders holds an empty or non-lowercase header name";
    signed_headers_repeated_entry [OMIT]: |s| signed(s, "accept;content-length;content-type;host;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "SignedHeaders is not sorted and unique";
    signed_header_absent [OMIT]: |s| signed(s, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-evil;x-teleport-challenge") => MalformedRequest, "request has no x-evil header";
    signed_authorization_itself [OMIT]: |s| signed(s, "accept;authorization;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "authorization cannot be among the signed headers";
    signed_headers_trailing_separator [OMIT]: |s| signed(s, "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge;") => MalformedRequest, "SignedHeaders holds an empty or non-lowercase header name";

    // Authorization duplicated, split or not SigV4.
    authorization_twice [AUTHZ]: |s| add(s, "Authorization: AWS4-HMAC-SHA256 Credential=AKIAEVILEXAMPLE00000/20261128/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=00") => MalformedRequest, "request has more than one Authorization header";
    authorization_two_signed_headers_components [AUTHZ]: |s| swap(s, ", Signature=", ", SignedHeaders=host;x-amz-date, Signature=") => MalformedRequest, "Authorization has SignedHeaders more than once";
    authorization_split_over_two_headers [AUTHZ]: |s| swap(s, ", SignedHeaders=", "\r\nAuthorization: SignedHeaders=") => MalformedRequest, "request has more than one Authorization header";
    authorization_obs_fold [AUTHZ]: |s| swap(s, ", SignedHeaders=", ",\r\n SignedHeaders=") => MalformedRequest, "request head is not valid HTTP/1.1: invalid header name";
    authorization_missing [AUTHZ]: |s| remove(s, "Authorization") => MalformedRequest, "request has no Authorization header";
    authorization_scheme_lowercase [AUTHZ]: |s| swap(s, "AWS4-HMAC-SHA256 Credential", "aws4-hmac-sha256 Credential") => MalformedRequest, "Authorization is not AWS4-HMAC-SHA256 followed by its parameters";
    authorization_sigv4a [AUTHZ]: |s| swap(s, "AWS4-HMAC-SHA256 Credential", "AWS4-ECDSA-P256-SHA256 Credential") => MalformedRequest, "Authorization is not AWS4-HMAC-SHA256 followed by its parameters";
    authorization_sigv2 [AUTHZ]: |s| { let i = s.find("Authorization: ").unwrap() + 15; let j = i + s[i..].find("\r\n").unwrap(); format!("{}AWS ASIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg={}", &s[..i], &s[j..]) } => MalformedRequest, "Authorization is not AWS4-HMAC-SHA256 followed by its parameters";
    authorization_bearer [AUTHZ]: |s| { let i = s.find("Authorization: ").unwrap() + 15; let j = i + s[i..].find("\r\n").unwrap(); format!("{}Bearer eyJhbGciOiJub25lIn0.e30.{}", &s[..i], &s[j..]) } => MalformedRequest, "Authorization is not AWS4-HMAC-SHA256 followed by its parameters";
    authorization_no_signature [AUTHZ]: |s| { let i = s.find(", Signature=").unwrap(); let j = i + s[i..].find("\r\n").unwrap(); format!("{}{}", &s[..i], &s[j..]) } => MalformedRequest, "Authorization has no Signature";
    authorization_signature_not_hex [AUTHZ]: |s| swap(s, "Signature=4f0a2b6d0c1e3f5a", "Signature=zz0a2b6d0c1e3f5a") => MalformedRequest, "Authorization Signature is not 64 lowercase hex digits";
    authorization_signature_short [AUTHZ]: |s| swap(s, "Signature=4f0a2b6d0c1e3f5a", "Signature=4f0a") => MalformedRequest, "Authorization Signature is not 64 lowercase hex digits";
    authorization_unknown_component [AUTHZ]: |s| swap(s, ", Signature=", ", Evil=1, Signature=") => MalformedRequest, "Authorization has a parameter other than Credential, SignedHeaders, Signature";
    authorization_scope_terminator [AUTHZ]: |s| swap(s, "/sts/aws4_request", "/sts/aws4_requestx") => MalformedRequest, "Credential scope does not end in aws4_request";
    authorization_empty [AUTHZ]: |s| { let i = s.find("Authorization: ").unwrap() + 15; let j = i + s[i..].find("\r\n").unwrap(); format!("{}{}", &s[..i], &s[j..]) } => MalformedRequest, "Authorization is not AWS4-HMAC-SHA256 followed by its parameters";

    // Smuggling: a second request, or a different body, hidden from one parser but not another.
    smuggle_te_chunked [SMUGGLE]: |s| add(s, "Transfer-Encoding: chunked") => MalformedRequest, "request has Transfer-Encoding; only a Content-Length body is accepted";
    smuggle_te_and_cl_chunked_body [SMUGGLE]: |s| swap(add(s, "Transfer-Encoding: chunked"), "\r\n\r\nAction", "\r\n\r\n0\r\n\r\nAction") => MalformedRequest, "request has Transfer-Encoding; only a Content-Length body is accepted";
    smuggle_te_space_before_colon [SMUGGLE]: |s| add(s, "Transfer-Encoding : chunked") => MalformedRequest, "request head is not valid HTTP/1.1: invalid header name";
    smuggle_te_obfuscated_value [SMUGGLE]: |s| add(s, "Transfer-Encoding: xchunked") => MalformedRequest, "request has Transfer-Encoding; only a Content-Length body is accepted";
    smuggle_te_tab_value [SMUGGLE]: |s| add(s, "Transfer-Encoding:\tchunked") => MalformedRequest, "request has Transfer-Encoding; only a Content-Length body is accepted";
    smuggle_te_signed [SMUGGLE]: |s| add(signed(s, "accept;content-length;content-type;host;transfer-encoding;x-amz-date;x-amz-security-token;x-teleport-challenge"), "Transfer-Encoding: identity") => MalformedRequest, "request has Transfer-Encoding; only a Content-Length body is accepted";
    smuggle_cl_conflicting [SMUGGLE]: |s| add(s, "Content-Length: 0") => MalformedRequest, "request has more than one Content-Length header";
    smuggle_cl_list [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: 43, 43") => MalformedRequest, "Content-Length is not the length of the GetCallerIdentity body";
    smuggle_cl_plus_sign [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: +43") => MalformedRequest, "Content-Length is not the length of the GetCallerIdentity body";
    smuggle_cl_negative [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: -43") => MalformedRequest, "Content-Length is not the length of the GetCallerIdentity body";
    smuggle_cl_overflow [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: 99999999999999999999999") => MalformedRequest, "Content-Length is not the length of the GetCallerIdentity body";
    smuggle_cl_zero_with_body [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: 0") => MalformedRequest, "Content-Length is not the length of the GetCallerIdentity body";
    smuggle_pipelined_request [SMUGGLE]: |s| s + "POST / HTTP/1.1\r\nHost: sts.us-east-1.amazonaws.com\r\nContent-Length: 0\r\n\r\n" => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    smuggle_body_longer_than_cl [SMUGGLE]: |s| s + "&Action=AssumeRole" => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    smuggle_body_shorter_than_cl [SMUGGLE]: |s| swap(s, "Content-Length: 43", "Content-Length: 60") => MalformedRequest, "Content-Length is not the length of the GetCallerIdentity body";
    smuggle_http2_preface [SMUGGLE]: |_| "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned() => MalformedRequest, "request head is not valid HTTP/1.1: invalid HTTP version";
    smuggle_http_1_0 [SMUGGLE]: |s| swap(s, "HTTP/1.1\r\n", "HTTP/1.0\r\n") => MalformedRequest, "request is not HTTP/1.1";
    smuggle_expect_signed [SMUGGLE]: |s| add(signed(s, "accept;content-length;content-type;expect;host;x-amz-date;x-amz-security-token;x-teleport-challenge"), "Expect: 100-continue") => MalformedRequest, "expect must not be signed: it is a hop-by-hop or proxy header";
    smuggle_upgrade_signed [SMUGGLE]: |s| add(signed(s, "accept;content-length;content-type;host;upgrade;x-amz-date;x-amz-security-token;x-teleport-challenge"), "Upgrade: h2c") => MalformedRequest, "upgrade must not be signed: it is a hop-by-hop or proxy header";

    // Line-ending and control-character injection.
    crlf_bare_lf_line [CRLF]: |s| swap(s, "User-Agent: Go-http-client/1.1\r\n", "User-Agent: Go-http-client/1.1\n") => MalformedRequest, "request head has a bare CR or LF; lines must end in CRLF";
    crlf_all_bare_lf [CRLF]: |s| s.replace("\r\n", "\n") => MalformedRequest, "request head has a bare CR or LF; lines must end in CRLF";
    crlf_bare_cr_in_value [CRLF]: |s| swap(s, "Go-http-client/1.1", "Go-http\rHost: evil.example") => MalformedRequest, "request head is not valid HTTP/1.1: invalid header value";
    crlf_injected_host_line [CRLF]: |s| swap(s, "Go-http-client/1.1", "x\r\nHost: evil.example") => MalformedRequest, "request has more than one Host header";
    crlf_injected_challenge_line [CRLF]: |s| swap(s, "Go-http-client/1.1", "x\r\nX-Teleport-Challenge: attacker-chosen") => ChallengeMismatch, "request has more than one x-teleport-challenge header";
    crlf_nul_in_value [CRLF]: |s| swap(s, "Go-http-client/1.1", "Go-http-client\0/1.1") => MalformedRequest, "request head is not valid HTTP/1.1: invalid header value";
    crlf_obs_fold_line [CRLF]: |s| swap(s, "User-Agent: Go-http-client/1.1\r\n", "User-Agent: Go-http-client/1.1\r\n continued\r\n") => MalformedRequest, "request head is not valid HTTP/1.1: invalid header name";
    crlf_space_before_colon [CRLF]: |s| add(s, "X-Amz-Date : 20261128T150000Z") => MalformedRequest, "request head is not valid HTTP/1.1: invalid header name";
    crlf_request_line_double_space [CRLF]: |s| swap(s, "POST / HTTP/1.1", "POST  / HTTP/1.1") => MalformedRequest, "request head is not valid HTTP/1.1: invalid token";
    crlf_request_line_bare_lf [CRLF]: |s| swap(s, "POST / HTTP/1.1\r\n", "POST / HTTP/1.1\n") => MalformedRequest, "request head has a bare CR or LF; lines must end in CRLF";
    crlf_header_without_colon [CRLF]: |s| add(s, "X-Evil") => MalformedRequest, "request head is not valid HTTP/1.1: invalid header name";
    crlf_no_blank_line [CRLF]: |s| s.replacen("\r\n\r\n", "\r\n", 1) => MalformedRequest, "request head is not valid HTTP/1.1: invalid header name";

    // Size: refused by the named limits before any large allocation.
    size_head_over_limit [SIZE]: |s| add(s, &format!("X-Pad: {}", "a".repeat(17_000))) => MalformedRequest, "request head is larger than 16384 bytes";
    size_too_many_headers [SIZE]: |s| add(s, &"X-Pad: 1\r\n".repeat(70)) => MalformedRequest, "request has more than 64 headers";
    size_huge_security_token [SIZE]: |s| swap(s, "X-Amz-Security-Token: IQoJ", &format!("X-Amz-Security-Token: {}IQoJ", "A".repeat(20_000))) => MalformedRequest, "request head is larger than 16384 bytes";
    size_huge_signed_headers_list [SIZE]: |s| signed(s, &format!("{SIGNED};{}", vec!["x-zz"; 4_000].join(";"))) => MalformedRequest, "request head is larger than 16384 bytes";
    size_huge_body [SIZE]: |s| body(s, &"A".repeat(1 << 20)) => MalformedRequest, "body is not exactly \"Action=GetCallerIdentity&Version=2011-06-15\" (or has trailing bytes)";
    size_megabytes_without_head_end [SIZE]: |_| format!("POST / HTTP/1.1\r\nX-Pad: {}", "a".repeat(8 << 20)) => MalformedRequest, "request head is larger than 16384 bytes";
    size_empty_input [SIZE]: |_| String::new() => MalformedRequest, "request head does not end with an empty CRLF line";

    // Dates: stale and future requests, and dates that do not parse.
    date_stale_901s [DATE]: |s| date(s, "20261128T144459Z") => RequestExpired, "X-Amz-Date is 901s old, beyond the allowed 900s; the agent must sign a new request";
    date_future_901s [DATE]: |s| date(s, "20261128T151501Z") => RequestExpired, "X-Amz-Date is 901s in the future, beyond the allowed 900s; the agent must sign a new request";
    date_replayed_next_day [DATE]: |s| date_and_scope(s, "20261127T150000Z") => RequestExpired, "X-Amz-Date is 86400s old, beyond the allowed 900s; the agent must sign a new request";
    date_epoch [DATE]: |s| date_and_scope(s, "19700101T000000Z") => RequestExpired, "X-Amz-Date is 1795878000s old, beyond the allowed 900s; the agent must sign a new request";
    date_year_9999 [DATE]: |s| date_and_scope(s, "99991231T235959Z") => RequestExpired, "X-Amz-Date is 251606422799s in the future, beyond the allowed 900s; the agent must sign a new request";
    date_february_30 [DATE]: |s| date_and_scope(s, "20260230T150000Z") => MalformedRequest, "X-Amz-Date is not YYYYMMDDTHHMMSSZ";
    date_hour_25 [DATE]: |s| date(s, "20261128T250000Z") => MalformedRequest, "X-Amz-Date is not YYYYMMDDTHHMMSSZ";
    date_without_zone [DATE]: |s| date(s, "20261128T150000") => MalformedRequest, "X-Amz-Date is not YYYYMMDDTHHMMSSZ";
    date_iso_8601_extended [DATE]: |s| date(s, "2026-11-28T15:00:00Z") => MalformedRequest, "X-Amz-Date is not YYYYMMDDTHHMMSSZ";
    date_http_date_header_instead [DATE]: |s| add(signed(remove(s, "X-Amz-Date"), "accept;content-length;content-type;date;host;x-amz-security-token;x-teleport-challenge"), "Date: Sat, 28 Nov 2026 15:00:00 GMT") => MalformedRequest, "request has no X-Amz-Date header";
    date_scope_day_differs [DATE]: |s| swap(s, "/20261128/us-east-1/", "/20261129/us-east-1/") => MalformedRequest, "the Credential scope date is not the date of X-Amz-Date";

    // The challenge binds the request to this join attempt.
    challenge_missing [CHALLENGE]: |s| remove(s, "X-Teleport-Challenge") => ChallengeMismatch, "request has no x-teleport-challenge header";
    challenge_from_another_attempt [CHALLENGE]: |s| swap(s, "X-Teleport-Challenge: kXr0", "X-Teleport-Challenge: AAAA") => ChallengeMismatch, "x-teleport-challenge does not hold the challenge this server issued";
    challenge_prefix [CHALLENGE]: |s| swap(s, "F5gA7iK9sLu\r\n", "F5gA7iK9sL\r\n") => ChallengeMismatch, "x-teleport-challenge does not hold the challenge this server issued";
    challenge_extended [CHALLENGE]: |s| swap(s, "F5gA7iK9sLu\r\n", "F5gA7iK9sLuX\r\n") => ChallengeMismatch, "x-teleport-challenge does not hold the challenge this server issued";
    challenge_case_changed [CHALLENGE]: |s| swap(s, "X-Teleport-Challenge: kXr0", "X-Teleport-Challenge: KXr0") => ChallengeMismatch, "x-teleport-challenge does not hold the challenge this server issued";
    challenge_empty [CHALLENGE]: |s| { let i = s.find("X-Teleport-Challenge: ").unwrap() + 22; let j = i + s[i..].find("\r\n").unwrap(); format!("{}{}", &s[..i], &s[j..]) } => ChallengeMismatch, "x-teleport-challenge does not hold the challenge this server issued";
    challenge_in_query [CHALLENGE]: |s| swap(remove(s, "X-Teleport-Challenge"), "POST / ", "POST /?x-teleport-challenge=kXr0Vg7oQ3lT2x0yVv9pJ6mN4bH8cD1eF5gA7iK9sLu ") => MalformedRequest, "request target is not exactly \"/\"";
    content_sha256_streaming_signed [STREAM]: |s| payload_hash(s, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD") => MalformedRequest, "X-Amz-Content-Sha256 is not the SHA-256 of the GetCallerIdentity body";
    content_sha256_streaming_trailer_signed [STREAM]: |s| payload_hash(s, "STREAMING-UNSIGNED-PAYLOAD-TRAILER") => MalformedRequest, "X-Amz-Content-Sha256 is not the SHA-256 of the GetCallerIdentity body";
    content_sha256_unsigned_payload_signed [STREAM]: |s| payload_hash(s, "UNSIGNED-PAYLOAD") => MalformedRequest, "X-Amz-Content-Sha256 is not the SHA-256 of the GetCallerIdentity body";
    content_sha256_of_empty_body_signed [STREAM]: |s| payload_hash(s, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") => MalformedRequest, "X-Amz-Content-Sha256 is not the SHA-256 of the GetCallerIdentity body";
    content_sha256_uppercase_hex_signed [STREAM]: |s| payload_hash(s, &BODY_SHA256.to_ascii_uppercase()) => MalformedRequest, "X-Amz-Content-Sha256 is not the SHA-256 of the GetCallerIdentity body";
    content_sha256_streaming_unsigned [STREAM]: |s| add(s, "X-Amz-Content-Sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD") => MalformedRequest, "X-Amz-Content-Sha256 is not the SHA-256 of the GetCallerIdentity body";
    content_sha256_twice [STREAM]: |s| add(payload_hash(s, BODY_SHA256), "x-amz-content-sha256: UNSIGNED-PAYLOAD") => MalformedRequest, "request has more than one x-amz-content-sha256 header";
    content_encoding_aws_chunked_signed [STREAM]: |s| signed(add(s, "Content-Encoding: aws-chunked"), "accept;content-encoding;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "Content-Encoding is signed; the body must be sent as is";
    content_encoding_gzip_signed [STREAM]: |s| signed(add(s, "Content-Encoding: gzip"), "accept;content-encoding;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge") => MalformedRequest, "Content-Encoding is signed; the body must be sent as is";

    challenge_twice [CHALLENGE]: |s| add(s, "X-Teleport-Challenge: kXr0Vg7oQ3lT2x0yVv9pJ6mN4bH8cD1eF5gA7iK9sLu") => ChallengeMismatch, "request has more than one x-teleport-challenge header";
}

#[tokio::test]
async fn the_untouched_request_is_allowed() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let verdict = crate::verify(&v, teleport_request().as_bytes()).await;
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
        let result =
            expect_refusal(&sts, &v, "iam-token", raw.as_bytes(), (case.want, case.because), Where::Local).await;
        report.record(case.name, case.source, result);
    }
    report.finish(100);
    assert_eq!(sts.requests(), 0, "no hostile request may reach STS");
}

/// The positive controls of the payload rules: the body's own SHA-256, signed, is accepted and
/// forwarded to STS; an unsigned Content-Encoding is not forwarded, so it cannot change the body.
#[tokio::test]
async fn the_body_hash_signed_is_allowed_and_forwarded() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let raw = payload_hash(teleport_request(), BODY_SHA256);
    let verdict = crate::verify(&v, raw.as_bytes()).await;
    assert!(verdict.is_ok(), "{verdict:?}");
    assert!(sts.last_request().contains(&format!("\r\nx-amz-content-sha256: {BODY_SHA256}\r\n")));
    let raw = add(teleport_request(), "Content-Encoding: aws-chunked");
    let verdict = crate::verify(&v, raw.as_bytes()).await;
    assert!(verdict.is_ok(), "{verdict:?}");
    assert!(!sts.last_request().to_ascii_lowercase().contains("content-encoding"));
    assert_eq!(sts.requests(), 2);
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
    let verdict = crate::verify(&v, raw.as_bytes()).await;
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
