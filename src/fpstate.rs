//! Fpstates: a header describing what a buffer holds plus a 64-byte aligned XSAVE
//! area, created in init state, saved and restored through an
//! [`XsaveUnit`], grown on the first XFD fault, and swapped
//! between host and guest.
//!
//! The "lesser dynamic" rule lives here: host fpstates never get space for the
//! guest-only components (CET_S), yet every restore uses the configs' full RFBM, so
//! restoring a host fpstate right after a guest puts CET_S in its init state.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;
use core::mem::size_of;
use core::ops::Range;

use memoffset::offset_of;
use static_assertions::const_assert_eq;

use crate::config::{Configs, PlanIndex};
use crate::error::{BufferTooSmall, ForeignFpstate};
use crate::feature::XFeatures;
use crate::insn::{BoundArea, Cpu, Fault, Insn, XsaveUnit};
use crate::layout::{Form, Layout, LayoutError, XSAVE_ALIGN};
use crate::perm::{PermKind, ProcessPerms};

/// The legacy region (FXSAVE image), bytes 0..512 of every XSAVE area.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LegacyRegion {
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word.
    pub ftw: u8,
    /// Reserved.
    pub reserved0: u8,
    /// Last x87 opcode.
    pub fop: u16,
    /// Last x87 instruction pointer (64-bit format).
    pub fip: u64,
    /// Last x87 data pointer (64-bit format).
    pub fdp: u64,
    /// SSE control and status.
    pub mxcsr: u32,
    /// Which MXCSR bits the CPU supports.
    pub mxcsr_mask: u32,
    /// ST0-ST7 / MM0-MM7, 16 bytes each.
    pub st: [u8; 128],
    /// XMM0-XMM15.
    pub xmm: [u8; 256],
    /// Reserved; bytes 464..512 are available to software.
    pub reserved1: [u8; 96],
}

/// The XSAVE header, bytes 512..576.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsaveHeader {
    /// Components whose saved state is not init.
    pub xstate_bv: u64,
    /// Bit 63: compacted form; bits 62:0: the components with space.
    pub xcomp_bv: u64,
    /// Must be zero.
    pub reserved: [u64; 6],
}

/// The fixed prefix every XSAVE area starts with.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct XsaveArea {
    /// The legacy region.
    pub legacy: LegacyRegion,
    /// The header.
    pub header: XsaveHeader,
}

const_assert_eq!(size_of::<LegacyRegion>(), 512);
const_assert_eq!(size_of::<XsaveHeader>(), 64);
const_assert_eq!(size_of::<XsaveArea>(), 576);

/// Offset of MXCSR in any XSAVE area.
pub const MXCSR_OFFSET: usize = offset_of!(LegacyRegion, mxcsr);
/// Offset of MXCSR_MASK.
pub const MXCSR_MASK_OFFSET: usize = offset_of!(LegacyRegion, mxcsr_mask);
/// Offset of XSTATE_BV.
pub const XSTATE_BV_OFFSET: usize = offset_of!(XsaveArea, header);
/// Offset of XCOMP_BV.
pub const XCOMP_BV_OFFSET: usize = XSTATE_BV_OFFSET + offset_of!(XsaveHeader, xcomp_bv);
pub(crate) const FCW_OFFSET: usize = offset_of!(LegacyRegion, fcw);
const_assert_eq!(XSTATE_BV_OFFSET, 512);
const_assert_eq!(MXCSR_OFFSET, 24);
const_assert_eq!(MXCSR_MASK_OFFSET, 28);
const_assert_eq!(XCOMP_BV_OFFSET, 520);

/// MXCSR after reset and in the SSE init state.
pub const MXCSR_DEFAULT: u32 = 0x1f80;
/// FCW in the x87 init state (what FNINIT loads).
pub const FCW_DEFAULT: u16 = 0x037f;

