//! Boot-time fpstate configurations, derived once from an [`Enumeration`] and a
//! [`Policy`]: the kernel config (compacted buffers), the user config (standard
//! form, the ABI size) and the guest config, each with max and default features
//! and sizes, like Linux's `fpu_kernel_cfg`, `fpu_user_cfg` and guest defaults.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::enumerate::Enumeration;
use crate::feature::XFeatures;
use crate::layout::{CopyPlan, Form, Layout};

/// What a kernel chooses to do with the components the CPU offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Components the kernel enables (XCR0 and IA32_XSS), independent ones included.
    pub enabled: XFeatures,
    /// User components allocated only on request and armed behind XFD until then:
    /// a subset of [`XFeatures::DYNAMIC`] (AMX TILEDATA), the only ones a
    /// permission request grants.
    pub dynamic: XFeatures,
    /// Supervisor components the kernel saves on its own, never in fpstates (LBR).
    pub independent: XFeatures,
    /// Supervisor components with space only in guest fpstates (CET_S).
    pub guest_only: XFeatures,
}

/// The user components Linux knows how to keep in fpstates.
pub const LINUX_USER: XFeatures = XFeatures::LEGACY
    .union(XFeatures::AVX)
    .union(XFeatures::BNDREGS)
    .union(XFeatures::BNDCSR)
    .union(XFeatures::AVX512)
    .union(XFeatures::PKRU)
    .union(XFeatures::XTILE)
    .union(XFeatures::APX);
/// The supervisor components Linux keeps in fpstates (Linux 6.18+: CET_S guest-only).
pub const LINUX_SUPERVISOR: XFeatures = XFeatures::PASID
    .union(XFeatures::CET_U)
    .union(XFeatures::CET_S);

impl Policy {
    /// Linux 6.18's policy for this CPU (`fpu__init_system_xstate`): every
    /// component Linux knows that the CPU supports and whose CPUID feature flag is
    /// set ([`Enumeration::usable`]: a PKU-less Zen 2 gets 0x7, not the 0x207 its
    /// leaf 0xD lists); supervisor ones (PASID, CET_U, CET_S) and the independent LBR
    /// only with XSAVES; AMX TILEDATA dynamic, and only with XFD
    /// (CPUID(0xD,1).EAX\[4\]; without it Linux drops the dynamic components and keeps
    /// TILECFG); LBR independent; CET_S guest-only.
    ///
    /// Linux without CPUID's FPU or SSE flag does not use XSAVE at all; the crate
    /// has no such mode and always keeps x87 and SSE.
    pub fn linux(e: &Enumeration) -> Self {
        let usable = e.usable();
        let mut enabled = LINUX_USER & e.xcr0_supported() & usable;
        if !e.xfd() {
            enabled -= XFeatures::DYNAMIC;
        }
        if e.xsaves() {
            enabled |= LINUX_SUPERVISOR.union(XFeatures::INDEPENDENT) & e.xss_supported() & usable;
        }
        Self {
            enabled,
            dynamic: XFeatures::DYNAMIC & enabled,
            independent: XFeatures::INDEPENDENT & enabled,
            guest_only: XFeatures::GUEST_ONLY & enabled,
        }
    }

    /// Like [`Policy::linux`] but without the guest-only scheme: CET_S, where
    /// supported, sits in every fpstate ("eat the 24 bytes").
    pub fn linux_without_guest_only(e: &Enumeration) -> Self {
        Self {
            guest_only: XFeatures::empty(),
            ..Self::linux(e)
        }
    }
}

/// Why a policy was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The policy enables components the CPU does not support.
    Unsupported {
        /// The unsupported bits.
        mask: u64,
    },
    /// The policy enables supported components that are not usable: their CPUID
    /// feature flag is clear, or they are outside the catalog
    /// ([`Enumeration::usable`]). Their sizes were never checked against the
    /// architecture, and Linux never enables them.
    NotUsable {
        /// The offending bits.
        mask: u64,
    },
    /// Supervisor components need XSAVES, which the CPU lacks.
    NoXsaves {
        /// The supervisor bits asked for.
        mask: u64,
    },
    /// x87 and SSE must be enabled.
    LegacyDisabled,
    /// Dynamic components must be enabled, XFD-capable and grantable by a
    /// permission request (`XFeatures::DYNAMIC`: AMX TILEDATA).
    BadDynamic {
        /// The offending bits.
        mask: u64,
    },
    /// Guest-only and independent components must be enabled supervisor components,
    /// and a component cannot be both.
    BadSupervisorGroup {
        /// The offending bits.
        mask: u64,
    },
}

