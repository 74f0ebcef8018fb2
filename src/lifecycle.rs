//! The fpstate lifecycle as Linux's FPU core runs it (since the 5.2 deferred-load
//! series): who owns the registers, when a restore can be skipped, how kernel code
//! borrows the registers for SIMD, and what clone, exec, exit, signals, buffer
//! writes, XFD first use and guest entry do to fpstates.
//!
//! # The strategy
//!
//! - Each CPU has a [`CpuFpu`] record, stored wherever the kernel keeps per-CPU
//!   data (no globals here): the context whose registers the CPU holds (its
//!   *owner*), the XFD value it runs with, and whether a kernel SIMD section is
//!   open.
//! - Each task has a [`TaskFpu`]: its fpstate, the CPU it last ran on, and a
//!   *needs load* flag (Linux's `TIF_NEED_FPU_LOAD`). A switch away from a user
//!   task saves its registers if they are live and marks it needs-load; the
//!   restore waits for the return to user mode ([`Lifecycle::return_to_user`])
//!   and is skipped when this CPU's owner is the task and the task last ran on
//!   this CPU: nothing else has been in the registers since. Kernel threads
//!   neither save nor load.
//! - What clobbers the registers takes the owner record away (a kernel SIMD
//!   section, a guest fpstate or another task restored); what writes a task's
//!   buffer drops the task's last CPU (ptrace, sigreturn through the buffer,
//!   `KVM_SET_XSAVE`, exec).
//!
//! # What the types enforce
//!
//! - A kernel SIMD section is a guard ([`KernelFpuSection`]) that mutably borrows
//!   the CPU record and the unit: nothing else can save or restore on that CPU
//!   while it is open, it cannot outlive its borrows, and dropping it ends it.
//! - A task's fpstate is reachable mutably only through a [`BufferWrite`], which
//!   only [`Lifecycle::ptrace_write`] and [`Lifecycle::kvm_write`] hand out, and
//!   they invalidate before they return it: an invalidating write cannot happen
//!   without the invalidation.
//! - The areas live in the task's [`Storage`] for as long as the task holds it.
//!   With `&mut [u8]` or `BoxedArea` (with `alloc`) the bytes never
//!   move when the task value moves, so the address the CPU's modified
//!   optimization (XSAVEOPT, XSAVES) tracks stays the area's; an area is given
//!   back only by [`Lifecycle::exec`] (a grown one) and [`Lifecycle::exit`].
//! - Context identities come from a counter in the [`Lifecycle`] and are never
//!   reused, so a record naming a task that exited can never match a new one.
//!
//! # What the kernel guarantees
//!
//! Every event runs on the CPU whose record it is given, with preemption and
//! interrupts that could start a kernel SIMD section held off (Linux's
//! `fpregs_lock()`), and the task given as "current" is the one running there.
//!
//! # LazyFP
//!
//! The layer is eager in the way Linux is since 4.9 (and exclusively since
//! CVE-2018-3665, LazyFP): registers are saved on every switch away from a task
//! whose registers are live, never left behind for a later #NM (CR0.TS) to save,
//! because a CPU that speculates past the #NM hands the previous owner's
//! registers to the next task. Only the *restore* is deferred, and a deferred
//! restore never leaves another task's registers readable: the next return to
//! user mode loads or proves the registers are the task's own.

use core::fmt;
use core::num::NonZeroU64;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::config::Configs;
use crate::error::BufferTooSmall;
use crate::feature::XFeatures;
use crate::fpstate::{
    FCW_DEFAULT, Fpstate, FpstateError, MXCSR_DEFAULT, MXCSR_OFFSET, Mode, Owner, Storage,
    XSTATE_BV_OFFSET, put_u32, put_u64,
};
use crate::insn::{Fault, Insn, XsaveUnit};
use crate::perm::ProcessPerms;
use crate::uabi::{self, FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, SW_BYTES_OFFSET, UabiError};

/// Storage whose bytes stay at one address for as long as the value lives,
/// wherever the value itself moves: `&mut [u8]` (the borrow pins the bytes)
/// and, with `alloc`, `BoxedArea` (the heap block). The layer keeps task and
/// guest fpstates only in such storage, because the CPU's modified
/// optimization (XSAVEOPT, XSAVES) remembers the address of the last restore:
/// an area that could move with its task (an inline array) does not compile.
///
/// ```compile_fail
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}};
/// # use xstate::{fpstate::{Mode, Storage}, lifecycle::Lifecycle};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
/// #[repr(C, align(64))]
/// struct Inline([u8; 4096]);
/// impl Storage for Inline {
///     fn bytes(&self) -> &[u8] { &self.0 }
///     fn bytes_mut(&mut self) -> &mut [u8] { &mut self.0 }
/// }
/// let lc = Lifecycle::new(&cfg, Mode::Supervisor);
/// let task = lc.user_task(Inline([0; 4096])); // moves with the task: refused
/// ```
pub trait StableStorage: Storage + sealed::Sealed {}

mod sealed {
    /// Only the crate's own stable storages and layer modes.
    pub trait Sealed {}
    impl Sealed for &mut [u8] {}
    impl Sealed for crate::fpstate::Mode {}
    impl Sealed for super::UserMode {}
    impl Sealed for super::SupervisorMode {}
    #[cfg(feature = "alloc")]
    impl Sealed for crate::fpstate::BoxedArea {}
}

impl StableStorage for &mut [u8] {}
#[cfg(feature = "alloc")]
impl StableStorage for crate::fpstate::BoxedArea {}

/// The save/restore mode of a [`Lifecycle`]: fixed in its type by a marker
/// ([`UserMode`], [`SupervisorMode`]), so every event's save and restore is
/// compiled for its instruction alone, or chosen at run time ([`Mode`]), which
/// costs a test and a branch on every save and restore of the context switch
/// (measured in BENCHMARKS.md section 6).
pub trait LayerMode: Copy + core::fmt::Debug + sealed::Sealed {
    /// The mode.
    fn get(self) -> Mode;
}

impl LayerMode for Mode {
    #[inline(always)]
    fn get(self) -> Mode {
        self
    }
}

/// [`Mode::User`] fixed at compile time: XSAVEC (XSAVEOPT or XSAVE for a
/// standard-form config) and XRSTOR, in user space or in a kernel that keeps
/// no supervisor state in its fpstates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UserMode;

impl LayerMode for UserMode {
    #[inline(always)]
    fn get(self) -> Mode {
        Mode::User
    }
}

/// [`Mode::Supervisor`] fixed at compile time: XSAVES and XRSTORS, in ring 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SupervisorMode;

impl LayerMode for SupervisorMode {
    #[inline(always)]
    fn get(self) -> Mode {
        Mode::Supervisor
    }
}

/// The legacy region and header: the smallest XSAVE area.
const AREA_HEAD: usize = 576;
/// An area's required alignment.
const ALIGN: usize = 64;

