//! Write BENCHMARKS.md from criterion's results.
//!
//! ```sh
//! cargo bench && cargo run --release --example bench-report
//! ```
//!
//! Reads every `<group>/<function>/<parameter>/new/estimates.json` under
//! `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else `target/criterion`
//! (or `--criterion DIR`), takes the median's point estimate and 95% interval, and
//! writes `BENCHMARKS.md` (or `--out FILE`): the machine, the command, one table
//! per bench area with ratios and the goals shown met or missed, and the per-task
//! fpstate memory of this CPU and of every dump in `layouts/` (computed here).
//!
//! Results older than the newest one by more than [`STALE_SECS`] are treated as
//! left over from an earlier run and ignored (the row then says it is missing).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;
use std::{env, fs};

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{LiveCpuid, RecordedCpuid};
use xstate::enumerate::Enumeration;

/// Results this much older than the newest are from another run.
const STALE_SECS: u64 = 3 * 3600;
const COMMAND: &str = "cargo bench && cargo run --release --example bench-report";
const SPR: &str = include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt");

/// One criterion result: the median and its 95% confidence interval, in ns.
#[derive(Clone, Copy, Debug)]
struct Est {
    median: f64,
    lo: f64,
    hi: f64,
}

/// The number after `"key":` at or after `from` in `s`.
fn number_after(s: &str, from: usize, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let at = s[from..].find(&pat)? + from + pat.len();
    let rest = &s[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The median of an `estimates.json` (`"median":{"confidence_interval":{...,
/// "lower_bound":L,"upper_bound":U},"point_estimate":X,...}`).
fn parse_estimates(s: &str) -> Option<Est> {
    let m = s.find("\"median\":{")?;
    Some(Est {
        median: number_after(s, m, "point_estimate")?,
        lo: number_after(s, m, "lower_bound")?,
        hi: number_after(s, m, "upper_bound")?,
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let p = ent.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.file_name().is_some_and(|n| n == "estimates.json")
            && p.parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "new")
        {
            out.push(p);
        }
    }
}

/// Every fresh result, keyed `group/function/parameter`; and the stale ones.
fn load(root: &Path) -> (BTreeMap<String, Est>, Vec<String>) {
    let mut files = Vec::new();
    walk(root, &mut files);
    let mtime = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    let newest = files.iter().map(|p| mtime(p)).max().unwrap_or(0);
    let mut res = BTreeMap::new();
    let mut stale = Vec::new();
    for p in files {
        let Some(bench_dir) = p.parent().and_then(Path::parent) else {
            continue;
        };
        let Ok(rel) = bench_dir.strip_prefix(root) else {
            continue;
        };
        let key = rel.to_string_lossy().replace('\\', "/");
        if mtime(&p) + STALE_SECS < newest {
            stale.push(key);
            continue;
        }
        if let Some(e) = fs::read_to_string(&p)
            .ok()
            .as_deref()
            .and_then(parse_estimates)
        {
            res.insert(key, e);
        }
    }
    (res, stale)
}

fn criterion_dir(args: &[String]) -> PathBuf {
    if let Some(i) = args.iter().position(|a| a == "--criterion") {
        return PathBuf::from(&args[i + 1]);
    }
    if let Some(h) = env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("criterion")
}

fn ns(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.2} µs", x / 1000.0)
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else if x >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn est(e: Est) -> String {
    format!("{} [{}–{}]", ns(e.median), ns(e.lo), ns(e.hi))
}

fn cmd(c: &str, args: &[&str]) -> String {
    Command::new(c)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn machine(out: &mut String, e: &Enumeration) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map_or("?".to_string(), |(_, v)| v.trim().to_string())
    };
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let hyper = field("flags").split_whitespace().any(|f| f == "hypervisor");
    let xcr0 = xstate::insn::read_xcr0().map_or(0, |x| x.bits());
    let xinuse = if e.xgetbv1 { "yes" } else { "no" };
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| CPU | {} ({} logical CPUs{}) |",
        field("model name"),
        cpus,
        if hyper {
            ", virtual machine: CPUID hypervisor bit set"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "| kernel | {} |",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(out, "| XCR0 | {xcr0:#x} |");
    let _ = writeln!(
        out,
        "| CPUID(0xD,1) | XSAVEOPT {}, XSAVEC {}, XGETBV1 {xinuse}, XSAVES {}, XFD {}; IA32_XSS supported {:#x} |",
        e.xsaveopt,
        e.xsavec,
        e.xsaves,
        e.xfd,
        e.xss_supported().bits()
    );
    let _ = writeln!(
        out,
        "| /dev/kvm | {} |",
        if Path::new("/dev/kvm").exists() {
            "present"
        } else {
            "absent"
        }
    );
    let _ = writeln!(out, "| rustc | {} |", cmd("rustc", &["-V"]));
    let _ = writeln!(
        out,
        "| report written | {} (load average then: {}) |",
        cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        out,
        "\nThe figures come from a **shared 2-core VM**: other processes (builds, tests) may have \
         run during the measurement, so single figures can be a few percent off; each is \
         criterion's median over 30 samples (2 s of measurement, 0.5 s warm-up; 1 s / 0.3 s for \
         the pure layout queries) with its 95% confidence interval in brackets. All times in ns \
         unless marked.\n"
    );
}

fn save_restore(out: &mut String, r: &BTreeMap<String, Est>, e: &Enumeration) -> Vec<String> {
    let mut verdicts = Vec::new();
    let xcr0 = xstate::insn::read_xcr0().unwrap_or(XFeatures::empty());
    let _ = writeln!(
        out,
        "## 1. Save + restore: bare instructions against the crate\n"
    );
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench save_restore`. One iteration = save into buffer B, then \
         XRSTOR from B (RFBM = the mask). `bare`: the instruction wrappers of `xstate::insn` on a \
         raw 64-byte aligned buffer. `crate`: `Fpstate::save` + `Fpstate::restore` in `Mode::User` \
         (XSAVEC; XSAVEOPT for a standard-form config, made by hiding XSAVEC/XSAVES from this \
         CPU's enumeration), and `Cpu` as an `XsaveUnit` for XSAVE (fpstates never use plain \
         XSAVE). `dirty`: before each timed batch every component of the mask is loaded with a \
         non-init pattern (XRSTOR of an image); `init`: XRSTOR with XSTATE_BV = 0. Within the \
         batch, each iteration's XRSTOR re-establishes that state for the next save, on both \
         sides alike; after each batch the saved XSTATE_BV is checked (the bench prints `WARN` if \
         the state was not the intended one). Goal: crate / bare <= 1.02 at the median.\n"
    );
    let _ = writeln!(
        out,
        "| mask | state | pair | bytes | bare | crate | crate / bare | goal <= 1.02 |\n|---|---|---|---|---|---|---|---|"
    );
    for mask in [0x3u64, 0x7, 0xe7, 0x600e7] {
        let m = XFeatures::from_bits_retain(mask);
        for state in ["init", "dirty"] {
            for (pair, insn) in [
                ("XSAVEC+XRSTOR", "xsavec"),
                ("XSAVE+XRSTOR", "xsave"),
                ("XSAVEOPT+XRSTOR", "xsaveopt"),
            ] {
                let p = format!("{mask:#x}-{state}");
                let bare = r.get(&format!("save_restore/{insn}-bare/{p}"));
                let krate = r.get(&format!("save_restore/{insn}-crate/{p}"));
                let bytes = if !xcr0.contains(m) {
                    "-".to_string()
                } else if insn == "xsavec" {
                    e.compacted_size(m).to_string()
                } else {
                    e.standard_size(m).to_string()
                };
                match (bare, krate) {
                    (Some(&b), Some(&c)) => {
                        let ratio = c.median / b.median;
                        let overlap = c.lo <= b.hi && b.lo <= c.hi;
                        let v = if ratio <= 1.02 {
                            "met".to_string()
                        } else if overlap {
                            "**missed** (95% intervals overlap: may be noise)".to_string()
                        } else {
                            format!("**missed** (+{} ns)", ns(c.median - b.median))
                        };
                        if ratio > 1.02 {
                            verdicts
                                .push(format!("save/restore {pair} {mask:#x} {state}: {ratio:.3}"));
                        }
                        let _ = writeln!(
                            out,
                            "| {mask:#x} | {state} | {pair} | {bytes} | {} | {} | {ratio:.3} | {v} |",
                            est(b),
                            est(c)
                        );
                    }
                    _ => {
                        let why =
                            if m.contains(XFeatures::XTILE) && !xcr0.contains(XFeatures::XTILE) {
                                format!(
                                    "not measured: AMX not in XCR0 ({:#x}) on this CPU",
                                    xcr0.bits()
                                )
                            } else {
                                "not measured: no result (bench not run?)".to_string()
                            };
                        let _ = writeln!(
                            out,
                            "| {mask:#x} | {state} | {pair} | {bytes} | - | - | - | {why} |"
                        );
                    }
                }
            }
        }
    }
    let _ = writeln!(out);
    verdicts
}

fn lesser_dynamic(out: &mut String, r: &BTreeMap<String, Est>, e: &Enumeration) {
    let _ = writeln!(out, "## 2. The lesser dynamic cost, on silicon\n");
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench lesser_dynamic`. CET_S cannot be restored from user space; \
         its stand-in is the AVX-512 opmask (component 5, 64 bytes; CET_S is 24). One iteration: \
         `kmovq k1` (opmask in use, as a guest's CET_S is when the host state comes back) then \
         XRSTOR with RFBM = base | opmask from a compacted buffer where the opmask is (a) absent \
         from XCOMP_BV (a host fpstate under the lesser dynamic scheme), (b) present with its \
         XSTATE_BV bit clear (\"eat the bytes\": every fpstate has the space), (c) present and in \
         use. The other components of the base are dirty. After each batch an XSAVEC checks the \
         opmask ended init (a, b) or loaded (c).\n"
    );
    let _ = writeln!(
        out,
        "| base | variant | buffer bytes | XRSTOR (+kmovq) | vs (a) |\n|---|---|---|---|---|"
    );
    let mut deltas: Vec<(f64, f64, bool)> = Vec::new();
    for (name, base) in [("avx512", 0xc7u64), ("legacy", 0x3)] {
        let b = XFeatures::from_bits_retain(base);
        let a = r.get(&format!("lesser_dynamic/a-absent/{name}")).copied();
        for (v, label, size) in [
            (
                "a-absent",
                "(a) absent from XCOMP_BV, in RFBM",
                e.compacted_size(b),
            ),
            (
                "b-init-in-buffer",
                "(b) in XCOMP_BV, XSTATE_BV bit clear",
                e.compacted_size(b | XFeatures::OPMASK),
            ),
            (
                "c-in-use",
                "(c) in XCOMP_BV and in use",
                e.compacted_size(b | XFeatures::OPMASK),
            ),
        ] {
            match (r.get(&format!("lesser_dynamic/{v}/{name}")), a) {
                (Some(&x), Some(a)) => {
                    deltas.push((
                        x.median - a.median,
                        x.median / a.median,
                        x.lo <= a.hi && a.lo <= x.hi,
                    ));
                    let _ = writeln!(
                        out,
                        "| {name} ({base:#x}) | {label} | {size} | {} | {:+.2} ns ({:.3}) |",
                        est(x),
                        x.median - a.median,
                        x.median / a.median
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "| {name} ({base:#x}) | {label} | {size} | - | not measured |"
                    );
                }
            }
        }
    }
    if let Some(&(d, q, _)) = deltas.iter().max_by(|a, b| a.0.abs().total_cmp(&b.0.abs())) {
        let overlap = deltas.iter().all(|x| x.2);
        let _ = writeln!(
            out,
            "\nLargest difference from (a): {d:+.2} ns ({q:.3}); the 95% intervals of (b) and (c) \
             {} those of (a).",
            if overlap {
                "all overlap"
            } else {
                "do not all overlap"
            }
        );
    }
    if let (Some(big), Some(small)) = (
        r.get("lesser_dynamic/a-absent/avx512"),
        r.get("lesser_dynamic/a-absent/legacy"),
    ) {
        let big_size = e.compacted_size(XFeatures::from_bits_retain(0xc7));
        let _ = writeln!(
            out,
            "For scale: the same XRSTOR over the 0xc7 buffer ({big_size} bytes) costs {} ns \
             against {} ns over the 0x3 buffer (576 bytes): {:+.2} ns for {} more bytes of state.",
            ns(big.median),
            ns(small.median),
            big.median - small.median,
            big_size - 576
        );
    }
    let _ = writeln!(out);
}

fn layout(out: &mut String, r: &BTreeMap<String, Est>) -> Vec<String> {
    let mut verdicts = Vec::new();
    let _ = writeln!(out, "## 3. Layout queries\n");
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench layout`. `precomputed`: `Layout::offset_of` / `Layout::size` \
         on a layout built beforehand. `loop`: the straightforward per-query walk over the \
         components below (SDM vol. 1 13.4.3: align, add sizes). `enumeration`: \
         `Enumeration::compacted_size`, the crate's own call that sums on each query. `spr`: the \
         AMX mask 0x600e7 on the recorded Sapphire Rapids dump (pure computation); `live`: this \
         CPU's XCR0. Goal: a few nanoseconds, flat in the number of features.\n"
    );
    for cpu in ["spr", "live"] {
        let _ = writeln!(
            out,
            "Offsets (`{cpu}`):\n\n| feature | precomputed | loop |\n|---|---|---|"
        );
        let mut pre = Vec::new();
        for i in 0..64u32 {
            let p = r.get(&format!("layout_offset/precomputed/{cpu}-{i}"));
            let l = r.get(&format!("layout_offset/loop/{cpu}-{i}"));
            if let (Some(&p), Some(&l)) = (p, l) {
                pre.push(p.median);
                let _ = writeln!(
                    out,
                    "| {i} {} | {} | {} |",
                    xstate::feature::name_of(i),
                    est(p),
                    est(l)
                );
            }
        }
        let _ = writeln!(
            out,
            "\nSizes (`{cpu}`, first k features of the mask):\n\n| k | precomputed | loop | enumeration |\n|---|---|---|---|"
        );
        for k in 2..=20 {
            let g = |f: &str| r.get(&format!("layout_size/{f}/{cpu}-k{k}")).copied();
            if let (Some(p), Some(l), Some(n)) = (g("precomputed"), g("loop"), g("enumeration")) {
                pre.push(p.median);
                let _ = writeln!(out, "| {k} | {} | {} | {} |", est(p), est(l), est(n));
            }
        }
        if pre.is_empty() {
            let _ = writeln!(out, "\n(no results for `{cpu}`)\n");
            continue;
        }
        let max = pre.iter().copied().fold(f64::MIN, f64::max);
        let min = pre.iter().copied().fold(f64::MAX, f64::min);
        let met = max <= 5.0;
        if !met {
            verdicts.push(format!("layout queries {cpu}: max {max:.2} ns"));
        }
        let _ = writeln!(
            out,
            "\nPrecomputed queries (`{cpu}`): {} to {} ns over all features and masks (max / min \
             {:.2}: `offset_of` is a bit test plus one array load, about twice `size`, a single \
             field load; neither grows with the feature index or the number of features). Goal \
             \"a few ns, flat\": **{}**.\n",
            ns(min),
            ns(max),
            max / min,
            if met { "met" } else { "missed" }
        );
    }
    verdicts
}

fn uabi(
    out: &mut String,
    r: &BTreeMap<String, Est>,
    live: &Enumeration,
    spr: &Enumeration,
) -> Vec<String> {
    let mut verdicts = Vec::new();
    let _ = writeln!(out, "## 4. User-ABI copies\n");
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench uabi`. A host fpstate with every user component dirty; \
         `export` writes the standard-form user buffer (gaps and unused fields zeroed), `import` \
         validates a buffer as Linux does and writes it into the fpstate; `memcpy` copies the \
         same number of bytes (the physical limit). `avx512-live`: this CPU, user features of \
         Linux's policy. `amx-spr`: the Sapphire Rapids dump with AMX TILEDATA allocated (pure \
         memory work, so the dump stands in for AMX hardware). Goal: >= 0.8 of memcpy bandwidth, \
         i.e. memcpy time / our time >= 0.8.\n"
    );
    let _ = writeln!(
        out,
        "| state | bytes | memcpy | export | import | export: memcpy / export | import: memcpy / import |\n|---|---|---|---|---|---|---|"
    );
    for (name, e) in [("avx512-live", live), ("amx-spr", spr)] {
        let bytes = Configs::new(
            e,
            &Policy {
                dynamic: XFeatures::empty(),
                ..Policy::linux(e)
            },
        )
        .map(|c| c.user.max_size)
        .unwrap_or(0);
        let g = |f: &str| r.get(&format!("uabi/{f}/{name}")).copied();
        let (Some(m), Some(x), Some(i)) = (g("memcpy"), g("export"), g("import")) else {
            let _ = writeln!(
                out,
                "| {name} | {bytes} | - | - | - | not measured | not measured |"
            );
            continue;
        };
        let gbs = |t: f64| f64::from(bytes) / t;
        let mut verdict = |what: &str, t: Est| {
            let q = m.median / t.median;
            if q < 0.8 {
                verdicts.push(format!("uabi {what} {name}: {q:.3} of memcpy"));
            }
            format!(
                "{q:.3} ({:.1} GB/s) **{}**",
                gbs(t.median),
                if q >= 0.8 { "met" } else { "missed" }
            )
        };
        let ve = verdict("export", x);
        let vi = verdict("import", i);
        let _ = writeln!(
            out,
            "| {name} | {bytes} | {} ({:.1} GB/s) | {} | {} | {ve} | {vi} |",
            est(m),
            gbs(m.median),
            est(x),
            est(i)
        );
    }
    match r.get("uabi/kvm-get-set/avx512-live") {
        Some(&k) => {
            let x = r
                .get("uabi/export/avx512-live")
                .map_or(f64::NAN, |e| e.median);
            let i = r
                .get("uabi/import/avx512-live")
                .map_or(f64::NAN, |e| e.median);
            let _ = writeln!(
                out,
                "\nKVM_GET_XSAVE2 + KVM_SET_XSAVE round trip of the same AVX-512 state on a vCPU \
                 (Linux's own export + import, two ioctls): {}, i.e. {:.0}x our export + \
                 import ({} ns). The KVM here offers guests no AMX, so there is no AMX round trip.\n",
                est(k),
                k.median / (x + i),
                ns(x + i)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\nKVM_GET_XSAVE2 + KVM_SET_XSAVE: **not measured** ({}).\n",
                if Path::new("/dev/kvm").exists() {
                    "no result: see the bench's SKIP line"
                } else {
                    "/dev/kvm absent"
                }
            );
        }
    }
    if !verdicts.is_empty() {
        let _ = writeln!(
            out,
            "Why the missed copies miss: `export` and `import` copy each run of components that \
             are contiguous in both forms with one call (the legacy region, then e.g. \
             opmask..PKRU, TILECFG+TILEDATA), and `export` zero-fills the gaps between runs \
             (MPX's hole, the padding before the 64-byte aligned TILECFG) with more. The baseline \
             is one call over the whole range, and a copy's time is not proportional to its \
             bytes:"
        );
        for name in ["avx512-live", "amx-spr"] {
            let g = |f: &str| r.get(&format!("uabi/{f}/{name}")).copied();
            if let (Some(m), Some(l), Some(x)) = (g("memcpy"), g("memcpy-largest"), g("export")) {
                let _ = writeln!(
                    out,
                    "- {name}: the largest component copied alone between the two buffers \
                     (`uabi/memcpy-largest/{name}`) takes {}, {:.0}% of the whole-area memcpy \
                     ({}); export spends {} on everything else.",
                    est(l),
                    100.0 * l.median / m.median,
                    ns(m.median),
                    ns(x.median - l.median)
                );
            }
        }
        let _ = writeln!(out);
    }
    verdicts
}

fn scaling(out: &mut String, r: &BTreeMap<String, Est>, e: &Enumeration) {
    let _ = writeln!(out, "## 5. Scaling and per-task memory\n");
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench save_restore` (groups `save_restore` and `scaling`). The \
         crate's XSAVEC + XRSTOR path (`Fpstate::save` + `restore`), dirty, against the \
         compacted area size. Masks other than the issue's are subsets of AVX-512 (valid RFBMs).\n"
    );
    let mut rows: Vec<(u32, u64, Est)> = Vec::new();
    for (k, v) in r {
        let parts: Vec<&str> = k.split('/').collect();
        if let [g, "xsavec-crate", p] = parts[..] {
            if g != "save_restore" && g != "scaling" {
                continue;
            }
            let Some(m) = p.strip_suffix("-dirty") else {
                continue;
            };
            let Ok(mask) = u64::from_str_radix(m.trim_start_matches("0x"), 16) else {
                continue;
            };
            rows.push((
                e.compacted_size(XFeatures::from_bits_retain(mask)),
                mask,
                *v,
            ));
        }
    }
    rows.sort_by_key(|x| x.0);
    let _ = writeln!(out, "| bytes | mask | save + restore |\n|---|---|---|");
    for (size, mask, v) in &rows {
        let _ = writeln!(out, "| {size} | {mask:#x} | {} |", est(*v));
    }
    let xcr0 = xstate::insn::read_xcr0().unwrap_or(XFeatures::empty());
    if !xcr0.contains(XFeatures::XTILE) {
        let _ = writeln!(
            out,
            "| ~10.7 KiB | 0x600e7 | **missing**: AMX not in XCR0 ({:#x}) on this CPU |",
            xcr0.bits()
        );
    }
    // Least-squares line through the points: what each extra KiB costs.
    if rows.len() >= 3 {
        let n = rows.len() as f64;
        let xs: Vec<f64> = rows.iter().map(|x| f64::from(x.0) / 1024.0).collect();
        let ys: Vec<f64> = rows.iter().map(|x| x.2.median).collect();
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        let slope = sxy / sxx;
        let _ = writeln!(
            out,
            "\nLeast-squares fit over these points: {:.1} ns + {slope:.1} ns per KiB of area \
             ({} to {} bytes measured here).",
            my - slope * mx,
            rows[0].0,
            rows[rows.len() - 1].0
        );
    }
    let _ = writeln!(
        out,
        "\nPer-task memory of fpstates under Linux's policy (`Configs::new(&e, &Policy::linux(&e))`): \
         bytes of a host task's and a guest vCPU's default fpstate (AMX TILEDATA, dynamic, not \
         allocated), and the host maximum once AMX is granted. Computed by this report from \
         CPUID, no measurement.\n"
    );
    let _ = writeln!(
        out,
        "| CPU | host default | guest default | guest - host | host max | user ABI (standard) |\n|---|---|---|---|---|---|"
    );
    let mut cpus: Vec<(String, Result<Enumeration, String>)> = vec![(
        "this CPU (live)".into(),
        Enumeration::from_cpuid(&LiveCpuid).map_err(|x| x.to_string()),
    )];
    let mut files: Vec<PathBuf> = fs::read_dir("layouts")
        .map(|d| {
            d.flatten()
                .map(|x| x.path())
                .filter(|p| p.extension().is_some_and(|x| x == "txt"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in files {
        let name = f
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let e = fs::read_to_string(&f)
            .map_err(|x| x.to_string())
            .and_then(|t| RecordedCpuid::parse(&t).map_err(|x| x.to_string()))
            .and_then(|c| Enumeration::from_cpuid(&c).map_err(|x| x.to_string()));
        cpus.push((name, e));
    }
    for (name, e) in cpus {
        match e.and_then(|e| Configs::new(&e, &Policy::linux(&e)).map_err(|x| x.to_string())) {
            Ok(c) => {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {:+} | {} | {} |",
                    c.kernel.default_size,
                    c.guest.default_size,
                    i64::from(c.guest.default_size) - i64::from(c.kernel.default_size),
                    c.kernel.max_size,
                    c.user.default_size
                );
            }
            Err(x) => {
                let _ = writeln!(out, "| {name} | refused: {x} | | | | |");
            }
        }
    }
    let _ = writeln!(out);
}

fn main() {
    let args: Vec<String> = env::args().collect();
    let root = criterion_dir(&args);
    let out_path = args.iter().position(|a| a == "--out").map_or_else(
        || PathBuf::from("BENCHMARKS.md"),
        |i| PathBuf::from(&args[i + 1]),
    );
    let (r, stale) = load(&root);
    if r.is_empty() {
        eprintln!(
            "no criterion results under {}: run `cargo bench` first",
            root.display()
        );
        std::process::exit(1);
    }
    let live = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    let spr = Enumeration::from_cpuid(&RecordedCpuid::parse(SPR).expect("SPR dump"))
        .expect("SPR enumeration");

    let mut body = String::new();
    machine(&mut body, &live);
    let mut missed = save_restore(&mut body, &r, &live);
    lesser_dynamic(&mut body, &r, &live);
    missed.extend(layout(&mut body, &r));
    missed.extend(uabi(&mut body, &r, &live, &spr));
    scaling(&mut body, &r, &live);

    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `examples/bench-report.rs` from criterion's `estimates.json` files; do not \
         edit by hand. To reproduce (about 4 minutes on 2 cores, build included):\n\n```sh\n{COMMAND}\n```\n\n\
         Each section names the bench that produced its table. Criterion's results are read from \
         `$CARGO_TARGET_DIR/criterion` (default `target/criterion`).\n"
    );
    let _ = writeln!(out, "## Goals at a glance\n");
    if missed.is_empty() {
        let _ = writeln!(out, "Every goal with a result was met.\n");
    } else {
        let _ = writeln!(out, "Missed (ratio measured; reasons in the sections):\n");
        for m in &missed {
            let _ = writeln!(out, "- {m}");
        }
        let _ = writeln!(out);
    }
    let xcr0 = xstate::insn::read_xcr0().unwrap_or(XFeatures::empty());
    if !xcr0.contains(XFeatures::XTILE) {
        let _ = writeln!(
            out,
            "Not measured: the +AMX (0x600e7) save/restore rows and the ~11 KiB scaling point, \
             because AMX is not in XCR0 ({:#x}) on this CPU (`SKIP bench: AMX not in XCR0`). The \
             AMX layout queries and AMX export/import are pure computation and are measured on \
             the recorded Sapphire Rapids dump.\n",
            xcr0.bits()
        );
    }
    if !stale.is_empty() {
        let _ = writeln!(
            out,
            "Ignored as left over from an earlier run: {}.\n",
            stale.join(", ")
        );
    }
    out.push_str(&body);
    fs::write(&out_path, out).expect("write report");
    eprintln!(
        "wrote {} ({} results from {})",
        out_path.display(),
        r.len(),
        root.display()
    );
}
