//! Token YAML: never panics; whatever loads has compiled, internally consistent rules; the
//! lenient and strict loaders agree, and no token with an error is ever usable.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let set = iam_join::TokenSet::load(text);
    for token in set.iter() {
        assert!(!token.roles().is_empty());
        assert!(!token.rules().is_empty());
        assert_eq!(token.matcher().rules().len(), token.rules().len());
        assert!(set.lookup(token.name()).is_ok());
        let has_error = set
            .diagnostics()
            .iter()
            .any(|p| p.severity == iam_join::Severity::Error && p.token.as_deref() == Some(token.name()));
        assert!(!has_error, "token {:?} is usable despite an error", token.name());
    }
    match iam_join::TokenSet::from_yaml(text) {
        Ok(strict) => {
            assert!(!set.has_errors());
            assert_eq!(strict.len(), set.len());
        }
        Err(e) => {
            assert!(set.has_errors());
            assert!(!e.problems().is_empty());
        }
    }
});
