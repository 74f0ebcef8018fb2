//! Issue 21: `fleet::compat` and `fleet::Fleet` over the recorded dumps.
//!
//! - compat's verdict is `guest::migrate`'s on every ordered pair of
//!   `layouts/` dumps, for a guest built here from KVM's masks as Linux 6.18
//!   writes them, and every per-component reason is one migrate gives: with
//!   the refused components left out, the rest moves;
//! - a fleet's model, over the Intel dumps, the AMD dumps, the AVX-512 parts
//!   and all dumps, moves between every pair of its hosts both ways with every
//!   byte of a standard buffer kept, and each excluded component is held back
//!   by the host it names, which the raw dumps confirm.

#[allow(unused_macros)]
#[path = "testkit/mod.rs"]
mod testkit;

use testkit::{dumps, loud, std_buffer, std_size_raw};
use xstate::XFeatures;
use xstate::cpuid::{CpuidSource, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::fleet::{
    Fleet, GuestModel, HeldBack, Reason, all_guest_perms, compat, kvm_buffer_size,
};
use xstate::guest::{GuestXsave, XsaveFlags, compatible, migrate, translate};

/// Linux 6.18, arch/x86/kvm/x86.c: KVM_SUPPORTED_XCR0 (FP, SSE, YMM, BNDREGS,
/// BNDCSR, AVX-512's three, PKRU, XTILE's two) and KVM_SUPPORTED_XSS (CET
/// user and kernel), written here from the kernel source, not the crate.
const KVM_XCR0: u64 = 0b11 | 1 << 2 | 0b11 << 3 | 0b111 << 5 | 1 << 9 | 0b11 << 17;
const KVM_XSS: u64 = 1 << 11 | 1 << 12;

/// The largest guest KVM on `e` offers, built from the masks above: what
/// Linux keeps on, within KVM's masks, CET both or neither and only with
/// XSAVES, AVX-512 all or nothing, fully enabled.
fn kvm_guest(e: &Enumeration) -> GuestXsave {
    let flags = XsaveFlags::of(e);
    let xcr0 = e.usable().bits() & e.xcr0_supported().bits() & KVM_XCR0;
    let mut xss = e.usable().bits() & e.xss_supported().bits() & KVM_XSS;
    if xss != KVM_XSS || !flags.contains(XsaveFlags::XSAVES) {
        xss = 0;
    }
    let (xcr0, xss) = (
        XFeatures::from_bits_retain(xcr0),
        XFeatures::from_bits_retain(xss),
    );
    let mut g = GuestXsave::new(e, &all_guest_perms(e), xcr0, xss, flags)
        .unwrap_or_else(|err| panic!("guest of {xcr0:#x}/{xss:#x}: {err}"));
    g.set_xcr0(xcr0).unwrap();
    g.set_xss(xss).unwrap();
    g
}

fn enumerated() -> Vec<(&'static str, &'static RecordedCpuid, Enumeration)> {
    dumps()
        .iter()
        .filter_map(|(n, c)| Enumeration::from_cpuid(c).ok().map(|e| (n.as_str(), c, e)))
        .collect()
}

#[test]
fn compat_agrees_with_migrate_on_every_ordered_pair() {
    let all = enumerated();
    assert!(all.len() >= 30, "{} dumps enumerate", all.len());
    let (mut pairs, mut yes, mut reasons) = (0, 0, 0);
    for (na, _, a) in &all {
        let ga = kvm_guest(a);
        assert_eq!(GuestModel::offered(a).xcr0, ga.xcr0_allowed(), "{na}");
        assert_eq!(GuestModel::offered(a).xss, ga.xss_allowed(), "{na}");
        for (nb, _, b) in &all {
            let c = compat(a, b).unwrap_or_else(|err| panic!("{na} -> {nb}: {err}"));
            let want = migrate(&ga, b, &all_guest_perms(b)).map(|_| ());
            assert_eq!(c.a_to_b.verdict, want, "{na} -> {nb}");
            assert_eq!(
                c.a_to_b.buffer,
                compatible(a, ga.xcr0_allowed(), b, kvm_guest(b).xcr0_allowed()),
                "{na} -> {nb}: the buffer alone"
            );
            assert_eq!(
                c.b_to_a.verdict,
                migrate(&kvm_guest(b), a, &all_guest_perms(a)).map(|_| ()),
                "{nb} -> {na}"
            );
            pairs += 1;
            if want.is_ok() {
                yes += 1;
                assert_eq!(c.a_to_b.reasons().count(), 0, "{na} -> {nb}");
                continue;
            }
            // Every refusal is explained: by components, the extensions or
            // another reason, and the guest without the refused parts moves.
            let refused: XFeatures = c
                .a_to_b
                .reasons()
                .map(|(i, _)| XFeatures::from_index(i).unwrap())
                .fold(XFeatures::empty(), |m, x| m | x);
            assert!(
                !refused.is_empty() || c.a_to_b.flags.is_some() || c.a_to_b.other.is_some(),
                "{na} -> {nb}: refused ({:?}) without a reason",
                c.a_to_b.verdict
            );
            reasons += c.a_to_b.reasons().count();
            if c.a_to_b.other.is_none() {
                let mut flags = ga.flags();
                if c.a_to_b.flags.is_some() {
                    flags &= XsaveFlags::of(b);
                }
                let xcr0 = ga.xcr0_allowed().difference(refused);
                let xss = if flags.contains(XsaveFlags::XSAVES) {
                    ga.xss_allowed().difference(refused)
                } else {
                    XFeatures::empty()
                };
                let mut g = GuestXsave::new(a, &all_guest_perms(a), xcr0, xss, flags).unwrap();
                g.set_xcr0(xcr0).unwrap();
                g.set_xss(xss).unwrap();
                assert!(
                    migrate(&g, b, &all_guest_perms(b)).is_ok(),
                    "{na} -> {nb}: without {refused:#x} the guest still does not move: {:?}",
                    migrate(&g, b, &all_guest_perms(b))
                );
            }
            // A reason naming a component is migrate's own for it, or the
            // group rule tying it to one that is.
            for (i, r) in c.a_to_b.reasons() {
                if let Reason::Needs { with } = r {
                    assert!(
                        refused.has_index(with) || !ga.xcr0_allowed().has_index(with),
                        "{na} -> {nb}: {i} needs {with}, which moves"
                    );
                }
            }
        }
    }
    loud!(
        "compat vs migrate: {pairs} ordered pairs of {} dumps, {yes} move, {} refused, {reasons} component reasons, 0 disagree",
        all.len(),
        pairs - yes
    );
    assert_eq!(pairs, all.len() * all.len());
}

#[test]
fn compat_reports_kvm_sizes_and_the_both_ways_set() {
    let spr = testkit::load("intel-sapphire-rapids-xeon-w9-3475x.txt").1;
    let hsw = testkit::load("intel-haswell-core-i7-4770.txt").1;
    let c = compat(&spr, &hsw).unwrap();
    // AMX tile data ends at 2816 + 8192 = 11008; Haswell's AVX area at 832.
    assert_eq!((c.a_kvm_size, c.b_kvm_size), (11008, 4096));
    assert!(!c.a_to_b.ok());
    assert!(c.b_to_a.ok());
    assert!(!c.ok());
    assert_eq!(
        c.both.model().xcr0,
        XFeatures::LEGACY | XFeatures::AVX,
        "Haswell has x87, SSE and AVX"
    );
    assert_eq!(kvm_buffer_size(&hsw, hsw.xcr0_supported()), 4096);
}

/// CPUID(0xD, i) of a raw dump: (size, offset, ECX).
fn raw(cpu: &RecordedCpuid, i: u32) -> (u32, u32, u32) {
    let r = cpu.cpuid(0xd, i);
    (r.eax, r.ebx, r.ecx)
}

fn check_fleet(what: &str, hosts: &[(&str, &RecordedCpuid, Enumeration)]) -> (u64, usize) {
    let es: Vec<Enumeration> = hosts.iter().map(|(_, _, e)| e.clone()).collect();
    let f = Fleet::new(&es).unwrap_or_else(|err| panic!("{what}: {err}"));
    let m = f.model();
    let mut moves = 0;
    for (na, ca, a) in hosts {
        let ga = f
            .guest(a)
            .unwrap_or_else(|err| panic!("{what}: {na}: {err}"));
        assert_eq!(ga.xcr0(), m.xcr0);
        for (k, (nb, cb, b)) in hosts.iter().enumerate() {
            let gb = migrate(&ga, b, &all_guest_perms(b))
                .unwrap_or_else(|err| panic!("{what}: {na} -> {nb}: {err}"));
            let back = migrate(&gb, a, &all_guest_perms(a))
                .unwrap_or_else(|err| panic!("{what}: {nb} -> {na}: {err}"));
            assert_eq!(back, ga, "{what}: {na} -> {nb} -> {na}");
            assert!(
                ga.subleaves().eq(gb.subleaves()),
                "{na} / {nb}: another leaf"
            );
            // Every byte of the guest's state survives the round trip.
            let buf = std_buffer(*ca, m.xcr0.bits(), k as u64 * 7919 + 1);
            let mut there = vec![0u8; std_size_raw(*cb, m.xcr0.bits()) as usize];
            let n = translate(a, b, &buf, &mut there).unwrap();
            assert_eq!(n, there.len());
            let mut again = vec![0u8; buf.len()];
            translate(b, a, &there, &mut again).unwrap();
            assert_eq!(again, buf, "{what}: {na} -> {nb} -> {na}: bytes differ");
            moves += 2;
        }
    }
    // Each exclusion names a host whose raw leaf holds the component back.
    for (i, x) in f.exclusions() {
        let (name, cpu, e) = &hosts[x.host];
        let ok = match x.why {
            HeldBack::NotOffered => !GuestModel::offered(e).features().has_index(i),
            HeldBack::NoXsaves => cpu.cpuid(0xd, 1).eax & 1 << 3 == 0,
            HeldBack::Size { size, fleet } => raw(cpu, i).0 == size && size != fleet,
            HeldBack::Offset { offset, fleet } => raw(cpu, i).1 == offset && offset != fleet,
            HeldBack::Align { align64 } => (raw(cpu, i).2 & 2 != 0) == align64,
            HeldBack::Xfd { xfd } => (raw(cpu, i).2 & 4 != 0) == xfd,
            HeldBack::Needs { with } => f.excluded(with).is_some() || !m.features().has_index(with),
            _ => false,
        };
        assert!(
            ok,
            "{what}: component {i} held back by {name}: {} is not what its dump says",
            x.why
        );
        assert!(!m.features().has_index(i));
        loud!("  {what}: component {i} held back by {name}: {}", x.why);
    }
    loud!(
        "fleet {what}: {} hosts, model XCR0 {:#x} XSS {:#x} flags {:#x}, {} excluded, {moves} moves round-trip",
        hosts.len(),
        m.xcr0.bits(),
        m.xss.bits(),
        m.flags.bits(),
        f.exclusions().count()
    );
    (m.xcr0.bits(), moves)
}

#[test]
fn fleets_move_losslessly_between_every_pair() {
    let all = enumerated();
    let by = |p: &str| -> Vec<_> {
        all.iter()
            .filter(|(n, _, _)| n.starts_with(p))
            .cloned()
            .collect()
    };
    let intel = by("intel-");
    let amd = by("amd-");
    let avx512: Vec<_> = all
        .iter()
        .filter(|(_, _, e)| GuestModel::offered(e).xcr0.contains(XFeatures::AVX512))
        .cloned()
        .collect();
    assert!(intel.len() >= 10 && amd.len() >= 8 && avx512.len() >= 8);
    let (x_intel, _) = check_fleet("all Intel", &intel);
    let (x_amd, _) = check_fleet("all AMD", &amd);
    let (x_avx512, _) = check_fleet("all AVX-512", &avx512);
    let (x_all, _) = check_fleet("all", &all);
    // Haswell and Zen 1 have no AVX-512: neither vendor's fleet keeps it.
    assert_eq!(x_intel & 0xe0, 0);
    assert_eq!(x_amd & 0xe0, 0);
    // Zen 4 and 5 put AVX-512 at 832 (no MPX hole), Intel at 1088: the
    // AVX-512 parts of both vendors cannot share it, those of one vendor can.
    assert_eq!(x_avx512 & 0xe0, 0);
    let es: Vec<Enumeration> = avx512.iter().map(|(_, _, e)| e.clone()).collect();
    let x = Fleet::new(&es).unwrap().excluded(5).unwrap();
    assert!(
        matches!(
            x.why,
            HeldBack::Offset {
                offset: 832,
                fleet: 1088
            }
        ),
        "{x:?}"
    );
    assert!(avx512[x.host].0.starts_with("amd-"), "{}", avx512[x.host].0);
    for vendor in ["intel-", "amd-"] {
        let part: Vec<_> = avx512
            .iter()
            .filter(|(n, _, _)| n.starts_with(vendor))
            .cloned()
            .collect();
        assert!(part.len() >= 3, "{vendor}: {}", part.len());
        let (x, _) = check_fleet(&format!("{vendor}* AVX-512"), &part);
        assert_eq!(x & 0xe7, 0xe7, "{vendor}");
    }
    assert_eq!(x_all & 0b11, 0b11);
}

#[test]
fn an_empty_fleet_is_refused() {
    assert_eq!(Fleet::new(&[]), Err(xstate::fleet::FleetError::NoHosts));
}

/// `name`'s dump with the line of leaf 0xD `subleaf` replaced by `line`'s
/// registers.
fn edited(name: &str, subleaf: u32, regs: [u32; 4]) -> Enumeration {
    let text = std::fs::read_to_string(testkit::layouts_dir().join(name)).unwrap();
    let tag = format!("0x0000000d 0x{subleaf:02x}:");
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&tag) {
                format!(
                    "{tag} eax=0x{:08x} ebx=0x{:08x} ecx=0x{:08x} edx=0x{:08x}",
                    regs[0], regs[1], regs[2], regs[3]
                )
            } else {
                l.to_owned()
            }
        })
        .collect();
    Enumeration::from_cpuid(&RecordedCpuid::parse(&out.join("\n")).unwrap()).unwrap()
}

