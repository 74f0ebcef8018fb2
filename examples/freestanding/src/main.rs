//! A kernel-style user of `xstate`: `#![no_std]`, `#![no_main]`, no libc, no
//! allocator, its own `_start`, a raw `exit` syscall. It does what a small kernel's
//! context-switch code does: enumerate the CPU, build the configs, create two task
//! fpstates and a guest fpstate in static-sized storage, switch between them with the
//! crate's save/restore, and check that no register value bleeds from one owner to
//! another. Exit status 0 only if every check held.
//!
//! It runs in user mode (ring 3), so it uses the crate's user path (XSAVEC/XRSTOR)
//! and a policy without supervisor components; a ring-0 kernel passes
//! `Mode::Supervisor` and `Cpu::supervisor()` instead and keeps everything else.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{Fpstate, Mode, Owner, swap};
use xstate::insn::{Cpu, read_xcr0};

// The ELF entry point: the kernel enters with RSP 16-byte aligned and no return
// address; Rust functions expect RSP = 8 mod 16 at entry, so align and call.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym kmain,
);

const SYS_WRITE: u64 = 1;
const SYS_EXIT_GROUP: u64 = 231;

fn write(s: &[u8]) {
    // SAFETY: write(2) on fd 1 reads `s.len()` bytes from a valid slice; the
    // syscall instruction clobbers rcx and r11, declared below.
    unsafe {
        asm!("syscall", inlateout("rax") SYS_WRITE => _, in("rdi") 1u64, in("rsi") s.as_ptr(),
             in("rdx") s.len(), lateout("rcx") _, lateout("r11") _, options(nostack, readonly));
    }
}

fn exit(code: u64) -> ! {
    // SAFETY: exit_group(2) does not return.
    unsafe {
        asm!("syscall", in("rax") SYS_EXIT_GROUP, in("rdi") code, options(noreturn, nostack));
    }
}

fn hex(v: u64) {
    let mut b = *b"0x0000000000000000";
    for i in 0..16 {
        let d = ((v >> (60 - 4 * i)) & 0xf) as u8;
        b[2 + i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
    }
    write(&b);
}

/// Register values the compiler never touches in this program (no AVX-512 target
/// feature is enabled): opmask k1-k7 and ZMM31.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Probe {
    k: [u64; 7],
    zmm31_lane0: u64,
    zmm31_lane7: u64,
}

fn load(seed: u64) {
    // SAFETY: AVX-512 is enabled in XCR0 (checked in kmain before any call). The
    // block writes k1-k7 and zmm31 only, which compiled code does not use.
    unsafe {
        asm!(
            "kmovq k1, {v}", "add {v}, 1", "kmovq k2, {v}", "add {v}, 1", "kmovq k3, {v}",
            "add {v}, 1", "kmovq k4, {v}", "add {v}, 1", "kmovq k5, {v}", "add {v}, 1",
            "kmovq k6, {v}", "add {v}, 1", "kmovq k7, {v}", "add {v}, 1",
            "vpbroadcastq zmm31, {v}",
            v = inout(reg) seed => _,
            options(nomem, nostack),
        );
    }
}

fn probe() -> Probe {
    let mut k = [0u64; 7];
    let (l0, l7): (u64, u64);
    // SAFETY: as in `load`; zmm30 is scratch, also unused by compiled code.
    unsafe {
        asm!(
            "kmovq {a}, k1", "mov [{k}], {a}", "kmovq {a}, k2", "mov [{k} + 8], {a}",
            "kmovq {a}, k3", "mov [{k} + 16], {a}", "kmovq {a}, k4", "mov [{k} + 24], {a}",
            "kmovq {a}, k5", "mov [{k} + 32], {a}", "kmovq {a}, k6", "mov [{k} + 40], {a}",
            "kmovq {a}, k7", "mov [{k} + 48], {a}",
            "vmovq {l0}, xmm31",
            "valignq zmm30, zmm31, zmm31, 7",
            "vmovq {l7}, xmm30",
            k = in(reg) k.as_mut_ptr(), a = out(reg) _, l0 = out(reg) l0, l7 = out(reg) l7,
            options(nostack),
        );
    }
    Probe {
        k,
        zmm31_lane0: l0,
        zmm31_lane7: l7,
    }
}

fn expect(seed: Option<u64>) -> Probe {
    match seed {
        None => Probe {
            k: [0; 7],
            zmm31_lane0: 0,
            zmm31_lane7: 0,
        },
        Some(s) => Probe {
            k: [s, s + 1, s + 2, s + 3, s + 4, s + 5, s + 6],
            zmm31_lane0: s + 7,
            zmm31_lane7: s + 7,
        },
    }
}

static mut FAILURES: u32 = 0;

