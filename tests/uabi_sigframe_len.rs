//! `uabi::import_sigframe`'s two length checks, at their exact boundaries, on
//! every recorded dump in `layouts/` (no live CPU needed):
//!
//! - the legacy region with the software bytes, 512 bytes: a 512-byte frame
//!   is read (as "fx only" when its software bytes are not an XSAVE frame's),
//!   anything shorter is refused with `BufferTooSmall { needed: 512 }`;
//! - the components the restore loads are read up to their standard end even
//!   past the frame's `xstate_size` (as XRSTOR reads them): a frame ending
//!   exactly there is taken, one byte shorter is refused with
//!   `BufferTooSmall { needed: end }`.
//!
//! Each refusal leaves the fpstate byte-for-byte unchanged. The expected ends
//! are read off raw CPUID (`testkit::std_size_raw`), not from the crate.

use xstate::XFeatures;
use xstate::error::BufferTooSmall;
use xstate::fpstate::{BoxedArea, Fpstate};
use xstate::uabi::{self, FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, SW_BYTES_OFFSET, UabiError};

mod testkit;
use testkit::{EXTENDED, MXCSR, MXCSR_MASK, XSTATE_BV, bits, put_u32, put_u64, std_size_raw};

/// The legacy region plus the software bytes: what every frame must hold.
const LEGACY: usize = 512;
/// A valid MXCSR other than the init value 0x1f80 (PE set).
const FRAME_MXCSR: u32 = 0x1fa0;

use testkit::DumpSetup as Setup;

fn setups() -> Vec<Setup> {
    testkit::linux_setups()
}

/// A host fpstate with every user component it holds in use, in a pattern
/// no frame below carries.
fn primed(s: &Setup) -> Fpstate<BoxedArea> {
    testkit::primed_host(&s.cfg, 0x1f80)
}

/// `import_sigframe` refuses `buf` with `want` and leaves the fpstate as it was.
fn refused(s: &Setup, buf: &[u8], want: UabiError, what: &str) {
    testkit::assert_refused(s, |fp| uabi::import_sigframe(&s.cfg, fp, buf), want, what);
}

/// A legacy region in a pattern (x87 bytes and XMM registers), with a valid
/// non-default MXCSR, of `len` bytes (`len` >= 512), zeros past byte 512.
fn legacy_frame(len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    for (k, x) in b[..SW_BYTES_OFFSET].iter_mut().enumerate() {
        *x = (k as u8).wrapping_mul(71) ^ 0x5a;
    }
    put_u32(&mut b, MXCSR, FRAME_MXCSR);
    put_u32(&mut b, MXCSR_MASK, 0);
    b[SW_BYTES_OFFSET..LEGACY].fill(0);
    b
}

#[test]
fn legacy_region_boundary() {
    let setups = setups();
    assert!(setups.len() >= 20, "only {} dumps", setups.len());
    for s in &setups {
        // Exactly 512 bytes, software bytes not an XSAVE frame's (magic1 0):
        // taken as fx only, x87 and SSE from the frame.
        let f = legacy_frame(LEGACY);
        let mut fp = primed(s);
        let got = uabi::import_sigframe(&s.cfg, &mut fp, &f)
            .unwrap_or_else(|err| panic!("{}: 512-byte frame: {err}", s.name));
        assert_eq!(
            got.fx_only,
            Some(UabiError::BadMagic1 { value: 0 }),
            "{}",
            s.name
        );
        assert_eq!(got.features, XFeatures::X87 | XFeatures::SSE, "{}", s.name);
        assert_eq!(
            fp.xstate_bv(),
            XFeatures::X87 | XFeatures::SSE,
            "{}",
            s.name
        );
        let out = testkit::exported(&s.cfg, &fp);
        assert!(out[..24] == f[..24], "{}: x87 head", s.name);
        assert_eq!(
            testkit::get_u32(&out, MXCSR),
            FRAME_MXCSR,
            "{}: MXCSR",
            s.name
        );
        assert!(out[32..416] == f[32..416], "{}: x87/XMM registers", s.name);

        // One byte shorter, and shorter still (down to no software bytes at
        // all, and nothing): refused, whatever the software bytes say.
        for len in [
            LEGACY - 1,
            LEGACY - 8,
            SW_BYTES_OFFSET + 20,
            SW_BYTES_OFFSET,
            416,
            1,
            0,
        ] {
            let want = UabiError::BufferTooSmall(BufferTooSmall {
                needed: LEGACY,
                got: len,
            });
            refused(s, &f[..len], want, &format!("{len}-byte frame, magic1 0"));
            let mut g = f.clone();
            put_u32(&mut g, SW_BYTES_OFFSET, FP_XSTATE_MAGIC1);
            put_u32(&mut g, SW_BYTES_OFFSET + 4, EXTENDED);
            put_u32(&mut g, SW_BYTES_OFFSET + 16, EXTENDED);
            refused(s, &g[..len], want, &format!("{len}-byte frame, magic1"));
        }

        // 512 bytes with magic1 and an xstate_size of 576: magic2 would be
        // read past the frame (sigreturn faults).
        let mut g = f.clone();
        put_u32(&mut g, SW_BYTES_OFFSET, FP_XSTATE_MAGIC1);
        put_u32(&mut g, SW_BYTES_OFFSET + 4, EXTENDED);
        put_u32(&mut g, SW_BYTES_OFFSET + 16, EXTENDED);
        let want = UabiError::BufferTooSmall(BufferTooSmall {
            needed: EXTENDED as usize + 4,
            got: LEGACY,
        });
        refused(s, &g, want, "512-byte frame, magic1, no magic2");
    }
}

