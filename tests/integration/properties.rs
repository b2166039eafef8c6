//! Property tests: the request validator never lets through a request whose rebuilt form differs
//! from what was signed, and no parser panics on arbitrary input. (The matcher's property against
//! the reference lives in `matching`.)

use std::collections::BTreeMap;

use iam_join::{AccountId, Arn, ForwardedRequest, RequestPolicy, TokenSet, parse_sts_response};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

use crate::requests::{challenge, signed_at, teleport};

/// One edit of the raw request.
#[derive(Clone, Debug)]
enum Edit {
    /// Insert `name: value` as the header line at this index.
    Insert(usize, &'static str, &'static str),
    /// Delete the header line at this index.
    Delete(usize),
    /// Flip the case of the header name at this index.
    Recase(usize),
    /// Put spaces or tabs around the value of the header at this index.
    Pad(usize, &'static str),
    /// Overwrite the byte at this offset in the head.
    Byte(usize, u8),
    /// Append bytes after the body.
    Append(&'static str),
}

const NAMES: &[&str] = &[
    "Host",
    "host",
    "HOST",
    "X-Amz-Date",
    "x-amz-date",
    "Content-Type",
    "Content-Length",
    "X-Teleport-Challenge",
    "Accept",
    "Authorization",
    "X-Amz-Security-Token",
    "Transfer-Encoding",
    "X-Forwarded-Host",
    "User-Agent",
    "X-Amz-Target",
];
const VALUES: &[&str] = &[
    "sts.us-east-1.amazonaws.com",
    "evil.example",
    "20261128T150000Z",
    "application/x-www-form-urlencoded; charset=utf-8",
    "43",
    "kXr0Vg7oQ3lT2x0yVv9pJ6mN4bH8cD1eF5gA7iK9sLu",
    "chunked",
    "",
    "application/json",
];
const BYTES: &[u8] = b" \t\r\n:,;=/A\0\x80-";

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..12usize, prop::sample::select(NAMES), prop::sample::select(VALUES))
            .prop_map(|(i, n, v)| Edit::Insert(i, n, v)),
        (0..12usize).prop_map(Edit::Delete),
        (0..12usize).prop_map(Edit::Recase),
        (0..12usize, prop::sample::select(&[" ", "\t", "  ", " \t "][..])).prop_map(|(i, p)| Edit::Pad(i, p)),
        (0..1400usize, prop::sample::select(BYTES)).prop_map(|(i, b)| Edit::Byte(i, b)),
        prop::sample::select(&["", "x", "\r\n", "GET / HTTP/1.1\r\n\r\n"][..]).prop_map(Edit::Append),
    ]
}

fn apply(raw: &str, edits: &[Edit]) -> Vec<u8> {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines: Vec<Vec<u8>> = head.split("\r\n").map(|l| l.as_bytes().to_vec()).collect();
    let mut tail = body.as_bytes().to_vec();
    for e in edits {
        let n = lines.len().max(2) - 1; // header lines are 1..=n
        match *e {
            Edit::Insert(i, name, value) => lines.insert(1 + i % (n + 1), format!("{name}: {value}").into_bytes()),
            Edit::Delete(i) if n >= 1 => {
                lines.remove(1 + i % n);
            }
            Edit::Recase(i) if n >= 1 => {
                let l = &mut lines[1 + i % n];
                let colon = l.iter().position(|&b| b == b':').unwrap_or(0);
                for b in &mut l[..colon] {
                    *b = if b.is_ascii_uppercase() { b.to_ascii_lowercase() } else { b.to_ascii_uppercase() };
                }
            }
            Edit::Pad(i, pad) if n >= 1 => {
                let l = &mut lines[1 + i % n];
                if let Some(colon) = l.iter().position(|&b| b == b':') {
                    l.splice(colon + 1..colon + 1, pad.bytes());
                    l.extend_from_slice(pad.as_bytes());
                }
            }
            Edit::Byte(at, b) => {
                let total: usize = lines.iter().map(|l| l.len()).sum();
                let mut at = at % total.max(1);
                for l in &mut lines {
                    if at < l.len() {
                        l[at] = b;
                        break;
                    }
                    at -= l.len();
                }
            }
            Edit::Append(s) => tail.extend_from_slice(s.as_bytes()),
            _ => {}
        }
    }
    let mut out = lines.join(&b"\r\n"[..]);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&tail);
    out
}

