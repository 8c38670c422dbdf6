#!/usr/bin/env bash
# Organisation audit benchmark: `tpa audit --repos` over N repositories (default 100) of G complete
# grants each (default 1,000), against the sum of the single-repository audits (`tpa audit` in each
# repository, one after the other) measured in the same run on the same repositories; and the
# throughput of `tpa export` to a file, in events per second (aim: >= 50,000 events/s).
#
#   bench/org-audit.sh
#   REPOS=20 GRANTS=500 bench/org-audit.sh
#   TPA_BIN=target/release/tpa bench/org-audit.sh
#   KEEP=1 bench/org-audit.sh              # keep the work directory (path printed)
#
# The repositories: one written by git fast-import (100 cycles of 9 commits on main and a hotfix
# branch of 10 commits merged back: 2,000 commits, `.tpa/` in the root commits of main), its ledger
# filled by `tpa debug bulk --grants` (per grant an intent, a grant and a revoke record, each its own
# notes commit, spread over the hotfix commits: what bench/audit.sh does), then copied N times. The
# copies are identical, so every repository costs the same; each is its own source (its own path,
# its own cache entry), served as a partial-clone remote (uploadpack.allowFilter).
#
# Measured (all with --offline, so AWS is not asked; the audit runs on the real clock):
#   single_s   the N single audits, `tpa audit --offline --json` in each repository, summed
#   cold_s     `tpa audit --repos LIST --offline --json` with an empty cache: fetch + audit
#   warm_s     the same again, the cache filled: incremental fetch + audit
#   cold_rss / warm_rss   peak resident memory of the org audit (GNU time), MiB
#   single_rss            the largest peak of the single audits, MiB
#   export_ev/s           `tpa export -o FILE` of one repository's records (hyperfine median),
#                         every signature checked
#   fast_ev/s             the same with --no-verify (no signature checks)
# Needs hyperfine, jq, git, ssh-keygen, bc and GNU time. Builds tpa in release mode with the
# `testing` feature (the hidden `tpa debug` plumbing that fills the ledger).
set -euo pipefail
cd "$(dirname "$0")/.."
repos=${REPOS:-100}
grants=${GRANTS:-1000}
jobs=${JOBS:-4}

if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
tpa=${TPA_BIN:-$PWD/target/release/tpa}
work=$(mktemp -d /tmp/tpa-bench-org.XXXXXX)
if [ -n "${KEEP:-}" ]; then echo "work dir: $work (kept)"; else trap 'rm -rf "$work"' EXIT; fi
export HOME=$work/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 TZ=UTC
mkdir -p "$HOME"
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
export TPA_SIGNING_KEY=$work/key
now() { date +%s.%N; }
rss_mib() { awk -F: '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$1"; }

# One repository: history by fast-import, the ledger by tpa.
base=$work/base
git init -q -b main "$base"
cd "$base"
git config user.email bench@example.com; git config user.name Bench
git commit -q --allow-empty -m root
"$tpa" init --signing-key "$work/key" >/dev/null
cat >.tpa/policy.toml <<'EOF'
protected_branches = ["main"]
request_branches = ["hotfix/*"]
min_reason_length = 10
default_ttl = "30m"

[roles.bench]
arn = "arn:aws:iam::123456789012:role/bench"
region = "us-east-1"
max_ttl = "1h"
EOF
git add .tpa; git commit -q -m "trust and policy"
cycles=100 main_per_cycle=9 hotfix_per_cycle=10
awk -v cycles="$cycles" -v m="$main_per_cycle" -v h="$hotfix_per_cycle" 'BEGIN {
  mark = 0; t = 1700000000
  for (c = 1; c <= cycles; c++) {
    for (i = 1; i <= m; i++) {
      mark++; t += 60; body = "main " mark
      printf "commit refs/heads/main\nmark :%d\ncommitter B <b@example.com> %d +0000\ndata %d\n%s\n", mark, t, length(body), body
      if (mark == 1) printf "from refs/heads/main^0\n"
      printf "M 100644 inline src/main%d.txt\ndata %d\n%s\n\n", c % 10, length(body), body
    }
    fork = mark
    branch = sprintf("refs/heads/hotfix/b%04d", c)
    for (j = 1; j <= h; j++) {
      hm = 1000000 + (c - 1) * h + j; t += 60; body = "hotfix " c " " j
      printf "commit %s\nmark :%d\ncommitter B <b@example.com> %d +0000\ndata %d\n%s\n", branch, hm, t, length(body), body
      if (j == 1) printf "from :%d\n", fork
      printf "M 100644 inline hotfix/%d.txt\ndata %d\n%s\n\n", c, length(body), body
    }
    mark++; t += 60; body = "Merge " branch
    printf "commit refs/heads/main\nmark :%d\ncommitter B <b@example.com> %d +0000\ndata %d\n%s\n", mark, t, length(body), body
    printf "from :%d\nmerge :%d\n", fork, hm
    printf "M 100644 inline hotfix/%d.txt\ndata %d\n%s\n\n", c, length("hotfix " c " " h), "hotfix " c " " h
  }
}' | git fast-import --quiet --export-marks="$work/marks"
git reset -q --hard main
hotfix_commits=$((cycles * hotfix_per_cycle))
awk -v h="$hotfix_per_cycle" '{ m = substr($1, 2) + 0; if (m > 1000000) printf "%d %s refs/heads/hotfix/b%04d\n", m, $2, int((m - 1000001) / h) + 1 }' \
  "$work/marks" | sort -n | cut -d' ' -f2- >"$work/hotfix"
