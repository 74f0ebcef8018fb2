//! Linux's verdict on a leaf 0xD table ([`LeafTable`], [`linux_xsave`]): what
//! a guest kernel would enable and size from what it is shown.

use super::*;

/// A fixed leaf 0xD table, one entry per subleaf 0..=63 (absent entries read
/// as zeros, as a CPUID page or a `KVM_SET_CPUID2` table without them does).
/// Every other leaf reads as zeros. [`GuestXsave::leaf_table`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafTable {
    pub(super) entries: [Option<CpuidResult>; 64],
}

impl Default for LeafTable {
    fn default() -> Self {
        Self {
            entries: [None; 64],
        }
    }
}

impl LeafTable {
    /// The entry of `subleaf`, if present.
    pub fn get(&self, subleaf: u32) -> Option<CpuidResult> {
        self.entries.get(subleaf as usize).copied().flatten()
    }

    /// Put `regs` at `subleaf` (ignored past 63).
    pub fn insert(&mut self, subleaf: u32, regs: CpuidResult) {
        if let Some(e) = self.entries.get_mut(subleaf as usize) {
            *e = Some(regs);
        }
    }

    /// Take `subleaf` out of the table (what a CPUID page missing it holds).
    pub fn remove(&mut self, subleaf: u32) -> Option<CpuidResult> {
        self.entries
            .get_mut(subleaf as usize)
            .and_then(Option::take)
    }

    /// The present entries, by subleaf.
    pub fn iter(&self) -> impl Iterator<Item = (u32, CpuidResult)> + '_ {
        (0u32..)
            .zip(self.entries.iter())
            .filter_map(|(i, e)| e.map(|r| (i, r)))
    }
}

impl CpuidSource for LeafTable {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        if leaf == 0xd {
            self.get(subleaf).unwrap_or_default()
        } else {
            CpuidResult::default()
        }
    }
}

/// Linux keeps XSAVE: what `fpu__init_system_xstate` ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinuxXsave {
    /// The features Linux enables (`fpu_kernel_cfg.max_features`).
    pub features: XFeatures,
    /// The kernel's context size: the size report it checked.
    pub context_size: u32,
    /// Compacted (XSAVEC or XSAVES) or standard format.
    pub compacted: bool,
    /// The user (standard) size, CPUID(0xD,0).EBX.
    pub user_size: u32,
    /// Components whose CPUID size differs from Linux's structure for them:
    /// Linux warns ("struct is N bytes, cpu state M bytes") and dumps the
    /// leaves, but goes on.
    pub struct_mismatch: XFeatures,
}

impl LinuxXsave {
    /// The warnings Linux logs for [`LinuxXsave::struct_mismatch`], read off
    /// the table `src` the verdict came from (Linux dumps the leaves after
    /// each, and keeps XSAVE).
    pub fn struct_warnings<'a>(
        &self,
        src: &'a impl CpuidSource,
    ) -> impl Iterator<Item = StructWarning> + 'a {
        self.struct_mismatch.indices().filter_map(move |index| {
            let linux_size = CATALOG.get(index as usize)?.arch_size?;
            Some(StructWarning {
                index,
                linux_size,
                cpu_size: src.cpuid(0xd, index).eax,
            })
        })
    }
}

/// One of Linux's structure-size warnings: CPUID gives component `index`
/// another size than Linux's structure for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StructWarning {
    /// The component.
    pub index: u32,
    /// Linux's structure size.
    pub linux_size: u32,
    /// What CPUID says.
    pub cpu_size: u32,
}

impl fmt::Display for StructWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = CATALOG
            .get(self.index as usize)
            .map_or("unknown xstate feature", |c| c.linux_desc);
        write!(
            f,
            "[{name}]: struct is {} bytes, cpu state {} bytes",
            self.linux_size, self.cpu_size
        )
    }
}

impl fmt::Display for LinuxXsave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "x86/fpu: Enabled xstate features {:#x}, context size is {} bytes, using '{}' format.",
            self.features.bits(),
            self.context_size,
            if self.compacted {
                "compacted"
            } else {
                "standard"
            }
        )
    }
}

