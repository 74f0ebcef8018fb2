//! Layout queries: the crate's precomputed [`Layout`] against a per-query loop
//! over the components (the straightforward way: walk XCOMP_BV from component 2
//! up, aligning and adding sizes, on every call).
//!
//! Pure computation, so the AMX mask (x87, SSE, AVX, AVX-512, AMX: 0x600e7) is
//! measured on the recorded Sapphire Rapids dump
//! (`layouts/intel-sapphire-rapids-xeon-w9-3475x.txt`), and the live CPU's
//! XCR0 as well.
//! - `layout_offset/{precomputed,loop}/{cpu}-{index}`: compacted offset of every
//!   feature of the mask;
//! - `layout_size/{precomputed,loop,enumeration}/{cpu}-k{n}`: compacted size for
//!   the mask's first `n` features (`Layout::size` of a layout built beforehand,
//!   the loop, and `Enumeration::compacted_size`, which sums on each call).
//!
//! Inputs go through `black_box`, so nothing is constant-folded. The mask and
//! compacted size each CPU's rows measured are written to the row files
//! `layout/cpu/{spr,live}` (see `common::Row`).

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Row, Settings};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use xstate::XFeatures;
use xstate::cpuid::{LiveCpuid, RecordedCpuid};
use xstate::enumerate::{Component, Enumeration};
use xstate::layout::Layout;

const SPR: &str = include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt");
/// x87, SSE, AVX, AVX-512, AMX.
const AMX_MASK: u64 = 0x600e7;
/// Legacy region plus XSAVE header: where the compacted extended region starts.
const EXTENDED_START: u32 = 576;

/// 0.3 s warm-up and 1 s of measurement (a quarter under
/// `XSTATE_BENCH_QUICK=1`): the queries take nanoseconds.
fn settings() -> Settings {
    Settings::of_run(Duration::from_millis(300), Duration::from_secs(1))
}

fn config() -> Criterion {
    settings().criterion()
}

/// Compacted offset of `index` for `xcomp_bv`, computed on every call (SDM vol. 1
/// 13.4.3 written as a loop over the lower components).
#[inline(never)]
fn loop_offset(comps: &[Component; 64], xcomp_bv: u64, index: u32) -> Option<u32> {
    if xcomp_bv >> index & 1 == 0 {
        return None;
    }
    if index < 2 {
        return Some(comps[index as usize].std_offset);
    }
    let mut off = EXTENDED_START;
    for j in 2..index {
        if xcomp_bv >> j & 1 != 0 {
            let c = &comps[j as usize];
            if c.align64 {
                off = off.next_multiple_of(64);
            }
            off += c.size;
        }
    }
    if comps[index as usize].align64 {
        off = off.next_multiple_of(64);
    }
    Some(off)
}

/// Compacted size for `xcomp_bv`, computed on every call (up to its highest
/// component).
#[inline(never)]
fn loop_size(comps: &[Component; 64], xcomp_bv: u64) -> u32 {
    let mut end = EXTENDED_START;
    for j in 2..(64 - xcomp_bv.leading_zeros()) {
        if xcomp_bv >> j & 1 != 0 {
            let c = &comps[j as usize];
            if c.align64 {
                end = end.next_multiple_of(64);
            }
            end += c.size;
        }
    }
    end
}

fn bench_cpu(c: &mut Criterion, cpu: &str, what: &str, e: &Enumeration, mask: XFeatures) {
    // What `{cpu}` measured on this machine, for the report.
    Row::new("layout", "cpu", cpu)
        .with("cpu", what)
        .mask(mask)
        .with("bytes", e.compacted_size(mask))
        .with("settings", settings().describe())
        .write();
    let l = Layout::compacted(e, mask).expect("layout");
    let comps = e.components();
    let mut g = c.benchmark_group("layout_offset");
    for i in mask.indices() {
        assert_eq!(loop_offset(comps, mask.bits(), i), l.offset_of(i));
        let p = format!("{cpu}-{i}");
        g.bench_function(BenchmarkId::new("precomputed", &p), |b| {
            b.iter(|| black_box(&l).offset_of(black_box(i)))
        });
        g.bench_function(BenchmarkId::new("loop", &p), |b| {
            b.iter(|| loop_offset(black_box(comps), black_box(mask.bits()), black_box(i)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("layout_size");
    let idx: Vec<u32> = mask.indices().collect();
    for n in 2..=idx.len() {
        let m = idx[..n].iter().fold(XFeatures::empty(), |m, &i| {
            m | XFeatures::from_bits_retain(1 << i)
        });
        let lm = Layout::compacted(e, m).expect("layout");
        assert_eq!(loop_size(comps, m.bits()), lm.size());
        assert_eq!(e.compacted_size(m), lm.size());
        let p = format!("{cpu}-k{n}");
        g.bench_function(BenchmarkId::new("precomputed", &p), |b| {
            b.iter(|| black_box(&lm).size())
        });
        g.bench_function(BenchmarkId::new("loop", &p), |b| {
            b.iter(|| loop_size(black_box(comps), black_box(m.bits())))
        });
        g.bench_function(BenchmarkId::new("enumeration", &p), |b| {
            b.iter(|| black_box(e).compacted_size(black_box(m)))
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let spr = Enumeration::from_cpuid(&RecordedCpuid::parse(SPR).expect("SPR dump"))
        .expect("SPR enumeration");
    let amx = XFeatures::from_bits_retain(AMX_MASK);
    assert!(spr.xcr0_supported().contains(amx));
    bench_cpu(c, "spr", "recorded Sapphire Rapids dump", &spr, amx);
    let live = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    // Every component this CPU enumerates for XCR0: the mask differs between
    // CPUs, and the row file and report name it.
    bench_cpu(
        c,
        "live",
        "this CPU, every XCR0-capable component it enumerates",
        &live,
        live.xcr0_supported(),
    );
}

criterion_group! {
    name = layout;
    config = config();
    targets = benches
}
criterion_main!(layout);
