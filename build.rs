//! Names the commit tpa is built from, for `tpa --version`: sets `TPA_BUILD_COMMIT` to the short
//! hash (with `, modified` when the checkout has changes), or `unknown` outside a git checkout (a
//! crates tarball). Never fails the build: every git problem falls back to `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    let commit = commit(&dir).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TPA_BUILD_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    for path in watched(&dir) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        // Never refresh (write) the index: that would change a watched file and rebuild every time.
        .arg("--no-optional-locks")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

fn commit(dir: &Path) -> Option<String> {
    let hash = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let dirty = git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}, modified") } else { hash })
}

/// HEAD, the ref it points to (loose or packed) and the index, in this worktree and the common git
/// dir. Only paths that exist: cargo reruns a build script every time for a missing one.
fn watched(dir: &Path) -> Vec<PathBuf> {
    let absolute = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { dir.join(p) }
    };
    let Some(git_dir) = git(dir, &["rev-parse", "--git-dir"]).map(absolute) else {
        return Vec::new();
    };
    let common =
        git(dir, &["rev-parse", "--git-common-dir"]).map(absolute).unwrap_or_else(|| git_dir.clone());
    let mut paths = vec![git_dir.join("HEAD"), git_dir.join("index"), common.join("packed-refs")];
    if let Some(refname) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        paths.push(git_dir.join(&refname));
        paths.push(common.join(&refname));
    }
    paths.sort();
    paths.dedup();
    paths.retain(|p| p.is_file());
    paths
}
