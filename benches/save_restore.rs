//! Save/restore paths: the bare instruction pair on a raw aligned buffer against
//! the crate's path over the same state, side by side in one run.
//!
//! For each requested-feature mask (x87|SSE 0x3, +AVX 0x7, +AVX-512 0xe7, +AMX
//! 0x600e7 after the AMX permission request) and each state (`init`, `dirty`):
//! - `xsavec-bare` / `xsavec-crate`: XSAVEC + XRSTOR on a compacted buffer, against
//!   `Fpstate::save` + `Fpstate::restore` in `Mode::User` (which issue XSAVEC and
//!   XRSTOR through `Cpu`);
//! - `xsave-bare` / `xsave-crate`: XSAVE + XRSTOR on a standard buffer, against
//!   `Cpu` as an `XsaveUnit` (`Insn::Xsave`, `Insn::Xrstor`);
//! - `xsaveopt-bare` / `xsaveopt-crate`: XSAVEOPT + XRSTOR, against the fpstate of
//!   a standard-form config (an enumeration of this CPU with XSAVEC/XSAVES hidden,
//!   for which `Fpstate::save` issues XSAVEOPT).
//!
//! Group `scaling`: the crate's XSAVEC path, dirty, for more masks, so the cost can
//! be read against the area size.
//!
//! How the state is held (the same on both sides): before each timed batch the
//! registers are loaded with XRSTOR from an image (`dirty`: every component of the
//! mask holds a non-init pattern; `init`: XSTATE_BV = 0). Inside the timed loop each
//! iteration is save-into-B then XRSTOR-from-B, so the XRSTOR at the end of one
//! iteration re-establishes the state the next save sees: nothing but the loop
//! counter runs between them. After each batch, outside the timing, XSTATE_BV of B
//! is checked against the intended state (a `WARN` line on stderr if it differs)
//! and the registers are put back in init state for criterion's own code.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{config, dirty_image, init_image, xstate_bv};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidResult, CpuidSource, LiveCpuid};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, Mode, Owner, Storage};
use xstate::insn::{self, Cpu, Insn, XsaveUnit};
use xstate::layout::Layout;

/// The masks: x87|SSE, +AVX, +AVX-512, +AMX.
const MASKS: [u64; 4] = [0x3, 0x7, 0xe7, 0x600e7];
/// Extra masks for the scaling table (subsets of AVX-512 are valid RFBMs).
const SCALING_EXTRA: [u64; 4] = [0x23, 0x43, 0x83, 0xc3];
/// `arch_prctl` request for permission to use a dynamic component (Linux uapi).
const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
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

