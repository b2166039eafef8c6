#!/usr/bin/env python3
"""The presigned URL and the web identity token through `iam-join serve`, made by independent
clients: the stock AWS CLI (`aws eks get-token`) and botocore (`get_web_identity_token`).

moto checks no query-string signature (with enforcement on it answers every presigned GET with a
500; without, it routes the GET elsewhere and answers 200 for any signature) and does not
implement GetWebIdentityToken, so `iam-join emulator` plays STS here. Its presigned-signature
check is our own code, so botocore recomputes every presigned URL's signature as the independent
checker, and PyJWT (with `cryptography`) verifies the emulator's tokens against its JWKS.

Usage: proofs_interop.py PATH_TO_IAM_JOIN_BINARY PATH_TO_AWS_CLI
Starts the emulator and the service on 127.0.0.1 and stops them. Needs no internet.
"""
import base64, datetime, json, os, re, subprocess, sys, tempfile, urllib.parse, urllib.request

import botocore.auth, botocore.awsrequest, botocore.credentials, boto3, jwt

from harness import Tally, free_port, http_json, start_emulator, stop, wait_for

IAM_JOIN, AWS = sys.argv[1], sys.argv[2]
AUDIENCE = "https://join.example.com"
tally = Tally()
check = tally.check


def http(url, body=None):
    return http_json(url, body)


def botocore_signature(url, header_value, key, secret, token=None):
    """botocore's own SigV4 query signature for a presigned GET (at the URL's X-Amz-Date), with
    the signed challenge header set: what STS would compute."""
    parts = urllib.parse.urlsplit(url)
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    q = dict(params)
    when = datetime.datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    region = q["X-Amz-Credential"].split("/")[2]
    base = [(k, v) for k, v in params if k in ("Action", "Version")]
    req = botocore.awsrequest.AWSRequest(method="GET", url=f"{parts.scheme}://{parts.netloc}/", params=dict(base),
                                         headers={"x-k8s-aws-id": header_value})
    creds = botocore.credentials.Credentials(key, secret, token)
    signer = botocore.auth.SigV4QueryAuth(creds, "sts", region, expires=int(q["X-Amz-Expires"]))
    real = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: when
    try:
        signer.add_auth(req)
    finally:
        botocore.auth.get_current_datetime = real
    signed = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.prepare().url).query))
    return signed["X-Amz-Signature"], q["X-Amz-Signature"]


def sts_attempts(server):
    _, text = http(f"{server}/metrics")
    return sum(float(m) for m in re.findall(r'^iam_join_sts_attempts_total\{[^}]*\} (\S+)$', text, re.M))


