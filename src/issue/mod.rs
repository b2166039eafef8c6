//! Credentials after a join (feature `issue`): an X.509 client certificate for the agent's public
//! key, signed by the operator's CA, and an ES256 JWT, with the JWKS and OpenID configuration
//! that let any standard library verify it. Both are made from a [`Verdict`] and nothing else:
//! they say what the join proved, and they end no later than the provision token.
//!
//! ## What a certificate holds
//!
//! | where | what |
//! |---|---|
//! | serial | 127 random bits |
//! | validity | `notBefore` = issuance − [`NOT_BEFORE_BACKDATE`]; `notAfter` = issuance + TTL, never past the token's `expires` |
//! | extensions | `BasicConstraints CA:false`, `keyUsage digitalSignature`, `extendedKeyUsage clientAuth` |
//! | subject | `CN` = the token name (when it fits 64 characters), `O` = `iam-join`, `OU` = the AWS account |
//! | URI SANs | `spiffe://TRUST_DOMAIN/aws/ACCOUNT/RESOURCE` (the principal's ARN resource, e.g. `assumed-role/ROLE/SESSION`); the principal ARN itself (`arn:aws:…`, a URI); `urn:iam-join:account:ACCOUNT`; `urn:iam-join:token:TOKEN`; `urn:iam-join:role:ROLE`, one per role |
//!
//! Characters outside `[A-Za-z0-9._~-]` (and `/` in the SPIFFE path) are percent-encoded. The
//! JWT's claims: `iss`, `sub` (the principal ARN), `aud`, `iat`, `nbf`, `exp`, `jti`,
//! `aws_account`, `token`, `roles`, `matched_rule`.

mod keys;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};

use crate::core::error::{Error, ErrorKind};
use crate::machine::states::Verdict;

pub use keys::{AgentKey, CertificateAuthority, JwtKey, MAX_PUBLIC_KEY_PEM_BYTES};

/// The default lifetime of issued credentials.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a credential may be given.
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(86_400);
/// How far `notBefore` (and the JWT's `nbf`) is set before issuance, for verifiers whose clock is
/// a little behind.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(60);

/// Characters left as they are in the SANs' paths and URNs: the unreserved ones (and `/`).
fn encode(text: &str, keep_slash: bool) -> String {
    crate::core::text::percent_encode(text, if keep_slash { b"/" } else { b"" })
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// What a join's credentials are signed with, and for whom: a CA for certificates, JWT keys,
/// the trust domain, the JWT issuer and audience, the lifetime.
#[derive(Debug)]
#[must_use]
pub struct CredentialIssuerBuilder {
    trust_domain: String,
    ca: Option<CertificateAuthority>,
    jwt: Vec<JwtKey>,
    issuer_url: Option<String>,
    audience: Option<String>,
    ttl: Duration,
}

impl CredentialIssuerBuilder {
    /// Signs certificates with this CA.
    pub fn ca(mut self, ca: CertificateAuthority) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Signs JWTs with the first of `keys` and publishes all of them (a rotation adds the new key
    /// first and keeps the old one published until the tokens it signed have expired).
    pub fn jwt_keys(mut self, keys: Vec<JwtKey>) -> Self {
        self.jwt = keys;
        self
    }

    /// The JWT's `iss`, and the base of the OpenID configuration (`https://`, or `http://` on a
    /// loopback IP).
    pub fn issuer_url(mut self, url: impl Into<String>) -> Self {
        self.issuer_url = Some(url.into());
        self
    }

    /// The JWT's `aud`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The lifetime of credentials, capped by the token's `expires`; default
    /// [`DEFAULT_CREDENTIAL_TTL`], at most [`MAX_CREDENTIAL_TTL`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The issuer; `config_invalid` for a setup that could not issue what it says.
    pub fn build(self) -> Result<CredentialIssuer, Error> {
        let bad = |why: &str| Err(Error::config_invalid(why.to_owned()));
        if self.ttl.is_zero() || self.ttl > MAX_CREDENTIAL_TTL {
            return bad("the credential TTL must be 1 to 86400 seconds");
        }
        let td = &self.trust_domain;
        if td.is_empty()
            || td.len() > 255
            || !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        {
            return bad("the trust domain must be 1 to 255 lowercase letters, digits, '.', '-' or '_'");
        }
        let jwt = match (self.jwt.is_empty(), self.issuer_url, self.audience) {
            (true, None, _) => None,
            (true, Some(_), _) => return bad("a JWT issuer URL needs at least one JWT signing key"),
            (false, Some(iss), Some(aud)) => {
                crate::core::proof::web_identity::IssuerUrl::parse(&iss)?;
                if aud.is_empty() {
                    return bad("the JWT audience is empty");
                }
                Some(JwtIssuer { keys: self.jwt, issuer: iss, audience: aud })
            }
            (false, None, _) => return bad("JWT signing keys need an issuer URL (the JWT's iss)"),
            (false, Some(_), None) => return bad("JWT signing keys need an audience (the JWT's aud)"),
        };
        if self.ca.is_none() && jwt.is_none() {
            return bad("nothing to issue: configure a CA, JWT keys, or both");
        }
        Ok(CredentialIssuer { trust_domain: self.trust_domain, ca: self.ca, jwt, ttl: self.ttl })
    }
}

#[derive(Debug)]
struct JwtIssuer {
    keys: Vec<JwtKey>,
    issuer: String,
    audience: String,
}

/// Issues credentials for allowed joins. Immutable; share it.
#[derive(Debug)]
pub struct CredentialIssuer {
    trust_domain: String,
    ca: Option<CertificateAuthority>,
    jwt: Option<JwtIssuer>,
    ttl: Duration,
}

/// What an allowed join receives. The JWT is a bearer credential: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuedCredentials {
    /// The certificate (PEM), when a CA is configured and the agent sent a key.
    pub certificate: Option<String>,
    /// The CA certificate (PEM) that signed it.
    pub ca: Option<String>,
    /// The JWT, when JWT keys are configured.
    pub jwt: Option<String>,
    /// When they were issued.
    pub issued_at: SystemTime,
    /// When they expire (`notAfter`, `exp`).
    pub expires_at: SystemTime,
}

impl fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCredentials")
            .field("certificate", &self.certificate.as_ref().map(|c| format!("<{} bytes>", c.len())))
            .field("jwt", &self.jwt.as_ref().map(|j| format!("<{} bytes>", j.len())))
            .field("expires_at", &rfc3339(self.expires_at))
            .finish_non_exhaustive()
    }
}

