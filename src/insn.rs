//! The XSAVE-family instructions, one thin wrapper each, and [`Cpu`], the unit
//! that checks every area before it runs one. The live CPU's probes (XGETBV,
//! FXSAVE's MXCSR mask) stand one floor down, in the private `probe` module,
//! and are re-exported here under their old paths.
//!
//! Every wrapper takes the requested-feature bitmap (RFBM) as an [`XFeatures`] and
//! splits it into EDX:EAX. The 64-bit forms (`xsave64`, ...) are used so the x87
//! FPU instruction and data pointers are saved in their 64-bit format.
//!
//! Off x86-64 the instruction wrappers do not exist; the rest of the crate builds
//! and its pure parts (catalog, enumeration of recorded dumps, layouts, model) work.

use core::marker::PhantomData;

use crate::cpuid::LiveCpuid;
use crate::enumerate::{EnumError, Enumeration};
use crate::feature::XFeatures;

cfg_if::cfg_if! {
    if #[cfg(target_arch = "x86_64")] {
        use core::arch::asm;

        use crate::probe::os_xsave_enabled;
        pub use crate::probe::{read_mxcsr_mask, xgetbv};

        #[inline(always)]
        const fn split(rfbm: XFeatures) -> (u32, u32) {
            (rfbm.bits() as u32, (rfbm.bits() >> 32) as u32)
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
            if !crate::probe::has_xgetbv1() {
                return None;
            }
            // SAFETY: OSXSAVE is set and CPUID(0xD,1).EAX[2] enumerates XGETBV1.
            let v = unsafe { xgetbv(1) };
            Some(XFeatures::from_bits_retain(v))
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
                    // The instruction only reads memory, touches no stack or flags, and every
                    // register it may load is in the C ABI's clobber set.
                    // SAFETY: the caller guarantees alignment, size, header and the feature.
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

        /// LDMXCSR: load `value` into MXCSR.
        ///
        /// # Safety
        /// SSE is enabled (CR4.OSFXSR, and XCR0\[1\] where XSAVE is on), `value`
        /// has no bit outside the CPU's MXCSR_MASK (otherwise #GP), and the
        /// compiler relies on no floating-point mode across the call (a kernel
        /// SIMD section's start, where the previous owner's state was saved).
        #[inline]
        pub unsafe fn ldmxcsr(value: u32) {
            // SAFETY: the caller guarantees SSE is on and the value is legal;
            // LDMXCSR reads the 4 bytes of `value` on the stack and nothing else.
            unsafe {
                asm!("ldmxcsr [{p}]", p = in(reg) &value, options(nostack, readonly, preserves_flags));
            }
        }

        /// FNINIT: the x87 control, status and tag words to their defaults
        /// (FCW 0x37f, all registers empty), without waiting for pending
        /// exceptions.
        ///
        /// # Safety
        /// The compiler relies on no x87 state across the call (as for
        /// [`ldmxcsr`]).
        #[inline]
        pub unsafe fn fninit() {
            // SAFETY: FNINIT touches only x87 state, which the caller gives up.
            unsafe { asm!("fninit", options(nomem, nostack, preserves_flags)) }
        }

        /// WRMSR IA32_XFD (MSR 0x1c4): arm extended feature disable for `xfd`.
        ///
        /// # Safety
        /// CPL 0; the CPU enumerates XFD (CPUID(0xD,1).EAX\[4\]) and every bit
        /// of `xfd` is a component CPUID marks XFD-capable (otherwise #GP); no
        /// code relies on a component that `xfd` arms being usable until it is
        /// disarmed again.
        #[inline]
        pub unsafe fn write_xfd(xfd: XFeatures) {
            let (lo, hi) = split(xfd);
            // SAFETY: the caller guarantees CPL 0 and a value WRMSR accepts;
            // the MSR write touches no memory.
            unsafe {
                asm!("wrmsr", in("ecx") 0x1c4u32, in("eax") lo, in("edx") hi,
                     options(nomem, nostack, preserves_flags));
            }
        }
    }
}

