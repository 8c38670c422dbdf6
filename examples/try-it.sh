#!/usr/bin/env bash
# tpa in two minutes, without an AWS account: a scratch repository, a local AWS-compatible endpoint
# (moto), and the whole lifecycle, narrated:
#   init -> request on a hotfix branch -> exec a command with the credentials -> merge
#   -> the post-merge hook revokes -> audit shows it clean.
#
#   examples/try-it.sh              # builds tpa if needed
#   TPA_BIN=/path/to/tpa examples/try-it.sh
#
# Nothing outside a scratch directory is touched: no AWS account, not your git config. The grant's
# credentials go where tpa always keeps them, the OS keyring (on a Linux box without a desktop, the
# kernel keyring, where they expire with the grant), and are deleted when it is revoked.
# moto is installed into a private virtualenv under ~/.cache/tpa-try when it is missing.
# Needs git, ssh-keygen, python3 (venv), curl and, to build tpa, cargo.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$'; printf ' %q' "$@"; printf '\n'; "$@"; }

tpa=${TPA_BIN:-}
if [ -z "$tpa" ]; then
  if command -v tpa >/dev/null; then tpa=$(command -v tpa); else
    say "building tpa (once)"
    (cd "$here" && cargo build --release --quiet)
    tpa=$here/target/release/tpa
  fi
fi
hook_bin=$(dirname "$tpa")/tpa-hook
[ -x "$hook_bin" ] || hook_bin=$(command -v tpa-hook || true)
export PATH="$(dirname "$tpa"):$PATH"

moto_server=${TPA_TRY_MOTO:-}
if [ -z "$moto_server" ]; then
  if [ -x "$here/.venv/bin/moto_server" ]; then moto_server=$here/.venv/bin/moto_server; else
    venv=${XDG_CACHE_HOME:-$HOME/.cache}/tpa-try/venv
    if [ ! -x "$venv/bin/moto_server" ]; then
      say "installing moto (a local AWS-compatible endpoint) into $venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.2,<6'
    fi
    moto_server=$venv/bin/moto_server
  fi
fi

work=$(mktemp -d /tmp/tpa-try.XXXXXX)
moto_pid=
cleanup() { [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break
  kill -0 "$moto_pid" 2>/dev/null || { cat "$work/moto.log" >&2; echo "moto did not start" >&2; exit 1; }
  sleep 0.2
done

# Everything below talks to moto only, with made-up base credentials, in a sealed git setup.
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=AKIATRYITOUTEXAMPLE0 \
  AWS_SECRET_ACCESS_KEY=not-a-real-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  HOME=$work/home GIT_CONFIG_GLOBAL=$work/home/.gitconfig GIT_CONFIG_NOSYSTEM=1 TPA_NONINTERACTIVE=1 \
  TPA_HOOK_FOREGROUND=1
unset AWS_PROFILE AWS_SESSION_TOKEN
mkdir -p "$HOME"
git config --global user.email alice@example.com
git config --global user.name Alice
git config --global init.defaultBranch main

# A role in the fake account that the base credentials may assume (in real life: docs/aws.md).
trust='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}]}'
curl -fsS "$AWS_ENDPOINT_URL/" \
  -H 'Authorization: AWS4-HMAC-SHA256 Credential=AKIATRYITOUTEXAMPLE0/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0' \
  --data-urlencode Action=CreateRole --data-urlencode Version=2010-05-08 --data-urlencode RoleName=prod-readonly \
  --data-urlencode "AssumeRolePolicyDocument=$trust" --data-urlencode MaxSessionDuration=43200 >/dev/null

cd "$work"
git init -q --bare origin.git
git clone -q origin.git service 2>/dev/null
cd service
git commit -q --allow-empty -m "the service"
git push -q origin main
ssh-keygen -q -t ed25519 -N '' -C alice -f "$work/alice-key"

say "1. tpa init: a signing key, your line in .tpa/allowed_signers, a policy, the git hooks"
run tpa init --signing-key "$work/alice-key"
cat > .tpa/policy.toml <<'POLICY'
protected_branches = ["main"]
request_branches = ["hotfix/*"]
min_reason_length = 10
default_ttl = "30m"

[roles.prod-readonly]
arn = "arn:aws:iam::123456789012:role/prod-readonly"
region = "us-east-1"
max_ttl = "1h"
POLICY
git add .tpa && git commit -q -m "tpa: trust alice, allow prod-readonly from hotfix branches"
echo "(the policy and your key are trusted once they are on the reviewed main branch: pushing it)"
run git push -q origin main

say "2. an incident: a hotfix branch, and a grant tied to it"
run git switch -q -c hotfix/INC-4211
git commit -q --allow-empty -m "fix stuck invoices"
run tpa request --role prod-readonly --reason "INC-4211: fix stuck invoices" --ttl 30m

say "3. the credentials exist only in the OS keyring, and in the environment of what you run"
run tpa exec -- sh -c 'echo "the child sees AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID%????????????}… and a session token of ${#AWS_SESSION_TOKEN} characters"'
run tpa status

say "4. the fix is merged: git's post-merge hook revokes the grant"
run git switch -q main
run git merge -q --no-ff -m "Merge hotfix/INC-4211" hotfix/INC-4211
run tpa status --all --history

say "5. the signed ledger: refs/notes/tpa"
run tpa log
run tpa verify

say "6. the weekly audit: who had access, why, for how long, and anything still open"
run tpa audit --fail-on warning

say "done: grant, use, merge, automatic revocation, clean audit (no AWS account involved)"
echo "next: docs/aws.md (the real AWS side), docs/policy.md, docs/audit.md"