/// Why an fpstate operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FpstateError {
    /// The storage is smaller than the buffer needs.
    BufferTooSmall(BufferTooSmall),
    /// The fpstate was made under other configs.
    Foreign(ForeignFpstate),
    /// The storage does not start on a 64-byte boundary.
    Misaligned {
        /// The address modulo 64.
        misalignment: usize,
    },
    /// The first use of component `index` faulted and the process has no permission
    /// for it (a kernel sends SIGILL).
    NotPermitted {
        /// The component.
        index: u32,
    },
    /// The fpstate already holds everything it is permitted.
    NothingToGrow,
    /// A user-mode unit cannot save supervisor components (XSAVEC ignores them).
    NeedsSupervisor {
        /// The supervisor components the fpstate holds.
        mask: u64,
    },
    /// The instruction faulted (reported by the model; the CPU does not return).
    Fault(Fault),
    /// A layout could not be made for the features.
    Layout(LayoutError),
}

impl core::error::Error for FpstateError {
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

impl fmt::Display for FpstateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BufferTooSmall(b) => write!(f, "storage: {b}"),
            Self::Foreign(x) => x.fmt(f),
            Self::Misaligned { misalignment } => {
                write!(f, "buffer is {misalignment} bytes past a 64-byte boundary")
            }
            Self::NotPermitted { index } => {
                write!(f, "no permission for component {index} (SIGILL)")
            }
            Self::NothingToGrow => write!(f, "fpstate already holds every permitted component"),
            Self::NeedsSupervisor { mask } => {
                write!(f, "supervisor components {mask:#x} need XSAVES/XRSTORS")
            }
            Self::Fault(x) => write!(f, "instruction fault {x:?}"),
            Self::Layout(e) => write!(f, "layout: {e}"),
        }
    }
}

impl From<LayoutError> for FpstateError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}

impl From<BufferTooSmall> for FpstateError {
    fn from(b: BufferTooSmall) -> Self {
        Self::BufferTooSmall(b)
    }
}

impl From<ForeignFpstate> for FpstateError {
    fn from(x: ForeignFpstate) -> Self {
        Self::Foreign(x)
    }
}

impl From<Fault> for FpstateError {
    fn from(f: Fault) -> Self {
        Self::Fault(f)
    }
}

/// Where an fpstate's bytes live.
pub trait Storage {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// The bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl Storage for &mut [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

#[cfg(feature = "alloc")]
pub use boxed::BoxedArea;

#[cfg(feature = "alloc")]
mod boxed {
    use alloc::boxed::Box;
    use alloc::vec;

    /// One 64-byte, 64-aligned block: a slice of them is an aligned area.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Block([u8; 64]);

    /// A zeroed, 64-byte aligned heap area, exactly as large as asked (rounded up to
    /// 64 bytes): no over-allocation to find an aligned start.
    pub struct BoxedArea {
        blocks: Box<[Block]>,
        len: usize,
    }

    impl core::fmt::Debug for BoxedArea {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("BoxedArea").field("len", &self.len).finish()
        }
    }

    impl BoxedArea {
        /// A zeroed area of `len` bytes.
        pub fn zeroed(len: usize) -> Self {
            Self {
                blocks: vec![Block([0; 64]); len.div_ceil(64)].into_boxed_slice(),
                len,
            }
        }

        /// Bytes actually allocated (a multiple of 64).
        pub fn allocated(&self) -> usize {
            core::mem::size_of_val(&*self.blocks)
        }
    }

    impl super::Storage for BoxedArea {
        fn bytes(&self) -> &[u8] {
            let p = self.blocks.as_ptr().cast::<u8>();
            // SAFETY: `Block` is `repr(C)` around `[u8; 64]` with no padding (size 64,
            // checked by the compiler: align 64 = size), so `blocks` is
            // `blocks.len() * 64` initialised bytes, and `len <= blocks.len() * 64`.
            unsafe { core::slice::from_raw_parts(p, self.len) }
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            let p = self.blocks.as_mut_ptr().cast::<u8>();
            // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
            unsafe { core::slice::from_raw_parts_mut(p, self.len) }
        }
    }

    static_assertions::const_assert_eq!(core::mem::size_of::<Block>(), 64);
}

/// Host task or guest vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A host task: never holds guest-only components.
    Host,
    /// A guest: holds the guest-only components from the start.
    Guest,
}

/// How save/restore reach the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Ring 0: XSAVES/XRSTORS, supervisor components included.
    Supervisor,
    /// User mode: XSAVEC (in standard form XSAVEOPT, or XSAVE on a CPU without
    /// it) and XRSTOR, user components only.
    User,
}

