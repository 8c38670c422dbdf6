#!/usr/bin/env bash
# Approval latency (issue 15): from the approver's push of the approval to the requester's
# credentials in the keyring, with the default poll interval (2 s). The requester runs
# `tpa request` and waits; the approver runs `tpa approve`, whose return is the moment the approval
# is on the remote; the requester's `tpa request` returns once the credentials are in the keyring.
# Median and worst of ROUNDS (10).
#
#   bench/approval.sh            # builds release once
#   ROUNDS=20 TPA_BIN=target/release/tpa bench/approval.sh
#
# Needs git, ssh-keygen, curl, python3, keyctl (the kernel keyring: run anywhere, no D-Bus).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TPA_BENCH_IN_SESSION:-}" ]; then
  exec env TPA_BENCH_IN_SESSION=1 keyctl session - "$0" "$@"
fi
rounds=${ROUNDS:-10}
work=$(mktemp -d /tmp/tpa-bench-approval.XXXXXX)
export HOME=$work/home GIT_CONFIG_GLOBAL=$work/home/.gitconfig GIT_CONFIG_NOSYSTEM=1 TPA_KEYRING=keyutils
mkdir -p "$HOME"
git config --global init.defaultBranch main

if [ -z "${TPA_BIN:-}" ]; then cargo build --release --quiet; fi
tpa=${TPA_BIN:-$PWD/target/release/tpa}
moto=
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
. bench/moto.sh

git init -q --bare "$work/origin.git"
setup() { # name email
  git clone -q "$work/origin.git" "$work/$1" 2>/dev/null
  git -C "$work/$1" config user.email "$2"; git -C "$work/$1" config user.name "$1"
  ssh-keygen -q -t ed25519 -N '' -f "$work/$1.key"
}
setup alice alice@example.com
git -C "$work/alice" commit -q --allow-empty -m root
(cd "$work/alice" && "$tpa" init --signing-key "$work/alice.key" >/dev/null)
printf 'protected_branches = ["main"]\n[groups]\nsre = ["bob@example.com"]\n[roles.bench]\narn = "%s"\nregion = "us-east-1"\nmax_ttl = "1h"\napprovals = 1\napprovers = ["@sre"]\n' \
  "$role_arn" > "$work/alice/.tpa/policy.toml"
git -C "$work/alice" add .tpa; git -C "$work/alice" commit -q -m policy; git -C "$work/alice" push -q origin main 2>/dev/null
setup bob bob@example.com
(cd "$work/bob" && "$tpa" init --signing-key "$work/bob.key" >/dev/null)
git -C "$work/bob" add .tpa; git -C "$work/bob" commit -q -m "allow bob"; git -C "$work/bob" push -q origin main 2>/dev/null
git -C "$work/alice" pull -q origin main 2>/dev/null
git -C "$work/alice" switch -q -c hotfix/bench; git -C "$work/alice" commit -q --allow-empty -m work
git -C "$work/alice" push -q origin hotfix/bench 2>/dev/null

ms() { python3 -c 'import time; print(int(time.monotonic()*1000))'; }
latencies=()
for round in $(seq 1 "$rounds"); do
  (cd "$work/alice" && "$tpa" request --role bench --reason "BENCH-$round: approval latency" --json >"$work/out.$round" 2>"$work/err.$round"; ms >"$work/done.$round") &
  requester=$!
  id=
  for _ in $(seq 300); do
    id=$(cd "$work/bob" && "$tpa" approvals --json 2>/dev/null | python3 -c 'import json,sys; p=json.load(sys.stdin); print(p[0]["grant_id"] if p else "")')
    [ -n "$id" ] && break
    sleep 0.1
  done
  [ -n "$id" ] || { echo "round $round: the request never reached the approver" >&2; cat "$work/err.$round" >&2; exit 1; }
  (cd "$work/bob" && "$tpa" approve "$id" >/dev/null)
  pushed=$(ms)
  wait "$requester" || { echo "round $round: the request failed" >&2; cat "$work/err.$round" >&2; exit 1; }
  latencies+=($(( $(cat "$work/done.$round") - pushed )))
done
printf '%s\n' "${latencies[@]}" | sort -n | python3 -c '
import sys
v = [int(x) for x in sys.stdin.read().split()]
print(f"rounds {len(v)}: approval pushed -> credentials in the keyring: median {v[len(v)//2]} ms, worst {v[-1]} ms, best {v[0]} ms (poll 2 s)")
'
