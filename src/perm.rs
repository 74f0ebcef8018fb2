//! Per-process permission sets for dynamic components, like Linux's
//! `ARCH_GET/REQ_XCOMP_PERM` (tasks) and `ARCH_GET/REQ_XCOMP_GUEST_PERM` (guests).
//!
//! A process starts permitted its config's default features. A request names one
//! dynamic component; once granted, the process's fpstates may grow to hold it (on
//! the first-use XFD fault). Guest-only components are in the guest set from the
//! start and can never enter the task set.

use core::fmt;

use crate::config::Configs;
use crate::feature::{XFeature, XFeatures};
use crate::layout::Form;

/// Why a permission request was refused. [`PermError::errno`] gives Linux's code,
/// the one place the crate maps these errors to errnos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PermError {
    /// Not a catalogued component number: 20 and above, up to `u64::MAX`
    /// (Linux: `idx >= XFEATURE_MAX` on the `unsigned long` argument, EINVAL).
    Invalid {
        /// The number asked for, at the syscall's width.
        index: u64,
    },
    /// A dynamic component the configs do not enable (CPU or policy lacks it;
    /// Linux: not in `fpu_user_cfg.max_features`, EOPNOTSUPP).
    Unsupported {
        /// The component.
        index: u32,
    },
    /// A component no request is for: only the dynamic ones ([`XFeatures::DYNAMIC`],
    /// AMX TILEDATA) are requested; the others are always permitted or never
    /// (Linux: no entry in `xstate_prctl_req[]`, EOPNOTSUPP).
    NotDynamic {
        /// The component.
        index: u32,
    },
    /// A guest fpstate already exists: the guest set is locked (Linux: EBUSY).
    Locked,
    /// The caller's check refused the new user-ABI size: the signal stack is too
    /// small for the frames the task would then need (Linux: ENOSPC).
    SigStackTooSmall {
        /// The user (standard-form) size the grant would need.
        user_size: u32,
    },
}

/// Linux's errno values (x86-64), positive.
mod errno {
    pub const EBUSY: i32 = 16;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EOPNOTSUPP: i32 = 95;
}

impl PermError {
    /// The Linux errno (positive) `arch_prctl(ARCH_REQ_XCOMP_PERM)` and
    /// `arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM)` return for this error (Linux 6.18).
    pub const fn errno(self) -> i32 {
        match self {
            Self::Invalid { .. } => errno::EINVAL,
            Self::Unsupported { .. } | Self::NotDynamic { .. } => errno::EOPNOTSUPP,
            Self::Locked => errno::EBUSY,
            Self::SigStackTooSmall { .. } => errno::ENOSPC,
        }
    }
}

impl core::error::Error for PermError {}

impl fmt::Display for PermError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Invalid { index } => {
                write!(f, "{index} is not a component number Linux knows (0..=19)")
            }
            Self::Unsupported { index } => write!(f, "component {index} is not enabled"),
            Self::NotDynamic { index } => {
                write!(
                    f,
                    "component {index} is not dynamic: only AMX TILEDATA is requested"
                )
            }
            Self::Locked => write!(f, "guest permissions are locked: a guest fpstate exists"),
            Self::SigStackTooSmall { user_size } => {
                write!(
                    f,
                    "signal stack too small for a {user_size}-byte XSAVE area"
                )
            }
        }
    }
}

/// One permission set and the buffer sizes it implies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermSet {
    /// Components fpstates of this set may hold.
    pub features: XFeatures,
    /// Kernel buffer size for `features`.
    pub size: u32,
    /// User-ABI (standard-form) size for the user part of `features`.
    pub user_size: u32,
}

/// Which of a process's two sets a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermKind {
    /// Host tasks (`ARCH_REQ_XCOMP_PERM`).
    Task,
    /// Guests the process runs (`ARCH_REQ_XCOMP_GUEST_PERM`).
    Guest,
}

