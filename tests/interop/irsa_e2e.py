#!/usr/bin/env python3
"""The seed's scenario end to end on one machine: an agent in an EKS pod with IRSA joins through
`iam-join serve`, with moto playing STS and IAM.

The pod gets only what EKS's pod identity webhook gives it: AWS_ROLE_ARN,
AWS_WEB_IDENTITY_TOKEN_FILE, AWS_REGION, plus AWS_ENDPOINT_URL_STS (the SDKs' standard variable)
pointing at moto. No static key is in its environment. `iam-join join` gets credentials through
aws-config's default chain (web identity -> sts:AssumeRoleWithWebIdentity, which moto answers
without validating the JWT), asks the service for a challenge, signs GetCallerIdentity for the
region's STS endpoint, and submits; the service replays it to moto, which checks the signature.

moto checks signatures once its INITIAL_NO_AUTH_ACTION_COUNT unauthenticated calls are used up,
and answers the (unsigned, by design) AssumeRoleWithWebIdentity with a 500 once it enforces. So
before each agent run the script opens exactly one unauthenticated call
(POST /moto-api/reset-auth "1"): the agent's AssumeRoleWithWebIdentity. Every GetCallerIdentity
after it, the ones the service replays, is checked.

Usage: irsa_e2e.py PATH_TO_IAM_JOIN_BINARY (built with --features serve)
Starts moto and the service on 127.0.0.1 and stops them. Needs no internet.
"""
import base64, json, os, subprocess, sys, tempfile, time, urllib.request

import boto3

from harness import Tally, free_port, start_moto, stop, wait_for

IAM_JOIN = sys.argv[1]
tally = Tally()
check = tally.check


