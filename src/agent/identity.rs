//! The identity an agent keeps across restarts (`iam-join join --identity-dir DIR`): its key
//! pair, made here (the private key never leaves the machine), and the credentials a join gave
//! it, written atomically so that a crash never leaves a torn file:
//!
//! - `key.pem` (mode 0600): the private key, PKCS#8;
//! - `cert.pem`, `ca.pem`: the certificate and the CA it chains to, when the service issues
//!   certificates; `token.jwt` (mode 0600): the JWT, when it issues JWTs;
//! - `identity.json`: the token, the service's URL, the identity, the roles, when the
//!   credentials were issued and when they expire. Written last: it commits the others.
//!
//! A stored identity is used only when it is valid: every file parses, it is for the same token
//! and service URL, it has not expired, the certificate verifies against `ca.pem` for client
//! authentication (rustls-webpki) and holds `key.pem`'s public key. It is worth keeping while
//! more than a third of its lifetime remains, measured from issuance (not from the backdated
//! `notBefore`); after two thirds, a renewing agent joins again.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::core::error::Error;
use crate::wire::{Allowed, Identity};

/// What `identity.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredIdentity {
    /// The provision token joined with.
    pub token: String,
    /// The join service's URL.
    pub server: String,
    /// The identity the join proved.
    pub identity: Identity,
    /// The roles it was granted.
    pub roles: Vec<String>,
    /// When the credentials were issued (seconds since the epoch).
    pub issued_at: u64,
    /// When they expire (seconds since the epoch).
    pub expires_at: u64,
    /// When they expire, RFC 3339 (for people).
    pub expires: String,
}

impl StoredIdentity {
    /// Whether more than a third of the lifetime remains at `now`.
    pub fn fresh_at(&self, now: SystemTime) -> bool {
        now < self.renew_at()
    }

    /// When two thirds of the lifetime have passed: the time to join again.
    pub fn renew_at(&self) -> SystemTime {
        let life = self.expires_at.saturating_sub(self.issued_at);
        UNIX_EPOCH + Duration::from_secs(self.issued_at + life * 2 / 3)
    }

    /// When the credentials expire.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires_at)
    }
}

/// A folder holding an agent's identity.
#[derive(Clone, Debug)]
pub struct IdentityDir {
    path: PathBuf,
}

