//! Issue 12, item 5: CPUID tables a guest accepts. For every dump in
//! `layouts/`, the leaf 0xD table a VMM installs for a guest shown everything
//! the host offers guests (every user component, CET_U/CET_S in IA32_XSS where
//! the host has them and XSAVES) is complete (subleaves 0, 1 and one per
//! component the guest may enable, CET's 11 and 12 included), passes the
//! crate's hostile-CPUID checks with size reports exact for the XCR0|XSS Linux
//! sets, and Linux in the guest keeps XSAVE with the features and context size
//! computed here from the raw dump. Taking subleaf 12 (or 11) out of the table
//! (a CPUID page missing CET's subleaves, igvm-tooling #60) is refused by the
//! crate's checks and, in Linux's words, by Linux's size check.

#[allow(unused_macros)]
#[path = "testkit/mod.rs"]
mod testkit;

use std::collections::BTreeSet;

use proptest::prelude::*;
use testkit::{bits, cmp_size_raw, dumps, loud, std_size_raw};
use xstate::XFeatures;
use xstate::cpuid::{CpuidResult, CpuidSource};
use xstate::enumerate::Enumeration;
use xstate::feature::CATALOG;
use xstate::guest::{GuestXsave, LeafTable, LinuxRefusal, XsaveFlags, linux_xsave};
use xstate::perm::PermSet;

fn all_perms(e: &Enumeration) -> PermSet {
    PermSet {
        features: e.supported(),
        size: e.compacted_max_size(),
        user_size: e.standard_max_size(),
    }
}

/// The guest a VMM builds from what its host offers guests: the components the
/// host could enable, i.e. with their CPUID flags set (`usable`), as KVM's
/// supported XCR0 comes from the XCR0 Linux set. A flag-clear component (Zen
/// 2's 64-byte PKRU) is never offered: listed in a leaf 0xD without leaf 7,
/// the crate's fail-closed size check would refuse the table.
fn guest(e: &Enumeration) -> GuestXsave {
    let flags = XsaveFlags::of(e);
    let xss = if flags.contains(XsaveFlags::XSAVES) {
        e.xss_supported() & e.usable() & (XFeatures::CET_U | XFeatures::CET_S)
    } else {
        XFeatures::empty()
    };
    let xcr0 = e.xcr0_supported() & e.usable();
    GuestXsave::new(e, &all_perms(e), xcr0, xss, flags).unwrap()
}

/// What Linux 6.18 enables, written here from its feature lists (not the
/// crate's): x87, SSE, AVX, MPX, AVX-512, PKRU, AMX (TILEDATA only with XFD),
/// APX; PASID and CET with XSAVES.
fn linux_features(cpu: &impl CpuidSource) -> u64 {
    let s0 = cpu.cpuid(0xd, 0);
    let s1 = cpu.cpuid(0xd, 1);
    let mut all =
        u64::from(s0.eax) | u64::from(s0.edx) << 32 | u64::from(s1.ecx) | u64::from(s1.edx) << 32;
    if s1.eax & 16 == 0 {
        all &= !(1 << 18);
    }
    let user = 0b1111_1111 | 1 << 9 | 1 << 17 | 1 << 18 | 1 << 19;
    let sup = 1 << 10 | 1 << 11 | 1 << 12;
    all & if s1.eax & 8 != 0 { user | sup } else { user }
}

