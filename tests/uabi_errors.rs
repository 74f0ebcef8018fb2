//! Every way `uabi::import` and `uabi::import_sigframe` refuse a buffer, each
//! with its own `UabiError`, and the fpstate byte-for-byte unchanged after it;
//! and the signal-frame cases Linux does not refuse but takes as "fx only".
//!
//! On the Sapphire Rapids dump (AMX TILEDATA dynamic, PKRU, CET_S guest-only):
//! a host fpstate whose task was not granted AMX, holding a non-init state.

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::RecordedCpuid;
use xstate::enumerate::Enumeration;
use xstate::error::BufferTooSmall;
use xstate::fpstate::{
    BoxedArea, Fpstate, MXCSR_MASK_OFFSET, MXCSR_OFFSET, Owner, XCOMP_BV_OFFSET, XSTATE_BV_OFFSET,
};
use xstate::uabi::{
    self, FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, SW_BYTES_OFFSET, SigframeImport, UabiError,
};

mod testkit;
use testkit::{MXCSR, MXCSR_MASK, XCOMP_BV, XSTATE_BV, put_u32, put_u64};

const DUMP: &str = include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt");

struct Setup {
    e: Enumeration,
    cfg: Configs,
}

fn setup() -> Setup {
    let raw = RecordedCpuid::parse(DUMP).expect("dump");
    let e = Enumeration::from_cpuid(&raw).expect("enumeration");
    let cfg = Configs::new(&e, &Policy::linux(&e)).expect("configs");
    assert!(cfg.policy().dynamic.contains(XFeatures::XTILE_DATA));
    Setup { e, cfg }
}

/// A host fpstate with every user component it holds in use, in a pattern.
fn primed(s: &Setup) -> Fpstate<BoxedArea> {
    testkit::primed_host(&s.cfg, 0x1f80)
}

/// A valid signal frame of another state (`import` of the same bytes works too).
fn frame(s: &Setup) -> Vec<u8> {
    let mut other = Fpstate::new_boxed(&s.cfg, Owner::Host).expect("host fpstate");
    let size = other.info().user_size as usize;
    let mut b = vec![0x3cu8; size];
    put_u32(&mut b, MXCSR, 0x9fc0);
    b[XSTATE_BV..XSTATE_BV + 64].fill(0);
    put_u64(&mut b, XSTATE_BV, other.info().user_features.bits());
    // The checks alone take it and name its XSTATE_BV.
    assert_eq!(
        uabi::check_import(&s.cfg, &other, &b),
        Ok(other.info().user_features)
    );
    uabi::import(&s.cfg, &mut other, &b).expect("frame source");
    let mut f = vec![0u8; size + 4];
    let n = uabi::export_sigframe(&s.cfg, &other, other.info().user_features, &mut f)
        .expect("export_sigframe");
    assert_eq!(n, size + 4);
    f
}

