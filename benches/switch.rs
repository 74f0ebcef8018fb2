//! Context-switch patterns: save + restore on every switch (today's
//! `fpstate::swap`) against the lifecycle layer (`xstate::lifecycle`: the
//! restore deferred to the return to user mode and skipped while the CPU still
//! holds the task's registers), timed in alternation as the save/restore rows
//! are (`common::interleaved`).
//!
//! One real CPU in user space is one `CpuFpu`; both sides use one `Cpu` unit in
//! `Mode::User` (XSAVEC + XRSTOR on this CPU) and configs of the same policy:
//! Linux's for this CPU cut to the user components of the row's mask (user mode
//! cannot move supervisor state), with no dynamic component, so every task's
//! fpstate holds the whole mask (an AMX task after its first-use growth; XFD
//! writes need ring 0, and a user-space CPU record never arms XFD).
//!
//! Rows `switch/{pattern}/{mask}-{touch|idle}`, sides `swap` and `lifecycle`,
//! for the masks x87|SSE 0x3, +AVX 0x7, +AVX-512 0xe7 and +AMX 0x600e7 (after
//! `ARCH_REQ_XCOMP_PERM`), a loud SKIP where a mask is not in XCR0. One
//! iteration is:
//! - `pingpong`: task A -> B -> A (two switches);
//! - `kthread`: task -> kernel thread -> the same task (two switches). The
//!   `swap` side gives the kernel thread an fpstate of its own, as a kernel
//!   that saves and restores on every switch does (`examples/kernel`'s boot
//!   context); the layer neither saves nor loads for it;
//! - `rr4-simd`: four tasks round robin, one tick per task (four switches); in
//!   every tick a kernel SIMD section runs before the switch (LDMXCSR 0x1f80,
//!   then a few SSE2 instructions over 64 bytes). `swap` side: save the current
//!   task, the section, restore the current task, then the switch (what a
//!   kernel without the layer does); layer side: `kernel_fpu_begin` .. guard
//!   dropped, `switch_out`, `return_to_user` of the next task.
//!
//! `touch`: before every switch away from it, the running task writes its
//! registers: XRSTOR (RFBM = the mask) from a compacted image of its own with
//! every component of the mask non-init, identical on both sides (so saves see
//! every component in use). `idle`: every task of both sides is put in its
//! init state before each batch (SSE included) and nothing runs between
//! switches, so their state stays init (XSAVEC's init optimization applies, as
//! for a task that does not use the FPU).
//!
//! Outside the timing: at the start of each batch the running task's state is
//! loaded; at its end it is saved (on the layer side by a kernel section, which
//! also drops the CPU's owner record: criterion's own code runs in between);
//! then XSTATE_BV of every task's fpstate is checked against the intended state
//! (the mask for `touch`; for `idle` no component but SSE, see `check`; a
//! `WARN` the first time it differs, and the row file counts those batches). After each timed batch the
//! layer side runs the same loop 128 iterations more, untimed, counting what
//! its events report (saves, restores) and what `CpuFpu::stats()` counts
//! (elided restores, sections): per iteration, to the row file.

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Held, Row, Settings, Side, config, dirty_image, interleaved_row, missing, names};
use criterion::{Criterion, criterion_group, criterion_main};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, MXCSR_DEFAULT, Mode, Owner, Storage, swap};
use xstate::insn::{self, Cpu};
use xstate::layout::Layout;
use xstate::lifecycle::{CpuFpu, Lifecycle, Restore, Save, SectionInit, TaskFpu, UserMode};

/// The masks: x87|SSE, +AVX, +AVX-512, +AMX.
const MASKS: [u64; 4] = [0x3, 0x7, 0xe7, 0x600e7];

/// The row group.
const GROUP: &str = "switch";

/// A switch pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    PingPong,
    KernelThread,
    RoundRobin,
}

impl Pattern {
    const ALL: [Self; 3] = [Self::PingPong, Self::KernelThread, Self::RoundRobin];

    /// The pattern a loop is specialized for (`ALL`'s order): each loop is
    /// compiled once per pattern, so neither side's timed code carries the
    /// others' branches and registers.
    const fn of(p: u8) -> Self {
        Self::ALL[p as usize]
    }

