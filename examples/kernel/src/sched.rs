//! The scheduler, on the crate's lifecycle layer (`xstate::lifecycle`), the way
//! Linux's FPU core runs its tasks since the 5.2 deferred-load series.
//!
//! - One CPU, one owner record ([`CpuFpu`]); a [`TaskFpu`] per context: the
//!   user tasks and the boot context have an fpstate, the kernel threads none
//!   (`Lifecycle::kernel_thread`: never saved, never loaded).
//! - The timer tick switches round robin through [`SCHEDULE`], in which every
//!   user task is also followed by a kernel thread and then by itself again.
//!   A switch is `switch_out` of the interrupted task (save if its registers
//!   are live; the CPU keeps them and the record still names it). The load
//!   waits for the way back to task code: [`exit_to_task`], which every
//!   interrupt runs last, calls `return_to_user` for a user task, and the layer
//!   skips the restore when the record still names that task and the task last
//!   ran on this CPU (task -> kernel thread -> same task).
//! - Every [`SECTION_EVERY`]th tick opens a kernel SIMD section
//!   (`kernel_fpu_begin`, the interrupted task as current) and computes a vector
//!   sum in it ([`crate::simd`]); dropping the guard ends it, before the switch.
//!   The section drops the owner record, so the next load cannot be skipped.
//! - `-append sabotage` builds the layer with that one invalidation dropped
//!   (`Rule::SectionDropsOwner`): the section's values reach a task whose
//!   restore the layer then wrongly skips, and the tasks' checks see them.
//!
//! The scheduler also keeps its own account of what one CPU must do
//! ([`Shadow`]), written from the rule, not from the layer's code, and the
//! report compares the layer's counts with it.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use xstate::XFeatures;
use xstate::config::Configs;
use xstate::enumerate::Enumeration;
use xstate::fpstate::Mode;
use xstate::insn::{Cpu, CpuError, Fault, Insn, XsaveUnit};
use xstate::lifecycle::{
    CpuFpu, FpuUnit, Lifecycle, LifecycleError, Restore, Rule, Save, SectionInit, TaskFpu, TaskKind,
    UserMode,
};

use crate::hw::{Frame, GPR_RDI, Global, KERNEL_CS, KERNEL_DS};
use crate::simd::{self, Width};
use crate::tasks::{KTHREADS, TASKS};

/// Contexts that the timer schedules: the user tasks `0..TASKS`, then the
/// kernel threads.
pub const RUNNABLE: usize = TASKS + KTHREADS;
/// Context index of the boot code: it starts the run, sleeps while the tasks
/// run, and gets the CPU back at the end. A user context (it has an fpstate).
pub const BOOT: usize = RUNNABLE;
const CONTEXTS: usize = RUNNABLE + 1;
/// Contexts with an fpstate: the user tasks and the boot context.
const AREAS_N: usize = TASKS + 1;

/// The kernel threads' context indices.
const K0: usize = TASKS;
const K1: usize = TASKS + 1;

/// The timer's round robin. Each user task runs, a kernel thread runs, the same
/// user task runs again (its restore can be skipped), then the next user task
/// (its restore cannot: the CPU holds another task's registers).
pub const SCHEDULE: [usize; 12] = [0, K0, 0, 1, K1, 1, 2, K0, 2, 3, K1, 3];

/// A kernel SIMD section in every 7th tick: 7 and the schedule's 12 are coprime,
/// so sections land on every kind of switch (user -> kernel thread, kernel
/// thread -> user, user -> user).
pub const SECTION_EVERY: u64 = 7;

/// The rules the sabotage boot drops: one invalidation, the section's.
pub const SABOTAGE_DROPS: u32 = Rule::SectionDropsOwner as u32;

/// Bytes of fpstate storage per context: the largest non-dynamic standard-form
/// area of current CPUs (AVX-512 + PKRU: 2696) fits; `Fpstate::new_in` refuses
/// a CPU that needs more.
const AREA: usize = 8192;

#[repr(C, align(64))]
struct Area([u8; AREA]);

