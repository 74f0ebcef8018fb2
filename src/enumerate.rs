//! CPUID leaf 0xD enumeration (SDM vol. 1 13.2, vol. 2A CPUID), validated.
//!
//! A guest kernel reads CPUID from a hypervisor that may be buggy or hostile, and
//! every buffer size in the system follows from what it reads here. So nothing is
//! trusted: each inconsistency is refused with its own [`EnumError`], computed with
//! checked arithmetic, before any layout is derived.

use core::fmt;

use crate::cpuid::{CpuidResult, CpuidSource, NoVendor, Vendor};
use crate::feature::{CATALOG, XFeatures};

/// Size of the legacy region (x87 + SSE), SDM vol. 1 13.4.1.
pub const LEGACY_SIZE: u32 = 512;
/// Size of the XSAVE header.
pub const HEADER_SIZE: u32 = 64;
/// Where the extended region starts, in both forms.
pub const EXTENDED_START: u32 = LEGACY_SIZE + HEADER_SIZE;
/// The MXCSR bits every CPU with XSAVE implements (the architectural MXCSR_MASK
/// of a CPU without DAZ, which FXSAVE reports as 0): an MXCSR_MASK without all of
/// them is not a real CPU's.
pub const MXCSR_MASK_MIN: u32 = 0xffbf;
/// Largest size accepted for one component. The largest defined today is AMX
/// TILEDATA, 8 KiB; anything past 1 MiB is a lie meant to overflow something.
pub const MAX_COMPONENT_SIZE: u32 = 1 << 20;

/// One component as CPUID(0xD, i) describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Component {
    /// Size in bytes (EAX).
    pub size: u32,
    /// Offset in the standard form (EBX); meaningless (0) for supervisor components.
    pub std_offset: u32,
    /// ECX\[0\]: managed through IA32_XSS.
    pub supervisor: bool,
    /// ECX\[1\]: 64-byte aligned in the compacted form.
    pub align64: bool,
    /// ECX\[2\]: XFD can arm it.
    pub xfd: bool,
}

/// Which CPUID size report a check concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeReport {
    /// CPUID(0xD,0).ECX: standard size of every supported user component.
    MaxStandard,
    /// CPUID(0xD,0).EBX: standard size for the current XCR0.
    CurrentStandard,
    /// CPUID(0xD,1).EBX: compacted size for the current XCR0 | IA32_XSS.
    CurrentCompacted,
}

// CPUID reports 64-bit masks in 32-bit halves, as XGETBV does: one `join`,
// on the probes' floor.
pub(crate) use crate::probe::join;

impl fmt::Display for SizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MaxStandard => "CPUID(0xD,0).ECX",
            Self::CurrentStandard => "CPUID(0xD,0).EBX",
            Self::CurrentCompacted => "CPUID(0xD,1).EBX",
        })
    }
}