    const fn name(self) -> &'static str {
        match self {
            Self::PingPong => "pingpong",
            Self::KernelThread => "kthread",
            Self::RoundRobin => "rr4-simd",
        }
    }

    /// User tasks in the pattern.
    const fn tasks(self) -> usize {
        match self {
            Self::PingPong => 2,
            Self::KernelThread => 1,
            Self::RoundRobin => 4,
        }
    }

    /// Switches per iteration.
    const fn switches(self) -> u64 {
        match self {
            Self::PingPong | Self::KernelThread => 2,
            Self::RoundRobin => 4,
        }
    }

    /// Saves (= restores) per iteration on the swap side: one pair per switch,
    /// and one per kernel SIMD section.
    const fn swap_pairs(self) -> u64 {
        match self {
            Self::PingPong | Self::KernelThread => 2,
            Self::RoundRobin => 8,
        }
    }

    const fn describe(self) -> &'static str {
        match self {
            Self::PingPong => "task A -> B -> A",
            Self::KernelThread => "task -> kernel thread -> same task",
            Self::RoundRobin => "4 tasks round robin, a kernel SIMD section per tick",
        }
    }
}

/// Configs of Linux's policy for this CPU cut to the user components of
/// `mask`, no dynamic ones (tests/lifecycle.rs's `Mode::User` setup, per
/// mask); `Err` = why not.
fn configs_for(e: &Enumeration, mask: XFeatures) -> Result<Configs, String> {
    let linux = Policy::linux(e);
    let p = Policy {
        enabled: linux.enabled & XFeatures::USER & mask,
        dynamic: XFeatures::empty(),
        independent: XFeatures::empty(),
        guest_only: XFeatures::empty(),
    };
    if p.enabled != mask {
        return Err(format!(
            "Linux's policy for this CPU enables {:#x} of the user mask {:#x}",
            p.enabled.bits(),
            mask.bits()
        ));
    }
    Configs::new(e, &p).map_err(|err| format!("configs for {:#x}: {err}", mask.bits()))
}

/// The running task writes its registers: XRSTOR from its image.
#[inline(always)]
fn touch(img: &[u8], mask: XFeatures) {
    // SAFETY: OSXSAVE is set (XCR0 was read in `benches`); `img` is a 64-byte
    // aligned BoxedArea of the compacted size of `mask`, built by `dirty_image`
    // with a well-formed header (XCOMP_BV the layout's, XSTATE_BV = mask,
    // TILECFG a valid palette); `mask` is within XCR0 (checked before the row
    // runs); XRSTOR is declared to clobber every vector register, so no value
    // the compiler holds survives it by accident.
    unsafe { insn::xrstor(img.as_ptr(), mask) };
}

/// An image of `layout` in its init state (XSTATE_BV = 0, MXCSR 0x1f80):
/// `touch` with it puts every component of the mask in its init state.
fn init_image(layout: &Layout) -> BoxedArea {
    let mut a = BoxedArea::zeroed(layout.size() as usize);
    let b = a.bytes_mut();
    b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    b[520..528].copy_from_slice(&((1u64 << 63) | layout.mask().bits()).to_le_bytes());
    a
}

/// The kernel SIMD section's work: fold 64 bytes with SSE2 (PXOR of four
/// 16-byte lanes), the same instructions on both sides.
#[inline(never)]
fn section_work(data: &[u8; 64]) -> u64 {
    let p = data.as_ptr();
    let (lo, hi): (u64, u64);
    // SAFETY: SSE2 is baseline on x86_64; `p` points to 64 readable bytes
    // (MOVDQU has no alignment requirement); the asm declares xmm0 and xmm1
    // clobbered and touches neither the stack nor memory it does not read.
    unsafe {
        core::arch::asm!(
            "movdqu xmm0, [{p}]",
            "movdqu xmm1, [{p} + 16]",
            "pxor xmm0, xmm1",
            "movdqu xmm1, [{p} + 32]",
            "pxor xmm0, xmm1",
            "movdqu xmm1, [{p} + 48]",
            "pxor xmm0, xmm1",
            "movq {lo}, xmm0",
            "psrldq xmm0, 8",
            "movq {hi}, xmm0",
            p = in(reg) p,
            lo = out(reg) lo,
            hi = out(reg) hi,
            out("xmm0") _,
            out("xmm1") _,
            options(readonly, nostack, preserves_flags),
        );
    }
    lo ^ hi
}

