//! Clone, exec and permissions of the lifecycle layer against the running
//! kernel:
//!
//! - fork: a traced child loads a random register state (every user component
//!   of XCR0, AMX with permission where it exists) with XRSTOR and forks in the
//!   same `asm!` block; the grandchild's state at its first stop, read with
//!   `PTRACE_GETREGSET(NT_X86_XSTATE)`, must equal `uabi::export` of what
//!   `Lifecycle::clone_task` gives a child of a task holding the parent's state
//!   (read the same way at the fork event), every byte: dynamic components init;
//! - exec: a traced child loads a random state and calls execve in one `asm!`
//!   block; its state at the exec event must equal the export of
//!   `Lifecycle::exec`'s result (init state), every byte;
//! - permissions: `ARCH_GET_XCOMP_PERM` in a forked process and in a thread
//!   equals the parent's permission set (with every dynamic component
//!   requested first), and after execve the default set, as the layer's
//!   documentation tells a kernel to do (copy, share, reset).
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
#![allow(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

use std::arch::asm;
use std::ffi::CString;
use std::process::Command;

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Mode};
use xstate::insn::read_xcr0;
use xstate::lifecycle::{CpuFpu, Lifecycle, TaskFpu};
use xstate::model::{Quirks, XsaveMachine};
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi;

mod testkit;
use testkit::{
    Area, Rng, getregset, loud, pkru_keeping_key0, put_u32, put_u64, tilecfg_image, x87_image,
};

const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
const STATES: u64 = 24;
const PERM_CHILD: &str = "XSTATE_LIFECYCLE_PERM_CHILD";

struct Live {
    e: Enumeration,
    cfg: Configs,
    user: XFeatures,
    perms: ProcessPerms,
}

fn live() -> Option<Live> {
    let Some(xcr0) = read_xcr0() else {
        loud!("SKIP lifecycle_linux: OSXSAVE clear");
        return None;
    };
    let e = Enumeration::from_cpuid(&LiveCpuid).unwrap();
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let mut perms = ProcessPerms::new(&cfg);
    for i in cfg.policy().dynamic.indices() {
        testkit::request_xcomp_perm(i, false).expect("ARCH_REQ_XCOMP_PERM");
        perms
            .request(&cfg, PermKind::Task, u64::from(i), |_| true)
            .unwrap();
    }
    if cfg.policy().dynamic.is_empty() {
        loud!(
            "NOTE lifecycle_linux: no dynamic component on this CPU: a child's AMX state (init after fork) and inherited AMX permission are not observable here"
        );
    }
    Some(Live {
        user: cfg.user().max_features & xcr0,
        e,
        cfg,
        perms,
    })
}

/// A random standard-form image with every user component of XCR0 live.
fn image(l: &Live, rng: &mut Rng) -> Area {
    let size = l.e.standard_size(l.user) as usize;
    let mut a = Area::new(size, 0);
    let b = a.bytes_mut();
    rng.fill(b);
    let seed = rng.next();
    x87_image(&mut b[..160], |k| (seed >> (k % 8 * 8)) as u8 ^ k as u8);
    put_u32(b, 24, 0x1f80 ^ (rng.next() as u32 & 0x6040));
    put_u32(b, 28, 0);
    b[416..512].fill(0);
    b[512..576].fill(0);
    put_u64(b, 512, l.user.bits());
    for i in l.user.indices() {
        let r = testkit::std_range(&l.e, i);
        match i {
            9 => {
                b[r.clone()].fill(0);
                put_u32(b, r.start, pkru_keeping_key0(rng));
            }
            17 => b[r].copy_from_slice(&tilecfg_image(8)),
            _ => {}
        }
    }
    a
}

fn wait(pid: libc::pid_t) -> i32 {
    let mut st = 0;
    let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    st
}

/// A child that stops for its tracer, then runs `then` (which never returns).
fn traced_child(options: libc::c_int, then: impl FnOnce()) -> libc::pid_t {
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::raise(libc::SIGSTOP);
        }
        then();
        unsafe { libc::_exit(0) };
    }
    let st = wait(pid);
    assert!(libc::WIFSTOPPED(st));
    unsafe {
        assert_eq!(
            libc::ptrace(
                libc::PTRACE_SETOPTIONS,
                pid,
                0,
                options | libc::PTRACE_O_EXITKILL
            ),
            0
        );
        assert_eq!(libc::ptrace(libc::PTRACE_CONT, pid, 0, 0), 0);
    }
    pid
}