/// Why Linux disables XSAVE for a CPUID leaf 0xD: each variant prints the line
/// Linux 6.18 logs (`arch/x86/kernel/fpu/xstate.c`) before it boots without
/// XSAVE (or, for [`LinuxRefusal::Xcr0Faults`], instead of booting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinuxRefusal {
    /// x87 or SSE missing from the features leaf 0xD enumerates.
    FpSseMissing {
        /// CPUID(0xD,0) EDX:EAX | CPUID(0xD,1) EDX:ECX.
        features: u64,
    },
    /// APX and MPX both enumerated.
    ApxAndMpx {
        /// The same mask.
        features: u64,
    },
    /// A component Linux enables is marked supervisor (ECX\[0\]) while the
    /// CPU has no XSAVES.
    SupervisorWithoutXsaves {
        /// The component.
        index: u32,
    },
    /// The size Linux computes from the subleaves of the features it enables
    /// differs from the size report it checks (CPUID(0xD,1).EBX in the
    /// compacted format, CPUID(0xD,0).EBX in the standard one). openvmm's TDX
    /// guests stop here (openvmm #708: "size 10752 != kernel_size 10704"), and
    /// so does a guest whose table lacks subleaf 11 or 12 while IA32_XSS
    /// enables CET (igvm-tooling #60).
    SizeMismatch {
        /// Computed from the subleaves.
        size: u32,
        /// The size report.
        kernel_size: u32,
    },
    /// The default (non-dynamic) buffer does not fit Linux's static
    /// `init_fpstate` (4096 bytes).
    InitFpstateTooSmall {
        /// The default buffer's size.
        size: u32,
    },
    /// The XCR0 Linux would write is not one XSETBV takes (a group half
    /// enabled, e.g. TILECFG without TILEDATA once Linux drops TILEDATA for
    /// want of XFD): the guest takes #GP at boot. Not a Linux message.
    Xcr0Faults {
        /// The XCR0.
        xcr0: u64,
    },
}

impl fmt::Display for LinuxRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::FpSseMissing { features } => write!(
                f,
                "x86/fpu: FP/SSE not present amongst the CPU's xstate features: {features:#x}."
            ),
            Self::ApxAndMpx { features } => write!(
                f,
                "x86/fpu: Both APX/MPX present in the CPU's xstate features: {features:#x}."
            ),
            Self::SupervisorWithoutXsaves { index } => write!(
                f,
                "XSAVE consistency problem: Got supervisor feature {index}, but XSAVES not advertised"
            ),
            Self::SizeMismatch { size, kernel_size } => write!(
                f,
                "XSAVE consistency problem: size {size} != kernel_size {kernel_size}"
            ),
            Self::InitFpstateTooSmall { size } => write!(
                f,
                "x86/fpu: init_fpstate buffer too small ({INIT_FPSTATE_SIZE} < {size})"
            ),
            Self::Xcr0Faults { xcr0 } => {
                write!(f, "XSETBV of XCR0 {xcr0:#x} faults (#GP) during boot")
            }
        }
    }
}

/// The size of Linux's static `init_fpstate` register area.
const INIT_FPSTATE_SIZE: u32 = 4096;

/// Every component leaf 0xD enumerates: CPUID(0xD,0) EDX:EAX and
/// CPUID(0xD,1) EDX:ECX together (Linux ORs them, overlap or not).
fn enumerated(s0: CpuidResult, s1: CpuidResult) -> XFeatures {
    XFeatures::from_bits_retain(crate::enumerate::join(s0.edx, s0.eax)).union(
        XFeatures::from_bits_retain(crate::enumerate::join(s1.edx, s1.ecx)),
    )
}

/// The features Linux 6.18 enables from leaf 0xD alone (it also drops those
/// whose CPUID feature flag is clear; the other leaves are assumed to agree):
/// the XCR0 and XSS masks, without TILEDATA unless XFD is enumerated, limited
/// to the components it knows (supervisor ones only with XSAVES).
pub(super) fn linux_max_features(s0: CpuidResult, s1: CpuidResult) -> XFeatures {
    let mut max = enumerated(s0, s1);
    if s1.eax & XsaveFlags::XFD.bits() == 0 {
        max.remove(XFeatures::DYNAMIC);
    }
    if s1.eax & XsaveFlags::XSAVES.bits() != 0 {
        max & LINUX_USER.union(LINUX_SUPERVISOR)
    } else {
        max & LINUX_USER
    }
}

/// Linux's buffer size for `mask` read off the subleaves: compacted, the
/// running sum from 576 with each 64-byte-aligned component aligned; standard,
/// the end of the component with the highest standard offset. Saturates
/// instead of overflowing (a hostile table).
fn linux_size(src: &impl CpuidSource, mask: XFeatures, compacted: bool) -> u32 {
    let mut end = u64::from(EXTENDED_START);
    let mut top = None::<(u32, u32)>;
    for i in mask.indices().filter(|&i| i >= 2) {
        let r = src.cpuid(0xd, i);
        if compacted {
            // At most 576 + 62 * (2^32 + 63): `saturating` never saturates.
            if r.ecx & 2 != 0 {
                end = end.saturating_add(63) & !63;
            }
            end = end.saturating_add(u64::from(r.eax));
        } else if top.is_none_or(|(o, _)| r.ebx >= o) {
            top = Some((r.ebx, r.eax));
        }
    }
    if let Some((o, s)) = top {
        end = u64::from(o).saturating_add(u64::from(s));
    }
    u32::try_from(end).unwrap_or(u32::MAX)
}