/// What an fpstate holds, like the header of Linux's `struct fpstate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FpstateInfo {
    /// Components with space in the buffer (XCOMP_BV without bit 63).
    pub features: XFeatures,
    /// The user components among them (what the user ABI exposes).
    pub user_features: XFeatures,
    /// Dynamic components without space: XFD stays armed for them.
    pub xfd: XFeatures,
    /// Buffer size in bytes.
    pub size: u32,
    /// User-ABI (standard form) size for `user_features`.
    pub user_size: u32,
    /// Buffer form.
    pub form: Form,
    /// Host or guest.
    pub owner: Owner,
    /// The handle's copy plan for `features` (the user ABI's whole-image
    /// copies), found once when the fpstate is made instead of on every
    /// export and import. Kept here, in the padding after `owner`, so an
    /// [`Fpstate`] stays one 64-byte line of fields (asserted below).
    pub(crate) plan: Option<PlanIndex>,
}

/// An fpstate: [`FpstateInfo`] plus its XSAVE area in `S`.
#[derive(Debug)]
pub struct Fpstate<S: Storage> {
    info: FpstateInfo,
    /// [`Configs`]' stamp: the handle this fpstate was made under.
    stamp: u64,
    storage: S,
}

// The fields before the storage take 48 bytes: with a slice as storage an
// fpstate is one 64-byte line of fields (a `BoxedArea` adds its 24). A word
// more (the copy plan as a field of its own) made the lifecycle's ping-pong
// ~1.2 ns per switch slower (BENCHMARKS.md section 6).
const_assert_eq!(size_of::<Fpstate<&mut [u8]>>(), 64);
#[cfg(feature = "alloc")]
const_assert_eq!(size_of::<Fpstate<BoxedArea>>(), 72);

impl<S: Storage> Fpstate<S> {
    /// A fresh fpstate in `storage`, holding the owner's default features (host:
    /// the kernel config's; guest: the guest config's, guest-only ones included).
    /// The area is put in init state: zeroed, XSTATE_BV = 0, XCOMP_BV = bit 63 |
    /// features (compacted form), MXCSR = 0x1f80, FCW = 0x37f.
    ///
    /// # Errors
    /// [`FpstateError::BufferTooSmall`] or [`FpstateError::Misaligned`]; the
    /// storage is not written then.
    pub fn new_in(cfg: &Configs, owner: Owner, storage: S) -> Result<Self, FpstateError> {
        let features = match owner {
            Owner::Host => cfg.kernel().default_features,
            Owner::Guest => cfg.guest().default_features,
        };
        Self::with_features(cfg, owner, features, storage)
    }

    fn with_features(
        cfg: &Configs,
        owner: Owner,
        features: XFeatures,
        mut storage: S,
    ) -> Result<Self, FpstateError> {
        let e = cfg.enumeration();
        let form = cfg.kernel().form;
        let size = match form {
            Form::Compacted => e.compacted_size(features),
            Form::Standard => e.standard_size(features),
        };
        check_storage(storage.bytes(), size)?;
        let user_features = features & cfg.user().max_features;
        let info = FpstateInfo {
            features,
            user_features,
            xfd: cfg.policy().dynamic.difference(features),
            size,
            user_size: e.standard_size(user_features),
            form,
            owner,
            plan: cfg.plan_index(features),
        };
        // `check_storage` measured `bytes()`; a `Storage` whose `bytes_mut()` is
        // shorter gets the same error rather than a panic.
        span_mut(storage.bytes_mut(), 0..size as usize)?;
        let mut fp = Self {
            info,
            stamp: cfg.stamp(),
            storage,
        };
        fp.reset_init()?;
        Ok(fp)
    }

    /// Put the area in the init state a fresh fpstate has: zeroed, XSTATE_BV = 0,
    /// XCOMP_BV = bit 63 | features (compacted form), MXCSR = 0x1f80, FCW = 0x37f.
    pub(crate) fn reset_init(&mut self) -> Result<(), FpstateError> {
        let (size, form, features) = (self.info.size, self.info.form, self.info.features);
        let area = span_mut(self.storage.bytes_mut(), 0..size as usize)?;
        area.fill(0);
        put_u16(area, FCW_OFFSET, FCW_DEFAULT);
        put_u32(area, MXCSR_OFFSET, MXCSR_DEFAULT);
        if form == Form::Compacted {
            put_u64(
                area,
                XCOMP_BV_OFFSET,
                crate::XCOMP_BV_COMPACTED | features.bits(),
            );
        }
        Ok(())
    }