/// The standard-form init image: XSTATE_BV = 0, so XRSTOR puts every component
/// of its RFBM in its init state, and MXCSR = 0x1f80, which XRSTOR loads
/// whenever RFBM has SSE or AVX.
#[repr(C, align(64))]
struct InitImage([u8; AREA_HEAD]);

static INIT_IMAGE: InitImage = InitImage(init_image());

const fn init_image() -> [u8; AREA_HEAD] {
    let mut b = [0u8; AREA_HEAD];
    let fcw = FCW_DEFAULT.to_le_bytes();
    b[0] = fcw[0];
    b[1] = fcw[1];
    let m = MXCSR_DEFAULT.to_le_bytes();
    let mut i = 0;
    while i < 4 {
        b[MXCSR_OFFSET + i] = m[i];
        i += 1;
    }
    b
}

/// What a kernel SIMD section starts with, besides the saved registers
/// (Linux's `KFPU_MXCSR` and `KFPU_387`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SectionInit {
    /// MXCSR = 0x1f80: SSE and AVX code computes with default rounding and
    /// every exception masked, whatever the task had.
    Mxcsr,
    /// MXCSR = 0x1f80 and FNINIT: x87 code too.
    MxcsrAndX87,
}

/// What the lifecycle needs of a CPU beyond XSAVE and XRSTOR.
pub trait FpuUnit: XsaveUnit {
    /// WRMSR IA32_XFD.
    ///
    /// # Errors
    /// The [`Fault`] the write raises (a bit that is not XFD-capable, not ring 0).
    fn write_xfd(&mut self, xfd: XFeatures) -> Result<(), Fault>;

    /// Prepare the registers for kernel SIMD code ([`SectionInit`]).
    ///
    /// # Errors
    /// The [`Fault`] an instruction raises (SSE not enabled).
    fn section_init(&mut self, init: SectionInit) -> Result<(), Fault>;
}

#[cfg(target_arch = "x86_64")]
impl FpuUnit for crate::insn::Cpu {
    fn write_xfd(&mut self, xfd: XFeatures) -> Result<(), Fault> {
        let e = self.enumeration();
        let capable = xfd.indices().all(|i| e.component(i).is_some_and(|c| c.xfd));
        if !self.is_supervisor() || !e.xfd() || !capable {
            return Err(Fault::Gp);
        }
        // The components armed are those the fpstate about to be restored has
        // no space for: its owner has not used them.
        // SAFETY: a supervisor unit runs at CPL 0 (`Cpu::supervisor`'s
        // contract); the CPU enumerates XFD and every bit is XFD-capable.
        unsafe { crate::insn::write_xfd(xfd) };
        Ok(())
    }

    fn section_init(&mut self, init: SectionInit) -> Result<(), Fault> {
        if !self.enumeration().xcr0_supported().contains(XFeatures::SSE) {
            return Err(Fault::Ud);
        }
        // SAFETY: OSXSAVE was checked when the unit was built, SSE is enabled,
        // 0x1f80 is within every MXCSR_MASK, and `Cpu::user`'s contract covers
        // the floating-point mode replaced.
        unsafe { crate::insn::ldmxcsr(MXCSR_DEFAULT) };
        if init == SectionInit::MxcsrAndX87 {
            // SAFETY: as above, for the x87 state.
            unsafe { crate::insn::fninit() };
        }
        Ok(())
    }
}

#[cfg(feature = "alloc")]
impl FpuUnit for crate::model::XsaveMachine {
    fn write_xfd(&mut self, xfd: XFeatures) -> Result<(), Fault> {
        self.set_xfd(xfd)
    }

    fn section_init(&mut self, init: SectionInit) -> Result<(), Fault> {
        self.set_mxcsr(MXCSR_DEFAULT)?;
        if init == SectionInit::MxcsrAndX87 {
            // FNINIT: FCW 0x37f, FSW 0, every tag empty (abridged FTW 0); the
            // data registers keep their bytes.
            let fcw = FCW_DEFAULT.to_le_bytes();
            self.write_reg(0, 0, &[fcw[0], fcw[1], 0, 0, 0, 0])?;
        }
        Ok(())
    }
}

/// A context's identity: a task's or a guest's. Minted by one [`Lifecycle`],
/// never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtxId(NonZeroU64);

impl CtxId {
    /// The number behind it.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

/// Counts a CPU record keeps: what happens off the switch's own path.
///
/// Saves and restores are not counted here: a per-CPU counter written on
/// every switch, read back across the next XSAVEC or XRSTOR, cost the
/// two-task ping-pong about 2 ns per switch on an AMD Zen 4 (BENCHMARKS.md
/// section 6). The events say what they did instead: [`Restore`] from a
/// return to user mode or a guest entry, [`Save`] from a switch away, and
/// [`KernelFpuSection::saved`] from a section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuStats {
    /// Restores skipped because the registers were still the context's own.
    pub elided: u64,
    /// Kernel SIMD sections begun.
    pub sections: u64,
}

/// What a switch away from a task did ([`Lifecycle::switch_out`],
/// [`Lifecycle::sync`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Save {
    /// The registers were the task's live state: saved into its fpstate.
    Saved,
    /// Nothing to save: the fpstate is current already (the task needs a
    /// load), or the task is a kernel thread.
    NotLive,
}

/// One CPU's record (Linux's per-CPU `fpu_fpregs_owner_ctx` and XFD cache).
///
/// One cache line of its own (64-byte aligned, as kernels align per-CPU data),
/// the owner a switch writes and the counts side by side: left to share lines
/// with whatever the kernel keeps next to it, the record cost the two-task
/// ping-pong up to 4 ns more per switch on some placements (BENCHMARKS.md
/// section 6).
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub struct CpuFpu {
    owner: Option<CtxId>,
    stats: CpuStats,
    xfd: XFeatures,
    cpu: u32,
    in_section: bool,
}

impl CpuFpu {
    /// The record of CPU `cpu`, which runs with IA32_XFD = `xfd` and whose
    /// registers belong to no context yet.
    pub const fn new(cpu: u32, xfd: XFeatures) -> Self {
        Self {
            cpu,
            owner: None,
            xfd,
            in_section: false,
            stats: CpuStats {
                elided: 0,
                sections: 0,
            },
        }
    }

    /// The CPU's number.
    #[inline]
    pub const fn cpu(&self) -> u32 {
        self.cpu
    }

    /// The context whose registers this CPU holds, if any.
    #[inline]
    pub const fn owner(&self) -> Option<CtxId> {
        self.owner
    }

    /// The IA32_XFD value the CPU runs with.
    #[inline]
    pub const fn xfd(&self) -> XFeatures {
        self.xfd
    }

    /// Whether kernel code may borrow the registers now (Linux's
    /// `irq_fpu_usable()`, for this record): no section is open.
    #[inline]
    pub const fn can_borrow(&self) -> bool {
        !self.in_section
    }

    /// The counts so far.
    #[inline]
    pub const fn stats(&self) -> &CpuStats {
        &self.stats
    }
}

