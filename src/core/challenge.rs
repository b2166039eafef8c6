//! Join challenges: plain random ones, as Teleport issues them (32 random bytes, unpadded
//! standard base64), and keyed ones ([`ChallengeKeys`]) that any replica holding the keys can
//! check without shared state: expiring, bound to the token they were issued for, and MACed.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::core::error::{Error, ErrorKind};

/// The header the challenge travels in unless configured otherwise (Teleport's).
pub const DEFAULT_CHALLENGE_HEADER: &str = "x-teleport-challenge";

/// Random bytes per challenge: 256 bits, so a challenge is never guessed or repeated.
pub const CHALLENGE_BYTES: usize = 32;

/// The shortest issued challenge a verifier accepts: 16 random bytes in unpadded base64, the
/// most compact printable form of 128 bits. An empty or short challenge (a server that looked up
/// a missing challenge as "") would let an agent that signed exactly that value through.
pub const MIN_CHALLENGE_LEN: usize = 22;

/// Refuses an issued challenge too short to carry 16 bytes of entropy, as a setup mistake.
pub(crate) fn check_issued(challenge: &str) -> Result<(), crate::core::error::Error> {
    if challenge.len() < MIN_CHALLENGE_LEN {
        return Err(crate::core::error::Error::config_invalid(format!(
            "the issued challenge has {} characters; at least {MIN_CHALLENGE_LEN} characters (16 random bytes) are required",
            challenge.len()
        )));
    }
    Ok(())
}

/// A fresh challenge from the operating system's random source: 32 bytes, unpadded standard
/// base64 (43 characters).
///
/// ```
/// let c = iam_join::challenge::generate().unwrap();
/// assert_eq!(c.len(), 43);
/// assert_ne!(c, iam_join::challenge::generate().unwrap());
/// ```
pub fn generate() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; CHALLENGE_BYTES];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(STANDARD_NO_PAD.encode(bytes))
}

/// Compares a received challenge with the issued one in time independent of where they differ.
pub(crate) fn matches(received: &str, issued: &str) -> bool {
    // Lengths are public (every challenge has the same length); contents are compared in constant time.
    received.len() == issued.len() && bool::from(received.as_bytes().ct_eq(issued.as_bytes()))
}

/// Which challenge a join must have signed, and how the verifier checks it.
#[non_exhaustive]
#[derive(Clone, Copy)]
pub enum Challenge<'a> {
    /// A challenge the caller issued and remembers (random: [`generate`]): the request must have
    /// signed exactly it. Refused as `config_invalid` when shorter than [`MIN_CHALLENGE_LEN`].
    Plain(&'a str),
    /// A keyed challenge the agent sent back with its join (in the envelope): checked against
    /// the verifier's key ring for the token (spelling, key, MAC, expiry), and the request must
    /// have signed exactly it.
    Keyed(&'a str),
    /// A keyed challenge read from the signed request itself, for envelopes that do not carry
    /// one; then checked against the key ring as [`Challenge::Keyed`].
    KeyedInRequest,
}

/// Lengths only: a challenge is a bearer value while it is valid.
impl fmt::Debug for Challenge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Challenge::Plain(c) => write!(f, "Plain(<{} chars>)", c.len()),
            Challenge::Keyed(c) => write!(f, "Keyed(<{} chars>)", c.len()),
            Challenge::KeyedInRequest => f.write_str("KeyedInRequest"),
        }
    }
}

/// The shortest challenge key: 256 bits.
pub const MIN_CHALLENGE_KEY_BYTES: usize = 32;
/// How long a keyed challenge is valid unless configured otherwise.
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest a keyed challenge may be valid: the request freshness window (`MAX_CLOCK_SKEW`,
/// 15 minutes), past which the signed request would be refused anyway. A test keeps them equal.
pub const MAX_CHALLENGE_TTL: Duration = Duration::from_secs(15 * 60);
/// The largest challenge key file read: a key line is under 100 bytes, so this holds hundreds.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;
/// The longest key id: ids travel in every challenge.
pub const MAX_KEY_ID_LEN: usize = 32;
/// The random bytes in each keyed challenge.
const NONCE_BYTES: usize = 16;
/// What the MAC covers besides the fields: a domain separator, so the key signs nothing else.
const MAC_DOMAIN: &[u8] = b"iam-join challenge v1";

/// A secret key for keyed challenges: an id (travels in every challenge) and at least 256 bits.
/// The secret is zeroized on drop and never printed: `Debug` shows the id and the length.
#[derive(Clone)]
pub struct ChallengeKey {
    id: String,
    secret: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChallengeKey {{ id: {:?}, secret: <{} bytes> }}", self.id, self.secret.len())
    }
}

