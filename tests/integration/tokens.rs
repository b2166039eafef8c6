//! Token files from `tests/vectors/tokens/`: every valid file loads, every invalid file fails with
//! exactly the problem (line, column, message) its first-line `# expect:` comment states.

use iam_join::Subject;
use iam_join::{ErrorKind, Role, Severity, TokenSet};

use crate::common::read_vectors;

#[test]
fn valid_token_files_load() {
    let files = read_vectors("tokens/valid");
    assert!(files.len() >= 3);
    for (name, text) in files {
        TokenSet::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{:?}", e.problems()));
    }
}

#[test]
fn invalid_token_files_fail_where_they_say() {
    let files = read_vectors("tokens/invalid");
    assert!(files.len() >= 30, "only {} invalid vectors", files.len());
    for (name, text) in files {
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: first line must be `# expect: LINE:COL: error: message`"));
        let err = match TokenSet::from_yaml(&text) {
            Ok(_) => panic!("{name}: loaded, expected {expect}"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::TokenInvalid, "{name}");
        let got: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
        assert!(
            got.iter().any(|p| p.starts_with(expect)),
            "{name}: expected a problem starting {expect:?}, got {got:#?}"
        );
    }
}

#[test]
fn issue_example_reads_every_field() {
    let text = std::fs::read_to_string(crate::common::vectors("tokens/valid/issue_example.yaml")).unwrap();
    let set = TokenSet::from_yaml(&text).unwrap();
    assert_eq!(set.len(), 1);
    let t = set.get("iam-token").unwrap();
    assert_eq!(t.roles(), &[Role::Kube, Role::App, Role::Discovery]);
    let expires = t.expires().unwrap();
    let secs = expires.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs, 1_798_761_600); // 2027-01-01T00:00:00Z
    assert!(!t.is_expired(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs - 1)));
    assert!(t.is_expired(expires));
    assert_eq!(t.rules().len(), 2);
    assert_eq!(t.rules()[0].aws_account().unwrap().as_str(), "111111111111");
    assert_eq!(t.rules()[0].aws_arn(), None);
    assert_eq!(t.rules()[1].aws_arn(), Some("arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-*"));
}

#[test]
fn unquoted_account_keeps_leading_zero() {
    let text = std::fs::read_to_string(crate::common::vectors("tokens/valid/unquoted_leading_zero.yaml")).unwrap();
    let set = TokenSet::from_yaml(&text).unwrap();
    let acct = set.get("iam-token").unwrap().rules()[0].aws_account().unwrap().as_str().to_owned();
    assert_eq!(acct, "012345678901");
}

#[test]
fn multi_document_stream_as_tctl_prints_it() {
    let text = std::fs::read_to_string(crate::common::vectors("tokens/valid/tctl_get_tokens.yaml")).unwrap();
    let set = TokenSet::from_yaml(&text).unwrap();
    let names: Vec<&str> = set.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["node-token", "bot-token", "org-token"]);
    let bot = set.get("bot-token").unwrap();
    assert_eq!(bot.roles(), &[Role::Bot]);
    assert_eq!(bot.bot_name(), Some("ci"));
    let org = set.get("org-token").unwrap();
    assert!(org.rules().iter().all(|r| r.needs_organization()));
    assert_eq!(org.matcher().organization_rules().count(), 2);
}

#[test]
fn all_problems_are_reported_not_just_the_first() {
    let text = "kind: token\nversion: v3\nmetadata:\n  name: t\nspec:\n  roles: [Wizard, Wizard]\n  join_method: iam\n  allow:\n  - aws_account: \"1\"\n";
    let err = TokenSet::from_yaml(text).unwrap_err();
    let got: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(got[0].starts_with("2:10: error: version"));
    assert!(got[3].starts_with("9:18: error: aws_account"));
}

#[test]
fn oversized_file_is_refused() {
    let big = "#".repeat(iam_join::MAX_TOKEN_FILE_BYTES + 1);
    let err = TokenSet::from_yaml(&big).unwrap_err();
    assert!(err.problems()[0].message.contains("larger than"));
}

