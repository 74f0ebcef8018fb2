//! Recorded silicon as the oracle, on every machine: `tests/silicon/<machine>/`
//! holds what a real CPU and its kernel wrote for known register states (see
//! `tests/silicon/README.md`). For each recording, with the model built from
//! the recording's own CPUID and the quirks `Quirks::for_cpu` picks for it:
//!
//! - the model, loaded from `<v>.input.bin` by XRSTOR (RFBM = XCR0), then saving
//!   with XSAVE, XSAVEOPT and XSAVEC into canary-filled buffers, writes exactly
//!   the bytes each recorded save wrote and leaves exactly the unwritten ones
//!   (`unwritten.txt`) untouched, checked with both canaries the capture used;
//! - its XINUSE and fault verdicts equal `probes.txt`;
//! - `uabi::export` of the task's fpstate equals `<v>.ptrace.bin` byte for byte;
//! - `uabi::export_sigframe` equals `<v>.sigframe.bin` on every byte the kernel
//!   wrote, with the same length;
//! - importing `<v>.ptrace.bin` and saving with XSAVEC gives `<v>.xsavec.bin`.

mod testkit;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use testkit::{Area, get_u64, loud, put_u32, put_u64};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::RecordedCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{Fpstate, Mode, Owner};
use xstate::insn::{Fault, Insn, XsaveUnit};
use xstate::model::{Quirks, XsaveMachine};
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi;

/// The canaries the capture filled its buffers with (complements).
const CANARIES: [u8; 2] = [0xcc, 0x33];
const TILECFG: u32 = 17;
const TILEDATA: u32 = 18;

/// Unwritten byte ranges (half-open) and partly written bytes (offset, mask
/// of the bits nothing wrote) of one recorded output.
type Unwritten = (Vec<(usize, usize)>, Vec<(usize, u8)>);

/// One recorded machine.
struct Machine {
    name: String,
    dir: PathBuf,
    e: Enumeration,
    quirks: Quirks,
    cfg: Configs,
    /// Per output (`<v>.<kind>`): unwritten byte ranges and partly written
    /// bytes (offset, mask of the bits nothing wrote).
    unwritten: BTreeMap<String, Unwritten>,
}

impl Machine {
    fn load(dir: &Path) -> Self {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(dir.join("cpuid.txt")).unwrap();
        let cpu = RecordedCpuid::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = Enumeration::from_cpuid(&cpu).unwrap_or_else(|err| panic!("{name}: {err}"));
        let quirks = Quirks::for_cpu(&cpu).unwrap_or_else(|err| panic!("{name}: {err}"));
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        let mut unwritten = BTreeMap::new();
        for line in fs::read_to_string(dir.join("unwritten.txt"))
            .unwrap()
            .lines()
        {
            let mut words = line.split_whitespace();
            let Some(out) = words.next() else { continue };
            let (mut ranges, mut partial) = (Vec::new(), Vec::new());
            for w in words {
                if let Some((a, m)) = w.split_once(':') {
                    let m = u8::from_str_radix(m.trim_start_matches("0x"), 16).unwrap();
                    partial.push((a.parse().unwrap(), m));
                } else {
                    let (a, b) = w.split_once('-').unwrap();
                    ranges.push((a.parse().unwrap(), b.parse().unwrap()));
                }
            }
            unwritten.insert(out.to_string(), (ranges, partial));
        }
        Self {
            name,
            dir: dir.to_path_buf(),
            e,
            quirks,
            cfg,
            unwritten,
        }
    }

    fn bin(&self, file: &str) -> Vec<u8> {
        fs::read(self.dir.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", self.name))
    }

    /// The variants, from `manifest.txt`: (name, XSTATE_BV, sigframe bytes).
    fn variants(&self) -> Vec<(String, u64, usize)> {
        let text = fs::read_to_string(self.dir.join("manifest.txt")).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("variant "))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let field = |k: &str| w[w.iter().position(|&x| x == k).unwrap() + 1];
                let bv = u64::from_str_radix(field("xstate_bv").trim_start_matches("0x"), 16);
                (
                    w[0].to_string(),
                    bv.unwrap(),
                    field("sigframe_bytes").parse().unwrap(),
                )
            })
            .collect()
    }

    /// Which bytes of output `out` the recording says were written: a mask per
    /// byte of the bits something wrote.
    fn written(&self, out: &str, len: usize) -> Vec<u8> {
        let mut w = vec![0xffu8; len];
        let (ranges, partial) = self
            .unwritten
            .get(out)
            .unwrap_or_else(|| panic!("{}: {out} not in unwritten.txt", self.name));
        for &(a, b) in ranges {
            w[a..b].fill(0);
        }
        for &(a, m) in partial {
            w[a] &= !m;
        }
        w
    }

    /// A user-mode model of this CPU with XCR0 = everything it supports and
    /// TILEDATA's XFD as a task with (`perm`) or without AMX permission sees it.
    fn model(&self) -> XsaveMachine {
        let mut m = XsaveMachine::new(&self.e, self.quirks);
        m.set_cpl0(false);
        m
    }
}

