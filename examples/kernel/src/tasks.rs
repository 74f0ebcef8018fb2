//! The tasks and their checks. Every task loads patterns into its registers,
//! lets the timer preempt it, and reads them back. The patterns carry the task's
//! tag in their top byte, so a value from another task is recognisable.
//!
//! What each check covers:
//! - XMM0-15 (and the upper halves of YMM0-15 where AVX is enabled), the eight
//!   x87 registers, FCW and MXCSR: loaded, spun on, and read back inside one asm
//!   block, so no compiled code ever sees them (Rust's inline-asm rules: the x87
//!   stack is empty and FCW/MXCSR are back to their defaults when it ends). The
//!   timer lands inside the spin at points the task does not choose.
//! - PKRU (where PKU exists) and the MPX bound registers BND0-3 (where MPX
//!   exists, wide tasks only): loaded before and read after that block. Compiled
//!   code never touches them.
//! - The quiet task never writes AVX or MPX state: the upper halves of its YMM
//!   registers and its bound registers must read as their init value (zero), and
//!   XINUSE (XGETBV 1) must show those components in their init state wherever
//!   this CPU tracks them.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use xstate::XFeatures;

use crate::sched::SLICES;

/// Number of user tasks (they have an fpstate).
pub const TASKS: usize = 4;
/// Number of kernel threads (no fpstate: the layer never saves or loads them).
pub const KTHREADS: usize = 2;
/// The task that never writes AVX or MPX state.
pub const QUIET: usize = TASKS - 1;

/// What this CPU has, set by the boot code before the first task runs.
pub struct Caps {
    avx: AtomicBool,
    pku: AtomicBool,
    mpx: AtomicBool,
    xgetbv1: AtomicBool,
    /// Components the quiet task never writes and XINUSE tracks here.
    quiet_tracked: AtomicU64,
    /// Whether XINUSE tracks BNDREGS here (the wide tasks' positive control).
    bnd_tracked: AtomicBool,
}

/// The CPU's capabilities as the tasks use them.
pub static CAPS: Caps = Caps {
    avx: AtomicBool::new(false),
    pku: AtomicBool::new(false),
    mpx: AtomicBool::new(false),
    xgetbv1: AtomicBool::new(false),
    quiet_tracked: AtomicU64::new(0),
    bnd_tracked: AtomicBool::new(false),
};

impl Caps {
    /// Record the capabilities (boot code, before any task runs).
    pub fn set(&self, avx: bool, pku: bool, mpx: bool, xgetbv1: bool, tracked: XFeatures) {
        self.avx.store(avx, Relaxed);
        self.pku.store(pku, Relaxed);
        self.mpx.store(mpx, Relaxed);
        self.xgetbv1.store(xgetbv1, Relaxed);
        self.quiet_tracked
            .store((tracked & quiet_untouched()).bits(), Relaxed);
        self.bnd_tracked
            .store(tracked.contains(XFeatures::BNDREGS), Relaxed);
    }
}

impl Caps {
    /// The components the quiet task never writes that XINUSE tracks here.
    pub fn quiet_tracked(&self) -> XFeatures {
        XFeatures::from_bits_retain(self.quiet_tracked.load(Relaxed))
    }
}

/// The components the quiet task never writes.
pub fn quiet_untouched() -> XFeatures {
    XFeatures::AVX | XFeatures::BNDREGS | XFeatures::BNDCSR | XFeatures::AVX512
}

/// Per-task figures, written by the task itself.
pub struct Stats {
    /// Checks done.
    pub checks: AtomicU64,
    /// Checks during which the task was switched out and back in.
    pub spanned: AtomicU64,
    /// Register values that were not the task's own.
    pub bleeds: AtomicU64,
    /// XINUSE readings checked.
    pub xinuse: AtomicU64,
    /// XINUSE readings that contradicted the task's state.
    pub xinuse_bad: AtomicU64,
}

/// One [`Stats`] per task.
pub static STATS: [Stats; TASKS] = [const {
    Stats {
        checks: AtomicU64::new(0),
        spanned: AtomicU64::new(0),
        bleeds: AtomicU64::new(0),
        xinuse: AtomicU64::new(0),
        xinuse_bad: AtomicU64::new(0),
    }
}; TASKS];

/// The first wrong value seen, for the report.
pub struct FirstBleed {
    set: AtomicBool,
    /// Task that saw it.
    pub task: AtomicU64,
    /// Register (an index into [`REGISTER_NAMES`]).
    pub reg: AtomicU64,
    /// Value seen.
    pub got: AtomicU64,
    /// Value expected.
    pub want: AtomicU64,
}

