//! User-ABI copies: `uabi::export` and `uabi::import` of a fully dirty state
//! against `memcpy` of the same number of bytes (the standard-form size: the
//! physical limit of any copy), and our KVM-format export + import against
//! Linux's own path through KVM (KVM_GET_XSAVE2 + KVM_SET_XSAVE) where
//! `/dev/kvm` exists.
//!
//! Rows `uabi/copy/{state}`, each named by the components it copies (the same
//! on every CPU; a CPU that lacks them prints a loud SKIP naming what is
//! missing):
//! - `avx-live`: this CPU, x87|SSE|AVX (0x7): a state whose compacted and
//!   standard forms coincide on every CPU (AVX sits at 576 in both);
//! - `avx512-live`: this CPU, x87|SSE|AVX|AVX-512 (0xe7);
//! - `amx-live`: this CPU, 0xe7 + AMX TILECFG and TILEDATA (0x600e7), TILEDATA
//!   allocated (pure memory work: no AMX instruction runs, so no permission);
//! - `amx-spr`: the recorded Sapphire Rapids dump with Linux's user features
//!   (0x602e7, PKRU included), TILEDATA allocated: the AMX copy on any machine;
//! - `xcr0-live`: every user component of this CPU's XCR0 (TILEDATA
//!   allocated), where that is neither 0xe7 nor 0x600e7 (e.g. with PKRU).
//!
//! Each row times its sides in alternation (see `common::interleaved`), so
//! the ratios memcpy / export and memcpy / import come from batches
//! microseconds apart: `memcpy` (`copy_from_slice` of the standard size),
//! `export` (compacted fpstate -> standard user buffer), `import` (standard
//! user buffer -> fpstate, every check included), `runs-out` and `runs-in`
//! (the stretches contiguous in both forms, worked out here from the public
//! layouts, copied one call each with no handle, plan or check: fpstate ->
//! user buffer with the gaps zeroed, and user buffer -> a kernel-size buffer
//! of the bench's own, as the fpstate's area is not writable from outside the
//! crate), `checks` (`uabi::check_import`: what import checks, nothing
//! written) and `memcpy-largest` (the largest component alone, from its
//! compacted offset in the fpstate to its standard offset: the one copy
//! export cannot split). So import - runs-in - checks and export - runs-out
//! are the rest of the crate's per-call work.
//!
//! Row `uabi/kvm/guest`: a vCPU with what KVM offers guests on this host
//! (`common::KvmGuest`: KVM_GET_SUPPORTED_CPUID after guest permission, the
//! guest XCR0 read back from the vCPU, uabi size max(4096, KVM_CAP_XSAVE2)),
//! holding every component of the guest XCR0 dirty. Sides: `kvm`
//! (KVM_GET_XSAVE2 + KVM_SET_XSAVE, two ioctls) and `ours` (our [`export`]
//! with KVM's mask, the guest XCR0 plus x87 and SSE, into a uabi-size buffer,
//! then [`import_abi`] with `UserAbi::Kvm`, on a guest fpstate of this CPU).

mod common;

use std::hint::black_box;
use std::ops::Range;
use std::time::Instant;

use common::{KvmGuest, Row, Side, config, dirty_image, interleaved, missing};
use criterion::{Criterion, criterion_group, criterion_main};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{LiveCpuid, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, Owner, Storage};
use xstate::insn;
use xstate::layout::Layout;
use xstate::uabi::{UserAbi, check_import, export, import, import_abi};

const SPR: &str = include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt");
/// x87 and SSE: KVM always exports them, whatever the guest's CPUID says.
const FPSSE: XFeatures = XFeatures::LEGACY;
const AVX_ROW: XFeatures = XFeatures::LEGACY.union(XFeatures::AVX);
const AVX512_ROW: XFeatures = XFeatures::LEGACY
    .union(XFeatures::AVX)
    .union(XFeatures::AVX512);
const AMX_ROW: XFeatures = AVX512_ROW.union(XFeatures::XTILE);
/// KVM round trips per batch: about 10 us each (two ioctls), so a batch is
/// tens of microseconds like the others.
const KVM_BATCH: u64 = 4;

/// A page.
const PAGE: usize = 4096;

/// `len` bytes starting on a page boundary. The copies' speed depends on
/// where source and destination sit relative to each other modulo 4 KiB (a
/// load that matches a pending store's low 12 address bits waits for it: 4K
/// aliasing), so every buffer of a row starts on a page: the same relative
/// placement from run to run, where the heap's placement moved it (and
/// export and import by up to 8 ns on amx-spr) with every change to the
/// process's allocations.
struct Paged {
    area: BoxedArea,
    at: usize,
    len: usize,
}

