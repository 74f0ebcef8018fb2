//! The vCPU's view: the CPUID leaf 0xD one guest sees ([`GuestXsave`]), its
//! XCR0, IA32_XSS and IA32_XFD, and the XSETBV rules.

use super::*;

/// The low 32 bits of `v` (EAX or ECX of an EDX:EAX mask; `v >> 32` is the
/// other half).
const fn low_half(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

/// The groups XSETBV enables all or nothing of.
pub(crate) const GROUPS: [XFeatures; 3] = [
    XFeatures::BNDREGS.union(XFeatures::BNDCSR),
    XFeatures::AVX512,
    XFeatures::XTILE,
];

/// The XSETBV rules (SDM vol. 2C XSETBV, "#GP(0)"; KVM's `__kvm_set_xcr` in the
/// same order, MPX pairing included).
pub(crate) fn check_xcr0(xcr0: XFeatures, allowed: XFeatures) -> Result<(), GuestError> {
    let v = xcr0.bits();
    if !xcr0.contains(XFeatures::X87) {
        return Err(GuestError::X87Disabled { xcr0: v });
    }
    if xcr0.contains(XFeatures::AVX) && !xcr0.contains(XFeatures::SSE) {
        return Err(GuestError::AvxWithoutSse { xcr0: v });
    }
    if !allowed.contains(xcr0) {
        return Err(GuestError::Xcr0NotAllowed {
            xcr0: v,
            allowed: allowed.bits(),
        });
    }
    if xcr0.intersects(XFeatures::AVX512) && !xcr0.contains(XFeatures::AVX) {
        return Err(GuestError::Avx512WithoutAvx { xcr0: v });
    }
    for group in GROUPS {
        if xcr0.intersects(group) && !xcr0.contains(group) {
            return Err(GuestError::PartialGroup {
                xcr0: v,
                group: group.bits(),
            });
        }
    }
    Ok(())
}

/// The CPUID leaf 0xD one guest sees, and the guest's current XCR0 and IA32_XSS.
///
/// It answers like a CPU would: the size reports of subleaves 0 and 1 follow the
/// guest's XCR0 and IA32_XSS (KVM's `kvm_update_cpuid_runtime`), every other
/// register is fixed at construction from the host's facts. It also holds the
/// guest's IA32_XFD and IA32_XFD_ERR, which decide what its fpstate may hold
/// ([`GuestXsave::set_xfd`]). A fresh guest is in the reset state: XCR0 = x87
/// only, IA32_XSS = 0, XFD and XFD_ERR = 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestXsave {
    pub(super) host: Enumeration,
    pub(super) xcr0_allowed: XFeatures,
    pub(super) xss_allowed: XFeatures,
    pub(super) flags: XsaveFlags,
    pub(super) xcr0: XFeatures,
    pub(super) xss: XFeatures,
    max_standard: u32,
    standard_size: u32,
    compacted_size: u32,
    pub(super) xfd: XFeatures,
    pub(super) xfd_err: XFeatures,
}

