//! Every dump in `layouts/` through enumeration, validation and both layouts, each
//! checked against the raw CPUID leaf 0xD and an independent reference written here
//! from the SDM. A new file dropped into `layouts/` is tested with no code change.
//!
//! Also: the `cpuid` tool's view of this CPU against [`LiveCpuid`], and the dump of
//! this build host recorded by `cargo run --example xstate-report -- --record`.

use std::fs;
use std::process::Command;

use xstate::XFeatures;
use xstate::cpuid::{CpuidSource, LiveCpuid, RecordedCpuid, Vendor};
use xstate::enumerate::{Enumeration, MxcsrMaskSource};
use xstate::layout::{Form, Layout, LayoutError};

#[path = "../examples/xstate-report.rs"]
#[allow(dead_code)]
mod report;

mod testkit;
use testkit::loud;
use testkit::{Rng, compacted_raw, dumps, layouts_dir, std_size_raw};

/// The dump of this build host, recorded by `xstate-report --record`.
/// The part of a dump's file name that marks a build host of this project.
const BUILD_HOST: &str = "this-build-host";

/// Every dump, parsed and enumerated.
fn enumerated() -> Vec<(String, RecordedCpuid, Enumeration)> {
    testkit::dumps()
        .iter()
        .map(|(name, cpu)| {
            let e = Enumeration::from_cpuid(cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.clone(), cpu.clone(), e)
        })
        .collect()
}

/// The raw supported masks, straight from CPUID: (XCR0 bitmap, IA32_XSS bitmap).
fn raw_masks(cpu: &impl CpuidSource) -> (u64, u64) {
    let s0 = cpu.cpuid(0xd, 0);
    let s1 = cpu.cpuid(0xd, 1);
    (
        (u64::from(s0.edx) << 32) | u64::from(s0.eax),
        (u64::from(s1.edx) << 32) | u64::from(s1.ecx),
    )
}

#[test]
fn every_dump_enumerates() {
    let d = enumerated();
    assert!(d.len() >= 21, "layouts/ holds {} dumps", d.len());
    for (name, cpu, e) in &d {
        let (xcr0, xss) = raw_masks(cpu);
        assert_eq!(e.xcr0_supported().bits(), xcr0, "{name}");
        assert_eq!(e.xss_supported().bits(), xss, "{name}");
        let l = Layout::compacted(e, e.supported()).unwrap();
        loud!(
            "{name}: xcr0 {xcr0:#x} xss {xss:#x} std {} (CPUID says {}) compacted {}",
            e.standard_max_size(),
            cpu.cpuid(0xd, 0).ecx,
            l.size()
        );
    }
}

/// (a) Standard offsets are CPUID's EBX for every user subleaf.
#[test]
fn standard_offsets_are_cpuid_ebx() {
    for (name, cpu, e) in enumerated() {
        let (xcr0, _) = raw_masks(&cpu);
        let l = Layout::standard(&e, e.xcr0_supported()).unwrap();
        assert_eq!(l.form(), Form::Standard);
        assert_eq!(l.xcomp_bv(), 0, "{name}");
        // The legacy region is fixed (SDM 13.4.1): x87 from byte 0, XMM0 at 160.
        assert_eq!(l.offset_of(0), Some(0), "{name}");
        assert_eq!(l.offset_of(1), Some(160), "{name}");
        let mut n = 0;
        for i in 2..63u32 {
            let r = cpu.cpuid(0xd, i);
            if xcr0 & (1 << i) != 0 {
                assert_eq!(l.offset_of(i), Some(r.ebx), "{name}: component {i} offset");
                assert_eq!(l.size_of(i), Some(r.eax), "{name}: component {i} size");
                let range = l.range_of(i).unwrap();
                assert_eq!(range, r.ebx as usize..(r.ebx + r.eax) as usize);
                n += 1;
            } else {
                assert_eq!(l.offset_of(i), None, "{name}: component {i} not in XCR0");
            }
        }
        loud!("{name}: {n} user subleaves, offsets = CPUID EBX");
    }
}

