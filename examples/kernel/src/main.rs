//! A ring-0 x86-64 kernel that uses `xstate` the way a kernel does: it enables
//! XSAVE (CR4.OSXSAVE, CR4.PKE where PKU exists), enumerates the CPU through the
//! crate's live CPUID source, derives the configs with Linux's policy, checks the
//! crate's XSETBV rules against the CPU's #GP, writes XCR0, and runs user tasks
//! and kernel threads that a PIT timer interrupt preempts, on the crate's
//! lifecycle layer (`xstate::lifecycle`): saves on the switch, loads deferred
//! to the return to task code and skipped where the CPU still holds the
//! task's registers, a kernel SIMD section in the timer interrupt. Every task
//! checks, many times, that its registers hold its own values.
//!
//! Booted by QEMU through the PVH entry note (`-kernel`); it reports on COM1 and
//! ends QEMU through isa-debug-exit: status 33 when every check held, 35 when one
//! failed (0 would be a triple fault).
#![no_std]
#![no_main]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

mod boot;
mod hw;
mod rules;
mod sched;
mod simd;
mod tasks;

use core::arch::asm;
use core::panic::PanicInfo;
use core::sync::atomic::Ordering::Relaxed;

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidSource, LiveCpuid};
use xstate::enumerate::Enumeration;
use xstate::feature::name_of;
use xstate::insn::{read_xcr0, read_xinuse};

use hw::{EXIT_FAILURE, EXIT_SUCCESS, Frame, exit};
use tasks::{CAPS, FIRST_BLEED, KLOOPS, KTHREADS, QUIET, REGISTER_NAMES, STATS, TASKS};

/// Switches per run (boot -> first task and last task -> boot included).
const SWITCHES: u64 = 20_000;
/// PIT divisor: 1193182 / 119, about 10 kHz (100 us slices).
const PIT_DIVISOR: u16 = 119;
/// Checks every task must have made, and made across a switch, for the run to
/// count.
const MIN_CHECKS: u64 = 1_000;
const MIN_SPANNED: u64 = 100;
/// Kernel SIMD sections a run must have computed in.
const MIN_SECTIONS: u64 = 1_000;

/// IA32_BNDCFGS: MPX configuration for CPL 0.
const MSR_BNDCFGS: u32 = 0xd90;
/// BNDCFGS.EN | BNDCFGS.BNDPRESERVE: bounds on, and branches without a BND
/// prefix keep them (otherwise every call and return would put BND0-3 in init).
const BNDCFGS_ON: u64 = 0b11;

/// Prints each component as `name` from the crate's catalog.
struct Names(XFeatures);

impl core::fmt::Display for Names {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut sep = "";
        for i in self.0.indices() {
            write!(f, "{sep}{}", name_of(i))?;
            sep = " ";
        }
        if sep.is_empty() {
            f.write_str("none")?;
        }
        Ok(())
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn fail(what: core::fmt::Arguments<'_>) -> ! {
    kprintln!("kernel: FAIL {what}");
    exit(EXIT_FAILURE)
}

/// The entry from `boot.rs`: long mode, SSE on, interrupts off.
extern "C" fn kmain() -> ! {
    hw::serial_init();
    hw::tables_init();
    hw::pic_init();
    kprintln!(
        "kernel: long mode, ring 0, cr0 {:#x}, cr4 {:#x}",
        hw::read_cr0(),
        hw::read_cr4()
    );

    let cpu = LiveCpuid;
    let v = cpu.cpuid(0, 0);
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&v.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&v.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&v.ecx.to_le_bytes());
    let leaf1 = cpu.cpuid(1, 0);
    let leaf7 = cpu.cpuid(7, 0);
    let xsave = leaf1.ecx & (1 << 26) != 0;
    let pku = leaf7.ecx & (1 << 3) != 0;
    let mpx = leaf7.ebx & (1 << 14) != 0;
    kprintln!(
        "cpu: {}, XSAVE {}, AVX {}, PKU {}, MPX {}",
        core::str::from_utf8(&vendor).unwrap_or("?"),
        yes(xsave),
        yes(leaf1.ecx & (1 << 28) != 0),
        yes(pku),
        yes(mpx)
    );
    if !xsave {
        fail(format_args!("this CPU has no XSAVE (CPUID.1:ECX[26])"));
    }
    let cr4 = hw::read_cr4() | hw::CR4_OSXSAVE | if pku { hw::CR4_PKE } else { 0 };
    // SAFETY: CPUID enumerates XSAVE, and PKU where PKE is set; no user-mode
    // page exists for protection keys to act on.
    unsafe { hw::write_cr4(cr4) };
    kprintln!(
        "kernel: cr4 {:#x} (OSXSAVE{})",
        hw::read_cr4(),
        if pku { ", PKE" } else { "" }
    );

