//! Hostile CPUID leaf 0xD: every inconsistency gets its own typed [`EnumError`],
//! nothing panics or overflows, and whatever is accepted yields sound layouts.
//!
//! The CPUID source here is a plain table seeded from the real dumps in
//! `layouts/` and then edited, so each hostile case is one lie away from a real CPU.
//! Most tables hold leaf 0xD alone (no feature flags); the architectural-size cases
//! also carry the dump's feature leaves 1, 6 and 7, as Linux reads them.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::Config;
use xstate::XFeatures;
use xstate::config::{ConfigError, Configs, Policy};
use xstate::cpuid::{CpuidResult, CpuidSource, RecordedCpuid};
use xstate::enumerate::{
    EXTENDED_START, EnumError, Enumeration, MAX_COMPONENT_SIZE, SizeCheck, SizeReport,
};
use xstate::feature::CATALOG;
use xstate::layout::{Layout, LayoutError};

#[path = "../examples/xstate-report.rs"]
#[allow(dead_code)]
mod report;

// ---------------------------------------------------------------------------
// A table-backed CPUID source.
// ---------------------------------------------------------------------------

/// CPUID leaf 0xD as a table; absent subleaves read as zeros, like a CPU's.
#[derive(Clone, Debug, Default)]
struct Table(BTreeMap<(u32, u32), CpuidResult>);

impl CpuidSource for Table {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        self.0.get(&(leaf, subleaf)).copied().unwrap_or_default()
    }
}

const fn regs(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidResult {
    CpuidResult { eax, ebx, ecx, edx }
}

impl Table {
    /// Leaf 0xD subleaves 0..=63 of a `cpuid -r` dump.
    fn from_dump(text: &str) -> Self {
        let cpu = RecordedCpuid::parse(text).expect("dump parses");
        let mut t = Self::default();
        for sub in 0..64 {
            let r = cpu.cpuid(0xd, sub);
            if r != CpuidResult::default() {
                t.set(sub, r);
            }
        }
        t
    }

    /// Leaf 0xD plus the feature leaves (1, 6, 7.0, 7.1) of a dump.
    fn with_feature_leaves(text: &str) -> Self {
        let cpu = RecordedCpuid::parse(text).expect("dump parses");
        let mut t = Self::from_dump(text);
        for (leaf, sub) in [(1, 0), (6, 0), (7, 0), (7, 1)] {
            t.0.insert((leaf, sub), cpu.cpuid(leaf, sub));
        }
        t
    }

    /// This table with feature leaves that clear every catalogued component's
    /// flag (leaf 1 with only FPU, CPUID.1:EDX[0]): no extended component is
    /// usable, so none is size-checked and the structural checks are reached
    /// whatever the sizes.
    fn with_flags_clear(mut self) -> Self {
        self.0.insert((1, 0), regs(0, 0, 0, 1));
        self
    }

    fn get(&self, sub: u32) -> CpuidResult {
        self.cpuid(0xd, sub)
    }

    fn set(&mut self, sub: u32, r: CpuidResult) {
        self.0.insert((0xd, sub), r);
    }

    fn edit(&mut self, sub: u32, f: impl FnOnce(&mut CpuidResult)) {
        let mut r = self.get(sub);
        f(&mut r);
        self.set(sub, r);
    }

    fn drop_sub(&mut self, sub: u32) {
        self.0.remove(&(0xd, sub));
    }

    fn xcr0(&self) -> u64 {
        let r = self.get(0);
        (u64::from(r.edx) << 32) | u64::from(r.eax)
    }

    fn set_xcr0(&mut self, m: u64) {
        self.edit(0, |r| {
            r.eax = m as u32;
            r.edx = (m >> 32) as u32;
        });
    }

    fn xss(&self) -> u64 {
        let r = self.get(1);
        (u64::from(r.edx) << 32) | u64::from(r.ecx)
    }

    fn set_xss(&mut self, m: u64) {
        self.edit(1, |r| {
            r.ecx = m as u32;
            r.edx = (m >> 32) as u32;
        });
    }

    fn set_max_standard(&mut self, ecx: u32) {
        self.edit(0, |r| r.ecx = ecx);
    }

    fn set_comp(&mut self, i: u32, size: u32, offset: u32, ecx: u32) {
        self.set(i, regs(size, offset, ecx, 0));
    }

    fn set_reg(&mut self, sub: u32, reg: usize, val: u32) {
        self.edit(sub, |r| *reg_mut(r, reg) = val);
    }
}

fn reg_mut(r: &mut CpuidResult, reg: usize) -> &mut u32 {
    match reg % 4 {
        0 => &mut r.eax,
        1 => &mut r.ebx,
        2 => &mut r.ecx,
        _ => &mut r.edx,
    }
}

/// Every dump in `layouts/`, by file name, as text.
fn dumps() -> &'static [(String, String)] {
    static DUMPS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    DUMPS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("layouts");
        let mut v: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, fs::read_to_string(&p).unwrap())
            })
            .collect();
        v.sort();
        assert!(v.len() >= 21, "layouts/ holds {} dumps", v.len());
        v
    })
}

/// Every dump's leaf 0xD, alone; a dump whose leaf 0xD alone is refused for a
/// size the fail-closed rule cannot excuse (a flag-clear component such as Zen
/// 2's 64-byte PKRU) keeps its feature leaves, said on stderr, and that
/// component must be the flag-clear one.
fn dump_tables() -> &'static [(String, Table)] {
    static TABLES: OnceLock<Vec<(String, Table)>> = OnceLock::new();
    TABLES.get_or_init(|| {
        dumps()
            .iter()
            .map(|(n, text)| {
                let t = Table::from_dump(text);
                let Err(EnumError::ArchSizeMismatch {
                    index,
                    flags_known: false,
                    ..
                }) = Enumeration::from_cpuid(&t)
                else {
                    return (n.clone(), t);
                };
                let flagged = Table::with_feature_leaves(text);
                let e = accepted(&flagged);
                assert!(!e.usable().has_index(index), "{n}: component {index}");
                eprintln!(
                    "NOTE hostile_cpuid: {n}: leaf 0xD alone is refused (component {index}'s \
                     flag is clear, its size not architectural): its table keeps leaves 1, 6, 7"
                );
                (n.clone(), flagged)
            })
            .collect()
    })
}

fn dump(name: &str) -> Table {
    let file = format!("{name}.txt");
    dump_tables()
        .iter()
        .find(|(n, _)| *n == file)
        .unwrap_or_else(|| panic!("no layouts/{file}"))
        .1
        .clone()
}

/// Sapphire Rapids: AVX-512, PKRU, AMX (aligned, XFD), six supervisor components.
fn spr() -> Table {
    dump("intel-sapphire-rapids-xeon-w9-3475x")
}

/// Zen 4: AVX-512, PKRU, CET_U and CET_S in XSS.
fn zen4() -> Table {
    dump("amd-zen4-ryzen-9-7950x")
}

fn refused(t: &Table) -> EnumError {
    match Enumeration::from_cpuid(t) {
        Ok(e) => panic!("hostile CPUID accepted: {e:?}"),
        Err(err) => err,
    }
}

fn accepted(t: &Table) -> Enumeration {
    Enumeration::from_cpuid(t).unwrap_or_else(|e| panic!("refused: {e}"))
}

const fn bit(i: u32) -> u64 {
    1 << i
}

// ---------------------------------------------------------------------------
// The real dumps the hostile cases start from are themselves accepted.
// ---------------------------------------------------------------------------

