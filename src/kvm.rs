//! rust-vmm's KVM types (`kvm-bindings` 0.14, the `kvm` feature) in and out of
//! the crate's guest types, so a VMM never slices a `kvm_xsave` into bytes
//! itself and needs no `unsafe` for it:
//!
//! - [`KvmCaps`]: what KVM supports for guests and the size of its XSAVE
//!   buffers (`max(4096, KVM_CAP_XSAVE2)`), from the host's enumeration or
//!   from KVM itself;
//! - [`import_xsave`] / [`import_kvm_xsave`]: a `KVM_GET_XSAVE2` (or
//!   `KVM_GET_XSAVE`) buffer into a guest fpstate with `KVM_SET_XSAVE`'s
//!   checks ([`uabi::import_guest`] under [`UserAbi::Kvm`]);
//! - [`export_xsave`] / [`export_kvm_xsave`]: a guest fpstate into the buffer
//!   `KVM_GET_XSAVE2` would return, ready for `KVM_SET_XSAVE`
//!   ([`uabi::export`] with what the guest's CPUID allows plus x87 and SSE);
//! - [`set_leaf`] and [`guest_from_cpuid`]: a [`GuestXsave`] into and out of
//!   a `KVM_SET_CPUID2` table;
//! - [`xcr0_of`] and [`check_xcrs`]: the XCR0 of a `kvm_xcrs`, checked by the
//!   guest's XSETBV rules.
//!
//! The ioctls themselves are the VMM's (kvm-ioctls); this module only
//! converts.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use alloc::vec::Vec;
use core::fmt;

use kvm_bindings::{
    CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, Xsave, kvm_cpuid_entry2, kvm_xcr, kvm_xcrs, kvm_xsave,
    kvm_xsave2,
};

use crate::config::Configs;
use crate::cpuid::CpuidResult;
use crate::enumerate::Enumeration;
use crate::error::BufferTooSmall;
use crate::feature::XFeatures;
use crate::fleet::{GuestModel, kvm_buffer_size};
use crate::fpstate::{Fpstate, Storage};
use crate::guest::{GuestError, GuestXsave, XsaveFlags};
use crate::guest::{KVM_XSAVE_SIZE as KVM_XSAVE_REGION, kvm_xsave_size};
use crate::perm::PermSet;
use crate::uabi::{self, UabiError, UserAbi};

/// The CPUID leaf of the XSAVE features.
const LEAF_XSAVE: u32 = 0xd;

/// Why a KVM structure could not be converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvmError {
    /// The XSAVE buffer was refused (KVM's own checks and Linux's), or a
    /// buffer is too small for what it must hold.
    Uabi(UabiError),
    /// The guest refused the table or the XCR0 (KVM's and XSETBV's rules).
    Guest(GuestError),
    /// A `kvm_xsave` of this many bytes could not be made (vmm-sys-util's
    /// limit on a flexible array).
    TooLarge {
        /// The bytes asked for.
        bytes: usize,
    },
    /// A `kvm_xcrs` without XCR0 among its first `nr_xcrs` entries (or with
    /// more entries than the structure holds).
    NoXcr0 {
        /// Its `nr_xcrs`.
        nr_xcrs: u32,
    },
    /// A CPUID table without leaf 0xD's subleaf 0 or 1.
    MissingSubleaf {
        /// The subleaf.
        subleaf: u32,
    },
}

impl From<UabiError> for KvmError {
    fn from(e: UabiError) -> Self {
        Self::Uabi(e)
    }
}

impl From<GuestError> for KvmError {
    fn from(e: GuestError) -> Self {
        Self::Guest(e)
    }
}

impl From<BufferTooSmall> for KvmError {
    fn from(b: BufferTooSmall) -> Self {
        Self::Uabi(b.into())
    }
}

impl KvmError {
    /// The Linux errno (positive) KVM returns for the same refusal.
    pub const fn errno(self) -> i32 {
        match self {
            Self::Uabi(e) => e.errno(),
            Self::Guest(e) => e.errno(),
            Self::TooLarge { .. } => 12, // ENOMEM
            _ => 22,                     // EINVAL
        }
    }
}

