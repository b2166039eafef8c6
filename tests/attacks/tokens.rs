//! Hostile provision tokens (YAML an attacker or a careless operator could load), and token
//! names a joining agent could send. Every one is refused before any network work.

use iam_join::Subject;
use iam_join::{ErrorKind, Severity, TokenSet};

use crate::{FakeSts, Report, Where, expect_refusal, teleport_request};

/// What loading a hostile file must do, with the text of the check that must decide it.
pub(crate) enum Want {
    /// The token is left out by an error whose message contains this text.
    Error(&'static str),
    /// Teleport accepts the rule (it can never match): the token loads with a warning containing
    /// this text, and the rule admits none of the identities it seems to aim at.
    Lint(&'static str),
    /// A token of another join method: skipped, and refused by name with this text.
    Skipped(&'static str),
}

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) yaml: fn() -> String,
    pub(crate) want: Want,
}

const YAML: &str = "YAML parser attacks (alias expansion, depth, tags, duplicate keys)";
const RULES: &str = "allow rules that would admit more than they seem to";

fn token(allow: &str) -> String {
    token_with_labels("{}", allow)
}

/// A token whose `metadata.labels` (read, then ignored) carries `labels`: hostile YAML placed
/// where the loader must read it, so that the parser's own defences decide.
fn token_with_labels(labels: &str, allow: &str) -> String {
    format!(
        "kind: token\nversion: v2\nmetadata:\n  name: t\n  labels: {labels}\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n{allow}\n"
    )
}

const ACCOUNT: &str = "  - aws_account: \"123456789012\"";

pub(crate) const CASES: &[Case] = &[
    Case {
        name: "yaml_billion_laughs",
        source: YAML,
        yaml: || {
            let mut s =
                String::from("\n    a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]");
            for i in 1..10 {
                let (prev, cur) = ((b'a' + i - 1) as char, (b'a' + i) as char);
                s += &format!(
                    "\n    {cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]"
                );
            }
            token_with_labels(&s, ACCOUNT)
        },
        want: Want::Error("budget breached"),
    },
    Case {
        name: "yaml_deep_nesting",
        source: YAML,
        yaml: || token_with_labels(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)), ACCOUNT),
        want: Want::Error("recursion limit exceeded"),
    },
    Case {
        name: "yaml_duplicate_key_second_account",
        source: YAML,
        yaml: || token("  - aws_account: \"123456789012\"\n    aws_account: \"999999999999\""),
        want: Want::Error("duplicate mapping key: aws_account"),
    },
    Case {
        name: "yaml_python_tag",
        source: YAML,
        yaml: || token("  - aws_account: !!python/str \"123456789012\""),
        want: Want::Error("tag"),
    },
    Case {
        name: "yaml_local_tag",
        source: YAML,
        yaml: || token("  - aws_account: !account \"123456789012\""),
        want: Want::Error("tag"),
    },
    Case {
        name: "yaml_nul_byte",
        source: YAML,
        yaml: || token("  - aws_account: \"1234567890\0 12\""),
        want: Want::Error("unexpected character"),
    },
    Case {
        name: "yaml_tab_indentation",
        source: YAML,
        yaml: || token("\t- aws_account: \"123456789012\""),
        want: Want::Error("tabs disallowed"),
    },
    Case {
        name: "yaml_oversized_file",
        source: YAML,
        yaml: || format!("# {}\n{}", "x".repeat(9 << 20), token(ACCOUNT)),
        want: Want::Error("token file is larger than 8388608 bytes"),
    },
    Case {
        name: "yaml_alias_across_documents",
        source: YAML,
        yaml: || {
            let first = token_with_labels("{x: &acct \"999999999999\"}", ACCOUNT).replace("name: t", "name: first");
            format!("{first}---\n{}", token("  - aws_account: *acct"))
        },
        want: Want::Error("alias references unknown anchor"),
    },
    Case {
        name: "yaml_alias_to_a_list_as_account",
        source: YAML,
        yaml: || token_with_labels("{x: &acct [\"123456789012\", \"999999999999\"]}", "  - aws_account: *acct"),
        want: Want::Error("expected string scalar"),
    },
    Case {
        name: "rule_account_wildcard",
        source: RULES,
        yaml: || token("  - aws_account: \"*\""),
        want: Want::Error("aws_account \"*\" is not a 12-digit AWS account id"),
    },
    Case {
        name: "rule_account_glob",
        source: RULES,
        yaml: || token("  - aws_account: \"1234567890??\""),
        want: Want::Error("is not a 12-digit AWS account id"),
    },
    Case {
        name: "rule_account_eleven_digits",
        source: RULES,
        yaml: || token("  - aws_account: \"12345678901\""),
        want: Want::Error("is not a 12-digit AWS account id"),
    },
    Case {
        name: "rule_account_with_space",
        source: RULES,
        yaml: || token("  - aws_account: \" 123456789012\""),
        want: Want::Error("is not a 12-digit AWS account id"),
    },
    Case {
        name: "rule_empty",
        source: RULES,
        yaml: || token("  - {}"),
        want: Want::Error("a rule needs aws_account, aws_arn or aws_organization_id"),
    },
    Case {
        name: "rule_only_an_empty_arn",
        source: RULES,
        yaml: || token("  - aws_arn: \"\""),
        want: Want::Error("a rule needs aws_account, aws_arn or aws_organization_id"),
    },
    Case {
        name: "rule_list_empty",
        source: RULES,
        yaml: || token("  []").replace("  allow:\n  []", "  allow: []"),
        want: Want::Error("spec.allow is empty"),
    },
    Case {
        name: "rule_unknown_field_typo",
        source: RULES,
        yaml: || token("  - aws_accounts: \"123456789012\""),
        want: Want::Error("unknown field `aws_accounts`"),
    },
    Case {
        name: "rule_arn_other_account_than_rule",
        source: RULES,
        yaml: || token("  - aws_account: \"123456789012\"\n    aws_arn: \"arn:aws:iam::999999999999:user/*\""),
        want: Want::Lint("names account 999999999999 but aws_account is 123456789012"),
    },
    Case {
        name: "rule_arn_not_an_arn",
        source: RULES,
        yaml: || token("  - aws_arn: \"user/*\""),
        want: Want::Lint("it must start with \"arn:\""),
    },
    Case {
        name: "rule_arn_forgotten_session_star",
        source: RULES,
        yaml: || token("  - aws_arn: \"arn:aws:iam::123456789012:user\""),
        want: Want::Lint("can never match a principal ARN"),
    },
    Case {
        name: "rule_arn_oversized",
        source: RULES,
        yaml: || token(&format!("  - aws_arn: \"arn:aws:iam::123456789012:user/{}*\"", "a".repeat(3000))),
        want: Want::Error("aws_arn is longer than 2048 bytes"),
    },
    Case {
        name: "token_other_join_method",
        source: RULES,
        yaml: || token(ACCOUNT).replace("join_method: iam", "join_method: token"),
        want: Want::Skipped("uses join_method \"token\", not \"iam\""),
    },
    Case {
        name: "token_no_join_method_is_static",
        source: RULES,
        yaml: || token(ACCOUNT).replace("  join_method: iam\n", ""),
        want: Want::Skipped("uses join_method \"token\", not \"iam\""),
    },
    Case {
        name: "token_no_roles",
        source: RULES,
        yaml: || token(ACCOUNT).replace("  roles: [Node]\n", ""),
        want: Want::Error("spec.roles is missing"),
    },
];