/// `challenge_mismatch`, for this module and the request check: what is wrong with the
/// challenge the client sent or signed is the client's to see.
pub(crate) fn mismatch(detail: impl Into<String>) -> Error {
    Error::about_request(ErrorKind::ChallengeMismatch, detail)
}

impl ChallengeKey {
    /// A key from its id (1 to 32 letters, digits, `-` or `_`) and secret (at least 32 bytes).
    pub fn new(id: &str, secret: Vec<u8>) -> Result<Self, Error> {
        let secret = Zeroizing::new(secret);
        if !is_key_id(id) {
            return Err(Error::config_invalid(format!(
                "challenge key id {:?} must be 1 to {MAX_KEY_ID_LEN} letters, digits, - or _",
                id.chars().take(40).collect::<String>()
            )));
        }
        if secret.len() < MIN_CHALLENGE_KEY_BYTES {
            return Err(Error::config_invalid(format!(
                "challenge key {id:?} has {} bytes; at least {MIN_CHALLENGE_KEY_BYTES} (256 bits) are required",
                secret.len()
            )));
        }
        Ok(Self { id: id.to_owned(), secret })
    }

    /// A fresh random 256-bit key.
    pub fn generate(id: &str) -> Result<Self, Error> {
        let mut secret = vec![0u8; MIN_CHALLENGE_KEY_BYTES];
        getrandom::fill(&mut secret).map_err(|e| Error::config_invalid(format!("no random source: {e}")))?;
        Self::new(id, secret)
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as one line of a key file, `ID:BASE64`. This is the secret: write it to the key
    /// file and nowhere else.
    pub fn to_line(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}:{}", self.id, STANDARD.encode(self.secret.as_slice())))
    }

    fn mac(&self, expiry: u64, nonce: &str, token: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in [MAC_DOMAIN, self.id.as_bytes(), expiry.to_string().as_bytes(), nonce.as_bytes(), token.as_bytes()]
        {
            // Length-prefixed, so no two field lists give the same input.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }
}

/// A key ring for keyed challenges: one active key that issues, and older keys still accepted,
/// so keys rotate without refusing challenges in flight. Shared by every replica, it lets any of
/// them check a challenge another issued, with no shared state.
///
/// A challenge is `v1.KEYID.EXPIRY.NONCE.MAC`: the expiry in Unix seconds, 16 random bytes, and an
/// HMAC-SHA256 over the version, key id, expiry, nonce and the token name it was issued for.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use iam_join::challenge::{ChallengeKey, ChallengeKeys};
/// let keys = ChallengeKeys::new(ChallengeKey::generate("k1").unwrap());
/// let now = SystemTime::now();
/// let c = keys.issue("iam-token", now).unwrap();
/// assert!(keys.check(&c, "iam-token", now).is_ok());
/// assert!(keys.check(&c, "other-token", now).is_err());
/// assert!(keys.check(&c, "iam-token", now + Duration::from_secs(301)).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct ChallengeKeys {
    active: ChallengeKey,
    older: Vec<ChallengeKey>,
    ttl: Duration,
}

impl ChallengeKeys {
    /// A ring with one active key and the default lifetime (5 minutes).
    pub fn new(active: ChallengeKey) -> Self {
        Self { active, older: Vec::new(), ttl: DEFAULT_CHALLENGE_TTL }
    }

