//! The model against the CPU: random sequences of register writes, saves,
//! restores and buffer corruptions run on this CPU (in a forked child, where a
//! #GP is a SIGSEGV) and on `XsaveMachine`; the buffers, the final register
//! state, XINUSE and the fault verdicts must be identical.
//!
//! The child interprets the sequence with one small `asm!` block per operation
//! and scalar Rust in between, so no compiler-generated vector code disturbs the
//! registers under test. The kernel may still preempt the child and restore its
//! registers with XRSTORS, which ends the XSAVEOPT modified optimization early;
//! a sequence that disagrees is run again on the CPU (up to `RERUNS` times), and
//! only a disagreement the CPU repeats on every run counts.
#![allow(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

use std::arch::asm;
use std::ptr;

use xstate::XFeatures;
use xstate::cpuid::{CpuidSource, LiveCpuid};
use xstate::enumerate::Enumeration;
use xstate::enumerate::MxcsrMaskSource;
use xstate::insn::{Fault, Insn, XsaveUnit, read_xcr0};
use xstate::layout::Layout;
use xstate::model::{Quirks, XsaveMachine};

mod testkit;
use testkit::loud;

/// How often a sequence the CPU and the model disagree on is run again.
const RERUNS: usize = 20;
const NBUF: usize = 2;
const NIMG: usize = 4;
const MAX_OPS: usize = 24;
/// Regions of the shared mapping after the control page: the sequence's
/// buffers, one scratch buffer for the warm-up, the images, the init image,
/// the final XSAVE and the register pool.
const SCRATCH: usize = NBUF;
const IMAGE0: usize = NBUF + 1;
const INIT: usize = IMAGE0 + NIMG;
const FINAL: usize = INIT + 1;
const POOL: usize = FINAL + 1;
const REGIONS: usize = POOL + 1;
const PKRU: u32 = 9;
const TILECFG: u32 = 17;
const TILEDATA: u32 = 18;
/// arch_prctl(ARCH_REQ_XCOMP_PERM): ask for a dynamic component (Linux).
const ARCH_REQ_XCOMP_PERM: libc::c_int = 0x1023;

/// The sequence and the child's results: the first page of the shared mapping.
#[repr(C)]
struct Control {
    ops: [[u64; 4]; MAX_OPS],
    nops: u64,
    progress: u64,
    xinuse: u64,
    /// XGETBV(1) after each operation, for the reports.
    trace: [u64; MAX_OPS],
    /// The child's context switches (voluntary and involuntary) when the
    /// sequence started.
    switches: u64,
}

/// Memory shared between the parent and the forked child: a control page,
/// then `REGIONS` regions of `stride` bytes, each 64-byte aligned and holding a
/// whole XSAVE area of this CPU (`buf` bytes, from the enumeration) with 64
/// bytes to spare for the misaligned saves.
#[derive(Clone, Copy)]
struct Shared {
    base: *mut u8,
    /// The largest XSAVE area of this CPU's XCR0, standard or compacted.
    buf: usize,
    stride: usize,
}

impl Shared {
    fn map(buf: usize) -> Self {
        let stride = (buf + 64).next_multiple_of(4096);
        let len = 4096 + REGIONS * stride;
        assert!(std::mem::size_of::<Control>() <= 4096);
        // SAFETY: an anonymous shared mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Self {
            base: p.cast(),
            buf,
            stride,
        }
    }
    fn ctl(&self) -> *mut Control {
        self.base.cast()
    }
    fn region(&self, k: usize) -> *mut u8 {
        assert!(k < REGIONS);
        unsafe { self.base.add(4096 + k * self.stride) }
    }
    /// Region `k` as bytes (`buf` long), for the parent while no child runs.
    fn bytes(&self, k: usize) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.region(k), self.buf) }
    }
    fn bytes_mut(&mut self, k: usize) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.region(k), self.buf) }
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    InitAll,
    /// movdqu xmm{3,9,14}, [pool + off]; VEX-encoded where AVX is in XCR0
    /// (VEX.128 zeroes the register's upper bits, legacy SSE keeps them)
    WriteXmm(u64, u64),
    /// vmovdqu ymm{5,12}, [pool + off]
    WriteYmm(u64, u64),
    /// vmovdqu64 zmm{7,20,31}, [pool + off]
    WriteZmm(u64, u64),
    /// kmovq k{1,6}, [pool + off]
    WriteK(u64, u64),
    /// fldcw
    WriteFcw(u64),
    /// insn (0 xsave, 1 xsaveopt, 2 xsavec), buffer, rfbm, misaligned by 16
    Save(u64, u64, u64, bool),
    /// xrstor buffer, rfbm, misaligned
    Restore(u64, u64, bool),
    /// buffer, offset, xor value
    Corrupt(u64, u64, u64),
    /// buffer, image
    Copy(u64, u64),
    /// tilerelease: TILECFG and TILEDATA to their init state
    TileRelease,
}

const XMM_REGS: [usize; 3] = [3, 9, 14];
const YMM_REGS: [usize; 2] = [5, 12];
const ZMM_REGS: [usize; 3] = [7, 20, 31];
const K_REGS: [usize; 2] = [1, 6];

