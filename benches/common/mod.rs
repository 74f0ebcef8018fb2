//! What the XSAVE benches share: criterion settings, the state images they
//! load or copy, the interleaved timing of the sides of a ratio, the row files
//! `examples/bench-report.rs` reads, loud SKIPs, the AMX permission request and
//! a vCPU with what KVM offers guests on this host. Included with `mod common;`
//! by each bench.
//!
//! Row files: every row a bench measures or skips is written to
//! `<criterion dir>/xstate-rows/<group>/<function>/<parameter>.txt` (`key =
//! value` lines): what the row measured on this machine (mask, bytes), the
//! settings, and for timed rows the per-sample times of each side. The
//! criterion dir is found as criterion finds it: `$CRITERION_HOME`, else
//! `$CARGO_TARGET_DIR/criterion`, else `target/criterion` (cargo runs benches
//! from the package root).

// Each bench uses a subset of these.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use std::{env, fs};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use xstate::XFeatures;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{
    BoxedArea, MXCSR_DEFAULT, MXCSR_OFFSET, Storage, XCOMP_BV_OFFSET, XSTATE_BV_OFFSET,
};
use xstate::layout::Layout;

/// The environment variable that selects criterion's shorter settings.
pub const QUICK_ENV: &str = "XSTATE_BENCH_QUICK";

/// Criterion's sampling settings for a run.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Samples per benchmark (for an interleaved row: pairs of batches).
    pub samples: usize,
    pub warm_up: Duration,
    pub measurement: Duration,
    /// Set by `XSTATE_BENCH_QUICK=1`.
    pub quick: bool,
}

impl Settings {
    /// The settings for this run: `full` unless `XSTATE_BENCH_QUICK=1`, which
    /// gives 15 samples and a quarter of the warm-up and measurement time.
    pub fn of_run(warm_up: Duration, measurement: Duration) -> Self {
        let quick = env::var(QUICK_ENV).is_ok_and(|v| v == "1");
        if quick {
            Self {
                samples: 15,
                warm_up: warm_up / 4,
                measurement: measurement / 4,
                quick,
            }
        } else {
            Self {
                samples: 30,
                warm_up,
                measurement,
                quick,
            }
        }
    }

    /// The default for the XSAVE benches: 0.5 s warm-up, 2 s of measurement.
    pub fn xsave() -> Self {
        Self::of_run(Duration::from_millis(500), Duration::from_secs(2))
    }

    pub fn criterion(self) -> Criterion {
        Criterion::default()
            .sample_size(self.samples)
            .warm_up_time(self.warm_up)
            .measurement_time(self.measurement)
    }

    /// One line for the row files and the report.
    pub fn describe(self) -> String {
        format!(
            "{} samples, {} ms warm-up, {} ms of measurement{}",
            self.samples,
            self.warm_up.as_millis(),
            self.measurement.as_millis(),
            if self.quick {
                format!(" ({QUICK_ENV}=1)")
            } else {
                String::new()
            }
        )
    }
}

/// Criterion with the XSAVE benches' settings.
pub fn config() -> Criterion {
    Settings::xsave().criterion()
}

pub fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

pub fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// XSTATE_BV of an XSAVE area.
pub fn xstate_bv(b: &[u8]) -> u64 {
    get_u64(b, XSTATE_BV_OFFSET)
}

