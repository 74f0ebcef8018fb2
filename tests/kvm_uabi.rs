//! `xstate::uabi` against Linux's own code, reached through KVM.
//!
//! `KVM_SET_XSAVE` runs Linux's `fpu_copy_uabi_to_guest_fpstate`: XSTATE_BV
//! within what KVM supports for guests (`kvm_caps.supported_xcr0`), then
//! `copy_uabi_to_xstate` with `validate_user_xstate_header` (XSTATE_BV within
//! the guest fpstate's `user_xfeatures`, the host's default user features plus
//! any dynamic one the guest's CPUID enabled; XCOMP_BV zero; header bytes
//! 16..64 zero) and the MXCSR check (reserved bits clear whenever x87, SSE or
//! AVX is in XSTATE_BV). Nothing is written before every check passed.
//! `KVM_GET_XSAVE2` runs `__copy_xstate_to_uabi_buf` in its XSAVE mode with
//! what the guest's CPUID allows plus x87 and SSE. Our side is a guest fpstate
//! of the live CPU with [`import_abi`] (`UserAbi::Kvm`) and [`export`] with
//! the guest's mask.
//!
//! Every mask comes from KVM on this host: `KVM_GET_SUPPORTED_CPUID` leaf 0xD
//! (asked after `ARCH_REQ_XCOMP_GUEST_PERM` for every dynamic component, so it
//! reports everything KVM supports), and the uabi size is
//! `max(4096, KVM_CAP_XSAVE2)`. The verdict test gives its guest a CPUID that
//! allows less than KVM supports (AVX-512 left out where KVM has it), so the
//! two masks differ.
//!
//! The tests:
//! - (a) byte-exact round trips of random valid register states;
//! - (b) accept/reject verdicts and errnos on mutated buffers, some shorter
//!   than KVM's size (placed before an inaccessible page, so KVM's read of its
//!   whole size faults: EFAULT) and some longer, state untouched on reject,
//!   KVM's state equal to our export after every ioctl;
//! - (c) every accepted buffer restored with a real XRSTOR in a forked child;
//! - (d) export into canary-filled buffers writes exactly what it must (no KVM).
//!
//! Without `/dev/kvm`, (a)-(c) print `SKIP kvm_uabi: /dev/kvm: <err>` on stderr.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, Xsave, kvm_xcrs};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, Owner};
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi::{UserAbi, export, import, import_abi};

mod testkit;
use testkit::loud;
use testkit::{
    Area, MXCSR, MXCSR_MASK, Rng, XCOMP_BV, XSTATE_BV, XTILEDATA, cet_s_pattern, get_u32, get_u64,
    mutate_header, paint_cet_s, put_u32, put_u64, request_xcomp_perm, std_size_raw,
};

/// `struct kvm_xsave` without its flexible tail.
const REGION: usize = 4096;
/// x87 and SSE: KVM always exports them, whatever the guest's CPUID says.
const FPSSE: u64 = 0b11;

/// What FXSAVE reports as MXCSR_MASK on this CPU: the value Linux's
/// `mxcsr_feature_mask` holds (AMD CPUs add bit 17, MM, to Intel's 0xffff).
/// Read here with the compiler's intrinsic, independently of
/// `xstate::insn::read_mxcsr_mask`, which our side uses.
fn hw_mxcsr_mask() -> u32 {
    #[repr(C, align(16))]
    struct Fx([u8; 512]);
    let mut fx = Fx([0; 512]);
    // SAFETY: FXSAVE writes exactly 512 bytes to a 16-byte aligned address; `fx`
    // is 512 bytes, 16-byte aligned, and every x86-64 CPU has FXSR.
    unsafe { core::arch::x86_64::_fxsave64(fx.0.as_mut_ptr()) };
    match get_u32(&fx.0, MXCSR_MASK) {
        0 => 0xffbf, // the SDM's rule for CPUs that write no mask
        m => m,
    }
}

/// Our side: the live CPU's configs (with the crate's reading of the CPU's
/// MXCSR mask) and a guest fpstate.
struct Ours {
    e: Enumeration,
    cfg: Configs,
    fp: Fpstate<BoxedArea>,
}

impl Ours {
    /// Our guest fpstate for a guest whose CPUID allows `guest_xcr0`: grown
    /// for the dynamic components it enables, as KVM grows its own on
    /// `KVM_SET_CPUID2` (the process holds guest permission for them).
    fn new(guest_xcr0: u64) -> Self {
        let e = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
        let cfg = Configs::new(&e, &Policy::linux(&e)).expect("linux configs");
        let mut fp = Fpstate::new_boxed(&cfg, Owner::Guest).expect("guest fpstate");
        let dynamic = XFeatures::from_bits_retain(guest_xcr0) & cfg.policy().dynamic;
        if let Some(i) = dynamic.indices().next() {
            let mut perms = ProcessPerms::new(&cfg);
            for i in dynamic.indices() {
                perms
                    .request(&cfg, PermKind::Guest, i.into(), |_| true)
                    .expect("guest permission");
            }
            fp = fp.grow_boxed(&cfg, &perms, i).expect("grow");
        }
        Self { e, cfg, fp }
    }
    fn user(&self) -> u64 {
        self.fp.info().user_features.bits()
    }
    fn std_size(&self) -> usize {
        self.fp.info().user_size as usize
    }
    /// [`export`] as KVM_GET_XSAVE2 asks for it: the guest's CPUID mask plus
    /// x87 and SSE.
    fn export(&self, guest_xcr0: u64, out: &mut [u8]) -> usize {
        let mask = XFeatures::from_bits_retain(guest_xcr0 | FPSSE);
        export(&self.cfg, &self.fp, mask, out).expect("export")
    }
}