/// An independent reading of an HTTP/1.1 request: request line, every header (lowercase name,
/// value without surrounding spaces and tabs) in order, and the body.
struct Plain {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn plain(raw: &[u8]) -> Plain {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("accepted requests have a head end");
    let head = std::str::from_utf8(&raw[..end]).expect("accepted heads are UTF-8");
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_owned();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.to_ascii_lowercase(), v.trim_matches([' ', '\t']).to_owned())
        })
        .collect();
    Plain { request_line, headers, body: raw[end + 4..].to_vec() }
}

fn signed_names(p: &Plain) -> Vec<String> {
    let auth = &p.headers.iter().find(|(n, _)| n == "authorization").unwrap().1;
    let list = auth.split("SignedHeaders=").nth(1).unwrap().split(',').next().unwrap();
    list.split(';').map(str::to_owned).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Whatever edits an attacker makes, an accepted request's rebuilt form has the signed
    /// method, path, body, host and signed header values; nothing else but Authorization and the
    /// session token is sent.
    #[test]
    fn accepted_requests_rebuild_to_what_was_signed(edits in prop::collection::vec(edit(), 1..5)) {
        let raw = apply(&teleport(), &edits);
        let Ok(req) = ForwardedRequest::parse(&raw, &challenge(), &RequestPolicy::new(), signed_at()) else {
            return Ok(());
        };
        let sent = plain(&req.replay().to_http1());
        let got = plain(&raw);
        prop_assert_eq!(&got.request_line, "POST / HTTP/1.1");
        prop_assert_eq!(&sent.request_line, "POST / HTTP/1.1");
        prop_assert_eq!(&got.body, &sent.body);
        prop_assert_eq!(&sent.body[..], iam_join::GET_CALLER_IDENTITY_BODY);
        let signed = signed_names(&got);
        let mut received: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (n, v) in &got.headers {
            received.entry(n.as_str()).or_default().push(v.as_str());
        }
        for (n, v) in &sent.headers {
            if n == "authorization" || n == "content-length" || n == "x-amz-security-token" {
                // Sent exactly as received, from the one occurrence there was.
                prop_assert_eq!(received.get(n.as_str()).map(Vec::as_slice), Some(&[v.as_str()][..]), "{}", n);
                continue;
            }
            prop_assert!(signed.contains(n), "{} is sent but not signed", n);
            prop_assert_eq!(received.get(n.as_str()).map(Vec::as_slice), Some(&[v.as_str()][..]), "{}", n);
        }
        for n in &signed {
            prop_assert!(sent.headers.iter().any(|(s, _)| s == n), "signed {} is not sent", n);
        }
        let host = &sent.headers.iter().find(|(n, _)| n == "host").unwrap().1;
        prop_assert_eq!(host, req.endpoint().host());
    }

    #[test]
    fn request_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = ForwardedRequest::parse(&bytes, &challenge(), &RequestPolicy::new(), signed_at());
    }

    #[test]
    fn response_parser_never_panics(
        status in prop::sample::select(&[200u16, 302, 400, 403, 500][..]),
        json in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let content_type = if json { "application/json" } else { "text/xml" };
        if let Ok(answer) = parse_sts_response(status, Some(content_type), &body) {
            prop_assert_eq!(status, 200);
            prop_assert_eq!(answer.identity.arn().account(), answer.identity.account());
        }
    }

    #[test]
    fn response_parser_never_panics_near_valid_xml(edits in prop::collection::vec((0..600usize, prop::sample::select(&b"<>/&;:\"' \0xA"[..])), 1..6)) {
        let mut body = std::fs::read(crate::common::vectors("sts/ok_assumed_role.xml")).unwrap();
        for (at, b) in edits {
            let at = at % body.len();
            body[at] = b;
        }
        let _ = parse_sts_response(200, Some("text/xml"), &body);
    }

    #[test]
    fn token_parser_never_panics(text in "[a-z_:\\- \\n\\[\\]{}\"'*?0-9&!|>]{0,400}") {
        let _ = TokenSet::from_yaml(&format!("kind: token\nversion: v2\nmetadata:\n  name: t\nspec:\n{text}"));
        let _ = TokenSet::from_yaml(&text);
    }

    #[test]
    fn arn_and_organizations_parsers_never_panic(text in "\\PC{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Arn::parse(&text);
        let _ = AccountId::parse(&text);
        let account = AccountId::parse("123456789012").unwrap();
        let _ = iam_join::organizations::parse_describe_account(&account, 200, &bytes);
        let _ = iam_join::organizations::parse_list_parents(200, &bytes);
        let _ = iam_join::organizations::parse_describe_account(&account, 200, text.as_bytes());
    }
}