impl fmt::Display for KvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uabi(e) => write!(f, "XSAVE buffer refused: {e}"),
            Self::Guest(e) => write!(f, "guest refused: {e}"),
            Self::TooLarge { bytes } => write!(f, "no kvm_xsave of {bytes} bytes can be made"),
            Self::NoXcr0 { nr_xcrs } => {
                write!(f, "kvm_xcrs holds no XCR0 among its {nr_xcrs} entries")
            }
            Self::MissingSubleaf { subleaf } => {
                write!(f, "the CPUID table lacks leaf 0xD subleaf {subleaf}")
            }
        }
    }
}

impl core::error::Error for KvmError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Uabi(e) => Some(e),
            Self::Guest(e) => Some(e),
            _ => None,
        }
    }
}

/// What KVM on a host supports for guests and the size of its XSAVE buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmCaps {
    /// `kvm_caps.supported_xcr0`: what `KVM_SET_XSAVE` takes in XSTATE_BV
    /// (leaf 0xD subleaf 0 of `KVM_GET_SUPPORTED_CPUID`, once the process
    /// holds guest permission for every dynamic component).
    pub supported_xcr0: XFeatures,
    /// `max(4096, KVM_CAP_XSAVE2)`: the bytes `KVM_GET_XSAVE2` writes and
    /// `KVM_SET_XSAVE` reads.
    pub xsave_size: usize,
}

impl KvmCaps {
    /// As KVM computes them on the host `e` ([`GuestModel::offered`],
    /// [`kvm_buffer_size`]).
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, XFeatures};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
    /// let caps = xstate::kvm::KvmCaps::of(&e);
    /// assert_eq!(caps.xsave_size, 11008);
    /// assert!(caps.supported_xcr0.contains(XFeatures::XTILE));
    /// ```
    pub fn of(e: &Enumeration) -> Self {
        let supported_xcr0 = GuestModel::offered(e).xcr0;
        Self {
            supported_xcr0,
            xsave_size: kvm_buffer_size(e, supported_xcr0),
        }
    }

    /// As KVM reports them: `supported` from `KVM_GET_SUPPORTED_CPUID`,
    /// `cap_xsave2` from `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` (0 when KVM
    /// lacks it: then 4096 bytes, `KVM_GET_XSAVE`'s).
    ///
    /// # Errors
    /// [`KvmError::MissingSubleaf`] if `supported` has no leaf 0xD subleaf 0.
    pub fn from_kvm(supported: &CpuId, cap_xsave2: i32) -> Result<Self, KvmError> {
        let s0 = find(supported, 0).ok_or(KvmError::MissingSubleaf { subleaf: 0 })?;
        Ok(Self {
            supported_xcr0: XFeatures::from_bits_retain(join(s0.eax, s0.edx)),
            xsave_size: kvm_xsave_size(cap_xsave2),
        })
    }

    /// The user ABI `KVM_SET_XSAVE` applies, for [`uabi::import_abi`].
    pub const fn abi(&self) -> UserAbi {
        UserAbi::Kvm {
            supported: self.supported_xcr0,
            uabi_size: self.xsave_size,
        }
    }
}

/// EDX:EAX (or EDX:ECX) as one mask.
fn join(low: u32, high: u32) -> u64 {
    u64::from(high) << 32 | u64::from(low)
}

/// Leaf 0xD `subleaf` of a CPUID table.
fn find(t: &CpuId, subleaf: u32) -> Option<CpuidResult> {
    t.as_slice()
        .iter()
        .find(|x| x.function == LEAF_XSAVE && x.index == subleaf)
        .map(|x| CpuidResult {
            eax: x.eax,
            ebx: x.ebx,
            ecx: x.ecx,
            edx: x.edx,
        })
}

/// Little-endian words from bytes (a short last word is zero-padded).
fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks(4).map(|c| {
        let mut w = [0u8; 4];
        for (d, s) in w.iter_mut().zip(c) {
            *d = *s;
        }
        u32::from_le_bytes(w)
    })
}

/// `KVM_SET_XSAVE` into a guest fpstate: the buffer of an [`Xsave`] (what
/// `KVM_GET_XSAVE2` filled) imported into `fp` with KVM's length and mask
/// rules (`caps`), Linux's header and MXCSR checks, and the guest's IA32_XFD
/// in force (armed components left in their init state). Returns the user
/// features now live in `fp`.
///
/// # Errors
/// [`KvmError::Uabi`] for the first check that fails (fewer bytes than
/// `caps.xsave_size`: `BufferTooSmall`, EFAULT as KVM's); `fp` is unchanged.
pub fn import_xsave<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    xsave: &Xsave,
    caps: KvmCaps,
    guest: &GuestXsave,
) -> Result<XFeatures, KvmError> {
    let region = &xsave.as_fam_struct_ref().xsave.region;
    import_words(cfg, fp, region, xsave.as_slice(), caps, guest)
}

