//! `ProcessPerms::request` against the running kernel: for every index 0..=63,
//! indices past 2^32 (arch_prctl takes an `unsigned long`: 0x1_0000_0012 must not
//! be read as 18) and both kinds (`ARCH_REQ_XCOMP_PERM` for tasks, `ARCH_REQ_XCOMP_GUEST_PERM` for
//! KVM guests), the crate's answer on this CPU's enumeration and `Policy::linux`
//! must be the kernel's: 0, or the same errno.
//!
//! Each kernel request runs in a forked child that exits with the errno, so no
//! permission a request grants reaches this process or another test; the crate
//! starts each request from a fresh `ProcessPerms`, as the child starts from what
//! this process holds (a permission this process inherited, AMX granted to an
//! ancestor, is in both: Linux answers 0 for a component already permitted, and so
//! does the crate). `ARCH_GET_XCOMP_SUPP` is printed beside the crate's user
//! config for the reader.
//! Where `arch_prctl` has no XSTATE options (not x86-64 Linux, or a kernel before
//! 5.16) the test says SKIP.

mod testkit;
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
use testkit::loud;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod linux {
    use xstate::config::{Configs, Policy};
    use xstate::cpuid::LiveCpuid;
    use xstate::enumerate::Enumeration;
    use xstate::perm::{PermKind, ProcessPerms};

    use super::testkit::{ARCH_REQ_XCOMP_GUEST_PERM, ARCH_REQ_XCOMP_PERM, loud};

    /// `ARCH_GET_XCOMP_SUPP` (Linux's `asm/prctl.h`).
    const ARCH_GET_XCOMP_SUPP: libc::c_int = 0x1022;

    /// What `ARCH_GET_XCOMP_SUPP` reports, or the errno.
    fn xcomp_supp() -> Result<u64, i32> {
        let mut supp = 0u64;
        // SAFETY: ARCH_GET_XCOMP_SUPP writes one u64 through the pointer, which
        // points at `supp`, live and writable for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_SUPP,
                &raw mut supp as libc::c_ulong,
            )
        };
        if r == 0 {
            Ok(supp)
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    /// The kernel's answer to one request, made in a forked child: 0 or the errno.
    fn kernel_answer(code: libc::c_int, index: u64) -> i32 {
        // SAFETY: fork has no memory-safety preconditions; the child below calls
        // only async-signal-safe functions (syscall, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: arch_prctl with a request code takes an integer and touches
            // no memory of ours.
            let r = unsafe { libc::syscall(libc::SYS_arch_prctl, code, index as libc::c_ulong) };
            // SAFETY: __errno_location returns this thread's errno, always valid.
            let errno = if r == 0 {
                0
            } else {
                unsafe { *libc::__errno_location() }
            };
            // SAFETY: _exit ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(errno & 0xff) };
        }
        let mut status = 0;
        // SAFETY: `status` is a live, writable int; `pid` is our child.
        let w = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        assert_eq!(w, pid, "waitpid: {}", std::io::Error::last_os_error());
        assert!(
            libc::WIFEXITED(status),
            "child for {index} died: {status:#x}"
        );
        libc::WEXITSTATUS(status)
    }

    pub fn run() {
        let supp = match xcomp_supp() {
            Ok(s) => s,
            Err(errno) => {
                loud!(
                    "\n******** SKIP requests_match_arch_prctl: arch_prctl(ARCH_GET_XCOMP_SUPP) fails with errno {errno}: this kernel has no XSTATE permission interface ********\n"
                );
                return;
            }
        };
        let e = Enumeration::from_cpuid(&LiveCpuid).expect("this CPU's leaf 0xD");
        let cfg = Configs::new(&e, &Policy::linux(&e)).expect("Linux policy");
        loud!(
            "ARCH_GET_XCOMP_SUPP {supp:#x}, crate user config {:#x}",
            cfg.user().max_features.bits()
        );
        // Every component number, then numbers whose low 32 bits are one
        // (TILEDATA's 18 among them) at the syscall's full width.
        let wide = [
            1 << 32,
            0x1_0000_0012,
            0x1_0000_0001,
            0xffff_ffff_0000_0012,
            1 << 63 | 18,
            u64::MAX,
        ];
        let indices: Vec<u64> = (0..64).chain(wide).collect();
        let mut agree = 0;
        let mut disagree = Vec::new();
        let mut granted = 0;
        for (kind, code, name) in [
            (PermKind::Task, ARCH_REQ_XCOMP_PERM, "ARCH_REQ_XCOMP_PERM"),
            (
                PermKind::Guest,
                ARCH_REQ_XCOMP_GUEST_PERM,
                "ARCH_REQ_XCOMP_GUEST_PERM",
            ),
        ] {
            for &index in &indices {
                let kernel = kernel_answer(code, index);
                let ours = match ProcessPerms::new(&cfg).request(&cfg, kind, index, |_| true) {
                    Ok(_) => 0,
                    Err(err) => err.errno(),
                };
                if ours == 0 {
                    granted += 1;
                }
                if kernel == ours {
                    agree += 1;
                } else {
                    disagree.push(format!("{name}({index:#x}): kernel {kernel}, crate {ours}"));
                }
            }
        }
        loud!(
            "arch_prctl: {} indices (64 components, {} past 2^32) x 2 kinds, {agree} agree, {} disagree ({granted} granted)",
            indices.len(),
            wide.len(),
            disagree.len()
        );
        assert!(disagree.is_empty(), "\n{}", disagree.join("\n"));
    }
}

#[test]
fn requests_match_arch_prctl() {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    linux::run();
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    loud!(
        "\n******** SKIP requests_match_arch_prctl: arch_prctl exists on x86-64 Linux only ********\n"
    );
}
