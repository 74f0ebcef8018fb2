//! The operator's subcommands of `xstate-report` (issue 21): `compat A B`,
//! `fleet DUMPS...` and `--svg FILE`. Each host is a `cpuid -r` dump or
//! `live`; the answers come from `xstate::fleet`, which asks `guest::migrate`.

use std::fmt::Write as _;

use xstate::XFeatures;
use xstate::cpuid::{LiveCpuid, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::feature::name_of;
use xstate::fleet::{Compat, Fleet, GuestModel, Move, compat, kvm_buffer_size};
use xstate::guest::XsaveFlags;

use super::{json_hex, json_str};

#[path = "svg.rs"]
pub mod svg;

pub const USAGE: &str = "\
usage: xstate-report compat A B [--json] [--svg FILE]
       xstate-report fleet HOST... [--json] [--svg FILE]
       xstate-report [report options] --svg FILE

A host is a `cpuid -r` dump (a file of layouts/, `cpuid -r -1`) or `live`.

  compat A B   can the largest guest KVM offers on A move to B, and back: per
               component why not (guest::migrate's reasons), KVM's XSAVE buffer
               size on each side, the largest guest model that moves both ways.
               Exit 0: both ways; 1: not; 2: bad input.
  fleet HOST...  the largest guest XSAVE model every host runs with the same
               CPUID leaf 0xD (sizes, standard offsets, alignment and XFD flags
               equal; AVX-512's three with AVX, AMX's two, MPX's two, CET's two),
               the host holding each other component back, and the leaf 0xD for
               KVM_SET_CPUID2. Exit 0, or 2 on bad input.
  --json       machine-readable output
  --svg FILE   also draw the layouts: standard and compacted forms side by side,
               host and guest fpstates; with compat or fleet each host's.
";

/// One host of a subcommand: what it was named and its enumeration.
pub struct Host {
    pub name: String,
    pub e: Enumeration,
}

/// A host from a dump path or `live`.
pub fn load(arg: &str) -> Result<Host, String> {
    if arg == "live" {
        let e = Enumeration::from_cpuid(&LiveCpuid)
            .map_err(|err| format!("live CPU: CPUID leaf 0xD refused: {err}"))?;
        return Ok(Host {
            name: "live".into(),
            e,
        });
    }
    let text = std::fs::read_to_string(arg).map_err(|err| format!("cannot read {arg}: {err}"))?;
    let dump = RecordedCpuid::parse(&text).map_err(|err| format!("{arg}: {err}"))?;
    let e = Enumeration::from_cpuid(&dump)
        .map_err(|err| format!("{arg}: CPUID leaf 0xD refused: {err}"))?;
    let name = std::path::Path::new(arg)
        .file_stem()
        .map_or(arg.to_owned(), |s| s.to_string_lossy().into_owned());
    Ok(Host { name, e })
}

/// What a subcommand prints and its exit status.
pub struct Outcome {
    pub text: String,
    pub status: u8,
}

/// `--json` and `--svg FILE` out of `argv`; the rest as given.
fn options(argv: &[String]) -> Result<(bool, Option<String>, Vec<String>), String> {
    let (mut json, mut svg, mut rest) = (false, None, Vec::new());
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" if !json => json = true,
            "--json" => return Err("--json given twice".into()),
            "--svg" if svg.is_none() => {
                svg = Some(it.next().ok_or("--svg needs a file")?.clone());
            }
            "--svg" => return Err("--svg given twice".into()),
            s if s.starts_with("--svg=") && svg.is_none() => {
                svg = s.strip_prefix("--svg=").map(str::to_owned);
            }
            s if s.starts_with("--") => return Err(format!("unknown argument `{s}` (try --help)")),
            _ => rest.push(a.clone()),
        }
    }
    Ok((json, svg, rest))
}

/// The subcommands: `Some` when `argv` (without the program name) is one of
/// them, or the plain report with `--svg`; `None` leaves it to the report.
pub fn dispatch(argv: &[String]) -> Option<Result<Outcome, String>> {
    match argv.first().map(String::as_str) {
        Some("compat") => Some(run_compat(argv.get(1..).unwrap_or_default())),
        Some("fleet") => Some(run_fleet(argv.get(1..).unwrap_or_default())),
        _ if argv.iter().any(|a| a == "--svg" || a.starts_with("--svg=")) => Some(run_svg(argv)),
        _ => None,
    }
}

/// Print a subcommand's outcome (or its one-line error, exit 2).
pub fn finish(r: Result<Outcome, String>) -> std::process::ExitCode {
    use std::io::Write as _;
    match r {
        Ok(o) => {
            // A closed pipe (`| head`) is not worth a panic.
            let _ = std::io::stdout().write_all(o.text.as_bytes());
            std::process::ExitCode::from(o.status)
        }
        Err(err) => {
            eprintln!("xstate-report: error: {}", err.replace('\n', " "));
            std::process::ExitCode::from(2)
        }
    }
}