#[test]
fn base_dumps_are_accepted_through_the_table() {
    for (name, t) in dump_tables() {
        let e = Enumeration::from_cpuid(t).unwrap_or_else(|err| panic!("{name}: {err}"));
        check_ok(t, &e).unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    let e = accepted(&spr());
    assert_eq!(e.xcr0_supported().bits(), 0x602e7);
    assert_eq!(e.xss_supported().bits(), 0xdd00);
    assert_eq!(e.standard_max_size(), 0x2b00);
}

// ---------------------------------------------------------------------------
// One test per hostile case, each asserting the exact variant and fields.
// ---------------------------------------------------------------------------

#[test]
fn legacy_missing() {
    for missing in [0b01, 0b10, 0b11] {
        let mut t = spr();
        t.set_xcr0(0x602e7 & !missing);
        assert_eq!(
            refused(&t),
            EnumError::LegacyMissing {
                xcr0: 0x602e7 & !missing
            }
        );
    }
    // A source with no leaf 0xD at all (a CPU without XSAVE, or a stub).
    assert_eq!(
        refused(&Table::default()),
        EnumError::LegacyMissing { xcr0: 0 }
    );
    // Checked before anything else, even a reserved bit.
    let mut t = spr();
    t.set_xcr0(bit(63) | 0x602e4);
    assert_eq!(
        refused(&t),
        EnumError::LegacyMissing {
            xcr0: bit(63) | 0x602e4
        }
    );
}

#[test]
fn zero_size() {
    let mut t = spr();
    t.edit(5, |r| r.eax = 0);
    assert_eq!(refused(&t), EnumError::ZeroSize { index: 5 });

    // A supervisor component too.
    let mut t = spr();
    t.edit(11, |r| r.eax = 0);
    assert_eq!(refused(&t), EnumError::ZeroSize { index: 11 });

    // A user component whose subleaf is missing altogether reads as size 0.
    let mut t = spr();
    t.drop_sub(18);
    assert_eq!(refused(&t), EnumError::ZeroSize { index: 18 });

    // A missing supervisor subleaf also has ECX[0] = 0: the mismatch is found first.
    let mut t = spr();
    t.drop_sub(8);
    assert_eq!(
        refused(&t),
        EnumError::SupervisorMismatch {
            index: 8,
            in_xss: true
        }
    );
}

#[test]
fn absurd_size() {
    let mut t = spr();
    t.edit(7, |r| r.eax = 0xffff_ffff);
    assert_eq!(
        refused(&t),
        EnumError::AbsurdSize {
            index: 7,
            size: 0xffff_ffff
        }
    );

    let mut t = spr();
    t.edit(15, |r| r.eax = MAX_COMPONENT_SIZE + 1);
    assert_eq!(
        refused(&t),
        EnumError::AbsurdSize {
            index: 15,
            size: MAX_COMPONENT_SIZE + 1
        }
    );

    // Exactly the limit is accepted (AVX's flag clear: no architectural size).
    let mut t = legacy_only().with_flags_clear();
    t.set_xcr0(0b111);
    t.set_comp(2, MAX_COMPONENT_SIZE, EXTENDED_START, 0);
    t.set_max_standard(EXTENDED_START + MAX_COMPONENT_SIZE);
    let e = accepted(&t);
    assert_eq!(e.standard_max_size(), EXTENDED_START + MAX_COMPONENT_SIZE);
}

#[test]
fn offset_in_legacy() {
    for (i, offset) in [(2, 0x100), (18, 575), (17, 0), (9, 512)] {
        let mut t = spr();
        t.edit(i, |r| r.ebx = offset);
        assert_eq!(refused(&t), EnumError::OffsetInLegacy { index: i, offset });
    }
    // Supervisor components have no standard offset: 0 is what CPUs report.
    assert_eq!(spr().get(8).ebx, 0);
}

#[test]
fn end_overflows() {
    // AbsurdSize is checked first, so the size stays <= 1 MiB.
    let mut t = spr();
    t.edit(7, |r| r.ebx = u32::MAX - 0xff); // size 0x400
    assert_eq!(refused(&t), EnumError::EndOverflows { index: 7 });

    // AVX's flag clear, so its size is not the architecture's concern.
    let mut t = spr().with_flags_clear();
    t.edit(2, |r| {
        r.eax = MAX_COMPONENT_SIZE;
        r.ebx = u32::MAX;
    });
    assert_eq!(refused(&t), EnumError::EndOverflows { index: 2 });

    // One byte short of overflowing: the end is u32::MAX, so it is the size report
    // that refuses it.
    let mut t = spr();
    t.edit(9, |r| r.ebx = u32::MAX - 8);
    assert_eq!(
        refused(&t),
        EnumError::BeyondMaxSize {
            index: 9,
            end: u32::MAX,
            max: 0x2b00
        }
    );
}

#[test]
fn end_at_u32_max_does_not_overflow() {
    // If CPUID(0xD,0).ECX itself says 4 GiB, an end of exactly u32::MAX must not
    // overflow anything downstream (standard size, standard layout).
    let mut t = legacy_only();
    t.set_xcr0(0b111);
    t.set_comp(2, 0x100, u32::MAX - 0x100, 0);
    t.set_max_standard(u32::MAX);
    if let Ok(e) = Enumeration::from_cpuid(&t) {
        check_ok(&t, &e).unwrap();
    }
}

#[test]
fn beyond_max_size() {
    let mut t = spr();
    t.set_max_standard(0x2aff);
    assert_eq!(
        refused(&t),
        EnumError::BeyondMaxSize {
            index: 18,
            end: 0x2b00,
            max: 0x2aff
        }
    );

    // The lowest offending component is named (components are checked in order).
    let mut t = spr();
    t.set_max_standard(0x700);
    assert_eq!(
        refused(&t),
        EnumError::BeyondMaxSize {
            index: 7,
            end: 0xa80,
            max: 0x700
        }
    );
}

#[test]
fn overlap() {
    // Component 6 moved half-way into component 5.
    let mut t = spr();
    t.edit(6, |r| r.ebx = 0x460);
    assert_eq!(refused(&t), EnumError::Overlap { a: 5, b: 6 });

    // `a` is the lower-offset component even when its number is higher: 5 (size 0x40)
    // moved inside 7 ([0x680, 0xa80)).
    let mut t = spr();
    t.edit(5, |r| r.ebx = 0x6c0);
    assert_eq!(refused(&t), EnumError::Overlap { a: 7, b: 5 });

    // One byte of overlap.
    let mut t = spr();
    t.edit(9, |r| r.ebx = 0xa7f);
    assert_eq!(refused(&t), EnumError::Overlap { a: 7, b: 9 });

    // Touching is not overlapping (every real dump has contiguous components).
    let mut t = spr();
    t.edit(9, |r| r.ebx = 0xa80);
    accepted(&t);
}

#[test]
fn in_both_masks() {
    let mut t = spr();
    t.set_xss(t.xss() | bit(9)); // PKRU claimed as supervisor too
    assert_eq!(refused(&t), EnumError::InBothMasks { index: 9 });

    let mut t = spr();
    t.set_xcr0(t.xcr0() | bit(8)); // PT claimed as user too
    assert_eq!(refused(&t), EnumError::InBothMasks { index: 8 });

    // The lowest shared bit is named.
    let mut t = zen4();
    t.set_xss(t.xss() | bit(2) | bit(9));
    assert_eq!(refused(&t), EnumError::InBothMasks { index: 2 });
}

#[test]
fn supervisor_mismatch() {
    // A user component with ECX[0] set.
    let mut t = spr();
    t.edit(9, |r| r.ecx |= 1);
    assert_eq!(
        refused(&t),
        EnumError::SupervisorMismatch {
            index: 9,
            in_xss: false
        }
    );

    // A supervisor component with ECX[0] clear.
    let mut t = spr();
    t.edit(12, |r| r.ecx &= !1);
    assert_eq!(
        refused(&t),
        EnumError::SupervisorMismatch {
            index: 12,
            in_xss: true
        }
    );

    // A component moved from one mask to the other without its ECX[0] following.
    let mut t = zen4();
    t.set_xcr0(t.xcr0() & !bit(9));
    t.set_xss(t.xss() | bit(9));
    assert_eq!(
        refused(&t),
        EnumError::SupervisorMismatch {
            index: 9,
            in_xss: true
        }
    );
    let mut t = dump("amd-bulldozer-opteron-6238");
    t.set_xcr0(t.xcr0() & !bit(62));
    t.set_xss(bit(62));
    assert_eq!(
        refused(&t),
        EnumError::SupervisorMismatch {
            index: 62,
            in_xss: true
        }
    );
}

#[test]
fn reserved_bit() {
    let mut t = spr();
    t.set_xcr0(t.xcr0() | bit(63));
    assert_eq!(refused(&t), EnumError::ReservedBit { index: 63 });

    let mut t = spr();
    t.set_xss(t.xss() | bit(63));
    assert_eq!(refused(&t), EnumError::ReservedBit { index: 63 });

    // In both masks at once: still the reserved bit (not "in both masks").
    let mut t = spr();
    t.set_xcr0(t.xcr0() | bit(63));
    t.set_xss(t.xss() | bit(63));
    assert_eq!(refused(&t), EnumError::ReservedBit { index: 63 });

    // Legacy bits are never supervisor components.
    for b in [0, 1] {
        let mut t = spr();
        t.set_xss(t.xss() | bit(b));
        assert_eq!(refused(&t), EnumError::ReservedBit { index: b });
    }
}

/// Legacy components only, sizes reported right, XSAVEOPT/XSAVEC/XGETBV1/XSAVES.
fn legacy_only() -> Table {
    let mut t = Table::default();
    t.set(0, regs(0b11, EXTENDED_START, EXTENDED_START, 0));
    t.set(1, regs(0xf, EXTENDED_START, 0, 0));
    t
}

#[test]
fn reported_too_small_max_standard() {
    // Every extended user component is already checked to end within
    // CPUID(0xD,0).ECX (BeyondMaxSize), and ends at >= 576. So the only way for
    // ECX to be below the computed standard size is a CPU with no extended user
    // component and ECX < 576 (the legacy area and header): that is the case in
    // which ReportedTooSmall { MaxStandard } fires.
    accepted(&legacy_only());
    for ecx in [0, 512, 575] {
        let mut t = legacy_only();
        t.set_max_standard(ecx);
        assert_eq!(
            refused(&t),
            EnumError::ReportedTooSmall {
                report: SizeReport::MaxStandard,
                reported: ecx,
                computed: EXTENDED_START,
            }
        );
    }
    // With supervisor components only, the same.
    let mut t = legacy_only();
    t.set_xss(bit(11));
    t.set_comp(11, 16, 0, 1);
    t.set_max_standard(0x200);
    assert_eq!(
        refused(&t),
        EnumError::ReportedTooSmall {
            report: SizeReport::MaxStandard,
            reported: 0x200,
            computed: EXTENDED_START,
        }
    );
    // Each report names the CPUID register it came from.
    for (report, reg) in [
        (SizeReport::MaxStandard, "CPUID(0xD,0).ECX"),
        (SizeReport::CurrentStandard, "CPUID(0xD,0).EBX"),
        (SizeReport::CurrentCompacted, "CPUID(0xD,1).EBX"),
    ] {
        assert_eq!(report.to_string(), reg);
        let e = EnumError::ReportedTooSmall {
            report,
            reported: 0x200,
            computed: EXTENDED_START,
        };
        assert!(e.to_string().contains(reg), "{e}");
    }
    // With any extended user component, the under-report is caught per component,
    // as BeyondMaxSize naming the first component past it (see beyond_max_size).
    let mut t = zen4();
    t.set_max_standard(0x980);
    assert_eq!(
        refused(&t),
        EnumError::BeyondMaxSize {
            index: 9,
            end: 0x988,
            max: 0x980
        }
    );
}

#[test]
fn compacted_too_large_is_unreachable() {
    // The worst case CPUID can describe: every component 2..=62 supported, each
    // MAX_COMPONENT_SIZE bytes, each 64-byte aligned, split between the masks.
    // Its compacted size is 576 + 61 MiB, far below u32::MAX, so with
    // MAX_COMPONENT_SIZE = 1 MiB the CompactedTooLarge check cannot fire.
    for user_share in [0u64, 0x5555_5555_5555_5554, 0x3fff_ffff_ffff_fffc] {
        let ext: u64 = ((1 << 63) - 1) & !0b11; // bits 2..=62
        let xcr0 = 0b11 | (ext & user_share);
        let xss = ext & !user_share;
        // Every flag clear: no component has to have its architectural size.
        let mut t = legacy_only().with_flags_clear();
        t.set_xcr0(xcr0);
        t.set_xss(xss);
        let mut off = EXTENDED_START;
        for i in 2..63 {
            if xcr0 & bit(i) != 0 {
                t.set_comp(i, MAX_COMPONENT_SIZE, off, 0b10);
                off += MAX_COMPONENT_SIZE;
            } else {
                t.set_comp(i, MAX_COMPONENT_SIZE, 0, 0b11);
            }
        }
        t.set_max_standard(off);
        let e = accepted(&t);
        assert_eq!(
            e.compacted_max_size(),
            EXTENDED_START + 61 * MAX_COMPONENT_SIZE
        );
        assert_eq!(e.standard_max_size(), off);
        check_ok(&t, &e).unwrap();
    }
    // Unaligned sizes add at most 63 bytes of padding per component.
    let bound = u64::from(EXTENDED_START) + 61 * (u64::from(MAX_COMPONENT_SIZE) + 63);
    assert!(bound < u64::from(u32::MAX));
}

// ---------------------------------------------------------------------------
// Accepted oddities of real CPUs.
// ---------------------------------------------------------------------------

#[test]
fn apx_reuses_mpx_offsets_when_mpx_is_absent() {
    let mut t = spr();
    assert_eq!(t.xcr0() & (bit(3) | bit(4)), 0);
    t.set_xcr0(t.xcr0() | bit(19));
    t.set_comp(19, 128, 960, 0);
    let e = accepted(&t);
    assert_eq!(e.component(19).unwrap().std_offset, 960);
    let std = Layout::standard(&e, e.xcr0_supported()).unwrap();
    assert_eq!(std.offset_of(19), Some(960));
    assert_eq!(std.size(), 0x2b00);
    check_ok(&t, &e).unwrap();

    // With MPX supported as well, the same offsets are an overlap.
    t.set_xcr0(t.xcr0() | bit(3) | bit(4));
    t.set_comp(3, 64, 960, 0);
    t.set_comp(4, 64, 1024, 0);
    assert_eq!(refused(&t), EnumError::Overlap { a: 3, b: 19 });
    // Only BNDCSR (1024..1088) against APX (960..1088).
    t.set_xcr0(t.xcr0() & !bit(3));
    assert_eq!(refused(&t), EnumError::Overlap { a: 19, b: 4 });
}

#[test]
fn over_reported_max_standard_is_accepted() {
    let t = dump("firecracker-t2a-guest-on-m6a-metal-amd");
    let e = accepted(&t);
    assert_eq!(e.reported_max_standard(), 0x988);
    assert_eq!(e.standard_max_size(), 0x340);
    assert_eq!(
        Layout::standard(&e, e.xcr0_supported()).unwrap().size(),
        0x340
    );
    check_ok(&t, &e).unwrap();
}

#[test]
fn amd_lwp_is_enumerated_and_compacted_by_number() {
    let t = dump("amd-bulldozer-opteron-6238");
    let e = accepted(&t);
    assert!(e.xcr0_supported().contains(XFeatures::LWP));
    let c = e.component(62).unwrap();
    assert_eq!((c.size, c.std_offset, c.supervisor), (0x80, 0x340, false));
    let l = Layout::compacted(&e, e.supported()).unwrap();
    assert_eq!(l.offset_of(2), Some(576));
    assert_eq!(l.offset_of(62), Some(576 + 256));
    assert_eq!(l.size(), 576 + 256 + 128);
    assert_eq!(l.xcomp_bv(), bit(63) | bit(62) | 0b111);
    let l = Layout::compacted(&e, XFeatures::LEGACY | XFeatures::LWP).unwrap();
    assert_eq!(l.offset_of(62), Some(576));
    let l = Layout::standard(&e, e.xcr0_supported()).unwrap();
    assert_eq!(l.offset_of(62), Some(0x340));
    assert_eq!(l.size(), 0x3c0);
}

#[test]
fn layout_errors() {
    let e = accepted(&spr());
    let mpx = XFeatures::BNDREGS | XFeatures::BNDCSR;
    for mask in [XFeatures::LEGACY | mpx, XFeatures::AVX | XFeatures::APX] {
        let bad = (mask - e.supported()).bits();
        assert_eq!(
            Layout::standard(&e, mask),
            Err(LayoutError::Unsupported { mask: bad })
        );
        assert_eq!(
            Layout::compacted(&e, mask),
            Err(LayoutError::Unsupported { mask: bad })
        );
    }
    // XCOMP_BV bit 63 is not a component.
    assert_eq!(
        Layout::compacted(&e, XFeatures::from_bits_retain(bit(63) | 3)),
        Err(LayoutError::Unsupported { mask: bit(63) })
    );
    // Supervisor components have no standard-form place.
    assert_eq!(
        Layout::standard(&e, XFeatures::LEGACY | XFeatures::PT | XFeatures::CET_U),
        Err(LayoutError::SupervisorInStandard {
            mask: bit(8) | bit(11)
        })
    );
    assert_eq!(
        Layout::standard(&e, e.supported()),
        Err(LayoutError::SupervisorInStandard {
            mask: e.xss_supported().bits()
        })
    );
    // But they are laid out compacted.
    assert!(Layout::compacted(&e, e.supported()).is_ok());
}

// ---------------------------------------------------------------------------
// Live size reports.
// ---------------------------------------------------------------------------

#[test]
fn live_sizes_as_dumped() {
    // Zen 4 was dumped with XCR0 = 0xe7 (no PKRU) and IA32_XSS = CET_U.
    let t = zen4();
    let e = accepted(&t);
    let xcr0 = XFeatures::from_bits_retain(0xe7);
    assert_eq!(
        e.check_live_sizes(&t, xcr0, XFeatures::CET_U),
        Ok(SizeCheck {
            standard_excess: 0,
            compacted_excess: 0
        })
    );
    // Checked against the full XCR0 (with PKRU), the same report is too small.
    assert_eq!(
        e.check_live_sizes(&t, e.xcr0_supported(), XFeatures::CET_U),
        Err(EnumError::ReportedTooSmall {
            report: SizeReport::CurrentStandard,
            reported: 0x980,
            computed: 0x988,
        })
    );
    // Sapphire Rapids: full XCR0, IA32_XSS = PT.
    let t = spr();
    let e = accepted(&t);
    assert_eq!(
        e.check_live_sizes(&t, e.xcr0_supported(), XFeatures::PT),
        Ok(SizeCheck {
            standard_excess: 0,
            compacted_excess: 0
        })
    );
    // Masks outside the enumeration.
    assert_eq!(
        e.check_live_sizes(
            &t,
            e.xcr0_supported() | XFeatures::BNDREGS,
            XFeatures::empty()
        ),
        Err(EnumError::NotSupported { mask: bit(3) })
    );
    assert_eq!(
        e.check_live_sizes(&t, XFeatures::LEGACY, XFeatures::HDC),
        Err(EnumError::NotSupported { mask: bit(13) })
    );
}

#[test]
fn live_sizes_under_reported() {
    let mut t = spr();
    let e = accepted(&t);
    t.edit(0, |r| r.ebx = 0x2aff);
    assert_eq!(
        e.check_live_sizes(&t, e.xcr0_supported(), XFeatures::PT),
        Err(EnumError::ReportedTooSmall {
            report: SizeReport::CurrentStandard,
            reported: 0x2aff,
            computed: 0x2b00,
        })
    );
    let mut t = spr();
    t.edit(1, |r| r.ebx = 0x2a7f);
    assert_eq!(
        e.check_live_sizes(&t, e.xcr0_supported(), XFeatures::PT),
        Err(EnumError::ReportedTooSmall {
            report: SizeReport::CurrentCompacted,
            reported: 0x2a7f,
            computed: 0x2a80,
        })
    );
    // With XSAVEC alone (no XSAVES), EBX is XSAVEC's size for XCR0 and still checked.
    let mut t = spr();
    t.edit(1, |r| r.eax &= !0b1000);
    let e = accepted(&t);
    assert!(e.xsavec() && !e.xsaves());
    t.edit(1, |r| r.ebx = 0x29ff);
    assert_eq!(
        e.check_live_sizes(&t, e.xcr0_supported(), XFeatures::empty()),
        Err(EnumError::ReportedTooSmall {
            report: SizeReport::CurrentCompacted,
            reported: 0x29ff,
            computed: 0x2a00,
        })
    );
    // A bit outside both masks, named in both: refused, not cancelled out.
    let e = accepted(&spr());
    assert_eq!(
        e.check_live_sizes(&spr(), e.xcr0_supported() | XFeatures::HDC, XFeatures::HDC),
        Err(EnumError::NotSupported { mask: bit(13) })
    );
    // Without XSAVEC or XSAVES, CPUID(0xD,1).EBX means nothing and is not checked.
    let mut t = dump("firecracker-t2a-guest-on-m6a-metal-amd");
    let e = accepted(&t);
    assert!(!e.xsavec() && !e.xsaves());
    t.edit(1, |r| r.ebx = 0);
    assert_eq!(
        e.check_live_sizes(&t, e.xcr0_supported(), XFeatures::empty()),
        Ok(SizeCheck {
            standard_excess: 0,
            compacted_excess: 0
        })
    );
}

#[test]
fn live_sizes_over_reported() {
    let mut t = spr();
    let e = accepted(&t);
    t.edit(0, |r| r.ebx += 0x40);
    t.edit(1, |r| r.ebx += 0x100);
    assert_eq!(
        e.check_live_sizes(&t, e.xcr0_supported(), XFeatures::PT),
        Ok(SizeCheck {
            standard_excess: 0x40,
            compacted_excess: 0x100
        })
    );
    // A larger report for a smaller mask: the whole difference is excess.
    assert_eq!(
        e.check_live_sizes(&t, XFeatures::LEGACY, XFeatures::empty()),
        Ok(SizeCheck {
            standard_excess: 0x2b40 - 576,
            compacted_excess: 0x2b80 - 576
        })
    );
}

// ---------------------------------------------------------------------------
// Invariants of anything accepted, and an independent compacted-form rule.
// ---------------------------------------------------------------------------

/// SDM vol. 1 13.4.3, written from the text, on the raw CPUID table: the first
/// extended component of XCOMP_BV is at 576; each next one at the previous one's
/// end, rounded up to a multiple of 64 if its CPUID(0xD,i).ECX[1] is set.
/// Returns the offset of each extended component and the area size.
fn sdm_compacted(t: &Table, xcomp_bv: u64) -> (BTreeMap<u32, u64>, u64) {
    let mut offsets = BTreeMap::new();
    let mut prev: Option<(u64, u64)> = None; // (location, size)
    for i in 2..63 {
        if xcomp_bv & bit(i) == 0 {
            continue;
        }
        let r = t.get(i);
        let location = match prev {
            None => 576,
            Some((loc, size)) if r.ecx & 2 != 0 => (loc + size).div_ceil(64) * 64,
            Some((loc, size)) => loc + size,
        };
        offsets.insert(i, location);
        prev = Some((location, u64::from(r.eax)));
    }
    let size = prev.map_or(576, |(loc, size)| loc + size);
    (offsets, size)
}

fn check_compacted_against_sdm(
    t: &Table,
    e: &Enumeration,
    xcomp_bv: u64,
) -> Result<(), TestCaseError> {
    let l = Layout::compacted(e, XFeatures::from_bits_retain(xcomp_bv))
        .map_err(|err| TestCaseError::fail(format!("{xcomp_bv:#x}: {err}")))?;
    let (want, size) = sdm_compacted(t, xcomp_bv);
    for (&i, &off) in &want {
        prop_assert_eq!(l.offset_of(i).map(u64::from), Some(off), "component {}", i);
    }
    for i in 0..64 {
        prop_assert_eq!(
            l.offset_of(i).is_some(),
            xcomp_bv & bit(i) != 0,
            "component {}",
            i
        );
    }
    prop_assert_eq!(u64::from(l.size()), size);
    prop_assert_eq!(l.xcomp_bv(), bit(63) | xcomp_bv);
    Ok(())
}

/// Everything an accepted enumeration promises.
fn check_ok(t: &Table, e: &Enumeration) -> Result<(), TestCaseError> {
    let xcr0 = e.xcr0_supported();
    let xss = e.xss_supported();
    let reported = t.get(0).ecx;
    prop_assert!(xcr0.contains(XFeatures::LEGACY));
    prop_assert!(xcr0.intersection(xss).is_empty());
    prop_assert_eq!(xcr0.bits(), t.xcr0());
    prop_assert_eq!(xss.bits(), t.xss());
    prop_assert_eq!(e.supported().bits() >> 63, 0);
    prop_assert_eq!(e.reported_max_standard(), reported);

    // Usable components are supported, and hold the catalog's size: exactly with
    // feature flags, at least without.
    prop_assert!(e.supported().contains(e.usable()));
    prop_assert!(e.usable().contains(XFeatures::LEGACY));
    prop_assert_eq!(e.flags_known(), t.cpuid(1, 0) != CpuidResult::default());
    for i in e.usable().indices().filter(|&i| i >= 2) {
        if let Some(arch) = CATALOG.get(i as usize).and_then(|f| f.arch_size) {
            let size = e.component(i).unwrap().size;
            if e.flags_known() {
                prop_assert_eq!(size, arch, "component {}", i);
            } else {
                prop_assert!(size >= arch, "component {} at {} < {}", i, size, arch);
            }
        }
    }
    // Linux's policy never enables what is not usable, and configs from it never panic.
    let p = Policy::linux(e);
    prop_assert!(e.usable().contains(p.enabled));
    let _ = Configs::new(e, &p);

    let user: Vec<u32> = xcr0.indices().filter(|&i| i >= 2).collect();
    for i in e.supported().indices().filter(|&i| i >= 2) {
        let c = e.component(i).unwrap();
        let r = t.get(i);
        prop_assert_eq!(
            (c.size, c.align64),
            (r.eax, r.ecx & 2 != 0),
            "component {}",
            i
        );
        prop_assert!(
            c.size > 0 && c.size <= MAX_COMPONENT_SIZE,
            "component {}",
            i
        );
        prop_assert_eq!(c.supervisor, xss.has_index(i), "component {}", i);
    }
    for &i in &user {
        let c = e.component(i).unwrap();
        prop_assert!(
            c.std_offset >= EXTENDED_START,
            "component {} at {}",
            i,
            c.std_offset
        );
        let end = u64::from(c.std_offset) + u64::from(c.size);
        prop_assert!(
            end <= u64::from(reported),
            "component {} ends at {}",
            i,
            end
        );
    }
    for (n, &a) in user.iter().enumerate() {
        for &b in &user[n + 1..] {
            let (ca, cb) = (e.component(a).unwrap(), e.component(b).unwrap());
            let (a0, a1) = (
                u64::from(ca.std_offset),
                u64::from(ca.std_offset) + u64::from(ca.size),
            );
            let (b0, b1) = (
                u64::from(cb.std_offset),
                u64::from(cb.std_offset) + u64::from(cb.size),
            );
            prop_assert!(a1 <= b0 || b1 <= a0, "components {} and {} overlap", a, b);
        }
    }

    // Compacted layout of everything: increasing, aligned, disjoint, sized.
    let l = Layout::compacted(e, e.supported())
        .map_err(|err| TestCaseError::fail(format!("compacted: {err}")))?;
    let mut prev_end = u64::from(EXTENDED_START);
    for i in e.supported().indices().filter(|&i| i >= 2) {
        let c = e.component(i).unwrap();
        let off = u64::from(l.offset_of(i).unwrap());
        prop_assert!(
            off >= prev_end,
            "component {} at {} before {}",
            i,
            off,
            prev_end
        );
        if c.align64 {
            prop_assert_eq!(off % 64, 0, "component {}", i);
        }
        prop_assert_eq!(l.size_of(i), Some(c.size));
        prev_end = off + u64::from(c.size);
    }
    prop_assert_eq!(u64::from(l.size()), prev_end);
    prop_assert_eq!(l.size(), e.compacted_max_size());
    prop_assert_eq!(l.size(), e.compacted_size(e.supported()));
    check_compacted_against_sdm(t, e, e.supported().bits())?;

    // Standard layout of every user component.
    let s =
        Layout::standard(e, xcr0).map_err(|err| TestCaseError::fail(format!("standard: {err}")))?;
    prop_assert_eq!(s.size(), e.standard_max_size());
    prop_assert_eq!(s.size(), e.standard_size(xcr0));
    prop_assert!(s.size() <= reported);
    for &i in &user {
        prop_assert_eq!(s.offset_of(i), Some(e.component(i).unwrap().std_offset));
    }
    if !xss.is_empty() {
        prop_assert_eq!(
            Layout::standard(e, e.supported()),
            Err(LayoutError::SupervisorInStandard { mask: xss.bits() })
        );
    }
    Ok(())
}

/// One lie told about a real CPU.
#[derive(Clone, Debug)]
enum Mutation {
    Set { sub: u32, reg: usize, val: u32 },
    Flip { sub: u32, reg: usize, bit: u32 },
    Drop { sub: u32 },
    Xcr0(u64),
    Xss(u64),
    ToggleXcr0(u32),
    ToggleXss(u32),
}

impl Mutation {
    fn apply(&self, t: &mut Table) {
        match *self {
            Self::Set { sub, reg, val } => t.set_reg(sub, reg, val),
            Self::Flip { sub, reg, bit } => t.edit(sub, |r| *reg_mut(r, reg) ^= 1 << bit),
            Self::Drop { sub } => t.drop_sub(sub),
            Self::Xcr0(m) => t.set_xcr0(m),
            Self::Xss(m) => t.set_xss(m),
            Self::ToggleXcr0(b) => t.set_xcr0(t.xcr0() ^ bit(b)),
            Self::ToggleXss(b) => t.set_xss(t.xss() ^ bit(b)),
        }
    }
}

fn arb_sub() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => 0u32..2,
        4 => 2u32..20,
        1 => 20u32..64,
        1 => Just(62u32),
        1 => Just(63u32),
    ]
}