/// The swap side's section start: the clean MXCSR the layer's
/// `kernel_fpu_begin` loads too (Linux's KFPU_MXCSR).
#[inline(always)]
fn section_mxcsr() {
    // SAFETY: SSE is enabled (every mask has it, and XCR0 was read); 0x1f80 is
    // within every MXCSR_MASK; the task's state was saved just before, and the
    // compiler relies on no floating-point mode here (MXCSR is restored with
    // the task's state after the section).
    unsafe { insn::ldmxcsr(MXCSR_DEFAULT) };
}

/// `(&mut v[a], &mut v[b])` for `a != b`: the swap side's pair (the incoming
/// one read only) and the layer side's.
fn pair_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

/// Iterations of the counted (untimed) layer loop after each timed batch.
const COUNTED: u64 = 128;

/// What the layer side counted over its counted loops.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    iters: u64,
    saves: u64,
    restores: u64,
    elided: u64,
    sections: u64,
}

/// The save + restore on every switch side.
struct SwapSide<'c> {
    cfg: &'c Configs,
    unit: Cpu,
    /// The user tasks' fpstates, then (for `kthread`) the kernel thread's.
    fps: Vec<Fpstate<BoxedArea>>,
    cur: usize,
}

/// The lifecycle layer side.
struct LayerSide<'c> {
    lc: Lifecycle<'c, UserMode>,
    cpu: CpuFpu,
    unit: Cpu,
    tasks: Vec<TaskFpu<BoxedArea>>,
    kthread: TaskFpu<BoxedArea>,
    cur: usize,
}

/// `iters` iterations of `pat` on the swap side.
#[inline(never)]
fn swap_loop<const P: u8>(
    s: &mut SwapSide<'_>,
    imgs: Option<&[BoxedArea]>,
    mask: XFeatures,
    data: &[u8; 64],
    iters: u64,
) -> Duration {
    let pat = Pattern::of(P);
    let cfg = s.cfg;
    let unit = &mut s.unit;
    let n = pat.tasks();
    let mut acc = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        match pat {
            Pattern::PingPong | Pattern::RoundRobin => {
                for _ in 0..pat.switches() {
                    let c = s.cur;
                    if let Some(i) = imgs {
                        touch(i[c].bytes(), mask);
                    }
                    if pat == Pattern::RoundRobin {
                        s.fps[c].save(unit, cfg, Mode::User).expect("save");
                        section_mxcsr();
                        acc ^= section_work(data);
                        s.fps[c].restore(unit, cfg, Mode::User).expect("restore");
                    }
                    let next = (c + 1) % n;
                    let (out, inc) = pair_mut(&mut s.fps, c, next);
                    swap(unit, cfg, Mode::User, out, inc).expect("swap");
                    s.cur = next;
                }
            }
            Pattern::KernelThread => {
                if let Some(i) = imgs {
                    touch(i[0].bytes(), mask);
                }
                let (out, inc) = pair_mut(&mut s.fps, 0, 1);
                swap(unit, cfg, Mode::User, out, inc).expect("swap to the kernel thread");
                let (out, inc) = pair_mut(&mut s.fps, 1, 0);
                swap(unit, cfg, Mode::User, out, inc).expect("swap back");
            }
        }
    }
    let d = start.elapsed();
    std::hint::black_box(acc);
    d
}

