//! No public constructor or setter panics, whatever it is given: arbitrary
//! policies, masks, permission requests, guest register writes, recorded dumps
//! and serialized side state, over every dump in `layouts/`. Each case checks
//! the result is one the API documents (a value or a typed error), and the
//! values it returns keep their invariants.

mod testkit;

use proptest::prelude::*;
use testkit::{Rng, dumps};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::RecordedCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{Fpstate, Owner};
use xstate::guest::{GuestXsave, SideState, XsaveFlags};
use xstate::layout::Layout;
use xstate::perm::{PermKind, ProcessPerms};

fn enumerations() -> Vec<(String, Enumeration)> {
    dumps()
        .iter()
        .map(|(n, c)| (n.clone(), Enumeration::from_cpuid(c).unwrap()))
        .collect()
}

fn masks() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        // Mostly real components, so that some policies pass.
        any::<u64>().prop_map(|m| m & 0x000f_1fff),
        any::<u64>().prop_map(|m| (m & 0x000f_1fff) | 3),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn layouts_of_any_mask(mask in masks()) {
        for (name, e) in enumerations() {
            let m = XFeatures::from_bits_retain(mask);
            if let Ok(l) = Layout::compacted(&e, m) {
                prop_assert_eq!(l.size(), e.compacted_size(m), "{}", name);
            }
            if let Ok(l) = Layout::standard(&e, m) {
                prop_assert_eq!(l.size(), e.standard_size(m), "{}", name);
            }
        }
    }

    #[test]
    fn guest_leaves_and_registers(
        xcr0 in masks(), xss in masks(), flags in any::<u32>(),
        writes in prop::collection::vec((0u8..4, masks()), 0..8),
    ) {
        for (name, e) in enumerations() {
            let Ok(cfg) = Configs::new(&e, &Policy::linux(&e)) else { continue };
            let perms = ProcessPerms::new(&cfg);
            let f = XFeatures::from_bits_retain;
            let Ok(mut g) = GuestXsave::new(
                &e,
                perms.get(PermKind::Guest),
                f(xcr0),
                f(xss),
                XsaveFlags::from_bits_retain(flags),
            ) else { continue };
            let mut fp = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
            for &(what, v) in &writes {
                let before = g.clone();
                let r = match what {
                    0 => g.set_xcr0(f(v)).map(|_| ()),
                    1 => g.set_xss(f(v)).map(|_| ()),
                    2 => g.set_xfd(f(v), &mut fp).map(|_| ()),
                    _ => g.set_xfd_err(f(v)),
                };
                if r.is_err() {
                    prop_assert_eq!(&g, &before, "{}: a refused write changed the guest", name);
                }
                prop_assert!(g.xcr0_allowed().contains(g.xcr0()), "{name}");
                // The leaf the guest reads stays one the crate accepts.
                prop_assert!(Enumeration::from_cpuid(&g).is_ok(), "{name}: {:x?}", g.leaf(0));
            }
        }
    }

    #[test]
    fn recorded_dumps_of_any_text(text in "(\\PC{0,40}\n){0,6}", hexish in "(0x[0-9a-f]{1,9} 0x[0-9a-f]{1,3}: eax=0x[0-9a-f]{1,9} ebx=0x[0-9a-f]{1,9} ecx=0x[0-9a-f]{1,9} edx=0x[0-9a-f]{1,9}\n){0,8}") {
        for t in [&text, &hexish, &(hexish.clone() + &text)] {
            if let Ok(cpu) = RecordedCpuid::parse(t) {
                // Whatever parsed is enumerated or refused with a reason.
                let _ = Enumeration::from_cpuid(&cpu).map_err(|x| x.to_string());
            }
        }
    }

    #[test]
    fn side_state_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(s) = SideState::from_le_bytes(&bytes) {
            let mut out = vec![0u8; s.encoded_len()];
            let n = s.to_le_bytes(&mut out).unwrap();
            prop_assert_eq!(SideState::from_le_bytes(&out[..n]).unwrap(), s);
        }
    }
}

/// Random policies, half of them drawn within what the CPU has so that many are
/// accepted; the configs, fpstates and permission requests they give.
#[test]
fn random_policies_configs_and_permissions() {
    let mut rng = Rng(0x0b0_11c1);
    let es = enumerations();
    let (mut accepted, mut refused, mut grants, mut denials) = (0usize, 0usize, 0usize, 0usize);
    for round in 0..3000 {
        let (name, e) = &es[round % es.len()];
        let within = rng.next() % 2 == 0;
        let draw = |rng: &mut Rng| {
            let m = match rng.next() % 4 {
                0 => 0,
                1 => rng.next(),
                _ => rng.next() & e.supported().bits(),
            };
            if within { m & e.usable().bits() } else { m }
        };
        let enabled = draw(&mut rng) | if within { 3 } else { 0 };
        let f = XFeatures::from_bits_retain;
        let p = Policy {
            enabled: f(enabled),
            dynamic: f(draw(&mut rng) & if within { enabled & (1 << 18) } else { !0 }),
            independent: f(draw(&mut rng) & if within { enabled & (1 << 15) } else { !0 }),
            guest_only: f(draw(&mut rng) & if within { enabled & (1 << 12) } else { !0 }),
        };
        let cfg = match Configs::new(e, &p) {
            Ok(c) => c,
            Err(err) => {
                assert!(!err.to_string().is_empty());
                refused += 1;
                continue;
            }
        };
        accepted += 1;
        assert!(e.usable().contains(cfg.policy().enabled), "{name}");
        for owner in [Owner::Host, Owner::Guest] {
            let fp = Fpstate::new_boxed(&cfg, owner).unwrap_or_else(|x| panic!("{name}: {x}"));
            assert_eq!(fp.area().len() as u32, fp.info().size, "{name}");
            assert!(cfg.layout_of(fp.info().features).is_some(), "{name}");
        }
        let mut perms = ProcessPerms::new(&cfg);
        for _ in 0..4 {
            // Half of them for TILEDATA, the one dynamic component today.
            // The rest small numbers, or anything at arch_prctl's width.
            let index = match rng.next() % 4 {
                0 | 1 => 18,
                2 => rng.next() % 80,
                _ => rng.next(),
            };
            let kind = if rng.next() % 2 == 0 {
                PermKind::Guest
            } else {
                PermKind::Task
            };
            let sigstack = rng.next() % 4 != 0;
            let before = perms;
            match perms.request(&cfg, kind, index, |_| sigstack) {
                Ok(set) => {
                    let index = u32::try_from(index).expect("a granted index is a component");
                    assert!(set.features.has_index(index), "{name}");
                    grants += 1;
                }
                Err(err) => {
                    assert_eq!(perms, before, "{name}: a refused request changed the sets");
                    assert!(err.errno() > 0);
                    denials += 1;
                }
            }
        }
    }
    println!(
        "random policies: {accepted} accepted, {refused} refused; requests: {grants} granted, {denials} refused"
    );
    assert!(accepted > 300 && refused > 300 && grants > 0 && denials > 0);
}
