//! Write BENCHMARKS.md from criterion's results and the benches' row files.
//!
//! ```sh
//! cargo bench && cargo run --release --example bench-report
//! # shorter settings (15 samples, a quarter of the time):
//! XSTATE_BENCH_QUICK=1 cargo bench && cargo run --release --example bench-report
//! ```
//!
//! Reads, under `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
//! `target/criterion` (or `--criterion DIR`):
//! - the row files `xstate-rows/<group>/<function>/<parameter>.txt` the
//!   benches write (`benches/common/mod.rs`): what each row measured on this
//!   machine (mask, components, bytes), why a row was skipped, and for rows
//!   whose sides are timed in alternation the time of one iteration of each
//!   side in every sample. Every ratio of this report is taken per sample
//!   (batches of the sides alternate microseconds apart) and given as the median of those
//!   per-sample ratios with their interquartile range and min-max;
//! - criterion's `<group>/<function>/<parameter>/new/estimates.json` for the
//!   layout queries (median and 95% interval).
//!
//! It writes `BENCHMARKS.md` (or `--out FILE`; `--note TEXT` adds a paragraph
//! under the command, e.g. which commit was measured; `--only switch` writes
//! section 6, the context switches, alone with the facts of its run, for a
//! file whose other sections came from other runs): the machine, the command and
//! settings that produced the figures, one table per bench area with the goals
//! shown met or missed, and the per-task fpstate memory of this CPU and of
//! every dump in `layouts/` (computed here).
//!
//! Results older than the newest one by more than [`STALE_SECS`] are treated as
//! left over from an earlier run and ignored (the row then says it is missing).

use std::collections::{BTreeMap, BTreeSet};
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
const QUICK_ENV: &str = "XSTATE_BENCH_QUICK";

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

/// Files under `dir` (recursively) that `keep` accepts.
fn walk(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let p = ent.path();
        if p.is_dir() {
            walk(&p, keep, out);
        } else if keep(&p) {
            out.push(p);
        }
    }
}

fn mtime(p: &Path) -> u64 {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// A row file: `key = value` lines.
#[derive(Clone, Debug, Default)]
struct Row(BTreeMap<String, String>);

impl Row {
    fn parse(s: &str) -> Self {
        Self(
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once(" = "))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// A field, or `-`.
    fn show(&self, k: &str) -> &str {
        self.get(k).unwrap_or("-")
    }

    fn skip(&self) -> Option<&str> {
        self.get("skip")
    }

    /// The per-sample times of one iteration of `side` (ns).
    fn times(&self, side: &str) -> Option<Vec<f64>> {
        let v: Vec<f64> = self
            .get(&format!("ns.{side}"))?
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (!v.is_empty()).then_some(v)
    }

    /// Spread of `side`'s per-sample time.
    fn side(&self, side: &str) -> Option<Spread> {
        self.times(side).map(|t| Spread::of(&t))
    }

    /// Spread of the per-sample ratio `num / den` (both timed in the same
    /// sample).
    fn ratio(&self, num: &str, den: &str) -> Option<Spread> {
        let (n, d) = (self.times(num)?, self.times(den)?);
        let r: Vec<f64> = n.iter().zip(&d).map(|(a, b)| a / b).collect();
        (!r.is_empty()).then(|| Spread::of(&r))
    }

    /// Spread of the per-sample difference `a - b` (ns).
    fn diff(&self, a: &str, b: &str) -> Option<Spread> {
        let (x, y) = (self.times(a)?, self.times(b)?);
        let r: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        (!r.is_empty()).then(|| Spread::of(&r))
    }

    /// The batches of `sides` that lost their state, where any did
    /// (`lost.<side> = L of B batches`).
    fn lost(&self, sides: &[&str]) -> Option<String> {
        let v: Vec<String> = sides
            .iter()
            .filter_map(|s| {
                let f = self.get(&format!("lost.{s}"))?;
                let l: u64 = f.split_whitespace().next()?.parse().ok()?;
                (l > 0).then(|| format!("{s}: {f}"))
            })
            .collect();
        (!v.is_empty()).then(|| v.join(", "))
    }
}

/// Median, quartiles and extremes of a set of samples.
#[derive(Clone, Copy, Debug)]
struct Spread {
    min: f64,
    q1: f64,
    median: f64,
    q3: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(v: &[f64]) -> Self {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        // Linear interpolation between closest ranks.
        let q = |p: f64| {
            let x = p * (s.len() - 1) as f64;
            let (i, f) = (x.floor() as usize, x - x.floor());
            if i + 1 < s.len() {
                s[i] + f * (s[i + 1] - s[i])
            } else {
                s[i]
            }
        };
        Self {
            min: s[0],
            q1: q(0.25),
            median: q(0.5),
            q3: q(0.75),
            max: s[s.len() - 1],
            n: s.len(),
        }
    }

    /// `1 / x` of every sample (order reverses).
    fn inv(self) -> Self {
        Self {
            min: 1.0 / self.max,
            q1: 1.0 / self.q3,
            median: 1.0 / self.median,
            q3: 1.0 / self.q1,
            max: 1.0 / self.min,
            n: self.n,
        }
    }

    /// A time: median [q1–q3].
    fn time(self) -> String {
        format!("{} [{}–{}]", ns(self.median), ns(self.q1), ns(self.q3))
    }

    /// A ratio: median [q1–q3] (min–max), three decimals below 10.
    fn ratio(self) -> String {
        let p = if self.median >= 100.0 {
            0
        } else if self.median >= 10.0 {
            1
        } else {
            3
        };
        format!(
            "{:.p$} [{:.p$}–{:.p$}] ({:.p$}–{:.p$})",
            self.median, self.q1, self.q3, self.min, self.max
        )
    }

    /// A difference in ns: median [q1–q3].
    fn delta(self) -> String {
        format!("{:+.2} [{:+.2} to {:+.2}]", self.median, self.q1, self.q3)
    }
}

/// Everything read from the criterion dir.
struct Results {
    est: BTreeMap<String, Est>,
    rows: BTreeMap<String, Row>,
    stale: Vec<String>,
}

impl Results {
    fn row(&self, id: &str) -> Option<&Row> {
        self.rows.get(id)
    }

    /// The rows of `group/function`, by parameter.
    fn rows_of(&self, prefix: &str) -> Vec<(&str, &Row)> {
        let p = format!("{prefix}/");
        self.rows
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&p)?, v)))
            .filter(|(k, _)| !k.contains('/'))
            .collect()
    }
}

