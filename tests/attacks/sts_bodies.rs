//! Hostile STS answers: the request is valid and reaches the (fake) STS once; what comes back
//! must never become an identity unless it is exactly one well-formed GetCallerIdentity result.

use iam_join::ErrorKind::{self, *};

use crate::{Answer, FakeSts, Report, Where, expect_refusal, identity_xml, teleport_request};

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) answer: fn() -> Answer,
    pub(crate) want: ErrorKind,
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

fn ok_xml() -> String {
    identity_xml("123456789012", crate::IDENTITY_ARN)
}

macro_rules! cases {
    ($($name:ident [$source:expr]: $answer:expr => $want:ident;)*) => {
        pub(crate) const CASES: &[Case] = &[$(Case {
            name: stringify!($name),
            source: $source,
            answer: $answer,
            want: $want,
        }),*];
    };
}

cases! {
    // The Vault exploit: another API's answer (JSON or an error) carrying attacker-chosen text
    // that a lenient parser read as a GetCallerIdentity result.
    vault_identity_inside_json_string [VAULT]: || Answer { status: 200, content_type: "application/json", body: serde_json::json!({"Error": {"Message": ok_xml()}}).to_string().into_bytes() } => StsResponseInvalid;
    vault_identity_after_json_prefix [VAULT]: || Answer::xml(200, format!("{{\"x\":\"{}", ok_xml())) => StsResponseInvalid;
    vault_identity_inside_error_message [VAULT]: || Answer::xml(400, format!("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>{}</Message></Error><RequestId>x</RequestId></ErrorResponse>", ok_xml().replace('<', "&lt;"))) => SignatureRejected;
    vault_identity_echoed_in_other_action [RECORDED]: || Answer::xml(200, recorded("bad_identity_inside_echo.xml")) => StsResponseInvalid;
    vault_other_action_root [RECORDED]: || Answer::xml(200, recorded("bad_other_action_root.xml")) => StsResponseInvalid;
    vault_identity_with_trailing_document [VAULT]: || Answer::xml(200, format!("{}{}", ok_xml(), identity_xml("999999999999", "arn:aws:iam::999999999999:user/evil"))) => StsResponseInvalid;
    vault_identity_in_200_html [VAULT]: || Answer { status: 200, content_type: "text/html", body: ok_xml().into_bytes() } => StsResponseInvalid;
    vault_json_under_xml_content_type [RECORDED]: || Answer::xml(200, recorded("bad_json_under_text_xml.xml")) => StsResponseInvalid;

    xml_doctype_entity [RECORDED]: || Answer::xml(200, recorded("bad_doctype_entity.xml")) => StsResponseInvalid;
    xml_external_entity_file [XML]: || Answer::xml(200, format!("<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{}", ok_xml().replace("i-0123456789abcdef0</Arn>", "&x;</Arn>"))) => StsResponseInvalid;
    xml_billion_laughs [XML]: || Answer::xml(200, format!("<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\"><!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">]>{}", ok_xml().replace("</UserId>", "&lol3;</UserId>"))) => StsResponseInvalid;
    xml_undeclared_entity [RECORDED]: || Answer::xml(200, recorded("bad_undeclared_entity.xml")) => StsResponseInvalid;
    xml_deep_nesting [RECORDED]: || Answer::xml(200, recorded("bad_deep_nesting.xml")) => StsResponseInvalid;
    xml_cdata_identity [RECORDED]: || Answer::xml(200, recorded("bad_cdata.xml")) => StsResponseInvalid;
    xml_comment_splitting_arn [RECORDED]: || Answer::xml(200, recorded("bad_comment.xml")) => StsResponseInvalid;
    xml_processing_instruction [RECORDED]: || Answer::xml(200, recorded("bad_processing_instruction.xml")) => StsResponseInvalid;
    xml_attribute_on_result [RECORDED]: || Answer::xml(200, recorded("bad_attribute.xml")) => StsResponseInvalid;
    xml_child_other_namespace [RECORDED]: || Answer::xml(200, recorded("bad_child_other_namespace.xml")) => StsResponseInvalid;
    xml_no_namespace [RECORDED]: || Answer::xml(200, recorded("bad_no_namespace.xml")) => StsResponseInvalid;
    xml_wrong_namespace [RECORDED]: || Answer::xml(200, recorded("bad_wrong_namespace.xml")) => StsResponseInvalid;
    xml_two_results [RECORDED]: || Answer::xml(200, recorded("bad_two_results.xml")) => StsResponseInvalid;
    xml_two_arns [RECORDED]: || Answer::xml(200, recorded("bad_two_arns.xml")) => StsResponseInvalid;
    xml_extra_element [RECORDED]: || Answer::xml(200, recorded("bad_extra_element.xml")) => StsResponseInvalid;
    xml_mixed_content [RECORDED]: || Answer::xml(200, recorded("bad_mixed_content.xml")) => StsResponseInvalid;
    xml_trailing_content [RECORDED]: || Answer::xml(200, recorded("bad_trailing_content.xml")) => StsResponseInvalid;
    xml_trailing_text [RECORDED]: || Answer::xml(200, recorded("bad_trailing_text.xml")) => StsResponseInvalid;
    xml_truncated [RECORDED]: || Answer::xml(200, recorded("bad_truncated.xml")) => StsResponseInvalid;
    xml_character_reference_newline_in_arn [XML]: || Answer::xml(200, ok_xml().replace("abcdef0</Arn>", "abcdef0&#10;</Arn>")) => StsResponseInvalid;
    xml_escaped_markup_in_arn [XML]: || Answer::xml(200, ok_xml().replace("abcdef0</Arn>", "abcdef0&lt;/Arn&gt;&lt;Arn&gt;x</Arn>")) => StsResponseInvalid;
    xml_utf16_bom [XML]: || Answer::xml(200, [&[0xFFu8, 0xFE][..], ok_xml().as_bytes()].concat()) => StsResponseInvalid;
    json_duplicate_arn [RECORDED]: || Answer { status: 200, content_type: "application/json", body: recorded("bad_json_duplicate_arn.json") } => StsResponseInvalid;
    json_extra_field [RECORDED]: || Answer { status: 200, content_type: "application/json", body: recorded("bad_json_extra_field.json") } => StsResponseInvalid;
    json_trailing [RECORDED]: || Answer { status: 200, content_type: "application/json", body: recorded("bad_json_trailing.json") } => StsResponseInvalid;
    json_two_documents [RECORDED]: || Answer { status: 200, content_type: "application/json", body: recorded("bad_json_two_documents_root.json") } => StsResponseInvalid;

    shape_account_arn_mismatch [RECORDED]: || Answer::xml(200, recorded("bad_account_arn_mismatch.xml")) => StsResponseInvalid;
    shape_account_not_digits [RECORDED]: || Answer::xml(200, recorded("bad_account_not_digits.xml")) => StsResponseInvalid;
    shape_empty_arn [RECORDED]: || Answer::xml(200, recorded("bad_empty_arn.xml")) => StsResponseInvalid;
    shape_empty_user_id [RECORDED]: || Answer::xml(200, recorded("bad_empty_user_id.xml")) => StsResponseInvalid;
    shape_s3_arn [RECORDED]: || Answer::xml(200, recorded("bad_s3_arn.xml")) => StsResponseInvalid;
    shape_arn_with_newline [SHAPE]: || Answer::xml(200, ok_xml().replace("i-0123456789abcdef0</Arn>", "i-0123456789abcdef0\n</Arn>")) => StsResponseInvalid;
    shape_arn_oversized [SHAPE]: || Answer::xml(200, ok_xml().replace("i-0123456789abcdef0</Arn>", &format!("i-{}</Arn>", "0".repeat(3000)))) => StsResponseInvalid;
    shape_assumed_role_three_parts [SHAPE]: || Answer::xml(200, identity_xml("123456789012", "arn:aws:sts::123456789012:assumed-role/evil/teleport-node-role/i-1")) => StsResponseInvalid;
    shape_wildcard_in_arn [SHAPE]: || Answer::xml(200, identity_xml("123456789012", "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-*")) => StsResponseInvalid;

    transport_empty_200 [TRANSPORT]: || Answer::xml(200, "") => StsResponseInvalid;
    transport_oversized_200 [TRANSPORT]: || Answer::xml(200, recorded("bad_100kb.xml")) => StsResponseInvalid;
    transport_redirect [TRANSPORT]: || Answer { status: 302, content_type: "text/html", body: ok_xml().into_bytes() } => StsUnavailable;
    transport_identity_under_500 [TRANSPORT]: || Answer::xml(500, ok_xml()) => StsUnavailable;
    transport_identity_under_403 [TRANSPORT]: || Answer::xml(403, ok_xml()) => SignatureRejected;
    transport_signature_rejected [RECORDED]: || Answer::xml(403, recorded("err_signature_does_not_match.xml")) => SignatureRejected;
    transport_expired_session [RECORDED]: || Answer::xml(400, recorded("err_expired_token.xml")) => SignatureRejected;
    transport_html_error_page [RECORDED]: || Answer { status: 500, content_type: "text/html", body: recorded("err_html_500.html") } => StsUnavailable;
}

#[tokio::test]
async fn every_hostile_answer_is_refused() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let raw = teleport_request();
    let mut report = Report::default();
    for case in CASES {
        sts.answer((case.answer)());
        let result = expect_refusal(&sts, &v, "iam-token", raw.as_bytes(), case.want, Where::AfterSts).await;
        report.record(case.name, case.source, result);
    }
    // The positive control, after all the cases: the same fake with a good answer allows.
    sts.answer(Answer::ok());
    assert!(v.verify("iam-token", &crate::challenge(), raw.as_bytes(), crate::signed_at()).await.is_ok());
    report.finish(45);
}