    let e = match Enumeration::from_cpuid(&cpu) {
        Ok(e) => e,
        Err(err) => fail(format_args!("the crate refused this CPU's leaf 0xd: {err}")),
    };
    kprintln!(
        "xstate: xcr0 supported {:#x} ({})",
        e.xcr0_supported().bits(),
        Names(e.xcr0_supported())
    );
    kprintln!(
        "xstate: xss supported {:#x} ({})",
        e.xss_supported().bits(),
        Names(e.xss_supported())
    );
    kprintln!(
        "xstate: xsaveopt {}, xsavec {}, xgetbv1 {}, xsaves {}, xfd {}",
        yes(e.xsaveopt()),
        yes(e.xsavec()),
        yes(e.xgetbv1()),
        yes(e.xsaves()),
        yes(e.xfd())
    );
    for i in e.supported().indices().filter(|&i| i >= 2) {
        if let Some(c) = e.component(i) {
            kprintln!(
                "xstate: component {i:2} {:<10} {:5} bytes at standard offset {}",
                name_of(i),
                c.size,
                c.std_offset
            );
        }
    }
    kprintln!(
        "xstate: standard size {} (CPUID reports {}), compacted size {}",
        e.standard_max_size(),
        e.reported_max_standard(),
        e.compacted_max_size()
    );

    let cfg = match Configs::new(&e, &Policy::linux(&e)) {
        Ok(c) => c,
        Err(err) => fail(format_args!("the crate refused Linux's policy: {err}")),
    };
    for (name, c) in [
        ("kernel", &cfg.kernel()),
        ("user", &cfg.user()),
        ("guest", &cfg.guest()),
    ] {
        kprintln!(
            "config: {name:6} {:?} form, default {:#x} ({} bytes), max {:#x} ({} bytes)",
            c.form,
            c.default_features.bits(),
            c.default_size,
            c.max_features.bits(),
            c.max_size
        );
    }
    kprintln!(
        "config: xcr0 {:#x} ({}), xss {:#x}, mxcsr mask {:#x}",
        cfg.xcr0().bits(),
        Names(cfg.xcr0()),
        cfg.xss().bits(),
        cfg.mxcsr_mask()
    );

    let (agreed, probes) = rules::run(&e, &cfg);
    let xcr0 = read_xcr0().unwrap_or(XFeatures::empty());
    kprintln!(
        "xsetbv: {agreed} of {probes} verdicts agree; xcr0 now {:#x}",
        xcr0.bits()
    );
    if xcr0 != cfg.xcr0() {
        fail(format_args!(
            "xcr0 reads {:#x}, the config says {:#x}",
            xcr0.bits(),
            cfg.xcr0().bits()
        ));
    }
    match e.check_live_sizes(&cpu, cfg.xcr0(), XFeatures::empty()) {
        Ok(s) => kprintln!(
            "xstate: live CPUID sizes for xcr0 agree (standard {} bytes, excess {})",
            e.standard_size(cfg.xcr0()),
            s.standard_excess
        ),
        Err(err) => fail(format_args!("live CPUID sizes: {err}")),
    }
    let mpx_on = mpx && cfg.xcr0().contains(XFeatures::BNDREGS | XFeatures::BNDCSR);
    if mpx_on {
        // SAFETY: CPUID enumerates MPX and XCR0 enables its components; EN and
        // BNDPRESERVE only make BND instructions act, which only the tasks use.
        unsafe { hw::wrmsr(MSR_BNDCFGS, BNDCFGS_ON) };
    }

