//! `uabi::export` writes every byte of the standard-form image it returns,
//! whatever the caller's buffer held (gaps, holes and components in their init
//! state are zero), and nothing past it; its length is the standard size of
//! the mask it was given, within the fpstate's user features. Checked on every
//! recorded CPU, for host and guest fpstates filled by `uabi::import`.

mod testkit;

use testkit::{MXCSR, Rng, XSTATE_BV, dumps, put_u32, put_u64};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{Fpstate, Owner};
use xstate::uabi;

#[test]
fn export_writes_exactly_its_image_whatever_the_buffer_held() {
    let mut rng = Rng(0x05ee_d0fe_80a7);
    let (mut exports, mut imports) = (0usize, 0usize);
    for (name, cpu) in dumps() {
        let e = Enumeration::from_cpuid(cpu).unwrap();
        let mut cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        cfg.mxcsr_mask = 0xffff;
        for owner in [Owner::Host, Owner::Guest] {
            let mut fp = Fpstate::new_boxed(&e, &cfg, owner).unwrap();
            let user = fp.info().user_features;
            let size = e.standard_size(user) as usize;
            for _ in 0..8 {
                // A random image Linux accepts: XSTATE_BV within the user
                // features, header zero, MXCSR within the mask.
                let mut img = vec![0u8; size];
                rng.fill(&mut img[..]);
                img[512..576].fill(0);
                let bv = XFeatures::from_bits_retain(rng.next()) & user;
                put_u64(&mut img, XSTATE_BV, bv.bits());
                put_u32(&mut img, MXCSR, 0x1f80 | (rng.next() as u32 & 0x7f));
                img[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
                uabi::import(&e, &cfg, &mut fp, &img).unwrap_or_else(|err| {
                    panic!("{name}: import refused an image Linux takes: {err}")
                });
                imports += 1;
                for mask in [
                    user,
                    XFeatures::from_bits_retain(rng.next()) | XFeatures::LEGACY,
                ] {
                    let want = e.standard_size(mask & user) as usize;
                    let mut zeroed = vec![0u8; size + 64];
                    let mut dirty = vec![0xa5u8; size + 64];
                    let n = uabi::export(&e, &cfg, &fp, mask, &mut zeroed).unwrap();
                    let m = uabi::export(&e, &cfg, &fp, mask, &mut dirty).unwrap();
                    assert_eq!((n, m), (want, want), "{name}: export length for {mask:?}");
                    assert_eq!(
                        zeroed[..n],
                        dirty[..n],
                        "{name}: export left bytes of the caller's buffer in its image"
                    );
                    assert!(
                        dirty[n..].iter().all(|&b| b == 0xa5),
                        "{name}: export wrote past its image"
                    );
                    exports += 1;
                }
            }
        }
    }
    eprintln!("{imports} imports, {exports} exports: every image byte written, none past it");
}
