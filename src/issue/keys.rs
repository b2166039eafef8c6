//! The keys credentials are made with: the agent's public key, the operator's CA, and the JWT
//! signing keys (ES256, ring).

use std::fmt;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;

use crate::core::error::Error;
use crate::issue::{b64, bad_key};

/// The longest public key (PEM, SPKI or CSR) an agent may send.
pub const MAX_PUBLIC_KEY_PEM_BYTES: usize = 8 * 1024;
/// The largest RSA key accepted.
const MAX_RSA_BITS: usize = 8192;

/// A public key an agent sent for its certificate, checked: Ed25519, ECDSA P-256 or P-384, or RSA
/// of 2048 to 8192 bits, as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or a `CERTIFICATE REQUEST`
/// (only its key is used).
#[derive(Clone)]
pub struct AgentKey {
    spki: rcgen::SubjectPublicKeyInfo,
    der: Vec<u8>,
    kind: &'static str,
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentKey({}, {} bytes)", self.kind, self.der.len())
    }
}

impl AgentKey {
    /// Reads and checks the key; `malformed_request` (the client's to fix) otherwise.
    ///
    /// ```
    /// let (_private, public) = iam_join::issue::generate_agent_key().unwrap();
    /// assert_eq!(iam_join::issue::AgentKey::from_pem(&public).unwrap().kind(), "ECDSA P-256");
    /// assert!(iam_join::issue::AgentKey::from_pem("not a key").is_err());
    /// ```
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        if pem.len() > MAX_PUBLIC_KEY_PEM_BYTES {
            return Err(bad_key(format!("public_key is longer than {MAX_PUBLIC_KEY_PEM_BYTES} bytes")));
        }
        let block = pem::parse(pem.trim()).map_err(|_| bad_key("public_key is not PEM"))?;
        let der = match block.tag() {
            "PUBLIC KEY" => block.contents().to_vec(),
            "CERTIFICATE REQUEST" => {
                let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(block.contents())
                    .map_err(|_| bad_key("public_key: not a certificate request"))?;
                // Only its key is used; a request that does not verify is not the key's owner's.
                req.verify_signature()
                    .map_err(|_| bad_key("public_key: the certificate request's signature does not verify"))?;
                req.certification_request_info.subject_pki.raw.to_vec()
            }
            other => {
                return Err(bad_key(format!(
                    "public_key is a PEM {}, not a PUBLIC KEY or CERTIFICATE REQUEST",
                    crate::core::text::quoted_shown(other)
                )));
            }
        };
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der)
            .map_err(|_| bad_key("public_key is not a SubjectPublicKeyInfo"))?;
        if !rest.is_empty() {
            return Err(bad_key("public_key has bytes after its SubjectPublicKeyInfo"));
        }
        let oid = spki.algorithm.algorithm.to_id_string();
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
        let kind = match (oid.as_str(), curve.as_deref()) {
            ("1.3.101.112", _) => "Ed25519",
            ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => "ECDSA P-256",
            ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => "ECDSA P-384",
            ("1.2.840.113549.1.1.1", _) => match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) if (2048..=MAX_RSA_BITS).contains(&rsa.key_size()) => "RSA",
                Ok(PublicKey::RSA(rsa)) => {
                    return Err(bad_key(format!(
                        "public_key is RSA of {} bits; 2048 to {MAX_RSA_BITS} are accepted",
                        rsa.key_size()
                    )));
                }
                _ => return Err(bad_key("public_key is not a usable RSA key")),
            },
            _ => {
                return Err(bad_key("public_key is not Ed25519, ECDSA P-256 or P-384, or RSA of at least 2048 bits"));
            }
        };
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&der)
            .map_err(|e| bad_key(format!("public_key cannot be certified: {e}")))?;
        Ok(Self { spki, der, kind })
    }

    /// `Ed25519`, `ECDSA P-256`, `ECDSA P-384` or `RSA`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.der
    }

    pub(crate) fn spki(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.spki
    }
}

/// Reads a private key file: a regular file, bounded, that group and others cannot read.
fn read_private(path: &Path, what: &str) -> Result<zeroize::Zeroizing<String>, Error> {
    let bytes = crate::io::files::read_private_file(path, 64 * 1024, what)?;
    String::from_utf8(bytes.to_vec())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| Error::config_invalid(format!("{}: the {what} is not text (PEM or JSON)", path.display())))
}