    /// Whether this fpstate was made under `cfg`.
    ///
    /// # Errors
    /// [`ForeignFpstate`] if it was made under other configs.
    #[inline]
    pub fn check_configs(&self, cfg: &Configs) -> Result<(), ForeignFpstate> {
        if self.stamp == cfg.stamp() {
            Ok(())
        } else {
            Err(ForeignFpstate)
        }
    }

    /// The copy plan of its handle that serves this fpstate, if any.
    #[inline]
    pub(crate) const fn plan(&self) -> Option<PlanIndex> {
        self.info.plan
    }

    /// What the fpstate holds.
    #[inline]
    pub const fn info(&self) -> &FpstateInfo {
        &self.info
    }

    /// The XSAVE area: exactly `info().size` bytes (fewer only if the
    /// [`Storage`] shrank after the fpstate was made in it; the crate's units
    /// then refuse to save or restore it, and [`Fpstate::grow`] reports
    /// [`FpstateError::BufferTooSmall`]).
    #[inline]
    pub fn area(&self) -> &[u8] {
        let b = self.storage.bytes();
        // `min` instead of `[..size]`: the same one compare, no panic path.
        b.get(..b.len().min(self.info.size as usize))
            .unwrap_or_default()
    }

    #[inline]
    pub(crate) fn area_mut(&mut self) -> &mut [u8] {
        let size = self.info.size as usize;
        let b = self.storage.bytes_mut();
        let n = b.len().min(size);
        b.get_mut(..n).unwrap_or_default()
    }

    /// XSTATE_BV from the header.
    #[inline]
    pub fn xstate_bv(&self) -> XFeatures {
        XFeatures::from_bits_retain(get_u64(self.area(), XSTATE_BV_OFFSET))
    }

    /// XCOMP_BV from the header (bit 63 included).
    #[inline]
    pub fn xcomp_bv(&self) -> u64 {
        get_u64(self.area(), XCOMP_BV_OFFSET)
    }

    /// Give the storage back.
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Save the registers into this fpstate: XSAVES (supervisor mode) or XSAVEC
    /// (user mode; XSAVEOPT, or XSAVE without it, for a standard-form config),
    /// with RFBM = the features this buffer has space for. A host fpstate thus never receives CET_S bytes.
    ///
    /// # Errors
    /// [`FpstateError::NeedsSupervisor`] in user mode for an fpstate holding
    /// supervisor components; [`FpstateError::Fault`] if the unit faults.
    #[inline]
    pub fn save(
        &mut self,
        unit: &mut impl XsaveUnit,
        cfg: &Configs,
        mode: Mode,
    ) -> Result<(), FpstateError> {
        let insn = self.insn(cfg, mode, true)?;
        let rfbm = self.info.features;
        unit.save(insn, self.area_mut(), rfbm)?;
        Ok(())
    }

    /// Load the registers from this fpstate: XRSTORS (supervisor) or XRSTOR (user),
    /// with RFBM = every fpstate component of the configs ([`Configs::rfbm`]).
    /// Components without space here (a host fpstate's CET_S, a task's unallocated
    /// AMX state) are put in their init state: no other owner's value survives.
    ///
    /// # Errors
    /// As for [`Fpstate::save`].
    #[inline]
    pub fn restore(
        &self,
        unit: &mut impl XsaveUnit,
        cfg: &Configs,
        mode: Mode,
    ) -> Result<(), FpstateError> {
        let insn = self.insn(cfg, mode, false)?;
        unit.restore(insn, self.area(), restore_rfbm(cfg, mode))?;
        Ok(())
    }

