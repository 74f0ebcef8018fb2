//! Issue 21, item 4: the `kvm` feature's conversions (`xstate::kvm`), on the
//! recorded dumps and against the running kernel's KVM.
//!
//! Everywhere (with `--features kvm`):
//! - `export_xsave` is `uabi::export` with KVM's mask and length, byte for
//!   byte, and `import_xsave` takes it back into a guest fpstate with nothing
//!   lost, on every dump; the fixed 4096-byte `kvm_xsave` refuses AMX state
//!   instead of cutting it;
//! - a `KVM_SET_CPUID2` table made by `set_leaf` reads back as the same guest
//!   (`guest_from_cpuid`), and one made on a CPU with another layout is
//!   refused; `kvm_xcrs` in and out, with the XSETBV rules.
//!
//! With `/dev/kvm` (`requires_kvm_*`):
//! - `KvmCaps::of` on the live CPU is what KVM reports (`KVM_GET_SUPPORTED_CPUID`
//!   leaf 0xD, `KVM_CAP_XSAVE2`); a vCPU with our leaf gives `KVM_GET_XSAVE2`
//!   bytes equal to `export_xsave`'s after `import_xsave`, and takes random
//!   states through `KVM_SET_XSAVE` back byte for byte;
//! - compat against KVM: a vCPU given B's guest leaf (B: every dump, cut to
//!   what this KVM supports) takes A's exported state (A: the largest guest
//!   of this host, and smaller ones) through `KVM_SET_XSAVE`, and gives it
//!   back whole through `KVM_GET_XSAVE2`, exactly when `compat` lets every
//!   component of A's state move to B.
//!
//! Without the feature this binary prints a SKIP line.

#[allow(unused_macros)]
#[path = "testkit/mod.rs"]
mod testkit;

#[cfg(not(feature = "kvm"))]
#[test]
fn requires_kvm_feature() {
    testkit::loud!(
        "\n******** SKIP kvm_glue: built without the kvm feature; run cargo test --features kvm --test kvm_glue ********\n"
    );
}