/// An image of `layout` (either form) with every component of its mask in a
/// non-init state, XSTATE_BV = `xstate_bv` and XCOMP_BV the layout's.
pub fn dirty_image(layout: &Layout, xstate_bv: XFeatures) -> BoxedArea {
    let mut a = BoxedArea::zeroed(layout.size() as usize);
    let b = a.bytes_mut();
    // x87: FCW with 53-bit precision (not the init 0x37f), one valid register
    // (abridged FTW bit 0, TOP = 0) holding 1.0.
    put(b, 0, &0x027fu16.to_le_bytes());
    b[4] = 0x01;
    put(b, 32, &0x8000_0000_0000_0000u64.to_le_bytes());
    put(b, 40, &0x3fffu16.to_le_bytes());
    put(b, MXCSR_OFFSET, &MXCSR_DEFAULT.to_le_bytes());
    for (k, x) in b[160..416].iter_mut().enumerate() {
        *x = (k as u8).wrapping_mul(13) | 1;
    }
    for i in layout.mask().indices().filter(|&i| i >= 2) {
        let r = layout.range_of(i).expect("component in mask");
        if i == 17 {
            // TILECFG must be a valid palette-1 configuration or XRSTOR faults:
            // eight tiles of 16 rows x 64 bytes.
            let c = &mut b[r];
            c[0] = 1;
            for t in 0..8 {
                put(c, 16 + 2 * t, &64u16.to_le_bytes());
                c[48 + t] = 16;
            }
        } else if i == 9 {
            // PKRU: access and write allowed for key 0 (bits 0 and 1 clear),
            // denied for the others; bytes 4..8 reserved (Linux exports 0).
            put(&mut b[r], 0, &0xffff_fffcu32.to_le_bytes());
        } else {
            for (k, x) in b[r].iter_mut().enumerate() {
                *x = (k as u8).wrapping_mul(37).wrapping_add(i as u8) | 1;
            }
        }
    }
    put(b, XSTATE_BV_OFFSET, &xstate_bv.bits().to_le_bytes());
    put(b, XCOMP_BV_OFFSET, &layout.xcomp_bv().to_le_bytes());
    a
}

/// A standard-form image with XSTATE_BV = 0: XRSTOR of it inits every component
/// of the RFBM (MXCSR comes from the image whenever SSE or AVX is in the RFBM).
pub fn init_image(e: &Enumeration) -> BoxedArea {
    let mut a = BoxedArea::zeroed(e.standard_max_size() as usize);
    put(a.bytes_mut(), MXCSR_OFFSET, &MXCSR_DEFAULT.to_le_bytes());
    a
}

/// The names of the components of `mask`, for row descriptions.
pub fn names(mask: XFeatures) -> String {
    mask.indices()
        .map(xstate::feature::name_of)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a row needs that this machine lacks: the components of `need` missing
/// from `have`, named (`None`: nothing missing).
pub fn missing(need: XFeatures, have: XFeatures, what: &str) -> Option<String> {
    let lack = need & !have;
    (!lack.is_empty()).then(|| {
        format!(
            "{} ({:#x}) not in {what} {:#x}",
            names(lack),
            lack.bits(),
            have.bits()
        )
    })
}

// ---------------------------------------------------------------------------
// Row files
// ---------------------------------------------------------------------------

/// Where criterion writes its results (as criterion decides it).
pub fn criterion_dir() -> PathBuf {
    if let Some(h) = env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("criterion")
}

/// A row of a bench table: its id (`group/function/parameter`) and what it
/// measured, as `key = value` pairs.
pub struct Row {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl Row {
    pub fn new(group: &str, function: &str, param: &str) -> Self {
        Self {
            id: format!("{group}/{function}/{param}"),
            fields: Vec::new(),
        }
    }

    /// Add a field (values are single lines).
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        let v = value.to_string().replace('\n', " ");
        self.fields.push((key.to_string(), v));
        self
    }

    pub fn mask(self, mask: XFeatures) -> Self {
        let n = names(mask);
        self.with("mask", format!("{:#x}", mask.bits()))
            .with("components", n)
    }

    /// Write the row file (a failure to write is reported, not fatal).
    pub fn write(&self) {
        let path = criterion_dir()
            .join("xstate-rows")
            .join(format!("{}.txt", self.id));
        let mut s = format!(
            "# written by the xstate benches, read by examples/bench-report.rs\nid = {}\n",
            self.id
        );
        for (k, v) in &self.fields {
            let _ = writeln!(s, "{k} = {v}");
        }
        let r = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&path, s));
        if let Err(e) = r {
            eprintln!("WARN bench: cannot write {}: {e}", path.display());
        }
    }

    /// Print a loud SKIP naming the reason and record the row as skipped.
    pub fn skip(self, why: &str) {
        eprintln!(
            "\n******** SKIP bench {}: {why}: not measured on this machine ********\n",
            self.id
        );
        self.with("skip", why).write();
    }
}

// ---------------------------------------------------------------------------
// Interleaved timing
// ---------------------------------------------------------------------------

/// How many of a side's batches held the state they were meant to run in
/// (checked outside the timing).
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    pub batches: u64,
    pub lost: u64,
}

