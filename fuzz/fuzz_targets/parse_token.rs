//! Token YAML: never panics; whatever loads has compiled, internally consistent rules.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match iam_join::TokenSet::from_yaml(text) {
        Ok(set) => {
            for token in set.iter() {
                assert!(!token.roles().is_empty());
                assert!(!token.rules().is_empty());
                assert_eq!(token.matcher().rules().len(), token.rules().len());
            }
        }
        Err(e) => assert!(!e.problems().is_empty()),
    }
});
