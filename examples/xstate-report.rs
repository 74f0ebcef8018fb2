//! Report what the XSAVE core makes of a CPU: the live one or a recorded dump.
//!
//! ```text
//! cargo run --example xstate-report                      # live CPU, human-readable
//! cargo run --example xstate-report -- --cpuid FILE      # a recorded `cpuid -r` dump
//! cargo run --example xstate-report -- --json            # machine-readable
//! cargo run --example xstate-report -- --dmesg           # Linux's boot lines
//! cargo run --example xstate-report -- --record > FILE   # record this CPU
//! cargo run --example xstate-report -- compat A B        # migration verdict (ops.rs)
//! cargo run --example xstate-report -- fleet DUMPS...    # a fleet's guest model (ops.rs)
//! cargo run --example xstate-report -- --svg FILE        # the layouts as a picture (svg.rs)
//! ```
//!
//! Errors print one line on stderr and exit with code 2.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use xstate::XFeatures;
use xstate::config::{Configs, FpuConfig, Policy};
use xstate::cpuid::{CpuidSource, LiveCpuid, MXCSR_MASK_LINE, NoVendor, RecordedCpuid, Vendor};
use xstate::enumerate::{
    EXTENDED_START, EnumError, Enumeration, LEGACY_SIZE, MxcsrMaskSource, SizeCheck,
};
use xstate::feature::{CATALOG, name_of};
use xstate::layout::{Form, Layout};

#[path = "xstate-report/ops.rs"]
pub mod ops;

const USAGE: &str = "\
usage: xstate-report [--cpuid FILE] [--xcomp-bv MASK] [--json | --dmesg | --record]

Report the XSAVE state components, layouts and Linux-style configs of a CPU.

  (default)        the live CPU (CPUID, XCR0 via XGETBV), human-readable
  --cpuid FILE     a recorded dump in the `cpuid -r` line format instead
  --xcomp-bv MASK  compacted layout for this XCOMP_BV (hex, 0x optional, bit 63
                   ignored); default: every supported XCR0 | IA32_XSS component
  --json           machine-readable output
  --dmesg          the x86/fpu lines Linux prints at boot for this CPU
  --record         dump the live CPU's leaves 0, 1, 6, 7 and 0xD in the `cpuid -r`
                   format, with FXSAVE's MXCSR_MASK as a `# mxcsr_mask 0x...`
                   comment line (SOURCE_DATE from the environment dates the dump)
  -h, --help       this text

Subcommands for fleets and VMMs: `compat A B`, `fleet HOST...`, and `--svg FILE`
with any of the above (`xstate-report compat --help`).

Errors print one line on stderr and exit with code 2.
";

/// Width of the drawn map of the compacted area, in columns.
const MAP_COLUMNS: u64 = 60;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Human,
    Json,
    Dmesg,
    Record,
}

struct Args {
    cpuid: Option<String>,
    xcomp_bv: Option<XFeatures>,
    mode: Mode,
}

enum Parsed {
    Run(Args),
    Help,
}

fn parse_mask(s: &str) -> Result<XFeatures, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let v = u64::from_str_radix(digits, 16)
        .map_err(|_| format!("--xcomp-bv: `{s}` is not a 64-bit hex mask"))?;
    // An area's XCOMP_BV carries bit 63 (compacted form); it is not a component.
    Ok(XFeatures::from_bits_retain(v & !xstate::XCOMP_BV_COMPACTED))
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut args = Args {
        cpuid: None,
        xcomp_bv: None,
        mode: Mode::Human,
    };
    let mut modes = Vec::new();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--cpuid" => {
                if args.cpuid.is_some() {
                    return Err("--cpuid given twice".into());
                }
                args.cpuid = Some(value("--cpuid")?);
            }
            "--xcomp-bv" => {
                if args.xcomp_bv.is_some() {
                    return Err("--xcomp-bv given twice".into());
                }
                args.xcomp_bv = Some(parse_mask(&value("--xcomp-bv")?)?);
            }
            "--json" | "--dmesg" | "--record" if inline.is_none() => {
                modes.push(flag.clone());
                args.mode = match flag.as_str() {
                    "--json" => Mode::Json,
                    "--dmesg" => Mode::Dmesg,
                    _ => Mode::Record,
                };
            }
            _ => return Err(format!("unknown argument `{arg}` (try --help)")),
        }
    }
    if modes.len() > 1 {
        return Err(format!("{} exclude each other", modes.join(" and ")));
    }
    if args.mode == Mode::Record && args.cpuid.is_some() {
        return Err("--record reads the live CPU; it cannot be combined with --cpuid".into());
    }
    if matches!(args.mode, Mode::Record | Mode::Dmesg) && args.xcomp_bv.is_some() {
        return Err("--xcomp-bv has no effect with --record or --dmesg".into());
    }
    Ok(Parsed::Run(args))
}