impl Held {
    pub fn one(held: bool) -> Self {
        Self {
            batches: 1,
            lost: u64::from(!held),
        }
    }

    pub fn add(&mut self, o: Self) {
        self.batches += o.batches;
        self.lost += o.lost;
    }
}

/// One side of an interleaved row: its name, a routine that runs a batch of
/// `n` iterations and returns the time they took and whether the batch held
/// its state, and its batch length.
pub struct Side<'a> {
    pub name: &'static str,
    pub run: Box<dyn FnMut(u64) -> (Duration, Held) + 'a>,
    /// Whether `run` checks its state.
    pub checks: bool,
    /// Iterations per batch.
    pub batch: u64,
}

/// Iterations per batch unless a side says otherwise: tens of microseconds for
/// the XSAVE pairs and the copies, so the sides alternate many times within
/// one of criterion's samples.
pub const BATCH: u64 = 256;

impl<'a> Side<'a> {
    /// A side with nothing to check.
    pub fn new(name: &'static str, mut run: impl FnMut(u64) -> Duration + 'a) -> Self {
        Self {
            checks: false,
            ..Self::checked(name, move |n| (run(n), Held::default()))
        }
    }

    /// A side whose routine also checks its batch's state.
    pub fn checked(name: &'static str, run: impl FnMut(u64) -> (Duration, Held) + 'a) -> Self {
        Self {
            name,
            run: Box::new(run),
            checks: true,
            batch: BATCH,
        }
    }

