//! One handle per fpstate: [`Configs`] carries the enumeration it was derived
//! from, an fpstate remembers the configs it was made under, and every
//! operation refuses an fpstate from other configs with a typed error before it
//! reads or writes a byte. The MXCSR mask comes through the enumeration.

mod testkit;

use std::error::Error;

use testkit::{Rng, dumps, load};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidResult, CpuidSource, NoVendor, RecordedCpuid};
use xstate::enumerate::{EnumError, Enumeration, MXCSR_MASK_MIN, MxcsrMaskSource};
use xstate::error::ForeignFpstate;
use xstate::fpstate::{BoxedArea, Fpstate, FpstateError, Mode, Owner, swap};
use xstate::model::{Quirks, XsaveMachine};
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi::{self, UabiError, UserAbi};

fn linux(e: &Enumeration) -> Configs {
    Configs::new(e, &Policy::linux(e)).unwrap()
}

#[test]
fn configs_carry_their_enumeration() {
    for (name, cpu) in dumps() {
        let e = Enumeration::from_cpuid(cpu).unwrap();
        let cfg = linux(&e);
        assert_eq!(cfg.enumeration(), &e, "{name}");
        assert_eq!(cfg.mxcsr_mask(), e.mxcsr_mask(), "{name}");
        assert_eq!(cfg.has_xsaveopt(), e.xsaveopt(), "{name}");
    }
}

