//! The hardware oracle for layouts: the live CPU's XSAVEC and XSAVE decide where
//! every component goes, and [`Layout`] must agree byte for byte.
//!
//! For every subset (RFBM) of the user components enabled in XCR0 that this test
//! knows how to load, one `asm!` block saves the harness's own state, loads known
//! byte patterns into every register of every exercised component (XRSTOR of a
//! standard-format area built here from CPUID's standard offsets), runs XSAVEC or
//! XSAVE with that RFBM into a canary-filled area, and restores the harness state.
//! The area is then compared with what the SDM rules and [`Layout`] predict: each
//! component's pattern exactly at its range, header fields, legacy-region fields,
//! and canary everywhere else (gaps, unrequested components, past the end).
//!
//! The pattern of byte `k` of component `i` depends on both, so a component
//! written at a wrong offset, or the wrong component at a right one, shows.
#![cfg(target_arch = "x86_64")]
// Test code: panics are the reporting mechanism, and loops over byte offsets
// indexing buffers of sizes checked just before say what is compared in the
// SDM's own terms (offset 24 is MXCSR, 160 is XMM0).
#![allow(clippy::needless_range_loop)]

mod testkit;

use std::arch::asm;
use std::ops::Range;
use std::sync::Once;

use testkit::{Area, CANARIES, loud, x87_image};
use xstate::XFeatures;
use xstate::cpuid::{CpuidSource, LiveCpuid};
use xstate::enumerate::Enumeration;
use xstate::insn::{read_mxcsr_mask, read_xcr0, xrstor, xsave, xsavec};
use xstate::layout::{Form, Layout};

/// Canary bytes kept past the end of every area to catch overruns.
const TAIL: usize = 4096;

/// Components this test loads with patterns of its own (bits in XCR0 outside
/// this set are reported with a SKIP line and left alone).
const X87: u32 = 0;
const SSE: u32 = 1;
const AVX: u32 = 2;
const OPMASK: u32 = 5;
const ZMM_HI256: u32 = 6;
const HI16_ZMM: u32 = 7;
const PKRU: u32 = 9;
const XTILE_CFG: u32 = 17;
const XTILE_DATA: u32 = 18;

/// `arch_prctl` request for permission to use a dynamic component (Linux uapi).
const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;