/// Warnings already printed, one per benchmark.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Time `run` (which returns the elapsed time of its loop and the XSTATE_BV it
/// left in its buffer) in criterion batches: load `start_img` first, check the
/// saved XSTATE_BV against `want` and put the registers in init state after.
#[allow(clippy::too_many_arguments)]
fn timed(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    label: String,
    start_img: &[u8],
    init_img: &[u8],
    rfbm: XFeatures,
    want: u64,
    mut run: impl FnMut(u64) -> (Duration, u64),
) {
    g.bench_function(id, |b| {
        b.iter_custom(|n| {
            load(start_img, rfbm);
            let (d, got) = run(n);
            load(init_img, rfbm);
            let got = got & rfbm.bits();
            if got != want && WARNED.lock().expect("lock").insert(label.clone()) {
                eprintln!(
                    "\n******** WARN bench {label}: saved XSTATE_BV {got:#x}, intended {want:#x}: \
                     the state changed under the measurement ********\n"
                );
            }
            d
        })
    });
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
    let std_cfg = configs_for(&s.std_e, mask);
    // SAFETY: OSXSAVE is set and XSAVEC/XSAVEOPT are enumerated (checked in
    // `benches`); every area given to this unit is sized by its mask's layout;
    // restores run only inside the timed loops, where no compiler-held vector
    // value is live.
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
        let id = |f: &str| (BenchmarkId::new(f, &param), format!("{group}/{f}/{param}"));

        // XSAVEC + XRSTOR against Fpstate::save + Fpstate::restore.
        if !scaling {
            let mut buf = BoxedArea::zeroed(cmp.size() as usize);
            let (i, l) = id("xsavec-bare");
            timed(&mut g, i, l, img_c, init, mask, want, |n| {
                let d = bare_loop::<0>(buf.bytes_mut(), mask, n);
                (d, xstate_bv(buf.bytes()))
            });
        }
        let mut fp = Fpstate::new_boxed(e, &cfg, Owner::Host).expect("fpstate");
        assert_eq!(fp.info().features, mask);
        assert_eq!(fp.info().size, cmp.size());
        let (i, l) = id("xsavec-crate");
        timed(&mut g, i, l, img_c, init, mask, want, |n| {
            let d = fpstate_loop(&mut fp, &mut cpu, &cfg, n);
            (d, fp.xstate_bv().bits())
        });
        if scaling {
            continue;
        }

        // XSAVE + XRSTOR against the crate's XsaveUnit.
        let mut buf = BoxedArea::zeroed(std.size() as usize);
        let (i, l) = id("xsave-bare");
        timed(&mut g, i, l, img_s, init, mask, want, |n| {
            let d = bare_loop::<1>(buf.bytes_mut(), mask, n);
            (d, xstate_bv(buf.bytes()))
        });
        let mut buf = BoxedArea::zeroed(std.size() as usize);
        let (i, l) = id("xsave-crate");
        timed(&mut g, i, l, img_s, init, mask, want, |n| {
            let d = unit_xsave_loop(buf.bytes_mut(), &mut cpu, mask, n);
            (d, xstate_bv(buf.bytes()))
        });

        // XSAVEOPT + XRSTOR against a standard-form fpstate.
        let mut buf = BoxedArea::zeroed(std.size() as usize);
        let (i, l) = id("xsaveopt-bare");
        timed(&mut g, i, l, img_s, init, mask, want, |n| {
            let d = bare_loop::<2>(buf.bytes_mut(), mask, n);
            (d, xstate_bv(buf.bytes()))
        });
        let mut fp = Fpstate::new_boxed(&s.std_e, &std_cfg, Owner::Host).expect("std fpstate");
        assert_eq!(fp.info().size, std.size());
        let (i, l) = id("xsaveopt-crate");
        timed(&mut g, i, l, img_s, init, mask, want, |n| {
            let d = fpstate_loop(&mut fp, &mut cpu, &std_cfg, n);
            (d, fp.xstate_bv().bits())
        });
    }
    g.finish();
}

/// Ask Linux for AMX TILEDATA; the reason on failure.
fn request_amx(xcr0: XFeatures) -> Result<(), String> {
    if !xcr0.contains(XFeatures::XTILE) {
        return Err(format!("AMX not in XCR0 ({:#x})", xcr0.bits()));
    }
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, 18) only asks the kernel to permit
    // component 18 for this process; it touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            18 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(format!(
            "AMX in XCR0 but ARCH_REQ_XCOMP_PERM failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn benches(c: &mut Criterion) {
    let xcr0 = insn::read_xcr0().expect("OSXSAVE is not enabled: no XSAVE benches possible");
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    assert!(
        e.xsavec && e.xsaveopt,
        "this bench needs XSAVEC and XSAVEOPT"
    );
    let std_e = Enumeration::from_cpuid(&NoCompaction).expect("enumeration without XSAVEC");
    let init = init_image(&e);
    let s = Setup { e, std_e, init };
    let rows = MASKS.map(|m| (m, "save_restore"));
    let scaling = SCALING_EXTRA.map(|m| (m, "scaling"));
    for (m, group) in rows.into_iter().chain(scaling) {
        let mask = XFeatures::from_bits_retain(m);
        let skip = if mask.contains(XFeatures::XTILE) {
            request_amx(xcr0).err()
        } else if !xcr0.contains(mask) {
            Some(format!("mask {m:#x} not in XCR0 {:#x}", xcr0.bits()))
        } else {
            None
        };
        if let Some(why) = skip {
            eprintln!(
                "\n******** SKIP bench: {why}: the {group} {m:#x} rows are not measured ********\n"
            );
            continue;
        }
        bench_mask(c, &s, mask, group, group == "scaling");
    }
}

criterion_group! {
    name = save_restore;
    config = config();
    targets = benches
}
criterion_main!(save_restore);
