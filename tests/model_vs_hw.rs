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
use xstate::insn::{Fault, Insn, XsaveUnit, read_xcr0};
use xstate::layout::Layout;
use xstate::model::{Quirks, XsaveMachine};

mod testkit;
use testkit::loud;

const BUF: usize = 4096;
/// How often a sequence the CPU and the model disagree on is run again.
const RERUNS: usize = 20;
const NBUF: usize = 2;
const NIMG: usize = 4;
const MAX_OPS: usize = 24;

/// Memory shared between the parent and the forked child.
#[repr(C, align(64))]
struct Shared {
    /// The sequence's buffers, plus one scratch buffer for the warm-up.
    bufs: [[u8; BUF]; NBUF + 1],
    images: [[u8; BUF]; NIMG],
    init: [u8; BUF],
    final_std: [u8; BUF],
    pool: [u8; BUF],
    ops: [[u64; 4]; MAX_OPS],
    nops: u64,
    progress: u64,
    xinuse: u64,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    InitAll,
    /// vmovdqu xmm{3,9,14}, [pool + off] (VEX.128: the upper bits are zeroed)
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
        }
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
}

// ---------------------------------------------------------------- the child

#[target_feature(enable = "avx512f,xsave,xsaveopt,xsavec")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_op(s: *mut Shared, w0: u64, w1: u64, w2: u64, w3: u64, xcr0: u64) {
    let w = (w0, w1, w2, w3);
    let (lo, hi) = (xcr0 as u32, (xcr0 >> 32) as u32);
    let pool = unsafe { (*s).pool.as_ptr() };
    match w.0 & 0xff {
        0 => {
            let p = unsafe { (*s).init.as_ptr() };
            unsafe {
                asm!("xrstor64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C"))
            };
        }
        1 => {
            let p = unsafe { pool.add(w.2 as usize) };
            match w.1 {
                0 => unsafe { asm!("vmovdqu xmm3, [{p}]", p = in(reg) p, clobber_abi("C")) },
                1 => unsafe { asm!("vmovdqu xmm9, [{p}]", p = in(reg) p, clobber_abi("C")) },
                _ => unsafe { asm!("vmovdqu xmm14, [{p}]", p = in(reg) p, clobber_abi("C")) },
            }
        }
        2 => {
            let p = unsafe { pool.add(w.2 as usize) };
            match w.1 {
                0 => unsafe { asm!("vmovdqu ymm5, [{p}]", p = in(reg) p, clobber_abi("C")) },
                _ => unsafe { asm!("vmovdqu ymm12, [{p}]", p = in(reg) p, clobber_abi("C")) },
            }
        }
        3 => {
            let p = unsafe { pool.add(w.2 as usize) };
            match w.1 {
                0 => unsafe { asm!("vmovdqu64 zmm7, [{p}]", p = in(reg) p, clobber_abi("C")) },
                1 => unsafe { asm!("vmovdqu64 zmm20, [{p}]", p = in(reg) p, clobber_abi("C")) },
                _ => unsafe { asm!("vmovdqu64 zmm31, [{p}]", p = in(reg) p, clobber_abi("C")) },
            }
        }
        4 => {
            let p = unsafe { pool.add(w.2 as usize) };
            match w.1 {
                0 => unsafe { asm!("kmovq k1, [{p}]", p = in(reg) p, clobber_abi("C")) },
                _ => unsafe { asm!("kmovq k6, [{p}]", p = in(reg) p, clobber_abi("C")) },
            }
        }
        5 => {
            let v = w.1 as u16;
            unsafe { asm!("fldcw [{p}]", p = in(reg) &v, clobber_abi("C")) };
        }
        6 => {
            let mis = if w.0 & (1 << 16) != 0 { 16 } else { 0 };
            let p = unsafe { (*s).bufs[w.1 as usize].as_mut_ptr().add(mis) };
            let (lo, hi) = (w.2 as u32, (w.2 >> 32) as u32);
            match (w.0 >> 8) & 0xff {
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
            let mis = if w.0 & (1 << 16) != 0 { 16 } else { 0 };
            let p = unsafe { (*s).bufs[w.1 as usize].as_ptr().add(mis) };
            let (lo, hi) = (w.2 as u32, (w.2 >> 32) as u32);
            unsafe {
                asm!("xrstor64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C"))
            };
        }
        8 => {
            let p = unsafe { (*s).bufs[w.1 as usize].as_mut_ptr().add(w.2 as usize) };
            let v = unsafe { ptr::read_volatile(p) } ^ (w.3 as u8);
            unsafe { ptr::write_volatile(p, v) };
        }
        _ => {
            let dst = unsafe { (*s).bufs[w.1 as usize].as_mut_ptr() };
            let src = unsafe { (*s).images[w.2 as usize].as_ptr() };
            for k in 0..BUF {
                let b = unsafe { ptr::read_volatile(src.add(k)) };
                unsafe { ptr::write_volatile(dst.add(k), b) };
            }
        }
    }
}