/// The first wrong value any task saw.
pub static FIRST_BLEED: FirstBleed = FirstBleed {
    set: AtomicBool::new(false),
    task: AtomicU64::new(0),
    reg: AtomicU64::new(0),
    got: AtomicU64::new(0),
    want: AtomicU64::new(0),
};

/// Names of the checked register groups, by [`FirstBleed::reg`].
pub const REGISTER_NAMES: [&str; 7] = ["xmm", "ymm upper", "x87", "fcw", "mxcsr", "pkru", "bnd"];

impl FirstBleed {
    /// Whether a wrong value was recorded.
    pub fn is_set(&self) -> bool {
        self.set.load(Relaxed)
    }
}

/// One task's register image: YMM0-15 (XMM = the low 16 bytes of each slot),
/// x87 ST registers in load order, FCW, MXCSR. The asm in [`run`] uses these
/// offsets.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Image {
    vec: [[u64; 4]; 16],
    x87: [u64; 8],
    fcw: u32,
    mxcsr: u32,
}

const _: () = assert!(core::mem::offset_of!(Image, x87) == 512);
const _: () = assert!(core::mem::offset_of!(Image, fcw) == 576);
const _: () = assert!(core::mem::offset_of!(Image, mxcsr) == 580);

impl Image {
    const ZERO: Self = Self {
        vec: [[0; 4]; 16],
        x87: [0; 8],
        fcw: 0,
        mxcsr: 0,
    };
}

/// A pattern word: the task's tag (1..=TASKS) in the top byte, then the check
/// number, then the slot. Never zero, never negative (x87 integer loads are exact).
fn word(task: usize, n: u64, slot: u64) -> u64 {
    ((task as u64 + 1) << 56) | ((n & 0xff_ffff_ffff) << 16) | (slot & 0xffff)
}

fn image(task: usize, n: u64, wide: bool) -> Image {
    let mut im = Image::ZERO;
    for (r, v) in im.vec.iter_mut().enumerate() {
        for (l, w) in v.iter_mut().enumerate() {
            // Upper lanes stay zero for the quiet task: its AVX state is init.
            if l < 2 || wide {
                *w = word(task, n, (r * 4 + l) as u64);
            }
        }
    }
    for (k, w) in im.x87.iter_mut().enumerate() {
        *w = word(task, n, 0x100 + k as u64);
    }
    // Per task: x87 rounding (bits 10-11) and precision (8-9) control, all
    // exceptions masked; SSE rounding (13-14), flush-to-zero (15) and
    // denormals-are-zero (6), all exceptions masked.
    let t = task as u32;
    im.fcw = 0x7f | ((t & 3) << 8) | (((t + n as u32) & 3) << 10);
    im.mxcsr = 0x1f80 | (((t + n as u32) & 3) << 13) | ((t & 1) << 15) | (((t >> 1) & 1) << 6);
    im
}

