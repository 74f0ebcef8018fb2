//! Permissions built from what Linux reports (`ARCH_GET_XCOMP_PERM`,
//! `ARCH_GET_XCOMP_GUEST_PERM`) instead of asked for twice, checked against the
//! running kernel; and a guest fpstate grown when the guest's CPUID enables a
//! dynamic component, as KVM grows it on `KVM_SET_CPUID2`.

mod testkit;

use testkit::{load, loud};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{Fpstate, FpstateError, Owner};
use xstate::guest::{GuestXsave, XsaveFlags};
use xstate::perm::{PermError, PermKind, ProcessPerms};

/// `arch_prctl` codes (Linux's `asm/prctl.h`).
const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
const ARCH_GET_XCOMP_GUEST_PERM: libc::c_long = 0x1024;
const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
const ARCH_REQ_XCOMP_GUEST_PERM: libc::c_long = 0x1025;

fn arch_get(code: libc::c_long) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: the kernel writes one u64 through the pointer, which is valid.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, code, &mut v as *mut u64) };
    (r == 0).then_some(v)
}

#[test]
fn sets_from_the_running_kernels_values() {
    // Ask the kernel for every dynamic component it has (this test binary is
    // its own process), so its values carry a granted one where there is one.
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live CPUID");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    for i in cfg.policy().dynamic.indices() {
        for (code, what) in [
            (ARCH_REQ_XCOMP_PERM, "task"),
            (ARCH_REQ_XCOMP_GUEST_PERM, "guest"),
        ] {
            // SAFETY: arch_prctl with an integer argument touches no memory.
            let r = unsafe { libc::syscall(libc::SYS_arch_prctl, code, libc::c_long::from(i)) };
            if r != 0 {
                loud!("SKIP perm_from_linux: the kernel refused {what} permission for {i}");
            }
        }
    }
    if cfg.policy().dynamic.is_empty() {
        loud!("SKIP perm_from_linux: no dynamic component on this CPU: only default sets compared");
    }
    let (Some(task), Some(guest)) = (
        arch_get(ARCH_GET_XCOMP_PERM),
        arch_get(ARCH_GET_XCOMP_GUEST_PERM),
    ) else {
        loud!("SKIP perm_from_linux: ARCH_GET_XCOMP_PERM/GUEST_PERM not answered by this kernel");
        return;
    };
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live CPUID");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let (task, guest) = (
        XFeatures::from_bits_retain(task),
        XFeatures::from_bits_retain(guest),
    );
    let p = ProcessPerms::from_linux(&cfg, task, guest)
        .unwrap_or_else(|err| panic!("the kernel's own values {task:?} / {guest:?}: {err}"));
    let user = cfg.user().max_features;
    assert_eq!(p.reported(PermKind::Task), task);
    assert_eq!(p.reported(PermKind::Guest), guest);
    assert_eq!(p.get(PermKind::Task).features & user, task);
    // The same sets as asking the crate for each dynamic component reported.
    let mut asked = ProcessPerms::new(&cfg);
    for (kind, value) in [(PermKind::Task, task), (PermKind::Guest, guest)] {
        for i in (value & cfg.policy().dynamic).indices() {
            asked.request(&cfg, kind, i.into(), |_| true).unwrap();
        }
    }
    assert_eq!(p, asked);
    // Supervisor components the kernel does not report keep the config's
    // defaults (a guest's CET_S where the CPU has it).
    assert_eq!(
        p.get(PermKind::Guest).features - user,
        cfg.guest().default_features - user
    );
    loud!(
        "perm_from_linux: task {:#x}, guest {:#x} from this kernel; sets equal the crate's requests",
        task.bits(),
        guest.bits()
    );
}

#[test]
fn values_no_kernel_reports_are_refused() {
    let (_, e) = load("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let base = cfg.kernel().default_features & cfg.user().max_features;
    let bad = XFeatures::from_bits_retain(1 << 40);
    assert_eq!(
        ProcessPerms::from_linux(&cfg, base | bad, base),
        Err(PermError::Invalid { index: 40 })
    );
    // MPX is off in Linux's policy on this CPU (no MPX flag): not in the user config.
    assert!(
        !cfg.user()
            .max_features
            .contains(XFeatures::from_bits_retain(1 << 3))
    );
    assert_eq!(
        ProcessPerms::from_linux(&cfg, base, base | XFeatures::from_bits_retain(1 << 3)),
        Err(PermError::Unsupported { index: 3 })
    );
}

#[test]
fn guest_fpstate_grows_when_its_cpuid_enables_amx() {
    let (_, e) = load("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let user = cfg.user().max_features;
    let base = cfg.kernel().default_features & user;
    let perms = ProcessPerms::from_linux(&cfg, base, base | XFeatures::XTILE_DATA).unwrap();
    let fp = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
    let flags = XsaveFlags::of(&e);
    let xss = cfg.guest().default_features & e.xss_supported();
    let amx = GuestXsave::new(&e, perms.get(PermKind::Guest), user, xss, flags).unwrap();
    let no_amx = GuestXsave::new(
        &e,
        perms.get(PermKind::Guest),
        user - XFeatures::XTILE,
        xss,
        flags,
    )
    .unwrap();
    assert_eq!(no_amx.dynamic_to_grow(&cfg, &fp), None);
    assert_eq!(amx.dynamic_to_grow(&cfg, &fp), Some(18));
    let grown = fp.grow_boxed(&cfg, &perms, 18).unwrap();
    assert_eq!(amx.dynamic_to_grow(&cfg, &grown), None);
    assert_eq!(grown.info().size, cfg.guest().max_size);
    // Without the guest permission the growth is refused, as KVM_SET_CPUID2
    // fails without ARCH_REQ_XCOMP_GUEST_PERM.
    let none = ProcessPerms::new(&cfg);
    assert_eq!(
        fp.grow_boxed(&cfg, &none, 18).map(|_| ()),
        Err(FpstateError::NotPermitted { index: 18 })
    );
}
