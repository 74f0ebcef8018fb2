//! XSETBV's #GP rules in ring 0: for a set of XCR0 values, the crate predicts
//! whether the CPU accepts them (`GuestXsave::set_xcr0`, the SDM's rules as KVM
//! applies them), and the CPU is asked. A refused value raises #GP, which
//! `handle_gp` turns into a skipped instruction; the two verdicts must agree.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use xstate::XFeatures;
use xstate::config::Configs;
use xstate::enumerate::Enumeration;
use xstate::guest::{GuestXsave, XsaveFlags};
use xstate::perm::PermSet;

use crate::hw::Frame;
use crate::kprintln;

static ARMED: AtomicBool = AtomicBool::new(false);
static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// XSETBV's encoding: 0F 01 D1.
const XSETBV: [u8; 3] = [0x0f, 0x01, 0xd1];

/// The #GP handler's part: if a probe is armed and the fault is an XSETBV,
/// resume after it. Returns whether the fault was handled.
pub fn handle_gp(frame: &mut Frame) -> bool {
    if !ARMED.load(SeqCst) {
        return false;
    }
    // SAFETY: RIP is the faulting instruction in this kernel's identity-mapped
    // text (only kernel code runs), so its three bytes are readable.
    let bytes = unsafe { core::ptr::read_volatile(frame.rip as *const [u8; 3]) };
    if bytes != XSETBV {
        return false;
    }
    // XSETBV faults before changing XCR0: skipping it leaves XCR0 as it was.
    frame.rip += XSETBV.len() as u64;
    CAUGHT.fetch_add(1, SeqCst);
    true
}

/// Execute XSETBV(0, `v`) through the crate's wrapper; whether it raised #GP.
fn xsetbv_faults(v: u64) -> bool {
    let before = CAUGHT.load(SeqCst);
    ARMED.store(true, SeqCst);
    // SAFETY: CPL 0 and CR4.OSXSAVE are set. The wrapper's contract asks for a
    // valid value; an invalid one raises #GP before XCR0 changes, and
    // `handle_gp` (armed above) resumes after the instruction, so the only
    // effect is the verdict. A valid value changes XCR0 while no fpstate is
    // live and no AVX code runs; `run` puts the kernel's value back.
    unsafe { xstate::insn::xsetbv(0, v) };
    ARMED.store(false, SeqCst);
    CAUGHT.load(SeqCst) != before
}

/// Try every probe value, then write `cfg.xcr0()`. Returns (agreed, probes).
pub fn run(e: &Enumeration, cfg: &Configs) -> (u32, u32) {
    let supported = e.xcr0_supported();
    let perms = PermSet {
        features: supported,
        size: 0,
        user_size: 0,
    };
    let mut rules =
        match GuestXsave::new(e, &perms, supported, XFeatures::empty(), XsaveFlags::of(e)) {
            Ok(g) => g,
            Err(err) => {
                kprintln!(
                    "xsetbv: FAIL the crate refused this CPU's XCR0 mask as a rule set: {err}"
                );
                return (0, 1);
            }
        };
    let legacy = XFeatures::LEGACY;
    let unsupported = (2..63)
        .map(|i| 1u64 << i)
        .find(|&b| !supported.contains(XFeatures::from_bits_retain(b)));
    let mut probes: [Option<(&str, u64)>; 9] = [None; 9];
    probes[0] = Some(("nothing", 0));
    probes[1] = Some(("SSE without x87", XFeatures::SSE.bits()));
    probes[2] = Some(("x87 only", XFeatures::X87.bits()));
    probes[3] = Some(("x87 and SSE", legacy.bits()));
    if supported.contains(XFeatures::AVX) {
        probes[4] = Some(("AVX without SSE", (XFeatures::X87 | XFeatures::AVX).bits()));
    }
    if let Some(b) = unsupported {
        probes[5] = Some(("an unsupported component", legacy.bits() | b));
    }
    if supported.contains(XFeatures::BNDREGS | XFeatures::BNDCSR) {
        probes[6] = Some(("half of MPX", (legacy | XFeatures::BNDREGS).bits()));
    }
    probes[7] = Some(("reserved bit 63", legacy.bits() | 1 << 63));
    probes[8] = Some(("the kernel config's", cfg.xcr0().bits()));
    let (mut agreed, mut total) = (0, 0);
    for (what, v) in probes.into_iter().flatten() {
        let predicted = rules.set_xcr0(XFeatures::from_bits_retain(v));
        let faulted = xsetbv_faults(v);
        let agree = predicted.is_ok() != faulted;
        total += 1;
        agreed += u32::from(agree);
        let cpu = if faulted { "#GP" } else { "ok" };
        let verdict = if agree { "agree" } else { "FAIL disagree" };
        match predicted {
            Ok(()) => kprintln!("xsetbv {v:#x} ({what}): crate ok, cpu {cpu}: {verdict}"),
            Err(err) => {
                kprintln!("xsetbv {v:#x} ({what}): crate #GP ({err}), cpu {cpu}: {verdict}")
            }
        }
    }
    (agreed, total)
}