/// A 64-byte aligned copy of `bytes`.
fn area_of(bytes: &[u8]) -> Area {
    let mut a = Area::new(bytes.len(), 0);
    a.bytes_mut().copy_from_slice(bytes);
    a
}

/// What a recorded output holds where `canary` had filled the buffer: the
/// recorded bits where something wrote them, the canary's elsewhere (the
/// recording's own unwritten bytes hold its canary 0xcc).
fn with_canary(want: &[u8], written: &[u8], canary: u8) -> Vec<u8> {
    want.iter()
        .zip(written)
        .map(|(&b, &w)| (b & w) | (canary & !w))
        .collect()
}

/// Tallies and the first disagreements.
#[derive(Default)]
struct Tally {
    checks: usize,
    disagree: Vec<String>,
}

impl Tally {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.disagree.push(what());
        }
    }

    /// `got` against the recording `want` on the bits `written` says were
    /// written; elsewhere `got` must still hold `canary`'s bits.
    fn bytes(&mut self, what: &str, got: &[u8], want: &[u8], written: &[u8], canary: u8) {
        let bad: Vec<usize> = (0..want.len())
            .filter(|&i| {
                let m = written[i];
                (got[i] & m) != (want[i] & m) || (got[i] & !m) != (canary & !m)
            })
            .collect();
        self.check(got.len() >= want.len() && bad.is_empty(), || {
            let first = bad.first().copied().unwrap_or(0);
            format!(
                "{what}: {} bytes differ (canary {canary:#04x}), ranges {:?}; at {first}: got {:02x?} want {:02x?}",
                bad.len(),
                ranges(&bad),
                &got[first..(first + 16).min(got.len())],
                &want[first..(first + 16).min(want.len())],
            )
        });
    }
}

fn ranges(d: &[usize]) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = Vec::new();
    for &i in d {
        match v.last_mut() {
            Some(r) if r.1 + 1 == i => r.1 = i,
            _ => v.push((i, i + 1)),
        }
    }
    v.truncate(8);
    v
}

/// The model loads the variant's input and saves it three ways, as the
/// capture did; each output against the recording, with both canaries.
fn saves(m: &Machine, v: &str, t: &mut Tally) {
    let input = area_of(&m.bin(&format!("{v}.input.bin")));
    let xcr0 = m.e.xcr0_supported();
    for canary in CANARIES {
        let mut cpu = m.model();
        cpu.restore(Insn::Xrstor, input.bytes(), xcr0).unwrap();
        for (insn, kind) in [
            (Insn::Xsave, "xsave"),
            (Insn::Xsaveopt, "xsaveopt"),
            (Insn::Xsavec, "xsavec"),
        ] {
            let out = format!("{v}.{kind}");
            let want = m.bin(&format!("{out}.bin"));
            let mut a = Area::new(want.len(), canary);
            let r = cpu.save(insn, a.bytes_mut(), xcr0);
            t.check(r.is_ok(), || format!("{}: {out}: model {r:?}", m.name));
            let written = m.written(&out, want.len());
            let want = with_canary(&want, &written, canary);
            t.bytes(
                &format!("{}: {out}", m.name),
                a.bytes(),
                &want,
                &written,
                canary,
            );
        }
    }
}

