//! The XSAVE component catalog: every architectural state component 0..=19, its
//! facts (names, user or supervisor, enumerating CPUID flag, architectural size,
//! XFD capability), and the [`XFeatures`] mask type with the groups a kernel needs.
//!
//! The reviewed source of these facts is `features/*.conf`, one file per
//! component; `tests/catalog.rs` fails when this table and those files disagree.

use bitflags::bitflags;

bitflags! {
    /// A set of XSAVE state components: an XCR0, IA32_XSS, RFBM, XSTATE_BV or
    /// XCOMP_BV value (without XCOMP_BV's bit 63, see [`XCOMP_BV_COMPACTED`]).
    ///
    /// Bits outside the catalog (AMD's LWP, component 62, or anything a future CPU
    /// defines) are kept: a mask round-trips through this type unchanged.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
    pub struct XFeatures: u64 {
        /// x87 FPU state (legacy area).
        const X87 = 1 << 0;
        /// SSE state: XMM0-15 and MXCSR (legacy area).
        const SSE = 1 << 1;
        /// AVX: upper halves of YMM0-15.
        const AVX = 1 << 2;
        /// MPX bound registers BND0-3.
        const BNDREGS = 1 << 3;
        /// MPX BNDCFGU and BNDSTATUS.
        const BNDCSR = 1 << 4;
        /// AVX-512 opmask registers k0-7.
        const OPMASK = 1 << 5;
        /// AVX-512 upper halves of ZMM0-15.
        const ZMM_HI256 = 1 << 6;
        /// AVX-512 ZMM16-31.
        const HI16_ZMM = 1 << 7;
        /// Processor Trace MSRs (supervisor).
        const PT = 1 << 8;
        /// Protection keys rights register for user pages.
        const PKRU = 1 << 9;
        /// IA32_PASID (supervisor).
        const PASID = 1 << 10;
        /// CET user state: IA32_U_CET, IA32_PL3_SSP (supervisor-managed).
        const CET_U = 1 << 11;
        /// CET supervisor state: IA32_PL0/1/2_SSP (supervisor).
        const CET_S = 1 << 12;
        /// Hardware duty cycling (supervisor).
        const HDC = 1 << 13;
        /// User interrupts state (supervisor-managed).
        const UINTR = 1 << 14;
        /// Architectural LBR state (supervisor).
        const LBR = 1 << 15;
        /// Hardware P-states request (supervisor).
        const HWP = 1 << 16;
        /// AMX tile configuration (TILECFG).
        const XTILE_CFG = 1 << 17;
        /// AMX tile data TMM0-7 (TILEDATA).
        const XTILE_DATA = 1 << 18;
        /// APX extended GPRs R16-R31.
        const APX = 1 << 19;
        /// AMD lightweight profiling (outside the catalog; enumerated by number).
        const LWP = 1 << 62;

        // Keep every bit: unknown components are laid out by number, not dropped.
        const _ = !0;
    }
}

/// XCOMP_BV bit 63: the area is in compacted form (set by XSAVEC/XSAVES,
/// required by XRSTORS).
pub const XCOMP_BV_COMPACTED: u64 = 1 << 63;

impl XFeatures {
    /// The legacy region components, always present in any XSAVE area.
    pub const LEGACY: Self = Self::X87.union(Self::SSE);
    /// Both AMX components.
    pub const XTILE: Self = Self::XTILE_CFG.union(Self::XTILE_DATA);
    /// All AVX-512 components.
    pub const AVX512: Self = Self::OPMASK.union(Self::ZMM_HI256).union(Self::HI16_ZMM);
    /// Catalogued user components, enabled in XCR0.
    pub const USER: Self = Self::LEGACY
        .union(Self::AVX)
        .union(Self::BNDREGS)
        .union(Self::BNDCSR)
        .union(Self::AVX512)
        .union(Self::PKRU)
        .union(Self::XTILE)
        .union(Self::APX);
    /// Catalogued supervisor components, enabled in IA32_XSS.
    pub const SUPERVISOR: Self = Self::PT
        .union(Self::PASID)
        .union(Self::CET_U)
        .union(Self::CET_S)
        .union(Self::HDC)
        .union(Self::UINTR)
        .union(Self::LBR)
        .union(Self::HWP);
    /// Components Linux allocates only on request, armed behind XFD until then.
    pub const DYNAMIC: Self = Self::XTILE_DATA;
    /// Components a kernel saves on its own, never in task fpstates (Linux: LBR).
    pub const INDEPENDENT: Self = Self::LBR;
    /// Components with space only in guest fpstates (the "lesser dynamic" kind).
    pub const GUEST_ONLY: Self = Self::CET_S;
    /// Components whose bits XSAVE/XRSTOR handle in XCR0 (the architectural user set,
    /// bits outside the catalog included once they are enumerated as such).
    pub const ALL_CATALOGUED: Self = Self::USER.union(Self::SUPERVISOR);