    /// Check this fpstate once against `cpu` for `mode` under `cfg`, and lend
    /// its area to a [`BoundArea`] whose `save()` and `restore()` run the
    /// instruction alone, with what [`Fpstate::save`] and [`Fpstate::restore`]
    /// would choose: the instruction for `mode` and this fpstate's form, RFBM =
    /// its features on save and [`Configs::rfbm`] (in user mode `& XCR0`) on
    /// restore. The handle check, the choice of instruction and RFBM and the
    /// unit's area checks are made here, once; the per-call path is the
    /// instruction (see BENCHMARKS.md for what each remaining instruction of it
    /// is for). The checked methods stay for callers that hold no binding.
    ///
    /// # Errors
    /// As for [`Fpstate::save`], and [`FpstateError::BufferTooSmall`] for a
    /// [`Storage`] that shrank; [`FpstateError::Fault`] with what `cpu` would
    /// raise on the first call (the fpstate's form or size does not fit this
    /// CPU, an instruction it lacks).
    pub fn bind<'a>(
        &'a mut self,
        cpu: &'a Cpu,
        cfg: &Configs,
        mode: Mode,
    ) -> Result<BoundArea<'a>, FpstateError> {
        let save = self.insn(cfg, mode, true)?;
        let restore = self.insn(cfg, mode, false)?;
        let save_rfbm = self.info.features;
        let restore_rfbm = restore_rfbm(cfg, mode);
        let area = span_mut(self.storage.bytes_mut(), 0..self.info.size as usize)?;
        Ok(cpu.bind(area, save, save_rfbm, restore, restore_rfbm)?)
    }

    #[inline]
    fn insn(&self, cfg: &Configs, mode: Mode, save: bool) -> Result<Insn, FpstateError> {
        self.check_configs(cfg)?;
        Ok(match (mode, self.info.form, save) {
            (Mode::Supervisor, _, true) => Insn::Xsaves,
            (Mode::Supervisor, _, false) => Insn::Xrstors,
            (Mode::User, _, _) if !(self.info.features & cfg.xss()).is_empty() => {
                return Err(FpstateError::NeedsSupervisor {
                    mask: (self.info.features & cfg.xss()).bits(),
                });
            }
            (Mode::User, Form::Compacted, true) => Insn::Xsavec,
            (Mode::User, Form::Standard, true) if cfg.has_xsaveopt() => Insn::Xsaveopt,
            (Mode::User, Form::Standard, true) => Insn::Xsave,
            (Mode::User, _, false) => Insn::Xrstor,
        })
    }

    fn perm_kind(&self) -> PermKind {
        match self.info.owner {
            Owner::Host => PermKind::Task,
            Owner::Guest => PermKind::Guest,
        }
    }

    /// Grow after the first-use XFD fault on component `index`: a new fpstate in
    /// `storage` with every dynamic component the owner's permission set grants,
    /// the saved state carried over component by component, and XFD disarmed for
    /// the new components. The caller saves the registers into `self` first.
    ///
    /// # Errors
    /// [`FpstateError::NotPermitted`] if the permission set lacks `index` (the
    /// kernel sends SIGILL), [`FpstateError::NothingToGrow`], or the storage errors
    /// of [`Fpstate::new_in`].
    pub fn grow<T: Storage>(
        &self,
        cfg: &Configs,
        perms: &ProcessPerms,
        index: u32,
        storage: T,
    ) -> Result<Fpstate<T>, FpstateError> {
        self.check_configs(cfg)?;
        let permitted = perms.get(self.perm_kind()).features;
        if !permitted.has_index(index) {
            return Err(FpstateError::NotPermitted { index });
        }
        let features = self.info.features | (permitted & cfg.policy().dynamic);
        if features == self.info.features {
            return Err(FpstateError::NothingToGrow);
        }
        let mut new = Fpstate::with_features(cfg, self.info.owner, features, storage)?;
        new.carry_from(cfg, self)?;
        Ok(new)
    }

    /// Copy `src`'s saved state into this fpstate (of the same configs and form):
    /// the legacy region, and each component both hold that `src`'s XSTATE_BV
    /// names. Components this fpstate has no space for are left behind (their
    /// XSTATE_BV bits cleared); its own others keep their init state.
    pub(crate) fn carry_from<T: Storage>(
        &mut self,
        cfg: &Configs,
        src: &Fpstate<T>,
    ) -> Result<(), FpstateError> {
        let e = cfg.enumeration();
        let (old_l, new_l) = match self.info.form {
            Form::Compacted => (
                Layout::compacted(e, src.info.features)?,
                Layout::compacted(e, self.info.features)?,
            ),
            Form::Standard => (
                Layout::standard(e, src.info.features)?,
                Layout::standard(e, self.info.features)?,
            ),
        };
        // Both areas whole, or `BufferTooSmall` (only from a `Storage` that shrank
        // since its check): no state is carried from a truncated area.
        let from = span(src.storage.bytes(), 0..src.info.size as usize)?;
        let carried = XFeatures::from_bits_retain(get_u64(from, XSTATE_BV_OFFSET))
            & (self.info.features | XFeatures::LEGACY);
        let dst = span_mut(self.storage.bytes_mut(), 0..self.info.size as usize)?;
        span_mut(dst, 0..XSTATE_BV_OFFSET)?.copy_from_slice(span(from, 0..XSTATE_BV_OFFSET)?);
        put_u64(dst, XSTATE_BV_OFFSET, carried.bits());
        for i in carried.indices().filter(|&i| i >= 2) {
            // Both ranges are component `i`'s size in layouts of the same
            // enumeration: equal lengths, as `copy_from_slice` needs.
            if let (Some(s), Some(d)) = (old_l.range_of(i), new_l.range_of(i)) {
                span_mut(dst, d)?.copy_from_slice(span(from, s)?);
            }
        }
        Ok(())
    }
}