impl IssuedCredentials {
    /// `expires_at` in RFC 3339.
    pub fn expires_at_rfc3339(&self) -> String {
        rfc3339(self.expires_at)
    }
}

impl CredentialIssuer {
    /// A builder for the trust domain of the SPIFFE-style URI SAN (e.g. `example.com`).
    pub fn builder(trust_domain: impl Into<String>) -> CredentialIssuerBuilder {
        CredentialIssuerBuilder {
            trust_domain: trust_domain.into(),
            ca: None,
            jwt: Vec::new(),
            issuer_url: None,
            audience: None,
            ttl: DEFAULT_CREDENTIAL_TTL,
        }
    }

    /// Whether certificates can be issued (a CA is configured).
    pub fn issues_certificates(&self) -> bool {
        self.ca.is_some()
    }

    /// Whether JWTs are issued.
    pub fn issues_jwts(&self) -> bool {
        self.jwt.is_some()
    }

    /// The CA certificate (PEM), for `GET /v1/ca`.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(CertificateAuthority::certificate_pem)
    }

    /// The JWKS of every JWT key (the signing one first), for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Option<String> {
        let jwt = self.jwt.as_ref()?;
        Some(format!(r#"{{"keys":[{}]}}"#, jwt.keys.iter().map(JwtKey::public_jwk).collect::<Vec<_>>().join(",")))
    }

    /// The OpenID configuration (`issuer` exactly as configured, `jwks_uri` below it), for
    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Option<String> {
        let jwt = self.jwt.as_ref()?;
        let doc = serde_json::json!({
            "issuer": jwt.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", jwt.issuer.trim_end_matches('/')),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "aws_account", "token", "roles", "matched_rule"],
        });
        Some(doc.to_string())
    }

    /// The credentials for an allowed join: a certificate for `key` (when a CA is configured and
    /// a key is given) and a JWT (when JWT keys are configured), both issued at `now` and
    /// expiring after the TTL or when the token does, whichever is first. `config_invalid` when
    /// the token has already expired (the verifier refuses such joins) or signing fails.
    pub fn issue(
        &self,
        verdict: &Verdict,
        key: Option<&AgentKey>,
        now: SystemTime,
    ) -> Result<IssuedCredentials, Error> {
        let mut expires = now + self.ttl;
        if let Some(e) = verdict.token_expires() {
            expires = expires.min(e);
        }
        // Whole seconds, as both formats carry them.
        let expires = UNIX_EPOCH + Duration::from_secs(secs(expires));
        if expires <= now {
            return Err(Error::config_invalid("the token has expired: nothing can be issued for it"));
        }
        let certificate = match (&self.ca, key) {
            (Some(ca), Some(key)) => Some(self.certificate(ca, verdict, key, now, expires)?),
            _ => None,
        };
        let jwt = self.jwt.as_ref().map(|j| self.jwt(j, verdict, now, expires)).transpose()?;
        Ok(IssuedCredentials {
            ca: certificate.as_ref().and(self.ca_pem().map(str::to_owned)),
            certificate,
            jwt,
            issued_at: now,
            expires_at: expires,
        })
    }

    fn certificate(
        &self,
        ca: &CertificateAuthority,
        verdict: &Verdict,
        key: &AgentKey,
        now: SystemTime,
        expires: SystemTime,
    ) -> Result<String, Error> {
        let failed = |e: rcgen::Error| Error::config_invalid(format!("signing the certificate failed: {e}"));
        let id = verdict.identity();
        let account = id.account().as_str();
        let mut params = CertificateParams::default();
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| Error::config_invalid(format!("no randomness for a serial: {e}")))?;
        serial[0] &= 0x7f; // positive
        serial[0] |= 0x40; // and 127 bits long, never shortened by leading zeros
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = time::OffsetDateTime::from(now - NOT_BEFORE_BACKDATE);
        params.not_after = time::OffsetDateTime::from(expires);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let mut dn = DistinguishedName::new();
        if verdict.token().chars().count() <= 64 {
            dn.push(DnType::CommonName, verdict.token());
        }
        dn.push(DnType::OrganizationName, "iam-join");
        dn.push(DnType::OrganizationalUnitName, account);
        params.distinguished_name = dn;
        let mut uris = vec![
            format!("spiffe://{}/aws/{account}/{}", self.trust_domain, encode(id.arn().resource(), true)),
            id.arn().as_str().to_owned(),
            format!("urn:iam-join:account:{account}"),
            format!("urn:iam-join:token:{}", encode(verdict.token(), false)),
        ];
        uris.extend(verdict.roles().iter().map(|r| format!("urn:iam-join:role:{}", encode(r.as_str(), false))));
        params.subject_alt_names = uris
            .into_iter()
            .map(|u| rcgen::string::Ia5String::try_from(u).map(SanType::URI))
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        let cert = params.signed_by(key.spki(), ca.issuer()).map_err(failed)?;
        Ok(cert.pem())
    }

    fn jwt(&self, j: &JwtIssuer, verdict: &Verdict, now: SystemTime, expires: SystemTime) -> Result<String, Error> {
        let signer = &j.keys[0];
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| Error::config_invalid(format!("no randomness for a jti: {e}")))?;
        let header = format!(r#"{{"alg":"ES256","kid":{},"typ":"JWT"}}"#, serde_json::Value::from(signer.kid()));
        let id = verdict.identity();
        let claims = serde_json::json!({
            "iss": j.issuer,
            "sub": id.arn().as_str(),
            "aud": j.audience,
            "iat": secs(now),
            "nbf": secs(now - NOT_BEFORE_BACKDATE),
            "exp": secs(expires),
            "jti": b64(&jti),
            "aws_account": id.account().as_str(),
            "token": verdict.token(),
            "roles": verdict.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "matched_rule": verdict.matched_rule(),
        });
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.to_string().as_bytes()));
        let signature = signer.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", b64(&signature)))
    }
}

