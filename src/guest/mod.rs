//! What a hypervisor needs on top of the host's enumeration: the CPUID leaf 0xD a
//! guest sees ([`GuestXsave`], what KVM builds by hand in `arch/x86/kvm/cpuid.c` and
//! a VMM installs with `KVM_SET_CPUID2`), the guest's XSETBV and `WRMSR IA32_XSS`
//! rules with the size reports they move, and the checks a live migration or a
//! snapshot restore needs ([`compatible`], [`translate`], [`required_size`]).
//!
//! Everything here is pure: the host's facts come in as an [`Enumeration`], the
//! process's guest permissions as a [`PermSet`]; nothing touches the hardware.
//!
//! By concern: `view` (the vCPU's view), `compat` (cross-host moves), `migrate`
//! (side registers and migration) and `linux` (Linux's verdict on a leaf table);
//! every public item is re-exported here, at its old path.

// The lint wall of the modules that parse untrusted bytes, for this module
// and each file under it.
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

mod compat;
mod linux;
mod migrate;
mod view;

pub use compat::*;
pub use linux::*;
pub use migrate::*;
pub use view::*;

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
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/intel-haswell-core-i7-4770.txt")).unwrap()).unwrap();
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