/// A process's task and guest permission sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessPerms {
    task: PermSet,
    guest: PermSet,
    guest_locked: bool,
}

impl ProcessPerms {
    /// The permissions of a new process: each set holds its config's defaults.
    pub fn new(cfg: &Configs) -> Self {
        let set = |c: &crate::config::FpuConfig| PermSet {
            features: c.default_features,
            size: c.default_size,
            user_size: cfg.user().default_size,
        };
        Self {
            task: set(cfg.kernel()),
            guest: set(cfg.guest()),
            guest_locked: false,
        }
    }

    /// The current set of one kind: every component it grants, the
    /// supervisor ones of its config included (see [`ProcessPerms::reported`]
    /// for what Linux tells user space).
    #[inline]
    pub const fn get(&self, kind: PermKind) -> &PermSet {
        match kind {
            PermKind::Task => &self.task,
            PermKind::Guest => &self.guest,
        }
    }

    /// What Linux reports of a set: `ARCH_GET_XCOMP_PERM` (task) and
    /// `ARCH_GET_XCOMP_GUEST_PERM` (guest) return its user components only, so
    /// a Zen 4's CET_U, in every host fpstate, is not among them.
    #[inline]
    pub fn reported(&self, kind: PermKind) -> XFeatures {
        self.get(kind).features & XFeatures::USER
    }

    /// Whether the guest set is locked.
    #[inline]
    pub const fn guest_locked(&self) -> bool {
        self.guest_locked
    }

    /// Lock the guest set; a hypervisor calls this when it creates the process's
    /// first guest fpstate (Linux does it on vCPU creation), because guest buffers
    /// are sized from the set and must not change under a running vCPU.
    pub fn lock_guest(&mut self) {
        self.guest_locked = true;
    }

