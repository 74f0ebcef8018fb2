//! Issue 12, item 2: a guest's IA32_XFD and its fpstate. A guest fpstate is
//! restored with the guest's XFD in force, and XRSTOR(S) raises #NM for live
//! state of an armed component (SDM vol. 1 13.14). Linux's January 2026 fix
//! ("x86/fpu: Clear XSTATE_BV[i] in guest XSAVE state whenever XFD[i]=1")
//! makes KVM clear XSTATE_BV[i] on KVM_SET_XSAVE and on guest XFD writes;
//! `uabi::import_guest` and `GuestXsave::set_xfd` do the same.
//!
//! The reference is the model (`XsaveMachine` raises `Fault::Nm` exactly where
//! the SDM says), fed every buffer KVM would accept for a guest with XFD armed:
//! every XSTATE_BV the guest may use, under every XFD value it may write,
//! exhaustively, then proptest over random bytes, headers and XFD values.
//! The control restores the same accepted buffers imported without the
//! clearing: they must #NM exactly where live state meets an armed bit.

#[allow(unused_macros)]
#[path = "testkit/mod.rs"]
mod testkit;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use testkit::{MXCSR, Rng, XSTATE_BV, dumps, loud, mutate_header, put_u32, put_u64};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidSource, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, FpstateError, Mode, Owner};
use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
use xstate::insn::Fault;
use xstate::model::{Quirks, XsaveMachine};
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi::{UserAbi, import_abi, import_guest};

/// One XFD host: its configs (MXCSR_MASK the model's), the guest (every user
/// component the guest permission set allows, after ARCH_REQ_XCOMP_GUEST_PERM
/// for every dynamic one), a guest fpstate grown for them, KVM's ABI.
struct Host {
    name: String,
    cpu: RecordedCpuid,
    e: Enumeration,
    cfg: Configs,
    guest: GuestXsave,
    fp: Fpstate<BoxedArea>,
    abi: UserAbi,
}

fn xfd_hosts() -> Vec<Host> {
    let mut out = Vec::new();
    for (name, cpu) in dumps() {
        let Ok(e) = Enumeration::from_cpuid(cpu) else {
            continue;
        };
        if !e.xfd()
            || !e
                .supported()
                .indices()
                .any(|i| e.component(i).is_some_and(|c| c.xfd))
        {
            continue;
        }
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        let mut perms = ProcessPerms::new(&cfg);
        for i in cfg.policy().dynamic.indices() {
            perms
                .request(&cfg, PermKind::Guest, i.into(), |_| true)
                .unwrap();
        }
        let gperm = perms.get(PermKind::Guest);
        let xcr0_allowed = gperm.features & e.xcr0_supported();
        let guest = GuestXsave::new(
            &e,
            gperm,
            xcr0_allowed,
            XFeatures::empty(),
            XsaveFlags::of(&e),
        )
        .unwrap();
        let fp = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
        let first_dynamic = cfg.policy().dynamic.indices().next().unwrap();
        let fp = fp.grow_boxed(&cfg, &perms, first_dynamic).unwrap();
        assert!(fp.info().user_features.contains(xcr0_allowed), "{name}");
        let uabi_size = (e.standard_size(xcr0_allowed) as usize).max(4096);
        let abi = UserAbi::Kvm {
            supported: xcr0_allowed,
            uabi_size,
        };
        out.push(Host {
            name: name.clone(),
            cpu: cpu.clone(),
            e,
            cfg,
            guest,
            fp,
            abi,
        });
    }
    out
}

fn uabi_size(h: &Host) -> usize {
    match h.abi {
        UserAbi::Kvm { uabi_size, .. } => uabi_size,
        _ => unreachable!(),
    }
}

/// A KVM_SET_XSAVE buffer for `xstate_bv`: random legacy region with a valid
/// MXCSR, random bytes for every component at its standard offset (read off
/// the raw dump), zero header but XSTATE_BV.
fn buffer(h: &Host, xstate_bv: u64, rng: &mut Rng) -> Vec<u8> {
    let mut b = vec![0u8; uabi_size(h)];
    rng.fill(&mut b[..512]);
    put_u32(&mut b, MXCSR, rng.next() as u32 & h.cfg.mxcsr_mask());
    for i in testkit::bits(xstate_bv).filter(|&i| i >= 2) {
        let r = h.cpu.cpuid(0xd, i);
        rng.fill(&mut b[r.ebx as usize..(r.ebx + r.eax) as usize]);
    }
    b[XSTATE_BV..576].fill(0);
    put_u64(&mut b, XSTATE_BV, xstate_bv);
    b
}

