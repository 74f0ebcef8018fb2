//! Builds and runs `examples/freestanding`: a `#![no_std]`, `#![no_main]` static
//! binary with its own `_start` that switches two task fpstates and a guest fpstate
//! with the crate and checks that no register value bleeds between them.

mod testkit;
use std::path::PathBuf;
use std::process::Command;
use testkit::loud;

#[test]
fn freestanding_kernel_style_example_runs_green() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("examples/freestanding/Cargo.toml");
    // Beside the suite's own build: CARGO_TARGET_DIR when it is set.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("freestanding");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the freestanding example must build");
    let out = Command::new(target.join("debug/xstate-freestanding"))
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    match out.status.code() {
        Some(77) => loud!("SKIP freestanding example: {}", stdout.trim()),
        Some(0) => {
            assert!(stdout.contains("freestanding: all checks held"));
            assert_eq!(stdout.matches("ok    ").count(), 6, "six switch checks");
            assert!(!stdout.contains("FAIL"));
        }
        other => panic!("freestanding example exited with {other:?}:\n{stdout}"),
    }
}
