//! User-ABI copies: `uabi::export` and `uabi::import` of a fully dirty state
//! against `memcpy` of the same number of bytes (the standard-form size: the
//! physical limit of any copy), and against Linux's own path through KVM
//! (KVM_GET_XSAVE2 + KVM_SET_XSAVE) where `/dev/kvm` exists.
//!
//! Export and import are pure memory work, so the AMX state is measured on the
//! recorded Sapphire Rapids dump (`amx-spr`: user features 0x602e7, AMX TILEDATA
//! allocated) and the AVX-512 state on the live CPU (`avx512-live`).
//! - `uabi/export/{state}`: compacted fpstate -> standard user buffer;
//! - `uabi/import/{state}`: standard user buffer -> fpstate, every check included;
//! - `uabi/memcpy/{state}`: `copy_from_slice` of the standard size;
//! - `uabi/memcpy-largest/{state}`: `copy_from_slice` of the largest component
//!   alone, from its compacted offset in the fpstate to its standard offset;
//! - `uabi/kvm-get-set/avx512-live`: KVM_GET_XSAVE2 + KVM_SET_XSAVE on a vCPU whose
//!   XCR0 holds the same AVX-512 state (the KVM here offers guests no AMX).

mod common;

use std::hint::black_box;

use common::{config, dirty_image};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, Xsave, kvm_xcrs};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{LiveCpuid, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, Owner, Storage};
use xstate::insn;
use xstate::layout::Layout;
use xstate::uabi::{export, import};

const SPR: &str = include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt");
/// `struct kvm_xsave` without its flexible tail.
const REGION: usize = 4096;

/// One state to copy: enumeration, configs, a host fpstate holding it.
struct Case {
    name: &'static str,
    e: Enumeration,
    cfg: Configs,
    fp: Fpstate<BoxedArea>,
    user: XFeatures,
    /// The user buffer, 64-byte aligned like the fpstate (so memcpy and our
    /// copies see the same alignment).
    buf: BoxedArea,
}

impl Case {
    fn new(name: &'static str, e: Enumeration, p: Policy, mxcsr_mask: Option<u32>) -> Self {
        let mut cfg = Configs::new(&e, &p).expect("configs");
        if let Some(m) = mxcsr_mask {
            cfg.mxcsr_mask = m;
        }
        let mut fp = Fpstate::new_boxed(&e, &cfg, Owner::Host).expect("fpstate");
        let user = fp.info().user_features;
        // Every user component in a non-init state (valid for import: MXCSR
        // default, header zero but XSTATE_BV).
        let std = Layout::standard(&e, user).expect("standard layout");
        let mut buf = dirty_image(&std, user);
        assert_eq!(buf.bytes().len(), fp.info().user_size as usize);
        let got = import(&e, &cfg, &mut fp, buf.bytes()).expect("import of the dirty buffer");
        assert_eq!(got, user);
        // From here on the buffer is what export writes (MXCSR_MASK, software
        // bytes included), so import and export move the same bytes.
        export(&e, &cfg, &fp, user, buf.bytes_mut()).expect("export");
        Self {
            name,
            e,
            cfg,
            fp,
            user,
            buf,
        }
    }
}

/// A vCPU whose XCR0 is `xcr0` and whose XSAVE state holds `state` (standard
/// form, at most `REGION` bytes); `Err` = why not.
struct Vcpu {
    _kvm: Kvm,
    _vm: VmFd,
    vcpu: VcpuFd,
    xs: Xsave,
}

impl Vcpu {
    fn open(xcr0: u64, state: &[u8]) -> Result<Self, String> {
        let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        let d0 = cpuid
            .as_slice()
            .iter()
            .find(|x| x.function == 0xd && x.index == 0)
            .copied()
            .unwrap_or_default();
        let guest_xcr0 = (u64::from(d0.edx) << 32) | u64::from(d0.eax);
        if guest_xcr0 & xcr0 != xcr0 {
            return Err(format!(
                "KVM offers guests XCR0 {guest_xcr0:#x}, not {xcr0:#x}"
            ));
        }
        // KVM takes the importable features from the vCPU's CPUID table.
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
        let mut x = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        x.xcrs[0].xcr = 0;
        x.xcrs[0].value = xcr0;
        vcpu.set_xcrs(&x)
            .map_err(|e| format!("KVM_SET_XCRS: {e}"))?;
        let cap = vm.check_extension_int(Cap::Xsave2);
        let size = if cap > 0 { cap as usize } else { REGION };
        let mut xs =
            Xsave::new(size.saturating_sub(REGION).div_ceil(4)).map_err(|e| format!("{e:?}"))?;
        if state.len() > REGION {
            return Err(format!(
                "{} bytes of state exceed kvm_xsave's region",
                state.len()
            ));
        }
        // SAFETY: only the fixed region is written; the length field is untouched.
        let region = unsafe { &mut xs.as_mut_fam_struct().xsave.region };
        for (w, c) in region.iter_mut().zip(state.chunks(4)) {
            let mut q = [0u8; 4];
            q[..c.len()].copy_from_slice(c);
            *w = u32::from_le_bytes(q);
        }
        // SAFETY: `xs` was allocated for KVM_CAP_XSAVE2 bytes, all KVM reads.
        unsafe { vcpu.set_xsave2(&xs) }.map_err(|e| format!("KVM_SET_XSAVE: {e}"))?;
        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            vcpu,
            xs,
        })
    }

    fn round_trip(&mut self) {
        // SAFETY: `xs` was allocated for KVM_CAP_XSAVE2 bytes, all KVM writes.
        unsafe { self.vcpu.get_xsave2(&mut self.xs) }.expect("KVM_GET_XSAVE2");
        // SAFETY: as above, for reads.
        unsafe { self.vcpu.set_xsave2(&self.xs) }.expect("KVM_SET_XSAVE");
    }
}