/// The image a probe of `probes.txt` loads, rebuilt from its name: init
/// values throughout (FCW 0x037f, MXCSR 0x1f80), XSTATE_BV, one change.
fn probe_image(m: &Machine, name: &str, xstate_bv: u64) -> Option<Vec<u8>> {
    let mut img = vec![0u8; m.e.standard_size(m.e.xcr0_supported()) as usize];
    img[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    put_u32(&mut img, 24, 0x1f80);
    put_u64(&mut img, 512, xstate_bv);
    let off = |i: u32| m.e.component(i).map(|c| c.std_offset as usize);
    let tile0 = |img: &mut Vec<u8>| -> Option<()> {
        let t = off(TILECFG)?;
        img[t] = 1;
        img[t + 16] = 64;
        img[t + 48] = 16;
        Some(())
    };
    match name {
        "all-init-header"
        | "all-bits-set-init-values"
        | "x87-bit-init-values"
        | "sse-bit-init-values"
        | "avx-bit-zero"
        | "opmask-bit-zero"
        | "zmm-hi256-bit-zero"
        | "hi16-zmm-bit-zero"
        | "tilecfg-bit-palette0"
        | "xfd-armed-all-init" => {}
        "x87-bit-fcw-027f" => img[1] = 0x02,
        "x87-bit-ftw-01" => img[4] = 1,
        "sse-bit-mxcsr-7f80-xmm-zero" | "no-bits-mxcsr-7f80" | "avx-bit-zero-mxcsr-7f80" => {
            put_u32(&mut img, 24, 0x7f80)
        }
        "sse-bit-xmm0-nonzero" => img[160] = 1,
        "opmask-bit-k0-nonzero" => img[off(5)?] = 1,
        "tilecfg-bit-palette1-tile0"
        | "tilecfg-palette1-tiledata-zero"
        | "xfd-armed-tilecfg-only" => tile0(&mut img)?,
        "tilecfg-palette1-tiledata-nonzero" | "xfd-armed-tiledata-live" => {
            tile0(&mut img)?;
            img[off(TILEDATA)?] = 1;
        }
        "tiledata-bit-tilecfg-init" => img[off(TILEDATA)?] = 1,
        "tilecfg-bit-palette2-invalid" => img[off(TILECFG)?] = 2,
        _ => return None,
    }
    Some(img)
}

/// Every line of `probes.txt`: the model's XINUSE and XSAVEC XSTATE_BV, or
/// its fault, against the recording's.
fn probes(m: &Machine, t: &mut Tally) {
    let text = fs::read_to_string(m.dir.join("probes.txt")).unwrap();
    let xcr0 = m.e.xcr0_supported();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let field = |k: &str| w.iter().position(|&x| x == k).map(|p| w[p + 1]);
        let hex = |k: &str| {
            field(k).map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
        };
        let (name, bv) = (w[0], hex("image_xstate_bv").unwrap());
        let Some(img) = probe_image(m, name, bv) else {
            t.check(false, || {
                format!(
                    "{}: probe {name}: unknown probe, add its image to probe_image",
                    m.name
                )
            });
            continue;
        };
        let mut cpu = m.model();
        if field("amx_permission") == Some("0") && m.e.xfd() && m.e.supported().has_index(TILEDATA)
        {
            // No permission asked: the kernel keeps TILEDATA's XFD bit set
            // (only where the recorded CPU has XFD and TILEDATA; elsewhere
            // `amx_permission 0` means nothing was asked and nothing is armed).
            cpu.set_cpl0(true);
            cpu.set_xfd(XFeatures::XTILE_DATA).unwrap();
            cpu.set_cpl0(false);
        }
        let img = area_of(&img);
        let r = cpu.restore(Insn::Xrstor, img.bytes(), xcr0);
        let model = match r {
            Err(Fault::Nm) => "signal Illegal instruction".to_string(),
            Err(f) => format!("fault {f:?}"),
            Ok(()) => {
                let mut out = Area::new(img.bytes().len(), 0xcc);
                cpu.save(Insn::Xsavec, out.bytes_mut(), xcr0).unwrap();
                format!(
                    "xinuse {:#x} xsavec_xstate_bv {:#x}",
                    cpu.xgetbv1().bits(),
                    get_u64(out.bytes(), 512)
                )
            }
        };
        let want = match (hex("xinuse"), hex("xsavec_xstate_bv")) {
            (Some(x), Some(b)) => format!("xinuse {x:#x} xsavec_xstate_bv {b:#x}"),
            _ => line[line.find(" signal ").map_or(0, |p| p + 1)..].to_string(),
        };
        t.check(model == want, || {
            format!("{}: probe {name}: model {model}, silicon {want}", m.name)
        });
    }
}

