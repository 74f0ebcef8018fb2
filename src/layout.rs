//! Standard and compacted XSAVE area layouts (SDM vol. 1 13.4).
//!
//! A [`Layout`] is computed once for a mask (at config or allocation time) and then
//! answers every query with one array load: no loop over components on a hot path.

use core::fmt;
use core::ops::Range;

use crate::enumerate::{Component, EXTENDED_START, Enumeration};
use crate::feature::{XCOMP_BV_COMPACTED, XFeatures};

/// Required alignment of any XSAVE area.
pub const XSAVE_ALIGN: usize = 64;

/// The two XSAVE area formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    /// XSAVE/XSAVEOPT/XRSTOR with XCOMP_BV = 0: fixed CPUID offsets; the user ABI.
    Standard,
    /// XSAVEC/XSAVES/XRSTORS: components packed in XCOMP_BV order.
    Compacted,
}

/// Why a layout could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// The mask has components the CPU does not support.
    Unsupported {
        /// The unsupported bits.
        mask: u64,
    },
    /// Supervisor components have no standard-form offset.
    SupervisorInStandard {
        /// The supervisor bits asked for.
        mask: u64,
    },
}

impl core::error::Error for LayoutError {}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unsupported { mask } => {
                write!(f, "components {mask:#x} are not supported by this CPU")
            }
            Self::SupervisorInStandard { mask } => write!(
                f,
                "supervisor components {mask:#x} have no place in the standard form"
            ),
        }
    }
}

/// Where every component of a mask lives in an XSAVE area of one form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    form: Form,
    mask: XFeatures,
    size: u32,
    offsets: [u32; 64],
    sizes: [u32; 64],
}

impl Layout {
    /// The standard-form layout of `mask` (user components only).
    ///
    /// # Errors
    /// [`LayoutError`] if `mask` has unsupported or supervisor components.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, layout::Layout, XFeatures};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-skylake-sp-xeon-platinum-8180.txt")).unwrap()).unwrap();
    /// let l = Layout::standard(&e, XFeatures::LEGACY | XFeatures::HI16_ZMM).unwrap();
    /// assert_eq!(l.offset_of(7), Some(1664)); // CPUID's fixed offset, gaps and all
    /// assert_eq!(l.offset_of(2), None);
    /// ```
    pub fn standard(e: &Enumeration, mask: XFeatures) -> Result<Self, LayoutError> {
        let sup = mask & e.xss_supported();
        if !sup.is_empty() {
            return Err(LayoutError::SupervisorInStandard { mask: sup.bits() });
        }
        check_supported(e, mask)?;
        let mut l = Self::empty(Form::Standard, mask, e.components());
        for i in mask.indices() {
            let c = &e.components()[i as usize];
            l.offsets[i as usize] = c.std_offset;
            l.size = l.size.max(c.std_offset + c.size);
        }
        Ok(l)
    }

    /// The compacted-form layout for XCOMP_BV = `xcomp_bv` (bit 63 not included).
    ///
    /// # Errors
    /// [`LayoutError::Unsupported`] if `xcomp_bv` has components the CPU lacks.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, layout::Layout, XFeatures};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-skylake-sp-xeon-platinum-8180.txt")).unwrap()).unwrap();
    /// let l = Layout::compacted(&e, XFeatures::LEGACY | XFeatures::HI16_ZMM).unwrap();
    /// assert_eq!(l.offset_of(7), Some(576)); // packed right after the header
    /// assert_eq!(l.size(), 576 + 1024);
    /// ```
    pub fn compacted(e: &Enumeration, xcomp_bv: XFeatures) -> Result<Self, LayoutError> {
        check_supported(e, xcomp_bv)?;
        let mut l = Self::empty(Form::Compacted, xcomp_bv, e.components());
        // The whole supported mask was summed in u64 and fits in u32 (enumeration
        // checked), so no sum over a subset can overflow.
        let mut end = EXTENDED_START;
        for i in xcomp_bv.indices().filter(|&i| i >= 2) {
            let c = &e.components()[i as usize];
            if c.align64 {
                end = end.next_multiple_of(64);
            }
            l.offsets[i as usize] = end;
            end += c.size;
        }
        l.size = end;
        Ok(l)
    }

    fn empty(form: Form, mask: XFeatures, comps: &[Component; 64]) -> Self {
        let mut sizes = [0u32; 64];
        for i in mask.indices() {
            sizes[i as usize] = comps[i as usize].size;
        }
        let mut offsets = [0u32; 64];
        offsets[1] = comps[1].std_offset;
        Self {
            form,
            mask,
            size: EXTENDED_START,
            offsets,
            sizes,
        }
    }

