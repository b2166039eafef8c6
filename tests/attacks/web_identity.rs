//! Hostile web identity tokens. Each is a token minted here (RS256 with the issuer's key, or a
//! case's own key and header) and verified through the whole `Verifier`, whose issuer keys come
//! from a loopback issuer that counts what it serves. A token refused before its signature is
//! checked must not make the verifier fetch anything; no case reaches STS (the fake counts).
//! The JWT attacks are the published ones: `alg: none`, HS256 keyed with the public key, an
//! RSA/EC swap, a `kid` pointing elsewhere, `jku`/`x5u`/`jwk` headers, time, issuer, audience
//! and account confusion, a token replayed for a second challenge, an oversized token.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use iam_join::ErrorKind::{self, *};
use iam_join::{Challenge, JwksCache, MemoryReplayGuard, Proof, TokenSet, Verifier, WebIdentityPolicy};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use tokio::io::AsyncWriteExt;

use crate::loopback::{Loopback, reply_and_close};
use crate::{FakeSts, Report, Where, challenge, expect_refusal_of, signed_at};

const ATTACK: &str = "JWT attacks (RFC 8725, JSON Web Token Best Current Practices)";
const KEYS: &str = "key confusion: keys or key URLs named by the token (CVE-2018-0114, jku/x5u injection)";
const CLAIMS: &str = "claims: issuer, audience and account confusion";
const TIME: &str = "time: expired, future and over-long tokens";
const SHAPE: &str = "token shape and size";

const AUDIENCE: &str = "https://join.example.com";
const ACCOUNT: &str = "123456789012";
const USER: &str = "arn:aws:iam::123456789012:user/ci";

/// The issuer's RSA key (the emulator's test key), an attacker's, and an EC key made here.
struct Keys {
    issuer: RsaKeyPair,
    attacker: RsaKeyPair,
    ec: EcdsaKeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        Keys {
            issuer: RsaKeyPair::from_der(include_bytes!("../../src/emulator/rs256-test-key.der")).unwrap(),
            attacker: RsaKeyPair::from_der(include_bytes!("../vectors/jwt/attacker-rs256.der")).unwrap(),
            ec: EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap(),
        }
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_jwk(k: &RsaKeyPair, kid: &str) -> String {
    let p: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
    format!(r#"{{"kty":"RSA","kid":"{kid}","use":"sig","alg":"RS256","n":"{}","e":"{}"}}"#, b64(&p.n), b64(&p.e))
}

fn ec_jwk(k: &EcdsaKeyPair, kid: &str) -> String {
    let (x, y) = k.public_key().as_ref()[1..].split_at(48);
    format!(r#"{{"kty":"EC","kid":"{kid}","use":"sig","alg":"ES384","crv":"P-384","x":"{}","y":"{}"}}"#, b64(x), b64(y))
}

/// The issuer's JWKS: its RSA key `rsa-1` and its EC key `ec-1`.
fn jwks() -> String {
    format!(r#"{{"keys":[{},{}]}}"#, rsa_jwk(&keys().issuer, "rsa-1"), ec_jwk(&keys().ec, "ec-1"))
}

/// How a case signs.
#[derive(Clone, Copy)]
enum Sign {
    Issuer,
    Ec,
    Attacker,
    /// HS256 keyed with the issuer's RSA public key bytes (the classic confusion).
    HmacWithPublicKey,
    /// No signature at all.
    None,
}

fn mint(header: &str, claims: &str, sign: Sign) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let rng = SystemRandom::new();
    let rsa = |k: &RsaKeyPair| {
        let mut sig = vec![0u8; k.public().modulus_len()];
        k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
        sig
    };
    let sig = match sign {
        Sign::Issuer => rsa(&keys().issuer),
        Sign::Attacker => rsa(&keys().attacker),
        Sign::Ec => keys().ec.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        Sign::HmacWithPublicKey => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, keys().issuer.public().as_ref());
            ring::hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
        }
        Sign::None => Vec::new(),
    };
    format!("{input}.{}", b64(&sig))
}

/// The issuer URL the policy pins for ACCOUNT, set once the loopback issuer listens.
fn issuer() -> String {
    ISSUER.get().cloned().unwrap_or_default()
}
static ISSUER: OnceLock<String> = OnceLock::new();

fn now_secs() -> u64 {
    signed_at().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The claims of a good token for USER, with `edit` applied to their JSON.
fn claims_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let t = now_secs();
    let mut c = serde_json::json!({
        "iss": issuer(), "aud": [AUDIENCE, challenge()], "sub": USER, "iat": t, "exp": t + 300, "jti": "j-1",
        "https://sts.amazonaws.com/": {"aws_account": ACCOUNT, "principal_id": USER, "source_region": "us-east-1"}
    });
    edit(&mut c);
    c.to_string()
}

fn claims() -> String {
    claims_with(|_| {})
}

const RS256: &str = r#"{"alg":"RS256","kid":"rsa-1","typ":"JWT"}"#;
const ES384: &str = r#"{"alg":"ES384","kid":"ec-1","typ":"JWT"}"#;

/// A good token, RS256.
pub(crate) fn token() -> String {
    mint(RS256, &claims(), Sign::Issuer)
}

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) make: fn() -> String,
    pub(crate) want: ErrorKind,
    pub(crate) because: &'static str,
    /// Whether the keys may be fetched (the refusal comes from the signature check).
    pub(crate) after_keys: bool,
}

