//! The model's ring-0 and XFD rules, which user space cannot check on silicon
//! (`tests/model_vs_hw.rs` proves the user-mode instructions against the CPU).

use xstate::XFeatures;
use xstate::enumerate::Enumeration;
use xstate::insn::{Fault, Insn, XsaveUnit};
use xstate::layout::Layout;
use xstate::model::{Quirks, XsaveMachine};

mod testkit;
use testkit::{MXCSR, XCOMP_BV, XSTATE_BV, get_u64, load, put_u32, put_u64};

#[repr(C, align(64))]
struct Area([u8; 16384]);

fn area() -> Box<Area> {
    Box::new(Area([0; 16384]))
}

fn zen4() -> Enumeration {
    load("amd-zen4-ryzen-9-7950x.txt").1
}

fn spr() -> Enumeration {
    load("intel-sapphire-rapids-xeon-w9-3475x.txt").1
}

#[test]
fn supervisor_instructions_need_cpl0() {
    let e = zen4();
    let mut m = XsaveMachine::new(&e, Quirks::AMD_ZEN);
    let mut a = area();
    m.set_cpl0(false);
    assert_eq!(
        m.save(Insn::Xsaves, &mut a.0, XFeatures::all()),
        Err(Fault::Gp)
    );
    assert_eq!(
        m.restore(Insn::Xrstors, &a.0, XFeatures::all()),
        Err(Fault::Gp)
    );
    assert_eq!(m.set_xss(XFeatures::empty()), Err(Fault::Gp));
    m.set_cpl0(true);
    assert_eq!(m.save(Insn::Xsaves, &mut a.0, XFeatures::all()), Ok(()));
    assert_eq!(m.restore(Insn::Xrstors, &a.0, XFeatures::all()), Ok(()));
}

#[test]
fn xsaves_puts_cet_s_where_the_compacted_layout_says() {
    let e = zen4();
    let mut m = XsaveMachine::new(&e, Quirks::AMD_ZEN);
    m.write_reg(12, 0, &[0xc5; 24]).unwrap();
    let mut a = area();
    let rfbm = e.supported();
    m.save(Insn::Xsaves, &mut a.0, rfbm).unwrap();
    let l = Layout::compacted(&e, rfbm).unwrap();
    let r = l.range_of(12).unwrap();
    assert!(a.0[r].iter().all(|&b| b == 0xc5));
    assert_eq!(
        get_u64(&a.0, XCOMP_BV),
        xstate::XCOMP_BV_COMPACTED | rfbm.bits()
    );
    assert_eq!(get_u64(&a.0, XSTATE_BV), XFeatures::CET_S.bits());
    // XSAVEC never saves supervisor state, whatever the mask says.
    let mut c = area();
    m.save(Insn::Xsavec, &mut c.0, XFeatures::all()).unwrap();
    assert_eq!(get_u64(&c.0, XCOMP_BV) & XFeatures::CET_S.bits(), 0);
}

#[test]
fn xrstors_of_a_buffer_without_cet_s_inits_it() {
    let e = zen4();
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    m.write_reg(12, 0, &[0x77; 24]).unwrap();
    // A host fpstate: XCOMP_BV without bit 12, XSTATE_BV without bit 12.
    let mut a = area();
    put_u64(&mut a.0, XCOMP_BV, xstate::XCOMP_BV_COMPACTED | 0x7);
    put_u32(&mut a.0, MXCSR, 0x1f80);
    m.restore(Insn::Xrstors, &a.0, e.supported()).unwrap();
    assert!(m.reg(12).unwrap().iter().all(|&b| b == 0));
    assert!(!m.xinuse().contains(XFeatures::CET_S));
    // With RFBM lacking CET_S, the value would have survived: RFBM is the point.
    m.write_reg(12, 0, &[0x77; 24]).unwrap();
    m.restore(Insn::Xrstors, &a.0, e.supported() - XFeatures::CET_S)
        .unwrap();
    assert!(m.reg(12).unwrap().iter().all(|&b| b == 0x77));
}