fn arb_val() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => any::<u32>(),
        2 => 0u32..0x4000,
        1 => (0u32..0x100).prop_map(|k| k * 64),
        1 => prop::sample::select(vec![
            0u32,
            1,
            2,
            3,
            7,
            511,
            512,
            575,
            576,
            MAX_COMPONENT_SIZE,
            MAX_COMPONENT_SIZE + 1,
            0x7fff_ffff,
            0x8000_0000,
            u32::MAX - 0xff,
            u32::MAX - 1,
            u32::MAX,
        ]),
    ]
}

fn arb_mask() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        any::<u64>().prop_map(|m| m & 0x4000_0000_000f_ffff),
        any::<u64>().prop_map(|m| (m & 0x4000_0000_000f_ffff) | 3),
        (0u32..64).prop_map(bit),
    ]
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (arb_sub(), 0usize..4, arb_val()).prop_map(|(sub, reg, val)| Mutation::Set { sub, reg, val }),
        4 => (arb_sub(), 0usize..4, 0u32..32).prop_map(|(sub, reg, bit)| Mutation::Flip { sub, reg, bit }),
        1 => arb_sub().prop_map(|sub| Mutation::Drop { sub }),
        1 => arb_mask().prop_map(Mutation::Xcr0),
        1 => arb_mask().prop_map(Mutation::Xss),
        2 => (0u32..64).prop_map(Mutation::ToggleXcr0),
        2 => (0u32..64).prop_map(Mutation::ToggleXss),
    ]
}