impl Op {
    fn encode(self) -> [u64; 4] {
        match self {
            Op::InitAll => [0, 0, 0, 0],
            Op::WriteXmm(k, o) => [1, k, o, 0],
            Op::WriteYmm(k, o) => [2, k, o, 0],
            Op::WriteZmm(k, o) => [3, k, o, 0],
            Op::WriteK(k, o) => [4, k, o, 0],
            Op::WriteFcw(v) => [5, v, 0, 0],
            Op::Save(i, b, r, m) => [6 | (i << 8) | ((m as u64) << 16), b, r, 0],
            Op::Restore(b, r, m) => [7 | ((m as u64) << 16), b, r, 0],
            Op::Corrupt(b, o, x) => [8, b, o, x],
            Op::Copy(b, i) => [9, b, i, 0],
            Op::TileRelease => [10, 0, 0, 0],
        }
    }
}

/// What this CPU and XCR0 let the sequences use: every instruction the child
/// runs is gated on one of these.
#[derive(Clone, Copy, Debug)]
struct Caps {
    xcr0: XFeatures,
    /// VEX encodings (AVX in XCR0).
    avx: bool,
    /// EVEX and opmask instructions (all of AVX-512 in XCR0).
    avx512: bool,
    xsaveopt: bool,
    xsavec: bool,
    /// TILECFG and TILEDATA in XCR0 (TILERELEASE runs).
    amx: bool,
    /// The process may use TILEDATA (permission granted): the warm-up loads it
    /// once, so the kernel's first-use #NM (which grows the task's fpstate and
    /// hands it back with SSE in use) happens before the sequence.
    tiles_warm: bool,
}

impl Caps {
    fn of(e: &Enumeration, xcr0: XFeatures) -> Self {
        Self {
            xcr0,
            avx: xcr0.contains(XFeatures::AVX),
            avx512: xcr0.contains(XFeatures::AVX512),
            xsaveopt: e.xsaveopt(),
            xsavec: e.xsavec(),
            amx: xcr0.has_index(TILECFG) && xcr0.has_index(TILEDATA),
            tiles_warm: false,
        }
    }
    /// The save instructions this CPU has, as `Op::Save` numbers them.
    fn saves(self) -> Vec<u64> {
        let mut v = vec![0];
        if self.xsaveopt {
            v.push(1);
        }
        if self.xsavec {
            v.push(2);
        }
        v
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick(&mut self, v: &[u64]) -> u64 {
        v[self.below(v.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------- the child

// No `#[target_feature]`: the instructions are asm text, and the sequence only
// holds those `Caps` allows, so the compiler never gets to assume a feature
// this CPU lacks.
// Scalars and references only: passing an array or a struct by value can move
// it through an XMM register, between operations the model does not see.
#[inline(never)]
unsafe fn run_op(s: &Shared, w0: u64, w1: u64, w2: u64, w3: u64, caps: &Caps) {
    let w = [w0, w1, w2, w3];
    let xcr0 = caps.xcr0.bits();
    let (lo, hi) = (xcr0 as u32, (xcr0 >> 32) as u32);
    let pool = s.region(POOL);
    match w[0] & 0xff {
        0 => {
            let p = s.region(INIT);
            unsafe {
                asm!("xrstor64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C"))
            };
        }
        1 => {
            let p = unsafe { pool.add(w[2] as usize) };
            match (w[1], caps.avx) {
                (0, true) => unsafe {
                    asm!("vmovdqu xmm3, [{p}]", p = in(reg) p, clobber_abi("C"))
                },
                (1, true) => unsafe {
                    asm!("vmovdqu xmm9, [{p}]", p = in(reg) p, clobber_abi("C"))
                },
                (_, true) => unsafe {
                    asm!("vmovdqu xmm14, [{p}]", p = in(reg) p, clobber_abi("C"))
                },
                (0, false) => unsafe {
                    asm!("movdqu xmm3, [{p}]", p = in(reg) p, clobber_abi("C"))
                },
                (1, false) => unsafe {
                    asm!("movdqu xmm9, [{p}]", p = in(reg) p, clobber_abi("C"))
                },
                (_, false) => unsafe {
                    asm!("movdqu xmm14, [{p}]", p = in(reg) p, clobber_abi("C"))
                },
            }
        }
        2 => {
            let p = unsafe { pool.add(w[2] as usize) };
            match w[1] {
                0 => unsafe { asm!("vmovdqu ymm5, [{p}]", p = in(reg) p, clobber_abi("C")) },
                _ => unsafe { asm!("vmovdqu ymm12, [{p}]", p = in(reg) p, clobber_abi("C")) },
            }
        }
        3 => {
            let p = unsafe { pool.add(w[2] as usize) };
            match w[1] {
                0 => unsafe { asm!("vmovdqu64 zmm7, [{p}]", p = in(reg) p, clobber_abi("C")) },
                1 => unsafe { asm!("vmovdqu64 zmm20, [{p}]", p = in(reg) p, clobber_abi("C")) },
                _ => unsafe { asm!("vmovdqu64 zmm31, [{p}]", p = in(reg) p, clobber_abi("C")) },
            }
        }
        4 => {
            let p = unsafe { pool.add(w[2] as usize) };
            match w[1] {
                0 => unsafe { asm!("kmovq k1, [{p}]", p = in(reg) p, clobber_abi("C")) },
                _ => unsafe { asm!("kmovq k6, [{p}]", p = in(reg) p, clobber_abi("C")) },
            }
        }
        5 => {
            let v = w[1] as u16;
            unsafe { asm!("fldcw [{p}]", p = in(reg) &v, clobber_abi("C")) };
        }
        6 => {
            let mis = if w[0] & (1 << 16) != 0 { 16 } else { 0 };
            let p = unsafe { s.region(w[1] as usize).add(mis) };
            let (lo, hi) = (w[2] as u32, (w[2] >> 32) as u32);
            match (w[0] >> 8) & 0xff {
                0 => unsafe {
                    asm!("xsave64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C"))
                },
                1 => unsafe {
                    asm!("xsaveopt64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C"))
                },
                _ => unsafe {
                    asm!("xsavec64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C"))
                },
            }
        }
        7 => {
            let mis = if w[0] & (1 << 16) != 0 { 16 } else { 0 };
            let p = unsafe { s.region(w[1] as usize).add(mis) };
            let (lo, hi) = (w[2] as u32, (w[2] >> 32) as u32);
            unsafe {
                asm!("xrstor64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C"))
            };
        }
        8 => {
            let p = unsafe { s.region(w[1] as usize).add(w[2] as usize) };
            let v = unsafe { ptr::read_volatile(p) } ^ (w[3] as u8);
            unsafe { ptr::write_volatile(p, v) };
        }
        9 => {
            // One `rep movsb`: no vector registers, and short, so the copy is
            // rarely where the kernel preempts the child.
            let dst = s.region(w[1] as usize);
            let src = s.region(IMAGE0 + w[2] as usize);
            unsafe {
                asm!(
                    "rep movsb",
                    inout("rcx") s.buf => _,
                    inout("rdi") dst => _,
                    inout("rsi") src => _,
                    options(nostack, preserves_flags)
                )
            };
        }
        _ => unsafe { asm!("tilerelease", clobber_abi("C")) },
    }
}