/// `_IOW(KVMIO, 0xa5, struct kvm_xsave)` (Linux's `include/uapi/linux/kvm.h`).
const KVM_SET_XSAVE: libc::c_ulong = 0x5000_aea5;
/// `_IOR(KVMIO, 0xcf, struct kvm_xsave)`: KVM_GET_XSAVE2 (the size in the
/// number is the fixed part's; KVM writes its vCPU's whole uabi size).
const KVM_GET_XSAVE2: libc::c_ulong = 0x9000_aecf;

/// Readable, writable bytes followed by an inaccessible page: where
/// [`Vcpu::set`] puts the buffers it hands KVM.
struct Guarded {
    base: *mut u8,
    room: usize,
    len: usize,
}

impl Guarded {
    fn new(room: usize) -> Self {
        let room = room.next_multiple_of(4096);
        let len = room + 4096;
        // SAFETY: an anonymous private mapping; the arguments are valid.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        let base = p.cast::<u8>();
        // SAFETY: the last page of the mapping just made.
        let r = unsafe { libc::mprotect(base.add(room).cast(), 4096, libc::PROT_NONE) };
        assert_eq!(r, 0, "mprotect");
        Self { base, room, len }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A vCPU whose CPUID is KVM's supported table, leaf 0xD narrowed to what the
/// guest may enable, and whose XCR0 is all of that.
struct Vcpu {
    _kvm: Kvm,
    _vm: VmFd,
    vcpu: VcpuFd,
    xs: Xsave,
    guarded: Guarded,
    /// `max(4096, KVM_CAP_XSAVE2)`: bytes KVM reads and writes.
    size: usize,
    /// What KVM supports for guests (leaf 0xD of KVM_GET_SUPPORTED_CPUID).
    supported: u64,
    /// Guest-supported XCR0 from the CPUID table we installed.
    guest_xcr0: u64,
}

impl Vcpu {
    /// `allow`: the XCR0 bits the guest's CPUID may offer (`!0`: all KVM has).
    fn open(allow: u64) -> Option<Self> {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(err) => {
                loud!("\n******** SKIP kvm_uabi: /dev/kvm: {err} ********\n");
                return None;
            }
        };
        // Guest permission for every dynamic component before the first vCPU
        // (which locks it), so KVM_GET_SUPPORTED_CPUID and KVM_CAP_XSAVE2 report
        // all KVM supports instead of what this process may give guests.
        let host = xstate::insn::read_xcr0().expect("OSXSAVE");
        if host.has_index(XTILEDATA) {
            request_xcomp_perm(XTILEDATA, true)
                .unwrap_or_else(|e| panic!("ARCH_REQ_XCOMP_GUEST_PERM(18): errno {e}"));
        }
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .expect("KVM_GET_SUPPORTED_CPUID");
        let d0 = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|x| x.function == 0xd && x.index == 0)
            .expect("KVM_GET_SUPPORTED_CPUID has no leaf 0xD");
        let supported = u64::from(d0.edx) << 32 | u64::from(d0.eax);
        let asked = supported & (allow | FPSSE);
        d0.eax = asked as u32;
        d0.edx = (asked >> 32) as u32;
        // KVM derives guest_supported_xcr0 from this table (and grows its guest
        // fpstate for the dynamic components it enables).
        vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
        // What the vCPU holds is what counts: some KVM implementations (this
        // machine's nested one) replace leaf 0xD with their own.
        let back = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .expect("KVM_GET_CPUID2");
        let guest_xcr0 = back
            .as_slice()
            .iter()
            .find(|x| x.function == 0xd && x.index == 0)
            .map_or(0, |x| u64::from(x.edx) << 32 | u64::from(x.eax))
            & supported;
        if guest_xcr0 != asked {
            loud!(
                "NOTE kvm_uabi: asked KVM_SET_CPUID2 for a guest XCR0 mask {asked:#x}; \
                 KVM_GET_CPUID2 reads back {guest_xcr0:#x}, which this run uses"
            );
        }
        let mut x = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        x.xcrs[0].xcr = 0;
        x.xcrs[0].value = guest_xcr0;
        vcpu.set_xcrs(&x).expect("KVM_SET_XCRS");
        let size = xstate::guest::kvm_xsave_size(vm.check_extension_int(Cap::Xsave2));
        let xs = Xsave::new((size - REGION).div_ceil(4)).expect("Xsave");
        Some(Self {
            _kvm: kvm,
            _vm: vm,
            vcpu,
            xs,
            guarded: Guarded::new(size + 4096),
            size,
            supported,
            guest_xcr0,
        })
    }