#[cfg(feature = "alloc")]
impl Fpstate<BoxedArea> {
    /// A fresh fpstate on the heap, exactly as large as its config says.
    ///
    /// # Errors
    /// None in practice: the area is sized from `cfg` itself.
    pub fn new_boxed(cfg: &Configs, owner: Owner) -> Result<Self, FpstateError> {
        let size = match owner {
            Owner::Host => cfg.kernel().default_size,
            Owner::Guest => cfg.guest().default_size,
        };
        Self::new_in(cfg, owner, BoxedArea::zeroed(size as usize))
    }

    /// [`Fpstate::grow`] into a fresh heap area.
    ///
    /// # Errors
    /// As for [`Fpstate::grow`].
    pub fn grow_boxed(
        &self,
        cfg: &Configs,
        perms: &ProcessPerms,
        index: u32,
    ) -> Result<Self, FpstateError> {
        // Checked here as well as in `grow`: a foreign fpstate gets no allocation.
        self.check_configs(cfg)?;
        let e = cfg.enumeration();
        let features =
            self.info.features | (perms.get(self.perm_kind()).features & cfg.policy().dynamic);
        let size = match self.info.form {
            Form::Compacted => e.compacted_size(features),
            Form::Standard => e.standard_size(features),
        };
        self.grow(cfg, perms, index, BoxedArea::zeroed(size as usize))
    }
}

/// The RFBM of every restore in `mode`: each fpstate component of the configs,
/// so components without space in the fpstate are put in their init state.
#[inline]
fn restore_rfbm(cfg: &Configs, mode: Mode) -> XFeatures {
    match mode {
        Mode::Supervisor => cfg.rfbm(),
        Mode::User => cfg.rfbm() & cfg.xcr0(),
    }
}

/// Switch registers from `out` to `inc`, like Linux's `fpu_swap_kvm_fpstate`:
/// save into `out` (with its own features as RFBM), restore from `inc` (with the
/// full RFBM). Going guest -> host puts the guest-only CET_S back in init state.
///
/// # Errors
/// As for [`Fpstate::save`] and [`Fpstate::restore`]; on a save error nothing was
/// restored.
pub fn swap<A: Storage, B: Storage>(
    unit: &mut impl XsaveUnit,
    cfg: &Configs,
    mode: Mode,
    out: &mut Fpstate<A>,
    inc: &Fpstate<B>,
) -> Result<(), FpstateError> {
    out.save(unit, cfg, mode)?;
    inc.restore(unit, cfg, mode)
}

fn check_storage(bytes: &[u8], size: u32) -> Result<(), FpstateError> {
    let misalignment = bytes.as_ptr() as usize % XSAVE_ALIGN;
    if misalignment != 0 {
        return Err(FpstateError::Misaligned { misalignment });
    }
    Ok(BufferTooSmall::check(bytes.len(), size as usize)?)
}

/// `b[r]`, or [`FpstateError::BufferTooSmall`] if `b` ends before `r.end` (only
/// from a [`Storage`] that shrank: every area is checked at creation).
fn span(b: &[u8], r: Range<usize>) -> Result<&[u8], FpstateError> {
    let got = b.len();
    let needed = r.end;
    b.get(r)
        .ok_or(FpstateError::BufferTooSmall(BufferTooSmall { needed, got }))
}

