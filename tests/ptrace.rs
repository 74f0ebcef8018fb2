//! `xstate::uabi` against Linux's ptrace `NT_X86_XSTATE` regset (no KVM needed).
//!
//! A forked child loads random register states (every XCR0 user component this
//! test knows: x87, SSE, AVX, AVX-512, PKRU with protection key 0 kept usable,
//! AMX TILECFG and TILEDATA after `ARCH_REQ_XCOMP_PERM`), each with one `asm!`
//! block that XRSTORs the image and stops itself with `tgkill(SIGSTOP)`, so no
//! compiler code runs between the load and the stop. The parent reads the
//! state with `PTRACE_GETREGSET(NT_X86_XSTATE)` (Linux's `xstateregs_get`:
//! `__copy_xstate_to_uabi_buf` of the child's fpstate, the user size long) and
//! compares every byte with `uabi::export` of the same image imported into a
//! fpstate that has grown exactly when the child's has (at its first live
//! TILEDATA). The only modelled difference is init tracking (a component loaded
//! with its init value may be saved as init: AMD tracks init by value), and a
//! bit is taken from the kernel only where our bytes are that init value.
//!
//! Then `PTRACE_SETREGSET` on stopped children (one that never used AMX, one
//! that did) takes mutated buffers of many lengths (short, unaligned, exact,
//! longer), and `uabi::import_abi(.., UserAbi::Ptrace)` must give the same
//! verdict and errno on each; after every call, accepted or not,
//! `PTRACE_GETREGSET` must equal our export of our fpstate, every byte.
//! Measured on Linux 6.18 (Intel Xeon with AMX, user size 11,008): a length
//! that is not a multiple of 8 is EINVAL, any shorter one (0 included) EFAULT,
//! a longer one is read up to the user size; the child's TILEDATA bit is
//! refused (EINVAL) until it has used AMX, whatever the process may use.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

mod testkit;

use testkit::{
    Area, LOADED, MXCSR, MXCSR_MASK, NT_X86_XSTATE, Rng, XCOMP_BV, XSTATE_BV, XTILEDATA, get_u32,
    get_u64, getregset, load_then_tgkill, loud, mutate_header, pkru_keeping_key0, put_u32, put_u64,
    request_xcomp_perm, std_range, tilecfg_image, x87_image,
};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, MXCSR_DEFAULT, Owner};
use xstate::insn::read_xcr0;
use xstate::perm::{PermKind, ProcessPerms};
use xstate::uabi::{UabiError, UserAbi, export, import, import_abi};

/// Random register states the child loads.
const STATES: usize = 400;
/// Mutated buffers in all, shared by the verdict children (issue 12 asks for
/// 100,000 verdicts against the kernel).
const VERDICTS: usize = 100_000;

/// The live CPU as Linux configures it for user space.
struct Live {
    e: Enumeration,
    cfg: Configs,
    /// XCR0's user components.
    all: XFeatures,
    /// Linux's `fpu_user_cfg.max_size`: what the regset transfers.
    user_size: usize,
    /// Task permission for every dynamic component (the crate's mirror of
    /// the `ARCH_REQ_XCOMP_PERM` this process made).
    perms: ProcessPerms,
}