fn help(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "-h" || a == "--help")
}

fn write_svg(path: &str, svg: &str) -> Result<(), String> {
    std::fs::write(path, svg).map_err(|err| format!("cannot write {path}: {err}"))
}

fn run_compat(argv: &[String]) -> Result<Outcome, String> {
    if help(argv) {
        return Ok(Outcome {
            text: USAGE.into(),
            status: 0,
        });
    }
    let (json, svg, rest) = options(argv)?;
    let [a, b] = rest.as_slice() else {
        return Err(format!(
            "compat takes two hosts (dumps or `live`), got {}",
            rest.len()
        ));
    };
    let (a, b) = (load(a)?, load(b)?);
    let c = compat(&a.e, &b.e).map_err(|err| format!("compat: {err}"))?;
    if let Some(path) = &svg {
        write_svg(path, &svg::hosts(&[&a, &b], Some(c.both.model()))?)?;
    }
    let text = if json {
        compat_json(&a, &b, &c)
    } else {
        compat_human(&a, &b, &c)
    };
    Ok(Outcome {
        text,
        status: if c.ok() { 0 } else { 1 },
    })
}

fn run_fleet(argv: &[String]) -> Result<Outcome, String> {
    if help(argv) {
        return Ok(Outcome {
            text: USAGE.into(),
            status: 0,
        });
    }
    let (json, svg, rest) = options(argv)?;
    if rest.is_empty() {
        return Err("fleet takes one host or more (dumps or `live`)".into());
    }
    let hosts = rest
        .iter()
        .map(|a| load(a))
        .collect::<Result<Vec<_>, _>>()?;
    let es: Vec<Enumeration> = hosts.iter().map(|h| h.e.clone()).collect();
    let f = Fleet::new(&es).map_err(|err| format!("fleet: {err}"))?;
    if let Some(path) = &svg {
        let refs: Vec<&Host> = hosts.iter().collect();
        write_svg(path, &svg::hosts(&refs, Some(f.model()))?)?;
    }
    let text = if json {
        fleet_json(&hosts, &f)?
    } else {
        fleet_human(&hosts, &f)?
    };
    Ok(Outcome { text, status: 0 })
}

/// The plain report's `--svg FILE`: the picture of `--cpuid FILE` (or the live
/// CPU), then the report itself without `--svg`.
fn run_svg(argv: &[String]) -> Result<Outcome, String> {
    let mut rest = Vec::new();
    let mut path = None;
    let mut cpuid = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--svg" || a.starts_with("--svg=") {
            if path.is_some() {
                return Err("--svg given twice".into());
            }
            path = Some(match a.strip_prefix("--svg=") {
                Some(p) => p.to_owned(),
                None => it.next().ok_or("--svg needs a file")?.clone(),
            });
            continue;
        }
        if a == "--cpuid" {
            cpuid = it.next().cloned();
            rest.push(a.clone());
            rest.extend(cpuid.clone());
            continue;
        }
        if let Some(p) = a.strip_prefix("--cpuid=") {
            cpuid = Some(p.to_owned());
        }
        rest.push(a.clone());
    }
    let path = path.ok_or("--svg needs a file")?;
    let text = super::run(rest)?.unwrap_or_else(|| super::USAGE.to_owned());
    let host = load(cpuid.as_deref().unwrap_or("live"))?;
    write_svg(&path, &svg::one(&host)?)?;
    Ok(Outcome { text, status: 0 })
}

/// `0x7 (x87 SSE AVX)`.
pub fn mask_words(m: XFeatures) -> String {
    let names: Vec<&str> = m.indices().map(name_of).collect();
    if names.is_empty() {
        format!("{:#x} (none)", m.bits())
    } else {
        format!("{:#x} ({})", m.bits(), names.join(" "))
    }
}

fn flag_words(f: XsaveFlags) -> String {
    let names: Vec<&str> = f.iter_names().map(|(n, _)| n).collect();
    format!(
        "{:#x} ({})",
        f.bits(),
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(" ")
        }
    )
}

fn model_line(m: GuestModel) -> String {
    format!(
        "XCR0 {}, IA32_XSS {}, extensions {}",
        mask_words(m.xcr0),
        mask_words(m.xss),
        flag_words(m.flags)
    )
}

