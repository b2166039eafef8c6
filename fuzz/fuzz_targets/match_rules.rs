//! The compiled matcher against the reference (one regex per rule, Teleport's way): any
//! disagreement is a crash. Input: first line an ARN, then one rule per line as
//! `ACCOUNT|PATTERN` (either side may be empty).
#![no_main]
use iam_join::{Subject};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/reference.rs"]
#[allow(dead_code)]
mod reference;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.lines();
    let Some(Ok(arn)) = lines.next().map(iam_join::Arn::parse) else { return };
    let mut plain = Vec::new();
    let mut rules = Vec::new();
    for line in lines.take(32) {
        let (account, pattern) = line.split_once('|').unwrap_or((line, ""));
        if pattern.len() > 256 || (account.is_empty() && pattern.is_empty()) {
            continue;
        }
        let acct = (!account.is_empty()).then_some(account);
        let pat = (!pattern.is_empty()).then_some(pattern);
        let Ok(rule) = iam_join::Rule::new(acct, pat) else { continue };
        rules.push(rule);
        plain.push((account.to_owned(), pattern.to_owned()));
    }
    let matcher = iam_join::RuleMatcher::compile(rules).expect("rules compile");
    let want = reference::first_match_compiling(&plain, arn.account().as_str(), arn.as_str());
    assert_eq!(matcher.first_match(Subject::new(arn.account(), &arn)), want, "rules {plain:?} arn {arn}");
    assert_eq!(matcher.explain(Subject::new(arn.account(), &arn)).matched, want);
});