macro_rules! load_then_save {
    ($(#[$doc:meta])* $name:ident, $save:literal) => {
        $(#[$doc])*
        ///
        /// One `asm!` block: XSAVE of the harness state (mask `full`) into `harness`,
        /// XRSTOR of `load` (mask `full`), the save under test with `rfbm` into
        /// `out`, XRSTOR of `harness`. No compiler code runs between the load and
        /// the save, so no compiler-held vector value can disturb the patterns, and
        /// the harness gets its own registers back before Rust code runs again.
        ///
        /// # Safety
        /// - OSXSAVE is set, the CPU has the save instruction, `full` is within XCR0
        ///   and every dynamic component in it is permitted for this process;
        /// - `harness` and `load` are 64-byte aligned standard-form areas of the
        ///   standard size for `full`, with XCOMP_BV and header bytes 16..63 zero;
        ///   `load`'s XSTATE_BV is within `full` and its MXCSR valid;
        /// - `out` is 64-byte aligned and valid for writes of the size of the save's
        ///   form for `rfbm`.
        #[inline(never)]
        unsafe fn $name(harness: *mut u8, load: *const u8, out: *mut u8, full: u64, rfbm: u64) {
            // SAFETY: the caller guarantees the CPU features, alignments, sizes and
            // well-formed headers each instruction needs. The block writes memory
            // (`harness`, `out`), so no `nomem`/`readonly`; it uses no stack; `shr`
            // changes flags, so no `preserves_flags`. EAX/EDX are declared outputs
            // (so no input lands in them) and every caller-saved vector, mask and x87
            // register is declared clobbered, although the last XRSTOR puts back the
            // values they had.
            unsafe {
                asm!(
                    "mov eax, {full:e}",
                    "mov rdx, {full}",
                    "shr rdx, 32",
                    "xsave64 [{harness}]",
                    "xrstor64 [{load}]",
                    "mov eax, {rfbm:e}",
                    "mov rdx, {rfbm}",
                    "shr rdx, 32",
                    concat!($save, " [{out}]"),
                    "mov eax, {full:e}",
                    "mov rdx, {full}",
                    "shr rdx, 32",
                    "xrstor64 [{harness}]",
                    harness = in(reg) harness,
                    load = in(reg) load,
                    out = in(reg) out,
                    full = in(reg) full,
                    rfbm = in(reg) rfbm,
                    out("rax") _,
                    out("rdx") _,
                    clobber_abi("C"),
                    options(nostack),
                );
            }
        }
    };
}

load_then_save!(
    /// Load the patterns, then XSAVEC with `rfbm`.
    load_then_xsavec,
    "xsavec64"
);
load_then_save!(
    /// Load the patterns, then XSAVE with `rfbm`.
    load_then_xsave,
    "xsave64"
);

/// The same sequence through the crate's own wrappers, back to back in one
/// non-inlined function with nothing but register moves between them.
///
/// # Safety
/// As for [`load_then_xsavec`].
#[inline(never)]
unsafe fn wrappers_then_xsavec(
    harness: *mut u8,
    load: *const u8,
    out: *mut u8,
    full: u64,
    rfbm: u64,
) {
    let (full, rfbm) = (
        XFeatures::from_bits_retain(full),
        XFeatures::from_bits_retain(rfbm),
    );
    // SAFETY: the caller guarantees OSXSAVE, alignment and size of `harness` for `full`.
    unsafe { xsave(harness, full) };
    // SAFETY: `load` is a well-formed standard area for `full` (caller). The harness
    // state it replaces is put back by the last XRSTOR below, before any other code.
    unsafe { xrstor(load, full) };
    // SAFETY: the caller guarantees XSAVEC and `out`'s alignment and size for `rfbm`.
    unsafe { xsavec(out, rfbm) };
    // SAFETY: `harness` was just written by XSAVE from a zeroed header: well formed.
    unsafe { xrstor(harness, full) };
}

/// What a byte of a saved area must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exp {
    /// Untouched: still the canary.
    Canary,
    /// Exactly this value.
    Byte(u8),
    /// Reserved bytes the SDM lets the CPU write or not.
    Any,
}

/// Everything fixed about the live CPU that the checks need.
struct Live {
    e: Enumeration,
    xcr0: XFeatures,
    /// The components loaded with patterns and saved (`full` in the asm blocks).
    exercised: XFeatures,
    /// Standard-form area with the patterns of every exercised component.
    load: Area,
    /// The 512-byte legacy region as loaded (x87 and SSE fields).
    legacy: [u8; 512],
}

/// The standard-form size for `mask` from raw CPUID(0xD,i) (EBX offset + EAX
/// size), not from the crate's enumeration: the oracle for [`Layout`]'s.
fn cpuid_standard_size(mask: XFeatures) -> usize {
    testkit::std_size_raw(&LiveCpuid, mask.bits()) as usize
}

fn legacy_image(mxcsr: u32, mxcsr_mask: u32) -> [u8; 512] {
    let mut a = [0u8; 512];
    x87_image(&mut a, |k| pattern(X87, k));
    a[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    a[28..32].copy_from_slice(&mxcsr_mask.to_le_bytes());
    for b in 160..416 {
        a[b] = pattern(SSE, b - 160);
    }
    a
}

/// The pattern byte `k` of component `i` holds (one seed for the whole test).
fn pattern(i: u32, k: usize) -> u8 {
    testkit::pattern(0, i, k)
}

/// Fixed bytes a component must hold to be loadable, `None` where the pattern goes.
fn fixed_byte(i: u32, k: usize) -> Option<u8> {
    match i {
        // Palette 1, start row 0, tiles 0-7 at 16 rows of 64 bytes, 8-15 unused:
        // every byte of TILEDATA is then live state.
        XTILE_CFG => Some(match k {
            0 => 1,
            16..32 if k % 2 == 0 => 64,
            48..56 => 16,
            _ => 0,
        }),
        // PKRU: keep key 0 (all ordinary memory, this very area) readable and
        // writable, or XSAVE itself would fault; bytes 4..7 are not PKRU.
        PKRU => match k {
            0 => Some(pattern(i, k) & !3),
            4..8 => Some(0),
            _ => None,
        },
        _ => None,
    }
}

fn loaded_byte(i: u32, k: usize) -> u8 {
    fixed_byte(i, k).unwrap_or_else(|| pattern(i, k))
}

/// Ask Linux for permission to use AMX TILEDATA (components 17 and 18 need it
/// before first use, or the first XRSTOR of them is a SIGILL), if XCR0 has it.
///
/// # Errors
/// Why AMX is not exercised, for the SKIP line.
fn request_amx_permission(xcr0: XFeatures) -> Result<(), String> {
    if !xcr0.has_index(XTILE_DATA) {
        return Err("AMX TILECFG/TILEDATA (17, 18): not in XCR0".into());
    }
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, 18) only asks the kernel to permit
    // the component for this process; it touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            libc::c_ulong::from(XTILE_DATA),
        )
    };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "AMX (17, 18): in XCR0 but ARCH_REQ_XCOMP_PERM failed: {err}"
        ));
    }
    Ok(())
}