/// A model of `h`'s CPU with `xfd` armed.
fn model(h: &Host, xfd: XFeatures) -> XsaveMachine {
    // Every dump with XFD is of an AMX CPU, which only Intel makes: a dump
    // without leaf 0 gets Intel's quirks by that reasoning, not by a default.
    let quirks = Quirks::for_cpu(&h.cpu).unwrap_or(Quirks::INTEL);
    let mut m = XsaveMachine::new(&h.e, quirks);
    m.set_xfd(xfd).unwrap();
    m
}

#[derive(Default)]
struct Counts {
    buffers: AtomicU64,
    accepted: AtomicU64,
    restored: AtomicU64,
    cleared: AtomicU64,
    control_nm: AtomicU64,
    refused_xfd: AtomicU64,
}

/// Import `buf` for a guest with `xfd` armed; if KVM would accept it, restore
/// it on the model with `xfd` armed: no fault at all. The control (the same
/// buffer through the plain import) faults with #NM exactly when live state
/// meets an armed bit.
fn check_one(h: &Host, buf: &[u8], xfd: XFeatures, c: &Counts) -> Result<(), TestCaseError> {
    c.buffers.fetch_add(1, Relaxed);
    let mut fp = clone_fp(h);
    let got = import_guest(&h.cfg, &mut fp, buf, h.abi, xfd);
    let mut plain = clone_fp(h);
    let plain_got = import_abi(&h.cfg, &mut plain, buf, h.abi);
    // The XFD import refuses exactly what the plain one refuses.
    prop_assert_eq!(got.is_ok(), plain_got.is_ok(), "{}", h.name);
    let Ok(live) = got else {
        prop_assert_eq!(fp.area(), h.fp.area(), "{}: refused import wrote", h.name);
        return Ok(());
    };
    c.accepted.fetch_add(1, Relaxed);
    let taken = plain_got.unwrap();
    prop_assert_eq!(live, taken - xfd);
    prop_assert!(
        !fp.xstate_bv().intersects(xfd),
        "{}: armed state left live",
        h.name
    );
    if taken.intersects(xfd) {
        c.cleared.fetch_add(1, Relaxed);
    }
    let mut m = model(h, xfd);
    let r = fp.restore(&mut m, &h.cfg, Mode::Supervisor);
    prop_assert_eq!(
        r,
        Ok(()),
        "{}: XSTATE_BV {:#x} XFD {:#x}",
        h.name,
        taken.bits(),
        xfd.bits()
    );
    prop_assert!(!m.xinuse().intersects(xfd));
    c.restored.fetch_add(1, Relaxed);
    let mut m = model(h, xfd);
    let control = plain.restore(&mut m, &h.cfg, Mode::Supervisor);
    if taken.intersects(xfd) {
        prop_assert_eq!(control, Err(FpstateError::Fault(Fault::Nm)), "{}", h.name);
        c.control_nm.fetch_add(1, Relaxed);
    } else {
        prop_assert_eq!(control, Ok(()), "{}", h.name);
    }
    Ok(())
}

fn clone_fp(h: &Host) -> Fpstate<BoxedArea> {
    let mut fp = Fpstate::new_boxed(&h.cfg, Owner::Guest).unwrap();
    let mut perms = ProcessPerms::new(&h.cfg);
    for i in h.cfg.policy().dynamic.indices() {
        perms
            .request(&h.cfg, PermKind::Guest, i.into(), |_| true)
            .unwrap();
    }
    let first = h.cfg.policy().dynamic.indices().next().unwrap();
    fp = fp.grow_boxed(&h.cfg, &perms, first).unwrap();
    fp
}

/// Every subset of `mask`.
fn subsets(mask: u64) -> impl Iterator<Item = u64> {
    let mut next = Some(mask);
    std::iter::from_fn(move || {
        let s = next?;
        next = if s == 0 { None } else { Some((s - 1) & mask) };
        Some(s)
    })
}

fn hosts_or_skip() -> Option<Vec<Host>> {
    let hosts = xfd_hosts();
    if hosts.is_empty() {
        loud!("SKIP guest_xfd: no dump in layouts/ enumerates XFD");
        return None;
    }
    Some(hosts)
}

