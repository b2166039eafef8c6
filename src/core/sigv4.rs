//! Parsing of the SigV4 `Authorization` header and `X-Amz-Date`, without verifying the signature
//! (only STS holds the secret). Every component must appear exactly once, in the shape AWS signers
//! produce; anything else is `malformed_request`. Errors name the component at fault and never
//! echo the signature or the whole header.

use std::time::SystemTime;

use time::{Date, Month, PrimitiveDateTime, Time};

use crate::core::error::Error;

/// The only algorithm STS requests are signed with here.
pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Authorization<'a> {
    pub(crate) access_key_id: &'a str,
    /// `YYYYMMDD` from the credential scope.
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    /// Lowercase, strictly ascending.
    pub(crate) signed_headers: Vec<&'a str>,
}

/// RFC 9110 `tchar`, lowercase only (SigV4 lists header names lowercased), as a table.
const LOWER_TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        i += 1;
    }
    t
};

/// Splits at each `sep` with memchr (the strict formats here have few, short fields).
fn fields(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(sep, r.as_bytes()) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

pub(crate) fn parse_authorization(value: &str) -> Result<Authorization<'_>, Error> {
    let rest = value.strip_prefix(ALGORITHM).and_then(|r| r.strip_prefix(' ')).ok_or_else(|| {
        Error::malformed_request(format!("Authorization is not {ALGORITHM} followed by its parameters"))
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in fields(rest, b',') {
        let part = part.trim_matches(' ');
        let (key, val) = part
            .split_once('=')
            .ok_or_else(|| Error::malformed_request("Authorization has a parameter without '='"))?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => {
                return Err(Error::malformed_request(
                    "Authorization has a parameter other than Credential, SignedHeaders, Signature",
                ));
            }
        };
        if slot.replace(val).is_some() {
            return Err(Error::malformed_request(format!("Authorization has {key} more than once")));
        }
    }
    let credential = credential.ok_or_else(|| Error::malformed_request("Authorization has no Credential"))?;
    let signed = signed.ok_or_else(|| Error::malformed_request("Authorization has no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| Error::malformed_request("Authorization has no Signature"))?;

    if !is_signature(signature) {
        return Err(Error::malformed_request("Authorization Signature is not 64 lowercase hex digits"));
    }

    let Credential { access_key_id: akid, date, region } = parse_credential(credential)?;
    let signed_headers = parse_signed_headers(signed)?;
    Ok(Authorization { access_key_id: akid, date, region, signed_headers })
}

/// The parts of a credential scope the checks need.
pub(crate) struct Credential<'a> {
    pub(crate) access_key_id: &'a str,
    /// `YYYYMMDD`.
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
}

/// Parses `ACCESS_KEY/DATE/REGION/sts/aws4_request` (the `Credential` of an `Authorization`
/// header, or a presigned URL's decoded `X-Amz-Credential`).
pub(crate) fn parse_credential(credential: &str) -> Result<Credential<'_>, Error> {
    let mut scope = fields(credential, b'/');
    let (Some(akid), Some(date), Some(region), Some(service), Some(terminator), None) =
        (scope.next(), scope.next(), scope.next(), scope.next(), scope.next(), scope.next())
    else {
        return Err(Error::malformed_request("Credential is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request"));
    };
    if !(16..=128).contains(&akid.len()) || !akid.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return Err(Error::malformed_request("Credential access key id is not 16 to 128 uppercase letters or digits"));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::malformed_request("Credential scope date is not YYYYMMDD"));
    }
    if region.is_empty()
        || region.len() > 64
        || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::malformed_request("Credential scope region is not a region name"));
    }
    if service != "sts" {
        return Err(Error::malformed_request(format!(
            "Credential scope service is {:?}, not \"sts\"",
            truncate(service)
        )));
    }
    if terminator != "aws4_request" {
        return Err(Error::malformed_request("Credential scope does not end in aws4_request"));
    }
    Ok(Credential { access_key_id: akid, date, region })
}

/// Parses a `SignedHeaders` list: lowercase header names, `;`-separated, strictly ascending.
pub(crate) fn parse_signed_headers(signed: &str) -> Result<Vec<&str>, Error> {
    let signed_headers: Vec<&str> = fields(signed, b';').collect();
    for (i, name) in signed_headers.iter().enumerate() {
        if name.is_empty() || !name.bytes().all(|b| LOWER_TCHAR[usize::from(b)]) {
            return Err(Error::malformed_request("SignedHeaders holds an empty or non-lowercase header name"));
        }
        if i > 0 && signed_headers[i - 1] >= *name {
            return Err(Error::malformed_request("SignedHeaders is not sorted and unique"));
        }
    }
    Ok(signed_headers)
}