unsafe fn child(s: &Shared, caps: &Caps) -> ! {
    // Warm-up: run every kind of operation this CPU has once on the scratch
    // buffer, so the child's copy-on-write stack and its code pages are faulted
    // in before the sequence starts. (Returning from a page fault, the kernel
    // may hand the task back with SSE marked in use.) The sequence starts with
    // InitAll, which puts every component back in its init state.
    let sc = SCRATCH as u64;
    let xcr0 = caps.xcr0.bits();
    let mut warm: Vec<[u64; 4]> = vec![[0, 0, 0, 0], [1, 0, 0, 0], [5, 0x37f, 0, 0]];
    if caps.avx {
        warm.push([2, 0, 0, 0]);
    }
    if caps.avx512 {
        warm.extend([[3, 0, 0, 0], [4, 0, 0, 0]]);
    }
    for i in caps.saves() {
        warm.push([6 | (i << 8), sc, xcr0, 0]);
    }
    warm.extend([[7, sc, xcr0, 0], [8, sc, 600, 0], [9, sc, 0, 0]]);
    if caps.amx {
        warm.push([10, 0, 0, 0]);
    }
    for w in warm {
        unsafe { run_op(s, w[0], w[1], w[2], w[3], caps) };
    }
    if caps.tiles_warm {
        // XRSTOR of live TILEDATA from the scratch buffer (after the warm-up's
        // copy into it): standard form, XSTATE_BV = TILEDATA alone.
        let hdr = unsafe { s.region(SCRATCH).add(512) };
        unsafe { ptr::write_bytes(hdr, 0, 64) };
        unsafe { ptr::write_volatile(hdr.add(2), 1u8 << (TILEDATA - 16)) };
        unsafe { run_op(s, 7, sc, xcr0, 0, caps) };
    }
    // Map every page of the shared memory into the child now: a page fault in
    // the middle of the sequence (the child's first touch of a buffer) returns
    // with SSE marked in use on these kernels, which no model of the CPU can
    // know. Rewriting each page's first byte makes the mapping writable.
    let mut page = s.base;
    let end = unsafe { s.base.add(4096 + REGIONS * s.stride) };
    while page < end {
        unsafe { ptr::write_volatile(page, ptr::read_volatile(page)) };
        page = unsafe { page.add(4096) };
    }
    let mut stack = [0u8; 32 * 1024];
    for k in (0..stack.len()).step_by(512) {
        unsafe { ptr::write_volatile(&mut stack[k], 1) };
    }
    let ctl = s.ctl();
    unsafe { ptr::write_volatile(&mut (*ctl).switches, switches()) };
    let n = unsafe { ptr::read_volatile(&(*ctl).nops) } as usize;
    for i in 0..n {
        unsafe { ptr::write_volatile(&mut (*ctl).progress, i as u64) };
        // One u64 at a time and no array moves: a wider copy could be a call to
        // libc's memcpy, which uses vector registers and opmasks.
        let row = unsafe { ptr::addr_of!((*ctl).ops[i]).cast::<u64>() };
        let w0 = unsafe { ptr::read_volatile(row) };
        let w1 = unsafe { ptr::read_volatile(row.add(1)) };
        let w2 = unsafe { ptr::read_volatile(row.add(2)) };
        let w3 = unsafe { ptr::read_volatile(row.add(3)) };
        unsafe { run_op(s, w0, w1, w2, w3, caps) };
        let (lo, hi): (u32, u32);
        unsafe { asm!("xgetbv", in("ecx") 1u32, out("eax") lo, out("edx") hi) };
        unsafe { ptr::write_volatile(&mut (*ctl).trace[i], u64::from(lo) | u64::from(hi) << 32) };
    }
    unsafe { ptr::write_volatile(&mut (*ctl).progress, n as u64) };
    let (inuse_lo, inuse_hi): (u32, u32);
    unsafe { asm!("xgetbv", in("ecx") 1u32, out("eax") inuse_lo, out("edx") inuse_hi) };
    let p = s.region(FINAL);
    let (lo, hi) = (xcr0 as u32, (xcr0 >> 32) as u32);
    unsafe { asm!("xsave64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C")) };
    unsafe {
        ptr::write_volatile(
            &mut (*ctl).xinuse,
            u64::from(inuse_lo) | (u64::from(inuse_hi) << 32),
        )
    };
    unsafe { libc::_exit(0) }
}

