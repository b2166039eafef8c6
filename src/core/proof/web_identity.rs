//! AWS's signed web identity token (`sts:GetWebIdentityToken`, outbound identity federation) as
//! a proof, checked offline against the pinned issuer's keys: no STS round trip at join time.
//!
//! An account that enabled outbound identity federation has its own issuer URL, which publishes
//! `/.well-known/openid-configuration` and a JWKS. A principal asks STS for a JWT (RS256 or
//! ES384, 60 to 3600 s) with audiences of its choosing: here the verifier's configured audience
//! and the join's challenge. The claims used, as AWS documents them (IAM User Guide,
//! "Understanding token claims"; STS API reference, `GetWebIdentityToken`):
//!
//! - `iss`: the account's issuer URL; `aud`: a string or an array (the requested audiences);
//!   `sub`: under the default `SubjectMode=AWSIdentity` the ARN of the calling principal, under
//!   `OriginIdentity` the origin subject, never an ARN (STS refuses subjects that begin with
//!   `arn:`), with a `subject_mode` claim; `iat`, `exp` (and `nbf` when present), seconds.
//! - under the namespace `https://sts.amazonaws.com/`: `aws_account` (12 digits);
//!   `principal_id`, "the ARN of the principal that requested the token, when that principal
//!   has an ARN. For a role session, this is the ARN of the role" (whatever the subject mode);
//!   `org_id` (`o-…`) and `ou_path` (`o-…/r-…/ou-…/…/`, root first, ending in `/`) when the
//!   account is in an organization.
//!
//! The identity is `principal_id` (or, without it, `sub` when it is an ARN and the subject mode
//! is the default), in `aws_account`. A role's token names the role, not a session, so it is
//! matched as every session of the role
//! ([`Subject::every_session_of`](crate::Subject::every_session_of)). Organization rules are
//! decided from `org_id` and `ou_path`, with no Organizations call.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, Header};
use serde::Deserialize;

use crate::core::arn::{AccountId, Arn, Principal};
use crate::core::challenge;
use crate::core::error::{Error, ErrorKind};
use crate::core::identity::CallerIdentity;
use crate::core::membership::Membership;
use crate::core::proof::policy::RequestPolicy;
use crate::core::text::quoted_shown;

/// The longest web identity token accepted, as received.
pub const MAX_WEB_IDENTITY_TOKEN_BYTES: usize = 16 * 1024;
/// The longest lifetime (`exp` − `iat`) a token may have: STS issues 60 to 3600 s.
pub const MAX_WEB_IDENTITY_LIFETIME: Duration = Duration::from_secs(3600);
/// The largest JWKS document read from an issuer.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// The most keys read from one JWKS; the rest are ignored (and counted).
pub const MAX_JWKS_KEYS: usize = 32;
/// The claims namespace AWS nests its own claims under.
pub const AWS_CLAIMS_NAMESPACE: &str = "https://sts.amazonaws.com/";
/// The longest audience STS accepts (`Audience.member.N`, 1 to 1000 characters).
const MAX_AUDIENCE_LEN: usize = 1000;

fn untrusted(detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::UntrustedEndpoint, detail)
}

/// An issuer URL a verifier trusts: `https://HOST[:PORT][/PATH]`, or `http://` on a loopback IP
/// (tests, the emulator). No user, query or fragment; compared with `iss` exactly.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IssuerUrl {
    url: String,
    /// The length of `scheme://authority`.
    origin_len: usize,
}

