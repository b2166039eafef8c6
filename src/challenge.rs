//! Join challenges: 32 random bytes, unpadded standard base64, as Teleport issues them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use subtle::ConstantTimeEq;

/// The header the challenge travels in unless configured otherwise (Teleport's).
pub const DEFAULT_CHALLENGE_HEADER: &str = "x-teleport-challenge";

/// Random bytes per challenge: 256 bits, so a challenge is never guessed or repeated.
pub const CHALLENGE_BYTES: usize = 32;

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