/// The calling process's context switches so far (`getrusage`).
fn switches() -> u64 {
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (ru.ru_nvcsw + ru.ru_nivcsw) as u64
}

/// What a run produced.
#[derive(Clone, PartialEq, Eq)]
struct Outcome {
    /// Index of the faulting op and the fault (#GP: SIGSEGV; #NM the kernel
    /// does not resolve: SIGILL), if any.
    fault_at: Option<(usize, Fault)>,
    bufs: Vec<Vec<u8>>,
    final_std: Option<Vec<u8>>,
    xinuse: Option<u64>,
    /// Not compared: XGETBV(1) after each operation that ran (printed when a
    /// sequence disagrees), and whether the kernel switched the child out
    /// during the sequence.
    trace: Trace,
}

#[derive(Clone, Debug, Default)]
struct Trace {
    xinuse: Vec<u64>,
    /// The kernel switched the child out while the sequence ran: the
    /// registers went through its XSAVES/XRSTORS, which on these kernels can
    /// hand the task back with SSE in use. Such a run proves nothing either way.
    switched: bool,
}
impl PartialEq for Trace {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Trace {}

fn run_hw(mut s: Shared, caps: Caps, start_bufs: &[Vec<u8>], std_size: usize) -> Outcome {
    for (k, b) in start_bufs.iter().enumerate() {
        s.bytes_mut(k).copy_from_slice(b);
    }
    s.bytes_mut(SCRATCH).fill(0);
    s.bytes_mut(FINAL).fill(0);
    unsafe {
        (*s.ctl()).progress = 0;
        (*s.ctl()).xinuse = 0;
        (*s.ctl()).switches = u64::MAX;
    }
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe { child(&s, &caps) };
    }
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    let before = unsafe { ptr::read_volatile(&(*s.ctl()).switches) };
    let switched = (ru.ru_nvcsw + ru.ru_nivcsw) as u64 != before;
    let fault_at = if libc::WIFEXITED(status) {
        assert_eq!(libc::WEXITSTATUS(status), 0, "child exited abnormally");
        None
    } else {
        assert!(libc::WIFSIGNALED(status));
        let fault = match libc::WTERMSIG(status) {
            libc::SIGSEGV => Fault::Gp,
            libc::SIGILL => Fault::Nm,
            sig => panic!("child died of signal {sig}, neither #GP nor #NM"),
        };
        let at = unsafe { ptr::read_volatile(&(*s.ctl()).progress) } as usize;
        Some((at, fault))
    };
    let ran = unsafe { ptr::read_volatile(&(*s.ctl()).progress) } as usize;
    let trace = Trace {
        xinuse: unsafe { (&(*s.ctl()).trace)[..ran.min(MAX_OPS)].to_vec() },
        switched,
    };
    let bufs = (0..NBUF).map(|k| s.bytes(k).to_vec()).collect();
    let (final_std, xinuse) = if fault_at.is_none() {
        (
            Some(s.bytes(FINAL)[..std_size].to_vec()),
            Some(unsafe { (*s.ctl()).xinuse }),
        )
    } else {
        (None, None)
    };
    Outcome {
        fault_at,
        bufs,
        final_std,
        xinuse,
        trace,
    }
}

// ---------------------------------------------------------------- the model

/// A heap buffer whose `bytes` start 64-byte aligned.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 64];
        let start = raw.as_ptr().align_offset(64);
        Self { raw, start }
    }
    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.raw.len() - 64 + self.start]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        let end = self.raw.len() - 64 + self.start;
        &mut self.raw[self.start..end]
    }
}