/// The SKIP lines for what XCR0 lacks or this test leaves alone, once per run.
fn report_skips(xcr0: XFeatures, exercised: XFeatures, amx: &Result<(), String>) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(why) = amx {
            loud!("*** SKIP hw_oracle: {why} ***");
        }
        if !xcr0.contains(XFeatures::PKRU) {
            loud!("*** SKIP hw_oracle: PKRU (9): not in XCR0 ***");
        }
        for (name, bit) in [("MPX BNDREGS", 3), ("MPX BNDCSR", 4)] {
            if xcr0.has_index(bit) {
                loud!(
                    "*** SKIP hw_oracle: {name} ({bit}): in XCR0 but not exercised (bound registers change bounds checking) ***"
                );
            } else {
                loud!("*** SKIP hw_oracle: {name} ({bit}): not in XCR0 ***");
            }
        }
        for i in (xcr0 - exercised - XFeatures::XTILE)
            .indices()
            .filter(|&i| i != 3 && i != 4)
        {
            loud!(
                "*** SKIP hw_oracle: component {i}: in XCR0 but this test has no pattern for it ***"
            );
        }
    });
}

impl Live {
    fn get() -> Self {
        let xcr0 = read_xcr0().expect("hw_oracle: OSXSAVE is clear, XCR0 cannot be read");
        let e =
            Enumeration::from_cpuid(&LiveCpuid).expect("hw_oracle: live CPUID leaf 0xD refused");
        if !e.xsavec() {
            loud!(
                "*** SKIP hw_oracle: no XSAVEC (CPUID(0xD,1).EAX[1] clear): compacted placements not checked ***"
            );
        }
        assert_eq!(
            xcr0 - e.xcr0_supported(),
            XFeatures::empty(),
            "XCR0 {:#x} outside CPUID(0xD,0)",
            xcr0.bits()
        );

        let known = [
            X87, SSE, AVX, OPMASK, ZMM_HI256, HI16_ZMM, PKRU, XTILE_CFG, XTILE_DATA,
        ]
        .into_iter()
        .fold(0u64, |m, i| m | 1 << i);
        let mut exercised = xcr0 & XFeatures::from_bits_retain(known);
        let amx = request_amx_permission(xcr0);
        if amx.is_err() {
            exercised -= XFeatures::XTILE;
        }
        report_skips(xcr0, exercised, &amx);

        let mxcsr_mask = read_mxcsr_mask();
        // All exceptions masked (no fault whatever the flags), some flags set,
        // round up, FZ and DAZ where the CPU has them: valid and not the init 0x1f80.
        let mxcsr = (0x1f80 | 0x2d | 0x4000 | 0x8000 | 0x40) & mxcsr_mask;
        let legacy = legacy_image(mxcsr, mxcsr_mask);

        // The load area: built from raw CPUID(0xD,i).EBX, not from the layout code.
        let mut load = Area::new(cpuid_standard_size(exercised), 0);
        let a = load.bytes_mut();
        a[..512].copy_from_slice(&legacy);
        a[512..520].copy_from_slice(&exercised.bits().to_le_bytes());
        for i in exercised.indices().filter(|&i| i >= 2) {
            let r = LiveCpuid.cpuid(0xd, i);
            for k in 0..r.eax as usize {
                a[r.ebx as usize + k] = loaded_byte(i, k);
            }
        }

        Self {
            e,
            xcr0,
            exercised,
            load,
            legacy,
        }
    }