/// [`span`], writable.
fn span_mut(b: &mut [u8], r: Range<usize>) -> Result<&mut [u8], FpstateError> {
    let got = b.len();
    let needed = r.end;
    b.get_mut(r)
        .ok_or(FpstateError::BufferTooSmall(BufferTooSmall { needed, got }))
}

// The little-endian field helpers below are on the save/restore and user-ABI
// hot paths. Most callers pass a constant offset inside the 576-byte legacy
// region and header, but `uabi` also reads PKRU at its layout offset and writes
// the signal frame's MAGIC2 at the end of the standard area: the helpers check
// the range themselves (the same two compares `b[off..off + N]` makes) and read
// 0 / write nothing past the end instead of panicking. Every caller's range is
// in bounds, so no caller sees the difference.

/// The little-endian `u64` at `b[off..off + 8]` (0 past the end).
#[inline]
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..)
        .and_then(|t| t.first_chunk::<8>())
        .map_or(0, |a| u64::from_le_bytes(*a))
}

/// Store `v` little-endian at `b[off..off + 8]` (nothing past the end).
#[inline]
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(d) = b.get_mut(off..).and_then(|t| t.first_chunk_mut::<8>()) {
        *d = v.to_le_bytes();
    }
}

/// Store `v` little-endian at `b[off..off + 4]` (nothing past the end).
#[inline]
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(d) = b.get_mut(off..).and_then(|t| t.first_chunk_mut::<4>()) {
        *d = v.to_le_bytes();
    }
}

/// The little-endian `u32` at `b[off..off + 4]` (0 past the end).
#[inline]
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..)
        .and_then(|t| t.first_chunk::<4>())
        .map_or(0, |a| u32::from_le_bytes(*a))
}

/// Store `v` little-endian at `b[off..off + 2]` (nothing past the end).
#[inline]
fn put_u16(b: &mut [u8], off: usize, v: u16) {
    if let Some(d) = b.get_mut(off..).and_then(|t| t.first_chunk_mut::<2>()) {
        *d = v.to_le_bytes();
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is how a test reports failure"
)]
mod tests {
    use super::*;

    /// Every fpstate of Linux's usual sets carries the index of its copy plan,
    /// and the index finds the layout of its features (the user ABI's
    /// whole-image copies rely on it; without it they take the per-component
    /// path, which gives the same bytes slower).
    #[cfg(feature = "alloc")]
    #[test]
    fn fpstates_carry_their_copy_plan() {
        use crate::config::Policy;
        use crate::cpuid::RecordedCpuid;
        use crate::enumerate::Enumeration;
        for dump in [
            include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt"),
            include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt"),
        ] {
            let e = Enumeration::from_cpuid(&RecordedCpuid::parse(dump).unwrap()).unwrap();
            let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
            let fp = Fpstate::new_boxed(&cfg, Owner::Host).unwrap();
            let i = fp.plan().expect("a host fpstate's plan index");
            let (layout, _) = cfg.copy_plan(i).expect("the plan it names");
            assert_eq!(layout.mask(), fp.info().features);
        }
    }

    #[test]
    fn field_helpers_read_zero_and_write_nothing_past_the_end() {
        let mut b = [0u8; 12];
        put_u64(&mut b, 4, 0x1122_3344_5566_7788);
        assert_eq!(get_u64(&b, 4), 0x1122_3344_5566_7788);
        assert_eq!(get_u32(&b, 8), 0x1122_3344);
        put_u16(&mut b, 10, 0xabcd);
        assert!(b.ends_with(&[0xcd, 0xab]));
        let before = b;
        for off in [5, 9, 11, 12, 13, usize::MAX - 3, usize::MAX] {
            put_u64(&mut b, off, u64::MAX);
            put_u32(&mut b, off.saturating_add(4), u32::MAX);
            put_u16(&mut b, off.saturating_add(6), u16::MAX);
            assert_eq!(b, before, "{off}");
            assert_eq!(get_u64(&b, off), 0, "{off}");
            assert_eq!(get_u32(&b, off.saturating_add(4)), 0, "{off}");
        }
    }
}
