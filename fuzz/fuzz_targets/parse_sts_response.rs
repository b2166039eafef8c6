//! STS response parsing: never panics; anything accepted is one consistent identity (its ARN
//! parses and belongs to its account), whichever format and status it came with.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let content_type = ["text/xml", "application/json", "text/xml; charset=utf-8", "text/html"][usize::from(selector % 4)];
    let status = [200u16, 400, 403, 500, 302][usize::from(selector / 4 % 5)];
    match iam_join::parse_sts_response(status, Some(content_type), body) {
        Ok(answer) => {
            assert_eq!(status, 200);
            let id = answer.identity;
            assert_eq!(id.arn().account(), id.account());
            assert_eq!(iam_join::Arn::parse(id.arn().as_str()).as_ref(), Ok(id.arn()));
            assert!(!id.user_id().is_empty());
        }
        Err(e) => assert!(status != 200 || e.kind() == iam_join::ErrorKind::StsResponseInvalid),
    }
});
