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

#[test]
fn bind_refuses_what_the_checked_calls_refuse() {
    let Some(cpu) = unit() else { return };
    let xcr0 = read_xcr0().expect("XSAVE enabled (the unit was built)");
    let e = cpu.enumeration().clone();
    let full = e.standard_size(xcr0) as usize;
    let mut a = Area::new(full + 64, 0);
    // Short for the save: one byte under the standard size of the RFBM.
    let r = cpu.bind(
        &mut a.bytes_mut()[..full - 1],
        Insn::Xsave,
        xcr0,
        Insn::Xrstor,
        xcr0,
    );
    assert_eq!(r.err(), Some(Fault::Gp));
    // Misaligned.
    let r = cpu.bind(
        &mut a.bytes_mut()[16..16 + full],
        Insn::Xsave,
        xcr0,
        Insn::Xrstor,
        xcr0,
    );
    assert_eq!(r.err(), Some(Fault::Gp));
    // Instructions of the wrong kind, and supervisor ones on a user unit.
    let b = a.bytes_mut();
    assert_eq!(
        cpu.bind(b, Insn::Xrstor, xcr0, Insn::Xrstor, xcr0).err(),
        Some(Fault::Ud)
    );
    let b = a.bytes_mut();
    assert_eq!(
        cpu.bind(b, Insn::Xsave, xcr0, Insn::Xsave, xcr0).err(),
        Some(Fault::Ud)
    );
    let b = a.bytes_mut();
    assert_eq!(
        cpu.bind(b, Insn::Xsaves, xcr0, Insn::Xrstor, xcr0).err(),
        Some(Fault::Gp)
    );
    let b = a.bytes_mut();
    assert_eq!(
        cpu.bind(b, Insn::Xsave, xcr0, Insn::Xrstors, xcr0).err(),
        Some(Fault::Gp)
    );
    // A header that makes the first restore read past the area: a save of
    // x87 and SSE fits in 576 bytes, but the compacted XCOMP_BV already there
    // names every XCR0 component.
    if e.xsavec() {
        let legacy = XFeatures::LEGACY;
        put_u64(a.bytes_mut(), XCOMP_BV, (1 << 63) | xcr0.bits());
        let need = e.compacted_size(xcr0) as usize;
        let r = cpu.bind(
            &mut a.bytes_mut()[..need - 1],
            Insn::Xsavec,
            legacy,
            Insn::Xrstor,
            legacy,
        );
        assert_eq!(r.err(), Some(Fault::Gp));
        let r = cpu.bind(
            &mut a.bytes_mut()[..need],
            Insn::Xsavec,
            legacy,
            Insn::Xrstor,
            legacy,
        );
        assert!(r.is_ok());
    } else {
        loud!("SKIP cpu_unit: no XSAVEC: bind's header bound not run");
    }
}

#[test]
fn a_bound_area_saves_and_restores_within_its_slice() {
    let Some(cpu) = unit() else { return };
    let xcr0 = read_xcr0().expect("XSAVE enabled (the unit was built)");
    let e = cpu.enumeration().clone();
    let saves = [
        (Insn::Xsave, true, false),
        (Insn::Xsaveopt, e.xsaveopt(), false),
        (Insn::Xsavec, e.xsavec(), true),
    ];
    for (insn, have, compacted) in saves {
        if !have {
            loud!("SKIP cpu_unit: {insn:?} not enumerated");
            continue;
        }
        let needed = if compacted {
            e.compacted_size(xcr0)
        } else {
            e.standard_size(xcr0)
        } as usize;
        let mut a = Area::new(needed + 64, CANARY);
        // The header starts as an init image's: zero bytes 512..576.
        a.bytes_mut()[512..576].fill(0);
        {
            let mut bound = cpu
                .bind(&mut a.bytes_mut()[..needed], insn, xcr0, Insn::Xrstor, xcr0)
                .expect("bind");
            for _ in 0..3 {
                bound.save();
                bound.restore();
            }
            let bv = u64::from_le_bytes(bound.area()[512..520].try_into().unwrap());
            assert_eq!(bv & !xcr0.bits(), 0, "{insn:?}: XSTATE_BV {bv:#x}");
        }
        assert!(
            a.bytes()[needed..].iter().all(|&b| b == CANARY),
            "{insn:?}: wrote past the bound slice"
        );
        if compacted {
            let xcomp = u64::from_le_bytes(a.bytes()[520..528].try_into().unwrap());
            assert_eq!(xcomp, (1 << 63) | xcr0.bits(), "{insn:?}");
        }
    }
}

#[test]
fn a_bound_fpstate_checks_once_what_save_and_restore_check_each_call() {
    use xstate::config::{Configs, Policy};
    use xstate::error::ForeignFpstate;
    use xstate::fpstate::{Fpstate, FpstateError, Mode, Owner};
    let Some(mut cpu) = unit() else { return };
    let e = cpu.enumeration().clone();
    let linux = Policy::linux(&e);
    // Linux's host fpstates hold its supervisor components where the CPU has
    // them (CET_U on a Zen 4): user mode cannot save those, bound or not.
    let host = Configs::new(&e, &linux).expect("configs");
    let mut fp = Fpstate::new_boxed(&host, Owner::Host).expect("fpstate");
    let kernel = fp.info().features & XFeatures::SUPERVISOR;
    if kernel.is_empty() {
        loud!(
            "SKIP cpu_unit: Linux's host fpstates hold no supervisor component here: \
             the user-mode refusal (NeedsSupervisor) not run"
        );
    } else {
        let want = Some(FpstateError::NeedsSupervisor {
            mask: kernel.bits(),
        });
        assert_eq!(fp.bind(&cpu, &host, Mode::User).err(), want);
        assert_eq!(fp.save(&mut cpu, &host, Mode::User).err(), want);
    }
    // The rest in user mode: Linux's user components, none dynamic (no XFD
    // handling in a test process).
    let user = Policy {
        enabled: linux.enabled & XFeatures::USER & !XFeatures::DYNAMIC,
        dynamic: XFeatures::empty(),
        independent: XFeatures::empty(),
        guest_only: XFeatures::empty(),
    };
    let cfg = Configs::new(&e, &user).expect("configs");
    let other = Configs::new(&e, &user).expect("configs");
    let mut fp = Fpstate::new_boxed(&cfg, Owner::Host).expect("fpstate");
    // Another handle: refused before the area is lent.
    assert_eq!(
        fp.bind(&cpu, &other, Mode::User).err(),
        Some(FpstateError::Foreign(ForeignFpstate))
    );
    // Supervisor mode on a user unit: the fault XSAVES would raise here.
    if e.xsaves() {
        assert_eq!(
            fp.bind(&cpu, &cfg, Mode::Supervisor).err(),
            Some(FpstateError::Fault(Fault::Gp))
        );
    }
    // The checked path and the bound one leave the same header.
    fp.save(&mut cpu, &cfg, Mode::User).expect("checked save");
    fp.restore(&mut cpu, &cfg, Mode::User)
        .expect("checked restore");
    let (bv, comp) = (fp.xstate_bv(), fp.xcomp_bv());
    {
        let mut bound = fp.bind(&cpu, &cfg, Mode::User).expect("bind");
        bound.save();
        bound.restore();
        bound.save();
    }
    assert_eq!(fp.xcomp_bv(), comp);
    assert_eq!(bv & !fp.info().features, XFeatures::empty());
    assert_eq!(fp.xstate_bv() & !fp.info().features, XFeatures::empty());
}
