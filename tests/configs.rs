//! Configs, permission sets and fpstate allocation over every dump in `layouts/`.
//! Expected sizes are computed here from the SDM's compaction rule, independently
//! of the crate's `Layout`.

mod testkit;
use std::fs;
use std::path::PathBuf;
use testkit::loud;

use xstate::XFeatures;
use xstate::config::{ConfigError, Configs, Policy};
use xstate::cpuid::{CpuidResult, CpuidSource, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::error::BufferTooSmall;
use xstate::fpstate::{Fpstate, FpstateError, MXCSR_DEFAULT, Owner};
use xstate::layout::Form;
use xstate::perm::{PermError, PermKind, ProcessPerms};

fn dumps() -> Vec<(String, Enumeration)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("layouts");
    let mut v: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = fs::read_to_string(&p).unwrap();
            let e = Enumeration::from_cpuid(&RecordedCpuid::parse(&text).unwrap()).unwrap();
            (name, e)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// SDM vol. 1 13.4.3, written out again: the compacted size of `mask`.
fn sdm_compacted_size(e: &Enumeration, mask: XFeatures) -> u32 {
    let mut end = 576u32;
    for i in 2..63u32 {
        if mask.has_index(i) {
            let c = e.component(i).unwrap();
            if c.align64 {
                end = end.div_ceil(64) * 64;
            }
            end += c.size;
        }
    }
    end
}

fn dump(name: &str) -> Enumeration {
    dumps().into_iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn lesser_dynamic_cet_s_on_every_dump() {
    let (mut with_cet, mut free, mut paid) = (0, 0, 0);
    for (name, e) in dumps() {
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        assert!(
            !cfg.kernel().max_features.contains(XFeatures::CET_S),
            "{name}"
        );
        assert!(
            !cfg.kernel().default_features.contains(XFeatures::CET_S),
            "{name}"
        );
        let size = |m| match cfg.kernel().form {
            Form::Compacted => sdm_compacted_size(&e, m),
            Form::Standard => e.standard_size(m),
        };
        assert_eq!(
            cfg.kernel().default_size,
            size(cfg.kernel().default_features),
            "{name}"
        );
        assert_eq!(
            cfg.kernel().max_size,
            size(cfg.kernel().max_features),
            "{name}"
        );
        if !(e.xsaves() && e.xss_supported().contains(XFeatures::CET_S)) {
            assert_eq!(
                cfg.guest().default_features,
                cfg.kernel().default_features,
                "{name}"
            );
            continue;
        }
        with_cet += 1;
        let host = cfg.kernel().default_features;
        assert_eq!(
            cfg.guest().default_features,
            host | XFeatures::CET_S,
            "{name}"
        );
        let want = sdm_compacted_size(&e, host | XFeatures::CET_S);
        assert_eq!(cfg.guest().default_size, want, "{name}");
        assert!(
            cfg.rfbm().contains(XFeatures::CET_S),
            "{name}: restores must init CET_S"
        );
        let extra = cfg.guest().default_size - cfg.kernel().default_size;
        loud!(
            "{name}: host {} guest {} (+{extra})",
            cfg.kernel().default_size,
            cfg.guest().default_size
        );
        if extra == 0 {
            free += 1;
        } else {
            assert_eq!(extra, 24, "{name}");
            paid += 1;
        }
        // The contrast ("eat the 24 bytes"): CET_S in every fpstate, host ones too,
        // at the size the guest fpstate has under the lesser dynamic scheme.
        let every = Policy::linux_without_guest_only(&e);
        assert_eq!(every.guest_only, XFeatures::empty(), "{name}");
        assert_eq!(every.enabled, cfg.policy().enabled, "{name}");
        let eat = Configs::new(&e, &every).unwrap();
        assert_eq!(
            eat.kernel().default_features,
            host | XFeatures::CET_S,
            "{name}"
        );
        assert_eq!(eat.kernel().default_size, want, "{name}");
        assert_eq!(eat.guest().default_features, eat.kernel().default_features);
    }
    // Both kinds of CPU must be covered: CET_S in the padding before the aligned
    // AMX TILECFG (Sapphire Rapids), and CET_S as 24 extra bytes (most others).
    assert!(
        with_cet >= 5 && free >= 1 && paid >= 1,
        "cet {with_cet} free {free} paid {paid}"
    );
}

#[test]
fn user_config_is_the_standard_abi() {
    let e = dump("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    assert_eq!(cfg.user().form, Form::Standard);
    assert_eq!(cfg.user().max_features, e.xcr0_supported());
    assert_eq!(cfg.user().max_size, e.standard_max_size());
    assert_eq!(
        cfg.user().default_features,
        e.xcr0_supported() - XFeatures::XTILE_DATA
    );
    // TILEDATA is the last standard component, so the default ABI size stops at TILECFG's end.
    let cfg_end = e.component(17).unwrap().std_offset + 64;
    assert_eq!(cfg.user().default_size, cfg_end);
    assert!(cfg.kernel().max_features.contains(XFeatures::XTILE_DATA));
    assert!(
        !cfg.kernel()
            .default_features
            .contains(XFeatures::XTILE_DATA)
    );
    assert!(
        !cfg.kernel().max_features.contains(XFeatures::LBR),
        "LBR is independent"
    );
    assert!(
        cfg.xss().contains(XFeatures::LBR),
        "but IA32_XSS enables it"
    );
}

#[test]
fn policies_the_cpu_cannot_serve_are_refused() {
    let e = dump("amd-zen4-ryzen-9-7950x.txt");
    let p = Policy::linux(&e);
    let amx = Policy {
        enabled: p.enabled | XFeatures::XTILE,
        ..p
    };
    assert_eq!(
        Configs::new(&e, &amx),
        Err(ConfigError::Unsupported {
            mask: XFeatures::XTILE.bits()
        })
    );
    let no_sse = Policy {
        enabled: p.enabled - XFeatures::SSE,
        ..p
    };
    assert_eq!(Configs::new(&e, &no_sse), Err(ConfigError::LegacyDisabled));
    let avx_dyn = Policy {
        dynamic: XFeatures::AVX,
        ..p
    };
    assert_eq!(
        Configs::new(&e, &avx_dyn),
        Err(ConfigError::BadDynamic {
            mask: XFeatures::AVX.bits()
        })
    );
    let both = Policy {
        independent: XFeatures::CET_S,
        ..p
    };
    assert!(matches!(
        Configs::new(&e, &both),
        Err(ConfigError::BadSupervisorGroup { .. })
    ));
    let haswell = dump("intel-haswell-core-i7-4770.txt");
    let p = Policy::linux(&haswell);
    assert_eq!(
        Configs::new(&haswell, &p).unwrap().kernel().form,
        Form::Standard,
        "no XSAVEC: standard buffers"
    );
}

#[test]
fn permission_requests_follow_linux() {
    let e = dump("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let mut p = ProcessPerms::new(&cfg);
    assert_eq!(
        p.get(PermKind::Task).features,
        cfg.kernel().default_features
    );
    assert!(p.get(PermKind::Guest).features.contains(XFeatures::CET_S));
    // What ARCH_GET_XCOMP_PERM / _GUEST_PERM report: the user components only.
    assert_eq!(
        p.reported(PermKind::Guest),
        p.get(PermKind::Guest).features & XFeatures::USER
    );
    assert!(!p.reported(PermKind::Guest).contains(XFeatures::CET_S));
    let zen4 = dump("amd-zen4-ryzen-9-7950x.txt");
    let zcfg = Configs::new(&zen4, &Policy::linux(&zen4)).unwrap();
    let zp = ProcessPerms::new(&zcfg);
    assert!(zp.get(PermKind::Task).features.contains(XFeatures::CET_U));
    assert_eq!(zp.reported(PermKind::Task), zcfg.user().default_features);
    assert!(!zp.reported(PermKind::Task).contains(XFeatures::CET_U));
    let before = p;
    // Past the catalog (Linux: idx >= XFEATURE_MAX): EINVAL.
    // At the syscall's width: a number past 2^32 is not truncated to a
    // component (0x1_0000_0012 is not 18).
    for index in [
        20,
        62,
        63,
        64,
        u64::from(u32::MAX),
        1 << 32,
        0x1_0000_0012,
        u64::MAX,
    ] {
        let r = p.request(&cfg, PermKind::Task, index, |_| true);
        assert_eq!(r, Err(PermError::Invalid { index }));
        assert_eq!(r.unwrap_err().errno(), 22);
    }
    // Anything but TILEDATA (Linux: no xstate_prctl_req[] entry): EOPNOTSUPP, even
    // components every set holds already (x87, AVX, TILECFG) and the guest-only CET_S.
    for index in [0, 1, 2, 12, 15, 17, 19] {
        for kind in [PermKind::Task, PermKind::Guest] {
            let r = p.request(&cfg, kind, index.into(), |_| panic!("nothing to size"));
            assert_eq!(r, Err(PermError::NotDynamic { index }), "{kind:?}");
            assert_eq!(r.unwrap_err().errno(), 95);
        }
    }
    assert_eq!(p, before, "refused requests change nothing");
    // TILEDATA where the CPU has no AMX: EOPNOTSUPP.
    let zen4 = dump("amd-zen4-ryzen-9-7950x.txt");
    let zcfg = Configs::new(&zen4, &Policy::linux(&zen4)).unwrap();
    let r = ProcessPerms::new(&zcfg).request(&zcfg, PermKind::Guest, 18, |_| true);
    assert_eq!(r, Err(PermError::Unsupported { index: 18 }));
    assert_eq!(r.unwrap_err().errno(), 95);
    // The signal stack check sees the new ABI size and can refuse.
    let mut seen = 0;
    let r = p.request(&cfg, PermKind::Task, 18, |sz| {
        seen = sz;
        false
    });
    assert_eq!(
        r,
        Err(PermError::SigStackTooSmall {
            user_size: cfg.user().max_size
        })
    );
    assert_eq!(seen, cfg.user().max_size);
    assert_eq!(r.unwrap_err().errno(), 28);
    assert_eq!(p, before, "refused requests change nothing");
    let g = p.request(&cfg, PermKind::Task, 18, |_| true).unwrap();
    assert_eq!(
        (g.features, g.size, g.user_size),
        (
            cfg.kernel().max_features,
            cfg.kernel().max_size,
            cfg.user().max_size
        )
    );
    assert!(
        !p.get(PermKind::Guest)
            .features
            .contains(XFeatures::XTILE_DATA),
        "sets are separate"
    );
    assert!(!p.guest_locked(), "a new process's guest set is open");
    p.lock_guest();
    assert!(p.guest_locked());
    assert_eq!(
        p.request(&cfg, PermKind::Guest, 18, |_| true),
        Err(PermError::Locked)
    );
    assert_eq!(PermError::Locked.errno(), 16);
    let mut q = ProcessPerms::new(&cfg);
    let g = q
        .request(&cfg, PermKind::Guest, 18, |_| {
            panic!("guests have no signal stack")
        })
        .unwrap();
    assert_eq!(g.features, cfg.guest().max_features);
    assert_eq!(g.size, sdm_compacted_size(&e, cfg.guest().max_features));
}

#[repr(C, align(64))]
struct Aligned([u8; 16384]);

#[test]
fn fresh_fpstates_are_init_and_storage_is_checked() {
    let e = dump("amd-zen4-ryzen-9-7950x.txt");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let mut buf = Box::new(Aligned([0xa5; 16384]));
    let n = cfg.kernel().default_size as usize;
    let short = &mut buf.0[..n - 1];
    assert_eq!(
        Fpstate::new_in(&cfg, Owner::Host, short).unwrap_err(),
        FpstateError::BufferTooSmall(BufferTooSmall {
            needed: n,
            got: n - 1
        })
    );
    let mis = &mut buf.0[8..8 + n];
    assert_eq!(
        Fpstate::new_in(&cfg, Owner::Host, mis).unwrap_err(),
        FpstateError::Misaligned { misalignment: 8 }
    );
    assert!(
        buf.0.iter().all(|&b| b == 0xa5),
        "refused storage is not written"
    );
    let f = Fpstate::new_in(&cfg, Owner::Host, &mut buf.0[..]).unwrap();
    assert_eq!(f.info().size as usize, n);
    assert_eq!(f.xstate_bv(), XFeatures::empty());
    assert_eq!(f.xcomp_bv(), 1 << 63 | cfg.kernel().default_features.bits());
    assert_eq!(
        u32::from_le_bytes(f.area()[24..28].try_into().unwrap()),
        MXCSR_DEFAULT
    );
    assert!(f.area()[576..].iter().all(|&b| b == 0));
    let g = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
    assert_eq!(g.xcomp_bv(), 1 << 63 | cfg.guest().default_features.bits());
    assert_eq!(g.info().size, cfg.kernel().default_size + 24);
    assert_eq!(g.area().as_ptr() as usize % 64, 0);
}

#[test]
fn xfd_growth_needs_permission_and_carries_state() {
    let e = dump("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let mut perms = ProcessPerms::new(&cfg);
    let f = Fpstate::new_boxed(&cfg, Owner::Host).unwrap();
    assert_eq!(f.info().xfd, XFeatures::XTILE_DATA);
    assert_eq!(
        f.grow_boxed(&cfg, &perms, 18).unwrap_err(),
        FpstateError::NotPermitted { index: 18 }
    );
    perms.request(&cfg, PermKind::Task, 18, |_| true).unwrap();
    let g = f.grow_boxed(&cfg, &perms, 18).unwrap();
    assert_eq!(g.info().features, cfg.kernel().max_features);
    assert_eq!(g.info().xfd, XFeatures::empty());
    assert_eq!(g.info().size, cfg.kernel().max_size);
    assert_eq!(g.xcomp_bv(), 1 << 63 | cfg.kernel().max_features.bits());
    assert_eq!(
        g.grow_boxed(&cfg, &perms, 18).unwrap_err(),
        FpstateError::NothingToGrow
    );
}

/// Linux 6.18's answer to `ARCH_REQ_XCOMP_PERM` / `ARCH_REQ_XCOMP_GUEST_PERM` for a
/// fresh process whose signal stacks are large enough, written out from
/// `xstate_request_perm`: 0 or the errno.
fn linux_request_errno(user_max: XFeatures, index: u64) -> i32 {
    const XFEATURE_MAX: u64 = 20;
    const XFEATURE_XTILE_DATA: u64 = 18;
    if index >= XFEATURE_MAX {
        22 // EINVAL
    } else if index != XFEATURE_XTILE_DATA || !user_max.has_index(index as u32) {
        95 // EOPNOTSUPP
    } else {
        0
    }
}

#[test]
fn permission_errnos_are_linuxs_on_every_dump() {
    let (mut n, mut granted) = (0, 0);
    for (name, e) in dumps() {
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        for kind in [PermKind::Task, PermKind::Guest] {
            for index in (0..64).chain([1 << 32, 0x1_0000_0012, u64::MAX]) {
                let ours = match ProcessPerms::new(&cfg).request(&cfg, kind, index, |_| true) {
                    Ok(_) => 0,
                    Err(err) => err.errno(),
                };
                let want = linux_request_errno(cfg.user().max_features, index);
                assert_eq!(ours, want, "{name}: {kind:?} request for {index}");
                n += 1;
                granted += usize::from(want == 0);
            }
        }
    }
    loud!("permission errnos: {n} requests over every dump, {granted} granted, all Linux's");
    assert!(granted >= 2, "some dump has AMX: the grant path is covered");
}

// ---------------------------------------------------------------------------
// Linux's CPUID feature-flag rule (`xsave_cpuid_features[]`).
// ---------------------------------------------------------------------------

/// Each catalogued component's flag as Linux 6.18 tests it, written from the SDM
/// and `xsave_cpuid_features[]` (PKRU: PKU, from which Linux forces OSPKE):
/// (component, leaf, subleaf, register 0..=3 for EAX..EDX, bit).
const LINUX_FLAGS: [(u32, u32, u32, usize, u32); 15] = [
    (0, 1, 0, 3, 0),   // FPU
    (1, 1, 0, 3, 25),  // SSE
    (2, 1, 0, 2, 28),  // AVX
    (3, 7, 0, 1, 14),  // MPX
    (4, 7, 0, 1, 14),  // MPX
    (5, 7, 0, 1, 16),  // AVX512F
    (6, 7, 0, 1, 16),  // AVX512F
    (7, 7, 0, 1, 16),  // AVX512F
    (9, 7, 0, 2, 3),   // PKU
    (10, 7, 0, 2, 29), // ENQCMD
    (11, 7, 0, 2, 7),  // SHSTK
    (12, 7, 0, 2, 7),  // SHSTK
    (17, 7, 0, 3, 24), // AMX-TILE
    (18, 7, 0, 3, 24), // AMX-TILE
    (19, 7, 1, 3, 21), // APX_F
];

fn raw_dumps() -> Vec<(String, RecordedCpuid)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("layouts");
    let mut v: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = fs::read_to_string(&p).unwrap();
            (name, RecordedCpuid::parse(&text).unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn reg(r: CpuidResult, n: usize) -> u32 {
    [r.eax, r.ebx, r.ecx, r.edx][n]
}

/// `fpu__init_system_xstate`'s mask for a dump with feature leaves, from the raw
/// registers: leaf 0xD's components, minus those whose flag is clear, minus
/// TILEDATA without XFD, supervisor ones only with XSAVES, then Linux's known
/// sets (LBR aside: it is independent, enabled with XSAVES and ARCH_LBR).
fn linux_mask(cpu: &RecordedCpuid) -> u64 {
    let s0 = cpu.cpuid(0xd, 0);
    let s1 = cpu.cpuid(0xd, 1);
    let mut m = u64::from(s0.eax) | u64::from(s1.ecx);
    for i in 0..64 {
        let flag = LINUX_FLAGS.iter().find(|f| f.0 == i);
        let set = flag.is_some_and(|&(_, leaf, sub, r, bit)| {
            (sub == 0 || cpu.cpuid(7, 0).eax >= 1) && reg(cpu.cpuid(leaf, sub), r) & (1 << bit) != 0
        });
        if !set {
            m &= !(1 << i);
        }
    }
    if s1.eax & (1 << 4) == 0 {
        m &= !(1 << 18);
    }
    // x87..AVX-512, PKRU, TILECFG, TILEDATA, APX; PASID, CET_U, CET_S.
    let user = 0x000e_02ff;
    let sup = (1 << 10) | (1 << 11) | (1 << 12);
    m &= if s1.eax & (1 << 3) != 0 {
        user | sup
    } else {
        user
    };
    let lbr =
        s1.eax & (1 << 3) != 0 && s1.ecx & (1 << 15) != 0 && cpu.cpuid(7, 0).edx & (1 << 19) != 0;
    m | if lbr { 1 << 15 } else { 0 }
}

#[test]
fn linux_policy_follows_cpuid_feature_flags() {
    let mut changed = Vec::new();
    let mut checked = 0;
    for (name, cpu) in raw_dumps() {
        let e = Enumeration::from_cpuid(&cpu).unwrap();
        let p = Policy::linux(&e);
        assert_eq!(e.flags_known(), cpu.has_leaf(1), "{name}");
        if !e.flags_known() {
            continue;
        }
        checked += 1;
        assert_eq!(p.enabled.bits(), linux_mask(&cpu), "{name}");
        let cfg = Configs::new(&e, &p).unwrap();
        let off = e.supported() - e.usable();
        if !(off & (xstate::config::LINUX_USER | xstate::config::LINUX_SUPERVISOR)).is_empty() {
            changed.push(format!(
                "{name}: leaf 0xD {:#x}, Linux {:#x}, {} bytes",
                e.supported().bits(),
                cfg.kernel().max_features.bits(),
                cfg.kernel().max_size
            ));
        }
    }
    loud!(
        "feature flags: {checked} dumps with leaves 1 and 7 match Linux's mask; flags switch components off on:\n  {}",
        changed.join("\n  ")
    );
    assert!(checked >= 25, "{checked} dumps with feature leaves");
}

#[test]
fn pku_clear_zen2_gets_linuxs_0x7_and_832_bytes() {
    for name in ["amd-zen2-epyc-7742.txt", "amd-zen2-ryzen-5-3600x.txt"] {
        let cpu = raw_dumps().into_iter().find(|(n, _)| n == name).unwrap().1;
        // The premise, from the raw dump: leaf 0xD lists PKRU (64 bytes), PKU is clear.
        assert_eq!(cpu.cpuid(0xd, 0).eax, 0x207, "{name}");
        assert_eq!(cpu.cpuid(0xd, 9).eax, 64, "{name}");
        assert_eq!(cpu.cpuid(7, 0).ecx & (1 << 3), 0, "{name}: PKU");
        let e = Enumeration::from_cpuid(&cpu).unwrap();
        assert!(e.flags_known());
        assert_eq!(e.usable().bits(), 0x7, "{name}");
        let p = Policy::linux(&e);
        let cfg = Configs::new(&e, &p).unwrap();
        let got = (cfg.kernel().max_features.bits(), cfg.kernel().max_size);
        loud!(
            "{name}: Policy::linux {:#x} / {} bytes (leaf 0xD lists {:#x})",
            got.0,
            got.1,
            e.supported().bits()
        );
        assert_eq!(got, (0x7, 832), "{name}");
        assert_eq!(
            (cfg.user().max_features.bits(), cfg.user().max_size),
            (0x7, 832)
        );
        assert_eq!(cfg.xcr0().bits(), 0x7);
        // Enabling PKRU by hand is refused: its flag is clear and its size unchecked.
        let pkru = Policy {
            enabled: p.enabled | XFeatures::PKRU,
            ..p
        };
        let err = Configs::new(&e, &pkru).unwrap_err();
        assert_eq!(err, ConfigError::NotUsable { mask: 0x200 });
        assert!(err.to_string().contains("0x200"), "{err}");
    }
}

/// A dump's text with one register line of `leaf`/`subleaf` rewritten by `f`.
fn edit_dump(text: &str, leaf: u32, sub: u32, f: impl Fn(&mut CpuidResult)) -> String {
    let cpu = RecordedCpuid::parse(text).unwrap();
    let mut r = cpu.cpuid(leaf, sub);
    f(&mut r);
    let line = format!(
        "0x{leaf:08x} 0x{sub:02x}: eax=0x{:08x} ebx=0x{:08x} ecx=0x{:08x} edx=0x{:08x}",
        r.eax, r.ebx, r.ecx, r.edx
    );
    let prefix = format!("0x{leaf:08x} 0x{sub:02x}:");
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(&prefix) {
                found = true;
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(found, "no {prefix} line");
    out.join("\n")
}

fn layout_text(name: &str) -> String {
    fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("layouts")
            .join(name),
    )
    .unwrap()
}

#[test]
fn clearing_a_flag_in_a_dump_turns_its_component_off() {
    // Zen 3 has PKU and an 8-byte PKRU: Linux enables it; with PKU cleared, not.
    let text = layout_text("amd-zen3-epyc-7763.txt");
    let on = Enumeration::from_cpuid(&RecordedCpuid::parse(&text).unwrap()).unwrap();
    assert!(Policy::linux(&on).enabled.contains(XFeatures::PKRU));
    let off_text = edit_dump(&text, 7, 0, |r| r.ecx &= !(1 << 3));
    let off = Enumeration::from_cpuid(&RecordedCpuid::parse(&off_text).unwrap()).unwrap();
    let p = Policy::linux(&off);
    assert_eq!(p.enabled, Policy::linux(&on).enabled - XFeatures::PKRU);
    // Zen 3 puts PKRU at 0x980, past AVX-512's space: the user ABI shrinks to AVX's end.
    let raw = RecordedCpuid::parse(&text).unwrap();
    let pkru_end = raw.cpuid(0xd, 9).ebx + raw.cpuid(0xd, 9).eax;
    let on_cfg = Configs::new(&on, &Policy::linux(&on)).unwrap();
    assert_eq!(on_cfg.user().max_size, pkru_end);
    let cfg = Configs::new(&off, &p).unwrap();
    assert_eq!(cfg.user().max_size, 576 + raw.cpuid(0xd, 2).eax);

    // SHSTK clear: neither CET component (CET_S guest-only goes too).
    let no_cet = edit_dump(&text, 7, 0, |r| r.ecx &= !(1 << 7));
    let e = Enumeration::from_cpuid(&RecordedCpuid::parse(&no_cet).unwrap()).unwrap();
    let p = Policy::linux(&e);
    assert!(!p.enabled.intersects(XFeatures::CET_U | XFeatures::CET_S));
    assert!(p.guest_only.is_empty());

    // Sapphire Rapids without XFD: TILEDATA goes, TILECFG stays (Linux's order).
    let spr = layout_text("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let no_xfd = edit_dump(&spr, 0xd, 1, |r| r.eax &= !(1 << 4));
    let e = Enumeration::from_cpuid(&RecordedCpuid::parse(&no_xfd).unwrap()).unwrap();
    let p = Policy::linux(&e);
    assert!(p.enabled.contains(XFeatures::XTILE_CFG));
    assert!(!p.enabled.contains(XFeatures::XTILE_DATA));
    assert!(p.dynamic.is_empty());
    Configs::new(&e, &p).unwrap();

    // AMX-TILE clear: both AMX components; ARCH_LBR clear: LBR.
    let no_amx = edit_dump(&spr, 7, 0, |r| r.edx &= !(1 << 24 | 1 << 19));
    let e = Enumeration::from_cpuid(&RecordedCpuid::parse(&no_amx).unwrap()).unwrap();
    let p = Policy::linux(&e);
    assert!(!p.enabled.intersects(XFeatures::XTILE | XFeatures::LBR));
    assert!(p.independent.is_empty());
}

#[test]
fn dumps_without_feature_leaves_take_leaf_0xd_at_its_word() {
    let mut n = 0;
    for (name, cpu) in raw_dumps() {
        if cpu.has_leaf(1) {
            continue;
        }
        n += 1;
        let e = Enumeration::from_cpuid(&cpu).unwrap();
        assert!(!e.flags_known(), "{name}");
        let catalogued = e.supported() & XFeatures::ALL_CATALOGUED;
        assert_eq!(e.usable(), catalogued, "{name}");
        let p = Policy::linux(&e);
        let mut want = xstate::config::LINUX_USER & e.xcr0_supported();
        if !e.xfd() {
            want -= XFeatures::DYNAMIC;
        }
        if e.xsaves() {
            want |= (xstate::config::LINUX_SUPERVISOR | XFeatures::INDEPENDENT) & e.xss_supported();
        }
        assert_eq!(p.enabled, want, "{name}");
    }
    assert!(n >= 1, "layouts/ has leaf-0xD-only dumps");
}

#[test]
fn errors_say_what_was_refused() {
    let perm = [
        (
            PermError::Invalid { index: 20 },
            "20 is not a component number Linux knows (0..=19)",
        ),
        (
            PermError::Unsupported { index: 18 },
            "component 18 is not enabled",
        ),
        (
            PermError::NotDynamic { index: 17 },
            "component 17 is not dynamic: only AMX TILEDATA is requested",
        ),
        (
            PermError::Locked,
            "guest permissions are locked: a guest fpstate exists",
        ),
        (
            PermError::SigStackTooSmall { user_size: 11008 },
            "signal stack too small for a 11008-byte XSAVE area",
        ),
    ];
    for (err, text) in perm {
        assert_eq!(err.to_string(), text);
        let _: &dyn std::error::Error = &err;
    }
    let config = [
        (
            ConfigError::Unsupported { mask: 0x60000 },
            "policy enables unsupported components 0x60000",
        ),
        (
            ConfigError::NotUsable { mask: 0x200 },
            "policy enables components 0x200 whose CPUID feature flag is clear",
        ),
        (
            ConfigError::NoXsaves { mask: 0x800 },
            "supervisor components 0x800 need XSAVES, which the CPU lacks",
        ),
        (
            ConfigError::LegacyDisabled,
            "policy must enable x87 and SSE",
        ),
        (
            ConfigError::BadDynamic { mask: 0x4 },
            "dynamic components 0x4 must be enabled, XFD-capable and requestable (AMX TILEDATA)",
        ),
        (
            ConfigError::BadSupervisorGroup { mask: 0x1000 },
            "guest-only/independent components 0x1000 must be enabled supervisor components in one group only",
        ),
    ];
    for (err, text) in config {
        assert_eq!(err.to_string(), text);
        let _: &dyn std::error::Error = &err;
    }
}