#[target_feature(enable = "avx512f,xsave")]
unsafe fn child(s: *mut Shared, xcr0: u64) -> ! {
    // Warm-up: run every kind of operation once on the scratch buffer, so the
    // child's copy-on-write stack and its code pages are faulted in before the
    // sequence starts. (Returning from a page fault, this guest kernel hands the
    // task back with SSE marked in use.) The sequence starts with InitAll, which
    // puts every component back in its init state.
    let sc = NBUF as u64;
    let warm: [(u64, u64, u64, u64); 12] = [
        (0, 0, 0, 0),
        (1, 0, 0, 0),
        (2, 0, 0, 0),
        (3, 0, 0, 0),
        (4, 0, 0, 0),
        (5, 0x37f, 0, 0),
        (6, sc, xcr0, 0),
        (6 | (1 << 8), sc, xcr0, 0),
        (6 | (2 << 8), sc, xcr0, 0),
        (7, sc, xcr0, 0),
        (8, sc, 600, 0),
        (9, sc, 0, 0),
    ];
    for w in warm {
        unsafe { run_op(s, w.0, w.1, w.2, w.3, xcr0) };
    }
    let mut stack = [0u8; 32 * 1024];
    for k in (0..stack.len()).step_by(512) {
        unsafe { ptr::write_volatile(&mut stack[k], 1) };
    }
    let n = unsafe { ptr::read_volatile(&(*s).nops) } as usize;
    for i in 0..n {
        unsafe { ptr::write_volatile(&mut (*s).progress, i as u64) };
        // One u64 at a time and no array moves: a wider copy could be a call to
        // libc's memcpy, which uses AVX-512 registers and opmasks.
        let row = unsafe { ptr::addr_of!((*s).ops[i]).cast::<u64>() };
        let w0 = unsafe { ptr::read_volatile(row) };
        let w1 = unsafe { ptr::read_volatile(row.add(1)) };
        let w2 = unsafe { ptr::read_volatile(row.add(2)) };
        let w3 = unsafe { ptr::read_volatile(row.add(3)) };
        unsafe { run_op(s, w0, w1, w2, w3, xcr0) };
    }
    unsafe { ptr::write_volatile(&mut (*s).progress, n as u64) };
    let (inuse_lo, inuse_hi): (u32, u32);
    unsafe { asm!("xgetbv", in("ecx") 1u32, out("eax") inuse_lo, out("edx") inuse_hi) };
    let p = unsafe { (*s).final_std.as_mut_ptr() };
    let (lo, hi) = (xcr0 as u32, (xcr0 >> 32) as u32);
    unsafe { asm!("xsave64 [{p}]", p = in(reg) p, in("eax") lo, in("edx") hi, clobber_abi("C")) };
    unsafe {
        ptr::write_volatile(
            &mut (*s).xinuse,
            u64::from(inuse_lo) | (u64::from(inuse_hi) << 32),
        )
    };
    unsafe { libc::_exit(0) }
}

/// What a run produced.
#[derive(Clone, PartialEq, Eq)]
struct Outcome {
    /// Index of the faulting op, if any.
    fault_at: Option<usize>,
    bufs: Vec<Vec<u8>>,
    final_std: Option<Vec<u8>>,
    xinuse: Option<u64>,
}