/// `iters` iterations of `pat` on the layer side; with `COUNT`, the saves
/// and restores its events report (the layer keeps no per-switch counter,
/// `CpuStats`), else none: the timed loops count nothing, as the swap side's
/// do not (counting there, in registers, moved the ping-pong rows by 3 ns
/// per switch on the Zen 4).
#[inline(never)]
fn layer_loop<const P: u8, const COUNT: bool>(
    s: &mut LayerSide<'_>,
    imgs: Option<&[BoxedArea]>,
    mask: XFeatures,
    data: &[u8; 64],
    iters: u64,
) -> (Duration, (u64, u64)) {
    let pat = Pattern::of(P);
    let lc = &s.lc;
    let (mut saves, mut restores) = (0u64, 0u64);
    let saved = |r: Save| u64::from(COUNT && r == Save::Saved);
    let loaded = |r: Restore| u64::from(COUNT && r == Restore::Loaded);
    let (cpu, unit) = (&mut s.cpu, &mut s.unit);
    let n = pat.tasks();
    let mut acc = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        match pat {
            Pattern::PingPong | Pattern::RoundRobin => {
                for _ in 0..pat.switches() {
                    let c = s.cur;
                    if let Some(i) = imgs {
                        touch(i[c].bytes(), mask);
                    }
                    if pat == Pattern::RoundRobin {
                        let sec = lc
                            .kernel_fpu_begin(cpu, unit, Some(&mut s.tasks[c]), SectionInit::Mxcsr)
                            .expect("kernel_fpu_begin");
                        saves += saved(sec.saved());
                        acc ^= section_work(data);
                        drop(sec);
                    }
                    // Both tasks found first, as the swap side finds its
                    // pair of fpstates before `swap`.
                    let next = (c + 1) % n;
                    let (out, inc) = pair_mut(&mut s.tasks, c, next);
                    saves += saved(lc.switch_out(cpu, unit, out).expect("switch_out"));
                    restores += loaded(lc.return_to_user(cpu, unit, inc).expect("return_to_user"));
                    s.cur = next;
                }
            }
            Pattern::KernelThread => {
                if let Some(i) = imgs {
                    touch(i[0].bytes(), mask);
                }
                saves += saved(
                    lc.switch_out(cpu, unit, &mut s.tasks[0])
                        .expect("switch_out"),
                );
                // The kernel thread runs, then is switched away from.
                saves += saved(
                    lc.switch_out(cpu, unit, &mut s.kthread)
                        .expect("switch_out kernel thread"),
                );
                restores += loaded(
                    lc.return_to_user(cpu, unit, &mut s.tasks[0])
                        .expect("return_to_user"),
                );
            }
        }
    }
    let d = start.elapsed();
    std::hint::black_box(acc);
    (d, (saves, restores))
}

/// Warnings already printed, one per row and side.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Whether every fpstate's XSTATE_BV, within `mask`, is `want` (for an idle
/// row, SSE aside); a WARN the first time a row's side finds otherwise.
fn check(label: &str, side: &str, bvs: &[u64], mask: XFeatures, want: u64) -> Held {
    // An idle task's SSE bit is free here: the batch's last save (the task
    // running when the timed loop ends) comes after the clock reads, which
    // write XMM registers (Rust built with SSE2); every task is put back in
    // its init state before the next batch (`init_image`), on both sides.
    let free = if want == 0 { XFeatures::SSE.bits() } else { 0 };
    let bad = bvs
        .iter()
        .find(|&&b| b & mask.bits() & !free != want & !free);
    if let Some(&got) = bad
        && WARNED
            .lock()
            .expect("lock")
            .insert(format!("{label} {side}"))
    {
        eprintln!(
            "\n******** WARN bench {label} ({side}): a task's saved XSTATE_BV is {got:#x}, \
             intended {want:#x}: the state changed under the measurement (batches counted in \
             the row file) ********\n"
        );
    }
    Held::one(bad.is_none())
}

/// A unit for this CPU in user mode.
fn user_unit() -> Cpu {
    // SAFETY: OSXSAVE is set (XCR0 was read in `benches`); every area given to
    // this unit is an fpstate of the row's configs or an image of its mask's
    // compacted layout; restores run only in the bench's loops and batch
    // set-up, where the compiler holds no vector values across them (XRSTOR
    // declares every vector register clobbered) and relies on no
    // floating-point mode.
    unsafe { Cpu::user() }.expect("this CPU's XSAVE unit")
}