/// [`import_xsave`] for the fixed 4096-byte `kvm_xsave` of `KVM_GET_XSAVE`:
/// refused when `caps` says KVM's buffers are larger (its state would have
/// been cut, cloud-hypervisor #7533).
///
/// # Errors
/// As [`import_xsave`].
pub fn import_kvm_xsave<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    xsave: &kvm_xsave,
    caps: KvmCaps,
    guest: &GuestXsave,
) -> Result<XFeatures, KvmError> {
    import_words(cfg, fp, &xsave.region, &[], caps, guest)
}

fn import_words<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    region: &[u32],
    extra: &[u32],
    caps: KvmCaps,
    guest: &GuestXsave,
) -> Result<XFeatures, KvmError> {
    let bytes: Vec<u8> = region
        .iter()
        .chain(extra)
        .flat_map(|w| w.to_le_bytes())
        .collect();
    Ok(uabi::import_guest(
        cfg,
        fp,
        &bytes,
        caps.abi(),
        guest.xfd(),
    )?)
}

/// `fp` as `KVM_GET_XSAVE2` returns it into `size` bytes: the standard form,
/// what `guest`'s CPUID allows plus x87 and SSE, zero to the end.
fn exported<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    guest: &GuestXsave,
    size: usize,
) -> Result<Vec<u8>, KvmError> {
    let mut buf = alloc::vec![0u8; size];
    uabi::export(cfg, fp, guest.xcr0_allowed() | XFeatures::LEGACY, &mut buf)?;
    Ok(buf)
}

/// What `KVM_GET_XSAVE2` returns for a guest: `fp` in the standard form,
/// filtered by what `guest`'s CPUID allows plus x87 and SSE, zero up to
/// `caps.xsave_size` bytes; what `KVM_SET_XSAVE` takes.
///
/// # Errors
/// [`KvmError::Uabi`] (`fp` is not of `cfg`, or its state needs more than
/// `caps.xsave_size` bytes), [`KvmError::TooLarge`].
pub fn export_xsave<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    guest: &GuestXsave,
    caps: KvmCaps,
) -> Result<Xsave, KvmError> {
    let buf = exported(cfg, fp, guest, caps.xsave_size)?;
    let (head, tail) = buf.split_at(KVM_XSAVE_REGION.min(buf.len()));
    let mut header = kvm_xsave2 {
        len: 0,
        xsave: kvm_xsave::default(),
    };
    fill(&mut header.xsave.region, head);
    let too_large = KvmError::TooLarge {
        bytes: caps.xsave_size,
    };
    let mut x = Xsave::from_header(header).map_err(|_| too_large)?;
    for w in words(tail) {
        x.push(w).map_err(|_| too_large)?;
    }
    Ok(x)
}

/// [`export_xsave`] into the fixed 4096-byte `kvm_xsave` of
/// `KVM_SET_XSAVE` without `KVM_CAP_XSAVE2`. Where KVM's `KVM_GET_XSAVE`
/// silently cuts state past 4096 bytes, this refuses.
///
/// # Errors
/// [`KvmError::Uabi`] with `BufferTooSmall` when the guest's state needs
/// more than 4096 bytes (AMX).
pub fn export_kvm_xsave<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    guest: &GuestXsave,
) -> Result<kvm_xsave, KvmError> {
    let buf = exported(cfg, fp, guest, KVM_XSAVE_REGION)?;
    let mut x = kvm_xsave::default();
    fill(&mut x.region, &buf);
    Ok(x)
}

/// `region`'s words from `bytes`, little-endian.
fn fill(region: &mut [u32], bytes: &[u8]) {
    for (d, w) in region.iter_mut().zip(words(bytes)) {
        *d = w;
    }
}