/// Why a CPUID leaf 0xD was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnumError {
    /// XCR0 bits 0 (x87) and 1 (SSE) must both be supported.
    LegacyMissing {
        /// The supported XCR0 mask.
        xcr0: u64,
    },
    /// Bit 63 (or a legacy bit in XSS) claimed as a component.
    ReservedBit {
        /// The offending component number.
        index: u32,
    },
    /// A component claimed in both the XCR0 and the XSS masks.
    InBothMasks {
        /// The component number.
        index: u32,
    },
    /// ECX\[0\] (supervisor) disagrees with the mask that lists the component.
    SupervisorMismatch {
        /// The component number.
        index: u32,
        /// Whether the component is listed in the XSS mask.
        in_xss: bool,
    },
    /// A supported component of size 0.
    ZeroSize {
        /// The component number.
        index: u32,
    },
    /// A supported component larger than [`MAX_COMPONENT_SIZE`].
    AbsurdSize {
        /// The component number.
        index: u32,
        /// The size CPUID reported.
        size: u32,
    },
    /// A user component whose standard offset lies in the legacy area or header.
    OffsetInLegacy {
        /// The component number.
        index: u32,
        /// The offset CPUID reported.
        offset: u32,
    },
    /// A user component whose standard end does not fit in `u32`.
    EndOverflows {
        /// The component number.
        index: u32,
    },
    /// A user component ending past CPUID(0xD,0).ECX.
    BeyondMaxSize {
        /// The component number.
        index: u32,
        /// Its end offset.
        end: u32,
        /// CPUID(0xD,0).ECX.
        max: u32,
    },
    /// Two supported user components overlap in the standard form.
    Overlap {
        /// The lower-offset component.
        a: u32,
        /// The component that starts inside it.
        b: u32,
    },
    /// The compacted size of all supported components does not fit in `u32`.
    CompactedTooLarge,
    /// CPUID reports a smaller size than the components need: a buffer sized by it
    /// would overflow.
    ReportedTooSmall {
        /// Which report.
        report: SizeReport,
        /// What CPUID says.
        reported: u32,
        /// What the components need.
        computed: u32,
    },
    /// A mask given for a live cross-check has components the CPU does not support.
    NotSupported {
        /// The unsupported bits.
        mask: u64,
    },
    /// A usable component whose size is not the one the architecture fixes for it
    /// ([`FeatureInfo::arch_size`](crate::feature::FeatureInfo::arch_size)).
    /// Linux's `check_xstate_against_struct` compares the same sizes with its C
    /// structures (Linux 6.18 warns and dumps the leaves; a crate that cannot
    /// warn refuses). From a source without feature leaves every listed
    /// component counts as usable (see [`Enumeration::usable`]), so a component
    /// whose CPUID flag is clear is refused too (fail closed): the message then
    /// says to record leaves 1 and 7.
    ArchSizeMismatch {
        /// The component number.
        index: u32,
        /// The size CPUID reported.
        size: u32,
        /// The architectural size.
        arch_size: u32,
        /// Whether the source had feature leaves ([`Enumeration::flags_known`]).
        flags_known: bool,
    },
    /// An MXCSR_MASK without every bit of [`MXCSR_MASK_MIN`].
    BadMxcsrMask {
        /// The mask given.
        mask: u32,
    },
}

impl core::error::Error for EnumError {}

impl fmt::Display for EnumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LegacyMissing { xcr0 } => {
                write!(f, "CPUID(0xD,0) XCR0 mask {xcr0:#x} lacks x87 or SSE")
            }
            Self::ReservedBit { index } => write!(f, "component bit {index} is reserved"),
            Self::InBothMasks { index } => {
                write!(
                    f,
                    "component {index} is claimed in both the XCR0 and the XSS masks"
                )
            }
            Self::SupervisorMismatch { index, in_xss } => write!(
                f,
                "component {index} is in the {} mask but CPUID(0xD,{index}).ECX[0] says {}",
                if in_xss { "XSS" } else { "XCR0" },
                if in_xss { "user" } else { "supervisor" }
            ),
            Self::ZeroSize { index } => write!(f, "component {index} is supported with size 0"),
            Self::AbsurdSize { index, size } => write!(
                f,
                "component {index} claims {size} bytes (limit {MAX_COMPONENT_SIZE})"
            ),
            Self::OffsetInLegacy { index, offset } => write!(
                f,
                "component {index} has standard offset {offset}, inside the legacy area or header"
            ),
            Self::EndOverflows { index } => {
                write!(f, "component {index}: offset + size overflows 32 bits")
            }
            Self::BeyondMaxSize { index, end, max } => write!(
                f,
                "component {index} ends at {end}, past CPUID(0xD,0).ECX = {max}"
            ),
            Self::Overlap { a, b } => {
                write!(f, "components {a} and {b} overlap in the standard form")
            }
            Self::CompactedTooLarge => write!(f, "compacted size overflows 32 bits"),
            Self::ReportedTooSmall {
                report,
                reported,
                computed,
            } => write!(
                f,
                "{report} reports {reported} bytes but the components need {computed}"
            ),
            Self::NotSupported { mask } => write!(f, "mask bits {mask:#x} are not supported"),
            Self::ArchSizeMismatch {
                index,
                size,
                arch_size,
                flags_known,
            } => {
                write!(
                    f,
                    "component {index} claims {size} bytes; the architecture fixes {arch_size}"
                )?;
                if !flags_known {
                    f.write_str(
                        " (the dump has no feature leaves, so every listed component counts as \
                         usable: if its CPUID flag is clear, as a Zen 2's 64-byte PKRU is, \
                         record leaves 1 and 7 with leaf 0xD)",
                    )?;
                }
                Ok(())
            }
            Self::BadMxcsrMask { mask } => write!(
                f,
                "MXCSR_MASK {mask:#x} lacks bits every XSAVE CPU implements ({MXCSR_MASK_MIN:#x})"
            ),
        }
    }
}

