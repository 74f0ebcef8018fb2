//! The live CPU's probes, the floor below everything that runs an instruction:
//! XGETBV (XCR0, XINUSE), CPUID.1:ECX.OSXSAVE and FXSAVE's MXCSR_MASK.
//!
//! [`cpuid::LiveCpuid`](crate::cpuid::LiveCpuid) reads the MXCSR mask here, and
//! [`insn`](crate::insn) re-exports the public probes under their old paths
//! ([`insn::xgetbv`](crate::insn::xgetbv),
//! [`insn::read_mxcsr_mask`](crate::insn::read_mxcsr_mask)) and types their
//! results ([`insn::read_xcr0`](crate::insn::read_xcr0)). This module imports no
//! other module of the crate, so neither of them reaches back up through it.

/// The 64-bit value of a register pair such as EDX:EAX (`hi`:`lo`).
#[inline(always)]
pub(crate) const fn join(hi: u32, lo: u32) -> u64 {
    ((hi as u64) << 32) | lo as u64
}

cfg_if::cfg_if! {
    if #[cfg(target_arch = "x86_64")] {
        use core::arch::asm;

        /// Read extended control register `xcr` (XGETBV).
        ///
        /// `xcr = 0` is XCR0 (enabled user components); `xcr = 1` is XINUSE (components
        /// not in their init state) where CPUID(0xD,1).EAX\[2\] says so.
        ///
        /// This is the crate's own XCR0 read: the `x86` crate's `xcr0()` drops bits it
        /// does not know (AMX, APX), and a mask with holes sizes buffers wrongly.
        ///
        /// # Safety
        /// CR4.OSXSAVE must be set (CPUID.1:ECX.OSXSAVE[bit 27]), and `xcr` must be 0,
        /// or 1 on a CPU with XGETBV1; otherwise the instruction raises #GP/#UD.
        #[inline]
        pub unsafe fn xgetbv(xcr: u32) -> u64 {
            let (lo, hi): (u32, u32);
            // SAFETY: the caller guarantees OSXSAVE and a valid `xcr`. XGETBV reads a
            // register only: no memory, no stack, no flags.
            unsafe {
                asm!("xgetbv", in("ecx") xcr, out("eax") lo, out("edx") hi,
                     options(nomem, nostack, preserves_flags));
            }
            join(hi, lo)
        }

        /// Whether the OS enabled XSAVE (CPUID.1:ECX.OSXSAVE mirrors CR4.OSXSAVE).
        pub(crate) fn os_xsave_enabled() -> bool {
            x86::cpuid::native_cpuid::cpuid_count(1, 0).ecx & (1 << 27) != 0
        }

        /// Whether XGETBV with ECX = 1 exists (CPUID(0xD,1).EAX\[2\]).
        pub(crate) fn has_xgetbv1() -> bool {
            x86::cpuid::native_cpuid::cpuid_count(0xd, 1).eax & 4 != 0
        }

        /// MXCSR_MASK as FXSAVE reports it: the MXCSR bits this CPU implements
        /// (0xffff on Intel, 0x2ffff on AMD CPUs with misaligned-SSE mode). Linux
        /// checks user MXCSR values against it; put it in
        /// [`crate::config::Configs::mxcsr_mask`]. An FXSAVE that reports 0 means
        /// the architectural default 0xffbf.
        pub fn read_mxcsr_mask() -> u32 {
            #[repr(C, align(16))]
            struct Fx([u8; 512]);
            let mut fx = Fx([0; 512]);
            // SAFETY: FXSAVE is part of the x86-64 baseline; `fx` is 512 bytes,
            // 16-byte aligned and writable; it reads no flags and touches no stack.
            unsafe {
                asm!("fxsave64 [{p}]", p = in(reg) fx.0.as_mut_ptr(), options(nostack, preserves_flags));
            }
            let mask = u32::from_le_bytes([fx.0[28], fx.0[29], fx.0[30], fx.0[31]]);
            if mask == 0 { 0xffbf } else { mask }
        }
    }
}