/// Load `want` into XMM/YMM, x87, FCW and MXCSR, spin `spins` times (the timer
/// lands here), and store what the registers then hold into `got`. `flags` bit
/// 0: load full YMM registers (else XMM only, with legacy SSE moves, which
/// leave the upper halves alone); bit 1: read full YMM registers (AVX enabled).
fn run(want: &Image, got: &mut Image, spins: u64, flags: u64) {
    let mut env = [0u32; 2];
    // SAFETY: `want`, `got` and `env` are valid for the offsets used (checked
    // above). VEX instructions run only under flags the caller sets when XCR0
    // enables AVX. Every XMM/x87 register is declared clobbered; the x87 stack
    // is emptied (eight loads, eight pops) and FCW/MXCSR are put back before the
    // block ends. `spins` is at least 1. No stack use.
    unsafe {
        asm!(
            "stmxcsr [{env}]",
            "fnstcw [{env} + 4]",
            "ldmxcsr [{w} + 580]",
            "fninit",
            "fldcw [{w} + 576]",
            "fild qword ptr [{w} + 512]", "fild qword ptr [{w} + 520]",
            "fild qword ptr [{w} + 528]", "fild qword ptr [{w} + 536]",
            "fild qword ptr [{w} + 544]", "fild qword ptr [{w} + 552]",
            "fild qword ptr [{w} + 560]", "fild qword ptr [{w} + 568]",
            "test {f}, 1",
            "jz 3f",
            "vmovdqu ymm0, [{w} + 0x000]", "vmovdqu ymm1, [{w} + 0x020]",
            "vmovdqu ymm2, [{w} + 0x040]", "vmovdqu ymm3, [{w} + 0x060]",
            "vmovdqu ymm4, [{w} + 0x080]", "vmovdqu ymm5, [{w} + 0x0a0]",
            "vmovdqu ymm6, [{w} + 0x0c0]", "vmovdqu ymm7, [{w} + 0x0e0]",
            "vmovdqu ymm8, [{w} + 0x100]", "vmovdqu ymm9, [{w} + 0x120]",
            "vmovdqu ymm10, [{w} + 0x140]", "vmovdqu ymm11, [{w} + 0x160]",
            "vmovdqu ymm12, [{w} + 0x180]", "vmovdqu ymm13, [{w} + 0x1a0]",
            "vmovdqu ymm14, [{w} + 0x1c0]", "vmovdqu ymm15, [{w} + 0x1e0]",
            "jmp 4f",
            "3:",
            "movdqu xmm0, [{w} + 0x000]", "movdqu xmm1, [{w} + 0x020]",
            "movdqu xmm2, [{w} + 0x040]", "movdqu xmm3, [{w} + 0x060]",
            "movdqu xmm4, [{w} + 0x080]", "movdqu xmm5, [{w} + 0x0a0]",
            "movdqu xmm6, [{w} + 0x0c0]", "movdqu xmm7, [{w} + 0x0e0]",
            "movdqu xmm8, [{w} + 0x100]", "movdqu xmm9, [{w} + 0x120]",
            "movdqu xmm10, [{w} + 0x140]", "movdqu xmm11, [{w} + 0x160]",
            "movdqu xmm12, [{w} + 0x180]", "movdqu xmm13, [{w} + 0x1a0]",
            "movdqu xmm14, [{w} + 0x1c0]", "movdqu xmm15, [{w} + 0x1e0]",
            "4:",
            "dec {n}",
            "jnz 4b",
            "test {f}, 2",
            "jz 5f",
            "vmovdqu [{g} + 0x000], ymm0", "vmovdqu [{g} + 0x020], ymm1",
            "vmovdqu [{g} + 0x040], ymm2", "vmovdqu [{g} + 0x060], ymm3",
            "vmovdqu [{g} + 0x080], ymm4", "vmovdqu [{g} + 0x0a0], ymm5",
            "vmovdqu [{g} + 0x0c0], ymm6", "vmovdqu [{g} + 0x0e0], ymm7",
            "vmovdqu [{g} + 0x100], ymm8", "vmovdqu [{g} + 0x120], ymm9",
            "vmovdqu [{g} + 0x140], ymm10", "vmovdqu [{g} + 0x160], ymm11",
            "vmovdqu [{g} + 0x180], ymm12", "vmovdqu [{g} + 0x1a0], ymm13",
            "vmovdqu [{g} + 0x1c0], ymm14", "vmovdqu [{g} + 0x1e0], ymm15",
            "jmp 6f",
            "5:",
            "movdqu [{g} + 0x000], xmm0", "movdqu [{g} + 0x020], xmm1",
            "movdqu [{g} + 0x040], xmm2", "movdqu [{g} + 0x060], xmm3",
            "movdqu [{g} + 0x080], xmm4", "movdqu [{g} + 0x0a0], xmm5",
            "movdqu [{g} + 0x0c0], xmm6", "movdqu [{g} + 0x0e0], xmm7",
            "movdqu [{g} + 0x100], xmm8", "movdqu [{g} + 0x120], xmm9",
            "movdqu [{g} + 0x140], xmm10", "movdqu [{g} + 0x160], xmm11",
            "movdqu [{g} + 0x180], xmm12", "movdqu [{g} + 0x1a0], xmm13",
            "movdqu [{g} + 0x1c0], xmm14", "movdqu [{g} + 0x1e0], xmm15",
            "6:",
            // ST(0) is the last value loaded: pop into the slots in reverse, so
            // got.x87[k] pairs with want.x87[k].
            "fistp qword ptr [{g} + 568]", "fistp qword ptr [{g} + 560]",
            "fistp qword ptr [{g} + 552]", "fistp qword ptr [{g} + 544]",
            "fistp qword ptr [{g} + 536]", "fistp qword ptr [{g} + 528]",
            "fistp qword ptr [{g} + 520]", "fistp qword ptr [{g} + 512]",
            "fnstcw [{g} + 576]",
            "stmxcsr [{g} + 580]",
            "fldcw [{env} + 4]",
            "ldmxcsr [{env}]",
            w = in(reg) want,
            g = in(reg) got,
            env = in(reg) env.as_mut_ptr(),
            f = in(reg) flags,
            n = inout(reg) spins.max(1) => _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
            out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
            options(nostack),
        );
    }
}

