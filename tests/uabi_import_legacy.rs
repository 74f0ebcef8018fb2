//! `uabi::import` writes only the legacy state XSTATE_BV names, as Linux's
//! `copy_uabi_to_xstate` does (x87: bytes 0..160, MXCSR and its mask
//! included; SSE or AVX: MXCSR and its mask; SSE: the XMM registers), on
//! every recorded dump in `layouts/` (no live CPU needed).
//!
//! Why it matters beyond the bytes: MXCSR is checked only when XSTATE_BV has
//! x87, SSE or AVX, and the standard form of XRSTOR (the kernel's restore on
//! a CPU without XSAVES) loads MXCSR from the buffer whenever RFBM has SSE or
//! AVX, whatever XSTATE_BV says (SDM vol. 1 13.8.1). A buffer with XSTATE_BV 0
//! carrying an MXCSR with reserved bits is accepted; had its MXCSR reached the
//! fpstate, the kernel's next restore would #GP. The model executes that
//! restore.

use xstate::XFeatures;
use xstate::fpstate::{BoxedArea, Fpstate, Mode};
use xstate::model::{Quirks, XsaveMachine};
use xstate::uabi;

mod testkit;
use testkit::{MXCSR, XSTATE_BV, put_u32, put_u64};

/// The MXCSR the primed fpstate holds: valid everywhere, not the default.
const OLD_MXCSR: u32 = 0x1fa0;

use testkit::DumpSetup as Setup;

fn setups() -> Vec<Setup> {
    testkit::linux_setups()
}

/// A host fpstate with every user component it holds in use, in a pattern,
/// MXCSR [`OLD_MXCSR`].
fn primed(s: &Setup) -> Fpstate<BoxedArea> {
    testkit::primed_host(&s.cfg, OLD_MXCSR)
}

/// The kernel's next restore of `fp` in the model: XRSTORS where the CPU has
/// it, else XRSTOR of the standard form. Returns the MXCSR it left.
fn restore(s: &Setup, fp: &Fpstate<BoxedArea>) -> Result<u32, String> {
    let quirks = Quirks::INTEL;
    let mut m = XsaveMachine::new(&s.e, quirks);
    let mode = if s.e.xsaves() {
        Mode::Supervisor
    } else {
        Mode::User
    };
    fp.restore(&mut m, &s.cfg, mode)
        .map_err(|x| format!("{}: restore: {x}", s.name))?;
    Ok(m.mxcsr())
}

/// A buffer holding every user component, in a pattern unlike the primer's,
/// with XSTATE_BV `mask` and MXCSR `mxcsr`.
fn buffer(fp: &Fpstate<BoxedArea>, mask: XFeatures, mxcsr: u32) -> Vec<u8> {
    let mut b: Vec<u8> = (0..fp.info().user_size as usize)
        .map(|k| (k as u8).wrapping_mul(71) ^ 0x5a)
        .collect();
    put_u32(&mut b, MXCSR, mxcsr);
    b[XSTATE_BV..XSTATE_BV + 64].fill(0);
    put_u64(&mut b, XSTATE_BV, mask.bits());
    b
}

#[test]
fn xstate_bv_zero_takes_no_legacy_byte() {
    let mut standard = 0;
    for s in &setups() {
        let mut fp = primed(s);
        assert_eq!(restore(s, &fp), Ok(OLD_MXCSR), "{}", s.name);
        let before = fp.area().to_vec();
        // Reserved MXCSR bits: not checked, since nothing in XSTATE_BV makes
        // MXCSR live.
        let bad = OLD_MXCSR | (!s.cfg.mxcsr_mask() & 0xffff_0000);
        assert_ne!(bad & !s.cfg.mxcsr_mask(), 0);
        let b = buffer(&fp, XFeatures::empty(), bad);
        let got = uabi::import(&s.cfg, &mut fp, &b);
        assert_eq!(got, Ok(XFeatures::empty()), "{}", s.name);
        assert!(
            fp.area()[..416] == before[..416],
            "{}: legacy region written",
            s.name
        );
        assert!(fp.xstate_bv() & fp.info().user_features == XFeatures::empty());
        let mxcsr = restore(s, &fp).unwrap_or_else(|x| panic!("{x}"));
        if !s.e.xsaves() {
            // Standard-form XRSTOR: MXCSR from the buffer, the one it had.
            assert_eq!(mxcsr, OLD_MXCSR, "{}: MXCSR after restore", s.name);
            standard += 1;
        }
    }
    assert!(standard >= 1, "no dump without XSAVES");
}

/// Whether Linux's `copy_uabi_to_xstate` takes legacy byte `k` from a buffer
/// with XSTATE_BV `mask`.
fn taken(mask: XFeatures, k: usize) -> bool {
    let x87 = mask.contains(XFeatures::X87) && k < 160;
    let mxcsr = mask.intersects(XFeatures::SSE | XFeatures::AVX) && (24..32).contains(&k);
    let xmm = mask.contains(XFeatures::SSE) && (160..416).contains(&k);
    x87 || mxcsr || xmm
}

#[test]
fn only_the_named_legacy_state_is_taken() {
    for s in &setups() {
        let user = primed(s).info().user_features;
        let mut cases = vec![
            XFeatures::X87,
            XFeatures::SSE,
            XFeatures::X87 | XFeatures::SSE,
        ];
        if user.contains(XFeatures::AVX) {
            cases.push(XFeatures::AVX);
        }
        for mask in cases {
            let mut fp = primed(s);
            let before = fp.area().to_vec();
            let b = buffer(&fp, mask, 0x1f80);
            let got = uabi::import(&s.cfg, &mut fp, &b);
            assert_eq!(got, Ok(mask), "{}", s.name);
            for k in 0..416 {
                let want = if taken(mask, k) { b[k] } else { before[k] };
                assert_eq!(fp.area()[k], want, "{}: {mask:?}: legacy byte {k}", s.name);
            }
            restore(s, &fp).unwrap_or_else(|x| panic!("{x}"));
        }
    }
}