    /// Another batch length (a slow side: fewer iterations per batch).
    pub fn batch(self, batch: u64) -> Self {
        Self {
            batch: batch.max(1),
            ..self
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Time the sides of a row in alternation and record them in the row file.
///
/// Criterion drives the sampling (warm-up, then `samples` samples of growing
/// iteration counts `n`). A sample of `n` is `ceil(n / batch of the first
/// side)` rounds; in each round every side runs one batch (tens of
/// microseconds), the side that goes first rotating from round to round
/// (`AB`, `BA`, ... for two sides). So the sides are timed microseconds apart
/// throughout the sample, and whatever else the machine does falls on all of
/// them alike. A side's time in a sample is the median over its batches of the
/// time of one iteration (a batch another process preempted is one outlier,
/// not a shift of the whole sample); a ratio of two sides is taken per sample
/// and the report gives its spread over the samples. Criterion is given the
/// timed total of all batches; its own estimate of that is not used by the
/// report.
///
/// The row file gets `sides`, `settings`, `loadavg` (the 1-minute load
/// average when the row finished), `batch.<side>`, `iters` (criterion's `n`
/// per sample) and, per side, its time of one iteration in every sample
/// (`ns.<side>`) and the batches that did not hold their state (`lost.<side>
/// = L of B batches`).
pub fn interleaved(g: &mut BenchmarkGroup<'_, WallTime>, row: Row, sides: &mut [Side<'_>]) {
    let settings = Settings::xsave();
    interleaved_with(g, row, sides, settings);
}

/// [`interleaved`] for a group whose criterion settings are `settings`.
pub fn interleaved_with(
    g: &mut BenchmarkGroup<'_, WallTime>,
    row: Row,
    sides: &mut [Side<'_>],
    settings: Settings,
) {
    if let Some(row) = interleaved_row(g, row, sides, settings) {
        row.write();
    }
}

/// [`interleaved_with`], returning the row with its measured fields instead of
/// writing it, so a bench can add what it counted while the sides ran (e.g.
/// the lifecycle layer's elided restores) and then write it. `None` where
/// [`interleaved_with`] leaves the row file alone (fewer calls than samples).
pub fn interleaved_row(
    g: &mut BenchmarkGroup<'_, WallTime>,
    row: Row,
    sides: &mut [Side<'_>],
    settings: Settings,
) -> Option<Row> {
    let mut parts = row.id.splitn(3, '/').skip(1);
    let (Some(function), Some(param)) = (parts.next(), parts.next()) else {
        panic!("row id {} is not group/function/parameter", row.id);
    };
    let k = sides.len();
    // Per call: criterion's `n`, then per side the median time of one
    // iteration and how many of its batches held their state.
    let mut calls: Vec<(u64, Vec<(f64, Held)>)> = Vec::new();
    g.bench_function(BenchmarkId::new(function, param), |b| {
        b.iter_custom(|n| {
            let rounds = n.div_ceil(sides[0].batch).max(1) as usize;
            let mut times = vec![Vec::with_capacity(rounds); k];
            let mut held = vec![Held::default(); k];
            let mut total = Duration::ZERO;
            for r in 0..rounds {
                for j in 0..k {
                    let s = (r + j) % k;
                    let c = sides[s].batch;
                    let (d, h) = (sides[s].run)(c);
                    times[s].push(d.as_nanos() as f64 / c as f64);
                    held[s].add(h);
                    total += d;
                }
            }
            let per_side = times
                .iter_mut()
                .zip(held)
                .map(|(t, h)| (median(t), h))
                .collect();
            calls.push((n, per_side));
            total
        })
    });
    // Criterion's last `samples` calls are its measurement (the ones before are
    // its warm-up). A run with fewer (a filter that skipped the row, `--test`)
    // leaves the row file alone.
    if calls.len() < settings.samples {
        return None;
    }
    let m = &calls[calls.len() - settings.samples..];
    let iters: Vec<String> = m.iter().map(|c| c.0.to_string()).collect();
    // The machine is shared: what else ran while the row was measured.
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1 = load.split_whitespace().next().unwrap_or("?");
    let mut row = row
        .with("settings", settings.describe())
        .with("loadavg", load1)
        .with(
            "sides",
            sides.iter().map(|s| s.name).collect::<Vec<_>>().join(" "),
        )
        .with("iters", iters.join(" "));
    for (i, s) in sides.iter().enumerate() {
        let t: Vec<String> = m.iter().map(|c| format!("{:.3}", c.1[i].0)).collect();
        row = row
            .with(&format!("batch.{}", s.name), s.batch)
            .with(&format!("ns.{}", s.name), t.join(" "));
        if s.checks {
            let mut h = Held::default();
            for c in m {
                h.add(c.1[i].1);
            }
            row = row.with(
                &format!("lost.{}", s.name),
                format!("{} of {} batches", h.lost, h.batches),
            );
        }
    }
    Some(row)
}

// ---------------------------------------------------------------------------
// Permissions and KVM
// ---------------------------------------------------------------------------

/// `arch_prctl` request for permission to use a dynamic component (Linux uapi).
pub const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
/// The same for the guests this process will create.
pub const ARCH_REQ_XCOMP_GUEST_PERM: libc::c_ulong = 0x1025;

/// Ask Linux for permission to use dynamic component `index` in this process
/// (`guest`: in its KVM guests). The reason on failure.
pub fn request_perm(index: u32, guest: bool) -> Result<(), String> {
    let code = if guest {
        ARCH_REQ_XCOMP_GUEST_PERM
    } else {
        ARCH_REQ_XCOMP_PERM
    };
    // SAFETY: arch_prctl with these codes takes an integer and touches no
    // memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, code, libc::c_ulong::from(index)) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "arch_prctl({code:#x}, {index}) failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Make every dynamic component of `mask` usable in this process (AMX
/// TILEDATA behind XFD until permitted); the reason on failure.
pub fn permit_dynamic(mask: XFeatures) -> Result<(), String> {
    for i in (mask & XFeatures::DYNAMIC).indices() {
        request_perm(i, false)?;
    }
    Ok(())
}

/// `struct kvm_xsave` without its flexible tail.
pub const KVM_REGION: usize = 4096;

/// A vCPU with what KVM offers guests on this host: its CPUID is
/// `KVM_GET_SUPPORTED_CPUID` (asked after guest permission for every dynamic
/// component of the host's XCR0, so it reports everything KVM supports), its
/// XCR0 the guest mask that CPUID reads back with, and its XSAVE buffer
/// `max(4096, KVM_CAP_XSAVE2)` bytes, as in `tests/kvm_uabi.rs`.
pub struct KvmGuest {
    _kvm: kvm_ioctls::Kvm,
    _vm: kvm_ioctls::VmFd,
    vcpu: kvm_ioctls::VcpuFd,
    xs: kvm_bindings::Xsave,
    /// What KVM supports for guests (leaf 0xD of KVM_GET_SUPPORTED_CPUID).
    pub supported: XFeatures,
    /// The guest's XCR0: what its CPUID allows, read back from the vCPU.
    pub guest_xcr0: XFeatures,
    /// The uabi size: bytes KVM_GET_XSAVE2 writes and KVM_SET_XSAVE reads.
    pub size: usize,
}

impl KvmGuest {
    /// Open `/dev/kvm` and set up the vCPU; `Err` = why not (for a SKIP).
    /// Call before any other vCPU of this process exists (guest permission
    /// is locked by the first).
    pub fn open() -> Result<Self, String> {
        use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_xcrs};
        use kvm_ioctls::{Cap, Kvm};
        let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
        let host = xstate::insn::read_xcr0().ok_or("OSXSAVE is not enabled")?;
        for i in (host & XFeatures::DYNAMIC).indices() {
            request_perm(i, true)?;
        }
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        let leaf = |c: &kvm_bindings::CpuId| {
            c.as_slice()
                .iter()
                .find(|x| x.function == 0xd && x.index == 0)
                .map(|x| u64::from(x.edx) << 32 | u64::from(x.eax))
        };
        let supported = leaf(&cpuid).ok_or("KVM_GET_SUPPORTED_CPUID has no leaf 0xD")?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
        // Some KVMs (this machine's nested one) replace leaf 0xD with their
        // own: what the vCPU holds is what counts.
        let back = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("KVM_GET_CPUID2: {e}"))?;
        let guest_xcr0 = leaf(&back).unwrap_or(0) & supported;
        let mut x = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        x.xcrs[0].xcr = 0;
        x.xcrs[0].value = guest_xcr0;
        vcpu.set_xcrs(&x)
            .map_err(|e| format!("KVM_SET_XCRS: {e}"))?;
        let size = (vm.check_extension_int(Cap::Xsave2).max(0) as usize).max(KVM_REGION);
        let xs = kvm_bindings::Xsave::new((size - KVM_REGION).div_ceil(4))
            .map_err(|e| format!("kvm_xsave of {size} bytes: {e:?}"))?;
        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            vcpu,
            xs,
            supported: XFeatures::from_bits_retain(supported),
            guest_xcr0: XFeatures::from_bits_retain(guest_xcr0),
            size,
        })
    }

    /// KVM_SET_XSAVE of `state` (standard form, at most `size` bytes; the
    /// rest of KVM's buffer zero).
    pub fn set(&mut self, state: &[u8]) -> Result<(), String> {
        if state.len() > self.size {
            return Err(format!(
                "{} bytes of state exceed KVM's {}",
                state.len(),
                self.size
            ));
        }
        let mut bytes = vec![0u8; self.size];
        bytes[..state.len()].copy_from_slice(state);
        let (head, tail) = bytes.split_at(KVM_REGION);
        // SAFETY: the region is plain data; the length field of the flexible
        // array is left as `Xsave::new` set it.
        let region = unsafe { &mut self.xs.as_mut_fam_struct().xsave.region };
        for (w, c) in region.iter_mut().zip(head.chunks_exact(4)) {
            *w = u32::from_le_bytes(c.try_into().expect("4 bytes"));
        }
        for (w, c) in self.xs.as_mut_slice().iter_mut().zip(tail.chunks(4)) {
            let mut q = [0u8; 4];
            q[..c.len()].copy_from_slice(c);
            *w = u32::from_le_bytes(q);
        }
        // SAFETY: `xs` was allocated for `size` = KVM_CAP_XSAVE2 bytes, all
        // KVM reads.
        unsafe { self.vcpu.set_xsave2(&self.xs) }.map_err(|e| format!("KVM_SET_XSAVE: {e}"))
    }

    /// KVM_GET_XSAVE2 then KVM_SET_XSAVE of what it returned, `n` times.
    pub fn round_trips(&mut self, n: u64) -> Duration {
        let start = std::time::Instant::now();
        for _ in 0..n {
            // SAFETY: `xs` was allocated for KVM_CAP_XSAVE2 bytes, all
            // KVM_GET_XSAVE2 writes.
            unsafe { self.vcpu.get_xsave2(&mut self.xs) }.expect("KVM_GET_XSAVE2");
            // SAFETY: as above, for KVM_SET_XSAVE's reads.
            unsafe { self.vcpu.set_xsave2(&self.xs) }.expect("KVM_SET_XSAVE");
        }
        start.elapsed()
    }
}
