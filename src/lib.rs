//! # xstate
//!
//! What the Linux x86 FPU core (`arch/x86/kernel/fpu/`) does, as a reusable
//! `no_std` crate for hobby and research kernels and for hypervisors.
//!
//! Data flows one way, one concern per module, each reading only the ones above it
//! (and [`error`], the error facts several modules share):
//!
//! 1. [`cpuid`]: where CPUID values come from, the live CPU or a recorded dump;
//! 2. [`feature`]: the component catalog (sizes, CPUID feature flags) and the
//!    [`XFeatures`] mask type;
//! 3. [`enumerate`]: CPUID leaf 0xD read and validated (hostile CPUID is refused),
//!    with the feature flags that decide which components are usable;
//! 4. [`layout`]: standard and compacted layouts, O(1) queries;
//! 5. [`config`]: a [`config::Policy`] (Linux's, or a kernel's own) turned into
//!    kernel, user and guest configs;
//! 6. [`perm`]: per-process task and guest permission sets for dynamic components,
//!    with Linux's errnos;
//! 7. [`fpstate`]: fpstate buffers: creation, save/restore through an
//!    [`insn::XsaveUnit`], XFD growth, host/guest swaps;
//! 8. [`uabi`]: the standard-format user ABI (signal frames, ptrace, KVM), import
//!    validated as Linux validates it;
//! 9. [`guest`]: a guest's CPUID leaf 0xD, its XSETBV rules and migration checks;
//! 10. [`fleet`]: many hosts: the migration verdict between two, the guest model
//!     a fleet shares, KVM's buffer sizes;
//! 11. `kvm` (the `kvm` feature): rust-vmm's `kvm-bindings` types (`Xsave`,
//!     `kvm_xsave`, `CpuId`, `kvm_xcrs`) to and from guest fpstates and leaves.
//!
//! Beside the chain: [`insn`] holds the XSAVE-family instructions (`unsafe fn`
//! wrappers and the [`insn::Cpu`] that checks every area before the instruction
//! runs), and `model` (with the `alloc` feature) is `XsaveMachine`, the SDM's
//! semantics in software, for testing ring-0 behaviour in user space.
//!
//! `unsafe` code lives in two modules: [`insn`] (the instructions, XGETBV/XSETBV,
//! FXSAVE for MXCSR_MASK) and [`fpstate`] (the heap-backed area's byte views, with
//! `alloc`). Every block carries a `SAFETY` proof; everything else is safe Rust.
//!
//! ```
//! use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, layout::Layout, XFeatures};
//! let cpu = RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt"))?;
//! let e = Enumeration::from_cpuid(&cpu)?;
//! let l = Layout::compacted(&e, e.xcr0_supported())?;
//! // AMX TILECFG is 64-byte aligned in the compacted form.
//! assert_eq!(l.offset_of(17).unwrap() % 64, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    clippy::missing_safety_doc
)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod config;
pub mod cpuid;
pub mod enumerate;
pub mod error;
pub mod feature;
pub mod fleet;
pub mod fpstate;
pub mod guest;
pub mod insn;
#[cfg(feature = "kvm")]
pub mod kvm;
pub mod layout;
pub mod lifecycle;
#[cfg(feature = "alloc")]
pub mod model;
pub mod perm;
pub mod uabi;

pub use feature::{XCOMP_BV_COMPACTED, XFeature, XFeatures};

impl core::error::Error for config::ConfigError {}
impl core::error::Error for cpuid::ParseError {}
impl core::error::Error for enumerate::EnumError {}
impl core::error::Error for fpstate::FpstateError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::BufferTooSmall(b) => Some(b),
            Self::Foreign(x) => Some(x),
            Self::Fault(f) => Some(f),
            Self::Layout(l) => Some(l),
            _ => None,
        }
    }
}
impl core::error::Error for guest::GuestError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Uabi(e) => Some(e),
            _ => None,
        }
    }
}
impl core::error::Error for layout::LayoutError {}
impl core::error::Error for perm::PermError {}
impl core::error::Error for uabi::UabiError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::BufferTooSmall(b) => Some(b),
            Self::Foreign(x) => Some(x),
            Self::Layout(l) => Some(l),
            _ => None,
        }
    }
}

/// The README's code blocks, compiled and run as doctests (`no_run` where they
/// need the live CPU in a mode a test cannot give).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
