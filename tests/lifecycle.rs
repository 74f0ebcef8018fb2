//! The lifecycle layer on the model: random event sequences over several tasks,
//! kernel threads and guests on two or three modelled CPUs (switches, migration,
//! kernel SIMD sections, signals, ptrace and KVM writes, clone, exec, exit, XFD
//! growth, guest entry and exit). At every return to user mode and every guest
//! entry the CPU's registers must be exactly that context's own latest state:
//! what it last computed, or what a ptrace/KVM write, a signal delivery
//! (init state for the handler), a sigreturn, a clone or an exec made of it.
//!
//! The same driver then runs copies of the layer with one rule dropped each
//! (`Lifecycle<'_, Mode, DROPPED>`; the clean layer runs with the mode fixed in its type, [`UserMode`] or [`SupervisorMode`], as a kernel builds it), and each copy must be caught letting a context
//! see state that is not its own.
//!
//! `XSTATE_LIFECYCLE_SEQUENCES=N` sets the number of sequences for the layer
//! (default 100,000, split over the setups).

use std::collections::VecDeque;

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Mode, Storage};
use xstate::insn::Fault;
use xstate::lifecycle::{
    CpuFpu, FpuUnit, LayerMode, Lifecycle, LifecycleError, Restore, Rule, Save, SectionInit,
    SignalPath, SupervisorMode, TaskFpu, TaskKind, UserMode,
};
use xstate::model::{Quirks, XsaveMachine};
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi;

mod testkit;
use testkit::{Rng, loud};

const TILECFG: u32 = 17;
const TILEDATA: u32 = 18;
const PKRU: u32 = 9;
const EVENTS: usize = 24;
const MAX_TASKS: usize = 6;

/// What a context sees: every user component's register image, and MXCSR.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snap {
    regs: Vec<(u32, Vec<u8>)>,
    mxcsr: u32,
}

impl Snap {
    fn of(m: &XsaveMachine, user: XFeatures) -> Self {
        Self {
            regs: user
                .indices()
                .map(|i| (i, m.reg(i).expect("user component").to_vec()))
                .collect(),
            mxcsr: m.mxcsr(),
        }
    }
    fn set(&mut self, index: u32, offset: usize, bytes: &[u8]) {
        let (_, r) = self.regs.iter_mut().find(|(i, _)| *i == index).unwrap();
        r[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    fn zero(&mut self, index: u32) {
        if let Some((_, r)) = self.regs.iter_mut().find(|(i, _)| *i == index) {
            r.fill(0);
        }
    }
    fn diff(&self, other: &Self) -> String {
        let mut d: Vec<String> = self
            .regs
            .iter()
            .zip(&other.regs)
            .filter(|(a, b)| a != b)
            .map(|((i, a), (_, b))| {
                let k = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
                format!(
                    "component {i} from byte {k}: {:02x?} vs {:02x?}",
                    &a[k..(k + 16).min(a.len())],
                    &b[k..(k + 16).min(b.len())]
                )
            })
            .collect();
        if self.mxcsr != other.mxcsr {
            d.push(format!("MXCSR {:#x} vs {:#x}", self.mxcsr, other.mxcsr));
        }
        d.join(", ")
    }
}

/// One setup: a dump's enumeration, configs and mode.
struct Setup {
    name: &'static str,
    e: Enumeration,
    cfg: Configs,
    mode: Mode,
    quirks: Quirks,
    cpus: usize,
}

fn setups() -> Vec<Setup> {
    let mut v = Vec::new();
    for (name, mode, quirks, cpus) in [
        (
            "intel-sapphire-rapids-xeon-w9-3475x.txt",
            Mode::Supervisor,
            Quirks::INTEL,
            2,
        ),
        (
            "intel-sapphire-rapids-xeon-w9-3475x.txt",
            Mode::User,
            Quirks::INTEL,
            3,
        ),
        (
            "amd-zen4-ryzen-9-7950x.txt",
            Mode::Supervisor,
            Quirks::AMD_ZEN,
            2,
        ),
        (
            "intel-haswell-core-i7-4770.txt",
            Mode::User,
            Quirks::INTEL,
            2,
        ),
    ] {
        let (_, e) = testkit::load(name);
        let linux = Policy::linux(&e);
        let policy = match mode {
            Mode::Supervisor => linux,
            // XSAVEC/XSAVEOPT and XRSTOR cannot move supervisor state.
            Mode::User => Policy {
                enabled: linux.enabled & XFeatures::USER,
                independent: XFeatures::empty(),
                guest_only: XFeatures::empty(),
                ..linux
            },
        };
        let cfg = Configs::new(&e, &policy).unwrap_or_else(|err| panic!("{name}: {err}"));
        v.push(Setup {
            name,
            e,
            cfg,
            mode,
            quirks,
            cpus,
        });
    }
    v
}

/// A context the driver tracks: a task, what it must see, its signal frames.
struct Slot {
    t: TaskFpu<BoxedArea>,
    process: usize,
    expected: Option<Snap>,
    guest_expected: Option<Snap>,
    frames: Vec<(BoxedArea, usize, Snap)>,
    on: Option<usize>,
    /// Running user (or guest) code: the only time it computes.
    in_user: bool,
    /// Grown after an XFD first use (until exec).
    grown: bool,
}

impl Slot {
    /// A task not yet scheduled, of `process`, expected to hold `expected`
    /// (none for a kernel thread).
    fn new(t: TaskFpu<BoxedArea>, process: usize, expected: Option<Snap>) -> Self {
        Self {
            t,
            process,
            expected,
            guest_expected: None,
            frames: Vec::new(),
            on: None,
            in_user: false,
            grown: false,
        }
    }
}

/// Why a sequence failed: a context saw state not its own, or the layer
/// refused an event it should take.
#[derive(Debug)]
#[allow(dead_code, reason = "the texts are read through Debug in reports")]
enum Failure {
    Saw(String),
    Refused(String),
}

struct World<'c, M: LayerMode, const D: u32> {
    s: &'c Setup,
    lc: Lifecycle<'c, M, D>,
    cpus: Vec<(CpuFpu, XsaveMachine)>,
    running: Vec<Option<usize>>,
    slots: Vec<Option<Slot>>,
    procs: Vec<ProcessPerms>,
    user: XFeatures,
    init: Snap,
    rng: Rng,
    log: VecDeque<String>,
    /// Restores the layer ran (`Restore::Loaded` from a return to user mode
    /// or a guest entry).
    restores: u64,
}

fn size_of(cfg: &Configs, features: XFeatures) -> usize {
    let e = cfg.enumeration();
    match cfg.kernel().form {
        xstate::layout::Form::Compacted => e.compacted_size(features) as usize,
        xstate::layout::Form::Standard => e.standard_size(features) as usize,
    }
}

impl<'c, M: LayerMode, const D: u32> World<'c, M, D> {
    /// The world of setup `s` with the layer in `mode`, which must be
    /// `s.mode` (at compile time or at run time).
    fn new(s: &'c Setup, seed: u64, mode: M) -> Self {
        assert_eq!(mode.get(), s.mode);
        let cfg = &s.cfg;
        let xfd = cfg.policy().dynamic;
        let cpus = (0..s.cpus)
            .map(|c| {
                let mut m = XsaveMachine::new(&s.e, s.quirks);
                m.set_xcr0(cfg.xcr0()).unwrap();
                m.set_xss(cfg.xss()).unwrap();
                m.set_xfd(xfd).unwrap();
                (CpuFpu::new(c as u32, xfd), m)
            })
            .collect::<Vec<_>>();
        let user = cfg.user().max_features & cfg.xcr0();
        let init = Snap::of(&cpus[0].1, user);
        let mut w = Self {
            s,
            lc: Lifecycle::with_rules_dropped(cfg, mode),
            cpus,
            running: vec![None; s.cpus],
            slots: Vec::new(),
            procs: Vec::new(),
            user,
            init,
            rng: Rng(seed | 1),
            log: VecDeque::new(),
            restores: 0,
        };
        for _ in 0..3 {
            w.spawn();
        }
        let k = w.lc.kernel_thread();
        w.slots.push(Some(Slot::new(k, 0, None)));
        w
    }

