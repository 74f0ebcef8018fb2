//! `insn::Cpu` from safe code: every save and restore checks the area against
//! the bytes the instruction may touch, so no safe call reaches memory it was
//! not given. The overflow an earlier `Cpu` allowed (`save(Xsave, &mut
//! buf[..576], X87 | SSE | AVX)` wrote 256 bytes past the slice) now returns
//! `Fault::Gp` with the bytes past the slice untouched.

mod testkit;

use testkit::{Area, XCOMP_BV, XSTATE_BV, loud, put_u64};
use xstate::XFeatures;
use xstate::insn::{Cpu, Fault, Insn, XsaveUnit, read_xcr0};

const CANARY: u8 = 0xa5;

fn unit() -> Option<Cpu> {
    // SAFETY: this test restores only init images and holds no values in
    // vector registers across the calls.
    match unsafe { Cpu::user() } {
        Ok(cpu) => Some(cpu),
        Err(err) => {
            loud!("SKIP cpu_unit: no XSAVE unit on this machine ({err})");
            None
        }
    }
}

#[test]
fn short_areas_are_refused_and_nothing_past_them_is_written() {
    let Some(mut cpu) = unit() else { return };
    let xcr0 = read_xcr0().expect("XSAVE enabled (the unit was built)");
    let e = cpu.enumeration().clone();
    let mut checked = 0;
    let saves = [
        (Insn::Xsave, true, false),
        (Insn::Xsaveopt, e.xsaveopt(), false),
        (Insn::Xsavec, e.xsavec(), true),
    ];
    // Every XCR0 component beyond the legacy ones, alone with x87 and SSE.
    for i in xcr0.indices().filter(|&i| i >= 2) {
        let rfbm = XFeatures::LEGACY | XFeatures::from_index(i).unwrap();
        for (insn, have, compacted) in saves {
            let needed = if compacted {
                e.compacted_size(rfbm)
            } else {
                e.standard_size(rfbm)
            } as usize;
            let mut a = Area::new(needed + 64, CANARY);
            if !have {
                assert_eq!(cpu.save(insn, a.bytes_mut(), rfbm), Err(Fault::Ud));
                continue;
            }
            // One byte short: refused, and not one byte written anywhere.
            let r = cpu.save(insn, &mut a.bytes_mut()[..needed - 1], rfbm);
            assert_eq!(r, Err(Fault::Gp), "{insn:?} rfbm {rfbm:?}: short area");
            assert!(
                a.bytes().iter().all(|&b| b == CANARY),
                "{insn:?} rfbm {rfbm:?}: a refused save wrote"
            );
            // Exactly long enough: runs, and the bytes past the slice stay.
            let r = cpu.save(insn, &mut a.bytes_mut()[..needed], rfbm);
            assert_eq!(r, Ok(()), "{insn:?} rfbm {rfbm:?}: exact area");
            assert!(
                a.bytes()[needed..].iter().all(|&b| b == CANARY),
                "{insn:?} rfbm {rfbm:?}: wrote past the slice"
            );
            checked += 1;
        }
    }
    // The measured overflow, where AVX is in XCR0.
    if xcr0.contains(XFeatures::AVX) {
        let mut a = Area::new(4096, CANARY);
        let r = cpu.save(
            Insn::Xsave,
            &mut a.bytes_mut()[..576],
            XFeatures::LEGACY | XFeatures::AVX,
        );
        assert_eq!(r, Err(Fault::Gp));
        assert!(a.bytes()[576..].iter().all(|&b| b == CANARY));
        checked += 1;
    } else {
        loud!("SKIP cpu_unit: AVX not in XCR0: the 576-byte AVX save case not run");
    }
    assert!(checked > 0);
    loud!(
        "cpu_unit: {checked} short/exact area checks on XCR0 {:#x}",
        xcr0.bits()
    );
}

#[test]
fn restores_read_no_more_than_the_header_allows() {
    let Some(mut cpu) = unit() else { return };
    let xcr0 = read_xcr0().expect("XSAVE enabled (the unit was built)");
    let e = cpu.enumeration().clone();
    // A standard image whose XSTATE_BV names every XCR0 component, cut off
    // before its last one: refused before XRSTOR reads past the slice.
    let full = e.standard_size(xcr0) as usize;
    let mut a = Area::new(full, 0);
    a.bytes_mut()[..2].copy_from_slice(&0x037fu16.to_le_bytes());
    a.bytes_mut()[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    put_u64(a.bytes_mut(), XSTATE_BV, xcr0.bits() & !(1 << 18));
    let top = xcr0.bits() & !(1 << 18);
    let need = e.standard_size(XFeatures::from_bits_retain(top)) as usize;
    assert_eq!(
        cpu.restore(Insn::Xrstor, &a.bytes()[..need - 1], xcr0),
        Err(Fault::Gp)
    );
    // The same image with XSTATE_BV = 0 needs only the legacy region and header.
    put_u64(a.bytes_mut(), XSTATE_BV, 0);
    assert_eq!(cpu.restore(Insn::Xrstor, &a.bytes()[..576], xcr0), Ok(()));
    // A compacted header is read by XCOMP_BV, whatever RFBM says.
    if e.xsavec() {
        put_u64(a.bytes_mut(), XCOMP_BV, (1 << 63) | top);
        let need = e.compacted_size(XFeatures::from_bits_retain(top)) as usize;
        assert_eq!(
            cpu.restore(Insn::Xrstor, &a.bytes()[..need - 1], XFeatures::LEGACY),
            Err(Fault::Gp)
        );
        assert_eq!(
            cpu.restore(Insn::Xrstor, &a.bytes()[..need], XFeatures::LEGACY),
            Ok(())
        );
    } else {
        loud!("SKIP cpu_unit: no XSAVEC: compacted restore bounds not run");
    }
    // Supervisor instructions from a user unit: refused, never executed.
    assert_eq!(cpu.save(Insn::Xsaves, a.bytes_mut(), xcr0), Err(Fault::Gp));
    assert_eq!(cpu.restore(Insn::Xrstors, a.bytes(), xcr0), Err(Fault::Gp));
    // Misaligned: refused.
    let mut b = Area::new(full + 64, 0);
    assert_eq!(
        cpu.save(Insn::Xsave, &mut b.bytes_mut()[16..16 + full], xcr0),
        Err(Fault::Gp)
    );
}