/// A fault an XSAVE-family instruction raises instead of completing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// #GP(0): misaligned area, malformed header, reserved MXCSR bits, CPL > 0 for
    /// XSAVES/XRSTORS, a mask outside XCR0 | IA32_XSS.
    Gp,
    /// #NM: a restore would load a component that XFD has armed.
    Nm,
    /// #UD: the instruction is not enabled (CR4.OSXSAVE clear, or not enumerated).
    Ud,
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Gp => {
                "#GP: general protection (misaligned or short area, bad header or MXCSR, CPL, mask)"
            }
            Self::Nm => "#NM: the restore would load a component XFD has armed",
            Self::Ud => "#UD: the instruction is not enabled or not enumerated",
        })
    }
}

impl core::error::Error for Fault {}

/// Which instruction an [`XsaveUnit`] executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
/// ([`Cpu`]) or the software model (`model::XsaveMachine`, `alloc` feature). Fpstate
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

/// Why [`Cpu::user`] or [`Cpu::supervisor`] refused to build a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuError {
    /// CPUID.1:ECX.OSXSAVE is clear: the OS has not enabled XSAVE (CR4.OSXSAVE).
    XsaveNotEnabled,
    /// This CPU's CPUID leaf 0xD was refused.
    Cpuid(EnumError),
    /// A supervisor unit was asked for on a CPU without XSAVES/XRSTORS.
    NoXsaves,
}

impl core::fmt::Display for CpuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::XsaveNotEnabled => {
                f.write_str("the OS has not enabled XSAVE (CR4.OSXSAVE clear)")
            }
            Self::Cpuid(_) => f.write_str("this CPU's CPUID leaf 0xD was refused"),
            Self::NoXsaves => f.write_str("the CPU has no XSAVES/XRSTORS"),
        }
    }
}

impl core::error::Error for CpuError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Cpuid(e) => Some(e),
            _ => None,
        }
    }
}

impl From<EnumError> for CpuError {
    fn from(e: EnumError) -> Self {
        Self::Cpuid(e)
    }
}

/// The CPU this code runs on, as an [`XsaveUnit`].
///
/// It carries this CPU's own enumeration (read from CPUID when it is built), so
/// its methods check everything memory safety depends on before they run an
/// instruction: the area's alignment, that the area holds every byte the
/// instruction may touch for that RFBM (a save: the size of `rfbm`'s components
/// in the instruction's form; a restore: what the area's header says it holds),
/// and that the CPU has the instruction. What they refuse comes back as the
/// [`Fault`] the CPU would raise, or as [`Fault::Gp`] for a short area.
/// Constructing one stays `unsafe` for what no check can see: the register state
/// a restore replaces, and the privilege level.
///
/// [`Cpu::bind`] makes those checks once for an area the caller lends it
/// exclusively, and returns a [`BoundArea`] whose saves and restores run the
/// instruction alone.
#[derive(Clone, Debug)]
pub struct Cpu {
    supervisor: bool,
    e: Enumeration,
    /// The last save's (mask, form) and its size, so a context switch that
    /// saves the same mask again pays no walk over the components.
    save_memo: Option<(u64, u32)>,
    /// The same for restores.
    restore_memo: Option<(u64, u32)>,
}

/// Bit 63 of a memo key: the compacted form (never a component bit here).
const MEMO_COMPACTED: u64 = 1 << 63;

#[cfg(target_arch = "x86_64")]
impl Cpu {
    /// A unit for user mode: XSAVE, XSAVEOPT, XSAVEC and XRSTOR, each where the
    /// CPU enumerates it.
    ///
    /// # Errors
    /// [`CpuError::XsaveNotEnabled`] if the OS has not enabled XSAVE;
    /// [`CpuError::Cpuid`] if this CPU's leaf 0xD is refused.
    ///
    /// # Safety
    /// A restore replaces the x87, SSE, AVX and other registers it loads,
    /// MXCSR and the x87 control word included: the caller runs restores only
    /// where the compiler holds no values in those registers and relies on no
    /// floating-point mode (a context switch, a signal return).
    pub unsafe fn user() -> Result<Self, CpuError> {
        Self::build(false)
    }

    /// A unit for ring 0: additionally XSAVES and XRSTORS.
    ///
    /// # Errors
    /// As for [`Cpu::user`], and [`CpuError::NoXsaves`] on a CPU without them.
    ///
    /// # Safety
    /// As for [`Cpu::user`], and the code runs at CPL 0 (XSAVES/XRSTORS #GP
    /// elsewhere).
    pub unsafe fn supervisor() -> Result<Self, CpuError> {
        Self::build(true)
    }