/// The XSAVE facts of one CPU, validated.
///
/// Two enumerations are equal when they state the same facts: where the MXCSR
/// mask came from ([`Self::mxcsr_source`]) is not one of them.
#[derive(Clone, Debug)]
pub struct Enumeration {
    xcr0_supported: XFeatures,
    xss_supported: XFeatures,
    usable: XFeatures,
    flags_known: bool,
    comps: [Component; 64],
    reported_max_standard: u32,
    standard_max_size: u32,
    compacted_max_size: u32,
    xsaveopt: bool,
    xsavec: bool,
    xgetbv1: bool,
    xsaves: bool,
    xfd: bool,
    mxcsr_mask: u32,
    mxcsr_source: MxcsrMaskSource,
}

impl PartialEq for Enumeration {
    fn eq(&self, o: &Self) -> bool {
        // Every field but the MXCSR mask's provenance, listed so that a new
        // field cannot be forgotten here.
        let Self {
            xcr0_supported,
            xss_supported,
            usable,
            flags_known,
            comps,
            reported_max_standard,
            standard_max_size,
            compacted_max_size,
            xsaveopt,
            xsavec,
            xgetbv1,
            xsaves,
            xfd,
            mxcsr_mask,
            mxcsr_source: _,
        } = self;
        (
            *xcr0_supported,
            *xss_supported,
            *usable,
            *flags_known,
            comps,
            *reported_max_standard,
            *standard_max_size,
            *compacted_max_size,
        ) == (
            o.xcr0_supported,
            o.xss_supported,
            o.usable,
            o.flags_known,
            &o.comps,
            o.reported_max_standard,
            o.standard_max_size,
            o.compacted_max_size,
        ) && (*xsaveopt, *xsavec, *xgetbv1, *xsaves, *xfd, *mxcsr_mask)
            == (
                o.xsaveopt,
                o.xsavec,
                o.xgetbv1,
                o.xsaves,
                o.xfd,
                o.mxcsr_mask,
            )
    }
}

impl Eq for Enumeration {}

/// The facts of the legacy components, fixed by the SDM (Linux uses the same).
const LEGACY_COMPONENTS: [Component; 2] = [
    Component {
        size: 160,
        std_offset: 0,
        supervisor: false,
        align64: false,
        xfd: false,
    },
    Component {
        size: 256,
        std_offset: 160,
        supervisor: false,
        align64: false,
        xfd: false,
    },
];

