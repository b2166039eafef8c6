//! Hostile STS answers: the request is valid and reaches the (fake) STS once; what comes back
//! must never become an identity unless it is exactly one well-formed GetCallerIdentity result.

use iam_join::ErrorKind::{self, *};

use crate::{Answer, FakeSts, Report, Where, expect_refusal, identity_xml, teleport_request};

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) answer: fn() -> Answer,
    pub(crate) want: ErrorKind,
    /// Text of the refusal's detail that names the check which must stop the case.
    pub(crate) because: &'static str,
}

const VAULT: &str = "Vault CVE-2020-16250 (lenient parsing of an answer that echoes attacker text)";
const XML: &str = "XML parser attacks (XXE, entity expansion, depth, confusion)";
const RECORDED: &str = "recorded hostile answer in tests/vectors/sts";
const SHAPE: &str = "identity that is not one consistent principal";
const TRANSPORT: &str = "status or size games by a man in the middle or a broken proxy";

fn recorded(file: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/sts").join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{file}: {e}"))
}

const STRICT: &str = "STS documents one encoding (UTF-8) and one UserId shape per principal type";

/// A success answer with this account, ARN and UserId, as STS would lay it out.
fn with_user_id(account: &str, arn: &str, user_id: &str) -> Answer {
    let element = |id: &str| format!("<UserId>{id}</UserId>");
    Answer::xml(200, identity_xml(account, arn).replace(&element(&crate::user_id_for(arn)), &element(user_id)))
}

/// The positive controls of the UserId rules: each principal type with its own shape, in an
/// account the attack tokens allow whole.
pub(crate) const USER_ID_CONTROLS: &[(&str, &str)] = &[
    ("arn:aws:iam::135791357913:user/ci", "AIDAEXAMPLEUSERID0001"),
    ("arn:aws:iam::135791357913:user/path/to/ci", "AIDA4EXAMPLE2USERID"),
    // moto issues IAM users lower-case ids without AWS's prefix.
    ("arn:aws:iam::135791357913:user/moto-user", "ihy4yye316c631k3edvm"),
    ("arn:aws:sts::135791357913:assumed-role/node/i-1", "AROAEXAMPLEROLEID0001:i-1"),
    ("arn:aws:iam::135791357913:root", "135791357913"),
    ("arn:aws:sts::135791357913:federated-user/bob", "135791357913:bob"),
];

/// A good answer declared UTF-8 whose session name holds a Latin-1 byte (0xE9, `é`).
fn latin1_bytes_declared_utf8() -> Answer {
    let mut bytes = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>{}", ok_xml()).into_bytes();
    let at = bytes.windows(6).position(|w| w == b"/i-012").unwrap() + 3;
    bytes.insert(at, 0xe9);
    Answer::xml(200, bytes)
}

fn ok_xml() -> String {
    identity_xml("123456789012", crate::IDENTITY_ARN)
}

macro_rules! cases {
    ($($name:ident [$source:expr]: $answer:expr => $want:ident, $because:literal;)*) => {
        pub(crate) const CASES: &[Case] = &[$(Case {
            name: stringify!($name),
            source: $source,
            answer: $answer,
            want: $want,
            because: $because,
        }),*];
    };
}