/// Every fresh result and row file; the stale ones by name.
fn load(root: &Path) -> Results {
    let mut files = Vec::new();
    let is_est = |p: &Path| {
        p.file_name().is_some_and(|n| n == "estimates.json")
            && p.parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "new")
    };
    walk(root, &is_est, &mut files);
    let rows_root = root.join("xstate-rows");
    let mut row_files = Vec::new();
    walk(
        &rows_root,
        &|p: &Path| p.extension().is_some_and(|x| x == "txt"),
        &mut row_files,
    );
    let newest = files
        .iter()
        .chain(&row_files)
        .map(|p| mtime(p))
        .max()
        .unwrap_or(0);
    let mut r = Results {
        est: BTreeMap::new(),
        rows: BTreeMap::new(),
        stale: Vec::new(),
    };
    for p in files {
        let Some(bench_dir) = p.parent().and_then(Path::parent) else {
            continue;
        };
        let Ok(rel) = bench_dir.strip_prefix(root) else {
            continue;
        };
        let key = rel.to_string_lossy().replace('\\', "/");
        if key.starts_with("xstate-rows/") {
            continue;
        }
        if mtime(&p) + STALE_SECS < newest {
            r.stale.push(key);
            continue;
        }
        if let Some(e) = fs::read_to_string(&p)
            .ok()
            .as_deref()
            .and_then(parse_estimates)
        {
            r.est.insert(key, e);
        }
    }
    for p in row_files {
        let Ok(rel) = p
            .with_extension("")
            .strip_prefix(&rows_root)
            .map(Path::to_path_buf)
        else {
            continue;
        };
        let key = rel.to_string_lossy().replace('\\', "/");
        if mtime(&p) + STALE_SECS < newest {
            r.stale.push(key);
            continue;
        }
        if let Ok(s) = fs::read_to_string(&p) {
            r.rows.insert(key, Row::parse(&s));
        }
    }
    r
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

/// The settings the row files record, each once, with the benches' groups
/// that used them.
fn settings(r: &Results) -> Vec<String> {
    let mut s: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, row) in &r.rows {
        if let Some(x) = row.get("settings") {
            let group = id.split('/').next().unwrap_or(id);
            s.entry(x).or_default().insert(group);
        }
    }
    s.into_iter()
        .map(|(x, g)| format!("{x} (`{}`)", g.into_iter().collect::<Vec<_>>().join("`, `")))
        .collect()
}

fn machine(out: &mut String, e: &Enumeration, r: &Results) {
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
    let xinuse = if e.xgetbv1() { "yes" } else { "no" };
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
    let _ = writeln!(
        out,
        "| XCR0 | {xcr0:#x} ({}) |",
        names(XFeatures::from_bits_retain(xcr0))
    );
    let _ = writeln!(
        out,
        "| CPUID(0xD,1) | XSAVEOPT {}, XSAVEC {}, XGETBV1 {xinuse}, XSAVES {}, XFD {}; IA32_XSS supported {:#x} |",
        e.xsaveopt(),
        e.xsavec(),
        e.xsaves(),
        e.xfd(),
        e.xss_supported().bits()
    );
    let kvm = match r.row("uabi/kvm/guest") {
        Some(k) if k.skip().is_none() => format!(
            "present: KVM supports {} for guests, the guest's CPUID reads back {}, uabi size {} bytes",
            k.show("supported"),
            k.show("guest_xcr0"),
            k.show("bytes")
        ),
        Some(k) => format!("not used: {}", k.show("skip")),
        None if Path::new("/dev/kvm").exists() => "present".to_string(),
        None => "absent".to_string(),
    };
    let _ = writeln!(out, "| /dev/kvm | {kvm} |");
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
    let s = settings(r);
    let loads: Vec<f64> = r
        .rows
        .values()
        .filter_map(|x| x.get("loadavg")?.parse().ok())
        .collect();
    if let (Some(lo), Some(hi)) = (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        let _ = writeln!(
            out,
            "| load while measuring | 1-minute load average {lo:.2} to {hi:.2} as the {} timed \
             rows finished (2 logical CPUs) |",
            loads.len()
        );
    }
    let _ = writeln!(
        out,
        "\nThe figures come from a **shared 2-core VM**: other engineers' builds and tests ran on \
         the same two cores during the measurement (see the load averages above), so a stretch of \
         time can run tens of percent slow. That is why every ratio here is measured from \
         interleaved samples: within each of criterion's samples the sides of a row run in \
         alternating batches of tens of microseconds (the side that goes first rotating from \
         batch to batch); a side's time in the sample is the median over its batches of the time \
         of one iteration, and a ratio is taken per sample. Tables give times as the median \
         [interquartile range] over the samples, in ns unless marked, and ratios as the median \
         [interquartile range] (min–max) of the per-sample ratios. Criterion settings: {}; the \
         layout queries (section 3) are criterion's median over its samples \
         with its 95% confidence interval.\n",
        if s.is_empty() {
            "(no row files)".to_string()
        } else {
            s.join("; ")
        }
    );
}