fn run_hw(s: *mut Shared, xcr0: u64, start_bufs: &[[u8; BUF]; NBUF], std_size: usize) -> Outcome {
    unsafe {
        (&mut (*s).bufs)[..NBUF].copy_from_slice(start_bufs);
        (*s).bufs[NBUF] = [0; BUF];
        (*s).final_std = [0; BUF];
        (*s).progress = 0;
        (*s).xinuse = 0;
    }
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe { child(s, xcr0) };
    }
    let mut status = 0;
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    let fault_at = if libc::WIFEXITED(status) {
        assert_eq!(libc::WEXITSTATUS(status), 0, "child exited abnormally");
        None
    } else {
        assert!(libc::WIFSIGNALED(status));
        let sig = libc::WTERMSIG(status);
        assert_eq!(sig, libc::SIGSEGV, "child died of signal {sig}, not #GP");
        Some(unsafe { ptr::read_volatile(&(*s).progress) } as usize)
    };
    let bufs = unsafe { (&(*s).bufs)[..NBUF].iter().map(|b| b.to_vec()).collect() };
    let (final_std, xinuse) = if fault_at.is_none() {
        (
            Some(unsafe { (&(*s).final_std)[..std_size].to_vec() }),
            Some(unsafe { (*s).xinuse }),
        )
    } else {
        (None, None)
    };
    Outcome {
        fault_at,
        bufs,
        final_std,
        xinuse,
    }
}

// ---------------------------------------------------------------- the model

#[repr(C, align(64))]
struct Aligned([u8; BUF + 64]);

fn run_model(
    e: &Enumeration,
    quirks: Quirks,
    s: &Shared,
    ops: &[Op],
    start_bufs: &[[u8; BUF]; NBUF],
    std_size: usize,
) -> Outcome {
    let xcr0 = read_xcr0().unwrap();
    let mut m = XsaveMachine::new(e, quirks);
    m.set_cpl0(false);
    // IA32_XSS is the kernel's business; user space sees only XCR0 components.
    let mut bufs: Vec<Box<Aligned>> = start_bufs
        .iter()
        .map(|b| {
            let mut a = Box::new(Aligned([0; BUF + 64]));
            a.0[..BUF].copy_from_slice(b);
            a
        })
        .collect();
    let mut fault_at = None;
    for (i, op) in ops.iter().enumerate() {
        let r: Result<(), Fault> = match *op {
            Op::InitAll => m.restore(Insn::Xrstor, &s.init, xcr0),
            Op::WriteXmm(k, o) => {
                // VEX.128: bits 511:128 of the register are zeroed.
                let n = XMM_REGS[k as usize];
                let d = &s.pool[o as usize..o as usize + 16];
                m.write_reg(1, n * 16, d)
                    .and_then(|()| m.zero_reg(2, n * 16, 16))
                    .and_then(|()| m.zero_reg(6, n * 32, 32))
            }
            Op::WriteYmm(k, o) => {
                let n = YMM_REGS[k as usize];
                let d = &s.pool[o as usize..o as usize + 32];
                m.write_reg(1, n * 16, &d[..16])
                    .and_then(|()| m.write_reg(2, n * 16, &d[16..]))
                    .and_then(|()| m.zero_reg(6, n * 32, 32))
            }
            Op::WriteZmm(k, o) => {
                let n = ZMM_REGS[k as usize];
                let d = &s.pool[o as usize..o as usize + 64];
                if n < 16 {
                    m.write_reg(1, n * 16, &d[..16])
                        .and_then(|()| m.write_reg(2, n * 16, &d[16..32]))
                        .and_then(|()| m.write_reg(6, n * 32, &d[32..]))
                } else {
                    m.write_reg(7, (n - 16) * 64, d)
                }
            }
            Op::WriteK(k, o) => {
                let d = &s.pool[o as usize..o as usize + 8];
                m.write_reg(5, K_REGS[k as usize] * 8, d)
            }
            Op::WriteFcw(v) => m.write_reg(0, 0, &(v as u16).to_le_bytes()),
            Op::Save(insn, b, rfbm, mis) => {
                let insn = [Insn::Xsave, Insn::Xsaveopt, Insn::Xsavec][insn as usize];
                let off = if mis { 16 } else { 0 };
                let area = &mut bufs[b as usize].0[off..off + BUF];
                m.save(insn, area, XFeatures::from_bits_retain(rfbm))
            }
            Op::Restore(b, rfbm, mis) => {
                let off = if mis { 16 } else { 0 };
                let area = &bufs[b as usize].0[off..off + BUF];
                m.restore(Insn::Xrstor, area, XFeatures::from_bits_retain(rfbm))
            }
            Op::Corrupt(b, o, x) => {
                bufs[b as usize].0[o as usize] ^= x as u8;
                Ok(())
            }
            Op::Copy(b, img) => {
                bufs[b as usize].0[..BUF].copy_from_slice(&s.images[img as usize]);
                Ok(())
            }
        };
        if let Err(f) = r {
            assert_eq!(f, Fault::Gp, "model raised {f:?} at op {i} ({op:?})");
            fault_at = Some(i);
            break;
        }
    }
    let bufs_out = bufs
        .iter()
        .map(|b| b.0[..BUF + 16].to_vec())
        .collect::<Vec<_>>();
    let (final_std, xinuse) = if fault_at.is_none() {
        let mut fin = Box::new(Aligned([0; BUF + 64]));
        m.save(Insn::Xsave, &mut fin.0[..BUF], xcr0).unwrap();
        (Some(fin.0[..std_size].to_vec()), Some(m.xgetbv1().bits()))
    } else {
        (None, None)
    };
    Outcome {
        fault_at,
        bufs: bufs_out
            .into_iter()
            .map(|mut v| {
                v.truncate(BUF);
                v
            })
            .collect(),
        final_std,
        xinuse,
    }
}