impl Paged {
    fn zeroed(len: usize) -> Self {
        let area = BoxedArea::zeroed(len + PAGE);
        let at = area.bytes().as_ptr().align_offset(PAGE);
        Self { area, at, len }
    }
}

impl Storage for Paged {
    fn bytes(&self) -> &[u8] {
        &self.area.bytes()[self.at..self.at + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.area.bytes_mut()[self.at..self.at + self.len]
    }
}

/// One state to copy: enumeration, configs, a host fpstate holding it.
struct Case {
    cfg: Configs,
    fp: Fpstate<Paged>,
    user: XFeatures,
    /// The user buffer, page-aligned like the fpstate (so memcpy and our
    /// copies see the same alignment).
    buf: Paged,
    out: Paged,
}

impl Case {
    fn new(e: Enumeration, p: Policy, owner: Owner, mxcsr_mask: Option<u32>) -> Self {
        let e = match mxcsr_mask {
            Some(m) => e.with_mxcsr_mask(m).expect("a real CPU's MXCSR_MASK"),
            None => e,
        };
        let cfg = Configs::new(&e, &p).expect("configs");
        let size = match owner {
            Owner::Host => cfg.kernel().default_size,
            _ => cfg.guest().default_size,
        };
        let mut fp = Fpstate::new_in(&cfg, owner, Paged::zeroed(size as usize)).expect("fpstate");
        let user = fp.info().user_features;
        // Every user component in a non-init state (valid for import: MXCSR
        // default, PKRU key 0 usable, header zero but XSTATE_BV).
        let std = Layout::standard(&e, user).expect("standard layout");
        let image = dirty_image(&std, user);
        let mut buf = Paged::zeroed(image.bytes().len());
        buf.bytes_mut().copy_from_slice(image.bytes());
        assert_eq!(buf.bytes().len(), fp.info().user_size as usize);
        let got = import(&cfg, &mut fp, buf.bytes()).expect("import of the dirty buffer");
        assert_eq!(got, user);
        // From here on the buffer is what export writes (MXCSR_MASK, software
        // bytes included), so import and export move the same bytes.
        export(&cfg, &fp, user, buf.bytes_mut()).expect("export");
        let out = Paged::zeroed(buf.bytes().len());
        Self {
            cfg,
            fp,
            user,
            buf,
            out,
        }
    }

    /// The fpstate holding exactly `mask` of this CPU's components.
    fn exactly(e: Enumeration, mask: XFeatures, mxcsr_mask: Option<u32>) -> Self {
        let p = Policy {
            enabled: mask,
            dynamic: XFeatures::empty(),
            independent: XFeatures::empty(),
            guest_only: XFeatures::empty(),
        };
        Self::new(e, p, Owner::Host, mxcsr_mask)
    }

    /// The stretches contiguous in both the fpstate and the standard form
    /// (kernel start, standard start, length), from the legacy region and
    /// header on, worked out here from the layouts: the fewest copies any
    /// export or import of this state can make.
    fn runs(&self) -> Vec<(usize, usize, usize)> {
        let e = self.cfg.enumeration();
        let kernel = Layout::compacted(e, self.fp.info().features).expect("compacted layout");
        let mut runs = vec![(0, 0, 576)];
        for i in self.user.indices().filter(|&i| i >= 2) {
            let k = kernel.offset_of(i).expect("component in the fpstate") as usize;
            let c = e.components()[i as usize];
            let (s, len) = (c.std_offset as usize, c.size as usize);
            let last = runs.last_mut().expect("the legacy run");
            if last.0 + last.2 == k && last.1 + last.2 == s {
                last.2 += len;
            } else {
                runs.push((k, s, len));
            }
        }
        runs
    }

