//! The compiled matcher against the plain reference (one regex per rule, Teleport's way).

use iam_join::{AccountId, Arn, Rule, RuleMatcher};
use proptest::prelude::*;

use crate::common::reference::{PlainRule, Prebuilt, first_match_compiling};

const ACCOUNTS: [&str; 3] = ["111111111111", "222222222222", "012345678901"];

/// ARNs from a small alphabet so that generated patterns often match them.
fn arn_strategy() -> impl Strategy<Value = String> {
    let name = "[ab.@_-]{1,6}";
    // IAM paths may hold `:`, which the any-account index must not be fooled by.
    let path = "[ab:]{1,4}";
    (0..3usize, 0..6usize, name, name, path).prop_map(|(acct, kind, n1, n2, path)| {
        let a = ACCOUNTS[acct];
        match kind {
            0 => format!("arn:aws:iam::{a}:user/{n1}"),
            1 => format!("arn:aws:iam::{a}:user/{n2}/{n1}"),
            5 => format!("arn:aws:iam::{a}:role/{path}/{n1}"),
            2 => format!("arn:aws:sts::{a}:assumed-role/{n1}/{n2}"),
            3 => format!("arn:aws:sts::{a}:federated-user/{n1}"),
            _ => format!("arn:aws:iam::{a}:root"),
        }
    })
}

/// Patterns derived from an ARN by swapping spans for `*`, `?`, or characters globset would
/// treat specially if they were not escaped.
fn pattern_strategy() -> impl Strategy<Value = String> {
    (arn_strategy(), any::<bool>(), prop::collection::vec((0..80usize, 0..8usize), 0..4)).prop_map(
        |(arn, any_account, edits)| {
            // Half the time the account field becomes `*`, as in `arn:aws:sts::*:assumed-role/x/*`.
            let arn = if any_account { arn.replacen(&arn[13..25], "*", 1) } else { arn };
            let mut chars: Vec<char> = arn.chars().collect();
            for (pos, op) in edits {
                let at = 4 + pos % (chars.len() - 4).max(1);
                let at = at.min(chars.len());
                match op {
                    0 => chars.insert(at, '*'),
                    1 if at < chars.len() => chars[at] = '?',
                    2 => {
                        let end = (at + 3).min(chars.len());
                        chars.splice(at..end, ['*']);
                    }
                    3 => chars.insert(at, '['),
                    4 => chars.insert(at, '{'),
                    5 => chars.insert(at, '\\'),
                    6 => chars.splice(at..at, ['*', '*']).for_each(drop),
                    _ => {}
                }
            }
            chars.into_iter().collect()
        },
    )
}

fn rule_strategy() -> impl Strategy<Value = PlainRule> {
    prop_oneof![
        (0..3usize).prop_map(|a| (ACCOUNTS[a].to_owned(), String::new())),
        pattern_strategy().prop_map(|p| (String::new(), p)),
        (0..3usize, pattern_strategy()).prop_map(|(a, p)| (ACCOUNTS[a].to_owned(), p)),
    ]
}

/// Rules are compiled without load-time validation (`Rule::new_unchecked`): the
/// loader refuses some generated patterns, but the matcher must still agree on every pattern.
fn compile(rules: &[PlainRule]) -> RuleMatcher {
    let rules = rules
        .iter()
        .map(|(a, p)| {
            Rule::new_unchecked((!a.is_empty()).then_some(a.as_str()), (!p.is_empty()).then_some(p.as_str()))
                .expect("12-digit accounts")
        })
        .collect();
    RuleMatcher::compile(rules).expect("compiles")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_equals_reference(rules in prop::collection::vec(rule_strategy(), 0..12), arns in prop::collection::vec(arn_strategy(), 1..6)) {
        let m = compile(&rules);
        let prebuilt = Prebuilt::new(&rules);
        for arn in &arns {
            let parsed = Arn::parse(arn).expect("generated ARNs are valid");
            let acct = parsed.account();
            let want = first_match_compiling(&rules, acct.as_str(), arn);
            prop_assert_eq!(m.first_match(acct, &parsed), want, "rules {:?} arn {}", rules, arn);
            prop_assert_eq!(prebuilt.first_match(acct.as_str(), arn), want);
            prop_assert_eq!(m.explain(acct, &parsed).matched, want);
        }
    }
}

#[test]
fn agrees_on_teleport_cases() {
    let cases: &[(&str, &str, bool)] = &[
        ("arn:aws:iam::123456789012:user/admins-*", "arn:aws:iam::123456789012:user/admins-123", true),
        ("arn:aws:iam::123456789012:user/admins-???", "arn:aws:iam::123456789012:user/admins-123", true),
        ("arn:aws:iam::123456789012:user/admins-???", "arn:aws:iam::123456789012:user/admins-1234", false),
        (
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            true,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/my-*-test-role/my-session-name",
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            true,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/my-*-test-role/*",
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            true,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role",
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            false,
        ),
    ];
    for &(pattern, arn, want) in cases {
        let rules = vec![(String::new(), pattern.to_owned())];
        let parsed = Arn::parse(arn).unwrap();
        assert_eq!(first_match_compiling(&rules, parsed.account().as_str(), arn).is_some(), want, "{pattern}");
        assert_eq!(compile(&rules).first_match(parsed.account(), &parsed).is_some(), want, "{pattern}");
    }
    // A wrong account refuses even when the ARN pattern matches.
    let rules = vec![("999999999999".to_owned(), "arn:aws:iam::*:user/admins-*".to_owned())];
    let parsed = Arn::parse("arn:aws:iam::123456789012:user/admins-1").unwrap();
    assert_eq!(compile(&rules).first_match(parsed.account(), &parsed), None);
    assert_eq!(first_match_compiling(&rules, "123456789012", parsed.as_str()), None);
    let _ = AccountId::parse("123456789012").unwrap();
}
