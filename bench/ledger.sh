#!/usr/bin/env bash
# Ledger benchmark (issue #2): appending one record and `tpa verify` on ledgers of 1,000 / 10,000 /
# 100,000 records, each on its own commit and its own notes commit, against
# `git notes --ref=tpa list | wc -l` on the same ledger as the baseline. Medians from hyperfine.
#
#   bench/ledger.sh                 # all sizes
#   SIZES="1000 10000" bench/ledger.sh
#
# Needs hyperfine, jq, git, ssh-keygen. Builds tpa in release mode with the `testing` feature,
# which only adds the hidden `tpa debug` plumbing used to fill the ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${SIZES:-"1000 10000 100000"}

# TPA_BIN: a prebuilt release binary with the `testing` feature (else it is built here).
if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
tpa=${TPA_BIN:-$PWD/target/release/tpa}
work=$(mktemp -d /tmp/tpa-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export HOME=$work/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 TZ=UTC
mkdir -p "$HOME"
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
export TPA_SIGNING_KEY=$work/key

median_ms() { jq '.results[0].median * 1000' "$1"; }

printf '%-8s %12s %12s %14s %12s %14s %14s %12s\n' records bulk_rec/s append_ms verify_ms verify_rec/s notes_list_ms verify/list append/list
for n in $sizes; do
  repo=$work/r$n
  git init -q -b main "$repo"
  cd "$repo"
  git config user.email bench@example.com; git config user.name Bench
  git commit -q --allow-empty -m root
  "$tpa" init --signing-key "$work/key" >/dev/null
  git add .tpa; git commit -q -m trust
  # n commits on hotfix/bench, written by fast-import in one go.
  awk -v n="$n" 'BEGIN {
    for (i = 1; i <= n; i++) {
      printf "commit refs/heads/hotfix/bench\ncommitter B <b@example.com> %d +0000\ndata %d\nc%d\n", 1700000000 + i, length("c" i), i
      if (i == 1) printf "from refs/heads/main^0\n"
      printf "\n"
    }
  }' | git fast-import --quiet
  git switch -q hotfix/bench
  start=$(date +%s.%N)
  git rev-list hotfix/bench --max-count="$n" | "$tpa" debug bulk >/dev/null
  bulk_rate=$(echo "$n / ($(date +%s.%N) - $start)" | bc -l)
  # One process appended n records, so git's own `gc --auto` (which tpa triggers after its
  # commands, as git does after commits) never ran: pack now, as it would have along the way.
  git gc -q
  "$tpa" verify >/dev/null 2>&1
  # Appends are measured on a fresh short branch, as a real hotfix branch is: the record's base
  # (a merge-base with main) then costs what it costs in real life, not a walk of n commits.
  git switch -q -c hotfix/append main
  git commit -q --allow-empty -m append

  runs=$([ "$n" -ge 100000 ] && echo 5 || echo 10)
  hyperfine -N --warmup 3 --runs 30 --export-json "$work/append.json" \
    "$tpa debug intent --reason BENCH-append:one-more-record" >/dev/null 2>&1
  hyperfine -N --warmup 1 --runs "$runs" --export-json "$work/verify.json" "$tpa verify" >/dev/null 2>&1
  hyperfine --warmup 1 --runs "$runs" --export-json "$work/list.json" \
    "git notes --ref=tpa list | wc -l" >/dev/null 2>&1
  append=$(median_ms "$work/append.json"); verify=$(median_ms "$work/verify.json"); list=$(median_ms "$work/list.json")
  records=$((n + 33))
  printf '%-8s %12.0f %12.2f %14.1f %12.0f %14.1f %14.2f %12.3f\n' "$n" "$bulk_rate" "$append" "$verify" \
    "$(echo "$records / ($verify / 1000)" | bc -l)" "$list" "$(echo "$verify / $list" | bc -l)" "$(echo "$append / $list" | bc -l)"
  cd - >/dev/null
done