fn wrpkru(v: u32) {
    // SAFETY: CR4.PKE is set (the caller checks CAPS.pku). PKRU governs only
    // user-mode pages and this kernel maps none, so no access changes meaning.
    unsafe {
        asm!("wrpkru", in("eax") v, in("ecx") 0, in("edx") 0, options(nomem, nostack, preserves_flags))
    };
}

fn rdpkru() -> u32 {
    let v: u32;
    // SAFETY: CR4.PKE is set (the caller checks CAPS.pku); RDPKRU reads a register.
    unsafe {
        asm!("rdpkru", in("ecx") 0, out("eax") v, out("edx") _, options(nomem, nostack, preserves_flags))
    };
    v
}

// LLVM's assembler no longer knows MPX mnemonics: BNDMOV is spelled in bytes
// (66 0F 1A /r loads, 66 0F 1B /r stores). Each address is a plain register
// with no displacement: QEMU 7.2's TCG consumes a BNDMOV displacement twice and
// decodes the next instruction one byte late.

/// Load BND0-3 from `b` (lower, upper bound pairs).
fn bnd_load(b: &[[u64; 2]; 4]) {
    let p = b.as_ptr();
    // SAFETY: MPX is enabled in XCR0 and IA32_BNDCFGS (EN and BNDPRESERVE, so
    // branches keep the bounds); the four addresses are the 16-byte elements of
    // `b`. The bound registers are not used by compiled code.
    unsafe {
        asm!(
            ".byte 0x66, 0x0f, 0x1a, 0x00", // bndmov bnd0, [rax]
            ".byte 0x66, 0x0f, 0x1a, 0x09", // bndmov bnd1, [rcx]
            ".byte 0x66, 0x0f, 0x1a, 0x12", // bndmov bnd2, [rdx]
            ".byte 0x66, 0x0f, 0x1a, 0x1e", // bndmov bnd3, [rsi]
            in("rax") p, in("rcx") p.wrapping_add(1), in("rdx") p.wrapping_add(2), in("rsi") p.wrapping_add(3),
            options(readonly, nostack, preserves_flags),
        );
    }
}

/// Store BND0-3.
fn bnd_store() -> [[u64; 2]; 4] {
    let mut b = [[0u64; 2]; 4];
    let p = b.as_mut_ptr();
    // SAFETY: MPX is enabled (as in `bnd_load`); the four addresses are the
    // 16-byte elements of `b`.
    unsafe {
        asm!(
            ".byte 0x66, 0x0f, 0x1b, 0x00", // bndmov [rax], bnd0
            ".byte 0x66, 0x0f, 0x1b, 0x09", // bndmov [rcx], bnd1
            ".byte 0x66, 0x0f, 0x1b, 0x12", // bndmov [rdx], bnd2
            ".byte 0x66, 0x0f, 0x1b, 0x1e", // bndmov [rsi], bnd3
            in("rax") p, in("rcx") p.wrapping_add(1), in("rdx") p.wrapping_add(2), in("rsi") p.wrapping_add(3),
            options(nostack, preserves_flags),
        );
    }
    b
}

fn bleed(task: usize, reg: usize, got: u64, want: u64) {
    STATS[task].bleeds.fetch_add(1, Relaxed);
    if FIRST_BLEED
        .set
        .compare_exchange(false, true, Relaxed, Relaxed)
        .is_ok()
    {
        FIRST_BLEED.task.store(task as u64, Relaxed);
        FIRST_BLEED.reg.store(reg as u64, Relaxed);
        FIRST_BLEED.got.store(got, Relaxed);
        FIRST_BLEED.want.store(want, Relaxed);
    }
}

fn compare(task: usize, reg: usize, got: u64, want: u64) {
    if got != want {
        bleed(task, reg, got, want);
    }
}

/// Loops each kernel thread ran, by kernel-thread number.
pub static KLOOPS: [AtomicU64; KTHREADS] = [const { AtomicU64::new(0) }; KTHREADS];

