//! Keyed challenges: an edit script applied to a challenge issued with a fixed key. Anything the
//! ring accepts re-encodes to itself and is the challenge issued: one spelling, one claim.
#![no_main]
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iam_join::challenge::{ChallengeKey, ChallengeKeys};
use libfuzzer_sys::fuzz_target;

const NOW: Duration = Duration::from_secs(1_800_000_000);
static RING: LazyLock<(ChallengeKeys, String)> = LazyLock::new(|| {
    let ring = ChallengeKeys::new(ChallengeKey::new("k1", vec![9; 32]).unwrap());
    let issued = ring.issue("iam-token", UNIX_EPOCH + NOW).unwrap();
    (ring, issued)
});
/// What alternative spellings are made of.
const CHARS: &[u8] = b"0123456789+-=_/. \tAaVvx";

fuzz_target!(|data: &[u8]| {
    let (ring, issued) = &*RING;
    let now: SystemTime = UNIX_EPOCH + NOW;
    // Each 3 bytes: an operation (insert, delete, replace), a position, a character.
    let mut s: Vec<u8> = issued.as_bytes().to_vec();
    for e in data.chunks_exact(3) {
        let at = usize::from(e[1]) % (s.len() + 1);
        let c = CHARS[usize::from(e[2]) % CHARS.len()];
        match e[0] % 3 {
            0 => s.insert(at, c),
            1 if at < s.len() => {
                s.remove(at);
            }
            _ if at < s.len() => s[at] = c,
            _ => {}
        }
    }
    let Ok(s) = String::from_utf8(s) else { return };
    if let Ok(checked) = ring.check(&s, "iam-token", now) {
        assert_eq!(checked.to_string(), s);
        assert_eq!(&s, issued);
    }
});
