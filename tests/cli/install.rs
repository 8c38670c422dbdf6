//! install.sh with prebuilt binaries beside it: installs, is idempotent, and --uninstall reverses it.

use std::process::Command;

use crate::common::TPA;

#[test]
fn install_twice_then_uninstall_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kit = dir.path().join("kit");
    std::fs::create_dir(&kit).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/install.sh"), kit.join("install.sh")).unwrap();
    std::fs::copy(TPA, kit.join("tpa")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_tpa-hook"), kit.join("tpa-hook")).unwrap();
    let prefix = dir.path().join("prefix");
    let install = |args: &[&str]| {
        let out = Command::new("sh")
            .arg(kit.join("install.sh"))
            .args(args)
            .current_dir(dir.path())
            .env("PREFIX", &prefix)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = install(&[]);
    assert!(first.contains("installing the prebuilt binaries"), "{first}");
    let installed = prefix.join("bin/tpa");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(TPA).unwrap());
    assert!(prefix.join("bin/tpa-hook").exists());
    install(&[]);
    assert_eq!(std::fs::read_dir(prefix.join("bin")).unwrap().count(), 2, "the same two files again");
    let removed = install(&["--uninstall"]);
    assert!(removed.contains("removed"), "{removed}");
    assert_eq!(std::fs::read_dir(prefix.join("bin")).unwrap().count(), 0);
}

/// The CI templates people copy must parse: a YAML error shows only once a workflow runs.
#[test]
fn every_ci_template_is_valid_yaml() {
    let templates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let script =
        "import sys, yaml\nfor path in sys.argv[1:]:\n    yaml.safe_load(open(path))\n    print(path)";
    let mut files: Vec<_> = std::fs::read_dir(&templates)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    let out = Command::new(crate::common::aws::python()).arg("-c").arg(script).args(&files).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), files.len());
}
