//! Builds `examples/kernel` (a bootable ring-0 kernel), boots it under QEMU's TCG
//! and reads its report: the crate's XSETBV rules against the CPU's #GP, user
//! tasks and kernel threads preempted by a timer, their fpstates run by the
//! crate's lifecycle layer (saves on the switch, loads on the return to task
//! code, skipped where the CPU still holds the task's registers, a kernel SIMD
//! section in the timer interrupt), and no register value of one task, or of a
//! section, ever seen by another task.
//!
//! Five boots: `-cpu max` (XSAVEOPT, XGETBV1, AVX, MPX, PKU), `-cpu Haswell-v4`
//! (no XGETBV1, no MPX, no PKU: other choices), `-cpu max,-xsaveopt` (plain
//! XSAVE), `-cpu max,-avx2` (the kernel's SIMD sections over XMM with SSE2
//! instead of YMM), and `-cpu max` with the layer's section invalidation dropped
//! (`-append sabotage`), which the checks must catch. Without
//! `qemu-system-x86_64`, or without the kernel's target (`x86_64-unknown-none`), each
//! test prints a SKIP line naming what is missing.

mod testkit;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testkit::loud;

const QEMU: &str = "qemu-system-x86_64";
/// QEMU's exit status for the kernel's success value 0x10 on isa-debug-exit:
/// `(0x10 << 1) | 1`. Status 0 is a triple fault, never a pass.
const PASS: i32 = 33;
/// The kernel's failure value 0x11.
const FAIL: i32 = 35;
const TIMEOUT: Duration = Duration::from_secs(180);

fn qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(QEMU))
        .find(|p| p.is_file())
}

/// Where the kernel is built: `target/kernel` under CARGO_TARGET_DIR if set,
/// else under this package's `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d).join("kernel"),
        None => root.join("target/kernel"),
    }
}

/// The kernel's target, `examples/kernel/.cargo/config.toml`'s.
const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Whether the toolchain running this test has the kernel's target
/// (`rustup target add x86_64-unknown-none`): its library directory exists.
fn kernel_target_installed() -> bool {
    Command::new("rustc")
        .args(["--print", "target-libdir", "--target", KERNEL_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|d| d.is_dir())
}

/// The kernel image, built once per test binary.
fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = target_dir(&root);
        // The kernel's own .cargo/config.toml (static relocation) is read from its
        // directory; flags inherited from the outer cargo must not override it.
        // RUSTUP_TOOLCHAIN stays: without it rustup may pick another toolchain
        // than the one running this test.
        let status = Command::new(env!("CARGO"))
            .current_dir(root.join("examples/kernel"))
            .args(["build", "--quiet", "--target-dir"])
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "examples/kernel must build");
        target.join(KERNEL_TARGET).join("debug/xstate-kernel")
    })
}

/// What one boot printed and how QEMU ended.
struct Boot {
    status: Option<i32>,
    out: String,
    tasks: u64,
    switches: u64,
    bleeds: u64,
    mode: String,
    xcr0: u64,
    /// `kernel: elided E of R restores, K kernel SIMD sections`.
    elided: u64,
    restores: u64,
    sections: u64,
}

impl Boot {
    /// The value after `key` on the first line starting with `prefix`.
    fn field(&self, prefix: &str, key: &str) -> Option<&str> {
        let line = self.out.lines().find(|l| l.starts_with(prefix))?;
        let rest = &line[line.find(key)? + key.len()..];
        rest.split([',', ' ', ';', '(']).find(|s| !s.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        self.field("xstate: xsaveopt", &format!("{name} ")) == Some("yes")
    }
}

/// The final line: `kernel: T tasks, S switches, B bleeds, mode M, xcr0 X`.
fn parse_final(out: &str) -> (u64, u64, u64, String, u64) {
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("kernel: ") && l.contains(" tasks, "))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one final line:\n{out}");
    let w: Vec<&str> = lines[0]
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .collect();
    let shape = w.len() == 11
        && [w[2], w[4], w[6], w[7], w[9]] == ["tasks", "switches", "bleeds", "mode", "xcr0"];
    assert!(shape, "final line shape: {}", lines[0]);
    let num = |s: &str| s.parse::<u64>().expect("a number");
    let xcr0 = u64::from_str_radix(w[10].trim_start_matches("0x"), 16).expect("hex xcr0");
    (num(w[1]), num(w[3]), num(w[5]), w[8].to_string(), xcr0)
}