/// The model's run. `Err` when the model says the sequence would deny
/// protection key 0 through PKRU (the child could not touch its own memory,
/// a SEGV_PKUERR, not an XSAVE verdict): such a sequence is not run.
#[allow(clippy::too_many_arguments)]
fn run_model(
    e: &Enumeration,
    quirks: Quirks,
    caps: Caps,
    xfd: XFeatures,
    s: &Shared,
    ops: &[Op],
    start_bufs: &[Vec<u8>],
    std_size: usize,
) -> Result<Outcome, usize> {
    let xcr0 = caps.xcr0;
    let buf = s.buf;
    let mut m = XsaveMachine::new(e, quirks);
    m.set_xfd(xfd).expect("XFD-capable components");
    m.set_cpl0(false);
    // IA32_XSS is the kernel's business; user space sees only XCR0 components.
    let mut bufs: Vec<Aligned> = start_bufs
        .iter()
        .map(|b| {
            let mut a = Aligned::new(buf + 64);
            a.bytes_mut()[..buf].copy_from_slice(b);
            a
        })
        .collect();
    // A VEX write zeroes the upper bits of the vector register, in every
    // component of it XCR0 enables.
    let zero_upper = |m: &mut XsaveMachine, c: u32, off: usize, len: usize| {
        if xcr0.has_index(c) {
            m.zero_reg(c, off, len)
        } else {
            Ok(())
        }
    };
    let mut fault_at = None;
    let mut trace = Trace::default();
    for (i, op) in ops.iter().enumerate() {
        let r: Result<(), Fault> = match *op {
            Op::InitAll => m.restore(Insn::Xrstor, s.bytes(INIT), xcr0),
            Op::WriteXmm(k, o) => {
                let n = XMM_REGS[k as usize];
                let d = &s.bytes(POOL)[o as usize..o as usize + 16];
                let r = m.write_reg(1, n * 16, d);
                if caps.avx {
                    r.and_then(|()| zero_upper(&mut m, 2, n * 16, 16))
                        .and_then(|()| zero_upper(&mut m, 6, n * 32, 32))
                } else {
                    r
                }
            }
            Op::WriteYmm(k, o) => {
                let n = YMM_REGS[k as usize];
                let d = &s.bytes(POOL)[o as usize..o as usize + 32];
                m.write_reg(1, n * 16, &d[..16])
                    .and_then(|()| m.write_reg(2, n * 16, &d[16..]))
                    .and_then(|()| zero_upper(&mut m, 6, n * 32, 32))
            }
            Op::WriteZmm(k, o) => {
                let n = ZMM_REGS[k as usize];
                let d = &s.bytes(POOL)[o as usize..o as usize + 64];
                if n < 16 {
                    m.write_reg(1, n * 16, &d[..16])
                        .and_then(|()| m.write_reg(2, n * 16, &d[16..32]))
                        .and_then(|()| m.write_reg(6, n * 32, &d[32..]))
                } else {
                    m.write_reg(7, (n - 16) * 64, d)
                }
            }
            Op::WriteK(k, o) => {
                let d = &s.bytes(POOL)[o as usize..o as usize + 8];
                m.write_reg(5, K_REGS[k as usize] * 8, d)
            }
            Op::WriteFcw(v) => m.write_reg(0, 0, &(v as u16).to_le_bytes()),
            Op::Save(insn, b, rfbm, mis) => {
                let insn = [Insn::Xsave, Insn::Xsaveopt, Insn::Xsavec][insn as usize];
                let off = if mis { 16 } else { 0 };
                let area = &mut bufs[b as usize].bytes_mut()[off..off + buf];
                m.save(insn, area, XFeatures::from_bits_retain(rfbm))
            }
            Op::Restore(b, rfbm, mis) => {
                let off = if mis { 16 } else { 0 };
                let area = &bufs[b as usize].bytes()[off..off + buf];
                m.restore(Insn::Xrstor, area, XFeatures::from_bits_retain(rfbm))
            }
            Op::Corrupt(b, o, x) => {
                bufs[b as usize].bytes_mut()[o as usize] ^= x as u8;
                Ok(())
            }
            Op::Copy(b, img) => {
                bufs[b as usize].bytes_mut()[..buf].copy_from_slice(s.bytes(IMAGE0 + img as usize));
                Ok(())
            }
            Op::TileRelease => m.init_regs(tiles()),
        };
        if r.is_ok() {
            trace.xinuse.push(m.xgetbv1().bits());
        }
        if let Err(f) = r {
            assert!(
                matches!(f, Fault::Gp | Fault::Nm),
                "model raised {f:?} at op {i} ({op:?})"
            );
            fault_at = Some((i, f));
            break;
        }
        if xcr0.has_index(PKRU) && m.reg(PKRU).is_some_and(|r| r[0] & 3 != 0) {
            return Err(i);
        }
    }
    let (final_std, xinuse) = if fault_at.is_none() {
        let mut fin = Aligned::new(buf);
        m.save(Insn::Xsave, fin.bytes_mut(), xcr0).unwrap();
        (
            Some(fin.bytes()[..std_size].to_vec()),
            Some(m.xgetbv1().bits()),
        )
    } else {
        (None, None)
    };
    Ok(Outcome {
        fault_at,
        bufs: bufs.iter().map(|b| b.bytes()[..buf].to_vec()).collect(),
        final_std,
        xinuse,
        trace,
    })
}

fn tiles() -> XFeatures {
    XFeatures::from_bits_retain((1 << TILECFG) | (1 << TILEDATA))
}

// ---------------------------------------------------------------- generation