def http(url, body=None):
    # application/json, so that moto's Flask keeps the raw body (a form body would be parsed away).
    req = urllib.request.Request(url, data=None if body is None else body.encode(), method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    moto_port, serve_port, down_port = free_port(), free_port(), free_port()
    moto_url = f"http://127.0.0.1:{moto_port}"
    moto = start_moto(moto_port, 2)  # create_role x2, then every call is checked
    services = []
    work = tempfile.mkdtemp(prefix="irsa-e2e-")
    try:
        # Setup: the IRSA role and the node's instance role, in account A (moto's default account).
        iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="test",
                           aws_secret_access_key="test")
        oidc = "oidc.eks.us-west-2.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Federated": f"arn:aws:iam::123456789012:oidc-provider/{oidc}"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{oidc}:sub": "system:serviceaccount:teleport:teleport-kube-agent"}}}]})
        agent_role = iam.create_role(RoleName="teleport-kube-agent", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        node_role = iam.create_role(RoleName="eks-node-role", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        account = agent_role.split(":")[4]

        tokens = os.path.join(work, "tokens.yaml")
        with open(tokens, "w") as f:
            f.write(f"""kind: token
version: v2
metadata:
  name: kube-agent
spec:
  roles: [Kube]
  join_method: iam
  allow:
  - aws_account: "{account}"
    aws_arn: "arn:aws:sts::{account}:assumed-role/teleport-kube-agent/*"
""")
        # The projected service-account token (moto does not validate the JWT).
        jwt = os.path.join(work, "token")
        with open(jwt, "w") as f:
            f.write("eyJhbGciOiJSUzI1NiIsImtpZCI6ImV4YW1wbGUifQ."
                    "eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVsZXBvcnQ6dGVsZXBvcnQta3ViZS1hZ2VudCJ9.c2lnbmF0dXJl")

        def serve(port, sts_endpoint, timeout):
            log = open(os.path.join(work, f"serve-{port}.log"), "w")
            p = subprocess.Popen([IAM_JOIN, "serve", "--listen", f"127.0.0.1:{port}", "--tokens", tokens,
                                  "--sts-endpoint", sts_endpoint, "--timeout", str(timeout)],
                                 env={"PATH": os.environ["PATH"]}, stdout=subprocess.DEVNULL, stderr=log)
            services.append(p)
            wait_for(port)

        serve(serve_port, moto_url + "/", 5)
        server = f"http://127.0.0.1:{serve_port}"

        def pod(role_arn):
            """Exactly the environment an EKS pod with IRSA gets, plus AWS_ENDPOINT_URL_STS and PATH."""
            return {"PATH": os.environ["PATH"], "AWS_ROLE_ARN": role_arn, "AWS_WEB_IDENTITY_TOKEN_FILE": jwt,
                    "AWS_REGION": "us-west-2", "AWS_ENDPOINT_URL_STS": moto_url, "HOME": work}

        def open_one_unauthenticated_call():
            status, body = http(f"{moto_url}/moto-api/reset-auth", "1")
            assert status == 200, body

        def join(role_arn, server_url=server, deadline="20"):
            open_one_unauthenticated_call()
            out = subprocess.run([IAM_JOIN, "join", "--server", server_url, "--token", "kube-agent", "--deadline", deadline],
                                 env=pod(role_arn), capture_output=True, text=True, timeout=120)
            try:
                return out.returncode, json.loads(out.stdout), out.stderr
            except json.JSONDecodeError:
                return out.returncode, {"stdout": out.stdout}, out.stderr

        def sign(role_arn, challenge):
            open_one_unauthenticated_call()
            return subprocess.run([IAM_JOIN, "sign", "--challenge", challenge, "--accept-json"], env=pod(role_arn),
                                  capture_output=True, check=True, timeout=60).stdout

        check("the pod's environment holds no static key",
              not any(k in pod(agent_role) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")))

        # 1. The IRSA role joins: allowed, with the session identity.
        code, out, err = join(agent_role)
        identity = out.get("identity") or {}
        check("IRSA pod, iam-join join: allowed", code == 0 and out.get("allowed") is True, f"exit {code}: {out} {err}")
        check("  as the IRSA role's session in account A",
              identity.get("arn", "").startswith(f"arn:aws:sts::{account}:assumed-role/teleport-kube-agent/")
              and identity.get("account") == account and out.get("roles") == ["Kube"], out)

        # 2. Signed with session credentials from web identity, never static keys; sign | verify allowed.
        challenge = subprocess.run([IAM_JOIN, "challenge"], capture_output=True, text=True, check=True).stdout.strip()
        raw = sign(agent_role, challenge)
        head = raw.split(b"\r\n\r\n")[0].decode()
        check("iam-join sign with IRSA only: temporary credentials (ASIA key id, X-Amz-Security-Token signed)",
              "Credential=ASIA" in head and "X-Amz-Security-Token: " in head and "x-amz-security-token" in head, head[:400])
        check("  signed for the pod's region (regional STS endpoint)", "Host: sts.us-west-2.amazonaws.com" in head, head[:200])
        verify = subprocess.run([IAM_JOIN, "verify", "--token", tokens, "--challenge", challenge, "--request", "-",
                                 "--sts-endpoint", moto_url + "/", "--timeout", "5"],
                                input=raw, capture_output=True, env={"PATH": os.environ["PATH"]})
        verdict = json.loads(verify.stdout or b"{}")
        check("iam-join sign (IRSA) | iam-join verify against moto: allowed",
              verify.returncode == 0 and verdict.get("allowed") is True, f"exit {verify.returncode}: {verdict} {verify.stderr[-400:]}")

        # 3. The node's role (same account, another role): not_allowed, with the identity.
        code, out, err = join(node_role)
        check("pod using the node's role: refused as not_allowed",
              code == 1 and out.get("error", {}).get("kind") == "not_allowed", f"exit {code}: {out} {err}")
        check("  the identity is in the error",
              (out.get("identity") or {}).get("arn", "").startswith(f"arn:aws:sts::{account}:assumed-role/eks-node-role/"), out)

        # 4. A web-identity role in another account: not_allowed.
        other = "arn:aws:iam::222222222222:role/teleport-kube-agent"
        code, out, err = join(other)
        check("pod whose role is in another account: refused as not_allowed",
              code == 1 and out.get("error", {}).get("kind") == "not_allowed"
              and (out.get("identity") or {}).get("account") == "222222222222", f"exit {code}: {out} {err}")

        # 5. Retryable refusals are retried with backoff within the deadline, then reported.
        serve(down_port, "http://127.0.0.1:9/", 1)
        started = time.monotonic()
        code, out, err = join(agent_role, server_url=f"http://127.0.0.1:{down_port}", deadline="4")
        check("STS unreachable behind the service: retried, then refused as sts_unavailable (exit 1)",
              code == 1 and out.get("error", {}).get("kind") == "sts_unavailable" and err.count("retrying in") >= 2
              and time.monotonic() - started < 15, f"exit {code}: {out} {err}")

        # 6. Revoked temporary credentials: signed with the IRSA session, then moto forgets every
        #    credential (its state reset) before the service replays: signature_rejected.
        status, issued = http(f"{server}/v1/challenge", json.dumps({"token": "kube-agent"}))
        challenge = json.loads(issued)["challenge"]
        raw = sign(agent_role, challenge)
        status, _ = http(f"{moto_url}/moto-api/reset", "")
        status, answer = http(f"{server}/v1/join", json.dumps(
            {"token": "kube-agent", "challenge": challenge, "request": base64.b64encode(raw).decode()}))
        answer = json.loads(answer)
        check("revoked temporary credentials: refused as signature_rejected (403)",
              status == 403 and answer.get("error", {}).get("kind") == "signature_rejected", f"{status}: {answer}")
    finally:
        stop(*services, moto)
    return tally.summary()


if __name__ == "__main__":
    sys.exit(main())