/// An XSAVE frame of the minimum `xstate_size` (576, magic2 right after the
/// header) whose XSTATE_BV and software `xfeatures` are x87, SSE and `extra`,
/// `len` bytes long; component bytes past the header in a pattern.
fn xsave_frame(extra: XFeatures, len: usize) -> Vec<u8> {
    let mut b = legacy_frame(len.max(EXTENDED as usize + 4));
    for (k, x) in b[EXTENDED as usize..].iter_mut().enumerate() {
        *x = (k as u8).wrapping_mul(37) ^ 0xa5;
    }
    let mask = XFeatures::X87 | XFeatures::SSE | extra;
    put_u32(&mut b, SW_BYTES_OFFSET, FP_XSTATE_MAGIC1);
    put_u32(&mut b, SW_BYTES_OFFSET + 4, EXTENDED);
    put_u64(&mut b, SW_BYTES_OFFSET + 8, mask.bits());
    put_u32(&mut b, SW_BYTES_OFFSET + 16, EXTENDED);
    b[XSTATE_BV..XSTATE_BV + 64].fill(0);
    put_u64(&mut b, XSTATE_BV, mask.bits());
    put_u32(&mut b, EXTENDED as usize, FP_XSTATE_MAGIC2);
    b.truncate(len);
    b
}

#[test]
fn components_past_xstate_size_boundary() {
    let mut checked = 0;
    for s in &setups() {
        let fp = primed(s);
        let user = fp.info().user_features;
        for i in bits(user.bits()).filter(|&i| i >= 2) {
            let c = XFeatures::from_bits_retain(1 << i);
            // Where XRSTOR stops reading: component i's standard end.
            let end = std_size_raw(&s.cpu, 1 << i) as usize;
            assert!(end > EXTENDED as usize + 4, "{}: component {i}", s.name);

            // Exactly up to the end: taken, component i from the frame.
            let f = xsave_frame(c, end);
            let mut fp = primed(s);
            let got = uabi::import_sigframe(&s.cfg, &mut fp, &f)
                .unwrap_or_else(|err| panic!("{}: component {i}, {end} bytes: {err}", s.name));
            assert_eq!(got.fx_only, None, "{}: component {i}", s.name);
            let want = XFeatures::X87 | XFeatures::SSE | c;
            assert_eq!(got.features, want, "{}: component {i}", s.name);
            assert_eq!(fp.xstate_bv() & user, want, "{}: component {i}", s.name);
            let out = testkit::exported(&s.cfg, &fp);
            let mut r = testkit::std_range(&s.e, i);
            assert_eq!(r.end, end, "{}: component {i}", s.name);
            if c == XFeatures::PKRU {
                // Export writes PKRU's 4 reserved bytes as zeros.
                assert!(out[r.start + 4..r.end].iter().all(|&x| x == 0));
                r.end = r.start + 4;
            }
            assert!(
                out[r.clone()] == f[r.clone()],
                "{}: component {i} not the frame's",
                s.name
            );

            // One byte short of it, and only up to magic2: refused.
            let want = |len| {
                UabiError::BufferTooSmall(BufferTooSmall {
                    needed: end,
                    got: len,
                })
            };
            refused(
                s,
                &f[..end - 1],
                want(end - 1),
                &format!("component {i}, end - 1"),
            );
            let short = EXTENDED as usize + 4;
            refused(
                s,
                &f[..short],
                want(short),
                &format!("component {i}, up to magic2"),
            );
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} components checked");
}
