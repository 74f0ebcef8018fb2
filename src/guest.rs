//! What a hypervisor needs on top of the host's enumeration: the CPUID leaf 0xD a
//! guest sees ([`GuestXsave`], what KVM builds by hand in `arch/x86/kvm/cpuid.c` and
//! a VMM installs with `KVM_SET_CPUID2`), the guest's XSETBV and `WRMSR IA32_XSS`
//! rules with the size reports they move, and the checks a live migration or a
//! snapshot restore needs ([`compatible`], [`translate`], [`required_size`]).
//!
//! Everything here is pure: the host's facts come in as an [`Enumeration`], the
//! process's guest permissions as a [`PermSet`]; nothing touches the hardware.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;

use bitflags::bitflags;

use crate::config::{Configs, LINUX_SUPERVISOR, LINUX_USER};
use crate::cpuid::{CpuidResult, CpuidSource};
use crate::enumerate::{EXTENDED_START, Enumeration};
use crate::error::BufferTooSmall;
use crate::feature::CATALOG;
use crate::feature::XFeatures;
use crate::fpstate::{Fpstate, Storage};
use crate::perm::PermSet;
use crate::uabi::UabiError;

bitflags! {
    /// The XSAVE instruction-set extensions CPUID(0xD,1).EAX enumerates: which a
    /// guest is shown.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct XsaveFlags: u32 {
        /// EAX[0]: XSAVEOPT.
        const XSAVEOPT = 1 << 0;
        /// EAX[1]: XSAVEC and the compacted form.
        const XSAVEC = 1 << 1;
        /// EAX[2]: XGETBV with ECX = 1 (XINUSE).
        const XGETBV1 = 1 << 2;
        /// EAX[3]: XSAVES/XRSTORS and IA32_XSS.
        const XSAVES = 1 << 3;
        /// EAX[4]: extended feature disable (IA32_XFD, IA32_XFD_ERR).
        const XFD = 1 << 4;
    }
}

impl XsaveFlags {
    /// The extensions a host enumerates: the most a guest can be shown.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, guest::XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-haswell-core-i7-4770.txt")).unwrap()).unwrap();
    /// assert_eq!(XsaveFlags::of(&e), XsaveFlags::XSAVEOPT); // Haswell: no XSAVEC/XSAVES yet
    /// ```
    pub const fn of(e: &Enumeration) -> Self {
        let mut f = Self::empty();
        if e.xsaveopt() {
            f = f.union(Self::XSAVEOPT);
        }
        if e.xsavec() {
            f = f.union(Self::XSAVEC);
        }
        if e.xgetbv1() {
            f = f.union(Self::XGETBV1);
        }
        if e.xsaves() {
            f = f.union(Self::XSAVES);
        }
        if e.xfd() {
            f = f.union(Self::XFD);
        }
        f
    }
}

/// Why a guest leaf, an XCR0 or IA32_XSS value, or a migration was refused.
/// [`GuestError::errno`] gives the code KVM returns for the same refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuestError {
    /// Supervisor components (the host enumerates them in IA32_XSS) in an XCR0 mask.
    SupervisorInXcr0 {
        /// The offending bits.
        mask: u64,
    },
    /// User components (x87, SSE or anything the host enumerates in XCR0) in an
    /// IA32_XSS mask.
    UserInXss {
        /// The offending bits.
        mask: u64,
    },
    /// Components the CPU does not support.
    Unsupported {
        /// The unsupported bits.
        mask: u64,
    },
    /// Components outside the process's guest permission set (for AMX: no
    /// `ARCH_REQ_XCOMP_GUEST_PERM` yet).
    NotPermitted {
        /// The bits without permission.
        mask: u64,
    },
    /// An allowed XCR0 mask without x87 or SSE: every XSAVE CPU enumerates both.
    LegacyMissing {
        /// The mask.
        xcr0: u64,
    },
    /// Extensions the host does not have.
    FlagsUnsupported {
        /// The extensions asked for.
        flags: XsaveFlags,
        /// The host's.
        host: XsaveFlags,
    },
    /// Supervisor components exposed without XSAVES, the only way to reach them.
    XssWithoutXsaves {
        /// The IA32_XSS mask.
        xss: u64,
    },
    /// XSETBV: bits outside what the guest's CPUID allows (#GP).
    Xcr0NotAllowed {
        /// The value written.
        xcr0: u64,
        /// The allowed mask (CPUID(0xD,0) EDX:EAX).
        allowed: u64,
    },
    /// XSETBV: `XCR0[0]` (x87) is clear (#GP).
    X87Disabled {
        /// The value written.
        xcr0: u64,
    },
    /// XSETBV: `XCR0[2]` (AVX) set with `XCR0[1]` (SSE) clear (#GP).
    AvxWithoutSse {
        /// The value written.
        xcr0: u64,
    },
    /// XSETBV: AVX-512 state enabled with `XCR0[2]` (AVX) clear (#GP).
    Avx512WithoutAvx {
        /// The value written.
        xcr0: u64,
    },
    /// XSETBV: only part of a group that is enabled as a whole: MPX (bits 3-4, as
    /// KVM enforces), AVX-512 (5-7) or AMX (17-18) (#GP).
    PartialGroup {
        /// The value written.
        xcr0: u64,
        /// The group's bits.
        group: u64,
    },
    /// `WRMSR IA32_XSS`: bits outside what the guest's CPUID allows (#GP).
    XssNotAllowed {
        /// The value written.
        xss: u64,
        /// The allowed mask (CPUID(0xD,1) EDX:ECX).
        allowed: u64,
    },
    /// Migration: components of the guest's state the source CPU cannot hold,
    /// so the state or XCR0 did not come from it.
    NotOnSource {
        /// The offending bits.
        mask: u64,
    },
    /// Migration: components of the guest's state the destination cannot hold.
    NotOnDestination {
        /// The missing bits.
        mask: u64,
    },
    /// Migration: a component has a different size on the two CPUs.
    SizeMismatch {
        /// The component.
        index: u32,
        /// Its size on the source.
        src: u32,
        /// Its size on the destination.
        dst: u32,
    },
    /// A buffer the user ABI refuses: too short for its XSTATE_BV or format,
    /// XCOMP_BV not zero (migration buffers are in the standard form), reserved
    /// header bytes set. The same checks and errors as [`crate::uabi`]'s.
    Uabi(UabiError),
    /// XSTATE_BV has components XCR0 does not enable.
    NotInXcr0 {
        /// The XSTATE_BV.
        xstate_bv: u64,
        /// The XCR0.
        xcr0: u64,
    },
    /// APX (component 19) together with MPX (3-4): APX lives at MPX's standard
    /// offset, and Linux refuses a CPU enumerating both ("Both APX/MPX present
    /// in the CPU's xstate features"), so no guest may be shown both.
    ApxWithMpx {
        /// The mask holding both.
        mask: u64,
    },
    /// Migration: a component of the guest's is missing on the destination,
    /// which enumerates another at its standard offset (APX where MPX was):
    /// its state would be dropped and its bytes read as the other's.
    Replaced {
        /// The guest's component.
        index: u32,
        /// The destination's component at its offset.
        by: u32,
    },
    /// Migration: a user component of the guest's CPUID sits at another
    /// standard offset on the destination. The guest keeps the CPUID it booted
    /// with, so its kernel would look for the state where the hardware no
    /// longer puts it (ptrace, signal-frame PKRU).
    OffsetMismatch {
        /// The component.
        index: u32,
        /// Its standard offset on the source.
        src: u32,
        /// Its standard offset on the destination.
        dst: u32,
    },
    /// Migration: CPUID(0xD, `subleaf`) would read differently on the
    /// destination (a component's alignment or XFD flag), so the guest's own
    /// layout computations would no longer match the hardware.
    SubleafMismatch {
        /// The subleaf.
        subleaf: u32,
    },
    /// `WRMSR IA32_XFD` / `IA32_XFD_ERR`: bits outside what the guest may arm,
    /// its XCR0-allowed XFD-capable components (KVM's
    /// `kvm_guest_supported_xfd`), or any bit for a guest not shown XFD (#GP).
    XfdNotAllowed {
        /// The value written.
        value: u64,
        /// What the guest may arm.
        allowed: u64,
    },
    /// A snapshot's side state lacks a register that must travel for this
    /// guest (Firecracker #5972: a snapshot without IA32_XSS).
    MissingSideReg {
        /// The register.
        reg: SideReg,
    },
    /// A snapshot's side state holds a register this guest has no place for:
    /// restoring would drop its value.
    UnexpectedSideReg {
        /// The register.
        reg: SideReg,
    },
    /// Side-state bytes are not a valid encoding: wrong magic, count or
    /// length, an unknown tag, tags out of order, reserved bytes set.
    MalformedSideState {
        /// The byte offset of the first bad field.
        offset: usize,
    },
}

impl GuestError {
    /// The Linux errno (positive) KVM returns for the same refusal: EPERM for a
    /// missing guest permission (`fpu_enable_guest_xfd_features`), EOPNOTSUPP for
    /// what the CPU lacks, EFAULT for a short buffer, EINVAL otherwise.
    pub const fn errno(self) -> i32 {
        match self {
            Self::NotPermitted { .. } => 1,      // EPERM
            Self::Unsupported { .. } => 95,      // EOPNOTSUPP
            Self::FlagsUnsupported { .. } => 95, // EOPNOTSUPP
            Self::NotOnDestination { .. } => 95, // EOPNOTSUPP
            Self::Uabi(e) => e.errno(),
            _ => 22, // EINVAL
        }
    }
}

impl From<UabiError> for GuestError {
    fn from(e: UabiError) -> Self {
        Self::Uabi(e)
    }
}

impl From<BufferTooSmall> for GuestError {
    fn from(b: BufferTooSmall) -> Self {
        Self::Uabi(b.into())
    }
}