impl Enumeration {
    /// Read and validate CPUID leaf 0xD.
    ///
    /// # Errors
    /// An [`EnumError`] naming the first inconsistency found.
    ///
    /// ```
    /// use xstate::cpuid::RecordedCpuid;
    /// use xstate::enumerate::Enumeration;
    /// use xstate::XFeatures;
    /// let dump = "\
    /// 0x0000000d 0x00: eax=0x00000007 ebx=0x00000340 ecx=0x00000340 edx=0x00000000
    /// 0x0000000d 0x01: eax=0x0000000f ebx=0x00000340 ecx=0x00000000 edx=0x00000000
    /// 0x0000000d 0x02: eax=0x00000100 ebx=0x00000240 ecx=0x00000000 edx=0x00000000";
    /// let e = Enumeration::from_cpuid(&RecordedCpuid::parse(dump).unwrap()).unwrap();
    /// assert_eq!(e.xcr0_supported(), XFeatures::X87 | XFeatures::SSE | XFeatures::AVX);
    /// assert_eq!(e.component(2).unwrap().std_offset, 576);
    /// assert_eq!(e.standard_max_size(), 832);
    /// ```
    pub fn from_cpuid(src: &impl CpuidSource) -> Result<Self, EnumError> {
        let s0 = src.cpuid(0xd, 0);
        let s1 = src.cpuid(0xd, 1);
        let xcr0 = join(s0.edx, s0.eax);
        let xss = join(s1.edx, s1.ecx);
        if xcr0 & 3 != 3 {
            return Err(EnumError::LegacyMissing { xcr0 });
        }
        // Bit 63 is XCOMP_BV's format flag, never a component.
        if (xcr0 | xss) >> 63 != 0 {
            return Err(EnumError::ReservedBit { index: 63 });
        }
        if xss & 3 != 0 {
            return Err(EnumError::ReservedBit {
                index: (xss & 3).trailing_zeros(),
            });
        }
        if xcr0 & xss != 0 {
            return Err(EnumError::InBothMasks {
                index: (xcr0 & xss).trailing_zeros(),
            });
        }
        let mut comps = [Component::default(); 64];
        comps[..2].copy_from_slice(&LEGACY_COMPONENTS);
        // Disjoint: a bit in both was refused above (InBothMasks).
        let supported = XFeatures::from_bits_retain(xcr0).union(XFeatures::from_bits_retain(xss));
        let flags = flagged(src);
        let usable = supported & (flags.unwrap_or(XFeatures::ALL_CATALOGUED) | XFeatures::LEGACY);
        for i in supported.indices().filter(|&i| i >= 2) {
            let r = src.cpuid(0xd, i);
            let c = Component {
                size: r.eax,
                std_offset: r.ebx,
                supervisor: r.ecx & 1 != 0,
                align64: r.ecx & 2 != 0,
                xfd: r.ecx & 4 != 0,
            };
            let in_xss = xss & (1 << i) != 0;
            if c.supervisor != in_xss {
                return Err(EnumError::SupervisorMismatch { index: i, in_xss });
            }
            if c.size == 0 {
                return Err(EnumError::ZeroSize { index: i });
            }
            if c.size > MAX_COMPONENT_SIZE {
                return Err(EnumError::AbsurdSize {
                    index: i,
                    size: c.size,
                });
            }
            // Usable components only, as Linux checks only what it enables (a Zen 2
            // lists PKRU with 64 bytes but clears PKU, and boots). Without flags
            // every listed component is usable (see `usable`), so it is checked:
            // a size the crate would trust must be the architecture's.
            let arch = CATALOG.get(i as usize).and_then(|f| f.arch_size);
            if let Some(arch_size) = arch.filter(|&a| usable.has_index(i) && c.size != a) {
                return Err(EnumError::ArchSizeMismatch {
                    index: i,
                    size: c.size,
                    arch_size,
                    flags_known: flags.is_some(),
                });
            }
            if !in_xss {
                if c.std_offset < EXTENDED_START {
                    return Err(EnumError::OffsetInLegacy {
                        index: i,
                        offset: c.std_offset,
                    });
                }
                let end = c
                    .std_offset
                    .checked_add(c.size)
                    .ok_or(EnumError::EndOverflows { index: i })?;
                if end > s0.ecx {
                    return Err(EnumError::BeyondMaxSize {
                        index: i,
                        end,
                        max: s0.ecx,
                    });
                }
            }
            comps[i as usize] = c;
        }
        let user = XFeatures::from_bits_retain(xcr0);
        check_overlaps(&comps, user)?;
        let standard_max_size = standard_end(&comps, user);
        // Every supported component, compacted: the largest area XSAVES can write.
        let compacted_max_size =
            compacted_end(&comps, supported).ok_or(EnumError::CompactedTooLarge)?;
        let (mxcsr_mask, mxcsr_source) = match src.mxcsr_mask() {
            Some(m) if m & MXCSR_MASK_MIN == MXCSR_MASK_MIN => (m, MxcsrMaskSource::Measured),
            Some(m) => return Err(EnumError::BadMxcsrMask { mask: m }),
            None => vendor_mxcsr_mask(src),
        };
        if s0.ecx < standard_max_size {
            return Err(EnumError::ReportedTooSmall {
                report: SizeReport::MaxStandard,
                reported: s0.ecx,
                computed: standard_max_size,
            });
        }
        Ok(Self {
            xcr0_supported: user,
            xss_supported: XFeatures::from_bits_retain(xss),
            usable,
            flags_known: flags.is_some(),
            comps,
            reported_max_standard: s0.ecx,
            standard_max_size,
            compacted_max_size,
            xsaveopt: s1.eax & 1 != 0,
            xsavec: s1.eax & 2 != 0,
            xgetbv1: s1.eax & 4 != 0,
            xsaves: s1.eax & 8 != 0,
            xfd: s1.eax & 16 != 0,
            mxcsr_mask,
            mxcsr_source,
        })
    }