fn benches(c: &mut Criterion) {
    let live = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    let spr = Enumeration::from_cpuid(&RecordedCpuid::parse(SPR).expect("SPR dump"))
        .expect("SPR enumeration");
    let live_policy = Policy::linux(&live);
    // AMX TILEDATA allocated from the start (as after a first-use XFD fault).
    let spr_policy = Policy {
        dynamic: XFeatures::empty(),
        ..Policy::linux(&spr)
    };
    let mut cases = [
        Case::new(
            "avx512-live",
            live,
            live_policy,
            Some(insn::read_mxcsr_mask()),
        ),
        Case::new("amx-spr", spr, spr_policy, None),
    ];
    let mut g = c.benchmark_group("uabi");
    for case in &mut cases {
        let size = case.buf.bytes().len();
        let mut out = BoxedArea::zeroed(size);
        let Case {
            name,
            e,
            cfg,
            fp,
            user,
            buf,
        } = case;
        // Checked outside the timed closures, so a filter that skips one does
        // not skip its check: importing the buffer gives its features, and
        // exporting the fpstate gives the buffer back.
        let got = import(e, cfg, fp, buf.bytes()).expect("import of the buffer");
        assert_eq!(got, *user, "import of the buffer");
        export(e, cfg, fp, *user, out.bytes_mut()).expect("export");
        assert!(
            out.bytes() == buf.bytes(),
            "export gives back what was imported"
        );
        g.bench_function(BenchmarkId::new("export", *name), |b| {
            b.iter(|| {
                export(
                    black_box(e),
                    cfg,
                    black_box(&*fp),
                    *user,
                    black_box(out.bytes_mut()),
                )
                .expect("export")
            })
        });

        g.bench_function(BenchmarkId::new("import", *name), |b| {
            b.iter(|| {
                import(
                    black_box(e),
                    cfg,
                    black_box(&mut *fp),
                    black_box(buf.bytes()),
                )
                .expect("import")
            })
        });
        g.bench_function(BenchmarkId::new("memcpy", *name), |b| {
            b.iter(|| black_box(out.bytes_mut()).copy_from_slice(black_box(buf.bytes())))
        });
        // The largest single component alone, copied between the two buffers at
        // its real offsets (compacted in the fpstate, standard in the user
        // buffer): the one copy export cannot split, so a floor under it.
        let kernel = Layout::compacted(e, fp.info().features).expect("compacted layout");
        let (i, c) = user
            .indices()
            .filter(|&i| i >= 2)
            .map(|i| (i, e.components()[i as usize]))
            .max_by_key(|(_, c)| c.size)
            .expect("every case has an extended user component");
        let src = kernel.range_of(i).expect("component in the fpstate");
        let dst = c.std_offset as usize..(c.std_offset + c.size) as usize;
        g.bench_function(BenchmarkId::new("memcpy-largest", *name), |b| {
            b.iter(|| {
                black_box(&mut out.bytes_mut()[dst.clone()])
                    .copy_from_slice(black_box(&fp.area()[src.clone()]))
            })
        });
    }
    let avx = &cases[0];
    let xcr0 = insn::read_xcr0().expect("OSXSAVE").bits() & avx.user.bits();
    match Vcpu::open(xcr0, avx.buf.bytes()) {
        Ok(mut v) => {
            g.bench_function(BenchmarkId::new("kvm-get-set", avx.name), |b| {
                b.iter(|| v.round_trip())
            });
        }
        Err(why) => eprintln!("\n******** SKIP bench uabi/kvm-get-set: {why} ********\n"),
    }
    g.finish();
}

criterion_group! {
    name = uabi;
    config = config();
    targets = benches
}
criterion_main!(uabi);