    /// Also accepts challenges issued under `key` (a key being rotated out). Keep it until its
    /// last challenge has expired: the lifetime after the rotation.
    pub fn accept(mut self, key: ChallengeKey) -> Result<Self, Error> {
        if key.id == self.active.id || self.older.iter().any(|k| k.id == key.id) {
            return Err(Error::config_invalid(format!("challenge key id {:?} is in the ring twice", key.id)));
        }
        self.older.push(key);
        Ok(self)
    }

    /// How long issued challenges stay valid: at most [`MAX_CHALLENGE_TTL`] (15 minutes).
    pub fn ttl(mut self, ttl: Duration) -> Result<Self, Error> {
        if ttl.is_zero() || ttl > MAX_CHALLENGE_TTL {
            return Err(Error::config_invalid(format!(
                "challenge lifetime {}s must be between 1s and {}s",
                ttl.as_secs(),
                MAX_CHALLENGE_TTL.as_secs()
            )));
        }
        self.ttl = ttl;
        Ok(self)
    }

    /// A key ring from a key file: one `ID:BASE64` key per line, the first line the active key;
    /// blank lines and lines starting with `#` are skipped. Errors name the line, never the key.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: &str| Error::config_invalid(format!("challenge key file, line {}: {what}", n + 1));
            let (id, b64) = line.split_once(':').ok_or_else(|| at("expected ID:BASE64"))?;
            let secret = STANDARD.decode(b64.trim()).map_err(|_| at("the key is not base64"))?;
            let key = ChallengeKey::new(id.trim(), secret).map_err(|e| at(e.detail()))?;
            keys.push(key);
        }
        let mut keys = keys.into_iter();
        let active = keys.next().ok_or_else(|| Error::config_invalid("the challenge key file holds no key"))?;
        keys.try_fold(Self::new(active), Self::accept)
    }

    /// The id of the key that issues.
    pub fn active_id(&self) -> &str {
        &self.active.id
    }

    /// Issues a challenge for `token`, valid until `now` + the lifetime.
    pub fn issue(&self, token: &str, now: SystemTime) -> Result<String, Error> {
        self.issue_with_expiry(token, now).map(|(challenge, _)| challenge)
    }

    /// [`ChallengeKeys::issue`], with the moment the challenge expires (whole seconds, as the
    /// challenge carries it), for an API that tells the agent.
    pub fn issue_with_expiry(&self, token: &str, now: SystemTime) -> Result<(String, SystemTime), Error> {
        let expiry = unix(now) + self.ttl.as_secs();
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| Error::config_invalid(format!("no random source: {e}")))?;
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let mac = URL_SAFE_NO_PAD.encode(self.active.mac(expiry, &nonce, token).finalize().into_bytes());
        let challenge = format!("v1.{}.{expiry}.{nonce}.{mac}", self.active.id);
        Ok((challenge, UNIX_EPOCH + Duration::from_secs(expiry)))
    }

    /// Checks `challenge` for `token` at `now`: it is a challenge this ring issued (or accepts),
    /// in exactly the spelling the issuer writes (see [`KeyedChallenge`]), for `token`, with a
    /// valid MAC (compared in constant time), and unexpired. Each refusal is
    /// `challenge_mismatch`, with a message that names the reason but never the key.
    pub fn check(&self, challenge: &str, token: &str, now: SystemTime) -> Result<KeyedChallenge, Error> {
        // The spelling first: a field that parsed more leniently than it is MACed would make one
        // issued challenge many (each a new single-use claim).
        let parts = KeyedParts::parse(challenge)?;
        let key = std::iter::once(&self.active)
            .chain(&self.older)
            .find(|k| k.id == parts.key_id)
            .ok_or_else(|| mismatch("the challenge names a key this server does not hold"))?;
        key.mac(parts.expiry, parts.nonce_text, token)
            .verify_slice(&parts.mac)
            .map_err(|_| mismatch("the challenge's MAC does not match: forged, or issued for another token"))?;
        let expires = UNIX_EPOCH + Duration::from_secs(parts.expiry);
        if expires <= now {
            return Err(mismatch("the challenge has expired; the agent must ask for a new one"));
        }
        if expires > now + MAX_CHALLENGE_TTL {
            return Err(mismatch("the challenge expires further ahead than any this server issues"));
        }
        Ok(KeyedChallenge { key_id: key.id.clone(), expiry: parts.expiry, nonce: parts.nonce, mac: parts.mac })
    }
}

