#!/bin/sh
# Installs tpa and tpa-hook (the git hooks' fast path) into ${PREFIX:-$HOME/.local}/bin.
#
#   ./install.sh               build with cargo (or take prebuilt binaries placed next to this
#                              script as ./tpa and ./tpa-hook) and install; idempotent
#   ./install.sh --uninstall   remove them again (and, inside a repository, its tpa hooks)
#
# Checks git (>= 2.29) and ssh-keygen (OpenSSH >= 8.2, for -Y sign/verify) first. When run inside
# a git repository on a terminal, offers `tpa init` there. Downloads nothing but crates (cargo).
# Building needs Rust >= 1.94 (rustup), a C compiler, and on Linux libdbus-1-dev + pkg-config (the
# OS keyring's Secret Service client).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-$HOME/.local}
bin=$prefix/bin

die() { echo "install.sh: $*" >&2; exit 1; }

if [ "${1:-}" = "--uninstall" ]; then
  if git rev-parse --git-dir >/dev/null 2>&1 && [ -x "$bin/tpa" ]; then
    "$bin/tpa" uninstall || echo "install.sh: could not remove this repository's tpa hooks (see above)" >&2
  fi
  for f in tpa tpa-hook; do
    if [ -e "$bin/$f" ]; then rm -f "$bin/$f" && echo "removed $bin/$f"; fi
  done
  echo "the ledger (refs/notes/tpa), .tpa/ and keyring entries (service \"tpa\") are yours: left in place"
  exit 0
fi
[ $# -eq 0 ] || die "unknown argument $1 (only --uninstall)"

# git: tpa runs it for sync and hooks; --no-write-fetch-head needs 2.29.
command -v git >/dev/null 2>&1 || die "git not found: install git >= 2.29"
git_version=$(git --version | sed -n 's/^git version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
set -- $git_version
[ "${1:-0}" -gt 2 ] || { [ "${1:-0}" -eq 2 ] && [ "${2:-0}" -ge 29 ]; } || die "git $(git --version) is too old: tpa needs 2.29 or later"
# ssh-keygen -Y (signatures over the ledger) arrived in OpenSSH 8.2.
command -v ssh-keygen >/dev/null 2>&1 || die "ssh-keygen not found: install OpenSSH (Debian: openssh-client)"
ssh-keygen -Y sign 2>&1 | grep -q -i "usage\|missing\|namespace\|-f" \
  || die "this ssh-keygen has no -Y sign: tpa needs OpenSSH 8.2 or later"

if [ -x "$here/tpa" ] && [ -x "$here/tpa-hook" ] && [ ! -d "$here/src" ]; then
  echo "installing the prebuilt binaries next to install.sh"
  src_tpa=$here/tpa src_hook=$here/tpa-hook
else
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust >= 1.94 (rustup.rs) first"
  if [ "$(uname -s)" = Linux ] && ! pkg-config --exists dbus-1 2>/dev/null; then
    die "libdbus-1 development files not found: apt-get install libdbus-1-dev pkg-config"
  fi
  (cd "$here" && cargo build --release --locked)
  src_tpa=$here/target/release/tpa src_hook=$here/target/release/tpa-hook
fi
mkdir -p "$bin"
# install(1) replaces the files atomically enough for a running hook; the same bytes again is a no-op.
install -m 0755 "$src_tpa" "$bin/tpa"
install -m 0755 "$src_hook" "$bin/tpa-hook"
echo "installed $bin/tpa and $bin/tpa-hook ($("$bin/tpa" --version))"
case ":$PATH:" in
  *":$bin:"*) ;;
  *) echo "note: $bin is not on your PATH; add it to use tpa" ;;
esac

if git rev-parse --git-dir >/dev/null 2>&1 && [ -t 0 ] && [ -t 1 ]; then
  top=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
  printf 'set up tpa in %s now (tpa init)? [y/N] ' "$top"
  read -r answer || answer=
  case "$answer" in
    y|Y|yes) "$bin/tpa" -C "$top" init ;;
    *) echo "later: cd into the repository and run \`tpa init\`" ;;
  esac
fi
