#!/usr/bin/env bash
# The broker (issue 16), two figures with same-run baselines:
#  1. latency: `tpa broker --watch --interval 5s` running; from the approver's push of the approval
#     (`tpa approve` returns) to the requester's credentials in the keyring (`tpa request`, waiting
#     with its default 2 s poll, returns). Median and worst of ROUNDS (10). Aim: under 10 s.
#  2. an idle pass: `tpa broker --once` over a ledger of RECORDS (10,000) records with nothing to
#     do, against `tpa sweep` and `tpa verify` over the same ledger. Aim: under 1 s. The grants are
#     dated FILL_DAYS_AGO (8) days back: a pass and the sweep look after grants that ended within
#     the week besides the open ones, and an organisation's ledger is mostly older than that
#     (FILL_DAYS_AGO=0: every grant ended lately).
#
#     The pass is measured with the records cache of the previous pass (as a watching broker has
#     it) and without it (removed before each run: the first pass after a start or an upgrade);
#     with TPA_BASE (another build, e.g. main's) that build's pass too.
#
#   bench/broker.sh                       # builds release (with the testing feature) once
#   ROUNDS=5 RECORDS=3000 TPA_BIN=target/release/tpa bench/broker.sh
#   ROUNDS=0 TPA_BASE=/tmp/main/tpa bench/broker.sh     # only the idle pass, against another build
#
# TPA_BIN must be built with `--features testing` (part 2 fills the ledger with `tpa debug bulk`).
# Needs git, ssh-keygen, curl, python3, keyctl (the kernel keyring: no D-Bus needed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TPA_BENCH_IN_SESSION:-}" ]; then
  exec env TPA_BENCH_IN_SESSION=1 keyctl session - "$0" "$@"
fi
rounds=${ROUNDS:-10}
records=${RECORDS:-10000}
work=$(mktemp -d /tmp/tpa-bench-broker.XXXXXX)
export HOME=$work/home GIT_CONFIG_GLOBAL=$work/home/.gitconfig GIT_CONFIG_NOSYSTEM=1 TPA_KEYRING=keyutils
mkdir -p "$HOME"
git config --global init.defaultBranch main

if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
tpa=${TPA_BIN:-$PWD/target/release/tpa}
broker=
moto=
trap 'kill $moto $broker 2>/dev/null; rm -rf "$work" 2>/dev/null || true' EXIT
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
printf 'protected_branches = ["main"]\nbrokers = ["tpa-broker@example.com"]\n[groups]\nsre = ["bob@example.com"]\n[roles.bench]\narn = "%s"\nregion = "us-east-1"\nmax_ttl = "1h"\napprovals = 1\napprovers = ["@sre"]\nmint = "broker"\n' \
  "$role_arn" > "$work/alice/.tpa/policy.toml"
git -C "$work/alice" add .tpa; git -C "$work/alice" commit -q -m policy; git -C "$work/alice" push -q origin main 2>/dev/null
for who in bob:bob@example.com broker:tpa-broker@example.com; do
  name=${who%%:*}
  setup "$name" "${who#*:}"
  (cd "$work/$name" && "$tpa" init --signing-key "$work/$name.key" >/dev/null)
  git -C "$work/$name" add .tpa; git -C "$work/$name" commit -q -m "allow $name"
  git -C "$work/$name" pull -q --rebase origin main 2>/dev/null; git -C "$work/$name" push -q origin main 2>/dev/null
done
for name in alice bob broker; do git -C "$work/$name" pull -q --rebase origin main 2>/dev/null; done
git -C "$work/alice" switch -q -c hotfix/bench; git -C "$work/alice" commit -q --allow-empty -m work
git -C "$work/alice" push -q origin hotfix/bench 2>/dev/null

ms() { python3 -c 'import time; print(int(time.monotonic()*1000))'; }
if [ "$rounds" -gt 0 ]; then
(cd "$work/broker" && exec "$tpa" broker --watch --interval 5s --json >"$work/broker.out" 2>"$work/broker.err") &
broker=$!
latencies=()
for round in $(seq 1 "$rounds"); do
  (cd "$work/alice" && "$tpa" request --role bench --reason "BENCH-$round: broker latency" --json >"$work/out.$round" 2>"$work/err.$round"; ms >"$work/done.$round") &
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
  wait "$requester" || { echo "round $round: the request failed" >&2; cat "$work/err.$round" "$work/broker.err" >&2; exit 1; }
  latencies+=($(( $(cat "$work/done.$round") - pushed )))
done
kill $broker 2>/dev/null; wait $broker 2>/dev/null || true; broker=
printf '%s\n' "${latencies[@]}" | sort -n | python3 -c '
import sys
v = [int(x) for x in sys.stdin.read().split()]
print(f"latency, {len(v)} rounds: approval pushed -> credentials in the keyring: median {v[len(v)//2]} ms, worst {v[-1]} ms, best {v[0]} ms (broker --watch --interval 5s, requester poll 2 s)")
'
fi

# Part 2: an idle pass over a large ledger. Ended grants (intent, grant, revoke: three records
# each) on commits of a branch the remote has, pushed, then fetched by the broker.
grants=$(( (records + 2) / 3 ))
git -C "$work/alice" switch -q -c bench/ledger
for i in $(seq 1 "$grants"); do echo "$i" > "$work/alice/f"; git -C "$work/alice" commit -q --allow-empty -m "c$i"; done
git -C "$work/alice" rev-list "bench/ledger" --max-count="$grants" | sed 's|$| refs/heads/bench/ledger|' \
  | (cd "$work/alice" && TPA_TEST_NOW=$(date -u -d "-${FILL_DAYS_AGO:-8} days" +%Y-%m-%dT%H:%M:%SZ) \
      "$tpa" debug bulk --grants --role bench --target "$role_arn" >/dev/null)
git -C "$work/alice" push -q origin bench/ledger 2>/dev/null
(cd "$work/alice" && "$tpa" sync >/dev/null)
(cd "$work/broker" && "$tpa" broker --once --json >/dev/null)   # fetch once: the timed passes find it local
total=$(cd "$work/broker" && "$tpa" log --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
# time_of [--cold] cmd...: median of 5 runs; --cold removes the records cache before each run.
time_of() { python3 - "$(git rev-parse --git-common-dir)/tpa/records-cache" "$@" <<'PY'
import os, subprocess, sys, time
cache, args = sys.argv[1], sys.argv[2:]
cold = args[0] == "--cold"
if cold: args = args[1:]
runs = []
for _ in range(5):
    if cold and os.path.exists(cache): os.remove(cache)
    t = time.monotonic(); subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); runs.append(time.monotonic() - t)
runs.sort(); print(f"{runs[len(runs)//2]*1000:.0f}")
PY
}
cd "$work/broker"
pass=$(time_of "$tpa" broker --once --json)
cold=$(time_of --cold "$tpa" broker --once --json)
base=0
[ -z "${TPA_BASE:-}" ] || base=$(time_of "$TPA_BASE" broker --once --json)
"$tpa" broker --once --json >/dev/null   # the records cache back for the sweep
sweep=$(time_of "$tpa" sweep --json)
verify=$(time_of "$tpa" verify --json)
python3 -c "
p, c, b, s, v = $pass, $cold, $base, $sweep, $verify
print(f'idle pass over {$total} records: broker --once {p} ms (median of 5), {c} ms without the records cache; tpa sweep {s} ms; tpa verify {v} ms; pass/sweep {p/s:.2f}x, pass/verify {p/v:.2f}x')
if b: print(f'  TPA_BASE broker --once {b} ms: this build / base {p/b:.2f}x')
"