impl core::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unsupported { mask } => {
                write!(f, "policy enables unsupported components {mask:#x}")
            }
            Self::NotUsable { mask } => write!(
                f,
                "policy enables components {mask:#x} whose CPUID feature flag is clear"
            ),
            Self::NoXsaves { mask } => {
                write!(
                    f,
                    "supervisor components {mask:#x} need XSAVES, which the CPU lacks"
                )
            }
            Self::LegacyDisabled => write!(f, "policy must enable x87 and SSE"),
            Self::BadDynamic { mask } => write!(
                f,
                "dynamic components {mask:#x} must be enabled, XFD-capable and requestable (AMX TILEDATA)"
            ),
            Self::BadSupervisorGroup { mask } => write!(
                f,
                "guest-only/independent components {mask:#x} must be enabled supervisor components in one group only"
            ),
        }
    }
}

/// One configuration: which components its buffers hold and how big they are.
/// Made only by [`Configs::new`], read through [`Configs::kernel`],
/// [`Configs::user`] and [`Configs::guest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FpuConfig {
    /// Every component a buffer of this config can ever hold.
    pub max_features: XFeatures,
    /// What a fresh buffer holds (dynamic components excluded, and for the host
    /// kernel config, guest-only ones too).
    pub default_features: XFeatures,
    /// Buffer size for `max_features`.
    pub max_size: u32,
    /// Buffer size for `default_features`.
    pub default_size: u32,
    /// The buffer format.
    pub form: Form,
}

/// The handle every fpstate belongs to: the CPU's [`Enumeration`], the
/// [`Policy`] applied to it, and the three configurations derived from them
/// (Linux's `fpu_kernel_cfg`, `fpu_user_cfg` and guest defaults).
///
/// Built and checked once by [`Configs::new`], then read through accessors:
/// nothing can make the configs disagree with the enumeration they came from.
/// Every fpstate operation takes this one handle, and an fpstate remembers the
/// handle it was made under (this value or a clone of it): handing it to any
/// other, even one derived the same way, is refused
/// ([`ForeignFpstate`](crate::error::ForeignFpstate)). A kernel makes its
/// configs once at boot and shares that value.
///
/// Nothing outside the crate can change a config once made, nor make one:
///
/// ```compile_fail
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}, layout::Form};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-knights-landing-xeon-phi-7210.txt")).unwrap()).unwrap();
/// let mut cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
/// cfg.kernel.form = Form::Compacted; // a standard-form CPU's configs, claiming compacted buffers
/// ```
///
/// ```compile_fail
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration};
/// # let mut e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-haswell-core-i7-4770.txt")).unwrap()).unwrap();
/// e.xsavec = true; // an instruction the CPU lacks
/// ```
///
/// ```compile_fail
/// # use xstate::{config::FpuConfig, layout::Form, XFeatures};
/// let forged = FpuConfig { max_features: XFeatures::all(), default_features: XFeatures::all(),
///     max_size: 576, default_size: 576, form: Form::Compacted };
/// ```
#[derive(Clone, Debug)]
pub struct Configs {
    e: Enumeration,
    kernel: FpuConfig,
    user: FpuConfig,
    guest: FpuConfig,
    policy: Policy,
    xcr0: XFeatures,
    xss: XFeatures,
    /// Kernel-form layouts of host default, host max, guest default, guest max.
    layouts: [Layout; 4],
    /// For each of `layouts`, the copies between it and the standard form of its
    /// user components (`uabi`'s export and import of a whole image).
    plans: [Option<CopyPlan>; 4],
    /// This handle's identity (shared by its clones), stamped into each fpstate.
    stamp: u64,
}

/// The next [`Configs`] identity. 2^64 constructions never happen.
static NEXT_STAMP: AtomicU64 = AtomicU64::new(1);

