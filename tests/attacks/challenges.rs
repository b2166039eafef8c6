//! Keyed challenges in another spelling than the issuer's. A challenge that parses more leniently
//! than it is MACed is many challenges: each spelling would be a fresh single-use claim, so one
//! issued challenge admitted three joins (issue 18, the expiry's leading zeros). The agent
//! re-signs its request with each spelling; every one must be refused locally, by the spelling
//! check, on both keyed paths, and the guard must hold one claim for the challenge.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iam_join::ErrorKind::{self, *};
use iam_join::Proof;
use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::challenge::{Challenge, ChallengeKey, ChallengeKeys};
use iam_join::{MemoryReplayGuard, Verifier};

use crate::{FakeSts, Report, secrets_in};

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    /// The challenge's fields (`v1`, key id, expiry, nonce, MAC) → another spelling of them.
    pub(crate) respell: fn(&[&str]) -> String,
    pub(crate) want: ErrorKind,
    pub(crate) because: &'static str,
}

const MALLEABLE: &str = "issue 18: a field parsed more leniently than it is MACed (one challenge, many claims)";
const ENCODING: &str = "RFC 4648 section 3.5: canonical encoding (padding, alphabet, unused bits)";

fn join(f: &[&str]) -> String {
    f.join(".")
}
fn with(f: &[&str], i: usize, v: &str) -> String {
    let mut g: Vec<&str> = f.to_vec();
    g[i] = v;
    g.join(".")
}
/// The last base64url character with its lowest bit flipped: the same bytes (those bits are
/// unused), another spelling.
fn flip_last_bit(s: &str) -> String {
    let alphabet = base64::alphabet::URL_SAFE.as_str();
    let (head, last) = s.split_at(s.len() - 1);
    let i = alphabet.find(last).unwrap();
    format!("{head}{}", alphabet.as_bytes()[i ^ 1] as char)
}

pub(crate) const CASES: &[Case] = &[
    Case {
        name: "expiry_one_leading_zero",
        source: MALLEABLE,
        respell: |f| with(f, 2, &format!("0{}", f[2])),
        want: ChallengeMismatch,
        because: "canonical decimal",
    },
    Case {
        name: "expiry_two_leading_zeros",
        source: MALLEABLE,
        respell: |f| with(f, 2, &format!("00{}", f[2])),
        want: ChallengeMismatch,
        because: "canonical decimal",
    },
    Case {
        name: "expiry_plus_sign",
        source: MALLEABLE,
        respell: |f| with(f, 2, &format!("+{}", f[2])),
        want: ChallengeMismatch,
        because: "canonical decimal",
    },
    Case {
        name: "expiry_trailing_space",
        source: MALLEABLE,
        respell: |f| with(f, 2, &format!("{} ", f[2])),
        want: ChallengeMismatch,
        because: "canonical decimal",
    },
    Case {
        name: "expiry_in_hex",
        source: MALLEABLE,
        respell: |f| with(f, 2, &format!("0x{:x}", f[2].parse::<u64>().unwrap())),
        want: ChallengeMismatch,
        because: "canonical decimal",
    },
    Case {
        name: "version_capitalized",
        source: MALLEABLE,
        respell: |f| with(f, 0, "V1"),
        want: ChallengeMismatch,
        because: "not a keyed challenge",
    },
    Case {
        name: "version_zero_padded",
        source: MALLEABLE,
        respell: |f| with(f, 0, "v01"),
        want: ChallengeMismatch,
        because: "not a keyed challenge",
    },
    Case {
        name: "key_id_padded_with_space",
        source: MALLEABLE,
        respell: |f| with(f, 1, &format!("{} ", f[1])),
        want: ChallengeMismatch,
        because: "key id is not one",
    },
    Case {
        name: "nonce_padded",
        source: ENCODING,
        respell: |f| with(f, 3, &format!("{}==", f[3])),
        want: ChallengeMismatch,
        because: "nonce is not canonical",
    },
    Case {
        name: "nonce_unused_bits_set",
        source: ENCODING,
        respell: |f| with(f, 3, &flip_last_bit(f[3])),
        want: ChallengeMismatch,
        because: "nonce is not canonical",
    },
    Case {
        name: "mac_padded",
        source: ENCODING,
        respell: |f| with(f, 4, &format!("{}=", f[4])),
        want: ChallengeMismatch,
        because: "MAC is not canonical",
    },
    Case {
        name: "mac_unused_bits_set",
        source: ENCODING,
        respell: |f| with(f, 4, &flip_last_bit(f[4])),
        want: ChallengeMismatch,
        because: "MAC is not canonical",
    },
    Case {
        name: "mac_standard_alphabet",
        source: ENCODING,
        respell: |f| with(f, 4, &format!("{}+", &f[4][..42])),
        want: ChallengeMismatch,
        because: "MAC is not canonical",
    },
    Case {
        name: "trailing_dot",
        source: MALLEABLE,
        respell: |f| format!("{}.", join(f)),
        want: ChallengeMismatch,
        because: "not a keyed challenge",
    },
];

