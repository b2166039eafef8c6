//! Hostile provision tokens (YAML an attacker or a careless operator could load), and token
//! names a joining agent could send. Every one is refused before any network work.

use iam_join::{ErrorKind, TokenSet};

use crate::{FakeSts, Report, Where, expect_refusal, teleport_request};

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) yaml: fn() -> String,
}

const YAML: &str = "YAML parser attacks (alias expansion, depth, tags, duplicate keys)";
const RULES: &str = "allow rules that would admit more than they seem to";

fn token(allow: &str) -> String {
    format!(
        "kind: token\nversion: v2\nmetadata:\n  name: t\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n{allow}\n"
    )
}

pub(crate) const CASES: &[Case] = &[
    Case {
        name: "yaml_billion_laughs",
        source: YAML,
        yaml: || {
            let mut s =
                String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
            for i in 1..10 {
                let prev = (b'a' + i - 1) as char;
                let cur = (b'a' + i) as char;
                s += &format!(
                    "{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
                );
            }
            s + &token("  - aws_account: \"123456789012\"")
        },
    },
    Case {
        name: "yaml_deep_nesting",
        source: YAML,
        yaml: || format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    },
    Case {
        name: "yaml_duplicate_key_second_account",
        source: YAML,
        yaml: || token("  - aws_account: \"123456789012\"\n    aws_account: \"999999999999\""),
    },
    Case {
        name: "yaml_python_tag",
        source: YAML,
        yaml: || token("  - aws_account: !!python/object/apply:os.system [\"id\"]"),
    },
    Case { name: "yaml_nul_byte", source: YAML, yaml: || token("  - aws_account: \"1234567890\0 12\"") },
    Case { name: "yaml_tab_indentation", source: YAML, yaml: || token("\t- aws_account: \"123456789012\"") },
    Case {
        name: "yaml_oversized_file",
        source: YAML,
        yaml: || format!("# {}\n{}", "x".repeat(9 << 20), token("  - aws_account: \"123456789012\"")),
    },
    Case {
        name: "yaml_alias_as_account",
        source: YAML,
        yaml: || format!("x: &acct [\"123456789012\"]\n---\n{}", token("  - aws_account: *acct")),
    },
    Case { name: "rule_account_wildcard", source: RULES, yaml: || token("  - aws_account: \"*\"") },
    Case { name: "rule_account_glob", source: RULES, yaml: || token("  - aws_account: \"1234567890??\"") },
    Case { name: "rule_account_eleven_digits", source: RULES, yaml: || token("  - aws_account: \"12345678901\"") },
    Case { name: "rule_account_with_space", source: RULES, yaml: || token("  - aws_account: \" 123456789012\"") },
    Case { name: "rule_empty", source: RULES, yaml: || token("  - {}") },
    Case { name: "rule_list_empty", source: RULES, yaml: || token("  []").replace("  allow:\n  []", "  allow: []") },
    Case { name: "rule_unknown_field_typo", source: RULES, yaml: || token("  - aws_accounts: \"123456789012\"") },
    Case {
        name: "rule_arn_other_account_than_rule",
        source: RULES,
        yaml: || token("  - aws_account: \"123456789012\"\n    aws_arn: \"arn:aws:iam::999999999999:user/*\""),
    },
    Case { name: "rule_arn_not_an_arn", source: RULES, yaml: || token("  - aws_arn: \"user/*\"") },
    Case {
        name: "rule_arn_oversized",
        source: RULES,
        yaml: || token(&format!("  - aws_arn: \"arn:aws:iam::123456789012:user/{}*\"", "a".repeat(3000))),
    },
    Case {
        name: "token_other_join_method",
        source: RULES,
        yaml: || token("  - aws_account: \"123456789012\"").replace("join_method: iam", "join_method: token"),
    },
    Case {
        name: "token_no_roles",
        source: RULES,
        yaml: || token("  - aws_account: \"123456789012\"").replace("  roles: [Node]\n", ""),
    },
];

#[test]
fn every_hostile_token_file_is_refused() {
    let mut report = Report::default();
    for case in CASES {
        let yaml = (case.yaml)();
        let result = match TokenSet::from_yaml(&yaml) {
            Ok(set) => Err(format!("LOADED {} token(s)", set.len())),
            Err(e) if e.kind() == ErrorKind::TokenInvalid => Ok(()),
            Err(e) => Err(format!("kind {}: {e}", e.kind().as_str())),
        };
        report.record(case.name, case.source, result);
    }
    report.finish(20);
    // Positive control: the same template with a plain rule loads.
    assert!(TokenSet::from_yaml(&token("  - aws_account: \"123456789012\"")).is_ok());
}

#[tokio::test]
async fn token_names_and_expiry_are_checked_before_sending() {
    let sts = FakeSts::start().await;
    let v = sts.verifier();
    let raw = teleport_request();
    let mut report = Report::default();
    let long = "t".repeat(100_000);
    for (name, token) in [
        ("unknown_token", "no-such-token"),
        ("expired_token", "expired-token"),
        ("token_name_with_control_chars", "iam-token\r\nX-Evil: 1"),
        ("token_name_oversized", long.as_str()),
        ("token_name_empty", ""),
    ] {
        let result = expect_refusal(&sts, &v, token, raw.as_bytes(), ErrorKind::TokenInvalid, Where::Local).await;
        report.record(name, "provision token lookup", result);
    }
    report.finish(5);
}
