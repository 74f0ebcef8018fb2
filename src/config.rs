//! Boot-time fpstate configurations, derived once from an [`Enumeration`] and a
//! [`Policy`]: the kernel config (compacted buffers), the user config (standard
//! form, the ABI size) and the guest config, each with max and default features
//! and sizes, like Linux's `fpu_kernel_cfg`, `fpu_user_cfg` and guest defaults.

use core::fmt;

use crate::enumerate::Enumeration;
use crate::feature::XFeatures;
use crate::layout::{Form, Layout};

/// What a kernel chooses to do with the components the CPU offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Components the kernel enables (XCR0 and IA32_XSS), independent ones included.
    pub enabled: XFeatures,
    /// User components allocated only on request and armed behind XFD until then.
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
        if !e.xfd {
            enabled -= XFeatures::DYNAMIC;
        }
        if e.xsaves {
            enabled |= (LINUX_SUPERVISOR | XFeatures::INDEPENDENT) & e.xss_supported() & usable;
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
    /// Dynamic components must be enabled, user and XFD-capable.
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
                "dynamic components {mask:#x} must be enabled, user and XFD-capable"
            ),
            Self::BadSupervisorGroup { mask } => write!(
                f,
                "guest-only/independent components {mask:#x} must be enabled supervisor components in one group only"
            ),
        }
    }
}

/// One configuration: which components its buffers hold and how big they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The three configurations a kernel keeps, plus what they were derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configs {
    /// Host kernel fpstates (compacted with XSAVEC/XSAVES, standard otherwise).
    pub kernel: FpuConfig,
    /// The user ABI (standard form): signal frames, ptrace, KVM_GET/SET_XSAVE.
    pub user: FpuConfig,
    /// Guest fpstates: like the kernel's, plus the guest-only components.
    pub guest: FpuConfig,
    /// The policy.
    pub policy: Policy,
    /// The value to load into XCR0.
    pub xcr0: XFeatures,
    /// The value to load into IA32_XSS (fpstate components and independent ones).
    pub xss: XFeatures,
    /// MXCSR bits the CPU supports (what FXSAVE reports as MXCSR_MASK). CPUID does
    /// not tell; every CPU with XSAVE has DAZ, so the default is 0xffff. A kernel
    /// sets what it read at boot ([`crate::insn::read_mxcsr_mask`]): AMD CPUs
    /// report 0x2ffff, and with the default Linux-valid MXCSR values are refused.
    pub mxcsr_mask: u32,
    /// Kernel-form layouts of host default, host max, guest default, guest max.
    layouts: [Layout; 4],
    /// The CPU has XSAVEOPT (CPUID(0xD,1).EAX\[0\]).
    xsaveopt: bool,
}

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
    /// assert!(!c.kernel.default_features.contains(XFeatures::CET_S));
    /// assert!(c.guest.default_features.contains(XFeatures::CET_S));
    /// assert_eq!(c.guest.default_size, c.kernel.default_size + 24);
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
        if !sup.is_empty() && !e.xsaves {
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
        let bad = p.dynamic - (p.enabled & xfd_capable);
        if !bad.is_empty() {
            return Err(ConfigError::BadDynamic { mask: bad.bits() });
        }
        let bad = ((p.guest_only | p.independent) - sup) | (p.guest_only & p.independent);
        if !bad.is_empty() {
            return Err(ConfigError::BadSupervisorGroup { mask: bad.bits() });
        }
        let form = if e.xsavec || e.xsaves {
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
        Ok(Self {
            kernel: cfg(host_max, host_default, form, &size),
            user: cfg(user_max, user_max - p.dynamic, Form::Standard, &std_size),
            guest: cfg(guest_max, guest_default, form, &size),
            policy: *p,
            xcr0: user_max,
            xss: sup,
            mxcsr_mask: 0xffff,
            layouts,
            xsaveopt: e.xsaveopt,
        })
    }

    /// Whether the CPU has XSAVEOPT: a standard-form save uses it, else plain
    /// XSAVE (Linux's order: XSAVES, XSAVEC, XSAVEOPT, XSAVE).
    #[inline]
    pub const fn has_xsaveopt(&self) -> bool {
        self.xsaveopt
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
}