/// The rules the layer keeps. Every one is needed: `tests/lifecycle.rs` runs the
/// layer with each dropped in turn ([`Lifecycle`]'s `DROPPED` parameter) and
/// shows a task reading state that is not its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Rule {
    /// A switch marks the outgoing task needs-load.
    NeedsLoad = 1 << 0,
    /// A restore is skipped only if the context last ran on this CPU.
    CpuCheck = 1 << 1,
    /// A restore is skipped only if this CPU's owner is the context.
    OwnerCheck = 1 << 2,
    /// A restore makes its context the owner, taking the record from the
    /// previous owner (dropped: a record once set is never replaced, so the
    /// first owner's restores are skipped over another's registers).
    LoadTakesOwner = 1 << 3,
    /// A kernel SIMD section first saves the interrupted context's live
    /// registers.
    SectionSaves = 1 << 4,
    /// A kernel SIMD section drops the owner record.
    SectionDropsOwner = 1 << 5,
    /// A ptrace write drops the task's last CPU.
    PtraceInvalidates = 1 << 6,
    /// A sigreturn through the buffer drops the task's last CPU.
    SigreturnInvalidates = 1 << 7,
    /// A `KVM_SET_XSAVE` write drops the guest's last CPU.
    KvmInvalidates = 1 << 8,
    /// Exec drops the task's last CPU.
    ExecInvalidates = 1 << 9,
    /// A signal handler starts with the user components in their init state.
    SignalInitsUser = 1 << 10,
    /// A restore first sets IA32_XFD to the incoming fpstate's.
    XfdSwitch = 1 << 11,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 12] = [
        Rule::NeedsLoad,
        Rule::CpuCheck,
        Rule::OwnerCheck,
        Rule::LoadTakesOwner,
        Rule::SectionSaves,
        Rule::SectionDropsOwner,
        Rule::PtraceInvalidates,
        Rule::SigreturnInvalidates,
        Rule::KvmInvalidates,
        Rule::ExecInvalidates,
        Rule::SignalInitsUser,
        Rule::XfdSwitch,
    ];
}

/// Why a lifecycle event was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifecycleError {
    /// An fpstate operation failed.
    Fpstate(FpstateError),
    /// A user-ABI buffer (a signal frame) was refused (a kernel sends SIGSEGV).
    Uabi(UabiError),
    /// A unit instruction faulted.
    Fault(Fault),
    /// The event needs a user task and was given a kernel thread.
    KernelThread,
    /// The task is in guest mode, and the event needs it out of it.
    InGuest,
    /// The task is not in guest mode (or has no guest attached).
    NoGuest,
    /// The task's registers are live, so its buffer is stale: save them first
    /// ([`Lifecycle::sync`]).
    Live,
    /// A kernel SIMD section is already open on this CPU (no nesting).
    SectionOpen,
    /// The storage given for an fpstate of the other owner kind.
    WrongOwner,
}

impl fmt::Display for LifecycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fpstate(e) => write!(f, "fpstate: {e}"),
            Self::Uabi(e) => write!(f, "signal frame: {e}"),
            Self::Fault(e) => write!(f, "instruction fault: {e}"),
            Self::KernelThread => f.write_str("a kernel thread has no user FPU state"),
            Self::InGuest => f.write_str("the task is in guest mode"),
            Self::NoGuest => f.write_str("the task is not in guest mode or has no guest"),
            Self::Live => {
                f.write_str("the task's registers are live and its buffer stale: save them first")
            }
            Self::SectionOpen => f.write_str("a kernel FPU section is already open on this CPU"),
            Self::WrongOwner => f.write_str("an fpstate of the other owner kind (host/guest)"),
        }
    }
}

impl core::error::Error for LifecycleError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Fpstate(e) => Some(e),
            Self::Uabi(e) => Some(e),
            Self::Fault(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FpstateError> for LifecycleError {
    fn from(e: FpstateError) -> Self {
        Self::Fpstate(e)
    }
}

impl From<UabiError> for LifecycleError {
    fn from(e: UabiError) -> Self {
        Self::Uabi(e)
    }
}

impl From<Fault> for LifecycleError {
    fn from(e: Fault) -> Self {
        Self::Fault(e)
    }
}

impl From<BufferTooSmall> for LifecycleError {
    fn from(e: BufferTooSmall) -> Self {
        Self::Fpstate(FpstateError::BufferTooSmall(e))
    }
}

/// What a return to user mode (or guest entry) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Restore {
    /// The registers were live: nothing to do.
    Live,
    /// Restored from the buffer.
    Loaded,
    /// Skipped: this CPU still held exactly this context's registers.
    Elided,
}

/// How a signal frame was written or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalPath {
    /// XSAVE straight into the frame, or XRSTOR straight from it.
    Direct,
    /// Through the task's buffer (a frame the instructions cannot take: not
    /// 64-byte aligned, "fx only", or a restore mask short of the task's).
    Buffered,
}

/// One context's lifecycle state.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    id: CtxId,
    /// The CPU whose registers last held this context's state, or [`NO_CPU`]:
    /// a CPU number widened to 64 bits, so "none" is a value no CPU has and
    /// the check on every return to user mode is one compare.
    last_cpu: u64,
    needs_load: bool,
}

/// [`Ctx::last_cpu`] of a context no CPU may hold.
const NO_CPU: u64 = u64::MAX;

impl Ctx {
    const fn new(id: CtxId) -> Self {
        Self {
            id,
            last_cpu: NO_CPU,
            needs_load: true,
        }
    }

    /// Whether `cpu` was the last to hold this context's registers.
    #[inline(always)]
    const fn last_on(&self, cpu: &CpuFpu) -> bool {
        self.last_cpu == cpu.cpu as u64
    }

    /// Forget the last CPU: no record can skip the next load.
    #[inline(always)]
    const fn forget_cpu(&mut self) {
        self.last_cpu = NO_CPU;
    }
}

/// A guest vCPU's fpstate (Linux's `fpu_guest`), attached to the task that runs
/// the vCPU ([`TaskFpu::attach_guest`]).
#[derive(Debug)]
pub struct GuestFpu<S: StableStorage> {
    ctx: Ctx,
    fp: Fpstate<S>,
}

impl<S: StableStorage> GuestFpu<S> {
    /// The guest's identity.
    #[inline]
    pub const fn id(&self) -> CtxId {
        self.ctx.id
    }

    /// The guest fpstate: current whenever the guest is not in guest mode
    /// (every exit saves it), which is whenever the caller can reach it.
    #[inline]
    pub const fn fpstate(&self) -> &Fpstate<S> {
        &self.fp
    }

    /// Give the storage back.
    pub fn into_storage(self) -> S {
        self.fp.into_storage()
    }
}

/// Host task or kernel thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// A task with user-mode FPU state.
    User,
    /// A kernel thread: no user state, never saved or loaded.
    Kernel,
}