impl Live {
    fn new() -> Option<Self> {
        let Some(xcr0) = read_xcr0() else {
            loud!("SKIP ptrace: OSXSAVE is clear, no NT_X86_XSTATE regset");
            return None;
        };
        let e = Enumeration::from_cpuid(&LiveCpuid).expect("live enumeration");
        let cfg = Configs::new(&e, &Policy::linux(&e)).expect("linux configs");
        let all = xcr0 & cfg.user().max_features;
        let mut perms = ProcessPerms::new(&cfg);
        for i in (all & cfg.policy().dynamic).indices() {
            request_xcomp_perm(i, false)
                .unwrap_or_else(|err| panic!("ARCH_REQ_XCOMP_PERM({i}): errno {err}"));
            perms
                .request(&cfg, PermKind::Task, i.into(), |_| true)
                .expect("permission");
        }
        if (all & cfg.policy().dynamic).is_empty() {
            loud!(
                "SKIP ptrace/amx: XCR0 {:#x} has no dynamic component (AMX TILEDATA): \
                 no child grows its fpstate here",
                xcr0.bits()
            );
        }
        let unknown = all - LOADED;
        if !unknown.is_empty() {
            loud!(
                "SKIP ptrace: XCR0 components {:#x} are not loaded with random values \
                 (left init; their bytes are still compared, as zeros)",
                unknown.bits()
            );
        }
        if !all.contains(XFeatures::PKRU) {
            loud!("SKIP ptrace/pkru: XCR0 {:#x} lacks PKRU", xcr0.bits());
        }
        let user_size = cfg.user().max_size as usize;
        Some(Self {
            e,
            cfg,
            all,
            user_size,
            perms,
        })
    }

    /// A host fpstate like the child's: grown for AMX or not.
    fn fpstate(&self, grown: bool) -> Fpstate<BoxedArea> {
        let fp = Fpstate::new_boxed(&self.cfg, Owner::Host).expect("host fpstate");
        match (self.all & self.cfg.policy().dynamic).indices().next() {
            Some(i) if grown => fp.grow_boxed(&self.cfg, &self.perms, i).expect("grow"),
            _ => fp,
        }
    }

    /// `uabi::export` of `fp` as the regset returns it: the user size, zeros
    /// past what export writes (Linux zeroes the rest of its buffer).
    fn export(&self, fp: &Fpstate<BoxedArea>) -> Vec<u8> {
        let mut out = vec![0u8; self.user_size];
        export(&self.cfg, fp, fp.info().user_features, &mut out).expect("export");
        out
    }
}

/// A random loadable image of `size` bytes: random XSTATE_BV within `all` and
/// [`LOADED`] (TILEDATA only with a configured TILECFG), random register bytes,
/// x87 state loadable ([`x87_image`]), MXCSR with every exception masked (the
/// code between loads must not trap), PKRU with key 0 usable, TILECFG palette 1.
fn random_image(rng: &mut Rng, l: &Live, size: usize) -> Area {
    let mut bv = XFeatures::from_bits_retain(rng.next()) & l.all & LOADED;
    if bv.contains(XFeatures::XTILE_DATA) {
        bv |= XFeatures::XTILE_CFG;
    }
    let mut a = Area::new(size, 0);
    let b = a.bytes_mut();
    let mut noise = vec![0u8; size];
    rng.fill(&mut noise);
    if bv.contains(XFeatures::X87) {
        x87_image(b, |k| noise[k]);
    } else {
        put_u32(b, 0, 0x037f);
    }
    let mxcsr = if bv.contains(XFeatures::SSE) {
        (rng.next() as u32 & l.cfg.mxcsr_mask()) | 0x1f80
    } else {
        0x1f80
    };
    put_u32(b, MXCSR, mxcsr);
    put_u32(b, MXCSR_MASK, l.cfg.mxcsr_mask());
    if bv.contains(XFeatures::SSE) {
        b[160..416].copy_from_slice(&noise[160..416]);
    }
    for i in bv.indices().filter(|&i| i >= 2) {
        let r = std_range(&l.e, i);
        if i == 9 {
            put_u32(b, r.start, pkru_keeping_key0(rng));
        } else if i == 17 {
            b[r.start..r.start + 64].copy_from_slice(&tilecfg_image(8));
        } else {
            b[r.clone()].copy_from_slice(&noise[r]);
        }
    }
    put_u64(b, XSTATE_BV, bv.bits());
    a
}