fn names(m: XFeatures) -> String {
    m.indices()
        .map(xstate::feature::name_of)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A skipped row's reason, or the fallback when no row file exists.
fn missing_why(row: Option<&Row>) -> String {
    match row.and_then(Row::skip) {
        Some(why) => format!("**SKIP**: {why}"),
        None => "not measured: no result (bench not run?)".to_string(),
    }
}

/// Rows `group/function/<mask>-<state>` by (mask, state order, function).
fn mask_param(p: &str) -> Option<(u64, &str)> {
    let (m, state) = p.split_once('-')?;
    Some((
        u64::from_str_radix(m.trim_start_matches("0x"), 16).ok()?,
        state,
    ))
}

fn mask_cell(row: &Row) -> String {
    format!("{} ({})", row.show("mask"), row.show("components"))
}

/// The save + restore goal: a side within 1% of the bare pair at the median,
/// or within half a nanosecond (where the pair is so cheap that 1% is below
/// what one instruction costs).
const SR_RATIO: f64 = 1.01;
const SR_NS: f64 = 0.5;

fn save_restore(out: &mut String, r: &Results) -> Vec<String> {
    let mut verdicts = Vec::new();
    let _ = writeln!(
        out,
        "## 1. Save + restore: bare instructions against the crate\n"
    );
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench save_restore`. Each row is named by the requested-feature \
         mask it measured (the same components on every CPU: x87|SSE 0x3, +AVX 0x7, +AVX-512 \
         0xe7, +AMX 0x600e7 after `ARCH_REQ_XCOMP_PERM`, and this CPU's whole XCR0 where it is \
         none of these); a row whose mask is not in XCR0 or whose instruction the CPU lacks is \
         a **SKIP** naming what is missing. One iteration = save into buffer B, then XRSTOR \
         from B (RFBM = the mask). `bare`: the instruction wrappers of `xstate::insn` on a raw \
         64-byte aligned buffer. `crate`: the checked path, `Fpstate::save` + \
         `Fpstate::restore` in `Mode::User` (XSAVEC; XSAVEOPT for a standard-form config, made \
         by hiding XSAVEC/XSAVES from this CPU's enumeration), and `Cpu` as an `XsaveUnit` for \
         XSAVE (fpstates never use plain XSAVE). `bound`: the same pair through a `BoundArea` \
         (`Fpstate::bind` for the fpstate rows, `Cpu::bind` for the XSAVE row), checked once \
         outside the timing. `bytes`: the area the pair saves on this CPU (compacted for XSAVEC, \
         standard otherwise). `dirty`: before each timed batch every component of the mask is \
         loaded with a non-init pattern (XRSTOR of an image); `init`: XRSTOR with XSTATE_BV = 0. \
         Within the batch, each iteration's XRSTOR re-establishes that state for the next save, \
         on every side alike; after each batch the saved XSTATE_BV is checked, and a batch that \
         ended in another state (the kernel can hand the task back with SSE in use after a \
         context switch) is counted under the goal. The sides of a row are timed in \
         alternation; side / bare is the per-sample ratio. Goal: side / bare <= {SR_RATIO} at \
         the median, or side − bare <= {SR_NS} ns.\n"
    );
    let _ = writeln!(
        out,
        "| mask | state | pair | bytes | bare | crate | crate / bare | bound | bound / bare | goal |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut keys: BTreeSet<(u64, u8, String)> = BTreeSet::new();
    let mut diffs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut met_count: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut bare_lo, mut bare_hi) = (f64::MAX, f64::MIN);
    for f in ["xsavec", "xsave", "xsaveopt"] {
        for (p, _) in r.rows_of(&format!("save_restore/{f}")) {
            if let Some((m, state)) = mask_param(p) {
                keys.insert((m, u8::from(state == "dirty"), state.to_string()));
            }
        }
    }
    for (mask, _, state) in keys {
        for (pair, f) in [
            ("XSAVEC+XRSTOR", "xsavec"),
            ("XSAVE+XRSTOR", "xsave"),
            ("XSAVEOPT+XRSTOR", "xsaveopt"),
        ] {
            let row = r.row(&format!("save_restore/{f}/{mask:#x}-{state}"));
            let m = row.map_or_else(|| format!("{mask:#x}"), mask_cell);
            let (Some(row), Some(b)) = (
                row.filter(|x| x.skip().is_none()),
                row.and_then(|x| x.side("bare")),
            ) else {
                let _ = writeln!(
                    out,
                    "| {m} | {state} | {pair} | {} | - | - | - | - | - | {} |",
                    row.map_or("-", |x| x.show("bytes")),
                    missing_why(row)
                );
                continue;
            };
            let mut cells = Vec::new();
            let mut goal = Vec::new();
            for side in ["crate", "bound"] {
                let (Some(t), Some(q), Some(d)) = (
                    row.side(side),
                    row.ratio(side, "bare"),
                    row.diff(side, "bare"),
                ) else {
                    cells.push("-".to_string());
                    cells.push("-".to_string());
                    goal.push(format!("{side}: not measured"));
                    continue;
                };
                cells.push(t.time());
                cells.push(q.ratio());
                let met = q.median <= SR_RATIO || d.median <= SR_NS;
                goal.push(format!(
                    "{side} {} ({:+.2} ns)",
                    if met { "met" } else { "**missed**" },
                    d.median
                ));
                if met {
                    *met_count.entry(side).or_default() += 1;
                } else {
                    verdicts.push(format!(
                        "save/restore {pair} {mask:#x} {state}: {side} / bare {}, {:+.2} ns",
                        q.ratio(),
                        d.median
                    ));
                }
                diffs.entry(side).or_default().push(d.median);
            }
            let mut v = goal.join("; ");
            if let Some(l) = row.lost(&["bare", "crate", "bound"]) {
                let _ = write!(v, "; state lost in {l}");
            }
            let _ = writeln!(
                out,
                "| {m} | {state} | {pair} | {} | {} | {} | {v} |",
                row.show("bytes"),
                b.time(),
                cells.join(" | ")
            );
            bare_lo = bare_lo.min(b.median);
            bare_hi = bare_hi.max(b.median);
        }
    }
    for (side, d) in &diffs {
        let _ = writeln!(
            out,
            "\n**{side}**: goal met on {} of the {} measured rows.",
            met_count.get(side).copied().unwrap_or(0),
            d.len()
        );
        if let (Some(lo), Some(hi)) = (
            d.iter().copied().reduce(f64::min),
            d.iter().copied().reduce(f64::max),
        ) {
            let _ = writeln!(
                out,
                "\n{side} − bare, per-sample difference, median per row: {lo:+.2} to {hi:+.2} ns \
                 over the {} measured rows, against bare times of {} to {} ns.",
                d.len(),
                ns(bare_lo),
                ns(bare_hi)
            );
        }
    }
    let _ = writeln!(out);
    hot_path(out);
    verdicts
}

/// What the generated code of each side's loop does per iteration, read from
/// the bench binary (the functions the rows time).
fn hot_path(out: &mut String) {
    let _ = writeln!(
        out,
        "### What each instruction of the hot path is for\n\n\
         Read from the release bench binary, the loops the rows time (`objdump -d \
         --no-show-raw-insn -M intel -C target/release/deps/save_restore-*`, functions \
         `save_restore::bare_loop`, `save_restore::bound_loop`, `save_restore::fpstate_loop`; \
         `cargo asm` is not installed here). One iteration of each:\n\n\
         - `bare` (6 instructions): `mov eax`/`mov edx` (RFBM's halves, EDX:EAX, kept in \
         registers across the loop), `xsave*64 [buf]`, `xrstor64 [buf]`, `dec`/`jne` (the loop \
         counter).\n\
         - `bound` (8): the same, plus one more `mov eax`/`mov edx` pair, because a \
         `BoundArea` carries two RFBMs (save: the fpstate's features; restore: the configs' \
         RFBM, which also inits components the fpstate has no space for) and EAX/EDX are \
         clobbered by each instruction; the save RFBM's low half is reloaded from the stack \
         (`mov rax, [rsp+8]`, an L1 hit). Which instruction to run is decided once: the \
         compiler unswitches the loop on the bound instruction (one loop per \
         XSAVE/XSAVEOPT/XSAVEC/XSAVES with XRSTOR), so no compare or branch of the crate's \
         remains inside it (with XRSTORS, ring 0 only and not timed here, the save is \
         chosen through a jump table: one indirect jump per iteration). No handle, alignment, size or header check: `Fpstate::bind` / \
         `Cpu::bind` made them once, and the exclusive borrow keeps them true.\n\
         - `crate` (the checked path, about 60): the handle stamp compare and the choice of \
         instruction are hoisted out of the loop by the compiler; per iteration remain, for \
         the save, the area's alignment test, the instruction's CPUID bit (a byte load and \
         compare), the size memo's key compare and the length compare; for the restore, the \
         alignment test, the two header loads (XSTATE_BV, XCOMP_BV) and the form test that \
         choose what XRSTOR will read, the mask computed from them, the memo's key compare \
         and the length compare (`max(576)` included). They are what a safe call on an area \
         that anyone may have written since the last call needs; the memo miss is a cold \
         out-of-line call.\n"
    );
}

fn lesser_dynamic(out: &mut String, r: &Results) {
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
         opmask ended init (a, b) or loaded (c). The three variants of a base are timed in \
         alternation; `vs (a)` is the per-sample ratio and difference. The rows need AVX-512 in \
         XCR0 and XSAVEC (else a **SKIP**).\n"
    );
    let _ = writeln!(
        out,
        "| base | variant | buffer bytes | XRSTOR (+kmovq) | vs (a): ratio | vs (a): ns |\n|---|---|---|---|---|---|"
    );
    let mut worst: Option<(String, Spread, Spread)> = None;
    for name in ["avx512", "legacy"] {
        let row = r.row(&format!("lesser_dynamic/xrstor/{name}"));
        let base = row.map_or_else(|| name.to_string(), |x| format!("{name}: {}", mask_cell(x)));
        let Some(row) = row.filter(|x| x.skip().is_none() && x.times("a").is_some()) else {
            let _ = writeln!(out, "| {base} | - | - | - | - | {} |", missing_why(row));
            continue;
        };
        for (v, label) in [
            ("a", "(a) absent from XCOMP_BV, in RFBM"),
            ("b", "(b) in XCOMP_BV, XSTATE_BV bit clear"),
            ("c", "(c) in XCOMP_BV and in use"),
        ] {
            let (Some(t), Some(q), Some(d)) = (row.side(v), row.ratio(v, "a"), row.diff(v, "a"))
            else {
                continue;
            };
            let mut cmp = if v == "a" {
                "1 (itself) | 0".to_string()
            } else {
                format!("{} | {}", q.ratio(), d.delta())
            };
            if let Some(l) = row.lost(&[v]) {
                let _ = write!(cmp, " (state lost in {l})");
            }
            let _ = writeln!(
                out,
                "| {base} | {label} | {} | {} | {cmp} |",
                row.show(&format!("bytes.{v}")),
                t.time()
            );
            if v != "a"
                && worst
                    .as_ref()
                    .is_none_or(|w| d.median.abs() > w.2.median.abs())
            {
                worst = Some((format!("{name} ({v})"), q, d));
            }
        }
    }
    if let Some((which, q, d)) = worst {
        let _ = writeln!(
            out,
            "\nLargest median difference from (a): {which}, {:+.2} ns per XRSTOR, ratio {} (the \
             interquartile range of the ratio {} 1).",
            d.median,
            q.ratio(),
            if q.q1 <= 1.0 && 1.0 <= q.q3 {
                "includes"
            } else {
                "excludes"
            }
        );
    }
    let _ = writeln!(out);
}
fn layout(out: &mut String, res: &Results) -> Vec<String> {
    let r = &res.est;
    let mut verdicts = Vec::new();
    let _ = writeln!(out, "## 3. Layout queries\n");
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench layout`. `precomputed`: `Layout::offset_of` / `Layout::size` \
         on a layout built beforehand. `loop`: the straightforward per-query walk over the \
         components below (SDM vol. 1 13.4.3: align, add sizes). `enumeration`: \
         `Enumeration::compacted_size`, the crate's own call that sums on each query. `spr`: the \
         AMX mask 0x600e7 on the recorded Sapphire Rapids dump (pure computation); `live`: every \
         XCR0-capable component this CPU enumerates (the mask is this CPU's; see below). Goal: a \
         few nanoseconds, flat in the number of features.\n"
    );
    for cpu in ["spr", "live"] {
        if let Some(row) = res.row(&format!("layout/cpu/{cpu}")) {
            let _ = writeln!(
                out,
                "`{cpu}` measured: {}, mask {}, compacted size {} bytes.\n",
                row.show("cpu"),
                mask_cell(row),
                row.show("bytes")
            );
        }
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

/// The copy goals: memcpy time / our time at the median, where the forms
/// coincide and where they differ.
const COINCIDE_GOAL: f64 = 0.95;
const DIFFER_GOAL: f64 = 0.85;

fn uabi(out: &mut String, r: &Results) -> Vec<String> {
    let mut verdicts = Vec::new();
    let _ = writeln!(out, "## 4. User-ABI copies\n");
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench uabi`. A host fpstate with every component of the row's \
         mask dirty; `export` writes the standard-form user buffer (gaps and unused fields \
         zeroed), `import` validates a buffer as Linux does and writes it into the fpstate; \
         `memcpy` copies the same number of bytes (the physical limit). Rows, each named by what \
         it copies (a CPU without those components prints a **SKIP**): `avx-live`: this CPU, \
         x87|SSE|AVX (compacted and standard forms coincide on every CPU); `avx512-live`: this \
         CPU, x87|SSE|AVX|AVX-512; `amx-live`: this CPU, that plus AMX TILECFG and TILEDATA \
         (allocated); `xcr0-live`: every user component of this CPU's XCR0, only where that is \
         neither; `amx-spr`: the recorded Sapphire Rapids dump with Linux's user features, \
         TILEDATA allocated (pure memory work, so the dump stands in for AMX hardware anywhere). \
         memcpy, export, import, the copy of the largest component alone, the per-run copies \
         alone (`runs-out`: the fpstate's runs into the user buffer, its gaps zeroed; `runs-in`: \
         the buffer's runs into a kernel-size buffer of the bench's own) and import's checks \
         alone (`checks`: `uabi::check_import`) are timed in alternation; the copy ratios are \
         per sample. Every buffer of a row (the fpstate's area, the user buffer, the \
         destination) starts on a page, so source and destination sit at the same offsets \
         modulo 4 KiB from run to run (a copy's speed depends on them: 4K aliasing). `forms`: whether every component of the \
         row sits at the same offset in the fpstate and in the standard form (`coincide`: the \
         copy is one run) or not (`differ`). Goal: memcpy time / our time at the median >= \
         {COINCIDE_GOAL} where the forms coincide, >= {DIFFER_GOAL} where they differ.\n"
    );
    let _ = writeln!(
        out,
        "| row | measured | forms | bytes | memcpy | export | import | memcpy / export | memcpy / import |\n|---|---|---|---|---|---|---|---|---|"
    );
    let mut measured = Vec::new();
    for name in [
        "avx-live",
        "avx512-live",
        "amx-live",
        "xcr0-live",
        "amx-spr",
    ] {
        let Some(row) = r.row(&format!("uabi/copy/{name}")) else {
            continue;
        };
        let what = format!("{}: {}", row.show("cpu"), mask_cell(row));
        let (Some(m), Some(x), Some(i), Some(qx), Some(qi)) = (
            row.side("memcpy"),
            row.side("export"),
            row.side("import"),
            row.ratio("export", "memcpy").map(Spread::inv),
            row.ratio("import", "memcpy").map(Spread::inv),
        ) else {
            let _ = writeln!(
                out,
                "| {name} | {what} | {} | {} | - | - | - | {} | |",
                row.show("forms"),
                row.show("bytes"),
                missing_why(Some(row))
            );
            continue;
        };
        let bytes: f64 = row.show("bytes").parse().unwrap_or(f64::NAN);
        let gbs = |t: f64| bytes / t;
        let goal = if row.get("forms") == Some("coincide") {
            COINCIDE_GOAL
        } else {
            DIFFER_GOAL
        };
        let mut verdict = |what: &str, t: Spread, q: Spread| {
            if q.median < goal {
                verdicts.push(format!(
                    "uabi {what} {name}: {} of memcpy (goal {goal})",
                    q.ratio()
                ));
            }
            format!(
                "{} ({:.1} GB/s) **{}**",
                q.ratio(),
                gbs(t.median),
                if q.median >= goal { "met" } else { "missed" }
            )
        };
        let ve = verdict("export", x, qx);
        let vi = verdict("import", i, qi);
        let _ = writeln!(
            out,
            "| {name} | {what} | {} | {} | {} ({:.1} GB/s) | {} | {} | {ve} | {vi} |",
            row.show("forms"),
            row.show("bytes"),
            m.time(),
            gbs(m.median),
            x.time(),
            i.time()
        );
        measured.push((name, row));
    }
    match r.row("uabi/kvm/guest") {
        Some(k) if k.skip().is_none() && k.times("kvm").is_some() => {
            let (Some(t), Some(o), Some(q)) =
                (k.side("kvm"), k.side("ours"), k.ratio("kvm", "ours"))
            else {
                unreachable!("checked above")
            };
            let _ = writeln!(
                out,
                "\nKVM round trip (row `uabi/kvm/guest`), with what KVM offers guests on this host: \
                 KVM supports {} for guests, the vCPU's CPUID reads back {}, so the guest holds \
                 {} dirty ({} bytes in standard form) in a {}-byte KVM buffer (max(4096, \
                 KVM_CAP_XSAVE2)). KVM_GET_XSAVE2 + KVM_SET_XSAVE (Linux's own export + import, \
                 two ioctls): {}; ours, timed in alternation with it (`export` with KVM's mask, \
                 the guest XCR0 plus x87 and SSE, into the KVM-size buffer, then `import_abi` \
                 with `UserAbi::Kvm` into a guest fpstate): {}; KVM / ours per sample: {}.\n",
                k.show("supported"),
                k.show("guest_xcr0"),
                mask_cell(k),
                k.show("state.bytes"),
                k.show("bytes"),
                t.time(),
                o.time(),
                q.ratio()
            );
        }
        k => {
            let _ = writeln!(
                out,
                "\nKVM_GET_XSAVE2 + KVM_SET_XSAVE (row `uabi/kvm/guest`): {}.\n",
                match k {
                    Some(_) => missing_why(k),
                    None if !Path::new("/dev/kvm").exists() => "**SKIP**: /dev/kvm absent".into(),
                    None => missing_why(None),
                }
            );
        }
    }
    if !verdicts.is_empty() {
        let _ = writeln!(
            out,
            "Why the missed copies miss: a whole image goes through the runs precomputed per \
             kernel layout in the configs (the legacy region, header and every component merged \
             wherever the two forms run side by side): one copy call per run, the standard \
             form's gaps between runs zeroed (inline up to 256 bytes), bytes 416..576 written \
             once (export: zero but the software bytes and XSTATE_BV, stored whole; import: the \
             first run copied around them, so the fpstate's own bytes stay, and XSTATE_BV \
             stored), the plan found through the index each fpstate keeps. Two costs are left, each \
             measured by a side timed with the others. The copies: `runs-out` and `runs-in` \
             are the per-run copies alone, no handle, plan or checks, in the bench's own loop \
             over the runs; a copy's time is not proportional to its bytes (a call costs a few \
             ns, and glibc picks vector loops or `rep movsb` by size, so split copies can beat \
             one memcpy). Where there is one run, runs-out - memcpy is what that loop alone \
             (a few dozen instructions: slice bounds, the run table) adds to an 832-byte copy \
             here, the scale of any per-call work beside a copy this small. The per-call work: export - runs-out is the handle check, the plan's lookup and the \
             header and PKRU fix-ups, and the loop over the plan's runs; import - runs-in is that plus the checks Linux makes of a \
             user buffer (XSTATE_BV within the user features, XCOMP_BV and the reserved header \
             bytes zero, MXCSR within the CPU's mask), which `checks` times alone. Per row \
             (per-sample differences and ratios, median [interquartile range]):"
        );
        for (name, row) in measured {
            let d = |a: &str, b: &str| row.diff(a, b).map_or("-".into(), Spread::delta);
            let q = |a: &str| {
                row.ratio(a, "memcpy")
                    .map(Spread::inv)
                    .map_or("-".into(), Spread::ratio)
            };
            let t = |a: &str| row.side(a).map_or("-".into(), Spread::time);
            let _ = writeln!(
                out,
                "- {name} ({} run(s)): memcpy / runs-out {}, memcpy / runs-in {}; \
                 runs-out - memcpy {} ns; export - runs-out {} ns, import - runs-in {} ns; `checks` alone {} ns; \
                 export - memcpy {} ns, import - memcpy {} ns. The largest component ({}, {} \
                 bytes) copied alone takes {} (memcpy of the whole image {}).",
                row.show("runs"),
                q("runs-out"),
                q("runs-in"),
                d("runs-out", "memcpy"),
                d("export", "runs-out"),
                d("import", "runs-in"),
                t("checks"),
                d("export", "memcpy"),
                d("import", "memcpy"),
                row.show("largest"),
                row.show("largest.bytes"),
                t("memcpy-largest"),
                t("memcpy"),
            );
        }
        let _ = writeln!(out);
    }
    verdicts
}

fn scaling(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## 5. Scaling and per-task memory\n");
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench save_restore` (groups `save_restore` and `scaling`). The \
         crate's XSAVEC + XRSTOR path (`Fpstate::save` + `restore`), dirty, against the \
         compacted area size on this CPU: the `crate` side of the XSAVEC rows of section 1 and \
         the rows of group `scaling` (more masks, subsets of AVX-512, valid RFBMs). Times: \
         median [interquartile range] of the per-sample time.\n"
    );
    let mut rows: Vec<(u32, String, Spread)> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut add = |p: &str, row: &Row| {
        let Some((mask, "dirty")) = mask_param(p) else {
            return;
        };
        match (
            row.skip(),
            row.side("crate"),
            row.show("bytes").parse::<u32>(),
        ) {
            (None, Some(t), Ok(b)) => rows.push((b, mask_cell(row), t)),
            (Some(why), ..) => skipped.push((format!("{mask:#x}"), why.to_string())),
            _ => {}
        }
    };
    for (p, row) in r.rows_of("save_restore/xsavec") {
        add(p, row);
    }
    for (p, row) in r.rows_of("scaling/xsavec-crate") {
        add(p, row);
    }
    rows.sort_by_key(|x| x.0);
    let _ = writeln!(out, "| bytes | mask | save + restore |\n|---|---|---|");
    for (size, mask, v) in &rows {
        let _ = writeln!(out, "| {size} | {mask} | {} |", v.time());
    }
    for (mask, why) in &skipped {
        let _ = writeln!(out, "| - | {mask} | **SKIP**: {why} |");
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
                    c.kernel().default_size,
                    c.guest().default_size,
                    i64::from(c.guest().default_size) - i64::from(c.kernel().default_size),
                    c.kernel().max_size,
                    c.user().default_size
                );
            }
            Err(x) => {
                let _ = writeln!(out, "| {name} | refused: {x} | | | | |");
            }
        }
    }
    let _ = writeln!(out);
}