awk -v n="$grants" -v h="$hotfix_commits" 'NR == FNR { line[FNR - 1] = $0; next } END {
  for (j = 0; j < n; j++) print line[int(j * h / n)]
}' "$work/hotfix" /dev/null >"$work/targets"
start=$(now)
"$tpa" debug bulk --grants <"$work/targets" >/dev/null
fill_s=$(echo "$(now) - $start" | bc -l)
git gc -q
git config uploadpack.allowFilter true
git config uploadpack.allowAnySHA1InWant true
"$tpa" verify >/dev/null
records=$("$tpa" audit --offline --json | jq .records)
commits=$(git rev-list --count --branches)
cd - >/dev/null
printf 'one repository: %d commits, %d grants, %d records (ledger filled in %.1f s); %d copies\n\n' \
  "$commits" "$grants" "$records" "$fill_s" "$repos"

list=$work/repos.txt
: >"$list"
for i in $(seq 1 "$repos"); do
  n=$(printf %03d "$i")
  cp -a "$base" "$work/repo-$n"
  echo "$work/repo-$n" >>"$list"
done

# The single audits, one after the other.
max_single_rss=0
start=$(now)
for i in $(seq 1 "$repos"); do
  n=$(printf %03d "$i")
  /usr/bin/time -v -o "$work/time-single" "$tpa" -C "$work/repo-$n" audit --offline --json >"$work/single.json"
  rss=$(rss_mib "$work/time-single")
  [ "$rss" -gt "$max_single_rss" ] && max_single_rss=$rss
done
single_s=$(echo "$(now) - $start" | bc -l)
[ "$(jq '.grants | length' "$work/single.json")" -eq "$grants" ] || { echo "a single audit did not see every grant" >&2; exit 1; }

org() {
  local status=0
  /usr/bin/time -v -o "$work/time-org" "$tpa" audit --repos "$list" --cache "$work/cache" --jobs "$jobs" \
    --offline --json >"$work/org.json" || status=$?
  [ "$status" -le 1 ] || { echo "tpa audit --repos exited $status" >&2; exit 1; }
  [ "$(jq .totals.audited "$work/org.json")" -eq "$repos" ] || { echo "not every repository was audited" >&2; jq .totals "$work/org.json" >&2; exit 1; }
  [ "$(jq .totals.grants "$work/org.json")" -eq $((repos * grants)) ] || { echo "grants missing" >&2; exit 1; }
}
start=$(now); org; cold_s=$(echo "$(now) - $start" | bc -l); cold_rss=$(rss_mib "$work/time-org")
start=$(now); org; warm_s=$(echo "$(now) - $start" | bc -l); warm_rss=$(rss_mib "$work/time-org")
findings=$(jq -r '[.repos[].findings[].kind] | group_by(.) | map("\(.[0])x\(length)") | join(",") | if . == "" then "-" else . end' "$work/org.json")

# Export throughput: every record of one repository to a file (the file removed between runs).
cd "$work/repo-001"
hyperfine -N --warmup 1 --runs 10 --prepare "rm -f $work/events.jsonl" --export-json "$work/e.json" \
  "$tpa export -o $work/events.jsonl" >/dev/null 2>&1
exported=$(wc -l <"$work/events.jsonl")
[ "$exported" -eq "$records" ] || { echo "export wrote $exported events, not $records" >&2; exit 1; }
export_s=$(jq '.results[0].median' "$work/e.json")
hyperfine -N --warmup 1 --runs 10 --prepare "rm -f $work/events.jsonl" --export-json "$work/f.json" \
  "$tpa export --no-verify -o $work/events.jsonl" >/dev/null 2>&1
fast_s=$(jq '.results[0].median' "$work/f.json")
cd - >/dev/null

printf '%-6s %-7s %9s %8s %8s %10s %10s %10s %9s %9s %10s %12s %10s  %s\n' repos grants single_s cold_s warm_s \
  cold/single warm/single single_rss cold_rss warm_rss export_ms export_ev/s fast_ev/s findings
printf '%-6s %-7s %9.1f %8.1f %8.1f %10.2f %10.2f %10s %9s %9s %10.1f %12.0f %10.0f  %s\n' "$repos" "$grants" \
  "$single_s" "$cold_s" "$warm_s" "$(echo "$cold_s / $single_s" | bc -l)" "$(echo "$warm_s / $single_s" | bc -l)" \
  "$max_single_rss" "$cold_rss" "$warm_rss" "$(echo "$export_s * 1000" | bc -l)" \
  "$(echo "$exported / $export_s" | bc -l)" "$(echo "$exported / $fast_s" | bc -l)" "$findings"