/// The CA that signs agents' certificates: its certificate and its key.
pub struct CertificateAuthority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A CA from its certificate and private key (PEM; the key PKCS#8 or SEC1/PKCS#1 as rcgen
    /// reads them). `config_invalid` when either does not parse, the certificate is not a CA, or
    /// the key is not the certificate's. Errors never hold the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let bad = |why: String| Error::config_invalid(format!("the CA: {why}"));
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|_| bad("the key is not a PEM private key rcgen reads".into()))?;
        let block = pem::parse(cert_pem.trim()).map_err(|_| bad("the certificate is not PEM".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
            .map_err(|e| bad(format!("the certificate does not parse: {e}")))?;
        if !cert.is_ca() {
            return Err(bad("the certificate is not a CA (BasicConstraints CA:true)".into()));
        }
        if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(bad("the key is not the certificate's key".into()));
        }
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| bad(format!("{e}")))?;
        Ok(Self { issuer, pem: cert_pem.trim().to_owned() + "\n" })
    }

    /// [`CertificateAuthority::from_pem`] from files; the key file is refused when group or others
    /// may read it.
    pub fn load_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let (cert_bytes, _) = crate::io::files::read_regular_file(cert, 64 * 1024).map_err(Error::config_invalid)?;
        let cert_pem = String::from_utf8(cert_bytes)
            .map_err(|_| Error::config_invalid(format!("{}: not a PEM certificate", cert.display())))?;
        let key_pem = read_private(key, "CA key")?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// A new self-signed CA (ECDSA P-256) named `name`: its certificate and key, PEM. For tests
    /// and first setups; production CAs are the operator's.
    pub fn generate(name: &str) -> Result<(String, zeroize::Zeroizing<String>), Error> {
        let failed = |e: rcgen::Error| Error::config_invalid(format!("generating a CA failed: {e}"));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, name);
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    pub(crate) fn issuer(&self) -> &rcgen::Issuer<'static, rcgen::KeyPair> {
        &self.issuer
    }
}

/// A JWT signing key: ECDSA P-256 (ES256), with its `kid` (the JWK's, or its RFC 7638 thumbprint).
pub struct JwtKey {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtKey({})", self.kid)
    }
}

impl JwtKey {
    /// A key from a PKCS#8 PEM (`PRIVATE KEY`) of P-256; `kid` its RFC 7638 thumbprint.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let block = pem::parse(pem.trim()).map_err(|_| Error::config_invalid("the JWT key is not PEM"))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(Error::config_invalid("the JWT key must be a PKCS#8 PRIVATE KEY of P-256"));
        }
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, block.contents(), &rng)
            .map_err(|_| Error::config_invalid("the JWT key is not a P-256 key in PKCS#8"))?;
        let kid = thumbprint(pair.public_key().as_ref());
        Ok(Self { pair, kid, rng })
    }

    /// A key from a private JWK (`kty` `EC`, `crv` `P-256`, `x`, `y`, `d`, optional `kid`).
    pub fn from_jwk(json: &str) -> Result<Self, Error> {
        #[derive(serde::Deserialize)]
        struct Jwk {
            kty: String,
            crv: String,
            x: String,
            y: String,
            d: String,
            #[serde(default)]
            kid: Option<String>,
        }
        let bad = || Error::config_invalid("the JWT key is not a private EC P-256 JWK");
        let jwk: Jwk = serde_json::from_str(json).map_err(|_| bad())?;
        if jwk.kty != "EC" || jwk.crv != "P-256" {
            return Err(bad());
        }
        use base64::Engine as _;
        let dec = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| bad());
        let d = zeroize::Zeroizing::new(dec(&jwk.d)?);
        let point = [vec![4u8], dec(&jwk.x)?, dec(&jwk.y)?].concat();
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_FIXED_SIGNING, &d, &point, &rng)
            .map_err(|_| bad())?;
        let kid = jwk.kid.filter(|k| !k.is_empty()).unwrap_or_else(|| thumbprint(&point));
        Ok(Self { pair, kid, rng })
    }

    /// A key file, PEM or JWK, refused when group or others may read it.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = read_private(path, "JWT key")?;
        let parsed = if text.trim_start().starts_with('{') { Self::from_jwk(&text) } else { Self::from_pem(&text) };
        parsed.map_err(|e| Error::config_invalid(format!("{}: {}", path.display(), e.detail())))
    }

    /// A new key, and its PKCS#8 PEM.
    pub fn generate() -> Result<(Self, zeroize::Zeroizing<String>), Error> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| Error::config_invalid("generating a JWT key failed"))?;
        let pem = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec())));
        Ok((Self::from_pem(&pem)?, pem))
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK (`kty`, `crv`, `x`, `y`, `kid`, `use`, `alg`).
    pub fn public_jwk(&self) -> String {
        let (x, y) = self.pair.public_key().as_ref()[1..].split_at(32);
        format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}","kid":{},"use":"sig","alg":"ES256"}}"#,
            b64(x),
            b64(y),
            serde_json::Value::from(self.kid.as_str())
        )
    }

    pub(crate) fn sign(&self, input: &[u8]) -> Result<Vec<u8>, Error> {
        self.pair
            .sign(&self.rng, input)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::config_invalid("signing the JWT failed"))
    }
}

/// RFC 7638: the base64url SHA-256 of `{"crv":"P-256","kty":"EC","x":…,"y":…}`.
fn thumbprint(point: &[u8]) -> String {
    use sha2::Digest as _;
    let (x, y) = point[1..].split_at(32);
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, b64(x), b64(y));
    b64(&sha2::Sha256::digest(canonical.as_bytes()))
}
