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
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        for owner in [Owner::Host, Owner::Guest] {
            let mut fp = Fpstate::new_boxed(&cfg, owner).unwrap();
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
                uabi::import(&cfg, &mut fp, &img).unwrap_or_else(|err| {
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
                    let n = uabi::export(&cfg, &fp, mask, &mut zeroed).unwrap();
                    let m = uabi::export(&cfg, &fp, mask, &mut dirty).unwrap();
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

/// A component whose state went back to init keeps its old bytes in the
/// kernel's buffer (XSAVES and XSAVEC skip init components), and the exports
/// must not show them: `export` and `export_sigframe` write its init value
/// (zeros), as Linux's XSAVE into a frame does; AMX components in a signal
/// frame are the exception Linux leaves unwritten, so they are not compared.
#[test]
fn init_components_export_as_init_whatever_the_kernel_buffer_kept() {
    use xstate::fpstate::Mode;
    use xstate::insn::{Insn, XsaveUnit};
    use xstate::model::{Quirks, XsaveMachine};
    let mut checked = 0;
    for (name, cpu) in dumps() {
        let e = Enumeration::from_cpuid(cpu).unwrap();
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        let mut fp = Fpstate::new_boxed(&cfg, Owner::Host).unwrap();
        let supervisor = e.xsaves();
        let mode = if supervisor {
            Mode::Supervisor
        } else {
            Mode::User
        };
        if mode == Mode::User && !(fp.info().features & cfg.xss()).is_empty() {
            continue;
        }
        let mut m = XsaveMachine::new(&e, Quirks::INTEL);
        m.set_cpl0(supervisor);
        // Every user extended component live with non-zero bytes, saved...
        let comps: Vec<u32> = (fp.info().user_features & m.xcr0())
            .indices()
            .filter(|&i| i >= 2 && i != 17)
            .collect();
        for &i in &comps {
            let len = m.reg(i).unwrap().len();
            m.write_reg(i, 0, &vec![0x5a; len]).unwrap();
        }
        fp.save(&mut m, &cfg, mode).unwrap();
        // ...then everything back to init and saved again: the buffer keeps
        // the old bytes under XSTATE_BV bits that are now clear.
        let mut init = testkit::Area::new(e.standard_size(m.xcr0()) as usize, 0);
        init.bytes_mut()[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        put_u32(init.bytes_mut(), MXCSR, 0x1f80);
        m.restore(Insn::Xrstor, init.bytes(), m.xcr0()).unwrap();
        fp.save(&mut m, &cfg, mode).unwrap();
        let user = fp.info().user_features;
        let size = e.standard_size(user) as usize;
        let mut out = vec![0xa5u8; size + 64];
        uabi::export(&cfg, &fp, user, &mut out).unwrap();
        let mut frame = vec![0xa5u8; size + 64];
        uabi::export_sigframe(&cfg, &fp, user, &mut frame).unwrap();
        for &i in &comps {
            let c = e.component(i).unwrap();
            let r = c.std_offset as usize..(c.std_offset + c.size) as usize;
            assert!(
                out[r.clone()].iter().all(|&b| b == 0),
                "{name}: export, component {i}"
            );
            if !XFeatures::XTILE.has_index(i) {
                assert!(
                    frame[r].iter().all(|&b| b == 0),
                    "{name}: signal frame, component {i}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} CPUs");
    eprintln!("{checked} CPUs: init components export as zeros over the kernel buffer's old bytes");
}

/// A whole image (every user component live, the state a task that used them
/// all leaves) goes through the configs' precomputed copies: its export must
/// be the image itself with the standard form's rules applied, written here
/// from the SDM and Linux independently of the crate: the legacy region and
/// every component as given, the bytes between components zero, bytes
/// 416..576 zero but the software bytes (the user feature mask at 464) and
/// XSTATE_BV, PKRU's reserved bytes 4..8 zero. Its import must leave each
/// component at its kernel offset and keep the fpstate's own bytes 416..576
/// but XSTATE_BV.
#[test]
fn whole_images_round_trip_through_the_precomputed_copies() {
    let mut rng = Rng(0x0a11_11fe_5eed);
    let mut checked = 0;
    for (name, cpu) in dumps() {
        let e = Enumeration::from_cpuid(cpu).unwrap();
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        for owner in [Owner::Host, Owner::Guest] {
            let mut fp = Fpstate::new_boxed(&cfg, owner).unwrap();
            let user = fp.info().user_features;
            let size = e.standard_size(user) as usize;
            let mut img = vec![0u8; size];
            rng.fill(&mut img[..]);
            img[512..576].fill(0);
            put_u64(&mut img, XSTATE_BV, user.bits());
            put_u32(&mut img, MXCSR, 0x1f80 | (rng.next() as u32 & 0x7f));
            let before = fp.area()[416..576].to_vec();
            let bv_before = fp.xstate_bv();
            assert_eq!(uabi::import(&cfg, &mut fp, &img).unwrap(), user, "{name}");
            // The import: each component at its kernel offset, the fpstate's
            // own 416..576 kept but XSTATE_BV.
            let k = fp.area();
            assert_eq!(k[..416], img[..416], "{name}: legacy region");
            let mut want_hdr = before.clone();
            let bv = (bv_before - user) | user;
            want_hdr[96..104].copy_from_slice(&bv.bits().to_le_bytes());
            assert_eq!(k[416..576], want_hdr[..], "{name}: bytes 416..576");
            let features = fp.info().features;
            let mut off = 576usize;
            for i in features.indices().filter(|&i| i >= 2) {
                let c = e.component(i).unwrap();
                if c.align64 && fp.info().form == xstate::layout::Form::Compacted {
                    off = off.next_multiple_of(64);
                }
                let at = if fp.info().form == xstate::layout::Form::Compacted {
                    off
                } else {
                    c.std_offset as usize
                };
                let len = c.size as usize;
                if user.has_index(i) {
                    let s = c.std_offset as usize;
                    assert_eq!(k[at..at + len], img[s..s + len], "{name}: component {i}");
                }
                off += len;
            }
            // The export.
            let mut want = img.clone();
            let mut covered = vec![false; size];
            covered[..416].fill(true);
            for i in user.indices().filter(|&i| i >= 2) {
                let c = e.component(i).unwrap();
                let s = c.std_offset as usize;
                covered[s..s + c.size as usize].fill(true);
            }
            for (b, &c) in want.iter_mut().zip(&covered) {
                if !c {
                    *b = 0;
                }
            }
            put_u64(&mut want, 464, cfg.user().max_features.bits());
            put_u64(&mut want, XSTATE_BV, user.bits());
            if user.contains(XFeatures::PKRU) {
                let s = e.component(9).unwrap().std_offset as usize;
                want[s + 4..s + 8].fill(0);
            }
            let mut out = vec![0xa5u8; size + 64];
            let n = uabi::export(&cfg, &fp, user, &mut out).unwrap();
            assert_eq!(n, size, "{name}");
            assert_eq!(
                out[..n],
                want[..],
                "{name} {owner:?}: export of a whole image"
            );
            assert!(
                out[n..].iter().all(|&b| b == 0xa5),
                "{name}: past the image"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} fpstates");
    eprintln!("{checked} fpstates: whole images round-trip through the precomputed copies");
}
