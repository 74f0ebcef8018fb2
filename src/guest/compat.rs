//! Moving a guest between hosts: whether the destination can hold its state
//! ([`compatible`]), the buffer carried across ([`translate`]), the sizes it
//! needs ([`required_size`], [`kvm_xsave_size`]).

use super::*;

pub(super) fn check_sizes(
    src: &Enumeration,
    dst: &Enumeration,
    mask: XFeatures,
) -> Result<(), GuestError> {
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
/// # let spr = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
/// # let tgl = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/intel-tiger-lake-core-i7-1165g7.txt")).unwrap()).unwrap();
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
pub(super) const MPX: XFeatures = XFeatures::BNDREGS.union(XFeatures::BNDCSR);

/// Linux refuses a CPU enumerating APX and MPX together (6.18's
/// `fpu__init_system_xstate`: APX reuses MPX's standard offset), and so do we,
/// for any mask a guest could be shown.
pub(super) fn check_apx_mpx(mask: XFeatures) -> Result<(), GuestError> {
    if mask.contains(XFeatures::APX) && mask.intersects(MPX) {
        return Err(GuestError::ApxWithMpx { mask: mask.bits() });
    }
    Ok(())
}

/// The refusal for guest components `missing` the destination cannot hold:
/// [`GuestError::Replaced`] when one of the destination's components in
/// `dst_mask` starts at a missing component's standard offset (APX where MPX
/// was), else [`GuestError::NotOnDestination`].
pub(super) fn missing_on(
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
/// # let amd = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let intel = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/intel-tiger-lake-core-i7-1165g7.txt")).unwrap()).unwrap();
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
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/intel-tiger-lake-core-i7-1165g7.txt")).unwrap()).unwrap();
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
