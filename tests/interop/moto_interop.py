#!/usr/bin/env python3
"""Interop against implementations nobody on this project wrote.

botocore (not our code) signs the agent requests; moto's server plays STS and checks the
signatures (once its first INITIAL_NO_AUTH_ACTION_COUNT setup calls have passed). The test drives
the `iam-join` binary end to end and also replays `iam-join sign` output (Go Request.Write layout,
aws-sigv4 signature) to moto directly.

Usage: moto_interop.py PATH_TO_IAM_JOIN_BINARY
Starts moto on 127.0.0.1 itself and stops it at the end. Needs no internet.
"""
import json, os, socket, subprocess, sys, tempfile

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from harness import Tally, free_port, start_moto, stop

IAM_JOIN = sys.argv[1]
BODY = "Action=GetCallerIdentity&Version=2011-06-15"
# create_user x2, create_access_key x2, create_role, assume_role, create_policy, attach_user_policy
SETUP_CALLS = 8
tally = Tally()
check = tally.check


def botocore_request(creds, host, region, challenge, accept_json=False):
    """A request signed by botocore, written as raw HTTP/1.1 bytes (header order as botocore has them)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "x-teleport-challenge": challenge}
    if accept_json:
        headers["Accept"] = "application/json"
    req = AWSRequest(method="POST", url=f"https://{host}/", data=BODY, headers=headers)
    SigV4Auth(creds, "sts", region).add_auth(req)
    lines = ["POST / HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    lines += [f"Content-Length: {len(BODY)}", "", BODY]
    return "\r\n".join(lines).encode()


def verify(tokens, challenge, raw, port, org_creds=None):
    env = dict(os.environ)
    if org_creds:  # the auth server's own credentials, for Organizations lookups
        env.update(AWS_ACCESS_KEY_ID=org_creds[0], AWS_SECRET_ACCESS_KEY=org_creds[1])
        env.pop("AWS_SESSION_TOKEN", None)
    out = subprocess.run(
        [IAM_JOIN, "verify", "--token", tokens, "--challenge", challenge, "--request", "-",
         "--sts-endpoint", f"http://127.0.0.1:{port}/", "--organizations-endpoint", f"http://127.0.0.1:{port}/",
         "--timeout", "5"],
        input=raw, capture_output=True, env=env)
    try:
        answer = json.loads(out.stdout)
        # What the client is told is on stdout; the operator's detail on stderr.
        answer["operator_detail"] = out.stderr.decode(errors="replace")
        return out.returncode, answer
    except json.JSONDecodeError:
        return out.returncode, {"stdout": out.stdout.decode(errors="replace"), "stderr": out.stderr.decode(errors="replace")}


def replay_raw(raw, port):
    """Send bytes exactly as given to moto (the signed Host goes unchanged to the loopback port)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def main():
    port = free_port()
    moto = start_moto(port, SETUP_CALLS)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
        iam, sts = boto3.client("iam", **kw), boto3.client("sts", **kw)
        iam.create_user(UserName="ci-deployer")
        key = iam.create_access_key(UserName="ci-deployer")["AccessKey"]
        iam.create_user(UserName="stranger")
        stranger_key = iam.create_access_key(UserName="stranger")["AccessKey"]
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
        role = iam.create_role(RoleName="teleport-node-role", AssumeRolePolicyDocument=trust)["Role"]
        temp = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="i-0123456789abcdef0")["Credentials"]
        admin = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        policy = iam.create_policy(PolicyName="everything", PolicyDocument=admin)["Policy"]["Arn"]
        iam.attach_user_policy(UserName="ci-deployer", PolicyArn=policy)
        account = role["Arn"].split(":")[4]
        user = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
        session = Credentials(temp["AccessKeyId"], temp["SecretAccessKey"], temp["SessionToken"])
        stranger = Credentials(stranger_key["AccessKeyId"], stranger_key["SecretAccessKey"])

        tokens = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        tokens.write(f"""kind: token
version: v2
metadata:
  name: interop
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_arn: "arn:aws:iam::{account}:user/ci-deployer"
  - aws_account: "{account}"
    aws_arn: "arn:aws:sts::{account}:assumed-role/teleport-node-role/*"
""")
        tokens.close()

        def challenge():
            return subprocess.run([IAM_JOIN, "challenge"], capture_output=True, text=True, check=True).stdout.strip()

        def expect(name, code_kind, raw, c):
            code, out = verify(tokens.name, c, raw, port)
            if code_kind == "allowed":
                check(name, code == 0 and out.get("allowed") is True, f"exit {code}: {out}")
                return out
            check(name, code == 1 and out.get("error", {}).get("kind") == code_kind, f"exit {code}: {out}")
            return out

        c = challenge()
        out = expect("botocore user, global endpoint: allowed by the user rule", "allowed",
                     botocore_request(user, "sts.amazonaws.com", "us-east-1", c), c)
        check("  matched rule 0", out.get("matched_rule") == 0, out)
        c = challenge()
        out = expect("botocore assumed role, regional endpoint: allowed by the role rule", "allowed",
                     botocore_request(session, "sts.us-west-2.amazonaws.com", "us-west-2", c), c)
        check("  matched rule 1", out.get("matched_rule") == 1, out)
        c = challenge()
        expect("botocore user, regional endpoint eu-west-1: allowed", "allowed",
               botocore_request(user, "sts.eu-west-1.amazonaws.com", "eu-west-1", c), c)
        c = challenge()
        expect("botocore assumed role, global endpoint, Accept JSON signed: allowed", "allowed",
               botocore_request(session, "sts.amazonaws.com", "us-east-1", c, accept_json=True), c)
        c = challenge()
        expect("wrong secret: signature_rejected", "signature_rejected",
               botocore_request(Credentials(key["AccessKeyId"], "not-the-secret"), "sts.amazonaws.com", "us-east-1", c), c)
        old, new = challenge(), challenge()
        raw = botocore_request(user, "sts.amazonaws.com", "us-east-1", old).replace(old.encode(), new.encode())
        expect("challenge changed after signing: signature_rejected by moto", "signature_rejected", raw, new)
        c = challenge()
        expect("challenge other than issued: challenge_mismatch (local)", "challenge_mismatch",
               botocore_request(user, "sts.amazonaws.com", "us-east-1", challenge()), c)
        c = challenge()
        expect("unknown access key: signature_rejected", "signature_rejected",
               botocore_request(Credentials("AKIAUNKNOWNKEY123456", "x"), "sts.amazonaws.com", "us-east-1", c), c)
        c = challenge()
        out = expect("identity matching no rule: not_allowed", "not_allowed",
                     botocore_request(stranger, "sts.amazonaws.com", "us-east-1", c), c)
        check("  identity kept for audit", out.get("identity", {}) and out["identity"].get("arn", "").endswith(":user/stranger"), out)

        # Go Request.Write layout, signed by aws-sigv4 through `iam-join sign`.
        for region, host in [(None, "sts.amazonaws.com"), ("us-west-2", "sts.us-west-2.amazonaws.com")]:
            c = challenge()
            args = [IAM_JOIN, "sign", "--challenge", c, "--accept-json"] + (["--region", region] if region else [])
            # The chain's first source, and no region from anywhere else (not even IMDS).
            sign_env = {k: v for k, v in os.environ.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")}
            sign_env.update(AWS_ACCESS_KEY_ID=temp["AccessKeyId"], AWS_SECRET_ACCESS_KEY=temp["SecretAccessKey"],
                            AWS_SESSION_TOKEN=temp["SessionToken"], AWS_EC2_METADATA_DISABLED="true")
            raw = subprocess.run(args, capture_output=True, env=sign_env, check=True).stdout
            answer = replay_raw(raw, port)
            check(f"iam-join sign ({host}) replayed raw to moto: 200 with the session identity",
                  answer.startswith("HTTP/1.1 200") and "assumed-role/teleport-node-role/i-0123456789abcdef0" in answer,
                  answer[:300])
            expect(f"iam-join sign ({host}) | iam-join verify: allowed", "allowed", raw, c)
        os.unlink(tokens.name)

        # Organization rules: moto's Organizations emulation answers the auth server's lookups
        # (signed with its own credentials, here ci-deployer's), so joins are allowed or denied
        # by where the account sits.
        server_creds = (key["AccessKeyId"], key["SecretAccessKey"])

        def org_join(name, rule_yaml, want, creds=None, says=None):
            f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            f.write("kind: token\nversion: v2\nmetadata:\n  name: org\nspec:\n  roles: [Node]\n"
                    "  join_method: iam\n  allow:\n" + rule_yaml)
            f.close()
            c = challenge()
            code, out = verify(f.name, c, botocore_request(user, "sts.amazonaws.com", "us-east-1", c), port, creds or server_creds)
            os.unlink(f.name)
            if want == "allowed":
                check(name, code == 0 and out.get("allowed") is True, f"exit {code}: {out}")
            else:
                ok = code == 1 and out.get("error", {}).get("kind") == want
                check(name, ok and (says is None or says in out["operator_detail"]), f"exit {code}: {out}")

        org_join("organization rule, account in no organization yet: not_allowed",
                 '  - aws_organization_id: o-aaaaaaaaaa\n    aws_organizational_units: {include: ["*"]}\n', "not_allowed")
        orgs = boto3.client("organizations", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                            aws_access_key_id=server_creds[0], aws_secret_access_key=server_creds[1])
        org_id = orgs.create_organization(FeatureSet="ALL")["Organization"]["Id"]
        root = orgs.list_roots()["Roots"][0]["Id"]
        prod = orgs.create_organizational_unit(ParentId=root, Name="prod")["OrganizationalUnit"]["Id"]
        web = orgs.create_organizational_unit(ParentId=prod, Name="web")["OrganizationalUnit"]["Id"]
        dev = orgs.create_organizational_unit(ParentId=root, Name="dev")["OrganizationalUnit"]["Id"]
        orgs.move_account(AccountId=account, SourceParentId=root, DestinationParentId=web)
        org_join("organization rule, include [\"*\"]: allowed",
                 f'  - aws_organization_id: {org_id}\n    aws_organizational_units: {{include: ["*"]}}\n', "allowed")
        org_join("organization id only: allowed", f"  - aws_organization_id: {org_id}\n", "allowed")
        org_join("include the parent OU of a nested OU: allowed",
                 f"  - aws_organization_id: {org_id}\n    aws_organizational_units: {{include: [{prod}]}}\n", "allowed")
        org_join("include the parent OU but exclude the nested one: not_allowed",
                 f"  - aws_organization_id: {org_id}\n    aws_organizational_units: {{include: [{prod}], exclude: [{web}]}}\n",
                 "not_allowed")
        org_join("include another OU: not_allowed",
                 f"  - aws_organization_id: {org_id}\n    aws_organizational_units: {{include: [{dev}]}}\n", "not_allowed")
        org_join("another organization's id: not_allowed",
                 "  - aws_organization_id: o-zzzzzzzzzz\n    aws_organizational_units: {include: [\"*\"]}\n", "not_allowed")
        org_join("auth server credentials without Organizations permissions: lookup_failed naming it",
                 f'  - aws_organization_id: {org_id}\n    aws_organizational_units: {{include: ["*"]}}\n', "lookup_failed",
                 creds=(stranger_key["AccessKeyId"], stranger_key["SecretAccessKey"]), says="organizations:DescribeAccount")
        org_join("organization AND account field: other account, not_allowed (no lookup needed)",
                 f"  - aws_organization_id: {org_id}\n    aws_account: \"111122223333\"\n", "not_allowed")
    finally:
        stop(moto)
    return tally.summary()


if __name__ == "__main__":
    sys.exit(main())