    /// The expected content of an area after a save of `layout.form()` with RFBM
    /// `rfbm`, every exercised component being in a non-init state.
    fn expected(&self, layout: &Layout, rfbm: XFeatures, canary: u8, len: usize) -> Vec<Exp> {
        let mut x = vec![Exp::Canary; len];
        let compacted = layout.form() == Form::Compacted;
        let word = u64::from_le_bytes([canary; 8]);
        // Header. XSAVEC writes XSTATE_BV = RFBM & XINUSE and XCOMP_BV = bit 63 |
        // RFBM; XSAVE writes only the XSTATE_BV bits in RFBM (SDM 13.7) and leaves
        // XCOMP_BV and bytes 16..63 as they were. Neither writes bytes 16..63.
        let (xstate_bv, xcomp_bv) = if compacted {
            (Some(rfbm.bits()), Some((1 << 63) | rfbm.bits()))
        } else {
            (Some((word & !rfbm.bits()) | rfbm.bits()), None)
        };
        if let Some(v) = xstate_bv {
            for (b, byte) in v.to_le_bytes().into_iter().enumerate() {
                x[512 + b] = Exp::Byte(byte);
            }
        }
        if let Some(v) = xcomp_bv {
            for (b, byte) in v.to_le_bytes().into_iter().enumerate() {
                x[520 + b] = Exp::Byte(byte);
            }
        }
        // Legacy region (same in both forms).
        if rfbm.has_index(X87) {
            for b in (0..24).chain(32..160) {
                let reserved = b == 5 || (b >= 32 && (b - 32) % 16 >= 10);
                x[b] = if reserved {
                    Exp::Any
                } else {
                    Exp::Byte(self.legacy[b])
                };
            }
        }
        // MXCSR and MXCSR_MASK: XSAVE saves them when RFBM has SSE or AVX; XSAVEC
        // as part of SSE state only (SDM vol. 1 13.7, 13.10).
        let mxcsr_saved = if compacted {
            rfbm.has_index(SSE)
        } else {
            rfbm.has_index(SSE) || rfbm.has_index(AVX)
        };
        if mxcsr_saved {
            for b in 24..32 {
                x[b] = Exp::Byte(self.legacy[b]);
            }
        }
        if rfbm.has_index(SSE) {
            for b in 160..416 {
                x[b] = Exp::Byte(self.legacy[b]);
            }
            for e in &mut x[416..464] {
                *e = Exp::Any;
            }
        }
        // Bytes 464..511 are software's: never written (left Canary).
        for i in rfbm.indices().filter(|&i| i >= 2) {
            let r = layout
                .range_of(i)
                .unwrap_or_else(|| panic!("component {i} has no range in {layout:?}"));
            for (k, b) in r.enumerate() {
                x[b] = Exp::Byte(loaded_byte(i, k));
            }
        }
        x
    }
}

/// Compare an area with its expectation; on mismatch, panic with every differing
/// range (not just the first byte) so a misplacement is visible at a glance.
fn check(what: &str, got: &[u8], exp: &[Exp], canary: u8) {
    assert_eq!(got.len(), exp.len());
    let bad: Vec<usize> = (0..got.len())
        .filter(|&b| match exp[b] {
            Exp::Canary => got[b] != canary,
            Exp::Byte(v) => got[b] != v,
            Exp::Any => false,
        })
        .collect();
    if bad.is_empty() {
        return;
    }
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for b in bad {
        match ranges.last_mut() {
            Some(r) if r.end == b => r.end += 1,
            _ => ranges.push(b..b + 1),
        }
    }
    let mut msg = format!("{what}: {} differing ranges:\n", ranges.len());
    for r in ranges.iter().take(24) {
        let show = r.start..r.end.min(r.start + 16);
        msg += &format!(
            "  {r:?}: got {:02x?} expected {:?}\n",
            &got[show.clone()],
            &exp[show]
        );
    }
    panic!("{msg}");
}

/// Every subset of `m`, in increasing numeric order.
fn subsets(m: XFeatures) -> impl Iterator<Item = XFeatures> {
    let m = m.bits();
    let mut s = Some(0u64);
    std::iter::from_fn(move || {
        let cur = s?;
        // Next subset of m after cur (the standard "(cur - m) & m" enumeration).
        let next = cur.wrapping_sub(m) & m;
        s = if next == 0 { None } else { Some(next) };
        Some(XFeatures::from_bits_retain(cur))
    })
}

/// The index of the last byte that is not the canary, plus one (0 if none).
fn written_end(got: &[u8], canary: u8) -> usize {
    got.iter().rposition(|&b| b != canary).map_or(0, |p| p + 1)
}

