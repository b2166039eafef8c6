//! Web identity token checks, by hand with no network: never panics; a token that passes every
//! check (the seed, signed by PyJWT with the emulator's key, and what keeps its signature) names
//! the pinned issuer's key, an identity in the account it claims, and the issued challenge.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use iam_join::{Challenge, IssuerKeys, TokenSet, Verifier, WebIdentityPolicy};
use libfuzzer_sys::fuzz_target;

const CHALLENGE: &str = include_str!("../../tests/vectors/requests/CHALLENGE");
const JWKS: &[u8] = include_bytes!("../../tests/vectors/jwt/issuer.jwks.json");
const ISSUER: &str = "https://abc123.tokens.sts.global.api.aws";

fn verifier() -> &'static (Verifier, IssuerKeys) {
    static V: OnceLock<(Verifier, IssuerKeys)> = OnceLock::new();
    V.get_or_init(|| {
        let tokens = TokenSet::from_yaml(
            "kind: token\nversion: v2\nmetadata: {name: t}\nspec: {roles: [Node], join_method: iam, allow: [{aws_account: \"123456789012\"}]}\n",
        )
        .unwrap();
        let web = WebIdentityPolicy::new("https://join.example.com").unwrap().issuer("123456789012", ISSUER).unwrap();
        let keys = IssuerKeys::from_jwks(&iam_join::IssuerUrl::parse(ISSUER).unwrap(), JWKS).unwrap();
        (Verifier::builder(tokens).web_identity(web).build(), keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_795_878_000 + 10);
    let (v, keys) = verifier();
    let Ok(needs) = v.start_web_identity("t", Challenge::Plain(CHALLENGE), data, now) else { return };
    assert_eq!(needs.issuer().as_str(), ISSUER);
    if let Ok(pending) = needs.resume(keys) {
        let claimed = pending.single_use_by_caller();
        assert!(claimed.replay().is_none());
        if let Ok(verdict) = claimed.conclude_offline().and_then(|c| c.into_verdict()) {
            assert_eq!(verdict.identity().account().as_str(), "123456789012");
            assert_eq!(verdict.identity().arn().account().as_str(), "123456789012");
        }
    }
});