/// The longest expiry field: 12 decimal digits reach the year 33658, and the shortest spelling
/// of any real expiry is 10 digits.
const MAX_EXPIRY_DIGITS: usize = 12;
/// The nonce and MAC fields' exact lengths in unpadded base64url.
const NONCE_CHARS: usize = 22;
const MAC_CHARS: usize = 43;

/// A keyed challenge's fields, read strictly: only the one spelling [`ChallengeKeys::issue`]
/// writes is accepted. `v1` exactly; a key id of 1 to 32 letters, digits, `-` or `_`; the expiry
/// in canonical decimal (digits only, no sign, no leading zero, at most 12); the nonce and the
/// MAC in canonical unpadded base64url (exactly 22 and 43 characters, no padding, no other
/// alphabet, unused bits zero).
struct KeyedParts<'a> {
    key_id: &'a str,
    expiry: u64,
    nonce_text: &'a str,
    nonce: [u8; NONCE_BYTES],
    mac: [u8; 32],
}

impl<'a> KeyedParts<'a> {
    fn parse(challenge: &'a str) -> Result<Self, Error> {
        let mut parts = challenge.split('.');
        let (Some("v1"), Some(key_id), Some(expiry), Some(nonce_text), Some(mac_text), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(mismatch("the challenge is not a keyed challenge of this server (v1.KEY.EXPIRY.NONCE.MAC)"));
        };
        if !is_key_id(key_id) {
            return Err(mismatch("the challenge's key id is not one this server writes"));
        }
        let canonical_decimal = (1..=MAX_EXPIRY_DIGITS).contains(&expiry.len())
            && expiry.bytes().all(|b| b.is_ascii_digit())
            && !expiry.starts_with('0');
        let expiry = canonical_decimal
            .then(|| expiry.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| mismatch("the challenge's expiry is not a time in canonical decimal"))?;
        let nonce = canonical_base64url::<NONCE_BYTES>(nonce_text, NONCE_CHARS)
            .ok_or_else(|| mismatch("the challenge's nonce is not canonical base64url"))?;
        let mac = canonical_base64url::<32>(mac_text, MAC_CHARS)
            .ok_or_else(|| mismatch("the challenge's MAC is not canonical base64url"))?;
        Ok(Self { key_id, expiry, nonce_text, nonce, mac })
    }
}

/// `text` as exactly `N` bytes of unpadded base64url in its one canonical spelling: `chars`
/// characters, the URL-safe alphabet, no padding, and unused trailing bits zero (the `base64`
/// engine refuses nonzero ones; the re-encoding below says so again, in constant time).
fn canonical_base64url<const N: usize>(text: &str, chars: usize) -> Option<[u8; N]> {
    if text.len() != chars {
        return None;
    }
    let decoded = URL_SAFE_NO_PAD.decode(text).ok()?;
    let bytes: [u8; N] = decoded.try_into().ok()?;
    let again = URL_SAFE_NO_PAD.encode(bytes);
    bool::from(again.as_bytes().ct_eq(text.as_bytes())).then_some(bytes)
}

fn is_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A keyed challenge that passed [`ChallengeKeys::check`]. `Display` writes it back in its one
/// canonical spelling, which is the spelling that was checked.
///
/// ```
/// use std::time::SystemTime;
/// use iam_join::challenge::{ChallengeKey, ChallengeKeys};
/// let keys = ChallengeKeys::new(ChallengeKey::generate("k1").unwrap());
/// let c = keys.issue("iam-token", SystemTime::now()).unwrap();
/// let checked = keys.check(&c, "iam-token", SystemTime::now()).unwrap();
/// assert_eq!(checked.to_string(), c);
/// assert_eq!(checked.key_id(), "k1");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedChallenge {
    key_id: String,
    expiry: u64,
    nonce: [u8; NONCE_BYTES],
    mac: [u8; 32],
}