impl core::error::Error for GuestError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Uabi(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SupervisorInXcr0 { mask } => {
                write!(
                    f,
                    "supervisor components {mask:#x} cannot be enabled in XCR0"
                )
            }
            Self::UserInXss { mask } => {
                write!(f, "user components {mask:#x} cannot be enabled in IA32_XSS")
            }
            Self::Unsupported { mask } => {
                write!(f, "components {mask:#x} are not supported by the CPU")
            }
            Self::NotPermitted { mask } => {
                write!(
                    f,
                    "components {mask:#x} are not in the process's guest permissions"
                )
            }
            Self::LegacyMissing { xcr0 } => write!(f, "XCR0 mask {xcr0:#x} lacks x87 or SSE"),
            Self::FlagsUnsupported { flags, host } => write!(
                f,
                "XSAVE extensions {:#x} asked, the host has only {:#x}",
                flags.bits(),
                host.bits()
            ),
            Self::XssWithoutXsaves { xss } => {
                write!(f, "IA32_XSS mask {xss:#x} exposed without XSAVES")
            }
            Self::Xcr0NotAllowed { xcr0, allowed } => {
                write!(
                    f,
                    "XCR0 {xcr0:#x} has bits outside the allowed {allowed:#x}"
                )
            }
            Self::X87Disabled { xcr0 } => write!(f, "XCR0 {xcr0:#x} clears bit 0 (x87)"),
            Self::AvxWithoutSse { xcr0 } => write!(f, "XCR0 {xcr0:#x} sets AVX without SSE"),
            Self::Avx512WithoutAvx { xcr0 } => write!(f, "XCR0 {xcr0:#x} sets AVX-512 without AVX"),
            Self::PartialGroup { xcr0, group } => {
                write!(
                    f,
                    "XCR0 {xcr0:#x} enables only part of the group {group:#x}"
                )
            }
            Self::XssNotAllowed { xss, allowed } => {
                write!(
                    f,
                    "IA32_XSS {xss:#x} has bits outside the allowed {allowed:#x}"
                )
            }
            Self::NotOnSource { mask } => {
                write!(
                    f,
                    "components {mask:#x} are not supported by the source CPU"
                )
            }
            Self::NotOnDestination { mask } => {
                write!(f, "components {mask:#x} cannot be held by the destination")
            }
            Self::SizeMismatch { index, src, dst } => write!(
                f,
                "component {index} is {src} bytes on the source and {dst} on the destination"
            ),
            Self::Uabi(e) => write!(f, "buffer refused: {e}"),
            Self::NotInXcr0 { xstate_bv, xcr0 } => {
                write!(
                    f,
                    "XSTATE_BV {xstate_bv:#x} has components outside XCR0 {xcr0:#x}"
                )
            }
            Self::ApxWithMpx { mask } => write!(
                f,
                "mask {mask:#x} holds APX and MPX, which share a standard offset"
            ),
            Self::Replaced { index, by } => write!(
                f,
                "component {index} is missing on the destination, which has component {by} at its offset"
            ),
            Self::OffsetMismatch { index, src, dst } => write!(
                f,
                "component {index} is at standard offset {src} on the source and {dst} on the destination"
            ),
            Self::SubleafMismatch { subleaf } => write!(
                f,
                "CPUID(0xD,{subleaf}) differs between the source and the destination"
            ),
            Self::XfdNotAllowed { value, allowed } => write!(
                f,
                "XFD value {value:#x} has bits outside the armable {allowed:#x}"
            ),
            Self::MissingSideReg { reg } => {
                write!(f, "side state lacks {}, which must travel", reg.name())
            }
            Self::UnexpectedSideReg { reg } => {
                write!(
                    f,
                    "side state holds {}, which this guest cannot take",
                    reg.name()
                )
            }
            Self::MalformedSideState { offset } => {
                write!(f, "side state bytes malformed at offset {offset}")
            }
        }
    }
}

/// The low 32 bits of `v` (EAX or ECX of an EDX:EAX mask; `v >> 32` is the
/// other half).
const fn low_half(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

/// The groups XSETBV enables all or nothing of.
pub(crate) const GROUPS: [XFeatures; 3] = [
    XFeatures::BNDREGS.union(XFeatures::BNDCSR),
    XFeatures::AVX512,
    XFeatures::XTILE,
];

/// The XSETBV rules (SDM vol. 2C XSETBV, "#GP(0)"; KVM's `__kvm_set_xcr` in the
/// same order, MPX pairing included).
pub(crate) fn check_xcr0(xcr0: XFeatures, allowed: XFeatures) -> Result<(), GuestError> {
    let v = xcr0.bits();
    if !xcr0.contains(XFeatures::X87) {
        return Err(GuestError::X87Disabled { xcr0: v });
    }
    if xcr0.contains(XFeatures::AVX) && !xcr0.contains(XFeatures::SSE) {
        return Err(GuestError::AvxWithoutSse { xcr0: v });
    }
    if !allowed.contains(xcr0) {
        return Err(GuestError::Xcr0NotAllowed {
            xcr0: v,
            allowed: allowed.bits(),
        });
    }
    if xcr0.intersects(XFeatures::AVX512) && !xcr0.contains(XFeatures::AVX) {
        return Err(GuestError::Avx512WithoutAvx { xcr0: v });
    }
    for group in GROUPS {
        if xcr0.intersects(group) && !xcr0.contains(group) {
            return Err(GuestError::PartialGroup {
                xcr0: v,
                group: group.bits(),
            });
        }
    }
    Ok(())
}

/// The CPUID leaf 0xD one guest sees, and the guest's current XCR0 and IA32_XSS.
///
/// It answers like a CPU would: the size reports of subleaves 0 and 1 follow the
/// guest's XCR0 and IA32_XSS (KVM's `kvm_update_cpuid_runtime`), every other
/// register is fixed at construction from the host's facts. It also holds the
/// guest's IA32_XFD and IA32_XFD_ERR, which decide what its fpstate may hold
/// ([`GuestXsave::set_xfd`]). A fresh guest is in the reset state: XCR0 = x87
/// only, IA32_XSS = 0, XFD and XFD_ERR = 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestXsave {
    host: Enumeration,
    xcr0_allowed: XFeatures,
    xss_allowed: XFeatures,
    flags: XsaveFlags,
    xcr0: XFeatures,
    xss: XFeatures,
    max_standard: u32,
    standard_size: u32,
    compacted_size: u32,
    xfd: XFeatures,
    xfd_err: XFeatures,
}