/// (b) Compacted offsets and size equal the naive SDM reference, for the whole
/// supported mask and 200 pseudo-random subsets per dump.
#[test]
fn compacted_matches_the_sdm_reference() {
    let mut rng = Rng(0x5eed_0d0d_c0ff_ee00);
    let mut checked = 0u32;
    for (name, cpu, e) in enumerated() {
        let (xcr0, xss) = raw_masks(&cpu);
        let all = xcr0 | xss;
        let mut masks = vec![all, 0, 3];
        masks.extend((0..200).map(|_| rng.next() & all));
        for mask in masks {
            let l = Layout::compacted(&e, XFeatures::from_bits_retain(mask))
                .unwrap_or_else(|err| panic!("{name}: {mask:#x}: {err}"));
            let (offsets, size) = compacted_raw(&cpu, mask);
            assert_eq!(l.form(), Form::Compacted);
            assert_eq!(l.mask().bits(), mask, "{name}");
            assert_eq!(l.xcomp_bv(), mask | 1 << 63, "{name}");
            assert_eq!(l.size(), size, "{name}: size for XCOMP_BV {mask:#x}");
            for &(i, at) in &offsets {
                assert_eq!(
                    l.offset_of(i),
                    Some(at),
                    "{name}: component {i} for XCOMP_BV {mask:#x}"
                );
                assert_eq!(l.size_of(i), Some(cpu.cpuid(0xd, i).eax), "{name}: {i}");
            }
            for i in 2..64u32 {
                if mask & (1 << i) == 0 {
                    assert_eq!(l.offset_of(i), None, "{name}: {i} absent from {mask:#x}");
                }
            }
            assert_eq!(e.compacted_size(XFeatures::from_bits_retain(mask)), size);
            checked += 1;
        }
        let (_, full) = compacted_raw(&cpu, all);
        assert_eq!(e.compacted_max_size(), full, "{name}");
        loud!("{name}: compacted size {full} for {all:#x}, 203 masks match the SDM rule");
    }
    loud!("{checked} compacted layouts checked");
}

/// (c) The standard size is the end of the last included component, within
/// CPUID(0xD,0).ECX, for every supported XCR0 and random user subsets.
#[test]
fn standard_size_is_the_max_end() {
    let mut rng = Rng(0x57a2_da2d);
    for (name, cpu, e) in enumerated() {
        let (xcr0, _) = raw_masks(&cpu);
        let max = cpu.cpuid(0xd, 0).ecx;
        let mut masks = vec![xcr0, 3];
        masks.extend((0..50).map(|_| rng.next() & xcr0));
        for mask in masks {
            let l = Layout::standard(&e, XFeatures::from_bits_retain(mask)).unwrap();
            let end = std_size_raw(&cpu, mask);
            assert_eq!(l.size(), end, "{name}: standard size for {mask:#x}");
            assert!(l.size() <= max, "{name}: {} > CPUID ECX {max}", l.size());
            assert_eq!(e.standard_size(XFeatures::from_bits_retain(mask)), end);
        }
        assert_eq!(e.reported_max_standard(), max, "{name}");
        loud!(
            "{name}: standard size {} for XCR0 {xcr0:#x}, CPUID(0xD,0).ECX {max}",
            e.standard_max_size()
        );
    }
}

/// (d) A mask with a bit the CPU lacks gets no layout; supervisor bits get no standard one.
#[test]
fn unsupported_bits_are_refused() {
    let mut rng = Rng(0xbad_b175);
    for (name, cpu, e) in enumerated() {
        let (xcr0, xss) = raw_masks(&cpu);
        let all = xcr0 | xss;
        let lacking = !all & !(1 << 63);
        assert_ne!(lacking, 0, "{name}");
        let mut bits = vec![lacking.trailing_zeros(), 63 - (lacking.leading_zeros())];
        bits.extend((0..20).map(|_| {
            let r = rng.next() & lacking;
            if r == 0 {
                lacking.trailing_zeros()
            } else {
                r.trailing_zeros()
            }
        }));
        for b in bits {
            let bad = 1u64 << b;
            assert_eq!(bad & all, 0);
            let m = XFeatures::from_bits_retain(all | bad);
            assert_eq!(
                Layout::compacted(&e, m),
                Err(LayoutError::Unsupported { mask: bad }),
                "{name}: compacted with bit {b}"
            );
            let m = XFeatures::from_bits_retain(xcr0 | bad);
            assert_eq!(
                Layout::standard(&e, m),
                Err(LayoutError::Unsupported { mask: bad }),
                "{name}: standard with bit {b}"
            );
        }
        if xss != 0 {
            assert_eq!(
                Layout::standard(&e, XFeatures::from_bits_retain(xcr0 | xss)),
                Err(LayoutError::SupervisorInStandard { mask: xss }),
                "{name}"
            );
        }
    }
}