/// The property above must not hold vacuously: a good share of the edited requests is accepted
/// (padding, recasing, unsigned headers), so the rebuilt form is really compared.
#[test]
fn rebuild_property_sees_accepted_requests() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(edit(), 1..5);
    let mut accepted = 0;
    for _ in 0..500 {
        let edits = strategy.new_tree(&mut runner).unwrap().current();
        let raw = apply(&teleport(), &edits);
        accepted +=
            usize::from(ForwardedRequest::parse(&raw, &challenge(), &RequestPolicy::new(), signed_at()).is_ok());
    }
    assert!(accepted >= 50, "only {accepted} of 500 edited requests were accepted");
    eprintln!("{accepted} of 500 edited requests accepted");
}

/// Characters an alternative spelling of a keyed challenge is made of: digits, signs, padding,
/// both base64 alphabets' extra characters, the separator, white space, case.
const RESPELL: &[char] = &['0', '1', '+', '-', '=', '_', '/', '.', ' ', '\t', 'A', 'a', 'V', 'v', 'x'];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any keyed challenge the ring accepts re-encodes to itself, and is the one it issued: a
    /// challenge has one spelling, so one issued challenge is one single-use claim (issue 18).
    #[test]
    fn an_accepted_keyed_challenge_is_the_issued_one_in_its_own_spelling(
        edits in proptest::collection::vec((0u8..3, any::<usize>(), proptest::sample::select(RESPELL)), 0..4)
    ) {
        use iam_join::challenge::{ChallengeKey, ChallengeKeys};
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let ring = ChallengeKeys::new(ChallengeKey::new("k1", vec![3; 32]).unwrap());
        let issued = ring.issue("iam-token", now).unwrap();
        let mut s: Vec<char> = issued.chars().collect();
        for (op, at, c) in edits {
            let at = at % (s.len() + 1);
            match op {
                0 => s.insert(at, c),
                1 if at < s.len() => { s.remove(at); }
                _ if at < s.len() => s[at] = c,
                _ => {}
            }
        }
        let s: String = s.into_iter().collect();
        if let Ok(checked) = ring.check(&s, "iam-token", now) {
            prop_assert_eq!(checked.to_string(), s.clone());
            prop_assert_eq!(s, issued);
        }
    }
}

/// The property above is not vacuous: among small edits of an issued challenge it meets
/// accepted ones (no edit, or one that writes a character over itself) and refused ones.
#[test]
fn the_respelling_property_sees_both_outcomes() {
    use iam_join::challenge::{ChallengeKey, ChallengeKeys};
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    let ring = ChallengeKeys::new(ChallengeKey::new("k1", vec![3; 32]).unwrap());
    let issued = ring.issue("iam-token", now).unwrap();
    assert!(ring.check(&issued, "iam-token", now).is_ok());
    let zero_padded = issued.replacen(".1800000300.", ".01800000300.", 1);
    assert_ne!(zero_padded, issued);
    assert!(ring.check(&zero_padded, "iam-token", now).is_err());
}