#[test]
fn every_dump_gives_a_guest_table_the_crate_and_linux_accept() {
    let (mut tables, mut linux_ok) = (0, 0);
    let mut cut_stats: std::collections::BTreeMap<u32, [u32; 3]> = Default::default();
    let mut lines = BTreeSet::new();
    let mut struct_warnings = Vec::new();
    let mut warned_only = Vec::new();
    for (name, cpu) in dumps() {
        let Ok(e) = Enumeration::from_cpuid(cpu) else {
            loud!("SKIP guest_cpuid {name}: the host dump itself is refused");
            continue;
        };
        let g = guest(&e);
        let booted = g.at_linux_boot().unwrap_or_else(|r| panic!("{name}: {r}"));
        let table = booted.leaf_table();
        // Complete: 0, 1 and every component the guest may enable.
        let allowed = (g.xcr0_allowed() | g.xss_allowed()).bits();
        let want: BTreeSet<u32> = [0, 1]
            .into_iter()
            .chain(bits(allowed).filter(|&i| i >= 2))
            .collect();
        let have: BTreeSet<u32> = table.iter().map(|(i, _)| i).collect();
        assert_eq!(have, want, "{name}");
        for i in bits(allowed).filter(|&i| i >= 2) {
            let (t, h) = (table.get(i).unwrap(), cpu.cpuid(0xd, i));
            assert_eq!((t.eax, t.ecx & 7), (h.eax, h.ecx & 7), "{name} subleaf {i}");
            if h.ecx & 1 == 0 {
                assert_eq!(t.ebx, h.ebx, "{name} subleaf {i}");
            }
        }
        // The crate's hostile checks, with size reports exact for XCR0|XSS.
        let te = Enumeration::from_cpuid(&table).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(te.xcr0_supported(), g.xcr0_allowed(), "{name}");
        assert_eq!(te.xss_supported(), g.xss_allowed(), "{name}");
        let check = te
            .check_live_sizes(&table, booted.xcr0(), booted.xss())
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(
            (check.standard_excess, check.compacted_excess),
            (0, 0),
            "{name}"
        );
        tables += 1;
        // Linux keeps XSAVE, with the features and sizes the raw dump gives.
        let features = linux_features(&table);
        assert_eq!(
            booted.xcr0().bits() | booted.xss().bits(),
            features,
            "{name}"
        );
        let compacted = g
            .flags()
            .intersects(XsaveFlags::XSAVEC | XsaveFlags::XSAVES);
        let size = if compacted {
            cmp_size_raw(cpu, features)
        } else {
            std_size_raw(cpu, features)
        };
        let linux = linux_xsave(&table).unwrap_or_else(|r| panic!("{name}: {r}"));
        assert_eq!(linux, g.linux_boot().unwrap(), "{name}");
        assert_eq!(
            (linux.features.bits(), linux.context_size, linux.compacted),
            (features, size, compacted),
            "{name}"
        );
        // Linux's structure sizes (its XCHECK_SZ list), written here.
        const STRUCTS: [(u32, u32); 12] = [
            (2, 256),
            (3, 64),
            (4, 64),
            (5, 64),
            (6, 512),
            (7, 1024),
            (9, 8),
            (10, 8),
            (11, 16),
            (12, 24),
            (17, 64),
            (19, 128),
        ];
        let warned: u64 = STRUCTS
            .iter()
            .filter(|&&(i, sz)| features >> i & 1 != 0 && cpu.cpuid(0xd, i).eax != sz)
            .map(|&(i, _)| 1u64 << i)
            .sum();
        assert_eq!(linux.struct_mismatch.bits(), warned, "{name}");
        if warned != 0 {
            struct_warnings.push(format!("{name} {warned:#x}"));
        }
        linux_ok += 1;
        // A table without CET's subleaves: refused by both.
        for sub in [12u32, 11] {
            let count = cut_stats.entry(sub).or_insert([0u32; 3]);
            if !g.xss_allowed().has_index(sub) {
                continue;
            }
            let mut cut = table;
            let gone = cut.remove(sub).unwrap();
            count[0] += 1;
            assert!(
                Enumeration::from_cpuid(&cut).is_err(),
                "{name}: subleaf {sub} removed yet enumerated"
            );
            let kernel_size = table.get(1).unwrap().ebx;
            // Linux's sum without the component, from the raw dump: the
            // compacted walk with its size taken as 0 and its alignment flag gone.
            let mut end = 576u32;
            for i in bits(features).filter(|&i| i >= 2) {
                let r = cut.cpuid(0xd, i);
                if r.ecx & 2 != 0 {
                    end = end.next_multiple_of(64);
                }
                end += r.eax;
            }
            assert_eq!(
                end,
                kernel_size - if end == kernel_size { 0 } else { gone.eax },
                "{name}"
            );
            match linux_xsave(&cut) {
                Err(err) => {
                    assert_ne!(end, kernel_size, "{name}");
                    assert_eq!(
                        err,
                        LinuxRefusal::SizeMismatch {
                            size: end,
                            kernel_size
                        },
                        "{name} without subleaf {sub}"
                    );
                    lines.insert(format!("without subleaf {sub}: {err}"));
                    count[1] += 1;
                }
                Ok(kept) => {
                    // The next component's alignment hid the missing bytes:
                    // Linux only warns.
                    assert_eq!(end, kernel_size, "{name}");
                    let w: Vec<_> = kept.struct_warnings(&cut).collect();
                    assert!(
                        w.iter().any(|w| w.index == sub && w.cpu_size == 0),
                        "{name}"
                    );
                    // Linux's words (`check_xstate_against_struct`'s warning).
                    for w in &w {
                        let want = format!(
                            "[{}]: struct is {} bytes, cpu state {} bytes",
                            CATALOG[w.index as usize].linux_desc, w.linux_size, w.cpu_size
                        );
                        assert_eq!(w.to_string(), want, "{name}");
                    }
                    lines.insert(format!(
                        "without subleaf {sub}, Linux keeps XSAVE after: {}",
                        w[0]
                    ));
                    warned_only.push(format!("{name} (subleaf {sub})"));
                    count[2] += 1;
                }
            }
        }
    }
    let [s12, s11] = [12, 11].map(|k| cut_stats.get(&k).copied().unwrap_or_default());
    assert!(tables >= 30 && s12[0] > 0 && s11[0] > 0);
    assert!(
        s12[1] > 0,
        "no table without subleaf 12 is refused by Linux"
    );
    loud!(
        "guest cpuid: {tables} guest tables complete and passing Enumeration::from_cpuid with exact size reports; Linux keeps XSAVE on {linux_ok}; subleaf 12 removed from {}: the crate refuses {}, Linux disables XSAVE on {} (size check) and only warns on {}; subleaf 11 removed from {}: the crate refuses {}, Linux disables XSAVE on {}, warns on {}",
        s12[0],
        s12[0],
        s12[1],
        s12[2],
        s11[0],
        s11[0],
        s11[1],
        s11[2]
    );
    loud!("  Linux warns of a structure size (and keeps XSAVE) on: {struct_warnings:?}");
    loud!(
        "  a missing CET subleaf that Linux only warns about (the next component's alignment hides it; the crate refuses the table): {warned_only:?}"
    );
    for l in &lines {
        loud!("  e.g. {l}");
    }
}