impl GuestXsave {
    /// The leaf for a guest allowed `xcr0_allowed` and `xss_allowed`, shown the
    /// extensions `flags`, in a process whose guest permission set is `perms`.
    ///
    /// # Errors
    /// [`GuestError::SupervisorInXcr0`] / [`GuestError::UserInXss`] for a
    /// component in the wrong mask, [`GuestError::Unsupported`] for components the
    /// host lacks, [`GuestError::NotPermitted`] for components outside `perms`,
    /// [`GuestError::LegacyMissing`], the XSETBV errors if `xcr0_allowed` is not
    /// itself a valid XCR0 (a half-enabled group), [`GuestError::FlagsUnsupported`]
    /// and [`GuestError::XssWithoutXsaves`].
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}, XFeatures};
    /// # use xstate::perm::{PermKind, ProcessPerms};
    /// use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
    /// let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    /// let perms = ProcessPerms::new(&cfg);
    /// let guest_perm = perms.get(PermKind::Guest);
    /// // AMX tile data needs ARCH_REQ_XCOMP_GUEST_PERM first.
    /// let err = GuestXsave::new(&e, guest_perm, e.xcr0_supported(), XFeatures::empty(), XsaveFlags::of(&e));
    /// assert_eq!(err.unwrap_err(), GuestError::NotPermitted { mask: XFeatures::XTILE_DATA.bits() });
    /// let g = GuestXsave::new(&e, guest_perm, e.xcr0_supported() - XFeatures::XTILE, XFeatures::CET_U, XsaveFlags::of(&e)).unwrap();
    /// assert_eq!(g.xcr0(), XFeatures::X87);
    /// ```
    pub fn new(
        host: &Enumeration,
        perms: &PermSet,
        xcr0_allowed: XFeatures,
        xss_allowed: XFeatures,
        flags: XsaveFlags,
    ) -> Result<Self, GuestError> {
        let bad = xcr0_allowed & host.xss_supported();
        if !bad.is_empty() {
            return Err(GuestError::SupervisorInXcr0 { mask: bad.bits() });
        }
        let bad = xss_allowed & (host.xcr0_supported() | XFeatures::LEGACY);
        if !bad.is_empty() {
            return Err(GuestError::UserInXss { mask: bad.bits() });
        }
        let bad = xcr0_allowed.difference(host.xcr0_supported())
            | xss_allowed.difference(host.xss_supported());
        if !bad.is_empty() {
            return Err(GuestError::Unsupported { mask: bad.bits() });
        }
        let bad = (xcr0_allowed | xss_allowed).difference(perms.features);
        if !bad.is_empty() {
            return Err(GuestError::NotPermitted { mask: bad.bits() });
        }
        if !xcr0_allowed.contains(XFeatures::LEGACY) {
            return Err(GuestError::LegacyMissing {
                xcr0: xcr0_allowed.bits(),
            });
        }
        // The guest must be able to enable everything it is shown.
        check_xcr0(xcr0_allowed, xcr0_allowed)?;
        let host_flags = XsaveFlags::of(host);
        if !host_flags.contains(flags) {
            return Err(GuestError::FlagsUnsupported {
                flags,
                host: host_flags,
            });
        }
        if !xss_allowed.is_empty() && !flags.contains(XsaveFlags::XSAVES) {
            return Err(GuestError::XssWithoutXsaves {
                xss: xss_allowed.bits(),
            });
        }
        let mut g = Self {
            host: host.clone(),
            xcr0_allowed,
            xss_allowed,
            flags,
            xcr0: XFeatures::X87,
            xss: XFeatures::empty(),
            max_standard: host.standard_size(xcr0_allowed),
            standard_size: 0,
            compacted_size: 0,
            xfd: XFeatures::empty(),
            xfd_err: XFeatures::empty(),
        };
        g.update_sizes();
        Ok(g)
    }

    pub(super) fn update_sizes(&mut self) {
        self.standard_size = self.host.standard_size(self.xcr0);
        self.compacted_size = if self
            .flags
            .intersects(XsaveFlags::XSAVEC.union(XsaveFlags::XSAVES))
        {
            self.host.compacted_size(self.xcr0.union(self.xss))
        } else {
            0
        };
    }

    /// The guest executes XSETBV with ECX = 0: accept `xcr0` by the SDM's rules
    /// and recompute the size reports. On error (the guest gets #GP) nothing changes.
    ///
    /// # Errors
    /// [`GuestError::X87Disabled`], [`GuestError::AvxWithoutSse`],
    /// [`GuestError::Xcr0NotAllowed`], [`GuestError::Avx512WithoutAvx`],
    /// [`GuestError::PartialGroup`].
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let mut g = GuestXsave::new(&e, &all, e.xcr0_supported(), e.xss_supported(), XsaveFlags::of(&e))?;
    /// let bad = XFeatures::LEGACY | XFeatures::AVX | XFeatures::OPMASK;
    /// assert_eq!(g.set_xcr0(bad), Err(GuestError::PartialGroup { xcr0: bad.bits(), group: XFeatures::AVX512.bits() }));
    /// g.set_xcr0(XFeatures::LEGACY | XFeatures::AVX)?;
    /// assert_eq!(g.leaf(0).ebx, 832);
    /// # Ok::<(), GuestError>(())
    /// ```
    pub fn set_xcr0(&mut self, xcr0: XFeatures) -> Result<(), GuestError> {
        check_xcr0(xcr0, self.xcr0_allowed)?;
        self.xcr0 = xcr0;
        self.update_sizes();
        Ok(())
    }

    /// The guest writes IA32_XSS: accept `xss` if the guest's CPUID allows every
    /// bit, and recompute the compacted size. On error nothing changes.
    ///
    /// # Errors
    /// [`GuestError::XssNotAllowed`].
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let mut g = GuestXsave::new(&e, &all, e.xcr0_supported(), XFeatures::CET_U, XsaveFlags::of(&e))?;
    /// assert_eq!(g.leaf(1).ebx, 576);
    /// g.set_xss(XFeatures::CET_U)?;
    /// assert_eq!(g.leaf(1).ebx, 576 + 16);
    /// assert!(g.set_xss(XFeatures::CET_S).is_err());
    /// # Ok::<(), GuestError>(())
    /// ```
    pub fn set_xss(&mut self, xss: XFeatures) -> Result<(), GuestError> {
        if !self.xss_allowed.contains(xss) {
            return Err(GuestError::XssNotAllowed {
                xss: xss.bits(),
                allowed: self.xss_allowed.bits(),
            });
        }
        self.xss = xss;
        self.update_sizes();
        Ok(())
    }

    /// CPUID(0xD, `subleaf`) as the guest sees it. Subleaf 0: the allowed XCR0 mask
    /// (EDX:EAX), the standard size for the current XCR0 (EBX) and for the whole
    /// mask (ECX). Subleaf 1: the extensions (EAX), the compacted size for the
    /// current XCR0 | IA32_XSS when XSAVEC or XSAVES is shown, else 0 (EBX), the
    /// allowed IA32_XSS mask (EDX:ECX). Subleaves 2..=62 of allowed components: the
    /// host's size, offset and `ECX[2:0]`; every other subleaf: zeros.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let g = GuestXsave::new(&e, &all, XFeatures::LEGACY | XFeatures::AVX | XFeatures::PKRU, XFeatures::empty(), XsaveFlags::XSAVEOPT).unwrap();
    /// assert_eq!(g.leaf(0).eax, 0x207);
    /// assert_eq!(g.leaf(0).ecx, 0x988); // PKRU at AMD's 0x980
    /// assert_eq!(g.leaf(1).ebx, 0); // no XSAVEC, no XSAVES
    /// assert_eq!((g.leaf(9).eax, g.leaf(9).ebx), (8, 0x980));
    /// assert_eq!(g.leaf(5).eax, 0); // AVX-512 hidden
    /// ```
    pub fn leaf(&self, subleaf: u32) -> CpuidResult {
        match subleaf {
            0 => CpuidResult {
                eax: low_half(self.xcr0_allowed.bits()),
                ebx: self.standard_size,
                ecx: self.max_standard,
                edx: (self.xcr0_allowed.bits() >> 32) as u32,
            },
            1 => CpuidResult {
                eax: self.flags.bits(),
                ebx: self.compacted_size,
                ecx: low_half(self.xss_allowed.bits()),
                edx: (self.xss_allowed.bits() >> 32) as u32,
            },
            i if self.allowed().has_index(i) => match self.host.component(i) {
                Some(c) => CpuidResult {
                    eax: c.size,
                    ebx: c.std_offset,
                    ecx: u32::from(c.supervisor)
                        | u32::from(c.align64) << 1
                        | u32::from(c.xfd) << 2,
                    edx: 0,
                },
                None => CpuidResult::default(),
            },
            _ => CpuidResult::default(),
        }
    }

    /// The subleaves a VMM puts in its `KVM_SET_CPUID2` table, in order: 0, 1 and
    /// one per allowed component from 2 up (KVM's own list has the same entries).
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let g = GuestXsave::new(&e, &all, XFeatures::LEGACY | XFeatures::AVX, XFeatures::CET_U, XsaveFlags::of(&e)).unwrap();
    /// let subs: Vec<u32> = g.subleaves().map(|(i, _)| i).collect();
    /// assert_eq!(subs, [0, 1, 2, 11]);
    /// ```
    pub fn subleaves(&self) -> impl Iterator<Item = (u32, CpuidResult)> + '_ {
        let extended = self.allowed().indices().filter(|&i| i >= 2);
        [0, 1]
            .into_iter()
            .chain(extended)
            .map(|i| (i, self.leaf(i)))
    }

    fn allowed(&self) -> XFeatures {
        self.xcr0_allowed.union(self.xss_allowed)
    }

    /// The guest's current XCR0.
    #[inline]
    pub const fn xcr0(&self) -> XFeatures {
        self.xcr0
    }

    /// The guest's current IA32_XSS.
    #[inline]
    pub const fn xss(&self) -> XFeatures {
        self.xss
    }

    /// The XCR0 mask the guest is shown (CPUID(0xD,0) EDX:EAX).
    #[inline]
    pub const fn xcr0_allowed(&self) -> XFeatures {
        self.xcr0_allowed
    }

    /// The IA32_XSS mask the guest is shown (CPUID(0xD,1) EDX:ECX).
    #[inline]
    pub const fn xss_allowed(&self) -> XFeatures {
        self.xss_allowed
    }

    /// The extensions the guest is shown (CPUID(0xD,1).EAX).
    #[inline]
    pub const fn flags(&self) -> XsaveFlags {
        self.flags
    }

    /// The standard-form size of every allowed user component: the guest's
    /// CPUID(0xD,0).ECX, what an XSAVE in the guest needs with all of them in
    /// XCR0. It is the end of the meaningful bytes of a `KVM_GET_XSAVE2`
    /// payload for this guest, not the size of the buffer: KVM copies its
    /// vCPU's whole uabi size (at least 4096 bytes) to or from the VMM's
    /// buffer, so a buffer of this size (2,432 bytes on a Zen 4) makes KVM
    /// fault at a guard page or write past it. Size buffers with
    /// [`kvm_xsave_size`].
    #[inline]
    pub const fn max_standard_size(&self) -> u32 {
        self.max_standard
    }

    /// The components the guest may arm in IA32_XFD (and find in
    /// IA32_XFD_ERR): its XCR0-allowed components CPUID marks XFD-capable,
    /// none if it is not shown XFD. KVM's `kvm_guest_supported_xfd`.
    pub fn xfd_allowed(&self) -> XFeatures {
        if !self.flags.contains(XsaveFlags::XFD) {
            return XFeatures::empty();
        }
        let mut m = XFeatures::empty();
        for i in self.xcr0_allowed.indices() {
            if self.host.component(i).is_some_and(|c| c.xfd) {
                m |= XFeatures::from_index(i).unwrap_or(XFeatures::empty());
            }
        }
        m
    }

    /// The guest's IA32_XFD.
    #[inline]
    pub const fn xfd(&self) -> XFeatures {
        self.xfd
    }

    /// The guest's IA32_XFD_ERR.
    #[inline]
    pub const fn xfd_err(&self) -> XFeatures {
        self.xfd_err
    }

    fn check_xfd(&self, value: XFeatures) -> Result<(), GuestError> {
        let allowed = self.xfd_allowed();
        if !allowed.contains(value) {
            return Err(GuestError::XfdNotAllowed {
                value: value.bits(),
                allowed: allowed.bits(),
            });
        }
        Ok(())
    }

    /// The dynamic component (AMX TILEDATA) this guest's CPUID lets it enable
    /// that the guest fpstate `fp` has no space for, if any. KVM grows a guest
    /// fpstate on `KVM_SET_CPUID2` when the CPUID enables one (its
    /// `fpu_enable_guest_xfd_features`), not on the guest's first use: grow
    /// `fp` with [`Fpstate::grow`] for the returned index (which needs the
    /// process's guest permission) before the vCPU runs.
    pub fn dynamic_to_grow<S: Storage>(&self, cfg: &Configs, fp: &Fpstate<S>) -> Option<u32> {
        (self.xcr0_allowed & cfg.policy().dynamic)
            .difference(fp.info().features)
            .indices()
            .next()
    }

    /// The guest writes IA32_XFD (or a VMM restores it): accept `xfd` if the
    /// guest may arm every bit, and clear XSTATE_BV\[i\] in the guest's saved
    /// fpstate `fp` for every armed component. Returns the components whose
    /// state was dropped that way.
    ///
    /// The clearing is Linux's January 2026 fix "x86/fpu: Clear XSTATE_BV\[i\]
    /// in guest XSAVE state whenever XFD\[i\]=1" (KVM does it on guest XFD
    /// writes and on `KVM_SET_XSAVE`, see [`crate::uabi::import_guest`]): the
    /// host restores the guest fpstate with the guest's XFD in force, and
    /// XRSTOR(S) of live state of an armed component raises #NM in the host
    /// (SDM vol. 1 13.14). Nothing is lost the guest could see: with XFD\[i\]
    /// set, its next use of component i faults, and the guest's #NM handler
    /// starts it from its init state. On error nothing changes.
    ///
    /// # Errors
    /// [`GuestError::XfdNotAllowed`] (the guest gets #GP).
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::config::{Configs, Policy};
    /// # use xstate::fpstate::{Fpstate, Owner};
    /// # use xstate::guest::{GuestError, GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// # let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    /// let mut g = GuestXsave::new(&e, &all, e.xcr0_supported(), XFeatures::empty(), XsaveFlags::of(&e))?;
    /// # #[repr(C, align(64))] struct Storage([u8; 16384]);
    /// # let mut storage = Storage([0; 16384]);
    /// let mut fp = Fpstate::new_in(&cfg, Owner::Guest, &mut storage.0[..]).unwrap();
    /// assert_eq!(g.xfd_allowed(), XFeatures::XTILE_DATA);
    /// assert_eq!(g.set_xfd(XFeatures::XTILE_DATA, &mut fp), Ok(XFeatures::empty()));
    /// assert!(matches!(g.set_xfd(XFeatures::XTILE_CFG, &mut fp), Err(GuestError::XfdNotAllowed { .. })));
    /// assert_eq!(g.xfd(), XFeatures::XTILE_DATA);
    /// # Ok::<(), GuestError>(())
    /// ```
    pub fn set_xfd<S: Storage>(
        &mut self,
        xfd: XFeatures,
        fp: &mut Fpstate<S>,
    ) -> Result<XFeatures, GuestError> {
        self.check_xfd(xfd)?;
        self.xfd = xfd;
        Ok(crate::uabi::clear_xstate_bv(fp, xfd))
    }

    /// The guest writes IA32_XFD_ERR (or a VMM restores it): the components
    /// whose use faulted; it never touches the fpstate.
    ///
    /// # Errors
    /// [`GuestError::XfdNotAllowed`] (the guest gets #GP).
    pub fn set_xfd_err(&mut self, xfd_err: XFeatures) -> Result<(), GuestError> {
        self.check_xfd(xfd_err)?;
        self.xfd_err = xfd_err;
        Ok(())
    }

    /// The registers that must travel beside this guest's XSAVE buffer (see
    /// [`SideReg`]): XCR0 always, IA32_XSS when the guest is shown XSAVES,
    /// IA32_XFD and IA32_XFD_ERR when it is shown XFD, and the CET registers
    /// of each CET component it may enable in IA32_XSS (CET_U: U_CET and
    /// PL3_SSP; CET_S: S_CET, PL0..2_SSP and the interrupt SSP table; either:
    /// SSP). The XSAVE buffer of `KVM_GET_XSAVE` holds user components only,
    /// so the CET state travels as these registers.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestXsave, SideReg, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let g = GuestXsave::new(&e, &all, e.xcr0_supported(), XFeatures::CET_U, XsaveFlags::of(&e)).unwrap();
    /// let regs: Vec<SideReg> = g.side_regs().iter().collect();
    /// assert_eq!(regs, [SideReg::Xcr0, SideReg::Xss, SideReg::UCet, SideReg::Pl3Ssp, SideReg::Ssp]);
    /// assert_eq!(SideReg::Pl3Ssp.msr(), Some(0x6a7));
    /// ```
    pub fn side_regs(&self) -> SideRegs {
        let mut r = SideRegs::EMPTY.with(SideReg::Xcr0);
        if self.flags.contains(XsaveFlags::XSAVES) {
            r = r.with(SideReg::Xss);
        }
        if self.flags.contains(XsaveFlags::XFD) {
            r = r.with(SideReg::Xfd).with(SideReg::XfdErr);
        }
        if self.xss_allowed.contains(XFeatures::CET_U) {
            r = r.with(SideReg::UCet).with(SideReg::Pl3Ssp);
        }
        if self.xss_allowed.contains(XFeatures::CET_S) {
            r = r
                .with(SideReg::SCet)
                .with(SideReg::Pl0Ssp)
                .with(SideReg::Pl1Ssp)
                .with(SideReg::Pl2Ssp)
                .with(SideReg::IntSspTab);
        }
        if self
            .xss_allowed
            .intersects(XFeatures::CET_U.union(XFeatures::CET_S))
        {
            r = r.with(SideReg::Ssp);
        }
        r
    }

    /// A side state for this guest: every register of
    /// [`GuestXsave::side_regs`], XCR0, IA32_XSS, IA32_XFD and IA32_XFD_ERR
    /// filled from this guest, the CET registers 0 for the VMM to fill from
    /// `KVM_GET_MSRS` / `KVM_GET_ONE_REG`.
    pub fn side_state(&self) -> SideState {
        let mut s = SideState::new(self.side_regs());
        *s.value_mut(SideReg::Xcr0) = self.xcr0.bits();
        *s.value_mut(SideReg::Xss) = self.xss.bits();
        *s.value_mut(SideReg::Xfd) = self.xfd.bits();
        *s.value_mut(SideReg::XfdErr) = self.xfd_err.bits();
        s
    }

    /// Restore a snapshot's side state into this guest: the snapshot must
    /// hold exactly [`GuestXsave::side_regs`] (a missing register would be left
    /// at its reset value, an extra one dropped), and XCR0, IA32_XSS, IA32_XFD
    /// and IA32_XFD_ERR must be values the guest could have written. Every
    /// check runs before anything changes; then XCR0, IA32_XSS and XFD are
    /// set as [`GuestXsave::set_xcr0`], [`GuestXsave::set_xss`] and
    /// [`GuestXsave::set_xfd`] do (so `fp` drops state XFD arms). The CET
    /// registers are the VMM's to write with `KVM_SET_MSRS`.
    ///
    /// # Errors
    /// [`GuestError::MissingSideReg`], [`GuestError::UnexpectedSideReg`], the
    /// XSETBV errors, [`GuestError::XssNotAllowed`],
    /// [`GuestError::XfdNotAllowed`].
    pub fn restore_side<S: Storage>(
        &mut self,
        side: &SideState,
        fp: &mut Fpstate<S>,
    ) -> Result<(), GuestError> {
        let want = self.side_regs();
        for reg in SideReg::ALL {
            match (want.contains(reg), side.regs.contains(reg)) {
                (true, false) => return Err(GuestError::MissingSideReg { reg }),
                (false, true) => return Err(GuestError::UnexpectedSideReg { reg }),
                _ => {}
            }
        }
        let get = |reg: SideReg| XFeatures::from_bits_retain(side.value(reg));
        let xcr0 = get(SideReg::Xcr0);
        check_xcr0(xcr0, self.xcr0_allowed)?;
        let xss = if want.contains(SideReg::Xss) {
            get(SideReg::Xss)
        } else {
            XFeatures::empty()
        };
        if !self.xss_allowed.contains(xss) {
            return Err(GuestError::XssNotAllowed {
                xss: xss.bits(),
                allowed: self.xss_allowed.bits(),
            });
        }
        let (xfd, xfd_err) = if want.contains(SideReg::Xfd) {
            (get(SideReg::Xfd), get(SideReg::XfdErr))
        } else {
            (XFeatures::empty(), XFeatures::empty())
        };
        self.check_xfd(xfd)?;
        self.check_xfd(xfd_err)?;
        self.xcr0 = xcr0;
        self.xss = xss;
        self.xfd_err = xfd_err;
        self.update_sizes();
        self.set_xfd(xfd, fp)?;
        Ok(())
    }

    /// This guest's leaf 0xD as the fixed table a VMM installs (or a
    /// confidential guest's CPUID page holds): [`GuestXsave::subleaves`] at the
    /// current XCR0 and IA32_XSS. Set those to what the guest's kernel will
    /// write (for Linux: [`GuestXsave::linux_boot`] does it) before taking a
    /// table whose size reports the kernel checks.
    pub fn leaf_table(&self) -> LeafTable {
        let mut t = LeafTable::default();
        for (sub, regs) in self.subleaves() {
            if let Some(slot) = t.entries.get_mut(sub as usize) {
                *slot = Some(regs);
            }
        }
        t
    }

    /// What Linux 6.18 booting in this guest does with its XSAVE support:
    /// the guest is taken to the XCR0 and IA32_XSS Linux writes (its
    /// `max_features` from this leaf) and [`linux_xsave`] judges the
    /// resulting [`LeafTable`].
    ///
    /// # Errors
    /// The [`LinuxRefusal`] Linux would log before disabling XSAVE.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, perm::PermSet, XFeatures};
    /// # use xstate::guest::{GuestXsave, XsaveFlags};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// # let all = PermSet { features: e.supported(), size: 0, user_size: 0 };
    /// let g = GuestXsave::new(&e, &all, e.xcr0_supported(), e.xss_supported(), XsaveFlags::of(&e)).unwrap();
    /// let linux = g.linux_boot().unwrap();
    /// assert_eq!(linux.features, e.xcr0_supported() | XFeatures::CET_U | XFeatures::CET_S);
    /// assert_eq!(linux.context_size, e.compacted_size(linux.features));
    /// assert!(linux.compacted);
    /// ```
    pub fn linux_boot(&self) -> Result<LinuxXsave, LinuxRefusal> {
        linux_xsave(&self.at_linux_boot()?.leaf_table())
    }

    /// This guest once Linux 6.18 has booted in it: XCR0 and IA32_XSS set to
    /// the features Linux enables from this leaf (its `max_features`; IA32_XSS
    /// only with XSAVES). Its [`GuestXsave::leaf_table`] is the table Linux's
    /// size checks read.
    ///
    /// # Errors
    /// [`LinuxRefusal::Xcr0Faults`] if that XCR0 is not one XSETBV takes.
    pub fn at_linux_boot(&self) -> Result<GuestXsave, LinuxRefusal> {
        let max = linux_max_features(self.leaf(0), self.leaf(1));
        let mut g = self.clone();
        let xcr0 = max & self.xcr0_allowed;
        g.set_xcr0(xcr0)
            .map_err(|_| LinuxRefusal::Xcr0Faults { xcr0: xcr0.bits() })?;
        // Linux writes IA32_XSS only with XSAVES; its max features then hold
        // no supervisor component without it.
        g.xss = max & self.xss_allowed;
        g.update_sizes();
        Ok(g)
    }
}

/// Only leaf 0xD is answered (every other leaf reads as zero), so
/// [`Enumeration::from_cpuid`] reads back exactly what the guest would. The
/// guest runs on the host's SSE unit: its MXCSR_MASK is the host's.
impl CpuidSource for GuestXsave {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        if leaf == 0xd {
            self.leaf(subleaf)
        } else {
            CpuidResult::default()
        }
    }

    fn mxcsr_mask(&self) -> Option<u32> {
        Some(self.host.mxcsr_mask())
    }
}
