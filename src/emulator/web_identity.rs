//! The emulator's outbound identity federation: `GetWebIdentityToken`, and for each account an
//! issuer on the emulator's own address (`http://127.0.0.1:PORT/issuers/ACCOUNT`) that publishes
//! `/.well-known/openid-configuration` and `/.well-known/jwks.json`. Tokens carry the claims AWS
//! documents (see `core::proof::web_identity`), signed RS256 with a fixed test key or ES384 with
//! a key made at start.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};

use crate::core::response::STS_NAMESPACE;

/// The emulator's RS256 key: a 2048-bit RSA test key (PKCS#1 DER), public in this repository and
/// good for nothing but the emulator.
const RS256_TEST_KEY: &[u8] = include_bytes!("rs256-test-key.der");
/// The key ids the emulator's JWKS lists.
pub(super) const RS256_KID: &str = "emulator-rs256";
pub(super) const ES384_KID: &str = "emulator-es384";

/// The issuer's signing keys.
pub(super) struct Signer {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Escapes a string for a JSON document.
fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Signer {
    pub(super) fn new() -> Result<Self, std::io::Error> {
        let rng = SystemRandom::new();
        let rsa = RsaKeyPair::from_der(RS256_TEST_KEY).map_err(|e| std::io::Error::other(format!("RSA key: {e}")))?;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map_err(|_| std::io::Error::other("P-384 key generation failed"))?;
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| std::io::Error::other("P-384 key"))?;
        Ok(Self { rsa, ec, rng })
    }

    /// The JWKS: both keys.
    pub(super) fn jwks(&self) -> String {
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = self.rsa.public().into();
        let (n, e) = (public.n, public.e);
        let point = self.ec.public_key().as_ref();
        let (x, y) = point[1..].split_at(48);
        format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"{RS256_KID}","use":"sig","alg":"RS256","n":"{}","e":"{}"}},{{"kty":"EC","kid":"{ES384_KID}","use":"sig","alg":"ES384","crv":"P-384","x":"{}","y":"{}"}}]}}"#,
            b64(&n),
            b64(&e),
            b64(x),
            b64(y)
        )
    }

    /// Signs `claims` (JSON) with `alg`, under its key id.
    pub(super) fn sign(&self, alg: &str, claims: &str) -> Option<String> {
        let kid = if alg == "RS256" { RS256_KID } else { ES384_KID };
        let input = format!(
            "{}.{}",
            b64(format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#).as_bytes()),
            b64(claims.as_bytes())
        );
        let signature = match alg {
            "RS256" => {
                let mut sig = vec![0u8; self.rsa.public().modulus_len()];
                self.rsa.sign(&RSA_PKCS1_SHA256, &self.rng, input.as_bytes(), &mut sig).ok()?;
                sig
            }
            "ES384" => self.ec.sign(&self.rng, input.as_bytes()).ok()?.as_ref().to_vec(),
            _ => return None,
        };
        Some(format!("{input}.{}", b64(&signature)))
    }
}

/// The issuer URL of `account` on the emulator at `base` (`http://127.0.0.1:PORT`).
pub(super) fn issuer(base: &str, account: &str) -> String {
    format!("{base}/issuers/{account}")
}

/// The OpenID configuration of an issuer.
pub(super) fn discovery(issuer: &str) -> String {
    format!(
        r#"{{"issuer":{},"jwks_uri":{},"response_types_supported":["id_token"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["RS256","ES384"]}}"#,
        json_str(issuer),
        json_str(&format!("{issuer}/.well-known/jwks.json"))
    )
}

/// Where an account sits, for the token's organization claims.
#[derive(Clone, Debug)]
pub(super) struct Placement {
    pub(super) account: String,
    pub(super) org_id: String,
    /// `o-…/r-…/ou-…/…/`.
    pub(super) ou_path: String,
}

/// What a `GetWebIdentityToken` request asks for.
pub(super) struct Request<'a> {
    pub(super) audiences: Vec<&'a str>,
    pub(super) alg: &'a str,
    pub(super) duration: u64,
}

/// Reads the request's form parameters as STS validates them; an error message otherwise.
pub(super) fn request<'a>(param: &dyn Fn(&str) -> Option<&'a str>) -> Result<Request<'a>, &'static str> {
    let audiences: Vec<&str> = (1..=11).map_while(|i| param(&format!("Audience.member.{i}"))).collect();
    if audiences.is_empty() || audiences.len() > 10 || audiences.iter().any(|a| a.is_empty() || a.len() > 1000) {
        return Err("Audience must hold 1 to 10 values of 1 to 1000 characters");
    }
    let alg = match param("SigningAlgorithm") {
        Some(a @ ("RS256" | "ES384")) => a,
        _ => return Err("SigningAlgorithm must be RS256 or ES384"),
    };
    let duration = match param("DurationSeconds").map(str::parse::<u64>) {
        None => 300,
        Some(Ok(d)) if (60..=3600).contains(&d) => d,
        Some(_) => return Err("DurationSeconds must be between 60 and 3600"),
    };
    Ok(Request { audiences, alg, duration })
}

/// The token and its answer for `principal_arn` (a user, or the role of a session) in `account`.
#[allow(clippy::too_many_arguments)]
pub(super) fn answer(
    signer: &Signer,
    base: &str,
    account: &str,
    principal_arn: &str,
    region: &str,
    placement: Option<&Placement>,
    req: &Request<'_>,
    now: SystemTime,
) -> Option<String> {
    let iat = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let exp = iat + req.duration;
    let aud = if req.audiences.len() == 1 {
        json_str(req.audiences[0])
    } else {
        format!("[{}]", req.audiences.iter().map(|a| json_str(a)).collect::<Vec<_>>().join(","))
    };
    let mut jti = [0u8; 16];
    let _ = getrandom::fill(&mut jti);
    let mut aws = format!(
        r#""aws_account":"{account}","source_region":{},"principal_id":{}"#,
        json_str(region),
        json_str(principal_arn)
    );
    if let Some(p) = placement {
        let _ = write!(aws, r#","org_id":{},"ou_path":{}"#, json_str(&p.org_id), json_str(&p.ou_path));
    }
    let claims = format!(
        r#"{{"iss":{},"aud":{aud},"sub":{},"iat":{iat},"exp":{exp},"jti":"{}","{}":{{{aws}}}}}"#,
        json_str(&issuer(base, account)),
        json_str(principal_arn),
        crate::emulator::sigv4::hex(&jti),
        crate::core::proof::web_identity::AWS_CLAIMS_NAMESPACE,
    );
    let token = signer.sign(req.alg, &claims)?;
    let expiration = time::OffsetDateTime::from(UNIX_EPOCH + Duration::from_secs(exp))
        .format(&time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(format!(
        "<GetWebIdentityTokenResponse xmlns=\"{STS_NAMESPACE}\">\n  <GetWebIdentityTokenResult>\n    <WebIdentityToken>{token}</WebIdentityToken>\n    <Expiration>{expiration}</Expiration>\n  </GetWebIdentityTokenResult>\n  <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  </ResponseMetadata>\n</GetWebIdentityTokenResponse>\n",
        crate::emulator::REQUEST_ID
    ))
}