def main():
    emu_port, serve_port = free_port(), free_port()
    emu_url = f"http://127.0.0.1:{emu_port}"
    work = tempfile.mkdtemp(prefix="proofs-interop-")
    procs = []
    try:
        emu, exports = start_emulator(IAM_JOIN, emu_port, work)
        procs.append(emu)
        key, secret = exports["AWS_ACCESS_KEY_ID"], exports["AWS_SECRET_ACCESS_KEY"]
        issuer = f"{emu_url}/issuers/111111111111"

        tokens = os.path.join(work, "tokens.yaml")
        with open(tokens, "w") as f:
            f.write("kind: token\nversion: v2\nmetadata: {name: kube-agent}\n"
                    "spec: {roles: [Kube], join_method: iam, allow: [{aws_account: \"111111111111\"}]}\n---\n"
                    "kind: token\nversion: v2\nmetadata: {name: role-token}\n"
                    "spec: {roles: [Kube], join_method: iam, allow: [{aws_arn: \"arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/*\"}]}\n---\n"
                    "kind: token\nversion: v2\nmetadata: {name: session-token}\n"
                    "spec: {roles: [Kube], join_method: iam, allow: [{aws_arn: \"arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/i-*\"}]}\n")
        keys = os.path.join(work, "challenge-keys")
        subprocess.run([IAM_JOIN, "challenge-key", "--out", keys], check=True, capture_output=True)
        serve = subprocess.Popen([IAM_JOIN, "serve", "--listen", f"127.0.0.1:{serve_port}", "--tokens", tokens,
                                  "--challenge-key", keys, "--sts-endpoint", emu_url + "/",
                                  "--web-identity-issuer", f"111111111111={issuer}", "--audience", AUDIENCE],
                                 env={"PATH": os.environ["PATH"]}, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "serve.log"), "w"))
        procs.append(serve)
        wait_for(serve_port)
        server = f"http://127.0.0.1:{serve_port}"

        def challenge(token="kube-agent"):
            return json.loads(http(f"{server}/v1/challenge", {"token": token})[1])["challenge"]

        def join(body):
            status, text = http(f"{server}/v1/join", body)
            return status, json.loads(text)

        # 1. The stock AWS CLI as the agent: `aws eks get-token --cluster-name <challenge>`.
        agent_env = {"PATH": os.environ["PATH"], "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                     "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}

        def eks_token(c):
            out = subprocess.run([AWS, "eks", "get-token", "--cluster-name", c, "--region", "us-east-1", "--output", "json"],
                                 env=agent_env, capture_output=True, text=True, check=True)
            return json.loads(out.stdout)["status"]["token"]

        c = challenge()
        token = eks_token(c)
        url = base64.urlsafe_b64decode(token[len("k8s-aws-v1."):] + "=" * (-len(token) % 4)).decode()
        check("aws eks get-token: a k8s-aws-v1. token of a presigned sts.us-east-1 URL signing x-k8s-aws-id",
              token.startswith("k8s-aws-v1.") and url.startswith("https://sts.us-east-1.amazonaws.com/?") and "x-k8s-aws-id" in url, url[:120])
        mine, theirs = botocore_signature(url, c, key, secret)
        check("  botocore recomputes the same signature for the issued challenge", mine == theirs)
        before = sts_attempts(server)
        status, out = join({"token": "kube-agent", "challenge": c, "presigned": token})
        check("aws eks get-token --cluster-name <challenge> joins through iam-join serve",
              status == 200 and out.get("allowed") is True and out["identity"]["arn"] == "arn:aws:iam::111111111111:user/ci-deployer", f"{status} {out}")
        check("  the join replayed the URL to STS once", sts_attempts(server) - before == 1)

        c2 = challenge()
        status, out = join({"token": "kube-agent", "challenge": c2, "presigned": eks_token(c)})
        mine, theirs = botocore_signature(url, c2, key, secret)
        check("the same URL with another challenge: refused by STS as signature_rejected",
              status == 403 and out["error"]["kind"] == "signature_rejected", f"{status} {out}")
        check("  botocore agrees: the signature is not the one for the other challenge", mine != theirs)

        c3 = challenge()
        dup = urllib.parse.urlsplit(base64.urlsafe_b64decode(eks_token(c3)[11:] + "==").decode())
        dup_url = f"https://{dup.netloc}/?{dup.query}&action=GetCallerIdentity"
        before = sts_attempts(server)
        status, out = join({"token": "kube-agent", "challenge": c3, "presigned": dup_url})
        check("a URL with a duplicated query key (CVE-2022-2385): refused as malformed_request",
              status == 400 and out["error"]["kind"] == "malformed_request", f"{status} {out}")
        check("  before anything is sent", sts_attempts(server) == before)

        c4 = challenge()
        mine_url = subprocess.run([IAM_JOIN, "sign", "--challenge", c4, "--presigned", "--url", "--region", "eu-west-1"],
                                  env=agent_env, capture_output=True, text=True, check=True).stdout.strip()
        a, b = botocore_signature(mine_url, c4, key, secret)
        check("iam-join sign --presigned: botocore recomputes its signature", a == b, mine_url[:100])
        status, out = join({"token": "kube-agent", "challenge": c4, "presigned": mine_url})
        check("  and it joins", status == 200 and out.get("allowed") is True, f"{status} {out}")

        # 2. botocore's get_web_identity_token against the emulator, verified offline.
        sts = boto3.client("sts", endpoint_url=emu_url, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret)

        def web_token(c, alg="RS256", client=sts):
            return client.get_web_identity_token(Audience=[AUDIENCE, c], SigningAlgorithm=alg, DurationSeconds=300)["WebIdentityToken"]

        jwks = json.loads(http(f"{issuer}/.well-known/jwks.json")[1])
        for alg in ("RS256", "ES384"):
            c = challenge()
            t = web_token(c, alg)
            header = jwt.get_unverified_header(t)
            pub = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == header["kid"])).key
            claims = jwt.decode(t, pub, algorithms=[alg], audience=AUDIENCE, issuer=issuer)
            check(f"{alg}: PyJWT verifies the emulator's token against its JWKS, with AWS's claims",
                  claims["https://sts.amazonaws.com/"]["aws_account"] == "111111111111" and c in claims["aud"], str(claims)[:200])
            before = sts_attempts(server)
            status, out = join({"token": "kube-agent", "challenge": c, "web_identity_token": t})
            check(f"{alg}: botocore's get_web_identity_token joins through iam-join serve",
                  status == 200 and out.get("allowed") is True, f"{status} {out}")
            check(f"  {alg}: no STS request at join time", sts_attempts(server) == before)

        # The IRSA role's session asks for a token: it proves the role, matched as every session.
        with open(os.path.join(work, "web-identity-token")) as f:
            sa_token = f.read()
        role = boto3.client("sts", endpoint_url=emu_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        session = role.assume_role_with_web_identity(RoleArn="arn:aws:iam::111111111111:role/teleport-kube-agent",
                                                     RoleSessionName="pod-1", WebIdentityToken=sa_token)["Credentials"]
        role_sts = boto3.client("sts", endpoint_url=emu_url, region_name="us-east-1", aws_access_key_id=session["AccessKeyId"],
                                aws_secret_access_key=session["SecretAccessKey"], aws_session_token=session["SessionToken"])
        c = challenge("role-token")
        status, out = join({"token": "role-token", "challenge": c, "web_identity_token": web_token(c, client=role_sts)})
        check("an IRSA role's token joins a rule for every session (assumed-role/ROLE/*)",
              status == 200 and out["identity"]["arn"] == "arn:aws:iam::111111111111:role/teleport-kube-agent", f"{status} {out}")
        c = challenge("session-token")
        status, out = join({"token": "session-token", "challenge": c, "web_identity_token": web_token(c, client=role_sts)})
        check("  and is refused by a rule for some sessions (assumed-role/ROLE/i-*): not_allowed",
              status == 403 and out["error"]["kind"] == "not_allowed", f"{status} {out}")

        # 3. STS (and the issuer) stopped: a join still verifies from the cached keys.
        c = challenge()
        late = web_token(c)
        stop(emu)
        status, out = join({"token": "kube-agent", "challenge": c, "web_identity_token": late})
        check("with the emulator's STS stopped, a web identity join is allowed from the cached JWKS",
              status == 200 and out.get("allowed") is True, f"{status} {out}")
        c = challenge()
        status, out = join({"token": "kube-agent", "challenge": c, "presigned": "k8s-aws-v1." + base64.urlsafe_b64encode(mine_url.encode()).decode().rstrip("=")})
        check("  while a presigned join, which needs STS, is refused as retryable sts_unavailable",
              status == 503 and out["error"]["kind"] == "sts_unavailable" and out["error"]["retryable"] is True, f"{status} {out}")
    finally:
        stop(*procs)
    return tally.summary()


if __name__ == "__main__":
    sys.exit(main())
