//! Save/restore paths: the bare instruction pair on a raw aligned buffer against
//! the crate's path over the same state, timed in alternation (see
//! `common::interleaved`): batches of the two sides take turns tens of
//! microseconds apart, so each crate / bare ratio comes from one stretch of
//! time and machine drift cancels.
//!
//! Rows are named by the requested-feature mask they measure, and a mask means
//! the same components on every CPU: x87|SSE 0x3, +AVX 0x7, +AVX-512 0xe7,
//! +AMX 0x600e7 (after the AMX permission request), and, where it is none of
//! these, every component of this CPU's XCR0. A row whose mask is not in XCR0,
//! or whose instruction the CPU does not enumerate, prints a loud SKIP naming
//! what is missing (and its row file says so). For each mask and each state
//! (`init`, `dirty`), rows `save_restore/{pair}/{mask}-{state}`, sides `bare`
//! and `crate`:
//! - `xsavec`: XSAVEC + XRSTOR on a compacted buffer, against `Fpstate::save` +
//!   `Fpstate::restore` in `Mode::User` (which issue XSAVEC and XRSTOR through
//!   `Cpu`);
//! - `xsave`: XSAVE + XRSTOR on a standard buffer, against `Cpu` as an
//!   `XsaveUnit` (`Insn::Xsave`, `Insn::Xrstor`);
//! - `xsaveopt`: XSAVEOPT + XRSTOR, against the fpstate of a standard-form
//!   config (an enumeration of this CPU with XSAVEC/XSAVES hidden, for which
//!   `Fpstate::save` issues XSAVEOPT).
//!
//! Every row also times side `bound`: the same pair through a `BoundArea`
//! (`Fpstate::bind` for the fpstate rows, `Cpu::bind` for the XSAVE row),
//! checked once outside the timing, so each call is the instruction alone.
//!
//! Group `scaling`: the crate's XSAVEC path alone, dirty, for more masks
//! (subsets of AVX-512), so the cost can be read against the area size.
//!
//! How the state is held (the same on both sides): a side's iterations run in
//! timed batches (`common::BATCH`, alternating with the other side's); before
//! each batch the registers are loaded with XRSTOR from an image (`dirty`: every component of the mask holds a
//! non-init pattern; `init`: XSTATE_BV = 0). Inside the batch each iteration is
//! save-into-B then XRSTOR-from-B, so the XRSTOR at the end of one iteration
//! re-establishes the state the next save sees: nothing but the loop counter
//! runs between them. After each batch, outside the timing, XSTATE_BV of B is
//! checked against the intended state (a `WARN` line on stderr the first time
//! it differs; the row file counts the batches that did) and the registers
//! are put back in init state for the code that runs in between.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Held, Row, Side, config, dirty_image, init_image, interleaved, missing, xstate_bv};
use criterion::{Criterion, criterion_group, criterion_main};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidResult, CpuidSource, LiveCpuid};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, Mode, Owner, Storage};
use xstate::insn::{self, BoundArea, Cpu, Insn, XsaveUnit};
use xstate::layout::Layout;

/// The masks: x87|SSE, +AVX, +AVX-512, +AMX.
const MASKS: [u64; 4] = [0x3, 0x7, 0xe7, 0x600e7];
/// Extra masks for the scaling table (subsets of AVX-512 are valid RFBMs).
const SCALING_EXTRA: [u64; 4] = [0x23, 0x43, 0x83, 0xc3];

/// Load the registers from `img` for `rfbm`.
fn load(img: &[u8], rfbm: XFeatures) {
    assert_eq!(img.as_ptr() as usize % 64, 0);
    // SAFETY: OSXSAVE is set (XCR0 was read); `img` is 64-byte aligned, as large
    // as its form needs for `rfbm`, with a well-formed header (built above); only
    // the loop counter and criterion's bookkeeping run around it, and the
    // registers it replaces hold no compiler values across this call.
    unsafe { insn::xrstor(img.as_ptr(), rfbm) };
}