fn move_human(o: &mut String, from: &str, to: &str, m: &Move) {
    let _ = writeln!(
        o,
        "\n{from} -> {to}: {}",
        match &m.verdict {
            Ok(()) => "yes".to_owned(),
            Err(e) => format!("no: {e}"),
        }
    );
    for (i, r) in m.reasons() {
        let _ = writeln!(o, "  {i:>2} {:<18} {r}", name_of(i));
    }
    if let Some(e) = &m.flags {
        let _ = writeln!(o, "     {:<18} {e}", "XSAVE extensions");
    }
    if let Some(e) = &m.other {
        let _ = writeln!(
            o,
            "     {:<18} {e} (no smaller guest tried)",
            "the whole guest"
        );
    }
    let _ = writeln!(
        o,
        "  the state buffer alone, for a guest booted afresh on {to} (guest::compatible): {}",
        match &m.buffer {
            Ok(()) => "moves (translate)".to_owned(),
            Err(e) => format!("no: {e}"),
        }
    );
}

fn compat_human(a: &Host, b: &Host, c: &Compat) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "A: {}", a.name);
    let _ = writeln!(
        o,
        "   offers guests {}",
        model_line(GuestModel::offered(&a.e))
    );
    let _ = writeln!(o, "B: {}", b.name);
    let _ = writeln!(
        o,
        "   offers guests {}",
        model_line(GuestModel::offered(&b.e))
    );
    move_human(&mut o, "A", "B", &c.a_to_b);
    move_human(&mut o, "B", "A", &c.b_to_a);
    let _ = writeln!(
        o,
        "\nKVM XSAVE buffer (max(4096, KVM_CAP_XSAVE2)): A {} bytes, B {} bytes",
        c.a_kvm_size, c.b_kvm_size
    );
    let m = c.both.model();
    let _ = writeln!(o, "\nmoves both ways: {}", model_line(m));
    let names = ["A", "B"];
    for (i, x) in c.both.exclusions() {
        let _ = writeln!(
            o,
            "  left out {i:>2} {:<18} held back by {}: {}",
            name_of(i),
            names.get(x.host).unwrap_or(&"?"),
            x.why
        );
    }
    let _ = writeln!(
        o,
        "\nverdict: {}",
        if c.ok() {
            "compatible both ways (exit 0)"
        } else {
            "not compatible (exit 1)"
        }
    );
    o
}

fn move_json(m: &Move) -> String {
    let reasons: Vec<String> = m
        .reasons()
        .map(|(i, r)| {
            format!(
                "{{\"index\": {i}, \"name\": {}, \"reason\": {}}}",
                json_str(name_of(i)),
                json_str(&r.to_string())
            )
        })
        .collect();
    let opt = |e: &Option<xstate::guest::GuestError>| {
        e.as_ref()
            .map_or("null".to_owned(), |e| json_str(&e.to_string()))
    };
    format!(
        "{{\"ok\": {}, \"refusal\": {}, \"reasons\": [{}], \"extensions\": {}, \"other\": {}, \"buffer\": {}}}",
        m.ok(),
        m.verdict
            .as_ref()
            .err()
            .map_or("null".to_owned(), |e| json_str(&e.to_string())),
        reasons.join(", "),
        opt(&m.flags),
        opt(&m.other),
        opt(&m.buffer.err())
    )
}

fn model_json(m: GuestModel) -> String {
    format!(
        "{{\"xcr0\": {}, \"xss\": {}, \"flags\": {}}}",
        json_hex(m.xcr0),
        json_hex(m.xss),
        json_str(&format!("{:#x}", m.flags.bits()))
    )
}

fn exclusions_json(f: &Fleet, host: impl Fn(usize) -> String) -> String {
    let v: Vec<String> = f
        .exclusions()
        .map(|(i, x)| {
            format!(
                "{{\"index\": {i}, \"name\": {}, \"held_back_by\": {}, \"why\": {}}}",
                json_str(name_of(i)),
                host(x.host),
                json_str(&x.why.to_string())
            )
        })
        .collect();
    format!("[{}]", v.join(", "))
}

fn compat_json(a: &Host, b: &Host, c: &Compat) -> String {
    let host = |h: &Host, size: usize| {
        format!(
            "{{\"source\": {}, \"offers\": {}, \"kvm_buffer_size\": {size}}}",
            json_str(&h.name),
            model_json(GuestModel::offered(&h.e))
        )
    };
    let mut o = String::from("{\n");
    let _ = writeln!(o, "  \"a\": {},", host(a, c.a_kvm_size));
    let _ = writeln!(o, "  \"b\": {},", host(b, c.b_kvm_size));
    let _ = writeln!(o, "  \"a_to_b\": {},", move_json(&c.a_to_b));
    let _ = writeln!(o, "  \"b_to_a\": {},", move_json(&c.b_to_a));
    let m = c.both.model();
    let _ = writeln!(
        o,
        "  \"both_ways\": {{\"model\": {}, \"excluded\": {}}},",
        model_json(m),
        exclusions_json(&c.both, |h| json_str(if h == 0 { "a" } else { "b" }))
    );
    let _ = writeln!(o, "  \"compatible\": {}", c.ok());
    o.push_str("}\n");
    o
}