/// Two configs whose fpstates differ: another CPU, or the same CPU under
/// another policy, or the same CPU with another MXCSR mask.
fn foreign_pairs() -> Vec<(&'static str, Configs, Configs)> {
    let (_, spr) = load("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let (_, zen4) = load("amd-zen4-ryzen-9-7950x.txt");
    let spr_no_dyn = Configs::new(
        &spr,
        &Policy {
            dynamic: XFeatures::empty(),
            ..Policy::linux(&spr)
        },
    )
    .unwrap();
    let zen4_other_mask = linux(&zen4.clone().with_mxcsr_mask(0x2_ffff).unwrap());
    vec![
        (
            "another handle, derived the same way",
            linux(&spr),
            linux(&spr),
        ),
        ("another CPU", linux(&spr), linux(&zen4)),
        ("another policy", linux(&spr), spr_no_dyn),
        ("another MXCSR mask", linux(&zen4), zen4_other_mask),
    ]
}

#[test]
fn an_fpstate_from_other_configs_is_refused_everywhere() {
    let mut refused = 0;
    for (why, a, b) in foreign_pairs() {
        // Equal configs are still two handles: only a handle's clones share it.
        assert_eq!(a == b, why.starts_with("another handle"), "{why}");
        for owner in [Owner::Host, Owner::Guest] {
            let mut fp = Fpstate::new_boxed(&a, owner).unwrap();
            let before = fp.area().to_vec();
            assert_eq!(fp.check_configs(&a), Ok(()), "{why}");
            assert_eq!(fp.check_configs(&a.clone()), Ok(()), "{why}: a clone");
            assert_eq!(fp.check_configs(&b), Err(ForeignFpstate), "{why}");

            // The instruction layer: the model stands in for the CPU and
            // would execute anything it is handed. Without a vendor the quirks
            // are not guessed: the test names them.
            assert_eq!(Quirks::for_cpu(&NoCpuid), Err(NoVendor));
            let mut m = XsaveMachine::new(b.enumeration(), Quirks::INTEL);
            let mode = Mode::User;
            let foreign = Err(FpstateError::Foreign(ForeignFpstate));
            assert_eq!(fp.save(&mut m, &b, mode), foreign, "{why}: save");
            assert_eq!(fp.restore(&mut m, &b, mode), foreign, "{why}: restore");
            let other = Fpstate::new_boxed(&a, owner).unwrap();
            assert_eq!(
                swap(&mut m, &b, mode, &mut fp, &other),
                foreign,
                "{why}: swap"
            );

            let mut perms = ProcessPerms::new(&b);
            let _ = perms.request(&b, PermKind::Task, 18, |_| true);
            let _ = perms.request(&b, PermKind::Guest, 18, |_| true);
            assert_eq!(
                fp.grow_boxed(&b, &perms, 18).err(),
                Some(FpstateError::Foreign(ForeignFpstate)),
                "{why}: grow"
            );

            let ufor = Some(UabiError::Foreign(ForeignFpstate));
            let mut out = vec![0u8; 1 << 16];
            let all = XFeatures::all();
            assert_eq!(
                uabi::export(&b, &fp, all, &mut out).err(),
                ufor,
                "{why}: export"
            );
            assert_eq!(
                uabi::export_sigframe(&b, &fp, all, &mut out).err(),
                ufor,
                "{why}: sigframe"
            );
            // A buffer the right configs take, so only the handle is wrong.
            let n = uabi::export(&a, &fp, all, &mut out).unwrap();
            let buf = out[..n].to_vec();
            assert!(
                uabi::import(&a, &mut fp, &buf).is_ok(),
                "{why}: own configs"
            );
            assert_eq!(uabi::import(&b, &mut fp, &buf).err(), ufor, "{why}: import");
            assert_eq!(
                uabi::import_abi(&b, &mut fp, &buf, UserAbi::Ptrace).err(),
                ufor,
                "{why}: import_abi"
            );
            assert_eq!(
                uabi::import_guest(&b, &mut fp, &buf, UserAbi::Ptrace, XFeatures::empty()).err(),
                ufor,
                "{why}: import_guest"
            );
            assert_eq!(
                uabi::import_sigframe(&b, &mut fp, &buf).err(),
                ufor,
                "{why}: import_sigframe"
            );
            assert_eq!(
                fp.area(),
                &before[..],
                "{why}: a refused call wrote the fpstate"
            );
            refused += 1;
        }
    }
    println!("foreign fpstates: {refused} refused by every operation, 0 bytes written");
    assert_eq!(refused, 8);
}

#[test]
fn foreign_errors_name_their_cause() {
    let f = FpstateError::Foreign(ForeignFpstate);
    let u = UabiError::Foreign(ForeignFpstate);
    for (text, src) in [(f.to_string(), f.source()), (u.to_string(), u.source())] {
        assert!(text.contains("other configs"), "{text}");
        assert_eq!(
            src.map(ToString::to_string),
            Some(ForeignFpstate.to_string())
        );
    }
    assert_eq!(u.errno(), 22);
}

/// Answers no CPUID leaf at all (the model's quirks need a vendor; this one has none).
struct NoCpuid;
impl CpuidSource for NoCpuid {
    fn cpuid(&self, _: u32, _: u32) -> CpuidResult {
        CpuidResult::default()
    }
}

/// `text` with a leaf 0 naming `vendor` (12 bytes) put in front.
fn with_vendor(text: &str, vendor: &[u8; 12]) -> RecordedCpuid {
    let w = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
    let leaf0 = format!(
        "0x00000000 0x00: eax=0x0000000d ebx={:#010x} ecx={:#010x} edx={:#010x}\n",
        w(0),
        w(8),
        w(4)
    );
    RecordedCpuid::parse(&(leaf0 + text)).unwrap()
}

#[test]
fn mxcsr_mask_comes_from_the_source_the_vendor_or_the_baseline() {
    let mut seen = [0usize; 3];
    for (name, cpu) in dumps() {
        let e = Enumeration::from_cpuid(cpu).unwrap();
        let src = match (cpu.mxcsr_mask(), &cpu.cpuid(0, 0).ebx.to_le_bytes()) {
            (Some(m), _) => (m, MxcsrMaskSource::Measured),
            (None, b"Auth" | b"Hygo") => (0x2_ffff, MxcsrMaskSource::Vendor),
            (None, [0, 0, 0, 0]) => (0xffff, MxcsrMaskSource::Baseline),
            (None, _) => (0xffff, MxcsrMaskSource::Vendor),
        };
        assert_eq!((e.mxcsr_mask(), e.mxcsr_source()), src, "{name}");
        seen[usize::from(src.1 != MxcsrMaskSource::Baseline)] += 1;
        let set = e.clone().with_mxcsr_mask(0xffbf).unwrap();
        assert_eq!(
            (set.mxcsr_mask(), set.mxcsr_source()),
            (0xffbf, MxcsrMaskSource::Measured)
        );
        assert_ne!(set, e, "{name}: the mask is one of the facts");
        assert_ne!(linux(&set), linux(&e), "{name}");
    }
    // The vendor rule, on dumps given a leaf 0.
    let zen4 =
        std::fs::read_to_string(testkit::layouts_dir().join("amd-zen4-ryzen-9-7950x.txt")).unwrap();
    for (vendor, mask) in [
        (b"AuthenticAMD", 0x2_ffff),
        (b"HygonGenuine", 0x2_ffff),
        (b"GenuineIntel", 0xffff),
        (b"CentaurHauls", 0xffff),
    ] {
        let e = Enumeration::from_cpuid(&with_vendor(&zen4, vendor)).unwrap();
        assert_eq!(
            (e.mxcsr_mask(), e.mxcsr_source()),
            (mask, MxcsrMaskSource::Vendor),
            "{}",
            String::from_utf8_lossy(vendor)
        );
        seen[2] += 1;
    }
    println!(
        "MXCSR_MASK: {} dumps name a vendor or record the mask, {} take the baseline 0xffff, {} synthesized vendors",
        seen[1], seen[0], seen[2]
    );
    assert!(seen[0] > 0 && seen[1] > 0);
}

/// A recording with a measured MXCSR mask.
struct Measured(RecordedCpuid, u32);
impl CpuidSource for Measured {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        self.0.cpuid(leaf, subleaf)
    }
    fn mxcsr_mask(&self) -> Option<u32> {
        Some(self.1)
    }
}