// ---------------------------------------------------------------- generation

fn random_image(rng: &mut Rng, e: &Enumeration, xcr0: XFeatures, mask: u32) -> [u8; BUF] {
    let mut img = [0u8; BUF];
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
    let compacted = rng.chance(50);
    let xcomp = XFeatures::from_bits_retain(rng.next()) & xcr0;
    let xstate_bv = if compacted {
        XFeatures::from_bits_retain(rng.next()) & xcomp
    } else {
        XFeatures::from_bits_retain(rng.next()) & xcr0
    };
    // Sometimes components in init bytes, so by-value tracking is exercised.
    if rng.chance(30) {
        let l = if compacted {
            Layout::compacted(e, xcomp).unwrap()
        } else {
            Layout::standard(e, xcr0).unwrap()
        };
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

fn random_ops(rng: &mut Rng, xcr0: XFeatures, std_size: u64) -> Vec<Op> {
    let n = 4 + rng.below(MAX_OPS as u64 - 4) as usize;
    let mut ops = vec![Op::InitAll];
    let avx512 = xcr0.contains(XFeatures::AVX512);
    while ops.len() < n {
        let pool_off = rng.below(BUF as u64 - 64);
        let op = match rng.below(100) {
            0..=7 => Op::WriteXmm(rng.below(3), pool_off),
            8..=13 => Op::WriteYmm(rng.below(2), pool_off),
            14..=19 if avx512 => Op::WriteZmm(rng.below(3), pool_off),
            20..=23 if avx512 => Op::WriteK(rng.below(2), pool_off),
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
                rng.below(3),
                rng.below(NBUF as u64),
                random_rfbm(rng, xcr0),
                rng.chance(2),
            ),
            53..=78 => Op::Restore(
                rng.below(NBUF as u64),
                random_rfbm(rng, xcr0),
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
            92..=99 => Op::Copy(rng.below(NBUF as u64), rng.below(NIMG as u64)),
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

fn quirks_for_this_cpu(mxcsr_mask: u32) -> Quirks {
    let v = LiveCpuid.cpuid(0, 0);
    let amd = v.ebx == u32::from_le_bytes(*b"Auth") || v.ebx == u32::from_le_bytes(*b"Hygo");
    let base = if amd { Quirks::AMD_ZEN } else { Quirks::INTEL };
    Quirks { mxcsr_mask, ..base }
}

#[test]
fn model_matches_this_cpu() {
    let sequences: usize = std::env::var("XSTATE_MODEL_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live CPUID");
    let Some(xcr0) = read_xcr0() else {
        panic!("XCR0 not readable: this test needs XSAVE enabled by the OS");
    };
    assert!(e.xsavec && e.xsaveopt, "the CPU lacks XSAVEC/XSAVEOPT");
    if !xcr0.contains(XFeatures::AVX512) {
        loud!("SKIP model_vs_hw: AVX-512 not in XCR0: ZMM and opmask writes not exercised");
    }
    for (bit, what) in [(9, "PKRU"), (17, "AMX TILECFG"), (18, "AMX TILEDATA")] {
        if !xcr0.has_index(bit) {
            loud!("SKIP model_vs_hw: {what} (component {bit}) not in XCR0: not exercised");
        }
    }
    let std_size = e.standard_size(xcr0) as usize;

    // MXCSR_MASK as the CPU reports it.
    let mut probe = Box::new(Aligned([0; BUF + 64]));
    unsafe { xstate::insn::xsave(probe.0.as_mut_ptr(), XFeatures::SSE) };
    let mxcsr_mask = u32::from_le_bytes(probe.0[28..32].try_into().unwrap());
    assert_eq!(
        xstate::insn::read_mxcsr_mask(),
        mxcsr_mask,
        "FXSAVE and XSAVE disagree"
    );
    let quirks = quirks_for_this_cpu(mxcsr_mask);
    loud!("model quirks for this CPU: {quirks:x?}");

    let s: *mut Shared = unsafe {
        let p = libc::mmap(
            ptr::null_mut(),
            std::mem::size_of::<Shared>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    unsafe {
        for b in (*s).pool.iter_mut() {
            *b = rng.next() as u8;
        }
        (*s).init = [0; BUF];
        (&mut (*s).init)[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        (&mut (*s).init)[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    }

    let (mut agree, mut retried, mut faults, mut disagree) = (0usize, 0usize, 0usize, 0usize);
    let mut reports = Vec::new();
    for seq in 0..sequences {
        let ops = random_ops(&mut rng, xcr0, std_size as u64);
        let mut start = [[0u8; BUF]; NBUF];
        for b in start.iter_mut() {
            *b = random_image(&mut rng, &e, xcr0, mxcsr_mask);
        }
        unsafe {
            for k in 0..NIMG {
                (*s).images[k] = random_image(&mut rng, &e, xcr0, mxcsr_mask);
            }
            (*s).nops = ops.len() as u64;
            for (i, op) in ops.iter().enumerate() {
                (*s).ops[i] = op.encode();
            }
        }
        let model = run_model(&e, quirks, unsafe { &*s }, &ops, &start, std_size);
        let mut hw = run_hw(s, xcr0.bits(), &start, std_size);
        if hw != model {
            // The kernel may have preempted the child: run the CPU again, each
            // time from a fresh time slice. A model error repeats on every run;
            // under load (other builds on this 2-core machine) six reruns were
            // seen to be preempted as well, so give it up to RERUNS.
            let mut matched = false;
            let first = hw.clone();
            let mut consistent = true;
            for _ in 0..RERUNS {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
                hw = run_hw(s, xcr0.bits(), &start, std_size);
                if hw == model {
                    matched = true;
                    break;
                }
                consistent &= hw == first;
            }
            if matched {
                retried += 1;
            } else {
                disagree += 1;
                if reports.len() < 3 {
                    // The shortest prefix of the sequence that already disagrees.
                    let mut k = 1;
                    while k < ops.len() {
                        unsafe { (*s).nops = k as u64 };
                        let m = run_model(&e, quirks, unsafe { &*s }, &ops[..k], &start, std_size);
                        let h = run_hw(s, xcr0.bits(), &start, std_size);
                        if m != h {
                            break;
                        }
                        k += 1;
                    }
                    unsafe { (*s).nops = ops.len() as u64 };
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
                        .map(|i| format!("  image{i}: {}\n", hdr(unsafe { &(*s).images[i] })))
                        .collect();
                    reports.push(format!(
                        "first disagreement after op {}; start buf0: {} {}; buf1: {}\n{imgs}",
                        k - 1,
                        start_hex(&start[0]),
                        hdr(&start[0]),
                        hdr(&start[1])
                    ));
                    reports.push(format!(
                        "sequence {seq} ({}):\n{}{}",
                        if consistent {
                            "CPU repeatable"
                        } else {
                            "CPU not repeatable"
                        },
                        describe(&ops),
                        diff(&first, &model)
                    ));
                }
                continue;
            }
        }
        if model.fault_at.is_some() {
            faults += 1;
        }
        agree += 1;
    }
    loud!(
        "model vs hardware: {sequences} sequences, {agree} agree ({faults} end in #GP on both, \
         {retried} agreed on a re-run after a preempted first run), {disagree} disagree"
    );
    for r in &reports {
        loud!("{r}");
    }
    assert_eq!(disagree, 0, "the model disagrees with this CPU");
    assert!(
        sequences < 10_000 || faults > 100,
        "too few #GP verdicts exercised"
    );
}
