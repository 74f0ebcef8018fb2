//! # xstate
//!
//! What the Linux x86 FPU core (`arch/x86/kernel/fpu/`) does, as a reusable
//! `no_std` crate for hobby and research kernels and for hypervisors.
//!
//! Data flows one way, one concern per module:
//!
//! 1. [`cpuid`]: where CPUID values come from, the live CPU or a recorded dump;
//! 2. [`feature`]: the component catalog and the [`XFeatures`] mask type;
//! 3. [`enumerate`]: CPUID leaf 0xD read and validated (hostile CPUID is refused);
//! 4. [`layout`]: standard and compacted layouts, O(1) queries;
//! 5. [`config`]: a [`config::Policy`] turned into kernel, user and guest configs;
//! 6. [`insn`]: the only `unsafe` code, one wrapper per XSAVE-family instruction.
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
pub mod feature;
pub mod fpstate;
pub mod guest;
pub mod insn;
pub mod layout;
#[cfg(feature = "alloc")]
pub mod model;
pub mod perm;
pub mod uabi;

pub use feature::{XCOMP_BV_COMPACTED, XFeature, XFeatures};

impl core::error::Error for config::ConfigError {}
impl core::error::Error for cpuid::ParseError {}
impl core::error::Error for enumerate::EnumError {}
impl core::error::Error for fpstate::FpstateError {}
impl core::error::Error for guest::GuestError {}
impl core::error::Error for layout::LayoutError {}
impl core::error::Error for perm::PermError {}
impl core::error::Error for uabi::UabiError {}
