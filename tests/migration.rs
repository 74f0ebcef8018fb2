//! Issue 12, item 4: migration that fails closed. Every pair of `layouts/`
//! dumps: a guest shown everything its source host offers guests (every user
//! component, CET in IA32_XSS where the host has it, every XSAVE extension)
//! either moves to the destination with `guest::migrate` and its XSAVE buffer
//! round-trips through `translate` without losing a byte (and its side state
//! through `SideState`'s bytes), or is refused with a reason the raw dumps
//! confirm. Synthetic dumps cover what no recorded CPU has: APX where MPX was,
//! another AMX tile-data size, a narrower PKRU.

#[allow(unused_macros)]
#[path = "testkit/mod.rs"]
mod testkit;

use std::collections::BTreeMap;

use proptest::prelude::*;
use testkit::{Rng, dumps, loud, std_buffer, std_size_raw};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidSource, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{Fpstate, Owner};
use xstate::guest::{
    GuestError, GuestXsave, LinuxRefusal, SideReg, SideRegs, SideState, XsaveFlags, compatible,
    linux_xsave, migrate, translate,
};
use xstate::perm::PermSet;

fn all_perms(e: &Enumeration) -> PermSet {
    PermSet {
        features: e.supported(),
        size: e.compacted_max_size(),
        user_size: e.standard_max_size(),
    }
}

/// The guest a VMM on `e` builds when it shows everything: every user
/// component, CET_U/CET_S where the host has them and XSAVES (what KVM 6.18
/// offers guests in IA32_XSS), every extension; XCR0 and IA32_XSS enabled in
/// full, as a guest kernel does.
fn full_guest(e: &Enumeration) -> GuestXsave {
    let flags = XsaveFlags::of(e);
    let xss = if flags.contains(XsaveFlags::XSAVES) {
        e.xss_supported() & (XFeatures::CET_U | XFeatures::CET_S)
    } else {
        XFeatures::empty()
    };
    let mut g = GuestXsave::new(e, &all_perms(e), e.xcr0_supported(), xss, flags).unwrap();
    g.set_xcr0(e.xcr0_supported()).unwrap();
    g.set_xss(xss).unwrap();
    g
}

fn reason(e: &GuestError) -> &'static str {
    match e {
        GuestError::NotOnDestination { .. } => "NotOnDestination",
        GuestError::Replaced { .. } => "Replaced",
        GuestError::SizeMismatch { .. } => "SizeMismatch",
        GuestError::OffsetMismatch { .. } => "OffsetMismatch",
        GuestError::SubleafMismatch { .. } => "SubleafMismatch",
        GuestError::FlagsUnsupported { .. } => "FlagsUnsupported",
        GuestError::ApxWithMpx { .. } => "ApxWithMpx",
        _ => "other",
    }
}

fn xcr0_raw(c: &impl CpuidSource) -> u64 {
    let r = c.cpuid(0xd, 0);
    u64::from(r.eax) | u64::from(r.edx) << 32
}
fn xss_raw(c: &impl CpuidSource) -> u64 {
    let r = c.cpuid(0xd, 1);
    u64::from(r.ecx) | u64::from(r.edx) << 32
}

/// The refusal, confirmed from the raw subleaves of both dumps (no crate code).
fn confirm(err: &GuestError, g: &GuestXsave, ca: &RecordedCpuid, cb: &RecordedCpuid, what: &str) {
    let allowed = (g.xcr0_allowed() | g.xss_allowed()).bits();
    match *err {
        GuestError::NotOnDestination { mask } => {
            assert_ne!(mask, 0, "{what}");
            assert_eq!(mask & allowed, mask, "{what}");
            assert_eq!(mask & (xcr0_raw(cb) | xss_raw(cb)), 0, "{what}");
        }
        GuestError::Replaced { index, by } => {
            assert_eq!(xcr0_raw(cb) >> index & 1, 0, "{what}");
            let (s, d) = (ca.cpuid(0xd, index), cb.cpuid(0xd, by));
            assert_eq!(d.ebx, s.ebx, "{what}");
        }
        GuestError::SizeMismatch { index, src, dst } => {
            assert_eq!(
                (ca.cpuid(0xd, index).eax, cb.cpuid(0xd, index).eax),
                (src, dst),
                "{what}"
            );
            assert_ne!(src, dst, "{what}");
        }
        GuestError::OffsetMismatch { index, src, dst } => {
            assert_eq!(
                (ca.cpuid(0xd, index).ebx, cb.cpuid(0xd, index).ebx),
                (src, dst),
                "{what}"
            );
            assert_ne!(src, dst, "{what}");
        }
        GuestError::SubleafMismatch { subleaf } => {
            assert_ne!(
                ca.cpuid(0xd, subleaf).ecx & 7,
                cb.cpuid(0xd, subleaf).ecx & 7,
                "{what}"
            );
        }
        GuestError::FlagsUnsupported { flags, .. } => {
            assert_eq!(flags, g.flags());
            assert_ne!(
                ca.cpuid(0xd, 1).eax & 0x1f & !cb.cpuid(0xd, 1).eax,
                0,
                "{what}"
            );
        }
        ref e => panic!("{what}: unexpected refusal {e}"),
    }
}

