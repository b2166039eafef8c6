//! The library's CPU per join for each proof format, side by side (everything but waiting for
//! STS or the issuer): the forwarded request and the presigned URL, local checks plus reading
//! STS's answer; the web identity token, local checks plus the signature with cached keys, RS256
//! and ES384. Next to them, the signature verification alone with ring, so the web identity
//! join's overhead over its signature is read from one run (`openssl speed ecdsap384` is the
//! reference `.ci/bench-medians` prints beside it).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use iam_join::agent::{Credentials, DEFAULT_PRESIGN_EXPIRES, JoinRequest, presign_join_url, sign_join_request};
use iam_join::{Challenge, HttpAnswer, IssuerKeys, IssuerUrl, Proof, TokenSet, Verifier, WebIdentityPolicy};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_2048_8192_SHA256,
    RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
};

const TOKENS: &str = "kind: token\nversion: v2\nmetadata:\n  name: iam-token\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: \"111111111111\"\n  - aws_arn: \"arn:aws:sts::333333333333:assumed-role/teleport-node-role/*\"\n  - aws_account: \"123456789012\"\n";
const ISSUER: &str = "https://abc123.tokens.sts.global.api.aws";
const AUDIENCE: &str = "https://join.example.com";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn creds() -> Credentials {
    Credentials::new(
        "ASIAIOSFODNN7EXAMPLE",
        "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
        Some("IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN".repeat(20)),
    )
}

fn cpu_per_proof(c: &mut Criterion) {
    let now = SystemTime::now();
    let challenge = iam_join::challenge::generate().unwrap();
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::from_der(include_bytes!("../src/emulator/rs256-test-key.der")).unwrap();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let rsa_pub: ring::rsa::PublicKeyComponents<Vec<u8>> = rsa.public().into();
    let (x, y) = ec.public_key().as_ref()[1..].split_at(48);
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"r","alg":"RS256","n":"{}","e":"{}"}},{{"kty":"EC","kid":"e","alg":"ES384","crv":"P-384","x":"{}","y":"{}"}}]}}"#,
        b64(&rsa_pub.n),
        b64(&rsa_pub.e),
        b64(x),
        b64(y)
    );
    let keys = IssuerKeys::from_jwks(&IssuerUrl::parse(ISSUER).unwrap(), jwks.as_bytes()).unwrap();
    let t = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let role = "arn:aws:iam::333333333333:role/teleport-node-role";
    let claims = format!(
        r#"{{"iss":"{ISSUER}","aud":["{AUDIENCE}","{challenge}"],"sub":"{role}","iat":{t},"exp":{},"jti":"j","https://sts.amazonaws.com/":{{"aws_account":"333333333333","principal_id":"{role}","source_region":"us-east-1"}}}}"#,
        t + 300
    );
    let jwt = |alg: &str, kid: &str| {
        let input = format!(
            "{}.{}",
            b64(format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#).as_bytes()),
            b64(claims.as_bytes())
        );
        let sig = if alg == "RS256" {
            let mut s = vec![0u8; rsa.public().modulus_len()];
            rsa.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut s).unwrap();
            s
        } else {
            ec.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        };
        (format!("{input}.{}", b64(&sig)), input, sig)
    };
    let (rs256, rs_input, rs_sig) = jwt("RS256", "r");
    let (es384, es_input, es_sig) = jwt("ES384", "e");

    let web = WebIdentityPolicy::new(AUDIENCE).unwrap().issuer("333333333333", ISSUER).unwrap();
    let v = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap()).web_identity(web).build();
    let forwarded =
        sign_join_request(&creds(), &JoinRequest::new(&challenge).region("us-east-1").accept_json(true), now).unwrap();
    let presigned =
        presign_join_url(&creds(), &JoinRequest::new(&challenge).region("us-east-1"), DEFAULT_PRESIGN_EXPIRES, now)
            .unwrap();
    let json = br#"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"333333333333","Arn":"arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-0123456789abcdef0","UserId":"AROAEXAMPLEROLEID0001:i-0123456789abcdef0"},"ResponseMetadata":{"RequestId":"4c0ac7f4-2a9f-4f8a-9c5f-5d3b2a1f0e9d"}}}"#;
    let xml = std::fs::read(format!("{}/tests/vectors/sts/ok_assumed_role.xml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let json = HttpAnswer::new(200, Some("application/json"), json.to_vec());
    let xml = HttpAnswer::new(200, Some("text/xml"), xml);

    let mut g = c.benchmark_group("proof_cpu");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.bench_function("forwarded", |b| {
        b.iter(|| {
            let p = v
                .start("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(black_box(&forwarded)), now)
                .unwrap();
            p.single_use_by_caller().conclude(black_box(&json)).unwrap()
        })
    });
    g.bench_function("presigned", |b| {
        b.iter(|| {
            let p = v
                .start(
                    "iam-token",
                    Challenge::Plain(&challenge),
                    Proof::Presigned(black_box(presigned.as_bytes())),
                    now,
                )
                .unwrap();
            p.single_use_by_caller().conclude(black_box(&xml)).unwrap()
        })
    });
    for (name, token) in [("web_identity_rs256", &rs256), ("web_identity_es384", &es384)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let needs = v
                    .start_web_identity("iam-token", Challenge::Plain(&challenge), black_box(token.as_bytes()), now)
                    .unwrap();
                needs.resume(black_box(&keys)).unwrap().single_use_by_caller().conclude_offline().unwrap()
            })
        });
    }
    // The signature alone, with ring, on the same bytes.
    let rsa_key = ring::signature::RsaPublicKeyComponents { n: &rsa_pub.n, e: &rsa_pub.e };
    g.bench_function("rs256_signature_only", |b| {
        b.iter(|| rsa_key.verify(&RSA_PKCS1_2048_8192_SHA256, black_box(rs_input.as_bytes()), &rs_sig).unwrap())
    });
    let ec_key = UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, ec.public_key().as_ref().to_vec());
    g.bench_function("es384_signature_only", |b| {
        b.iter(|| ec_key.verify(black_box(es_input.as_bytes()), &es_sig).unwrap())
    });
    g.finish();
}

criterion_group!(benches, cpu_per_proof);
criterion_main!(benches);