/// The groups go whole: a host whose AMX tile data cannot be armed by XFD
/// holds back tile data, and with it the tile configuration; one whose
/// HI16_ZMM is 64-byte aligned in the compacted form holds back all of
/// AVX-512.
#[test]
fn groups_are_kept_whole() {
    let spr = "intel-sapphire-rapids-xeon-w9-3475x.txt";
    let (_, a) = testkit::load(spr);
    // Subleaf 18: 8192 bytes at 0xb00, ECX 6 (aligned, XFD); without XFD.
    let b = edited(spr, 18, [0x2000, 0xb00, 0x2, 0]);
    let f = Fleet::new(&[a.clone(), b]).unwrap();
    assert_eq!(
        f.excluded(18).map(|x| (x.host, x.why)),
        Some((1, HeldBack::Xfd { xfd: false }))
    );
    assert_eq!(
        f.excluded(17).map(|x| (x.host, x.why)),
        Some((1, HeldBack::Needs { with: 18 }))
    );
    assert!(!f.model().xcr0.intersects(XFeatures::XTILE));
    assert!(f.model().xcr0.contains(XFeatures::AVX512));
    // Subleaf 7: 1024 bytes at 0x680, now aligned in the compacted form.
    let c = edited(spr, 7, [0x400, 0x680, 0x2, 0]);
    let f = Fleet::new(&[a.clone(), c]).unwrap();
    assert_eq!(
        f.excluded(7).map(|x| x.why),
        Some(HeldBack::Align { align64: true })
    );
    for i in [5, 6] {
        assert_eq!(
            f.excluded(i).map(|x| x.why),
            Some(HeldBack::Needs { with: 7 }),
            "{i}"
        );
    }
    assert_eq!(f.model().xcr0 & XFeatures::AVX512, XFeatures::empty());
    assert!(f.model().xcr0.contains(XFeatures::XTILE));
    // compat says the same per component, with migrate's words.
    let c2 = compat(&a, &edited(spr, 7, [0x400, 0x680, 0x2, 0])).unwrap();
    assert!(matches!(
        c2.a_to_b.reason(7),
        Some(Reason::Refused(
            xstate::guest::GuestError::SubleafMismatch { subleaf: 7 }
        ))
    ));
    assert!(matches!(
        c2.a_to_b.reason(5),
        Some(Reason::Needs { with: 7 })
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Hostile dumps: two dumps with random register bits flipped in leaf
    /// 0xD; whatever enumerates goes through compat and Fleet without a
    /// panic, and compat's verdict is still migrate's.
    #[test]
    fn hostile_dumps_never_panic(
        picks in proptest::collection::vec((0usize..64, 0u32..24, 0usize..4, 0u32..32), 1..6),
        which in (0usize..64, 0usize..64),
    ) {
        let all = dumps();
        let mutate = |k: usize, salt: usize| -> Option<Enumeration> {
            let (_, cpu) = &all[k % all.len()];
            let mut regs: Vec<(u32, [u32; 4])> = (0..24)
                .map(|s| { let r = cpu.cpuid(0xd, s); (s, [r.eax, r.ebx, r.ecx, r.edx]) })
                .collect();
            for &(n, sub, reg, bit) in &picks {
                if n % 2 == salt {
                    regs[sub as usize].1[reg] ^= 1 << bit;
                }
            }
            let text: String = [0u32, 1, 7]
                .iter()
                .map(|&leaf| { let r = cpu.cpuid(leaf, 0); format!("0x{leaf:08x} 0x00: eax=0x{:08x} ebx=0x{:08x} ecx=0x{:08x} edx=0x{:08x}\n", r.eax, r.ebx, r.ecx, r.edx) })
                .chain(regs.iter().filter(|(_, r)| r.iter().any(|&v| v != 0)).map(|(s, r)| format!("0x0000000d 0x{s:02x}: eax=0x{:08x} ebx=0x{:08x} ecx=0x{:08x} edx=0x{:08x}\n", r[0], r[1], r[2], r[3])))
                .collect();
            Enumeration::from_cpuid(&RecordedCpuid::parse(&text).ok()?).ok()
        };
        if let (Some(a), Some(b)) = (mutate(which.0, 0), mutate(which.1, 1)) {
            if let Ok(c) = compat(&a, &b) {
                if let Ok(ga) = GuestModel::offered(&a).guest(&a) {
                    proptest::prop_assert_eq!(c.a_to_b.verdict, migrate(&ga, &b, &all_guest_perms(&b)).map(|_| ()));
                }
            }
            let _ = Fleet::new(&[a, b]);
        }
    }
}