/// Configs are equal when they state the same configuration, whether or not
/// they are the same handle (an fpstate belongs to one handle and its clones).
impl PartialEq for Configs {
    fn eq(&self, o: &Self) -> bool {
        let Self {
            e,
            kernel,
            user,
            guest,
            policy,
            xcr0,
            xss,
            layouts,
            // Derived from `e`, `user` and `layouts`.
            plans: _,
            stamp: _,
        } = self;
        (e, kernel, user, guest, policy, xcr0, xss, layouts)
            == (
                &o.e, &o.kernel, &o.user, &o.guest, &o.policy, &o.xcr0, &o.xss, &o.layouts,
            )
    }
}

impl Eq for Configs {}

impl Configs {
    /// Derive the configs.
    ///
    /// # Errors
    /// [`ConfigError`] if the policy asks for what the CPU lacks (a supported
    /// component whose CPUID feature flag is clear included) or is inconsistent.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}, XFeatures};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// let c = Configs::new(&e, &Policy::linux(&e)).unwrap();
    /// assert!(!c.kernel().default_features.contains(XFeatures::CET_S));
    /// assert!(c.guest().default_features.contains(XFeatures::CET_S));
    /// assert_eq!(c.guest().default_size, c.kernel().default_size + 24);
    /// ```
    pub fn new(e: &Enumeration, p: &Policy) -> Result<Self, ConfigError> {
        let bad = p.enabled - e.supported();
        if !bad.is_empty() {
            return Err(ConfigError::Unsupported { mask: bad.bits() });
        }
        let bad = p.enabled - e.usable();
        if !bad.is_empty() {
            return Err(ConfigError::NotUsable { mask: bad.bits() });
        }
        let sup = p.enabled & e.xss_supported();
        if !sup.is_empty() && !e.xsaves() {
            return Err(ConfigError::NoXsaves { mask: sup.bits() });
        }
        if !p.enabled.contains(XFeatures::LEGACY) {
            return Err(ConfigError::LegacyDisabled);
        }
        let xfd_capable = XFeatures::from_bits_retain(
            e.xcr0_supported()
                .indices()
                .filter(|&i| e.components()[i as usize].xfd)
                .fold(0, |m, i| m | 1 << i),
        );
        // Only what a permission request can grant may wait for one: a dynamic
        // component outside `XFeatures::DYNAMIC` could never be allocated.
        let bad = p.dynamic - (p.enabled & xfd_capable & XFeatures::DYNAMIC);
        if !bad.is_empty() {
            return Err(ConfigError::BadDynamic { mask: bad.bits() });
        }
        let bad = ((p.guest_only | p.independent) - sup) | (p.guest_only & p.independent);
        if !bad.is_empty() {
            return Err(ConfigError::BadSupervisorGroup { mask: bad.bits() });
        }
        let form = if e.xsavec() || e.xsaves() {
            Form::Compacted
        } else {
            Form::Standard
        };
        let size = |mask: XFeatures| match form {
            Form::Compacted => e.compacted_size(mask),
            Form::Standard => e.standard_size(mask),
        };
        let user_max = p.enabled & e.xcr0_supported();
        let guest_max = p.enabled - p.independent;
        let host_max = guest_max - p.guest_only;
        let guest_default = guest_max - p.dynamic;
        let host_default = host_max - p.dynamic;
        let cfg = |max, default, form, size: &dyn Fn(XFeatures) -> u32| FpuConfig {
            max_features: max,
            default_features: default,
            max_size: size(max),
            default_size: size(default),
            form,
        };
        let std_size = |m: XFeatures| e.standard_size(m);
        let layout = |m: XFeatures| match form {
            Form::Compacted => Layout::compacted(e, m),
            Form::Standard => Layout::standard(e, m & e.xcr0_supported()),
        };
        let layouts = [
            layout(host_default).map_err(|_| ConfigError::Unsupported {
                mask: host_default.bits(),
            })?,
            layout(host_max).map_err(|_| ConfigError::Unsupported {
                mask: host_max.bits(),
            })?,
            layout(guest_default).map_err(|_| ConfigError::Unsupported {
                mask: guest_default.bits(),
            })?,
            layout(guest_max).map_err(|_| ConfigError::Unsupported {
                mask: guest_max.bits(),
            })?,
        ];
        let plans = layouts
            .each_ref()
            .map(|l| CopyPlan::new(e, l, user_max & l.mask()));
        Ok(Self {
            e: e.clone(),
            kernel: cfg(host_max, host_default, form, &size),
            user: cfg(user_max, user_max - p.dynamic, Form::Standard, &std_size),
            guest: cfg(guest_max, guest_default, form, &size),
            policy: *p,
            xcr0: user_max,
            xss: sup,
            layouts,
            plans,
            stamp: NEXT_STAMP.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The enumeration these configs were derived from.
    #[inline]
    pub const fn enumeration(&self) -> &Enumeration {
        &self.e
    }

    /// Host kernel fpstates (compacted with XSAVEC/XSAVES, standard otherwise).
    #[inline]
    pub const fn kernel(&self) -> &FpuConfig {
        &self.kernel
    }

    /// The user ABI (standard form): signal frames, ptrace, KVM_GET/SET_XSAVE.
    #[inline]
    pub const fn user(&self) -> &FpuConfig {
        &self.user
    }

    /// Guest fpstates: like the kernel's, plus the guest-only components.
    #[inline]
    pub const fn guest(&self) -> &FpuConfig {
        &self.guest
    }

    /// The policy the configs apply.
    #[inline]
    pub const fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The value to load into XCR0.
    #[inline]
    pub const fn xcr0(&self) -> XFeatures {
        self.xcr0
    }

    /// The value to load into IA32_XSS (fpstate components and independent ones).
    #[inline]
    pub const fn xss(&self) -> XFeatures {
        self.xss
    }

    /// MXCSR bits the CPU supports (FXSAVE's MXCSR_MASK), from the enumeration
    /// ([`Enumeration::mxcsr_mask`]): user MXCSR values outside it are refused,
    /// and the uabi export writes it.
    #[inline]
    pub const fn mxcsr_mask(&self) -> u32 {
        self.e.mxcsr_mask()
    }

    /// The stamp an fpstate made under these configs carries.
    #[inline]
    pub(crate) const fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Whether the CPU has XSAVEOPT (CPUID(0xD,1).EAX\[0\]): a standard-form save
    /// uses it, else plain XSAVE (Linux's order: XSAVES, XSAVEC, XSAVEOPT, XSAVE).
    #[inline]
    pub const fn has_xsaveopt(&self) -> bool {
        self.e.xsaveopt()
    }

    /// The RFBM every fpstate save and restore uses: all fpstate components, the
    /// guest-only ones included. Restoring a host fpstate (which has no space for
    /// them, XCOMP_BV bit clear) with this RFBM puts them in their init state, so no
    /// guest value survives into a host task.
    #[inline]
    pub const fn rfbm(&self) -> XFeatures {
        self.guest.max_features
    }

    /// The precomputed kernel-form layout for an fpstate holding `features`, if
    /// `features` is one of the four sets fpstates have under this config (host or
    /// guest, default or max). Four comparisons, no component loop.
    #[inline]
    pub fn layout_of(&self, features: XFeatures) -> Option<&Layout> {
        self.layouts.iter().find(|l| l.mask() == features)
    }

    /// Which precomputed copy plan serves a kernel buffer holding `features`,
    /// where `features` is one of the usual sets ([`Configs::layout_of`]) and
    /// the plan exists: looked up once, when an fpstate is made, and kept in
    /// it ([`Configs::copy_plan`] takes it back).
    pub(crate) fn plan_index(&self, features: XFeatures) -> Option<PlanIndex> {
        let i = self.layouts.iter().position(|l| l.mask() == features)?;
        self.plans.get(i)?.as_ref()?;
        Some(PlanIndex(u8::try_from(i).ok()?))
    }

    /// The kernel-form layout and copy plan of [`Configs::plan_index`]: one
    /// bounds check, no comparison of feature sets. The index is only
    /// meaningful for the handle it came from (and its clones); callers have
    /// checked that the fpstate carrying it belongs to this handle.
    #[inline]
    pub(crate) fn copy_plan(&self, i: PlanIndex) -> Option<(&Layout, &CopyPlan)> {
        let i = usize::from(i.0);
        Some((self.layouts.get(i)?, self.plans.get(i)?.as_ref()?))
    }
}

/// A position in [`Configs`]' precomputed layouts whose copy plan exists
/// (kept by each fpstate made under those configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlanIndex(u8);