#[test]
fn every_pair_of_dumps_migrates_losslessly_or_is_refused_with_the_reason() {
    let all: Vec<_> = dumps()
        .iter()
        .filter_map(|(n, c)| Enumeration::from_cpuid(c).ok().map(|e| (n, c, e)))
        .collect();
    assert!(all.len() >= 30, "{} dumps enumerate", all.len());
    let (mut pairs, mut round_trips) = (0, 0);
    let mut refused: BTreeMap<&str, u32> = BTreeMap::new();
    let mut rng = Rng(0x1212);
    for (na, ca, a) in &all {
        let g = full_guest(a);
        let xcr0 = g.xcr0_allowed();
        let buf = std_buffer(*ca, xcr0.bits(), rng.next());
        for (nb, cb, b) in &all {
            pairs += 1;
            let what = format!("{na} -> {nb}");
            match migrate(&g, b, &all_perms(b)) {
                Ok(gb) => {
                    // The guest sees the same leaf, masks and registers.
                    assert_eq!(gb.leaf_table(), g.leaf_table(), "{what}");
                    assert_eq!(
                        (gb.xcr0(), gb.xss(), gb.xfd()),
                        (g.xcr0(), g.xss(), g.xfd())
                    );
                    assert_eq!(
                        compatible(a, g.xcr0(), b, b.xcr0_supported()),
                        Ok(()),
                        "{what}"
                    );
                    // The XSAVE buffer: there and back, byte for byte; with the
                    // same offsets it is the same bytes on both sides.
                    let mut out = vec![0u8; b.standard_max_size() as usize];
                    let n =
                        translate(a, b, &buf, &mut out).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(n as u32, std_size_raw(*cb, xcr0.bits()), "{what}");
                    assert_eq!(out[..n], buf[..], "{what}");
                    let mut back = vec![0u8; buf.len()];
                    assert_eq!(
                        translate(b, a, &out[..n], &mut back),
                        Ok(buf.len()),
                        "{what}"
                    );
                    assert_eq!(back, buf, "{what}");
                    // The side state: through its bytes into the guest on b.
                    let mut side = g.side_state();
                    for reg in side.regs().iter() {
                        if !matches!(
                            reg,
                            SideReg::Xcr0 | SideReg::Xss | SideReg::Xfd | SideReg::XfdErr
                        ) {
                            side.set(reg, rng.next() & !7).unwrap();
                        }
                    }
                    let mut bytes = [0u8; SideState::MAX_ENCODED_LEN];
                    let len = side.to_le_bytes(&mut bytes).unwrap();
                    let read = SideState::from_le_bytes(&bytes[..len]).unwrap();
                    assert_eq!(read, side, "{what}");
                    let cfg = Configs::new(b, &Policy::linux(b)).unwrap();
                    let mut fp = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
                    let mut fresh = GuestXsave::new(
                        b,
                        &all_perms(b),
                        g.xcr0_allowed(),
                        g.xss_allowed(),
                        g.flags(),
                    )
                    .unwrap();
                    fresh
                        .restore_side(&read, &mut fp)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(fresh.leaf_table(), g.leaf_table(), "{what}");
                    round_trips += 1;
                }
                Err(e) => {
                    confirm(&e, &g, ca, cb, &what);
                    // What would lose user state is refused by the buffer-level
                    // check too, and translate will not move the buffer.
                    let user_loss = match e {
                        GuestError::NotOnDestination { mask } => {
                            g.xcr0_allowed().bits() & mask != 0
                        }
                        GuestError::Replaced { .. } => true,
                        GuestError::SizeMismatch { index, .. } => g.xcr0_allowed().has_index(index),
                        _ => false,
                    };
                    if user_loss {
                        assert!(
                            compatible(a, g.xcr0(), b, b.xcr0_supported()).is_err(),
                            "{what}: {e}"
                        );
                        let mut out = vec![0u8; b.standard_max_size().max(4096) as usize * 2];
                        assert!(translate(a, b, &buf, &mut out).is_err(), "{what}: {e}");
                    }
                    *refused.entry(reason(&e)).or_default() += 1;
                }
            }
        }
    }
    let refused_total: u32 = refused.values().sum();
    assert_eq!(pairs, round_trips + refused_total);
    assert!(
        round_trips as usize > all.len(),
        "only {round_trips} round trips"
    );
    let by: Vec<String> = refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
    loud!(
        "migration: {pairs} pairs, {round_trips} round-trip, {refused_total} refused (by reason: {})",
        by.join(", ")
    );
}