/// The body of every kernel thread; `id` (`TASKS..TASKS + KTHREADS`) comes in
/// RDI from its first frame. It computes in general registers only: no x87,
/// no MXCSR, no AVX, no PKRU or bound registers, nothing an fpstate holds
/// beyond XMM0-15's low halves, which compiled code may use and the interrupt
/// stubs keep per context in the frame. That is what lets the layer skip the
/// restore of the task that ran before it, and the tasks' checks would see it
/// otherwise.
pub extern "C" fn kthread_main(id: u64) -> ! {
    let k = (id as usize).wrapping_sub(TASKS) % KTHREADS;
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ id;
    loop {
        // SAFETY: general registers only (xorshift steps and a counter), no
        // memory, no stack.
        unsafe {
            asm!(
                "2:",
                "mov {t}, {x}", "shl {t}, 13", "xor {x}, {t}",
                "mov {t}, {x}", "shr {t}, 7", "xor {x}, {t}",
                "mov {t}, {x}", "shl {t}, 17", "xor {x}, {t}",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                t = out(reg) _,
                n = inout(reg) 1000u64 => _,
                options(nomem, nostack),
            )
        };
        KLOOPS[k].fetch_add(1, Relaxed);
    }
}

/// The body of every task; `id` comes in RDI from its first frame.
pub extern "C" fn task_main(id: u64) -> ! {
    let id = id as usize % TASKS;
    let wide = id != QUIET;
    let avx = CAPS.avx.load(Relaxed);
    let pku = CAPS.pku.load(Relaxed);
    let mpx = CAPS.mpx.load(Relaxed);
    let xgetbv1 = CAPS.xgetbv1.load(Relaxed);
    let quiet_tracked = XFeatures::from_bits_retain(CAPS.quiet_tracked.load(Relaxed));
    let bnd_tracked = CAPS.bnd_tracked.load(Relaxed);
    let flags = u64::from(wide && avx) | (u64::from(avx) << 1);
    let stats = &STATS[id];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (id as u64 + 1);
    let mut n = 0u64;
    loop {
        n += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let spins = 200 + rng % 2000;
        let want = image(id, n, wide);
        let pkru = word(id, n, 0x200) as u32 ^ (word(id, n, 0x200) >> 32) as u32;
        let bnd = core::array::from_fn(|k| {
            [
                word(id, n, 0x300 + 2 * k as u64),
                !word(id, n, 0x301 + 2 * k as u64),
            ]
        });
        if pku {
            wrpkru(pkru);
        }
        if mpx && wide {
            bnd_load(&bnd);
        }
        let before = SLICES[id].load(Relaxed);
        let mut got = Image::ZERO;
        run(&want, &mut got, spins, flags);
        // XINUSE first: nothing after this reads or writes the components it covers.
        let xinuse = if xgetbv1 {
            xstate::insn::read_xinuse()
        } else {
            None
        };
        let pkru_got = if pku { rdpkru() } else { 0 };
        let bnd_got = if mpx && (wide || !bnd_tracked) {
            Some(bnd_store())
        } else {
            None
        };
        let after = SLICES[id].load(Relaxed);

        stats.checks.fetch_add(1, Relaxed);
        if after != before {
            stats.spanned.fetch_add(1, Relaxed);
        }
        for (g, w) in got.vec.iter().zip(&want.vec) {
            compare(id, 0, g[0], w[0]);
            compare(id, 0, g[1], w[1]);
            if avx {
                compare(id, 1, g[2], w[2]);
                compare(id, 1, g[3], w[3]);
            }
        }
        for (g, w) in got.x87.iter().zip(&want.x87) {
            compare(id, 2, *g, *w);
        }
        compare(id, 3, u64::from(got.fcw & 0xffff), u64::from(want.fcw));
        compare(id, 4, u64::from(got.mxcsr), u64::from(want.mxcsr));
        if pku {
            compare(id, 5, u64::from(pkru_got), u64::from(pkru));
        }
        if let Some(b) = bnd_got {
            let want_bnd = if wide { bnd } else { [[0; 2]; 4] };
            for (g, w) in b.iter().zip(&want_bnd) {
                compare(id, 6, g[0], w[0]);
                compare(id, 6, g[1], w[1]);
            }
        }
        // The quiet task: every untouched component XINUSE tracks is init. The
        // wide tasks: BNDREGS, just loaded with non-zero bounds, is in use (so
        // the quiet task's "init" is not just XINUSE reading zero).
        let verdict = match xinuse {
            Some(x) if !wide && !quiet_tracked.is_empty() => Some(!x.intersects(quiet_tracked)),
            Some(x) if wide && mpx && bnd_tracked => Some(x.contains(XFeatures::BNDREGS)),
            _ => None,
        };
        if let Some(held) = verdict {
            stats.xinuse.fetch_add(1, Relaxed);
            if !held {
                stats.xinuse_bad.fetch_add(1, Relaxed);
            }
        }
    }
}