/// A task's FPU state (Linux's `struct fpu`): its default fpstate, the grown
/// one after an XFD first use, an attached guest, and the lifecycle flags.
#[derive(Debug)]
pub struct TaskFpu<S: StableStorage> {
    ctx: Ctx,
    /// The host fpstate in use: the default one, or the grown one after an
    /// XFD first use (one field, so the switch finds it with one test).
    fp: Option<Fpstate<S>>,
    /// The default fpstate, kept here while a grown one is in use.
    default: Option<Fpstate<S>>,
    guest: Option<GuestFpu<S>>,
    in_guest: bool,
}

impl<S: StableStorage> TaskFpu<S> {
    /// The task's identity.
    #[inline]
    pub const fn id(&self) -> CtxId {
        self.ctx.id
    }

    /// User task or kernel thread.
    #[inline]
    pub const fn kind(&self) -> TaskKind {
        if self.fp.is_some() {
            TaskKind::User
        } else {
            TaskKind::Kernel
        }
    }

    /// Whether the task's (or, in guest mode, the guest's) registers are live:
    /// loaded and not saved since, so its buffer may be stale.
    #[inline]
    pub const fn registers_live(&self) -> bool {
        match (&self.guest, self.in_guest) {
            (Some(g), true) => !g.ctx.needs_load,
            _ => self.fp.is_some() && !self.ctx.needs_load,
        }
    }

    /// The CPU whose registers last held the task's state, if they may still.
    #[inline]
    pub const fn last_cpu(&self) -> Option<u32> {
        let c = self.ctx.last_cpu;
        if c > u32::MAX as u64 {
            None
        } else {
            Some(c as u32)
        }
    }

    /// Whether the task is in guest mode.
    #[inline]
    pub const fn in_guest(&self) -> bool {
        self.in_guest
    }

    /// The host fpstate in use (the grown one once there is one), when it is
    /// current: the registers are not live.
    ///
    /// # Errors
    /// [`LifecycleError::KernelThread`], or [`LifecycleError::Live`] while the
    /// registers are live (save them with [`Lifecycle::sync`]).
    pub fn fpstate(&self) -> Result<&Fpstate<S>, LifecycleError> {
        let fp = self.host().ok_or(LifecycleError::KernelThread)?;
        if !self.in_guest && !self.ctx.needs_load {
            return Err(LifecycleError::Live);
        }
        Ok(fp)
    }

    /// The attached guest, when it is not in guest mode.
    pub fn guest(&self) -> Option<&GuestFpu<S>> {
        self.guest.as_ref().filter(|_| !self.in_guest)
    }

    /// Attach a vCPU's guest fpstate (the vCPU thread's setup).
    ///
    /// # Errors
    /// The guest back, if the task is a kernel thread or has one attached.
    pub fn attach_guest(&mut self, guest: GuestFpu<S>) -> Result<(), GuestFpu<S>> {
        if self.fp.is_none() || self.guest.is_some() {
            return Err(guest);
        }
        self.guest = Some(guest);
        Ok(())
    }

    /// Detach the guest, outside guest mode.
    pub fn detach_guest(&mut self) -> Option<GuestFpu<S>> {
        if self.in_guest {
            return None;
        }
        self.guest.take()
    }

    fn host(&self) -> Option<&Fpstate<S>> {
        self.fp.as_ref()
    }

    fn host_mut(&mut self) -> Option<&mut Fpstate<S>> {
        self.fp.as_mut()
    }

    /// The context whose registers the task runs with: the guest's in guest
    /// mode, else the task's own; none for a kernel thread.
    #[inline(always)]
    fn active(&mut self) -> Option<(&mut Ctx, &mut Fpstate<S>)> {
        if self.in_guest {
            if let Some(g) = &mut self.guest {
                return Some((&mut g.ctx, &mut g.fp));
            }
        }
        Some((&mut self.ctx, self.fp.as_mut()?))
    }
}

/// A task's buffer open for writing (ptrace `SETREGSET`, `KVM_SET_XSAVE`):
/// the CPU can no longer skip the restore it would have skipped. Write through
/// [`uabi::import`] and friends on the fpstate it dereferences to.
#[derive(Debug)]
pub struct BufferWrite<'a, S: StableStorage> {
    fp: &'a mut Fpstate<S>,
}

impl<S: StableStorage> Deref for BufferWrite<'_, S> {
    type Target = Fpstate<S>;
    fn deref(&self) -> &Fpstate<S> {
        self.fp
    }
}

impl<S: StableStorage> DerefMut for BufferWrite<'_, S> {
    fn deref_mut(&mut self) -> &mut Fpstate<S> {
        self.fp
    }
}

/// An open kernel SIMD section (Linux's `kernel_fpu_begin_mask()` ..
/// `kernel_fpu_end()`). The registers are the kernel's until it is dropped.
///
/// While it is open nothing else can use the CPU record or the unit, and it
/// cannot outlive them:
///
/// ```compile_fail
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}};
/// # use xstate::{fpstate::{BoxedArea, Mode}, lifecycle::{CpuFpu, Lifecycle, SectionInit}};
/// # use xstate::model::{Quirks, XsaveMachine};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
/// # let lc = Lifecycle::new(&cfg, Mode::Supervisor);
/// # let mut m = XsaveMachine::new(&e, Quirks::AMD_ZEN);
/// # let mut cpu = CpuFpu::new(0, cfg.policy().dynamic);
/// # let mut t = lc.user_task(BoxedArea::zeroed(cfg.kernel().default_size as usize)).unwrap();
/// let section = lc.kernel_fpu_begin(&mut cpu, &mut m, Some(&mut t), SectionInit::Mxcsr).unwrap();
/// lc.return_to_user(&mut cpu, &mut m, &mut t).unwrap(); // a restore inside the section
/// drop(section);
/// ```
///
/// ```compile_fail
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}};
/// # use xstate::{fpstate::{BoxedArea, Mode}, lifecycle::{CpuFpu, KernelFpuSection, Lifecycle, SectionInit}};
/// # use xstate::model::{Quirks, XsaveMachine};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
/// # let lc = Lifecycle::new(&cfg, Mode::Supervisor);
/// # let mut m = XsaveMachine::new(&e, Quirks::AMD_ZEN);
/// let escaped: KernelFpuSection<'_, XsaveMachine>;
/// {
///     let mut cpu = CpuFpu::new(0, cfg.policy().dynamic);
///     escaped = lc.kernel_fpu_begin::<BoxedArea, _>(&mut cpu, &mut m, None, SectionInit::Mxcsr).unwrap();
/// } // the record is gone, the section may not live on
/// drop(escaped);
/// ```
///
/// A task's buffer has no `&mut` access but through [`BufferWrite`]:
///
/// ```compile_fail
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}};
/// # use xstate::{fpstate::{BoxedArea, Mode}, lifecycle::Lifecycle, uabi};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
/// # let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
/// # let lc = Lifecycle::new(&cfg, Mode::Supervisor);
/// # let mut t = lc.user_task(BoxedArea::zeroed(cfg.kernel().default_size as usize)).unwrap();
/// # let buf = vec![0u8; 4096];
/// uabi::import(&cfg, t.fpstate_mut(), &buf).unwrap(); // no such method: ptrace_write invalidates first
/// ```
#[derive(Debug)]
#[must_use = "the section ends when the guard is dropped"]
pub struct KernelFpuSection<'a, U> {
    cpu: &'a mut CpuFpu,
    unit: &'a mut U,
    saved: Save,
}

