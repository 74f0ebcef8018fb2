//! Error texts a kernel or VMM prints: every variant of the instruction- and
//! fpstate-level errors says something of its own, names the values it
//! carries, and wrapping errors give their cause through `source()`.

use std::error::Error;
use std::fmt::Display;

use xstate::error::BufferTooSmall;
use xstate::fpstate::FpstateError;
use xstate::insn::{CpuError, Fault};
use xstate::layout::LayoutError;

/// Each text is non-empty, no two are alike, and each names what `needles`
/// says it must (its carried values, in the form the text prints them).
fn distinct(cases: &[(&dyn Display, &[&str])]) {
    let texts: Vec<String> = cases.iter().map(|(e, _)| e.to_string()).collect();
    for (i, ((_, needles), t)) in cases.iter().zip(&texts).enumerate() {
        assert!(!t.trim().is_empty(), "case {i}: empty text");
        for n in *needles {
            assert!(t.contains(n), "case {i}: {t:?} does not name {n:?}");
        }
        for (j, u) in texts.iter().enumerate() {
            assert!(i == j || t != u, "cases {i} and {j} read alike: {t:?}");
        }
    }
}

#[test]
fn fault_texts() {
    distinct(&[
        (&Fault::Gp, &["#GP"]),
        (&Fault::Nm, &["#NM"]),
        (&Fault::Ud, &["#UD"]),
    ]);
}

#[test]
fn fpstate_error_texts_and_sources() {
    let layout = LayoutError::Unsupported { mask: 0x40000 };
    distinct(&[
        (
            &FpstateError::BufferTooSmall(BufferTooSmall {
                needed: 2696,
                got: 2432,
            }),
            &["2696", "2432"],
        ),
        (&FpstateError::Misaligned { misalignment: 16 }, &["16"]),
        (&FpstateError::NotPermitted { index: 18 }, &["18"]),
        (&FpstateError::NothingToGrow, &[]),
        (&FpstateError::NeedsSupervisor { mask: 0x1000 }, &["0x1000"]),
        (&FpstateError::Fault(Fault::Nm), &["Nm"]),
        (&FpstateError::Layout(layout), &["0x40000"]),
    ]);
    assert!(
        FpstateError::from(layout)
            .to_string()
            .contains(&layout.to_string()),
        "the layout error's own text"
    );
}

#[test]
fn layout_error_texts() {
    distinct(&[
        (&LayoutError::Unsupported { mask: 0x80000 }, &["0x80000"]),
        (
            &LayoutError::SupervisorInStandard { mask: 0x1800 },
            &["0x1800"],
        ),
    ]);
}

#[test]
fn cpu_error_texts_and_sources() {
    let cpuid = xstate::enumerate::Enumeration::from_cpuid(
        &xstate::cpuid::RecordedCpuid::parse(
            "0x0000000d 0x00: eax=0x00000001 ebx=0x00000240 ecx=0x00000240 edx=0x00000000",
        )
        .unwrap(),
    )
    .expect_err("x87 without SSE is refused");
    let wrapped = CpuError::from(cpuid);
    distinct(&[
        (&CpuError::XsaveNotEnabled, &["XSAVE"]),
        (&CpuError::NoXsaves, &["XSAVES"]),
        (&wrapped, &["0xD"]),
    ]);
    let source = wrapped.source().expect("a refused CPUID is the cause");
    assert_eq!(source.to_string(), cpuid.to_string());
    assert!(CpuError::NoXsaves.source().is_none());
}