/// Every XSTATE_BV a guest may hand KVM under every XFD value it may write.
#[test]
fn every_guest_buffer_restores_under_armed_xfd_without_nm() {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let c = Counts::default();
    let mut rng = Rng(0x1212_2026);
    for h in &hosts {
        let allowed = h.guest.xcr0_allowed().bits();
        for xfd in subsets(h.guest.xfd_allowed().bits()) {
            let xfd = XFeatures::from_bits_retain(xfd);
            for bv in subsets(allowed) {
                let buf = buffer(h, bv, &mut rng);
                check_one(h, &buf, xfd, &c).unwrap();
            }
        }
    }
    let n = |a: &AtomicU64| a.load(Relaxed);
    assert_eq!(
        n(&c.accepted),
        n(&c.buffers),
        "a well-formed guest buffer was refused"
    );
    assert!(n(&c.control_nm) > 0);
    loud!(
        "guest xfd exhaustive: {} hosts, {} buffers, {} accepted, {} restored under armed XFD with no #NM ({} had armed state cleared; without the clearing {} #NM)",
        hosts.len(),
        n(&c.buffers),
        n(&c.accepted),
        n(&c.restored),
        n(&c.cleared),
        n(&c.control_nm)
    );
}

/// Random bytes, mutated headers and any 64-bit XFD value: what the guest's
/// WRMSR may not set is refused (#GP), everything KVM accepts restores.
#[test]
fn random_buffers_and_xfd_values_never_nm() {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let c = Counts::default();
    let mut runner = TestRunner::new(Config {
        cases: 4000,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0usize..64, any::<u64>(), any::<u64>(), any::<u64>(), 0u8..4);
    runner
        .run(&strategy, |(pick, seed, bv, xfd_pick, mode)| {
            let h = &hosts[pick % hosts.len()];
            let mut rng = Rng(seed | 1);
            let mut g = h.guest.clone();
            let allowed = g.xfd_allowed();
            // Mostly values the guest may write, sometimes anything.
            let xfd = if mode == 0 {
                XFeatures::from_bits_retain(xfd_pick)
            } else {
                XFeatures::from_bits_retain(xfd_pick) & allowed
            };
            let mut fp = clone_fp(h);
            match g.set_xfd(xfd, &mut fp) {
                Err(e) => {
                    prop_assert!(!allowed.contains(xfd));
                    prop_assert_eq!(
                        e,
                        GuestError::XfdNotAllowed {
                            value: xfd.bits(),
                            allowed: allowed.bits()
                        }
                    );
                    prop_assert_eq!(g.xfd(), XFeatures::empty());
                    c.refused_xfd.fetch_add(1, Relaxed);
                    return Ok(());
                }
                Ok(cleared) => prop_assert_eq!(cleared, XFeatures::empty()),
            }
            let mut buf = buffer(h, bv & g.xcr0_allowed().bits(), &mut rng);
            if mode == 3 {
                mutate_header(&mut rng, &mut buf);
            }
            if mode == 2 {
                let len = rng.below(buf.len() as u64 + 64) as usize;
                buf.resize(len, 0);
            }
            check_one(h, &buf, g.xfd(), &c)
        })
        .unwrap();
    let n = |a: &AtomicU64| a.load(Relaxed);
    assert!(n(&c.accepted) > 0 && n(&c.accepted) < n(&c.buffers));
    assert!(n(&c.cleared) > 0 && n(&c.refused_xfd) > 0);
    loud!(
        "guest xfd random: {} buffers, {} accepted, {} restored under armed XFD with no #NM ({} cleared; control {} #NM); {} XFD writes refused (#GP)",
        n(&c.buffers),
        n(&c.accepted),
        n(&c.restored),
        n(&c.cleared),
        n(&c.control_nm),
        n(&c.refused_xfd)
    );
}

/// An XFD write on a saved guest fpstate holding live state of the component
/// (the guest used AMX, was scheduled out, then armed XFD, or the VMM restored
/// XFD after KVM_SET_XSAVE): the state is dropped from XSTATE_BV and the
/// restore under the new XFD does not #NM; without the clearing it does.
#[test]
fn xfd_write_clears_saved_live_state() {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let mut rng = Rng(0x5eed);
    let mut checked = 0;
    for h in &hosts {
        let allowed = h.guest.xcr0_allowed().bits();
        for bv in subsets(allowed) {
            for xfd in subsets(h.guest.xfd_allowed().bits()) {
                let xfd = XFeatures::from_bits_retain(xfd);
                let buf = buffer(h, bv, &mut rng);
                let mut fp = clone_fp(h);
                let taken = import_abi(&h.cfg, &mut fp, &buf, h.abi).unwrap();
                let before = fp.xstate_bv();
                let mut g = h.guest.clone();
                let cleared = g.set_xfd(xfd, &mut fp).unwrap();
                assert_eq!(cleared, taken & xfd, "{}", h.name);
                assert_eq!(fp.xstate_bv(), before - xfd);
                let mut m = model(h, xfd);
                assert_eq!(fp.restore(&mut m, &h.cfg, Mode::Supervisor), Ok(()));
                checked += 1;
            }
        }
    }
    loud!("guest xfd writes: {checked} saved fpstates armed and restored with no #NM");
}
