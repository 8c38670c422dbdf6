#!/usr/bin/env bash
# The sweep on a large ledger (issue #18): `tpa sweep --json` as every hook and CI run it, through
# the grant index (the open grants and the ended ones it still looks after), against another
# build's sweep (TPA_BASE, e.g. one that reads every record) and `git rev-parse HEAD`, measured in
# the same run. Medians from hyperfine; peak resident memory from /usr/bin/time. Each build sweeps
# its own copy of the repository, so that neither finds the other's caches.
#
#   WORK=/tmp/tpa-bench-audit.XXXXXX bench/sweep.sh   # the repositories a `KEEP=1 bench/audit.sh` kept
#   SIZES="1000 10000" bench/sweep.sh                 # without WORK: runs KEEP=1 bench/audit.sh first
#   TPA_BIN=<build> TPA_BASE=<another build> ...
#
# The ledgers are the audit benchmark's (N complete, revoked grants over 100,000 commits; see
# bench/audit.sh), each copied, with 10 open grants added (intents on a hotfix branch, HEAD on it,
# a minute old: the sweep keeps them). The sweep looks after grants that ended within the last week
# too, and the benchmark's grants were all written the day it ran; so the sweeps run `DAYS_LATER`
# days on (TPA_TEST_NOW, a testing build's clock; default 8), with the open grants dated then, to
# measure a ledger whose history is older than a week, as an organisation's is. `DAYS_LATER=0`
# measures the other end: every grant of the ledger ended within the week.
# Both builds' sweeps must decide the same for every grant, or the benchmark stops.
#
# Needs hyperfine, jq, git, GNU /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
bench_name=sweep
. bench/audit-ledgers.sh
TPA_TEST_NOW=$(date -u -d "+${DAYS_LATER:-8} days" +%Y-%m-%dT%H:%M:%SZ)
opened_at=$(date -u -d "$TPA_TEST_NOW - 1 minute" +%Y-%m-%dT%H:%M:%SZ)
export TPA_TEST_NOW
decisions() { jq -c '[.items[] | [.grant_id, .decision]] | sort' ; }

echo "clock: $TPA_TEST_NOW"
printf '%-7s %9s %8s %9s %9s %12s %10s %9s\n' grants items sweep_ms base_ms base/sweep rev_parse_ms sweep_MiB base_MiB
for n in $sizes; do
  work_on "$n"
  for i in $(seq 10 19); do
    git commit -q --allow-empty -m "open $i"
    jq -nc --arg id "01KB00000000000000000000$i" --arg at "$opened_at" --arg commit "$(git rev-parse HEAD)" \
      --arg email "$(git config user.email)" '{version: 1, kind: "intent", grant_id: $id, issued_at: $at,
        principal: {email: $email, user: "bench", host: "bench"}, reason: "INC-1: an open grant of the benchmark",
        repo: "origin", branch: "refs/heads/hotfix/bench-open", commit: $commit, base: null, policy_commit: null,
        provider: "test", target: "arn:aws:iam::123456789012:role/bench", scope: null, expires_at: null,
        credential_fingerprint: null}' | "$tpa" debug append >/dev/null
  done
  swept=$("$tpa" sweep --json | tee "$scratch/this.json" | jq '.items | length')
  commands=("$tpa sweep --json" "git rev-parse HEAD")
  base_repo=
  if [ -n "$base_tpa" ]; then
    base_repo=$scratch/b$n
    cp -a "$repo" "$base_repo"
    "$base_tpa" -C "$base_repo" sweep --json | decisions >"$scratch/base.dec"
    decisions <"$scratch/this.json" | cmp -s - "$scratch/base.dec" || {
      echo "the two builds' sweeps decide differently at $n grants" >&2; exit 1; }
    commands+=("$base_tpa -C $base_repo sweep --json")
  fi
  hyperfine -N --warmup 1 --runs "${RUNS:-10}" --export-json "$scratch/h.json" "${commands[@]}" >/dev/null 2>&1
  sweep=$(median_ms "$scratch/h.json" 0); rev=$(median_ms "$scratch/h.json" 1)
  base=-; ratio=-; base_mib=-
  if [ -n "$base_tpa" ]; then
    base=$(printf '%.1f' "$(median_ms "$scratch/h.json" 2)")
    ratio=$(printf '%.1f' "$(echo "$base / $sweep" | bc -l)")
    base_mib=$(peak_mib "$base_tpa" -C "$base_repo" sweep --json)
  fi
  printf '%-7s %9s %8.1f %9s %9s %12.1f %10s %9s\n' "$n" "$swept" "$sweep" "$base" "$ratio" "$rev" \
    "$(peak_mib "$tpa" sweep --json)" "$base_mib"
  cd - >/dev/null
  rm -rf "$repo" ${base_repo:+"$base_repo"}
done
