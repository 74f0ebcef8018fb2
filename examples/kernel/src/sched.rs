//! The scheduler: round-robin over the tasks on every timer tick. A switch
//! copies the interrupted frame out and the next task's in, and moves the rest
//! of the register state with the crate's `swap` (save the outgoing fpstate,
//! restore the incoming one), through the instruction the crate selects.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use xstate::XFeatures;
use xstate::config::Configs;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{Fpstate, FpstateError, Mode, Owner, swap};
use xstate::insn::{Cpu, CpuError, Fault, Insn, XsaveUnit};

use crate::hw::{Frame, GPR_RDI, Global, KERNEL_CS, KERNEL_DS};
use crate::tasks::TASKS;

/// Context index of the boot code: it starts the run, sleeps while the tasks
/// run, and gets the CPU back at the end.
pub const BOOT: usize = TASKS;
const CONTEXTS: usize = TASKS + 1;

/// Bytes of fpstate storage per context: the largest non-dynamic standard-form
/// area of current CPUs (AVX-512 + PKRU: 2696) fits; `Fpstate::new_in` refuses
/// a CPU that needs more.
const AREA: usize = 8192;

#[repr(C, align(64))]
struct Area([u8; AREA]);

static AREAS: Global<[Area; CONTEXTS]> = Global::new([const { Area([0; AREA]) }; CONTEXTS]);

#[repr(C, align(16))]
struct Stack([u8; 65536]);

static STACKS: Global<[Stack; TASKS]> = Global::new([const { Stack([0; 65536]) }; TASKS]);

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
    /// As for [`Cpu::user`]: restores run only where no compiled code holds
    /// values in the registers they replace.
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

/// Everything a switch needs. Lives in [`SCHED`]; touched by the timer handler
/// (interrupts off) and by the boot code only while the timer is masked.
pub struct Sched {
    cfg: Configs,
    /// The crate's unit.
    pub unit: Unit,
    fp: [Fpstate<&'static mut [u8]>; CONTEXTS],
    ctx: [Frame; CONTEXTS],
    current: usize,
    /// The context whose registers the CPU holds (differs from `current` between
    /// a lazy switch and its #NM).
    owner: usize,
    /// Lazy restores done in #NM.
    pub lazy_restores: u64,
    target: u64,
    /// Switches done.
    pub switches: u64,
    /// Whether the timer switches tasks.
    pub running: bool,
}

/// Switches skip the restore (command line `sabotage`): a negative control that
/// must make the tasks see each other's values.
pub static SABOTAGE: AtomicBool = AtomicBool::new(false);

/// Lazy restore (command line `lazy`): a switch sets CR0.TS instead of swapping,
/// and the first FPU-class instruction after it (#NM) saves the registers'
/// owner and restores the running context's fpstate.
pub static LAZY: AtomicBool = AtomicBool::new(false);

/// Set by the tick that hands the CPU back to the boot context.
pub static DONE: AtomicBool = AtomicBool::new(false);

/// The scheduler, once built.
pub static SCHED: Global<Option<Sched>> = Global::new(None);

/// Times each context was switched in (written by the timer handler, read by the
/// tasks to tell whether a check spanned a switch).
pub static SLICES: [AtomicU64; CONTEXTS] = [const { AtomicU64::new(0) }; CONTEXTS];

/// Build the scheduler: one fresh fpstate per context from the crate, one
/// initial frame per task (entry `task`, its index in RDI, interrupts on).
///
/// # Errors
/// The crate's refusal of the fpstate storage.
///
/// # Safety
/// Called once, with interrupts off; `unit` as for [`Unit::new`].
pub unsafe fn init(
    cfg: Configs,
    unit: Unit,
    task: extern "C" fn(u64) -> !,
    target: u64,
) -> Result<(), FpstateError> {
    // SAFETY: called once before interrupts are on: nothing else holds these.
    let (areas, stacks) = unsafe { (AREAS.get(), STACKS.get()) };
    let mut areas = areas.iter_mut();
    let mut next = || -> Result<Fpstate<&'static mut [u8]>, FpstateError> {
        let a = areas.next().map(|a| &mut a.0[..]).unwrap_or(&mut []);
        Fpstate::new_in(&cfg, Owner::Host, a)
    };
    const _: () = assert!(CONTEXTS == 5, "one `next()` per context below");
    let fp = [next()?, next()?, next()?, next()?, next()?];
    let mut ctx = [Frame::ZERO; CONTEXTS];
    for (i, (c, s)) in ctx.iter_mut().zip(stacks.iter()).enumerate() {
        // A Rust function expects RSP = 8 mod 16 at entry (after a call); the
        // slot holds a zero return address it never uses (the task never returns).
        c.rsp = s.0.as_ptr() as u64 + s.0.len() as u64 - 8;
        c.rip = task as usize as u64;
        c.cs = KERNEL_CS;
        c.ss = KERNEL_DS;
        c.rflags = 0x202; // IF, and the always-one bit 1
        c.gpr[GPR_RDI] = i as u64;
    }
    // SAFETY: interrupts are off (the caller's contract): no handler holds SCHED.
    let s = unsafe { SCHED.get() };
    *s = Some(Sched {
        cfg,
        unit,
        fp,
        ctx,
        current: BOOT,
        owner: BOOT,
        lazy_restores: 0,
        target,
        switches: 0,
        running: true,
    });
    Ok(())
}