impl KeyedChallenge {
    /// When the challenge expires (whole seconds, as it carries it).
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expiry)
    }

    /// The id of the key that issued it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl fmt::Display for KeyedChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v1.{}.{}.{}.{}",
            self.key_id,
            self.expiry,
            URL_SAFE_NO_PAD.encode(self.nonce),
            URL_SAFE_NO_PAD.encode(self.mac)
        )
    }
}

/// Key id and expiry only: the nonce and the MAC are as good as the challenge.
impl fmt::Debug for KeyedChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedChallenge")
            .field("key_id", &self.key_id)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// The key a challenge is claimed under in a replay guard: `iam-join:c:` and a hex SHA-256, so
/// stores never hold the challenge.
///
/// It names the challenge's identity, not its spelling. For a challenge of the keyed shape
/// (`v1.KEYID.EXPIRY.NONCE.MAC`) that is the key id and the nonce's bytes, read leniently (any
/// case of `v1`, surrounding white space, padding, either base64 alphabet, stray bits): even if a
/// check upstream were ever lenient about a field, two spellings of one issued challenge could
/// not be two claims. Lenience here can only merge claims, never split them, and two challenges
/// an issuer wrote never share a nonce. Anything else (plain random challenges) is claimed on its
/// exact bytes, which is what the verifier compares.
pub(crate) fn claim_key(challenge: &str) -> String {
    let mut h = Sha256::new();
    match keyed_identity(challenge) {
        Some((key_id, nonce)) => {
            for part in [&b"iam-join claim: keyed v1"[..], key_id.as_bytes(), &nonce] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
        }
        None => {
            for part in [&b"iam-join claim: plain"[..], challenge.as_bytes()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
        }
    }
    let mut key = String::with_capacity(11 + 64);
    key.push_str("iam-join:c:");
    for b in h.finalize() {
        let _ = write!(key, "{b:02x}"); // writing to a String cannot fail
    }
    key
}

/// The key id and nonce bytes of anything shaped like a keyed challenge, read as leniently as
/// any parser might ever read them.
fn keyed_identity(challenge: &str) -> Option<(&str, Vec<u8>)> {
    let mut parts = challenge.split('.');
    let (Some(version), Some(key_id), Some(_), Some(nonce), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if !version.trim().eq_ignore_ascii_case("v1") {
        return None;
    }
    let nonce: String = nonce
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let bytes = lenient.decode(nonce).ok().filter(|b| !b.is_empty())?;
    Some((key_id.trim(), bytes))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> ChallengeKey {
        ChallengeKey::new(id, vec![byte; 32]).unwrap()
    }

    #[test]
    fn keyed_challenges_are_bound_expiring_and_rotatable() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let old = ChallengeKeys::new(key("k1", 1));
        let c = old.issue("t", now).unwrap();
        assert!(c.starts_with("v1.k1.1800000300."), "{c}");
        assert!(c.len() >= MIN_CHALLENGE_LEN && c.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(old.check(&c, "t", now).unwrap().expires(), UNIX_EPOCH + Duration::from_secs(1_800_000_300));
        let (c2, expires) = old.issue_with_expiry("t", now + Duration::from_millis(1500)).unwrap();
        assert_eq!(
            old.check(&c2, "t", now).unwrap().expires(),
            expires,
            "the expiry told is the one the challenge carries"
        );
        assert_eq!(expires, UNIX_EPOCH + Duration::from_secs(1_800_000_301));
        // Rotation: the new active key issues; the old one is still accepted.
        let ring = ChallengeKeys::new(key("k2", 2)).accept(key("k1", 1)).unwrap();
        assert!(ring.check(&c, "t", now).is_ok());
        assert!(ring.issue("t", now).unwrap().starts_with("v1.k2."));
        // Dropped from the ring: refused.
        let new_only = ChallengeKeys::new(key("k2", 2));
        let refused = |keys: &ChallengeKeys, c: &str, token: &str, at: SystemTime| {
            let e = keys.check(c, token, at).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ChallengeMismatch);
            e.detail().to_owned()
        };
        assert!(refused(&new_only, &c, "t", now).contains("does not hold"));
        assert!(refused(&old, &c, "u", now).contains("another token"));
        assert!(refused(&old, &c, "t", now + Duration::from_secs(300)).contains("expired"));
        // A same-id key with another secret: forged.
        assert!(refused(&ChallengeKeys::new(key("k1", 9)), &c, "t", now).contains("MAC does not match"));
        // Edited fields break the MAC.
        let later = c.replace(".1800000300.", ".1800000900.");
        assert!(refused(&old, &later, "t", now).contains("MAC does not match"));
        for bad in ["", "v2.k1.1.a.b", "v1.k1.x.a.b", "v1.k1.1.a", "v1.k1.1.a.b.c", &"v1.k1.1.a.".repeat(2)] {
            refused(&old, bad, "t", now);
        }
        // A plain random challenge is not keyed.
        refused(&old, &generate().unwrap(), "t", now);
    }

    /// Every field in every spelling but the issuer's is refused before the MAC is checked, so
    /// one issued challenge is one claim (the expiry once accepted leading zeros: one challenge,
    /// three joins).
    #[test]
    fn only_the_issuers_spelling_is_accepted() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ring = ChallengeKeys::new(key("k1", 1));
        let c = ring.issue("t", now).unwrap();
        let f: Vec<&str> = c.split('.').collect();
        let with = |i: usize, v: &str| {
            let mut g: Vec<String> = f.iter().map(|s| (*s).to_owned()).collect();
            g[i] = v.to_owned();
            g.join(".")
        };
        let std_alphabet = |s: &str| s.replace('-', "+").replace('_', "/");
        // The last character of the nonce (22 chars, 16 bytes) carries 4 unused bits.
        let nonce_bits = {
            let mut n = f[3].to_owned();
            let last = n.pop().unwrap();
            let idx = base64::alphabet::URL_SAFE.as_str().find(last).unwrap();
            n.push(base64::alphabet::URL_SAFE.as_str().as_bytes()[idx ^ 1] as char);
            n
        };
        let mac_bits = {
            let mut m = f[4].to_owned();
            let last = m.pop().unwrap();
            let idx = base64::alphabet::URL_SAFE.as_str().find(last).unwrap();
            m.push(base64::alphabet::URL_SAFE.as_str().as_bytes()[idx ^ 1] as char);
            m
        };
        let cases: Vec<(&str, String)> = vec![
            ("version in capitals", with(0, "V1")),
            ("version with a leading zero", with(0, "v01")),
            ("key id with a space", with(1, " k1")),
            ("expiry with one leading zero", with(2, &format!("0{}", f[2]))),
            ("expiry with two leading zeros", with(2, &format!("00{}", f[2]))),
            ("expiry with a plus sign", with(2, &format!("+{}", f[2]))),
            ("expiry with white space", with(2, &format!("{} ", f[2]))),
            ("expiry in hex", with(2, &format!("0x{:x}", f[2].parse::<u64>().unwrap()))),
            ("nonce padded", with(3, &format!("{}==", f[3]))),
            ("nonce with unused bits set", with(3, &nonce_bits)),
            ("mac padded", with(4, &format!("{}=", f[4]))),
            ("mac with unused bits set", with(4, &mac_bits)),
            ("trailing dot", format!("{c}.")),
            ("leading white space", format!(" {c}")),
        ];
        assert!(ring.check(&c, "t", now).is_ok(), "positive control: the issued spelling");
        for (case, spelled) in &cases {
            assert_ne!(spelled, &c, "{case}: not another spelling");
            let e = ring.check(spelled, "t", now).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ChallengeMismatch, "{case}");
            assert!(
                !e.detail().contains("MAC does not match"),
                "{case}: refused by the spelling check, not the MAC: {e}"
            );
            // Whatever a lenient parser might accept, it is one claim with the issued spelling.
            if !case.starts_with("trailing") && !case.starts_with("version with") {
                assert_eq!(claim_key(spelled), claim_key(&c), "{case}: another spelling would be another claim");
            }
        }
        // The standard alphabet, where the nonce or MAC holds a character that differs in it.
        for i in [3, 4] {
            let other = std_alphabet(f[i]);
            if other != f[i] {
                assert!(ring.check(&with(i, &other), "t", now).is_err());
                assert_eq!(claim_key(&with(i, &other)), claim_key(&c));
            }
        }
        // Another nonce is another challenge, and another claim.
        let c2 = ring.issue("t", now).unwrap();
        assert_ne!(claim_key(&c2), claim_key(&c));
        assert_eq!(ring.check(&c, "t", now).unwrap().to_string(), c, "accepted re-encodes to itself");
    }

    #[test]
    fn plain_challenges_are_claimed_on_their_exact_bytes() {
        let c = generate().unwrap();
        assert_eq!(claim_key(&c), claim_key(&c.clone()));
        assert_ne!(claim_key(&c), claim_key(&format!("{c}A")));
        let k = claim_key(&c);
        assert_eq!(k.len(), 11 + 64);
        assert!(k.starts_with("iam-join:c:") && !k.contains(&c), "stores never hold the challenge");
        // The two shapes never share a key: a plain challenge spelled like a keyed one with
        // another nonce is another claim.
        assert_ne!(claim_key("v1.k1.1.AAAAAAAAAAAAAAAAAAAAAA.x"), claim_key("v1.k1.1.AAAAAAAAAAAAAAAAAAAAAQ.x"));
    }

    #[test]
    fn lifetimes_are_bounded_by_the_freshness_window() {
        let ring = ChallengeKeys::new(key("k1", 1));
        assert!(ring.clone().ttl(Duration::from_secs(15 * 60)).is_ok());
        assert_eq!(ring.clone().ttl(Duration::from_secs(15 * 60 + 1)).unwrap_err().kind(), ErrorKind::ConfigInvalid);
        assert!(ring.ttl(Duration::ZERO).is_err());
    }

    #[test]
    fn keys_are_256_bits_named_plainly_and_never_printed() {
        assert_eq!(ChallengeKey::new("k1", vec![7; 31]).unwrap_err().kind(), ErrorKind::ConfigInvalid);
        assert!(ChallengeKey::new("k 1", vec![7; 32]).is_err());
        assert!(ChallengeKey::new("", vec![7; 32]).is_err());
        let k = key("k1", 7);
        assert_eq!(format!("{k:?}"), "ChallengeKey { id: \"k1\", secret: <32 bytes> }");
        let ring = ChallengeKeys::new(k.clone());
        assert!(!format!("{ring:?}").contains(&STANDARD.encode([7u8; 32])));
        assert!(ChallengeKeys::new(k.clone()).accept(k).is_err(), "one id once");
    }

    #[test]
    fn key_files_name_the_line_and_never_the_key() {
        let a = key("active", 1).to_line();
        let b = key("older", 2).to_line();
        let ring = ChallengeKeys::parse(&format!("# keys\n{}\n\n{}\n", *a, *b)).unwrap();
        assert_eq!(ring.active_id(), "active");
        let c = ChallengeKeys::new(key("older", 2)).issue("t", SystemTime::now()).unwrap();
        assert!(ring.check(&c, "t", SystemTime::now()).is_ok(), "older keys are accepted");
        let short = format!("k:{}", STANDARD.encode([5u8; 16]));
        for (text, says) in [
            ("", "holds no key"),
            ("nocolon", "line 1: expected ID:BASE64"),
            ("k:not base64!", "line 1: the key is not base64"),
            (short.as_str(), "line 1: challenge key \"k\" has 16 bytes"),
        ] {
            let e = ChallengeKeys::parse(text).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
            assert!(e.detail().contains(says), "{text:?}: {e}");
            assert!(!e.to_string().contains(&STANDARD.encode([5u8; 16])), "the key is never echoed");
        }
    }

    #[test]
    fn generated_challenge_is_43_base64_chars_of_32_bytes() {
        let c = generate().unwrap();
        assert_eq!(c.len(), 43);
        assert!(!c.contains('='));
        assert_eq!(STANDARD_NO_PAD.decode(&c).unwrap().len(), 32);
    }

    #[test]
    fn matches_only_equal() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abd", "abc"));
        assert!(!matches("abc ", "abc"));
        assert!(!matches("", "abc"));
    }
}