#[test]
fn xsavec_and_xsave_put_every_component_where_layout_says() {
    let mut live = Live::get();
    let full = live.exercised;
    let harness_len = cpuid_standard_size(full);
    let (mut n_xsavec, mut n_xsave, mut placements) = (0usize, 0usize, 0usize);
    let load = live.load.ptr();

    for rfbm in subsets(full) {
        // Compacted, where the CPU has XSAVEC.
        if live.e.xsavec() {
            let layout =
                Layout::compacted(&live.e, rfbm).expect("compacted layout of an XCR0 subset");
            let size = live.e.compacted_size(rfbm) as usize;
            assert_eq!(
                size,
                layout.size() as usize,
                "compacted_size vs Layout for {rfbm:?}"
            );
            assert_eq!(layout.xcomp_bv(), (1 << 63) | rfbm.bits());
            if rfbm.has_index(X87) {
                assert_eq!(layout.range_of(X87), Some(0..160));
            }
            if rfbm.has_index(SSE) {
                assert_eq!(layout.range_of(SSE), Some(160..416));
            }
            for &canary in &CANARIES {
                let mut out = Area::new(size + TAIL, canary);
                let mut harness = Area::new(harness_len, 0);
                // SAFETY: OSXSAVE and XSAVEC checked in `Live::get`; `full` is within XCR0
                // with AMX permitted when present; `harness` and `load` are zero-headed
                // standard areas of `full`'s standard size; `out` is 64-byte aligned with
                // `size` (the compacted size of `rfbm`, checked against Layout) plus a tail.
                unsafe {
                    load_then_xsavec(harness.ptr(), load, out.ptr(), full.bits(), rfbm.bits())
                };
                let got = out.bytes();
                let exp = live.expected(&layout, rfbm, canary, got.len());
                check(
                    &format!("XSAVEC rfbm {:#x} canary {canary:#x}", rfbm.bits()),
                    got,
                    &exp,
                    canary,
                );
                let xcomp_bv = u64::from_le_bytes(got[520..528].try_into().unwrap());
                let xstate_bv = u64::from_le_bytes(got[512..520].try_into().unwrap());
                assert_eq!(xcomp_bv, (1 << 63) | rfbm.bits(), "XCOMP_BV");
                assert_eq!(xstate_bv & !rfbm.bits(), 0, "XSTATE_BV outside RFBM");
                // Every component was loaded non-init: all of them must be reported.
                assert_eq!(xstate_bv, rfbm.bits(), "XSTATE_BV of non-init components");
                if let Some(top) = rfbm.indices().filter(|&i| i >= 2).last() {
                    let end = layout.range_of(top).unwrap().end;
                    assert_eq!(end, size, "highest component ends at the compacted size");
                    assert_eq!(
                        written_end(got, canary),
                        size,
                        "XSAVEC rfbm {:#x}: last byte written",
                        rfbm.bits()
                    );
                } else {
                    assert!(written_end(got, canary) <= size);
                }
                placements += rfbm.bits().count_ones() as usize;
            }
            n_xsavec += 1;
        }

        // Standard.
        let layout = Layout::standard(&live.e, rfbm).expect("standard layout of an XCR0 subset");
        let size = live.e.standard_size(rfbm) as usize;
        assert_eq!(
            size,
            layout.size() as usize,
            "standard_size vs Layout for {rfbm:?}"
        );
        assert_eq!(
            size,
            cpuid_standard_size(rfbm),
            "Layout standard size vs raw CPUID"
        );
        assert_eq!(layout.xcomp_bv(), 0);
        for &canary in &CANARIES {
            let mut out = Area::new(size + TAIL, canary);
            let mut harness = Area::new(harness_len, 0);
            // SAFETY: as above; `out` holds the standard size of `rfbm` plus a tail.
            unsafe { load_then_xsave(harness.ptr(), load, out.ptr(), full.bits(), rfbm.bits()) };
            let got = out.bytes();
            let exp = live.expected(&layout, rfbm, canary, got.len());
            check(
                &format!("XSAVE rfbm {:#x} canary {canary:#x}", rfbm.bits()),
                got,
                &exp,
                canary,
            );
            // SDM 13.7: XSAVE writes the XSTATE_BV bits in RFBM only and never
            // XCOMP_BV (a standard area must already hold 0 there).
            let word = u64::from_le_bytes([canary; 8]);
            let xstate_bv = u64::from_le_bytes(got[512..520].try_into().unwrap());
            let xcomp_bv = u64::from_le_bytes(got[520..528].try_into().unwrap());
            assert_eq!(
                xcomp_bv,
                word,
                "XSAVE rfbm {:#x} wrote XCOMP_BV",
                rfbm.bits()
            );
            assert_eq!(xstate_bv & rfbm.bits(), rfbm.bits(), "XSTATE_BV in RFBM");
            assert_eq!(
                xstate_bv & !rfbm.bits(),
                word & !rfbm.bits(),
                "XSTATE_BV outside RFBM"
            );
            if let Some(top) = rfbm
                .indices()
                .filter(|&i| i >= 2)
                .max_by_key(|&i| layout.range_of(i).unwrap().end)
            {
                assert_eq!(layout.range_of(top).unwrap().end, size);
                assert_eq!(
                    written_end(got, canary),
                    size,
                    "XSAVE rfbm {:#x}: last byte written",
                    rfbm.bits()
                );
            }
            placements += rfbm.bits().count_ones() as usize;
        }
        // As a standard-form user would: header zeroed first. XCOMP_BV stays 0 and
        // XSTATE_BV is exactly RFBM (every component non-init).
        let mut out = Area::new(size + TAIL, CANARIES[0]);
        out.bytes_mut()[512..576].fill(0);
        let mut harness = Area::new(harness_len, 0);
        // SAFETY: as above.
        unsafe { load_then_xsave(harness.ptr(), load, out.ptr(), full.bits(), rfbm.bits()) };
        let got = out.bytes();
        assert_eq!(
            got[520..528],
            [0; 8],
            "XCOMP_BV after XSAVE into a zeroed header"
        );
        assert_eq!(
            got[512..520],
            rfbm.bits().to_le_bytes(),
            "XSTATE_BV after XSAVE"
        );
        assert!(got[528..576].iter().all(|&b| b == 0), "header bytes 16..63");
        n_xsave += 1;
    }

    let n_sub = 1usize << full.bits().count_ones();
    let n_compacted = if live.e.xsavec() { n_sub } else { 0 };
    assert_eq!((n_xsavec, n_xsave), (n_compacted, n_sub));
    loud!(
        "hw oracle: XCR0 {:#x}, exercised {:#x}: {n_xsavec} XSAVEC masks, {n_xsave} XSAVE masks, \
         {placements} component placements checked ({} canaries each)",
        live.xcr0.bits(),
        full.bits(),
        CANARIES.len()
    );
}