    // SAFETY: CR4.OSXSAVE is set, and the unit only ever sees the fpstates the
    // crate sized (sched::init); restores and section preparations run in
    // interrupt handlers, where the interrupted code's XMM registers are on the
    // stack (hw.rs) and no other vector value is live in compiled code, or in
    // the boot code before the tasks run, where none is either.
    let unit = match unsafe { sched::Unit::new(&e) } {
        Ok(unit) => unit,
        Err(err) => fail(format_args!("no XSAVE unit for this CPU: {err}")),
    };
    let cmdline = boot::cmdline();
    let sabotage = cmdline.split(|&b| b == b' ').any(|w| w == b"sabotage");
    let width = simd::Width::detect(xcr0, leaf7.ebx);
    // SAFETY: once, interrupts off.
    let built = unsafe {
        sched::init(
            cfg.clone(),
            unit,
            sabotage,
            width,
            tasks::task_main,
            tasks::kthread_main,
            SWITCHES,
        )
    };
    if let Err(err) = built {
        fail(format_args!("the crate refused fpstate storage: {err}"));
    }
    kprintln!(
        "fpstate: {} contexts of {} bytes, {:?} form, xstate_bv 0 (init); {KTHREADS} kernel threads without one",
        TASKS + 1,
        cfg.kernel().default_size,
        cfg.kernel().form
    );
    if sabotage {
        kprintln!(
            "sabotage: the layer drops one invalidation (Rule::SectionDropsOwner): a kernel SIMD section leaves the owner record to the task it interrupted (negative control)"
        );
    }

    // Which components XINUSE tracks here: those it reports as init right after
    // an all-init restore. QEMU's TCG tracks only BNDREGS and reports the others
    // as always in use; hardware tracks them.
    if let Err(err) = sched::load_boot() {
        fail(format_args!(
            "the layer refused the boot context's load: {err}"
        ));
    }
    let (tracked, xinuse_line) = match read_xinuse() {
        Some(x) => (cfg.xcr0() - x, x),
        None => (XFeatures::empty(), XFeatures::empty()),
    };
    if e.xgetbv1() {
        kprintln!(
            "xinuse: {:#x} right after an init restore; tracked here: {}",
            xinuse_line.bits(),
            Names(tracked)
        );
    } else {
        kprintln!("xinuse: no XGETBV1 on this CPU: init state checked by value only");
    }
    let avx = cfg.xcr0().contains(XFeatures::AVX);
    CAPS.set(avx, pku, mpx_on, e.xgetbv1(), tracked);
    let quiet_tracked = tracked & tasks::quiet_untouched();
    kprintln!(
        "tasks: {TASKS}, task {QUIET} never writes {}; XINUSE checked for it: {}",
        Names(tasks::quiet_untouched() & cfg.xcr0()),
        Names(quiet_tracked)
    );

    hw::pit_init(PIT_DIVISOR);
    hw::pic_timer(true);
    kprintln!(
        "timer: PIT at {} Hz, {SWITCHES} switches, schedule {:?} (kernel threads {}..={}), a kernel SIMD section every {} ticks over {}",
        hw::PIT_HZ / u32::from(PIT_DIVISOR),
        sched::SCHEDULE,
        TASKS,
        sched::RUNNABLE - 1,
        sched::SECTION_EVERY,
        width.name()
    );
    loop {
        // SAFETY: interrupts off while the flag is read; STI's one-instruction
        // shadow means the tick cannot land between STI and HLT, so a tick that
        // sets DONE always wakes this loop. Not `nomem`: the interrupts that run
        // in between write memory (DONE), so the compiler must reload it.
        unsafe { asm!("cli", options(nostack)) };
        if sched::DONE.load(Relaxed) {
            break;
        }
        // SAFETY: as above; the handlers are installed.
        unsafe { asm!("sti", "hlt", options(nostack)) };
    }
    report(&cfg)
}