impl<U> KernelFpuSection<'_, U> {
    /// Whether beginning the section saved the interrupted task's registers.
    #[inline]
    pub const fn saved(&self) -> Save {
        self.saved
    }

    /// The unit, for the section's own instructions (the model's register
    /// writes, in tests; a kernel runs its SIMD code directly).
    #[inline]
    pub fn unit(&mut self) -> &mut U {
        self.unit
    }

    /// The CPU the section runs on.
    #[inline]
    pub const fn cpu(&self) -> u32 {
        self.cpu.cpu
    }
}

impl<U> Drop for KernelFpuSection<'_, U> {
    fn drop(&mut self) {
        self.cpu.in_section = false;
    }
}

/// The storage [`Lifecycle::exit`] gives back.
#[derive(Debug)]
#[non_exhaustive]
pub struct Released<S: StableStorage> {
    /// The default fpstate's (none for a kernel thread).
    pub default: Option<S>,
    /// The grown fpstate's.
    pub grown: Option<S>,
    /// The attached guest.
    pub guest: Option<GuestFpu<S>>,
}

/// The lifecycle layer: the configs and mode every event uses, and the source
/// of context identities.
///
/// `DROPPED` is a mask of [`Rule`]s this instance does not keep: 0 (the
/// default) in every real use. The proofs build copies with one rule dropped and
/// show each of them letting a task read state that is not its own.
#[derive(Debug)]
pub struct Lifecycle<'c, M: LayerMode = Mode, const DROPPED: u32 = 0> {
    cfg: &'c Configs,
    mode: M,
    /// Whether any component is dynamic: only then can an fpstate's XFD value
    /// differ from the CPU's.
    dynamic: bool,
    next_id: AtomicU64,
}

impl<'c, M: LayerMode> Lifecycle<'c, M> {
    /// The layer for fpstates of `cfg`, saved and restored in `mode`: a
    /// [`Mode`] chosen at run time, or [`UserMode`] / [`SupervisorMode`] to
    /// compile the events for one mode (what a kernel's context switch wants).
    pub const fn new(cfg: &'c Configs, mode: M) -> Self {
        Lifecycle::with_rules_dropped(cfg, mode)
    }
}

impl<'c, M: LayerMode, const DROPPED: u32> Lifecycle<'c, M, DROPPED> {
    /// [`Lifecycle::new`] for a copy that does not keep the [`Rule`]s in
    /// `DROPPED`: for proofs that each rule is needed, never for a kernel.
    pub const fn with_rules_dropped(cfg: &'c Configs, mode: M) -> Self {
        Self {
            cfg,
            mode,
            dynamic: !cfg.policy().dynamic.is_empty(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The configs.
    #[inline]
    pub const fn configs(&self) -> &'c Configs {
        self.cfg
    }

    /// The save/restore mode.
    #[inline]
    pub fn mode(&self) -> Mode {
        self.mode.get()
    }

    #[inline(always)]
    const fn keeps(rule: Rule) -> bool {
        DROPPED & rule as u32 == 0
    }

    fn mint(&self) -> CtxId {
        // Starts at 1 and counts up: 2^64 contexts are never made, and a
        // wrapped counter would still never yield 0.
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        CtxId(NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN))
    }

    /// A user task with a fresh fpstate in `storage` (init state), as the first
    /// task or one not cloned from another.
    ///
    /// # Errors
    /// The storage errors of [`Fpstate::new_in`].
    pub fn user_task<S: StableStorage>(&self, storage: S) -> Result<TaskFpu<S>, LifecycleError> {
        let fp = Fpstate::new_in(self.cfg, Owner::Host, storage)?;
        Ok(TaskFpu {
            ctx: Ctx::new(self.mint()),
            fp: Some(fp),
            default: None,
            guest: None,
            in_guest: false,
        })
    }

    /// A kernel thread: no fpstate, never saved or loaded (Linux's kernel
    /// threads and IO workers).
    pub fn kernel_thread<S: StableStorage>(&self) -> TaskFpu<S> {
        TaskFpu {
            ctx: Ctx::new(self.mint()),
            fp: None,
            default: None,
            guest: None,
            in_guest: false,
        }
    }

    /// A vCPU's guest fpstate in `storage` (guest-only components included).
    ///
    /// # Errors
    /// The storage errors of [`Fpstate::new_in`].
    pub fn guest<S: StableStorage>(&self, storage: S) -> Result<GuestFpu<S>, LifecycleError> {
        let fp = Fpstate::new_in(self.cfg, Owner::Guest, storage)?;
        Ok(GuestFpu {
            ctx: Ctx::new(self.mint()),
            fp,
        })
    }

    /// Save `ctx`'s registers if they are live, and mark it needs-load;
    /// whether it saved.
    #[inline(always)]
    fn save_live<S: StableStorage, U: FpuUnit>(
        &self,
        unit: &mut U,
        ctx: &mut Ctx,
        fp: &mut Fpstate<S>,
    ) -> Result<Save, LifecycleError> {
        if ctx.needs_load {
            return Ok(Save::NotLive);
        }
        // The records first, the save last (undone if it fails), and the
        // restore's records after the restore (`load`): no store of the
        // layer's then sits between a save and the restore that follows it
        // (measured: BENCHMARKS.md sections 6 and 7).
        if Self::keeps(Rule::NeedsLoad) {
            ctx.needs_load = true;
        }
        // One arm per mode, so each inlined save picks its instruction at
        // compile time.
        let r = match self.mode.get() {
            Mode::User => fp.save(unit, self.cfg, Mode::User),
            Mode::Supervisor => fp.save(unit, self.cfg, Mode::Supervisor),
        };
        if let Err(e) = r {
            return Err(Self::save_failed(ctx, e));
        }
        Ok(Save::Saved)
    }

    /// Make `ctx`'s registers live on `cpu`: skip the restore if the CPU still
    /// holds them, else set XFD and restore.
    #[inline(always)]
    fn load<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        ctx: &mut Ctx,
        fp: &Fpstate<S>,
    ) -> Result<Restore, LifecycleError> {
        if !ctx.needs_load {
            return Ok(Restore::Live);
        }
        if self.dynamic && Self::keeps(Rule::XfdSwitch) {
            Self::set_xfd(cpu, unit, fp.info().xfd)?;
        }
        let owner_ok = !Self::keeps(Rule::OwnerCheck) || cpu.owner == Some(ctx.id);
        let done = if owner_ok && (!Self::keeps(Rule::CpuCheck) || ctx.last_on(cpu)) {
            cpu.stats.elided += 1;
            Restore::Elided
        } else {
            // The restore first, the records after it succeeded: nothing to
            // undo on an error (see `save_live`).
            let r = match self.mode.get() {
                Mode::User => fp.restore(unit, self.cfg, Mode::User),
                Mode::Supervisor => fp.restore(unit, self.cfg, Mode::Supervisor),
            };
            if let Err(e) = r {
                return Err(Self::failed(e));
            }
            if Self::keeps(Rule::LoadTakesOwner) || cpu.owner.is_none() {
                cpu.owner = Some(ctx.id);
            }
            ctx.last_cpu = cpu.cpu as u64;
            ctx.needs_load = false;
            return Ok(Restore::Loaded);
        };
        ctx.last_cpu = cpu.cpu as u64;
        ctx.needs_load = false;
        Ok(done)
    }