/// Seconds since the epoch: when a row finished, for the report's run line.
fn finished_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bench_row(
    c: &mut Criterion,
    e: &Enumeration,
    cfg: &Configs,
    mask: XFeatures,
    pat: Pattern,
    touching: bool,
) {
    let state = if touching { "touch" } else { "idle" };
    let param = format!("{:#x}-{state}", mask.bits());
    let label = format!("{GROUP}/{}/{param}", pat.name());
    let want = if touching { mask.bits() } else { 0 };
    let layout = Layout::compacted(e, mask).expect("compacted layout");
    let n = pat.tasks();
    // Each task's own image: the mask's non-init pattern, XMM0's first byte
    // the task's number.
    let imgs: Vec<BoxedArea> = (0..n)
        .map(|t| {
            let mut a = dirty_image(&layout, mask);
            a.bytes_mut()[160] = 0x40 | t as u8;
            a
        })
        .collect();
    let imgs = touching.then_some(&imgs[..]);
    let data: [u8; 64] = core::array::from_fn(|k| (k as u8).wrapping_mul(29) ^ 0x5a);

    // The swap side: one fpstate per task, plus the kernel thread's.
    let fp_count = n + usize::from(pat == Pattern::KernelThread);
    let mut sw = SwapSide {
        cfg,
        unit: user_unit(),
        fps: (0..fp_count)
            .map(|_| Fpstate::new_boxed(cfg, Owner::Host).expect("fpstate"))
            .collect(),
        cur: 0,
    };
    assert_eq!(sw.fps[0].info().features, mask);

    // The layer side: one CPU record, the tasks and a kernel thread.
    let lc = Lifecycle::new(cfg, UserMode);
    let area = || BoxedArea::zeroed(cfg.kernel().default_size as usize);
    let tasks: Vec<TaskFpu<BoxedArea>> = (0..n)
        .map(|_| lc.user_task(area()).expect("user task"))
        .collect();
    let xfd = tasks[0].fpstate().expect("fpstate").info().xfd;
    let kthread = lc.kernel_thread();
    let mut ly = LayerSide {
        lc,
        cpu: CpuFpu::new(0, xfd),
        unit: user_unit(),
        tasks,
        kthread,
        cur: 0,
    };

    // `idle`: every task starts each batch with the same state on both sides,
    // all init (SSE too): the XMM registers that compiled code between the
    // batches leaves behind would otherwise stay in whichever fpstates
    // happened to be saved then, and an SSE image saved and loaded on one
    // side only is bytes the other side does not move.
    let init = init_image(&layout);
    let idle = (!touching).then_some(init.bytes());
    let counts = Cell::new(Counts::default());
    let swap_side = Side::checked("swap", |iters| {
        if let Some(init) = idle {
            for fp in &mut sw.fps {
                touch(init, mask);
                fp.save(&mut sw.unit, cfg, Mode::User).expect("idle reset");
            }
        }
        let c = sw.cur;
        sw.fps[c]
            .restore(&mut sw.unit, cfg, Mode::User)
            .expect("batch start");
        let d = match pat {
            Pattern::PingPong => swap_loop::<0>(&mut sw, imgs, mask, &data, iters),
            Pattern::KernelThread => swap_loop::<1>(&mut sw, imgs, mask, &data, iters),
            Pattern::RoundRobin => swap_loop::<2>(&mut sw, imgs, mask, &data, iters),
        };
        let c = sw.cur;
        sw.fps[c]
            .save(&mut sw.unit, cfg, Mode::User)
            .expect("batch end");
        let bvs: Vec<u64> = sw.fps[..n].iter().map(|f| f.xstate_bv().bits()).collect();
        (d, check(&label, "swap", &bvs, mask, want))
    });
    let layer_side = Side::checked("lifecycle", |iters| {
        if let Some(init) = idle {
            for t in &mut ly.tasks {
                ly.lc
                    .return_to_user(&mut ly.cpu, &mut ly.unit, t)
                    .expect("idle reset");
                touch(init, mask);
                ly.lc
                    .switch_out(&mut ly.cpu, &mut ly.unit, t)
                    .expect("idle reset");
            }
        }
        let c = ly.cur;
        ly.lc
            .return_to_user(&mut ly.cpu, &mut ly.unit, &mut ly.tasks[c])
            .expect("batch start");
        let (d, _) = match pat {
            Pattern::PingPong => layer_loop::<0, false>(&mut ly, imgs, mask, &data, iters),
            Pattern::KernelThread => layer_loop::<1, false>(&mut ly, imgs, mask, &data, iters),
            Pattern::RoundRobin => layer_loop::<2, false>(&mut ly, imgs, mask, &data, iters),
        };
        // The counts: the same loop again, untimed, counting.
        let before = *ly.cpu.stats();
        let (_, (saves, restores)) = match pat {
            Pattern::PingPong => layer_loop::<0, true>(&mut ly, imgs, mask, &data, COUNTED),
            Pattern::KernelThread => layer_loop::<1, true>(&mut ly, imgs, mask, &data, COUNTED),
            Pattern::RoundRobin => layer_loop::<2, true>(&mut ly, imgs, mask, &data, COUNTED),
        };
        let after = *ly.cpu.stats();
        let mut k = counts.get();
        k.iters += COUNTED;
        k.saves += saves;
        k.restores += restores;
        k.elided += after.elided - before.elided;
        k.sections += after.sections - before.sections;
        counts.set(k);
        // Criterion's code runs next: a section saves the running task and
        // drops the owner record, as anything that takes the registers does.
        let c = ly.cur;
        let sec = ly
            .lc
            .kernel_fpu_begin(
                &mut ly.cpu,
                &mut ly.unit,
                Some(&mut ly.tasks[c]),
                SectionInit::Mxcsr,
            )
            .expect("batch end");
        drop(sec);
        let bvs: Vec<u64> = ly
            .tasks
            .iter()
            .map(|t| t.fpstate().expect("saved").xstate_bv().bits())
            .collect();
        (d, check(&label, "lifecycle", &bvs, mask, want))
    });
    // Batches of about 10-100 us (tens of switches), as for the XSAVE pairs.
    let batch = match pat {
        Pattern::RoundRobin => 64,
        _ => 128,
    };
    let mut sides = [swap_side.batch(batch), layer_side.batch(batch)];
    let row = Row::new(GROUP, pat.name(), &param)
        .mask(mask)
        .with("state", state)
        .with("pattern", pat.describe())
        .with("tasks", n)
        .with("switches", pat.switches())
        .with("swap.pairs", pat.swap_pairs())
        .with("bytes", layout.size());
    let mut g = c.benchmark_group(GROUP);
    let measured = interleaved_row(&mut g, row, &mut sides, Settings::xsave());
    g.finish();
    drop(sides);
    if let Some(row) = measured {
        let k = counts.get();
        row.with("layer.iters", k.iters)
            .with("layer.saves", k.saves)
            .with("layer.restores", k.restores)
            .with("layer.elided", k.elided)
            .with("layer.sections", k.sections)
            .with("finished_unix", finished_unix())
            .write();
    }
}

