#!/usr/bin/env bash
# Ledger benchmark (issues #2, #18): appending one record, and `tpa verify` on ledgers of 1,000 /
# 10,000 / 100,000 records, each record on its own commit and its own notes commit:
#   full_ms    `tpa verify` with no witness and no verify cache, as an auditor's CI on a fresh clone
#              (both removed before each run);
#   since_ms   `tpa verify` after one new record on a new commit, with the witness and the cache of
#              the previous run (each run is prepared by `git commit` + `tpa debug intent`);
#   nohash_ms  the full check with libgit2's strict hash verification (SHA-1DC) off for the tip's
#              records too (TPA_TEST_NO_STRICT_HASH, testing builds only; the history walk always
#              reads with it off and checks its reads with plain SHA-1): what SHA-1DC over the
#              signed records costs (docs/verify.md, "Cost");
# against `git notes --ref=tpa list | wc -l` on the same ledger as the baseline (list_ms). With
# TPA_BASE (another build, e.g. main's), its `tpa verify` is measured too in the same run (base_ms).
# Medians from hyperfine.
#
#   bench/ledger.sh                                   # all sizes
#   SIZES="1000 10000" bench/ledger.sh
#   TPA_BIN=target/release/tpa TPA_BASE=/tmp/main/tpa WORK=/tmp/ledgers bench/ledger.sh
#
# WORK keeps the filled repositories there and reuses them on the next run (filling 100,000
# records takes minutes); without it they go in a temporary directory removed at the end.
# Needs hyperfine, jq, git, ssh-keygen, bc. Builds tpa in release mode with the `testing` feature,
# which only adds the hidden `tpa debug` plumbing used to fill the ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${SIZES:-"1000 10000 100000"}

# TPA_BIN: a prebuilt release binary with the `testing` feature (else it is built here).
if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
tpa=${TPA_BIN:-$PWD/target/release/tpa}
if [ -n "${WORK:-}" ]; then
  work=$WORK; mkdir -p "$work"
else
  work=$(mktemp -d /tmp/tpa-bench.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi
export HOME=$work/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 TZ=UTC
mkdir -p "$HOME"
[ -f "$work/key" ] || ssh-keygen -q -t ed25519 -N '' -f "$work/key"
export TPA_SIGNING_KEY=$work/key

median_ms() { jq '.results[0].median * 1000' "$1"; }
echo "load: $(uptime)"

printf '%-8s %10s %10s %10s %11s %10s %10s %9s %10s %10s %9s\n' records append_ms full_ms full_rec/s since_ms nohash_ms list_ms full/list since/list base_ms base/full
for n in $sizes; do
  repo=$work/r$n
  if [ ! -f "$repo/.filled" ]; then
    rm -rf "$repo"
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
    git rev-list hotfix/bench --max-count="$n" | "$tpa" debug bulk >/dev/null
    # One process appended n records, so git's own `gc --auto` (which tpa triggers after its
    # commands, as git does after commits) never ran: pack now, as it would have along the way.
    git gc -q
    # Appends are measured on a fresh short branch, as a real hotfix branch is: the record's base
    # (a merge-base with main) then costs what it costs in real life, not a walk of n commits.
    git switch -q -c hotfix/append main
    git commit -q --allow-empty -m append
    touch .filled
    cd - >/dev/null
  fi
  cd "$repo"
  state=$(git rev-parse --git-common-dir)/tpa

  runs=$([ "$n" -ge 100000 ] && echo 5 || echo 10)
  hyperfine -N --warmup 3 --runs 30 --export-json "$work/append.json" \
    "$tpa debug intent --reason BENCH-append:one-more-record" >/dev/null 2>&1
  hyperfine -N --warmup 1 --runs "$runs" --prepare "rm -f $state/witness $state/verify-cache" \
    --export-json "$work/full.json" "$tpa verify" >/dev/null 2>&1
  hyperfine -N --warmup 1 --runs "$runs" --prepare "rm -f $state/witness $state/verify-cache" \
    --export-json "$work/nohash.json" "env TPA_TEST_NO_STRICT_HASH=1 $tpa verify" >/dev/null 2>&1
  "$tpa" verify >/dev/null 2>&1   # a witness and its cache, as a developer has them
  hyperfine --warmup 2 --runs 20 \
    --prepare "git commit -q --allow-empty -m next && $tpa debug intent --reason BENCH-since:one-new-record >/dev/null" \
    --export-json "$work/since.json" "$tpa verify" >/dev/null 2>&1
  hyperfine --warmup 1 --runs "$runs" --export-json "$work/list.json" \
    "git notes --ref=tpa list | wc -l" >/dev/null 2>&1
  base="-"; base_ratio="-"
  if [ -n "${TPA_BASE:-}" ]; then
    hyperfine -N --warmup 1 --runs "$runs" --prepare "rm -f $state/witness $state/verify-cache" \
      --export-json "$work/base.json" "$TPA_BASE verify" >/dev/null 2>&1
    base=$(printf '%.1f' "$(median_ms "$work/base.json")")
    base_ratio=$(printf '%.2f' "$(echo "$(median_ms "$work/base.json") / $(median_ms "$work/full.json")" | bc -l)")
  fi
  append=$(median_ms "$work/append.json"); full=$(median_ms "$work/full.json")
  since=$(median_ms "$work/since.json"); list=$(median_ms "$work/list.json")
  nohash=$(median_ms "$work/nohash.json")
  records=$("$tpa" verify --json 2>/dev/null | jq .records)
  printf '%-8s %10.2f %10.1f %10.0f %11.1f %10.1f %10.1f %9.2f %10.2f %10s %9s\n' "$n" "$append" "$full" \
    "$(echo "$records / ($full / 1000)" | bc -l)" "$since" "$nohash" "$list" "$(echo "$full / $list" | bc -l)" \
    "$(echo "$since / $list" | bc -l)" "$base" "$base_ratio"
  cd - >/dev/null
done
echo "load: $(uptime)"