/// The identities a hostile rule aims at, all of which a lint rule must refuse.
const AIMED_AT: &[&str] = &[
    "arn:aws:iam::999999999999:user/x",
    "arn:aws:iam::123456789012:user/x",
    "arn:aws:sts::123456789012:assumed-role/user/x",
];

fn check(case: &Case) -> Result<(), String> {
    let set = TokenSet::load(&(case.yaml)());
    let diagnostics: Vec<String> = set.diagnostics().iter().map(|p| p.to_string()).collect();
    let has = |severity: Severity, text: &str| {
        set.diagnostics().iter().any(|p| p.severity == severity && p.message.contains(text))
    };
    match case.want {
        Want::Error(text) => {
            if set.get("t").is_some() {
                return Err("LOADED".into());
            }
            if !has(Severity::Error, text) {
                return Err(format!("not refused by {text:?}: {diagnostics:?}"));
            }
        }
        Want::Lint(text) => {
            let token = set.get("t").ok_or_else(|| format!("not loaded: {diagnostics:?}"))?;
            if !has(Severity::Warning, text) {
                return Err(format!("no warning {text:?}: {diagnostics:?}"));
            }
            for arn in AIMED_AT {
                let arn = iam_join::Arn::parse(arn).unwrap();
                if token.matcher().first_match(Subject::new(arn.account(), &arn)).is_some() {
                    return Err(format!("the never-matching rule admits {arn}"));
                }
            }
        }
        Want::Skipped(text) => {
            let e = set.lookup("t").err().ok_or("an iam token")?;
            if e.kind() != ErrorKind::TokenInvalid || !e.detail().contains(text) {
                return Err(format!("refused as {e}, want {text:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn every_hostile_token_file_is_stopped_by_its_own_check() {
    let mut report = Report::default();
    for case in CASES {
        report.record(case.name, case.source, check(case));
    }
    report.finish(25);
    // Positive controls: the template with a plain rule loads and matches its account; the
    // label slot the parser cases use is read and accepted when benign.
    let plain = TokenSet::from_yaml(&token(ACCOUNT)).unwrap();
    let arn = iam_join::Arn::parse(AIMED_AT[1]).unwrap();
    assert!(plain.get("t").unwrap().matcher().first_match(Subject::new(arn.account(), &arn)).is_some());
    assert!(TokenSet::from_yaml(&token_with_labels("{a: &a [x], b: [*a]}", ACCOUNT)).is_ok());
}

#[tokio::test]
async fn token_names_and_expiry_are_checked_before_sending() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let raw = teleport_request();
    let mut report = Report::default();
    let long = "t".repeat(100_000);
    for (name, token, because) in [
        ("unknown_token", "no-such-token", "no iam token named \"no-such-token\""),
        ("expired_token", "expired-token", "token \"expired-token\" has expired"),
        ("token_name_with_control_chars", "iam-token\r\nX-Evil: 1", "no iam token named \"iam-token\\r\\nX-Evil: 1\""),
        ("token_name_oversized", long.as_str(), "...\""),
        ("token_name_empty", "", "no iam token named \"\""),
    ] {
        let result =
            expect_refusal(&sts, &v, token, raw.as_bytes(), (ErrorKind::TokenInvalid, because), Where::Local).await;
        report.record(name, "provision token lookup", result);
    }
    report.finish(5);
}