impl GuestXsave {
    /// The leaf for a guest allowed `xcr0_allowed` and `xss_allowed`, shown the
    /// extensions `flags`, in a process whose guest permission set is `perms`.
    ///
    /// # Errors
    /// [`GuestError::SupervisorInXcr0`] / [`GuestError::UserInXss`] for a
    /// component in the wrong mask, [`GuestError::Unsupported`] for components the
    /// host lacks, [`GuestError::NotPermitted`] for components outside `perms`,
    /// [`GuestError::LegacyMissing`], the XSETBV errors if `xcr0_allowed` is not
    /// itself a valid XCR0 (a half-enabled group), [`GuestError::FlagsUnsupported`]
    /// and [`GuestError::XssWithoutXsaves`].
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}, XFeatures};
    /// # use xstate::perm::{PermKind, ProcessPerms};
    /// use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
    /// let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    /// let perms = ProcessPerms::new(&cfg);
    /// let guest_perm = perms.get(PermKind::Guest);
    /// // AMX tile data needs ARCH_REQ_XCOMP_GUEST_PERM first.
    /// let err = GuestXsave::new(&e, guest_perm, e.xcr0_supported(), XFeatures::empty(), XsaveFlags::of(&e));
    /// assert_eq!(err.unwrap_err(), GuestError::NotPermitted { mask: XFeatures::XTILE_DATA.bits() });
    /// let g = GuestXsave::new(&e, guest_perm, e.xcr0_supported() - XFeatures::XTILE, XFeatures::CET_U, XsaveFlags::of(&e)).unwrap();
    /// assert_eq!(g.xcr0(), XFeatures::X87);
    /// ```
    pub fn new(
        host: &Enumeration,
        perms: &PermSet,
        xcr0_allowed: XFeatures,
        xss_allowed: XFeatures,
        flags: XsaveFlags,
    ) -> Result<Self, GuestError> {
        let bad = xcr0_allowed & host.xss_supported();
        if !bad.is_empty() {
            return Err(GuestError::SupervisorInXcr0 { mask: bad.bits() });
        }
        let bad = xss_allowed & (host.xcr0_supported() | XFeatures::LEGACY);
        if !bad.is_empty() {
            return Err(GuestError::UserInXss { mask: bad.bits() });
        }
        let bad = xcr0_allowed.difference(host.xcr0_supported())
            | xss_allowed.difference(host.xss_supported());
        if !bad.is_empty() {
            return Err(GuestError::Unsupported { mask: bad.bits() });
        }
        let bad = (xcr0_allowed | xss_allowed).difference(perms.features);
        if !bad.is_empty() {
            return Err(GuestError::NotPermitted { mask: bad.bits() });
        }
        if !xcr0_allowed.contains(XFeatures::LEGACY) {
            return Err(GuestError::LegacyMissing {
                xcr0: xcr0_allowed.bits(),
            });
        }
        // The guest must be able to enable everything it is shown.
        check_xcr0(xcr0_allowed, xcr0_allowed)?;
        let host_flags = XsaveFlags::of(host);
        if !host_flags.contains(flags) {
            return Err(GuestError::FlagsUnsupported {
                flags,
                host: host_flags,
            });
        }
        if !xss_allowed.is_empty() && !flags.contains(XsaveFlags::XSAVES) {
            return Err(GuestError::XssWithoutXsaves {
                xss: xss_allowed.bits(),
            });
        }
        let mut g = Self {
            host: host.clone(),
            xcr0_allowed,
            xss_allowed,
            flags,
            xcr0: XFeatures::X87,
            xss: XFeatures::empty(),
            max_standard: host.standard_size(xcr0_allowed),
            standard_size: 0,
            compacted_size: 0,
            xfd: XFeatures::empty(),
            xfd_err: XFeatures::empty(),
        };
        g.update_sizes();
        Ok(g)
    }

    fn update_sizes(&mut self) {
        self.standard_size = self.host.standard_size(self.xcr0);
        self.compacted_size = if self
            .flags
            .intersects(XsaveFlags::XSAVEC.union(XsaveFlags::XSAVES))
        {
            self.host.compacted_size(self.xcr0.union(self.xss))
        } else {
            0
        };
    }

    /// The guest executes XSETBV with ECX = 0: accept `xcr0` by the SDM's rules
    /// and recompute the size reports. On error (the guest gets #GP) nothing changes.
    ///
    /// # Errors
    /// [`GuestError::X87Disabled`], [`GuestError::AvxWithoutSse`],
    /// [`GuestError::Xcr0NotAllowed`], [`GuestError::Avx512WithoutAvx`],
    /// [`GuestError::PartialGroup`].
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let mut g = GuestXsave::new(&e, &all, e.xcr0_supported(), e.xss_supported(), XsaveFlags::of(&e))?;
    /// let bad = XFeatures::LEGACY | XFeatures::AVX | XFeatures::OPMASK;
    /// assert_eq!(g.set_xcr0(bad), Err(GuestError::PartialGroup { xcr0: bad.bits(), group: XFeatures::AVX512.bits() }));
    /// g.set_xcr0(XFeatures::LEGACY | XFeatures::AVX)?;
    /// assert_eq!(g.leaf(0).ebx, 832);
    /// # Ok::<(), GuestError>(())
    /// ```
    pub fn set_xcr0(&mut self, xcr0: XFeatures) -> Result<(), GuestError> {
        check_xcr0(xcr0, self.xcr0_allowed)?;
        self.xcr0 = xcr0;
        self.update_sizes();
        Ok(())
    }

    /// The guest writes IA32_XSS: accept `xss` if the guest's CPUID allows every
    /// bit, and recompute the compacted size. On error nothing changes.
    ///
    /// # Errors
    /// [`GuestError::XssNotAllowed`].
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let mut g = GuestXsave::new(&e, &all, e.xcr0_supported(), XFeatures::CET_U, XsaveFlags::of(&e))?;
    /// assert_eq!(g.leaf(1).ebx, 576);
    /// g.set_xss(XFeatures::CET_U)?;
    /// assert_eq!(g.leaf(1).ebx, 576 + 16);
    /// assert!(g.set_xss(XFeatures::CET_S).is_err());
    /// # Ok::<(), GuestError>(())
    /// ```
    pub fn set_xss(&mut self, xss: XFeatures) -> Result<(), GuestError> {
        if !self.xss_allowed.contains(xss) {
            return Err(GuestError::XssNotAllowed {
                xss: xss.bits(),
                allowed: self.xss_allowed.bits(),
            });
        }
        self.xss = xss;
        self.update_sizes();
        Ok(())
    }

    /// CPUID(0xD, `subleaf`) as the guest sees it. Subleaf 0: the allowed XCR0 mask
    /// (EDX:EAX), the standard size for the current XCR0 (EBX) and for the whole
    /// mask (ECX). Subleaf 1: the extensions (EAX), the compacted size for the
    /// current XCR0 | IA32_XSS when XSAVEC or XSAVES is shown, else 0 (EBX), the
    /// allowed IA32_XSS mask (EDX:ECX). Subleaves 2..=62 of allowed components: the
    /// host's size, offset and `ECX[2:0]`; every other subleaf: zeros.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let g = GuestXsave::new(&e, &all, XFeatures::LEGACY | XFeatures::AVX | XFeatures::PKRU, XFeatures::empty(), XsaveFlags::XSAVEOPT).unwrap();
    /// assert_eq!(g.leaf(0).eax, 0x207);
    /// assert_eq!(g.leaf(0).ecx, 0x988); // PKRU at AMD's 0x980
    /// assert_eq!(g.leaf(1).ebx, 0); // no XSAVEC, no XSAVES
    /// assert_eq!((g.leaf(9).eax, g.leaf(9).ebx), (8, 0x980));
    /// assert_eq!(g.leaf(5).eax, 0); // AVX-512 hidden
    /// ```
    pub fn leaf(&self, subleaf: u32) -> CpuidResult {
        match subleaf {
            0 => CpuidResult {
                eax: low_half(self.xcr0_allowed.bits()),
                ebx: self.standard_size,
                ecx: self.max_standard,
                edx: (self.xcr0_allowed.bits() >> 32) as u32,
            },
            1 => CpuidResult {
                eax: self.flags.bits(),
                ebx: self.compacted_size,
                ecx: low_half(self.xss_allowed.bits()),
                edx: (self.xss_allowed.bits() >> 32) as u32,
            },
            i if self.allowed().has_index(i) => match self.host.component(i) {
                Some(c) => CpuidResult {
                    eax: c.size,
                    ebx: c.std_offset,
                    ecx: u32::from(c.supervisor)
                        | u32::from(c.align64) << 1
                        | u32::from(c.xfd) << 2,
                    edx: 0,
                },
                None => CpuidResult::default(),
            },
            _ => CpuidResult::default(),
        }
    }

    /// The subleaves a VMM puts in its `KVM_SET_CPUID2` table, in order: 0, 1 and
    /// one per allowed component from 2 up (KVM's own list has the same entries).
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let g = GuestXsave::new(&e, &all, XFeatures::LEGACY | XFeatures::AVX, XFeatures::CET_U, XsaveFlags::of(&e)).unwrap();
    /// let subs: Vec<u32> = g.subleaves().map(|(i, _)| i).collect();
    /// assert_eq!(subs, [0, 1, 2, 11]);
    /// ```
    pub fn subleaves(&self) -> impl Iterator<Item = (u32, CpuidResult)> + '_ {
        let extended = self.allowed().indices().filter(|&i| i >= 2);
        [0, 1]
            .into_iter()
            .chain(extended)
            .map(|i| (i, self.leaf(i)))
    }

    fn allowed(&self) -> XFeatures {
        self.xcr0_allowed.union(self.xss_allowed)
    }

    /// The guest's current XCR0.
    #[inline]
    pub const fn xcr0(&self) -> XFeatures {
        self.xcr0
    }

    /// The guest's current IA32_XSS.
    #[inline]
    pub const fn xss(&self) -> XFeatures {
        self.xss
    }

    /// The XCR0 mask the guest is shown (CPUID(0xD,0) EDX:EAX).
    #[inline]
    pub const fn xcr0_allowed(&self) -> XFeatures {
        self.xcr0_allowed
    }

    /// The IA32_XSS mask the guest is shown (CPUID(0xD,1) EDX:ECX).
    #[inline]
    pub const fn xss_allowed(&self) -> XFeatures {
        self.xss_allowed
    }

    /// The extensions the guest is shown (CPUID(0xD,1).EAX).
    #[inline]
    pub const fn flags(&self) -> XsaveFlags {
        self.flags
    }

    /// The standard-form size of every allowed user component: the guest's
    /// CPUID(0xD,0).ECX, what an XSAVE in the guest needs with all of them in
    /// XCR0. It is the end of the meaningful bytes of a `KVM_GET_XSAVE2`
    /// payload for this guest, not the size of the buffer: KVM copies its
    /// vCPU's whole uabi size (at least 4096 bytes) to or from the VMM's
    /// buffer, so a buffer of this size (2,432 bytes on a Zen 4) makes KVM
    /// fault at a guard page or write past it. Size buffers with
    /// [`kvm_xsave_size`].
    #[inline]
    pub const fn max_standard_size(&self) -> u32 {
        self.max_standard
    }

    /// The components the guest may arm in IA32_XFD (and find in
    /// IA32_XFD_ERR): its XCR0-allowed components CPUID marks XFD-capable,
    /// none if it is not shown XFD. KVM's `kvm_guest_supported_xfd`.
    pub fn xfd_allowed(&self) -> XFeatures {
        if !self.flags.contains(XsaveFlags::XFD) {
            return XFeatures::empty();
        }
        let mut m = XFeatures::empty();
        for i in self.xcr0_allowed.indices() {
            if self.host.component(i).is_some_and(|c| c.xfd) {
                m |= XFeatures::from_index(i).unwrap_or(XFeatures::empty());
            }
        }
        m
    }

    /// The guest's IA32_XFD.
    #[inline]
    pub const fn xfd(&self) -> XFeatures {
        self.xfd
    }

    /// The guest's IA32_XFD_ERR.
    #[inline]
    pub const fn xfd_err(&self) -> XFeatures {
        self.xfd_err
    }

    fn check_xfd(&self, value: XFeatures) -> Result<(), GuestError> {
        let allowed = self.xfd_allowed();
        if !allowed.contains(value) {
            return Err(GuestError::XfdNotAllowed {
                value: value.bits(),
                allowed: allowed.bits(),
            });
        }
        Ok(())
    }

    /// The dynamic component (AMX TILEDATA) this guest's CPUID lets it enable
    /// that the guest fpstate `fp` has no space for, if any. KVM grows a guest
    /// fpstate on `KVM_SET_CPUID2` when the CPUID enables one (its
    /// `fpu_enable_guest_xfd_features`), not on the guest's first use: grow
    /// `fp` with [`Fpstate::grow`] for the returned index (which needs the
    /// process's guest permission) before the vCPU runs.
    pub fn dynamic_to_grow<S: Storage>(&self, cfg: &Configs, fp: &Fpstate<S>) -> Option<u32> {
        (self.xcr0_allowed & cfg.policy().dynamic)
            .difference(fp.info().features)
            .indices()
            .next()
    }

    /// The guest writes IA32_XFD (or a VMM restores it): accept `xfd` if the
    /// guest may arm every bit, and clear XSTATE_BV\[i\] in the guest's saved
    /// fpstate `fp` for every armed component. Returns the components whose
    /// state was dropped that way.
    ///
    /// The clearing is Linux's January 2026 fix "x86/fpu: Clear XSTATE_BV\[i\]
    /// in guest XSAVE state whenever XFD\[i\]=1" (KVM does it on guest XFD
    /// writes and on `KVM_SET_XSAVE`, see [`crate::uabi::import_guest`]): the
    /// host restores the guest fpstate with the guest's XFD in force, and
    /// XRSTOR(S) of live state of an armed component raises #NM in the host
    /// (SDM vol. 1 13.14). Nothing is lost the guest could see: with XFD\[i\]
    /// set, its next use of component i faults, and the guest's #NM handler
    /// starts it from its init state. On error nothing changes.
    ///
    /// # Errors
    /// [`GuestError::XfdNotAllowed`] (the guest gets #GP).
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::config::{Configs, Policy};
    /// # use xstate::fpstate::{Fpstate, Owner};
    /// # use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// # let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    /// let mut g = GuestXsave::new(&e, &all, e.xcr0_supported(), XFeatures::empty(), XsaveFlags::of(&e))?;
    /// # #[repr(C, align(64))] struct Storage([u8; 16384]);
    /// # let mut storage = Storage([0; 16384]);
    /// let mut fp = Fpstate::new_in(&cfg, Owner::Guest, &mut storage.0[..]).unwrap();
    /// assert_eq!(g.xfd_allowed(), XFeatures::XTILE_DATA);
    /// assert_eq!(g.set_xfd(XFeatures::XTILE_DATA, &mut fp), Ok(XFeatures::empty()));
    /// assert!(matches!(g.set_xfd(XFeatures::XTILE_CFG, &mut fp), Err(GuestError::XfdNotAllowed { .. })));
    /// assert_eq!(g.xfd(), XFeatures::XTILE_DATA);
    /// # Ok::<(), GuestError>(())
    /// ```
    pub fn set_xfd<S: Storage>(
        &mut self,
        xfd: XFeatures,
        fp: &mut Fpstate<S>,
    ) -> Result<XFeatures, GuestError> {
        self.check_xfd(xfd)?;
        self.xfd = xfd;
        Ok(crate::uabi::clear_xstate_bv(fp, xfd))
    }

    /// The guest writes IA32_XFD_ERR (or a VMM restores it): the components
    /// whose use faulted; it never touches the fpstate.
    ///
    /// # Errors
    /// [`GuestError::XfdNotAllowed`] (the guest gets #GP).
    pub fn set_xfd_err(&mut self, xfd_err: XFeatures) -> Result<(), GuestError> {
        self.check_xfd(xfd_err)?;
        self.xfd_err = xfd_err;
        Ok(())
    }

    /// The registers that must travel beside this guest's XSAVE buffer (see
    /// [`SideReg`]): XCR0 always, IA32_XSS when the guest is shown XSAVES,
    /// IA32_XFD and IA32_XFD_ERR when it is shown XFD, and the CET registers
    /// of each CET component it may enable in IA32_XSS (CET_U: U_CET and
    /// PL3_SSP; CET_S: S_CET, PL0..2_SSP and the interrupt SSP table; either:
    /// SSP). The XSAVE buffer of `KVM_GET_XSAVE` holds user components only,
    /// so the CET state travels as these registers.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestXsave, SideReg, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let g = GuestXsave::new(&e, &all, e.xcr0_supported(), XFeatures::CET_U, XsaveFlags::of(&e)).unwrap();
    /// let regs: Vec<SideReg> = g.side_regs().iter().collect();
    /// assert_eq!(regs, [SideReg::Xcr0, SideReg::Xss, SideReg::UCet, SideReg::Pl3Ssp, SideReg::Ssp]);
    /// assert_eq!(SideReg::Pl3Ssp.msr(), Some(0x6a7));
    /// ```
    pub fn side_regs(&self) -> SideRegs {
        let mut r = SideRegs::EMPTY.with(SideReg::Xcr0);
        if self.flags.contains(XsaveFlags::XSAVES) {
            r = r.with(SideReg::Xss);
        }
        if self.flags.contains(XsaveFlags::XFD) {
            r = r.with(SideReg::Xfd).with(SideReg::XfdErr);
        }
        if self.xss_allowed.contains(XFeatures::CET_U) {
            r = r.with(SideReg::UCet).with(SideReg::Pl3Ssp);
        }
        if self.xss_allowed.contains(XFeatures::CET_S) {
            r = r
                .with(SideReg::SCet)
                .with(SideReg::Pl0Ssp)
                .with(SideReg::Pl1Ssp)
                .with(SideReg::Pl2Ssp)
                .with(SideReg::IntSspTab);
        }
        if self
            .xss_allowed
            .intersects(XFeatures::CET_U.union(XFeatures::CET_S))
        {
            r = r.with(SideReg::Ssp);
        }
        r
    }

    /// A side state for this guest: every register of
    /// [`GuestXsave::side_regs`], XCR0, IA32_XSS, IA32_XFD and IA32_XFD_ERR
    /// filled from this guest, the CET registers 0 for the VMM to fill from
    /// `KVM_GET_MSRS` / `KVM_GET_ONE_REG`.
    pub fn side_state(&self) -> SideState {
        let mut s = SideState::new(self.side_regs());
        *s.value_mut(SideReg::Xcr0) = self.xcr0.bits();
        *s.value_mut(SideReg::Xss) = self.xss.bits();
        *s.value_mut(SideReg::Xfd) = self.xfd.bits();
        *s.value_mut(SideReg::XfdErr) = self.xfd_err.bits();
        s
    }

    /// Restore a snapshot's side state into this guest: the snapshot must
    /// hold exactly [`GuestXsave::side_regs`] (a missing register would be left
    /// at its reset value, an extra one dropped), and XCR0, IA32_XSS, IA32_XFD
    /// and IA32_XFD_ERR must be values the guest could have written. Every
    /// check runs before anything changes; then XCR0, IA32_XSS and XFD are
    /// set as [`GuestXsave::set_xcr0`], [`GuestXsave::set_xss`] and
    /// [`GuestXsave::set_xfd`] do (so `fp` drops state XFD arms). The CET
    /// registers are the VMM's to write with `KVM_SET_MSRS`.
    ///
    /// # Errors
    /// [`GuestError::MissingSideReg`], [`GuestError::UnexpectedSideReg`], the
    /// XSETBV errors, [`GuestError::XssNotAllowed`],
    /// [`GuestError::XfdNotAllowed`].
    pub fn restore_side<S: Storage>(
        &mut self,
        side: &SideState,
        fp: &mut Fpstate<S>,
    ) -> Result<(), GuestError> {
        let want = self.side_regs();
        for reg in SideReg::ALL {
            match (want.contains(reg), side.regs.contains(reg)) {
                (true, false) => return Err(GuestError::MissingSideReg { reg }),
                (false, true) => return Err(GuestError::UnexpectedSideReg { reg }),
                _ => {}
            }
        }
        let get = |reg: SideReg| XFeatures::from_bits_retain(side.value(reg));
        let xcr0 = get(SideReg::Xcr0);
        check_xcr0(xcr0, self.xcr0_allowed)?;
        let xss = if want.contains(SideReg::Xss) {
            get(SideReg::Xss)
        } else {
            XFeatures::empty()
        };
        if !self.xss_allowed.contains(xss) {
            return Err(GuestError::XssNotAllowed {
                xss: xss.bits(),
                allowed: self.xss_allowed.bits(),
            });
        }
        let (xfd, xfd_err) = if want.contains(SideReg::Xfd) {
            (get(SideReg::Xfd), get(SideReg::XfdErr))
        } else {
            (XFeatures::empty(), XFeatures::empty())
        };
        self.check_xfd(xfd)?;
        self.check_xfd(xfd_err)?;
        self.xcr0 = xcr0;
        self.xss = xss;
        self.xfd_err = xfd_err;
        self.update_sizes();
        self.set_xfd(xfd, fp)?;
        Ok(())
    }

    /// This guest's leaf 0xD as the fixed table a VMM installs (or a
    /// confidential guest's CPUID page holds): [`GuestXsave::subleaves`] at the
    /// current XCR0 and IA32_XSS. Set those to what the guest's kernel will
    /// write (for Linux: [`GuestXsave::linux_boot`] does it) before taking a
    /// table whose size reports the kernel checks.
    pub fn leaf_table(&self) -> LeafTable {
        let mut t = LeafTable::default();
        for (sub, regs) in self.subleaves() {
            if let Some(slot) = t.entries.get_mut(sub as usize) {
                *slot = Some(regs);
            }
        }
        t
    }

    /// What Linux 6.18 booting in this guest does with its XSAVE support:
    /// the guest is taken to the XCR0 and IA32_XSS Linux writes (its
    /// `max_features` from this leaf) and [`linux_xsave`] judges the
    /// resulting [`LeafTable`].
    ///
    /// # Errors
    /// The [`LinuxRefusal`] Linux would log before disabling XSAVE.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let g = GuestXsave::new(&e, &all, e.xcr0_supported(), e.xss_supported(), XsaveFlags::of(&e)).unwrap();
    /// let linux = g.linux_boot().unwrap();
    /// assert_eq!(linux.features, e.xcr0_supported() | XFeatures::CET_U | XFeatures::CET_S);
    /// assert_eq!(linux.context_size, e.compacted_size(linux.features));
    /// assert!(linux.compacted);
    /// ```
    pub fn linux_boot(&self) -> Result<LinuxXsave, LinuxRefusal> {
        linux_xsave(&self.at_linux_boot()?.leaf_table())
    }

    /// This guest once Linux 6.18 has booted in it: XCR0 and IA32_XSS set to
    /// the features Linux enables from this leaf (its `max_features`; IA32_XSS
    /// only with XSAVES). Its [`GuestXsave::leaf_table`] is the table Linux's
    /// size checks read.
    ///
    /// # Errors
    /// [`LinuxRefusal::Xcr0Faults`] if that XCR0 is not one XSETBV takes.
    pub fn at_linux_boot(&self) -> Result<GuestXsave, LinuxRefusal> {
        let max = linux_max_features(self.leaf(0), self.leaf(1));
        let mut g = self.clone();
        let xcr0 = max & self.xcr0_allowed;
        g.set_xcr0(xcr0)
            .map_err(|_| LinuxRefusal::Xcr0Faults { xcr0: xcr0.bits() })?;
        // Linux writes IA32_XSS only with XSAVES; its max features then hold
        // no supervisor component without it.
        g.xss = max & self.xss_allowed;
        g.update_sizes();
        Ok(g)
    }
}

