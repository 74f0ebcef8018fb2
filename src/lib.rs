//! # xstate
//!
//! What the Linux x86 FPU core (`arch/x86/kernel/fpu/`) does, as a reusable
//! `no_std` crate for hobby and research kernels and for hypervisors.
//!
//! Data flows one way, one concern per module, each importing only the ones above
//! it (`.ci/run` fails on an import cycle), and [`error`], the error facts several
//! modules share, which imports none:
//!
//! 0. `probe` (private): the live CPU's probes, XGETBV, CPUID.1:ECX.OSXSAVE and
//!    FXSAVE's MXCSR_MASK, re-exported by [`insn`]; it imports nothing;
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
//! 7. [`insn`]: the XSAVE-family instructions (`unsafe fn` wrappers) and the
//!    [`insn::Cpu`] unit, which checks every area against this CPU's own
//!    enumeration before the instruction runs;
//! 8. [`fpstate`]: fpstate buffers: creation, save/restore through an
//!    [`insn::XsaveUnit`], XFD growth, host/guest swaps;
//! 9. [`uabi`]: the standard-format user ABI (signal frames, ptrace, KVM), import
//!    validated as Linux validates it;
//! 10. [`guest`]: a guest's CPUID leaf 0xD, its XSETBV rules and migration checks;
//! 11. [`fleet`]: many hosts: the migration verdict between two, the guest model
//!     a fleet shares, KVM's buffer sizes;
//! 12. `kvm` (the `kvm` feature): rust-vmm's `kvm-bindings` types (`Xsave`,
//!     `kvm_xsave`, `CpuId`, `kvm_xcrs`) to and from guest fpstates and leaves;
//! 13. `model` (with the `alloc` feature): `XsaveMachine`, the SDM's semantics in
//!     software, for testing ring-0 behaviour in user space;
//! 14. [`lifecycle`]: the fpstate lifecycle as Linux runs it (register owners,
//!     deferred and elided restores, kernel SIMD sections, clone/exec/exit,
//!     signals, XFD growth, guest entry/exit), on top of [`fpstate`]'s public API
//!     (and the model, as a unit, with `alloc`).
//!
//! Each error type implements [`core::error::Error`] beside its definition, with
//! `source()` where it wraps another module's error.
//!
//! `unsafe` code lives in four modules: `probe` (XGETBV, FXSAVE), [`insn`] (the
//! instructions, XSETBV, LDMXCSR, FNINIT, the XFD MSR), [`fpstate`] (the
//! heap-backed area's byte views, with `alloc`) and [`lifecycle`] (its kernel SIMD
//! sections' LDMXCSR/FNINIT and XFD writes, through [`insn`]'s wrappers). Every
//! block carries a `SAFETY` proof; everything else is safe Rust.
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
mod probe;
pub mod uabi;

pub use feature::{XCOMP_BV_COMPACTED, XFeature, XFeatures};

/// The README's code blocks, compiled and run as doctests (`no_run` where they
/// need the live CPU in a mode a test cannot give).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