/// The bare pair, `iters` times: save (`S` = 0 XSAVEC, 1 XSAVE, 2 XSAVEOPT) into
/// `buf`, then XRSTOR from `buf`.
#[inline(never)]
fn bare_loop<const S: u8>(buf: &mut [u8], rfbm: XFeatures, iters: u64) -> Duration {
    let p = buf.as_mut_ptr();
    let start = Instant::now();
    for _ in 0..iters {
        match S {
            // SAFETY: `buf` is a zeroed, 64-byte aligned BoxedArea of the size of
            // its form for `rfbm` (bench setup); OSXSAVE and XSAVEC are present.
            0 => unsafe { insn::xsavec(p, rfbm) },
            // SAFETY: as above, standard form.
            1 => unsafe { insn::xsave(p, rfbm) },
            // SAFETY: as above; the CPU has XSAVEOPT (checked at setup).
            _ => unsafe { insn::xsaveopt(p, rfbm) },
        }
        // SAFETY: the save above left a well-formed header in `buf`; no compiler
        // value lives in vector registers inside this loop.
        unsafe { insn::xrstor(p, rfbm) };
    }
    start.elapsed()
}

/// The crate's fpstate pair, `iters` times.
#[inline(never)]
fn fpstate_loop(fp: &mut Fpstate<BoxedArea>, cpu: &mut Cpu, cfg: &Configs, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        fp.save(cpu, cfg, Mode::User).expect("save");
        fp.restore(cpu, cfg, Mode::User).expect("restore");
    }
    start.elapsed()
}

/// The crate's bound pair (`Fpstate::bind` or `Cpu::bind`, checked once
/// outside the timing), `iters` times.
#[inline(never)]
fn bound_loop(b: &mut BoundArea<'_>, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        b.save();
        b.restore();
    }
    start.elapsed()
}

/// The crate's `XsaveUnit` pair with XSAVE, `iters` times.
#[inline(never)]
fn unit_xsave_loop(buf: &mut [u8], cpu: &mut Cpu, rfbm: XFeatures, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        cpu.save(Insn::Xsave, buf, rfbm).expect("save");
        cpu.restore(Insn::Xrstor, buf, rfbm).expect("restore");
    }
    start.elapsed()
}

/// This CPU with XSAVEC and XSAVES hidden: its configs are standard-form, so
/// `Fpstate::save` issues XSAVEOPT.
struct NoCompaction;

impl CpuidSource for NoCompaction {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let mut r = LiveCpuid.cpuid(leaf, subleaf);
        if leaf == 0xd && subleaf == 1 {
            r.eax &= !0b1010;
            r.ecx = 0;
            r.edx = 0;
        }
        r
    }
}

/// Configs whose host fpstate holds exactly `mask` (no dynamic, supervisor or
/// guest-only components), so fpstate save and restore both use RFBM = `mask`.
fn configs_for(e: &Enumeration, mask: XFeatures) -> Configs {
    let p = Policy {
        enabled: mask,
        dynamic: XFeatures::empty(),
        independent: XFeatures::empty(),
        guest_only: XFeatures::empty(),
    };
    Configs::new(e, &p).expect("configs for mask")
}

/// Warnings already printed, one per row.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// One side of a row: one batch (`common::interleaved` sizes and alternates
/// them). The registers are loaded from `start_img` first (a context switch
/// can hand the task back in another state: Linux may return it with SSE in
/// use, and the save-then-restore loop would carry that to the end of the
/// batch, so every batch starts afresh); `run` times its loop and returns the
/// XSTATE_BV it left in its buffer, checked against `want` outside the timing
/// (a batch that fails counts as one that lost its state); then the
/// registers are put in init state for the code that runs in between.
fn side<'a>(
    name: &'static str,
    label: String,
    start_img: &'a [u8],
    init_img: &'a [u8],
    rfbm: XFeatures,
    want: u64,
    mut run: impl FnMut(u64) -> (Duration, u64) + 'a,
) -> Side<'a> {
    Side::checked(name, move |n| {
        load(start_img, rfbm);
        let (d, got) = run(n);
        load(init_img, rfbm);
        let got = got & rfbm.bits();
        if got != want
            && WARNED
                .lock()
                .expect("lock")
                .insert(format!("{label} {name}"))
        {
            eprintln!(
                "\n******** WARN bench {label} ({name}): saved XSTATE_BV {got:#x}, intended \
                 {want:#x}: the state changed under the measurement (batches counted in the \
                 row file) ********\n"
            );
        }
        (d, Held::one(got == want))
    })
}

/// What every mask shares.
struct Setup {
    e: Enumeration,
    /// This CPU seen without XSAVEC/XSAVES (standard-form configs).
    std_e: Enumeration,
    init: BoxedArea,
}