/// The lifecycle line: `kernel: elided E of R restores, K kernel SIMD sections`.
fn parse_lifecycle(out: &str) -> (u64, u64, u64) {
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("kernel: elided "))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one lifecycle line:\n{out}");
    let w: Vec<&str> = lines[0]
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .collect();
    let shape = w.len() == 10
        && [w[1], w[3], w[5], w[7], w[8], w[9]]
            == ["elided", "of", "restores", "kernel", "SIMD", "sections"];
    assert!(shape, "lifecycle line shape: {}", lines[0]);
    let num = |s: &str| s.parse::<u64>().expect("a number");
    (num(w[2]), num(w[4]), num(w[6]))
}

/// Boot the kernel on QEMU CPU model `cpu` with command line `append`; `None`
/// (after a SKIP line) without QEMU.
fn boot(test: &str, cpu: &str, append: &str) -> Option<Boot> {
    let Some(qemu) = qemu() else {
        loud!("SKIP {test}: {QEMU} not found on PATH (Debian: apt-get install qemu-system-x86)");
        return None;
    };
    if !kernel_target_installed() {
        loud!(
            "SKIP {test}: the {KERNEL_TARGET} target is not installed for this toolchain \
             (rustup target add {KERNEL_TARGET})"
        );
        return None;
    }
    let kernel = kernel();
    let mut child = Command::new(qemu)
        .args(["-accel", "tcg", "-cpu", cpu, "-m", "64", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-monitor", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        // Virtual time from the instruction count: the timer lands at the same
        // instructions on every run, so the figures repeat.
        .args(["-icount", "shift=4,sleep=off"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu starts");
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait works") {
            break st;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            panic!("{test}: QEMU -cpu {cpu} still running after {TIMEOUT:?}:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let out = reader.join().expect("reader thread").replace('\r', "");
    loud!(
        "{test}: -cpu {cpu} {append}: status {:?} after {:.2} s",
        status.code(),
        start.elapsed().as_secs_f64()
    );
    print!("{out}");
    if !err.is_empty() {
        loud!("{test}: QEMU stderr: {}", err.trim());
    }
    let (tasks, switches, bleeds, mode, xcr0) = parse_final(&out);
    let (elided, restores, sections) = parse_lifecycle(&out);
    for line in out
        .lines()
        .filter(|l| l.starts_with("kernel: elided ") || l.contains(" tasks, "))
    {
        loud!("{test}: {line}");
    }
    Some(Boot {
        status: status.code(),
        out,
        tasks,
        switches,
        bleeds,
        mode,
        xcr0,
        elided,
        restores,
        sections,
    })
}

/// The save/restore pair Linux's `os_xsave`/`os_xrstor` use in ring 0, from the
/// XSAVE extensions the kernel printed (CPUID(0xD,1).EAX): the independent
/// expectation for the crate's choice.
fn linux_mode(b: &Boot) -> &'static str {
    if b.flag("xsaves") {
        "xsaves/xrstors"
    } else if b.flag("xsavec") {
        "xsavec/xrstor"
    } else if b.flag("xsaveopt") {
        "xsaveopt/xrstor"
    } else {
        "xsave/xrstor"
    }
}

fn assert_clean(test: &str, b: &Boot) {
    assert_eq!(b.status, Some(PASS), "{test}: QEMU status:\n{}", b.out);
    assert!(b.tasks >= 3, "{test}: T = {}", b.tasks);
    assert!(b.switches >= 10_000, "{test}: S = {}", b.switches);
    assert_eq!(b.bleeds, 0, "{test}: B");
    assert!(
        !b.out.contains("FAIL"),
        "{test}: a check failed:\n{}",
        b.out
    );
    assert_eq!(b.mode, linux_mode(b), "{test}: the crate's instructions");
    // Every XSETBV probe: the crate's verdict is the CPU's.
    let verdicts = b
        .out
        .lines()
        .find(|l| l.starts_with("xsetbv: ") && l.contains(" verdicts agree"))
        .expect("an XSETBV summary line");
    let w: Vec<&str> = verdicts.split(' ').collect();
    assert!(w.len() > 3 && w[1] == w[3], "{test}: {verdicts}");
    assert!(w[3].parse::<u32>().unwrap_or(0) >= 6, "{test}: {verdicts}");
    // Every task checked many times, and many checks spanned a switch; the
    // kernel threads ran.
    let tasks: Vec<&str> = b.out.lines().filter(|l| l.starts_with("task ")).collect();
    assert_eq!(tasks.len() as u64, b.tasks, "{test}: one line per task");
    let (kthreads, user): (Vec<&str>, Vec<&str>) = tasks
        .into_iter()
        .partition(|t| t.contains("(kernel thread)"));
    assert!(user.len() >= 3, "{test}: user tasks: {user:?}");
    assert!(!kthreads.is_empty(), "{test}: no kernel thread:\n{}", b.out);
    for k in kthreads {
        let slices: u64 = k
            .split(' ')
            .nth(4)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{test}: slices in {k}"));
        assert!(slices >= 1_000, "{test}: {k}");
        assert!(k.ends_with("no fpstate"), "{test}: {k}");
    }
    for t in user {
        let n = |key: &str| -> u64 {
            let i = t.find(key).unwrap_or_else(|| panic!("{key} in {t}"));
            let head = t[..i].trim_end();
            head[head.rfind(' ').map_or(0, |p| p + 1)..]
                .parse()
                .expect("a count")
        };
        assert!(n(" checks") >= 1_000, "{test}: {t}");
        assert!(n(" across a switch") >= 100, "{test}: {t}");
        assert_eq!(n(" bleeds"), 0, "{test}: {t}");
        assert_eq!(n(" wrong"), 0, "{test}: {t}");
    }
    // The lifecycle: sections computed, restores skipped, and exactly the
    // ones the scheduler's own one-CPU account allows.
    assert!(b.sections >= 1_000, "{test}: K = {}", b.sections);
    assert!(
        b.elided >= 1 && b.elided < b.restores,
        "{test}: E = {} of R = {}",
        b.elided,
        b.restores
    );
    let account = b
        .out
        .lines()
        .find(|l| l.starts_with("lifecycle: "))
        .expect("a lifecycle account line");
    assert!(account.ends_with(": agree"), "{test}: {account}");
    let simd = b
        .out
        .lines()
        .find(|l| l.starts_with("simd: "))
        .expect("a simd line");
    assert!(
        simd.contains(&format!("{} sums right, 0 wrong", b.sections)),
        "{test}: {simd}"
    );
}

fn max() -> Option<&'static Boot> {
    static MAX: OnceLock<Option<Boot>> = OnceLock::new();
    MAX.get_or_init(|| boot("kernel_boot max", "max", ""))
        .as_ref()
}

#[test]
fn requires_qemu_kernel_switches_fpstates_without_bleeds_on_tcg_max() {
    let Some(b) = max() else { return };
    assert_clean("tcg max", b);
    // The sections computed over YMM registers (TCG max has AVX2).
    assert!(b.out.contains("sums right") && b.out.contains("over ymm (AVX2 vpaddq)"));
    // QEMU 7.2's TCG max: XSAVEOPT and XGETBV1, and PKRU and MPX in XCR0.
    assert!(b.flag("xgetbv1"), "max has XGETBV1:\n{}", b.out);
    assert!(b.xcr0 & (1 << 9) != 0, "PKRU enabled: {:#x}", b.xcr0);
    assert!(
        b.out.contains("OSXSAVE, PKE"),
        "CR4.PKE set where PKU exists"
    );
    // The quiet task's XINUSE was read and checked after switches.
    let quiet = b
        .out
        .lines()
        .find(|l| l.contains("(quiet)"))
        .expect("a quiet task");
    assert!(
        !quiet.contains("xinuse 0 checked"),
        "XINUSE checked: {quiet}"
    );
    // XSAVEOPT's init optimisation, read back from the fpstates: the quiet task
    // never loaded bounds, so its last save left XSTATE_BV[3] (BNDREGS) clear;
    // a wide task's has it set.
    let bv = |task: &str| -> u64 {
        let line = b.out.lines().find(|l| l.starts_with(task)).expect(task);
        let hex = line.rsplit("saved xstate_bv 0x").next().unwrap_or("");
        u64::from_str_radix(hex.trim(), 16).expect("saved xstate_bv")
    };
    assert_eq!(
        bv("task 3 (quiet)") & (1 << 3),
        0,
        "quiet task's BNDREGS init"
    );
    assert_ne!(
        bv("task 0 (wide)") & (1 << 3),
        0,
        "wide task's BNDREGS in use"
    );
}

#[test]
fn requires_qemu_kernel_makes_other_choices_on_haswell() {
    let Some(h) = boot("kernel_boot Haswell-v4", "Haswell-v4", "") else {
        return;
    };
    assert_clean("Haswell-v4", &h);
    assert!(h.out.contains("over ymm (AVX2 vpaddq)"), "AVX2 sections");
    let Some(m) = max() else { return };
    // Fewer features, other choices: no XGETBV1, a smaller XCR0 (no MPX, no
    // PKRU), a smaller fpstate.
    assert!(!h.flag("xgetbv1"), "Haswell-v4 has no XGETBV1:\n{}", h.out);
    assert_ne!(h.xcr0, m.xcr0, "XCR0 differs between the models");
    assert_eq!(h.xcr0 & !m.xcr0, 0, "Haswell's XCR0 within max's");
    let size = |b: &Boot| b.field("fpstate: ", " contexts of ").map(str::to_string);
    assert_ne!(size(&h), size(m), "fpstate sizes differ");
}

#[test]
fn requires_qemu_kernel_catches_a_sabotaged_switch() {
    // The same kernel on a layer that drops one invalidation: a kernel SIMD
    // section leaves the owner record to the task it interrupted, so that
    // task's next load is skipped over the section's values, and the checks
    // must say so.
    let Some(b) = boot("kernel_boot sabotage", "max", "sabotage") else {
        return;
    };
    assert_eq!(b.status, Some(FAIL), "a sabotaged run fails:\n{}", b.out);
    assert!(b.bleeds > 0, "bleeds seen: {}", b.bleeds);
    assert!(b.out.contains("bleed: task "), "the first bleed is named");
    assert!(
        b.out.contains("Rule::SectionDropsOwner"),
        "the rule dropped"
    );
    // The sections ran, and the layer skipped loads the one-CPU account forbids.
    assert!(b.sections >= 1_000, "K = {}", b.sections);
    let Some(m) = max() else { return };
    assert_eq!(b.restores, m.restores, "the same returns needed a load");
    assert!(b.elided > m.elided, "E {} vs {} clean", b.elided, m.elided);
    let account = b
        .out
        .lines()
        .find(|l| l.starts_with("lifecycle: "))
        .expect("a lifecycle account line");
    assert!(account.ends_with("FAIL differ"), "{account}");
}

/// A CPU with XSAVE but no XSAVEOPT (`-cpu max,-xsaveopt`): the crate must
/// save with plain XSAVE, as Linux does (it once picked XSAVEOPT there, a #UD
/// in ring 0).
#[test]
fn requires_qemu_kernel_uses_plain_xsave_without_xsaveopt() {
    let Some(b) = boot("kernel_boot no-xsaveopt", "max,-xsaveopt", "") else {
        return;
    };
    assert!(!b.flag("xsaveopt"), "XSAVEOPT still enumerated:\n{}", b.out);
    assert_clean("max,-xsaveopt", &b);
    assert_eq!(b.mode, "xsave/xrstor");
}

/// A CPU with AVX but no AVX2 (`-cpu max,-avx2`): the kernel SIMD sections
/// compute with SSE2 over XMM registers instead, and the run is as clean.
#[test]
fn requires_qemu_kernel_sections_over_xmm_without_avx2() {
    let Some(b) = boot("kernel_boot no-avx2", "max,-avx2", "") else {
        return;
    };
    assert_clean("max,-avx2", &b);
    assert!(
        b.out.contains("over xmm (SSE2 paddq)"),
        "SSE2 sections:\n{}",
        b.out
    );
}