    /// The largest extended component: its index, compacted range in the
    /// fpstate and standard range in the user buffer.
    fn largest(&self) -> (u32, Range<usize>, Range<usize>) {
        let e = self.cfg.enumeration();
        let kernel = Layout::compacted(e, self.fp.info().features).expect("compacted layout");
        let (i, c) = self
            .user
            .indices()
            .filter(|&i| i >= 2)
            .map(|i| (i, e.components()[i as usize]))
            .max_by_key(|(_, c)| c.size)
            .expect("every case has an extended user component");
        let src = kernel.range_of(i).expect("component in the fpstate");
        (
            i,
            src,
            c.std_offset as usize..(c.std_offset + c.size) as usize,
        )
    }
}

fn bench_copy(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    row: Row,
    case: &mut Case,
) {
    let (li, src, dst) = case.largest();
    let runs = case.runs();
    let Case {
        cfg,
        fp,
        user,
        buf,
        out,
    } = case;
    let user = *user;
    // Checked outside the timing: importing the buffer gives its features,
    // and exporting the fpstate gives the buffer back.
    let got = import(cfg, fp, buf.bytes()).expect("import of the buffer");
    assert_eq!(got, user, "import of the buffer");
    export(cfg, fp, user, out.bytes_mut()).expect("export");
    assert!(
        out.bytes() == buf.bytes(),
        "export gives back what was imported"
    );
    // Whether each user component sits at its standard offset in the
    // fpstate (`coincide`: export and import are one run), or not (`differ`:
    // e.g. a compacted 0xe7 against the standard form's MPX hole).
    let e = cfg.enumeration();
    let kernel = Layout::compacted(e, fp.info().features).expect("compacted layout");
    let coincide = user
        .indices()
        .filter(|&i| i >= 2)
        .all(|i| kernel.offset_of(i) == Some(e.components()[i as usize].std_offset));
    let row = row
        .mask(user)
        .with("forms", if coincide { "coincide" } else { "differ" })
        .with("bytes", buf.bytes().len())
        .with("largest", xstate::feature::name_of(li))
        .with("largest.bytes", dst.len())
        .with("runs", runs.len());
    // The runs copied into a kernel-size buffer of its own (the fpstate's
    // area cannot be written from outside the crate): import's copies alone.
    let kernel = std::cell::RefCell::new(Paged::zeroed(fp.area().len()));
    kernel.borrow_mut().bytes_mut().copy_from_slice(fp.area());
    let runs = &runs;
    // The sides share the fpstate and the buffers; each borrows them only
    // while it runs.
    let cell = std::cell::RefCell::new((fp, buf, out));
    let cfg = &*cfg;
    let mut sides = [
        Side::new("memcpy", |n| {
            let mut c = cell.borrow_mut();
            let (_, buf, out) = &mut *c;
            let t = Instant::now();
            for _ in 0..n {
                black_box(out.bytes_mut()).copy_from_slice(black_box(buf.bytes()));
            }
            t.elapsed()
        }),
        Side::new("export", |n| {
            let mut c = cell.borrow_mut();
            let (fp, _, out) = &mut *c;
            let t = Instant::now();
            for _ in 0..n {
                export(cfg, black_box(&**fp), user, black_box(out.bytes_mut())).expect("export");
            }
            t.elapsed()
        }),
        Side::new("import", |n| {
            let mut c = cell.borrow_mut();
            let (fp, buf, _) = &mut *c;
            let t = Instant::now();
            for _ in 0..n {
                import(cfg, black_box(&mut **fp), black_box(buf.bytes())).expect("import");
            }
            t.elapsed()
        }),
        Side::new("runs-out", |n| {
            let mut c = cell.borrow_mut();
            let (fp, _, out) = &mut *c;
            let t = Instant::now();
            for _ in 0..n {
                let (src, out) = (black_box(fp.area()), black_box(out.bytes_mut()));
                let mut end = 0;
                for &(k, s, len) in runs {
                    if end < s {
                        out[end..s].fill(0);
                    }
                    out[s..s + len].copy_from_slice(&src[k..k + len]);
                    end = s + len;
                }
            }
            t.elapsed()
        }),
        Side::new("runs-in", |n| {
            let c = cell.borrow();
            let mut kernel = kernel.borrow_mut();
            let (_, buf, _) = &*c;
            let t = Instant::now();
            for _ in 0..n {
                let (dst, buf) = (black_box(kernel.bytes_mut()), black_box(buf.bytes()));
                for &(k, s, len) in runs {
                    dst[k..k + len].copy_from_slice(&buf[s..s + len]);
                }
            }
            t.elapsed()
        }),
        Side::new("checks", |n| {
            let c = cell.borrow();
            let (fp, buf, _) = &*c;
            let t = Instant::now();
            for _ in 0..n {
                check_import(cfg, black_box(&**fp), black_box(buf.bytes())).expect("checks");
            }
            t.elapsed()
        }),
        Side::new("memcpy-largest", |n| {
            let mut c = cell.borrow_mut();
            let (fp, _, out) = &mut *c;
            let t = Instant::now();
            for _ in 0..n {
                black_box(&mut out.bytes_mut()[dst.clone()])
                    .copy_from_slice(black_box(&fp.area()[src.clone()]));
            }
            t.elapsed()
        }),
    ];
    interleaved(g, row, &mut sides);
}

fn bench_kvm(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    kvm: Result<KvmGuest, String>,
) {
    let row = Row::new("uabi", "kvm", "guest");
    let mut v = match kvm {
        Ok(v) => v,
        Err(why) => return row.skip(&why),
    };
    let live = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    // A guest fpstate of this CPU with every dynamic component allocated, as
    // KVM's is for a guest whose CPUID enables them.
    let p = Policy {
        dynamic: XFeatures::empty(),
        ..Policy::linux(&live)
    };
    let cfg = { Configs::new(&live, &p).expect("configs") };
    let mut fp = Fpstate::new_boxed(&cfg, Owner::Guest).expect("guest fpstate");
    let guest = v.guest_xcr0 | FPSSE;
    if let Some(why) = missing(
        guest,
        fp.info().user_features,
        "our guest fpstate's user features",
    ) {
        return row.skip(&why);
    }
    let std = Layout::standard(&live, guest).expect("standard layout");
    let img = dirty_image(&std, guest);
    let mut state = vec![0u8; v.size];
    state[..img.bytes().len()].copy_from_slice(img.bytes());
    if let Err(why) = v.set(&state) {
        return row.skip(&format!("KVM refused the dirty guest state: {why}"));
    }
    let abi = UserAbi::Kvm {
        supported: v.supported,
        uabi_size: v.size,
    };
    import_abi(&cfg, &mut fp, &state, abi).expect("our import of the guest state");
    let mut out = vec![0u8; v.size];
    let row = row
        .mask(guest)
        .with("supported", format!("{:#x}", v.supported.bits()))
        .with("guest_xcr0", format!("{:#x}", v.guest_xcr0.bits()))
        .with("bytes", v.size)
        .with("state.bytes", std.size());
    let (size, supported) = (v.size, v.supported);
    let mut sides = [
        Side::new("kvm", |n| v.round_trips(n)).batch(KVM_BATCH),
        Side::new("ours", |n| {
            let t = Instant::now();
            for _ in 0..n {
                export(
                    black_box(&cfg),
                    black_box(&fp),
                    guest,
                    black_box(&mut out[..]),
                )
                .expect("export");
                let abi = UserAbi::Kvm {
                    supported,
                    uabi_size: size,
                };
                import_abi(
                    black_box(&cfg),
                    black_box(&mut fp),
                    black_box(&out[..]),
                    abi,
                )
                .expect("import_abi");
            }
            t.elapsed()
        }),
    ];
    interleaved(g, row, &mut sides);
}

fn benches(c: &mut Criterion) {
    // KVM first: guest permission must be asked before any vCPU exists.
    let kvm = KvmGuest::open();
    let xcr0 = insn::read_xcr0().expect("OSXSAVE is not enabled");
    let live = || Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    let hw_mask = Some(insn::read_mxcsr_mask());
    let spr = Enumeration::from_cpuid(&RecordedCpuid::parse(SPR).expect("SPR dump"))
        .expect("SPR enumeration");
    let mut g = c.benchmark_group("uabi");
    let mut rows: Vec<(&str, XFeatures)> = vec![
        ("avx-live", AVX_ROW),
        ("avx512-live", AVX512_ROW),
        ("amx-live", AMX_ROW),
    ];
    let all = live();
    let xcr0_user = Policy::linux(&all).enabled & xcr0 & XFeatures::USER;
    if xcr0_user != AVX512_ROW && xcr0_user != AMX_ROW {
        rows.push(("xcr0-live", xcr0_user));
    }
    for (name, mask) in rows {
        let row = Row::new("uabi", "copy", name).with("cpu", "this CPU");
        if let Some(why) = missing(mask, xcr0, "XCR0") {
            row.skip(&why);
            continue;
        }
        let mut case = Case::exactly(live(), mask, hw_mask);
        bench_copy(&mut g, row, &mut case);
    }
    // AMX TILEDATA allocated from the start (as after a first-use XFD fault).
    let spr_policy = Policy {
        dynamic: XFeatures::empty(),
        ..Policy::linux(&spr)
    };
    let mut case = Case::new(spr, spr_policy, Owner::Host, None);
    let row = Row::new("uabi", "copy", "amx-spr").with("cpu", "recorded Sapphire Rapids dump");
    bench_copy(&mut g, row, &mut case);
    bench_kvm(&mut g, kvm);
    g.finish();
}

criterion_group! {
    name = uabi;
    config = config();
    targets = benches
}
criterion_main!(uabi);