#[test]
fn a_mask_without_the_architectural_bits_is_refused() {
    let (cpu, e) = load("amd-zen4-ryzen-9-7950x.txt");
    let mut rng = Rng(0x3c5c_0a11);
    let mut cases = 0;
    for _ in 0..2000 {
        let mask = rng.next() as u32;
        let ok = mask & MXCSR_MASK_MIN == MXCSR_MASK_MIN;
        let from_src = Enumeration::from_cpuid(&Measured(cpu.clone(), mask));
        let given = e.clone().with_mxcsr_mask(mask);
        if ok {
            assert_eq!(from_src.as_ref().map(Enumeration::mxcsr_mask), Ok(mask));
            assert_eq!(from_src.unwrap().mxcsr_source(), MxcsrMaskSource::Measured);
            assert_eq!(given.map(|g| g.mxcsr_mask()), Ok(mask));
        } else {
            assert_eq!(from_src, Err(EnumError::BadMxcsrMask { mask }), "{mask:#x}");
            assert_eq!(given, Err(EnumError::BadMxcsrMask { mask }), "{mask:#x}");
        }
        cases += 1;
    }
    // Each architectural bit alone.
    for b in 0..32 {
        let mask = MXCSR_MASK_MIN & !(1 << b);
        if mask != MXCSR_MASK_MIN {
            assert!(e.clone().with_mxcsr_mask(mask).is_err(), "bit {b}");
        }
    }
    let t = EnumError::BadMxcsrMask { mask: 0x7f }.to_string();
    assert!(t.contains("0x7f") && t.contains("0xffbf"), "{t}");
    assert!(cases > 0);
}

#[test]
fn import_checks_mxcsr_against_the_enumerations_mask() {
    // MXCSR bit 17 (AMD's misaligned-SSE mode) is valid where the mask has it.
    let zen4 =
        std::fs::read_to_string(testkit::layouts_dir().join("amd-zen4-ryzen-9-7950x.txt")).unwrap();
    let amd = Enumeration::from_cpuid(&with_vendor(&zen4, b"AuthenticAMD")).unwrap();
    let (_, spr) = load("intel-sapphire-rapids-xeon-w9-3475x.txt");
    // The recorded build hosts, by their `# mxcsr_mask` lines (Zen 4: 0x2ffff,
    // the Intel Xeon: 0xffff), as the kernels there wrote in ptrace exports.
    let (_, zen4_vm) = load("amd-zen4-epyc-kvm-guest-this-build-host.txt");
    let (_, xeon_vm) = load("intel-xeon-amx-kvm-guest-this-build-host.txt");
    for (e, accepted) in [(amd, true), (spr, false), (zen4_vm, true), (xeon_vm, false)] {
        let cfg = linux(&e);
        let mut fp = Fpstate::<BoxedArea>::new_boxed(&cfg, Owner::Host).unwrap();
        let mut buf = vec![0u8; cfg.user().max_size as usize];
        uabi::export(&cfg, &fp, XFeatures::all(), &mut buf).unwrap();
        let exported = u32::from_le_bytes(buf[28..32].try_into().unwrap());
        assert_eq!(exported, if accepted { 0x2_ffff } else { 0xffff });
        buf[24..28].copy_from_slice(&(0x1f80u32 | 1 << 17).to_le_bytes());
        buf[512] = 0b10; // SSE live
        let r = uabi::import(&cfg, &mut fp, &buf);
        assert_eq!(r.is_ok(), accepted, "{r:?}");
        if !accepted {
            assert_eq!(
                r,
                Err(UabiError::InvalidMxcsr {
                    value: 0x1f80 | 1 << 17,
                    mask: 0xffff
                })
            );
        }
    }
}

#[test]
fn a_reference_to_a_source_measures_as_the_source_does() {
    // `&T` forwards both CPUID and the MXCSR mask.
    let (cpu, _) = load("amd-zen4-ryzen-9-7950x.txt");
    let src = Measured(cpu, 0x2_ffff);
    let by_ref: &Measured = &src;
    let e = Enumeration::from_cpuid(&by_ref).unwrap();
    assert_eq!(
        (e.mxcsr_mask(), e.mxcsr_source()),
        (0x2_ffff, MxcsrMaskSource::Measured)
    );
}
