//! Token files from `tests/vectors/tokens/`: every valid file loads, every invalid file fails with
//! exactly the problem (line, column, message) its first-line `# expect:` comment states.

use iam_join::{ErrorKind, Role, TokenSet};

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
            .unwrap_or_else(|| panic!("{name}: first line must be `# expect: LINE:COL: message`"));
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
    let text = "kind: token\nversion: v3\nmetadata:\n  name: t\nspec:\n  roles: [Wizard]\n  join_method: ec2\n  allow:\n  - aws_account: \"1\"\n";
    let err = TokenSet::from_yaml(text).unwrap_err();
    let got: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(got[0].starts_with("2:10: version"));
    assert!(got[3].starts_with("9:18: aws_account"));
}

#[test]
fn oversized_file_is_refused() {
    let big = "#".repeat(iam_join::MAX_TOKEN_FILE_BYTES + 1);
    let err = TokenSet::from_yaml(&big).unwrap_err();
    assert!(err.problems()[0].message.contains("larger than"));
}