impl IssuerUrl {
    /// Checks an issuer URL (`config_invalid` when it is not one this crate fetches keys from).
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::config_invalid(format!("issuer {}: {why}", quoted_shown(url)));
        if url.len() > 2048 || !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("not a printable URL of at most 2048 characters"));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not an absolute URL"))?;
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if authority.is_empty() || authority.contains('@') || rest.contains(['?', '#']) {
            return Err(bad("it needs a host, and no user, query or fragment"));
        }
        match scheme {
            "https" => {}
            "http" => {
                let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
                let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<core::net::IpAddr>(); // parsing text, no I/O
                if !ip.is_ok_and(|ip| ip.is_loopback()) {
                    return Err(bad("http:// is for loopback IPs (tests) only; issuers are https://"));
                }
            }
            _ => return Err(bad("the scheme is not https")),
        }
        Ok(Self { url: url.to_owned(), origin_len: scheme.len() + 3 + authority.len() })
    }

    /// The URL as pinned.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// Where the issuer's OpenID configuration is: the URL + `/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.url.trim_end_matches('/'))
    }

    /// Whether `url` is on the issuer's own origin (scheme, host and port).
    pub fn same_origin(&self, url: &str) -> bool {
        let origin = &self.url[..self.origin_len];
        url.strip_prefix(origin).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl fmt::Debug for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerUrl({})", self.url)
    }
}

impl fmt::Display for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Which web identity tokens a verifier accepts: the audience they must name, and the one issuer
/// pinned per account (`ACCOUNT=URL`). A token is checked against the issuer pinned for the
/// account it names, and its keys are fetched from that issuer only.
#[derive(Clone, Debug)]
pub struct WebIdentityPolicy {
    audience: String,
    issuers: BTreeMap<AccountId, IssuerUrl>,
}

impl WebIdentityPolicy {
    /// Tokens must name `audience` (1 to 1000 characters) among their audiences.
    pub fn new(audience: &str) -> Result<Self, Error> {
        if audience.is_empty() || audience.len() > MAX_AUDIENCE_LEN || !audience.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::config_invalid("the web identity audience must be 1 to 1000 visible characters"));
        }
        Ok(Self { audience: audience.to_owned(), issuers: BTreeMap::new() })
    }

    /// Pins `issuer` for `account`; one issuer per account.
    pub fn issuer(mut self, account: &str, issuer: &str) -> Result<Self, Error> {
        let id = AccountId::parse(account)
            .ok_or_else(|| Error::config_invalid(format!("account {} is not 12 digits", quoted_shown(account))))?;
        let url = IssuerUrl::parse(issuer)?;
        if self.issuers.get(&id).is_some_and(|u| u != &url) {
            return Err(Error::config_invalid(format!("account {account} has two issuers pinned; pin one")));
        }
        self.issuers.insert(id, url);
        Ok(self)
    }

    /// Pins one `ACCOUNT=URL` (the form of `--web-identity-issuer`).
    pub fn issuer_pin(self, pin: &str) -> Result<Self, Error> {
        let (account, url) = pin.split_once('=').ok_or_else(|| {
            Error::config_invalid(format!("web identity issuer {} is not ACCOUNT=URL", quoted_shown(pin)))
        })?;
        self.issuer(account.trim(), url.trim())
    }

    /// The audience tokens must name.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The issuer pinned for `account`.
    pub fn issuer_for(&self, account: &AccountId) -> Option<&IssuerUrl> {
        self.issuers.get(account)
    }

    /// Every pinned (account, issuer).
    pub fn issuers(&self) -> impl Iterator<Item = (&AccountId, &IssuerUrl)> {
        self.issuers.iter()
    }
}

/// A public key of an issuer.
#[derive(Clone, PartialEq, Eq)]
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point `0x04 || x || y`.
    P384(Vec<u8>),
}

/// An issuer's signature keys, read from its JWKS: RSA (for RS256) and EC P-384 (for ES384),
/// by `kid`. Keys of other kinds, for encryption, or malformed are skipped, not fatal: one bad
/// entry does not stop the others.
#[derive(Clone)]
pub struct IssuerKeys {
    issuer: IssuerUrl,
    keys: Vec<(String, Option<KeyAlgorithm>, Key)>,
    skipped: usize,
}

