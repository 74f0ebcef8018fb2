//! Properties of `xstate::uabi` over every recorded CPU in `layouts/` (AMX and
//! PKRU ones included) and the live CPU, for host, guest and AMX-grown guest
//! fpstates:
//!
//! - import never panics, whatever the bytes and the length, and a refused
//!   buffer leaves the fpstate byte-identical;
//! - XCOMP_BV and the guest-only supervisor state (CET_S) never come from the
//!   caller: they are the same after every import, accepted or not;
//! - an accepted buffer's export is a fixed point after one round: importing
//!   it is accepted and exporting again gives the same bytes;
//! - signal frames: `export_sigframe` then `import_sigframe` into a fresh
//!   fpstate gives the same state; `import_sigframe` never panics either.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidSource, LiveCpuid};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, Mode, Owner};
use xstate::model::{Quirks, XsaveMachine};
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi::{
    FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, SW_BYTES_OFFSET, export, export_sigframe, import,
    import_sigframe,
};

mod testkit;
use testkit::loud;
use testkit::{
    MXCSR, MXCSR_MASK, XCOMP_BV, XSTATE_BV, cet_s_pattern, get_u32, get_u64, paint_cet_s, put_u32,
    put_u64,
};

/// One CPU: its name, enumeration and Linux configs.
struct Cpu {
    name: String,
    /// Where CPUID answers come from (the dump, or the live CPU).
    src: &'static (dyn CpuidSource + Sync),
    e: Enumeration,
    cfg: Configs,
}

/// Every dump in `layouts/` plus the live CPU, enumerated once.
fn cpus() -> &'static [Cpu] {
    static CPUS: OnceLock<Vec<Cpu>> = OnceLock::new();
    CPUS.get_or_init(|| {
        let mut v: Vec<Cpu> = testkit::dumps()
            .iter()
            .map(|(name, cpu)| {
                let e = Enumeration::from_cpuid(cpu).unwrap_or_else(|x| panic!("{name}: {x}"));
                let cfg =
                    Configs::new(&e, &Policy::linux(&e)).unwrap_or_else(|x| panic!("{name}: {x}"));
                Cpu {
                    name: name.clone(),
                    src: cpu,
                    e,
                    cfg,
                }
            })
            .collect();
        let e = Enumeration::from_cpuid(&LiveCpuid).expect("live CPU");
        let cfg = Configs::new(&e, &Policy::linux(&e)).expect("live configs");
        v.push(Cpu {
            name: "live CPU".into(),
            src: &LiveCpuid,
            e,
            cfg,
        });
        let amx = v
            .iter()
            .filter(|c| c.cfg.policy().dynamic.contains(XFeatures::XTILE_DATA))
            .count();
        let pkru = v
            .iter()
            .filter(|c| c.cfg.user().max_features.contains(XFeatures::PKRU))
            .count();
        let cet_s = v
            .iter()
            .filter(|c| c.cfg.guest().default_features.contains(XFeatures::CET_S))
            .count();
        assert!(
            amx > 0 && pkru > 0 && cet_s > 0,
            "the dumps no longer cover AMX ({amx}), PKRU ({pkru}) and CET_S ({cet_s})"
        );
        v
    })
}

/// Which fpstate a case works on.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Host,
    Guest,
    /// A guest grown to hold AMX TILEDATA (guest default where there is none).
    GuestAmx,
}

/// A fresh fpstate of `kind`, with CET_S painted where it has space. Returns the
/// fpstate and where its CET_S bytes (holding [`cet_s_pattern`]) are, if any.
fn fresh(c: &Cpu, kind: Kind) -> (Fpstate<BoxedArea>, Option<core::ops::Range<usize>>) {
    let owner = match kind {
        Kind::Host => Owner::Host,
        Kind::Guest | Kind::GuestAmx => Owner::Guest,
    };
    let mut fp = Fpstate::new_boxed(&c.cfg, owner).unwrap();
    if matches!(kind, Kind::GuestAmx) && c.cfg.policy().dynamic.contains(XFeatures::XTILE_DATA) {
        let mut perms = ProcessPerms::new(&c.cfg);
        perms
            .request(&c.cfg, PermKind::Guest, 18, |_| true)
            .unwrap();
        fp = fp.grow_boxed(&c.cfg, &perms, 18).unwrap();
        assert!(fp.info().user_features.contains(XFeatures::XTILE_DATA));
    }
    let cet = paint_cet_s(&c.e, &c.cfg, &mut fp);
    (fp, cet)
}

