//! The lesser dynamic xstate, proven on the model (ring 0 cannot be reached from
//! user space, the model can): random interleavings of host tasks and guests on
//! one modelled CPU, with fpstates managed by the crate exactly as a kernel
//! would (XSAVES/XRSTORS through `swap`, XFD set per fpstate before the restore,
//! AMX growth on the first-use #NM). Guests write CET_S; tasks write user state
//! and take AMX. After every step:
//! - a running host task sees CET_S in its init state (registers all zero and
//!   not in use), whatever any guest wrote;
//! - no host fpstate holds CET_S: XCOMP_BV\[12\] = XSTATE_BV\[12\] = 0 and its
//!   size is the compacted size of its own features;
//! - a guest fpstate is exactly the compacted size of its host features | CET_S,
//!   and a guest gets back the CET_S value it wrote.
//!
//! Run over every dump in `layouts/` whose CPU has CET_S in IA32_XSS: on most the
//! guest pays 24 bytes, on Sapphire/Emerald/Granite Rapids nothing (CET_S fits in
//! the padding before the 64-byte aligned AMX TILECFG); both kinds are asserted.

use std::sync::OnceLock;

use proptest::prelude::*;
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::RecordedCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, Mode, Owner, swap};
use xstate::insn::Fault;
use xstate::model::{Quirks, XsaveMachine};
use xstate::perm::{PermKind, ProcessPerms};

mod testkit;
use testkit::cmp_size_raw;
use testkit::loud;

const CET_S: u32 = 12;

struct Cpu {
    name: &'static str,
    /// The dump itself: the independent reference for sizes.
    raw: &'static RecordedCpuid,
    e: Enumeration,
    cfg: Configs,
}

/// Every dump whose CPU has CET_S in IA32_XSS, enumerated once.
fn cet_s_cpus() -> &'static [Cpu] {
    static CPUS: OnceLock<Vec<Cpu>> = OnceLock::new();
    CPUS.get_or_init(|| {
        testkit::dumps()
            .iter()
            .filter_map(|(name, raw)| {
                let e = Enumeration::from_cpuid(raw).unwrap();
                if !e.xss_supported().contains(XFeatures::CET_S) {
                    return None;
                }
                let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
                Some(Cpu { name, raw, e, cfg })
            })
            .collect()
    })
}

/// The compacted size of `mask` from the dump's raw CPUID (SDM rule).
fn raw_size(cpu: &Cpu, mask: XFeatures) -> u32 {
    cmp_size_raw(cpu.raw, mask.bits())
}

#[derive(Clone, Debug)]
enum Action {
    /// Switch to owner k (0, 1: host tasks; 2, 3: guests).
    Run(usize),
    /// The running owner writes `byte` into component `index` (guests may write
    /// CET_S; tasks only user components). Writing a dynamic component with XFD
    /// armed is the first-use #NM: the kernel grows the fpstate and retries.
    Write(u32, u8),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0usize..4).prop_map(Action::Run),
        (
            prop::sample::select(vec![0u32, 1, 2, 5, 6, 7, 9, 11, 12, 17, 18]),
            1u8..=255
        )
            .prop_map(|(i, b)| Action::Write(i, b)),
    ]
}

struct Slot {
    fp: Fpstate<BoxedArea>,
    guest: bool,
    /// The CET_S byte this guest last wrote (0: none).
    cet_s: u8,
}

fn check_invariants(cpu: &Cpu, owners: &[Slot], running: usize, m: &XsaveMachine) {
    let (cfg, name) = (&cpu.cfg, cpu.name);
    for (k, o) in owners.iter().enumerate() {
        let info = o.fp.info();
        if o.guest {
            let host_part = info.features - XFeatures::CET_S;
            assert!(
                info.features.contains(XFeatures::CET_S),
                "{name}: guest {k}"
            );
            assert!(
                cfg.kernel().max_features.contains(host_part),
                "{name}: guest {k}"
            );
            assert_eq!(
                info.size,
                raw_size(cpu, host_part | XFeatures::CET_S),
                "{name}: guest {k} size"
            );
        } else {
            assert!(
                !info.features.contains(XFeatures::CET_S),
                "{name}: task {k}"
            );
            assert_eq!(
                o.fp.xcomp_bv() & (1 << CET_S),
                0,
                "{name}: task {k} XCOMP_BV"
            );
            assert!(
                !o.fp.xstate_bv().contains(XFeatures::CET_S),
                "{name}: task {k}"
            );
            assert_eq!(info.size, raw_size(cpu, info.features), "{name}: task {k}");
            assert!(info.size <= cfg.kernel().max_size, "{name}: task {k}");
        }
    }
    let cur = &owners[running];
    let cet = m.reg(CET_S).unwrap();
    if cur.guest {
        assert!(
            cet.iter().all(|&b| b == cur.cet_s),
            "{name}: guest {running} lost its CET_S"
        );
    } else {
        assert!(
            cet.iter().all(|&b| b == 0) && !m.xinuse().contains(XFeatures::CET_S),
            "{name}: host task {running} sees a guest's CET_S"
        );
    }
}