    /// This enumeration with MXCSR_MASK `mask`: what FXSAVE reported on the CPU
    /// the enumeration describes, when the [`CpuidSource`] could not measure it
    /// (a recording taken on another machine, with the value noted beside it).
    ///
    /// # Errors
    /// [`EnumError::BadMxcsrMask`] if `mask` lacks a bit every CPU with XSAVE
    /// implements ([`MXCSR_MASK_MIN`]); such a mask would refuse valid user state.
    pub const fn with_mxcsr_mask(mut self, mask: u32) -> Result<Self, EnumError> {
        if mask & MXCSR_MASK_MIN != MXCSR_MASK_MIN {
            return Err(EnumError::BadMxcsrMask { mask });
        }
        self.mxcsr_mask = mask;
        self.mxcsr_source = MxcsrMaskSource::Measured;
        Ok(self)
    }

    /// CPUID(0xD,1).EAX\[0\]: XSAVEOPT.
    #[inline]
    pub const fn xsaveopt(&self) -> bool {
        self.xsaveopt
    }

    /// CPUID(0xD,1).EAX\[1\]: XSAVEC and the compacted form.
    #[inline]
    pub const fn xsavec(&self) -> bool {
        self.xsavec
    }

    /// CPUID(0xD,1).EAX\[2\]: XGETBV with ECX = 1 (XINUSE).
    #[inline]
    pub const fn xgetbv1(&self) -> bool {
        self.xgetbv1
    }

    /// CPUID(0xD,1).EAX\[3\]: XSAVES/XRSTORS and IA32_XSS.
    #[inline]
    pub const fn xsaves(&self) -> bool {
        self.xsaves
    }

    /// CPUID(0xD,1).EAX\[4\]: extended feature disable (XFD).
    #[inline]
    pub const fn xfd(&self) -> bool {
        self.xfd
    }

    /// The MXCSR bits the CPU implements, as FXSAVE reports them in MXCSR_MASK:
    /// Linux refuses user MXCSR values outside it, and its uabi export writes it.
    /// CPUID does not enumerate it; [`Self::mxcsr_source`] says where it came
    /// from ([`MxcsrMaskSource`]): measured by the source (the live CPU runs
    /// FXSAVE) or given to [`Self::with_mxcsr_mask`]; else the vendor's value;
    /// else the baseline 0xffff, the smaller choice, so that nothing a CPU
    /// would refuse is ever accepted.
    #[inline]
    pub const fn mxcsr_mask(&self) -> u32 {
        self.mxcsr_mask
    }