/// What must never change through an import: XCOMP_BV, the supervisor bits of
/// XSTATE_BV and the CET_S bytes.
fn invariant(
    fp: &Fpstate<BoxedArea>,
    cet: &Option<core::ops::Range<usize>>,
) -> (u64, u64, Vec<u8>) {
    let sup = fp.xstate_bv() - fp.info().user_features;
    let cet = cet.clone().map_or(Vec::new(), |r| fp.area()[r].to_vec());
    (fp.xcomp_bv(), sup.bits(), cet)
}

/// Nothing an import accepts may make the kernel's next restore of the fpstate
/// fault: the model executes it (XRSTORS where the CPU has it, else XRSTOR),
/// with the SDM's #GP checks on the header and MXCSR.
fn restores_cleanly(c: &Cpu, fp: &Fpstate<BoxedArea>) -> Result<(), String> {
    let mut m = XsaveMachine::new(c.cfg.enumeration(), Quirks::INTEL);
    let mode = if c.e.xsaves() {
        Mode::Supervisor
    } else {
        Mode::User
    };
    fp.restore(&mut m, &c.cfg, mode)
        .map_err(|x| format!("{}: restore of an accepted import: {x}", c.name))
}

fn export_all(c: &Cpu, fp: &Fpstate<BoxedArea>) -> Vec<u8> {
    let mut out = vec![0u8; fp.info().user_size as usize];
    let n = export(&c.cfg, fp, fp.info().user_features, &mut out).unwrap();
    assert_eq!(n, out.len());
    out
}

/// Shape raw bytes into a mostly plausible buffer, as `knobs` says: a header
/// with XSTATE_BV from `bv` (within the user features, or with stray bits),
/// zero XCOMP_BV and reserved bytes, a valid MXCSR. Each knob off leaves the
/// random bytes there.
fn shape(c: &Cpu, fp: &Fpstate<BoxedArea>, mut b: Vec<u8>, bv: u64, knobs: u8) -> Vec<u8> {
    if knobs & 16 != 0 {
        // Long enough for every component the header may claim.
        let need = fp.info().user_size as usize;
        if b.len() < need {
            b.resize(need, 0x5c);
        }
    }
    if b.len() < 576 {
        return b;
    }
    let user = fp.info().user_features.bits();
    if knobs & 1 != 0 {
        let v = if knobs & 2 != 0 { bv } else { bv & user };
        put_u64(&mut b, XSTATE_BV, v);
    }
    if knobs & 4 != 0 {
        b[XCOMP_BV..576].fill(0);
    }
    if knobs & 8 != 0 {
        let m = get_u32(&b, MXCSR) & c.cfg.mxcsr_mask();
        put_u32(&mut b, MXCSR, m);
    }
    b
}

fn case() -> impl Strategy<Value = (usize, u8, Vec<u8>, u64, u8)> {
    (
        0..cpus().len(),
        0u8..3,
        prop::collection::vec(any::<u8>(), 0..12_000),
        any::<u64>(),
        any::<u8>(),
    )
}

