//! The kernel's own SIMD code: what a kernel SIMD section (the lifecycle's
//! `kernel_fpu_begin` guard) runs in the timer interrupt. A vector sum over
//! YMM registers (AVX2) or XMM registers (SSE2), checked against the scalar
//! sum, so the section really computes with the registers it borrowed.
//!
//! It leaves its values in the registers on purpose, as Linux's
//! `kernel_fpu_end()` does: the section dropped the CPU's owner record, so the
//! next return to a task must load that task's registers. A kernel that kept the
//! record (the sabotage boot) hands the section's values to the task, and the
//! task's checks see them.

use core::arch::asm;

use xstate::XFeatures;
use xstate::lifecycle::KernelFpuSection;

/// u64 words per sum: eight 32-byte loads, or sixteen 16-byte ones.
pub const WORDS: usize = 32;

/// The data a sum runs over, 32-byte aligned for the vector loads.
#[repr(C, align(32))]
pub struct Block(pub [u64; WORDS]);

/// Which registers a section computes with: YMM0-5 with AVX2 (`vpaddq`, the
/// upper halves the tasks check too), or XMM0-5 with SSE2 (`paddq`) where XCR0
/// or CPUID has no AVX2. Built only from the CPU's facts ([`Width::detect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Width {
    ymm: bool,
}

impl Width {
    /// The widest this CPU runs: YMM where `xcr0` (read back from the CPU)
    /// enables SSE and AVX and CPUID.(7,0):EBX[5] (`leaf7_ebx`) enumerates AVX2.
    pub fn detect(xcr0: XFeatures, leaf7_ebx: u32) -> Self {
        Self {
            ymm: xcr0.contains(XFeatures::SSE | XFeatures::AVX) && leaf7_ebx & (1 << 5) != 0,
        }
    }

    /// The name in the report.
    pub const fn name(self) -> &'static str {
        if self.ymm {
            "ymm (AVX2 vpaddq)"
        } else {
            "xmm (SSE2 paddq)"
        }
    }
}

/// Section `n`'s data: words with 0x77 in the top byte and 48 pseudo-random
/// low bits, so the pairwise sums the section leaves in its first four
/// registers have exactly 0xee there, which no task's pattern words have
/// (their tags are 1..=4): a value a section left behind is recognisable in a
/// task's registers.
pub fn block(n: u64) -> Block {
    let mut b = Block([0; WORDS]);
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for w in b.0.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *w = (0x77 << 56) | (x & 0xffff_ffff_ffff);
    }
    b
}

/// The scalar sum (wrapping): the reference the vector sum is checked against.
pub fn scalar_sum(b: &Block) -> u64 {
    b.0.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

/// The vector sum of `b` with `width`'s registers, inside the open kernel SIMD
/// section `_section` (its borrow is the proof that the registers are the
/// kernel's: the interrupted task's were saved and the owner record dropped).
pub fn vector_sum<U>(_section: &mut KernelFpuSection<'_, U>, b: &Block, width: Width) -> u64 {
    let p = b.0.as_ptr();
    let sum: u64;
    if width.ymm {
        // SAFETY: inside a kernel SIMD section (the registers are the kernel's,
        // the interrupted task's saved); `width.ymm` was set from XCR0 (SSE and
        // AVX enabled) and CPUID (AVX2), and XCR0 never changes after boot; the eight
        // 32-byte loads stay within the 256-byte, 32-byte aligned block. XMM0-5
        // are declared clobbered (their upper halves too: the block runs in the
        // interrupt handler, whose compiled code uses legacy SSE only and never
        // holds values in YMM upper halves). No stack use.
        unsafe {
            asm!(
                "vmovdqa ymm0, [{p}]",
                "vmovdqa ymm1, [{p} + 32]",
                "vmovdqa ymm2, [{p} + 64]",
                "vmovdqa ymm3, [{p} + 96]",
                "vpaddq ymm0, ymm0, [{p} + 128]",
                "vpaddq ymm1, ymm1, [{p} + 160]",
                "vpaddq ymm2, ymm2, [{p} + 192]",
                "vpaddq ymm3, ymm3, [{p} + 224]",
                // YMM0-3 keep these pairwise sums (0xee.. in every lane);
                // the reduction runs in YMM4-5.
                "vpaddq ymm4, ymm0, ymm1",
                "vpaddq ymm5, ymm2, ymm3",
                "vpaddq ymm4, ymm4, ymm5",
                "vextracti128 xmm5, ymm4, 1",
                "vpaddq xmm4, xmm4, xmm5",
                "vpshufd xmm5, xmm4, 0x4e",
                "vpaddq xmm4, xmm4, xmm5",
                "vmovq {s}, xmm4",
                p = in(reg) p,
                s = out(reg) sum,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                out("xmm4") _, out("xmm5") _,
                options(readonly, nostack, preserves_flags),
            )
        }
    } else {
        // SAFETY: as above, with SSE2 (always present in long mode, and enabled
        // at boot) and sixteen 16-byte aligned loads within the block.
        unsafe {
            asm!(
                "movdqa xmm0, [{p}]",
                "movdqa xmm1, [{p} + 16]",
                "movdqa xmm2, [{p} + 32]",
                "movdqa xmm3, [{p} + 48]",
                "paddq xmm0, [{p} + 64]",
                "paddq xmm1, [{p} + 80]",
                "paddq xmm2, [{p} + 96]",
                "paddq xmm3, [{p} + 112]",
                "movdqa xmm4, [{p} + 128]",
                "movdqa xmm5, [{p} + 144]",
                "paddq xmm4, [{p} + 160]",
                "paddq xmm5, [{p} + 176]",
                "paddq xmm4, [{p} + 192]",
                "paddq xmm5, [{p} + 208]",
                "paddq xmm4, [{p} + 224]",
                "paddq xmm5, [{p} + 240]",
                "paddq xmm4, xmm5",
                "paddq xmm4, xmm0",
                "paddq xmm4, xmm1",
                "paddq xmm4, xmm2",
                "paddq xmm4, xmm3",
                "pshufd xmm5, xmm4, 0x4e",
                "paddq xmm4, xmm5",
                "movq {s}, xmm4",
                p = in(reg) p,
                s = out(reg) sum,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                out("xmm4") _, out("xmm5") _,
                options(readonly, nostack, preserves_flags),
            )
        }
    }
    sum
}