/// The switch patterns of `benches/switch.rs`, in table order, with their
/// goal on lifecycle / swap (the issue's: never slower, and at least 2x
/// faster on task -> kernel thread -> task).
const SWITCH_PATTERNS: [(&str, &str, f64); 3] = [
    ("pingpong", "A -> B -> A", 1.02),
    ("kthread", "task -> kernel thread -> task", 0.5),
    (
        "rr4-simd",
        "4 tasks round robin + kernel SIMD section per tick",
        1.02,
    ),
];

/// A count field of a row, per iteration of the layer side.
fn per_iter(row: &Row, key: &str) -> Option<f64> {
    let iters: f64 = row.get("layer.iters")?.parse().ok()?;
    let v: f64 = row.get(key)?.parse().ok()?;
    (iters > 0.0).then(|| v / iters)
}

/// Section 6: `benches/switch.rs`. The verdicts of the goals it missed.
fn switch(out: &mut String, r: &Results, number: bool) -> Vec<String> {
    let mut verdicts = Vec::new();
    let _ = writeln!(
        out,
        "## {}Context switches: the lifecycle layer against save + restore on every switch\n",
        if number { "6. " } else { "" }
    );
    let _ = writeln!(
        out,
        "Command: `cargo bench --bench switch` (group `switch`). One real CPU in user space is one \
         `CpuFpu`; both sides use one `Cpu` unit in `Mode::User` (XSAVEC + XRSTOR here) and \
         configs of Linux's policy for this CPU cut to the user components of the row's mask, \
         no dynamic component (every fpstate holds the whole mask; a **SKIP** where the mask is \
         not in XCR0, AMX after `ARCH_REQ_XCOMP_PERM`). Side `swap`: `fpstate::swap` (save the \
         outgoing fpstate, restore the incoming one) on every switch; the kernel thread of \
         `kthread` has an fpstate of its own and is swapped like any task; a kernel SIMD \
         section saves the current task, loads MXCSR 0x1f80, runs, and restores the current \
         task. Side `lifecycle`: `Lifecycle::switch_out` + `return_to_user` (kernel threads \
         neither saved nor loaded, restores elided while the CPU holds the task's registers), \
         sections as `kernel_fpu_begin` (which saves and drops the owner record) .. guard \
         dropped. One iteration: `pingpong` A -> B -> A (2 switches); `kthread` task -> kernel \
         thread -> task (2 switches); `rr4-simd` four ticks of four tasks round robin, each tick \
         a kernel SIMD section (SSE2 over 64 bytes) then a switch. `touch`: before each switch \
         away from it the task writes every component of the mask (XRSTOR from its own \
         non-init image, identical on both sides, inside the timing); `idle`: every task of \
         both sides is put in its init state (SSE included) before each batch, and nothing runs \
         between switches (without the reset, the XMM registers that the code between batches \
         leaves behind stayed in whichever fpstates were saved then, and the two sides moved \
         different bytes). The two sides of a row are timed \
         in alternation (batches of 128 iterations, 64 for `rr4-simd`); lifecycle / swap is the \
         per-sample ratio, median [interquartile range] (min–max). Layer counts, per \
         iteration: a run of the same loop after each timed batch, untimed (128 iterations), \
         counting the saves and restores its events report (`Save`, `Restore`; the layer keeps \
         no per-switch counter) and the elided restores and sections of `CpuFpu::stats()`; \
         `elided` = restores skipped of those needed (elided + done). Goals: lifecycle / swap \
         <= 1.02 at the median on every row, and <= 0.5 (2x faster) on `kthread`.\n"
    );
    let _ = writeln!(
        out,
        "| pattern | mask | tasks | state | swap | lifecycle | lifecycle / swap | lifecycle − swap per switch (ns) | goal | swap per iteration: saves, restores | layer per iteration: saves, restores, elided, sections | elided of restores needed |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut masks: BTreeSet<u64> = BTreeSet::new();
    for (f, ..) in SWITCH_PATTERNS {
        for (p, _) in r.rows_of(&format!("switch/{f}")) {
            if let Some((m, _)) = mask_param(p) {
                masks.insert(m);
            }
        }
    }
    let mut summary: Vec<String> = Vec::new();
    for (f, what, goal) in SWITCH_PATTERNS {
        let mut ratios: Vec<f64> = Vec::new();
        for &mask in &masks {
            for state in ["idle", "touch"] {
                let row = r.row(&format!("switch/{f}/{mask:#x}-{state}"));
                let m = row.map_or_else(|| format!("{mask:#x}"), mask_cell);
                let tasks = row.map_or("-", |x| x.show("tasks"));
                let (Some(row), Some(sw), Some(ly), Some(q)) = (
                    row.filter(|x| x.skip().is_none()),
                    row.and_then(|x| x.side("swap")),
                    row.and_then(|x| x.side("lifecycle")),
                    row.and_then(|x| x.ratio("lifecycle", "swap")),
                ) else {
                    let _ = writeln!(
                        out,
                        "| {f} | {m} | {tasks} | {state} | - | - | - | - | {} | - | - | - |",
                        missing_why(row)
                    );
                    continue;
                };
                ratios.push(q.median);
                let mut v = if q.median <= goal {
                    "met".to_string()
                } else if goal < 1.0 {
                    format!(
                        "**missed** ({:.2}x faster, goal {:.0}x)",
                        1.0 / q.median,
                        1.0 / goal
                    )
                } else {
                    format!(
                        "**missed** (+{} ns per iteration)",
                        ns(ly.median - sw.median)
                    )
                };
                if q.median > goal {
                    verdicts.push(format!(
                        "switch {f} {mask:#x} {state}: lifecycle / swap {} (goal <= {goal})",
                        q.ratio()
                    ));
                }
                if let Some(l) = row.lost(&["swap", "lifecycle"]) {
                    let _ = write!(v, "; state lost in {l}");
                }
                let counts = [
                    "layer.saves",
                    "layer.restores",
                    "layer.elided",
                    "layer.sections",
                ]
                .map(|k| per_iter(row, k).map_or_else(|| "-".to_string(), |x| format!("{x:.2}")))
                .join(", ");
                let elided = match (row.get("layer.elided"), row.get("layer.restores")) {
                    (Some(e), Some(d)) => {
                        let (e, d): (u64, u64) = (e.parse().unwrap_or(0), d.parse().unwrap_or(0));
                        format!("{e} of {}", e + d)
                    }
                    _ => "-".to_string(),
                };
                let pairs = row
                    .get("swap.pairs")
                    .map_or_else(|| "-".to_string(), |p| format!("{p}, {p}"));
                // The difference per sample, per switch: the layer's own cost
                // (or saving) on one switch.
                let per_switch = match (
                    row.diff("lifecycle", "swap"),
                    row.get("switches").and_then(|x| x.parse::<f64>().ok()),
                ) {
                    (Some(d), Some(k)) if k > 0.0 => format!(
                        "{:+.2} [{:+.2} to {:+.2}]",
                        d.median / k,
                        d.q1 / k,
                        d.q3 / k
                    ),
                    _ => "-".to_string(),
                };
                let _ = writeln!(
                    out,
                    "| {f} | {m} | {tasks} | {state} | {} | {} | {} | {per_switch} | {v} | {pairs} | {counts} | {elided} |",
                    sw.time(),
                    ly.time(),
                    q.ratio()
                );
            }
        }
        if let (Some(lo), Some(hi)) = (
            ratios.iter().copied().reduce(f64::min),
            ratios.iter().copied().reduce(f64::max),
        ) {
            summary.push(format!(
                "`{f}` ({what}): median lifecycle / swap {lo:.3} to {hi:.3} over {} rows \
                 (goal <= {goal})",
                ratios.len()
            ));
        }
    }
    if !summary.is_empty() {
        let _ = writeln!(out, "\nBy pattern:\n");
        for s in &summary {
            let _ = writeln!(out, "- {s}");
        }
    }
    if verdicts.is_empty() {
        let _ = writeln!(out, "\nEvery goal of this section with a result was met.");
    } else {
        let _ = writeln!(out, "\nGoals missed in this section:\n");
        for v in &verdicts {
            let _ = writeln!(out, "- {v}");
        }
    }
    let _ = writeln!(out);
    verdicts
}

/// `--only switch`: the run's facts for a section written on its own (the
/// rest of BENCHMARKS.md left as it is).
fn switch_run(out: &mut String, r: &Results, note: &str) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map_or("?".to_string(), |(_, v)| v.trim().to_string())
    };
    let model: u32 = field("model\t").parse().unwrap_or(0);
    let xcr0 = xstate::insn::read_xcr0().map_or(0, |x| x.bits());
    let loads: Vec<f64> = r
        .rows
        .iter()
        .filter(|(id, _)| id.starts_with("switch/"))
        .filter_map(|(_, x)| x.get("loadavg")?.parse().ok())
        .collect();
    let finished: Vec<u64> = r
        .rows
        .iter()
        .filter(|(id, _)| id.starts_with("switch/"))
        .filter_map(|(_, x)| x.get("finished_unix")?.parse().ok())
        .collect();
    let at = |t: u64| {
        cmd(
            "date",
            &["-u", "-d", &format!("@{t}"), "+%Y-%m-%d %H:%M:%S UTC"],
        )
    };
    let when = match (finished.iter().min(), finished.iter().max()) {
        (Some(&a), Some(&b)) => format!("rows finished between {} and {}", at(a), at(b)),
        _ => "rows measured at an unrecorded time".to_string(),
    };
    let settings: BTreeSet<&str> = r
        .rows
        .iter()
        .filter(|(id, _)| id.starts_with("switch/"))
        .filter_map(|(_, x)| x.get("settings"))
        .collect();
    let _ = writeln!(
        out,
        "Run: {when} (report written {}); CPU {} (family {}, model {model:#x}{}), XCR0 \
         {xcr0:#x}, kernel {}, {}. \
         Settings: {}. The machine was **shared** (2 logical CPUs; other engineers' work may run \
         alongside): 1-minute load average {} as the rows finished (the bench itself is one); \
         the sides of a row are timed in alternation so a slow stretch falls on both.\n",
        cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        field("model name"),
        field("cpu family"),
        if field("flags").split_whitespace().any(|f| f == "hypervisor") {
            ", a virtual machine"
        } else {
            ""
        },
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        cmd("rustc", &["-V"]),
        settings.into_iter().collect::<Vec<_>>().join("; "),
        match (
            loads.iter().copied().reduce(f64::min),
            loads.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) => format!("{lo:.2} to {hi:.2}"),
            _ => "unknown".to_string(),
        }
    );
    if !note.is_empty() {
        let _ = writeln!(out, "{note}");
    }
}