    /// The permissions Linux reports for a process: `task` as
    /// `ARCH_GET_XCOMP_PERM` returns it, `guest` as `ARCH_GET_XCOMP_GUEST_PERM`
    /// does. A VMM that asked the kernel (`ARCH_REQ_XCOMP_GUEST_PERM`) builds
    /// the crate's sets from what the kernel granted instead of asking twice.
    ///
    /// Linux reports user components only; the supervisor components a set
    /// holds (a guest's CET_S) are the config's defaults, which every set keeps.
    /// Every dynamic component reported is granted as by [`Self::request`] (the
    /// kernel already checked the signal stacks); the guest set is not locked.
    ///
    /// # Errors
    /// [`PermError::Invalid`] for a bit past the catalog,
    /// [`PermError::Unsupported`] for a component outside the user config, and
    /// [`PermError::NotDynamic`] for a non-dynamic component the set does not
    /// hold by default (the kernel never reports one).
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}, XFeatures};
    /// # use xstate::perm::{PermKind, ProcessPerms};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
    /// let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    /// let default = cfg.kernel().default_features & cfg.user().max_features;
    /// let p = ProcessPerms::from_linux(&cfg, default, default | XFeatures::XTILE_DATA).unwrap();
    /// assert!(!p.get(PermKind::Task).features.contains(XFeatures::XTILE_DATA));
    /// assert!(p.get(PermKind::Guest).features.contains(XFeatures::XTILE_DATA | XFeatures::CET_S));
    /// ```
    pub fn from_linux(cfg: &Configs, task: XFeatures, guest: XFeatures) -> Result<Self, PermError> {
        let mut p = Self::new(cfg);
        for (kind, value) in [(PermKind::Task, task), (PermKind::Guest, guest)] {
            for index in value.indices() {
                let bit = XFeature::from_index(index)
                    .ok_or(PermError::Invalid {
                        index: index.into(),
                    })?
                    .mask();
                if !cfg.user().max_features.contains(bit) {
                    return Err(PermError::Unsupported { index });
                }
                if p.get(kind).features.contains(bit) {
                    continue;
                }
                p.request(cfg, kind, index.into(), |_| true)?;
            }
        }
        Ok(p)
    }

    /// Request component `index` for the set `kind`, with Linux 6.18's checks in
    /// Linux's order (`xstate_request_perm`): a number past the catalog is
    /// [`PermError::Invalid`], whatever its width (`index` is `arch_prctl`'s
    /// `unsigned long`, so a kernel passes the syscall argument unchanged:
    /// 0x1_0000_0012 is refused, not read as 18); a component that is not dynamic
    /// ([`XFeatures::DYNAMIC`]) is [`PermError::NotDynamic`], even one already
    /// permitted (x87, AVX, TILECFG) or one only guests hold (CET_S); a dynamic
    /// component outside the user config is [`PermError::Unsupported`]; one already
    /// in the set is granted again without asking; then the guest lock and the
    /// signal-stack check.
    ///
    /// `sigstack_ok` is asked, for every new task grant (as Linux runs
    /// `validate_sigaltstack` on each), whether the process's signal stacks can
    /// hold frames of the resulting user-ABI size; returning `false` refuses the
    /// request. Guest requests never ask: guests have no signal frames.
    ///
    /// On error the sets are unchanged.
    ///
    /// # Errors
    /// [`PermError`]: see its variants; [`PermError::errno`] gives Linux's code.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}};
    /// # use xstate::perm::{PermError, PermKind, ProcessPerms};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
    /// let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    /// let mut p = ProcessPerms::new(&cfg);
    /// let grant = p.request(&cfg, PermKind::Task, 18, |_| true).unwrap();
    /// assert_eq!(grant.size, cfg.kernel().max_size);
    /// let cet_s = p.request(&cfg, PermKind::Guest, 12, |_| true);
    /// assert_eq!(cet_s, Err(PermError::NotDynamic { index: 12 }));
    /// assert_eq!(cet_s.unwrap_err().errno(), 95); // EOPNOTSUPP
    /// assert_eq!(p.request(&cfg, PermKind::Task, 20, |_| true).unwrap_err().errno(), 22);
    /// let wide = p.request(&cfg, PermKind::Task, 0x1_0000_0012, |_| true);
    /// assert_eq!(wide, Err(PermError::Invalid { index: 0x1_0000_0012 }));
    /// ```
    pub fn request(
        &mut self,
        cfg: &Configs,
        kind: PermKind,
        index: u64,
        sigstack_ok: impl FnOnce(u32) -> bool,
    ) -> Result<PermSet, PermError> {
        let feature = u32::try_from(index)
            .ok()
            .and_then(XFeature::from_index)
            .ok_or(PermError::Invalid { index })?;
        let (index, bit) = (feature.index(), feature.mask());
        if !XFeatures::DYNAMIC.contains(bit) {
            return Err(PermError::NotDynamic { index });
        }
        if !cfg.user().max_features.contains(bit) {
            return Err(PermError::Unsupported { index });
        }
        let set = match kind {
            PermKind::Task => &self.task,
            PermKind::Guest => &self.guest,
        };
        // A user component the configs enable is in both kernel and guest max sets;
        // unless the policy made it dynamic it is in every set's defaults already.
        if set.features.contains(bit) {
            return Ok(*set);
        }
        if kind == PermKind::Guest && self.guest_locked {
            return Err(PermError::Locked);
        }
        let features = set.features | bit;
        let e = cfg.enumeration();
        let size = match cfg.kernel().form {
            Form::Compacted => e.compacted_size(features),
            Form::Standard => e.standard_size(features),
        };
        let user_size = e.standard_size(features & cfg.user().max_features);
        if kind == PermKind::Task && !sigstack_ok(user_size) {
            return Err(PermError::SigStackTooSmall { user_size });
        }
        let new = PermSet {
            features,
            size,
            user_size,
        };
        match kind {
            PermKind::Task => self.task = new,
            PermKind::Guest => self.guest = new,
        }
        Ok(new)
    }
}