macro_rules! cases {
    ($($name:ident [$source:expr, $keys:literal]: $make:expr => $want:ident, $because:literal;)*) => {
        pub(crate) const CASES: &[Case] = &[$(Case {
            name: stringify!($name),
            source: $source,
            make: $make,
            want: $want,
            because: $because,
            after_keys: $keys,
        }),*];
    };
}

fn edit_aws(key: &'static str, value: serde_json::Value) -> impl FnOnce(&mut serde_json::Value) {
    move |c| c["https://sts.amazonaws.com/"][key] = value
}

cases! {
    jwt_alg_none [ATTACK, false]: || mint(r#"{"alg":"none","kid":"rsa-1"}"#, &claims(), Sign::None) => MalformedRequest, "known alg";
    jwt_alg_none_capitalized [ATTACK, false]: || mint(r#"{"alg":"None","kid":"rsa-1"}"#, &claims(), Sign::None) => MalformedRequest, "known alg";
    jwt_hs256_with_public_key [ATTACK, false]: || mint(r#"{"alg":"HS256","kid":"rsa-1"}"#, &claims(), Sign::HmacWithPublicKey) => MalformedRequest, "signed with HS256; only RS256 and ES384 are accepted";
    jwt_rs512 [ATTACK, false]: || mint(r#"{"alg":"RS512","kid":"rsa-1"}"#, &claims(), Sign::Issuer) => MalformedRequest, "signed with RS512";
    jwt_es384_header_rsa_key [ATTACK, true]: || mint(r#"{"alg":"ES384","kid":"rsa-1"}"#, &claims(), Sign::Issuer) => MalformedRequest, "is not the alg of key";
    jwt_rs256_header_ec_key [ATTACK, true]: || mint(r#"{"alg":"RS256","kid":"ec-1"}"#, &claims(), Sign::Ec) => MalformedRequest, "is not the alg of key";
    jwt_bad_signature [ATTACK, true]: || { let t = token(); let cut = t.len() - 4; format!("{}AAAA", &t[..cut]) } => SignatureRejected, "does not verify";
    jwt_signed_by_attacker [ATTACK, true]: || mint(RS256, &claims(), Sign::Attacker) => SignatureRejected, "does not verify";
    jwt_claims_swapped_after_signing [ATTACK, true]: || { let good = token(); let evil = mint(RS256, &claims_with(edit_aws("principal_id", serde_json::json!("arn:aws:iam::123456789012:user/admin"))), Sign::None); let p: Vec<&str> = good.split('.').collect(); let e: Vec<&str> = evil.split('.').collect(); format!("{}.{}.{}", p[0], e[1], p[2]) } => SignatureRejected, "does not verify";
    jwt_empty_signature [ATTACK, true]: || mint(RS256, &claims(), Sign::None) => SignatureRejected, "does not verify";

    jwt_kid_elsewhere [KEYS, true]: || mint(r#"{"alg":"RS256","kid":"attacker-key"}"#, &claims(), Sign::Attacker) => SignatureRejected, "has no key \"attacker-key\"";
    jwt_no_kid [KEYS, false]: || mint(r#"{"alg":"RS256"}"#, &claims(), Sign::Issuer) => MalformedRequest, "has no kid";
    jwt_jku_header [KEYS, false]: || mint(r#"{"alg":"RS256","kid":"rsa-1","jku":"https://attacker.example/jwks.json"}"#, &claims(), Sign::Attacker) => MalformedRequest, "has jku";
    jwt_x5u_header [KEYS, false]: || mint(r#"{"alg":"RS256","kid":"rsa-1","x5u":"https://attacker.example/cert.pem"}"#, &claims(), Sign::Attacker) => MalformedRequest, "has x5u";
    jwt_jwk_header [KEYS, false]: || { let h = format!(r#"{{"alg":"RS256","kid":"rsa-1","jwk":{}}}"#, rsa_jwk(&keys().attacker, "rsa-1")); mint(&h, &claims(), Sign::Attacker) } => MalformedRequest, "has jwk";
    jwt_x5c_header [KEYS, false]: || mint(r#"{"alg":"RS256","kid":"rsa-1","x5c":["MIIB"]}"#, &claims(), Sign::Attacker) => MalformedRequest, "has x5c";
    jwt_crit_header [KEYS, false]: || mint(r#"{"alg":"RS256","kid":"rsa-1","crit":["exp"]}"#, &claims(), Sign::Issuer) => MalformedRequest, "has crit";

    jwt_wrong_iss [CLAIMS, false]: || mint(RS256, &claims_with(|c| c["iss"] = serde_json::json!("https://attacker.example")), Sign::Issuer) => UntrustedEndpoint, "is not the issuer pinned for account 123456789012";
    jwt_iss_trailing_slash [CLAIMS, false]: || mint(RS256, &claims_with(|c| c["iss"] = serde_json::json!(format!("{}/", issuer()))), Sign::Issuer) => UntrustedEndpoint, "is not the issuer pinned";
    jwt_other_accounts_issuer [CLAIMS, false]: || mint(RS256, &claims_with(|c| { c["https://sts.amazonaws.com/"]["aws_account"] = serde_json::json!("222222222222"); c["https://sts.amazonaws.com/"]["principal_id"] = serde_json::json!("arn:aws:iam::222222222222:user/ci"); c["sub"] = serde_json::json!("arn:aws:iam::222222222222:user/ci"); }), Sign::Issuer) => UntrustedEndpoint, "is not the issuer pinned for account 222222222222";
    jwt_unpinned_account [CLAIMS, false]: || mint(RS256, &claims_with(|c| { c["https://sts.amazonaws.com/"]["aws_account"] = serde_json::json!("333333333333"); c["https://sts.amazonaws.com/"]["principal_id"] = serde_json::json!("arn:aws:iam::333333333333:user/ci"); c["sub"] = serde_json::json!("arn:aws:iam::333333333333:user/ci"); }), Sign::Issuer) => UntrustedEndpoint, "no web identity issuer is pinned for account 333333333333";
    jwt_accounts_disagree [CLAIMS, false]: || mint(RS256, &claims_with(edit_aws("principal_id", serde_json::json!("arn:aws:iam::222222222222:user/ci"))), Sign::Issuer) => MalformedRequest, "claims disagree on the account";
    jwt_sub_account_disagrees [CLAIMS, false]: || mint(RS256, &claims_with(|c| c["sub"] = serde_json::json!("arn:aws:iam::222222222222:user/ci")), Sign::Issuer) => MalformedRequest, "claims disagree on the account (aws_account, sub)";
    jwt_audience_missing [CLAIMS, false]: || mint(RS256, &claims_with(|c| c["aud"] = serde_json::json!([challenge()])), Sign::Issuer) => UntrustedEndpoint, "do not include this verifier's audience";
    jwt_audience_prefix [CLAIMS, false]: || mint(RS256, &claims_with(|c| c["aud"] = serde_json::json!([format!("{AUDIENCE}.evil"), challenge()])), Sign::Issuer) => UntrustedEndpoint, "do not include this verifier's audience";
    jwt_challenge_missing [CLAIMS, false]: || mint(RS256, &claims_with(|c| c["aud"] = serde_json::json!(AUDIENCE)), Sign::Issuer) => ChallengeMismatch, "do not hold the challenge this server issued";
    jwt_challenge_other [CLAIMS, false]: || mint(RS256, &claims_with(|c| c["aud"] = serde_json::json!([AUDIENCE, "kXr0Vg7oQ3lT2x0yVv9pJ6mN4bH8cD1eF5gA7iK9sLv"])), Sign::Issuer) => ChallengeMismatch, "do not hold the challenge";
    jwt_no_principal [CLAIMS, false]: || mint(RS256, &claims_with(|c| { c["sub"] = serde_json::json!("alice@example.com"); c["subject_mode"] = serde_json::json!("OriginIdentity"); c["https://sts.amazonaws.com/"].as_object_mut().unwrap().remove("principal_id"); }), Sign::Issuer) => MalformedRequest, "names no principal ARN";
    jwt_principal_not_an_arn [CLAIMS, false]: || mint(RS256, &claims_with(edit_aws("principal_id", serde_json::json!("AIDAEXAMPLE"))), Sign::Issuer) => MalformedRequest, "principal_id is not a principal ARN";
    jwt_org_path_disagrees [CLAIMS, false]: || mint(RS256, &claims_with(|c| { c["https://sts.amazonaws.com/"]["org_id"] = serde_json::json!("o-a1b2c3d4e5"); c["https://sts.amazonaws.com/"]["ou_path"] = serde_json::json!("o-zzzzzzzzzz/r-ab12/ou-ab12-11111111/"); }), Sign::Issuer) => MalformedRequest, "ou_path names another organization";

    jwt_expired [TIME, false]: || mint(RS256, &claims_with(|c| { let t = now_secs(); c["iat"] = serde_json::json!(t - 400); c["exp"] = serde_json::json!(t - 100); }), Sign::Issuer) => RequestExpired, "the token expired 100s ago";
    jwt_issued_in_the_future [TIME, false]: || mint(RS256, &claims_with(|c| { let t = now_secs(); c["iat"] = serde_json::json!(t + 3000); c["exp"] = serde_json::json!(t + 3300); }), Sign::Issuer) => RequestExpired, "the token's iat is 3000s in the future";
    jwt_issued_long_ago [TIME, false]: || mint(RS256, &claims_with(|c| { let t = now_secs(); c["iat"] = serde_json::json!(t - 1800); c["exp"] = serde_json::json!(t + 1800); }), Sign::Issuer) => RequestExpired, "the token's iat is 1800s old";
    jwt_not_yet_valid [TIME, false]: || mint(RS256, &claims_with(|c| c["nbf"] = serde_json::json!(now_secs() + 3600)), Sign::Issuer) => RequestExpired, "not valid yet (nbf)";
    jwt_lifetime_too_long [TIME, false]: || mint(RS256, &claims_with(|c| c["exp"] = serde_json::json!(now_secs() + 3601)), Sign::Issuer) => MalformedRequest, "lifetime (exp - iat) is not 1 to 3600 seconds";
    jwt_exp_before_iat [TIME, false]: || mint(RS256, &claims_with(|c| c["exp"] = serde_json::json!(now_secs() - 1)), Sign::Issuer) => MalformedRequest, "lifetime (exp - iat)";
    jwt_exp_not_a_number [TIME, false]: || mint(RS256, &claims_with(|c| c["exp"] = serde_json::json!("tomorrow")), Sign::Issuer) => MalformedRequest, "claims are not what STS issues";
    jwt_exp_float [TIME, false]: || mint(RS256, &claims_with(|c| c["exp"] = serde_json::json!(1.5)), Sign::Issuer) => MalformedRequest, "claims are not what STS issues";
    jwt_no_exp [TIME, false]: || mint(RS256, &claims_with(|c| { c.as_object_mut().unwrap().remove("exp"); }), Sign::Issuer) => MalformedRequest, "missing field `exp`";

    jwt_not_three_parts [SHAPE, false]: || token().rsplit_once('.').unwrap().0.to_owned() => MalformedRequest, "is not a JWT";
    jwt_four_parts [SHAPE, false]: || format!("{}.AAAA", token()) => MalformedRequest, "is not a JWT";
    jwt_padded_base64 [SHAPE, false]: || { let t = token(); let p: Vec<&str> = t.split('.').collect(); format!("{}=.{}.{}", p[0], p[1], p[2]) } => MalformedRequest, "header is not unpadded base64url";
    jwt_header_not_json [SHAPE, false]: || format!("{}.{}.AAAA", b64(b"not json"), b64(claims().as_bytes())) => MalformedRequest, "header is not JSON";
    jwt_duplicate_claim [SHAPE, false]: || mint(RS256, &claims().replacen("\"iss\":", "\"iss\":\"https://attacker.example\",\"iss\":", 1), Sign::Issuer) => MalformedRequest, "duplicate field `iss`";
    jwt_oversized [SHAPE, false]: || mint(RS256, &claims_with(|c| c["pad"] = serde_json::json!("x".repeat(17_000))), Sign::Issuer) => MalformedRequest, "longer than 16384 bytes";
    jwt_not_utf8 [SHAPE, false]: || format!("{}\u{e9}", token()) => MalformedRequest, "base64url";
}

/// The corpus's tokens: an account rule, a rule for every session of a role, rules for some
/// sessions only (one of which the index's witness session matches), and an organization rule.
const TOKENS: &str = r#"
kind: token
version: v2
metadata: {name: iam-token}
spec: {roles: [Node], join_method: iam, allow: [{aws_account: "123456789012"}]}
---
kind: token
version: v2
metadata: {name: role-token}
spec: {roles: [Node], join_method: iam, allow: [{aws_arn: "arn:aws:sts::123456789012:assumed-role/deploy/*"}]}
---
kind: token
version: v2
metadata: {name: session-token}
spec: {roles: [Node], join_method: iam, allow: [{aws_arn: "arn:aws:sts::123456789012:assumed-role/deploy/i-*"}, {aws_arn: "arn:aws:sts::123456789012:assumed-role/deploy/*="}]}
---
kind: token
version: v2
metadata: {name: org-token}
spec: {roles: [Node], join_method: iam, allow: [{aws_organization_id: o-a1b2c3d4e5, aws_organizational_units: {include: [ou-ab12-11111111]}}]}
"#;

/// A loopback issuer serving its OpenID configuration and JWKS, counting requests.
async fn issuer_server() -> Loopback {
    let server = Loopback::start(|mut conn, request| async move {
        let head = String::from_utf8_lossy(&request).into_owned();
        let base = issuer();
        let body = if head.starts_with("GET /issuer/.well-known/openid-configuration ") {
            format!(r#"{{"issuer":"{base}","jwks_uri":"{base}/.well-known/jwks.json"}}"#)
        } else if head.starts_with("GET /issuer/.well-known/jwks.json ") {
            jwks()
        } else {
            String::from("{}")
        };
        let _ = conn.write_all(&reply_and_close(200, "application/json", body.as_bytes())).await;
        None
    })
    .await;
    let _ = ISSUER.set(format!("{}issuer", server.url()));
    assert_eq!(issuer(), format!("{}issuer", server.url()), "one issuer per test binary");
    server
}

/// A verifier that takes web identity tokens of ACCOUNT from the loopback issuer (and pins
/// another issuer for 222222222222), with a fresh key cache that refetches at once for an
/// unknown kid.
fn verifier(sts: &FakeSts) -> Verifier {
    let web = WebIdentityPolicy::new(AUDIENCE)
        .unwrap()
        .issuer(ACCOUNT, &issuer())
        .unwrap()
        .issuer("222222222222", "https://other.issuer.example")
        .unwrap();
    let jwks = JwksCache::builder().refresh_interval(Duration::ZERO).build().unwrap();
    let v = sts.builder().web_identity(web).jwks(Arc::new(jwks)).replay_guard(Arc::new(MemoryReplayGuard::default()));
    let v = v.build();
    v.replace_tokens(TokenSet::from_yaml(TOKENS).unwrap());
    v
}

/// One test, one issuer: the cases mint tokens for the issuer URL, known once it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_tokens_hostile_and_good() {
    let issuer_srv = issuer_server().await;
    let sts = FakeSts::start().await;
    hostile_tokens_are_refused_and_fetch_only_for_their_signature(&issuer_srv, &sts).await;
    good_tokens_join_and_rules_mean_what_they_mean_for_a_getcalleridentity_answer(&sts).await;
}

async fn hostile_tokens_are_refused_and_fetch_only_for_their_signature(issuer_srv: &Loopback, sts: &FakeSts) {
    let v = verifier(sts);
    let mut report = Report::default();
    for case in CASES {
        let jwt = (case.make)();
        let before = issuer_srv.requests();
        let proof = Proof::WebIdentityToken(jwt.as_bytes());
        let mut result = expect_refusal_of(
            sts,
            &v,
            ("iam-token", &challenge(), signed_at()),
            proof,
            (case.want, case.because),
            Where::Local,
        )
        .await;
        let fetched = issuer_srv.requests() - before;
        if !case.after_keys && fetched != 0 && result.is_ok() {
            result = Err(format!("refused before the signature, yet {fetched} key request(s) were made"));
        }
        report.record(case.name, case.source, result);
    }
    report.finish(45);
    assert_eq!(sts.requests(), 0, "a web identity join never calls STS");
}

/// The positive controls: RS256 and ES384 tokens of a user join; a role's token joins where a
/// rule admits every session of the role and not where it admits some; organization rules are
/// decided from the token's claims with no Organizations client; the same token for a second
/// challenge is refused, and a second time for its own is a replay. Nothing reaches STS.
async fn good_tokens_join_and_rules_mean_what_they_mean_for_a_getcalleridentity_answer(sts: &FakeSts) {
    let v = verifier(sts);
    let verify = |name: &'static str, c: String, jwt: String| {
        let v = v.clone();
        async move { v.verify(name, Challenge::Plain(&c), Proof::WebIdentityToken(jwt.as_bytes()), signed_at()).await }
    };
    let c = || iam_join::challenge::generate().unwrap();
    let with_aud = |ch: &str| {
        let ch = ch.to_owned();
        move |j: &mut serde_json::Value| j["aud"] = serde_json::json!([AUDIENCE, ch])
    };

    let c1 = c();
    let verdict =
        verify("iam-token", c1.clone(), mint(RS256, &claims_with(with_aud(&c1)), Sign::Issuer)).await.unwrap();
    assert_eq!(verdict.identity().arn().as_str(), USER);
    let c2 = c();
    assert!(verify("iam-token", c2.clone(), mint(ES384, &claims_with(with_aud(&c2)), Sign::Ec)).await.is_ok());

    // A role's token: the role ARN, matched as every session of the role.
    let role = |ch: &str| {
        let ch = ch.to_owned();
        claims_with(move |j| {
            j["aud"] = serde_json::json!([AUDIENCE, ch]);
            j["sub"] = serde_json::json!("arn:aws:iam::123456789012:role/teams/deploy");
            j["https://sts.amazonaws.com/"]["principal_id"] =
                serde_json::json!("arn:aws:iam::123456789012:role/teams/deploy");
        })
    };
    let c3 = c();
    let verdict = verify("role-token", c3.clone(), mint(RS256, &role(&c3), Sign::Issuer)).await.unwrap();
    assert_eq!(verdict.identity().arn().as_str(), "arn:aws:iam::123456789012:role/teams/deploy");
    assert!(verdict.identity().is_every_session_of_role());
    let c4 = c();
    let e = verify("session-token", c4.clone(), mint(RS256, &role(&c4), Sign::Issuer)).await.unwrap_err();
    assert_eq!(e.kind(), NotAllowed, "a rule for some sessions does not admit the role: {e}");

    // Organization rules, from the token's claims.
    let placed = |ch: &str, path: &'static str| {
        let ch = ch.to_owned();
        claims_with(move |j| {
            j["aud"] = serde_json::json!([AUDIENCE, ch]);
            j["https://sts.amazonaws.com/"]["org_id"] = serde_json::json!("o-a1b2c3d4e5");
            j["https://sts.amazonaws.com/"]["ou_path"] = serde_json::json!(path);
        })
    };
    let c5 = c();
    let member = placed(&c5, "o-a1b2c3d4e5/r-ab12/ou-ab12-11111111/ou-ab12-22222222/");
    assert!(verify("org-token", c5.clone(), mint(RS256, &member, Sign::Issuer)).await.is_ok());
    let c6 = c();
    let elsewhere = placed(&c6, "o-a1b2c3d4e5/r-ab12/ou-ab12-33333333/");
    assert_eq!(verify("org-token", c6, mint(RS256, &elsewhere, Sign::Issuer)).await.unwrap_err().kind(), NotAllowed);

    // Replayed: for a second challenge (its audience holds the first), then for its own again.
    let c7 = c();
    let jwt = mint(RS256, &claims_with(with_aud(&c7)), Sign::Issuer);
    assert!(verify("iam-token", c7.clone(), jwt.clone()).await.is_ok());
    assert_eq!(verify("iam-token", c(), jwt.clone()).await.unwrap_err().kind(), ChallengeMismatch);
    assert_eq!(verify("iam-token", c7, jwt).await.unwrap_err().kind(), ChallengeReplayed);
    assert_eq!(sts.requests(), 0);
}