fn random_image(rng: &mut Rng, e: &Enumeration, caps: Caps, mask: u32, buf: usize) -> Vec<u8> {
    let xcr0 = caps.xcr0;
    let mut img = vec![0u8; buf];
    for b in img.iter_mut() {
        *b = rng.next() as u8;
    }
    // x87: every exception masked, no exception pending, so nothing can trap.
    let fcw: u16 = 0x3f | 0x40 | ((rng.next() as u16) & 0x0f00);
    img[0..2].copy_from_slice(&fcw.to_le_bytes());
    let fsw: u16 = (rng.next() as u16) & 0x3800; // TOP only
    img[2..4].copy_from_slice(&fsw.to_le_bytes());
    // MXCSR: every exception masked, random flags, rounding, DAZ/FZ.
    let mxcsr: u32 = (0x1f80 | (rng.next() as u32 & 0xe07f)) & mask;
    img[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    let compacted = caps.xsavec && rng.chance(50);
    let xcomp = XFeatures::from_bits_retain(rng.next()) & xcr0;
    let xstate_bv = if compacted {
        XFeatures::from_bits_retain(rng.next()) & xcomp
    } else {
        XFeatures::from_bits_retain(rng.next()) & xcr0
    };
    let l = if compacted {
        Layout::compacted(e, xcomp).unwrap()
    } else {
        Layout::standard(e, xcr0).unwrap()
    };
    // Sometimes components in init bytes, so by-value tracking is exercised.
    if rng.chance(30) {
        for i in xcr0.indices().filter(|&i| i >= 2) {
            if rng.chance(50) {
                if let Some(r) = l.range_of(i) {
                    img[r].fill(0);
                }
            }
        }
        if rng.chance(50) {
            img[160..416].fill(0);
            img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        }
    }
    // TILECFG: a random one is almost never valid; half the time a valid
    // palette-1 configuration, sometimes with one byte broken.
    if let Some(r) = l.range_of(TILECFG).filter(|_| rng.chance(50)) {
        let cfg = &mut img[r];
        cfg.fill(0);
        cfg[0] = 1;
        cfg[1] = rng.below(20) as u8;
        for t in 0..8 {
            if rng.chance(75) {
                cfg[16 + 2 * t] = 1 + rng.below(64) as u8;
                cfg[48 + t] = 1 + rng.below(16) as u8;
            }
        }
        if rng.chance(20) {
            let k = rng.below(64) as usize;
            cfg[k] ^= 1 << rng.below(8);
        }
    }
    // PKRU: protection key 0 stays accessible and writable, or the child
    // could not touch its own stack.
    if let Some(r) = l.range_of(PKRU) {
        img[r.start] &= !3;
    }
    img[512..576].fill(0);
    img[512..520].copy_from_slice(&xstate_bv.bits().to_le_bytes());
    if compacted {
        let x = xstate::XCOMP_BV_COMPACTED | xcomp.bits();
        img[520..528].copy_from_slice(&x.to_le_bytes());
    }
    img
}

fn random_rfbm(rng: &mut Rng, xcr0: XFeatures) -> u64 {
    match rng.below(10) {
        0 => u64::MAX,
        1 => xcr0.bits(),
        2 => rng.next(),
        _ => rng.next() & xcr0.bits(),
    }
}

fn random_ops(rng: &mut Rng, caps: Caps, buf: u64, std_size: u64) -> Vec<Op> {
    let n = 4 + rng.below(MAX_OPS as u64 - 4) as usize;
    let mut ops = vec![Op::InitAll];
    let saves = caps.saves();
    while ops.len() < n {
        let pool_off = rng.below(buf - 64);
        let op = match rng.below(100) {
            0..=7 => Op::WriteXmm(rng.below(3), pool_off),
            8..=13 if caps.avx => Op::WriteYmm(rng.below(2), pool_off),
            14..=19 if caps.avx512 => Op::WriteZmm(rng.below(3), pool_off),
            20..=23 if caps.avx512 => Op::WriteK(rng.below(2), pool_off),
            24..=26 => {
                let mut v;
                loop {
                    v = 0x7f | ((rng.next() as u16) & 0x0f00);
                    if v != 0x037f {
                        break;
                    }
                }
                Op::WriteFcw(u64::from(v))
            }
            27..=52 => Op::Save(
                rng.pick(&saves),
                rng.below(NBUF as u64),
                random_rfbm(rng, caps.xcr0),
                rng.chance(2),
            ),
            53..=78 => Op::Restore(
                rng.below(NBUF as u64),
                random_rfbm(rng, caps.xcr0),
                rng.chance(2),
            ),
            79..=91 => {
                let b = rng.below(NBUF as u64);
                let (off, x) = match rng.below(6) {
                    // XSTATE_BV / XCOMP_BV bits
                    0 | 1 => (512 + rng.below(16), 1u64 << rng.below(8)),
                    // reserved header bytes
                    2 => (528 + rng.below(48), 1u64 << rng.below(8)),
                    // MXCSR
                    3 => (24 + rng.below(4), 1u64 << rng.below(8)),
                    // data bytes (not FCW/FSW, which could arm an x87 trap)
                    _ => (4 + rng.below(std_size - 4), rng.next() | 1),
                };
                Op::Corrupt(b, off, x & 0xff)
            }
            92..=97 => Op::Copy(rng.below(NBUF as u64), rng.below(NIMG as u64)),
            98..=99 if caps.amx => Op::TileRelease,
            _ => continue,
        };
        ops.push(op);
    }
    ops
}

fn describe(ops: &[Op]) -> String {
    ops.iter()
        .enumerate()
        .map(|(i, o)| format!("  {i:2}: {o:x?}\n"))
        .collect()
}

fn diff(a: &Outcome, b: &Outcome) -> String {
    let mut s = format!("fault: hw {:?} model {:?}\n", a.fault_at, b.fault_at);
    s += &format!(
        "xinuse per op: hw {:x?}\n           model {:x?}\n",
        a.trace.xinuse, b.trace.xinuse
    );
    if a.xinuse != b.xinuse {
        s += &format!("xinuse: hw {:x?} model {:x?}\n", a.xinuse, b.xinuse);
    }
    for (k, (x, y)) in a.bufs.iter().zip(&b.bufs).enumerate() {
        let d: Vec<usize> = (0..x.len()).filter(|&i| x[i] != y[i]).collect();
        if !d.is_empty() {
            s += &format!(
                "buf{k}: {} bytes differ, first at {} (hw {:02x} model {:02x}), ranges {:?}\n",
                d.len(),
                d[0],
                x[d[0]],
                y[d[0]],
                ranges(&d)
            );
            let st = d[0] & !15;
            let en = (st + 48).min(x.len());
            s += &format!(
                "  hw    @{st}: {:02x?}\n  model @{st}: {:02x?}\n",
                &x[st..en],
                &y[st..en]
            );
        }
    }
    if let (Some(x), Some(y)) = (&a.final_std, &b.final_std) {
        let d: Vec<usize> = (0..x.len()).filter(|&i| x[i] != y[i]).collect();
        if !d.is_empty() {
            s += &format!("final: {} bytes differ, ranges {:?}\n", d.len(), ranges(&d));
        }
    }
    s
}

fn ranges(d: &[usize]) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = Vec::new();
    for &i in d {
        match v.last_mut() {
            Some(r) if r.1 + 1 == i => r.1 = i,
            _ => v.push((i, i)),
        }
    }
    v.truncate(8);
    v
}

