//! Arbitrary text as a recorded `cpuid -r` dump: parse, enumerate, lay out,
//! configure, allocate, synthesise a guest leaf 0xD. Hostile CPUID must give a
//! typed error somewhere along the chain, never a panic, overflow or absurd
//! allocation; what is accepted must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::RecordedCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{Fpstate, Owner};
use xstate::guest::{GuestXsave, XsaveFlags, required_size};
use xstate::layout::Layout;
use xstate::perm::{PermKind, ProcessPerms};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = RecordedCpuid::parse(text) else {
        return;
    };
    let Ok(e) = Enumeration::from_cpuid(&raw) else {
        return;
    };
    let all = e.supported();
    // A mask from the input's hash, to reach more than the full sets.
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    for mask in [
        all,
        e.xcr0_supported(),
        XFeatures::from_bits_retain(h) & all,
    ] {
        if let Ok(l) = Layout::compacted(&e, mask) {
            assert!(
                l.size() <= e.compacted_max_size(),
                "compacted size beyond max"
            );
            for i in mask.indices() {
                if let Some(r) = l.range_of(i) {
                    assert!(r.end <= l.size() as usize, "component {i} past the end");
                }
            }
        }
        if let Ok(l) = Layout::standard(&e, mask & e.xcr0_supported()) {
            assert!(
                l.size() <= e.standard_max_size(),
                "standard size beyond max"
            );
        }
        let _ = e.standard_size(mask);
        let _ = e.compacted_size(mask);
        let _ = required_size(&e, e.xcr0_supported(), mask);
    }
    let Ok(cfg) = Configs::new(&e, &Policy::linux(&e)) else {
        return;
    };
    for owner in [Owner::Host, Owner::Guest] {
        if let Ok(fp) = Fpstate::new_boxed(&cfg, owner) {
            assert_eq!(fp.area().len(), fp.info().size as usize);
        }
    }
    let perms = ProcessPerms::new(&cfg);
    let xss = e.xss_supported();
    if let Ok(g) = GuestXsave::new(
        &e,
        perms.get(PermKind::Guest),
        e.xcr0_supported() - XFeatures::XTILE,
        xss,
        XsaveFlags::of(&e),
    ) {
        // Synthesise every subleaf (no panic, no overflow).
        let _ = g.subleaves().count();
    }
});