/// The fleet's leaf 0xD, one `cpuid -r` line per subleaf, as
/// `KVM_SET_CPUID2` takes it (function 0xd, KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
fn leaf_lines(hosts: &[Host], f: &Fleet) -> Result<Vec<(u32, [u32; 4])>, String> {
    let first = hosts.first().ok_or("no hosts")?;
    let g = f
        .guest(&first.e)
        .map_err(|err| format!("the fleet's guest on {}: {err}", first.name))?;
    Ok(g.subleaves()
        .map(|(s, r)| (s, [r.eax, r.ebx, r.ecx, r.edx]))
        .collect())
}

fn fleet_human(hosts: &[Host], f: &Fleet) -> Result<String, String> {
    let mut o = String::new();
    let _ = writeln!(o, "fleet of {} hosts:", hosts.len());
    for (k, h) in hosts.iter().enumerate() {
        let _ = writeln!(
            o,
            "  {k:>3}  {}  (offers {})",
            h.name,
            mask_words(GuestModel::offered(&h.e).features())
        );
    }
    let m = f.model();
    let _ = writeln!(o, "\nshared guest model: {}", model_line(m));
    let name = |k: usize| hosts.get(k).map_or("?", |h| h.name.as_str());
    let _ = writeln!(o, "\nleft out:");
    let mut none = true;
    for (i, x) in f.exclusions() {
        none = false;
        let _ = writeln!(
            o,
            "  {i:>2} {:<18} held back by host {} ({}): {}",
            name_of(i),
            x.host,
            name(x.host),
            x.why
        );
    }
    for (flag, k) in f.flags_held() {
        none = false;
        let _ = writeln!(
            o,
            "     {:<18} held back by host {k} ({}): not there",
            flag_words(flag),
            name(k)
        );
    }
    if none {
        let _ = writeln!(o, "  nothing: every host offers the same");
    }
    let sizes: Vec<usize> = hosts
        .iter()
        .map(|h| kvm_buffer_size(&h.e, m.xcr0))
        .collect();
    let _ = writeln!(
        o,
        "\nKVM XSAVE buffer for the model's state: {} bytes (max(4096, standard size))",
        sizes.first().copied().unwrap_or(0)
    );
    let _ = writeln!(
        o,
        "\nguest CPUID leaf 0xD for KVM_SET_CPUID2 (function 0xd, flags KVM_CPUID_FLAG_SIGNIFCANT_INDEX; EBX at XCR0/IA32_XSS fully enabled, KVM updates it on XSETBV):"
    );
    for (s, [a, b, c, d]) in leaf_lines(hosts, f)? {
        let _ = writeln!(
            o,
            "0x0000000d 0x{s:02x}: eax=0x{a:08x} ebx=0x{b:08x} ecx=0x{c:08x} edx=0x{d:08x}"
        );
    }
    Ok(o)
}

fn fleet_json(hosts: &[Host], f: &Fleet) -> Result<String, String> {
    let mut o = String::from("{\n");
    let names: Vec<String> = hosts.iter().map(|h| json_str(&h.name)).collect();
    let _ = writeln!(o, "  \"hosts\": [{}],", names.join(", "));
    let _ = writeln!(o, "  \"model\": {},", model_json(f.model()));
    let _ = writeln!(
        o,
        "  \"excluded\": {},",
        exclusions_json(f, |k| k.to_string())
    );
    let flags: Vec<String> = f
        .flags_held()
        .map(|(fl, k)| {
            format!(
                "{{\"flag\": {}, \"held_back_by\": {k}}}",
                json_str(&format!("{:#x}", fl.bits()))
            )
        })
        .collect();
    let _ = writeln!(o, "  \"extensions_excluded\": [{}],", flags.join(", "));
    let size = hosts
        .first()
        .map_or(0, |h| kvm_buffer_size(&h.e, f.model().xcr0));
    let _ = writeln!(o, "  \"kvm_buffer_size\": {size},");
    let leaf: Vec<String> = leaf_lines(hosts, f)?
        .into_iter()
        .map(|(s, [a, b, c, d])| {
            format!(
                "{{\"function\": 13, \"index\": {s}, \"flags\": 1, \"eax\": {a}, \"ebx\": {b}, \"ecx\": {c}, \"edx\": {d}}}"
            )
        })
        .collect();
    let _ = writeln!(o, "  \"cpuid_0xd\": [\n    {}\n  ]", leaf.join(",\n    "));
    o.push_str("}\n");
    Ok(o)
}