/// Only leaf 0xD is answered (every other leaf reads as zero), so
/// [`Enumeration::from_cpuid`] reads back exactly what the guest would. The
/// guest runs on the host's SSE unit: its MXCSR_MASK is the host's.
impl CpuidSource for GuestXsave {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        if leaf == 0xd {
            self.leaf(subleaf)
        } else {
            CpuidResult::default()
        }
    }

    fn mxcsr_mask(&self) -> Option<u32> {
        Some(self.host.mxcsr_mask())
    }
}

fn check_sizes(src: &Enumeration, dst: &Enumeration, mask: XFeatures) -> Result<(), GuestError> {
    for index in mask.indices().filter(|&i| i >= 2) {
        let s = src.component(index).map_or(0, |c| c.size);
        let d = dst.component(index).map_or(0, |c| c.size);
        if s != d {
            return Err(GuestError::SizeMismatch {
                index,
                src: s,
                dst: d,
            });
        }
    }
    Ok(())
}

/// Can the XSAVE state of a guest running with XCR0 = `src_xcr0` on the CPU
/// `src` move to the CPU `dst`, where guests may enable `dst_xcr0_allowed`?
/// Every component of the guest's XCR0 must be allowed there and have the same
/// size, or its state would be dropped or truncated (AMX tile data, PKRU's
/// width). Standard offsets may differ: [`translate`] moves the bytes. This
/// answers for the buffer only; a live guest keeps the CPUID it booted with,
/// so a VMM moving one checks the whole guest with [`migrate`].
///
/// # Errors
/// The XSETBV errors if `src_xcr0` is not a valid XCR0 on `src`,
/// [`GuestError::Unsupported`] if `dst_xcr0_allowed` has components `dst` lacks,
/// [`GuestError::ApxWithMpx`] if it has APX and MPX,
/// [`GuestError::Replaced`] (APX where the guest's MPX was) or
/// [`GuestError::NotOnDestination`], [`GuestError::SizeMismatch`].
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, XFeatures};
/// # use xstate::guest::{compatible, GuestError};
/// # let spr = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
/// # let tgl = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-tiger-lake-core-i7-1165g7.txt")).unwrap()).unwrap();
/// assert_eq!(compatible(&tgl, tgl.xcr0_supported(), &spr, spr.xcr0_supported()), Ok(()));
/// assert_eq!(
///     compatible(&spr, spr.xcr0_supported(), &tgl, tgl.xcr0_supported()),
///     Err(GuestError::NotOnDestination { mask: XFeatures::XTILE.bits() })
/// );
/// ```
pub fn compatible(
    src: &Enumeration,
    src_xcr0: XFeatures,
    dst: &Enumeration,
    dst_xcr0_allowed: XFeatures,
) -> Result<(), GuestError> {
    check_xcr0(src_xcr0, src.xcr0_supported())?;
    let bad = dst_xcr0_allowed.difference(dst.xcr0_supported());
    if !bad.is_empty() {
        return Err(GuestError::Unsupported { mask: bad.bits() });
    }
    check_apx_mpx(dst_xcr0_allowed)?;
    let missing = src_xcr0.difference(dst_xcr0_allowed);
    if !missing.is_empty() {
        return Err(missing_on(src, dst, dst_xcr0_allowed, missing));
    }
    check_sizes(src, dst, src_xcr0)
}