/// `ptrace(PTRACE_SETREGSET, pid, NT_X86_XSTATE)` of all of `buf`; the errno
/// on refusal.
fn setregset(pid: libc::pid_t, buf: &mut [u8]) -> Result<(), i32> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, readable; the kernel reads at most
    // `iov_len` bytes. The child is stopped and traced by this thread.
    let r = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, pid, NT_X86_XSTATE, &mut iov) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Wait for the traced child to stop; its stop signal.
fn wait_stop(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    assert!(
        libc::WIFSTOPPED(status),
        "child did not stop: status {status:#x} (signal {})",
        if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            0
        }
    );
    libc::WSTOPSIG(status)
}

/// Continue the stopped child without delivering its stop signal.
fn cont(pid: libc::pid_t) {
    // SAFETY: `pid` is our stopped, traced child.
    let r = unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, 0) };
    assert_eq!(r, 0, "PTRACE_CONT");
}

/// Kill and reap the child.
fn reap(pid: libc::pid_t) {
    // SAFETY: `pid` is our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: as above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// A traced child that stops once before anything (so the parent knows it
/// is traced), loads each of `images` and stops after each load, then stops a
/// last time with the last image's state still loaded.
fn spawn(l: &Live, images: &[Area]) -> Option<libc::pid_t> {
    let size = images.first().map_or(l.user_size, |a| a.bytes().len());
    let mut harness = Area::new(size, 0);
    let mut after = Area::new(size, 0);
    let full = l.all.bits();
    // SAFETY: the child runs only system calls, XSAVE/XRSTOR on memory it
    // already owns and `_exit`: no allocation, no lock another thread of the
    // test process could hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: PTRACE_TRACEME takes no pointers.
        let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        if r != 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(3) };
        }
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(libc::SIGSTOP) };
        // SAFETY: getpid and gettid cannot fail.
        let (me, tid) = unsafe { (libc::getpid() as u64, libc::gettid() as u64) };
        for img in images {
            // SAFETY: OSXSAVE is set; `full` is XCR0's user bits (AMX
            // permission asked by the parent, inherited); the three areas are
            // 64-byte aligned and the standard size of `full`; `img` is well
            // formed (built by `random_image`), `harness` is written by the
            // block's own XSAVE first; SIGSTOP has no handler.
            unsafe {
                load_then_tgkill(
                    harness.ptr(),
                    img.bytes().as_ptr(),
                    after.ptr(),
                    full,
                    me,
                    tid,
                    libc::SIGSTOP as u64,
                )
            };
        }
        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGSTOP) };
        // SAFETY: ends the child without the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3 {
        loud!("\n******** SKIP ptrace: PTRACE_TRACEME refused (Yama or seccomp) ********\n");
        return None;
    }
    assert!(libc::WIFSTOPPED(status), "child status {status:#x}");
    Some(pid)
}

/// `ours` turned into what the kernel's save shows where the two differ only
/// by init tracking: an XSTATE_BV bit set on one side only, with our bytes for
/// that component the init value (zeros; FCW 0x37f for x87). Returns the
/// components so modelled.
fn init_tracking(e: &Enumeration, ours: &mut [u8], kernel: &[u8]) -> Vec<u32> {
    let (bv, kbv) = (get_u64(ours, XSTATE_BV), get_u64(kernel, XSTATE_BV));
    let mut modelled = Vec::new();
    for i in XFeatures::from_bits_retain(bv ^ kbv).indices() {
        let r = std_range(e, i);
        let init = match i {
            0 => {
                let mut x = vec![0u8; 160];
                x[0] = 0x7f;
                x[1] = 0x03;
                x[24..32].copy_from_slice(&ours[24..32]);
                x
            }
            _ => vec![0u8; r.len()],
        };
        if ours[r] == init[..] {
            put_u64(ours, XSTATE_BV, get_u64(ours, XSTATE_BV) ^ 1 << i);
            modelled.push(i);
        }
    }
    modelled
}