/// Restore the boot context's fresh fpstate: every component in its init state
/// (used to learn which components this CPU tracks in XINUSE).
///
/// # Errors
/// The crate's refusal.
pub fn restore_boot_init() -> Result<(), FpstateError> {
    // SAFETY: called before the timer runs: no other reference to SCHED.
    let s = unsafe { SCHED.get() };
    match s {
        Some(s) => s.fp[BOOT].restore(&mut s.unit, &s.cfg, Mode::User),
        None => Ok(()),
    }
}

/// The timer tick: switch to the next task, or back to the boot context once
/// `target` switches are done.
pub fn tick(frame: &mut Frame) {
    // SAFETY: the timer runs with interrupts off (interrupt gate) on one CPU,
    // and the boot code touches SCHED only while the timer is masked.
    let Some(s) = (unsafe { SCHED.get() }).as_mut() else {
        return;
    };
    if !s.running {
        return;
    }
    let cur = s.current;
    let next = if s.switches + 1 >= s.target {
        BOOT
    } else if cur == BOOT {
        0
    } else {
        (cur + 1) % TASKS
    };
    s.ctx[cur] = *frame;
    if LAZY.load(Relaxed) {
        // Leave the registers to their owner until the next context touches
        // them: CR0.TS makes that first touch raise #NM.
        crate::hw::set_ts();
        *frame = s.ctx[next];
        finish(s, next);
        return;
    }
    let (out, inc) = pair(&mut s.fp, cur, next);
    // Mode::User: the crate's name for XSAVE(OPT/C) + XRSTOR, what a kernel on a
    // CPU without XSAVES uses in ring 0 too.
    let done = if SABOTAGE.load(Relaxed) {
        // The negative control: save, but leave the outgoing task's registers
        // in place for the incoming one.
        out.save(&mut s.unit, &s.cfg, Mode::User)
    } else {
        swap(&mut s.unit, &s.cfg, Mode::User, out, inc)
    };
    if let Err(err) = done {
        crate::kprintln!("kernel: FAIL the crate refused a switch {cur} -> {next}: {err}");
        crate::hw::exit(crate::hw::EXIT_FAILURE);
    }
    *frame = s.ctx[next];
    s.owner = next;
    finish(s, next);
}

fn finish(s: &mut Sched, next: usize) {
    s.current = next;
    s.switches += 1;
    SLICES[next].fetch_add(1, Relaxed);
    if next == BOOT {
        s.running = false;
        crate::hw::pic_timer(false);
        DONE.store(true, Relaxed);
    }
}

/// #NM after a lazy switch (the stub cleared CR0.TS): save the registers into
/// their owner's fpstate and restore the running context's.
pub fn device_not_available() {
    // SAFETY: #NM runs with interrupts off (interrupt gate); the timer handler
    // that last held SCHED has returned (a lazy switch's #NM comes from the
    // stub's exit path or later), and the boot code touches SCHED only while
    // the timer is masked and CR0.TS is clear.
    let Some(s) = (unsafe { SCHED.get() }).as_mut() else {
        return;
    };
    let (owner, cur) = (s.owner, s.current);
    if owner == cur {
        // The owner was switched back in before touching the FPU: its
        // registers are still in place.
        return;
    }
    let (out, inc) = pair(&mut s.fp, owner, cur);
    let done = if SABOTAGE.load(Relaxed) {
        out.save(&mut s.unit, &s.cfg, Mode::User)
    } else {
        swap(&mut s.unit, &s.cfg, Mode::User, out, inc)
    };
    if let Err(err) = done {
        crate::kprintln!("kernel: FAIL the crate refused a lazy restore {owner} -> {cur}: {err}");
        crate::hw::exit(crate::hw::EXIT_FAILURE);
    }
    s.owner = cur;
    s.lazy_restores += 1;
}

impl Sched {
    /// XSTATE_BV in context `i`'s fpstate: what its last save wrote.
    pub fn xstate_bv(&self, i: usize) -> XFeatures {
        self.fp.get(i).map_or(XFeatures::empty(), |f| f.xstate_bv())
    }
}

/// `(&mut fp[a], &fp[b])` for `a != b`.
fn pair<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &T) {
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &lo[b])
    }
}