/// MPX's two components and APX, which Linux places at MPX's standard offset.
const MPX: XFeatures = XFeatures::BNDREGS.union(XFeatures::BNDCSR);

/// Linux refuses a CPU enumerating APX and MPX together (6.18's
/// `fpu__init_system_xstate`: APX reuses MPX's standard offset), and so do we,
/// for any mask a guest could be shown.
fn check_apx_mpx(mask: XFeatures) -> Result<(), GuestError> {
    if mask.contains(XFeatures::APX) && mask.intersects(MPX) {
        return Err(GuestError::ApxWithMpx { mask: mask.bits() });
    }
    Ok(())
}

/// The refusal for guest components `missing` the destination cannot hold:
/// [`GuestError::Replaced`] when one of the destination's components in
/// `dst_mask` starts at a missing component's standard offset (APX where MPX
/// was), else [`GuestError::NotOnDestination`].
fn missing_on(
    src: &Enumeration,
    dst: &Enumeration,
    dst_mask: XFeatures,
    missing: XFeatures,
) -> GuestError {
    let user = |e: &Enumeration, i: u32| {
        e.component(i)
            .filter(|c| !c.supervisor)
            .map(|c| c.std_offset)
    };
    for index in missing.indices().filter(|&i| i >= 2) {
        let Some(s0) = user(src, index) else {
            continue;
        };
        for by in (dst_mask & dst.xcr0_supported())
            .indices()
            .filter(|&i| i >= 2)
        {
            if let Some(d0) = user(dst, by) {
                if d0 == s0 {
                    return GuestError::Replaced { index, by };
                }
            }
        }
    }
    GuestError::NotOnDestination {
        mask: missing.bits(),
    }
}

/// Move a standard-format XSAVE buffer (`KVM_GET_XSAVE`, a signal frame, a
/// snapshot) from `src`'s layout to `dst`'s: the legacy region and header are
/// copied, each component in XSTATE_BV moves from its `src` offset to its `dst`
/// offset, every other byte up to the returned size is zero. Returns that size,
/// `dst`'s standard size for XSTATE_BV; `out` beyond it is untouched.
///
/// # Errors
/// [`GuestError::Uabi`] (a short buffer, XCOMP_BV set, reserved header bytes
/// set: the user ABI's own checks), [`GuestError::NotOnSource`],
/// [`GuestError::NotOnDestination`], [`GuestError::SizeMismatch`]. `out` is not
/// written then.
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, XFeatures};
/// # use xstate::guest::translate;
/// # let amd = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let intel = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-tiger-lake-core-i7-1165g7.txt")).unwrap()).unwrap();
/// let mut a = vec![0u8; 0x988];
/// a[512..520].copy_from_slice(&(XFeatures::LEGACY | XFeatures::PKRU).bits().to_le_bytes());
/// a[0x980..0x984].copy_from_slice(&0x5555_5554u32.to_le_bytes()); // PKRU at AMD's offset
/// let mut b = vec![0u8; 4096];
/// assert_eq!(translate(&amd, &intel, &a, &mut b), Ok(0xa88));
/// assert_eq!(b[0xa80..0xa84], 0x5555_5554u32.to_le_bytes()); // at Intel's
/// ```
pub fn translate(
    src: &Enumeration,
    dst: &Enumeration,
    buf_src: &[u8],
    out: &mut [u8],
) -> Result<usize, GuestError> {
    let head = EXTENDED_START as usize;
    let xstate_bv = crate::uabi::standard_header(buf_src)?;
    let header = BufferTooSmall::prefix(buf_src, head)?;
    let bad = xstate_bv.difference(src.xcr0_supported());
    if !bad.is_empty() {
        return Err(GuestError::NotOnSource { mask: bad.bits() });
    }
    let bad = xstate_bv.difference(dst.xcr0_supported());
    if !bad.is_empty() {
        return Err(GuestError::NotOnDestination { mask: bad.bits() });
    }
    check_sizes(src, dst, xstate_bv)?;
    let needed = src.standard_size(xstate_bv) as usize;
    let buf_src = BufferTooSmall::prefix(buf_src, needed)?;
    let size = dst.standard_size(xstate_bv) as usize;
    let got = out.len();
    let out = BufferTooSmall::prefix_mut(out, size)?;

    // `standard_size` is at least EXTENDED_START (= head), so this split never
    // fails; `header` is exactly `head` bytes.
    let (out_head, out_rest) =
        out.split_at_mut_checked(head)
            .ok_or(GuestError::Uabi(UabiError::BufferTooSmall(
                BufferTooSmall { needed: head, got },
            )))?;
    out_head.copy_from_slice(header);
    out_rest.fill(0);
    for i in xstate_bv.indices().filter(|&i| i >= 2) {
        // Both enumerations checked every component to end inside its standard
        // size, and the sizes are equal (checked above): the ranges are in bounds.
        let (Some(s), Some(d)) = (src.component(i), dst.component(i)) else {
            continue;
        };
        let (s, d, len) = (
            s.std_offset as usize,
            d.std_offset as usize,
            s.size as usize,
        );
        let from = buf_src.get(s..).and_then(|b| b.get(..len));
        let to = out.get_mut(d..).and_then(|b| b.get_mut(..len));
        if let (Some(from), Some(to)) = (from, to) {
            to.copy_from_slice(from);
        }
    }
    Ok(size)
}

/// The exact standard-format size XRSTOR reads for XSTATE_BV = `xstate_bv` under
/// XCR0 = `xcr0` on the CPU `e`: the end of the last component in XSTATE_BV, at
/// least the legacy region and header. Components of XCR0 outside XSTATE_BV are
/// put in their init state without being read.
///
/// In a `KVM_SET_XSAVE` buffer these are the bytes KVM's checks and restore
/// use; KVM itself copies the whole [`kvm_xsave_size`] from the VMM first,
/// whatever XSTATE_BV says, so that is the size to allocate.
///
/// # Errors
/// The XSETBV errors if `xcr0` is not a valid XCR0 on `e`,
/// [`GuestError::NotInXcr0`] if `xstate_bv` is not within `xcr0`.
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, XFeatures};
/// # use xstate::guest::required_size;
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-tiger-lake-core-i7-1165g7.txt")).unwrap()).unwrap();
/// let xcr0 = e.xcr0_supported();
/// assert_eq!(required_size(&e, xcr0, XFeatures::LEGACY), Ok(576));
/// assert_eq!(required_size(&e, xcr0, XFeatures::LEGACY | XFeatures::PKRU), Ok(0xa88));
/// assert!(required_size(&e, XFeatures::LEGACY, XFeatures::PKRU).is_err());
/// ```
pub fn required_size(
    e: &Enumeration,
    xcr0: XFeatures,
    xstate_bv: XFeatures,
) -> Result<u32, GuestError> {
    check_xcr0(xcr0, e.xcr0_supported())?;
    if !xcr0.contains(xstate_bv) {
        return Err(GuestError::NotInXcr0 {
            xstate_bv: xstate_bv.bits(),
            xcr0: xcr0.bits(),
        });
    }
    Ok(e.standard_size(xstate_bv))
}

/// `sizeof(struct kvm_xsave)`: what `KVM_GET_XSAVE` and `KVM_SET_XSAVE` copy on
/// a kernel without `KVM_CAP_XSAVE2`, and the least any of them copies.
pub const KVM_XSAVE_SIZE: usize = 4096;

/// The buffer size a VMM passes to `KVM_GET_XSAVE2`, `KVM_SET_XSAVE` and
/// `KVM_GET_XSAVE`: `max(4096, KVM_CAP_XSAVE2)`, where `kvm_cap_xsave2` is what
/// `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` returned on the VM (0 on a kernel
/// without it; a negative error reads as 0).
///
/// KVM copies its vCPU's uabi size, no less: 4096 bytes, grown to the
/// standard size of the guest's features when a dynamic one (AMX TILEDATA) is
/// enabled, which `KVM_CAP_XSAVE2` bounds (KVM reports at least 4096 there).
/// A buffer sized by the guest's XSAVE size ([`GuestXsave::max_standard_size`],
/// [`required_size`]) is shorter: `KVM_GET_XSAVE2` writes past it, and ends in
/// EFAULT where a guard page follows (kvm-ioctls #310). Pass the same value as
/// [`UserAbi::Kvm`](crate::uabi::UserAbi::Kvm)'s `uabi_size`.
///
/// ```
/// use xstate::guest::kvm_xsave_size;
/// assert_eq!(kvm_xsave_size(0), 4096); // no KVM_CAP_XSAVE2: KVM_GET_XSAVE
/// assert_eq!(kvm_xsave_size(4096), 4096); // no dynamic component
/// assert_eq!(kvm_xsave_size(11008), 11008); // AMX permitted to guests
/// assert_eq!(kvm_xsave_size(-22), 4096);
/// ```
#[must_use]
pub fn kvm_xsave_size(kvm_cap_xsave2: i32) -> usize {
    usize::try_from(kvm_cap_xsave2).map_or(KVM_XSAVE_SIZE, |cap| cap.max(KVM_XSAVE_SIZE))
}

