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

fn check_supported(e: &Enumeration, mask: XFeatures) -> Result<(), LayoutError> {
    let bad = mask - e.supported();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(LayoutError::Unsupported { mask: bad.bits() })
    }
}
