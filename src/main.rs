//! The `tpa` command.

use std::process::ExitCode;

fn main() -> ExitCode {
    bound_memory();
    tpa::cli::main()
}

/// libgit2's pack windows: how much of a pack one window maps, and all windows together
/// (libgit2's defaults: 1 GiB and 8 GiB). A full check of an organisation's ledger reads about
/// 5 GB through them (every notes commit's tree), and with the defaults every page it touched
/// stays resident: the pack, about 240 MB at 100,000 grants, all of it.
const PACK_WINDOW_BYTES: usize = 32 << 20;
const PACK_WINDOWS_MAPPED_BYTES: usize = 64 << 20;

/// glibc's malloc, as (its own environment variable, option, value): at most two arenas (by
/// default up to one per thread, here the main thread and a worker per core, each keeping what
/// was freed in it), and every block of 128 KiB or more mapped on its own and unmapped when freed.
/// glibc's default raises that threshold to the size of the largest block freed so far (up to 32
/// MiB), after which the check's large vectors come from the arenas and their space, once freed,
/// stays resident between smaller blocks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_OPTIONS: [(&str, libc::c_int, libc::c_int); 2] = [
    ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
    ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 << 10),
];

/// Bounds the resident memory of a large check (the audit of an organisation's ledger: at
/// 100,000 grants its peak went from 435 MiB to 258 MiB with these and the audit's shared
/// strings, for a fifth more time; docs/audit.md). A small repository never reaches the bounds.
#[allow(unsafe_code)]
fn bound_memory() {
    // SAFETY: these write C globals of libgit2 and glibc with no synchronisation, so they must run
    // before any other thread of this process exists and before libgit2 opens a repository: they
    // are the first thing `main` does, and nothing in this binary starts a thread before `main`.
    // They change how much is mapped or kept at once, never what is read.
    unsafe {
        // These fail only on an option libgit2 does not know, and the vendored one knows them.
        let _ = git2::opts::set_mwindow_size(PACK_WINDOW_BYTES);
        let _ = git2::opts::set_mwindow_mapped_limit(PACK_WINDOWS_MAPPED_BYTES);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        for (variable, option, value) in MALLOC_OPTIONS {
            // Whoever set glibc's own variable for an option has the last word.
            if std::env::var_os(variable).is_none() {
                libc::mallopt(option, value);
            }
        }
    }
}