/// Tallies of one batch of sequences.
#[derive(Default)]
struct Tally {
    sequences: usize,
    agree: usize,
    /// Sequences ending in #GP on both.
    gp: usize,
    /// Sequences ending in #NM (SIGILL) on both.
    nm: usize,
    /// Agreed only on a re-run after a preempted first run.
    retried: usize,
    /// Not run: the model says they would deny protection key 0.
    pkey0: usize,
    /// Disagreed on every run, and the kernel switched the child out in every
    /// one of them: no verdict.
    inconclusive: usize,
    disagree: usize,
    reports: Vec<String>,
}

struct Rig {
    e: Enumeration,
    quirks: Quirks,
    caps: Caps,
    s: Shared,
    std_size: usize,
    mxcsr_mask: u32,
}

impl Rig {
    /// `n` random sequences with the components of `xfd` armed in the model;
    /// the caller has made the process's XFD match (no AMX permission asked).
    fn batch(&mut self, rng: &mut Rng, n: usize, xfd: XFeatures, t: &mut Tally) {
        let (caps, buf) = (self.caps, self.s.buf);
        let (e, quirks, std_size) = (&self.e, self.quirks, self.std_size);
        for seq in 0..n {
            let ops = random_ops(rng, caps, buf as u64, std_size as u64);
            let start: Vec<Vec<u8>> = (0..NBUF)
                .map(|_| random_image(rng, e, caps, self.mxcsr_mask, buf))
                .collect();
            for k in 0..NIMG {
                let img = random_image(rng, e, caps, self.mxcsr_mask, buf);
                self.s.bytes_mut(IMAGE0 + k).copy_from_slice(&img);
            }
            unsafe {
                (*self.s.ctl()).nops = ops.len() as u64;
                for (i, op) in ops.iter().enumerate() {
                    (*self.s.ctl()).ops[i] = op.encode();
                }
            }
            let s = self.s;
            let model = |k: usize| run_model(e, quirks, caps, xfd, &s, &ops[..k], &start, std_size);
            let Ok(model_out) = model(ops.len()) else {
                t.pkey0 += 1;
                continue;
            };
            t.sequences += 1;
            let mut hw = run_hw(s, caps, &start, std_size);
            if hw != model_out {
                // The kernel may have switched the child out mid-sequence: run the
                // CPU again, each time from a fresh time slice. A model error
                // repeats on every run, switched out or not; a disagreement counts
                // only when a run the kernel did not interrupt shows it.
                let first = hw.clone();
                let mut clean = (!hw.trace.switched).then(|| hw.clone());
                let mut consistent = true;
                let mut matched = false;
                for _ in 0..RERUNS {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                    hw = run_hw(s, caps, &start, std_size);
                    if hw == model_out {
                        matched = true;
                        break;
                    }
                    consistent &= hw == first;
                    if clean.is_none() && !hw.trace.switched {
                        clean = Some(hw.clone());
                    }
                }
                if !matched {
                    let Some(first) = clean else {
                        t.inconclusive += 1;
                        continue;
                    };
                    t.disagree += 1;
                    if t.reports.len() < 6 {
                        // The shortest prefix of the sequence that already disagrees.
                        let mut k = 1;
                        while k < ops.len() {
                            unsafe { (*s.ctl()).nops = k as u64 };
                            let h = run_hw(s, caps, &start, std_size);
                            if model(k).ok().as_ref() != Some(&h) {
                                break;
                            }
                            k += 1;
                        }
                        unsafe { (*s.ctl()).nops = ops.len() as u64 };
                        t.reports.push(report(
                            seq, k, consistent, xfd, &ops, &start, &s, &first, &model_out,
                        ));
                    }
                    continue;
                }
                t.retried += 1;
            }
            match model_out.fault_at {
                Some((_, Fault::Gp)) => t.gp += 1,
                Some((_, Fault::Nm)) => t.nm += 1,
                _ => {}
            }
            t.agree += 1;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    seq: usize,
    k: usize,
    consistent: bool,
    xfd: XFeatures,
    ops: &[Op],
    start: &[Vec<u8>],
    s: &Shared,
    hw: &Outcome,
    model: &Outcome,
) -> String {
    let start_hex = |b: &[u8]| format!("{:02x?}", &b[..48]);
    let hdr = |b: &[u8]| -> String {
        format!(
            "xstate_bv {:#x} xcomp_bv {:#x} mxcsr {:#x} xmm0 {:02x?}",
            u64::from_le_bytes(b[512..520].try_into().unwrap()),
            u64::from_le_bytes(b[520..528].try_into().unwrap()),
            u32::from_le_bytes(b[24..28].try_into().unwrap()),
            &b[160..168]
        )
    };
    let imgs: String = (0..NIMG)
        .map(|i| format!("  image{i}: {}\n", hdr(s.bytes(IMAGE0 + i))))
        .collect();
    format!(
        "sequence {seq} (XFD {:#x}, {}), first disagreement after op {}; start buf0: {} {}; \
         buf1: {}\n{imgs}{}{}",
        xfd.bits(),
        if consistent {
            "CPU repeatable"
        } else {
            "CPU not repeatable"
        },
        k - 1,
        start_hex(&start[0]),
        hdr(&start[0]),
        hdr(&start[1]),
        describe(ops),
        diff(hw, model)
    )
}

#[test]
fn model_matches_this_cpu() {
    let sequences: usize = std::env::var("XSTATE_MODEL_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live CPUID");
    let Some(xcr0) = read_xcr0() else {
        loud!("SKIP model_vs_hw: XCR0 not readable (the OS has not enabled XSAVE)");
        return;
    };
    let caps = Caps::of(&e, xcr0);
    for (have, what) in [
        (caps.avx, "AVX not in XCR0: YMM writes and VEX encodings"),
        (caps.avx512, "AVX-512 not in XCR0: ZMM and opmask writes"),
        (caps.xsaveopt, "no XSAVEOPT: XSAVEOPT saves"),
        (caps.xsavec, "no XSAVEC: XSAVEC saves and compacted images"),
        (caps.amx, "AMX not in XCR0: TILECFG/TILEDATA and their XFD"),
        (
            xcr0.has_index(PKRU),
            "PKRU (component 9) not in XCR0: PKRU images",
        ),
    ] {
        if !have {
            loud!("SKIP model_vs_hw: {what} not exercised");
        }
    }
    let std_size = e.standard_size(xcr0) as usize;
    let compacted = if caps.xsavec {
        e.compacted_size(xcr0) as usize
    } else {
        0
    };
    let buf = std_size.max(compacted).next_multiple_of(64);

    let mxcsr_mask = xstate::insn::read_mxcsr_mask();
    let quirks = Quirks::for_cpu(&LiveCpuid).expect("the live CPU names its vendor in leaf 0");
    // What a recording of this CPU would get (the vendor's MXCSR_MASK) is what
    // its FXSAVE says, or the vendor rule is wrong for it.
    struct CpuidOnly;
    impl CpuidSource for CpuidOnly {
        fn cpuid(&self, leaf: u32, subleaf: u32) -> xstate::cpuid::CpuidResult {
            LiveCpuid.cpuid(leaf, subleaf)
        }
    }
    let recorded = Enumeration::from_cpuid(&CpuidOnly).expect("live enumeration");
    assert_eq!(recorded.mxcsr_source(), MxcsrMaskSource::Vendor);
    assert_eq!(
        recorded.mxcsr_mask(),
        mxcsr_mask,
        "the vendor's MXCSR_MASK (what a recording gets) vs FXSAVE"
    );
    assert_eq!(
        e.mxcsr_mask(),
        mxcsr_mask,
        "LiveCpuid's MXCSR_MASK vs FXSAVE"
    );
    assert_eq!(e.mxcsr_source(), MxcsrMaskSource::Measured);
    loud!("model quirks for this CPU: {quirks:x?}");

    let mut s = Shared::map(buf);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for b in s.bytes_mut(POOL).iter_mut() {
        *b = rng.next() as u8;
    }
    let init = s.bytes_mut(INIT);
    init.fill(0);
    init[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    init[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    let mut rig = Rig {
        e: e.clone(),
        quirks,
        caps,
        s,
        std_size,
        mxcsr_mask,
    };

    // First, with the kernel's XFD armed for every dynamic component (this
    // process has not asked for permission, so the kernel keeps it armed):
    // loading live TILEDATA must be #NM on both.
    let mut armed = Tally::default();
    let xfd = XFeatures::from_bits_retain(
        e.supported()
            .indices()
            .filter(|&i| e.component(i).is_some_and(|c| c.xfd) && xcr0.has_index(i))
            .fold(0, |m, i| m | 1u64 << i),
    );
    if xfd.is_empty() {
        loud!("SKIP model_vs_hw: no XFD-capable component in XCR0: XFD-armed sequences not run");
    } else {
        rig.batch(&mut rng, sequences / 10, xfd, &mut armed);
    }
    // Then with every component usable: ask for each dynamic one.
    for i in xfd.indices() {
        // SAFETY: arch_prctl with an integer argument touches no memory.
        let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, i as u64) };
        assert_eq!(r, 0, "ARCH_REQ_XCOMP_PERM({i}) refused");
    }
    let mut open = Tally::default();
    rig.caps.tiles_warm = rig.caps.amx && !xfd.is_empty();
    rig.batch(&mut rng, sequences, XFeatures::empty(), &mut open);

    for (t, what) in [(&armed, "XFD armed"), (&open, "XFD clear")] {
        loud!(
            "  {what}: {} sequences, {} agree ({} end in #GP on both, {} in #NM, {} agreed on a \
             re-run after a preempted first run), {} disagree, {} inconclusive (the child was \
             switched out in each of {} runs); {} not run (would deny pkey 0)",
            t.sequences,
            t.agree,
            t.gp,
            t.nm,
            t.retried,
            t.disagree,
            t.inconclusive,
            RERUNS + 1,
            t.pkey0
        );
        for r in &t.reports {
            loud!("{r}");
        }
    }
    let (n, a, d, i) = (
        armed.sequences + open.sequences,
        armed.agree + open.agree,
        armed.disagree + open.disagree,
        armed.inconclusive + open.inconclusive,
    );
    loud!("model vs cpu: {n} sequences, {a} agree, {d} disagree, {i} inconclusive");
    assert_eq!(d, 0, "the model disagrees with this CPU");
    // A loaded machine switches the child out more often; past 2% of the
    // sequences without a verdict the run proves too little to pass.
    assert!(
        i * 50 <= n,
        "{i} of {n} sequences inconclusive: the machine is too loaded to tell"
    );
    assert!(
        sequences < 10_000 || open.gp > 100,
        "too few #GP verdicts exercised"
    );
    assert!(
        xfd.is_empty() || sequences < 10_000 || armed.nm > 10,
        "too few #NM verdicts exercised"
    );
}