    /// KVM_SET_XSAVE with `buf` of any length up to a page more than
    /// `self.size`, placed so that it ends where an inaccessible page starts:
    /// KVM always reads `self.size` bytes, so a shorter buffer makes it fault
    /// (EFAULT) as a VMM's short buffer would. The errno on refusal.
    fn set(&mut self, buf: &[u8]) -> Result<(), i32> {
        let g = &mut self.guarded;
        assert!(buf.len() <= g.room, "buffer of {} bytes", buf.len());
        let at = g.room - buf.len();
        // SAFETY: `g.base..g.base + g.room` is the readable, writable part of
        // the mapping, and `at + buf.len() == g.room`.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), g.base.add(at), buf.len()) };
        // SAFETY: KVM_SET_XSAVE reads `self.size` bytes from the pointer; the
        // ones past the buffer lie in the inaccessible page, where KVM's copy
        // fails with EFAULT instead of reading our memory.
        let r = unsafe { libc::ioctl(self.vcpu.as_raw_fd(), KVM_SET_XSAVE, g.base.add(at)) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    /// KVM_GET_XSAVE2 into a buffer of `len` bytes that ends where the
    /// inaccessible page starts: the bytes it wrote, or the errno (EFAULT when
    /// KVM writes more than `len`).
    fn get_guarded(&mut self, len: usize) -> Result<Vec<u8>, i32> {
        let g = &mut self.guarded;
        assert!(len <= g.room, "buffer of {len} bytes");
        let at = g.room - len;
        // SAFETY: `g.base + at .. g.base + g.room` is the readable, writable
        // part of the mapping; KVM writes its uabi size from there, and what
        // lies past `g.room` is the inaccessible page, where its copy faults
        // (EFAULT) instead of writing our memory.
        let r = unsafe { libc::ioctl(self.vcpu.as_raw_fd(), KVM_GET_XSAVE2, g.base.add(at)) };
        if r != 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        // SAFETY: the same `len` readable bytes, which KVM just wrote.
        Ok(unsafe { std::slice::from_raw_parts(g.base.add(at), len) }.to_vec())
    }

    /// KVM_GET_XSAVE2 into `out` (`self.size` bytes).
    fn get(&mut self, out: &mut [u8]) {
        assert_eq!(out.len(), self.size);
        // SAFETY: `xs` was allocated for KVM_CAP_XSAVE2 bytes, all KVM_GET_XSAVE2
        // writes.
        unsafe { self.vcpu.get_xsave2(&mut self.xs) }.expect("KVM_GET_XSAVE2");
        let x = self.xs.as_fam_struct_ref();
        for (w, c) in x.xsave.region.iter().zip(out.chunks_exact_mut(4)) {
            c.copy_from_slice(&w.to_le_bytes());
        }
        for (w, c) in self
            .xs
            .as_slice()
            .iter()
            .zip(out[REGION..].chunks_exact_mut(4))
        {
            c.copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// What Linux's export adds to ours, known from outside our code.
struct Linux {
    /// `mxcsr_feature_mask`, what init_fpstate's MXCSR_MASK holds (FXSAVE).
    hw_mask: u32,
    /// `xstate_fx_sw_bytes[0]`: Linux stores its user XCR0 there for ptrace and
    /// core dumps (`update_regset_xstate_info`); the other five words are zero.
    sw_xcr0: u64,
}

impl Linux {
    fn new() -> Self {
        let xcr0 = xstate::insn::read_xcr0().expect("OSXSAVE").bits();
        Self {
            hw_mask: hw_mxcsr_mask(),
            // XCR0 holds only user bits; Linux's fpu_user_cfg.max_features is all of it.
            sw_xcr0: xcr0,
        }
    }
}

/// KVM's `GET_XSAVE2` (`kvm`) against our export (`ours`, zeroed first, so
/// zero past the size it returned), every byte of KVM's uabi size compared. The
/// fields our code could get right or wrong together are also checked against
/// what Linux holds, known from outside our code:
///
/// - bytes 28..32 (MXCSR_MASK): Linux copies MXCSR and MXCSR_MASK as one 8-byte
///   unit, from the fpstate when SSE or AVX is in the exported XSTATE_BV (so
///   whatever the last import wrote there: `kvm_mask`) and from init_fpstate
///   otherwise (the CPU's mask);
/// - bytes 464..512 (`sw_reserved`): the user XCR0 word, then zeros;
/// - KVM zeroes everything from the standard size to the end of its buffer.
fn compare(l: &Linux, kvm: &[u8], ours: &[u8], size: usize, kvm_mask: u32) -> Result<(), String> {
    if get_u32(kvm, MXCSR_MASK) != kvm_mask {
        return Err(format!(
            "KVM MXCSR_MASK {:#x}, model {kvm_mask:#x}",
            get_u32(kvm, MXCSR_MASK)
        ));
    }
    if get_u64(kvm, 464) != l.sw_xcr0 || kvm[472..512].iter().any(|&b| b != 0) {
        return Err(format!(
            "KVM sw_reserved {:02x?}, model XCR0 {:#x} then zeros",
            &kvm[464..512],
            l.sw_xcr0
        ));
    }
    if let Some(i) = kvm[size..].iter().position(|&b| b != 0) {
        return Err(format!(
            "KVM byte {} past the standard size {size} is not zero (KVM XSTATE_BV {:#x}, ours {:#x})",
            size + i,
            get_u64(kvm, XSTATE_BV),
            get_u64(ours, XSTATE_BV)
        ));
    }
    if let Some(i) = (0..kvm.len()).find(|&i| kvm[i] != ours[i]) {
        let end = (i + 16).min(kvm.len());
        return Err(format!(
            "first difference at byte {i}: KVM {:02x?} ours {:02x?}",
            &kvm[i..end],
            &ours[i..end]
        ));
    }
    Ok(())
}

/// A random valid user buffer: every byte random (legacy leftovers, padding,
/// software bytes, components, past the end), then XSTATE_BV within `valid`,
/// XCOMP_BV and the reserved header zero, MXCSR within the CPU's mask.
fn valid_buffer(rng: &mut Rng, len: usize, valid: u64, hw_mask: u32) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rng.fill(&mut b);
    put_u64(&mut b, XSTATE_BV, rng.next() & valid);
    b[XCOMP_BV..576].fill(0);
    put_u32(&mut b, MXCSR, rng.next() as u32 & hw_mask);
    b
}

/// The MXCSR_MASK a KVM export filtered by `exported` shows after accepting
/// `buf` (see [`compare`]).
fn kvm_mask_after(buf: &[u8], exported: u64, hw_mask: u32) -> u32 {
    if get_u64(buf, XSTATE_BV) & exported & 0b110 != 0 {
        get_u32(buf, MXCSR_MASK)
    } else {
        hw_mask
    }
}

/// Whether XRSTOR with RFBM ⊇ SSE can take `buf` as is. The SDM loads MXCSR from
/// the area whenever RFBM[1] or RFBM[2] is set, whatever XSTATE_BV says, and
/// #GPs on reserved bits; Linux (and we) check MXCSR only when x87, SSE or AVX
/// is in XSTATE_BV, because the kernel never restores the user buffer itself:
/// its own copy keeps the previous, valid MXCSR. Such buffers are restored
/// through our export (what the kernel copy holds) instead.
fn raw_restorable(buf: &[u8], hw_mask: u32) -> bool {
    get_u32(buf, MXCSR) & !hw_mask == 0
}

/// Restore every image (64-byte aligned, at least the standard size of
/// `rfbm`) with a real XRSTOR (RFBM `rfbm`, within XCR0 and, for AMX, with
/// permission asked) in a forked child, each followed by a restore of the init
/// state. Returns how many were restored; a #GP (SIGSEGV) or any other death
/// names the image.
fn xrstor_in_child(images: &[Area], rfbm: XFeatures) -> Result<usize, String> {
    let Some(first) = images.first() else {
        return Ok(0);
    };
    let mut clean = Area::new(first.bytes().len(), 0);
    put_u32(clean.bytes_mut(), 0, 0x037f); // FCW after FNINIT
    put_u32(clean.bytes_mut(), MXCSR, 0x1f80);
    // SAFETY: an anonymous shared mapping of one page; arguments are valid.
    let page = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED, "mmap");
    // SAFETY: `page` is a fresh, page-aligned, zeroed, writable mapping that
    // outlives every use below (unmapped at the end), shared with the child.
    let progress = unsafe { AtomicU64::from_ptr(page.cast::<u64>()) };
    // SAFETY: the child only executes XRSTOR on memory it already owns, atomic
    // stores and `_exit`: no allocation, no locks another thread could hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        child_restores(images, &clean, rfbm, progress);
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    let at = progress.load(Ordering::SeqCst) as usize;
    // SAFETY: `page` is the 4096-byte mapping made above, no longer used.
    unsafe { libc::munmap(page, 4096) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(images.len());
    }
    let img = images[at.min(images.len() - 1)].bytes();
    Err(format!(
        "child status {status:#x} (signal {}) at image {at}: XSTATE_BV {:#x} XCOMP_BV {:#x} MXCSR {:#x} header {:02x?}",
        if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            0
        },
        get_u64(img, XSTATE_BV),
        get_u64(img, XCOMP_BV),
        get_u32(img, MXCSR),
        &img[512..576]
    ))
}

#[inline(never)]
fn child_restores(images: &[Area], clean: &Area, rfbm: XFeatures, progress: &AtomicU64) -> ! {
    for (i, img) in images.iter().enumerate() {
        progress.store(i as u64, Ordering::SeqCst);
        // SAFETY: OSXSAVE is set (XCR0 was read), `rfbm` is within XCR0 (and
        // AMX permission was asked where it holds TILEDATA), `img` is 64-byte
        // aligned and at least the standard size of `rfbm`, and the loop holds
        // no vector values: a bad header is exactly what this test looks for.
        unsafe { xstate::insn::xrstor(img.bytes().as_ptr(), rfbm) };
        // SAFETY: as above; `clean` is the init state with the default MXCSR,
        // so no pending x87 or SSE exception survives into the next iteration.
        unsafe { xstate::insn::xrstor(clean.bytes().as_ptr(), rfbm) };
    }
    // SAFETY: `_exit` ends the forked child without running the parent's atexit
    // handlers or touching its stdio buffers.
    unsafe { libc::_exit(0) }
}

/// `b` in a 64-byte aligned area of its own length.
fn area_of(b: &[u8]) -> Area {
    let mut a = Area::new(b.len(), 0);
    a.bytes_mut().copy_from_slice(b);
    a
}

/// Images waiting for (c), restored in batches so memory stays bounded.
struct Restorer {
    /// RFBM for the XRSTORs: what KVM supports for guests, within XCR0.
    rfbm: XFeatures,
    batch: Vec<Area>,
    restored: usize,
    raw: usize,
    via_export: usize,
}

impl Restorer {
    fn new(rfbm: XFeatures) -> Self {
        Self {
            rfbm,
            batch: Vec::new(),
            restored: 0,
            raw: 0,
            via_export: 0,
        }
    }
    /// An accepted buffer and our export of the state it produced.
    fn push(&mut self, accepted: &[u8], exported: &[u8], hw_mask: u32) {
        if raw_restorable(accepted, hw_mask) {
            self.batch.push(area_of(accepted));
            self.raw += 1;
        } else {
            self.via_export += 1;
        }
        self.batch.push(area_of(exported));
        if self.batch.len() >= 1024 {
            self.flush();
        }
    }
    fn flush(&mut self) {
        match xrstor_in_child(&self.batch, self.rfbm) {
            Ok(n) => self.restored += n,
            Err(e) => panic!("XRSTOR faulted on an accepted buffer: {e}"),
        }
        self.batch.clear();
    }
}

/// Both sides of a KVM test, what Linux adds to an export, the two export
/// buffers and the XRSTOR checker.
struct Rig {
    v: Vcpu,
    ours: Ours,
    l: Linux,
    kvm: Vec<u8>,
    mine: Vec<u8>,
    restorer: Restorer,
}

impl Rig {
    /// Open KVM with a guest whose CPUID allows `allow` (within what KVM
    /// supports) and our side for that guest; `None` = no KVM here (skip).
    fn open(allow: u64) -> Option<Self> {
        let v = Vcpu::open(allow)?;
        let ours = Ours::new(v.guest_xcr0);
        let xcr0 = xstate::insn::read_xcr0().expect("OSXSAVE").bits();
        assert_eq!(
            v.supported & !xcr0,
            0,
            "KVM supports XCR0 bits the host does not enable"
        );
        if v.supported >> XTILEDATA & 1 != 0 {
            // The forked XRSTORs load TILEDATA: without permission XFD faults.
            request_xcomp_perm(XTILEDATA, false)
                .unwrap_or_else(|e| panic!("ARCH_REQ_XCOMP_PERM(18): errno {e}"));
        }
        // What KVM's guest fpstate holds: the host's default user features and
        // the dynamic ones the guest's CPUID enabled; ours must hold the same.
        let kvm_user = Configs::new(&ours.e, &Policy::linux(&ours.e))
            .expect("configs")
            .user()
            .default_features
            .bits()
            | (v.guest_xcr0 & ours.cfg.policy().dynamic.bits());
        assert_eq!(ours.user(), kvm_user, "our guest fpstate's user features");
        loud!(
            "kvm_uabi: host XCR0 {xcr0:#x}, KVM supports {:#x}, guest CPUID allows {:#x}, \
             guest fpstate user features {:#x}, uabi size {} (KVM_CAP_XSAVE2 or 4096)",
            v.supported,
            v.guest_xcr0,
            ours.user(),
            v.size
        );
        Some(Self {
            kvm: vec![0; v.size],
            mine: vec![0; v.size],
            restorer: Restorer::new(XFeatures::from_bits_retain(v.supported)),
            v,
            ours,
            l: Linux::new(),
        })
    }

    /// The import KVM_SET_XSAVE is, in our terms.
    fn import(&mut self, buf: &[u8]) -> Result<XFeatures, xstate::uabi::UabiError> {
        let abi = UserAbi::Kvm {
            supported: XFeatures::from_bits_retain(self.v.supported),
            uabi_size: self.v.size,
        };
        let o = &mut self.ours;
        import_abi(&o.cfg, &mut o.fp, buf, abi)
    }

    /// XSTATE_BV bits both sides accept: what KVM supports and our fpstate holds.
    fn valid(&self) -> u64 {
        self.v.supported & self.ours.user()
    }

    /// What KVM_GET_XSAVE2 exports: the guest's CPUID mask plus x87 and SSE.
    fn exported(&self) -> u64 {
        self.v.guest_xcr0 | FPSSE
    }

    /// KVM_GET_XSAVE2 against our export of the same state (see [`compare`]),
    /// `kvm_mask` the MXCSR_MASK KVM must show.
    fn states_agree(&mut self, kvm_mask: u32) -> Result<(), String> {
        self.v.get(&mut self.kvm);
        self.mine.fill(0);
        let size = self.ours.export(self.v.guest_xcr0, &mut self.mine);
        compare(&self.l, &self.kvm, &self.mine, size, kvm_mask)
    }

    /// Queue `accepted` and our export of the state it produced (left in
    /// `mine` by [`Rig::states_agree`]) for a real XRSTOR.
    fn restore_later(&mut self, accepted: &[u8]) {
        self.restorer.push(accepted, &self.mine, self.l.hw_mask);
    }

    /// Run the queued XRSTORs and print their counts.
    fn finish(&mut self) {
        let r = &mut self.restorer;
        r.flush();
        loud!(
            "xrstor: {} images restored, 0 faults ({} accepted buffers as is, {} only through our export: dead MXCSR)",
            r.restored,
            r.raw,
            r.via_export
        );
    }
}

// ---------------------------------------------------------------------------
// (a) byte-exact round trips
// ---------------------------------------------------------------------------

#[test]
fn requires_kvm_roundtrip_is_byte_exact() {
    let Some(mut rig) = Rig::open(!0) else {
        return;
    };
    let hw_mask = rig.l.hw_mask;
    // The fresh vCPU against the fresh fpstate.
    rig.states_agree(hw_mask)
        .unwrap_or_else(|e| panic!("fresh state: {e}"));

    let mut rng = Rng(0x6b76_6d5f_7561_6269);
    let n = 2000;
    for i in 0..n {
        let buf = valid_buffer(&mut rng, rig.v.size, rig.valid(), hw_mask);
        let hdr = get_u64(&buf, XSTATE_BV);
        rig.v.set(&buf).unwrap_or_else(|e| {
            panic!("#{i}: KVM refused a valid buffer (errno {e}), XSTATE_BV {hdr:#x}")
        });
        let got = rig
            .import(&buf)
            .unwrap_or_else(|e| panic!("#{i}: import refused a valid buffer: {e}"));
        assert_eq!(got.bits(), hdr);
        rig.states_agree(kvm_mask_after(&buf, rig.exported(), hw_mask))
            .unwrap_or_else(|e| panic!("#{i}: XSTATE_BV {hdr:#x}: {e}"));
        rig.restore_later(&buf);
    }
    rig.finish();
    loud!(
        "kvm round trip: {n} random valid states byte-exact over all {} bytes of KVM's buffer \
         (MXCSR_MASK and sw_reserved also checked against Linux's rule, see compare())",
        rig.v.size
    );
}

// ---------------------------------------------------------------------------
// (b) verdicts on mutated buffers
// ---------------------------------------------------------------------------

#[test]
fn requires_kvm_verdicts_agree() {
    // A guest whose CPUID allows less than KVM supports (no AVX-512, where KVM
    // has it): KVM_SET_XSAVE still takes AVX-512 state, KVM_GET_XSAVE2 drops it.
    let Some(mut rig) = Rig::open(!XFeatures::AVX512.bits()) else {
        return;
    };
    let hw_mask = rig.l.hw_mask;
    let mut rng = Rng(0x7665_7264_6963_7473);
    let mut kvm_mask = hw_mask;
    let (mut agree, mut disagree, mut accepted) = (0usize, 0usize, 0usize);
    // Buffers shorter than, exactly, and longer than KVM's size.
    let mut lens = [0usize; 3];
    let mut shown = Vec::new();
    let n = 100_000;
    let start = std::time::Instant::now();
    for i in 0..n {
        // Mostly KVM's size; one in sixteen short (KVM faults reading past it),
        // one in sixteen longer (KVM reads its size and no more).
        let size = rig.v.size;
        let len = match rng.below(16) {
            0 => [0, 576, size - 4, rng.below(size as u64) as usize][rng.below(4) as usize],
            1 => size + 1 + rng.below(4095) as usize,
            _ => size,
        };
        let mut buf = valid_buffer(&mut rng, len.max(size), rig.valid(), hw_mask);
        mutate_header(&mut rng, &mut buf);
        buf.truncate(len);
        lens[usize::from(len >= size) + usize::from(len > size)] += 1;
        let before = rig.ours.fp.area().to_vec();
        let k = rig.v.set(&buf);
        let o = rig.import(&buf);
        if k.is_ok() == o.is_ok() {
            agree += 1;
        } else {
            disagree += 1;
            if shown.len() < 8 {
                shown.push(if len < 576 {
                    format!("#{i}: KVM {k:?}, ours {o:?}: {len} bytes")
                } else {
                    format!(
                        "#{i}: KVM {k:?}, ours {o:?}: {len} bytes, XSTATE_BV {:#x} XCOMP_BV {:#x} MXCSR {:#x} header {:02x?}",
                        get_u64(&buf, XSTATE_BV),
                        get_u64(&buf, XCOMP_BV),
                        get_u32(&buf, MXCSR),
                        &buf[512..576]
                    )
                });
            }
        }
        match (k, o) {
            (Ok(()), Ok(hdr)) => {
                accepted += 1;
                assert_eq!(hdr.bits(), get_u64(&buf, XSTATE_BV), "#{i}");
                kvm_mask = kvm_mask_after(&buf, rig.exported(), hw_mask);
            }
            (Err(errno), Err(e)) => {
                assert_eq!(errno, e.errno(), "#{i}: errno for {e}");
                assert!(
                    rig.ours.fp.area() == &before[..],
                    "#{i}: refused import ({e}) changed the fpstate"
                );
            }
            _ => {
                // Put both sides back in one known state so the run goes on and
                // counts every disagreement.
                let sync = valid_buffer(&mut rng, rig.v.size, rig.valid(), hw_mask);
                rig.v.set(&sync).expect("KVM refused a valid buffer");
                rig.import(&sync).expect("valid buffer");
                kvm_mask = kvm_mask_after(&sync, rig.exported(), hw_mask);
                continue;
            }
        }
        // After every ioctl, refused ones included: the two states are the same.
        rig.states_agree(kvm_mask).unwrap_or_else(|e| {
            panic!(
                "#{i} ({}): states differ: {e}",
                if k.is_ok() { "accepted" } else { "refused" }
            )
        });
        if k.is_ok() {
            rig.restore_later(&buf[..size]);
        }
    }
    loud!(
        "kvm conformance: {n} buffers, {agree} agree, {disagree} disagree \
         ({accepted} accepted by both; {} shorter than KVM's {} bytes, {} exact, {} longer; \
         verdict and errno compared, then KVM_GET_XSAVE2 against our export over every byte; {:.1} s)",
        lens[0],
        rig.v.size,
        lens[1],
        lens[2],
        start.elapsed().as_secs_f64()
    );
    rig.finish();
    for s in &shown {
        loud!("disagreement {s}");
    }
    assert_eq!(disagree, 0, "KVM and import disagree");
    assert!(
        accepted > n / 20,
        "too few accepted buffers ({accepted}) to mean much"
    );
}

// ---------------------------------------------------------------------------
// (d) export into canary-filled buffers (no KVM needed)
// ---------------------------------------------------------------------------

#[test]
fn export_writes_every_byte_of_its_range_and_nothing_else() {
    let mut ours = Ours::new(0);
    let hw_mask = hw_mxcsr_mask();
    let cet_s = paint_cet_s(&ours.e, &ours.cfg, &mut ours.fp);
    if cet_s.is_none() {
        loud!("SKIP kvm_uabi canary: no CET_S in the guest fpstate, supervisor-leak check not run");
    }
    let user = ours.user();
    let mut rng = Rng(0x6361_6e61_7279);
    let n = 2000;
    for i in 0..n {
        let buf = valid_buffer(&mut rng, ours.std_size(), user, hw_mask);
        let hdr = import(&ours.cfg, &mut ours.fp, &buf).unwrap().bits();
        let mask = if rng.below(4) == 0 { rng.next() } else { user };
        let out_features = mask & user;
        let live = hdr & out_features;
        // The size from raw CPUID, not from our enumeration.
        let size = std_size_raw(&LiveCpuid, out_features) as usize;
        let run = |fill: u8| {
            let mut out = vec![fill; size + 512];
            let n = export(
                &ours.cfg,
                &ours.fp,
                XFeatures::from_bits_retain(mask),
                &mut out,
            )
            .unwrap();
            assert_eq!(n, size, "#{i}: export size");
            out
        };
        let a = run(0xa5);
        let b = run(0x5a);
        // Every byte in range is written (it does not depend on the old contents),
        // none past it is.
        if let Some(j) = (0..size).find(|&j| a[j] != b[j]) {
            panic!("#{i}: byte {j} of {size} keeps the canary ({:#x})", a[j]);
        }
        assert!(
            a[size..].iter().all(|&x| x == 0xa5),
            "#{i}: wrote past {size}"
        );
        assert!(
            b[size..].iter().all(|&x| x == 0x5a),
            "#{i}: wrote past {size}"
        );
        // Legacy region: state where live, init values elsewhere, zero padding.
        if live & 1 != 0 {
            assert_eq!(a[..24], buf[..24], "#{i}: x87 control state");
            assert_eq!(a[32..160], buf[32..160], "#{i}: x87 registers");
        } else {
            assert_eq!(get_u32(&a, 0), 0x037f, "#{i}: init FCW/FSW");
            assert!(a[4..24].iter().all(|&x| x == 0), "#{i}: init x87");
            assert!(a[32..160].iter().all(|&x| x == 0), "#{i}: init ST");
        }
        let want_mxcsr = if live & 0b110 != 0 {
            get_u32(&buf, MXCSR)
        } else {
            0x1f80
        };
        assert_eq!(get_u32(&a, MXCSR), want_mxcsr, "#{i}: MXCSR");
        // MXCSR and its mask travel together (Linux's `__copy_xstate_to_uabi_buf`).
        let want_mask = if live & 0b110 != 0 {
            get_u32(&buf, MXCSR_MASK)
        } else {
            hw_mask
        };
        assert_eq!(get_u32(&a, MXCSR_MASK), want_mask, "#{i}: MXCSR_MASK");
        if live & 2 != 0 {
            assert_eq!(a[160..416], buf[160..416], "#{i}: XMM");
        } else {
            assert!(a[160..416].iter().all(|&x| x == 0), "#{i}: init XMM");
        }
        assert!(a[416..464].iter().all(|&x| x == 0), "#{i}: legacy padding");
        assert_eq!(
            get_u64(&a, 464),
            ours.cfg.user().max_features.bits(),
            "#{i}: USER_XSTATE_XCR0_WORD"
        );
        assert!(
            a[472..512].iter().all(|&x| x == 0),
            "#{i}: sw_reserved rest"
        );
        assert_eq!(get_u64(&a, XSTATE_BV), live, "#{i}: XSTATE_BV");
        assert!(a[520..576].iter().all(|&x| x == 0), "#{i}: header rest");
        // Extended region: live components equal the imported bytes; every other
        // byte (init components, components outside the mask, gaps) is zero.
        // PKRU's reserved bytes 4..8 are zero whatever was imported
        // (Linux's `struct pkru_state`).
        let mut owned = vec![false; size];
        for c in (2..64).filter(|c| live & 1 << c != 0) {
            // Offsets and sizes straight from CPUID, not from our enumeration.
            let r = core::arch::x86_64::__cpuid_count(0xd, c);
            let (o, s) = (r.ebx as usize, r.eax as usize);
            let s = if c == 9 { 4 } else { s };
            assert_eq!(a[o..o + s], buf[o..o + s], "#{i}: component {c}");
            owned[o..o + s].fill(true);
        }
        if let Some(j) = (576..size).find(|&j| !owned[j] && a[j] != 0) {
            panic!("#{i}: byte {j} is neither live state nor zero (XSTATE_BV {live:#x})");
        }
        // The guest-only supervisor state never leaves, and survives imports.
        if let Some(r) = cet_s.clone() {
            let pattern = cet_s_pattern(r.len());
            assert!(
                !a.windows(pattern.len()).any(|w| w == &pattern[..]),
                "#{i}: CET_S bytes leaked into the export"
            );
            assert_eq!(
                ours.fp.area()[r],
                pattern[..],
                "#{i}: CET_S bytes after import"
            );
            assert!(
                ours.fp.xstate_bv().contains(XFeatures::CET_S),
                "#{i}: XSTATE_BV[12]"
            );
        }
    }
    loud!(
        "canary: {n} exports (random masks) write every byte below the size, none past it, \
         zeros outside live state{}",
        if cet_s.is_none() {
            ""
        } else {
            ", CET_S never exported and kept by import"
        }
    );
}

/// `guest::kvm_xsave_size` is the buffer KVM moves, to the byte: a buffer of
/// that size ending at an inaccessible page is read and written by
/// `KVM_GET_XSAVE2` and `KVM_SET_XSAVE`; one byte less, or the guest's XSAVE
/// size (`guest::required_size` of its XCR0, what `GuestXsave::max_standard_size`
/// gives), faults with EFAULT (the kvm-ioctls #310 class of bug, where
/// ordinary memory would have been overwritten instead).
#[test]
fn requires_kvm_xsave_buffer_size_is_kvms() {
    const EFAULT: i32 = 14;
    let Some(mut v) = Vcpu::open(!0) else { return };
    let e = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
    let xcr0 = XFeatures::from_bits_retain(v.guest_xcr0);
    let guest_size = xstate::guest::required_size(&e, xcr0, xcr0).expect("guest XCR0") as usize;
    let size = v.size;
    let full = v
        .get_guarded(size)
        .expect("KVM_GET_XSAVE2 into the helper's size");
    assert_eq!(full.len(), size);
    assert_eq!(v.set(&full), Ok(()), "KVM_SET_XSAVE of the helper's size");
    let mut faults = 0;
    for len in [size - 1, guest_size] {
        if len >= size {
            loud!("NOTE kvm_uabi: the guest's XSAVE size {len} is KVM's buffer size {size}");
            continue;
        }
        assert_eq!(
            v.get_guarded(len).err(),
            Some(EFAULT),
            "KVM_GET_XSAVE2, {len} bytes"
        );
        assert_eq!(
            v.set(&full[..len]),
            Err(EFAULT),
            "KVM_SET_XSAVE, {len} bytes"
        );
        faults += 2;
    }
    loud!(
        "kvm buffer size: kvm_xsave_size {size} (KVM_CAP_XSAVE2 {}) read and written at a guard \
         page; {faults} shorter buffers (one byte less; the guest's XSAVE size {guest_size}) fault \
         with EFAULT",
        v._vm.check_extension_int(Cap::Xsave2)
    );
}