    /// A mask from one component.
    #[inline]
    pub const fn from_feature(f: XFeature) -> Self {
        Self::from_bits_retain(1 << f as u8)
    }

    /// A mask from a component number 0..=62.
    ///
    /// Returns `None` for 63 and above (bit 63 of XCOMP_BV is not a component).
    #[inline]
    pub const fn from_index(index: u32) -> Option<Self> {
        if index < 63 {
            Some(Self::from_bits_retain(1 << index))
        } else {
            None
        }
    }

    /// Whether component number `index` is in the mask (false for `index >= 64`).
    #[inline]
    pub const fn has_index(self, index: u32) -> bool {
        index < 64 && self.bits() & (1 << index) != 0
    }

    /// Iterate over the component numbers in the mask, lowest first.
    #[inline]
    pub fn indices(self) -> Indices {
        Indices(self.bits())
    }
}

/// Iterator over the component numbers of an [`XFeatures`] mask.
#[derive(Clone, Debug)]
pub struct Indices(u64);

impl Iterator for Indices {
    type Item = u32;
    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(i)
    }
}

/// One catalogued XSAVE state component (SDM vol. 1 13.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // each variant is documented in CATALOG and features/
pub enum XFeature {
    X87 = 0,
    Sse = 1,
    Avx = 2,
    BndRegs = 3,
    BndCsr = 4,
    Opmask = 5,
    ZmmHi256 = 6,
    Hi16Zmm = 7,
    Pt = 8,
    Pkru = 9,
    Pasid = 10,
    CetU = 11,
    CetS = 12,
    Hdc = 13,
    Uintr = 14,
    Lbr = 15,
    Hwp = 16,
    XtileCfg = 17,
    XtileData = 18,
    Apx = 19,
}