    fn note(&mut self, s: String) {
        if self.log.len() == 40 {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    fn default_area(&self) -> BoxedArea {
        BoxedArea::zeroed(self.s.cfg.kernel().default_size as usize)
    }

    fn spawn(&mut self) {
        let t = self.lc.user_task(self.default_area()).unwrap();
        self.procs.push(ProcessPerms::new(&self.s.cfg));
        let process = self.procs.len() - 1;
        let init = self.init.clone();
        self.slots.push(Some(Slot::new(t, process, Some(init))));
    }

    fn live_slots(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// A random slot index satisfying `f`.
    fn pick(&mut self, f: impl Fn(&Slot) -> bool) -> Option<usize> {
        let ok: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].as_ref().is_some_and(&f))
            .collect();
        if ok.is_empty() {
            None
        } else {
            Some(ok[self.rng.below(ok.len() as u64) as usize])
        }
    }

    fn refused(&self, what: &str, e: LifecycleError) -> Failure {
        Failure::Refused(format!("{what}: {e}"))
    }

    /// The current task of `c` returns to user mode (or enters its guest): its
    /// registers must be its own.
    fn back_to_user(&mut self, c: usize) -> Result<(), Failure> {
        let Some(i) = self.running[c] else {
            return Ok(());
        };
        let slot = self.slots[i].as_mut().unwrap();
        if slot.expected.is_none() {
            return Ok(()); // a kernel thread
        }
        let (cpu, m) = &mut self.cpus[c];
        let how = match self.lc.return_to_user(cpu, m, &mut slot.t) {
            Ok(r) => {
                self.restores += u64::from(r == Restore::Loaded);
                r
            }
            Err(e) => {
                return Err(Failure::Saw(format!(
                    "return to user on cpu {c} failed: {e}"
                )));
            }
        };
        let want = if slot.t.in_guest() {
            slot.guest_expected.as_ref().unwrap()
        } else {
            slot.expected.as_ref().unwrap()
        };
        let got = Snap::of(m, self.user);
        slot.in_user = true;
        // The task's record names this CPU (the guest's own, in guest mode).
        if !slot.t.in_guest() && slot.t.last_cpu() != Some(c as u32) {
            return Err(Failure::Saw(format!(
                "slot {i} runs on cpu {c}, its last CPU reads {:?}",
                slot.t.last_cpu()
            )));
        }
        if &got != want {
            return Err(Failure::Saw(format!(
                "slot {i} ({}) on cpu {c} after {how:?}: {}",
                if slot.t.in_guest() { "guest" } else { "task" },
                got.diff(want)
            )));
        }
        Ok(())
    }

    /// The current context of `c` computes: random register writes.
    fn compute(&mut self, c: usize) -> Result<(), Failure> {
        let Some(i) = self.running[c] else {
            return Ok(());
        };
        let slot = self.slots[i].as_ref().unwrap();
        if slot.expected.is_none() || !slot.in_user {
            return Ok(());
        }
        let n = 1 + self.rng.below(3);
        for _ in 0..n {
            let comps: Vec<u32> = self.user.indices().filter(|&x| x >= 1).collect();
            let idx = comps[self.rng.below(comps.len() as u64) as usize];
            let m = &mut self.cpus[c].1;
            let size = m.reg(idx).unwrap().len();
            let (off, bytes) = match idx {
                PKRU => (0, (self.rng.next() as u32 & !3).to_le_bytes().to_vec()),
                TILECFG => (
                    0,
                    testkit::tilecfg_image(1 + self.rng.below(8) as usize).to_vec(),
                ),
                _ => {
                    let off = (self.rng.below((size / 16) as u64) * 16) as usize;
                    let mut b = vec![0u8; 16.min(size)];
                    self.rng.fill(&mut b);
                    (off, b)
                }
            };
            let mut r = m.write_reg(idx, off, &bytes);
            if r == Err(Fault::Nm) {
                // XFD first use: grow if the process may, else SIGILL (the write
                // does not happen).
                let slot = self.slots[i].as_mut().unwrap();
                let perms = &self.procs[slot.process];
                let in_guest = slot.t.in_guest();
                if in_guest {
                    // The guest's fpstate has no space for it: the #NM is the
                    // guest's to handle, and the write does not happen.
                    continue;
                }
                let grown = BoxedArea::zeroed(size_of(
                    &self.s.cfg,
                    self.s.cfg.kernel().default_features | perms.get(PermKind::Task).features,
                ));
                let (cpu, m) = &mut self.cpus[c];
                match self.lc.handle_xfd(cpu, m, &mut slot.t, perms, idx, grown) {
                    Ok(()) => {
                        slot.grown = true;
                        self.log
                            .push_back(format!("slot {i} grew for {idx} on cpu {c}"));
                        // Back to user mode, where the instruction runs again.
                        match self.lc.return_to_user(cpu, m, &mut slot.t) {
                            Ok(r) => self.restores += u64::from(r == Restore::Loaded),
                            Err(e) => {
                                return Err(Failure::Saw(format!("return after growth: {e}")));
                            }
                        }
                        r = m.write_reg(idx, off, &bytes);
                    }
                    Err(LifecycleError::Fpstate(xstate::fpstate::FpstateError::NotPermitted {
                        ..
                    })) => continue,
                    Err(e) => return Err(self.refused("handle_xfd", e)),
                }
            }
            if let Err(f) = r {
                return Err(Failure::Saw(format!(
                    "write of component {idx} faulted: {f:?}"
                )));
            }
            // A VEX or EVEX write of YMM/ZMM register r writes its low 128 bits
            // too (so SSE is in use whenever AVX is, as on the CPU).
            let r = match idx {
                2 => Some(off / 16),
                6 => Some(off / 32),
                _ => None,
            };
            if let Some(r) = r {
                let m = &mut self.cpus[c].1;
                let mut lo = [0u8; 16];
                self.rng.fill(&mut lo);
                m.write_reg(1, 16 * r, &lo).unwrap();
                if idx == 6 {
                    m.write_reg(2, 16 * r, &lo).unwrap();
                }
            }
        }
        self.note(format!("cpu {c}: slot {i} computes"));
        let m = &mut self.cpus[c].1;
        if self.rng.below(3) == 0 {
            let v = 0x1f80 ^ ((self.rng.next() as u32) & 0x6040);
            m.set_mxcsr(v).unwrap();
        }
        let snap = Snap::of(m, self.user);
        let slot = self.slots[i].as_mut().unwrap();
        if slot.t.in_guest() {
            slot.guest_expected = Some(snap);
        } else {
            slot.expected = Some(snap);
        }
        Ok(())
    }

    fn schedule(&mut self, c: usize) -> Result<(), Failure> {
        if let Some(i) = self.running[c].take() {
            let slot = self.slots[i].as_mut().unwrap();
            slot.on = None;
            slot.in_user = false;
            let (cpu, m) = &mut self.cpus[c];
            if let Err(e) = self.lc.switch_out(cpu, m, &mut slot.t) {
                return Err(self.refused("switch_out", e));
            }
            self.note(format!("cpu {c}: switch out slot {i}"));
        }
        if let Some(i) = self.pick(|s| s.on.is_none()) {
            if self.rng.below(8) != 0 {
                self.slots[i].as_mut().unwrap().on = Some(c);
                self.running[c] = Some(i);
                self.note(format!("cpu {c}: run slot {i}"));
                return self.back_to_user(c);
            }
        }
        self.note(format!("cpu {c}: idle"));
        Ok(())
    }

    fn section(&mut self, c: usize) -> Result<(), Failure> {
        let cur = self.running[c];
        let (cpu, m) = &mut self.cpus[c];
        let task = cur.map(|i| &mut self.slots[i].as_mut().unwrap().t);
        let init = if self.rng.below(2) == 0 {
            SectionInit::Mxcsr
        } else {
            SectionInit::MxcsrAndX87
        };
        let mut sec = match self.lc.kernel_fpu_begin(cpu, m, task, init) {
            Ok(s) => s,
            Err(e) => return Err(Failure::Refused(format!("kernel_fpu_begin: {e}"))),
        };
        // The kernel's own SIMD work: it leaves its values in XMM and YMM.
        let mut b = [0u8; 16];
        self.rng.fill(&mut b);
        sec.unit().write_reg(1, 0, &b).unwrap();
        if self.user.contains(XFeatures::AVX) {
            sec.unit().write_reg(2, 16, &b).unwrap();
        }
        sec.unit().set_mxcsr(0x1f80 | 0x6000).unwrap();
        drop(sec);
        self.note(format!("cpu {c}: kernel section"));
        self.back_to_user(c)
    }

    fn current_user(&self, c: usize, guest_ok: bool) -> Option<usize> {
        let i = self.running[c]?;
        let s = self.slots[i].as_ref().unwrap();
        (s.expected.is_some() && (guest_ok || !s.t.in_guest())).then_some(i)
    }

    fn signal(&mut self, c: usize) -> Result<(), Failure> {
        let Some(i) = self.current_user(c, false) else {
            return Ok(());
        };
        let size = self.s.cfg.user().max_size as usize + 4 + 64;
        let mut frame = BoxedArea::zeroed(size);
        let (off, path) = match self.rng.below(3) {
            0 => (8, SignalPath::Buffered),
            1 => (0, SignalPath::Buffered),
            _ => (0, SignalPath::Direct),
        };
        let slot = self.slots[i].as_mut().unwrap();
        let (cpu, m) = &mut self.cpus[c];
        let r = self
            .lc
            .deliver_signal_by(cpu, m, &mut slot.t, &mut frame.bytes_mut()[off..], path);
        if let Err(e) = r {
            return Err(Failure::Refused(format!("deliver_signal: {e}")));
        }
        let saved = slot.expected.replace(self.init.clone()).unwrap();
        slot.frames.push((frame, off, saved));
        self.note(format!("cpu {c}: signal to slot {i} by {path:?}"));
        self.back_to_user(c)
    }

    fn sigreturn(&mut self, c: usize) -> Result<(), Failure> {
        let Some(i) = self.current_user(c, false) else {
            return Ok(());
        };
        let direct = self.rng.below(2) == 0;
        let slot = self.slots[i].as_mut().unwrap();
        let Some((frame, off, saved)) = slot.frames.pop() else {
            return Ok(());
        };
        let (cpu, m) = &mut self.cpus[c];
        match self
            .lc
            .sigreturn_by(cpu, m, &mut slot.t, &frame.bytes()[off..], direct)
        {
            Ok(p) => self
                .log
                .push_back(format!("cpu {c}: sigreturn slot {i} by {p:?}")),
            Err(e) => return Err(Failure::Refused(format!("sigreturn: {e}"))),
        }
        slot.expected = Some(saved);
        self.back_to_user(c)
    }

    /// A standard-format copy of `fp`, XMM0 replaced: what a ptrace or KVM
    /// write sends. Returns the buffer and the new XMM0.
    fn rewritten(
        rng: &mut Rng,
        cfg: &Configs,
        fp: &xstate::fpstate::Fpstate<BoxedArea>,
    ) -> (Vec<u8>, [u8; 16], u32) {
        let mut buf = vec![0u8; fp.info().user_size as usize];
        uabi::export(cfg, fp, XFeatures::all(), &mut buf).unwrap();
        let mut x = [0u8; 16];
        rng.fill(&mut x);
        buf[160..176].copy_from_slice(&x);
        let bv = testkit::get_u64(&buf, 512) | 2;
        testkit::put_u64(&mut buf, 512, bv);
        let mxcsr = testkit::get_u32(&buf, 24);
        (buf, x, mxcsr)
    }

    /// A write into a stopped context's buffer: `PTRACE_SETREGSET` into a
    /// task, or `KVM_SET_XSAVE` into a guest outside guest mode. XMM0 changes,
    /// and MXCSR is what the write sends (the exported value).
    fn buffer_write(&mut self, kvm: bool) -> Result<(), Failure> {
        let pick = if kvm {
            self.pick(|s| s.guest_expected.is_some() && !s.t.in_guest())
        } else {
            self.pick(|s| s.on.is_none() && s.expected.is_some() && !s.t.in_guest())
        };
        let Some(i) = pick else {
            return Ok(());
        };
        let cfg = &self.s.cfg;
        let slot = self.slots[i].as_mut().unwrap();
        let w = if kvm {
            self.lc.kvm_write(&mut slot.t)
        } else {
            self.lc.ptrace_write(&mut slot.t)
        };
        let mut w = w.map_err(|e| Failure::Refused(format!("buffer write: {e}")))?;
        let (buf, x, mxcsr) = Self::rewritten(&mut self.rng, cfg, &w);
        uabi::import(cfg, &mut w, &buf).unwrap();
        let exp = if kvm {
            slot.guest_expected.as_mut()
        } else {
            slot.expected.as_mut()
        };
        let exp = exp.unwrap();
        exp.set(1, 0, &x);
        exp.mxcsr = mxcsr;
        self.note(format!("buffer write (kvm {kvm}) slot {i}"));
        Ok(())
    }

    fn clone_task(&mut self, c: usize) -> Result<(), Failure> {
        if self.live_slots() >= MAX_TASKS {
            return Ok(());
        }
        let Some(i) = self.current_user(c, false) else {
            return Ok(());
        };
        let kind = self.rng.below(3);
        if kind == 2 {
            let k = self.lc.kernel_thread();
            self.slots.push(Some(Slot::new(k, 0, None)));
            return Ok(());
        }
        let area = self.default_area();
        let slot = self.slots[i].as_mut().unwrap();
        let (cpu, m) = &mut self.cpus[c];
        let child = match self.lc.clone_task(cpu, m, &mut slot.t, area) {
            Ok(t) => t,
            Err(e) => return Err(Failure::Refused(format!("clone: {e}"))),
        };
        let mut expected = slot.expected.clone().unwrap();
        // Dynamic components are caller-saved: init in the child.
        for d in self.s.cfg.policy().dynamic.indices() {
            expected.zero(d);
        }
        let process = if kind == 0 {
            self.procs.push(self.procs[slot.process]);
            self.procs.len() - 1
        } else {
            slot.process
        };
        self.slots
            .push(Some(Slot::new(child, process, Some(expected))));
        self.note(format!("cpu {c}: slot {i} clones"));
        self.back_to_user(c)
    }

    fn exec(&mut self, c: usize) -> Result<(), Failure> {
        let Some(i) = self.current_user(c, false) else {
            return Ok(());
        };
        let slot = self.slots[i].as_mut().unwrap();
        let default = self.s.cfg.kernel().default_size as usize;
        match self.lc.exec(&mut slot.t) {
            Err(e) => return Err(Failure::Refused(format!("exec: {e}"))),
            // A grown buffer comes back; the task is on its default one.
            Ok(grown) => {
                let size = slot.t.fpstate().map(|f| f.info().size as usize);
                let back = grown.map(|g| g.bytes().len());
                let was_grown = std::mem::take(&mut slot.grown);
                if size != Ok(default)
                    || back.is_some() != was_grown
                    || back.is_some_and(|n| n <= default)
                {
                    return Err(Failure::Refused(format!(
                        "exec left an fpstate of {size:?} bytes (default {default}) and gave back {back:?}"
                    )));
                }
            }
        }
        slot.expected = Some(self.init.clone());
        slot.frames.clear();
        self.procs[slot.process] = ProcessPerms::new(&self.s.cfg);
        self.note(format!("cpu {c}: slot {i} execs"));
        self.back_to_user(c)
    }

    fn exit(&mut self, c: usize) -> Result<(), Failure> {
        let Some(i) = self.running[c] else {
            return Ok(());
        };
        if self.slots[i].as_ref().unwrap().t.in_guest() {
            return Ok(());
        }
        let slot = self.slots[i].take().unwrap();
        self.running[c] = None;
        let (user, was_grown) = (slot.t.kind() == TaskKind::User, slot.grown);
        let r = self.lc.exit(&mut self.cpus[c].0, slot.t);
        // A user task's default storage and, after a growth, the larger one
        // come back; a kernel thread has none.
        let default = self.s.cfg.kernel().default_size as usize;
        let sizes = (
            r.default.as_ref().map(|d| d.bytes().len()),
            r.grown.as_ref().map(|g| g.bytes().len()),
        );
        let ok = if user {
            sizes.0 == Some(default)
                && sizes.1.is_some() == was_grown
                && sizes.1.is_none_or(|n| n > default)
        } else {
            sizes == (None, None)
        };
        if !ok {
            return Err(Failure::Refused(format!(
                "exit gave back {sizes:?} (default {default})"
            )));
        }
        self.note(format!("cpu {c}: slot {i} exits"));
        if self.live_slots() < 3 {
            self.spawn();
        }
        Ok(())
    }

    fn request(&mut self) {
        if self.s.cfg.policy().dynamic.is_empty() || self.procs.is_empty() {
            return;
        }
        let p = self.rng.below(self.procs.len() as u64) as usize;
        let _ = self.procs[p].request(&self.s.cfg, PermKind::Task, TILEDATA.into(), |_| true);
    }

    fn guest(&mut self, c: usize) -> Result<(), Failure> {
        let Some(i) = self.current_user(c, true) else {
            return Ok(());
        };
        let in_guest = self.slots[i].as_ref().unwrap().t.in_guest();
        let (cpu, m) = &mut self.cpus[c];
        let slot = self.slots[i].as_mut().unwrap();
        if in_guest {
            if let Err(e) = self.lc.exit_guest(cpu, m, &mut slot.t) {
                return Err(Failure::Refused(format!("exit_guest: {e}")));
            }
            slot.in_user = false;
            self.note(format!("cpu {c}: slot {i} leaves its guest"));
            // Sometimes straight back in, without user mode between.
            if self.rng.below(3) == 0 {
                return Ok(());
            }
            return self.back_to_user(c);
        }
        if slot.guest_expected.is_none() {
            let g = self
                .lc
                .guest(BoxedArea::zeroed(self.s.cfg.guest().default_size as usize))
                .unwrap();
            slot.t.attach_guest(g).unwrap();
            slot.guest_expected = Some(self.init.clone());
        }
        match self.lc.enter_guest(cpu, m, &mut slot.t) {
            Ok(r) => self.restores += u64::from(r == Restore::Loaded),
            Err(e) => return Err(Failure::Refused(format!("enter_guest: {e}"))),
        }
        let got = Snap::of(m, self.user);
        let want = slot.guest_expected.as_ref().unwrap();
        if &got != want {
            return Err(Failure::Saw(format!(
                "slot {i}'s guest on entry, cpu {c}: {}",
                got.diff(want)
            )));
        }
        slot.in_user = true;
        self.note(format!("cpu {c}: slot {i} enters its guest"));
        Ok(())
    }

    fn step(&mut self) -> Result<(), Failure> {
        let c = self.rng.below(self.cpus.len() as u64) as usize;
        match self.rng.below(15) {
            0..=3 => self.schedule(c),
            4..=5 => self.compute(c),
            6 => self.section(c),
            7 => self.signal(c),
            8 => self.sigreturn(c),
            9 => self.buffer_write(false),
            10 => self.buffer_write(true),
            11 => self.clone_task(c),
            12 => {
                if self.rng.below(2) == 0 {
                    self.exec(c)
                } else {
                    self.exit(c)
                }
            }
            13 => {
                self.request();
                self.compute(c)
            }
            _ => self.guest(c),
        }
    }

    fn run(&mut self) -> Result<(), Failure> {
        for _ in 0..EVENTS {
            self.step()?;
        }
        Ok(())
    }

    fn stats(&self) -> (u64, u64, u64) {
        self.cpus
            .iter()
            .fold((self.restores, 0, 0), |(r, e, k), (c, _)| {
                let s = c.stats();
                (r, e + s.elided, k + s.sections)
            })
    }
}

/// One sequence of `w`: its verdict, its counts and its last events.
fn clean_run<M: LayerMode>(
    mut w: World<'_, M, 0>,
) -> (Result<(), Failure>, (u64, u64, u64), VecDeque<String>) {
    let r = w.run();
    (r, w.stats(), w.log)
}

/// Sequences of the layer with rules `D` dropped on setup `s` (the mode
/// chosen at run time, [`Mode`]): how many saw a
/// violation, and the first one's text.
fn run_copy<const D: u32>(s: &Setup, seeds: std::ops::Range<u64>) -> (u64, Option<String>) {
    let mut caught = 0;
    let mut first = None;
    for seed in seeds {
        let seed_w = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xabcd;
        let mut w = World::<Mode, D>::new(s, seed_w, s.mode);
        if let Err(f) = w.run() {
            caught += 1;
            if first.is_none() {
                first = Some(format!(
                    "{} seed {seed}: {f:?}\n  last events: {:?}",
                    s.name, w.log
                ));
            }
        }
    }
    (caught, first)
}

fn sequences() -> u64 {
    std::env::var("XSTATE_LIFECYCLE_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn lifecycle_keeps_every_context_its_own_state_and_every_rule_is_needed() {
    let setups = setups();
    let total = sequences();
    let per = total / setups.len() as u64;
    let mut violations = 0;
    let (mut restores, mut elided, mut sections) = (0, 0, 0);
    for s in &setups {
        let mut first = None;
        for seed in 0..per {
            let seed_w = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234;
            // The layer as kernels build it: the mode fixed in its type.
            let (r, (a, b, k), log) = match s.mode {
                Mode::User => clean_run(World::<UserMode, 0>::new(s, seed_w, UserMode)),
                Mode::Supervisor => {
                    clean_run(World::<SupervisorMode, 0>::new(s, seed_w, SupervisorMode))
                }
            };
            restores += a;
            elided += b;
            sections += k;
            if let Err(f) = r {
                violations += 1;
                first.get_or_insert(format!("{} seed {seed}: {f:?}\n  last: {log:?}", s.name));
            }
        }
        assert!(first.is_none(), "the layer failed: {}", first.unwrap());
    }
    // Each rule dropped in turn, on every setup where the rule has something
    // to do (XFD only where a component is dynamic).
    macro_rules! copies {
        ($($rule:ident),*) => {
            [$((Rule::$rule, stringify!($rule), run_copy::<{ Rule::$rule as u32 }> as fn(&Setup, std::ops::Range<u64>) -> (u64, Option<String>))),*]
        };
    }
    let copies = copies!(
        NeedsLoad,
        CpuCheck,
        OwnerCheck,
        LoadTakesOwner,
        SectionSaves,
        SectionDropsOwner,
        PtraceInvalidates,
        SigreturnInvalidates,
        KvmInvalidates,
        ExecInvalidates,
        SignalInitsUser,
        XfdSwitch
    );
    assert_eq!(copies.len(), Rule::ALL.len());
    let mut caught_rules = 0;
    for (rule, name, run) in copies {
        let mut caught = 0;
        let mut tried = 0;
        let mut example = None;
        for s in &setups {
            if rule == Rule::XfdSwitch && s.cfg.policy().dynamic.is_empty() {
                continue;
            }
            let (n, first) = run(s, 0..2_000);
            tried += 2_000;
            caught += n;
            if example.is_none() {
                example = first;
            }
        }
        loud!(
            "dropped rule {name}: caught in {caught} of {tried} sequences{}",
            example
                .as_deref()
                .map(|e| format!("; first: {}", e.lines().next().unwrap_or("")))
                .unwrap_or_default()
        );
        if caught > 0 {
            caught_rules += 1;
        }
    }
    let n = per * setups.len() as u64;
    loud!(
        "lifecycle: {n} sequences, {violations} violations; dropped rules caught: {caught_rules} of {}",
        Rule::ALL.len()
    );
    loud!("lifecycle: {restores} restores, {elided} elided, {sections} kernel SIMD sections");
    assert_eq!(violations, 0);
    assert_eq!(
        caught_rules,
        Rule::ALL.len(),
        "a dropped rule went unnoticed"
    );
    assert!(n >= 100_000 || std::env::var("XSTATE_LIFECYCLE_SEQUENCES").is_ok());
    assert!(elided > 0 && restores > 0 && sections > 0);
}

/// The recorded Sapphire Rapids (AMX, XFD, XSAVES) and Linux's configs for it:
/// the unit tests' machine.
fn sapphire_rapids() -> (Enumeration, Configs) {
    let (_, e) = testkit::load("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    (e, cfg)
}

/// Every `u32` is a CPU number, the last one included: a task that ran there
/// reads it back and is elided there, and one that never ran reads none.
#[test]
fn the_highest_cpu_number_is_a_cpu() {
    let (e, cfg) = sapphire_rapids();
    let lc = Lifecycle::new(&cfg, SupervisorMode);
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    m.set_xfd(cfg.policy().dynamic).unwrap();
    let mut cpu = CpuFpu::new(u32::MAX, cfg.policy().dynamic);
    let mut t = lc
        .user_task(BoxedArea::zeroed(cfg.kernel().default_size as usize))
        .unwrap();
    assert_eq!(t.last_cpu(), None);
    assert_eq!(
        lc.return_to_user(&mut cpu, &mut m, &mut t),
        Ok(Restore::Loaded)
    );
    assert_eq!(t.last_cpu(), Some(u32::MAX));
    // The record: its number, the task as owner, XFD as it was built.
    assert_eq!(
        (cpu.cpu(), cpu.owner(), cpu.xfd(), cpu.can_borrow()),
        (u32::MAX, Some(t.id()), cfg.policy().dynamic, true)
    );
    assert_eq!(lc.switch_out(&mut cpu, &mut m, &mut t), Ok(Save::Saved));
    assert_eq!(
        lc.return_to_user(&mut cpu, &mut m, &mut t),
        Ok(Restore::Elided)
    );
    assert_eq!(lc.switch_out(&mut cpu, &mut m, &mut t), Ok(Save::Saved));
    // Saved already: nothing to save again.
    assert_eq!(lc.switch_out(&mut cpu, &mut m, &mut t), Ok(Save::NotLive));
    // One restore skipped, no section.
    let st = *cpu.stats();
    assert_eq!((st.elided, st.sections), (1, 0));
    let sec = lc
        .kernel_fpu_begin(&mut cpu, &mut m, Some(&mut t), SectionInit::Mxcsr)
        .unwrap();
    assert_eq!(sec.cpu(), u32::MAX, "the section names its CPU");
    assert_eq!(sec.saved(), Save::NotLive, "the task was saved already");
    drop(sec);
    let again = lc.return_to_user(&mut cpu, &mut m, &mut t);
    assert_eq!(again, Ok(Restore::Loaded));
    let sec = lc
        .kernel_fpu_begin(&mut cpu, &mut m, Some(&mut t), SectionInit::Mxcsr)
        .unwrap();
    assert_eq!(sec.saved(), Save::Saved, "the live task is saved");
    drop(sec);
    let st = *cpu.stats();
    assert_eq!((st.elided, st.sections), (1, 2));
    let mut k: TaskFpu<BoxedArea> = lc.kernel_thread();
    assert_eq!(lc.switch_out(&mut cpu, &mut m, &mut k), Ok(Save::NotLive));
}

/// A section on the model starts with MXCSR 0x1f80 and, only when x87 is
/// asked for, FNINIT's control word 0x37f; contexts get distinct non-zero ids.
#[test]
fn sections_start_from_clean_modes_and_ids_are_distinct() {
    let (e, cfg) = sapphire_rapids();
    let lc = Lifecycle::new(&cfg, SupervisorMode);
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    let mut cpu = CpuFpu::new(0, XFeatures::empty());
    let modes = |m: &XsaveMachine| (m.mxcsr(), m.reg(0).unwrap()[..2].to_vec());
    for (init, fcw) in [
        (SectionInit::Mxcsr, 0x007fu16),
        (SectionInit::MxcsrAndX87, 0x037f),
    ] {
        m.set_mxcsr(0x7f80).unwrap();
        m.write_reg(0, 0, &0x007fu16.to_le_bytes()).unwrap();
        let mut sec = lc
            .kernel_fpu_begin::<BoxedArea, _>(&mut cpu, &mut m, None, init)
            .unwrap();
        assert_eq!(
            modes(sec.unit()),
            (0x1f80, fcw.to_le_bytes().to_vec()),
            "{init:?}"
        );
    }
    let area = || BoxedArea::zeroed(cfg.kernel().default_size as usize);
    let (a, b) = (lc.user_task(area()).unwrap(), lc.user_task(area()).unwrap());
    let k: TaskFpu<BoxedArea> = lc.kernel_thread();
    let ids = [a.id().get(), b.id().get(), k.id().get()];
    assert!(ids.iter().all(|&i| i != 0), "{ids:?}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
}

/// A save or restore that fails (here: a task made by a layer of other
/// configs, a foreign fpstate) leaves the CPU record and the task as they
/// were: the registers still live after a failed save, still to be loaded
/// after a failed restore, nothing counted.
#[test]
fn a_failed_save_or_restore_changes_no_record() {
    let (e, cfg) = sapphire_rapids();
    let other = Configs::new(&e, &Policy::linux(&e)).unwrap();
    let lc = Lifecycle::new(&cfg, SupervisorMode);
    let foreign = Lifecycle::new(&other, SupervisorMode);
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    m.set_xfd(cfg.policy().dynamic).unwrap();
    let mut cpu = CpuFpu::new(3, cfg.policy().dynamic);
    let area = || BoxedArea::zeroed(cfg.kernel().default_size as usize);
    let mut t = lc.user_task(area()).unwrap();
    let record = |cpu: &CpuFpu, t: &TaskFpu<BoxedArea>| {
        let st = *cpu.stats();
        (
            cpu.owner(),
            st.elided,
            st.sections,
            t.last_cpu(),
            t.registers_live(),
        )
    };
    let before = record(&cpu, &t);
    let r = foreign.return_to_user(&mut cpu, &mut m, &mut t);
    assert!(matches!(r, Err(LifecycleError::Fpstate(_))), "{r:?}");
    assert_eq!(
        record(&cpu, &t),
        before,
        "a failed restore changed the records"
    );
    assert_eq!(
        lc.return_to_user(&mut cpu, &mut m, &mut t),
        Ok(Restore::Loaded)
    );
    let live = record(&cpu, &t);
    let r = foreign.switch_out(&mut cpu, &mut m, &mut t);
    assert!(matches!(r, Err(LifecycleError::Fpstate(_))), "{r:?}");
    assert_eq!(record(&cpu, &t), live, "a failed save changed the records");
    lc.switch_out(&mut cpu, &mut m, &mut t).unwrap();
    assert_eq!(
        lc.return_to_user(&mut cpu, &mut m, &mut t),
        Ok(Restore::Elided)
    );
}

#[test]
fn misuse_is_refused() {
    let (e, cfg) = sapphire_rapids();
    let lc = Lifecycle::new(&cfg, Mode::Supervisor);
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    m.set_xfd(cfg.policy().dynamic).unwrap();
    let mut cpu = CpuFpu::new(0, cfg.policy().dynamic);
    let area = || BoxedArea::zeroed(cfg.kernel().default_size as usize);
    let mut t = lc.user_task(area()).unwrap();
    let mut k: TaskFpu<BoxedArea> = lc.kernel_thread();
    assert_eq!(
        lc.return_to_user(&mut cpu, &mut m, &mut k),
        Err(LifecycleError::KernelThread)
    );
    assert_eq!(
        lc.return_to_user(&mut cpu, &mut m, &mut t),
        Ok(Restore::Loaded)
    );
    assert_eq!(
        lc.return_to_user(&mut cpu, &mut m, &mut t),
        Ok(Restore::Live)
    );
    // Live registers: the buffer is stale, so no write and no read.
    assert_eq!(lc.ptrace_write(&mut t).err(), Some(LifecycleError::Live));
    assert_eq!(t.fpstate().err(), Some(LifecycleError::Live));
    lc.sync(&mut cpu, &mut m, &mut t).unwrap();
    assert!(t.fpstate().is_ok());
    assert_eq!(t.last_cpu(), Some(cpu.cpu()));
    assert!(lc.ptrace_write(&mut t).is_ok());
    // The write drops the last CPU: the next return loads.
    assert_eq!(t.last_cpu(), None);
    assert_eq!(lc.kvm_write(&mut t).err(), Some(LifecycleError::NoGuest));
    assert_eq!(
        lc.exit_guest(&mut cpu, &mut m, &mut t),
        Err(LifecycleError::NoGuest)
    );
    // One section at a time: a second begin (an interrupt handler reaching the
    // record) is refused.
    let mut cpu2 = cpu.clone();
    {
        let sec = lc
            .kernel_fpu_begin(&mut cpu2, &mut m, Some(&mut t), SectionInit::Mxcsr)
            .unwrap();
        assert_eq!(sec.cpu(), 0);
        drop(sec);
    }
    assert!(cpu2.can_borrow());
    assert_eq!(cpu2.owner(), None);
    // A guest attached once; a kernel thread takes none.
    let g = lc
        .guest(BoxedArea::zeroed(cfg.guest().default_size as usize))
        .unwrap();
    let g = k.attach_guest(g).unwrap_err();
    t.attach_guest(g).unwrap();
    lc.enter_guest(&mut cpu, &mut m, &mut t).unwrap();
    // In guest mode the guest's registers are the live ones.
    assert!(t.registers_live() && t.in_guest());
    assert_eq!(
        lc.enter_guest(&mut cpu, &mut m, &mut t),
        Err(LifecycleError::InGuest)
    );
    assert!(t.detach_guest().is_none());
    assert_eq!(lc.exec(&mut t).err(), Some(LifecycleError::InGuest));
    lc.exit_guest(&mut cpu, &mut m, &mut t).unwrap();
    // Out of it, the guest saved and the task not yet loaded: nothing live.
    assert!(!t.registers_live() && !t.in_guest());
    assert!(t.guest().is_some());
    // Detached and attached again outside guest mode.
    let g = t.detach_guest().expect("the attached guest");
    assert!(t.guest().is_none());
    t.attach_guest(g).unwrap();
    assert!(t.guest().is_some());
    // No permission for TILEDATA: the first use is refused (SIGILL).
    let perms = ProcessPerms::new(&cfg);
    let r = lc.handle_xfd(&mut cpu, &mut m, &mut t, &perms, TILEDATA, area());
    assert!(
        matches!(
            r,
            Err(LifecycleError::Fpstate(
                xstate::fpstate::FpstateError::NotPermitted { index: 18 }
            ))
        ),
        "{r:?}"
    );
    // Every error has its own text.
    let errs = [
        LifecycleError::KernelThread,
        LifecycleError::InGuest,
        LifecycleError::NoGuest,
        LifecycleError::Live,
        LifecycleError::SectionOpen,
        LifecycleError::WrongOwner,
        LifecycleError::Fault(Fault::Gp),
    ];
    let texts: std::collections::HashSet<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(texts.len(), errs.len());
    let _ = <XsaveMachine as FpuUnit>::write_xfd;
}

/// A compacted save writes MXCSR only with SSE state: with AVX live and SSE in
/// its init state the buffer's MXCSR field is an earlier save's, which
/// `uabi::export` (like Linux's ptrace export) reports. A signal frame written
/// through the buffer must still carry the MXCSR the registers have, so the
/// sigreturn gives the task its own value back.
#[test]
fn a_buffered_signal_frame_carries_the_registers_mxcsr() {
    let (e, cfg) = sapphire_rapids();
    let lc = Lifecycle::new(&cfg, Mode::Supervisor);
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    m.set_xfd(cfg.policy().dynamic).unwrap();
    let mut cpu = CpuFpu::new(0, cfg.policy().dynamic);
    let mut t = lc
        .user_task(BoxedArea::zeroed(cfg.kernel().default_size as usize))
        .unwrap();
    lc.return_to_user(&mut cpu, &mut m, &mut t).unwrap();
    m.set_mxcsr(0x7f80).unwrap();
    m.write_reg(1, 0, &[1; 16]).unwrap();
    lc.switch_out(&mut cpu, &mut m, &mut t).unwrap();
    assert_eq!(
        lc.return_to_user(&mut cpu, &mut m, &mut t),
        Ok(Restore::Elided)
    );
    // The task's own XRSTOR: AVX live, SSE init, MXCSR default.
    let mut img = testkit::Area::new(
        e.standard_size(XFeatures::LEGACY | XFeatures::AVX) as usize,
        0,
    );
    testkit::put_u32(img.bytes_mut(), 24, 0x1f80);
    testkit::put_u64(img.bytes_mut(), 512, XFeatures::AVX.bits());
    img.bytes_mut()[576] = 9;
    xstate::insn::XsaveUnit::restore(
        &mut m,
        xstate::insn::Insn::Xrstor,
        img.bytes(),
        XFeatures::LEGACY | XFeatures::AVX,
    )
    .unwrap();
    assert_eq!(m.mxcsr(), 0x1f80);
    lc.sync(&mut cpu, &mut m, &mut t).unwrap();
    let fp = t.fpstate().unwrap();
    assert!(!fp.xstate_bv().contains(XFeatures::SSE));
    let mut out = vec![0u8; cfg.user().max_size as usize];
    uabi::export(&cfg, fp, XFeatures::all(), &mut out).unwrap();
    assert_eq!(
        testkit::get_u32(&out, 24),
        0x7f80,
        "the premise: the export (Linux's rule) reports the stale field"
    );
    lc.return_to_user(&mut cpu, &mut m, &mut t).unwrap();
    let mut frame = BoxedArea::zeroed(cfg.user().max_size as usize + 4);
    lc.deliver_signal_by(
        &mut cpu,
        &mut m,
        &mut t,
        frame.bytes_mut(),
        SignalPath::Buffered,
    )
    .unwrap();
    assert_eq!(testkit::get_u32(frame.bytes(), 24), 0x1f80);
    m.set_mxcsr(0x3f80).unwrap(); // the handler's own
    lc.sigreturn_by(&mut cpu, &mut m, &mut t, frame.bytes(), false)
        .unwrap();
    lc.return_to_user(&mut cpu, &mut m, &mut t).unwrap();
    assert_eq!(m.mxcsr(), 0x1f80);
    assert_eq!(m.reg(2).unwrap()[0], 9);
}

/// The events' smaller decisions: `deliver_signal` writes a 64-byte aligned
/// frame straight from the registers (one save counted) and takes the buffer
/// for any other; `exit` drops the record only for its own task; an XFD
/// growth of a task whose registers are not live leaves the CPU's IA32_XFD to
/// the next load.
#[test]
fn signal_path_exit_and_growth_records() {
    let (e, cfg) = sapphire_rapids();
    let lc = Lifecycle::new(&cfg, SupervisorMode);
    let mut m = XsaveMachine::new(&e, Quirks::INTEL);
    let armed = cfg.policy().dynamic;
    m.set_xfd(armed).unwrap();
    let mut cpu = CpuFpu::new(0, armed);
    let area = || BoxedArea::zeroed(cfg.kernel().default_size as usize);
    let mut t = lc.user_task(area()).unwrap();
    let mut u = lc.user_task(area()).unwrap();
    // Signals: an aligned frame goes direct, a misaligned one buffered.
    let size = cfg.user().max_size as usize + 4 + 64;
    let mut frame = BoxedArea::zeroed(size);
    lc.return_to_user(&mut cpu, &mut m, &mut t).unwrap();
    let (_, path) = lc
        .deliver_signal(
            &mut cpu,
            &mut m,
            &mut t,
            &mut frame.bytes_mut()[..size - 64],
        )
        .unwrap();
    assert_eq!(path, SignalPath::Direct);
    let (_, path) = lc
        .deliver_signal(&mut cpu, &mut m, &mut t, &mut frame.bytes_mut()[8..])
        .unwrap();
    assert_eq!(path, SignalPath::Buffered);
    // Exit: u never ran here, so t keeps the record; t's exit drops it.
    lc.return_to_user(&mut cpu, &mut m, &mut t).unwrap();
    assert_eq!(cpu.owner(), Some(t.id()));
    let _ = lc.exit(&mut cpu, lc.user_task(area()).unwrap());
    assert_eq!(
        cpu.owner(),
        Some(t.id()),
        "another task's exit kept the record"
    );
    lc.switch_out(&mut cpu, &mut m, &mut t).unwrap();
    let _ = lc.exit(&mut cpu, t);
    assert_eq!(cpu.owner(), None, "the owner's exit dropped the record");
    // Growth while not live: the CPU keeps XFD armed until u's next load.
    let mut perms = ProcessPerms::new(&cfg);
    perms
        .request(&cfg, PermKind::Task, TILEDATA.into(), |_| true)
        .unwrap();
    lc.return_to_user(&mut cpu, &mut m, &mut u).unwrap();
    lc.switch_out(&mut cpu, &mut m, &mut u).unwrap();
    let big = BoxedArea::zeroed(cfg.kernel().max_size as usize);
    lc.handle_xfd(&mut cpu, &mut m, &mut u, &perms, TILEDATA, big)
        .unwrap();
    assert_eq!(cpu.xfd(), armed, "no XFD write for registers not live");
    lc.return_to_user(&mut cpu, &mut m, &mut u).unwrap();
    // The grown fpstate has space for every dynamic component: XFD disarmed.
    assert_eq!(cpu.xfd(), XFeatures::empty());
}