/// Linux's export copies MXCSR and MXCSR_MASK from its fpstate whenever AVX
/// (or SSE) is live, but XSAVES, like XSAVEC, writes them only while SSE is in
/// use (measured here: with SSE init and AVX live, an XSAVEC leaves bytes
/// 24..32 of its buffer as they were, while STMXCSR reads the loaded value).
/// So with AVX live and SSE init the regset shows what an earlier save left:
/// the MXCSR of the last state saved with SSE in use, the harness's if the
/// child was switched out between two states, or zeros in a buffer Linux has
/// just grown (`fpstate_realloc` allocates it zeroed). `candidates` holds the
/// values that history allows; if the kernel's bytes 24..32 are one of them
/// (and the state has AVX live, SSE not), ours takes them and they are
/// returned. Never applied otherwise.
fn stale_mxcsr(kernel: &[u8], ours: &mut [u8], candidates: &[[u32; 2]]) -> Option<[u32; 2]> {
    let bv = get_u64(ours, XSTATE_BV);
    if bv & 0b110 != 0b100 || kernel[MXCSR..MXCSR + 8] == ours[MXCSR..MXCSR + 8] {
        return None;
    }
    let k = [get_u32(kernel, MXCSR), get_u32(kernel, MXCSR_MASK)];
    let c = candidates.iter().find(|&&c| c == k)?;
    put_u32(ours, MXCSR, c[0]);
    put_u32(ours, MXCSR_MASK, c[1]);
    Some(*c)
}

/// The first differing byte of two regset images, with context, or `None`.
fn first_difference(kernel: &[u8], ours: &[u8]) -> Option<String> {
    let j = (0..kernel.len()).find(|&j| kernel[j] != ours[j])?;
    let end = (j + 16).min(kernel.len());
    Some(format!(
        "byte {j}: kernel {:02x?} ours {:02x?} (XSTATE_BV kernel {:#x} ours {:#x})",
        &kernel[j..end],
        &ours[j..end],
        get_u64(kernel, XSTATE_BV),
        get_u64(ours, XSTATE_BV)
    ))
}

#[test]
fn getregset_equals_export_of_random_states() {
    let Some(l) = Live::new() else {
        return;
    };
    let mut rng = Rng(0x7074_7261_6365);
    let size = l.e.standard_size(l.all) as usize;
    let images: Vec<Area> = (0..STATES)
        .map(|_| random_image(&mut rng, &l, size))
        .collect();
    let Some(pid) = spawn(&l, &images) else {
        return;
    };
    cont(pid);
    let mut grown = false;
    let (mut amx, mut pkru, mut stale) = (0usize, 0usize, 0usize);
    let mut modelled = std::collections::BTreeMap::<u32, usize>::new();
    // What the child's fpstate holds at bytes 24..32 (MXCSR, MXCSR_MASK) from
    // saves: see `stale_mxcsr`. Fork copies the parent's (the default MXCSR and
    // the CPU's mask: this test thread runs no code that changes MXCSR).
    let harness_mxcsr = [MXCSR_DEFAULT, l.cfg.mxcsr_mask()];
    let mut saved = harness_mxcsr;
    for (n, img) in images.iter().enumerate() {
        assert_eq!(wait_stop(pid), libc::SIGSTOP, "state {n}: stop signal");
        let kernel = getregset(pid, l.user_size);
        let bv = XFeatures::from_bits_retain(get_u64(img.bytes(), XSTATE_BV));
        // Linux grows the child's fpstate at its first live TILEDATA XRSTOR,
        // into a zeroed buffer.
        if bv.intersects(l.cfg.policy().dynamic) && !grown {
            grown = true;
            saved = [0, 0];
        }
        amx += usize::from(bv.contains(XFeatures::XTILE_DATA));
        pkru += usize::from(bv.contains(XFeatures::PKRU));
        let mut fp = l.fpstate(grown);
        import(&l.cfg, &mut fp, img.bytes())
            .unwrap_or_else(|e| panic!("state {n}: import refused the loaded image: {e}"));
        let mut ours = l.export(&fp);
        for i in init_tracking(&l.e, &mut ours, &kernel) {
            *modelled.entry(i).or_default() += 1;
        }
        if let Some(k) = stale_mxcsr(&kernel, &mut ours, &[saved, harness_mxcsr]) {
            stale += 1;
            saved = k;
        } else if bv.contains(XFeatures::SSE) {
            saved = [get_u32(img.bytes(), MXCSR), l.cfg.mxcsr_mask()];
        }
        if let Some(d) = first_difference(&kernel, &ours) {
            reap(pid);
            panic!(
                "state {n} (XSTATE_BV {bv:#x}, grown {grown}): GETREGSET differs from export: {d}"
            );
        }
        cont(pid);
    }
    assert_eq!(wait_stop(pid), libc::SIGSTOP, "final stop");
    reap(pid);
    loud!(
        "ptrace getregset: {STATES} random states, every one of {} bytes equal to uabi::export \
         ({amx} with live TILEDATA, {pkru} with PKRU; components in use with their init value on one \
         side only, as component: times {modelled:?}; \
         {stale} with AVX live and SSE init, where Linux exports the MXCSR and MXCSR_MASK an earlier \
         save left in its fpstate, see stale_mxcsr)",
        l.user_size
    );
}

