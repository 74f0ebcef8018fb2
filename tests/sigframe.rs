//! Differential test against the Linux kernel's signal frames.
//!
//! For each register pattern, one `asm!` block loads known values into every
//! user component this test knows (XRSTOR of a standard-form image built here
//! from CPUID's standard offsets) and executes `ud2` (SIGILL, the frame written
//! on the way out of an exception) or, in a second run, a `tgkill` system call to
//! its own thread (SIGUSR1, on the way out of a system call): no compiler code runs
//! between the load and the kernel entry. The kernel delivers the signal
//! on an alternate signal stack that was filled with a canary, and writes the
//! XSAVE part of the signal frame there itself (XSAVE straight from the live
//! registers, then its software bytes and FP_XSTATE_MAGIC2). The handler copies
//! `fpregs[0 .. xstate_size + 4]` into a static buffer and steps over the `ud2`.
//! Each pattern runs twice, under two complementary canaries: a byte that differs
//! between the two frames is one the kernel did not write.
//!
//! The same pattern is then loaded again and saved through the crate
//! (`Fpstate::save`, XSAVEC into a host fpstate) and exported with
//! `uabi::export_sigframe` into buffers filled with the same two canaries. The
//! crate's frame must equal the kernel's byte for byte over the whole
//! `[0, xstate_size + 4)` under each canary, so the bytes Linux leaves as the
//! stack held them (416..464, the standard form's holes, AMX components in their
//! init state) must be exactly the ones the crate leaves too; the only modelled
//! difference is init tracking ([`expected_kernel_frame`]). The kernel's frame
//! must also go through `uabi::import_sigframe` and come back from
//! `export_sigframe` unchanged, and its register bytes must be the pattern (the
//! image is the independent oracle for both paths).
//!
//! Every user component XCR0 enables is loaded: x87, SSE, AVX, AVX-512, PKRU
//! (protection key 0 always readable and writable) and AMX TILECFG and
//! TILEDATA (eight 16 x 64-byte tiles). Components beyond those are named by a
//! SKIP line and their bytes left out. The patterns run in two phases in one
//! thread: before the thread's first use of a dynamic component (the frame
//! carries the default user features) and, after `ARCH_REQ_XCOMP_PERM` and a
//! first XRSTOR of live TILEDATA (Linux grows the thread's fpstate on the #NM),
//! with all of XCR0; the crate's fpstate grows the same way
//! (`Fpstate::grow_boxed`), and the frame length follows.

//! The other direction, `sigreturn_matches_import`: the handler overwrites the
//! kernel's frame with one built here (valid, or with one field altered), the
//! kernel's sigreturn loads it, and an XSAVE right after the `ud2` shows what it
//! loaded. That must match [`sigreturn_model`] (Linux's rules, written here from
//! `arch/x86/kernel/fpu/signal.c`), and the crate's `import_sigframe` followed by
//! `Fpstate::restore` must load the same registers, with the same "fx only"
//! verdict, for every crafted frame (the frame's software `xfeatures` limiting
//! the restore, Linux's "fx only" fallback for bad magic or sizes, an
//! `xstate_size` shorter than the header claims, header bytes XRSTOR ignores).
//!
//! Measured on the AMD Zen 4 KVM guest this was first written on (XCR0 0xe7,
//! frame 2432 + 4 bytes): XSTATE_BV bits may differ by init tracking (with only
//! AVX-512 loaded, the frame written after `ud2` marked AVX (init value) in use
//! where XSAVEC right after the XRSTOR did not; AMD tracks init by value, so zero
//! registers loaded "in use" save as init, and an MXCSR other than 0x1f80 alone
//! puts SSE in use). On the Intel Xeon with AMX (XCR0 0x600e7, Linux 6.18): frames
//! of 2,820 bytes before the first TILEDATA use and 11,012 after, every byte
//! equal, no init-tracking difference.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
// Test code: offsets in the loops below are the SDM's own (24 is MXCSR, 160 XMM0).
#![allow(clippy::needless_range_loop)]

mod testkit;

use std::arch::asm;
use std::cell::UnsafeCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use testkit::{
    Area, CANARIES, LOADED, Rng, XTILEDATA, get_u32, get_u64, load_then_tgkill, load_then_ud2,
    loud, pattern, pkru_keeping_key0, put_u32, put_u64, request_xcomp_perm, std_range,
    tilecfg_image, x87_image,
};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{
    BoxedArea, FCW_DEFAULT, Fpstate, MXCSR_DEFAULT, MXCSR_MASK_OFFSET, MXCSR_OFFSET, Mode, Owner,
    XSTATE_BV_OFFSET,
};
use xstate::insn::{Cpu, read_xcr0};
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi::{self, FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, SW_BYTES_OFFSET};

const XSTATE_BV: usize = XSTATE_BV_OFFSET;
const MXCSR: usize = MXCSR_OFFSET;
const MXCSR_MASK: usize = MXCSR_MASK_OFFSET;

// ---------------------------------------------------------------------------
// Buffers the signal handler writes: statics, no allocation in the handler.

const FRAME_CAP: usize = 16 << 10;
const ALT_SIZE: usize = 256 << 10;

#[repr(C, align(64))]
struct Shared<const N: usize>(UnsafeCell<[u8; N]>);
// SAFETY: every access is serialised: the test holds `LOCK`, and the handler
// runs only inside the `asm!` block of the thread holding it (`ARMED`).
unsafe impl<const N: usize> Sync for Shared<N> {}

static FRAME: Shared<FRAME_CAP> = Shared(UnsafeCell::new([0; FRAME_CAP]));
static FRAME_LEN: AtomicUsize = AtomicUsize::new(0);
/// A frame the handler writes over the kernel's before returning (sigreturn
/// then loads it), when `CRAFT_LEN` is not zero.
static CRAFT: Shared<FRAME_CAP> = Shared(UnsafeCell::new([0; FRAME_CAP]));
static CRAFT_LEN: AtomicUsize = AtomicUsize::new(0);
static ALT_STACK: Shared<ALT_SIZE> = Shared(UnsafeCell::new([0; ALT_SIZE]));
static ARMED: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);
static LOCK: Mutex<()> = Mutex::new(());

