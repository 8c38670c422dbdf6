#!/usr/bin/env bash
# Hook-manager benchmark (issue #17): the idle post-checkout (a branch switch, no grant in this clone)
# through each manager with tpa added by `tpa init`, against the same manager running only the team's
# own post-checkout hook (`true`), measured in the same hyperfine run. The hook is run the way git runs
# it: the manager's hook file, in the work tree, with git's three arguments.
#   bench/hook-managers.sh                        # builds the release binaries first
#   TPA_BIN=target/release/tpa bench/hook-managers.sh
# Needs hyperfine (apt-get install -y hyperfine), jq, pre-commit in .venv and lefthook/husky in
# .tools (scripts/test --setup-only). tpa must add at most 20 % (ratio <= 1.20).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
tpa=$(realpath "${TPA_BIN:-$PWD/target/release/tpa}")
pre_commit=$root/.venv/bin/pre-commit
lefthook=$(ls "$root"/.tools/node_modules/lefthook-*/bin/lefthook 2>/dev/null | head -n1 || true)
husky=$root/.tools/node_modules/husky/bin.js
for need in "$pre_commit" "$lefthook" "$husky"; do
  [ -n "$need" ] && [ -e "$need" ] || { echo "missing ${need:-lefthook}: run scripts/test --setup-only" >&2; exit 2; }
done
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install -y hyperfine" >&2; exit 2; }

work=$(mktemp -d /tmp/tpa-bench-managers.XXXXXX)
trap 'rm -rf "$work"' EXIT
export HOME=$work/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 TZ=UTC PRE_COMMIT_HOME=$work/pre-commit-home
# tpa-hook on PATH, as ./install.sh leaves it; lefthook too, as a team has it.
export PATH=$(dirname "$tpa"):$(dirname "$lefthook"):$PATH
mkdir -p "$HOME"
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
export TPA_SIGNING_KEY=$work/key
runs=${RUNS:-20}

# tpa's hook repository as pre-commit clones it: .pre-commit-hooks.yaml and hooks/ of this checkout.
mkdir -p "$work/tpa-hooks/hooks"
cp .pre-commit-hooks.yaml "$work/tpa-hooks/"
cp hooks/post-* "$work/tpa-hooks/hooks/"
git -C "$work/tpa-hooks" init -q -b main
git -C "$work/tpa-hooks" add .
git -C "$work/tpa-hooks" -c user.email=b@example.com -c user.name=B commit -q -m hooks
rev=$(git -C "$work/tpa-hooks" rev-parse HEAD)

# A repository with the team's own post-checkout hook through manager $1, tpa added when $2 = tpa.
# Prints the hook file git would run for post-checkout.
setup() {
  local manager=$1 with=$2 dir=$work/$1-$2
  git init -q -b main "$dir"
  cd "$dir"
  git config user.email bench@example.com; git config user.name Bench
  git commit -q --allow-empty -m root
  "$tpa" init --signing-key "$work/key" >/dev/null   # the trust set-up, before any manager
  "$tpa" uninstall >/dev/null
  case $manager in
    pre-commit)
      printf 'repos:\n  - repo: local\n    hooks:\n      - id: team\n        name: team\n        entry: "true"\n        language: system\n        always_run: true\n        pass_filenames: false\n        stages: [post-checkout]\n' > .pre-commit-config.yaml
      if [ "$with" = tpa ]; then
        printf '  - repo: %s\n    rev: %s\n    hooks:\n      - id: tpa-post-checkout\n' "$work/tpa-hooks" "$rev" >> .pre-commit-config.yaml
      fi
      "$pre_commit" install --hook-type post-checkout >/dev/null
      hook=$dir/.git/hooks/post-checkout ;;
    lefthook)
      printf 'post-checkout:\n  commands:\n    team:\n      run: "true"\n' > lefthook.yml
      [ "$with" = tpa ] && "$tpa" init --signing-key "$work/key" >/dev/null
      "$lefthook" install >/dev/null
      hook=$dir/.git/hooks/post-checkout ;;
    husky)
      printf '{"name": "bench", "private": true}\n' > package.json
      node "$husky" >/dev/null
      printf 'true\n' > .husky/post-checkout
      [ "$with" = tpa ] && "$tpa" init --signing-key "$work/key" >/dev/null
      hook=$dir/.husky/_/post-checkout ;;
  esac
  git add -A >/dev/null; git commit -q -m setup --no-verify
  git switch -q -c hotfix/a; git switch -q main   # the state dir exists, as in a clone that used tpa
  cd "$root"
}

# The machine may be shared: hyperfine runs the two commands in alternating rounds, and the medians
# are of all the rounds' runs pooled, so a change of load hits both alike. CPU time (user + system,
# hyperfine's means) is shown too: it hardly moves with the load of other processes.
rounds=${ROUNDS:-10}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) * 1000 }'; }
mean() { awk '{ s += $1 } END { print s / NR * 1000 }'; }
printf 'idle post-checkout through each manager: medians of %d runs each (%d alternating rounds), ms\n' "$((runs * rounds))" "$rounds"
for manager in pre-commit lefthook husky; do
  setup "$manager" alone >/dev/null 2>&1; alone=$hook
  setup "$manager" tpa >/dev/null 2>&1; with=$hook
  sha=$(git -C "$work/$manager-tpa" rev-parse HEAD)
  # The first run of each clones or builds what it needs (pre-commit's hook repository).
  (cd "$work/$manager-alone" && "$alone" "$sha" "$sha" 1 >/dev/null 2>&1)
  (cd "$work/$manager-tpa" && "$with" "$sha" "$sha" 1 >/dev/null 2>&1)
  : > "$work/a.wall"; : > "$work/b.wall"; : > "$work/a.cpu"; : > "$work/b.cpu"
  for round in $(seq "$rounds"); do
    out=$work/$manager-$round.json
    hyperfine -N --warmup 3 --runs "$runs" --export-json "$out" \
      "sh -c 'cd $work/$manager-alone && exec $alone $sha $sha 1'" \
      "sh -c 'cd $work/$manager-tpa && exec $with $sha $sha 1'" >/dev/null 2>&1
    jq '.results[0].times[]' "$out" >> "$work/a.wall"; jq '.results[1].times[]' "$out" >> "$work/b.wall"
    jq '.results[0].user + .results[0].system' "$out" >> "$work/a.cpu"
    jq '.results[1].user + .results[1].system' "$out" >> "$work/b.cpu"
  done
  a=$(median < "$work/a.wall"); b=$(median < "$work/b.wall"); ac=$(mean < "$work/a.cpu"); bc_=$(mean < "$work/b.cpu")
  printf '  %-11s alone %7.2f   + tpa %7.2f   ratio %.3f   | cpu alone %7.2f   + tpa %7.2f   ratio %.3f\n' \
    "$manager" "$a" "$b" "$(echo "$b / $a" | bc -l)" "$ac" "$bc_" "$(echo "$bc_ / $ac" | bc -l)"
done