#[cfg(target_arch = "x86_64")]
fn live_xcr0() -> Option<XFeatures> {
    xstate::insn::read_xcr0()
}

#[cfg(not(target_arch = "x86_64"))]
fn live_xcr0() -> Option<XFeatures> {
    None
}

/// The live-only facts: XCR0 and the cross-check of CPUID's current-size reports.
struct Live {
    xcr0: Option<XFeatures>,
    /// What Linux loads into IA32_XSS (user space cannot read the MSR).
    xss: XFeatures,
    check: Option<Result<SizeCheck, EnumError>>,
}

struct Report {
    /// What the facts come from, one line.
    source: String,
    /// The dump's `# cpu:` comment, or the live CPU's identification.
    cpu: Option<String>,
    e: Enumeration,
    configs: Configs,
    compacted: Layout,
    live: Option<Live>,
    /// Leaf 0's vendor, or that the source has none (nothing is guessed).
    vendor: Result<Vendor, NoVendor>,
}

fn build(args: &Args) -> Result<Report, String> {
    let (source, cpu, e, live_src, vendor) = match &args.cpuid {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read {path}: {err}"))?;
            let dump = RecordedCpuid::parse(&text).map_err(|err| format!("{path}: {err}"))?;
            let e = Enumeration::from_cpuid(&dump)
                .map_err(|err| format!("{path}: CPUID leaf 0xD refused: {err}"))?;
            let cpu = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("# cpu:"))
                .map(|c| c.trim().to_owned());
            let vendor = Vendor::of(&dump);
            (format!("recorded dump {path}"), cpu, e, false, vendor)
        }
        None => {
            let e = Enumeration::from_cpuid(&LiveCpuid)
                .map_err(|err| format!("live CPU: CPUID leaf 0xD refused: {err}"))?;
            (
                "live CPU (CPUID instruction, XCR0 via XGETBV)".to_owned(),
                Some(cpu_ident(&LiveCpuid)),
                e,
                true,
                Vendor::of(&LiveCpuid),
            )
        }
    };
    let configs = Configs::new(&e, &Policy::linux(&e))
        .map_err(|err| format!("Linux policy refused: {err}"))?;
    let xcomp_bv = args.xcomp_bv.unwrap_or(e.supported());
    let compacted = Layout::compacted(&e, xcomp_bv)
        .map_err(|err| format!("--xcomp-bv {:#x}: {err}", xcomp_bv.bits()))?;
    let live = live_src.then(|| {
        let xcr0 = live_xcr0();
        let xss = configs.xss();
        let check = xcr0.map(|x| e.check_live_sizes(&LiveCpuid, x, xss));
        Live { xcr0, xss, check }
    });
    Ok(Report {
        source,
        cpu,
        e,
        configs,
        compacted,
        live,
        vendor,
    })
}

/// The vendor as leaf 0 spells it, or `None` for a source without leaf 0.
fn vendor_name(v: Result<Vendor, NoVendor>) -> Option<String> {
    Some(match v.ok()? {
        Vendor::Intel => "GenuineIntel".to_owned(),
        Vendor::Amd => "AuthenticAMD".to_owned(),
        Vendor::Hygon => "HygonGenuine".to_owned(),
        Vendor::Other(name) => printable(&name),
        _ => "unknown".to_owned(),
    })
}

/// Where the MXCSR mask came from, for a reader, and the JSON word for it.
fn mxcsr_source(r: &Report) -> (&'static str, &'static str) {
    match (r.e.mxcsr_source(), r.live.is_some()) {
        (MxcsrMaskSource::Measured, true) => ("FXSAVE on this CPU", "measured"),
        (MxcsrMaskSource::Measured, false) => (
            "recorded: the dump's `# mxcsr_mask` line (FXSAVE on the recorded CPU)",
            "recorded",
        ),
        (MxcsrMaskSource::Vendor, _) => (
            "the vendor's: the dump has no `# mxcsr_mask` line (re-record with --record)",
            "vendor",
        ),
        _ => (
            "baseline: the dump has neither leaf 0 nor a `# mxcsr_mask` line (re-record with --record)",
            "baseline",
        ),
    }
}

