//! Every recorded STS response under `tests/vectors/sts/`, one line each: status, content type,
//! and the identity or refusal kind it must give. A test also checks that no file is left out.

use std::collections::BTreeSet;

use iam_join::{ErrorKind, parse_sts_response};

use crate::common::{read_vectors, vectors};

const XML: &str = "text/xml";
const JSON: &str = "application/json";

enum Want {
    Arn(&'static str),
    Kind(ErrorKind, &'static str),
}
use Want::*;

/// (file, status, content type, expected, expected STS error code for refusals)
const CASES: &[(&str, u16, &str, Want)] = &[
    ("ok_user.xml", 200, XML, Arn("arn:aws:iam::123456789012:user/alice")),
    // A role ARN: GetCallerIdentity reports a role session as assumed-role, never the role.
    ("bad_role_arn.xml", 200, "text/xml;charset=UTF-8", Kind(ErrorKind::StsResponseInvalid, "")),
    (
        "ok_assumed_role.xml",
        200,
        XML,
        Arn("arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-0123456789abcdef0"),
    ),
    ("ok_federated_user.xml", 200, XML, Arn("arn:aws:sts::123456789012:federated-user/bob")),
    ("ok_root.xml", 200, XML, Arn("arn:aws:iam::123456789012:root")),
    ("ok_no_metadata_with_decl.xml", 200, XML, Arn("arn:aws:iam::123456789012:user/alice")),
    (
        "ok_assumed_role.json",
        200,
        JSON,
        Arn("arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-0123456789abcdef0"),
    ),
    ("err_signature_does_not_match.xml", 403, XML, Kind(ErrorKind::SignatureRejected, "SignatureDoesNotMatch")),
    ("err_invalid_client_token_id.xml", 403, XML, Kind(ErrorKind::SignatureRejected, "InvalidClientTokenId")),
    ("err_expired_token.xml", 400, XML, Kind(ErrorKind::SignatureRejected, "ExpiredToken")),
    ("err_incomplete_signature.xml", 400, XML, Kind(ErrorKind::SignatureRejected, "IncompleteSignature")),
    (
        "err_missing_authentication_token.xml",
        403,
        XML,
        Kind(ErrorKind::SignatureRejected, "MissingAuthenticationToken"),
    ),
    ("err_access_denied.xml", 403, XML, Kind(ErrorKind::SignatureRejected, "AccessDenied")),
    ("err_request_expired.xml", 400, XML, Kind(ErrorKind::SignatureRejected, "RequestExpired")),
    ("err_throttling.xml", 400, XML, Kind(ErrorKind::StsUnavailable, "Throttling")),
    ("err_internal_failure.xml", 500, XML, Kind(ErrorKind::StsUnavailable, "InternalFailure")),
    (
        "err_moto_errors_wrapper.xml",
        403,
        "text/xml; charset=utf-8",
        Kind(ErrorKind::SignatureRejected, "InvalidClientTokenId"),
    ),
    ("err_signature.json", 403, JSON, Kind(ErrorKind::SignatureRejected, "SignatureDoesNotMatch")),
    ("err_html_500.html", 500, "text/html", Kind(ErrorKind::StsUnavailable, "")),
    ("bad_other_action_root.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_identity_inside_echo.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_two_results.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_two_arns.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_doctype_entity.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_undeclared_entity.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_wrong_namespace.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_no_namespace.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_child_other_namespace.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_truncated.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_json_under_text_xml.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_account_arn_mismatch.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_empty_arn.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_empty_user_id.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_account_not_digits.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_s3_arn.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_comment.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_processing_instruction.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_cdata.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_trailing_content.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_trailing_text.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_extra_element.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_attribute.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_deep_nesting.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_mixed_content.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_100kb.xml", 200, XML, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_json_extra_field.json", 200, JSON, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_json_duplicate_arn.json", 200, JSON, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_json_trailing.json", 200, JSON, Kind(ErrorKind::StsResponseInvalid, "")),
    ("bad_json_two_documents_root.json", 200, JSON, Kind(ErrorKind::StsResponseInvalid, "")),
];

#[test]
fn every_recorded_response_gives_what_it_should() {
    for (file, status, content_type, want) in CASES {
        let body = std::fs::read(vectors("sts").join(file)).unwrap();
        let got = parse_sts_response(*status, Some(content_type), &body);
        match (want, got) {
            (Arn(arn), Ok(answer)) => {
                assert_eq!(answer.identity.arn().as_str(), *arn, "{file}");
                assert_eq!(answer.identity.account(), answer.identity.arn().account(), "{file}");
            }
            (Kind(kind, code), Err(e)) => {
                assert_eq!(e.kind(), *kind, "{file}: {e}");
                if !code.is_empty() {
                    let sts = e.sts_error().unwrap_or_else(|| panic!("{file}: no STS detail"));
                    assert_eq!(sts.code, *code, "{file}");
                    assert_eq!(sts.status, *status, "{file}");
                    assert!(sts.request_id.is_some(), "{file}");
                    assert!(!sts.message.is_empty(), "{file}");
                    // The message stays out of Display (it is STS's text, for the server log).
                    assert!(!e.to_string().contains(&sts.message), "{file}: {e}");
                }
            }
            (Arn(_), Err(e)) => panic!("{file}: refused: {e}"),
            (Kind(kind, _), Ok(a)) => panic!("{file}: accepted {:?}, wanted {kind}", a.identity),
        }
    }
}

#[test]
fn no_vector_is_left_out() {
    let on_disk: BTreeSet<String> = read_vectors("sts").into_iter().map(|(n, _)| n).collect();
    let listed: BTreeSet<String> = CASES.iter().map(|c| c.0.to_owned()).collect();
    assert_eq!(on_disk, listed);
}

#[test]
fn retryability_follows_the_kind() {
    let throttled =
        parse_sts_response(400, Some(XML), &std::fs::read(vectors("sts/err_throttling.xml")).unwrap()).unwrap_err();
    assert!(throttled.is_retryable());
    let refused =
        parse_sts_response(403, Some(XML), &std::fs::read(vectors("sts/err_signature_does_not_match.xml")).unwrap())
            .unwrap_err();
    assert!(!refused.is_retryable());
    let redirect = parse_sts_response(302, None, b"").unwrap_err();
    assert_eq!(redirect.kind(), ErrorKind::StsUnavailable);
    assert!(!redirect.is_retryable());
    assert!(redirect.to_string().contains("never followed"));
    let too_big = parse_sts_response(500, Some(XML), &vec![b' '; 70_000]).unwrap_err();
    assert_eq!(too_big.kind(), ErrorKind::StsUnavailable);
}

#[test]
fn wrong_content_type_is_refused() {
    let body = std::fs::read(vectors("sts/ok_user.xml")).unwrap();
    for ct in [None, Some("text/html"), Some("application/octet-stream")] {
        assert_eq!(parse_sts_response(200, ct, &body).unwrap_err().kind(), ErrorKind::StsResponseInvalid);
    }
    let json = std::fs::read(vectors("sts/ok_assumed_role.json")).unwrap();
    assert_eq!(parse_sts_response(200, Some(XML), &json).unwrap_err().kind(), ErrorKind::StsResponseInvalid);
}