/// A buffer length for SETREGSET: mostly the user size, else short, unaligned
/// or longer ones.
fn random_len(rng: &mut Rng, user_size: usize) -> usize {
    match rng.below(16) {
        0 => 0,
        1 => rng.below(user_size as u64 / 8) as usize * 8,
        2 => user_size - 8,
        3 => rng.below(user_size as u64 + 64) as usize | 1,
        4 => user_size + 8 * (1 + rng.below(8) as usize),
        5 => user_size + 4,
        6 => 576,
        _ => user_size,
    }
}

/// One verdict run on a stopped child that has (`grown`) or has not used AMX.
/// Returns (buffers, agree, disagree, accepted).
fn verdicts(
    l: &Live,
    grown: bool,
    seed: u64,
    count: usize,
) -> Option<(usize, usize, usize, usize)> {
    let size = l.e.standard_size(l.all) as usize;
    let mut rng = Rng(seed);
    // The grown child loads one live-TILEDATA image first.
    let images: Vec<Area> = if grown {
        let mut img = loop {
            let img = random_image(&mut rng, l, size);
            if get_u64(img.bytes(), XSTATE_BV) & 1 << XTILEDATA != 0 {
                break img;
            }
        };
        // Its x87 state must survive a return to user mode: init it.
        let b = img.bytes_mut();
        put_u64(b, XSTATE_BV, get_u64(b, XSTATE_BV) & !1);
        vec![img]
    } else {
        Vec::new()
    };
    let pid = spawn(l, &images)?;
    for _ in 0..images.len() {
        cont(pid);
        assert_eq!(wait_stop(pid), libc::SIGSTOP);
    }
    cont(pid);
    assert_eq!(wait_stop(pid), libc::SIGSTOP, "final stop");

    // Our mirror starts from what the child holds now.
    let mut fp = l.fpstate(grown);
    let start = getregset(pid, l.user_size);
    import_abi(&l.cfg, &mut fp, &start, UserAbi::Ptrace)
        .unwrap_or_else(|e| panic!("the child's own state refused: {e}"));
    if let Some(d) = first_difference(&start, &l.export(&fp)) {
        reap(pid);
        panic!("grown {grown}: export of the child's imported state: {d}");
    }

    let valid = fp.info().user_features.bits();
    let (mut agree, mut disagree, mut accepted) = (0, 0, 0);
    let mut shown = Vec::new();
    for n in 0..count {
        let len = random_len(&mut rng, l.user_size);
        let mut buf = vec![0u8; len.max(l.user_size)];
        rng.fill(&mut buf);
        put_u64(&mut buf, XSTATE_BV, rng.next() & valid);
        buf[XCOMP_BV..576].fill(0);
        put_u32(&mut buf, MXCSR, rng.next() as u32 & l.cfg.mxcsr_mask());
        if rng.below(4) != 0 {
            mutate_header(&mut rng, &mut buf);
        }
        buf.truncate(len);
        let before = fp.area().to_vec();
        let k = setregset(pid, &mut buf);
        let o = import_abi(&l.cfg, &mut fp, &buf, UserAbi::Ptrace);
        let same = match (&k, &o) {
            (Ok(()), Ok(_)) => {
                accepted += 1;
                true
            }
            (Err(errno), Err(e)) => {
                assert!(
                    fp.area() == &before[..],
                    "#{n}: refused import ({e}) changed the fpstate"
                );
                *errno == e.errno()
            }
            _ => false,
        };
        if same {
            agree += 1;
        } else {
            disagree += 1;
            if shown.len() < 8 {
                shown.push(format!(
                    "#{n} (grown {grown}): length {len}: kernel {k:?}, ours {o:?}{}",
                    if len >= 576 {
                        format!(
                            ": XSTATE_BV {:#x} XCOMP_BV {:#x} MXCSR {:#x}",
                            get_u64(&buf, XSTATE_BV),
                            get_u64(&buf, XCOMP_BV),
                            get_u32(&buf, MXCSR)
                        )
                    } else {
                        String::new()
                    }
                ));
            }
            // Both sides back to one state, so the run goes on.
            let mut sync = start.clone();
            setregset(pid, &mut sync).expect("the child's own state");
            import_abi(&l.cfg, &mut fp, &sync, UserAbi::Ptrace).expect("own state");
            continue;
        }
        // After every call, refused ones included: the same state, every byte.
        let kernel = getregset(pid, l.user_size);
        if let Some(d) = first_difference(&kernel, &l.export(&fp)) {
            reap(pid);
            panic!(
                "#{n} (grown {grown}, {}): GETREGSET differs from our export: {d}",
                if k.is_ok() { "accepted" } else { "refused" }
            );
        }
    }
    reap(pid);
    for s in &shown {
        loud!("disagreement {s}");
    }
    Some((count, agree, disagree, accepted))
}