const KEY: &str = "k1";

fn ring() -> ChallengeKeys {
    ChallengeKeys::new(ChallengeKey::new(KEY, vec![0x5a; 32]).unwrap())
}

fn agent() -> Credentials {
    Credentials::new("AKIAEXAMPLEKEY000001", "agent-secret", None)
}

/// Each spelling, through the whole verifier on both keyed paths, re-signed by the agent.
#[tokio::test]
async fn keyed_challenges_in_another_spelling_are_refused_before_anything_is_sent() {
    let sts = FakeSts::start().await;
    let guard = Arc::new(MemoryReplayGuard::default());
    let v: Verifier = sts.builder().challenge_keys(ring()).replay_guard(guard.clone()).build();
    let now = SystemTime::now();
    let issued = ring().issue("iam-token", now).unwrap();
    let fields: Vec<&str> = issued.split('.').collect();
    let mut report = Report::default();
    for case in CASES {
        let spelled = (case.respell)(&fields);
        assert_ne!(spelled, issued, "{}: not another spelling", case.name);
        let raw = sign_join_request(&agent(), &JoinRequest::new(&spelled), now).unwrap();
        for (path, challenge) in [("envelope", Challenge::Keyed(&spelled)), ("in request", Challenge::KeyedInRequest)] {
            let before = sts.requests();
            let result = v.verify("iam-token", challenge, Proof::Forwarded(&raw), now).await;
            let outcome = match result {
                Ok(verdict) => Err(format!("{path}: ALLOWED as {}", verdict.identity().arn().as_str())),
                Err(e) if e.kind() != case.want => Err(format!("{path}: kind {} (want {})", e.kind(), case.want)),
                Err(e) if !e.detail().contains(case.because) => {
                    Err(format!("{path}: refused by another check: {:?} (want {:?})", e.detail(), case.because))
                }
                Err(_) if sts.requests() != before => Err(format!("{path}: a request reached STS")),
                Err(e) if secrets_in(&raw, &spelled).iter().any(|s| format!("{e} {e:?}").contains(s.as_str())) => {
                    Err(format!("{path}: a secret of the input leaked"))
                }
                Err(_) => Ok(()),
            };
            report.record(case.name, case.source, outcome);
        }
    }
    // Positive control: the issued spelling joins once, then is a replay, on either path.
    let raw = sign_join_request(&agent(), &JoinRequest::new(&issued), now).unwrap();
    let first = v.verify("iam-token", Challenge::Keyed(&issued), Proof::Forwarded(&raw), now).await;
    assert!(first.is_ok(), "the issued spelling is allowed: {first:?}");
    let again = v.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&raw), now).await.unwrap_err();
    assert_eq!(again.kind(), ChallengeReplayed);
    assert_eq!(sts.requests(), 1, "only the allowed join reached STS");
    assert_eq!(guard.len(), 1, "one claim for one issued challenge, however it was spelled");
    report.finish(CASES.len() * 2);
}

/// A keyed challenge's claim lasts until the challenge expires, not the request's whole
/// freshness window (issue 18: SECURITY.md said so; every claim lasted until signing + 15 min).
#[tokio::test]
async fn a_keyed_claim_ends_when_the_challenge_expires() {
    let sts = FakeSts::start().await;
    let v: Verifier = sts.builder().challenge_keys(ring()).build();
    let now = SystemTime::now();
    let (issued, expires) = ring().issue_with_expiry("iam-token", now).unwrap();
    let raw = sign_join_request(&agent(), &JoinRequest::new(&issued), now).unwrap();
    let prepared = v.start("iam-token", Challenge::Keyed(&issued), Proof::Forwarded(&raw), now).unwrap();
    assert_eq!(prepared.claim_until(), expires);
    assert!(expires <= now + Duration::from_secs(301));
    // A plain challenge's claim lasts the freshness window.
    let plain = iam_join::challenge::generate().unwrap();
    let raw = sign_join_request(&agent(), &JoinRequest::new(&plain), now).unwrap();
    let prepared = v.start("iam-token", Challenge::Plain(&plain), Proof::Forwarded(&raw), now).unwrap();
    let window = prepared.claim_until().duration_since(now).unwrap();
    assert!(window > Duration::from_secs(899) && window <= Duration::from_secs(900), "{window:?}");
}