    /// Offset of component `index` in this layout, `None` if it has no space here.
    #[inline]
    pub fn offset_of(&self, index: u32) -> Option<u32> {
        if self.mask.has_index(index) {
            Some(self.offsets[index as usize])
        } else {
            None
        }
    }

    /// Size of component `index`, `None` if it has no space here.
    #[inline]
    pub fn size_of(&self, index: u32) -> Option<u32> {
        if self.mask.has_index(index) {
            Some(self.sizes[index as usize])
        } else {
            None
        }
    }

    /// Byte range of component `index` in the area.
    #[inline]
    pub fn range_of(&self, index: u32) -> Option<Range<usize>> {
        let off = self.offset_of(index)? as usize;
        Some(off..off + self.sizes[index as usize] as usize)
    }

    /// Total size of an area with this layout.
    #[inline]
    pub const fn size(&self) -> u32 {
        self.size
    }

    /// The components that have space.
    #[inline]
    pub const fn mask(&self) -> XFeatures {
        self.mask
    }

    /// Standard or compacted.
    #[inline]
    pub const fn form(&self) -> Form {
        self.form
    }

    /// The XCOMP_BV an area of this layout carries: bit 63 | mask when compacted, 0 when standard.
    #[inline]
    pub const fn xcomp_bv(&self) -> u64 {
        match self.form {
            Form::Standard => 0,
            Form::Compacted => XCOMP_BV_COMPACTED | self.mask.bits(),
        }
    }
}

/// A stretch of bytes contiguous in both an area of some kernel-form layout and
/// the standard form: one copy between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Run {
    /// Start in the kernel-form area.
    pub kernel: u32,
    /// Start in the standard form.
    pub std: u32,
    /// Length.
    pub len: u32,
}

/// At most one run for the legacy region and header and one per component
/// (indices 2..=63).
const MAX_RUNS: usize = 63;

/// The copies that move every user component of a kernel-form area to and from
/// the standard form, computed once per layout (at config time): the legacy
/// region and header `[0, 576)` as one run at the same offset in both, then the
/// user components in order, each merged into the run before it where it
/// follows it in both forms. Where the two forms coincide (compacted 0x7, or a
/// standard-form kernel) that is one run; where they differ only by a shift
/// (a compacted 0xe7 against the standard form's MPX hole) it is two. Bytes of
/// the standard form between runs are gaps (zero in an export).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CopyPlan {
    runs: [Run; MAX_RUNS],
    n: usize,
    /// The user components the plan moves.
    user: XFeatures,
    /// The standard size of `user`: where the last run or gap ends.
    std_size: u32,
}

impl CopyPlan {
    /// The plan for `user`'s components (those of `kernel` among them) between
    /// an area laid out by `kernel` and the standard form. `None` where the
    /// standard offsets do not rise with the component index (no recorded CPU
    /// does that; the per-component path serves such a CPU).
    pub(crate) fn new(e: &Enumeration, kernel: &Layout, user: XFeatures) -> Option<Self> {
        let user = user & kernel.mask();
        let mut plan = Self {
            runs: [Run::default(); MAX_RUNS],
            n: 1,
            user,
            std_size: EXTENDED_START,
        };
        plan.runs[0] = Run {
            kernel: 0,
            std: 0,
            len: EXTENDED_START,
        };
        for i in user.indices().filter(|&i| i >= 2) {
            let c = &e.components()[i as usize];
            let (k, s, len) = (kernel.offset_of(i)?, c.std_offset, c.size);
            let last = &mut plan.runs[plan.n - 1];
            if s < last.std + last.len {
                return None;
            }
            if last.kernel + last.len == k && last.std + last.len == s {
                last.len += len;
            } else {
                *plan.runs.get_mut(plan.n)? = Run {
                    kernel: k,
                    std: s,
                    len,
                };
                plan.n += 1;
            }
            plan.std_size = s + len;
        }
        Some(plan)
    }

    /// The runs, in rising order of both starts.
    #[inline]
    pub(crate) fn runs(&self) -> &[Run] {
        self.runs.get(..self.n).unwrap_or_default()
    }

    /// The user components the plan moves.
    #[inline]
    pub(crate) const fn user(&self) -> XFeatures {
        self.user
    }

    /// The standard size of [`CopyPlan::user`].
    #[inline]
    pub(crate) const fn std_size(&self) -> u32 {
        self.std_size
    }
}

fn check_supported(e: &Enumeration, mask: XFeatures) -> Result<(), LayoutError> {
    let bad = mask - e.supported();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(LayoutError::Unsupported { mask: bad.bits() })
    }
}