/// Whether `s` is a SigV4 signature: 64 lowercase hex digits.
pub(crate) fn is_signature(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`, UTC). The fixed-width digits are read directly;
/// the `time` crate checks that they form a real date and time.
pub(crate) fn parse_amz_date(value: &str) -> Result<SystemTime, Error> {
    let bad = || Error::malformed_request("X-Amz-Date is not YYYYMMDDTHHMMSSZ");
    let b = value.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<u32, Error> {
        b[range]
            .iter()
            .try_fold(0u32, |n, &d| if d.is_ascii_digit() { Ok(n * 10 + u32::from(d - b'0')) } else { Err(bad()) })
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    let month = u8::try_from(month).ok().and_then(|m| Month::try_from(m).ok()).ok_or_else(bad)?;
    let date = Date::from_calendar_date(year as i32, month, day as u8).map_err(|_| bad())?;
    let time = Time::from_hms(hour as u8, minute as u8, second as u8).map_err(|_| bad())?;
    Ok(SystemTime::from(PrimitiveDateTime::new(date, time).assume_utc()))
}

fn truncate(s: &str) -> &str {
    s.get(..32).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::ErrorKind;

    const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn auth(credential: &str, signed: &str) -> String {
        format!("AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={SIG}")
    }

    #[test]
    fn parses_teleport_style() {
        let v = auth(
            "AKIAIOSFODNN7EXAMPLE/20261128/us-east-1/sts/aws4_request",
            "accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge",
        );
        let a = parse_authorization(&v).unwrap();
        assert_eq!(a.access_key_id, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!((a.date, a.region), ("20261128", "us-east-1"));
        assert_eq!(a.signed_headers.len(), 7);
    }

    #[test]
    fn accepts_commas_without_spaces() {
        let v = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261128/us-east-1/sts/aws4_request,SignedHeaders=host;x-amz-date,Signature={SIG}"
        );
        assert!(parse_authorization(&v).is_ok());
    }

    macro_rules! refuse {
        ($($name:ident: $value:expr => $msg:expr;)*) => {$(
            #[test]
            fn $name() {
                let e = parse_authorization(&$value).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::MalformedRequest);
                assert!(e.detail().contains($msg), "{e}");
                assert!(!e.to_string().contains(SIG), "signature leaked: {e}");
            }
        )*};
    }

    const CRED: &str = "AKIAIOSFODNN7EXAMPLE/20261128/us-east-1/sts/aws4_request";

    refuse! {
        other_algorithm: auth(CRED, "host").replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256") => "is not AWS4-HMAC-SHA256";
        lowercase_algorithm: auth(CRED, "host").replace("AWS4-HMAC-SHA256", "aws4-hmac-sha256") => "is not AWS4-HMAC-SHA256";
        two_signed_headers: format!("{}, SignedHeaders=host", auth(CRED, "host;x-amz-date")) => "SignedHeaders more than once";
        two_credentials: format!("{}, Credential={CRED}", auth(CRED, "host")) => "Credential more than once";
        two_signatures: format!("{}, Signature={SIG}", auth(CRED, "host")) => "Signature more than once";
        unknown_param: format!("{}, Foo=bar", auth(CRED, "host")) => "other than Credential";
        no_credential: format!("AWS4-HMAC-SHA256 SignedHeaders=host, Signature={SIG}") => "no Credential";
        no_signed_headers: format!("AWS4-HMAC-SHA256 Credential={CRED}, Signature={SIG}") => "no SignedHeaders";
        no_signature: format!("AWS4-HMAC-SHA256 Credential={CRED}, SignedHeaders=host") => "no Signature";
        short_signature: auth(CRED, "host").replace(SIG, &SIG[..63]) => "64 lowercase hex";
        upper_signature: auth(CRED, "host").replace(SIG, &SIG.to_uppercase()) => "64 lowercase hex";
        wrong_service: auth("AKIAIOSFODNN7EXAMPLE/20261128/us-east-1/iam/aws4_request", "host") => "not \"sts\"";
        wrong_terminator: auth("AKIAIOSFODNN7EXAMPLE/20261128/us-east-1/sts/aws4_requestx", "host") => "aws4_request";
        extra_scope_part: auth("AKIAIOSFODNN7EXAMPLE/20261128/us-east-1/sts/aws4_request/x", "host") => "ACCESS_KEY/DATE";
        bad_date: auth("AKIAIOSFODNN7EXAMPLE/2026112/us-east-1/sts/aws4_request", "host") => "YYYYMMDD";
        injected_region: auth("AKIAIOSFODNN7EXAMPLE/20261128/evil.org?us-east-1/sts/aws4_request", "host") => "region";
        lowercase_akid: auth("akiaiosfodnn7example/20261128/us-east-1/sts/aws4_request", "host") => "access key id";
        unsorted_signed_headers: auth(CRED, "x-amz-date;host") => "sorted";
        duplicate_signed_header: auth(CRED, "host;host") => "sorted";
        uppercase_signed_header: auth(CRED, "Host;x-amz-date") => "non-lowercase";
        empty_signed_header: auth(CRED, "host;;x-amz-date") => "empty";
    }

    #[test]
    fn amz_date() {
        let t = parse_amz_date("20261128T150000Z").unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 1_795_878_000);
        for bad in
            ["2026-11-28T15:00:00Z", "20261128T150000", "20261328T150000Z", "20261128T250000Z", "20261128t150000z", ""]
        {
            assert_eq!(parse_amz_date(bad).unwrap_err().kind(), ErrorKind::MalformedRequest, "{bad}");
        }
    }
}
