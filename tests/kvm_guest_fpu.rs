//! A KVM guest's FPU state end to end, as `examples/kvm-guest-fpu.rs` runs it:
//! the synthesized CPUID leaf 0xD through `KVM_SET_CPUID2`, the guest's own
//! XSETBV, guest register state read with `KVM_GET_XSAVE2`, imported into a guest
//! fpstate, exported, written back with `KVM_SET_XSAVE` and seen again by the
//! guest. The example's file is compiled in here, so both run the same code;
//! every check it makes is asserted. Without `/dev/kvm` the test says so loudly.

#[path = "../examples/kvm-guest-fpu.rs"]
mod kvm_guest_fpu;

mod testkit;
use kvm_guest_fpu::{Outcome, run};
use testkit::loud;

#[test]
fn requires_kvm_guest_fpu_state_round_trips() {
    let checks = match run() {
        Ok(Outcome::Skipped(why)) => {
            loud!("\n******** SKIP requires_kvm_guest_fpu_state_round_trips: {why} ********\n");
            return;
        }
        Ok(Outcome::Ran(checks)) => checks,
        Err(why) => panic!("the flow stopped: {why}"),
    };
    // Both guest programs make the same thirteen checks: CPUID install, Layout
    // against raw CPUID, KVM_CAP_XSAVE2, the guest's XCR0 and KVM's size report,
    // two on the state after phase 1, import, the fpstate's layout, export, the
    // KVM round trip, and two on the state the guest sees in phase 2.
    assert!(checks.len() >= 13, "only {} checks ran", checks.len());
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} checks failed:\n{}",
        failed.len(),
        checks.len(),
        failed.join("\n")
    );
}