    fn build(supervisor: bool) -> Result<Self, CpuError> {
        if read_xcr0().is_none() {
            return Err(CpuError::XsaveNotEnabled);
        }
        let e = Enumeration::from_cpuid(&LiveCpuid)?;
        if supervisor && !e.xsaves() {
            return Err(CpuError::NoXsaves);
        }
        Ok(Self {
            supervisor,
            e,
            save_memo: None,
            restore_memo: None,
        })
    }
}

/// What a save instruction writes: the form and the components it may cover.
#[derive(Clone, Copy)]
struct SavePlan {
    compacted: bool,
    /// XCR0's possible bits, with IA32_XSS's for XSAVES.
    enabled: XFeatures,
}

impl Cpu {
    /// The enumeration this unit checks areas against.
    #[inline]
    pub const fn enumeration(&self) -> &Enumeration {
        &self.e
    }

    /// Whether this is a ring-0 unit ([`Cpu::supervisor`]).
    #[inline]
    pub const fn is_supervisor(&self) -> bool {
        self.supervisor
    }

    /// The bytes of `mask` in the given form.
    fn size_of(e: &Enumeration, mask: XFeatures, compacted: bool) -> u32 {
        if compacted {
            e.compacted_size(mask)
        } else {
            e.standard_size(mask)
        }
    }

    /// [`Cpu::size_of`] through a one-entry memo: a hit is one compare.
    #[inline]
    fn size(
        e: &Enumeration,
        memo: &mut Option<(u64, u32)>,
        mask: XFeatures,
        compacted: bool,
    ) -> u32 {
        let key = mask.bits() | if compacted { MEMO_COMPACTED } else { 0 };
        match *memo {
            Some((k, size)) if k == key => size,
            _ => Self::size_miss(e, memo, key, mask, compacted),
        }
    }

    /// The memo's miss, out of the inlined path.
    #[cold]
    #[inline(never)]
    fn size_miss(
        e: &Enumeration,
        memo: &mut Option<(u64, u32)>,
        key: u64,
        mask: XFeatures,
        compacted: bool,
    ) -> u32 {
        let size = Self::size_of(e, mask, compacted);
        *memo = Some((key, size));
        size
    }

    /// Whether this unit may run save instruction `insn`, and what it writes.
    #[inline]
    fn save_plan(&self, insn: Insn) -> Result<SavePlan, Fault> {
        let e = &self.e;
        let (have, compacted, enabled) = match insn {
            Insn::Xsave => (true, false, e.xcr0_supported()),
            Insn::Xsaveopt => (e.xsaveopt(), false, e.xcr0_supported()),
            Insn::Xsavec => (e.xsavec(), true, e.xcr0_supported()),
            Insn::Xsaves if !self.supervisor => return Err(Fault::Gp),
            Insn::Xsaves => (e.xsaves(), true, e.supported()),
            Insn::Xrstor | Insn::Xrstors => return Err(Fault::Ud),
        };
        if have {
            Ok(SavePlan { compacted, enabled })
        } else {
            Err(Fault::Ud)
        }
    }

    /// Whether this unit may run restore instruction `insn` (`true`: XRSTORS).
    #[inline]
    fn restore_plan(&self, insn: Insn) -> Result<bool, Fault> {
        match insn {
            Insn::Xrstor => Ok(false),
            Insn::Xrstors if self.supervisor => Ok(true),
            Insn::Xrstors => Err(Fault::Gp),
            _ => Err(Fault::Ud),
        }
    }

