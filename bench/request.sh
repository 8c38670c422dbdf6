#!/usr/bin/env bash
# Benchmark `tpa request` vs awscli vs a bare curl POST (see bench/request.py). Starts a moto
# server (bench/moto.sh) and a keyring session; needs curl, jq, git, dbus, gnome-keyring, python3.
#   ROUNDS=30 bench/request.sh
#   GRANTS=1000 bench/request.sh   # with 1,000 ended grants of the user in the ledger first
#   GRANTS=1000 SETTLE=320 ...     # and measured 320 s after the fill's `git gc` (see below)
#   TPA_BASE=/path/to/tpa ...      # another build, in the same rounds, as the baseline
#   SYNC=manual bench/request.sh   # the policy's sync (default "push": each grant is pushed to the
#                                  # clone's remote, a local bare repository here, before tpa returns)
#   KEYRING=keyutils ...           # a headless machine's set-up: the grants' secrets in the kernel
#                                  # keyring and the signing key in a file (default: gnome-keyring's
#                                  # Secret Service holds both)
#   ENDED=1 ...                    # each grant revoked after it is measured and the next request made
#                                  # on a new commit (untimed), so the keyring holds only live grants
#                                  # and a note one grant, as in use (default: both pile up)
#   CREDS=process ...              # the base credentials from a profile's credential_process (a
#                                  # Python script printing the keys, as SSO and vault helpers do),
#                                  # for tpa and awscli alike (default: environment variables)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TPA_BENCH_IN_SESSION:-}" ]; then
  exec env TPA_BENCH_IN_SESSION=1 dbus-run-session -- "$0" "$@"
fi
work=$(mktemp -d /tmp/tpa-bench-request.XXXXXX)
export HOME=$work/home XDG_DATA_HOME=$work/data XDG_RUNTIME_DIR=$work/run GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
mkdir -p "$HOME" "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR"; chmod 700 "$XDG_RUNTIME_DIR"
printf bench | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1

if [ -z "${TPA_BIN:-}" ]; then cargo build --release --features testing --quiet; fi
[ -x bench/.venv-awscli/bin/aws ] || { python3 -m venv bench/.venv-awscli && bench/.venv-awscli/bin/pip install -q awscli; }

moto=
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
. bench/moto.sh
tpa=${TPA_BIN:-$PWD/target/release/tpa}
git init -q --bare "$work/origin.git"
git clone -q "$work/origin.git" "$work/repo" 2>/dev/null
cd "$work/repo"
git config user.email bench@example.com; git config user.name Bench
git commit -q --allow-empty -m root
if [ "${KEYRING:-secret-service}" = keyutils ]; then
  ssh-keygen -q -t ed25519 -N '' -C bench -f "$work/signing-key"
  export TPA_KEYRING=keyutils
  "$tpa" init --signing-key "$work/signing-key" >/dev/null
else
  "$tpa" init >/dev/null
fi
printf 'protected_branches = ["main"]\nsync = "%s"\n[roles.bench]\narn = "%s"\nregion = "us-east-1"\nmax_ttl = "1h"\n' \
  "${SYNC:-push}" "$role_arn" > .tpa/policy.toml
git add .tpa; git commit -q -m policy; git push -q origin HEAD:main 2>/dev/null
git switch -q -c hotfix/bench; git commit -q --allow-empty -m work
# GRANTS=N: a ledger with N ended grants of this user first (intent, grant, revoke each, on N
# commits of an old hotfix branch), as a clone in use for a while has: what a request reads of
# the ledger and the keyring then shows.
if [ "${GRANTS:-0}" -gt 0 ]; then
  awk -v n="$GRANTS" -v base="$(git rev-parse HEAD~1)" 'BEGIN {
    for (i = 1; i <= n; i++) {
      printf "commit refs/heads/hotfix/old\ncommitter B <b@example.com> %d +0000\ndata %d\nc%d\n", 1700000000 + i, length("c" i), i
      if (i == 1) printf "from %s\n", base
      printf "\n"
    }
  }' | git fast-import --quiet
  git rev-list refs/heads/hotfix/old --max-count="$GRANTS" | sed 's|$| refs/heads/hotfix/old|' \
    | "$tpa" debug bulk --grants --role bench --target "$role_arn" >/dev/null
  git gc -q
  # SETTLE=S: wait S seconds after the fill's gc before measuring. ext4 skips inodes freed in the
  # last minutes when it allocates one (find_inode_bit, recently_deleted), so right after gc has
  # deleted thousands of loose objects, every file created (a loose object, a lock) costs more.
  sleep "${SETTLE:-0}"
fi
cd - >/dev/null
if [ "${CREDS:-env}" = process ]; then
  printf '#!/usr/bin/env python3\nimport json\nprint(json.dumps({"Version": 1, "AccessKeyId": "%s", "SecretAccessKey": "%s"}))\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > "$work/credential-helper"
  chmod +x "$work/credential-helper"
  printf '[profile bench]\ncredential_process = %s\n' "$work/credential-helper" > "$work/aws-config"
  export AWS_CONFIG_FILE=$work/aws-config AWS_PROFILE=bench
  unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
fi
python3 bench/request.py "$tpa" "$work/repo" "$endpoint" "$role_arn" "$PWD/bench/.venv-awscli/bin/aws"