#[test]
fn header_rules() {
    let e = zen4();
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    let sup = e.supported().bits();
    let compacted = |xstate_bv: u64, xcomp: u64| {
        let mut a = area();
        put_u64(&mut a.0, XSTATE_BV, xstate_bv);
        put_u64(&mut a.0, XCOMP_BV, xcomp);
        put_u32(&mut a.0, MXCSR, 0x1f80);
        a
    };
    let c = xstate::XCOMP_BV_COMPACTED;
    // XRSTORS needs the compacted form.
    assert_eq!(
        m.restore(Insn::Xrstors, &compacted(0, 0).0, XFeatures::all()),
        Err(Fault::Gp)
    );
    // XSTATE_BV must be within XCOMP_BV, even outside RFBM.
    assert_eq!(
        m.restore(Insn::Xrstors, &compacted(0x4, c | 0x3).0, XFeatures::X87),
        Err(Fault::Gp)
    );
    // XCOMP_BV within XCR0 | XSS (XRSTORS) or XCR0 (XRSTOR).
    assert_eq!(
        m.restore(
            Insn::Xrstors,
            &compacted(0, c | 1 << 40).0,
            XFeatures::all()
        ),
        Err(Fault::Gp)
    );
    assert_eq!(
        m.restore(Insn::Xrstor, &compacted(0, c | 1 << 12).0, XFeatures::all()),
        Err(Fault::Gp)
    );
    assert_eq!(
        m.restore(
            Insn::Xrstors,
            &compacted(1 << 12, c | sup).0,
            XFeatures::all()
        ),
        Ok(())
    );
    // Reserved header bytes 16..64 in the compacted form.
    let mut a = compacted(0, c | 0x3);
    a.0[XSTATE_BV + 40] = 1;
    assert_eq!(
        m.restore(Insn::Xrstors, &a.0, XFeatures::all()),
        Err(Fault::Gp)
    );
    // MXCSR is checked only when SSE is loaded from the area (compacted form).
    let mut a = compacted(0, c | 0x3);
    put_u32(&mut a.0, MXCSR, 0xffff_ffff);
    assert_eq!(m.restore(Insn::Xrstors, &a.0, XFeatures::all()), Ok(()));
    put_u64(&mut a.0, XSTATE_BV, 0x2);
    assert_eq!(
        m.restore(Insn::Xrstors, &a.0, XFeatures::all()),
        Err(Fault::Gp)
    );
    // Misalignment.
    let b = area();
    assert_eq!(
        m.restore(Insn::Xrstor, &b.0[8..4104], XFeatures::all()),
        Err(Fault::Gp)
    );
}

#[test]
fn xfd_arms_first_use_and_faults_on_live_restore() {
    let e = spr();
    assert!(e.component(18).unwrap().xfd);
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    assert_eq!(
        m.set_xfd(XFeatures::AVX),
        Err(Fault::Gp),
        "AVX is not XFD-capable"
    );
    m.write_reg(18, 0, &[1; 64]).unwrap();
    let mut a = area();
    m.save(Insn::Xsaves, &mut a.0, e.supported()).unwrap();
    m.set_xfd(XFeatures::XTILE_DATA).unwrap();
    assert_eq!(m.write_reg(18, 0, &[2; 64]), Err(Fault::Nm));
    // Saves treat an armed component as init...
    let mut b = area();
    m.save(Insn::Xsaves, &mut b.0, e.supported()).unwrap();
    assert_eq!(get_u64(&b.0, XSTATE_BV) & XFeatures::XTILE_DATA.bits(), 0);
    // ...loading live state of it is #NM, with nothing loaded (the Intel
    // recording's `xfd-armed-tiledata-live` probe dies of SIGILL)...
    let before = m.clone();
    assert_eq!(
        m.restore(Insn::Xrstors, &a.0, e.supported()),
        Err(Fault::Nm)
    );
    assert_eq!(m.reg(18), before.reg(18));
    assert_eq!(m.xinuse(), before.xinuse());
    // ...and a buffer holding it in init state restores, leaving it init.
    m.restore(Insn::Xrstors, &b.0, e.supported()).unwrap();
    assert!(m.reg(18).unwrap().iter().all(|&x| x == 0));
    assert!(!m.xinuse().has_index(18));
    m.set_xfd(XFeatures::empty()).unwrap();
    m.restore(Insn::Xrstors, &a.0, e.supported()).unwrap();
    assert!(m.reg(18).unwrap()[..64].iter().all(|&x| x == 1));
}

