#!/usr/bin/env bash
# Audit benchmark: `tpa audit --offline --json` over ledgers of 1,000 / 10,000 / 100,000 complete
# grants in a repository of 100,000 commits, against baselines measured in the same run on the same
# repository: `tpa verify --full` (the full check of the ledger, which the audit runs too: an
# auditor's CI starts from a fresh clone, with no witness) and `git rev-list --count --all` (a walk
# of the whole history); `git notes --ref=tpa list | wc -l` is shown too. Medians from hyperfine;
# the audit's peak resident memory from one more run under /usr/bin/time (peak_MiB), and of that
# run the anonymous part (anon_MiB: the heap, not the pack files git and tpa map; sampled from
# /proc every 20 ms, so a little under the true peak), against the peak of `git rev-list --objects
# --all` (gitobj_MiB: git's own walk of every object of the repository). Aims (issue
# #18): 10,000 grants under 5 s; 100,000 grants under 30 s with a peak under 300 MB.
#
#   bench/audit.sh                        # all sizes
#   SIZES="1000 10000" bench/audit.sh
#   TPA_BIN=target/release/tpa bench/audit.sh
#   KEEP=1 bench/audit.sh                 # keep the repositories (path printed) for profiling
#
# The repository, written by git fast-import: 2,000 cycles of 39 commits on main, then a hotfix
# branch of 10 commits forked from main and merged back (--no-ff merge commit): 100,000 commits,
# 20,000 of them on hotfix/b0001..b2000, `.tpa/` (trust and a policy with [roles.bench]) in the
# root commits of main. The N grants are spread evenly over the 20,000 hotfix commits (several per
# commit above 20,000), each recording its own hotfix branch and the policy commit on main.
#
# The ledger: `tpa debug bulk --grants` writes per grant an intent, a `grant` record (aws-sts,
# role bench, 30 min) and a `revoke` record (merged, done), spaced a minute apart and ended an
# hour ago, so all read as revoked. Each record is appended on its own, as its own notes commit
# (3 notes commits per grant), as in real life: the ledger API has no batched append. That makes
# the fill the slow part; its rate is shown (fill_rec/s; ~280/s on 2 busy cores, so 100,000 grants
# take ~18 min to fill). Then `git gc`, as gc --auto would have packed along the way. Every grant is
# revoked, so the audit runs its history checks (commit present, policy reviewed and in force then)
# but not the merge walk, which is for active grants. The repository has no remote: the audit
# trusts local main and reports one info finding (unreviewed_trust_ref); the script stops if
# `tpa verify` finds anything or the audit exits non-zero. The audit runs on the real clock.
#
# Needs hyperfine, jq, git, ssh-keygen, bc, GNU /usr/bin/time. Builds tpa in release mode with the
# `testing` feature, which only adds the hidden `tpa debug` plumbing used to fill the ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${SIZES:-"1000 10000 100000"}

# TPA_BIN: a prebuilt release binary with the `testing` feature (else it is built here).
if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
tpa=${TPA_BIN:-$PWD/target/release/tpa}
work=$(mktemp -d /tmp/tpa-bench-audit.XXXXXX)
if [ -n "${KEEP:-}" ]; then echo "work dir: $work (kept)"; else trap 'rm -rf "$work"' EXIT; fi
export HOME=$work/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 TZ=UTC
mkdir -p "$HOME"
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
export TPA_SIGNING_KEY=$work/key

cycles=2000 main_per_cycle=39 hotfix_per_cycle=10   # 2000 * (39 + 10 + 1) = 100,000 commits
hotfix_commits=$((cycles * hotfix_per_cycle))
now() { date +%s.%N; }
median_ms() { jq '.results[0].median * 1000' "$1"; }

# The repository, once; each size gets a copy.
base=$work/base
git init -q -b main "$base"
cd "$base"
git config user.email bench@example.com; git config user.name Bench
git commit -q --allow-empty -m root
"$tpa" init --signing-key "$work/key" >/dev/null
cat >.tpa/policy.toml <<'EOF'
protected_branches = ["main"]
request_branches = ["hotfix/*", "fix/*"]
min_reason_length = 10
default_ttl = "30m"

[roles.bench]
arn = "arn:aws:iam::123456789012:role/bench"
region = "us-east-1"
max_ttl = "1h"
EOF
git add .tpa; git commit -q -m "trust and policy"
start=$(now)
# Marks: main and merge commits 1.., hotfix commits 1000001.. (cycle * 10 + j), so the marks
# file says which commit is on which branch.
awk -v cycles="$cycles" -v m="$main_per_cycle" -v h="$hotfix_per_cycle" 'BEGIN {
  mark = 0; t = 1700000000
  for (c = 1; c <= cycles; c++) {
    for (i = 1; i <= m; i++) {
      mark++; t += 60; body = "main " mark
      printf "commit refs/heads/main\nmark :%d\ncommitter B <b@example.com> %d +0000\ndata %d\n%s\n", mark, t, length(body), body
      if (mark == 1) printf "from refs/heads/main^0\n"
      printf "M 100644 inline src/main%d.txt\ndata %d\n%s\n\n", c % 100, length(body), body
    }
    fork = mark
    branch = sprintf("refs/heads/hotfix/b%04d", c)
    for (j = 1; j <= h; j++) {
      hm = 1000000 + (c - 1) * h + j; t += 60; body = "hotfix " c " " j
      printf "commit %s\nmark :%d\ncommitter B <b@example.com> %d +0000\ndata %d\n%s\n", branch, hm, t, length(body), body
      if (j == 1) printf "from :%d\n", fork
      printf "M 100644 inline hotfix/%02d/%d.txt\ndata %d\n%s\n\n", int(c / 100), c, length(body), body
    }
    mark++; t += 60; body = "Merge " branch
    printf "commit refs/heads/main\nmark :%d\ncommitter B <b@example.com> %d +0000\ndata %d\n%s\n", mark, t, length(body), body
    printf "from :%d\nmerge :%d\n", fork, hm
    printf "M 100644 inline hotfix/%02d/%d.txt\ndata %d\n%s\n\n", int(c / 100), c, length("hotfix " c " " h), "hotfix " c " " h
  }
}' | git fast-import --quiet --export-marks="$work/marks"
git reset -q --hard main
git gc -q
build_s=$(echo "$(now) - $start" | bc -l)
commits=$(git rev-list --count --all)
# Hotfix commits in order, with their branch: "<sha> refs/heads/hotfix/bNNNN".
awk -v h="$hotfix_per_cycle" '{ m = substr($1, 2) + 0; if (m > 1000000) printf "%d %s refs/heads/hotfix/b%04d\n", m, $2, int((m - 1000001) / h) + 1 }' \
  "$work/marks" | sort -n | cut -d' ' -f2- >"$work/hotfix"