fn arb_regs() -> impl Strategy<Value = CpuidResult> {
    (arb_val(), arb_val(), arb_val(), arb_val()).prop_map(|(a, b, c, d)| regs(a, b, c, d))
}

/// A well-formed random CPU: user components packed in random order with random
/// gaps, random supervisor components, ECX[1] at random, a truthful or generous
/// ECX. Mostly accepted, which exercises the invariants.
fn arb_plausible() -> impl Strategy<Value = Table> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec((1u32..=4096, 0u32..256, any::<bool>(), any::<bool>()), 61),
        Just((2u32..63).collect::<Vec<u32>>()).prop_shuffle(),
        prop_oneof![Just(0u32), 0u32..0x1000],
    )
        .prop_map(|(user_bits, sup_bits, facts, order, slack)| {
            let ext = ((1u64 << 63) - 1) & !3;
            let xcr0 = 3 | (user_bits & ext);
            let xss = sup_bits & ext & !xcr0;
            let mut t = Table::default();
            let mut off = EXTENDED_START;
            for i in order {
                let (size, gap, align, xfd) = facts[i as usize - 2];
                // A plausible CPU gives a catalogued component its
                // architectural size (without feature flags, anything else is
                // refused: fail closed).
                let arch = CATALOG.get(i as usize).and_then(|f| f.arch_size);
                let size = arch.unwrap_or(size);
                let ecx = (u32::from(align) << 1) | (u32::from(xfd) << 2);
                if xcr0 & bit(i) != 0 {
                    off += gap;
                    t.set_comp(i, size, off, ecx);
                    off += size;
                } else if xss & bit(i) != 0 {
                    t.set_comp(i, size, 0, ecx | 1);
                }
            }
            t.set(0, regs(xcr0 as u32, off, off + slack, (xcr0 >> 32) as u32));
            t.set(1, regs(0xf, 0, xss as u32, (xss >> 32) as u32));
            t
        })
}

