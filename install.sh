#!/bin/sh
# Builds tpa in release mode and installs the binary into ${PREFIX:-$HOME/.local}/bin.
# Needs Rust >= 1.94 (rustup), a C compiler, and on Linux libdbus-1-dev + pkg-config (the OS
# keyring's Secret Service client).
set -eu
cd "$(dirname "$0")"
prefix=${PREFIX:-$HOME/.local}
if ! command -v cargo >/dev/null 2>&1; then
  echo "install.sh: cargo not found: install Rust from https://rustup.rs first" >&2
  exit 1
fi
if [ "$(uname -s)" = Linux ] && ! pkg-config --exists dbus-1 2>/dev/null; then
  echo "install.sh: libdbus-1 development files not found: apt-get install libdbus-1-dev pkg-config" >&2
  exit 1
fi
cargo build --release --locked
mkdir -p "$prefix/bin"
install -m 0755 target/release/tpa "$prefix/bin/tpa"
# The git hooks' fast path (links no AWS SDK); `tpa init` points the hooks at it when it sits beside tpa.
install -m 0755 target/release/tpa-hook "$prefix/bin/tpa-hook"
echo "installed $prefix/bin/tpa and $prefix/bin/tpa-hook"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on your PATH; add it to use tpa" ;;
esac
