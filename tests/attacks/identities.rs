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
}

const GLOB: &str = "Teleport arnMatches: only * and ? are wildcards, everything else is literal (regexp.QuoteMeta)";
const CONFUSION: &str = "principal confusion across case, partition, account or type";

pub(crate) const CASES: &[Case] = &[
    Case {
        name: "glob_dot_is_literal",
        source: GLOB,
        account: "210987654321",
        arn: "arn:aws:iam::210987654321:user/adXin",
        want: NotAllowed,
    },
    Case {
        name: "glob_question_is_one_char",
        source: GLOB,
        account: "444455556666",
        arn: "arn:aws:iam::444455556666:role/deploy-12",
        want: NotAllowed,
    },
    Case {
        name: "glob_question_not_empty",
        source: GLOB,
        account: "444455556666",
        arn: "arn:aws:iam::444455556666:role/deploy-",
        want: NotAllowed,
    },
    Case {
        name: "glob_anchored_at_end",
        source: GLOB,
        account: "210987654321",
        arn: "arn:aws:iam::210987654321:user/ad.in2",
        want: NotAllowed,
    },
    Case {
        name: "glob_star_does_not_cross_role_name",
        source: GLOB,
        account: "123456789012",
        arn: "arn:aws:sts::123456789012:assumed-role/teleport-node-role-evil/i-1",
        want: NotAllowed,
    },
    Case {
        name: "case_of_role_name",
        source: CONFUSION,
        account: "123456789012",
        arn: "arn:aws:sts::123456789012:assumed-role/Teleport-Node-Role/i-1",
        want: NotAllowed,
    },
    Case {
        name: "other_partition_same_account",
        source: CONFUSION,
        account: "123456789012",
        arn: "arn:aws-cn:sts::123456789012:assumed-role/teleport-node-role/i-1",
        want: NotAllowed,
    },
    Case {
        name: "other_account_same_role",
        source: CONFUSION,
        account: "999999999999",
        arn: "arn:aws:sts::999999999999:assumed-role/teleport-node-role/i-1",
        want: NotAllowed,
    },
    Case {
        name: "role_arn_instead_of_session",
        source: CONFUSION,
        account: "123456789012",
        arn: "arn:aws:iam::123456789012:role/teleport-node-role",
        want: NotAllowed,
    },
    Case {
        name: "root_of_allowed_account",
        source: CONFUSION,
        account: "123456789012",
        arn: "arn:aws:iam::123456789012:root",
        want: NotAllowed,
    },
    Case {
        name: "federated_user_named_like_session",
        source: CONFUSION,
        account: "123456789012",
        arn: "arn:aws:sts::123456789012:federated-user/i-1",
        want: NotAllowed,
    },
    Case {
        name: "user_named_like_role",
        source: CONFUSION,
        account: "444455556666",
        arn: "arn:aws:iam::444455556666:user/deploy-1",
        want: NotAllowed,
    },
];

#[tokio::test]
async fn confusable_identities_are_not_allowed() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let raw = teleport_request();
    let mut report = Report::default();
    for case in CASES {
        sts.answer(Answer::xml(200, identity_xml(case.account, case.arn)));
        let result = expect_refusal(&sts, &v, "iam-token", raw.as_bytes(), case.want, Where::AfterSts).await;
        report.record(case.name, case.source, result);
    }
    // Positive controls: the patterns do admit what they name.
    for (account, arn) in [
        ("210987654321", "arn:aws:iam::210987654321:user/ad.in"),
        ("444455556666", "arn:aws:iam::444455556666:role/deploy-1"),
        ("123456789012", "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-1"),
    ] {
        sts.answer(Answer::xml(200, identity_xml(account, arn)));
        let verdict = v.verify("iam-token", &crate::challenge(), raw.as_bytes(), crate::signed_at()).await;
        assert_eq!(verdict.unwrap().identity().arn().as_str(), arn);
    }
    report.finish(12);
}