fn from_cpuid_is_sound(t: &Table) -> Result<(), TestCaseError> {
    // A panic (overflow included: tests build with overflow checks) fails the case.
    match Enumeration::from_cpuid(t) {
        Ok(e) => check_ok(t, &e),
        Err(err) => {
            // Every refusal is displayable.
            prop_assert!(!err.to_string().is_empty());
            Ok(())
        }
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn mutated_dumps_never_panic(
        which in 0usize..64,
        muts in prop::collection::vec(arb_mutation(), 1..8),
    ) {
        let tables = dump_tables();
        let mut t = tables[which % tables.len()].1.clone();
        for m in &muts {
            m.apply(&mut t);
        }
        from_cpuid_is_sound(&t)?;
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn random_tables_never_panic(
        entries in prop::collection::vec((arb_sub(), arb_regs()), 0..24),
        legacy in any::<bool>(),
    ) {
        let mut t = Table::default();
        for (sub, r) in entries {
            t.set(sub, r);
        }
        if legacy {
            t.edit(0, |r| r.eax |= 3);
        }
        from_cpuid_is_sound(&t)?;
    }

    #[test]
    fn plausible_tables_are_accepted(t in arb_plausible()) {
        let e = Enumeration::from_cpuid(&t)
            .map_err(|err| TestCaseError::fail(format!("refused: {err}")))?;
        check_ok(&t, &e)?;
    }

    #[test]
    fn mutated_plausible_tables_never_panic(
        t in arb_plausible(),
        muts in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let mut t = t;
        for m in &muts {
            m.apply(&mut t);
        }
        from_cpuid_is_sound(&t)?;
    }

    #[test]
    fn compacted_matches_the_sdm_rule_on_every_dump(r in any::<u64>()) {
        for (name, t) in dump_tables() {
            let e = Enumeration::from_cpuid(t)
                .map_err(|err| TestCaseError::fail(format!("{name}: {err}")))?;
            let sup = e.supported().bits();
            for xcomp_bv in [r & sup, (r & sup) | 3, r.rotate_left(17) & sup] {
                check_compacted_against_sdm(t, &e, xcomp_bv)?;
            }
        }
    }
}

#[test]
fn compacted_matches_the_sdm_rule_exhaustively_on_small_masks() {
    // Every subset where there are few enough components to enumerate them all.
    for (name, t) in dump_tables() {
        let e = accepted(t);
        let bits: Vec<u32> = e.supported().indices().collect();
        if bits.len() > 16 {
            continue;
        }
        for k in 0u32..(1 << bits.len()) {
            let xcomp_bv = bits
                .iter()
                .enumerate()
                .filter(|&(n, _)| k & (1 << n) != 0)
                .fold(0u64, |m, (_, &i)| m | bit(i));
            check_compacted_against_sdm(t, &e, xcomp_bv)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
    }
}

// ---------------------------------------------------------------------------
// Architectural sizes from the catalog (Linux's `check_xstate_against_struct`).
// ---------------------------------------------------------------------------

/// Every dump with its feature leaves.
fn flagged_tables() -> Vec<(String, Table)> {
    dumps()
        .iter()
        .map(|(n, t)| (n.clone(), Table::with_feature_leaves(t)))
        .collect()
}

fn flagged(name: &str) -> Table {
    let file = format!("{name}.txt");
    flagged_tables()
        .into_iter()
        .find(|(n, _)| *n == file)
        .unwrap_or_else(|| panic!("no layouts/{file}"))
        .1
}

/// `t` is refused for component `index` at `size` bytes against `arch_size`;
/// without feature leaves the message says which leaves to record.
fn size_refused(t: &Table, index: u32, size: u32, arch_size: u32, flags_known: bool) -> String {
    let err = refused(t);
    let want = EnumError::ArchSizeMismatch {
        index,
        size,
        arch_size,
        flags_known,
    };
    assert_eq!(err, want);
    let text = err.to_string();
    assert_eq!(
        text.contains("record leaves 1 and 7"),
        !flags_known,
        "{text}"
    );
    text
}

#[test]
fn avx_of_16_bytes_is_refused() {
    let mut t = flagged("intel-sapphire-rapids-xeon-w9-3475x");
    assert!(accepted(&t).flags_known());
    t.edit(2, |r| r.eax = 16);
    assert_eq!(
        size_refused(&t, 2, 16, 256, true),
        "component 2 claims 16 bytes; the architecture fixes 256"
    );
    // The same lie from a table of leaf 0xD alone: refused too, and the message
    // says which leaves would tell a flag-clear component from a lie.
    let mut bare = spr();
    bare.edit(2, |r| r.eax = 16);
    size_refused(&bare, 2, 16, 256, false);
    // With AVX's flag (CPUID.1:ECX[28]) clear, AVX is neither checked nor usable,
    // as Linux would not enable it.
    t.0.entry((1, 0)).and_modify(|r| r.ecx &= !(1 << 28));
    let e = accepted(&t);
    assert!(!e.usable().contains(XFeatures::AVX));
    assert!(e.supported().contains(XFeatures::AVX));
}

/// Every catalogued component a dump makes usable, given one byte less and 64
/// bytes more than the architecture fixes: refused with that component's error.
#[test]
fn every_fixed_size_is_enforced_on_every_dump() {
    let mut cases = 0;
    let mut components = XFeatures::empty();
    for (name, t) in flagged_tables() {
        let e = accepted(&t);
        for i in e.usable().indices().filter(|&i| i >= 2) {
            let Some(arch) = CATALOG.get(i as usize).and_then(|f| f.arch_size) else {
                continue;
            };
            assert_eq!(e.component(i).unwrap().size, arch, "{name}: {i}");
            for size in [arch - 1, arch + 64] {
                let mut bad = t.clone();
                bad.edit(i, |r| r.eax = size);
                let want = |flags_known| EnumError::ArchSizeMismatch {
                    index: i,
                    size,
                    arch_size: arch,
                    flags_known,
                };
                let r = Enumeration::from_cpuid(&bad).err();
                assert_eq!(
                    r,
                    Some(want(e.flags_known())),
                    "{name}: component {i} at {size} bytes"
                );
                cases += 1;
                // Without feature leaves the size check fails closed: an
                // undersized or an oversized component is refused alike.
                if e.flags_known() {
                    let mut bare = bad.clone();
                    bare.0.retain(|&(leaf, _), _| leaf == 0xd);
                    let r = Enumeration::from_cpuid(&bare).err();
                    assert_eq!(r, Some(want(false)), "{name}: {i} without flags");
                    cases += 1;
                }
            }
            components |= XFeatures::from_index(i).unwrap();
        }
    }
    eprintln!(
        "architectural sizes: {cases} lies refused over {} components {:#x}",
        components.bits().count_ones(),
        components.bits()
    );
    // AVX, AVX-512, MPX, PKRU, PASID, CET, UINTR, AMX at least.
    let want = XFeatures::AVX
        | XFeatures::AVX512
        | XFeatures::BNDREGS
        | XFeatures::BNDCSR
        | XFeatures::PKRU
        | XFeatures::PASID
        | XFeatures::CET_U
        | XFeatures::CET_S
        | XFeatures::UINTR
        | XFeatures::XTILE;
    assert!(components.contains(want), "{:#x}", components.bits());
}

#[test]
fn a_flag_clear_component_is_not_size_checked() {
    // Zen 2 lists PKRU at 64 bytes with PKU clear: accepted, PKRU not usable.
    let t = flagged("amd-zen2-epyc-7742");
    assert_eq!(t.get(9).eax, 64);
    let e = accepted(&t);
    assert!(!e.usable().contains(XFeatures::PKRU));
    // Were PKU set, that PKRU would be a 64-byte lie about an 8-byte state.
    let mut pku = t.clone();
    pku.0.entry((7, 0)).and_modify(|r| r.ecx |= 1 << 3);
    size_refused(&pku, 9, 64, 8, true);
    // Recorded as leaf 0xD alone, the dump cannot say PKU is clear: refused,
    // with the advice to record leaves 1 and 7 (fail closed).
    let mut bare = t.clone();
    bare.0.retain(|&(leaf, _), _| leaf == 0xd);
    size_refused(&bare, 9, 64, 8, false);
}

/// `xstate-report --cpuid FILE` on a hostile dump: one error line, exit status 2.
#[test]
fn report_exits_2_on_an_architectural_size_lie() {
    let text = &dumps()
        .iter()
        .find(|(n, _)| n == "intel-sapphire-rapids-xeon-w9-3475x.txt")
        .unwrap()
        .1;
    let lie = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("0x0000000d 0x02:") {
                "0x0000000d 0x02: eax=0x00000010 ebx=0x00000240 ecx=0x00000000 edx=0x00000000"
                    .to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = std::env::temp_dir().join(format!("xstate-hostile-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("good.txt"), dir.join("avx16.txt"));
    fs::write(&good, text).unwrap();
    fs::write(&bad, &lie).unwrap();
    let run = |p: &PathBuf| report::run(["--cpuid".to_owned(), p.to_string_lossy().into_owned()]);
    let ok = run(&good);
    assert_eq!(report::exit_status(&ok), 0, "{ok:?}");
    let r = run(&bad);
    assert_eq!(report::exit_status(&r), 2);
    let msg = r.unwrap_err();
    assert!(
        msg.contains("component 2 claims 16 bytes; the architecture fixes 256"),
        "{msg}"
    );
    eprintln!("xstate-report --cpuid avx16.txt: exit 2: {msg}");
    fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any feature leaves (1, 6, 7.0, 7.1) on any dump: sound, and Linux's policy
    /// only enables components whose flag is set.
    #[test]
    fn random_feature_leaves_never_panic(
        which in 0usize..64,
        leaves in prop::collection::vec(arb_regs(), 4),
        keep in prop::collection::vec(any::<bool>(), 4),
    ) {
        let tables = flagged_tables();
        let mut t = tables[which % tables.len()].1.clone();
        for (((leaf, sub), r), k) in [(1, 0), (6, 0), (7, 0), (7, 1)].into_iter().zip(leaves).zip(keep) {
            if !k {
                t.0.insert((leaf, sub), r);
            }
        }
        from_cpuid_is_sound(&t)?;
    }
}

/// APX's flag sits in CPUID(7,1).EDX bit 21: read only where CPUID(7,0).EAX says
/// subleaf 1 exists (a CPU may answer an undefined subleaf with anything).
#[test]
fn apx_flag_is_read_only_where_leaf_7_1_exists() {
    let mut t = flagged("intel-sapphire-rapids-xeon-w9-3475x");
    t.set_xcr0(t.xcr0() | bit(19));
    t.set_comp(19, 128, 960, 0);
    t.0.insert((7, 1), regs(0, 0, 0, 1 << 21));
    for (max_sub, usable) in [(0, false), (1, true), (2, true)] {
        t.0.entry((7, 0)).and_modify(|r| r.eax = max_sub);
        let e = accepted(&t);
        assert_eq!(
            e.usable().contains(XFeatures::APX),
            usable,
            "7.0.EAX {max_sub}"
        );
        assert_eq!(Policy::linux(&e).enabled.contains(XFeatures::APX), usable);
    }
    // With the flag read, APX's size is checked: 64 bytes is a lie about 128.
    t.set_comp(19, 64, 960, 0);
    assert_eq!(
        refused(&t),
        EnumError::ArchSizeMismatch {
            index: 19,
            size: 64,
            arch_size: 128,
            flags_known: true,
        }
    );
    // Not read (7.0.EAX = 0): APX is not usable and its size is not Linux's concern.
    t.0.entry((7, 0)).and_modify(|r| r.eax = 0);
    assert!(!accepted(&t).usable().contains(XFeatures::APX));
}

/// A CPUID that marks AMX TILECFG (17) XFD-capable, as no CPU does: the
/// enumeration takes it, but a policy cannot make 17 dynamic, since no
/// permission request grants it (Linux's only dynamic component is TILEDATA).
/// TILEDATA itself stays a valid dynamic component.
#[test]
fn only_tiledata_can_be_dynamic_even_where_cpuid_allows_more() {
    let mut t = spr();
    t.edit(17, |r| r.ecx |= 0b100);
    let e = accepted(&t);
    assert!(e.components()[17].xfd, "the enumeration reads ECX[2]");
    let p = Policy::linux(&e);
    assert!(p.enabled.contains(XFeatures::XTILE));
    let both = Policy {
        dynamic: XFeatures::XTILE,
        ..p
    };
    assert_eq!(
        Configs::new(&e, &both),
        Err(ConfigError::BadDynamic { mask: bit(17) })
    );
    let data = Policy {
        dynamic: XFeatures::XTILE_DATA,
        ..p
    };
    let cfg = Configs::new(&e, &data).expect("TILEDATA may be dynamic");
    assert!(!cfg.user().default_features.contains(XFeatures::XTILE_DATA));
    assert!(cfg.user().default_features.contains(XFeatures::XTILE_CFG));
}

/// Linux runs `validate_sigaltstack` on every new task grant, whatever the size
/// does: on a layout where TILEDATA is not the last component (AVX-512's Hi16_ZMM
/// moved past it), granting TILEDATA leaves the user-ABI size as it was, and the
/// signal-stack check is still asked, with that size, and can still refuse.
/// Guest requests never ask.
#[test]
fn the_signal_stack_is_asked_on_every_task_grant() {
    use xstate::perm::{PermError, PermKind, ProcessPerms};
    let mut t = spr();
    let hi16 = t.get(7);
    let end = 0x2b00;
    t.set_comp(7, hi16.eax, end, hi16.ecx);
    t.set_max_standard(end + hi16.eax);
    t.edit(0, |r| r.ebx = end + hi16.eax);
    let e = accepted(&t);
    let cfg = Configs::new(&e, &Policy::linux(&e)).expect("configs");
    let mut p = ProcessPerms::new(&cfg);
    let before = p.get(PermKind::Task).user_size;
    assert_eq!(before, end + hi16.eax, "Hi16_ZMM ends the standard form");
    let mut asked = None;
    let r = p.request(&cfg, PermKind::Task, 18, |size| {
        asked = Some(size);
        false
    });
    assert_eq!(asked, Some(before), "asked with the unchanged size");
    assert_eq!(r, Err(PermError::SigStackTooSmall { user_size: before }));
    let g = p
        .request(&cfg, PermKind::Guest, 18, |_| {
            panic!("a guest request asked")
        })
        .expect("guest grant");
    assert!(g.features.contains(XFeatures::XTILE_DATA));
    let g = p
        .request(&cfg, PermKind::Task, 18, |_| true)
        .expect("task grant");
    assert_eq!(g.user_size, before);
}

/// x87 and SSE are always usable, whether the source gives feature flags or
/// not (Linux without FPU or SSE does not use XSAVE at all; the crate keeps them).
#[test]
fn legacy_is_always_usable() {
    let bare = accepted(&spr());
    assert!(!bare.flags_known());
    assert!(bare.usable().contains(XFeatures::LEGACY), "no flags");
    let flagged = accepted(&flagged("intel-sapphire-rapids-xeon-w9-3475x"));
    assert!(flagged.flags_known());
    assert!(flagged.usable().contains(XFeatures::LEGACY), "with flags");
}

/// Linux's boot enumeration (`linux_xsave`): TILEDATA only with XFD
/// (CPUID(0xD,1).EAX[4]), supervisor components only with XSAVES (EAX[3]).
#[test]
fn linux_drops_tiledata_without_xfd_and_supervisor_state_without_xsaves() {
    use xstate::guest::{LinuxRefusal, linux_xsave};
    let amx = || dump("intel-xeon-amx-kvm-guest-this-build-host");
    let full = linux_xsave(&amx()).unwrap();
    assert!(full.features.contains(XFeatures::XTILE));
    let mut t = amx();
    t.edit(1, |r| r.eax &= !0x10);
    // CPUID's size for XCR0 | XSS still counts TILEDATA, which Linux then
    // refuses in its words; with the report matching the smaller set, it boots.
    let computed = accepted(&t).compacted_size(full.features - XFeatures::XTILE_DATA);
    assert_eq!(
        linux_xsave(&t),
        Err(LinuxRefusal::SizeMismatch {
            size: computed,
            kernel_size: t.get(1).ebx
        })
    );
    t.edit(1, |r| r.ebx = computed);
    let l = linux_xsave(&t).unwrap();
    assert_eq!(l.features, full.features - XFeatures::XTILE_DATA);

    // Zen 4 was dumped with IA32_XSS = CET_U only, so CPUID's compacted size
    // is not that of what Linux enables: make the report match, then boot.
    let boot = |mut t: Table| match linux_xsave(&t) {
        Err(LinuxRefusal::SizeMismatch { size, .. }) => {
            t.edit(1, |r| r.ebx = size);
            linux_xsave(&t).unwrap()
        }
        r => r.unwrap(),
    };
    let full = boot(zen4());
    let sup = full.features & XFeatures::SUPERVISOR;
    assert!(!sup.is_empty());
    let mut t = zen4();
    t.edit(1, |r| r.eax &= !0x8);
    let l = boot(t);
    assert_eq!(l.features, full.features - sup);
    assert!(
        l.compacted,
        "XSAVEC alone still means a compacted kernel buffer"
    );
}

/// Linux's static init_fpstate holds 4096 bytes: a default buffer of exactly
/// that size boots, one byte more is refused.
#[test]
fn linux_init_fpstate_holds_exactly_4096_bytes() {
    use xstate::guest::{LinuxRefusal, linux_xsave};
    for (end, ok) in [(4096, true), (4097, false)] {
        // Standard form only (no XSAVEC/XSAVES): x87, SSE and an 8-byte PKRU
        // placed to end at `end`.
        let mut t = legacy_only();
        t.set(0, regs(0x203, end, end, 0));
        t.set(1, regs(0x1, 0, 0, 0));
        t.set_comp(9, 8, end - 8, 0);
        let got = linux_xsave(&t);
        if ok {
            assert_eq!(got.map(|l| l.context_size), Ok(end));
        } else {
            assert_eq!(got, Err(LinuxRefusal::InitFpstateTooSmall { size: end }));
        }
    }
}
