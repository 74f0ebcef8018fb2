//! `uabi::import`'s two length checks at their exact boundaries, on every
//! recorded dump in `layouts/` (no live CPU needed):
//!
//! - the legacy region and the header, 576 bytes: a 576-byte buffer whose
//!   XSTATE_BV names only x87 and SSE (or nothing) is taken, 575 bytes are
//!   refused with `BufferTooSmall { needed: 576 }`, whatever XSTATE_BV says;
//! - every component XSTATE_BV names must be inside the buffer: a buffer
//!   ending exactly at the last one's standard end is taken, one byte shorter
//!   is refused with `BufferTooSmall { needed: end }`.
//!
//! Each refusal leaves the fpstate byte-for-byte unchanged. The expected ends
//! are read off raw CPUID (`testkit::std_size_raw`), not from the crate.

use xstate::XFeatures;
use xstate::error::BufferTooSmall;
use xstate::fpstate::{BoxedArea, Fpstate};
use xstate::uabi::{self, UabiError};

mod testkit;
use testkit::{EXTENDED, MXCSR, XSTATE_BV, bits, get_u32, put_u32, put_u64, std_size_raw};

/// A valid MXCSR other than the init value 0x1f80 (PE set).
const BUF_MXCSR: u32 = 0x1fa0;

use testkit::DumpSetup as Setup;

fn setups() -> Vec<Setup> {
    testkit::linux_setups()
}

/// A host fpstate with every user component it holds in use, in a pattern
/// no buffer below carries.
fn primed(s: &Setup) -> Fpstate<BoxedArea> {
    testkit::primed_host(&s.cfg, 0x1f80)
}

/// `import` refuses `buf` with `want` and leaves the fpstate as it was.
fn refused(s: &Setup, buf: &[u8], want: UabiError, what: &str) {
    testkit::assert_refused(s, |fp| uabi::import(&s.cfg, fp, buf), want, what);
}

/// A standard-form buffer of `len` bytes (at least 576) with XSTATE_BV
/// `mask`: legacy region and components in a pattern, a valid non-default
/// MXCSR, the header zero but XSTATE_BV.
fn buffer(mask: XFeatures, len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len.max(EXTENDED as usize))
        .map(|k| (k as u8).wrapping_mul(71) ^ 0x5a)
        .collect();
    put_u32(&mut b, MXCSR, BUF_MXCSR);
    b[XSTATE_BV..XSTATE_BV + 64].fill(0);
    put_u64(&mut b, XSTATE_BV, mask.bits());
    b.truncate(len);
    b
}

#[test]
fn header_boundary() {
    let setups = setups();
    assert!(setups.len() >= 20, "only {} dumps", setups.len());
    let fpsse = XFeatures::X87 | XFeatures::SSE;
    for s in &setups {
        for mask in [fpsse, XFeatures::empty()] {
            // Exactly the legacy region and the header: taken.
            let b = buffer(mask, EXTENDED as usize);
            let mut fp = primed(s);
            let got = uabi::import(&s.cfg, &mut fp, &b)
                .unwrap_or_else(|err| panic!("{}: 576 bytes, {mask:?}: {err}", s.name));
            assert_eq!(got, mask, "{}", s.name);
            assert_eq!(fp.xstate_bv() & fp.info().user_features, mask, "{}", s.name);
            if mask == fpsse {
                let out = testkit::exported(&s.cfg, &fp);
                assert!(out[..24] == b[..24], "{}: x87 head", s.name);
                assert_eq!(get_u32(&out, MXCSR), BUF_MXCSR, "{}: MXCSR", s.name);
                assert!(out[32..416] == b[32..416], "{}: x87/XMM registers", s.name);
            }

            // One byte shorter, and shorter still: refused.
            for len in [EXTENDED as usize - 1, XSTATE_BV + 8, XSTATE_BV, 1, 0] {
                let want = UabiError::BufferTooSmall(BufferTooSmall {
                    needed: EXTENDED as usize,
                    got: len,
                });
                refused(s, &b[..len], want, &format!("{len} bytes, {mask:?}"));
            }
        }
    }
}

#[test]
fn components_boundary() {
    let mut checked = 0;
    for s in &setups() {
        let fp = primed(s);
        let user = fp.info().user_features;
        for i in bits(user.bits()).filter(|&i| i >= 2) {
            let c = XFeatures::from_bits_retain(1 << i);
            let mask = XFeatures::X87 | XFeatures::SSE | c;
            let end = std_size_raw(&s.cpu, 1 << i) as usize;
            assert!(end > EXTENDED as usize, "{}: component {i}", s.name);

            // Exactly up to the component's end: taken, component i from the buffer.
            let b = buffer(mask, end);
            let mut fp = primed(s);
            let got = uabi::import(&s.cfg, &mut fp, &b)
                .unwrap_or_else(|err| panic!("{}: component {i}, {end} bytes: {err}", s.name));
            assert_eq!(got, mask, "{}: component {i}", s.name);
            let out = testkit::exported(&s.cfg, &fp);
            let mut r = testkit::std_range(&s.e, i);
            assert_eq!(r.end, end, "{}: component {i}", s.name);
            if c == XFeatures::PKRU {
                // Export writes PKRU's 4 reserved bytes as zeros.
                assert!(out[r.start + 4..r.end].iter().all(|&x| x == 0));
                r.end = r.start + 4;
            }
            assert!(
                out[r.clone()] == b[r.clone()],
                "{}: component {i} not the buffer's",
                s.name
            );

            // One byte short of it, and only the header: refused.
            let want = |len| {
                UabiError::BufferTooSmall(BufferTooSmall {
                    needed: end,
                    got: len,
                })
            };
            refused(
                s,
                &b[..end - 1],
                want(end - 1),
                &format!("component {i}, end - 1"),
            );
            let short = EXTENDED as usize;
            refused(
                s,
                &b[..short],
                want(short),
                &format!("component {i}, header only"),
            );
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} components checked");
}