printf 'repository: %d commits (%d on hotfix branches, 2,000 merges), built in %.1f s\n\n' "$commits" "$hotfix_commits" "$build_s"
cd - >/dev/null

# The peak anonymous memory of a command, in MiB, sampled every 20 ms (its output is dropped).
peak_anon_mib() {
  "$@" >/dev/null & local pid=$! peak=0 kib
  while kib=$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) && [ -n "$kib" ]; do
    [ "$kib" -gt "$peak" ] && peak=$kib
    sleep 0.02
  done
  wait "$pid"
  echo $((peak / 1024))
}

printf '%-7s %8s %8s %10s %10s %10s %12s %10s %12s %11s %9s %9s %11s %9s\n' grants records fill_s fill_rec/s \
  audit_ms verify_ms audit/verify audit_ms/1k revlist_ms notes_ls_ms peak_MiB anon_MiB gitobj_MiB findings
for n in $sizes; do
  repo=$work/r$n
  cp -a "$base" "$repo"
  cd "$repo"
  # Grant j of n on hotfix commit floor(j * 20000 / n).
  awk -v n="$n" -v h="$hotfix_commits" 'NR == FNR { line[FNR - 1] = $0; next } END {
    for (j = 0; j < n; j++) print line[int(j * h / n)]
  }' "$work/hotfix" /dev/null >"$work/targets"
  start=$(now)
  "$tpa" debug bulk --grants <"$work/targets" >/dev/null
  fill_s=$(echo "$(now) - $start" | bc -l)
  # One process appended 3n records, so git's own `gc --auto` never ran: pack now.
  git gc -q
  # Also sets verify's witness, as a CI verify would have.
  "$tpa" verify >/dev/null 2>"$work/verify.err" || { echo "tpa verify failed on $n grants:" >&2; cat "$work/verify.err" >&2; exit 1; }
  status=0
  "$tpa" audit --offline --json >"$work/audit.json" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "tpa audit exited $status on $n grants:" >&2
    jq -c '.findings[:5]' "$work/audit.json" >&2
    exit 1
  fi
  records=$(jq .records "$work/audit.json")
  audited=$(jq '.grants | length' "$work/audit.json")
  [ "$audited" -eq "$n" ] || { echo "audit saw $audited grants, not $n" >&2; exit 1; }
  findings=$(jq -r '[.findings[].kind] | group_by(.) | map("\(.[0])x\(length)") | join(",") | if . == "" then "-" else . end' "$work/audit.json")

  runs=$([ "$n" -ge 100000 ] && echo 5 || echo 10)
  hyperfine -N --warmup 1 --runs "$runs" --export-json "$work/a.json" "$tpa audit --offline --json" >/dev/null 2>&1
  hyperfine -N --warmup 1 --runs "$runs" --export-json "$work/v.json" "$tpa verify --full" >/dev/null 2>&1
  hyperfine -N --warmup 1 --runs "$runs" --export-json "$work/r.json" "git rev-list --count --all" >/dev/null 2>&1
  hyperfine --warmup 1 --runs "$runs" --export-json "$work/l.json" "git notes --ref=tpa list | wc -l" >/dev/null 2>&1
  /usr/bin/time -f %M -o "$work/rss" "$tpa" audit --offline --json >/dev/null
  peak_mib=$(echo "$(cat "$work/rss") / 1024" | bc -l)
  anon_mib=$(peak_anon_mib "$tpa" audit --offline --json)
  /usr/bin/time -f %M -o "$work/rss" git rev-list --objects --all >/dev/null
  gitobj_mib=$(echo "$(cat "$work/rss") / 1024" | bc -l)
  audit=$(median_ms "$work/a.json"); verify=$(median_ms "$work/v.json")
  revlist=$(median_ms "$work/r.json"); list=$(median_ms "$work/l.json")
  printf '%-7s %8s %8.1f %10.0f %10.1f %10.1f %12.3f %10.1f %12.1f %11.1f %9.0f %9s %11.0f %9s\n' "$n" "$records" "$fill_s" \
    "$(echo "$records / $fill_s" | bc -l)" "$audit" "$verify" "$(echo "$audit / $verify" | bc -l)" \
    "$(echo "$audit * 1000 / $n" | bc -l)" "$revlist" "$list" "$peak_mib" "$anon_mib" "$gitobj_mib" "$findings"
  cd - >/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$repo"
done