/// A fresh agent key pair (ECDSA P-256), for an agent that asks for a certificate: the private
/// key as PKCS#8 PEM (keep it; it never leaves the agent) and the public key as SPKI PEM (send
/// it as `public_key`).
pub fn generate_agent_key() -> Result<(zeroize::Zeroizing<String>, String), Error> {
    let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::config_invalid(format!("generating a key failed: {e}")))?;
    Ok((zeroize::Zeroizing::new(pair.serialize_pem()), pair.public_key_pem()))
}

/// A refusal of a public key the agent sent: `malformed_request`, with what is wrong.
pub(crate) fn bad_key(detail: impl Into<String>) -> Error {
    Error::about_request(ErrorKind::MalformedRequest, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::CallerIdentity;
    use crate::core::token::set::TokenSet;

    /// A verdict for `arn` from a token that expires at `expires` (seconds), through the machine.
    fn verdict(expires: Option<&str>) -> Verdict {
        let exp = expires.map(|e| format!("\n  expires: \"{e}\"")).unwrap_or_default();
        let yaml = format!(
            "kind: token\nversion: v2\nmetadata:\n  name: kube-agent{exp}\nspec:\n  roles: [Kube, App]\n  join_method: iam\n  allow:\n  - aws_account: \"111111111111\"\n"
        );
        let tokens = TokenSet::from_yaml(&yaml).unwrap();
        let token = tokens.get("kube-agent").unwrap().clone();
        let identity = CallerIdentity::new(
            "111111111111",
            "arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/pod@1",
            "AROAEXAMPLEROLEID0001:pod@1",
        )
        .unwrap();
        crate::machine::states::verdict_for_tests(&token, identity)
    }

    fn issuer(ttl: Duration) -> (CredentialIssuer, String) {
        let (cert, key) = CertificateAuthority::generate("test CA").unwrap();
        let ca = CertificateAuthority::from_pem(&cert, &key).unwrap();
        let (jwt, _) = JwtKey::generate().unwrap();
        let i = CredentialIssuer::builder("example.org")
            .ca(ca)
            .jwt_keys(vec![jwt])
            .issuer_url("https://join.example.com")
            .audience("aud-1")
            .ttl(ttl)
            .build()
            .unwrap();
        (i, cert)
    }

    #[test]
    fn a_certificate_carries_the_identity_where_x509_libraries_read_it() {
        let (issuer, _) = issuer(Duration::from_secs(600));
        let (_, public) = generate_agent_key().unwrap();
        let key = AgentKey::from_pem(&public).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let issued = issuer.issue(&verdict(None), Some(&key), now).unwrap();
        assert_eq!(issued.expires_at, now + Duration::from_secs(600));
        let pem = pem::parse(issued.certificate.unwrap()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(pem.contents()).unwrap();
        assert!(!cert.is_ca());
        assert!(cert.tbs_certificate.serial.bits() >= 64, "a random serial of at least 64 bits");
        assert_eq!(cert.validity().not_before.timestamp(), 1_800_000_000 - 60);
        assert_eq!(cert.validity().not_after.timestamp(), 1_800_000_600);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| format!("{n}"))
            .collect();
        for want in [
            "URI(spiffe://example.org/aws/111111111111/assumed-role/teleport-kube-agent/pod%401)",
            "URI(arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/pod@1)",
            "URI(urn:iam-join:account:111111111111)",
            "URI(urn:iam-join:token:kube-agent)",
            "URI(urn:iam-join:role:Kube)",
            "URI(urn:iam-join:role:App)",
        ] {
            assert!(sans.iter().any(|s| s == want), "{want} in {sans:?}");
        }
        assert_eq!(cert.public_key().raw, key.spki_der());
    }

    #[test]
    fn credentials_end_no_later_than_the_token() {
        let (issuer, _) = issuer(Duration::from_secs(3600));
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // The token expires 100 s after `now`: 2027-01-15T08:01:40Z.
        let v = verdict(Some("2027-01-15T08:01:40Z"));
        let issued = issuer.issue(&v, None, now).unwrap();
        assert_eq!(issued.expires_at, v.token_expires().unwrap());
        assert!(issued.certificate.is_none() && issued.jwt.is_some(), "no key, no certificate");
        let claims = issued.jwt.unwrap().split('.').nth(1).map(|p| {
            use base64::Engine as _;
            serde_json::from_slice::<serde_json::Value>(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap(),
            )
            .unwrap()
        });
        let claims = claims.unwrap();
        assert_eq!(claims["exp"], 1_800_000_100);
        assert_eq!(claims["sub"], "arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/pod@1");
        assert_eq!(claims["roles"], serde_json::json!(["Kube", "App"]));
        assert_eq!(
            (claims["aws_account"].as_str(), claims["token"].as_str()),
            (Some("111111111111"), Some("kube-agent"))
        );
        // An expired token: nothing is issued.
        let late = UNIX_EPOCH + Duration::from_secs(1_800_000_200);
        assert_eq!(issuer.issue(&v, None, late).unwrap_err().kind(), ErrorKind::ConfigInvalid);
    }

    #[test]
    fn keys_an_agent_may_send_and_those_it_may_not() {
        let (_, p256) = generate_agent_key().unwrap();
        assert_eq!(AgentKey::from_pem(&p256).unwrap().kind(), "ECDSA P-256", "positive control");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().public_key_pem();
        assert_eq!(AgentKey::from_pem(&ed).unwrap().kind(), "Ed25519");
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap().public_key_pem();
        assert_eq!(AgentKey::from_pem(&p384).unwrap().kind(), "ECDSA P-384");
        // A CSR: only its key is used.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr =
            rcgen::CertificateParams::new(vec!["x.example".to_owned()]).unwrap().serialize_request(&pair).unwrap();
        assert_eq!(
            AgentKey::from_pem(&csr.pem().unwrap()).unwrap().spki_der(),
            rcgen::PublicKeyData::subject_public_key_info(&pair)
        );
        for (bad, why) in [
            ("not pem".to_owned(), "not PEM"),
            (p256.replace("PUBLIC KEY", "PRIVATE KEY"), "not a PUBLIC KEY"),
            ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(), "SubjectPublicKeyInfo"),
            ("x".repeat(9000), "longer than"),
        ] {
            let e = AgentKey::from_pem(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::MalformedRequest);
            assert!(e.detail().contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_ca_is_its_certificate_and_its_key() {
        let (cert, key) = CertificateAuthority::generate("a").unwrap();
        let (_, other_key) = CertificateAuthority::generate("b").unwrap();
        assert!(CertificateAuthority::from_pem(&cert, &key).is_ok(), "positive control");
        let e = CertificateAuthority::from_pem(&cert, &other_key).unwrap_err();
        assert!(e.detail().contains("not the certificate's key"), "{e}");
        assert!(!format!("{e}").contains("PRIVATE KEY"));
        // A leaf is no CA.
        let (issuer, _) = issuer(Duration::from_secs(60));
        let (private, public) = generate_agent_key().unwrap();
        let leaf =
            issuer.issue(&verdict(None), Some(&AgentKey::from_pem(&public).unwrap()), SystemTime::now()).unwrap();
        let e = CertificateAuthority::from_pem(leaf.certificate.as_deref().unwrap(), &private).unwrap_err();
        assert!(e.detail().contains("not a CA"), "{e}");
    }

    #[test]
    fn jwt_keys_rotate_and_every_key_is_published() {
        let (old, _) = JwtKey::generate().unwrap();
        let (new, _) = JwtKey::generate().unwrap();
        let (old_kid, new_kid) = (old.kid().to_owned(), new.kid().to_owned());
        let i = CredentialIssuer::builder("example.org")
            .jwt_keys(vec![new, old])
            .issuer_url("https://join.example.com")
            .audience("aud")
            .build()
            .unwrap();
        let jwks: serde_json::Value = serde_json::from_str(&i.jwks().unwrap()).unwrap();
        let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
        assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);
        let jwt = i.issue(&verdict(None), None, SystemTime::now()).unwrap().jwt.unwrap();
        let header: serde_json::Value = {
            use base64::Engine as _;
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwt.split('.').next().unwrap()).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(header["kid"], new_kid.as_str(), "the first key signs");
        let doc: serde_json::Value = serde_json::from_str(&i.openid_configuration().unwrap()).unwrap();
        assert_eq!(doc["issuer"], "https://join.example.com");
        assert_eq!(doc["jwks_uri"], "https://join.example.com/.well-known/jwks.json");
        // Setups that cannot issue what they say.
        assert!(CredentialIssuer::builder("example.org").build().is_err(), "nothing to issue");
        let (cert, key) = CertificateAuthority::generate("x").unwrap();
        let ca = || CertificateAuthority::from_pem(&cert, &key).unwrap();
        assert!(CredentialIssuer::builder("example.org").ca(ca()).build().is_ok(), "positive control");
        assert!(CredentialIssuer::builder("Example.org").ca(ca()).build().is_err(), "a trust domain is lowercase");
        assert!(CredentialIssuer::builder("example.org").ca(ca()).ttl(Duration::from_secs(86_401)).build().is_err());
    }
}
