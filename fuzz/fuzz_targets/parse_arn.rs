//! ARN parsing: never panics; an accepted ARN round-trips and its parts are consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(arn) = iam_join::Arn::parse(text) {
        assert_eq!(arn.as_str(), text);
        assert_eq!(iam_join::Arn::parse(arn.as_str()).as_ref(), Ok(&arn));
        assert!(text.ends_with(arn.resource()));
        assert!(text.contains(arn.account().as_str()));
    }
});