    /// A save failed after `save_live` recorded it: the registers are still
    /// live, the records back as they were (out of the switch's path).
    #[cold]
    #[inline(never)]
    fn save_failed(ctx: &mut Ctx, e: FpstateError) -> LifecycleError {
        ctx.needs_load = false;
        e.into()
    }

    /// A restore failed before `load` recorded anything (out of the switch's
    /// path).
    #[cold]
    #[inline(never)]
    fn failed(e: FpstateError) -> LifecycleError {
        e.into()
    }

    /// IA32_XFD = `xfd` on `cpu` unless it is already (only configs with a
    /// dynamic component can make two contexts' values differ).
    #[inline]
    fn set_xfd<U: FpuUnit>(
        cpu: &mut CpuFpu,
        unit: &mut U,
        xfd: XFeatures,
    ) -> Result<(), LifecycleError> {
        if cpu.xfd != xfd {
            unit.write_xfd(xfd)?;
            cpu.xfd = xfd;
        }
        Ok(())
    }

    /// The scheduler switches away from `task` on `cpu` (Linux's
    /// `switch_fpu_prepare()`): its live registers are saved, the CPU keeps
    /// them (the owner record stays), and the task needs a load before it runs
    /// user code again. A kernel thread has nothing to save. Returns whether
    /// it saved.
    ///
    /// # Errors
    /// The save's [`FpstateError`] (a model fault, a foreign fpstate).
    #[inline(always)]
    pub fn switch_out<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
    ) -> Result<Save, LifecycleError> {
        // A save leaves the CPU record as it is: the owner stays, and the
        // context's last CPU is this one already (set when its registers
        // were loaded here, and kept while they are live).
        let _ = cpu;
        match task.active() {
            Some((ctx, fp)) => self.save_live(unit, ctx, fp),
            None => Ok(Save::NotLive),
        }
    }

    /// `task` is about to run user code on `cpu` (Linux's
    /// `switch_fpu_return()` on the way out of the kernel), or, in guest mode,
    /// about to enter the guest (KVM calls it before each VM entry): load its
    /// registers unless they are live or the CPU still holds them.
    ///
    /// # Errors
    /// [`LifecycleError::KernelThread`], or the restore's.
    #[inline(always)]
    pub fn return_to_user<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
    ) -> Result<Restore, LifecycleError> {
        let (ctx, fp) = task.active().ok_or(LifecycleError::KernelThread)?;
        self.load(cpu, unit, ctx, fp)
    }

    /// Save `task`'s live registers so its buffer is current (Linux's
    /// `fpu_sync_fpstate()`): before reading it for a core dump or for ptrace
    /// of the current task. The registers stay valid on this CPU.
    ///
    /// # Errors
    /// As for [`Lifecycle::switch_out`].
    pub fn sync<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
    ) -> Result<Save, LifecycleError> {
        self.switch_out(cpu, unit, task)
    }

    /// Open a kernel SIMD section on `cpu`, where `current` (if any) was
    /// interrupted or called in (Linux's `kernel_fpu_begin_mask()`): its live
    /// registers are saved (it then needs a load), the owner record is dropped,
    /// and the registers are prepared as `init` says.
    ///
    /// # Errors
    /// [`LifecycleError::SectionOpen`] if one is open (no nesting: the guard's
    /// borrow makes that a compile error on one path, this check covers an
    /// interrupt handler reaching the record); or the save's.
    pub fn kernel_fpu_begin<'a, S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &'a mut CpuFpu,
        unit: &'a mut U,
        current: Option<&mut TaskFpu<S>>,
        init: SectionInit,
    ) -> Result<KernelFpuSection<'a, U>, LifecycleError> {
        if cpu.in_section {
            return Err(LifecycleError::SectionOpen);
        }
        let mut saved = Save::NotLive;
        if Self::keeps(Rule::SectionSaves) {
            if let Some((ctx, fp)) = current.and_then(TaskFpu::active) {
                saved = self.save_live(unit, ctx, fp)?;
            }
        }
        if Self::keeps(Rule::SectionDropsOwner) {
            cpu.owner = None;
        }
        unit.section_init(init)?;
        cpu.in_section = true;
        cpu.stats.sections += 1;
        Ok(KernelFpuSection { cpu, unit, saved })
    }

    /// `parent` (running on `cpu`) clones a user task into `storage` (Linux's
    /// `fpu_clone()` for a process or a thread): the child gets the parent's
    /// current state for its default components; dynamic ones (AMX TILEDATA)
    /// are caller-saved and start in their init state, PASID too.
    ///
    /// Permissions are the caller's: a new process gets a copy of the parent
    /// process's [`ProcessPerms`] (`clone()`), a thread shares its process's.
    ///
    /// # Errors
    /// [`LifecycleError::KernelThread`] for a kernel-thread parent (make a
    /// [`Lifecycle::kernel_thread`]), [`LifecycleError::InGuest`], or the save's
    /// and the storage's errors.
    pub fn clone_task<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        parent: &mut TaskFpu<S>,
        storage: S,
    ) -> Result<TaskFpu<S>, LifecycleError> {
        if parent.in_guest {
            return Err(LifecycleError::InGuest);
        }
        // A save leaves the CPU record as it is: the owner stays, and the
        // context's last CPU is this one already (set when its registers
        // were loaded here, and kept while they are live).
        let _ = cpu;
        let (ctx, fp) = parent.active().ok_or(LifecycleError::KernelThread)?;
        self.save_live(unit, ctx, fp)?;
        let mut child = self.user_task(storage)?;
        let from = parent.host().ok_or(LifecycleError::KernelThread)?;
        if let Some(c) = child.fp.as_mut() {
            c.carry_from(self.cfg, from)?;
            uabi::clear_xstate_bv(c, XFeatures::PASID);
        }
        Ok(child)
    }

    /// `task` execs (Linux's `fpu_flush_thread()`): its
    /// state is reset to init, a grown buffer is given back, and it needs a
    /// load that no record can skip. Permissions reset too: the caller replaces
    /// the process's [`ProcessPerms`] with `ProcessPerms::new` (Linux resets
    /// them on exec, measured in `tests/lifecycle_linux.rs`).
    ///
    /// # Errors
    /// [`LifecycleError::KernelThread`], [`LifecycleError::InGuest`], or the
    /// reset's [`FpstateError`].
    pub fn exec<S: StableStorage>(
        &self,
        task: &mut TaskFpu<S>,
    ) -> Result<Option<S>, LifecycleError> {
        if task.in_guest {
            return Err(LifecycleError::InGuest);
        }
        // The default fpstate reset (kept aside while a grown one is in use),
        // then back in use; the grown one's storage is returned.
        let default = match task.default.as_mut() {
            Some(d) => d,
            None => task.fp.as_mut().ok_or(LifecycleError::KernelThread)?,
        };
        default.reset_init()?;
        let grown = match task.default.take() {
            Some(d) => task.fp.replace(d).map(Fpstate::into_storage),
            None => None,
        };
        if Self::keeps(Rule::ExecInvalidates) {
            task.ctx.forget_cpu();
        }
        task.ctx.needs_load = true;
        Ok(grown)
    }

    /// `task` exits on `cpu`: the record stops naming it and its storage comes
    /// back (Linux's `fpu__drop()` and the fpstate's free).
    pub fn exit<S: StableStorage>(&self, cpu: &mut CpuFpu, task: TaskFpu<S>) -> Released<S> {
        if cpu.owner == Some(task.ctx.id) {
            cpu.owner = None;
        }
        let (default, grown) = match task.default {
            Some(d) => (Some(d), task.fp),
            None => (task.fp, None),
        };
        Released {
            default: default.map(Fpstate::into_storage),
            grown: grown.map(Fpstate::into_storage),
            guest: task.guest,
        }
    }

    /// Open a stopped task's buffer for a ptrace write (`PTRACE_SETREGSET`):
    /// it drops the task's last CPU, so the next return to user mode loads it.
    ///
    /// # Errors
    /// [`LifecycleError::KernelThread`], [`LifecycleError::InGuest`], or
    /// [`LifecycleError::Live`] for a task whose registers are live (it is
    /// running: stop it, or [`Lifecycle::sync`] the current task first).
    pub fn ptrace_write<'t, S: StableStorage>(
        &self,
        task: &'t mut TaskFpu<S>,
    ) -> Result<BufferWrite<'t, S>, LifecycleError> {
        if task.in_guest {
            return Err(LifecycleError::InGuest);
        }
        if task.fp.is_some() && !task.ctx.needs_load {
            return Err(LifecycleError::Live);
        }
        if Self::keeps(Rule::PtraceInvalidates) {
            task.ctx.forget_cpu();
        }
        let fp = task.host_mut().ok_or(LifecycleError::KernelThread)?;
        Ok(BufferWrite { fp })
    }

    /// Open the attached guest's buffer for `KVM_SET_XSAVE`, outside guest
    /// mode: it drops the guest's last CPU, so the next entry loads it.
    ///
    /// # Errors
    /// [`LifecycleError::NoGuest`] or [`LifecycleError::InGuest`].
    pub fn kvm_write<'t, S: StableStorage>(
        &self,
        task: &'t mut TaskFpu<S>,
    ) -> Result<BufferWrite<'t, S>, LifecycleError> {
        if task.in_guest {
            return Err(LifecycleError::InGuest);
        }
        let g = task.guest.as_mut().ok_or(LifecycleError::NoGuest)?;
        if Self::keeps(Rule::KvmInvalidates) {
            g.ctx.forget_cpu();
        }
        Ok(BufferWrite { fp: &mut g.fp })
    }

    /// The first use of dynamic component `index` faulted (#NM from XFD) in
    /// `task` on `cpu`: if the process's task permission set grants it, move
    /// the state into a larger fpstate in `storage` and disarm XFD for it
    /// (Linux's `handle_xfd_event()`); the task then retries the instruction.
    ///
    /// # Errors
    /// [`FpstateError::NotPermitted`] (the kernel sends SIGILL),
    /// [`FpstateError::NothingToGrow`], the storage's errors,
    /// [`LifecycleError::KernelThread`] or [`LifecycleError::InGuest`].
    pub fn handle_xfd<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
        perms: &ProcessPerms,
        index: u32,
        storage: S,
    ) -> Result<(), LifecycleError> {
        if task.in_guest {
            return Err(LifecycleError::InGuest);
        }
        let live = task.registers_live();
        let (ctx, fp) = task.active().ok_or(LifecycleError::KernelThread)?;
        // Save first, so the grown copy is current. The registers stay the
        // task's own whether or not the growth succeeds: they stay live.
        self.save_live(unit, ctx, fp)?;
        let grown = fp.grow(self.cfg, perms, index, storage);
        if live {
            ctx.needs_load = false;
        }
        let grown = grown?;
        let xfd = grown.info().xfd;
        // The default is kept until exec or exit; a grown one replaced by a
        // larger one is dropped here.
        let old = task.fp.replace(grown);
        if task.default.is_none() {
            task.default = old;
        }
        if live && cpu.xfd != xfd {
            // Disarm XFD for what the task now has space for.
            unit.write_xfd(xfd)?;
            cpu.xfd = xfd;
        }
        Ok(())
    }

    /// The vCPU thread `task` enters its attached guest on `cpu` (Linux's
    /// `fpu_swap_kvm_fpstate(.., true)`): the task's live registers are saved
    /// and the guest's loaded (skipped if this CPU still holds them).
    ///
    /// # Errors
    /// [`LifecycleError::NoGuest`], [`LifecycleError::InGuest`], or the save's
    /// and restore's.
    pub fn enter_guest<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
    ) -> Result<Restore, LifecycleError> {
        if task.in_guest {
            return Err(LifecycleError::InGuest);
        }
        if task.guest.is_none() {
            return Err(LifecycleError::NoGuest);
        }
        if let Some((ctx, fp)) = task.active() {
            self.save_live(unit, ctx, fp)?;
        }
        task.in_guest = true;
        self.return_to_user(cpu, unit, task)
    }

    /// The vCPU thread `task` leaves guest mode on `cpu` (Linux's
    /// `fpu_swap_kvm_fpstate(.., false)`): the guest's live registers are
    /// saved; the task's own are loaded on its return to user mode.
    ///
    /// # Errors
    /// [`LifecycleError::NoGuest`] outside guest mode, or the save's.
    pub fn exit_guest<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
    ) -> Result<(), LifecycleError> {
        if !task.in_guest {
            return Err(LifecycleError::NoGuest);
        }
        // The guest stays this CPU's owner: its registers are still here.
        let _ = cpu;
        if let Some((ctx, fp)) = task.active() {
            self.save_live(unit, ctx, fp)?;
        }
        task.in_guest = false;
        Ok(())
    }

    /// Deliver a signal to `task` on `cpu` (Linux's `copy_fpstate_to_sigframe()`
    /// and `fpu__clear_user_states()`): its user state goes into `frame` in the
    /// standard format, with the software bytes and `FP_XSTATE_MAGIC2` sigreturn
    /// checks, and the handler starts with every user component in its init
    /// state (supervisor state untouched). XSAVE writes straight into a 64-byte
    /// aligned frame; another goes through the buffer ([`SignalPath`]).
    /// Returns the frame's size (the standard size plus the 4-byte magic) and
    /// the path.
    ///
    /// Bytes XSAVE does not write (components in their init state, the
    /// standard form's holes) keep what the frame held, as Linux leaves the
    /// user stack's bytes; the header's reserved bytes are zeroed first.
    ///
    /// # Errors
    /// [`LifecycleError::KernelThread`], [`LifecycleError::InGuest`], the
    /// frame's [`BufferTooSmall`], or the save's and restore's.
    pub fn deliver_signal<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
        frame: &mut [u8],
    ) -> Result<(usize, SignalPath), LifecycleError> {
        let path = if frame.as_ptr() as usize % ALIGN == 0 {
            SignalPath::Direct
        } else {
            SignalPath::Buffered
        };
        self.deliver_signal_by(cpu, unit, task, frame, path)
    }

    /// [`Lifecycle::deliver_signal`] by the path given: the buffered one is the
    /// fallback a kernel takes when XSAVE to the user frame faults.
    ///
    /// # Errors
    /// As for [`Lifecycle::deliver_signal`]; a direct path to a frame that is
    /// not 64-byte aligned is [`FpstateError::Misaligned`].
    pub fn deliver_signal_by<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
        frame: &mut [u8],
        path: SignalPath,
    ) -> Result<(usize, SignalPath), LifecycleError> {
        if task.in_guest {
            return Err(LifecycleError::InGuest);
        }
        // The task's own state, supervisor part included, in the registers.
        self.return_to_user(cpu, unit, task)?;
        let (ctx, fp) = task.active().ok_or(LifecycleError::KernelThread)?;
        let user = fp.info().user_features;
        let e = self.cfg.enumeration();
        let size = e.standard_size(user) as usize;
        let needed = size.saturating_add(4);
        let len = match path {
            SignalPath::Direct => {
                let misalignment = frame.as_ptr() as usize % ALIGN;
                if misalignment != 0 {
                    return Err(FpstateError::Misaligned { misalignment }.into());
                }
                let out = BufferTooSmall::prefix_mut(frame, needed)?;
                if let Some(h) = out.get_mut(XSTATE_BV_OFFSET..AREA_HEAD) {
                    h.fill(0);
                }
                unit.save(Insn::Xsave, out, user)?;
                write_sw_bytes(out, user, size);
                needed
            }
            SignalPath::Buffered => {
                BufferTooSmall::check(frame.len(), needed)?;
                self.save_live(unit, ctx, fp)?;
                let n = uabi::export_sigframe(self.cfg, fp, user, frame)?;
                // The export takes MXCSR from the buffer whenever SSE or AVX is
                // live there, as Linux's does; but a compacted save (XSAVEC,
                // XSAVES) writes the MXCSR field only with SSE state, so with
                // AVX alone it is an earlier save's value, and the restore this
                // frame stands for would load 0x1f80 (XSTATE_BV[1] clear). The
                // frame gets the value the registers have.
                if fp.info().form == crate::layout::Form::Compacted
                    && !fp.xstate_bv().contains(XFeatures::SSE)
                {
                    put_u32(frame, MXCSR_OFFSET, MXCSR_DEFAULT);
                }
                // The registers still hold the saved state: live again.
                ctx.needs_load = false;
                n
            }
        };
        if Self::keeps(Rule::SignalInitsUser) {
            self.init_user(unit)?;
        }
        Ok((len, path))
    }

    /// Every user component the configs enable to its init state.
    fn init_user<U: FpuUnit>(&self, unit: &mut U) -> Result<(), LifecycleError> {
        let mask = self.cfg.user().max_features & self.cfg.xcr0();
        unit.restore(Insn::Xrstor, &INIT_IMAGE.0, mask)?;
        Ok(())
    }

    /// Return from a signal handler of `task` on `cpu` (Linux's
    /// `fpu__restore_sig()`): the frame is checked as
    /// [`uabi::import_sigframe`] checks it, then loaded with XRSTOR straight
    /// from it where it is 64-byte aligned, an XSAVE frame, and restores every
    /// user component the task has; otherwise it is imported into the buffer
    /// (an invalidating write) and loaded on the return to user mode.
    ///
    /// # Errors
    /// The frame's [`UabiError`] (the kernel sends SIGSEGV; the task's state is
    /// unchanged), [`LifecycleError::KernelThread`], [`LifecycleError::InGuest`],
    /// or the save's and restore's.
    pub fn sigreturn<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
        frame: &[u8],
    ) -> Result<SignalPath, LifecycleError> {
        if task.in_guest {
            return Err(LifecycleError::InGuest);
        }
        self.sigreturn_by(cpu, unit, task, frame, true)
    }

    /// [`Lifecycle::sigreturn`] by the path given (`direct` only where the
    /// frame qualifies; the buffered path is always open).
    ///
    /// # Errors
    /// As for [`Lifecycle::sigreturn`].
    pub fn sigreturn_by<S: StableStorage, U: FpuUnit>(
        &self,
        cpu: &mut CpuFpu,
        unit: &mut U,
        task: &mut TaskFpu<S>,
        frame: &[u8],
        direct: bool,
    ) -> Result<SignalPath, LifecycleError> {
        if task.in_guest {
            return Err(LifecycleError::InGuest);
        }
        let fp = task.host().ok_or(LifecycleError::KernelThread)?;
        let user = fp.info().user_features;
        let check = uabi::check_sigframe(self.cfg, fp, frame)?;
        let direct = direct
            && frame.as_ptr() as usize % ALIGN == 0
            && check.fx_only.is_none()
            && check.restore_mask.contains(user);
        if direct {
            // The supervisor state must be the task's before XRSTOR replaces
            // only the user part.
            self.return_to_user(cpu, unit, task)?;
            unit.restore(Insn::Xrstor, frame, user)?;
            return Ok(SignalPath::Direct);
        }
        // Through the buffer: make it current (supervisor state included),
        // then write it, which drops the task's last CPU.
        self.sync(cpu, unit, task)?;
        if Self::keeps(Rule::SigreturnInvalidates) {
            task.ctx.forget_cpu();
        }
        let fp = task.host_mut().ok_or(LifecycleError::KernelThread)?;
        uabi::import_sigframe(self.cfg, fp, frame)?;
        Ok(SignalPath::Buffered)
    }
}

/// The software bytes Linux puts at byte 464 of an XSAVE signal frame
/// (`struct _fpx_sw_bytes`), and `FP_XSTATE_MAGIC2` after the `size` bytes.
fn write_sw_bytes(out: &mut [u8], user: XFeatures, size: usize) {
    let size32 = u32::try_from(size).unwrap_or(u32::MAX);
    if let Some(sw) = out.get_mut(SW_BYTES_OFFSET..XSTATE_BV_OFFSET) {
        sw.fill(0);
    }
    put_u32(out, SW_BYTES_OFFSET, FP_XSTATE_MAGIC1);
    put_u32(out, SW_BYTES_OFFSET + 4, size32.saturating_add(4));
    put_u64(out, SW_BYTES_OFFSET + 8, user.bits());
    put_u32(out, SW_BYTES_OFFSET + 16, size32);
    put_u32(out, size, FP_XSTATE_MAGIC2);
}
