//! The lesser dynamic cost, measured on silicon.
//!
//! CET_S (component 12, 24 bytes) is a supervisor component: user space cannot
//! XRSTORS it. Its stand-in here is the AVX-512 opmask (component 5, 64 bytes), a
//! user component of similar size that XRSTOR can load. For a base set of other
//! components (all of them dirty), XRSTOR with RFBM = base | opmask from a
//! compacted buffer where the opmask is:
//! - `a-absent`: absent from XCOMP_BV, yet in RFBM: what a host fpstate is under
//!   the lesser dynamic scheme (XRSTOR puts the component in init state);
//! - `b-init-in-buffer`: present in XCOMP_BV with its XSTATE_BV bit clear: the
//!   "eat the 24 bytes" scheme for a task that never uses it (also init state);
//! - `c-in-use`: present and in use (loaded from the buffer).
//!
//! Bases: `avx512` (x87, SSE, AVX, ZMM_Hi256, Hi16_ZMM: 0xc7) and `legacy` (x87,
//! SSE: 0x3). Before every XRSTOR of every variant, a `kmovq k1` puts the opmask in
//! use (as a guest's CET_S is when the host state comes back); that instruction is
//! in all three loops alike. After each batch, outside the timing, an XSAVEC
//! checks the opmask ended where the variant says (init for a and b, loaded for
//! c); a mismatch prints `WARN` and is counted in the row file.
//!
//! The three variants of a base are one row, `lesser_dynamic/xrstor/{base}`,
//! timed in alternation (see `common::interleaved`), so the ratios b / a and
//! c / a come from batches microseconds apart. The row needs the opmask (and,
//! for `avx512`, the other AVX-512 components) in XCR0 and XSAVEC; without
//! them it prints a loud SKIP naming what is missing.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Held, Row, Side, config, dirty_image, init_image, interleaved, missing, xstate_bv};
use criterion::{Criterion, criterion_group, criterion_main};
use xstate::XFeatures;
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Storage};
use xstate::insn;
use xstate::layout::Layout;

const OPMASK: XFeatures = XFeatures::OPMASK;
/// The bases: name and mask.
const BASES: [(&str, u64); 2] = [("avx512", 0xc7), ("legacy", 0x3)];

/// Put the opmask in use (k1 = a non-zero value).
///
/// # Safety
/// The CPU has AVX-512F enabled in XCR0 (opmask state usable).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn dirty_opmask() {
    // SAFETY: the caller guarantees AVX-512F; k1 is declared clobbered.
    unsafe {
        core::arch::asm!("mov {t}, 0x5a5a5a5a5a5a5a5a", "kmovq k1, {t}", t = out(reg) _,
                         out("k1") _, options(nomem, nostack, preserves_flags));
    }
}

/// `n` times: opmask in use, then XRSTOR from `img` with `rfbm`.
///
/// # Safety
/// As for [`dirty_opmask`], and `img` is a well-formed, 64-byte aligned compacted
/// area for `rfbm`.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn restore_loop(img: &[u8], rfbm: XFeatures, n: u64) -> Duration {
    let p = img.as_ptr();
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { dirty_opmask() };
        // SAFETY: the caller guarantees the area; no compiler value lives in
        // vector registers inside this loop.
        unsafe { insn::xrstor(p, rfbm) };
    }
    start.elapsed()
}

static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn benches(c: &mut Criterion) {
    let xcr0 = insn::read_xcr0().expect("OSXSAVE is not enabled");
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    let init = init_image(&e);
    let mut g = c.benchmark_group("lesser_dynamic");
    for (name, base) in BASES {
        let base = XFeatures::from_bits_retain(base);
        let rfbm = base | OPMASK;
        let row = Row::new("lesser_dynamic", "xrstor", name).mask(base);
        // The opmask instruction needs AVX-512F state enabled, which Linux
        // enables only with all three AVX-512 components.
        let skip = missing(rfbm | XFeatures::AVX512, xcr0, "XCR0").or_else(|| {
            (!e.xsavec()).then(|| "XSAVEC not enumerated (CPUID(0xD,1).EAX[1])".to_string())
        });
        if let Some(why) = skip {
            row.skip(&why);
            continue;
        }
        let full = xcr0 & (XFeatures::LEGACY | XFeatures::AVX | XFeatures::AVX512);
        let without = Layout::compacted(&e, base).expect("layout");
        let with = Layout::compacted(&e, rfbm).expect("layout");
        let variants = [
            ("a", dirty_image(&without, base), false),
            ("b", dirty_image(&with, base), false),
            ("c", dirty_image(&with, rfbm), true),
        ];
        let init = init.bytes();
        let mut sides: Vec<Side<'_>> = variants
            .iter()
            .map(|(variant, img, loaded)| {
                let label = format!("lesser_dynamic/xrstor/{name} ({variant})");
                let mut check = BoxedArea::zeroed(e.compacted_size(full) as usize);
                Side::checked(variant, move |n| {
                    // SAFETY: AVX-512 is in XCR0 (checked above); `img` was built
                    // from the compacted layout of its XCOMP_BV, with XSTATE_BV
                    // within it and a zero header otherwise.
                    let d = unsafe { restore_loop(img.bytes(), rfbm, n) };
                    let p = check.bytes_mut().as_mut_ptr();
                    // SAFETY: `check` is zeroed, aligned and sized for `full`,
                    // and XSAVEC is enumerated (checked above).
                    unsafe { insn::xsavec(p, full) };
                    // SAFETY: `init` is a standard-form image with XSTATE_BV = 0.
                    unsafe { insn::xrstor(init.as_ptr(), full) };
                    let xbv = xstate_bv(check.bytes());
                    let opmask_in_use = xbv & OPMASK.bits() != 0;
                    if opmask_in_use != *loaded
                        && WARNED.lock().expect("lock").insert(label.clone())
                    {
                        eprintln!(
                            "\n******** WARN bench {label}: after XRSTOR the opmask is {} \
                             (XSTATE_BV {xbv:#x}) ********\n",
                            if opmask_in_use { "in use" } else { "init" }
                        );
                    }
                    (d, Held::one(opmask_in_use == *loaded))
                })
            })
            .collect();
        let row = row
            .with("bytes.a", without.size())
            .with("bytes.b", with.size())
            .with("bytes.c", with.size())
            .with("rfbm", format!("{:#x}", rfbm.bits()));
        interleaved(&mut g, row, &mut sides);
    }
    g.finish();
}

criterion_group! {
    name = lesser_dynamic;
    config = config();
    targets = benches
}
criterion_main!(lesser_dynamic);
