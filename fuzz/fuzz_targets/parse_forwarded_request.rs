//! Forwarded request validation: never panics; whatever is accepted re-serializes and re-parses to
//! the same rebuilt request, and carries the fixed body and the signed host.
#![no_main]
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;

const CHALLENGE: &str = include_str!("../../tests/vectors/requests/CHALLENGE");

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_795_878_000);
    let policy = iam_join::RequestPolicy::new();
    if let Ok(req) = iam_join::ForwardedRequest::parse(data, CHALLENGE, &policy, now) {
        let again = iam_join::ForwardedRequest::parse(&req.replay().to_http1(), CHALLENGE, &policy, now).expect("rebuilt request re-parses");
        assert_eq!(again, req);
        assert_eq!(req.replay().body(), iam_join::GET_CALLER_IDENTITY_BODY);
        assert!(req.replay().headers().any(|(n, v)| n == "host" && v == req.endpoint().host()));
    }
});