/// Masks and maximum sizes of `e`, for the log.
fn summary(e: &Enumeration) -> String {
    format!(
        "xcr0 {:#x} xss {:#x} std {} compacted {}",
        e.xcr0_supported().bits(),
        e.xss_supported().bits(),
        e.standard_max_size(),
        e.compacted_max_size()
    )
}

/// The `cpuid` tool (Debian package `cpuid`) reads this CPU independently of the
/// `x86` crate; its `-r -1` dump must enumerate exactly as [`LiveCpuid`] does.
#[test]
fn cpuid_tool() {
    let out = match Command::new("cpuid").args(["-r", "-1"]).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            loud!("SKIP cpuid_tool: cpuid binary not installed");
            return;
        }
        Err(e) => panic!("running cpuid -r -1: {e}"),
    };
    assert!(out.status.success(), "cpuid -r -1: {:?}", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
    let tool = RecordedCpuid::parse(&text).unwrap_or_else(|e| panic!("cpuid -r -1 output: {e}"));
    let from_tool = Enumeration::from_cpuid(&tool).unwrap();
    let live = Enumeration::from_cpuid(&LiveCpuid).unwrap();
    assert_eq!(from_tool, live);
    // The tool prints the subleaves of the masks' components; a CPU may answer
    // others too (a hypervisor that hides AMX from EDX:EAX still lists 17 and
    // 18), which the tool leaves out: said, and nothing else may differ.
    let masks = live.supported() | XFeatures::LEGACY;
    for i in 0..64 {
        let (t, l) = (tool.cpuid(0xd, i), LiveCpuid.cpuid(0xd, i));
        if !masks.has_index(i) && t == Default::default() && l != t {
            loud!("NOTE cpuid_tool: subleaf {i} ({l:x?}) is outside the masks; the tool omits it");
            continue;
        }
        assert_eq!(t, l, "subleaf {i}");
    }
    loud!("cpuid -r -1: {}, same as LiveCpuid", summary(&from_tool));
}

