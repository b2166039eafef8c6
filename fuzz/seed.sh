#!/usr/bin/env bash
# Builds each fuzz target's seed corpus from tests/vectors, so fuzzing starts from real inputs.
set -euo pipefail
cd "$(dirname "$0")"
vectors=../tests/vectors
mkdir -p corpus/parse_token corpus/parse_arn corpus/match_rules
cp "$vectors"/tokens/*/*.yaml corpus/parse_token/
mkdir -p corpus/parse_presigned corpus/parse_web_identity
cp "$vectors"/presigned/* corpus/parse_presigned/
cp "$vectors"/jwt/*.jwt corpus/parse_web_identity/
mkdir -p corpus/parse_forwarded_request
cp "$vectors"/requests/*.http corpus/parse_forwarded_request/
mkdir -p corpus/parse_sts_response
i=0
for f in "$vectors"/sts/*; do
  i=$((i + 1))
  # The first byte selects content type and status (see the target); 0 = XML/200, 1 = JSON/200.
  case "$f" in *.json) sel='\x01' ;; *) sel='\x00' ;; esac
  { printf "$sel"; cat "$f"; } > "corpus/parse_sts_response/seed-$i"
done
n=0
grep -rhoE 'arn:[A-Za-z0-9:/_+=,.@*?-]+' "$vectors" | sort -u | while read -r arn; do
  n=$((n + 1))
  printf '%s' "$arn" > "corpus/parse_arn/seed-$n"
done
i=0
for arn in \
  "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" \
  "arn:aws:iam::123456789012:user/admins-123" \
  "arn:aws:iam::123456789012:role/a:b/x" \
  "arn:aws:sts::123456789012:assumed-role/r/.." \
  "arn:aws:iam::123456789012:user/./../a."; do
  i=$((i + 1))
  {
    echo "$arn"
    echo "123456789012|"
    echo "|arn:aws:sts::123456789012:assumed-role/my-*-test-role/*"
    echo "|arn:aws:iam::123456789012:user/admins-???"
    echo "|arn:aws:iam::*:b/x"
    echo "111111111111|arn:aws:iam::*:user/*"
    # Dot-heavy globs: globset's extension shortcut once disagreed with Teleport on `..`.
    echo "|arn:aws:sts::123456789012:assumed-role/r/*."
    echo "|arn:aws:iam::*:user/*/?."
    echo "123456789012|*"
  } > "corpus/match_rules/seed-$i"
done
mkdir -p corpus/parse_organizations
for f in "$vectors"/organizations/*.json; do
  # The first byte selects the answer (even = DescribeAccount, odd = ListParents) and the status.
  case "$(basename "$f")" in describe_*) sel='\x00' ;; *) sel='\x01' ;; esac
  { printf "$sel"; cat "$f"; } > "corpus/parse_organizations/$(basename "$f" .json)"
done
mkdir -p corpus/parse_challenge
# Edit scripts (operation, position, character) over an issued challenge: none, a replaced
# character, a deleted one.
printf '' > corpus/parse_challenge/seed-none
printf '\x02\x20\x05' > corpus/parse_challenge/seed-replace
printf '\x01\x10\x00' > corpus/parse_challenge/seed-delete
