#!/usr/bin/env python3
"""Credentials after a join, checked by verifiers nobody on this project wrote: `iam-join serve`
with a CA made by `openssl req` and JWT keys made by `openssl genpkey`, an agent joining with
`iam-join join --identity-dir`, then `openssl verify`, Python's `cryptography` and PyJWT's
`PyJWKClient` (through the service's OpenID configuration) on what it was given; key rotation;
the stored identity reused with the service stopped, and replaced when expired or tampered with;
refusals without credentials.

Usage: credentials_interop.py PATH_TO_IAM_JOIN_BINARY
Starts the emulator and the service on 127.0.0.1 and stops them. Needs no internet.
"""
import json, os, re, subprocess, sys, tempfile, time, urllib.request

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import Tally, free_port, http_json, start_emulator, stop, wait_for

IAM_JOIN = sys.argv[1]
AUDIENCE = "https://apps.example.com"
tally = Tally()
check = tally.check


def http(url, body=None):
    return http_json(url, body)


def main():
    emu_port = free_port()
    work = tempfile.mkdtemp(prefix="credentials-interop-")
    procs = []
    try:
        emu, exports = start_emulator(IAM_JOIN, emu_port, work)
        procs.append(emu)
        emu_url = f"http://127.0.0.1:{emu_port}/"

        # The CA and the JWT keys, made by OpenSSL.
        ca_key, ca_pem = os.path.join(work, "ca.key"), os.path.join(work, "ca.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", ca_key, "-out", ca_pem, "-subj", "/CN=interop CA", "-days", "2",
                        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                       check=True, capture_output=True)
        jwt_old, jwt_new = os.path.join(work, "jwt-old.pem"), os.path.join(work, "jwt-new.pem")
        for path in (jwt_old, jwt_new):
            subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path],
                           check=True, capture_output=True)
        for path in (ca_key, jwt_old, jwt_new):
            os.chmod(path, 0o600)
        tokens = os.path.join(work, "tokens.yaml")
        with open(tokens, "w") as f:
            f.write("kind: token\nversion: v2\nmetadata: {name: kube-agent}\n"
                    "spec: {roles: [Kube, App], join_method: iam, allow: [{aws_account: \"111111111111\"}]}\n")

        serve_port = free_port()
        server = f"http://127.0.0.1:{serve_port}"

        def serve(*keys, ttl=600):
            args = [IAM_JOIN, "serve", "--listen", f"127.0.0.1:{serve_port}", "--tokens", tokens, "--sts-endpoint", emu_url,
                    "--ca-cert", ca_pem, "--ca-key", ca_key, "--trust-domain", "example.org",
                    "--issuer", server, "--jwt-audience", AUDIENCE, "--credential-ttl", str(ttl)]
            for k in keys:
                args += ["--jwt-signing-key", k]
            p = subprocess.Popen(args, env={"PATH": os.environ["PATH"]}, stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(work, "serve.log"), "a"))
            procs.append(p)
            wait_for(serve_port)
            return p

        agent_env = {"PATH": os.environ["PATH"], "AWS_ACCESS_KEY_ID": exports["AWS_ACCESS_KEY_ID"],
                     "AWS_SECRET_ACCESS_KEY": exports["AWS_SECRET_ACCESS_KEY"], "AWS_REGION": "us-east-1",
                     "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}
        ident = os.path.join(work, "identity")

        def join(*extra, env=None, deadline="10"):
            t = time.monotonic()
            out = subprocess.run([IAM_JOIN, "join", "--server", server, "--token", "kube-agent", "--deadline", deadline, *extra],
                                 env=env or agent_env, capture_output=True, text=True)
            return out.returncode, out.stdout, out.stderr, time.monotonic() - t

        svc = serve(jwt_old)
        code, out, err, _ = join("--identity-dir", ident)
        check("iam-join join --identity-dir: allowed, identity stored", code == 0 and os.path.exists(os.path.join(ident, "cert.pem")), f"{code} {out} {err}")
        files = sorted(os.listdir(ident))
        check("  key.pem, cert.pem, ca.pem, token.jwt, identity.json (nothing left half-written)",
              files == ["ca.pem", "cert.pem", "identity.json", "key.pem", "token.jwt"], str(files))
        check("  key.pem is 0600", os.stat(os.path.join(ident, "key.pem")).st_mode & 0o777 == 0o600)

        # openssl verify against GET /v1/ca.
        status, bundle = http(f"{server}/v1/ca")
        ca_file = os.path.join(work, "v1-ca.pem")
        with open(ca_file, "w") as f:
            f.write(bundle)
        v = subprocess.run(["openssl", "verify", "-CAfile", ca_file, "-purpose", "sslclient", os.path.join(ident, "cert.pem")],
                           capture_output=True, text=True)
        check("openssl verify -CAfile (GET /v1/ca) -purpose sslclient: OK", status == 200 and v.returncode == 0 and ": OK" in v.stdout, v.stdout + v.stderr)

        # cryptography: the chain, the validity, the extensions, the SAN, the key.
        cert = x509.load_pem_x509_certificate(open(os.path.join(ident, "cert.pem"), "rb").read())
        ca = x509.load_pem_x509_certificate(bundle.encode())
        try:
            cert.verify_directly_issued_by(ca)
            chained = True
        except Exception as e:  # noqa: BLE001
            chained = repr(e)
        check("cryptography: the certificate is directly issued by the CA", chained is True, str(chained))
        life = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
        check("  validity: notBefore 60 s back, notAfter 600 s after issuance", 655 <= life <= 665, str(life))
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        check("  CA:false, digitalSignature, clientAuth", bc.ca is False and ku.digital_signature and list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH])
        check("  a serial of at least 64 bits", cert.serial_number.bit_length() >= 64, str(cert.serial_number))
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
        want = ["spiffe://example.org/aws/111111111111/user/ci-deployer", "arn:aws:iam::111111111111:user/ci-deployer",
                "urn:iam-join:account:111111111111", "urn:iam-join:token:kube-agent", "urn:iam-join:role:Kube", "urn:iam-join:role:App"]
        check("  the SAN: SPIFFE-style id, the ARN, the account, the token and the roles", uris == want, str(uris))
        key = serialization.load_pem_private_key(open(os.path.join(ident, "key.pem"), "rb").read(), None)
        same = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        check("  the certificate is for the key made on the agent", same)

        # PyJWT through the OpenID configuration.
        status, doc = http(f"{server}/.well-known/openid-configuration")
        doc = json.loads(doc)
        token = open(os.path.join(ident, "token.jwt")).read()

        def verify(t):
            signing = jwt.PyJWKClient(doc["jwks_uri"]).get_signing_key_from_jwt(t)
            return jwt.decode(t, signing.key, algorithms=doc["id_token_signing_alg_values_supported"], audience=AUDIENCE, issuer=doc["issuer"])

        claims = verify(token)
        check("PyJWT's PyJWKClient verifies the JWT through /.well-known/openid-configuration",
              doc["issuer"] == server and claims["sub"] == "arn:aws:iam::111111111111:user/ci-deployer", str(claims))
        check("  with the account, the token, the roles and the rule",
              claims["aws_account"] == "111111111111" and claims["token"] == "kube-agent" and claims["roles"] == ["Kube", "App"]
              and claims["matched_rule"] == 0 and claims["exp"] - claims["iat"] == 600, str(claims))

        # Rotation: the new key first, the old one still published.
        stop(svc)
        svc = serve(jwt_new, jwt_old)
        status, answer = http(f"{server}/v1/challenge", {"token": "kube-agent"})
        check("after rotation, a token the old key signed still verifies", verify(token)["sub"] == claims["sub"])
        code, out, err, _ = join("--identity-dir", ident, "--force")
        fresh = open(os.path.join(ident, "token.jwt")).read()
        check("  and a new token is signed by the new key",
              code == 0 and jwt.get_unverified_header(fresh)["kid"] != jwt.get_unverified_header(token)["kid"] and verify(fresh)["token"] == "kube-agent", err)

        # Refusals carry no credentials: a stranger (not_allowed), a replay, a bad public_key.
        stranger = dict(agent_env, AWS_ACCESS_KEY_ID="AKIAEMULATEDOTHER001", AWS_SECRET_ACCESS_KEY="emulated/other/secret/key/00000000000000")
        code, out, err, _ = join(env=stranger)
        check("a refused join (not_allowed) carries no credentials", code == 1 and '"not_allowed"' in out and "credentials" not in out, out)
        status, issued = http(f"{server}/v1/challenge", {"token": "kube-agent"})
        c = json.loads(issued)["challenge"]
        raw = subprocess.run([IAM_JOIN, "sign", "--challenge", c], env=agent_env, capture_output=True, check=True).stdout
        import base64
        body = {"token": "kube-agent", "challenge": c, "request": base64.b64encode(raw).decode()}
        first = http(f"{server}/v1/join", body)
        second = http(f"{server}/v1/join", body)
        check("  nor does a replay (challenge_replayed), while the first join without a key gets a JWT only",
              '"challenge_replayed"' in second[1] and "credentials" not in second[1] and '"jwt"' in first[1] and '"certificate"' not in first[1], second[1][:200])
        status, issued = http(f"{server}/v1/challenge", {"token": "kube-agent"})
        c = json.loads(issued)["challenge"]
        raw = subprocess.run([IAM_JOIN, "sign", "--challenge", c], env=agent_env, capture_output=True, check=True).stdout
        bad = http(f"{server}/v1/join", {"token": "kube-agent", "challenge": c, "request": base64.b64encode(raw).decode(),
                                          "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"})
        check("  nor does a bad public_key (400 malformed_request)", bad[0] == 400 and '"malformed_request"' in bad[1] and "credentials" not in bad[1], bad[1])
        _, metrics = http(f"{server}/metrics")
        check("metrics count the credentials issued, by type",
              re.search(r'iam_join_credentials_issued_total\{type="certificate"\} 1', metrics) and
              re.search(r'iam_join_credentials_issued_total\{type="jwt"\} 2', metrics), "\n".join(l for l in metrics.splitlines() if "credentials" in l))

        # Restart: the stored identity is reused with the service (and STS) stopped.
        stop(svc, emu)
        code, out, err, took = join("--identity-dir", ident)
        check("with the service and STS stopped, join --identity-dir exits 0 with the stored identity",
              code == 0 and json.loads(out)["identity"]["arn"] == "arn:aws:iam::111111111111:user/ci-deployer", f"{code} {out} {err}")
        check("  at once", took < 2, str(took))
        # Tampered: a changed certificate is not used, and with the service down the join fails.
        cert_path = os.path.join(ident, "cert.pem")
        pem = open(cert_path).read()
        lines = pem.splitlines()
        lines[5] = lines[5][:10] + ("A" if lines[5][10] != "A" else "B") + lines[5][11:]
        open(cert_path, "w").write("\n".join(lines) + "\n")
        code, out, err, _ = join("--identity-dir", ident, deadline="2")
        check("a tampered certificate is never presented: join tries again and, with the service down, exits non-zero",
              code != 0 and "no usable identity" in err, f"{code} {err[-300:]}")
        open(cert_path, "w").write(pem)
        code, out, err, _ = join("--identity-dir", ident)
        check("  restored, it is used again", code == 0, err)
    finally:
        stop(*procs)
    return tally.summary()


if __name__ == "__main__":
    sys.exit(main())