fn run(cpu: &Cpu, task_amx: bool, actions: &[Action]) {
    let (e, cfg) = (&cpu.e, &cpu.cfg);
    let mut m = XsaveMachine::new(e, Quirks::INTEL);
    m.set_xcr0(cfg.xcr0()).unwrap();
    m.set_xss(cfg.xss() & e.xss_supported()).unwrap();
    let mut perms = ProcessPerms::new(cfg);
    // A hypervisor asks for the guest AMX permission before its first vCPU.
    let amx = cfg.policy().dynamic.contains(XFeatures::XTILE_DATA);
    if amx {
        perms.request(cfg, PermKind::Guest, 18, |_| true).unwrap();
    }
    // Some processes have asked for AMX for their tasks (ARCH_REQ_XCOMP_PERM);
    // the others get SIGILL on first use.
    if amx && task_amx {
        perms.request(cfg, PermKind::Task, 18, |_| true).unwrap();
    }
    let mut owners: Vec<Slot> = (0..4)
        .map(|k| {
            let guest = k >= 2;
            let owner = if guest { Owner::Guest } else { Owner::Host };
            Slot {
                fp: Fpstate::new_boxed(cfg, owner).unwrap(),
                guest,
                cet_s: 0,
            }
        })
        .collect();
    perms.lock_guest();
    let mut running = 0;
    m.set_xfd(owners[0].fp.info().xfd & cfg.policy().dynamic)
        .unwrap();
    owners[0].fp.restore(&mut m, cfg, Mode::Supervisor).unwrap();
    check_invariants(cpu, &owners, running, &m);

    for a in actions {
        match *a {
            Action::Run(k) if k != running => {
                let (a, b) = if running < k {
                    let (l, r) = owners.split_at_mut(k);
                    (&mut l[running], &r[0])
                } else {
                    let (l, r) = owners.split_at_mut(running);
                    (&mut r[0], &l[k])
                };
                if a.fp.info().xfd == b.fp.info().xfd {
                    swap(&mut m, cfg, Mode::Supervisor, &mut a.fp, &b.fp).unwrap();
                } else {
                    // Save with the outgoing XFD still armed, then arm the
                    // incoming fpstate's XFD before its XRSTORS (Linux:
                    // xfd_update_state in restore_fpregs_from_fpstate).
                    a.fp.save(&mut m, cfg, Mode::Supervisor).unwrap();
                    m.set_xfd(b.fp.info().xfd).unwrap();
                    b.fp.restore(&mut m, cfg, Mode::Supervisor).unwrap();
                }
                running = k;
            }
            Action::Run(_) => {}
            Action::Write(i, byte) => {
                let cur_guest = owners[running].guest;
                if i == CET_S && !cur_guest {
                    // A host task cannot write CET_S (it is not in its fpstate;
                    // the kernel's own shadow stack is out of scope).
                    continue;
                }
                if !(cfg.xcr0() | cfg.xss()).has_index(i) {
                    continue;
                }
                let len = m.reg(i).map_or(0, <[u8]>::len);
                let data = vec![byte; len];
                match m.write_reg(i, 0, &data) {
                    Ok(()) => {}
                    Err(Fault::Nm) => {
                        // First use of an XFD-armed component: grow or refuse.
                        let o = &mut owners[running];
                        o.fp.save(&mut m, cfg, Mode::Supervisor).unwrap();
                        match o.fp.grow_boxed(cfg, &perms, i) {
                            Ok(grown) => {
                                o.fp = grown;
                                m.set_xfd(o.fp.info().xfd).unwrap();
                                o.fp.restore(&mut m, cfg, Mode::Supervisor).unwrap();
                                m.write_reg(i, 0, &data).unwrap();
                            }
                            Err(_) => {
                                // No permission: the kernel sends SIGILL; the
                                // state is as it was.
                                o.fp.restore(&mut m, cfg, Mode::Supervisor).unwrap();
                                check_invariants(cpu, &owners, running, &m);
                                continue;
                            }
                        }
                    }
                    Err(f) => panic!("{}: write {i}: {f:?}", cpu.name),
                }
                if i == CET_S {
                    owners[running].cet_s = byte;
                }
            }
        }
        check_invariants(cpu, &owners, running, &m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_guest_cet_s_reaches_a_host_task(
        cpu_pick in any::<prop::sample::Index>(),
        grant_amx in any::<bool>(),
        actions in prop::collection::vec(action(), 1..80),
    ) {
        let cpus = cet_s_cpus();
        let cpu = &cpus[cpu_pick.index(cpus.len())];
        run(cpu, grant_amx, &actions);
    }
}

#[test]
fn both_kinds_of_cet_s_cpus_are_covered() {
    let cpus = cet_s_cpus();
    let mut free = 0;
    let mut paid = 0;
    for c in cpus {
        let extra = c.cfg.guest().default_size - c.cfg.kernel().default_size;
        let kernel = c.cfg.kernel().default_features;
        let expected = raw_size(c, kernel | XFeatures::CET_S) - raw_size(c, kernel);
        assert_eq!(extra, expected, "{}", c.name);
        match extra {
            0 => free += 1,
            24 => paid += 1,
            x => panic!("{}: CET_S costs a guest {x} bytes", c.name),
        }
        loud!("{}: guest fpstate +{extra} bytes for CET_S", c.name);
        // Every CPU runs one long fixed interleaving as well.
        let mut acts = Vec::new();
        for r in 0..40u8 {
            acts.push(Action::Run(usize::from(r % 4)));
            acts.push(Action::Write(CET_S, r | 1));
            acts.push(Action::Write(18, r | 1));
            acts.push(Action::Write(2, r | 1));
        }
        run(c, true, &acts);
        run(c, false, &acts);
    }
    loud!(
        "lesser dynamic: {} CET_S CPUs: {paid} pay 24 bytes per guest, {free} pay nothing",
        cpus.len()
    );
    assert!(paid > 0 && free > 0, "need both kinds of dump");
}