impl fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("issuer", &self.issuer)
            .field("kids", &self.keys.iter().map(|(k, _, _)| k.as_str()).collect::<Vec<_>>())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl IssuerKeys {
    /// Reads the JWKS `json` fetched from `issuer` (at most [`MAX_JWKS_BYTES`], at most
    /// [`MAX_JWKS_KEYS`] keys used). `sts_unavailable` when it is not a JWKS at all (the issuer
    /// answered with something else; a later fetch may do better).
    pub fn from_jwks(issuer: &IssuerUrl, json: &[u8]) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let unusable = |why: String| {
            Error::new(ErrorKind::StsUnavailable, format!("the JWKS of {issuer} is unusable: {why}"))
                .with_retryable(true)
        };
        if json.len() > MAX_JWKS_BYTES {
            return Err(unusable(format!("larger than {MAX_JWKS_BYTES} bytes")));
        }
        let set: Set = serde_json::from_slice(json).map_err(|e| unusable(format!("not a JWKS: {e}")))?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut keys = Vec::new();
        let mut skipped = set.keys.len().saturating_sub(MAX_JWKS_KEYS);
        for value in set.keys.into_iter().take(MAX_JWKS_KEYS) {
            let key = serde_json::from_value::<Jwk>(value).ok().and_then(|jwk| {
                let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
                if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                    return None;
                }
                let key = match &jwk.algorithm {
                    AlgorithmParameters::RSA(p) => Key::Rsa { n: b64.decode(&p.n).ok()?, e: b64.decode(&p.e).ok()? },
                    AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                        let (x, y) = (b64.decode(&p.x).ok()?, b64.decode(&p.y).ok()?);
                        if x.len() != 48 || y.len() != 48 {
                            return None;
                        }
                        Key::P384([&[4u8][..], &x, &y].concat())
                    }
                    _ => return None,
                };
                Some((kid, jwk.common.key_algorithm, key))
            });
            match key {
                Some(k) => keys.push(k),
                None => skipped += 1,
            }
        }
        Ok(Self { issuer: issuer.clone(), keys, skipped })
    }

    /// The issuer the keys are from.
    pub fn issuer(&self) -> &IssuerUrl {
        &self.issuer
    }

    /// Whether a key with this `kid` is here.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _, _)| k == kid)
    }

    /// How many keys are usable, and how many were skipped.
    pub fn counts(&self) -> (usize, usize) {
        (self.keys.len(), self.skipped)
    }
}

/// `aud`: one string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct AwsClaims {
    aws_account: String,
    #[serde(default)]
    principal_id: Option<String>,
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    ou_path: Option<String>,
    #[serde(default)]
    subject_mode: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    sub: String,
    exp: u64,
    iat: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    subject_mode: Option<String>,
    #[serde(rename = "https://sts.amazonaws.com/")]
    aws: AwsClaims,
}

/// The two algorithms STS signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es384,
}

/// A web identity token whose shape, header and claims passed every check but the signature,
/// which needs the pinned issuer's keys.
#[derive(Clone)]
pub(crate) struct UncheckedToken {
    signing_input: String,
    signature: Vec<u8>,
    alg: Alg,
    kid: String,
    issuer: IssuerUrl,
    token: VerifiedToken,
}

/// A web identity token that passed every check, its signature included.
#[derive(Clone)]
pub(crate) struct VerifiedToken {
    pub(crate) identity: CallerIdentity,
    pub(crate) membership: Membership,
    pub(crate) challenge: String,
    pub(crate) fresh_until: SystemTime,
}

impl fmt::Debug for UncheckedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UncheckedToken").field("issuer", &self.issuer).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken").field("identity", &self.identity).finish_non_exhaustive()
    }
}

fn secs(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.min(u64::from(u32::MAX) * 4))
}