    /// Where [`Self::mxcsr_mask`] came from.
    #[inline]
    pub const fn mxcsr_source(&self) -> MxcsrMaskSource {
        self.mxcsr_source
    }

    /// Cross-check the live size reports, which depend on the XCR0 and IA32_XSS in
    /// force when CPUID ran: CPUID(0xD,0).EBX against the standard size of `xcr0`,
    /// and CPUID(0xD,1).EBX against the compacted size of `xcr0 | xss` (when the CPU
    /// has XSAVES or XSAVEC, which define it). Reports larger than needed are
    /// accepted; [`SizeCheck`] shows the excess.
    ///
    /// # Errors
    /// [`EnumError::NotSupported`] for masks outside the enumeration,
    /// [`EnumError::ReportedTooSmall`] where CPUID under-reports.
    pub fn check_live_sizes(
        &self,
        src: &impl CpuidSource,
        xcr0: XFeatures,
        xss: XFeatures,
    ) -> Result<SizeCheck, EnumError> {
        let bad = (xcr0 - self.xcr0_supported) | (xss - self.xss_supported);
        if !bad.is_empty() {
            return Err(EnumError::NotSupported { mask: bad.bits() });
        }
        let std_computed = standard_end(&self.comps, xcr0);
        let std_reported = src.cpuid(0xd, 0).ebx;
        if std_reported < std_computed {
            return Err(EnumError::ReportedTooSmall {
                report: SizeReport::CurrentStandard,
                reported: std_reported,
                computed: std_computed,
            });
        }
        let cmp_computed =
            compacted_end(&self.comps, xcr0.union(xss)).ok_or(EnumError::CompactedTooLarge)?;
        let cmp_reported = src.cpuid(0xd, 1).ebx;
        if (self.xsaves || self.xsavec) && cmp_reported < cmp_computed {
            return Err(EnumError::ReportedTooSmall {
                report: SizeReport::CurrentCompacted,
                reported: cmp_reported,
                computed: cmp_computed,
            });
        }
        Ok(SizeCheck {
            standard_excess: std_reported - std_computed,
            compacted_excess: cmp_reported.saturating_sub(cmp_computed),
        })
    }

    /// Components the CPU supports in XCR0 (CPUID(0xD,0) EDX:EAX).
    #[inline]
    pub const fn xcr0_supported(&self) -> XFeatures {
        self.xcr0_supported
    }

    /// Components the CPU supports in IA32_XSS (CPUID(0xD,1) EDX:ECX).
    #[inline]
    pub const fn xss_supported(&self) -> XFeatures {
        self.xss_supported
    }

    /// Every supported component.
    #[inline]
    pub const fn supported(&self) -> XFeatures {
        self.xcr0_supported.union(self.xss_supported)
    }

