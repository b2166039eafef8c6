//! Presigned URL validation: never panics; whatever is accepted is a GET of `/?` and the query
//! as received, with `host` and the issued challenge as its only headers; the URL rebuilt from
//! the replay, and its EKS token, parse to the same value.
#![no_main]
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

const CHALLENGE: &str = include_str!("../../tests/vectors/requests/CHALLENGE");

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_795_878_000);
    let policy = iam_join::RequestPolicy::new();
    if let Ok(url) = iam_join::PresignedUrl::parse(data, CHALLENGE, &policy, now) {
        let replay = url.replay();
        assert_eq!(replay.method(), iam_join::Method::Get);
        assert!(replay.target().starts_with("/?") && replay.body().is_empty());
        assert!(replay.headers().all(|(n, v)| (n == "host" && v == replay.endpoint().host()) || v == CHALLENGE));
        assert_eq!(url.signed_challenge(), CHALLENGE);
        let rebuilt = format!("https://{}{}", replay.endpoint().host(), replay.target());
        let again = iam_join::PresignedUrl::parse(rebuilt.as_bytes(), CHALLENGE, &policy, now).expect("the rebuilt URL parses");
        assert_eq!(again, url);
        let token = format!("k8s-aws-v1.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&rebuilt));
        if token.len() <= iam_join::MAX_PRESIGNED_BYTES {
            assert_eq!(iam_join::PresignedUrl::parse(token.as_bytes(), CHALLENGE, &policy, now).expect("its token parses"), url);
        }
    }
});