/// Vendor, brand string, CPUID.1:EAX and its family/model/stepping decoding.
fn cpu_ident(src: &impl CpuidSource) -> String {
    let l0 = src.cpuid(0, 0);
    let vendor: Vec<u8> = [l0.ebx, l0.edx, l0.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    let mut brand = Vec::new();
    if src.cpuid(0x8000_0000, 0).eax >= 0x8000_0004 {
        for leaf in 0x8000_0002..=0x8000_0004 {
            let r = src.cpuid(leaf, 0);
            brand.extend(
                [r.eax, r.ebx, r.ecx, r.edx]
                    .iter()
                    .flat_map(|r| r.to_le_bytes()),
            );
        }
    }
    let eax = src.cpuid(1, 0).eax;
    let base_family = (eax >> 8) & 0xf;
    let mut family = base_family;
    let mut model = (eax >> 4) & 0xf;
    if base_family == 0xf {
        family += (eax >> 20) & 0xff;
    }
    if base_family == 0x6 || base_family == 0xf {
        model |= ((eax >> 16) & 0xf) << 4;
    }
    format!(
        "{} \"{}\" (CPUID.1:EAX {eax:08X}: family {family:#x} model {model:#x} stepping {})",
        printable(&vendor),
        printable(&brand),
        eax & 0xf
    )
}

/// ASCII text from register bytes: NULs dropped, blanks trimmed, anything else odd as `?`.
fn printable(bytes: &[u8]) -> String {
    let s: String = bytes
        .iter()
        .filter(|&&b| b != 0)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    s.trim().to_owned()
}

fn form_name(f: Form) -> &'static str {
    match f {
        Form::Standard => "standard",
        Form::Compacted => "compacted",
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn human(r: &Report) -> String {
    let e = &r.e;
    let mut o = String::new();
    let _ = writeln!(o, "source: {}", r.source);
    if let Some(cpu) = &r.cpu {
        let _ = writeln!(o, "cpu:    {cpu}");
    }
    match vendor_name(r.vendor) {
        Some(v) => {
            let _ = writeln!(o, "vendor: {v}");
        }
        None => {
            let _ = writeln!(
                o,
                "vendor: NONE: the dump has no leaf 0; AMD and Intel cannot be told apart \
                 (the model's quirks are not chosen: Quirks::for_cpu refuses)"
            );
        }
    }
    let _ = writeln!(
        o,
        "MXCSR_MASK: {:#x} ({})",
        r.e.mxcsr_mask(),
        mxcsr_source(r).0
    );

    let _ = writeln!(o, "\nsupported components:");
    let _ = writeln!(
        o,
        "  {:>3}  {:<18} {:>6}  {:>10}  flags",
        "idx", "name", "size", "std offset"
    );
    for i in e.supported().indices() {
        let c = e.component(i).expect("supported");
        let off = if c.supervisor {
            "-".to_owned()
        } else {
            c.std_offset.to_string()
        };
        let mut flags = vec![if c.supervisor { "supervisor" } else { "user" }];
        if c.align64 {
            flags.push("align64");
        }
        if c.xfd {
            flags.push("xfd");
        }
        if !e.usable().has_index(i) {
            // Linux switches it off: CPUID feature flag clear, or not a component it knows.
            flags.push("off:flag-clear");
        }
        let _ = writeln!(
            o,
            "  {i:>3}  {:<18} {:>6}  {off:>10}  {}",
            name_of(i),
            c.size,
            flags.join(" ")
        );
    }
    let _ = writeln!(o, "\nXCR0 supported: {:#x}", e.xcr0_supported().bits());
    let _ = writeln!(o, "XSS supported:  {:#x}", e.xss_supported().bits());
    let _ = writeln!(
        o,
        "usable:         {:#x} ({})",
        e.usable().bits(),
        if e.flags_known() {
            "CPUID feature flags of leaves 1, 6, 7 set"
        } else {
            "no feature leaves in the source: leaf 0xD taken at its word"
        }
    );
    let _ = writeln!(
        o,
        "XSAVEOPT {}  XSAVEC {}  XGETBV1 {}  XSAVES {}  XFD {}",
        yes(e.xsaveopt()),
        yes(e.xsavec()),
        yes(e.xgetbv1()),
        yes(e.xsaves()),
        yes(e.xfd())
    );

    let l = &r.compacted;
    let _ = writeln!(
        o,
        "\ncompacted layout for XCOMP_BV {:#x} (in an area: {:#x}), {} bytes:",
        l.mask().bits(),
        l.xcomp_bv(),
        l.size()
    );
    let _ = writeln!(
        o,
        "  {:>3}  {:<18} {:>6}  {:>6}",
        "idx", "name", "offset", "size"
    );
    for i in l.mask().indices().filter(|&i| i >= 2) {
        let (off, size) = (
            l.offset_of(i).expect("in mask"),
            l.size_of(i).expect("in mask"),
        );
        let _ = writeln!(o, "  {i:>3}  {:<18} {off:>6}  {size:>6}", name_of(i));
    }
    o.push_str(&draw_map(l));

    let (computed, reported) = (e.standard_max_size(), e.reported_max_standard());
    let _ = writeln!(
        o,
        "\nstandard max size: computed {computed}, CPUID(0xD,0).ECX reports {reported}{}",
        if reported > computed {
            format!(" (over-reports by {} bytes)", reported - computed)
        } else {
            String::new()
        }
    );

    if let Some(live) = &r.live {
        let _ = writeln!(o, "\nlive checks:");
        match live.xcr0 {
            Some(x) => {
                let _ = writeln!(o, "  XCR0 (XGETBV): {:#x}", x.bits());
            }
            None => {
                let _ = writeln!(
                    o,
                    "  XCR0: not readable (CPUID.1:ECX.OSXSAVE clear); size checks skipped"
                );
            }
        }
        let _ = writeln!(
            o,
            "  IA32_XSS: not readable from user space; assumed {:#x}, what Linux loads",
            live.xss.bits()
        );
        match &live.check {
            Some(Ok(c)) => {
                let _ = writeln!(
                    o,
                    "  CPUID(0xD,0).EBX over-reports by {} bytes, CPUID(0xD,1).EBX by {} bytes",
                    c.standard_excess, c.compacted_excess
                );
            }
            Some(Err(err)) => {
                let _ = writeln!(o, "  size check FAILED: {err}");
            }
            None => {}
        }
    }

    let _ = writeln!(o, "\nconfigs (Linux policy):");
    let _ = writeln!(
        o,
        "  {:<7} {:<10} {:>10} {:>9}  {:>10} {:>9}",
        "", "form", "max", "max size", "default", "def. size"
    );
    for (name, c) in configs(&r.configs) {
        let _ = writeln!(
            o,
            "  {name:<7} {:<10} {:>10} {:>9}  {:>10} {:>9}",
            form_name(c.form),
            format!("{:#x}", c.max_features.bits()),
            c.max_size,
            format!("{:#x}", c.default_features.bits()),
            c.default_size
        );
    }
    o
}

fn configs(c: &Configs) -> [(&'static str, &FpuConfig); 3] {
    [
        ("kernel", c.kernel()),
        ("user", c.user()),
        ("guest", c.guest()),
    ]
}

/// One bar per region of the compacted area, scaled to [`MAP_COLUMNS`]: `#` for the
/// region, `.` for alignment padding before it, blanks for what lies before.
fn draw_map(l: &Layout) -> String {
    let total = u64::from(l.size()).max(1);
    let col = |byte: u64| byte * MAP_COLUMNS / total;
    let mut rows: Vec<(String, u64, u64)> = vec![
        ("legacy area".to_owned(), 0, u64::from(LEGACY_SIZE)),
        (
            "XSAVE header".to_owned(),
            u64::from(LEGACY_SIZE),
            u64::from(EXTENDED_START),
        ),
    ];
    for i in l.mask().indices().filter(|&i| i >= 2) {
        let r = l.range_of(i).expect("in mask");
        rows.push((format!("{i} {}", name_of(i)), r.start as u64, r.end as u64));
    }
    let mut o = format!(
        "\nmap ({MAP_COLUMNS} columns = {} bytes; `.` is alignment padding):\n",
        l.size()
    );
    let mut prev_end = 0u64;
    for (name, start, end) in rows {
        // Blank up to where the previous region ended, `.` for the padding, `#` for
        // the region itself; padding too small for a column still gets one `.`.
        let pad_from = col(prev_end);
        let mut bar_from = col(start).max(pad_from);
        if start > prev_end && bar_from == pad_from {
            bar_from += 1;
        }
        let width = col(end).saturating_sub(bar_from).max(1);
        let _ = writeln!(
            o,
            "  {start:>6}  {name:<20} |{}{}{}",
            " ".repeat(pad_from as usize),
            ".".repeat((bar_from - pad_from) as usize),
            "#".repeat(width as usize)
        );
        prev_end = end;
    }
    o
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_hex(m: XFeatures) -> String {
    json_str(&format!("{:#x}", m.bits()))
}

fn json(r: &Report) -> String {
    let e = &r.e;
    let mut o = String::from("{\n");
    let _ = writeln!(o, "  \"source\": {},", json_str(&r.source));
    let _ = writeln!(
        o,
        "  \"vendor\": {},",
        vendor_name(r.vendor).map_or("null".to_owned(), |v| json_str(&v))
    );
    let _ = writeln!(
        o,
        "  \"mxcsr_mask\": {},\n  \"mxcsr_mask_source\": {},",
        json_str(&format!("{:#x}", e.mxcsr_mask())),
        json_str(mxcsr_source(r).1)
    );
    let _ = writeln!(o, "  \"xcr0_supported\": {},", json_hex(e.xcr0_supported()));
    let _ = writeln!(o, "  \"xss_supported\": {},", json_hex(e.xss_supported()));
    let _ = writeln!(o, "  \"usable\": {},", json_hex(e.usable()));
    let _ = writeln!(o, "  \"feature_flags_known\": {},", e.flags_known());
    let comps: Vec<String> = e
        .supported()
        .indices()
        .map(|i| {
            let c = e.component(i).expect("supported");
            format!(
                "    {{\"index\": {i}, \"name\": {}, \"size\": {}, \"standard_offset\": {}, \"supervisor\": {}, \"align64\": {}, \"xfd\": {}}}",
                json_str(name_of(i)),
                c.size,
                if c.supervisor { "null".to_owned() } else { c.std_offset.to_string() },
                c.supervisor,
                c.align64,
                c.xfd
            )
        })
        .collect();
    let _ = writeln!(o, "  \"components\": [\n{}\n  ],", comps.join(",\n"));
    let l = &r.compacted;
    let offsets: Vec<String> = l
        .mask()
        .indices()
        .filter(|&i| i >= 2)
        .map(|i| format!("\"{i}\": {}", l.offset_of(i).expect("in mask")))
        .collect();
    let _ = writeln!(
        o,
        "  \"compacted\": {{\"xcomp_bv\": {}, \"size\": {}, \"offsets\": {{{}}}}},",
        json_hex(l.mask()),
        l.size(),
        offsets.join(", ")
    );
    let _ = writeln!(o, "  \"standard_max_size\": {},", e.standard_max_size());
    let cfgs: Vec<String> = configs(&r.configs)
        .iter()
        .map(|(name, c)| {
            format!(
                "    \"{name}\": {{\"max_features\": {}, \"default_features\": {}, \"max_size\": {}, \"default_size\": {}}}",
                json_hex(c.max_features),
                json_hex(c.default_features),
                c.max_size,
                c.default_size
            )
        })
        .collect();
    let _ = writeln!(o, "  \"configs\": {{\n{}\n  }}", cfgs.join(",\n"));
    o.push_str("}\n");
    o
}

/// Linux's boot lines (arch/x86/kernel/fpu/xstate.c) for the features it puts in
/// its buffers: `fpu_kernel_cfg.max_features`, which here is the guest config's max
/// (it includes the guest-only CET_S). On the live CPU, user components are limited
/// to what XCR0 actually enables.
fn dmesg(r: &Report) -> Result<String, String> {
    let e = &r.e;
    let mut p = Policy::linux(e);
    if let Some(live) = &r.live {
        let xcr0 = live
            .xcr0
            .ok_or("XCR0 is not readable (CPUID.1:ECX.OSXSAVE clear): Linux runs without XSAVE")?;
        p.enabled &= xcr0 | e.xss_supported();
        p.dynamic &= p.enabled;
        p.independent &= p.enabled;
        p.guest_only &= p.enabled;
    }
    let c = Configs::new(e, &p).map_err(|err| format!("Linux policy refused: {err}"))?;
    let mask = c.guest().max_features;
    let l =
        Layout::compacted(e, mask).map_err(|err| format!("layout of {:#x}: {err}", mask.bits()))?;
    let mut o = String::new();
    for i in mask.indices() {
        let desc = CATALOG
            .get(i as usize)
            .map_or("unknown xstate feature", |f| f.linux_desc);
        let _ = writeln!(
            o,
            "x86/fpu: Supporting XSAVE feature 0x{:03x}: '{desc}'",
            1u64 << i
        );
    }
    for i in mask.indices().filter(|&i| i >= 2) {
        let (off, size) = (
            l.offset_of(i).expect("in mask"),
            l.size_of(i).expect("in mask"),
        );
        let _ = writeln!(
            o,
            "x86/fpu: xstate_offset[{i}]: {off:4}, xstate_sizes[{i}]: {size:4}"
        );
    }
    let _ = writeln!(
        o,
        "x86/fpu: Enabled xstate features {:#x}, context size is {} bytes, using '{}' format.",
        mask.bits(),
        c.guest().max_size,
        form_name(c.guest().form)
    );
    Ok(o)
}

fn record() -> String {
    let cpu = LiveCpuid;
    let mut o = String::new();
    let _ = writeln!(o, "# cpu: {}", cpu_ident(&cpu));
    let date = std::env::var("SOURCE_DATE")
        .ok()
        .filter(|d| !d.trim().is_empty());
    let _ = writeln!(
        o,
        "# source: recorded by cargo run --example xstate-report -- --record{}: leaf 0, leaf 1, leaf 6, leaf 7.0 and 7.1, every non-zero subleaf 0..63 of leaf 0xD",
        date.map(|d| format!(" on {}", printable(d.trim().as_bytes())))
            .unwrap_or_default()
    );
    match live_xcr0() {
        Some(x) => {
            let _ = writeln!(
                o,
                "# note: XCR0 was {:#x}; CPUID(0xD,0).EBX and CPUID(0xD,1).EBX depend on the XCR0 and IA32_XSS in force",
                x.bits()
            );
        }
        None => {
            let _ = writeln!(o, "# note: XCR0 not readable (CPUID.1:ECX.OSXSAVE clear)");
        }
    }
    if let Some(mask) = cpu.mxcsr_mask() {
        let _ = writeln!(
            o,
            "{MXCSR_MASK_LINE} {mask:#010x} (FXSAVE's MXCSR_MASK on this CPU; CPUID does not enumerate it)"
        );
    }
    if cpu.cpuid(1, 0).ecx & (1 << 31) != 0 {
        let h = cpu.cpuid(0x4000_0000, 0);
        let sig: Vec<u8> = [h.ebx, h.ecx, h.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        let _ = writeln!(
            o,
            "# note: virtual machine view of the host CPU (CPUID.1:ECX hypervisor bit set, signature \"{}\")",
            printable(&sig)
        );
    }
    let mut line = |leaf: u32, sub: u32| {
        let r = cpu.cpuid(leaf, sub);
        let _ = writeln!(
            o,
            "0x{leaf:08x} 0x{sub:02x}: eax=0x{:08x} ebx=0x{:08x} ecx=0x{:08x} edx=0x{:08x}",
            r.eax, r.ebx, r.ecx, r.edx
        );
    };
    line(0, 0);
    line(1, 0);
    line(6, 0);
    line(7, 0);
    line(7, 1);
    for sub in 0..64 {
        let r = cpu.cpuid(0xd, sub);
        if r != Default::default() {
            line(0xd, sub);
        }
    }
    o
}

/// One run on the arguments (without the program name): the text to print, `None`
/// for the usage text, or the one-line error.
pub fn run(argv: impl IntoIterator<Item = String>) -> Result<Option<String>, String> {
    let args = match parse_args(argv)? {
        Parsed::Help => return Ok(None),
        Parsed::Run(a) => a,
    };
    if args.mode == Mode::Record {
        return Ok(Some(record()));
    }
    let r = build(&args)?;
    Ok(Some(match args.mode {
        Mode::Human => human(&r),
        Mode::Json => json(&r),
        Mode::Dmesg => dmesg(&r)?,
        Mode::Record => unreachable!("handled above"),
    }))
}

/// The exit status of a run: 0, or 2 for any error (a refused CPUID included).
pub fn exit_status(r: &Result<Option<String>, String>) -> u8 {
    if r.is_ok() { 0 } else { 2 }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(r) = ops::dispatch(&argv) {
        return ops::finish(r);
    }
    let r = run(argv);
    let status = exit_status(&r);
    match r {
        Ok(out) => {
            let text = out.as_deref().unwrap_or(USAGE);
            // A closed pipe (`| head`) is not worth a panic.
            let _ = std::io::stdout().write_all(text.as_bytes());
        }
        Err(err) => {
            eprintln!("xstate-report: error: {}", err.replace('\n', " "));
        }
    }
    ExitCode::from(status)
}