static AREAS: Global<[Area; AREAS_N]> = Global::new([const { Area([0; AREA]) }; AREAS_N]);

#[repr(C, align(16))]
struct Stack([u8; 65536]);

static STACKS: Global<[Stack; RUNNABLE]> = Global::new([const { Stack([0; 65536]) }; RUNNABLE]);

/// The configs the layer borrows for the whole run: written once by [`init`]
/// before anything reads them, never written again.
static CONFIGS: Global<Option<Configs>> = Global::new(None);

/// The crate's CPU unit, counting which instructions the crate asked for.
pub struct Unit {
    cpu: Cpu,
    xsaveopt: bool,
    /// Saves and restores per instruction, indexed like [`INSNS`].
    pub counts: [u64; 6],
}

/// The instructions an [`XsaveUnit`] is asked for, in [`Unit::counts`] order.
pub const INSNS: [(Insn, &str); 6] = [
    (Insn::Xsave, "xsave"),
    (Insn::Xsaveopt, "xsaveopt"),
    (Insn::Xsavec, "xsavec"),
    (Insn::Xsaves, "xsaves"),
    (Insn::Xrstor, "xrstor"),
    (Insn::Xrstors, "xrstors"),
];

impl Unit {
    /// The unit for this CPU.
    ///
    /// # Errors
    /// As for [`Cpu::user`] (XSAVE not enabled, CPUID refused).
    ///
    /// # Safety
    /// As for [`Cpu::user`]: restores and section preparations run only where
    /// no compiled code holds values in the registers they replace.
    pub unsafe fn new(e: &Enumeration) -> Result<Self, CpuError> {
        Ok(Self {
            // SAFETY: the caller's contract is `Cpu::user`'s. `Cpu::supervisor`
            // would claim XSAVES, which no TCG CPU model has; a kernel on a CPU
            // without XSAVES runs the crate's "user" instruction set in ring 0.
            cpu: unsafe { Cpu::user() }?,
            xsaveopt: e.xsaveopt(),
            counts: [0; 6],
        })
    }

    fn count(&mut self, insn: Insn) {
        if let Some(i) = INSNS.iter().position(|&(x, _)| x == insn) {
            self.counts[i] += 1;
        }
    }

    /// The instructions used so far, e.g. `xsaveopt/xrstor`.
    pub fn mode(&self) -> ModeName<'_> {
        ModeName(self)
    }
}

impl XsaveUnit for Unit {
    fn save(&mut self, insn: Insn, area: &mut [u8], rfbm: XFeatures) -> Result<(), Fault> {
        self.count(insn);
        // The crate uses XSAVE where the CPU lacks XSAVEOPT, and `Cpu` itself
        // refuses an instruction the CPU lacks; this check makes a regression
        // show in this kernel's own report.
        if insn == Insn::Xsaveopt && !self.xsaveopt {
            return Err(Fault::Ud);
        }
        self.cpu.save(insn, area, rfbm)
    }

    fn restore(&mut self, insn: Insn, area: &[u8], rfbm: XFeatures) -> Result<(), Fault> {
        self.count(insn);
        self.cpu.restore(insn, area, rfbm)
    }
}

impl FpuUnit for Unit {
    fn write_xfd(&mut self, xfd: XFeatures) -> Result<(), Fault> {
        // A user-mode `Cpu` refuses; no TCG model has XFD, so the CPU record
        // starts with XFD empty and the layer never asks.
        self.cpu.write_xfd(xfd)
    }

    fn section_init(&mut self, init: SectionInit) -> Result<(), Fault> {
        self.cpu.section_init(init)
    }
}

/// Displays the instructions a [`Unit`] executed.
pub struct ModeName<'a>(&'a Unit);