/// The SIGILL/SIGUSR1 handler: copy the frame's XSAVE part, step over `ud2`.
extern "C" fn on_signal(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if !ARMED.swap(false, Ordering::SeqCst) {
        // Not ours: fall back to the default action (the re-executed
        // instruction then kills the process, as it would have anyway).
        // SAFETY: resetting a disposition is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
        return;
    }
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: with SA_SIGINFO the third argument is the frame's ucontext.
    let fpregs = unsafe { (*uc).uc_mcontext.fpregs }
        .cast::<u8>()
        .cast_const();
    let mut sw = [0u8; 4];
    // SAFETY: `fpregs` points at the frame's FXSAVE/XSAVE area (at least the
    // 512-byte legacy region), written by the kernel on our own stack.
    unsafe { std::ptr::copy_nonoverlapping(fpregs.add(SW_BYTES_OFFSET + 16), sw.as_mut_ptr(), 4) };
    let mut m1 = [0u8; 4];
    // SAFETY: as above, bytes 464..468 of the legacy region.
    unsafe { std::ptr::copy_nonoverlapping(fpregs.add(SW_BYTES_OFFSET), m1.as_mut_ptr(), 4) };
    let len = if u32::from_le_bytes(m1) == FP_XSTATE_MAGIC1 {
        (u32::from_le_bytes(sw) as usize + 4).min(FRAME_CAP)
    } else {
        512
    };
    // SAFETY: the kernel wrote `xstate_size + 4` bytes there (magic1 says the
    // extended area follows); FRAME is ours (ARMED was set by the lock holder).
    unsafe { std::ptr::copy_nonoverlapping(fpregs, FRAME.0.get().cast::<u8>(), len) };
    FRAME_LEN.store(len, Ordering::SeqCst);
    let craft = CRAFT_LEN.load(Ordering::SeqCst);
    if craft != 0 && craft <= len {
        // SAFETY: the frame area is `len` bytes of our own writable stack, and
        // CRAFT holds `craft` initialised bytes the lock holder wrote before arming.
        unsafe {
            std::ptr::copy_nonoverlapping(
                CRAFT.0.get().cast::<u8>().cast_const(),
                fpregs.cast_mut(),
                craft,
            )
        };
    }
    if sig == libc::SIGILL {
        // SAFETY: `uc` is the ucontext the kernel restores on return; RIP is at
        // the two-byte `ud2` of `load_then_ud2`.
        unsafe { (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] += 2 };
    }
    HITS.fetch_add(1, Ordering::SeqCst);
}

/// Installs the handler and the alternate stack; puts the old ones back on drop.
struct Installed {
    old_act: [libc::sigaction; 2],
    old_ss: libc::stack_t,
}

/// The signals the kernel paths raise.
const SIGNALS: [libc::c_int; 2] = [libc::SIGILL, libc::SIGUSR1];

impl Installed {
    fn new() -> Self {
        // SAFETY: an all-zero sigaction/stack_t is a valid value of these C structs.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_signal as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: as above.
        let mut old_act: [libc::sigaction; 2] = unsafe { std::mem::zeroed() };
        for (sig, old) in SIGNALS.into_iter().zip(&mut old_act) {
            // SAFETY: valid pointers to initialised structs; the handler only
            // touches statics and its own ucontext.
            let r = unsafe { libc::sigaction(sig, &act, old) };
            assert_eq!(r, 0, "sigaction");
        }
        let ss = libc::stack_t {
            ss_sp: ALT_STACK.0.get().cast(),
            ss_flags: 0,
            ss_size: ALT_SIZE,
        };
        // SAFETY: as above.
        let mut old_ss: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: ALT_STACK is a static, writable, ALT_SIZE bytes, used by nothing
        // else while the lock is held.
        let r = unsafe { libc::sigaltstack(&ss, &mut old_ss) };
        assert_eq!(r, 0, "sigaltstack");
        Self { old_act, old_ss }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        for (sig, old) in SIGNALS.into_iter().zip(&self.old_act) {
            // SAFETY: putting back what `new` read.
            unsafe { libc::sigaction(sig, old, std::ptr::null_mut()) };
        }
        let mut ss = self.old_ss;
        if ss.ss_sp.is_null() {
            ss.ss_flags = libc::SS_DISABLE;
        }
        // SAFETY: as above.
        unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
    }
}

/// How the kernel is made to write a signal frame.
#[derive(Clone, Copy, Debug)]
enum Raise {
    /// `ud2`: #UD, SIGILL, the frame written on the way out of an exception.
    Ud2,
    /// `tgkill` to this thread: SIGUSR1 on the way out of a system call.
    Tgkill,
}

/// XSAVE the registers (mask `full`) into `area`.
///
/// # Safety
/// OSXSAVE is set, `full` within XCR0, `area` aligned and standard-size.
#[inline(always)]
unsafe fn xsave_only(area: *mut u8, full: u64) {
    // SAFETY: as stated by the caller; XSAVE only reads registers.
    unsafe {
        asm!(
            "mov eax, {full:e}",
            "mov rdx, {full}",
            "shr rdx, 32",
            "xsave64 [{area}]",
            area = in(reg) area,
            full = in(reg) full,
            out("rax") _,
            out("rdx") _,
            options(nostack),
        );
    }
}