    /// The supported components whose CPUID feature flag is set
    /// ([`FeatureInfo::flag`](crate::feature::FeatureInfo::flag): AVX for 2, MPX for
    /// 3 and 4, AVX512F for 5..=7, PKU for 9, ENQCMD for 10, CET_SS for 11 and 12,
    /// ARCH_LBR for 15, AMX-TILE for 17 and 18, APX_F for 19, ...), plus x87 and
    /// SSE, which XSAVE cannot work without. Linux 6.18 switches every other
    /// component off (`xsave_cpuid_features[]`); so does
    /// [`Policy::linux`](crate::config::Policy::linux). Components outside the
    /// catalog (AMD's LWP) have no flag Linux knows and are never usable.
    ///
    /// The flags come from leaves 1, 6, 7.0 and 7.1 (7.1 only where CPUID(7,0).EAX
    /// says it exists, as Linux reads it). A real CPU that answers leaf 0xD answers
    /// those too: its highest basic leaf is at least 0xD, and leaf 1 is never all
    /// zeros (EDX holds the FPU flag). A source whose leaf 1 reads all zeros (a
    /// recorded dump of leaf 0xD alone, a hypervisor's table of leaf 0xD) has no
    /// feature flags to give ([`Self::flags_known`] is false), and the crate takes
    /// leaf 0xD at its word: every catalogued component it lists is usable.
    ///
    /// That is the safe reading of a source that cannot say, because of the size
    /// check that goes with it. Where the flags are known, the crate applies
    /// Linux's rule: every usable component with a size the architecture fixes
    /// must have exactly that size ([`EnumError::ArchSizeMismatch`]), and a
    /// component whose flag is clear is neither checked nor usable (a Zen 2 lists
    /// PKRU at 64 bytes with PKU clear, and Linux boots it without PKRU). Without
    /// flags the crate cannot tell which listed components Linux would check, so
    /// it fails closed: every component it treats as usable has exactly its
    /// architectural size, or the source is refused
    /// ([`EnumError::ArchSizeMismatch`] with `flags_known: false`, whose message
    /// says to record leaves 1 and 7, since a flag-clear component such as that
    /// Zen 2 PKRU is the likely cause). So a missing leaf never lets a wrong size
    /// through, and what leaf 0xD lists is what the SDM lets XCR0 and IA32_XSS
    /// hold, so nothing enabled from it faults. Reading the missing flags as clear
    /// would instead describe a CPU Linux never ran (a CET laptop recorded as leaf
    /// 0xD would get x87 and SSE only).
    ///
    /// PKRU: Linux tests its synthetic OSPKE flag, which it sets itself from PKU when
    /// it turns protection keys on; the crate tests PKU (CPUID(7,0).ECX\[3\]), since a
    /// dump's OSPKE bit (ECX\[4\]) only says what the recording OS had done.
    #[inline]
    pub const fn usable(&self) -> XFeatures {
        self.usable
    }

    /// Whether the source gave CPUID feature flags (leaf 1 not all zeros); see
    /// [`Self::usable`] for what the crate does without them.
    #[inline]
    pub const fn flags_known(&self) -> bool {
        self.flags_known
    }

    /// The facts of component `index`, if supported.
    #[inline]
    pub fn component(&self, index: u32) -> Option<&Component> {
        if self.supported().has_index(index) {
            self.comps.get(index as usize)
        } else {
            None
        }
    }

    /// The raw per-component table, indexed by component number (zeros where unsupported).
    #[inline]
    pub const fn components(&self) -> &[Component; 64] {
        &self.comps
    }

    /// Standard size of every supported user component (what CPUID(0xD,0).ECX should say).
    #[inline]
    pub const fn standard_max_size(&self) -> u32 {
        self.standard_max_size
    }

    /// Compacted size of every supported component, user and supervisor.
    #[inline]
    pub const fn compacted_max_size(&self) -> u32 {
        self.compacted_max_size
    }

    /// What CPUID(0xD,0).ECX reported; may exceed [`Self::standard_max_size`].
    #[inline]
    pub const fn reported_max_standard(&self) -> u32 {
        self.reported_max_standard
    }

    /// Standard-form size for `mask`'s user components (at least the legacy area and header).
    pub fn standard_size(&self, mask: XFeatures) -> u32 {
        standard_end(&self.comps, mask & self.xcr0_supported)
    }

    /// Compacted size for `mask`'s supported components.
    pub fn compacted_size(&self, mask: XFeatures) -> u32 {
        // Cannot overflow: the full supported mask was summed at construction.
        compacted_end(&self.comps, mask & self.supported()).unwrap_or(u32::MAX)
    }
}

/// The result of a live cross-check: how many bytes CPUID over-reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeCheck {
    /// CPUID(0xD,0).EBX minus the computed standard size.
    pub standard_excess: u32,
    /// CPUID(0xD,1).EBX minus the computed compacted size (0 without XSAVEC/XSAVES).
    pub compacted_excess: u32,
}