/// The kernel's half: the task's fpstate (grown for AMX once TILEDATA was
/// used, as Linux grows it on the first #NM) saved from the loaded state, then
/// exported for ptrace and a signal frame; and the ptrace image imported back.
fn kernel(m: &Machine, v: &str, bv: u64, frame_len: usize, t: &mut Tally) {
    let (e, cfg) = (&m.e, &m.cfg);
    let input = area_of(&m.bin(&format!("{v}.input.bin")));
    let mut fp = Fpstate::new_boxed(cfg, Owner::Host).unwrap();
    if bv >> TILEDATA & 1 != 0 {
        let mut perms = ProcessPerms::new(cfg);
        perms
            .request(cfg, PermKind::Task, TILEDATA.into(), |_| true)
            .unwrap();
        fp = fp.grow_boxed(cfg, &perms, TILEDATA).unwrap();
    }
    let mut cpu = m.model();
    cpu.restore(Insn::Xrstor, input.bytes(), e.xcr0_supported())
        .unwrap();
    // The kernel saves the task (XSAVES where the CPU has it, at CPL 0).
    let mode = if e.xsaves() {
        cpu.set_cpl0(true);
        Mode::Supervisor
    } else {
        Mode::User
    };
    fp.save(&mut cpu, cfg, mode).unwrap();

    let want = m.bin(&format!("{v}.ptrace.bin"));
    let mut out = vec![0u8; want.len()];
    let r = uabi::export(cfg, &fp, cfg.user().max_features, &mut out);
    t.check(r.is_ok(), || {
        format!("{}: {v}.ptrace: export {r:?}", m.name)
    });
    let written = m.written(&format!("{v}.ptrace"), want.len());
    t.bytes(&format!("{}: {v}.ptrace", m.name), &out, &want, &written, 0);

    let want = m.bin(&format!("{v}.sigframe.bin"));
    t.check(want.len() == frame_len, || {
        format!("{}: {v}.sigframe.bin is not {frame_len} bytes", m.name)
    });
    let written = m.written(&format!("{v}.sigframe"), want.len());
    for canary in CANARIES {
        let mut out = vec![canary; want.len() + 64];
        let r = uabi::export_sigframe(cfg, &fp, cfg.user().max_features, &mut out);
        t.check(r == Ok(want.len()), || {
            format!(
                "{}: {v}.sigframe: export_sigframe {r:?}, the kernel wrote {} bytes",
                m.name,
                want.len()
            )
        });
        let want = with_canary(&want, &written, canary);
        t.bytes(
            &format!("{}: {v}.sigframe", m.name),
            &out[..want.len()],
            &want,
            &written,
            canary,
        );
    }

    // ptrace's image back in, then XSAVEC of what the fpstate restores.
    let ptrace = m.bin(&format!("{v}.ptrace.bin"));
    let mut back = Fpstate::new_boxed(cfg, Owner::Host).unwrap();
    if fp.info().features != back.info().features {
        let mut perms = ProcessPerms::new(cfg);
        perms
            .request(cfg, PermKind::Task, TILEDATA.into(), |_| true)
            .unwrap();
        back = back.grow_boxed(cfg, &perms, TILEDATA).unwrap();
    }
    let r = uabi::import(cfg, &mut back, &ptrace);
    t.check(r.is_ok(), || {
        format!("{}: {v}.ptrace import: {r:?}", m.name)
    });
    let mut cpu = m.model();
    if mode == Mode::Supervisor {
        cpu.set_cpl0(true);
    }
    back.restore(&mut cpu, cfg, mode).unwrap();
    cpu.set_cpl0(false);
    let want = m.bin(&format!("{v}.xsavec.bin"));
    let written = m.written(&format!("{v}.xsavec"), want.len());
    for canary in CANARIES {
        let mut a = Area::new(want.len(), canary);
        cpu.save(Insn::Xsavec, a.bytes_mut(), e.xcr0_supported())
            .unwrap();
        let want = with_canary(&want, &written, canary);
        t.bytes(
            &format!("{}: {v}.ptrace imported, XSAVEC", m.name),
            a.bytes(),
            &want,
            &written,
            canary,
        );
    }
}

#[test]
fn recorded_silicon_agrees() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/silicon");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.join("manifest.txt").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no recordings in {}", root.display());
    let mut t = Tally::default();
    for dir in &dirs {
        let m = Machine::load(dir);
        let variants = m.variants();
        assert!(!variants.is_empty(), "{}: no variants", m.name);
        for (v, bv, frame_len) in &variants {
            saves(&m, v, &mut t);
            kernel(&m, v, *bv, *frame_len, &mut t);
        }
        probes(&m, &mut t);
    }
    loud!(
        "recorded silicon: {} machines, {} checks, {} disagree",
        dirs.len(),
        t.checks,
        t.disagree.len()
    );
    for d in &t.disagree {
        loud!("  {d}");
    }
    assert!(
        t.disagree.is_empty(),
        "the model or uabi disagrees with recorded silicon"
    );
}