fn report(cfg: &Configs) -> ! {
    // SAFETY: the timer is masked and interrupts are off: nothing else holds SCHED.
    let Some(sched) = (unsafe { sched::SCHED.get() }).as_ref() else {
        fail(format_args!("no scheduler"));
    };
    let s = &sched.st;
    let mut ok = true;
    let mut bleeds = 0;
    for (i, st) in STATS.iter().enumerate() {
        let checks = st.checks.load(Relaxed);
        let spanned = st.spanned.load(Relaxed);
        let b = st.bleeds.load(Relaxed);
        let xin = st.xinuse.load(Relaxed);
        let xbad = st.xinuse_bad.load(Relaxed);
        bleeds += b;
        let kind = if i == QUIET { "quiet" } else { "wide" };
        // What XSAVEOPT last wrote for the task: the quiet task's untouched
        // components that this CPU tracks were saved as init (XSTATE_BV clear).
        let bv = s.xstate_bv(i);
        let bv_ok = i != QUIET || !bv.intersects(CAPS.quiet_tracked());
        kprintln!(
            "task {i} ({kind}): {} slices, {checks} checks, {spanned} across a switch, {b} bleeds, xinuse {xin} checked, {xbad} wrong, saved xstate_bv {:#x}{}",
            sched::SLICES[i].load(Relaxed),
            bv.bits(),
            if bv_ok { "" } else { " FAIL" }
        );
        ok &= checks >= MIN_CHECKS && spanned >= MIN_SPANNED && xbad == 0 && bv_ok;
    }
    for (k, loops) in KLOOPS.iter().enumerate() {
        let i = TASKS + k;
        let slices = sched::SLICES[i].load(Relaxed);
        let loops = loops.load(Relaxed);
        kprintln!(
            "task {i} (kernel thread): {slices} slices, {loops} integer loops, no fpstate{}",
            if slices > 0 && loops > 0 { "" } else { " FAIL" }
        );
        ok &= slices > 0 && loops > 0;
    }
    if FIRST_BLEED.is_set() {
        let reg = FIRST_BLEED.reg.load(Relaxed) as usize;
        kprintln!(
            "bleed: task {} {} held {:#x}, expected {:#x}",
            FIRST_BLEED.task.load(Relaxed),
            REGISTER_NAMES.get(reg).unwrap_or(&"?"),
            FIRST_BLEED.got.load(Relaxed),
            FIRST_BLEED.want.load(Relaxed)
        );
    }
    for (i, &(_, name)) in sched::INSNS.iter().enumerate() {
        if s.unit.counts[i] > 0 {
            kprintln!("unit: {name} {} times", s.unit.counts[i]);
        }
    }
    // The layer's counts, and the scheduler's own account of what one CPU must
    // do: they agree unless the layer skips a load the rule forbids (or runs
    // one it could skip, or saves a kernel thread).
    let st = s.stats();
    let sh = &s.shadow;
    let agree = st.restores == sh.restores && st.elided == sh.elided && st.saves == sh.saves;
    kprintln!(
        "lifecycle: {} restores, {} elided, {} saves, {} sections; the scheduler's account: {} restores, {} elided, {} saves: {}",
        st.restores,
        st.elided,
        st.saves,
        st.sections,
        sh.restores,
        sh.elided,
        sh.saves,
        if agree { "agree" } else { "FAIL differ" }
    );
    let sections_ok = st.sections == s.sums_ok + s.sums_wrong;
    kprintln!(
        "simd: {} sections over {}, {} sums right, {} wrong{}",
        st.sections,
        s.width().name(),
        s.sums_ok,
        s.sums_wrong,
        if sections_ok && s.sums_wrong == 0 {
            ""
        } else {
            " FAIL"
        }
    );
    ok &= agree && sections_ok && s.sums_wrong == 0;
    ok &= st.sections >= MIN_SECTIONS && st.elided > 0;
    let xcr0 = read_xcr0().unwrap_or(XFeatures::empty());
    ok &= bleeds == 0 && xcr0 == cfg.xcr0() && s.switches >= SWITCHES;
    kprintln!(
        "kernel: elided {} of {} restores, {} kernel SIMD sections",
        st.elided,
        st.elided + st.restores,
        st.sections
    );
    kprintln!(
        "kernel: {} tasks, {} switches, {bleeds} bleeds, mode {}, xcr0 {:#x}",
        sched::RUNNABLE,
        s.switches,
        s.unit.mode(),
        xcr0.bits()
    );
    exit(if ok { EXIT_SUCCESS } else { EXIT_FAILURE })
}

/// Called by every interrupt stub with the interrupted context's frame.
extern "C" fn dispatch(frame: &mut Frame) {
    let vector = frame.vector;
    match vector {
        hw::TIMER_VECTOR => {
            hw::pic_eoi();
            sched::tick(frame);
        }
        // The master PIC's spurious IRQ 7: no EOI.
        39 => {}
        13 if rules::handle_gp(frame) => {}
        v => {
            kprintln!(
                "kernel: FAIL exception {v} (error {:#x}) at rip {:#x}, rsp {:#x}",
                frame.error,
                frame.rip,
                frame.rsp
            );
            exit(EXIT_FAILURE)
        }
    }
    // Last, on the way back to the interrupted or the next context's code.
    sched::exit_to_task();
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    kprintln!("kernel: FAIL panic: {info}");
    exit(EXIT_FAILURE)
}