/// A register that travels beside a guest's XSAVE buffer in a snapshot or a
/// migration stream, with where KVM gives it out. Which ones a guest needs:
/// [`GuestXsave::side_regs`].
///
/// Why the list exists: a guest's XSAVE buffer is meaningless without the
/// masks that say which components are enabled (XCR0, IA32_XSS) and armed
/// (IA32_XFD, IA32_XFD_ERR), and the CET state is not in `KVM_GET_XSAVE`'s
/// buffer at all (KVM gives it out as MSRs, and SSP with `KVM_GET_ONE_REG`
/// since Linux 6.18). Firecracker's snapshots that dropped IA32_XSS crashed
/// 6.18 guests (firecracker #5972); cloud-hypervisor's old code "truncates
/// kvm_xsave2 data… silently permits migration between incompatible VMs"
/// (cloud-hypervisor #7533/#7534).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[repr(u8)]
pub enum SideReg {
    /// XCR0 (`KVM_GET_XCRS`, XCR 0).
    Xcr0 = 0,
    /// IA32_XSS (MSR 0xda0).
    Xss = 1,
    /// IA32_XFD (MSR 0x1c4).
    Xfd = 2,
    /// IA32_XFD_ERR (MSR 0x1c5).
    XfdErr = 3,
    /// IA32_U_CET (MSR 0x6a0); in the CET_U component.
    UCet = 4,
    /// IA32_S_CET (MSR 0x6a2); not XSAVE-managed.
    SCet = 5,
    /// IA32_PL0_SSP (MSR 0x6a4); in the CET_S component.
    Pl0Ssp = 6,
    /// IA32_PL1_SSP (MSR 0x6a5); in the CET_S component.
    Pl1Ssp = 7,
    /// IA32_PL2_SSP (MSR 0x6a6); in the CET_S component.
    Pl2Ssp = 8,
    /// IA32_PL3_SSP (MSR 0x6a7); in the CET_U component.
    Pl3Ssp = 9,
    /// IA32_INTERRUPT_SSP_TABLE_ADDR (MSR 0x6a8); not XSAVE-managed.
    IntSspTab = 10,
    /// SSP, the current shadow-stack pointer: no MSR; KVM 6.18 gives it out
    /// with `KVM_GET_ONE_REG` (`KVM_REG_GUEST_SSP`).
    Ssp = 11,
}

/// Where KVM gives a [`SideReg`] out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SideAccess {
    /// `KVM_GET_XCRS` / `KVM_SET_XCRS`, this XCR index.
    Xcr(u32),
    /// `KVM_GET_MSRS` / `KVM_SET_MSRS`, this MSR index.
    Msr(u32),
    /// `KVM_GET_ONE_REG` / `KVM_SET_ONE_REG` (KVM's own register space).
    OneReg,
}

impl SideReg {
    /// Every register, in tag order.
    pub const ALL: [SideReg; 12] = [
        Self::Xcr0,
        Self::Xss,
        Self::Xfd,
        Self::XfdErr,
        Self::UCet,
        Self::SCet,
        Self::Pl0Ssp,
        Self::Pl1Ssp,
        Self::Pl2Ssp,
        Self::Pl3Ssp,
        Self::IntSspTab,
        Self::Ssp,
    ];

    /// The architectural name (`"IA32_XSS"`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xcr0 => "XCR0",
            Self::Xss => "IA32_XSS",
            Self::Xfd => "IA32_XFD",
            Self::XfdErr => "IA32_XFD_ERR",
            Self::UCet => "IA32_U_CET",
            Self::SCet => "IA32_S_CET",
            Self::Pl0Ssp => "IA32_PL0_SSP",
            Self::Pl1Ssp => "IA32_PL1_SSP",
            Self::Pl2Ssp => "IA32_PL2_SSP",
            Self::Pl3Ssp => "IA32_PL3_SSP",
            Self::IntSspTab => "IA32_INTERRUPT_SSP_TABLE_ADDR",
            Self::Ssp => "SSP",
        }
    }

    /// Where KVM gives it out.
    pub const fn access(self) -> SideAccess {
        match self {
            Self::Xcr0 => SideAccess::Xcr(0),
            Self::Ssp => SideAccess::OneReg,
            Self::Xss => SideAccess::Msr(0xda0),
            Self::Xfd => SideAccess::Msr(0x1c4),
            Self::XfdErr => SideAccess::Msr(0x1c5),
            Self::UCet => SideAccess::Msr(0x6a0),
            Self::SCet => SideAccess::Msr(0x6a2),
            Self::Pl0Ssp => SideAccess::Msr(0x6a4),
            Self::Pl1Ssp => SideAccess::Msr(0x6a5),
            Self::Pl2Ssp => SideAccess::Msr(0x6a6),
            Self::Pl3Ssp => SideAccess::Msr(0x6a7),
            Self::IntSspTab => SideAccess::Msr(0x6a8),
        }
    }

    /// Its MSR index, if it is an MSR.
    pub const fn msr(self) -> Option<u32> {
        match self.access() {
            SideAccess::Msr(i) => Some(i),
            _ => None,
        }
    }

    /// The register with tag `tag` (its discriminant).
    #[expect(
        clippy::indexing_slicing,
        reason = "`tag < ALL.len()` is checked on the line before (a const fn cannot call `get`)"
    )]
    pub const fn from_tag(tag: u32) -> Option<Self> {
        if (tag as usize) < Self::ALL.len() {
            Some(Self::ALL[tag as usize])
        } else {
            None
        }
    }
}

/// A set of [`SideReg`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SideRegs(u16);

impl SideRegs {
    /// No register.
    pub const EMPTY: Self = Self(0);

    /// This set with `reg` added.
    #[must_use]
    pub const fn with(self, reg: SideReg) -> Self {
        Self(self.0 | 1 << reg as u16)
    }

    /// Whether `reg` is in the set.
    pub const fn contains(self, reg: SideReg) -> bool {
        self.0 & (1 << reg as u16) != 0
    }

    /// How many registers.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The registers, in tag order.
    pub fn iter(self) -> impl Iterator<Item = SideReg> {
        SideReg::ALL.into_iter().filter(move |&r| self.contains(r))
    }
}

/// The side state of one guest: a value for each register of a [`SideRegs`],
/// with a fixed little-endian encoding a snapshot stores as it is.
///
/// Encoding ([`SideState::to_le_bytes`]): the magic `b"XSSD"`, a `u32` count,
/// then per register, in tag order, a `u32` tag ([`SideReg`]'s discriminant),
/// a `u32` 0 and the `u64` value: `8 + 16 * count` bytes, at most
/// [`SideState::MAX_ENCODED_LEN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SideState {
    regs: SideRegs,
    values: [u64; 12],
}

const SIDE_MAGIC: [u8; 4] = *b"XSSD";

/// One 16-byte side-state entry: tag, reserved word, value (`None` only for
/// a slice of another length).
fn side_record(e: &[u8]) -> Option<(u32, u32, u64)> {
    let (tag, e) = e.split_first_chunk::<4>()?;
    let (reserved, e) = e.split_first_chunk::<4>()?;
    let value = e.first_chunk::<8>()?;
    Some((
        u32::from_le_bytes(*tag),
        u32::from_le_bytes(*reserved),
        u64::from_le_bytes(*value),
    ))
}

impl SideState {
    /// The longest encoding: every register.
    pub const MAX_ENCODED_LEN: usize = 8 + 16 * SideReg::ALL.len();

    /// A state for `regs`, every value 0.
    pub const fn new(regs: SideRegs) -> Self {
        Self {
            regs,
            values: [0; 12],
        }
    }

    /// The registers it holds.
    pub const fn regs(&self) -> SideRegs {
        self.regs
    }

    /// The value of `reg`, if held.
    pub const fn get(&self, reg: SideReg) -> Option<u64> {
        if self.regs.contains(reg) {
            Some(self.value(reg))
        } else {
            None
        }
    }

    /// Set `reg` (from `KVM_GET_MSRS` and friends).
    ///
    /// # Errors
    /// [`GuestError::UnexpectedSideReg`] if the state does not hold `reg`.
    pub fn set(&mut self, reg: SideReg, value: u64) -> Result<(), GuestError> {
        if !self.regs.contains(reg) {
            return Err(GuestError::UnexpectedSideReg { reg });
        }
        *self.value_mut(reg) = value;
        Ok(())
    }

