#!/usr/bin/env bash
# Reading a few grants from a large ledger (issue #18, the grant index): `tpa status --json` (the
# open grants, through the grant index), the same right after a new record (the index brought
# forward from the note that changed), `tpa env GRANT` (one grant by id, as `exec` and
# `credential-process` read it) and `tpa show GRANT --json`, against baselines measured in the same run on the same
# repository: `tpa status --history --json` (every record read: what every one of these cost
# before the index), `git rev-parse HEAD`, and another build's `tpa status --json` (TPA_BASE).
# Medians from hyperfine; peak resident memory from /usr/bin/time.
#
#   WORK=/tmp/tpa-bench-audit.XXXXXX bench/grants.sh   # the repositories a `KEEP=1 bench/audit.sh` kept
#   SIZES="1000 10000" bench/grants.sh                 # without WORK: runs KEEP=1 bench/audit.sh first
#   TPA_BIN=<build> TPA_BASE=<another build> ...
#
# The ledgers are the audit benchmark's (N complete, revoked grants over 100,000 commits; see
# bench/audit.sh), each copied, with 10 open grants added (intents on a hotfix branch: incomplete,
# so open). The copy keeps the kept repositories as they were.
#
# Needs hyperfine, jq, git, GNU /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
bench_name=grants
. bench/audit-ledgers.sh

printf '%-7s %10s %12s %9s %9s %13s %10s %9s %12s %10s %10s\n' grants status_ms after_new_ms env_ms show_ms \
  every_rec_ms rev_parse_ms base_ms every/status status_MiB every_MiB
for n in $sizes; do
  work_on "$n"
  for i in $(seq 1 10); do
    git commit -q --allow-empty -m "open $i"
    "$tpa" debug intent --reason "INC-$i: an open grant of the benchmark" >/dev/null
  done
  open_id=$("$tpa" status --json | jq -r '.[0].grant_id')
  # Warm: each build writes its records cache and grant index once.
  "$tpa" status --history --json >/dev/null
  "$tpa" status --json >/dev/null
  [ -n "$base_tpa" ] && "$base_tpa" status --json >/dev/null
  commands=("$tpa status --json" "$tpa env $open_id" "$tpa status --history --json" "git rev-parse HEAD"
    "$tpa show $open_id --json")
  [ -n "$base_tpa" ] && commands+=("$base_tpa status --json")
  hyperfine -N -i --warmup 2 --runs 20 --export-json "$scratch/h.json" "${commands[@]}" >/dev/null 2>&1
  # After one new record each run: the index is brought forward from the note that changed.
  hyperfine -N --runs 10 --export-json "$scratch/n.json" \
    --prepare "sh -c 'git commit -q --allow-empty -m more && \"$tpa\" debug intent --reason \"INC-9: one more open grant\" >/dev/null'" \
    "$tpa status --json" >/dev/null 2>&1
  status=$(median_ms "$scratch/h.json" 0); env=$(median_ms "$scratch/h.json" 1)
  every=$(median_ms "$scratch/h.json" 2); rev=$(median_ms "$scratch/h.json" 3)
  show=$(median_ms "$scratch/h.json" 4)
  base=-; [ -n "$base_tpa" ] && base=$(printf '%.1f' "$(median_ms "$scratch/h.json" 5)")
  after=$(median_ms "$scratch/n.json" 0)
  printf '%-7s %10.1f %12.1f %9.1f %9.1f %13.1f %10.1f %9s %12.1f %10s %10s\n' "$n" "$status" "$after" "$env" "$show" "$every" "$rev" \
    "$base" "$(echo "$every / $status" | bc -l)" "$(peak_mib "$tpa" status --json)" "$(peak_mib "$tpa" status --history --json)"
  cd - >/dev/null
  rm -rf "$repo"
done