fn bench_mask(c: &mut Criterion, s: &Setup, mask: XFeatures, group: &str, scaling: bool) {
    let e = &s.e;
    let cmp = Layout::compacted(e, mask).expect("compacted layout");
    let std = Layout::standard(e, mask).expect("standard layout");
    let dirty_c = dirty_image(&cmp, mask);
    let dirty_s = dirty_image(&std, mask);
    let cfg = configs_for(e, mask);
    // SAFETY: OSXSAVE is set (XCR0 was read in `benches`); every area given to
    // this unit is sized by its mask's layout; restores run only inside the
    // timed loops, where no compiler-held vector value is live.
    let mut cpu = unsafe { Cpu::user() }.expect("this CPU's XSAVE unit");
    let mut g = c.benchmark_group(group);
    let states: &[&str] = if scaling {
        &["dirty"]
    } else {
        &["init", "dirty"]
    };
    let init = s.init.bytes();
    for &state in states {
        let dirty = state == "dirty";
        let want = if dirty { mask.bits() } else { 0 };
        let param = format!("{:#x}-{state}", mask.bits());
        let img_c: &[u8] = if dirty { dirty_c.bytes() } else { init };
        let img_s: &[u8] = if dirty { dirty_s.bytes() } else { init };
        let row = |f: &str, what: &str, form: &Layout| {
            Row::new(group, f, &param)
                .mask(mask)
                .with("state", state)
                .with("pair", what)
                .with("bytes", form.size())
        };
        let label = |f: &str| format!("{group}/{f}/{param}");

        // XSAVEC + XRSTOR against Fpstate::save + Fpstate::restore (on a CPU
        // without XSAVEC the fpstate is standard-form: nothing to compare).
        if !e.xsavec() {
            let f = if scaling { "xsavec-crate" } else { "xsavec" };
            row(f, "XSAVEC+XRSTOR", &cmp).skip("XSAVEC not enumerated (CPUID(0xD,1).EAX[1])");
        } else {
            let mut fp = Fpstate::new_boxed(&cfg, Owner::Host).expect("fpstate");
            let mut fp_b = Fpstate::new_boxed(&cfg, Owner::Host).expect("fpstate");
            assert_eq!(fp.info().features, mask);
            assert_eq!(fp.info().size, cmp.size());
            let l = label(if scaling { "xsavec-crate" } else { "xsavec" });
            // The bound side's unit: a clone, so the checked side keeps `cpu`.
            let bound_cpu = cpu.clone();
            // The side owns the fpstate and borrows the unit and configs.
            let (unit, cfg) = (&mut cpu, &cfg);
            let crate_side = side("crate", l.clone(), img_c, init, mask, want, move |n| {
                let d = fpstate_loop(&mut fp, unit, cfg, n);
                (d, fp.xstate_bv().bits())
            });
            if scaling {
                let r = row("xsavec-crate", "XSAVEC+XRSTOR", &cmp);
                interleaved(&mut g, r, &mut [crate_side]);
            } else {
                let mut buf = BoxedArea::zeroed(cmp.size() as usize);
                let bare_side = side("bare", l.clone(), img_c, init, mask, want, |n| {
                    let d = bare_loop::<0>(buf.bytes_mut(), mask, n);
                    (d, xstate_bv(buf.bytes()))
                });
                let mut bound = fp_b.bind(&bound_cpu, cfg, Mode::User).expect("bind");
                let bound_side = side("bound", l, img_c, init, mask, want, move |n| {
                    let d = bound_loop(&mut bound, n);
                    (d, xstate_bv(bound.area()))
                });
                let r = row("xsavec", "XSAVEC+XRSTOR", &cmp);
                interleaved(&mut g, r, &mut [bare_side, crate_side, bound_side]);
            }
        }
        if scaling {
            continue;
        }

        // XSAVE + XRSTOR against the crate's XsaveUnit.
        let mut buf_b = BoxedArea::zeroed(std.size() as usize);
        let mut buf_c = BoxedArea::zeroed(std.size() as usize);
        let mut buf_d = BoxedArea::zeroed(std.size() as usize);
        let bound_cpu = cpu.clone();
        let mut bound = bound_cpu
            .bind(buf_d.bytes_mut(), Insn::Xsave, mask, Insn::Xrstor, mask)
            .expect("bind");
        let l = label("xsave");
        let mut sides = [
            side("bare", l.clone(), img_s, init, mask, want, |n| {
                let d = bare_loop::<1>(buf_b.bytes_mut(), mask, n);
                (d, xstate_bv(buf_b.bytes()))
            }),
            side("crate", l.clone(), img_s, init, mask, want, |n| {
                let d = unit_xsave_loop(buf_c.bytes_mut(), &mut cpu, mask, n);
                (d, xstate_bv(buf_c.bytes()))
            }),
            side("bound", l, img_s, init, mask, want, |n| {
                let d = bound_loop(&mut bound, n);
                (d, xstate_bv(bound.area()))
            }),
        ];
        interleaved(&mut g, row("xsave", "XSAVE+XRSTOR", &std), &mut sides);
        // The sides hold `cpu` until dropped.
        drop(sides);

        // XSAVEOPT + XRSTOR against a standard-form fpstate.
        if !e.xsaveopt() {
            row("xsaveopt", "XSAVEOPT+XRSTOR", &std)
                .skip("XSAVEOPT not enumerated (CPUID(0xD,1).EAX[0])");
            continue;
        }
        let std_cfg = configs_for(&s.std_e, mask);
        let mut fp = Fpstate::new_boxed(&std_cfg, Owner::Host).expect("std fpstate");
        let mut fp_b = Fpstate::new_boxed(&std_cfg, Owner::Host).expect("std fpstate");
        assert_eq!(fp.info().size, std.size());
        let mut buf = BoxedArea::zeroed(std.size() as usize);
        let bound_cpu = cpu.clone();
        let mut bound = fp_b.bind(&bound_cpu, &std_cfg, Mode::User).expect("bind");
        let l = label("xsaveopt");
        let mut sides = [
            side("bare", l.clone(), img_s, init, mask, want, |n| {
                let d = bare_loop::<2>(buf.bytes_mut(), mask, n);
                (d, xstate_bv(buf.bytes()))
            }),
            side("crate", l.clone(), img_s, init, mask, want, |n| {
                let d = fpstate_loop(&mut fp, &mut cpu, &std_cfg, n);
                (d, fp.xstate_bv().bits())
            }),
            side("bound", l, img_s, init, mask, want, |n| {
                let d = bound_loop(&mut bound, n);
                (d, xstate_bv(bound.area()))
            }),
        ];
        interleaved(&mut g, row("xsaveopt", "XSAVEOPT+XRSTOR", &std), &mut sides);
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let xcr0 = insn::read_xcr0().expect("OSXSAVE is not enabled: no XSAVE benches possible");
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    let std_e = Enumeration::from_cpuid(&NoCompaction).expect("enumeration without XSAVEC");
    let init = init_image(&e);
    // AMX TILEDATA sits behind XFD until this process has permission.
    let amx = if xcr0.contains(XFeatures::XTILE) {
        common::permit_dynamic(xcr0)
    } else {
        Ok(())
    };
    let s = Setup { e, std_e, init };
    // The fixed masks, then this CPU's whole XCR0 where it is none of them.
    let mut masks: Vec<u64> = MASKS.to_vec();
    if !masks.contains(&xcr0.bits()) {
        masks.push(xcr0.bits());
    }
    let rows = masks.into_iter().map(|m| (m, "save_restore"));
    let scaling = SCALING_EXTRA.map(|m| (m, "scaling"));
    for (m, group) in rows.chain(scaling) {
        let mask = XFeatures::from_bits_retain(m);
        let scaled = group == "scaling";
        let skip = missing(mask, xcr0, "XCR0").or_else(|| {
            if mask.intersects(XFeatures::DYNAMIC) {
                amx.clone().err()
            } else {
                None
            }
        });
        if let Some(why) = skip {
            let states: &[&str] = if scaled {
                &["dirty"]
            } else {
                &["init", "dirty"]
            };
            let pairs: &[&str] = if scaled {
                &["xsavec-crate"]
            } else {
                &["xsavec", "xsave", "xsaveopt"]
            };
            for state in states {
                for f in pairs {
                    Row::new(group, f, &format!("{m:#x}-{state}"))
                        .mask(mask)
                        .with("state", state)
                        .skip(&why);
                }
            }
            continue;
        }
        bench_mask(c, &s, mask, group, scaled);
    }
}

criterion_group! {
    name = save_restore;
    config = config();
    targets = benches
}
criterion_main!(save_restore);