/// Files that load (no error) but carry a warning or information at the place their first-line
/// `# expect:` comment states. A warning never leaves its token out.
#[test]
fn lint_token_files_load_and_warn_where_they_say() {
    let files = read_vectors("tokens/lint");
    assert!(files.len() >= 9, "only {} lint vectors", files.len());
    for (name, text) in files {
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| panic!("{name}"));
        let set = TokenSet::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<String> = set.diagnostics().iter().map(|p| p.to_string()).collect();
        assert!(got.iter().any(|p| p.starts_with(expect)), "{name}: expected {expect:?}, got {got:#?}");
        if expect.contains(": warning: ") {
            assert!(set.has_warnings() && set.get("iam-token").is_some(), "{name}: a warning keeps its token");
        } else {
            assert!(!set.has_warnings() && set.get("iam-token").is_none(), "{name}: a skipped token is not usable");
        }
    }
}

#[test]
fn one_bad_token_never_disables_another() {
    let good = |n: &str| {
        format!(
            "kind: token\nversion: v2\nmetadata:\n  name: {n}\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: \"111111111111\"\n"
        )
    };
    let bad_rule = good("typo").replace("aws_account", "aws_acount");
    let bad_syntax = "kind: token\nversion: v2\nmetadata:\n  name: syntax\nspec: [unclosed\n".to_owned();
    let no_name = "kind: token\nversion: v2\nspec: {}\n".to_owned();
    let text = [good("first"), bad_rule, bad_syntax, no_name, good("last")].join("---\n");
    assert!(TokenSet::from_yaml(&text).is_err(), "the strict loader still refuses the file");
    let set = TokenSet::load(&text);
    let names: Vec<&str> = set.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["first", "last"]);
    let errors: Vec<(u64, Option<&str>)> = set
        .diagnostics()
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| (p.line, p.token.as_deref()))
        .collect();
    // The syntax error hides even the document's name; a document without metadata has none
    // (reported at its first line).
    assert_eq!(errors, [(19, Some("typo")), (25, None), (27, None)], "{:#?}", set.diagnostics());
    let typo = set.lookup("typo").unwrap_err();
    assert_eq!(typo.kind(), ErrorKind::TokenInvalid);
    assert!(typo.detail().contains("19:5: error: unknown field `aws_acount`"), "{typo}");
    let missing = set.lookup("syntax").unwrap_err();
    assert!(missing.detail().contains("2 document(s) of the token file could not be read"), "{missing}");
    assert!(set.lookup("first").is_ok());
}

#[test]
fn duplicate_names_disable_only_that_name() {
    let t = |n: &str, acct: &str| {
        format!(
            "kind: token\nversion: v2\nmetadata:\n  name: {n}\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: \"{acct}\"\n"
        )
    };
    let text = [t("dup", "111111111111"), t("ok", "111111111111"), t("dup", "222222222222")].join("---\n");
    let set = TokenSet::load(&text);
    assert!(set.get("dup").is_none(), "neither duplicate is used");
    assert!(set.get("ok").is_some());
    assert!(set.lookup("dup").unwrap_err().detail().contains("duplicate token name"));
}

#[test]
fn document_markers_inside_text_do_not_split() {
    // `---` not at the start of a line, or followed by text without a space, is content.
    let text = "kind: token\nversion: v2\nmetadata:\n  name: t\n  description: \"a --- b\"\n  labels: {x: ---y}\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: \"111111111111\"\n";
    let set = TokenSet::from_yaml(text).unwrap();
    assert_eq!(set.len(), 1);
    // A directive and comments before a marker stay with their document.
    let text = format!("# tokens\n%YAML 1.2\n---\n{text}...\n---\n{}", text.replace("name: t", "name: u"));
    let set = TokenSet::from_yaml(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.iter().map(|t| t.name()).collect::<Vec<_>>(), ["t", "u"]);
}

#[test]
fn star_pattern_with_an_account_allows_that_account_only() {
    let text = "kind: token\nversion: v2\nmetadata:\n  name: t\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: \"111111111111\"\n    aws_arn: \"*\"\n";
    let set = TokenSet::from_yaml(text).unwrap();
    assert!(set.diagnostics().is_empty(), "{:?}", set.diagnostics());
    let m = set.get("t").unwrap().matcher();
    for (arn, want) in [
        ("arn:aws:iam::111111111111:user/a", true),
        ("arn:aws:sts::111111111111:assumed-role/r/s", true),
        ("arn:aws:iam::111111111111:root", true),
        ("arn:aws:iam::222222222222:user/a", false),
    ] {
        let arn = iam_join::Arn::parse(arn).unwrap();
        assert_eq!(m.first_match(Subject::new(arn.account(), &arn)).is_some(), want, "{arn}");
    }
}
