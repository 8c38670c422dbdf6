#!/usr/bin/env bash
# Hook benchmark (issue #4): `tpa hook post-checkout` on a branch switch, with no active grant and
# with 1,000 ledger records / 50 active grants in the local index, against `git rev-parse HEAD` in
# the same repository (the baseline). Medians from hyperfine, many runs.
#   TPA_BIN=target/release/tpa bench/hook.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
tpa=${TPA_BIN:-$PWD/target/release/tpa}
hook=$(dirname "$tpa")/tpa-hook   # what the installed hooks run
work=$(mktemp -d /tmp/tpa-bench-hook.XXXXXX)
trap 'rm -rf "$work"' EXIT
export HOME=$work/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 TZ=UTC
mkdir -p "$HOME"
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
export TPA_SIGNING_KEY=$work/key

git init -q -b main "$work/repo"
cd "$work/repo"
git config user.email bench@example.com; git config user.name Bench
git commit -q --allow-empty -m root
"$tpa" init --signing-key "$work/key" >/dev/null
git add .tpa; git commit -q -m trust
git switch -q -c hotfix/a; git commit -q --allow-empty -m a
git switch -q -c hotfix/b; git commit -q --allow-empty -m b
old=$(git rev-parse hotfix/a); new=$(git rev-parse hotfix/b)
median() { jq '.results[0].median * 1000' "$1"; }

hyperfine -N --warmup 20 --runs 300 --export-json "$work/base0.json" "git rev-parse HEAD" >/dev/null 2>&1
export TPA_HOOKS_DIR=$PWD/.git/hooks   # as the hook script sets it
hyperfine -N --warmup 20 --runs 300 --export-json "$work/hook0.json" "$hook hook post-checkout $old $new 1" >/dev/null 2>&1
hyperfine -N --warmup 20 --runs 300 --export-json "$work/full0.json" "$tpa hook post-checkout $old $new 1" >/dev/null 2>&1

# 1,000 records on as many commits, and 50 grants this clone holds on other branches.
awk 'BEGIN { for (i = 1; i <= 1000; i++) printf "commit refs/heads/bench\ncommitter B <b@example.com> %d +0000\ndata 1\nc\n%s\n", 1700000000 + i, (i == 1 ? "from refs/heads/main^0\n" : "") }' | git fast-import --quiet
git rev-list bench --max-count=1000 | "$tpa" debug bulk >/dev/null
python3 - "$(git rev-parse --git-common-dir)/tpa/active.json" <<'PY'
import json, sys
grants = {f"01JD3M5Q8Z6N2X4V7B9C1R{i:04d}": {"branch": f"refs/heads/hotfix/other-{i}", "expires_at": "2099-01-01T00:00:00Z"} for i in range(50)}
json.dump(grants, open(sys.argv[1], "w"))
PY
hyperfine -N --warmup 20 --runs 300 --export-json "$work/base50.json" "git rev-parse HEAD" >/dev/null 2>&1
hyperfine -N --warmup 20 --runs 300 --export-json "$work/hook50.json" "$hook hook post-checkout $old $new 1" >/dev/null 2>&1

b0=$(median "$work/base0.json"); h0=$(median "$work/hook0.json"); f0=$(median "$work/full0.json"); b50=$(median "$work/base50.json"); h50=$(median "$work/hook50.json")
printf 'medians (ms), 300 runs each\n'
printf '  no grants:                 git rev-parse %.2f   tpa-hook %.2f   ratio %.2fx   (full tpa binary: %.2f, %.2fx)\n' "$b0" "$h0" "$(echo "$h0 / $b0" | bc -l)" "$f0" "$(echo "$f0 / $b0" | bc -l)"
printf '  1000 records / 50 grants:  git rev-parse %.2f   tpa-hook %.2f   ratio %.2fx   (a switch between branches without grants: decided in tpa-hook)\n' "$b50" "$h50" "$(echo "$h50 / $b50" | bc -l)"