const KEY: &str = "key.pem";
const CERT: &str = "cert.pem";
const CA: &str = "ca.pem";
const JWT: &str = "token.jwt";
const META: &str = "identity.json";
/// The largest file of an identity read back.
const MAX_FILE: usize = 64 * 1024;

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl IdentityDir {
    /// The folder (created, mode 0700, when the identity is first saved).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self, name: &str) -> Result<String, String> {
        let (bytes, _) = crate::io::files::read_regular_file(&self.path.join(name), MAX_FILE)?;
        String::from_utf8(bytes).map_err(|_| format!("{name} is not text"))
    }

    /// The stored identity for `token` at `server`, if it is valid at `now` (see the module
    /// docs); otherwise why not, for the agent's log (never a key or a token).
    pub fn load(&self, token: &str, server: &str, now: SystemTime) -> Result<StoredIdentity, String> {
        let meta: StoredIdentity = serde_json::from_str(&self.read(META)?).map_err(|e| format!("{META}: {e}"))?;
        if meta.token != token {
            return Err(format!("it is for token {:?}, not {token:?}", meta.token));
        }
        if meta.server != server {
            return Err(format!("it is for the service {:?}, not {server:?}", meta.server));
        }
        if now >= meta.expires_at() {
            return Err(format!("it expired at {}", meta.expires));
        }
        let key = self.read(KEY)?;
        let pair = rcgen::KeyPair::from_pem(&key).map_err(|_| format!("{KEY} is not a private key"))?;
        match self.read(CERT) {
            Ok(cert) => {
                let ca = self.read(CA)?;
                check_certificate(&cert, &ca, &pair, now)?;
            }
            Err(_) if self.path.join(JWT).exists() => {
                let jwt = self.read(JWT)?;
                if jwt.split('.').count() != 3 {
                    return Err(format!("{JWT} is not a JWT"));
                }
            }
            Err(e) => return Err(e),
        }
        Ok(meta)
    }

    /// Writes the identity an allowed join gave: the private key `key_pem` made for it and the
    /// answer's credentials. Each file is written to a temporary name and renamed into place;
    /// `identity.json` last.
    pub fn save(
        &self,
        server: &str,
        key_pem: &str,
        allowed: &Allowed,
        issued_at: SystemTime,
    ) -> Result<StoredIdentity, Error> {
        let failed = |what: &str, e: std::io::Error| {
            Error::config_invalid(format!("{}: writing {what} failed: {e}", self.path.display()))
        };
        let credentials = allowed
            .credentials
            .as_ref()
            .ok_or_else(|| Error::config_invalid("the service issued no credentials for this join"))?;
        let expires =
            time::OffsetDateTime::parse(&credentials.expires_at, &time::format_description::well_known::Rfc3339)
                .map(SystemTime::from)
                .map_err(|_| Error::config_invalid("the service's expires_at is not RFC 3339"))?;
        create_private_dir(&self.path).map_err(|e| failed("the folder", e))?;
        write_atomically(&self.path, KEY, key_pem.as_bytes(), 0o600).map_err(|e| failed(KEY, e))?;
        let mut files = 1;
        if let (Some(cert), Some(ca)) = (&credentials.certificate, &credentials.ca) {
            write_atomically(&self.path, CERT, cert.as_bytes(), 0o644).map_err(|e| failed(CERT, e))?;
            write_atomically(&self.path, CA, ca.as_bytes(), 0o644).map_err(|e| failed(CA, e))?;
            files += 2;
        } else {
            let _ = fs::remove_file(self.path.join(CERT));
        }
        if let Some(jwt) = &credentials.jwt {
            write_atomically(&self.path, JWT, jwt.as_bytes(), 0o600).map_err(|e| failed(JWT, e))?;
            files += 1;
        }
        if files == 1 {
            return Err(Error::config_invalid("the service issued neither a certificate nor a JWT"));
        }
        let meta = StoredIdentity {
            token: allowed.token.clone(),
            server: server.to_owned(),
            identity: allowed.identity.clone(),
            roles: allowed.roles.clone(),
            issued_at: secs(issued_at),
            expires_at: secs(expires),
            expires: credentials.expires_at.clone(),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::config_invalid(format!("{META}: {e}")))?;
        write_atomically(&self.path, META, &json, 0o644).map_err(|e| failed(META, e))?;
        Ok(meta)
    }
}

/// The certificate verifies against the CA for client authentication at `now`, and holds the
/// key pair's public key.
fn check_certificate(cert_pem: &str, ca_pem: &str, pair: &rcgen::KeyPair, now: SystemTime) -> Result<(), String> {
    let der = |pem_text: &str, name: &str| {
        pem::parse(pem_text.trim())
            .ok()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .ok_or_else(|| format!("{name} is not a PEM certificate"))
    };
    let (cert, ca) = (der(cert_pem, CERT)?, der(ca_pem, CA)?);
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).map_err(|_| format!("{CERT} does not parse"))?;
    if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(pair).as_slice() {
        return Err(format!("{CERT} is not for {KEY}"));
    }
    let cert = rustls_pki_types::CertificateDer::from(cert);
    let ca = rustls_pki_types::CertificateDer::from(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| format!("{CA}: {e}"))?;
    let end = webpki::EndEntityCert::try_from(&cert).map_err(|e| format!("{CERT}: {e}"))?;
    let time = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(secs(now)));
    let algs = webpki::ALL_VERIFICATION_ALGS;
    end.verify_for_usage(algs, &[anchor], &[], time, webpki::KeyUsage::client_auth(), None, None)
        .map(|_| ())
        .map_err(|e| format!("{CERT} does not verify against {CA}: {e}"))
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        match fs::DirBuilder::new().recursive(true).mode(0o700).create(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    fs::create_dir_all(path)
}

/// Writes `name` in `dir` by writing a new file and renaming it over the old one: readers see
/// the old file or the new one, whole.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut suffix = [0u8; 8];
    let _ = getrandom::fill(&mut suffix);
    let tmp = dir.join(format!(".{name}.{}.tmp", u64::from_le_bytes(suffix)));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