/// The layer's view: a task whose buffer holds `state` (a standard-form
/// export), grown first where `state` has a dynamic component live.
fn task_with(l: &Live, lc: &Lifecycle<'_>, state: &[u8]) -> TaskFpu<BoxedArea> {
    let mut m = XsaveMachine::new(&l.e, Quirks::for_cpu(&LiveCpuid).unwrap());
    m.set_xfd(l.cfg.policy().dynamic).unwrap();
    let mut cpu = CpuFpu::new(0, l.cfg.policy().dynamic);
    let mut t = lc
        .user_task(BoxedArea::zeroed(l.cfg.kernel().default_size as usize))
        .unwrap();
    let bv = XFeatures::from_bits_retain(testkit::get_u64(state, 512));
    for i in (bv & l.cfg.policy().dynamic).indices() {
        lc.handle_xfd(
            &mut cpu,
            &mut m,
            &mut t,
            &l.perms,
            i,
            BoxedArea::zeroed(l.cfg.kernel().max_size as usize),
        )
        .unwrap();
    }
    uabi::import(&l.cfg, &mut lc.ptrace_write(&mut t).unwrap(), state).unwrap();
    t
}

fn export(l: &Live, t: &TaskFpu<BoxedArea>) -> Vec<u8> {
    let mut out = vec![0u8; l.cfg.user().max_size as usize];
    uabi::export(&l.cfg, t.fpstate().unwrap(), XFeatures::all(), &mut out).unwrap();
    out
}

/// The byte ranges where `a` and `b` differ.
fn diff(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = Vec::new();
    for k in (0..a.len().min(b.len())).filter(|&k| a[k] != b[k]) {
        match v.last_mut() {
            Some((_, end)) if *end == k => *end = k + 1,
            _ => v.push((k, k + 1)),
        }
    }
    v
}

#[test]
fn fork_child_gets_what_clone_task_gives() {
    let Some(l) = live() else { return };
    let lc = Lifecycle::new(&l.cfg, Mode::Supervisor);
    let len = l.cfg.user().max_size as usize;
    let mut rng = Rng(0x5eed_f0e4);
    for n in 0..STATES {
        let img = image(&l, &mut rng);
        let rfbm = l.user.bits();
        let p = img.bytes().as_ptr();
        let a = traced_child(libc::PTRACE_O_TRACEFORK, || unsafe {
            // XRSTOR the state and fork with no compiled code between; the
            // grandchild exits at once.
            asm!(
                "xrstor64 [{p}]",
                "mov eax, 57",
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov eax, 60",
                "xor edi, edi",
                "syscall",
                "2:",
                p = in(reg) p,
                in("eax") rfbm as u32,
                in("edx") (rfbm >> 32) as u32,
                out("rcx") _,
                out("r11") _,
                out("rdi") _,
            );
        });
        let st = wait(a);
        assert_eq!(
            st >> 8,
            libc::SIGTRAP | (libc::PTRACE_EVENT_FORK << 8),
            "state {n}: fork event, status {st:#x}"
        );
        let parent = getregset(a, len);
        let mut b: libc::c_ulong = 0;
        unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, a, 0, &mut b) };
        let b = b as libc::pid_t;
        let st = wait(b);
        assert!(libc::WIFSTOPPED(st), "grandchild status {st:#x}");
        let child = getregset(b, len);
        unsafe {
            libc::kill(b, libc::SIGKILL);
            libc::kill(a, libc::SIGKILL);
        }
        wait(b);
        wait(a);

        let mut m = XsaveMachine::new(&l.e, Quirks::for_cpu(&LiveCpuid).unwrap());
        let mut cpu = CpuFpu::new(0, l.cfg.policy().dynamic);
        let mut pt = task_with(&l, &lc, &parent);
        let ct = lc
            .clone_task(
                &mut cpu,
                &mut m,
                &mut pt,
                BoxedArea::zeroed(l.cfg.kernel().default_size as usize),
            )
            .unwrap();
        let ours = export(&l, &ct);
        let d = diff(&ours, &child);
        assert!(
            d.is_empty(),
            "state {n}: the clone differs from the kernel's child at {d:?}"
        );
    }
    loud!(
        "lifecycle_linux fork: {STATES} random states, the child's {len} bytes equal clone_task's export"
    );
}