impl core::fmt::Display for ModeName<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for (i, &(_, name)) in INSNS.iter().enumerate() {
            if self.0.counts[i] > 0 {
                if !first {
                    f.write_str("/")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// The layer as booted: every rule kept, or the sabotage copy.
enum Life {
    Clean(Lifecycle<'static, UserMode>),
    Sabotage(Lifecycle<'static, UserMode, SABOTAGE_DROPS>),
}

/// What one CPU must do, kept by the scheduler from the rule itself (Linux's
/// `fpregs_state_valid()` on one CPU: the registers are a task's if it was the
/// last one loaded and no section has run since): the expectation the layer's
/// counts are compared with.
#[derive(Default)]
pub struct Shadow {
    /// The user context whose registers the CPU holds.
    holder: Option<usize>,
    /// Contexts whose registers are live (loaded, not saved since).
    live: [bool; CONTEXTS],
    /// Loads the rule requires.
    pub restores: u64,
    /// Loads the rule lets the CPU skip.
    pub elided: u64,
    /// Saves: a live context switched out or interrupted by a section.
    pub saves: u64,
}

impl Shadow {
    fn save(&mut self, i: usize) {
        if core::mem::take(&mut self.live[i]) {
            self.saves += 1;
        }
    }

    fn section(&mut self, current: usize) {
        self.save(current);
        self.holder = None;
    }

    fn load(&mut self, i: usize) {
        if self.live[i] {
            return;
        }
        if self.holder == Some(i) {
            self.elided += 1;
        } else {
            self.restores += 1;
            self.holder = Some(i);
        }
        self.live[i] = true;
    }
}

/// The layer's account of one CPU: restores and saves as its events
/// returned them ([`Restore`], [`Save`]), skipped restores and sections from
/// its CPU record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Restores run.
    pub restores: u64,
    /// Restores skipped.
    pub elided: u64,
    /// Saves run.
    pub saves: u64,
    /// Kernel SIMD sections begun.
    pub sections: u64,
}

/// Everything a switch needs but the layer. Lives in [`SCHED`]; touched by the
/// interrupt handlers (interrupts off) and by the boot code only while the
/// timer is masked.
pub struct State {
    cpu: CpuFpu,
    /// The crate's unit.
    pub unit: Unit,
    tasks: [TaskFpu<&'static mut [u8]>; CONTEXTS],
    ctx: [Frame; CONTEXTS],
    current: usize,
    target: u64,
    width: Width,
    /// Switches done.
    pub switches: u64,
    /// Whether the timer switches tasks.
    pub running: bool,
    /// The scheduler's own account.
    pub shadow: Shadow,
    /// What the layer's events said they did.
    said: Counts,
    /// Kernel SIMD sections whose vector sum matched the scalar one, and those
    /// whose did not.
    pub sums_ok: u64,
    /// See [`State::sums_ok`].
    pub sums_wrong: u64,
}

/// The scheduler: the layer and the state it acts on.
pub struct Sched {
    life: Life,
    /// The state.
    pub st: State,
}

/// Set by the tick that hands the CPU back to the boot context.
pub static DONE: AtomicBool = AtomicBool::new(false);

/// The scheduler, once built.
pub static SCHED: Global<Option<Sched>> = Global::new(None);

/// Times each context was switched in (written by the timer handler, read by the
/// tasks to tell whether a check spanned a switch).
pub static SLICES: [AtomicU64; CONTEXTS] = [const { AtomicU64::new(0) }; CONTEXTS];

/// Build the scheduler: the layer over `cfg` (with [`SABOTAGE_DROPS`] dropped
/// if `sabotage`), one user task with a fresh fpstate per user context, one
/// kernel thread per kernel context, and one initial frame per runnable context
/// (entry `task` or `kthread`, its index in RDI, interrupts on).
///
/// # Errors
/// The crate's refusal of the fpstate storage.
///
/// # Safety
/// Called once, with interrupts off; `unit` as for [`Unit::new`].
pub unsafe fn init(
    cfg: Configs,
    unit: Unit,
    sabotage: bool,
    width: Width,
    task: extern "C" fn(u64) -> !,
    kthread: extern "C" fn(u64) -> !,
    target: u64,
) -> Result<(), LifecycleError> {
    // SAFETY: called once before interrupts are on: nothing else holds these,
    // and CONFIGS is never reached through `get` again, so the shared
    // reference below stays the only one.
    let (areas, stacks, configs) = unsafe { (AREAS.get(), STACKS.get(), CONFIGS.get()) };
    let cfg: &'static Configs = configs.insert(cfg);
    let life = if sabotage {
        Life::Sabotage(Lifecycle::with_rules_dropped(cfg, UserMode))
    } else {
        // Mode::User: the crate's name for XSAVE(OPT/C) + XRSTOR, what a kernel
        // on a CPU without XSAVES uses in ring 0 too.
        Life::Clean(Lifecycle::new(cfg, UserMode))
    };
    let tasks = match &life {
        Life::Clean(l) => contexts(l, areas)?,
        Life::Sabotage(l) => contexts(l, areas)?,
    };
    let mut ctx = [Frame::ZERO; CONTEXTS];
    for (i, (c, s)) in ctx.iter_mut().zip(stacks.iter()).enumerate() {
        let entry = if tasks[i].kind() == TaskKind::Kernel {
            kthread
        } else {
            task
        };
        // A Rust function expects RSP = 8 mod 16 at entry (after a call); the
        // slot holds a zero return address it never uses (the task never returns).
        c.rsp = s.0.as_ptr() as u64 + s.0.len() as u64 - 8;
        c.rip = entry as usize as u64;
        c.cs = KERNEL_CS;
        c.ss = KERNEL_DS;
        c.rflags = 0x202; // IF, and the always-one bit 1
        c.gpr[GPR_RDI] = i as u64;
    }
    // SAFETY: interrupts are off (the caller's contract): no handler holds SCHED.
    let s = unsafe { SCHED.get() };
    *s = Some(Sched {
        life,
        st: State {
            // CPU 0, IA32_XFD 0: no TCG model has XFD.
            cpu: CpuFpu::new(0, XFeatures::empty()),
            unit,
            tasks,
            ctx,
            current: BOOT,
            target,
            width,
            switches: 0,
            running: true,
            shadow: Shadow::default(),
            said: Counts::default(),
            sums_ok: 0,
            sums_wrong: 0,
        },
    });
    Ok(())
}

/// The contexts in index order: the user tasks, the kernel threads, the boot
/// context (a user context: it has an fpstate).
fn contexts<const D: u32>(
    life: &Lifecycle<'static, UserMode, D>,
    areas: &'static mut [Area; AREAS_N],
) -> Result<[TaskFpu<&'static mut [u8]>; CONTEXTS], LifecycleError> {
    let mut areas = areas.iter_mut();
    // An empty slice if the areas ran out: `Fpstate::new_in` refuses it.
    let mut user = || life.user_task(areas.next().map_or(&mut [][..], |a| &mut a.0[..]));
    const _: () = assert!(TASKS == 4 && KTHREADS == 2, "the array below");
    Ok([
        user()?,
        user()?,
        user()?,
        user()?,
        life.kernel_thread(),
        life.kernel_thread(),
        user()?,
    ])
}

/// The boot context's first return: its fresh fpstate is loaded, every
/// component in its init state (used to learn which components this CPU tracks
/// in XINUSE).
///
/// # Errors
/// The layer's refusal.
pub fn load_boot() -> Result<(), LifecycleError> {
    // SAFETY: called before the timer runs: no other reference to SCHED.
    match unsafe { SCHED.get() } {
        Some(s) => s.return_to_task(),
        None => Ok(()),
    }
}

/// The timer tick: a kernel SIMD section every [`SECTION_EVERY`]th tick, then
/// a switch to the next context, or back to the boot context once `target`
/// switches are done.
pub fn tick(frame: &mut Frame) {
    // SAFETY: the timer runs with interrupts off (interrupt gate) on one CPU,
    // and the boot code touches SCHED only while the timer is masked.
    let Some(s) = (unsafe { SCHED.get() }).as_mut() else {
        return;
    };
    if !s.st.running {
        return;
    }
    let (cur, done) = (s.st.current, s.switch(frame));
    if let Err(err) = done {
        crate::kprintln!("kernel: FAIL the layer refused a switch away from {cur}: {err}");
        crate::hw::exit(crate::hw::EXIT_FAILURE);
    }
}

/// The way back to task code, which every interrupt takes last (the kernel's
/// "return to user mode": its tasks run in ring 0, but the interrupt return to
/// their code is where Linux's `switch_fpu_return()` runs): a user task's
/// registers are loaded unless the CPU still holds them.
pub fn exit_to_task() {
    // SAFETY: called at the end of an interrupt handler, interrupts off; the
    // handler's own use of SCHED has ended.
    let Some(s) = (unsafe { SCHED.get() }).as_mut() else {
        return;
    };
    if let Err(err) = s.return_to_task() {
        let cur = s.st.current;
        crate::kprintln!("kernel: FAIL the layer refused the return to {cur}: {err}");
        crate::hw::exit(crate::hw::EXIT_FAILURE);
    }
}

impl Sched {
    fn switch(&mut self, frame: &mut Frame) -> Result<(), LifecycleError> {
        match &self.life {
            Life::Clean(l) => self.st.switch(l, frame),
            Life::Sabotage(l) => self.st.switch(l, frame),
        }
    }

    fn return_to_task(&mut self) -> Result<(), LifecycleError> {
        match &self.life {
            Life::Clean(l) => self.st.return_to_task(l),
            Life::Sabotage(l) => self.st.return_to_task(l),
        }
    }
}

impl State {
    fn switch<const D: u32>(
        &mut self,
        life: &Lifecycle<'static, UserMode, D>,
        frame: &mut Frame,
    ) -> Result<(), LifecycleError> {
        let cur = self.current;
        let t = self.switches;
        let next = if t + 1 >= self.target {
            BOOT
        } else {
            SCHEDULE[(t % SCHEDULE.len() as u64) as usize]
        };
        self.ctx[cur] = *frame;
        if t % SECTION_EVERY == SECTION_EVERY - 1 {
            self.shadow.section(cur);
            let mut section = life.kernel_fpu_begin(
                &mut self.cpu,
                &mut self.unit,
                Some(&mut self.tasks[cur]),
                SectionInit::Mxcsr,
            )?;
            self.said.saves += u64::from(section.saved() == Save::Saved);
            let block = simd::block(t);
            let sum = simd::vector_sum(&mut section, &block, self.width);
            drop(section);
            if sum == simd::scalar_sum(&block) {
                self.sums_ok += 1;
            } else {
                self.sums_wrong += 1;
            }
        }
        self.shadow.save(cur);
        let saved = life.switch_out(&mut self.cpu, &mut self.unit, &mut self.tasks[cur])?;
        self.said.saves += u64::from(saved == Save::Saved);
        *frame = self.ctx[next];
        self.current = next;
        self.switches += 1;
        SLICES[next].fetch_add(1, Relaxed);
        if next == BOOT {
            self.running = false;
            crate::hw::pic_timer(false);
            DONE.store(true, Relaxed);
        }
        Ok(())
    }

    fn return_to_task<const D: u32>(
        &mut self,
        life: &Lifecycle<'static, UserMode, D>,
    ) -> Result<(), LifecycleError> {
        let cur = self.current;
        let task = &mut self.tasks[cur];
        // A kernel thread has no user state: nothing to load.
        if task.kind() == TaskKind::Kernel {
            return Ok(());
        }
        self.shadow.load(cur);
        let r = life.return_to_user(&mut self.cpu, &mut self.unit, task)?;
        self.said.restores += u64::from(r == Restore::Loaded);
        Ok(())
    }

    /// XSTATE_BV in context `i`'s fpstate: what its last save wrote (empty for
    /// a kernel thread or a context whose registers are live).
    pub fn xstate_bv(&self, i: usize) -> XFeatures {
        self.tasks
            .get(i)
            .and_then(|t| t.fpstate().ok())
            .map_or(XFeatures::empty(), |f| f.xstate_bv())
    }

    /// The layer's counts for this CPU.
    pub fn stats(&self) -> Counts {
        let st = self.cpu.stats();
        Counts {
            elided: st.elided,
            sections: st.sections,
            ..self.said
        }
    }

    /// The registers the sections computed with.
    pub fn width(&self) -> Width {
        self.width
    }
}