    /// The components and form a restore of `area` with `rfbm` reads, from the
    /// area's header, or `None` for an area shorter than its header.
    #[inline]
    fn restore_extent(&self, area: &[u8], rfbm: XFeatures) -> Option<(XFeatures, bool)> {
        let word = |at: usize| {
            area.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let (xstate_bv, xcomp_bv) = (word(512)?, word(520)?);
        let e = &self.e;
        Some(if xcomp_bv & MEMO_COMPACTED != 0 {
            // The compacted form is read by XCOMP_BV (within what the CPU
            // supports, or the header check #GPs first).
            (XFeatures::from_bits_retain(xcomp_bv) & e.supported(), true)
        } else {
            // The standard form: the components RFBM and XSTATE_BV both name.
            let bv = XFeatures::from_bits_retain(xstate_bv);
            (rfbm & bv & e.xcr0_supported(), false)
        })
    }

    /// Check `area` once for saves by `save` with `save_rfbm` and restores by
    /// `restore` with `restore_rfbm`, and lend it to a [`BoundArea`] that runs
    /// those instructions with no per-call check.
    ///
    /// The checks are [`XsaveUnit::save`]'s and [`XsaveUnit::restore`]'s, made
    /// now: alignment, the instructions (enumerated, and XSAVES/XRSTORS only on
    /// a supervisor unit), the bytes the save writes and the bytes the area's
    /// present header makes a restore read. They stay true while the area is
    /// bound: only the bound instructions touch it, a save leaves a header
    /// whose restore reads no further than the save wrote, and a standard-form
    /// save leaves XCOMP_BV as it was.
    ///
    /// ```no_run
    /// # use xstate::{XFeatures, insn::{Cpu, Insn}};
    /// #[repr(C, align(64))]
    /// struct Area([u8; 4096]);
    /// let mut area = Area([0; 4096]);
    /// // SAFETY: the restores below run where no compiler value lives in the
    /// // registers they replace.
    /// let cpu = unsafe { Cpu::user() }?;
    /// let rfbm = XFeatures::from_bits_retain(0x3);
    /// let mut bound = cpu.bind(&mut area.0, Insn::Xsavec, rfbm, Insn::Xrstor, rfbm)?;
    /// bound.save();
    /// bound.restore();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The [`Fault`] [`XsaveUnit::save`] or [`XsaveUnit::restore`] would return
    /// for the first call: [`Fault::Gp`] for a misaligned or short area,
    /// [`Fault::Ud`] for an instruction of the wrong kind or not enumerated,
    /// [`Fault::Gp`] for XSAVES/XRSTORS on a user unit.
    pub fn bind<'a>(
        &'a self,
        area: &'a mut [u8],
        save: Insn,
        save_rfbm: XFeatures,
        restore: Insn,
        restore_rfbm: XFeatures,
    ) -> Result<BoundArea<'a>, Fault> {
        if area.as_ptr() as usize % 64 != 0 {
            return Err(Fault::Gp);
        }
        let plan = self.save_plan(save)?;
        self.restore_plan(restore)?;
        let (mask, compacted) = self.restore_extent(area, restore_rfbm).ok_or(Fault::Gp)?;
        let writes = Self::size_of(&self.e, save_rfbm & plan.enabled, plan.compacted);
        let reads = Self::size_of(&self.e, mask, compacted).max(576);
        if (area.len() as u64) < u64::from(writes.max(reads)) {
            return Err(Fault::Gp);
        }
        let save = match save {
            Insn::Xsave => SaveOp::Xsave,
            Insn::Xsaveopt => SaveOp::Xsaveopt,
            Insn::Xsavec => SaveOp::Xsavec,
            _ => SaveOp::Xsaves,
        };
        Ok(BoundArea {
            area,
            save,
            save_rfbm,
            xrstors: restore == Insn::Xrstors,
            restore_rfbm,
            _unit: PhantomData,
        })
    }
}

/// The save instruction of a [`BoundArea`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SaveOp {
    Xsave,
    Xsaveopt,
    Xsavec,
    Xsaves,
}

/// An area lent to a [`Cpu`] and checked once ([`Cpu::bind`], or
/// [`Fpstate::bind`](crate::fpstate::Fpstate::bind) for an fpstate): its
/// [`save`](BoundArea::save) and [`restore`](BoundArea::restore) run the
/// instruction with the RFBM chosen at binding, and nothing else, as Linux's
/// `os_xsave()` does with an fpstate. While it lives, nothing but those
/// instructions writes the area (it holds the only `&mut`), which is what keeps
/// the binding's checks true.
#[derive(Debug)]
pub struct BoundArea<'a> {
    area: &'a mut [u8],
    save: SaveOp,
    save_rfbm: XFeatures,
    xrstors: bool,
    restore_rfbm: XFeatures,
    /// The unit whose constructor's contract covers these instructions (the
    /// registers a restore replaces, CPL 0 for XSAVES/XRSTORS).
    _unit: PhantomData<&'a Cpu>,
}