/// XSAVE the registers into `save_to`, then XRSTOR `load_from` (mask `full`):
/// with the harness area as `save_to`, the registers then hold a pattern; with
/// it as `load_from`, the harness gets its registers back after `save_to`
/// recorded what the crate loaded.
///
/// # Safety
/// As for [`xsave_only`], for both areas; `load_from` is well formed (XCOMP_BV
/// and header bytes 16..63 zero, XSTATE_BV within `full`, MXCSR valid); a
/// pattern loaded this way is replaced by the harness state soon, with nothing
/// but the crate's save or restore in between.
#[inline(always)]
unsafe fn xsave_then_xrstor(save_to: *mut u8, load_from: *const u8, full: u64) {
    // SAFETY: as stated by the caller; every vector, mask and x87 register is
    // declared clobbered.
    unsafe {
        asm!(
            "mov eax, {full:e}",
            "mov rdx, {full}",
            "shr rdx, 32",
            "xsave64 [{save_to}]",
            "xrstor64 [{load_from}]",
            save_to = in(reg) save_to,
            load_from = in(reg) load_from,
            full = in(reg) full,
            out("rax") _,
            out("rdx") _,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

/// XRSTOR the harness state saved by [`xsave_then_xrstor`].
///
/// # Safety
/// `harness` was written by [`xsave_then_xrstor`] with the same `full`.
#[inline(always)]
unsafe fn xrstor_only(harness: *const u8, full: u64) {
    // SAFETY: `harness` is a well-formed XSAVE image of mask `full`.
    unsafe {
        asm!(
            "mov eax, {full:e}",
            "mov rdx, {full}",
            "shr rdx, 32",
            "xrstor64 [{harness}]",
            harness = in(reg) harness,
            full = in(reg) full,
            out("rax") _,
            out("rdx") _,
            clobber_abi("C"),
            options(nostack, readonly),
        );
    }
}

/// One register pattern.
struct Pattern {
    name: &'static str,
    /// XSTATE_BV of the image: the components XRSTOR loads (others: init).
    xstate_bv: XFeatures,
    mxcsr: u32,
    /// Register bytes all zero (the components still loaded, i.e. "in use").
    zero: bool,
    seed: u64,
}

/// The standard-form image of `p`, `size` bytes. PKRU keeps protection key 0
/// usable (the stack, heap and code all carry key 0); TILECFG configures eight
/// 16-row, 64-byte tiles (palette 1), so every TILEDATA byte is live state.
fn image(e: &Enumeration, p: &Pattern, mxcsr_mask: u32, size: usize) -> Area {
    let mut a = Area::new(size, 0);
    let b = a.bytes_mut();
    let v = |i: u32, k: usize| if p.zero { 0 } else { pattern(p.seed, i, k) };
    if p.xstate_bv.contains(XFeatures::X87) && !p.zero {
        x87_image(b, |k| v(0, k));
    } else {
        b[0..2].copy_from_slice(&FCW_DEFAULT.to_le_bytes());
    }
    put_u32(b, MXCSR, p.mxcsr);
    put_u32(b, MXCSR_MASK, mxcsr_mask);
    if p.xstate_bv.contains(XFeatures::SSE) {
        for k in 160..416 {
            b[k] = v(1, k);
        }
    }
    for i in p.xstate_bv.indices().filter(|&i| i >= 2) {
        let r = std_range(e, i);
        match i {
            PKRU_INDEX => {
                let pkru = if p.zero {
                    0
                } else {
                    pkru_keeping_key0(&mut Rng(p.seed.wrapping_mul(0x9e37_79b9) | 1))
                };
                put_u32(b, r.start, pkru);
            }
            TILECFG_INDEX if !p.zero => b[r.start..r.start + 64].copy_from_slice(&tilecfg_image(8)),
            _ => {
                for (k, j) in r.enumerate() {
                    b[j] = v(i, k);
                }
            }
        }
    }
    put_u64(b, XSTATE_BV, p.xstate_bv.bits());
    a
}

const PKRU_INDEX: u32 = 9;
const TILECFG_INDEX: u32 = 17;

/// Run the kernel path under one canary: the frame's XSAVE part.
fn kernel_frame(
    image: &Area,
    full: XFeatures,
    harness: &mut Area,
    canary: u8,
    how: Raise,
) -> Vec<u8> {
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    // SAFETY: gettid cannot fail.
    let tid = unsafe { libc::gettid() } as u64;
    // SAFETY: ALT_STACK is not in use (the lock holder is not in a handler).
    unsafe { std::ptr::write_bytes(ALT_STACK.0.get().cast::<u8>(), canary, ALT_SIZE) };
    FRAME_LEN.store(0, Ordering::SeqCst);
    let hits = HITS.load(Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    // SAFETY: OSXSAVE is set (XCR0 was read); `full` is within XCR0; `harness`
    // and `image` are aligned, standard-size for `full` and well formed (built
    // by `image` with a valid MXCSR, XSAVE writes harness's header); the handler
    // is installed and armed.
    let mut after = Area::new(image.bytes().len(), 0);
    let (h, i, a) = (harness.ptr(), image.bytes().as_ptr(), after.ptr());
    match how {
        // SAFETY: see above; `after` is aligned and standard-size too.
        Raise::Ud2 => unsafe { load_then_ud2(h, i, a, full.bits()) },
        // SAFETY: see above; pid and tid are ours.
        Raise::Tgkill => unsafe {
            load_then_tgkill(h, i, a, full.bits(), pid, tid, libc::SIGUSR1 as u64)
        },
    }
    assert_eq!(
        HITS.load(Ordering::SeqCst),
        hits + 1,
        "{how:?}: the signal handler did not run"
    );
    let len = FRAME_LEN.load(Ordering::SeqCst);
    // SAFETY: the handler has returned; nothing writes FRAME now.
    unsafe { (&*FRAME.0.get())[..len].to_vec() }
}

struct Outcome {
    /// Frame length (XSAVE part and magic2).
    len: usize,
    /// Bytes neither the kernel nor the crate wrote (equal canaries).
    unwritten: usize,
    /// Bytes compared (every byte of the frame but those of components this
    /// test does not load, which are reported up front).
    compared: usize,
    /// Modelled differences applied.
    notes: Vec<String>,
    /// XSTATE_BV in the kernel's frame and in the crate's.
    bvs: (u64, u64),
}

/// The crate's frame turned into the kernel's under Linux's documented
/// behaviour. Returns the notes of what was applied.
///
/// 1. `save_xstate_epilog` ORs FP|SSE into the frame's XSTATE_BV "for legacy
///    compatibility", whether or not x87/SSE were in use; `export_sigframe` does
///    too, so this must never apply (it is checked).
/// 2. Init tracking: the kernel's XSAVE ran later than the crate's XSAVEC and
///    with the kernel in between; a component whose registers hold their init
///    value may be "in use" in one and not the other (AMD tracks init by value;
///    the kernel may restore the task with a component marked in use). Such a
///    bit is taken from the kernel only if the crate's bytes for that component
///    are the init value; otherwise the bits must agree. (An AMX component
///    whose bit differed would also differ in which bytes are written: that is
///    refused, not modelled.)
fn expected_kernel_frame(
    e: &Enumeration,
    ours: &[u8],
    kernel: &[u8],
    notes: &mut Vec<String>,
) -> Vec<u8> {
    let mut exp = ours.to_vec();
    let mut bv = get_u64(ours, XSTATE_BV);
    assert_eq!(
        bv & 0b11,
        0b11,
        "export_sigframe left FP|SSE clear in XSTATE_BV"
    );
    let kbv = get_u64(kernel, XSTATE_BV);
    for i in XFeatures::from_bits_retain(bv ^ kbv).indices() {
        assert!(
            !XFeatures::XTILE.has_index(i),
            "XSTATE_BV bit {i} (AMX) differs: crate {bv:#x}, kernel {kbv:#x}"
        );
        let r = std_range(e, i);
        let init: Vec<u8> = match i {
            0 => {
                let mut x = vec![0u8; 160];
                x[0..2].copy_from_slice(&FCW_DEFAULT.to_le_bytes());
                // MXCSR and its mask are not x87 state; they are compared anyway.
                x[24..32].copy_from_slice(&ours[24..32]);
                x
            }
            _ => vec![0u8; r.len()],
        };
        assert_eq!(
            ours[r.clone()],
            init[..],
            "XSTATE_BV bit {i} differs (crate {bv:#x}, kernel {kbv:#x}) and the crate's bytes are not the init value"
        );
        let side = if kbv >> i & 1 == 1 { "kernel" } else { "crate" };
        notes.push(format!(
            "component {i} in use (init value) only in the {side}'s save"
        ));
        bv ^= 1 << i;
    }
    put_u64(&mut exp, XSTATE_BV, bv);
    exp
}

/// The live CPU's enumeration and user-mode configs.
struct Live {
    e: Enumeration,
    cfg: Configs,
    xcr0: XFeatures,
    /// The user components a signal frame carries before the thread first uses
    /// a dynamic component (XCR0 & the user defaults).
    full: XFeatures,
    /// Their standard size: the frame's `xstate_size` then.
    size: usize,
    /// Every user component XCR0 enables (the frame's after AMX first use).
    all: XFeatures,
}

fn live(test: &str) -> Option<Live> {
    let Some(xcr0) = read_xcr0() else {
        loud!("SKIP {test}: OSXSAVE is clear, no XSAVE signal frames");
        return None;
    };
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    // User mode cannot XSAVES, and `Fpstate::save` refuses supervisor components
    // in user mode, so the host fpstate is built under Linux's policy restricted
    // to XCR0. The user ABI (what signal frames carry) is the same: checked.
    let linux = Policy::linux(&e);
    let user_only = Policy {
        enabled: linux.enabled & e.xcr0_supported(),
        independent: XFeatures::empty(),
        guest_only: XFeatures::empty(),
        ..linux
    };
    let cfg = Configs::new(&e, &user_only).expect("configs");
    assert_eq!(
        cfg.user(),
        Configs::new(&e, &linux).expect("linux configs").user(),
        "dropping supervisor components changed the user config"
    );
    let full = xcr0 & cfg.user().default_features;
    let all = xcr0 & cfg.user().max_features;
    let unknown = all - LOADED;
    if !unknown.is_empty() {
        loud!(
            "SKIP {test}: XCR0 components {:#x} are not loaded with patterns (this test knows {:#x}); \
             left in init state, their bytes left out of every comparison: {:?}",
            unknown.bits(),
            LOADED.bits(),
            unknown
                .indices()
                .map(|i| std_range(&e, i))
                .collect::<Vec<_>>()
        );
    }
    let size = e.standard_size(full) as usize;
    Some(Live {
        e,
        cfg,
        xcr0,
        full,
        size,
        all,
    })
}

/// One phase of [`sigframe_matches_kernel`]: the frame's features and the
/// crate fpstate that holds them.
struct Phase {
    name: &'static str,
    features: XFeatures,
    fp: Fpstate<BoxedArea>,
}

#[test]
fn sigframe_matches_kernel() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(l) = live("sigframe_matches_kernel") else {
        return;
    };
    let (e, cfg, xcr0) = (&l.e, &l.cfg, l.xcr0);
    let mxcsr_mask = cfg.mxcsr_mask();
    // Every area is sized for all of XCR0 and every XSAVE/XRSTOR of the
    // harness covers it: XSAVE of a component XFD still guards saves it as
    // init, and XRSTOR of an init one does not fault.
    let big = e.standard_size(l.all) as usize;
    let mut harness = Area::new(big, 0);
    let host = Fpstate::new_boxed(cfg, Owner::Host).expect("host fpstate");
    let mut phases = vec![Phase {
        name: "before-amx",
        features: l.full,
        fp: Fpstate::new_boxed(cfg, Owner::Host).expect("host fpstate"),
    }];
    let dynamic = l.all & cfg.policy().dynamic;
    if dynamic.is_empty() {
        loud!(
            "SKIP sigframe_matches_kernel/after-amx: XCR0 {:#x} has no dynamic component (AMX TILEDATA): \
             frames never grow here",
            xcr0.bits()
        );
    } else {
        let mut perms = ProcessPerms::new(cfg);
        for i in dynamic.indices() {
            request_xcomp_perm(i, false)
                .unwrap_or_else(|err| panic!("ARCH_REQ_XCOMP_PERM({i}): errno {err}"));
            perms
                .request(cfg, PermKind::Task, i.into(), |_| true)
                .expect("permission");
        }
        let first = dynamic.indices().next().unwrap_or(XTILEDATA);
        phases.push(Phase {
            name: "after-amx",
            features: l.all,
            fp: host.grow_boxed(cfg, &perms, first).expect("grow"),
        });
    }

    let installed = Installed::new();
    let (mut ran, mut compared, mut unwritten) = (0, 0, 0);
    let mut lens = Vec::new();
    for phase in &mut phases {
        if phase.features.intersects(cfg.policy().dynamic) {
            // The first use of TILEDATA in this thread: #NM, Linux grows the
            // thread's fpstate and retries the XRSTOR. Frames are larger from
            // here on, whatever the registers hold.
            let p = Pattern {
                name: "first-use",
                xstate_bv: phase.features & LOADED,
                mxcsr: MXCSR_DEFAULT,
                zero: false,
                seed: 99,
            };
            let img = image(e, &p, mxcsr_mask, big);
            let hp = harness.ptr();
            // SAFETY: as for `load_then_ud2`; `xrstor_only` follows at once.
            unsafe { xsave_then_xrstor(hp, img.bytes().as_ptr(), l.all.bits()) };
            // SAFETY: `harness` was written by `xsave_then_xrstor` with `l.all`.
            unsafe { xrstor_only(hp, l.all.bits()) };
        }
        let known = phase.features & LOADED;
        let patterns = [
            (XFeatures::empty(), MXCSR_DEFAULT, false, "init"),
            (XFeatures::X87, MXCSR_DEFAULT, false, "x87"),
            (XFeatures::SSE, 0x9fc0 & mxcsr_mask, false, "sse"),
            (
                XFeatures::SSE,
                MXCSR_DEFAULT | 0x6000,
                true,
                "sse-mxcsr-only",
            ),
            (XFeatures::SSE | XFeatures::AVX, MXCSR_DEFAULT, false, "avx"),
            (known, 0x1fbf & mxcsr_mask, false, "all"),
            (XFeatures::AVX512, MXCSR_DEFAULT, false, "avx512-only"),
            (known, MXCSR_DEFAULT, true, "in-use-zero"),
            (XFeatures::PKRU, MXCSR_DEFAULT, false, "pkru"),
            (XFeatures::XTILE_CFG, MXCSR_DEFAULT, false, "tilecfg"),
            (XFeatures::XTILE, MXCSR_DEFAULT, false, "amx"),
        ];
        for (seed, &(bv, mxcsr, zero, name)) in (1..).zip(&patterns) {
            if !phase.features.contains(bv) {
                let missing = bv - phase.features;
                if missing.intersects(cfg.policy().dynamic) && l.all.contains(bv) {
                    loud!(
                        "sigframe/{}/{name}: loads TILEDATA, so it runs after the first use (after-amx)",
                        phase.name
                    );
                } else {
                    loud!(
                        "SKIP sigframe_matches_kernel/{}/{name}: XCR0 {:#x} lacks {:#x}",
                        phase.name,
                        xcr0.bits(),
                        missing.bits()
                    );
                }
                continue;
            }
            let p = Pattern {
                name,
                xstate_bv: bv,
                mxcsr,
                zero,
                seed,
            };
            for how in [Raise::Ud2, Raise::Tgkill] {
                let o = run_pattern(&l, phase, &p, big, &mut harness, how);
                loud!(
                    "sigframe/{}/{}/{how:?}: frame {} bytes, XSTATE_BV kernel {:#x} crate {:#x}; {} bytes equal \
                     ({} of them unwritten by both, under both canaries), modelled: [{}]",
                    phase.name,
                    p.name,
                    o.len,
                    o.bvs.0,
                    o.bvs.1,
                    o.compared,
                    o.unwritten,
                    o.notes.join("; ")
                );
                compared += o.compared;
                unwritten += o.unwritten;
                ran += 1;
                if !lens.contains(&(phase.name, o.len)) {
                    lens.push((phase.name, o.len));
                }
            }
        }
    }
    drop(installed);
    loud!(
        "sigframe: {ran} pattern x delivery runs equal to the kernel's frames byte for byte, XCR0 {:#x}, \
         frame lengths {lens:?}, {compared} bytes compared, {unwritten} of them left unwritten by both \
         (416..464, standard-form holes, init AMX components)",
        xcr0.bits(),
    );
    assert!(ran >= 10, "too few patterns ran");
}

fn run_pattern(
    l: &Live,
    phase: &Phase,
    p: &Pattern,
    big: usize,
    harness: &mut Area,
    how: Raise,
) -> Outcome {
    let (e, cfg) = (&l.e, &l.cfg);
    let name = format!("{}/{}/{how:?}", phase.name, p.name);
    let img = image(e, p, cfg.mxcsr_mask(), big);
    let size = e.standard_size(phase.features) as usize;
    let len = size + 4;

    // Kernel path, under both canaries.
    let k = CANARIES.map(|c| kernel_frame(&img, l.all, harness, c, how));
    assert_eq!(k[0].len(), len, "{name}: frame length (xstate_size + 4)");
    assert_eq!(k[1].len(), len, "{name}: frame length");
    let unwritten: Vec<usize> = (0..len).filter(|&j| k[0][j] != k[1][j]).collect();
    let kernel = &k[0];

    // The kernel frame's fixed fields, from the uapi (sigcontext.h) directly.
    assert_eq!(
        get_u32(kernel, SW_BYTES_OFFSET),
        FP_XSTATE_MAGIC1,
        "{name}: magic1"
    );
    assert_eq!(
        get_u32(kernel, SW_BYTES_OFFSET + 4) as usize,
        len,
        "{name}: extended_size"
    );
    assert_eq!(
        get_u64(kernel, SW_BYTES_OFFSET + 8),
        phase.features.bits(),
        "{name}: sw xfeatures"
    );
    assert_eq!(
        get_u32(kernel, SW_BYTES_OFFSET + 16) as usize,
        size,
        "{name}: xstate_size"
    );
    assert_eq!(get_u32(kernel, size), FP_XSTATE_MAGIC2, "{name}: magic2");

    // The registers the kernel saw are the pattern: the image is the oracle.
    let kbv = XFeatures::from_bits_retain(get_u64(kernel, XSTATE_BV));
    for i in (p.xstate_bv & LOADED).indices() {
        let r = std_range(e, i);
        if unwritten.iter().any(|j| r.contains(j)) {
            // An init AMX component (all-zero TILECFG is palette 0): checked
            // below as bytes both sides leave alone.
            assert!(
                p.zero,
                "{name}: the kernel left loaded component {i} unwritten"
            );
            continue;
        }
        // Zero registers may read as init (AMD tracks init by value): bytes only.
        assert!(
            p.zero || kbv.has_index(i),
            "{name}: kernel XSTATE_BV {kbv:#x} lacks loaded component {i}"
        );
        assert_eq!(
            kernel[r.clone()],
            img.bytes()[r.clone()],
            "{name}: kernel frame, component {i} is not the pattern"
        );
    }
    assert_eq!(
        get_u32(kernel, MXCSR),
        p.mxcsr,
        "{name}: kernel frame MXCSR"
    );

    // Crate path: the same load, then Fpstate::save (XSAVEC) right after it.
    let mut fp = fresh_like(cfg, &phase.fp);
    // Built before the load: it enumerates CPUID in Rust code that may use
    // vector registers.
    // SAFETY: the unit only saves here, which replaces no register state.
    let mut cpu = unsafe { Cpu::user() }.expect("this CPU's XSAVE unit");
    let hp = harness.ptr();
    // SAFETY: as for `load_then_ud2`; `xrstor_only` follows the save.
    unsafe { xsave_then_xrstor(hp, img.bytes().as_ptr(), l.all.bits()) };
    let saved = fp.save(&mut cpu, cfg, Mode::User);
    // SAFETY: `harness` was written by `xsave_then_xrstor` with `l.all`.
    unsafe { xrstor_only(hp, l.all.bits()) };
    saved.expect("Fpstate::save");
    let ours = CANARIES.map(|c| {
        let mut f = vec![c; len];
        let n = uabi::export_sigframe(cfg, &fp, cfg.user().max_features, &mut f)
            .expect("export_sigframe");
        assert_eq!(n, len, "{name}: export_sigframe length");
        f
    });

    // Every byte, under both canaries: the bytes Linux leaves unwritten
    // (416..464, the holes, init AMX components) hold the canary in both frames.
    let mut notes = Vec::new();
    let excluded = |j: usize| unknown_byte(e, l.all, j);
    for (c, (kf, of)) in k.iter().zip(&ours).enumerate() {
        let exp = expected_kernel_frame(e, of, kf, &mut notes);
        let bad: Vec<usize> = (0..len)
            .filter(|&j| !excluded(j) && exp[j] != kf[j])
            .collect();
        if !bad.is_empty() {
            let show: Vec<String> = bad
                .iter()
                .take(24)
                .map(|&j| format!("{j}: kernel {:#04x} crate {:#04x}", kf[j], exp[j]))
                .collect();
            panic!(
                "{name}: {} bytes differ from the kernel's frame (canary {:#x}): {}",
                bad.len(),
                CANARIES[c],
                show.join(", ")
            );
        }
    }
    notes.dedup();

    // The kernel's frame is a valid signal frame for the crate, and exporting
    // what it loads gives the kernel's frame back, byte for byte.
    let mut fp2 = fresh_like(cfg, &fp);
    let got = uabi::import_sigframe(cfg, &mut fp2, kernel)
        .unwrap_or_else(|x| panic!("{name}: import_sigframe refused the kernel's frame: {x}"));
    assert_eq!(
        got.fx_only, None,
        "{name}: the kernel's frame taken as fx only"
    );
    assert_eq!(
        got.features,
        kbv & cfg.user().max_features,
        "{name}: imported XSTATE_BV"
    );
    let mut again = vec![CANARIES[0]; len];
    uabi::export_sigframe(cfg, &fp2, cfg.user().max_features, &mut again).expect("re-export");
    if let Some(j) = (0..len).find(|&j| !excluded(j) && again[j] != kernel[j]) {
        panic!("{name}: kernel frame -> import -> export changed byte {j}");
    }

    let crate_bv = get_u64(&ours[0], XSTATE_BV);
    Outcome {
        len,
        unwritten: unwritten.len(),
        compared: (0..len).filter(|&j| !excluded(j)).count(),
        notes,
        bvs: (kbv.bits(), crate_bv),
    }
}

/// A fresh fpstate with the same features as `like` (grown or not).
fn fresh_like(cfg: &Configs, like: &Fpstate<BoxedArea>) -> Fpstate<BoxedArea> {
    let fp = Fpstate::new_boxed(cfg, Owner::Host).expect("host fpstate");
    if fp.info().features == like.info().features {
        return fp;
    }
    let mut perms = ProcessPerms::new(cfg);
    for i in (like.info().features & cfg.policy().dynamic).indices() {
        perms
            .request(cfg, PermKind::Task, i.into(), |_| true)
            .expect("permission");
    }
    let first = (like.info().features & cfg.policy().dynamic)
        .indices()
        .next()
        .unwrap_or(XTILEDATA);
    fp.grow_boxed(cfg, &perms, first).expect("grow")
}

/// Bytes of components this test does not load (beyond [`LOADED`]): left out,
/// named by the SKIP line of [`live`].
fn unknown_byte(e: &Enumeration, all: XFeatures, j: usize) -> bool {
    (all - LOADED)
        .indices()
        .any(|i| std_range(e, i).contains(&j))
}

// ---------------------------------------------------------------------------
// The other direction: sigreturn loads a frame the handler wrote, and the
// crate's `import_sigframe` + `Fpstate::restore` must load the same registers.

/// A frame mutation and the name it is reported under.
struct Craft {
    name: &'static str,
    /// Needs these components in the frame.
    needs: XFeatures,
    mutate: fn(&mut [u8], usize),
}

fn clear_bv(b: &mut [u8], m: XFeatures) {
    put_u64(b, XSTATE_BV, get_u64(b, XSTATE_BV) & !m.bits());
}

const CRAFTS: [Craft; 13] = [
    Craft {
        name: "valid",
        needs: XFeatures::empty(),
        mutate: |_, _| {},
    },
    Craft {
        name: "avx-bit-clear",
        needs: XFeatures::AVX,
        mutate: |b, _| clear_bv(b, XFeatures::AVX),
    },
    Craft {
        name: "zmm-bits-clear",
        needs: XFeatures::AVX512,
        mutate: |b, _| clear_bv(b, XFeatures::ZMM_HI256.union(XFeatures::HI16_ZMM)),
    },
    Craft {
        name: "x87-bit-clear",
        needs: XFeatures::empty(),
        mutate: |b, _| clear_bv(b, XFeatures::X87),
    },
    Craft {
        name: "sw-xfeatures-fp-sse",
        needs: XFeatures::empty(),
        mutate: |b, _| put_u64(b, SW_BYTES_OFFSET + 8, 3),
    },
    Craft {
        name: "bad-magic1",
        needs: XFeatures::empty(),
        mutate: |b, _| put_u32(b, SW_BYTES_OFFSET, 0),
    },
    Craft {
        name: "bad-magic2",
        needs: XFeatures::empty(),
        mutate: |b, size| put_u32(b, size, FP_XSTATE_MAGIC2 ^ 1),
    },
    Craft {
        name: "xstate-size-too-big",
        needs: XFeatures::empty(),
        mutate: |b, size| put_u32(b, SW_BYTES_OFFSET + 16, size as u32 + 64),
    },
    Craft {
        name: "xstate-size-576",
        needs: XFeatures::empty(),
        mutate: |b, _| {
            put_u32(b, SW_BYTES_OFFSET + 16, 576);
            put_u32(b, 576, FP_XSTATE_MAGIC2);
        },
    },
    Craft {
        name: "sw-xfeatures-x87-avx",
        needs: XFeatures::AVX,
        mutate: |b, _| put_u64(b, SW_BYTES_OFFSET + 8, 5),
    },
    Craft {
        name: "sw-xfeatures-all-ones",
        needs: XFeatures::empty(),
        mutate: |b, _| put_u64(b, SW_BYTES_OFFSET + 8, u64::MAX),
    },
    Craft {
        name: "header-bytes-24-63",
        needs: XFeatures::empty(),
        mutate: |b, _| b[XSTATE_BV + 24..XSTATE_BV + 64].fill(0x5a),
    },
    Craft {
        name: "fx-only-sse-bits-clear",
        needs: XFeatures::empty(),
        mutate: |b, _| {
            put_u32(b, SW_BYTES_OFFSET, 0);
            clear_bv(b, XFeatures::X87.union(XFeatures::SSE));
        },
    },
];

/// What Linux's sigreturn loads from a 64-bit frame (`__fpu_restore_sig`,
/// `check_xstate_in_sigframe`, `__restore_fpregs_from_user`), as the registers
/// a standard XSAVE of mask `full` then shows (XSTATE_BV left out), and whether
/// the frame was taken as "fx only":
/// - magic1 wrong, `xstate_size` below 576, above the task's user size or above
///   `extended_size`, or magic2 wrong at `xstate_size`: not an error but an
///   "fx only" frame: FXRSTOR of the legacy region, every other component init;
/// - otherwise XRSTOR with RFBM = the frame's software `xfeatures` (the frame's
///   XSTATE_BV decides within it; bytes past `xstate_size` are read if it says
///   so), then an XRSTOR of the init state for the user components outside that
///   RFBM. MXCSR: the first XRSTOR loads (and checks) it when RFBM has SSE or
///   AVX, the second puts it back to 0x1f80 when RFBM lacks SSE, so it is the
///   frame's exactly when RFBM has SSE (the `sw-xfeatures-x87-avx` frame).
///
/// The init values: x87 FCW 0x37f and zeros, XMM and every extended component
/// zero. MXCSR_MASK is the CPU's in every XSAVE image.
fn sigreturn_model(l: &Live, frame: &[u8]) -> (Vec<u8>, bool) {
    let size = l.size;
    let xstate_size = get_u32(frame, SW_BYTES_OFFSET + 16) as usize;
    let fx_only = get_u32(frame, SW_BYTES_OFFSET) != FP_XSTATE_MAGIC1
        || xstate_size < 576
        || xstate_size > size
        || xstate_size > get_u32(frame, SW_BYTES_OFFSET + 4) as usize
        || get_u32(frame, xstate_size) != FP_XSTATE_MAGIC2;
    let mut out = vec![0u8; size];
    out[0..2].copy_from_slice(&FCW_DEFAULT.to_le_bytes());
    put_u32(&mut out, MXCSR, MXCSR_DEFAULT);
    if fx_only {
        out[..416].copy_from_slice(&frame[..416]);
        put_u32(&mut out, MXCSR_MASK, l.cfg.mxcsr_mask());
        return (out, true);
    }
    let rfbm = get_u64(frame, SW_BYTES_OFFSET + 8) & l.full.bits();
    let bv = get_u64(frame, XSTATE_BV) & rfbm;
    for i in XFeatures::from_bits_retain(bv).indices() {
        let r = std_range(&l.e, i);
        out[r.clone()].copy_from_slice(&frame[r]);
    }
    // Component 0's standard range covers MXCSR, which is not x87 state.
    let mxcsr = if rfbm & 0b10 != 0 {
        get_u32(frame, MXCSR)
    } else {
        MXCSR_DEFAULT
    };
    put_u32(&mut out, MXCSR, mxcsr);
    put_u32(&mut out, MXCSR_MASK, l.cfg.mxcsr_mask());
    (out, false)
}

/// Differences between two XSAVE images, XSTATE_BV excluded (init tracking).
fn image_diff(a: &[u8], b: &[u8]) -> Vec<usize> {
    (0..a.len())
        .filter(|&j| !(XSTATE_BV..XSTATE_BV + 8).contains(&j) && a[j] != b[j])
        .collect()
}

#[test]
fn sigreturn_matches_import() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(l) = live("sigreturn_matches_import") else {
        return;
    };
    let (e, cfg, full, size) = (&l.e, &l.cfg, l.full, l.size);
    let all = LOADED & full;
    let frame_pattern = Pattern {
        name: "frame",
        xstate_bv: all,
        mxcsr: 0x9fc0 & cfg.mxcsr_mask(),
        zero: false,
        seed: 11,
    };
    // The registers before the signal: another pattern, so nothing sigreturn
    // leaves alone can pass for loaded.
    let before = image(
        e,
        &Pattern {
            name: "before",
            xstate_bv: all,
            mxcsr: MXCSR_DEFAULT,
            zero: false,
            seed: 12,
        },
        cfg.mxcsr_mask(),
        size,
    );
    // The frame, built here: the image plus the software bytes and magic2.
    let mut base = image(e, &frame_pattern, cfg.mxcsr_mask(), size)
        .bytes()
        .to_vec();
    base.resize(size + 4, 0);
    put_u32(&mut base, SW_BYTES_OFFSET, FP_XSTATE_MAGIC1);
    put_u32(&mut base, SW_BYTES_OFFSET + 4, size as u32 + 4);
    put_u64(&mut base, SW_BYTES_OFFSET + 8, full.bits());
    put_u32(&mut base, SW_BYTES_OFFSET + 16, size as u32);
    put_u32(&mut base, size, FP_XSTATE_MAGIC2);

    let installed = Installed::new();
    let mut harness = Area::new(size, 0);
    let (mut agree, mut skipped) = (0, 0);
    for c in &CRAFTS {
        if !full.contains(c.needs) {
            loud!(
                "SKIP sigreturn_matches_import/{}: XCR0 lacks {:#x}",
                c.name,
                (c.needs - full).bits()
            );
            skipped += 1;
            continue;
        }
        let name = c.name;
        let mut frame = base.clone();
        (c.mutate)(&mut frame, size);

        // Kernel: the handler writes `frame` over its own; sigreturn loads it.
        // SAFETY: no handler is running; the lock serialises CRAFT.
        unsafe {
            (&mut *CRAFT.0.get())[..frame.len()].copy_from_slice(&frame);
        }
        CRAFT_LEN.store(frame.len(), Ordering::SeqCst);
        let hits = HITS.load(Ordering::SeqCst);
        ARMED.store(true, Ordering::SeqCst);
        let mut after_k = Area::new(size, 0);
        // SAFETY: as for `load_then_ud2`'s contract: `before` is built by `image`,
        // `harness` and `after_k` are aligned and standard-size for `full`.
        unsafe {
            load_then_ud2(
                harness.ptr(),
                before.bytes().as_ptr(),
                after_k.ptr(),
                full.bits(),
            )
        };
        CRAFT_LEN.store(0, Ordering::SeqCst);
        assert_eq!(HITS.load(Ordering::SeqCst), hits + 1, "{name}: no signal");
        let (model, model_fx_only) = sigreturn_model(&l, &frame);
        let d = image_diff(after_k.bytes(), &model);
        assert!(
            d.is_empty(),
            "{name}: sigreturn loaded other registers than Linux's rules say, bytes {:?}.. (kernel {:02x?}, model {:02x?})",
            &d[..d.len().min(16)],
            &after_k.bytes()[d[0]..d[0] + 4],
            &model[d[0]..d[0] + 4]
        );

        // Crate: import_sigframe, Fpstate::restore, the same XSAVE.
        let mut fp = Fpstate::new_boxed(cfg, Owner::Host).expect("host fpstate");
        let got = uabi::import_sigframe(cfg, &mut fp, &frame).unwrap_or_else(|x| {
            panic!("{name}: import_sigframe refused it ({x}); sigreturn took it")
        });
        assert_eq!(
            got.fx_only.is_some(),
            model_fx_only,
            "{name}: fx-only verdict (crate {:?})",
            got.fx_only
        );
        let mut after_c = Area::new(size, 0);
        // SAFETY: the restore below runs between `xsave_only` and the XSAVE of
        // the result, where the test holds no values in vector registers.
        let mut cpu = unsafe { Cpu::user() }.expect("this CPU's XSAVE unit");
        let hp = harness.ptr();
        // SAFETY: `harness` is aligned and standard-size for `full`.
        unsafe { xsave_only(hp, full.bits()) };
        let r = fp.restore(&mut cpu, cfg, Mode::User);
        // SAFETY: `after_c` is aligned and standard-size; `harness` was written
        // by `xsave_only` just before.
        unsafe { xsave_then_xrstor(after_c.ptr(), hp, full.bits()) };
        r.expect("Fpstate::restore");
        let d = image_diff(after_k.bytes(), after_c.bytes());
        assert!(
            d.is_empty(),
            "{name}: import_sigframe + restore loaded other registers than sigreturn: {} bytes, first {:?}",
            d.len(),
            &d[..d.len().min(8)]
        );
        loud!(
            "sigreturn/{name}: crate and kernel load the same registers{}",
            match got.fx_only {
                Some(why) => format!(" (fx only: {why})"),
                None => String::new(),
            }
        );
        agree += 1;
    }
    drop(installed);
    // Every frame that ran got here only by agreeing: one count says both.
    loud!(
        "sigreturn: {agree} crafted frames, each loading the same registers through the crate, {skipped} skipped"
    );
}