#[test]
fn xsaves_modified_optimization() {
    let e = zen4();
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    let rfbm = e.supported();
    m.write_reg(2, 0, &[9; 16]).unwrap();
    m.write_reg(12, 0, &[3; 24]).unwrap();
    let mut a = area();
    m.save(Insn::Xsaves, &mut a.0, rfbm).unwrap();
    m.restore(Insn::Xrstors, &a.0, rfbm).unwrap();
    let l = Layout::compacted(&e, rfbm).unwrap();
    let (avx, cet) = (l.range_of(2).unwrap(), l.range_of(12).unwrap());
    // Scribble on the buffer: unmodified components are not written back...
    a.0[avx.start] = 0xee;
    a.0[cet.start] = 0xee;
    m.write_reg(12, 0, &[4; 24]).unwrap();
    m.save(Insn::Xsaves, &mut a.0, rfbm).unwrap();
    assert_eq!(a.0[avx.start], 0xee, "AVX unmodified: skipped");
    assert_eq!(a.0[cet.start], 4, "CET_S modified: written");
    // ...but XSAVEC never uses the modified optimization.
    m.save(Insn::Xsavec, &mut a.0, rfbm & m.xcr0()).unwrap();
    assert_eq!(a.0[avx.start], 9);
}

/// An `XsaveUnit` that records which instructions it was asked for and runs
/// them on the model.
struct Recorder {
    m: XsaveMachine,
    used: Vec<Insn>,
}

impl XsaveUnit for Recorder {
    fn save(&mut self, insn: Insn, area: &mut [u8], rfbm: XFeatures) -> Result<(), Fault> {
        self.used.push(insn);
        self.m.save(insn, area, rfbm)
    }
    fn restore(&mut self, insn: Insn, area: &[u8], rfbm: XFeatures) -> Result<(), Fault> {
        self.used.push(insn);
        self.m.restore(insn, area, rfbm)
    }
}

/// On every recorded CPU, an fpstate picks Linux's instruction for each mode
/// the CPU can run (XSAVES; else XSAVEC; else XSAVEOPT; else XSAVE), and the
/// model, which raises #UD for anything CPUID does not enumerate, runs it
/// (Bulldozer has XSAVE but no XSAVEOPT). A user-mode save of an fpstate that
/// holds supervisor state is refused before any instruction runs.
#[test]
fn fpstates_pick_instructions_every_recorded_cpu_has() {
    use xstate::config::{Configs, Policy};
    use xstate::fpstate::{Fpstate, FpstateError, Mode, Owner};
    let (mut ran, mut plain_xsave, mut refused) = (0, 0, 0);
    for (name, cpu) in testkit::dumps() {
        let e = Enumeration::from_cpuid(cpu).unwrap();
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        for owner in [Owner::Host, Owner::Guest] {
            let mut fp = Fpstate::new_boxed(&cfg, owner).unwrap();
            let supervisor_state = !(fp.info().features & cfg.xss()).is_empty();
            let modes: &[Mode] = if e.xsaves() {
                &[Mode::User, Mode::Supervisor]
            } else {
                &[Mode::User]
            };
            for &mode in modes {
                let mut u = Recorder {
                    m: XsaveMachine::new(&e, Quirks::INTEL),
                    used: Vec::new(),
                };
                u.m.set_cpl0(mode == Mode::Supervisor);
                let want_save = match mode {
                    Mode::Supervisor => Insn::Xsaves,
                    _ if e.xsavec() => Insn::Xsavec,
                    _ if e.xsaveopt() => Insn::Xsaveopt,
                    _ => Insn::Xsave,
                };
                let r = fp.save(&mut u, &cfg, mode);
                if mode == Mode::User && supervisor_state {
                    let mask = (fp.info().features & cfg.xss()).bits();
                    assert_eq!(r, Err(FpstateError::NeedsSupervisor { mask }), "{name}");
                    assert_eq!(
                        fp.restore(&mut u, &cfg, mode),
                        Err(FpstateError::NeedsSupervisor { mask }),
                        "{name}"
                    );
                    assert!(u.used.is_empty(), "{name}: an instruction ran");
                    refused += 1;
                    continue;
                }
                assert_eq!(r, Ok(()), "{name}: save in {mode:?}");
                assert_eq!(
                    fp.restore(&mut u, &cfg, mode),
                    Ok(()),
                    "{name}: restore in {mode:?}"
                );
                let want_restore = if mode == Mode::Supervisor {
                    Insn::Xrstors
                } else {
                    Insn::Xrstor
                };
                assert_eq!(u.used, [want_save, want_restore], "{name} {mode:?}");
                ran += 1;
            }
        }
        if !e.xsaveopt() && !e.xsavec() && !e.xsaves() {
            assert!(!cfg.has_xsaveopt());
            plain_xsave += 1;
        }
    }
    assert!(plain_xsave >= 1, "no dump without XSAVEOPT exercised");
    assert!(
        refused >= 1,
        "no user-mode save of supervisor state exercised"
    );
    eprintln!(
        "{ran} save/restore pairs on recorded CPUs, {plain_xsave} CPUs with plain XSAVE, \
         {refused} user-mode saves of supervisor state refused"
    );
}