/// Which control register enables a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// Enabled in XCR0; saved by every XSAVE form.
    User,
    /// Enabled in IA32_XSS; saved only by XSAVES (CPL 0).
    Supervisor,
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the register names
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One feature flag: bit `bit` of register `reg` after CPUID(`leaf`, `subleaf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CpuidBit {
    /// The leaf (EAX in).
    pub leaf: u32,
    /// The subleaf (ECX in).
    pub subleaf: u32,
    /// The output register holding the flag.
    pub reg: Reg,
    /// The bit, 0..=31.
    pub bit: u32,
}

impl CpuidBit {
    /// Whether the flag is set in `r`, the output of CPUID(`self.leaf`, `self.subleaf`).
    #[inline]
    pub const fn is_set_in(self, r: crate::cpuid::CpuidResult) -> bool {
        let v = match self.reg {
            Reg::Eax => r.eax,
            Reg::Ebx => r.ebx,
            Reg::Ecx => r.ecx,
            Reg::Edx => r.edx,
        };
        v & (1 << (self.bit & 31)) != 0
    }

    /// The flag named by the SDM's notation in [`FeatureInfo::cpuid_flag`]:
    /// `CPUID.01H:ECX.AVX[bit 28]` or `CPUID.(EAX=07H,ECX=0):EBX.MPX[bit 14]`.
    /// Evaluated only in the `const` [`CATALOG`], so a malformed string fails the
    /// build, never a run.
    const fn parse(s: &str) -> Self {
        let b = s.as_bytes();
        let mut i = expect(b, 0, b"CPUID.");
        let (leaf, subleaf);
        if b[i] == b'(' {
            i = expect(b, i + 1, b"EAX=");
            let (v, j) = number(b, i, 16);
            leaf = v;
            i = expect(b, j, b"H,ECX=");
            let (v, j) = number(b, i, 10);
            subleaf = v;
            i = expect(b, j, b")");
        } else {
            let (v, j) = number(b, i, 16);
            leaf = v;
            subleaf = 0;
            i = expect(b, j, b"H");
        }
        i = expect(b, i, b":E");
        let reg = match b[i] {
            b'A' => Reg::Eax,
            b'B' => Reg::Ebx,
            b'C' => Reg::Ecx,
            b'D' => Reg::Edx,
            _ => panic!("cpuid_flag: register is not EAX/EBX/ECX/EDX"),
        };
        i = expect(b, i + 1, b"X.");
        while b[i] != b'[' {
            i += 1;
        }
        i = expect(b, i, b"[bit ");
        let (bit, j) = number(b, i, 10);
        let end = expect(b, j, b"]");
        assert!(
            end == b.len() && bit < 32,
            "cpuid_flag: trailing text or bit > 31"
        );
        Self {
            leaf,
            subleaf,
            reg,
            bit,
        }
    }
}

/// `b[at..]` starts with `lit`: the index past it (compile-time parsing only).
const fn expect(b: &[u8], at: usize, lit: &[u8]) -> usize {
    let mut k = 0;
    while k < lit.len() {
        assert!(b[at + k] == lit[k], "cpuid_flag: unexpected text");
        k += 1;
    }
    at + lit.len()
}

/// The digits at `b[at..]` in `radix` (10 or 16): value and index past them.
const fn number(b: &[u8], at: usize, radix: u32) -> (u32, usize) {
    let mut i = at;
    let mut v = 0u32;
    loop {
        let d = match b[i] {
            c @ b'0'..=b'9' => (c - b'0') as u32,
            c @ b'A'..=b'F' if radix == 16 => (c - b'A') as u32 + 10,
            _ => break,
        };
        v = v * radix + d;
        i += 1;
    }
    assert!(i > at, "cpuid_flag: number expected");
    (v, i)
}

/// The facts of one component. `features/NN-name.conf` holds the same facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeatureInfo {
    /// The component.
    pub feature: XFeature,
    /// Short name used by this crate and the report (`"AVX"`).
    pub name: &'static str,
    /// The kernel's enum name (`"XFEATURE_YMM"`).
    pub linux_enum: &'static str,
    /// The string Linux prints at boot (`xfeature_names[]`).
    pub linux_desc: &'static str,
    /// XCR0 or IA32_XSS.
    pub domain: Domain,
    /// The CPUID flag enumerating the feature behind the component, as the SDM
    /// writes it.
    pub cpuid_flag: &'static str,
    /// The same flag as a bit to test ([`CpuidBit::is_set_in`]). Linux switches a
    /// component off when its flag is clear (`xsave_cpuid_features[]`); so does
    /// [`Enumeration::usable`](crate::enumerate::Enumeration::usable).
    pub flag: CpuidBit,
    /// Size fixed by the SDM, where it fixes one (PT and LBR vary by CPU).
    pub arch_size: Option<u32>,
    /// Whether XFD can arm the component (SDM: only AMX TILEDATA so far).
    pub xfd_capable: bool,
    /// The SDM section the facts come from.
    pub sdm: &'static str,
}

macro_rules! info {
    ($f:ident, $name:literal, $le:literal, $ld:literal, $dom:ident, $flag:literal, $size:expr, $xfd:literal, $sdm:literal) => {
        FeatureInfo {
            feature: XFeature::$f,
            name: $name,
            linux_enum: $le,
            linux_desc: $ld,
            domain: Domain::$dom,
            cpuid_flag: $flag,
            flag: CpuidBit::parse($flag),
            arch_size: $size,
            xfd_capable: $xfd,
            sdm: $sdm,
        }
    };
}

/// The catalog, indexed by component number.
pub const CATALOG: [FeatureInfo; 20] = [
    info!(
        X87,
        "x87",
        "XFEATURE_FP",
        "x87 floating point registers",
        User,
        "CPUID.01H:EDX.FPU[bit 0]",
        Some(160),
        false,
        "Vol. 1 13.4.1"
    ),
    info!(
        Sse,
        "SSE",
        "XFEATURE_SSE",
        "SSE registers",
        User,
        "CPUID.01H:EDX.SSE[bit 25]",
        Some(256),
        false,
        "Vol. 1 13.4.1"
    ),
    info!(
        Avx,
        "AVX",
        "XFEATURE_YMM",
        "AVX registers",
        User,
        "CPUID.01H:ECX.AVX[bit 28]",
        Some(256),
        false,
        "Vol. 1 13.5.3"
    ),
    info!(
        BndRegs,
        "MPX_BNDREGS",
        "XFEATURE_BNDREGS",
        "MPX bounds registers",
        User,
        "CPUID.(EAX=07H,ECX=0):EBX.MPX[bit 14]",
        Some(64),
        false,
        "Vol. 1 13.5.4"
    ),
    info!(
        BndCsr,
        "MPX_BNDCSR",
        "XFEATURE_BNDCSR",
        "MPX CSR",
        User,
        "CPUID.(EAX=07H,ECX=0):EBX.MPX[bit 14]",
        Some(64),
        false,
        "Vol. 1 13.5.4"
    ),
    info!(
        Opmask,
        "AVX512_OPMASK",
        "XFEATURE_OPMASK",
        "AVX-512 opmask",
        User,
        "CPUID.(EAX=07H,ECX=0):EBX.AVX512F[bit 16]",
        Some(64),
        false,
        "Vol. 1 13.5.5"
    ),
    info!(
        ZmmHi256,
        "AVX512_ZMM_HI256",
        "XFEATURE_ZMM_Hi256",
        "AVX-512 Hi256",
        User,
        "CPUID.(EAX=07H,ECX=0):EBX.AVX512F[bit 16]",
        Some(512),
        false,
        "Vol. 1 13.5.5"
    ),
    info!(
        Hi16Zmm,
        "AVX512_HI16_ZMM",
        "XFEATURE_Hi16_ZMM",
        "AVX-512 ZMM_Hi256",
        User,
        "CPUID.(EAX=07H,ECX=0):EBX.AVX512F[bit 16]",
        Some(1024),
        false,
        "Vol. 1 13.5.5"
    ),
    info!(
        Pt,
        "PT",
        "XFEATURE_PT_UNIMPLEMENTED_SO_FAR",
        "Processor Trace (unused)",
        Supervisor,
        "CPUID.(EAX=07H,ECX=0):EBX.PT[bit 25]",
        None,
        false,
        "Vol. 1 13.5.6"
    ),
    info!(
        Pkru,
        "PKRU",
        "XFEATURE_PKRU",
        "Protection Keys User registers",
        User,
        "CPUID.(EAX=07H,ECX=0):ECX.PKU[bit 3]",
        Some(8),
        false,
        "Vol. 1 13.5.7"
    ),
    info!(
        Pasid,
        "PASID",
        "XFEATURE_PASID",
        "PASID state",
        Supervisor,
        "CPUID.(EAX=07H,ECX=0):ECX.ENQCMD[bit 29]",
        Some(8),
        false,
        "Vol. 1 13.5.8"
    ),
    info!(
        CetU,
        "CET_U",
        "XFEATURE_CET_USER",
        "Control-flow User registers",
        Supervisor,
        "CPUID.(EAX=07H,ECX=0):ECX.CET_SS[bit 7]",
        Some(16),
        false,
        "Vol. 1 13.5.9"
    ),
    info!(
        CetS,
        "CET_S",
        "XFEATURE_CET_KERNEL",
        "Control-flow Kernel registers (KVM only)",
        Supervisor,
        "CPUID.(EAX=07H,ECX=0):ECX.CET_SS[bit 7]",
        Some(24),
        false,
        "Vol. 1 13.5.9"
    ),
    info!(
        Hdc,
        "HDC",
        "XFEATURE_RSRVD_COMP_13",
        "unknown xstate feature",
        Supervisor,
        "CPUID.06H:EAX.HDC[bit 13]",
        Some(8),
        false,
        "Vol. 1 13.5.10"
    ),
    info!(
        Uintr,
        "UINTR",
        "XFEATURE_RSRVD_COMP_14",
        "unknown xstate feature",
        Supervisor,
        "CPUID.(EAX=07H,ECX=0):EDX.UINTR[bit 5]",
        Some(48),
        false,
        "Vol. 1 13.5.11"
    ),
    info!(
        Lbr,
        "LBR",
        "XFEATURE_LBR",
        "unknown xstate feature",
        Supervisor,
        "CPUID.(EAX=07H,ECX=0):EDX.ARCH_LBR[bit 19]",
        None,
        false,
        "Vol. 1 13.5.12"
    ),
    info!(
        Hwp,
        "HWP",
        "XFEATURE_RSRVD_COMP_16",
        "unknown xstate feature",
        Supervisor,
        "CPUID.06H:EAX.HWP[bit 7]",
        Some(8),
        false,
        "Vol. 1 13.5.13"
    ),
    info!(
        XtileCfg,
        "AMX_TILECFG",
        "XFEATURE_XTILE_CFG",
        "AMX Tile config",
        User,
        "CPUID.(EAX=07H,ECX=0):EDX.AMX-TILE[bit 24]",
        Some(64),
        false,
        "Vol. 1 13.5.14"
    ),
    info!(
        XtileData,
        "AMX_TILEDATA",
        "XFEATURE_XTILE_DATA",
        "AMX Tile data",
        User,
        "CPUID.(EAX=07H,ECX=0):EDX.AMX-TILE[bit 24]",
        Some(8192),
        true,
        "Vol. 1 13.5.14"
    ),
    info!(
        Apx,
        "APX",
        "XFEATURE_APX",
        "APX registers",
        User,
        "CPUID.(EAX=07H,ECX=1):EDX.APX_F[bit 21]",
        Some(128),
        false,
        "Vol. 1 13.5.15"
    ),
];

impl XFeature {
    /// Every catalogued component, in component-number order.
    pub const ALL: [XFeature; 20] = {
        let mut out = [XFeature::X87; 20];
        let mut i = 0;
        while i < 20 {
            out[i] = CATALOG[i].feature;
            i += 1;
        }
        out
    };

    /// The component number (bit position in XCR0/IA32_XSS).
    #[inline]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The catalogued component with that number, if any.
    #[inline]
    pub const fn from_index(index: u32) -> Option<Self> {
        if index < 20 {
            Some(CATALOG[index as usize].feature)
        } else {
            None
        }
    }

    /// This component's facts.
    #[inline]
    pub const fn info(self) -> &'static FeatureInfo {
        &CATALOG[self as usize]
    }

    /// This component as a one-bit mask.
    #[inline]
    pub const fn mask(self) -> XFeatures {
        XFeatures::from_feature(self)
    }
}

/// A display name for any component number: the catalog's name, `LWP` for AMD's
/// component 62, `unknown` otherwise.
pub const fn name_of(index: u32) -> &'static str {
    match XFeature::from_index(index) {
        Some(f) => f.info().name,
        None if index == 62 => "LWP",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_indexed_by_component_number() {
        for (i, info) in CATALOG.iter().enumerate() {
            assert_eq!(info.feature as usize, i, "{}", info.name);
            assert_eq!(XFeature::from_index(i as u32), Some(info.feature));
        }
        assert_eq!(XFeature::from_index(20), None);
    }

    #[test]
    fn groups_follow_the_domain_column() {
        for info in &CATALOG {
            let m = info.feature.mask();
            assert_eq!(
                XFeatures::USER.contains(m),
                info.domain == Domain::User,
                "{}",
                info.name
            );
            assert_eq!(
                XFeatures::SUPERVISOR.contains(m),
                info.domain == Domain::Supervisor
            );
            assert_eq!(XFeatures::DYNAMIC.contains(m), info.xfd_capable);
        }
        assert!(
            XFeatures::USER
                .intersection(XFeatures::SUPERVISOR)
                .is_empty()
        );
        assert!(XFeatures::SUPERVISOR.contains(XFeatures::GUEST_ONLY | XFeatures::INDEPENDENT));
    }

    #[test]
    fn flags_parse_from_the_sdm_notation() {
        let f = |x: XFeature| x.info().flag;
        let bit = |leaf, subleaf, reg, bit| CpuidBit {
            leaf,
            subleaf,
            reg,
            bit,
        };
        assert_eq!(f(XFeature::X87), bit(1, 0, Reg::Edx, 0));
        assert_eq!(f(XFeature::Avx), bit(1, 0, Reg::Ecx, 28));
        assert_eq!(f(XFeature::Pkru), bit(7, 0, Reg::Ecx, 3));
        assert_eq!(f(XFeature::Hdc), bit(6, 0, Reg::Eax, 13));
        assert_eq!(f(XFeature::XtileData), bit(7, 0, Reg::Edx, 24));
        assert_eq!(f(XFeature::Apx), bit(7, 1, Reg::Edx, 21));
        let r = crate::cpuid::CpuidResult {
            eax: 0,
            ebx: 0,
            ecx: 1 << 3,
            edx: 1 << 21,
        };
        assert!(f(XFeature::Pkru).is_set_in(r));
        assert!(f(XFeature::Apx).is_set_in(r));
        assert!(!f(XFeature::Avx).is_set_in(r));
        assert!(!f(XFeature::Hdc).is_set_in(r));
    }

    #[test]
    fn unknown_bits_survive() {
        let m = XFeatures::from_bits_retain(0x4000_0000_0000_0003);
        assert_eq!(m.bits(), 0x4000_0000_0000_0003);
        assert!(m.contains(XFeatures::LWP));
        assert_eq!(m.indices().collect::<std::vec::Vec<_>>(), [0, 1, 62]);
    }
}
