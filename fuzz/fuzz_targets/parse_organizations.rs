//! Organizations answer parsing (DescribeAccount, ListParents): never panics; an accepted
//! DescribeAccount names the account asked about and a well-formed organization id; an accepted
//! ListParents names one OU or root; a refusal is always `lookup_failed`.
#![no_main]
use iam_join::organizations::{Parent, parse_describe_account, parse_list_parents};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let status = [200u16, 400, 403, 500, 429][usize::from(selector / 2 % 5)];
    if selector % 2 == 0 {
        let account = iam_join::AccountId::parse("123456789012").unwrap();
        match parse_describe_account(&account, status, body) {
            Ok(Some(org)) => {
                assert_eq!(status, 200);
                assert!(org.starts_with("o-") && org.len() > 2, "{org}");
            }
            Ok(None) => assert_ne!(status, 200),
            Err(e) => assert_eq!(e.kind(), iam_join::ErrorKind::LookupFailed),
        }
    } else {
        match parse_list_parents(status, body) {
            Ok(Some(Parent::Ou(id))) => assert!(status == 200 && id.starts_with("ou-")),
            Ok(Some(Parent::Root(id))) => assert!(status == 200 && id.starts_with("r-")),
            Ok(None) => assert_ne!(status, 200),
            Err(e) => assert_eq!(e.kind(), iam_join::ErrorKind::LookupFailed),
        }
    }
});
