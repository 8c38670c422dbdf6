# Sourced by the bench scripts that measure on the audit benchmark's ledgers (bench/grants.sh,
# bench/sweep.sh): the build under test ($tpa, built when TPA_BIN is unset), another build
# ($base_tpa, from TPA_BASE, may be empty), the sizes ($sizes), and $WORK, a kept `bench/audit.sh`
# work dir (one is made when WORK is unset), with the environment its ledgers were signed in; a
# $scratch dir removed on exit; median_ms FILE N (hyperfine's JSON), peak_mib COMMAND..., and
# work_on N: into a copy of the N-grant ledger ($repo), on a new branch hotfix/bench-open.
sizes=${SIZES:-"1000 10000 100000"}
if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
tpa=${TPA_BIN:-$PWD/target/release/tpa}
base_tpa=${TPA_BASE:-}
if [ -z "${WORK:-}" ]; then
  WORK=$(KEEP=1 SIZES="$sizes" TPA_BIN="$tpa" bench/audit.sh | tee /dev/stderr | sed -n 's/^work dir: \(.*\) (kept)$/\1/p')
fi
export HOME=$WORK/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 TZ=UTC TPA_SIGNING_KEY=$WORK/key
scratch=$(mktemp -d "/tmp/tpa-bench-${bench_name:-ledgers}.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
median_ms() { jq ".results[$2].median * 1000" "$1"; }
peak_mib() { /usr/bin/time -f %M -o "$scratch/rss" "$@" >/dev/null 2>&1 || true; echo $(($(cat "$scratch/rss") / 1024)); }
work_on() {
  repo=$scratch/r$1
  cp -a "$WORK/r$1" "$repo"
  cd "$repo"
  git switch -q -c hotfix/bench-open
}