/// A dump's text with the given CPUID(0xD, sub) entries replaced or added.
fn with_subleaves(text: &str, subs: &[(u32, [u32; 4])]) -> RecordedCpuid {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| {
            !subs.iter().any(|(sub, _)| {
                l.trim_start()
                    .starts_with(&format!("0x0000000d 0x{sub:02x}:"))
            })
        })
        .map(str::to_owned)
        .collect();
    for (sub, r) in subs {
        out.push(format!(
            "0x0000000d 0x{sub:02x}: eax=0x{:08x} ebx=0x{:08x} ecx=0x{:08x} edx=0x{:08x}",
            r[0], r[1], r[2], r[3]
        ));
    }
    RecordedCpuid::parse(&out.join("\n")).unwrap()
}

fn text(name: &str) -> String {
    std::fs::read_to_string(testkit::layouts_dir().join(name)).unwrap()
}

fn regs(c: &impl CpuidSource, sub: u32) -> [u32; 4] {
    let r = c.cpuid(0xd, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// APX (component 19) at MPX's standard offset: a guest using MPX cannot move
/// to such a CPU (its bounds registers would be read as APX state), Linux
/// refuses a table enumerating both, and so does every guest mask here.
#[test]
fn apx_where_mpx_was_is_refused() {
    let (mpx_cpu, mpx) = testkit::load("qemu-tcg-guest-mpx.txt");
    assert!(
        mpx.xcr0_supported()
            .contains(XFeatures::BNDREGS | XFeatures::BNDCSR)
    );
    let mpx_bndregs = mpx_cpu.cpuid(0xd, 3).ebx;
    // An AVX-512 CPU with APX instead of MPX, APX at MPX's 0x3c0.
    let base = text("intel-tiger-lake-core-i7-1165g7.txt");
    let tgl = RecordedCpuid::parse(&base).unwrap();
    let mut s0 = regs(&tgl, 0);
    s0[0] |= 1 << 19;
    let apx_leaf = [128, mpx_bndregs, 0, 0];
    let apx_cpu = with_subleaves(&base, &[(0, s0), (19, apx_leaf)]);
    let apx = Enumeration::from_cpuid(&apx_cpu).unwrap();
    assert!(apx.xcr0_supported().contains(XFeatures::APX));

    let g = full_guest(&mpx);
    let err = migrate(&g, &apx, &all_perms(&apx)).unwrap_err();
    assert_eq!(err, GuestError::Replaced { index: 3, by: 19 });
    assert_eq!(
        compatible(&mpx, g.xcr0(), &apx, apx.xcr0_supported()),
        Err(GuestError::Replaced { index: 3, by: 19 })
    );
    // The other way: APX state has no place on the MPX CPU, where MPX sits.
    let ga = full_guest(&apx);
    assert_eq!(
        migrate(&ga, &mpx, &all_perms(&mpx)).unwrap_err(),
        GuestError::Replaced { index: 19, by: 3 }
    );
    // A destination offering guests both: refused before anything else.
    let both = apx.xcr0_supported() | XFeatures::BNDREGS | XFeatures::BNDCSR;
    assert_eq!(
        compatible(&mpx, XFeatures::LEGACY, &apx, both),
        Err(GuestError::Unsupported {
            mask: (XFeatures::BNDREGS | XFeatures::BNDCSR).bits()
        })
    );
    // A table enumerating both at one offset: the crate's enumeration refuses
    // the overlap, Linux disables XSAVE in its words.
    let mut s0b = s0;
    s0b[0] |= 0x18;
    let both_cpu = with_subleaves(
        &base,
        &[
            (0, s0b),
            (19, apx_leaf),
            (3, regs(&mpx_cpu, 3)),
            (4, regs(&mpx_cpu, 4)),
        ],
    );

    assert!(Enumeration::from_cpuid(&both_cpu).is_err());
    let linux = linux_xsave(&both_cpu).unwrap_err();
    assert_eq!(
        linux,
        LinuxRefusal::ApxAndMpx {
            features: u64::from(s0b[0]) | xss_raw(&both_cpu)
        }
    );
    assert!(
        linux
            .to_string()
            .starts_with("x86/fpu: Both APX/MPX present in the CPU's xstate features: 0x")
    );
    loud!("apx/mpx: {err}; {linux}");
}

/// Another AMX tile-data size and a narrower PKRU: refused, never truncated.
#[test]
fn amx_size_and_pkru_width_are_refused() {
    let name = "intel-sapphire-rapids-xeon-w9-3475x.txt";
    let base = text(name);
    let (spr_cpu, spr) = testkit::load(name);
    // TILEDATA of 16 KiB (the max standard size grows with it).
    let mut t18 = regs(&spr_cpu, 18);
    t18[0] *= 2;
    let mut s0 = regs(&spr_cpu, 0);
    s0[1] = t18[1] + t18[0];
    s0[2] = s0[1];
    let big = with_subleaves(&base, &[(0, s0), (18, t18)]);
    let g = full_guest(&spr);
    // Either the enumeration already refuses a size the architecture fixes,
    // or the migration does: never a truncating translate.
    match Enumeration::from_cpuid(&big) {
        Err(e) => loud!("amx: a 16 KiB TILEDATA is refused by the enumeration: {e}"),
        Ok(big) => {
            let err = migrate(&g, &big, &all_perms(&big)).unwrap_err();
            assert_eq!(
                err,
                GuestError::SizeMismatch {
                    index: 18,
                    src: t18[0] / 2,
                    dst: t18[0]
                }
            );
            let buf = std_buffer(&spr_cpu, g.xcr0().bits(), 7);
            let mut out = vec![0u8; big.standard_max_size() as usize];
            assert_eq!(translate(&spr, &big, &buf, &mut out), Err(err));
            loud!("amx: {err}");
        }
    }

    // PKRU of 4 bytes (the register without Linux's 4 reserved bytes).
    let mut p = regs(&spr_cpu, 9);
    p[0] = 4;
    let narrow = with_subleaves(&base, &[(9, p)]);
    match Enumeration::from_cpuid(&narrow) {
        Err(e) => loud!("pkru: a 4-byte PKRU is refused by the enumeration: {e}"),
        Ok(narrow) => {
            let err = migrate(&g, &narrow, &all_perms(&narrow)).unwrap_err();
            assert_eq!(
                err,
                GuestError::SizeMismatch {
                    index: 9,
                    src: 8,
                    dst: 4
                }
            );
            assert_eq!(
                compatible(&spr, g.xcr0(), &narrow, narrow.xcr0_supported()),
                Err(err)
            );
            loud!("pkru: {err}");
        }
    }
}

/// A snapshot that forgot a register (Firecracker #5972: IA32_XSS) is refused
/// on restore; one carrying a register the guest cannot take is too.
#[test]
fn side_state_missing_or_extra_registers_are_refused() {
    let (_, e) = testkit::load("amd-zen4-ryzen-9-7950x.txt");
    let g = full_guest(&e);
    let want = g.side_regs();
    assert!(want.contains(SideReg::Xss) && want.contains(SideReg::Pl0Ssp));
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let mut fp = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
    let mut regs = SideRegs::EMPTY;
    for r in want.iter().filter(|&r| r != SideReg::Xss) {
        regs = regs.with(r);
    }
    let mut fresh = g.clone();
    assert_eq!(
        fresh.restore_side(&SideState::new(regs), &mut fp),
        Err(GuestError::MissingSideReg { reg: SideReg::Xss })
    );
    assert_eq!(fresh, g, "a refused restore changed the guest");
    let extra = SideState::new(want.with(SideReg::Xfd));
    assert_eq!(
        fresh.restore_side(&extra, &mut fp),
        Err(GuestError::UnexpectedSideReg { reg: SideReg::Xfd })
    );
    // Values the guest could not have written.
    let mut bad = g.side_state();
    bad.set(SideReg::Xss, XFeatures::PT.bits()).unwrap();
    assert!(matches!(
        fresh.restore_side(&bad, &mut fp),
        Err(GuestError::XssNotAllowed { .. })
    ));
    let mut ok = g.side_state();
    ok.set(SideReg::Xcr0, (XFeatures::LEGACY | XFeatures::AVX).bits())
        .unwrap();
    fresh.restore_side(&ok, &mut fp).unwrap();
    assert_eq!(fresh.xcr0(), XFeatures::LEGACY | XFeatures::AVX);
    assert_eq!(fresh.leaf(0).ebx, 832);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any side state round-trips through its bytes.
    #[test]
    fn side_state_bytes_round_trip(mask in 0u16..(1 << 12), seed in any::<u64>()) {
        let mut regs = SideRegs::EMPTY;
        for r in SideReg::ALL {
            if mask >> (r as u16) & 1 != 0 {
                regs = regs.with(r);
            }
        }
        let mut s = SideState::new(regs);
        let mut rng = Rng(seed | 1);
        for r in regs.iter() {
            s.set(r, rng.next()).unwrap();
        }
        let mut b = vec![0u8; s.encoded_len()];
        prop_assert_eq!(s.to_le_bytes(&mut b), Ok(8 + 16 * regs.len()));
        prop_assert_eq!(SideState::from_le_bytes(&b), Ok(s));
        prop_assert!(s.to_le_bytes(&mut b[..s.encoded_len() - 1].to_vec()).is_err());
    }

    /// Any bytes: refused with an offset inside them, or a state whose
    /// encoding is exactly those bytes (one encoding per state).
    #[test]
    fn side_state_from_any_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..220), flip in any::<u16>(), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"XSSD");
            let n = ((bytes.len() - 8) / 16) as u32;
            bytes[4..8].copy_from_slice(&n.to_le_bytes());
            bytes.truncate(8 + 16 * n as usize);
            if !bytes.is_empty() {
                let k = flip as usize % bytes.len();
                bytes[k] ^= (flip >> 8) as u8 & 1;
            }
        }
        match SideState::from_le_bytes(&bytes) {
            Ok(s) => {
                let mut out = vec![0u8; s.encoded_len()];
                s.to_le_bytes(&mut out).unwrap();
                prop_assert_eq!(out, bytes);
            }
            Err(GuestError::MalformedSideState { offset }) => prop_assert!(offset <= bytes.len().max(4)),
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}

