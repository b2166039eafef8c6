//! Identities that STS could really return but that the token must not admit: glob
//! metacharacters taken literally, case, partition, account and principal-type confusion.

use iam_join::ErrorKind::{self, *};

use crate::{Answer, FakeSts, Report, Where, expect_refusal, identity_xml, teleport_request};

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) account: &'static str,
    pub(crate) arn: &'static str,
    pub(crate) want: ErrorKind,
    /// Text of the refusal's detail that names the check which must stop the case.
    pub(crate) because: &'static str,
}

const GLOB: &str = "Teleport arnMatches: only * and ? are wildcards, everything else is literal (regexp.QuoteMeta)";
const CONFUSION: &str = "principal confusion across case, partition, account or type";
const NO_RULE: &str = "matches no allow rule of token \"iam-token\"";

macro_rules! cases {
    ($($name:ident [$source:expr]: $account:literal, $arn:literal => $want:ident, $because:expr;)*) => {
        pub(crate) const CASES: &[Case] = &[$(Case {
            name: stringify!($name),
            source: $source,
            account: $account,
            arn: $arn,
            want: $want,
            because: $because,
        }),*];
    };
}

cases! {
    glob_dot_is_literal [GLOB]: "210987654321", "arn:aws:iam::210987654321:user/adXin" => NotAllowed, NO_RULE;
    glob_question_is_one_char [GLOB]: "444455556666", "arn:aws:sts::444455556666:assumed-role/deploy-12/s" => NotAllowed, NO_RULE;
    glob_question_not_empty [GLOB]: "444455556666", "arn:aws:sts::444455556666:assumed-role/deploy-/s" => NotAllowed, NO_RULE;
    glob_anchored_at_end [GLOB]: "210987654321", "arn:aws:iam::210987654321:user/ad.in2" => NotAllowed, NO_RULE;
    glob_star_does_not_cross_role_name [GLOB]: "123456789012", "arn:aws:sts::123456789012:assumed-role/teleport-node-role-evil/i-1" => NotAllowed, NO_RULE;
    case_of_role_name [CONFUSION]: "123456789012", "arn:aws:sts::123456789012:assumed-role/Teleport-Node-Role/i-1" => NotAllowed, NO_RULE;
    other_partition_same_account [CONFUSION]: "123456789012", "arn:aws-cn:sts::123456789012:assumed-role/teleport-node-role/i-1" => StsResponseInvalid, "the identity is in partition aws-cn but sts.us-east-1.amazonaws.com serves partition aws";
    govcloud_identity_from_commercial_endpoint [CONFUSION]: "123456789012", "arn:aws-us-gov:sts::123456789012:assumed-role/teleport-node-role/i-1" => StsResponseInvalid, "the identity is in partition aws-us-gov but sts.us-east-1.amazonaws.com serves partition aws";
    other_account_same_role [CONFUSION]: "999999999999", "arn:aws:sts::999999999999:assumed-role/teleport-node-role/i-1" => NotAllowed, NO_RULE;
    role_arn_instead_of_session [CONFUSION]: "123456789012", "arn:aws:iam::123456789012:role/teleport-node-role" => StsResponseInvalid, "no role ARN: a role is reported as assumed-role";
    root_of_allowed_account [CONFUSION]: "123456789012", "arn:aws:iam::123456789012:root" => NotAllowed, NO_RULE;
    federated_user_named_like_session [CONFUSION]: "123456789012", "arn:aws:sts::123456789012:federated-user/i-1" => NotAllowed, NO_RULE;
    user_named_like_role [CONFUSION]: "444455556666", "arn:aws:iam::444455556666:user/deploy-1" => NotAllowed, NO_RULE;
}

#[tokio::test]
async fn confusable_identities_are_not_allowed() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let raw = teleport_request();
    let mut report = Report::default();
    for case in CASES {
        sts.answer(Answer::xml(200, identity_xml(case.account, case.arn)));
        let result =
            expect_refusal(&sts, &v, "iam-token", raw.as_bytes(), (case.want, case.because), Where::AfterSts).await;
        report.record(case.name, case.source, result);
    }
    // Positive controls: the patterns do admit what they name.
    for (account, arn) in [
        ("210987654321", "arn:aws:iam::210987654321:user/ad.in"),
        ("444455556666", "arn:aws:sts::444455556666:assumed-role/deploy-1/s"),
        ("123456789012", "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-1"),
    ] {
        sts.answer(Answer::xml(200, identity_xml(account, arn)));
        let verdict = crate::verify(&v, raw.as_bytes()).await;
        assert_eq!(verdict.unwrap().identity().arn().as_str(), arn);
    }
    report.finish(12);
}