fn check(what: &[u8], seed: Option<u64>) {
    let got = probe();
    let ok = got == expect(seed);
    write(if ok { b"ok    " } else { b"FAIL  " });
    write(what);
    write(b": k1 = ");
    hex(got.k[0]);
    write(b", zmm31[7] = ");
    hex(got.zmm31_lane7);
    write(b"\n");
    if !ok {
        // SAFETY: single-threaded program; no other reference to FAILURES exists.
        unsafe { FAILURES += 1 };
    }
}

#[repr(C, align(64))]
struct Area([u8; 16384]);

extern "C" fn kmain() -> ! {
    let e = match Enumeration::from_cpuid(&LiveCpuid) {
        Ok(e) => e,
        Err(_) => {
            write(b"CPUID leaf 0xd refused\n");
            exit(2)
        }
    };
    let Some(xcr0) = read_xcr0() else {
        write(b"XSAVE not enabled by the OS\n");
        exit(2)
    };
    write(b"xcr0 ");
    hex(xcr0.bits());
    write(b"\n");
    if !xcr0.contains(XFeatures::AVX512) || !e.xsavec() {
        write(b"SKIP: this check needs AVX-512 and XSAVEC\n");
        exit(77)
    }
    // User mode: user components only, nothing dynamic (no XFD handling here).
    let p = Policy::linux(&e);
    let user = xcr0 & (XFeatures::LEGACY | XFeatures::AVX | XFeatures::AVX512 | XFeatures::PKRU);
    let policy = Policy {
        enabled: p.enabled & user,
        dynamic: XFeatures::empty(),
        independent: XFeatures::empty(),
        guest_only: XFeatures::empty(),
    };
    let Ok(cfg) = Configs::new(&e, &policy) else {
        write(b"config refused\n");
        exit(2)
    };
    write(b"fpstate size ");
    hex(u64::from(cfg.kernel().default_size));
    write(b"\n");
    let (mut ba, mut bb, mut bg) = (Area([0; 16384]), Area([0; 16384]), Area([0; 16384]));
    let (Ok(mut a), Ok(mut b), Ok(mut g)) = (
        Fpstate::new_in(&cfg, Owner::Host, &mut ba.0[..]),
        Fpstate::new_in(&cfg, Owner::Host, &mut bb.0[..]),
        Fpstate::new_in(&cfg, Owner::Guest, &mut bg.0[..]),
    ) else {
        write(b"fpstate storage refused\n");
        exit(2)
    };
    // SAFETY: the only register state this program keeps live across calls is
    // what it checks; the unit checks OSXSAVE, the instructions and every
    // area's size itself.
    let Ok(mut cpu) = (unsafe { Cpu::user() }) else {
        write(b"no XSAVE unit\n");
        exit(2)
    };
    let m = Mode::User;
    let step = |r: Result<(), xstate::fpstate::FpstateError>| {
        if r.is_err() {
            write(b"save/restore refused\n");
            exit(3)
        }
    };

    // Task A runs and dirties its registers; switch to task B (fresh: init).
    load(0x1000);
    step(swap(&mut cpu, &cfg, m, &mut a, &b));
    check(b"task B starts clean", None);
    load(0x2000);
    // Switch B -> A: A's values come back, none of B's.
    step(swap(&mut cpu, &cfg, m, &mut b, &a));
    check(b"task A gets its own values back", Some(0x1000));
    // A -> guest (fresh): nothing of A visible to the guest.
    step(swap(&mut cpu, &cfg, m, &mut a, &g));
    check(b"guest starts clean", None);
    load(0x3000);
    // guest -> B: B sees its own values, not the guest's.
    step(swap(&mut cpu, &cfg, m, &mut g, &b));
    check(b"task B after the guest", Some(0x2000));
    step(swap(&mut cpu, &cfg, m, &mut b, &g));
    check(b"guest gets its own values back", Some(0x3000));
    step(swap(&mut cpu, &cfg, m, &mut g, &a));
    check(b"task A after everyone", Some(0x1000));

    // SAFETY: single-threaded; no other reference to FAILURES is live.
    let failures = unsafe { FAILURES };
    if failures == 0 {
        write(b"freestanding: all checks held\n");
        exit(0)
    }
    write(b"freestanding: checks failed\n");
    exit(1)
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    write(b"panic\n");
    exit(101)
}

/// The precompiled `core` refers to the unwinder's personality routine even with
/// `panic = "abort"`; nothing ever unwinds here, so it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

// The C runtime is not linked: the few memory functions core's code calls are here.
// They are written with `rep` string instructions so the compiler cannot turn them
// back into calls to themselves.

/// # Safety
/// As C's `memcpy`: valid, non-overlapping regions of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both regions; DF is clear per the ABI.
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C's `memmove`: valid regions of `n` bytes, possibly overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is correct when dst does not start inside src.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: copy backwards from the last byte; DF is restored to clear.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, inout("rcx") n => _,
             options(nostack));
    }
    dst
}

/// # Safety
/// As C's `memset`: a valid region of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the region; DF is clear per the ABI.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C's `memcmp`: valid regions of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees n readable bytes at both.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
