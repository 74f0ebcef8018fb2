//! The registers that travel beside a guest's XSAVE buffer ([`SideReg`],
//! [`SideState`]) and a whole migration's verdict ([`migrate`]).

use super::*;

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
    pub(super) regs: SideRegs,
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
    pub(super) const fn value(&self, reg: SideReg) -> u64 {
        self.values[reg as usize]
    }

    /// `reg`'s slot, writable.
    #[expect(
        clippy::indexing_slicing,
        reason = "SideReg is repr(u8) with the explicit discriminants 0..=11 and `values` has 12 slots"
    )]
    pub(super) fn value_mut(&mut self, reg: SideReg) -> &mut u64 {
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
/// # let amd = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let intel = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/intel-tiger-lake-core-i7-1165g7.txt")).unwrap()).unwrap();
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