/// Where an enumeration's MXCSR mask came from (see [`Enumeration::mxcsr_mask`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MxcsrMaskSource {
    /// FXSAVE on the CPU itself ([`CpuidSource::mxcsr_mask`]: the live CPU, or
    /// a recording's `# mxcsr_mask` line, which `xstate-report --record` takes
    /// from FXSAVE), or a value given to [`Enumeration::with_mxcsr_mask`].
    Measured,
    /// The vendor's value, from CPUID leaf 0: 0x2ffff for AMD and Hygon (bit 17,
    /// misaligned-SSE mode, which AMD CPUs with XSAVE implement: a Zen 4 reports
    /// 0x2ffff), 0xffff for the others (every CPU with XSAVE has DAZ).
    Vendor,
    /// The source names no vendor (a recording of leaf 0xD without leaf 0):
    /// 0xffff, the mask every CPU with XSAVE has. On an AMD CPU it refuses MXCSR
    /// values with bit 17 that the CPU would take: a kernel measures instead.
    Baseline,
}

/// MXCSR_MASK by vendor, for a source that cannot run FXSAVE (see
/// [`MxcsrMaskSource`]).
fn vendor_mxcsr_mask(src: &impl CpuidSource) -> (u32, MxcsrMaskSource) {
    match Vendor::of(src) {
        Ok(v) if v.is_amd_like() => (0x2_ffff, MxcsrMaskSource::Vendor),
        Ok(_) => (0xffff, MxcsrMaskSource::Vendor),
        Err(NoVendor) => (0xffff, MxcsrMaskSource::Baseline),
    }
}

/// The catalogued components whose CPUID feature flag is set in `src`, or `None`
/// when `src` has no feature leaves (leaf 1 all zeros).
fn flagged(src: &impl CpuidSource) -> Option<XFeatures> {
    if src.cpuid(1, 0) == CpuidResult::default() {
        return None;
    }
    // CPUID(7,1) exists only where CPUID(7,0).EAX (the highest subleaf) says so;
    // a CPU may answer an undefined subleaf with anything.
    let has_7_1 = src.cpuid(7, 0).eax >= 1;
    Some(
        CATALOG
            .iter()
            .filter(|f| {
                let b = f.flag;
                (b.leaf != 7 || b.subleaf == 0 || has_7_1)
                    && b.is_set_in(src.cpuid(b.leaf, b.subleaf))
            })
            .fold(XFeatures::empty(), |m, f| m.union(f.feature.mask())),
    )
}

fn standard_end(comps: &[Component; 64], user: XFeatures) -> u32 {
    user.indices()
        .filter(|&i| i >= 2)
        .map(|i| comps[i as usize].std_offset + comps[i as usize].size)
        .fold(EXTENDED_START, u32::max)
}

/// The compacted-form end of `mask` (SDM vol. 1 13.4.3), or `None` on overflow.
pub(crate) fn compacted_end(comps: &[Component; 64], mask: XFeatures) -> Option<u32> {
    let mut end = u64::from(EXTENDED_START);
    for i in mask.indices().filter(|&i| i >= 2) {
        let c = &comps[i as usize];
        if c.align64 {
            end = (end + 63) & !63;
        }
        end += u64::from(c.size);
    }
    u32::try_from(end).ok()
}

fn check_overlaps(comps: &[Component; 64], user: XFeatures) -> Result<(), EnumError> {
    // At most 62 extended user components: a quadratic scan is cheap and obvious.
    for a in user.indices().filter(|&i| i >= 2) {
        for b in user.indices().filter(|&i| i > a) {
            let (ca, cb) = (&comps[a as usize], &comps[b as usize]);
            // Ends were checked not to overflow.
            if ca.std_offset < cb.std_offset + cb.size && cb.std_offset < ca.std_offset + ca.size {
                let (lo, hi) = if ca.std_offset <= cb.std_offset {
                    (a, b)
                } else {
                    (b, a)
                };
                return Err(EnumError::Overlap { a: lo, b: hi });
            }
        }
    }
    Ok(())
}