#[test]
fn setregset_accepts_what_import_accepts() {
    let Some(l) = Live::new() else {
        return;
    };
    let start = std::time::Instant::now();
    let mut runs = vec![(false, 0x7365_7472_6567_7331)];
    if l.all.intersects(l.cfg.policy().dynamic) {
        runs.push((true, 0x7365_7472_6567_7332));
    }
    let (mut n, mut agree, mut disagree, mut accepted) = (0, 0, 0, 0);
    let count = VERDICTS / runs.len();
    for (grown, seed) in runs {
        let Some((a, b, c, d)) = verdicts(&l, grown, seed, count) else {
            return;
        };
        loud!(
            "ptrace setregset ({}): {a} buffers, {b} agree, {c} disagree, {d} accepted by both",
            if grown {
                "child after its first TILEDATA use"
            } else {
                "child that never used AMX"
            }
        );
        (n, agree, disagree, accepted) = (n + a, agree + b, disagree + c, accepted + d);
    }
    loud!(
        "ptrace conformance: {n} buffers, {agree} agree, {disagree} disagree \
         ({accepted} accepted by both; verdict and errno compared, then GETREGSET against our export \
         over all {} bytes after every call; {:.1} s)",
        l.user_size,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(disagree, 0, "PTRACE_SETREGSET and import_abi disagree");
    assert!(n >= 10_000, "only {n} buffers");
    assert!(accepted > n / 20, "too few accepted buffers ({accepted})");
    // The errors import_abi gives for lengths are the ones ptrace gives.
    let e = UabiError::UnalignedLength { got: 1, unit: 8 };
    assert_eq!(e.errno(), libc::EINVAL);
}