/// The crate's `xsave`/`xrstor`/`xsavec` wrappers called back to back give the
/// same bytes as the single asm block, for every mask: nothing the compiler puts
/// between them disturbs the loaded registers.
#[test]
fn crate_wrappers_back_to_back_match_the_asm_block() {
    let mut live = Live::get();
    if !live.e.xsavec() {
        loud!("*** SKIP crate_wrappers_back_to_back: no XSAVEC on this CPU ***");
        return;
    }
    let full = live.exercised;
    let harness_len = cpuid_standard_size(full);
    let load = live.load.ptr();
    let mut n = 0;
    for rfbm in subsets(full) {
        let size = live.e.compacted_size(rfbm) as usize;
        let mut a = Area::new(size + TAIL, CANARIES[0]);
        let mut b = Area::new(size + TAIL, CANARIES[0]);
        let mut h1 = Area::new(harness_len, 0);
        let mut h2 = Area::new(harness_len, 0);
        // SAFETY: as in the main test: features checked, areas aligned and sized.
        unsafe { load_then_xsavec(h1.ptr(), load, a.ptr(), full.bits(), rfbm.bits()) };
        // SAFETY: the same contract.
        unsafe { wrappers_then_xsavec(h2.ptr(), load, b.ptr(), full.bits(), rfbm.bits()) };
        let (ga, gb) = (a.bytes(), b.bytes());
        // Every byte, x87 error pointers and reserved bytes included: both paths
        // load and save the same state.
        if ga != gb {
            let first = (0..ga.len()).find(|&i| ga[i] != gb[i]).unwrap();
            panic!(
                "rfbm {:#x}: wrappers differ from the asm block first at byte {first}",
                rfbm.bits()
            );
        }
        n += 1;
    }
    loud!("hw oracle: crate wrappers agree with the asm block on {n} XSAVEC masks");
}