#[test]
fn exec_gives_what_exec_gives() {
    let Some(l) = live() else { return };
    let lc = Lifecycle::new(&l.cfg, Mode::Supervisor);
    let len = l.cfg.user().max_size as usize;
    let mut rng = Rng(0xe8ec);
    let path = CString::new("/bin/true").unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    for n in 0..8 {
        let img = image(&l, &mut rng);
        let rfbm = l.user.bits();
        let p = img.bytes().as_ptr();
        let (f, av, ev) = (path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        let a = traced_child(libc::PTRACE_O_TRACEEXEC, || unsafe {
            asm!(
                "xrstor64 [{p}]",
                "mov rdi, {f}",
                "mov rsi, {av}",
                "mov rdx, {ev}",
                "mov eax, 59",
                "syscall",
                p = in(reg) p,
                f = in(reg) f,
                av = in(reg) av,
                ev = in(reg) ev,
                in("eax") rfbm as u32,
                in("edx") (rfbm >> 32) as u32,
                out("rcx") _,
                out("r11") _,
                out("rdi") _,
                out("rsi") _,
            );
        });
        let st = wait(a);
        assert_eq!(
            st >> 8,
            libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8),
            "state {n}: exec event, status {st:#x}"
        );
        let after = getregset(a, len);
        unsafe { libc::kill(a, libc::SIGKILL) };
        wait(a);
        let mut t = task_with(&l, &lc, img.bytes());
        let grown = lc.exec(&mut t).unwrap();
        assert_eq!(grown.is_some(), !l.cfg.policy().dynamic.is_empty());
        let ours = export(&l, &t);
        let d = diff(&ours, &after);
        assert!(
            d.is_empty(),
            "state {n}: exec differs from the kernel's at {d:?}"
        );
    }
    loud!(
        "lifecycle_linux exec: 8 random states, the exec'd task's {len} bytes equal exec's export"
    );
}

fn get_perm() -> u64 {
    let mut v = 0u64;
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut v) };
    assert_eq!(r, 0);
    v
}

#[test]
fn permissions_are_copied_shared_and_reset_as_linux_does() {
    if std::env::var_os(PERM_CHILD).is_some() {
        println!("PERM {:#x}", get_perm());
        return;
    }
    let Some(l) = live() else { return };
    // What Linux reports: the sets' user components (`ProcessPerms::reported`).
    let ours = l.perms.reported(PermKind::Task).bits();
    let fresh = ProcessPerms::new(&l.cfg).reported(PermKind::Task).bits();
    assert_eq!(get_perm(), ours, "this process");
    // fork: a new process with a copy.
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let v = get_perm().to_le_bytes();
        unsafe {
            libc::write(fds[1], v.as_ptr().cast(), 8);
            libc::_exit(0);
        }
    }
    let mut v = [0u8; 8];
    assert_eq!(unsafe { libc::read(fds[0], v.as_mut_ptr().cast(), 8) }, 8);
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    let forked = u64::from_le_bytes(v);
    // A thread: the same set.
    let thread = std::thread::spawn(get_perm).join().unwrap();
    // execve: the default set again.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "permissions_are_copied_shared_and_reset_as_linux_does",
            "--nocapture",
        ])
        .env(PERM_CHILD, "1")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let execd = s
        .lines()
        .find_map(|l| l.split_once("PERM 0x").map(|(_, v)| v))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("the exec'd child's PERM line");
    loud!(
        "lifecycle_linux perms: parent {ours:#x}, forked {forked:#x}, thread {thread:#x}, after execve {execd:#x} (crate: copy {ours:#x}, share {ours:#x}, reset {fresh:#x})"
    );
    assert_eq!(forked, ours);
    assert_eq!(thread, ours);
    assert_eq!(execd, fresh);
}