/// Predict what Linux 6.18 booting on the leaf 0xD `src` does with XSAVE
/// (`fpu__init_system_xstate` and its size checks): keep it, with the
/// features, sizes and format it reports, or disable it, with the line it
/// logs. `src` answers as the CPU would once Linux has written its XCR0 and
/// IA32_XSS (its `max_features`): for a [`GuestXsave`] use
/// [`GuestXsave::linux_boot`].
///
/// Linux is more lenient than [`Enumeration::from_cpuid`]: a component
/// missing from the table (all zeros) is not refused as such. Linux warns that
/// its structure is larger than the CPU's state (see
/// [`LinuxXsave::struct_warnings`]: a warning, not a refusal), takes the size
/// as 0, and only its size check gives it away: the compacted sum then falls
/// short of CPUID(0xD,1).EBX, unless the next component's 64-byte alignment
/// absorbs the difference (CET_S before AMX's TILECFG: Linux keeps XSAVE, with
/// the warning). Never panics on any table.
///
/// # Errors
/// The [`LinuxRefusal`] for the first check that fails, in Linux's order.
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
/// # use xstate::guest::{linux_xsave, GuestXsave, LinuxRefusal, XsaveFlags};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
/// let mut g = GuestXsave::new(&e, &all, e.xcr0_supported(), e.xss_supported(), XsaveFlags::of(&e)).unwrap();
/// g.set_xcr0(e.xcr0_supported()).unwrap();
/// g.set_xss(e.xss_supported()).unwrap();
/// let mut table = g.leaf_table();
/// assert!(linux_xsave(&table).is_ok());
/// table.remove(12); // a CPUID page without CET_S's subleaf
/// let err = linux_xsave(&table).unwrap_err();
/// // CPUID(0xD,1).EBX still counts CET_S's 24 bytes; Linux's sum has 0 for it.
/// assert_eq!(err, LinuxRefusal::SizeMismatch { size: 2456, kernel_size: 2480 });
/// assert_eq!(err.to_string(), "XSAVE consistency problem: size 2456 != kernel_size 2480");
/// ```
pub fn linux_xsave(src: &impl CpuidSource) -> Result<LinuxXsave, LinuxRefusal> {
    let (s0, s1) = (src.cpuid(0xd, 0), src.cpuid(0xd, 1));
    let all = enumerated(s0, s1).bits();
    if all & XFeatures::LEGACY.bits() != XFeatures::LEGACY.bits() {
        return Err(LinuxRefusal::FpSseMissing { features: all });
    }
    let enumerated = XFeatures::from_bits_retain(all);
    if enumerated.contains(XFeatures::APX) && enumerated.intersects(MPX) {
        return Err(LinuxRefusal::ApxAndMpx { features: all });
    }
    let max = linux_max_features(s0, s1);
    let xsaves = s1.eax & XsaveFlags::XSAVES.bits() != 0;
    let compacted = xsaves || s1.eax & XsaveFlags::XSAVEC.bits() != 0;
    let mut struct_mismatch = XFeatures::empty();
    for i in max.indices().filter(|&i| i >= 2) {
        let r = src.cpuid(0xd, i);
        // Linux's structures have the architectural sizes of the catalog.
        let arch = CATALOG.get(i as usize).and_then(|c| c.arch_size);
        if arch.is_some_and(|a| a != r.eax) {
            struct_mismatch |= XFeatures::from_index(i).unwrap_or(XFeatures::empty());
        }
        if !xsaves && r.ecx & 1 != 0 {
            return Err(LinuxRefusal::SupervisorWithoutXsaves { index: i });
        }
    }
    let kernel_size = if compacted { s1.ebx } else { s0.ebx };
    let size = linux_size(src, max, compacted);
    if size != kernel_size {
        return Err(LinuxRefusal::SizeMismatch { size, kernel_size });
    }
    let default = max
        .difference(XFeatures::DYNAMIC)
        .difference(XFeatures::GUEST_ONLY);
    let default_size = linux_size(src, default, compacted);
    if default_size > INIT_FPSTATE_SIZE {
        return Err(LinuxRefusal::InitFpstateTooSmall { size: default_size });
    }
    Ok(LinuxXsave {
        features: max,
        context_size: kernel_size,
        compacted,
        user_size: s0.ebx,
        struct_mismatch,
    })
}