    /// `reg`'s slot, held or not.
    #[expect(
        clippy::indexing_slicing,
        reason = "SideReg is repr(u8) with the explicit discriminants 0..=11 and `values` has 12 slots"
    )]
    const fn value(&self, reg: SideReg) -> u64 {
        self.values[reg as usize]
    }

    /// `reg`'s slot, writable.
    #[expect(
        clippy::indexing_slicing,
        reason = "SideReg is repr(u8) with the explicit discriminants 0..=11 and `values` has 12 slots"
    )]
    fn value_mut(&mut self, reg: SideReg) -> &mut u64 {
        &mut self.values[reg as usize]
    }

    /// The length of the encoding.
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "`regs.len()` counts the bits of a u16: at most 8 + 16 * 16 = 264"
    )]
    pub const fn encoded_len(&self) -> usize {
        8 + 16 * self.regs.len()
    }

    /// Encode into `out`; returns the bytes written, [`SideState::encoded_len`].
    ///
    /// # Errors
    /// [`GuestError::Uabi`] with [`UabiError::BufferTooSmall`] (nothing is written then).
    ///
    /// ```
    /// # use xstate::guest::{SideReg, SideRegs, SideState};
    /// let mut s = SideState::new(SideRegs::EMPTY.with(SideReg::Xcr0).with(SideReg::Xss));
    /// s.set(SideReg::Xss, 0x1800).unwrap();
    /// let mut buf = [0u8; SideState::MAX_ENCODED_LEN];
    /// let n = s.to_le_bytes(&mut buf).unwrap();
    /// assert_eq!(n, 40);
    /// assert_eq!(SideState::from_le_bytes(&buf[..n]), Ok(s));
    /// assert!(SideState::from_le_bytes(&buf[..n - 1]).is_err());
    /// ```
    pub fn to_le_bytes(&self, out: &mut [u8]) -> Result<usize, GuestError> {
        let n = self.encoded_len();
        let got = out.len();
        let too_small =
            GuestError::Uabi(UabiError::BufferTooSmall(BufferTooSmall { needed: n, got }));
        // `n` is at least 8: the two header splits cannot fail once `out` is `n`
        // bytes, and the rest is 16 bytes per register.
        let out = out.get_mut(..n).ok_or(too_small)?;
        let (magic, rest) = out.split_first_chunk_mut::<4>().ok_or(too_small)?;
        let (count, entries) = rest.split_first_chunk_mut::<4>().ok_or(too_small)?;
        *magic = SIDE_MAGIC;
        *count = self.regs.0.count_ones().to_le_bytes();
        for (e, reg) in entries.chunks_exact_mut(16).zip(self.regs.iter()) {
            // Little-endian: the tag in bytes 0..4, zeros in 4..8, the value in 8..16.
            let record = u128::from(self.value(reg)) << 64 | u128::from(reg as u32);
            e.copy_from_slice(&record.to_le_bytes());
        }
        Ok(n)
    }

    /// Decode exactly one encoding: `bytes` must be as long as its count says.
    ///
    /// # Errors
    /// [`GuestError::MalformedSideState`] with the offset of the first bad
    /// field: the magic, a count over 12 or disagreeing with the length, an
    /// unknown tag, tags not strictly increasing, reserved bytes set.
    pub fn from_le_bytes(bytes: &[u8]) -> Result<Self, GuestError> {
        let bad = |offset| GuestError::MalformedSideState { offset };
        let (magic, rest) = bytes.split_first_chunk::<4>().ok_or(bad(0))?;
        if *magic != SIDE_MAGIC {
            return Err(bad(0));
        }
        let (count, rest) = rest.split_first_chunk::<4>().ok_or(bad(4))?;
        let count = u32::from_le_bytes(*count) as usize;
        // `bytes.len() == 8 + 16 * count`, without the arithmetic.
        let entries = rest.chunks_exact(16);
        if count > SideReg::ALL.len() || !entries.remainder().is_empty() || entries.len() != count {
            return Err(bad(4));
        }
        let mut s = Self::new(SideRegs::EMPTY);
        let mut last = None;
        // `at`, the entry's offset, is at most 8 + 16 * 11 = 184: no addition
        // below can saturate.
        for (at, e) in (8usize..).step_by(16).zip(entries) {
            let (tag, reserved, value) = side_record(e).ok_or(bad(at))?;
            let reg = SideReg::from_tag(tag).ok_or(bad(at))?;
            if last.is_some_and(|l| l >= reg) {
                return Err(bad(at));
            }
            if reserved != 0 {
                return Err(bad(at.saturating_add(4)));
            }
            s.regs = s.regs.with(reg);
            *s.value_mut(reg) = value;
            last = Some(reg);
        }
        Ok(s)
    }
}

/// Can the guest `src` move, as it is, to the CPU `dst` (in a process whose
/// guest permission set is `perms`)? The guest keeps its CPUID, so every
/// subleaf of its leaf 0xD must read the same there: every component it may
/// enable (XCR0 and IA32_XSS) present, with the same size, standard offset
/// and flags, and every XSAVE extension it is shown available. Returns the
/// guest rebuilt on `dst`, with its XCR0, IA32_XSS, XFD and XFD_ERR.
///
/// Fails closed: nothing that would drop or truncate state passes (APX where
/// MPX was, AMX of another size, PKRU of another width, a missing CET
/// component), and each refusal says why.
///
/// # Errors
/// [`GuestError::ApxWithMpx`] (either CPU's mask),
/// [`GuestError::Replaced`] or [`GuestError::NotOnDestination`] (user or
/// supervisor components missing), [`GuestError::FlagsUnsupported`],
/// [`GuestError::SizeMismatch`], [`GuestError::OffsetMismatch`],
/// [`GuestError::SubleafMismatch`], and [`GuestXsave::new`]'s errors for
/// `perms`.
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
/// # use xstate::guest::{migrate, GuestError, GuestXsave, XsaveFlags};
/// # let amd = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let intel = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-tiger-lake-core-i7-1165g7.txt")).unwrap()).unwrap();
/// # let all = |e: &Enumeration| PermSet { features: e.supported(), size: 0, user_size: 0 };
/// let g = GuestXsave::new(&amd, &all(&amd), XFeatures::LEGACY | XFeatures::AVX | XFeatures::PKRU,
///     XFeatures::empty(), XsaveFlags::of(&amd)).unwrap();
/// // The guest's CPUID puts PKRU at AMD's 0x980; Intel's hardware writes it at 0xa80.
/// assert_eq!(migrate(&g, &intel, &all(&intel)).unwrap_err(),
///     GuestError::OffsetMismatch { index: 9, src: 0x980, dst: 0xa80 });
/// ```
pub fn migrate(
    src: &GuestXsave,
    dst: &Enumeration,
    perms: &PermSet,
) -> Result<GuestXsave, GuestError> {
    let user = src.xcr0_allowed;
    let sup = src.xss_allowed;
    check_apx_mpx(user)?;
    check_apx_mpx(dst.xcr0_supported())?;
    let missing = user.difference(dst.xcr0_supported());
    if !missing.is_empty() {
        return Err(missing_on(&src.host, dst, dst.xcr0_supported(), missing));
    }
    let missing = sup.difference(dst.xss_supported());
    if !missing.is_empty() {
        return Err(GuestError::NotOnDestination {
            mask: missing.bits(),
        });
    }
    let host = XsaveFlags::of(dst);
    if !host.contains(src.flags) {
        return Err(GuestError::FlagsUnsupported {
            flags: src.flags,
            host,
        });
    }
    let all = user.union(sup);
    check_sizes(&src.host, dst, all)?;
    for index in all.indices().filter(|&i| i >= 2) {
        let (Some(s), Some(d)) = (src.host.component(index), dst.component(index)) else {
            return Err(GuestError::SubleafMismatch { subleaf: index });
        };
        if !s.supervisor && s.std_offset != d.std_offset {
            return Err(GuestError::OffsetMismatch {
                index,
                src: s.std_offset,
                dst: d.std_offset,
            });
        }
        if (s.supervisor, s.align64, s.xfd) != (d.supervisor, d.align64, d.xfd) {
            return Err(GuestError::SubleafMismatch { subleaf: index });
        }
    }
    let mut g = GuestXsave::new(dst, perms, user, sup, src.flags)?;
    g.xcr0 = src.xcr0;
    g.xss = src.xss;
    g.xfd = src.xfd;
    g.xfd_err = src.xfd_err;
    g.update_sizes();
    // Belt and braces: the guest must see the very same leaf.
    for ((sub, a), (_, b)) in src.subleaves().zip(g.subleaves()) {
        if a != b {
            return Err(GuestError::SubleafMismatch { subleaf: sub });
        }
    }
    Ok(g)
}

/// A fixed leaf 0xD table, one entry per subleaf 0..=63 (absent entries read
/// as zeros, as a CPUID page or a `KVM_SET_CPUID2` table without them does).
/// Every other leaf reads as zeros. [`GuestXsave::leaf_table`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafTable {
    entries: [Option<CpuidResult>; 64],
}

impl Default for LeafTable {
    fn default() -> Self {
        Self {
            entries: [None; 64],
        }
    }
}

impl LeafTable {
    /// The entry of `subleaf`, if present.
    pub fn get(&self, subleaf: u32) -> Option<CpuidResult> {
        self.entries.get(subleaf as usize).copied().flatten()
    }

    /// Put `regs` at `subleaf` (ignored past 63).
    pub fn insert(&mut self, subleaf: u32, regs: CpuidResult) {
        if let Some(e) = self.entries.get_mut(subleaf as usize) {
            *e = Some(regs);
        }
    }

    /// Take `subleaf` out of the table (what a CPUID page missing it holds).
    pub fn remove(&mut self, subleaf: u32) -> Option<CpuidResult> {
        self.entries
            .get_mut(subleaf as usize)
            .and_then(Option::take)
    }

    /// The present entries, by subleaf.
    pub fn iter(&self) -> impl Iterator<Item = (u32, CpuidResult)> + '_ {
        (0u32..)
            .zip(self.entries.iter())
            .filter_map(|(i, e)| e.map(|r| (i, r)))
    }
}

impl CpuidSource for LeafTable {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        if leaf == 0xd {
            self.get(subleaf).unwrap_or_default()
        } else {
            CpuidResult::default()
        }
    }
}

/// Linux keeps XSAVE: what `fpu__init_system_xstate` ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinuxXsave {
    /// The features Linux enables (`fpu_kernel_cfg.max_features`).
    pub features: XFeatures,
    /// The kernel's context size: the size report it checked.
    pub context_size: u32,
    /// Compacted (XSAVEC or XSAVES) or standard format.
    pub compacted: bool,
    /// The user (standard) size, CPUID(0xD,0).EBX.
    pub user_size: u32,
    /// Components whose CPUID size differs from Linux's structure for them:
    /// Linux warns ("struct is N bytes, cpu state M bytes") and dumps the
    /// leaves, but goes on.
    pub struct_mismatch: XFeatures,
}

impl LinuxXsave {
    /// The warnings Linux logs for [`LinuxXsave::struct_mismatch`], read off
    /// the table `src` the verdict came from (Linux dumps the leaves after
    /// each, and keeps XSAVE).
    pub fn struct_warnings<'a>(
        &self,
        src: &'a impl CpuidSource,
    ) -> impl Iterator<Item = StructWarning> + 'a {
        self.struct_mismatch.indices().filter_map(move |index| {
            let linux_size = CATALOG.get(index as usize)?.arch_size?;
            Some(StructWarning {
                index,
                linux_size,
                cpu_size: src.cpuid(0xd, index).eax,
            })
        })
    }
}

/// One of Linux's structure-size warnings: CPUID gives component `index`
/// another size than Linux's structure for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StructWarning {
    /// The component.
    pub index: u32,
    /// Linux's structure size.
    pub linux_size: u32,
    /// What CPUID says.
    pub cpu_size: u32,
}