/// `o-` and 10 to 32 lowercase letters or digits (AWS Organizations' id pattern).
fn is_org_id(s: &str) -> bool {
    s.strip_prefix("o-").is_some_and(|r| {
        (10..=32).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// `ou_path` → the membership: `o-…/r-…/ou-…/…/`, root first; `ancestors` parent first.
fn membership(org_id: Option<&str>, ou_path: Option<&str>) -> Result<Membership, Error> {
    let (org, path) = match (org_id, ou_path) {
        (None, None) => return Ok(Membership::NotInOrganization),
        (Some(o), Some(p)) => (o, p),
        _ => return Err(Error::malformed_request("the token has one of org_id and ou_path without the other")),
    };
    if !is_org_id(org) {
        return Err(Error::malformed_request("org_id is not an organization id"));
    }
    let segments: Vec<&str> = path.strip_suffix('/').unwrap_or("").split('/').collect();
    let (Some(&first), Some(&root)) = (segments.first(), segments.get(1)) else {
        return Err(Error::malformed_request("ou_path is not o-…/r-…/…/"));
    };
    if first != org {
        return Err(Error::malformed_request("ou_path names another organization than org_id"));
    }
    let id_ok = |s: &str, prefix: &str| {
        s.strip_prefix(prefix).is_some_and(|r| {
            !r.is_empty() && r.len() <= 68 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    };
    if !id_ok(root, "r-") || !segments[2..].iter().all(|s| id_ok(s, "ou-")) {
        return Err(Error::malformed_request("ou_path is not o-…/r-…/ou-…/…/"));
    }
    Ok(Membership::member(org, segments[1..].iter().rev().map(|s| (*s).to_owned()).collect()))
}

impl UncheckedToken {
    /// Checks the token as received against the policy, the challenge it must name among its
    /// audiences (`None`: the one audience other than the configured one, to be checked against
    /// a key ring next), and `now`.
    pub(crate) fn parse(
        raw: &[u8],
        issued: Option<&str>,
        web: &WebIdentityPolicy,
        policy: &RequestPolicy,
        now: SystemTime,
    ) -> Result<Self, Error> {
        if raw.len() > MAX_WEB_IDENTITY_TOKEN_BYTES {
            return Err(Error::malformed_request(format!(
                "web identity token is longer than {MAX_WEB_IDENTITY_TOKEN_BYTES} bytes"
            )));
        }
        let text = std::str::from_utf8(raw).map_err(|_| Error::malformed_request("web identity token is not ASCII"))?;
        let mut parts = text.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(Error::malformed_request("web identity token is not a JWT (three base64url parts)"));
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let decode = |part: &str, what: &str| {
            b64.decode(part)
                .map_err(|_| Error::malformed_request(format!("the JWT's {what} is not unpadded base64url")))
        };
        let (header, payload, signature) = (decode(h, "header")?, decode(p, "payload")?, decode(s, "signature")?);
        let header: Header = serde_json::from_slice(&header).map_err(|_| {
            Error::malformed_request("the JWT header is not JSON with a known alg (RS256 or ES384 are accepted)")
        })?;
        let alg = match header.alg {
            Algorithm::RS256 => Alg::Rs256,
            Algorithm::ES384 => Alg::Es384,
            other => {
                return Err(Error::malformed_request(format!(
                    "the JWT is signed with {other:?}; only RS256 and ES384 are accepted"
                )));
            }
        };
        // Only the pinned issuer's JWKS counts: a header that names a key or where to get one is
        // refused, never followed.
        for (present, name) in [
            (header.jku.is_some(), "jku"),
            (header.jwk.is_some(), "jwk"),
            (header.x5u.is_some(), "x5u"),
            (header.x5c.is_some(), "x5c"),
            (header.crit.is_some(), "crit"),
        ] {
            if present {
                return Err(Error::malformed_request(format!(
                    "the JWT header has {name}; keys come from the pinned issuer's JWKS only"
                )));
            }
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Error::malformed_request("the JWT header has no kid"))?;
        if kid.len() > 256 {
            return Err(Error::malformed_request("the JWT kid is longer than 256 characters"));
        }
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| Error::malformed_request(format!("the JWT claims are not what STS issues: {e}")))?;

        // Lifetime.
        if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_WEB_IDENTITY_LIFETIME.as_secs() {
            return Err(Error::malformed_request(format!(
                "the token's lifetime (exp - iat) is not 1 to {} seconds",
                MAX_WEB_IDENTITY_LIFETIME.as_secs()
            )));
        }

        // The account, named consistently.
        let account = AccountId::parse(&claims.aws.aws_account)
            .ok_or_else(|| Error::malformed_request("aws_account is not 12 digits"))?;
        let mode = claims.subject_mode.as_deref().or(claims.aws.subject_mode.as_deref());
        let principal = match (&claims.aws.principal_id, mode) {
            (Some(p), _) => p.as_str(),
            (None, None | Some("AWSIdentity")) if claims.sub.starts_with("arn:") => claims.sub.as_str(),
            _ => return Err(Error::malformed_request("the token names no principal ARN (principal_id)")),
        };
        let arn = Arn::parse(principal)
            .map_err(|e| Error::malformed_request(format!("principal_id is not a principal ARN: {e}")))?;
        if arn.account() != &account {
            return Err(Error::malformed_request(
                "the token's claims disagree on the account (aws_account, principal_id)",
            ));
        }
        if claims.sub.starts_with("arn:") && mode.is_none_or(|m| m == "AWSIdentity") {
            let sub = Arn::parse(&claims.sub)
                .map_err(|e| Error::malformed_request(format!("sub is not a principal ARN: {e}")))?;
            if sub.account() != &account {
                return Err(Error::malformed_request("the token's claims disagree on the account (aws_account, sub)"));
            }
        }

        // The issuer pinned for that account, exactly.
        let issuer = web
            .issuer_for(&account)
            .ok_or_else(|| untrusted(format!("no web identity issuer is pinned for account {account}")))?;
        if claims.iss != issuer.as_str() {
            return Err(untrusted(format!(
                "the token's iss {} is not the issuer pinned for account {account}",
                quoted_shown(&claims.iss)
            )));
        }

        // Audiences: the configured one and the challenge.
        let audiences = match &claims.aud {
            Audience::One(a) => std::slice::from_ref(a),
            Audience::Many(a) => a.as_slice(),
        };
        if !audiences.iter().any(|a| a == web.audience()) {
            return Err(untrusted("the token's audiences do not include this verifier's audience"));
        }
        let challenge = match issued {
            Some(c) => audiences.iter().find(|a| challenge::matches(a, c)).cloned().ok_or_else(|| {
                challenge::mismatch("the token's audiences do not hold the challenge this server issued")
            })?,
            None => {
                let mut others = audiences.iter().filter(|a| *a != web.audience());
                match (others.next(), others.next()) {
                    (Some(c), None) => c.clone(),
                    (None, _) => return Err(challenge::mismatch("the token's audiences hold no challenge")),
                    (Some(_), Some(_)) => {
                        return Err(challenge::mismatch(
                            "the token's audiences hold more than one candidate challenge",
                        ));
                    }
                }
            }
        };

        // Time, with the allowed skew: issued recently, not before its time, not expired.
        let (iat, exp) = (secs(claims.iat), secs(claims.exp));
        policy.check_fresh("the token's iat", iat, now)?;
        if let Some(nbf) = claims.nbf
            && secs(nbf) > now + policy.skew()
        {
            return Err(Error::new(ErrorKind::RequestExpired, "the token is not valid yet (nbf)")
                .with_client_fact("the token is not valid yet (nbf)"));
        }
        if now >= exp {
            let ago = now.duration_since(exp).unwrap_or_default().as_secs();
            return Err(Error::new(ErrorKind::RequestExpired, format!("the token expired {ago}s ago"))
                .with_client_fact(format!("the token expired {ago}s ago")));
        }

        let membership = membership(claims.aws.org_id.as_deref(), claims.aws.ou_path.as_deref())?;
        let identity = match arn.principal() {
            Principal::Role { .. } => CallerIdentity::every_session_of_role(account, arn, claims.sub),
            _ => CallerIdentity::from_checked_parts(account, arn, claims.sub),
        };
        let fresh_until = exp.min(iat + policy.skew());
        Ok(Self {
            signing_input: format!("{h}.{p}"),
            signature,
            alg,
            kid,
            issuer: issuer.clone(),
            token: VerifiedToken { identity, membership, challenge, fresh_until },
        })
    }

    /// The issuer whose keys check the signature (the one pinned for the token's account).
    pub(crate) fn issuer(&self) -> &IssuerUrl {
        &self.issuer
    }

    /// The key id the token is signed with.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The challenge the token names.
    pub(crate) fn challenge(&self) -> &str {
        &self.token.challenge
    }

    /// Checks the signature with the issuer's keys.
    pub(crate) fn verify(self, keys: &IssuerKeys) -> Result<VerifiedToken, Error> {
        if keys.issuer != self.issuer {
            return Err(Error::config_invalid(format!(
                "the keys passed are {}'s, but the token is checked against {}",
                keys.issuer, self.issuer
            )));
        }
        let Some((_, key_alg, key)) = keys.keys.iter().find(|(k, _, _)| *k == self.kid) else {
            return Err(Error::new(
                ErrorKind::SignatureRejected,
                format!("the issuer's JWKS has no key {}", quoted_shown(&self.kid)),
            ));
        };
        let wanted = match self.alg {
            Alg::Rs256 => KeyAlgorithm::RS256,
            Alg::Es384 => KeyAlgorithm::ES384,
        };
        if key_alg.is_some_and(|a| a != wanted) {
            return Err(Error::malformed_request(format!(
                "the JWT's alg {:?} is not the alg of key {}",
                self.alg,
                quoted_shown(&self.kid)
            )));
        }
        use ring::signature::{self, UnparsedPublicKey};
        let msg = self.signing_input.as_bytes();
        let ok = match (self.alg, key) {
            (Alg::Rs256, Key::Rsa { n, e }) => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, &self.signature)
                .is_ok(),
            (Alg::Es384, Key::P384(point)) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(msg, &self.signature).is_ok()
            }
            _ => {
                return Err(Error::malformed_request(format!(
                    "the JWT's alg {:?} does not fit key {} (an RSA key signs RS256, a P-384 key ES384)",
                    self.alg,
                    quoted_shown(&self.kid)
                )));
            }
        };
        if !ok {
            return Err(Error::new(
                ErrorKind::SignatureRejected,
                "the token's signature does not verify with the issuer's key",
            ));
        }
        Ok(self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_urls_are_https_or_loopback_http() {
        for ok in ["https://abc.tokens.sts.global.api.aws", "http://127.0.0.1:8080/issuers/1", "http://[::1]:9/x"] {
            assert!(IssuerUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["http://example.com", "ftp://x", "https://u@x", "https://x/?q", "https://x/#f", "x", "https://"] {
            assert_eq!(IssuerUrl::parse(bad).unwrap_err().kind(), ErrorKind::ConfigInvalid, "{bad}");
        }
        let i = IssuerUrl::parse("http://127.0.0.1:8080/issuers/1").unwrap();
        assert_eq!(i.discovery_url(), "http://127.0.0.1:8080/issuers/1/.well-known/openid-configuration");
        assert!(i.same_origin("http://127.0.0.1:8080/other/jwks.json"));
        assert!(!i.same_origin("http://127.0.0.1:8081/jwks.json"));
        assert!(!i.same_origin("http://127.0.0.1:80800/jwks.json"));
        assert!(!i.same_origin("http://127.0.0.1:8080.evil/jwks.json"));
    }

    #[test]
    fn ou_paths_become_memberships() {
        let m =
            membership(Some("o-a1b2c3d4e5"), Some("o-a1b2c3d4e5/r-ab12/ou-ab12-11111111/ou-ab12-22222222/")).unwrap();
        assert_eq!(
            m,
            Membership::member(
                "o-a1b2c3d4e5",
                vec!["ou-ab12-22222222".into(), "ou-ab12-11111111".into(), "r-ab12".into()]
            )
        );
        assert_eq!(membership(None, None).unwrap(), Membership::NotInOrganization);
        for (org, path) in [
            (Some("o-a1b2c3d4e5"), None),
            (Some("o-abc1234567"), Some("o-a1b2c3d4e5/r-ab12/")),
            (Some("o-a1b2c3d4e5"), Some("o-a1b2c3d4e5/")),
            (Some("o-a1b2c3d4e5"), Some("o-a1b2c3d4e5/r-ab12/xx/")),
            (Some("bad"), Some("bad/r-ab12/")),
        ] {
            assert_eq!(membership(org, path).unwrap_err().kind(), ErrorKind::MalformedRequest, "{org:?} {path:?}");
        }
    }
}