/// Put `guest`'s leaf 0xD into a `KVM_SET_CPUID2` table: every leaf 0xD
/// entry of `table` is replaced by [`GuestXsave::subleaves`] (function 0xD,
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`).
///
/// # Errors
/// [`KvmError::TooLarge`] if the table cannot grow.
pub fn set_leaf(table: &mut CpuId, guest: &GuestXsave) -> Result<(), KvmError> {
    table.retain(|x| x.function != LEAF_XSAVE);
    for (index, r) in guest.subleaves() {
        table
            .push(kvm_cpuid_entry2 {
                function: LEAF_XSAVE,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
                ..Default::default()
            })
            .map_err(|_| KvmError::TooLarge {
                bytes: core::mem::size_of::<kvm_cpuid_entry2>(),
            })?;
    }
    Ok(())
}

/// The guest a `KVM_SET_CPUID2` table describes on the host `host`: its leaf
/// 0xD masks and extensions through [`GuestXsave::new`] (with `perms`), and
/// every other subleaf of the table checked against what this host would
/// show (a table made on another CPU with other sizes, offsets or flags is
/// refused). The size reports (EBX of subleaves 0 and 1) follow XCR0 and
/// IA32_XSS, which the table does not fix: they are not compared.
///
/// # Errors
/// [`KvmError::MissingSubleaf`], [`GuestXsave::new`]'s errors, and
/// [`GuestError::SubleafMismatch`] for a subleaf that differs.
pub fn guest_from_cpuid(
    host: &Enumeration,
    perms: &PermSet,
    table: &CpuId,
) -> Result<GuestXsave, KvmError> {
    let s0 = find(table, 0).ok_or(KvmError::MissingSubleaf { subleaf: 0 })?;
    let s1 = find(table, 1).ok_or(KvmError::MissingSubleaf { subleaf: 1 })?;
    let g = GuestXsave::new(
        host,
        perms,
        XFeatures::from_bits_retain(join(s0.eax, s0.edx)),
        XFeatures::from_bits_retain(join(s1.ecx, s1.edx)),
        XsaveFlags::from_bits_retain(s1.eax),
    )?;
    for x in table.as_slice().iter().filter(|x| x.function == LEAF_XSAVE) {
        let want = g.leaf(x.index);
        let same = match x.index {
            0 => (x.eax, x.ecx, x.edx) == (want.eax, want.ecx, want.edx),
            1 => (x.eax, x.ecx, x.edx) == (want.eax, want.ecx, want.edx),
            _ => (x.eax, x.ebx, x.ecx, x.edx) == (want.eax, want.ebx, want.ecx, want.edx),
        };
        if !same {
            return Err(GuestError::SubleafMismatch { subleaf: x.index }.into());
        }
    }
    Ok(g)
}

/// The XCR0 of a `kvm_xcrs` (`KVM_GET_XCRS`).
///
/// # Errors
/// [`KvmError::NoXcr0`].
pub fn xcr0_of(xcrs: &kvm_xcrs) -> Result<XFeatures, KvmError> {
    let n = usize::try_from(xcrs.nr_xcrs).unwrap_or(usize::MAX);
    xcrs.xcrs
        .get(..n)
        .and_then(|v| v.iter().find(|x| x.xcr == 0))
        .map(|x| XFeatures::from_bits_retain(x.value))
        .ok_or(KvmError::NoXcr0 {
            nr_xcrs: xcrs.nr_xcrs,
        })
}

/// Check a `kvm_xcrs` (from `KVM_GET_XCRS` on the source, or a snapshot)
/// against `guest`'s XSETBV rules and take its XCR0 into `guest` (its size
/// reports follow), as `KVM_SET_XCRS` checks it. On error `guest` is
/// unchanged.
///
/// # Errors
/// [`KvmError::NoXcr0`], and the XSETBV errors of [`GuestXsave::set_xcr0`].
pub fn check_xcrs(guest: &mut GuestXsave, xcrs: &kvm_xcrs) -> Result<(), KvmError> {
    Ok(guest.set_xcr0(xcr0_of(xcrs)?)?)
}

/// The `kvm_xcrs` for `KVM_SET_XCRS`: `guest`'s XCR0.
pub fn xcrs(guest: &GuestXsave) -> kvm_xcrs {
    let mut x = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    if let Some(slot) = x.xcrs.first_mut() {
        *slot = kvm_xcr {
            xcr: 0,
            reserved: 0,
            value: guest.xcr0().bits(),
        };
    }
    x
}
