//! The XSAVE-family instructions, one thin wrapper each. This is the only module
//! with `unsafe` code; everything above it is safe Rust.
//!
//! Every wrapper takes the requested-feature bitmap (RFBM) as an [`XFeatures`] and
//! splits it into EDX:EAX. The 64-bit forms (`xsave64`, ...) are used so the x87
//! FPU instruction and data pointers are saved in their 64-bit format.
//!
//! Off x86-64 the instruction wrappers do not exist; the rest of the crate builds
//! and its pure parts (catalog, enumeration of recorded dumps, layouts, model) work.

use crate::feature::XFeatures;

cfg_if::cfg_if! {
    if #[cfg(target_arch = "x86_64")] {
        use core::arch::asm;

        #[inline(always)]
        const fn split(rfbm: XFeatures) -> (u32, u32) {
            (rfbm.bits() as u32, (rfbm.bits() >> 32) as u32)
        }

        /// Read extended control register `xcr` (XGETBV).
        ///
        /// `xcr = 0` is XCR0 (enabled user components); `xcr = 1` is XINUSE (components
        /// not in their init state) where CPUID(0xD,1).EAX[2] says so.
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
            (u64::from(hi) << 32) | u64::from(lo)
        }

        /// Read XCR0 if the OS enabled XSAVE, `None` otherwise. Safe: it checks
        /// CPUID.1:ECX.OSXSAVE first.
        pub fn read_xcr0() -> Option<XFeatures> {
            if !os_xsave_enabled() {
                return None;
            }
            // SAFETY: OSXSAVE is set (checked above) and XCR0 always exists.
            let v = unsafe { xgetbv(0) };
            Some(XFeatures::from_bits_retain(v))
        }

        /// Read XINUSE (XGETBV with ECX = 1) if the CPU has it, `None` otherwise.
        pub fn read_xinuse() -> Option<XFeatures> {
            if !os_xsave_enabled() {
                return None;
            }
            if x86::cpuid::native_cpuid::cpuid_count(0xd, 1).eax & 4 == 0 {
                return None;
            }
            // SAFETY: OSXSAVE is set and CPUID(0xD,1).EAX[2] enumerates XGETBV1.
            let v = unsafe { xgetbv(1) };
            Some(XFeatures::from_bits_retain(v))
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

        fn os_xsave_enabled() -> bool {
            x86::cpuid::native_cpuid::cpuid_count(1, 0).ecx & (1 << 27) != 0
        }

        /// Write extended control register `xcr` (XSETBV).
        ///
        /// # Safety
        /// CPL 0, CR4.OSXSAVE set, and `value` a valid value for `xcr` (for XCR0: bit 0
        /// set, supported bits only, AVX with SSE, AVX-512 and AMX components all or
        /// none); otherwise #GP. Changing XCR0 changes the size and layout of every
        /// XSAVE area the kernel uses: the caller owns that consequence.
        #[inline]
        pub unsafe fn xsetbv(xcr: u32, value: u64) {
            // SAFETY: the caller guarantees CPL 0 and a valid value. XSETBV touches no
            // memory the compiler knows of and no flags.
            unsafe {
                asm!("xsetbv", in("ecx") xcr, in("eax") value as u32, in("edx") (value >> 32) as u32,
                     options(nomem, nostack, preserves_flags));
            }
        }

        macro_rules! save_insn {
            ($(#[$doc:meta])* $name:ident, $mnemonic:literal, $extra:literal) => {
                $(#[$doc])*
                ///
                /// # Safety
                /// - CR4.OSXSAVE is set and the CPU has this instruction (CPUID);
                /// - `area` is 64-byte aligned and valid for writes of the size CPUID gives
                ///   for `rfbm` in this instruction's format (see [`crate::layout::Layout`]);
                /// - the header (bytes 512..576) of `area` is in the state the instruction
                ///   requires: XSAVE/XSAVEOPT read XSTATE_BV and leave bytes 16..63 alone,
                ///   so a caller that restores the area later must have zeroed them;
                #[doc = $extra]
                #[inline]
                pub unsafe fn $name(area: *mut u8, rfbm: XFeatures) {
                    let (lo, hi) = split(rfbm);
                    // SAFETY: the caller guarantees alignment, size and the CPU feature.
                    // The instruction writes memory behind `area` (so no `nomem`/`readonly`)
                    // and does not touch the stack or flags.
                    unsafe {
                        asm!(concat!($mnemonic, " [{}]"), in(reg) area, in("eax") lo, in("edx") hi,
                             options(nostack, preserves_flags));
                    }
                }
            };
        }

        macro_rules! restore_insn {
            ($(#[$doc:meta])* $name:ident, $mnemonic:literal, $extra:literal) => {
                $(#[$doc])*
                ///
                /// # Safety
                /// - CR4.OSXSAVE is set and the CPU has this instruction (CPUID);
                /// - `area` is 64-byte aligned and valid for reads of its format's size;
                /// - the area's header is well formed (XSTATE_BV within XCOMP_BV and XCR0,
                ///   reserved bytes zero, MXCSR reserved bits clear when SSE state loads),
                ///   or the instruction raises #GP, which in ring 0 is a kernel oops;
                /// - loading the area's register values is what the caller intends (the
                ///   user's registers are replaced). The compiler is told: every vector,
                ///   opmask and x87 register is declared clobbered, so no value the
                ///   compiler keeps in one survives the call by accident.
                #[doc = $extra]
                #[inline]
                pub unsafe fn $name(area: *const u8, rfbm: XFeatures) {
                    let (lo, hi) = split(rfbm);
                    // SAFETY: the caller guarantees alignment, size, a valid header and the
                    // CPU feature. The instruction only reads memory (`readonly`), does not
                    // touch the stack or flags, and every register it may load is in the C
                    // ABI's clobber set (XMM/YMM/ZMM, k0-k7, x87/MMX).
                    unsafe {
                        asm!(concat!($mnemonic, " [{}]"), in(reg) area, in("eax") lo, in("edx") hi,
                             clobber_abi("C"), options(readonly, nostack, preserves_flags));
                    }
                }
            };
        }

        save_insn!(
            /// XSAVE: save the components in `rfbm & XCR0` in the standard form.
            xsave, "xsave64", "- any CPL.");
        save_insn!(
            /// XSAVEOPT: XSAVE that may skip components not modified since the last
            /// XRSTOR from this same area (the modified optimisation).
            xsaveopt, "xsaveopt64", "- any CPL; the skipped bytes keep what the area held.");
        save_insn!(
            /// XSAVEC: save `rfbm & XCR0` in the compacted form, XCOMP_BV = bit 63 |
            /// (`rfbm & XCR0`); init components get space but are not written.
            xsavec, "xsavec64", "- any CPL.");
        save_insn!(
            /// XSAVES: XSAVEC plus supervisor components (`rfbm & (XCR0 | IA32_XSS)`),
            /// with the init and modified optimisations.
            xsaves, "xsaves64", "- CPL 0 (otherwise #GP).");
        restore_insn!(
            /// XRSTOR: load `rfbm & XCR0` from a standard or compacted (XSAVEC) area;
            /// components in RFBM but not in XSTATE_BV are set to their init state.
            xrstor, "xrstor64", "- any CPL.");
        restore_insn!(
            /// XRSTORS: load `rfbm & (XCR0 | IA32_XSS)` from a compacted area.
            xrstors, "xrstors64", "- CPL 0 (otherwise #GP); XCOMP_BV bit 63 set.");
    }
}

/// A fault an XSAVE-family instruction raises instead of completing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// #GP(0): misaligned area, malformed header, reserved MXCSR bits, CPL > 0 for
    /// XSAVES/XRSTORS, a mask outside XCR0 | IA32_XSS.
    Gp,
    /// #NM: a restore would load a component that XFD has armed.
    Nm,
    /// #UD: the instruction is not enabled (CR4.OSXSAVE clear, or not enumerated).
    Ud,
}

/// Which instruction an [`XsaveUnit`] executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Insn {
    /// XSAVE (standard form).
    Xsave,
    /// XSAVEOPT (standard form, init and modified optimisations).
    Xsaveopt,
    /// XSAVEC (compacted form, init optimisation, user components).
    Xsavec,
    /// XSAVES (compacted form, supervisor components, CPL 0).
    Xsaves,
    /// XRSTOR (either form).
    Xrstor,
    /// XRSTORS (compacted form, supervisor components, CPL 0).
    Xrstors,
}

impl Insn {
    /// Whether the instruction writes the area (a save) rather than reading it.
    #[inline]
    pub const fn is_save(self) -> bool {
        !matches!(self, Self::Xrstor | Self::Xrstors)
    }
}

/// Something that executes XSAVE-family instructions on byte buffers: the real CPU
/// ([`Cpu`]) or the software model ([`crate::model::XsaveMachine`]). Fpstate
/// save/restore is written once against this trait, so the model can stand in for
/// ring 0 in user-space tests.
pub trait XsaveUnit {
    /// Save (XSAVE, XSAVEOPT, XSAVEC, XSAVES) the components in `rfbm` into `area`.
    ///
    /// # Errors
    /// The [`Fault`] the instruction raises (the model reports it; the real CPU
    /// never returns one, because a fault there does not return).
    fn save(&mut self, insn: Insn, area: &mut [u8], rfbm: XFeatures) -> Result<(), Fault>;

    /// Restore (XRSTOR, XRSTORS) the components in `rfbm` from `area`.
    ///
    /// # Errors
    /// As for [`XsaveUnit::save`].
    fn restore(&mut self, insn: Insn, area: &[u8], rfbm: XFeatures) -> Result<(), Fault>;
}

/// The CPU this code runs on, as an [`XsaveUnit`].
///
/// Constructing one is the `unsafe` step: it asserts that the instructions it will
/// run are usable here. Its methods check what can be checked locally (alignment,
/// size, the instruction's class) and refuse with [`Fault`] instead of faulting.
#[derive(Debug)]
pub struct Cpu {
    supervisor: bool,
}

impl Cpu {
    /// A unit for user mode: XSAVE, XSAVEOPT, XSAVEC and XRSTOR.
    ///
    /// # Safety
    /// CR4.OSXSAVE is set and the CPU enumerates XSAVEOPT and XSAVEC if they are
    /// used; every area passed later is large enough for the `rfbm` given with it
    /// in its form (the methods check the slice length against the header only
    /// where the form fixes it); restores replace register state the compiler may
    /// rely on, so they run only where no compiler-held vector values are live.
    pub const unsafe fn user() -> Self {
        Self { supervisor: false }
    }

    /// A unit for ring 0: additionally XSAVES and XRSTORS.
    ///
    /// # Safety
    /// As for [`Cpu::user`], plus: the code runs at CPL 0 and the CPU enumerates
    /// XSAVES.
    pub const unsafe fn supervisor() -> Self {
        Self { supervisor: true }
    }
}

#[cfg(target_arch = "x86_64")]
impl XsaveUnit for Cpu {
    fn save(&mut self, insn: Insn, area: &mut [u8], rfbm: XFeatures) -> Result<(), Fault> {
        if area.as_ptr() as usize % 64 != 0 || area.len() < 576 {
            return Err(Fault::Gp);
        }
        let p = area.as_mut_ptr();
        match insn {
            // SAFETY: `Cpu::user`'s contract covers OSXSAVE and the area size;
            // alignment was checked above.
            Insn::Xsave => unsafe { xsave(p, rfbm) },
            // SAFETY: as above.
            Insn::Xsaveopt => unsafe { xsaveopt(p, rfbm) },
            // SAFETY: as above.
            Insn::Xsavec => unsafe { xsavec(p, rfbm) },
            // SAFETY: `Cpu::supervisor`'s contract covers CPL 0 and XSAVES.
            Insn::Xsaves if self.supervisor => unsafe { xsaves(p, rfbm) },
            Insn::Xsaves => return Err(Fault::Gp),
            Insn::Xrstor | Insn::Xrstors => return Err(Fault::Ud),
        }
        Ok(())
    }

    fn restore(&mut self, insn: Insn, area: &[u8], rfbm: XFeatures) -> Result<(), Fault> {
        if area.as_ptr() as usize % 64 != 0 || area.len() < 576 {
            return Err(Fault::Gp);
        }
        let p = area.as_ptr();
        match insn {
            // SAFETY: `Cpu::user`'s contract covers OSXSAVE, size and live state;
            // alignment was checked above.
            Insn::Xrstor => unsafe { xrstor(p, rfbm) },
            // SAFETY: `Cpu::supervisor`'s contract covers CPL 0 and XSAVES.
            Insn::Xrstors if self.supervisor => unsafe { xrstors(p, rfbm) },
            Insn::Xrstors => return Err(Fault::Gp),
            _ => return Err(Fault::Ud),
        }
        Ok(())
    }
}
