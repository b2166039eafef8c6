//! Join challenges: 32 random bytes, unpadded standard base64, as Teleport issues them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use subtle::ConstantTimeEq;

/// The header the challenge travels in unless configured otherwise (Teleport's).
pub const DEFAULT_CHALLENGE_HEADER: &str = "x-teleport-challenge";

/// Random bytes per challenge: 256 bits, so a challenge is never guessed or repeated.
pub const CHALLENGE_BYTES: usize = 32;

/// The shortest issued challenge a verifier accepts: 16 random bytes in unpadded base64, the
/// most compact printable form of 128 bits. An empty or short challenge (a server that looked up
/// a missing challenge as "") would let an agent that signed exactly that value through.
pub const MIN_CHALLENGE_LEN: usize = 22;

/// Refuses an issued challenge too short to carry 16 bytes of entropy, as a setup mistake.
pub(crate) fn check_issued(challenge: &str) -> Result<(), crate::error::Error> {
    if challenge.len() < MIN_CHALLENGE_LEN {
        return Err(crate::error::Error::config_invalid(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

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