cases! {
    // The Vault exploit: another API's answer (JSON or an error) carrying attacker-chosen text
    // that a lenient parser read as a GetCallerIdentity result.
    vault_identity_inside_json_string [VAULT]: || Answer { status: 200, content_type: "application/json", body: serde_json::json!({"Error": {"Message": ok_xml()}}).to_string().into_bytes() } => StsResponseInvalid, "STS JSON answer is not one GetCallerIdentityResponse: unknown field `Error`, expected `GetCallerIdentityResponse` at line 1 column 8";
    vault_identity_after_json_prefix [VAULT]: || Answer::xml(200, format!("{{\"x\":\"{}", ok_xml())) => StsResponseInvalid, "STS answer has text outside a value element";
    vault_identity_inside_error_message [VAULT]: || Answer::xml(400, format!("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>{}</Message></Error><RequestId>x</RequestId></ErrorResponse>", ok_xml().replace('<', "&lt;"))) => SignatureRejected, "STS refused the credentials or signature: InvalidAction (HTTP 400)";
    vault_identity_echoed_in_other_action [RECORDED]: || Answer::xml(200, recorded("bad_identity_inside_echo.xml")) => StsResponseInvalid, "STS answer is \"GetRoleResponse\", not GetCallerIdentityResponse";
    vault_other_action_root [RECORDED]: || Answer::xml(200, recorded("bad_other_action_root.xml")) => StsResponseInvalid, "STS answer is \"GetSessionTokenResponse\", not GetCallerIdentityResponse";
    vault_identity_with_trailing_document [VAULT]: || Answer::xml(200, format!("{}{}", ok_xml(), identity_xml("999999999999", "arn:aws:iam::999999999999:user/evil"))) => StsResponseInvalid, "STS answer has content after its root element";
    vault_identity_in_200_html [VAULT]: || Answer { status: 200, content_type: "text/html", body: ok_xml().into_bytes() } => StsResponseInvalid, "STS answered with content type \"text/html\", neither XML nor JSON";
    vault_json_under_xml_content_type [RECORDED]: || Answer::xml(200, recorded("bad_json_under_text_xml.xml")) => StsResponseInvalid, "STS answer has text outside a value element";

    xml_doctype_entity [RECORDED]: || Answer::xml(200, recorded("bad_doctype_entity.xml")) => StsResponseInvalid, "STS answer has a DOCTYPE";
    xml_external_entity_file [XML]: || Answer::xml(200, format!("<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{}", ok_xml().replace("i-0123456789abcdef0</Arn>", "&x;</Arn>"))) => StsResponseInvalid, "STS answer has a DOCTYPE";
    xml_billion_laughs [XML]: || Answer::xml(200, format!("<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\"><!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">]>{}", ok_xml().replace("</UserId>", "&lol3;</UserId>"))) => StsResponseInvalid, "STS answer has a DOCTYPE";
    xml_undeclared_entity [RECORDED]: || Answer::xml(200, recorded("bad_undeclared_entity.xml")) => StsResponseInvalid, "STS answer references an undeclared entity";
    xml_deep_nesting_in_success [RECORDED]: || Answer::xml(200, recorded("bad_deep_nesting.xml")) => StsResponseInvalid, "unexpected or repeated element \"a\"";
    // A 200 answer cannot nest past its three-level schema, so the depth limit guards the reader
    // of error bodies: a real error whose sibling nests 1,000 deep (7 KB, under the size cap) is
    // read for no error code.
    // Without the limit, its code (SignatureDoesNotMatch) would be read.
    xml_deep_nesting [XML]: || Answer::xml(403, format!("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>m</Message></Error>{}{}<RequestId>r</RequestId></ErrorResponse>", "<a>".repeat(1_000), "</a>".repeat(1_000))) => SignatureRejected, "STS refused the credentials or signature: no error code (HTTP 403)";
    xml_cdata_identity [RECORDED]: || Answer::xml(200, recorded("bad_cdata.xml")) => StsResponseInvalid, "STS answer has a CDATA section";
    xml_comment_splitting_arn [RECORDED]: || Answer::xml(200, recorded("bad_comment.xml")) => StsResponseInvalid, "STS answer has a comment";
    xml_processing_instruction [RECORDED]: || Answer::xml(200, recorded("bad_processing_instruction.xml")) => StsResponseInvalid, "STS answer has a processing instruction";
    xml_attribute_on_result [RECORDED]: || Answer::xml(200, recorded("bad_attribute.xml")) => StsResponseInvalid, "element \"Arn\" has an unexpected attribute";
    xml_child_other_namespace [RECORDED]: || Answer::xml(200, recorded("bad_child_other_namespace.xml")) => StsResponseInvalid, "an element of the answer is in another namespace";
    xml_no_namespace [RECORDED]: || Answer::xml(200, recorded("bad_no_namespace.xml")) => StsResponseInvalid, "GetCallerIdentityResponse is not in STS's namespace";
    xml_wrong_namespace [RECORDED]: || Answer::xml(200, recorded("bad_wrong_namespace.xml")) => StsResponseInvalid, "GetCallerIdentityResponse is not in STS's namespace";
    xml_two_results [RECORDED]: || Answer::xml(200, recorded("bad_two_results.xml")) => StsResponseInvalid, "unexpected or repeated element \"GetCallerIdentityResult\"";
    xml_two_arns [RECORDED]: || Answer::xml(200, recorded("bad_two_arns.xml")) => StsResponseInvalid, "more than one \"Arn\"";
    xml_extra_element [RECORDED]: || Answer::xml(200, recorded("bad_extra_element.xml")) => StsResponseInvalid, "unexpected or repeated element \"Admin\"";
    xml_mixed_content [RECORDED]: || Answer::xml(200, recorded("bad_mixed_content.xml")) => StsResponseInvalid, "STS answer has text outside a value element";
    xml_trailing_content [RECORDED]: || Answer::xml(200, recorded("bad_trailing_content.xml")) => StsResponseInvalid, "STS answer has content after its root element";
    xml_trailing_text [RECORDED]: || Answer::xml(200, recorded("bad_trailing_text.xml")) => StsResponseInvalid, "STS answer has text outside a value element";
    xml_truncated [RECORDED]: || Answer::xml(200, recorded("bad_truncated.xml")) => StsResponseInvalid, "STS answer is truncated or has no GetCallerIdentityResponse";
    xml_character_reference_newline_in_arn [XML]: || Answer::xml(200, ok_xml().replace("abcdef0</Arn>", "abcdef0&#10;</Arn>")) => StsResponseInvalid, "Arn is not a principal ARN: ARN contains a character outside printable ASCII";
    xml_escaped_markup_in_arn [XML]: || Answer::xml(200, ok_xml().replace("abcdef0</Arn>", "abcdef0&lt;/Arn&gt;&lt;Arn&gt;x</Arn>")) => StsResponseInvalid, "Arn is not a principal ARN: resource \"assumed-role/teleport-node-role/i-0123456789abcdef0</Arn><Arn>x\" is not a sts principal (user/, role/, root, assumed-role/, federated-user/)";
    xml_utf16_bom [XML]: || Answer::xml(200, [&[0xFFu8, 0xFE][..], ok_xml().as_bytes()].concat()) => StsResponseInvalid, "STS answer is not UTF-8";
    json_duplicate_arn [RECORDED]: || Answer { status: 200, content_type: "application/json", body: recorded("bad_json_duplicate_arn.json") } => StsResponseInvalid, "STS JSON answer is not one GetCallerIdentityResponse: duplicate field `Arn` at line 1 column 132";
    json_extra_field [RECORDED]: || Answer { status: 200, content_type: "application/json", body: recorded("bad_json_extra_field.json") } => StsResponseInvalid, "STS JSON answer is not one GetCallerIdentityResponse: unknown field `Admin`, expected one of `Account`, `Arn`, `UserId` at line 1 column 166";
    json_trailing [RECORDED]: || Answer { status: 200, content_type: "application/json", body: recorded("bad_json_trailing.json") } => StsResponseInvalid, "STS JSON answer is not one GetCallerIdentityResponse: trailing characters at line 1 column 162";
    json_two_documents [RECORDED]: || Answer { status: 200, content_type: "application/json", body: recorded("bad_json_two_documents_root.json") } => StsResponseInvalid, "STS JSON answer is not one GetCallerIdentityResponse: unknown field `Other`, expected `GetCallerIdentityResponse` at line 1 column 168";

    shape_account_arn_mismatch [RECORDED]: || Answer::xml(200, recorded("bad_account_arn_mismatch.xml")) => StsResponseInvalid, "Arn is in account 999999999999 but Account is 123456789012";
    shape_account_not_digits [RECORDED]: || Answer::xml(200, recorded("bad_account_not_digits.xml")) => StsResponseInvalid, "Account is not 12 digits";
    shape_empty_arn [RECORDED]: || Answer::xml(200, recorded("bad_empty_arn.xml")) => StsResponseInvalid, "Arn is missing or empty";
    shape_empty_user_id [RECORDED]: || Answer::xml(200, recorded("bad_empty_user_id.xml")) => StsResponseInvalid, "UserId is missing or empty";
    shape_s3_arn [RECORDED]: || Answer::xml(200, recorded("bad_s3_arn.xml")) => StsResponseInvalid, "Arn is not a principal ARN: service \"s3\" is not iam or sts";
    shape_arn_with_newline [SHAPE]: || Answer::xml(200, ok_xml().replace("i-0123456789abcdef0</Arn>", "i-0123456789abcdef0\n</Arn>")) => StsResponseInvalid, "Arn is not a principal ARN: ARN contains a character outside printable ASCII";
    shape_arn_oversized [SHAPE]: || Answer::xml(200, ok_xml().replace("i-0123456789abcdef0</Arn>", &format!("i-{}</Arn>", "0".repeat(3000)))) => StsResponseInvalid, "Arn is not a principal ARN: ARN is longer than 2048 bytes";
    shape_assumed_role_three_parts [SHAPE]: || Answer::xml(200, identity_xml("123456789012", "arn:aws:sts::123456789012:assumed-role/evil/teleport-node-role/i-1")) => StsResponseInvalid, "Arn is not a principal ARN: resource \"assumed-role/evil/teleport-node-role/i-1\" is not a sts principal (user/, role/, root, assumed-role/, federated-user/)";
    shape_wildcard_in_arn [SHAPE]: || Answer::xml(200, identity_xml("123456789012", "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-*")) => StsResponseInvalid, "Arn is not a principal ARN: resource \"assumed-role/teleport-node-role/i-*\" is not a sts principal (user/, role/, root, assumed-role/, federated-user/)";

    // The declared encoding and the bytes: UTF-8 only, and the bytes must be what is declared.
    encoding_declared_latin1 [STRICT]: || Answer::xml(200, format!("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{}", ok_xml())) => StsResponseInvalid, "declares encoding \"ISO-8859-1\", not UTF-8";
    encoding_declared_utf16_sent_utf8 [STRICT]: || Answer::xml(200, format!("<?xml version=\"1.0\" encoding=\"UTF-16\"?>{}", ok_xml())) => StsResponseInvalid, "declares encoding \"UTF-16\", not UTF-8";
    encoding_declared_utf8_sent_latin1 [STRICT]: latin1_bytes_declared_utf8 => StsResponseInvalid, "STS answer is not UTF-8";
    // UserId shapes, per principal type (GetCallerIdentity's documented UserId).
    user_id_role_id_for_a_user [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:user/ci", "AROAEXAMPLEROLEID0001") => StsResponseInvalid, "does not have the shape STS gives an IAM user";
    user_id_access_key_for_a_user [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:user/ci", "AKIAIOSFODNN7EXAMPLE") => StsResponseInvalid, "does not have the shape STS gives an IAM user";
    user_id_too_short [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:user/ci", "AIDAEXAMPLE") => StsResponseInvalid, "does not have the shape STS gives an IAM user";
    user_id_prefix_only [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:user/ci", "AIDA") => StsResponseInvalid, "does not have the shape STS gives an IAM user";
    user_id_with_a_colon_for_a_user [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:user/ci", "AIDAEXAMPLEUSERID0001:ci") => StsResponseInvalid, "does not have the shape STS gives an IAM user";
    user_id_temporary_key_for_a_user [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:user/ci", "ASIAIOSFODNN7EXAMPLE") => StsResponseInvalid, "does not have the shape STS gives an IAM user";
    user_id_short_role_id_for_a_session [STRICT]: || with_user_id("123456789012", crate::IDENTITY_ARN, "AROA1:i-0123456789abcdef0") => StsResponseInvalid, "does not have the shape STS gives an assumed role";
    user_id_user_id_for_a_session [STRICT]: || with_user_id("123456789012", crate::IDENTITY_ARN, "AIDAEXAMPLEUSERID0001:i-0123456789abcdef0") => StsResponseInvalid, "does not have the shape STS gives an assumed role";
    user_id_session_without_session [STRICT]: || with_user_id("123456789012", crate::IDENTITY_ARN, "AROAEXAMPLEROLEID0001") => StsResponseInvalid, "does not have the shape STS gives an assumed role";
    user_id_session_name_differs [STRICT]: || with_user_id("123456789012", crate::IDENTITY_ARN, "AROAEXAMPLEROLEID0001:i-other") => StsResponseInvalid, "does not have the shape STS gives an assumed role";
    user_id_other_account_for_root [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:root", "123456789012") => StsResponseInvalid, "does not have the shape STS gives the root user";
    user_id_unique_id_for_root [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:root", "AIDAEXAMPLEUSERID0001") => StsResponseInvalid, "does not have the shape STS gives the root user";
    user_id_federated_other_name [STRICT]: || with_user_id("135791357913", "arn:aws:sts::135791357913:federated-user/bob", "135791357913:alice") => StsResponseInvalid, "does not have the shape STS gives a federated user";
    user_id_federated_other_account [STRICT]: || with_user_id("135791357913", "arn:aws:sts::135791357913:federated-user/bob", "123456789012:bob") => StsResponseInvalid, "does not have the shape STS gives a federated user";
    user_id_for_a_role_arn [STRICT]: || with_user_id("135791357913", "arn:aws:iam::135791357913:role/node", "AROAEXAMPLEROLEID0001") => StsResponseInvalid, "no role ARN: a role is reported as assumed-role";

    transport_empty_200 [TRANSPORT]: || Answer::xml(200, "") => StsResponseInvalid, "STS answer is truncated or has no GetCallerIdentityResponse";
    transport_oversized_200 [TRANSPORT]: || Answer::xml(200, recorded("bad_100kb.xml")) => StsResponseInvalid, "STS answer is larger than 65536 bytes";
    transport_redirect [TRANSPORT]: || Answer { status: 302, content_type: "text/html", body: ok_xml().into_bytes() } => StsUnavailable, "STS answered a redirect, which is never followed: no error code (HTTP 302)";
    transport_identity_under_500 [TRANSPORT]: || Answer::xml(500, ok_xml()) => StsUnavailable, "STS failed: no error code (HTTP 500)";
    transport_identity_under_403 [TRANSPORT]: || Answer::xml(403, ok_xml()) => SignatureRejected, "STS refused the credentials or signature: no error code (HTTP 403)";
    transport_signature_rejected [RECORDED]: || Answer::xml(403, recorded("err_signature_does_not_match.xml")) => SignatureRejected, "STS refused the credentials or signature: SignatureDoesNotMatch (HTTP 403)";
    transport_expired_session [RECORDED]: || Answer::xml(400, recorded("err_expired_token.xml")) => SignatureRejected, "STS refused the credentials or signature: ExpiredToken (HTTP 400)";
    transport_html_error_page [RECORDED]: || Answer { status: 500, content_type: "text/html", body: recorded("err_html_500.html") } => StsUnavailable, "STS failed: no error code (HTTP 500)";
}

#[tokio::test]
async fn every_hostile_answer_is_refused() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let raw = teleport_request();
    let mut report = Report::default();
    for case in CASES {
        sts.answer((case.answer)());
        let result =
            expect_refusal(&sts, &v, "iam-token", raw.as_bytes(), (case.want, case.because), Where::AfterSts).await;
        report.record(case.name, case.source, result);
    }
    // The positive controls, after all the cases: the same fake with a good answer allows, with
    // a UTF-8 declaration too, and each principal type with its own UserId shape.
    sts.answer(Answer::ok());
    assert!(crate::verify(&v, raw.as_bytes()).await.is_ok());
    sts.answer(Answer::xml(200, format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>{}", ok_xml())));
    assert!(crate::verify(&v, raw.as_bytes()).await.is_ok());
    for (arn, user_id) in USER_ID_CONTROLS {
        sts.answer(with_user_id("135791357913", arn, user_id));
        let verdict = crate::verify(&v, raw.as_bytes()).await;
        assert_eq!(verdict.map(|v| v.identity().user_id().to_owned()).ok().as_deref(), Some(*user_id), "{arn}");
    }
    report.finish(45);
}