#[cfg(feature = "kvm")]
mod with_kvm {
    use super::testkit::{self, MXCSR, Rng, dumps, loud, std_buffer};
    use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, Xsave, kvm_cpuid_entry2, kvm_xcrs};
    use kvm_ioctls::{Cap, Kvm, VcpuFd};
    use xstate::XFeatures;
    use xstate::config::{Configs, Policy};
    use xstate::cpuid::CpuidResult;
    use xstate::cpuid::{CpuidSource, LiveCpuid};
    use xstate::enumerate::Enumeration;
    use xstate::error::BufferTooSmall;
    use xstate::fleet::{GuestModel, all_guest_perms, compat};
    use xstate::fpstate::{BoxedArea, Fpstate, Owner};
    use xstate::guest::KVM_XSAVE_SIZE as KVM_XSAVE_REGION;
    use xstate::guest::{GuestError, GuestXsave, LeafTable, XsaveFlags};
    use xstate::kvm::{
        KvmCaps, KvmError, check_xcrs, export_kvm_xsave, export_xsave, guest_from_cpuid,
        import_kvm_xsave, import_xsave, set_leaf, xcr0_of, xcrs,
    };
    use xstate::uabi::{self, UabiError, UserAbi};

    fn bytes(x: &Xsave) -> Vec<u8> {
        x.as_fam_struct_ref()
            .xsave
            .region
            .iter()
            .chain(x.as_slice())
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// A guest fpstate of `cfg`, grown for what `g` may enable (with
    /// permission), holding a random valid state of `g`'s XCR0 taken from
    /// the raw dump `cpu`.
    fn random_state(
        cfg: &Configs,
        g: &GuestXsave,
        caps: KvmCaps,
        cpu: &impl CpuidSource,
        seed: u64,
    ) -> Fpstate<BoxedArea> {
        let mut fp = Fpstate::new_boxed(cfg, Owner::Guest).unwrap();
        if let Some(i) = g.dynamic_to_grow(cfg, &fp) {
            let mut perms = xstate::perm::ProcessPerms::new(cfg);
            perms
                .request(cfg, xstate::perm::PermKind::Guest, u64::from(i), |_| true)
                .unwrap();
            fp = fp.grow_boxed(cfg, &perms, i).unwrap();
        }
        let mut buf = std_buffer(cpu, g.xcr0().bits(), seed);
        buf[MXCSR..MXCSR + 8].copy_from_slice(&[0x80, 0x1f, 0, 0, 0, 0, 0, 0]);
        buf.resize(caps.xsave_size.max(buf.len()), 0);
        uabi::import_guest(cfg, &mut fp, &buf, caps.abi(), g.xfd()).unwrap();
        fp
    }

    fn enumerated() -> Vec<(
        &'static str,
        &'static xstate::cpuid::RecordedCpuid,
        Enumeration,
    )> {
        dumps()
            .iter()
            .filter_map(|(n, c)| Enumeration::from_cpuid(c).ok().map(|e| (n.as_str(), c, e)))
            .collect()
    }

    #[test]
    fn xsave_round_trips_on_every_dump() {
        let mut n = 0;
        for (name, cpu, e) in enumerated() {
            let Ok(cfg) = Configs::new(&e, &Policy::linux(&e)) else {
                continue;
            };
            let caps = KvmCaps::of(&e);
            let g = GuestModel::offered(&e).guest(&e).unwrap();
            let fp = random_state(&cfg, &g, caps, cpu, n + 1);
            let x = export_xsave(&cfg, &fp, &g, caps).unwrap();
            // uabi::export with KVM_GET_XSAVE2's mask, into a zeroed buffer of
            // KVM's size: the same bytes.
            let mut want = vec![0u8; caps.xsave_size];
            uabi::export(&cfg, &fp, g.xcr0_allowed() | XFeatures::LEGACY, &mut want).unwrap();
            assert_eq!(bytes(&x), want, "{name}");
            assert_eq!(
                x.as_slice().len(),
                (caps.xsave_size - 4096).div_ceil(4),
                "{name}"
            );
            // And back: nothing lost.
            let mut fp2 = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
            if let Some(i) = g.dynamic_to_grow(&cfg, &fp2) {
                let mut perms = xstate::perm::ProcessPerms::new(&cfg);
                perms
                    .request(&cfg, xstate::perm::PermKind::Guest, u64::from(i), |_| true)
                    .unwrap();
                fp2 = fp2.grow_boxed(&cfg, &perms, i).unwrap();
            }
            let took = import_xsave(&cfg, &mut fp2, &x, caps, &g).unwrap();
            assert_eq!(took, g.xcr0(), "{name}");
            let again = export_xsave(&cfg, &fp2, &g, caps).unwrap();
            assert_eq!(bytes(&again), want, "{name}");
            // The 4096-byte kvm_xsave: fine below 4096 bytes, refused above.
            let std = e.standard_size(g.xcr0_allowed()) as usize;
            match export_kvm_xsave(&cfg, &fp, &g) {
                Ok(k) => {
                    assert!(std <= KVM_XSAVE_REGION, "{name}");
                    let kb: Vec<u8> = k.region.iter().flat_map(|w| w.to_le_bytes()).collect();
                    assert_eq!(kb[..], want[..KVM_XSAVE_REGION], "{name}");
                    let mut fp3 = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
                    import_kvm_xsave(&cfg, &mut fp3, &k, caps, &g).unwrap();
                }
                Err(err) => {
                    assert!(std > KVM_XSAVE_REGION, "{name}: {err}");
                    assert_eq!(
                        err,
                        KvmError::Uabi(UabiError::BufferTooSmall(BufferTooSmall {
                            needed: std,
                            got: KVM_XSAVE_REGION
                        }))
                    );
                    assert_eq!(err.errno(), 14, "EFAULT, as KVM's short buffer");
                }
            }
            n += 1;
        }
        loud!(
            "kvm glue: {n} dumps, export_xsave = uabi::export byte for byte, import_xsave takes it back"
        );
        assert!(n >= 30);
    }

    #[test]
    fn a_short_xsave_is_refused_as_kvm_refuses_it() {
        let (cpu, e) = testkit::load("intel-sapphire-rapids-xeon-w9-3475x.txt");
        let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
        let caps = KvmCaps::of(&e);
        let g = GuestModel::offered(&e).guest(&e).unwrap();
        let fp = random_state(&cfg, &g, caps, &cpu, 5);
        let k = kvm_bindings::kvm_xsave::default();
        let mut fp2 = Fpstate::new_boxed(&cfg, Owner::Guest).unwrap();
        assert_eq!(
            import_kvm_xsave(&cfg, &mut fp2, &k, caps, &g),
            Err(KvmError::Uabi(UabiError::BufferTooSmall(BufferTooSmall {
                needed: 11008,
                got: 4096
            })))
        );
        // KVM refuses state outside what it supports for guests (EINVAL).
        let x = export_xsave(&cfg, &fp, &g, caps).unwrap();
        let narrow = KvmCaps {
            supported_xcr0: XFeatures::LEGACY,
            ..caps
        };
        let err = import_xsave(&cfg, &mut fp2, &x, narrow, &g).unwrap_err();
        assert!(
            matches!(err, KvmError::Uabi(UabiError::FeaturesNotPermitted { .. })),
            "{err}"
        );
        assert_eq!(err.errno(), 22);
        assert_eq!(
            UserAbi::Kvm {
                supported: XFeatures::LEGACY,
                uabi_size: 11008
            },
            narrow.abi()
        );
    }

    fn table_with(entries: &[kvm_cpuid_entry2]) -> CpuId {
        CpuId::from_entries(entries).unwrap()
    }

    #[test]
    fn cpuid_tables_and_xcrs_round_trip() {
        let all = enumerated();
        let mut n = 0;
        for (name, _, e) in &all {
            let g = GuestModel::offered(e).guest(e).unwrap();
            // A table with other leaves and a stale leaf 0xD entry.
            let other = kvm_cpuid_entry2 {
                function: 1,
                eax: 0x806f8,
                ..Default::default()
            };
            let stale = kvm_cpuid_entry2 {
                function: 0xd,
                index: 3,
                eax: 64,
                ..Default::default()
            };
            let mut t = table_with(&[other, stale]);
            set_leaf(&mut t, &g).unwrap();
            let d: Vec<_> = t.as_slice().iter().filter(|x| x.function == 0xd).collect();
            assert_eq!(d.len(), g.subleaves().count(), "{name}");
            assert!(
                t.as_slice().iter().any(|x| x.function == 1),
                "{name}: other leaves kept"
            );
            let back = guest_from_cpuid(e, &all_guest_perms(e), &t).unwrap();
            assert_eq!(back.xcr0_allowed(), g.xcr0_allowed(), "{name}");
            assert_eq!(back.xss_allowed(), g.xss_allowed(), "{name}");
            assert_eq!(back.flags(), g.flags(), "{name}");
            // Every other dump's table: taken exactly when every subleaf reads
            // the same on this host (the same facts migrate compares).
            for (other_name, _, o) in &all {
                let og = GuestModel::offered(o).guest(o).unwrap();
                let mut ot = table_with(&[]);
                set_leaf(&mut ot, &og).unwrap();
                let r = guest_from_cpuid(e, &all_guest_perms(e), &ot);
                let same = og.subleaves().all(|(s, regs)| {
                    s <= 1
                        || GuestXsave::new(
                            e,
                            &all_guest_perms(e),
                            og.xcr0_allowed(),
                            og.xss_allowed(),
                            og.flags(),
                        )
                        .is_ok_and(|h| h.leaf(s) == regs)
                });
                assert_eq!(r.is_ok(), same, "{other_name}'s table on {name}: {r:?}");
                n += 1;
            }
            // kvm_xcrs.
            let x = xcrs(&g);
            assert_eq!(xcr0_of(&x), Ok(g.xcr0()));
            let mut g2 = g.clone();
            g2.set_xcr0(XFeatures::X87).unwrap();
            check_xcrs(&mut g2, &x).unwrap();
            assert_eq!(g2.xcr0(), g.xcr0());
            assert_eq!(g2.leaf(0), g.leaf(0), "{name}: size reports follow XCR0");
        }
        loud!("kvm glue: {n} tables checked against {} hosts", all.len());
        let e = &all[0].2;
        let mut g = GuestModel::offered(e).guest(e).unwrap();
        let none = kvm_xcrs::default();
        assert_eq!(xcr0_of(&none), Err(KvmError::NoXcr0 { nr_xcrs: 0 }));
        let mut x = xcrs(&g);
        x.nr_xcrs = 17;
        assert_eq!(xcr0_of(&x), Err(KvmError::NoXcr0 { nr_xcrs: 17 }));
        x.nr_xcrs = 1;
        x.xcrs[0].value = 0b10; // x87 clear
        let before = g.clone();
        assert_eq!(
            check_xcrs(&mut g, &x),
            Err(KvmError::Guest(GuestError::X87Disabled { xcr0: 0b10 }))
        );
        assert_eq!(g, before, "unchanged on error");
        assert_eq!(
            guest_from_cpuid(e, &all_guest_perms(e), &table_with(&[])).unwrap_err(),
            KvmError::MissingSubleaf { subleaf: 0 }
        );
    }

    // -----------------------------------------------------------------------
    // Against the running kernel's KVM
    // -----------------------------------------------------------------------

    struct Live {
        kvm: Kvm,
        host: Enumeration,
        cfg: Configs,
        caps: KvmCaps,
        supported: CpuId,
    }

    fn live() -> Option<Live> {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(err) => {
                loud!("\n******** SKIP kvm_glue live: /dev/kvm: {err} ********\n");
                return None;
            }
        };
        let host = Enumeration::from_cpuid(&LiveCpuid).unwrap();
        if xstate::insn::read_xcr0().is_some_and(|x| x.contains(XFeatures::XTILE_DATA)) {
            testkit::request_xcomp_perm(18, true).unwrap();
        }
        let cfg = Configs::new(&host, &Policy::linux(&host)).unwrap();
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let vm = kvm.create_vm().unwrap();
        let caps = KvmCaps::from_kvm(&supported, vm.check_extension_int(Cap::Xsave2)).unwrap();
        Some(Live {
            kvm,
            host,
            cfg,
            caps,
            supported,
        })
    }

    /// A vCPU given `g`'s leaf (in KVM's supported table) and `g`'s XCR0;
    /// the vCPU and its VM, and the leaf 0xD the vCPU holds (read back with
    /// `KVM_GET_CPUID2`: this machine's nested KVM replaces a leaf 0xD that
    /// allows less than it supports with its own).
    fn vcpu(l: &Live, g: &GuestXsave) -> (VcpuFd, kvm_ioctls::VmFd, LeafTable) {
        let vm = l.kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut t = l.supported.clone();
        set_leaf(&mut t, g).unwrap();
        vcpu.set_cpuid2(&t).unwrap();
        vcpu.set_xcrs(&xcrs(g)).unwrap();
        let mut held = LeafTable::default();
        for x in vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap().as_slice() {
            if x.function == 0xd {
                held.insert(
                    x.index,
                    CpuidResult {
                        eax: x.eax,
                        ebx: x.ebx,
                        ecx: x.ecx,
                        edx: x.edx,
                    },
                );
            }
        }
        (vcpu, vm, held)
    }

    /// CPUID(0xD,0) EDX:EAX of a table.
    fn allowed(t: &LeafTable) -> XFeatures {
        let r = t.cpuid(0xd, 0);
        XFeatures::from_bits_retain(u64::from(r.edx) << 32 | u64::from(r.eax))
    }

    fn get(v: &VcpuFd, caps: KvmCaps) -> Xsave {
        let mut x = Xsave::new((caps.xsave_size - KVM_XSAVE_REGION).div_ceil(4)).unwrap();
        // SAFETY: `x` holds KVM_CAP_XSAVE2's bytes (or 4096 without the
        // capability), all KVM_GET_XSAVE2 writes; no feature is enabled for
        // this process after the size was read.
        unsafe { v.get_xsave2(&mut x) }.unwrap();
        x
    }

    fn set(v: &VcpuFd, x: &Xsave) -> Result<(), i32> {
        // SAFETY: `x` holds KVM_CAP_XSAVE2's bytes, all KVM_SET_XSAVE reads.
        unsafe { v.set_xsave2(x) }.map_err(|e| e.errno())
    }

    #[test]
    fn requires_kvm_caps_and_xsave_match_the_kernel() {
        let Some(l) = live() else { return };
        assert_eq!(
            l.caps,
            KvmCaps::of(&l.host),
            "KVM's supported XCR0 and KVM_CAP_XSAVE2 against the crate's reading of this CPU"
        );
        let g = GuestModel::offered(&l.host).guest(&l.host).unwrap();
        let (v, _vm, held) = vcpu(&l, &g);
        assert_eq!(
            allowed(&held),
            g.xcr0_allowed(),
            "the vCPU holds our leaf 0xD"
        );
        assert_eq!(xcr0_of(&v.get_xcrs().unwrap()), Ok(g.xcr0()));
        let mut g2 = g.clone();
        check_xcrs(&mut g2, &v.get_xcrs().unwrap()).unwrap();
        let table = v.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let back = guest_from_cpuid(&l.host, &all_guest_perms(&l.host), &table).unwrap();
        assert_eq!(back.xcr0_allowed(), g.xcr0_allowed());
        // KVM's reset state: imported and exported back, every byte equal.
        let k = get(&v, l.caps);
        let mut fp = Fpstate::new_boxed(&l.cfg, Owner::Guest).unwrap();
        import_xsave(&l.cfg, &mut fp, &k, l.caps, &g).unwrap();
        assert_eq!(
            bytes(&export_xsave(&l.cfg, &fp, &g, l.caps).unwrap()),
            bytes(&k)
        );
        // Random states: KVM_SET_XSAVE takes ours, KVM_GET_XSAVE2 gives them back.
        let mut rng = Rng(0x21);
        for _ in 0..200 {
            let fp = random_state(&l.cfg, &g, l.caps, &LiveCpuid, rng.next());
            let x = export_xsave(&l.cfg, &fp, &g, l.caps).unwrap();
            set(&v, &x).unwrap();
            assert_eq!(bytes(&get(&v, l.caps)), bytes(&x));
        }
        loud!(
            "kvm glue live: KvmCaps {:#x}/{} bytes = KVM's; 200 random states through KVM_SET_XSAVE and KVM_GET_XSAVE2, every byte equal",
            l.caps.supported_xcr0.bits(),
            l.caps.xsave_size
        );
    }

    /// `g` cut to the XCR0 components in `keep` (groups kept whole by the
    /// caller's choice of `keep`), with IA32_XSS only if this KVM has it.
    fn cut(
        e: &Enumeration,
        g: &GuestXsave,
        keep: XFeatures,
        flags: XsaveFlags,
    ) -> Option<GuestXsave> {
        let xcr0 = g.xcr0_allowed() & keep;
        let mut h = GuestXsave::new(
            e,
            &all_guest_perms(e),
            xcr0,
            XFeatures::empty(),
            g.flags() & flags,
        )
        .ok()?;
        h.set_xcr0(xcr0).ok()?;
        Some(h)
    }

    #[test]
    fn requires_kvm_compat_agrees_with_kvm_set_xsave() {
        let Some(l) = live() else { return };
        let here = l.caps.supported_xcr0;
        let full = GuestModel::offered(&l.host).guest(&l.host).unwrap();
        let flags = full.flags();
        // A: this host's largest guest and smaller ones (groups whole).
        let a_masks = [here, XFeatures::LEGACY | XFeatures::AVX, XFeatures::LEGACY];
        let all = enumerated();
        let (mut pairs, mut takes, mut refused, mut layout_only) = (0, 0, 0, 0);
        let (mut replaced, mut malformed) = (0, 0);
        for a_mask in a_masks {
            let Some(ga) = cut(&l.host, &full, a_mask, flags) else {
                continue;
            };
            let a = Enumeration::from_cpuid(&ga).unwrap();
            let (va, _vma, _) = vcpu(&l, &ga);
            let fp = random_state(&l.cfg, &ga, l.caps, &LiveCpuid, a_mask.bits());
            let x = export_xsave(&l.cfg, &fp, &ga, l.caps).unwrap();
            set(&va, &x).unwrap();
            let state = get(&va, l.caps);
            for (name, _, b_host) in &all {
                // B's guest leaf on this host: what B offers, cut to this KVM,
                // with the extensions both have.
                let ob = GuestModel::offered(b_host).guest(b_host).unwrap();
                let Some(gb) = cut(b_host, &ob, here, flags) else {
                    continue;
                };
                let b = Enumeration::from_cpuid(&gb).unwrap();
                // compat on the two guests' leaves: A's state may move when
                // no component of it is refused.
                let c = compat(&a, &b).unwrap();
                let moves = c.a_to_b.reasons().next().is_none() && c.a_to_b.other.is_none();
                // This host's hardware saves at its own offsets: a leaf of B
                // that puts A's components elsewhere cannot be presented
                // here (KVM would take the bytes, the guest would read them
                // at B's offsets). compat must refuse those; KVM is not asked.
                let elsewhere = ga.xcr0_allowed().indices().filter(|&i| i >= 2).any(|i| {
                    b.component(i).is_some_and(|cb| {
                        l.host.component(i).is_some_and(|ch| {
                            (cb.size, cb.std_offset, cb.align64, cb.xfd)
                                != (ch.size, ch.std_offset, ch.align64, ch.xfd)
                        })
                    })
                });
                if elsewhere {
                    assert!(
                        !moves,
                        "A {a_mask:#x} -> {name}: compat lets state move to another layout"
                    );
                    layout_only += 1;
                    continue;
                }
                let (vb, _vmb, held) = vcpu(&l, &gb);
                // compat for the leaf the vCPU runs with: B's, or the one
                // KVM put in its place.
                if allowed(&held) != gb.xcr0_allowed() {
                    replaced += 1;
                }
                let b_run = match Enumeration::from_cpuid(&held) {
                    Ok(b) => b,
                    Err(err) => {
                        // KVM rewrote subleaf 0 only: the leaf the guest would
                        // see allows components it gives no size for.
                        if malformed == 0 {
                            loud!(
                                "NOTE compat vs KVM: {name}: the vCPU holds a leaf 0xD the crate refuses ({err}): \
                                 asked {:#x}, KVM_GET_CPUID2 subleaf 0 allows {:#x} without their subleaves",
                                gb.xcr0_allowed().bits(),
                                allowed(&held).bits()
                            );
                        }
                        malformed += 1;
                        continue;
                    }
                };
                let c = compat(&a, &b_run).unwrap();
                let moves = c.a_to_b.reasons().next().is_none() && c.a_to_b.other.is_none();
                let took = set(&vb, &state).is_ok() && bytes(&get(&vb, l.caps)) == bytes(&state);
                assert_eq!(
                    took,
                    moves,
                    "A {a_mask:#x} -> {name} (B's leaf {:#x}, the vCPU's {:#x}): KVM {} the state, compat says {:?}",
                    gb.xcr0_allowed().bits(),
                    allowed(&held).bits(),
                    if took { "takes" } else { "does not take" },
                    c.a_to_b.reasons().collect::<Vec<_>>()
                );
                pairs += 1;
                if took {
                    takes += 1;
                } else {
                    refused += 1;
                }
            }
        }
        loud!(
            "compat vs KVM: {pairs} pairs (A: 3 guests of this host, B: {} dumps' leaves cut to this KVM's {:#x}), {takes} taken whole, {refused} not, 0 disagree; \
             {layout_only} more pairs put A's state at another offset on B: compat refuses them, KVM is not asked",
            all.len(),
            here.bits()
        );
        assert!(takes > 0);
        if replaced > 0 {
            loud!(
                "NOTE compat vs KVM: this KVM replaced B's leaf 0xD with its own on {replaced} of {} vCPUs \
                 (every leaf allowing less than {:#x}: subleaf 0 widened, the rest kept); {malformed} of those leaves \
                 do not enumerate (components allowed without a size), so KVM was not asked about them",
                pairs + malformed,
                here.bits()
            );
        }
        if refused == 0 {
            loud!(
                "NOTE compat vs KVM: no vCPU here refused A's state (this KVM runs every vCPU with its full leaf), \
                 so only the 'takes' side was seen against the kernel; the refusals are checked on the dumps (tests/fleet.rs)"
            );
        }
    }
}