/// The build hosts' own dumps are in `layouts/` (so every test above covers
/// them), each recorded by `xstate-report --record`; when the suite runs on one
/// of those hosts, its dump matches the live CPU.
#[test]
fn this_build_host_is_recorded() {
    let hosts: Vec<_> = dumps()
        .iter()
        .filter(|(n, _)| n.contains(BUILD_HOST))
        .collect();
    assert!(!hosts.is_empty(), "no *{BUILD_HOST}* dump in layouts/");
    for (name, cpu) in &hosts {
        let text = fs::read_to_string(layouts_dir().join(name)).unwrap();
        assert!(
            text.contains("xstate-report -- --record"),
            "{name} was not recorded by xstate-report --record"
        );
        // A build host's dump is complete: the vendor, and the MXCSR mask a
        // recording cannot otherwise know (AMD's 0x2ffff against Intel's 0xffff).
        assert!(Vendor::of(cpu).is_ok(), "{name}: no leaf 0");
        assert!(cpu.mxcsr_mask().is_some(), "{name}: no `# mxcsr_mask` line");
        let e = Enumeration::from_cpuid(cpu).unwrap();
        assert_eq!(e.mxcsr_source(), MxcsrMaskSource::Measured, "{name}");
    }
    // What --record writes now, read back, is the live CPU's enumeration,
    // MXCSR mask included.
    let text = report::run(["--record".to_owned()]).unwrap().unwrap();
    let rec = RecordedCpuid::parse(&text).unwrap();
    let live = Enumeration::from_cpuid(&LiveCpuid).unwrap();
    assert_eq!(rec.mxcsr_mask(), Some(xstate::insn::read_mxcsr_mask()));
    assert_eq!(Vendor::of(&rec), Vendor::of(&LiveCpuid));
    assert_eq!(
        Enumeration::from_cpuid(&rec).unwrap(),
        live,
        "--record round trip"
    );
    loud!(
        "--record -> parse -> enumeration: the live CPU's (MXCSR_MASK {:#x})",
        live.mxcsr_mask()
    );
    // Same signature (leaf 1 EAX), hypervisor bit (leaf 1 ECX[31]) and leaf 7.0
    // feature flags: this is that host, so its leaf 0xD must still be the recorded one.
    let live1 = LiveCpuid.cpuid(1, 0);
    let same_host = |cpu: &RecordedCpuid| {
        let rec1 = cpu.cpuid(1, 0);
        rec1.eax == live1.eax
            && rec1.ecx >> 31 == live1.ecx >> 31
            && cpu.cpuid(7, 0) == LiveCpuid.cpuid(7, 0)
    };
    let Some((name, cpu)) = hosts.iter().find(|(_, cpu)| same_host(cpu)) else {
        loud!(
            "SKIP this_build_host_is_recorded (live part): no *{BUILD_HOST}* dump is this CPU \
             (CPUID.1:EAX {:#x}); record it with `cargo run --example xstate-report -- --record`",
            live1.eax
        );
        return;
    };
    let recorded = Enumeration::from_cpuid(cpu).unwrap();
    assert_eq!(
        recorded, live,
        "{name} no longer matches this host: re-record it with xstate-report --record"
    );
    loud!(
        "{name}: matches the live CPU ({}, MXCSR_MASK {:#x})",
        summary(&recorded),
        recorded.mxcsr_mask()
    );
}

/// `xstate-report` says what a dump lacks: no vendor (leaf 0) and no recorded
/// MXCSR mask, in text and JSON; a complete recording says where its mask came from.
#[test]
fn report_says_when_a_dump_has_no_vendor_or_mask() {
    let run_path = |path: String, json: bool| {
        let mut argv = vec!["--cpuid".to_owned(), path];
        if json {
            argv.push("--json".to_owned());
        }
        report::run(argv).unwrap().unwrap()
    };
    let run = |file: &str, json: bool| {
        let path = layouts_dir().join(file).to_string_lossy().into_owned();
        run_path(path, json)
    };
    let bare = "amd-zen2-epyc-7742.txt";
    assert!(
        dumps()
            .iter()
            .any(|(n, c)| n == bare && Vendor::of(c).is_err())
    );
    let full = "amd-zen4-epyc-kvm-guest-this-build-host.txt";
    let cases: [(&str, [&str; 2], [&str; 2]); 2] = [
        (
            bare,
            ["vendor: NONE", "MXCSR_MASK: 0xffff (baseline"],
            ["\"vendor\": null", "\"mxcsr_mask_source\": \"baseline\""],
        ),
        (
            full,
            ["vendor: AuthenticAMD", "MXCSR_MASK: 0x2ffff (recorded"],
            [
                "\"mxcsr_mask\": \"0x2ffff\"",
                "\"mxcsr_mask_source\": \"recorded\"",
            ],
        ),
    ];
    for (file, text, json) in cases {
        let (t, j) = (run(file, false), run(file, true));
        for needle in text {
            assert!(t.contains(needle), "{file}: no `{needle}` in\n{t}");
        }
        for needle in json {
            assert!(j.contains(needle), "{file}: no `{needle}` in\n{j}");
        }
    }
    // Leaf 0 without a recorded mask (the silicon capture's dump): the
    // vendor's value, said so.
    let silicon = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/silicon/intel-xeon-amx-linux-6.18/cpuid.txt");
    let t = run_path(silicon.to_string_lossy().into_owned(), false);
    assert!(t.contains("vendor: GenuineIntel"), "{t}");
    assert!(t.contains("MXCSR_MASK: 0xffff (the vendor's"), "{t}");
}
