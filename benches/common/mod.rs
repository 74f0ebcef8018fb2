//! What the XSAVE benches share: criterion settings and the state images they
//! load or copy. Included with `mod common;` by each bench that needs it.

// Each bench uses a subset of these.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use xstate::XFeatures;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{
    BoxedArea, MXCSR_DEFAULT, MXCSR_OFFSET, Storage, XCOMP_BV_OFFSET, XSTATE_BV_OFFSET,
};
use xstate::layout::Layout;

/// 30 samples, 0.5 s warm-up, 2 s of measurement.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

pub fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

pub fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// XSTATE_BV of an XSAVE area.
pub fn xstate_bv(b: &[u8]) -> u64 {
    get_u64(b, XSTATE_BV_OFFSET)
}

/// An image of `layout` (either form) with every component of its mask in a
/// non-init state, XSTATE_BV = `xstate_bv` and XCOMP_BV the layout's.
pub fn dirty_image(layout: &Layout, xstate_bv: XFeatures) -> BoxedArea {
    let mut a = BoxedArea::zeroed(layout.size() as usize);
    let b = a.bytes_mut();
    // x87: FCW with 53-bit precision (not the init 0x37f), one valid register
    // (abridged FTW bit 0, TOP = 0) holding 1.0.
    put(b, 0, &0x027fu16.to_le_bytes());
    b[4] = 0x01;
    put(b, 32, &0x8000_0000_0000_0000u64.to_le_bytes());
    put(b, 40, &0x3fffu16.to_le_bytes());
    put(b, MXCSR_OFFSET, &MXCSR_DEFAULT.to_le_bytes());
    for (k, x) in b[160..416].iter_mut().enumerate() {
        *x = (k as u8).wrapping_mul(13) | 1;
    }
    for i in layout.mask().indices().filter(|&i| i >= 2) {
        let r = layout.range_of(i).expect("component in mask");
        if i == 17 {
            // TILECFG must be a valid palette-1 configuration or XRSTOR faults:
            // eight tiles of 16 rows x 64 bytes.
            let c = &mut b[r];
            c[0] = 1;
            for t in 0..8 {
                put(c, 16 + 2 * t, &64u16.to_le_bytes());
                c[48 + t] = 16;
            }
        } else {
            for (k, x) in b[r].iter_mut().enumerate() {
                *x = (k as u8).wrapping_mul(37).wrapping_add(i as u8) | 1;
            }
        }
    }
    put(b, XSTATE_BV_OFFSET, &xstate_bv.bits().to_le_bytes());
    put(b, XCOMP_BV_OFFSET, &layout.xcomp_bv().to_le_bytes());
    a
}

/// A standard-form image with XSTATE_BV = 0: XRSTOR of it inits every component
/// of the RFBM (MXCSR comes from the image whenever SSE or AVX is in the RFBM).
pub fn init_image(e: &Enumeration) -> BoxedArea {
    let mut a = BoxedArea::zeroed(e.standard_max_size() as usize);
    put(a.bytes_mut(), MXCSR_OFFSET, &MXCSR_DEFAULT.to_le_bytes());
    a
}