impl fmt::Display for StructWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = CATALOG
            .get(self.index as usize)
            .map_or("unknown xstate feature", |c| c.linux_desc);
        write!(
            f,
            "[{name}]: struct is {} bytes, cpu state {} bytes",
            self.linux_size, self.cpu_size
        )
    }
}

impl fmt::Display for LinuxXsave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "x86/fpu: Enabled xstate features {:#x}, context size is {} bytes, using '{}' format.",
            self.features.bits(),
            self.context_size,
            if self.compacted {
                "compacted"
            } else {
                "standard"
            }
        )
    }
}

/// Why Linux disables XSAVE for a CPUID leaf 0xD: each variant prints the line
/// Linux 6.18 logs (`arch/x86/kernel/fpu/xstate.c`) before it boots without
/// XSAVE (or, for [`LinuxRefusal::Xcr0Faults`], instead of booting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinuxRefusal {
    /// x87 or SSE missing from the features leaf 0xD enumerates.
    FpSseMissing {
        /// CPUID(0xD,0) EDX:EAX | CPUID(0xD,1) EDX:ECX.
        features: u64,
    },
    /// APX and MPX both enumerated.
    ApxAndMpx {
        /// The same mask.
        features: u64,
    },
    /// A component Linux enables is marked supervisor (ECX\[0\]) while the
    /// CPU has no XSAVES.
    SupervisorWithoutXsaves {
        /// The component.
        index: u32,
    },
    /// The size Linux computes from the subleaves of the features it enables
    /// differs from the size report it checks (CPUID(0xD,1).EBX in the
    /// compacted format, CPUID(0xD,0).EBX in the standard one). openvmm's TDX
    /// guests stop here (openvmm #708: "size 10752 != kernel_size 10704"), and
    /// so does a guest whose table lacks subleaf 11 or 12 while IA32_XSS
    /// enables CET (igvm-tooling #60).
    SizeMismatch {
        /// Computed from the subleaves.
        size: u32,
        /// The size report.
        kernel_size: u32,
    },
    /// The default (non-dynamic) buffer does not fit Linux's static
    /// `init_fpstate` (4096 bytes).
    InitFpstateTooSmall {
        /// The default buffer's size.
        size: u32,
    },
    /// The XCR0 Linux would write is not one XSETBV takes (a group half
    /// enabled, e.g. TILECFG without TILEDATA once Linux drops TILEDATA for
    /// want of XFD): the guest takes #GP at boot. Not a Linux message.
    Xcr0Faults {
        /// The XCR0.
        xcr0: u64,
    },
}

impl fmt::Display for LinuxRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::FpSseMissing { features } => write!(
                f,
                "x86/fpu: FP/SSE not present amongst the CPU's xstate features: {features:#x}."
            ),
            Self::ApxAndMpx { features } => write!(
                f,
                "x86/fpu: Both APX/MPX present in the CPU's xstate features: {features:#x}."
            ),
            Self::SupervisorWithoutXsaves { index } => write!(
                f,
                "XSAVE consistency problem: Got supervisor feature {index}, but XSAVES not advertised"
            ),
            Self::SizeMismatch { size, kernel_size } => write!(
                f,
                "XSAVE consistency problem: size {size} != kernel_size {kernel_size}"
            ),
            Self::InitFpstateTooSmall { size } => write!(
                f,
                "x86/fpu: init_fpstate buffer too small ({INIT_FPSTATE_SIZE} < {size})"
            ),
            Self::Xcr0Faults { xcr0 } => {
                write!(f, "XSETBV of XCR0 {xcr0:#x} faults (#GP) during boot")
            }
        }
    }
}

/// The size of Linux's static `init_fpstate` register area.
const INIT_FPSTATE_SIZE: u32 = 4096;

/// Every component leaf 0xD enumerates: CPUID(0xD,0) EDX:EAX and
/// CPUID(0xD,1) EDX:ECX together (Linux ORs them, overlap or not).
fn enumerated(s0: CpuidResult, s1: CpuidResult) -> XFeatures {
    XFeatures::from_bits_retain(crate::enumerate::join(s0.edx, s0.eax)).union(
        XFeatures::from_bits_retain(crate::enumerate::join(s1.edx, s1.ecx)),
    )
}

/// The features Linux 6.18 enables from leaf 0xD alone (it also drops those
/// whose CPUID feature flag is clear; the other leaves are assumed to agree):
/// the XCR0 and XSS masks, without TILEDATA unless XFD is enumerated, limited
/// to the components it knows (supervisor ones only with XSAVES).
fn linux_max_features(s0: CpuidResult, s1: CpuidResult) -> XFeatures {
    let mut max = enumerated(s0, s1);
    if s1.eax & XsaveFlags::XFD.bits() == 0 {
        max.remove(XFeatures::DYNAMIC);
    }
    if s1.eax & XsaveFlags::XSAVES.bits() != 0 {
        max & LINUX_USER.union(LINUX_SUPERVISOR)
    } else {
        max & LINUX_USER
    }
}

/// Linux's buffer size for `mask` read off the subleaves: compacted, the
/// running sum from 576 with each 64-byte-aligned component aligned; standard,
/// the end of the component with the highest standard offset. Saturates
/// instead of overflowing (a hostile table).
fn linux_size(src: &impl CpuidSource, mask: XFeatures, compacted: bool) -> u32 {
    let mut end = u64::from(EXTENDED_START);
    let mut top = None::<(u32, u32)>;
    for i in mask.indices().filter(|&i| i >= 2) {
        let r = src.cpuid(0xd, i);
        if compacted {
            // At most 576 + 62 * (2^32 + 63): `saturating` never saturates.
            if r.ecx & 2 != 0 {
                end = end.saturating_add(63) & !63;
            }
            end = end.saturating_add(u64::from(r.eax));
        } else if top.is_none_or(|(o, _)| r.ebx >= o) {
            top = Some((r.ebx, r.eax));
        }
    }
    if let Some((o, s)) = top {
        end = u64::from(o).saturating_add(u64::from(s));
    }
    u32::try_from(end).unwrap_or(u32::MAX)
}

/// Predict what Linux 6.18 booting on the leaf 0xD `src` does with XSAVE
/// (`fpu__init_system_xstate` and its size checks): keep it, with the
/// features, sizes and format it reports, or disable it, with the line it
/// logs. `src` answers as the CPU would once Linux has written its XCR0 and
/// IA32_XSS (its `max_features`): for a [`GuestXsave`] use
/// [`GuestXsave::linux_boot`].
///
/// Linux is more lenient than [`Enumeration::from_cpuid`]: a component
/// missing from the table (all zeros) is not refused as such. Linux warns that
/// its structure is larger than the CPU's state (see
/// [`LinuxXsave::struct_warnings`]: a warning, not a refusal), takes the size
/// as 0, and only its size check gives it away: the compacted sum then falls
/// short of CPUID(0xD,1).EBX, unless the next component's 64-byte alignment
/// absorbs the difference (CET_S before AMX's TILECFG: Linux keeps XSAVE, with
/// the warning). Never panics on any table.
///
/// # Errors
/// The [`LinuxRefusal`] for the first check that fails, in Linux's order.
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
/// # use xstate::guest::{linux_xsave, GuestXsave, LinuxRefusal, XsaveFlags};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
/// let mut g = GuestXsave::new(&e, &all, e.xcr0_supported(), e.xss_supported(), XsaveFlags::of(&e)).unwrap();
/// g.set_xcr0(e.xcr0_supported()).unwrap();
/// g.set_xss(e.xss_supported()).unwrap();
/// let mut table = g.leaf_table();
/// assert!(linux_xsave(&table).is_ok());
/// table.remove(12); // a CPUID page without CET_S's subleaf
/// let err = linux_xsave(&table).unwrap_err();
/// // CPUID(0xD,1).EBX still counts CET_S's 24 bytes; Linux's sum has 0 for it.
/// assert_eq!(err, LinuxRefusal::SizeMismatch { size: 2456, kernel_size: 2480 });
/// assert_eq!(err.to_string(), "XSAVE consistency problem: size 2456 != kernel_size 2480");
/// ```
pub fn linux_xsave(src: &impl CpuidSource) -> Result<LinuxXsave, LinuxRefusal> {
    let (s0, s1) = (src.cpuid(0xd, 0), src.cpuid(0xd, 1));
    let all = enumerated(s0, s1).bits();
    if all & XFeatures::LEGACY.bits() != XFeatures::LEGACY.bits() {
        return Err(LinuxRefusal::FpSseMissing { features: all });
    }
    let enumerated = XFeatures::from_bits_retain(all);
    if enumerated.contains(XFeatures::APX) && enumerated.intersects(MPX) {
        return Err(LinuxRefusal::ApxAndMpx { features: all });
    }
    let max = linux_max_features(s0, s1);
    let xsaves = s1.eax & XsaveFlags::XSAVES.bits() != 0;
    let compacted = xsaves || s1.eax & XsaveFlags::XSAVEC.bits() != 0;
    let mut struct_mismatch = XFeatures::empty();
    for i in max.indices().filter(|&i| i >= 2) {
        let r = src.cpuid(0xd, i);
        // Linux's structures have the architectural sizes of the catalog.
        let arch = CATALOG.get(i as usize).and_then(|c| c.arch_size);
        if arch.is_some_and(|a| a != r.eax) {
            struct_mismatch |= XFeatures::from_index(i).unwrap_or(XFeatures::empty());
        }
        if !xsaves && r.ecx & 1 != 0 {
            return Err(LinuxRefusal::SupervisorWithoutXsaves { index: i });
        }
    }
    let kernel_size = if compacted { s1.ebx } else { s0.ebx };
    let size = linux_size(src, max, compacted);
    if size != kernel_size {
        return Err(LinuxRefusal::SizeMismatch { size, kernel_size });
    }
    let default = max
        .difference(XFeatures::DYNAMIC)
        .difference(XFeatures::GUEST_ONLY);
    let default_size = linux_size(src, default, compacted);
    if default_size > INIT_FPSTATE_SIZE {
        return Err(LinuxRefusal::InitFpstateTooSmall { size: default_size });
    }
    Ok(LinuxXsave {
        features: max,
        context_size: kernel_size,
        compacted,
        user_size: s0.ebx,
        struct_mismatch,
    })
}