fn kind(k: u8) -> Kind {
    match k {
        0 => Kind::Host,
        1 => Kind::Guest,
        _ => Kind::GuestAmx,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary bytes and lengths: no panic; refused means unchanged; the
    /// caller never sets XCOMP_BV, supervisor bits or CET_S bytes; accepted means
    /// the header's user bits are exactly the fpstate's new user XSTATE_BV.
    #[test]
    fn import_is_total_and_atomic((ci, k, bytes, bv, knobs) in case()) {
        let c = &cpus()[ci];
        let (mut fp, cet) = fresh(c, kind(k));
        let buf = shape(c, &fp, bytes, bv, knobs);
        let before = fp.area().to_vec();
        let inv = invariant(&fp, &cet);
        match import(&c.cfg, &mut fp, &buf) {
            Err(e) => {
                prop_assert!(fp.area() == &before[..], "{}: refused ({e}) but changed", c.name);
            }
            Ok(hdr) => {
                prop_assert_eq!(hdr.bits(), get_u64(&buf, XSTATE_BV));
                prop_assert_eq!(fp.xstate_bv() & fp.info().user_features, hdr);
                restores_cleanly(c, &fp).map_err(TestCaseError::fail)?;
            }
        }
        prop_assert_eq!(invariant(&fp, &cet), inv, "{}: XCOMP_BV/supervisor state moved", &c.name);
    }

    /// Accepted buffers: export is importable, and a fixed point after one round.
    #[test]
    fn export_of_import_is_a_fixed_point((ci, k, bytes, bv, knobs) in case()) {
        let c = &cpus()[ci];
        let (mut fp, cet) = fresh(c, kind(k));
        // Mostly valid: header, XCOMP_BV/reserved and MXCSR fixed, full length.
        let buf = shape(c, &fp, bytes, bv, (knobs & !2) | 1 | 4 | 8 | 16);
        let inv = invariant(&fp, &cet);
        let Ok(_) = import(&c.cfg, &mut fp, &buf) else {
            return Err(TestCaseError::fail(format!("{}: a valid buffer was refused", c.name)));
        };
        let x1 = export_all(c, &fp);
        // The live state comes out where CPUID (not our layout code) puts it.
        let live = get_u64(&buf, XSTATE_BV);
        prop_assert_eq!(get_u64(&x1, XSTATE_BV), live);
        if live & 1 != 0 {
            prop_assert!(x1[32..160] == buf[32..160], "{}: ST registers", &c.name);
        }
        if live & 2 != 0 {
            prop_assert!(x1[160..416] == buf[160..416], "{}: XMM registers", &c.name);
        }
        for i in (2..63).filter(|i| live & 1 << i != 0) {
            let r = c.src.cpuid(0xd, i);
            let (o, s) = (r.ebx as usize, r.eax as usize);
            if i == 9 {
                // PKRU: the register, then reserved bytes Linux exports as zero.
                prop_assert!(x1[o..o + 4] == buf[o..o + 4], "{}: PKRU", &c.name);
                prop_assert!(x1[o + 4..o + s].iter().all(|&b| b == 0), "{}: PKRU 4..8", &c.name);
                continue;
            }
            prop_assert!(x1[o..o + s] == buf[o..o + s], "{}: component {}", &c.name, i);
        }
        let r = import(&c.cfg, &mut fp, &x1);
        prop_assert!(r.is_ok(), "{}: our own export refused: {:?}", &c.name, r);
        let x2 = export_all(c, &fp);
        prop_assert!(x1 == x2, "{}: export is not a fixed point", &c.name);
        // Into a fresh fpstate too: the export carries the whole user state.
        let (mut fp2, _) = fresh(c, kind(k));
        import(&c.cfg, &mut fp2, &x1).unwrap();
        prop_assert!(export_all(c, &fp2) == x1, "{}: fresh import differs", &c.name);
        prop_assert_eq!(invariant(&fp, &cet), inv, "{}: XCOMP_BV/supervisor state moved", &c.name);
        if let Some(r) = cet {
            prop_assert!(fp.area()[r.clone()] == cet_s_pattern(r.len())[..]);
            prop_assert!(fp.xstate_bv().contains(XFeatures::CET_S));
        }
    }

    /// Signal frames: export then import into a fresh fpstate restores the same
    /// user state; the frame's software bytes say what Linux's do.
    #[test]
    fn sigframe_round_trip((ci, k, bytes, bv, knobs) in case()) {
        let c = &cpus()[ci];
        let (mut fp, _) = fresh(c, kind(k));
        let buf = shape(c, &fp, bytes, bv, (knobs & !2) | 1 | 4 | 8 | 16);
        import(&c.cfg, &mut fp, &buf).unwrap();
        let size = fp.info().user_size as usize;
        let mut frame = vec![0xa5u8; size + 64];
        let n = export_sigframe(&c.cfg, &fp, fp.info().user_features, &mut frame).unwrap();
        prop_assert_eq!(n, size + 4);
        prop_assert_eq!(get_u32(&frame, SW_BYTES_OFFSET), FP_XSTATE_MAGIC1);
        prop_assert_eq!(get_u32(&frame, SW_BYTES_OFFSET + 4) as usize, size + 4);
        prop_assert_eq!(get_u64(&frame, SW_BYTES_OFFSET + 8), fp.info().user_features.bits());
        prop_assert_eq!(get_u32(&frame, SW_BYTES_OFFSET + 16) as usize, size);
        prop_assert_eq!(get_u32(&frame, size), FP_XSTATE_MAGIC2);
        prop_assert!(frame[size + 4..].iter().all(|&b| b == 0xa5));
        let (mut fp2, cet2) = fresh(c, kind(k));
        let inv2 = invariant(&fp2, &cet2);
        let got = import_sigframe(&c.cfg, &mut fp2, &frame[..n]);
        prop_assert!(got.is_ok(), "{}: own frame refused: {:?}", &c.name, got);
        let got = got.unwrap();
        prop_assert_eq!(got.fx_only, None);
        // Linux's frames always claim x87 and SSE (their init values when not in
        // use): after the round trip they are "in use", every byte the same.
        // PKRU too where the CPU has it: Linux writes the thread's PKRU into
        // every frame and marks it live.
        let fpsse = (XFeatures::X87 | XFeatures::SSE | XFeatures::PKRU) & fp.info().user_features;
        prop_assert_eq!(got.features, (fp.xstate_bv() & fp.info().user_features) | fpsse);
        let (mut a, mut b) = (export_all(c, &fp2), export_all(c, &fp));
        prop_assert_eq!(get_u64(&a, XSTATE_BV), get_u64(&b, XSTATE_BV) | fpsse.bits());
        put_u64(&mut a, XSTATE_BV, 0);
        put_u64(&mut b, XSTATE_BV, 0);
        // MXCSR_MASK: a frame carries the CPU's (XSAVE writes it), which the
        // frame's import keeps; the first import kept the buffer's, which
        // export gives back while SSE or AVX is live.
        prop_assert_eq!(get_u32(&a, MXCSR_MASK), c.cfg.mxcsr_mask());
        let live = fp.xstate_bv() & fp.info().user_features;
        let want = if live.intersects(XFeatures::SSE | XFeatures::AVX) {
            get_u32(&buf, MXCSR_MASK)
        } else {
            c.cfg.mxcsr_mask()
        };
        prop_assert_eq!(get_u32(&b, MXCSR_MASK), want);
        put_u32(&mut a, MXCSR_MASK, 0);
        put_u32(&mut b, MXCSR_MASK, 0);
        // Bytes 416..464 are left as the frame buffer held them, as Linux does.
        prop_assert!(frame[416..464].iter().all(|&x| x == 0xa5), "{}: frame bytes 416..464", &c.name);
        prop_assert!(a == b, "{}: frame round trip", &c.name);
        prop_assert_eq!(invariant(&fp2, &cet2), inv2);
        // A frame cut before its trailing magic is refused, and changes nothing.
        let before = fp2.area().to_vec();
        prop_assert!(import_sigframe(&c.cfg, &mut fp2, &frame[..n - 1]).is_err());
        prop_assert!(fp2.area() == &before[..]);
    }

    /// `import_sigframe` on arbitrary bytes (with the magic words planted or not):
    /// no panic, refused means unchanged, never XCOMP_BV or supervisor state.
    #[test]
    fn import_sigframe_is_total((ci, k, bytes, bv, knobs) in case(), xsize in any::<u32>()) {
        let c = &cpus()[ci];
        let (mut fp, cet) = fresh(c, kind(k));
        let mut buf = shape(c, &fp, bytes, bv, knobs);
        if buf.len() >= 576 && knobs & 32 != 0 {
            let size = if knobs & 64 != 0 {
                fp.info().user_size
            } else {
                xsize % (buf.len() as u32 + 8)
            };
            buf[SW_BYTES_OFFSET..SW_BYTES_OFFSET + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
            buf[SW_BYTES_OFFSET + 4..SW_BYTES_OFFSET + 8].copy_from_slice(&(size + 4).to_le_bytes());
            buf[SW_BYTES_OFFSET + 16..SW_BYTES_OFFSET + 20].copy_from_slice(&size.to_le_bytes());
            let s = size as usize;
            if s + 4 <= buf.len() {
                buf[s..s + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
            }
        }
        let before = fp.area().to_vec();
        let inv = invariant(&fp, &cet);
        match import_sigframe(&c.cfg, &mut fp, &buf) {
            Err(e) => {
                prop_assert!(fp.area() == &before[..], "{}: refused ({e}) but changed", c.name);
            }
            Ok(got) => {
                prop_assert!(fp.info().user_features.contains(got.features));
                prop_assert_eq!(fp.xstate_bv() & fp.info().user_features, got.features);
                restores_cleanly(c, &fp).map_err(TestCaseError::fail)?;
            }
        }
        prop_assert_eq!(invariant(&fp, &cet), inv);
    }
}

/// The properties above only mean something if accepted and refused cases both
/// occur often; count them over a fixed sample of shaped buffers.
#[test]
fn shaped_buffers_cover_both_verdicts() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut ok, mut err) = (0usize, 0usize);
    for _ in 0..2000 {
        let (ci, k, bytes, bv, knobs) = case().new_tree(&mut runner).unwrap().current();
        let c = &cpus()[ci];
        let (mut fp, _) = fresh(c, kind(k));
        let buf = shape(c, &fp, bytes, bv, knobs);
        match import(&c.cfg, &mut fp, &buf) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    loud!(
        "uabi props: {} CPUs (dumps + live); shaped sample: {ok} accepted, {err} refused",
        cpus().len()
    );
    assert!(ok > 100 && err > 100, "accepted {ok}, refused {err}");
}