fn benches(c: &mut Criterion) {
    let xcr0 = insn::read_xcr0().expect("OSXSAVE is not enabled: no XSAVE benches possible");
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    // AMX TILEDATA sits behind XFD until this process has permission.
    let amx = if xcr0.contains(XFeatures::XTILE) {
        common::permit_dynamic(xcr0)
    } else {
        Ok(())
    };
    for m in MASKS {
        let mask = XFeatures::from_bits_retain(m);
        let skip = missing(mask, xcr0, "XCR0")
            .or_else(|| {
                mask.intersects(XFeatures::DYNAMIC)
                    .then(|| amx.clone().err())
                    .flatten()
            })
            .map_or_else(|| configs_for(&e, mask).err(), Some);
        let cfg = match skip {
            Some(why) => {
                for pat in Pattern::ALL {
                    for state in ["idle", "touch"] {
                        Row::new(GROUP, pat.name(), &format!("{m:#x}-{state}"))
                            .mask(mask)
                            .with("state", state)
                            .with("pattern", pat.describe())
                            .with("tasks", pat.tasks())
                            .skip(&why);
                    }
                }
                continue;
            }
            None => configs_for(&e, mask).expect("checked above"),
        };
        eprintln!(
            "bench {GROUP}: mask {m:#x} ({}), {} bytes per fpstate",
            names(mask),
            cfg.kernel().default_size
        );
        for pat in Pattern::ALL {
            for touching in [false, true] {
                bench_row(c, &e, &cfg, mask, pat, touching);
            }
        }
    }
}

criterion_group! {
    name = switch;
    config = config();
    targets = benches
}
criterion_main!(switch);