/// A user-mode switch (XSAVEC/XSAVEOPT/XSAVE out, XRSTOR in) brings back every
/// XCR0 component of the task switched in, on every recorded CPU whose host
/// fpstates hold no supervisor state: nothing of the other task survives.
#[test]
fn user_mode_switch_restores_every_user_component() {
    use xstate::config::{Configs, Policy};
    use xstate::fpstate::{Fpstate, Mode, Owner, swap};
    let mut checked = 0;
    for (name, cpu) in testkit::dumps() {
        let e = Enumeration::from_cpuid(cpu).unwrap();
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        let mut a = Fpstate::new_boxed(&cfg, Owner::Host).unwrap();
        if !(a.info().features & cfg.xss()).is_empty() {
            continue;
        }
        let mut b = Fpstate::new_boxed(&cfg, Owner::Host).unwrap();
        let mut m = XsaveMachine::new(&e, Quirks::INTEL);
        m.set_cpl0(false);
        // Components whose registers hold any byte pattern (x87 and TILECFG
        // normalise what they load; TILEDATA is dynamic, not in host default
        // fpstates).
        let comps: Vec<u32> = (a.info().features & m.xcr0())
            .indices()
            .filter(|&i| i != 0 && i != 17 && i != 18)
            .collect();
        let paint = |m: &mut XsaveMachine, seed: u8| {
            for &i in &comps {
                let len = m.reg(i).unwrap().len();
                let img: Vec<u8> = (0..len)
                    .map(|k| seed ^ (k as u8).wrapping_mul(7) | 1)
                    .collect();
                m.write_reg(i, 0, &img).unwrap();
            }
        };
        paint(&mut m, 0x11);
        let want: Vec<Vec<u8>> = comps.iter().map(|&i| m.reg(i).unwrap().to_vec()).collect();
        a.save(&mut m, &cfg, Mode::User).unwrap();
        paint(&mut m, 0x5c);
        // Task B out, task A in.
        swap(&mut m, &cfg, Mode::User, &mut b, &a).unwrap();
        for (k, &i) in comps.iter().enumerate() {
            assert_eq!(
                m.reg(i).unwrap(),
                &want[k][..],
                "{name}: component {i} after the switch"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} CPUs checked");
    eprintln!("{checked} CPUs: a user-mode switch restores every user component");
}

/// `BoxedArea` allocates whole 64-byte blocks, no more.
#[test]
fn boxed_areas_allocate_whole_blocks() {
    use xstate::fpstate::BoxedArea;
    for (len, blocks) in [(0, 0), (1, 1), (64, 1), (65, 2), (2696, 43), (11008, 172)] {
        let a = BoxedArea::zeroed(len);
        assert_eq!(a.allocated(), blocks * 64, "len {len}");
        assert_eq!(format!("{a:?}"), format!("BoxedArea {{ len: {len} }}"));
    }
}

/// A fresh fpstate holds Linux's init values (FCW 0x037f, MXCSR 0x1f80), and
/// `grow_boxed` allocates exactly the grown size, on every recorded CPU with a
/// dynamic component.
#[test]
fn fresh_and_grown_fpstates() {
    use xstate::config::{Configs, Policy};
    use xstate::fpstate::{Fpstate, Owner};
    use xstate::perm::{PermKind, ProcessPerms};
    let mut grown = 0;
    for (name, cpu) in testkit::dumps() {
        let e = Enumeration::from_cpuid(cpu).unwrap();
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        for owner in [Owner::Host, Owner::Guest] {
            let fp = Fpstate::new_boxed(&cfg, owner).unwrap();
            let a = fp.area();
            assert_eq!(u16::from_le_bytes([a[0], a[1]]), 0x037f, "{name}: FCW");
            assert_eq!(testkit::get_u32(a, MXCSR), 0x1f80, "{name}: MXCSR");
            let Some(i) = cfg.policy().dynamic.indices().next() else {
                continue;
            };
            let mut perms = ProcessPerms::new(&cfg);
            let kind = match owner {
                Owner::Host => PermKind::Task,
                _ => PermKind::Guest,
            };
            perms.request(&cfg, kind, i.into(), |_| true).unwrap();
            let g = fp.grow_boxed(&cfg, &perms, i).unwrap();
            let size = g.info().size as usize;
            assert_eq!(g.area().len(), size);
            assert_eq!(
                g.into_storage().allocated(),
                size.next_multiple_of(64),
                "{name}"
            );
            grown += 1;
        }
    }
    assert!(grown >= 2, "no dynamic component in layouts/");
}