fn main() {
    let args: Vec<String> = env::args().collect();
    let root = criterion_dir(&args);
    let out_path = args.iter().position(|a| a == "--out").map_or_else(
        || PathBuf::from("BENCHMARKS.md"),
        |i| PathBuf::from(&args[i + 1]),
    );
    let r = load(&root);
    if r.est.is_empty() && r.rows.is_empty() {
        eprintln!(
            "no criterion results under {}: run `cargo bench` first",
            root.display()
        );
        std::process::exit(1);
    }
    let live = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");

    let mut body = String::new();
    machine(&mut body, &live, &r);
    let mut missed = save_restore(&mut body, &r);
    lesser_dynamic(&mut body, &r);
    missed.extend(layout(&mut body, &r));
    missed.extend(uabi(&mut body, &r));
    scaling(&mut body, &r);
    missed.extend(switch(&mut body, &r, true));

    // The command that produced these figures: the environment the benches
    // recorded (shorter settings) and this report's (target directory).
    let mut env_prefix = String::new();
    if settings(&r).iter().any(|s| s.contains(QUICK_ENV)) {
        let _ = write!(env_prefix, "{QUICK_ENV}=1 ");
    }
    if let Some(t) = env::var_os("CARGO_TARGET_DIR") {
        let _ = write!(env_prefix, "CARGO_TARGET_DIR={} ", t.to_string_lossy());
    }
    // `--note TEXT`: how the run was made, beyond the command (where, on
    // which commit).
    let note = args
        .iter()
        .position(|a| a == "--note")
        .map_or_else(String::new, |i| format!("{}\n\n", args[i + 1]));
    // `--only switch`: section 6 alone, with the facts of its run, for a
    // BENCHMARKS.md whose other sections come from other runs.
    if args
        .iter()
        .position(|a| a == "--only")
        .is_some_and(|i| args.get(i + 1).is_some_and(|x| x == "switch"))
    {
        let mut out = String::new();
        let mut sec = String::new();
        switch(&mut sec, &r, true);
        let (head, rest) = sec.split_once("\n\n").unwrap_or((&sec, ""));
        let _ = writeln!(out, "{head}\n");
        switch_run(&mut out, &r, note.trim_end());
        out.push_str(rest);
        fs::write(&out_path, out).expect("write report");
        eprintln!("wrote {} (section 6 only)", out_path.display());
        return;
    }
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `examples/bench-report.rs` from criterion's output and the benches' row \
         files; do not edit by hand. To reproduce:\n\n```sh\n{COMMAND}\n```\n\n\
         The figures below were produced by:\n\n```sh\n{env_prefix}cargo bench && \
         {env_prefix}cargo run --release --example bench-report\n```\n\n{note}\
         `{QUICK_ENV}=1` selects criterion's shorter settings (15 samples, a quarter of the \
         warm-up and measurement time); the settings each figure came from are under Machine. \
         Each section names the bench that produced its table, and each row says what it \
         measured on this CPU (mask, components, bytes). Results are read from \
         `$CARGO_TARGET_DIR/criterion` (default `target/criterion`): criterion's \
         `estimates.json` and the row files under `xstate-rows/` that the benches write \
         (`benches/common/mod.rs`).\n"
    );
    let _ = writeln!(out, "## Goals at a glance\n");
    if missed.is_empty() {
        let _ = writeln!(out, "Every goal with a result was met.\n");
    } else {
        let _ = writeln!(
            out,
            "Missed (median [interquartile range] (min–max) of the per-sample ratios; reasons in \
             the sections):\n"
        );
        for m in &missed {
            let _ = writeln!(out, "- {m}");
        }
        let _ = writeln!(out);
    }
    // Every skipped row, grouped by reason.
    let mut skips: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, row) in &r.rows {
        if let Some(why) = row.skip() {
            skips.entry(why).or_default().push(id);
        }
    }
    if skips.is_empty() {
        let _ = writeln!(out, "No row was skipped on this machine.\n");
    } else {
        let _ = writeln!(
            out,
            "Skipped on this machine (loud `SKIP` lines in the bench output):\n"
        );
        for (why, ids) in &skips {
            let _ = writeln!(
                out,
                "- {why}: {}",
                ids.iter()
                    .map(|x| format!("`{x}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(out);
    }
    if !r.stale.is_empty() {
        let _ = writeln!(
            out,
            "Ignored as left over from an earlier run: {}.\n",
            r.stale.join(", ")
        );
    }
    out.push_str(&body);
    fs::write(&out_path, out).expect("write report");
    eprintln!(
        "wrote {} ({} criterion results, {} row files from {})",
        out_path.display(),
        r.est.len(),
        r.rows.len(),
        root.display()
    );
}