#[cfg(target_arch = "x86_64")]
impl BoundArea<'_> {
    /// Save the registers into the area with the bound instruction and RFBM.
    #[inline]
    pub fn save(&mut self) {
        let p = self.area.as_mut_ptr();
        let rfbm = self.save_rfbm;
        // Each arm: `Cpu::bind` checked that the unit (whose constructor's
        // contract covers OSXSAVE and, for XSAVES, CPL 0) has this instruction,
        // that `p` is 64-byte aligned, and that the area holds the bytes a
        // save of `rfbm` in this form writes; the area has been borrowed
        // exclusively since.
        match self.save {
            // SAFETY: as above.
            SaveOp::Xsavec => unsafe { xsavec(p, rfbm) },
            // SAFETY: as above.
            SaveOp::Xsaveopt => unsafe { xsaveopt(p, rfbm) },
            // SAFETY: as above.
            SaveOp::Xsave => unsafe { xsave(p, rfbm) },
            // SAFETY: as above.
            SaveOp::Xsaves => unsafe { xsaves(p, rfbm) },
        }
    }

    /// Load the registers from the area with the bound instruction and RFBM.
    #[inline]
    pub fn restore(&self) {
        let p = self.area.as_ptr();
        let rfbm = self.restore_rfbm;
        // The read extent: `Cpu::bind` checked the area holds what its header
        // then made a restore read, and what a bound save writes; only bound
        // saves have written it since, and each leaves a header whose restore
        // reads within what it wrote or what the header named before.
        if self.xrstors {
            // SAFETY: as above; the unit is a supervisor unit (checked at
            // binding), whose contract covers CPL 0 and the registers replaced.
            unsafe { xrstors(p, rfbm) }
        } else {
            // SAFETY: as above; the unit's contract covers the registers replaced.
            unsafe { xrstor(p, rfbm) }
        }
    }
}

impl BoundArea<'_> {
    /// The area's bytes, as the last save left them.
    #[inline]
    pub fn area(&self) -> &[u8] {
        self.area
    }
}

#[cfg(target_arch = "x86_64")]
impl XsaveUnit for Cpu {
    #[inline]
    fn save(&mut self, insn: Insn, area: &mut [u8], rfbm: XFeatures) -> Result<(), Fault> {
        if area.as_ptr() as usize % 64 != 0 {
            return Err(Fault::Gp);
        }
        let plan = self.save_plan(insn)?;
        // The instruction writes within the area of `rfbm & XCR0` (| IA32_XSS),
        // which lies within that of `rfbm` & everything the CPU supports.
        let needed = Self::size(
            &self.e,
            &mut self.save_memo,
            rfbm & plan.enabled,
            plan.compacted,
        );
        if area.len() < needed as usize {
            return Err(Fault::Gp);
        }
        let p = area.as_mut_ptr();
        match insn {
            // SAFETY: OSXSAVE was checked when the unit was built; `area` is
            // 64-byte aligned and holds the `needed` bytes this save may write.
            Insn::Xsave => unsafe { xsave(p, rfbm) },
            // SAFETY: as above, and the CPU enumerates XSAVEOPT.
            Insn::Xsaveopt => unsafe { xsaveopt(p, rfbm) },
            // SAFETY: as above, and the CPU enumerates XSAVEC.
            Insn::Xsavec => unsafe { xsavec(p, rfbm) },
            // SAFETY: as above; the CPU enumerates XSAVES and `Cpu::supervisor`'s
            // contract covers CPL 0.
            _ => unsafe { xsaves(p, rfbm) },
        }
        Ok(())
    }

    #[inline]
    fn restore(&mut self, insn: Insn, area: &[u8], rfbm: XFeatures) -> Result<(), Fault> {
        if area.as_ptr() as usize % 64 != 0 {
            return Err(Fault::Gp);
        }
        let supervisor = self.restore_plan(insn)?;
        let Some((mask, compacted)) = self.restore_extent(area, rfbm) else {
            return Err(Fault::Gp);
        };
        let needed = Self::size(&self.e, &mut self.restore_memo, mask, compacted).max(576);
        if area.len() < needed as usize {
            return Err(Fault::Gp);
        }
        let p = area.as_ptr();
        if supervisor {
            // `area` is aligned and holds every byte its header makes XRSTORS read.
            // SAFETY: OSXSAVE and XSAVES checked at build; `Cpu::supervisor`'s
            // contract covers CPL 0 and the registers replaced.
            unsafe { xrstors(p, rfbm) }
        } else {
            // SAFETY: OSXSAVE was checked when the unit was built and `Cpu::user`'s
            // contract covers the registers replaced; `area` is aligned and holds
            // every byte its header makes XRSTOR read.
            unsafe { xrstor(p, rfbm) }
        }
        Ok(())
    }
}