/// `import` (and `check_import`, its checks alone) and `import_sigframe` of
/// `buf` refuse it with `want` (`None`: that path takes it), and the fpstate is
/// unchanged.
fn refused(s: &Setup, buf: &[u8], want: Option<UabiError>, want_sig: Option<UabiError>) {
    for sig in [false, true] {
        let want = if sig { want_sig } else { want };
        let Some(want) = want else { continue };
        let mut fp = primed(s);
        let before = fp.area().to_vec();
        let got = if sig {
            uabi::import_sigframe(&s.cfg, &mut fp, buf).map(|r| r.features)
        } else {
            // The checks alone refuse it the same way.
            assert_eq!(uabi::check_import(&s.cfg, &fp, buf), Err(want));
            uabi::import(&s.cfg, &mut fp, buf)
        };
        assert_eq!(got, Err(want), "sigframe path: {sig}");
        assert!(fp.area() == &before[..], "{want}: the fpstate changed");
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn each_refusal_has_its_own_error() {
    let s = setup();
    let f = frame(&s);
    let size = f.len() - 4;
    let user = s.cfg.user().default_features;
    let mask = s.cfg.mxcsr_mask();

    // Sanity: the unmodified frame goes through both paths.
    let mut fp = primed(&s);
    uabi::import(&s.cfg, &mut fp, &f[..size]).expect("valid buffer");
    let got = uabi::import_sigframe(&s.cfg, &mut fp, &f).expect("valid frame");
    assert_eq!(
        got,
        SigframeImport {
            features: user,
            fx_only: None
        }
    );

    // Too short: for the header, for the components it claims, for magic2.
    refused(
        &s,
        &f[..500],
        Some(UabiError::BufferTooSmall(BufferTooSmall {
            needed: 576,
            got: 500,
        })),
        Some(UabiError::BufferTooSmall(BufferTooSmall {
            needed: 512,
            got: 500,
        })),
    );
    refused(
        &s,
        &f[..size - 1],
        Some(UabiError::BufferTooSmall(BufferTooSmall {
            needed: size,
            got: size - 1,
        })),
        Some(UabiError::BufferTooSmall(BufferTooSmall {
            needed: size + 4,
            got: size - 1,
        })),
    );

    // XSTATE_BV: AMX TILEDATA (not granted to this task), a supervisor bit
    // (CET_S), an unknown bit. Sigframe: AMX is in XCR0, so it is refused as
    // state the task may not use; CET_S and bit 40 are outside the user
    // features the kernel enables (XRSTOR's #GP).
    for bit in [
        XFeatures::XTILE_DATA,
        XFeatures::CET_S,
        XFeatures::from_bits_retain(1 << 40),
    ] {
        let mut b = f.clone();
        put_u64(&mut b, XSTATE_BV, (user | bit).bits());
        let e = UabiError::FeaturesNotPermitted { mask: bit.bits() };
        if bit == XFeatures::XTILE_DATA {
            // Outside the frame's software `xfeatures` (the restore mask) the
            // bit is ignored, as XRSTOR ignores XSTATE_BV bits outside RFBM.
            refused(&s, &b, Some(e), None);
            let mut fp = primed(&s);
            let got = uabi::import_sigframe(&s.cfg, &mut fp, &b).expect("AMX outside RFBM");
            assert_eq!(got.features, user);
            put_u64(&mut b, SW_BYTES_OFFSET + 8, (user | bit).bits());
        }
        refused(&s, &b, Some(e), Some(e));
    }

    // The compacted form and the reserved header bytes.
    let mut b = f.clone();
    put_u64(&mut b, XCOMP_BV, (1 << 63) | user.bits());
    let e = UabiError::CompactedForm {
        xcomp_bv: (1 << 63) | user.bits(),
    };
    refused(&s, &b, Some(e), Some(e));
    let mut b = f.clone();
    b[XSTATE_BV + 20] = 1;
    refused(
        &s,
        &b,
        Some(UabiError::ReservedHeader),
        Some(UabiError::ReservedHeader),
    );
    // Bytes 24..64: Linux's ptrace/KVM path refuses them; a standard-form
    // XRSTOR (sigreturn) does not look at them.
    let mut b = f.clone();
    b[XSTATE_BV + 40] = 1;
    refused(&s, &b, Some(UabiError::ReservedHeader), None);
    let mut fp = primed(&s);
    uabi::import_sigframe(&s.cfg, &mut fp, &b).expect("header bytes 24..64");

    // MXCSR with a reserved bit.
    let mut b = f.clone();
    let bad = 0x1f80 | (!mask & 0xffff_0000);
    put_u32(&mut b, MXCSR, bad);
    let e = UabiError::InvalidMxcsr { value: bad, mask };
    refused(&s, &b, Some(e), Some(e));
    // ...which neither path looks at when nothing loads MXCSR.
    put_u64(&mut b, XSTATE_BV, 0);
    put_u64(&mut b, SW_BYTES_OFFSET + 8, 1);
    let mut fp = primed(&s);
    assert_eq!(uabi::import(&s.cfg, &mut fp, &b), Ok(XFeatures::empty()));
    let got = uabi::import_sigframe(&s.cfg, &mut fp, &b).expect("x87-only frame");
    assert_eq!(got.features, XFeatures::empty());
}

/// Alters a frame of the given `xstate_size`.
type Mutation = fn(&mut Vec<u8>, usize);

#[test]
fn bad_software_bytes_make_an_fx_only_frame() {
    let s = setup();
    let f = frame(&s);
    let size = f.len() - 4;
    let cases: [(&str, Mutation, UabiError); 4] = [
        (
            "magic1",
            |b, _| put_u32(b, SW_BYTES_OFFSET, FP_XSTATE_MAGIC1 ^ 1),
            UabiError::BadMagic1 {
                value: FP_XSTATE_MAGIC1 ^ 1,
            },
        ),
        (
            "magic2",
            |b, size| put_u32(b, size, FP_XSTATE_MAGIC2 ^ 1),
            UabiError::BadMagic2 {
                value: FP_XSTATE_MAGIC2 ^ 1,
            },
        ),
        (
            "xstate_size below 576",
            |b, _| put_u32(b, SW_BYTES_OFFSET + 16, 575),
            UabiError::BadFrameSize {
                xstate_size: 575,
                extended_size: 0,
            },
        ),
        (
            "xstate_size above extended_size",
            |b, size| put_u32(b, SW_BYTES_OFFSET + 4, size as u32 - 1),
            UabiError::BadFrameSize {
                xstate_size: 0,
                extended_size: 0,
            },
        ),
    ];
    for (name, mutate, want) in cases {
        let mut b = f.clone();
        mutate(&mut b, size);
        let mut fp = primed(&s);
        let xcomp = fp.xcomp_bv();
        let got = uabi::import_sigframe(&s.cfg, &mut fp, &b).expect(name);
        let why = got.fx_only.unwrap_or_else(|| panic!("{name}: not fx only"));
        assert_eq!(
            core::mem::discriminant(&why),
            core::mem::discriminant(&want),
            "{name}: {why}"
        );
        // Only the legacy region was taken: x87 and SSE from the frame, every
        // other user component in its init state.
        assert_eq!(got.features, XFeatures::X87 | XFeatures::SSE, "{name}");
        assert_eq!(fp.xstate_bv(), XFeatures::X87 | XFeatures::SSE, "{name}");
        assert_eq!(fp.xcomp_bv(), xcomp, "{name}");
        let mut out = vec![0u8; size];
        uabi::export(&s.cfg, &fp, s.cfg.user().default_features, &mut out).expect("export");
        assert!(
            out[..416] == b[..416],
            "{name}: legacy region not the frame's"
        );
        assert!(
            out[576..].iter().all(|&x| x == 0),
            "{name}: extended state not init"
        );
    }
}

#[test]
fn software_xfeatures_limit_the_restore() {
    let s = setup();
    let mut f = frame(&s);
    // The frame says only x87, SSE and AVX were saved: everything else goes to
    // its init state even though XSTATE_BV claims it.
    let keep = XFeatures::X87 | XFeatures::SSE | XFeatures::AVX;
    put_u64(&mut f, SW_BYTES_OFFSET + 8, keep.bits());
    let mut fp = primed(&s);
    let got = uabi::import_sigframe(&s.cfg, &mut fp, &f).expect("frame");
    assert_eq!(got.fx_only, None);
    assert_eq!(got.features, keep);
    assert_eq!(fp.xstate_bv(), keep);
    let avx = &s.e.components()[2];
    let size = f.len() - 4;
    let mut out = vec![0u8; size];
    uabi::export(&s.cfg, &fp, s.cfg.user().default_features, &mut out).expect("export");
    let r = avx.std_offset as usize..(avx.std_offset + avx.size) as usize;
    assert!(out[r.clone()] == f[r.clone()], "AVX not the frame's");
    assert!(out[r.end..].iter().all(|&x| x == 0), "beyond AVX not init");
    assert_eq!(out[MXCSR..MXCSR + 4], f[MXCSR..MXCSR + 4], "MXCSR");
}

/// The crate's area offsets are the SDM's (vol. 1 table 10-2 and 13.4.2), which
/// the tests write independently in `testkit`.
#[test]
fn area_offsets_are_the_sdm_ones() {
    assert_eq!(MXCSR_OFFSET, MXCSR);
    assert_eq!(MXCSR_MASK_OFFSET, MXCSR_MASK);
    assert_eq!(XSTATE_BV_OFFSET, XSTATE_BV);
    assert_eq!(XCOMP_BV_OFFSET, XCOMP_BV);
}

/// `import_abi`'s own refusals: ptrace's 8-byte units (EINVAL) and whole user
/// size (EFAULT, even for a buffer holding every component its XSTATE_BV
/// names), KVM's uabi size (EFAULT) and what KVM supports for guests (EINVAL,
/// for bits the fpstate itself could take); the fpstate unchanged after each.
/// Longer buffers are read up to the ABI's size.
#[test]
fn import_abi_refusals() {
    let s = setup();
    let user_size = s.cfg.user().max_size as usize;
    let mut valid = vec![0u8; user_size + 64];
    put_u32(&mut valid, MXCSR, 0x1f80);
    put_u32(&mut valid, MXCSR_MASK, s.cfg.mxcsr_mask());
    put_u64(&mut valid, XSTATE_BV, 0b111);
    let kvm = |supported: u64| uabi::UserAbi::Kvm {
        supported: XFeatures::from_bits_retain(supported),
        uabi_size: 4096,
    };
    let ptrace = uabi::UserAbi::Ptrace;
    let cases: [(&str, &[u8], uabi::UserAbi, Option<UabiError>); 8] = [
        (
            "ptrace, not 8-byte units",
            &valid[..user_size - 3],
            ptrace,
            Some(UabiError::UnalignedLength {
                got: user_size - 3,
                unit: 8,
            }),
        ),
        (
            "ptrace, short but holding XSTATE_BV's components",
            &valid[..1024],
            ptrace,
            Some(UabiError::BufferTooSmall(BufferTooSmall {
                needed: user_size,
                got: 1024,
            })),
        ),
        (
            "ptrace, empty",
            &valid[..0],
            ptrace,
            Some(UabiError::BufferTooSmall(BufferTooSmall {
                needed: user_size,
                got: 0,
            })),
        ),
        ("ptrace, exact", &valid[..user_size], ptrace, None),
        ("ptrace, longer", &valid[..user_size + 64], ptrace, None),
        (
            "kvm, short",
            &valid[..4000],
            kvm(0xe7),
            Some(UabiError::BufferTooSmall(BufferTooSmall {
                needed: 4096,
                got: 4000,
            })),
        ),
        (
            "kvm, AVX not supported for guests",
            &valid[..4096],
            kvm(0b11),
            Some(UabiError::FeaturesNotPermitted { mask: 0b100 }),
        ),
        (
            "kvm, within what KVM supports",
            &valid[..4096],
            kvm(0xe7),
            None,
        ),
    ];
    for (name, buf, abi, want) in cases {
        let mut fp = primed(&s);
        let before = fp.area().to_vec();
        let got = uabi::import_abi(&s.cfg, &mut fp, buf, abi);
        match want {
            Some(want) => {
                assert_eq!(got, Err(want), "{name}");
                assert_eq!(fp.area(), &before[..], "{name}: fpstate changed");
                let errno = if matches!(want, UabiError::BufferTooSmall(_)) {
                    14
                } else {
                    22
                };
                assert_eq!(want.errno(), errno, "{name}: errno");
                assert!(!want.to_string().is_empty());
            }
            None => assert_eq!(got, Ok(XFeatures::from_bits_retain(0b111)), "{name}"),
        }
    }
}