/// APX and MPX at distinct offsets (no overlap, so the enumeration takes the
/// table): a guest may still never be shown both, as Linux never enables both.
#[test]
fn apx_and_mpx_are_never_shown_together() {
    let base = text("qemu-tcg-guest-mpx.txt");
    let cpu = RecordedCpuid::parse(&base).unwrap();
    let end = cpu.cpuid(0xd, 0).ecx;
    let mut s0 = regs(&cpu, 0);
    s0[0] |= 1 << 19;
    s0[1] = end + 128;
    s0[2] = end + 128;
    let both_cpu = with_subleaves(&base, &[(0, s0), (19, [128, end, 0, 0])]);
    let both = Enumeration::from_cpuid(&both_cpu).unwrap();
    let apx_mpx = XFeatures::APX | XFeatures::BNDREGS | XFeatures::BNDCSR;
    assert!(both.xcr0_supported().contains(apx_mpx));
    let mpx = Enumeration::from_cpuid(&cpu).unwrap();
    let want = GuestError::ApxWithMpx {
        mask: both.xcr0_supported().bits(),
    };
    assert_eq!(
        compatible(&mpx, XFeatures::LEGACY, &both, both.xcr0_supported()),
        Err(want)
    );
    // Either one alone is fine.
    for drop in [XFeatures::APX, XFeatures::BNDREGS | XFeatures::BNDCSR] {
        let allowed = both.xcr0_supported() - drop;
        assert_eq!(
            compatible(&mpx, XFeatures::LEGACY, &both, allowed),
            Ok(()),
            "{drop:?}"
        );
    }
    let g = full_guest(&mpx);
    assert_eq!(migrate(&g, &both, &all_perms(&both)).unwrap_err(), want);
}