/// Tables Linux refuses for other reasons, each in its words.
#[test]
fn linux_refusals_in_linux_words() {
    let (_, e) = testkit::load("intel-tiger-lake-core-i7-1165g7.txt");
    let g = guest(&e).at_linux_boot().unwrap();
    let table = g.leaf_table();
    // No SSE in the XCR0 mask.
    let mut t = table;
    let mut s0 = t.get(0).unwrap();
    s0.eax &= !2;
    t.insert(0, s0);
    let err = linux_xsave(&t).unwrap_err();
    assert_eq!(
        err,
        LinuxRefusal::FpSseMissing {
            features: u64::from(s0.eax) | u64::from(t.get(1).unwrap().ecx)
        }
    );
    assert!(
        err.to_string()
            .starts_with("x86/fpu: FP/SSE not present amongst the CPU's xstate features: 0x")
    );
    // A size report off by 64 bytes.
    let mut t = table;
    let mut s1 = t.get(1).unwrap();
    s1.ebx += 64;
    t.insert(1, s1);
    assert_eq!(
        linux_xsave(&t),
        Err(LinuxRefusal::SizeMismatch {
            size: s1.ebx - 64,
            kernel_size: s1.ebx
        })
    );
    // A user component marked supervisor without XSAVES.
    let mut t = table;
    let mut s1 = t.get(1).unwrap();
    s1.eax &= !0b1010; // no XSAVES, no XSAVEC: the standard format
    s1.ecx = 0;
    t.insert(1, s1);
    let mut avx = t.get(2).unwrap();
    avx.ecx |= 1;
    t.insert(2, avx);
    assert_eq!(
        linux_xsave(&t),
        Err(LinuxRefusal::SupervisorWithoutXsaves { index: 2 })
    );
    // The same table, AVX fixed: Linux keeps XSAVE in the standard format.
    avx.ecx &= !1;
    t.insert(2, avx);
    let ok = linux_xsave(&t).unwrap();
    assert!(!ok.compacted);
    assert_eq!(ok.context_size, t.get(0).unwrap().ebx);
    assert_eq!(
        ok.to_string(),
        format!(
            "x86/fpu: Enabled xstate features {:#x}, context size is {} bytes, using 'standard' format.",
            ok.features.bits(),
            ok.context_size
        )
    );
}

/// Hostile tables: never a panic, and an accepted one is self-consistent.
fn any_table() -> impl Strategy<Value = LeafTable> {
    proptest::collection::vec((0u32..24, any::<[u32; 4]>(), any::<bool>()), 0..24).prop_map(|v| {
        let mut t = LeafTable::default();
        for (sub, r, small) in v {
            let r = if small {
                [r[0] & 0xfffff, r[1] & 0x3fff, r[2] & 7, r[3] & 1]
            } else {
                r
            };
            t.insert(
                sub,
                CpuidResult {
                    eax: r[0],
                    ebx: r[1],
                    ecx: r[2],
                    edx: r[3],
                },
            );
        }
        t
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn linux_xsave_never_panics(t in any_table()) {
        if let Ok(l) = linux_xsave(&t) {
            prop_assert!(l.features.contains(XFeatures::LEGACY));
            let s1 = t.get(1).unwrap_or_default();
            let s0 = t.get(0).unwrap_or_default();
            prop_assert_eq!(l.context_size, if l.compacted { s1.ebx } else { s0.ebx });
        }
    }
}
