//! Helpers shared by the integration tests. Each test crate uses its own part.
//!
//! The offsets and the raw-CPUID sizes here are the tests' independent
//! reference: written from the SDM, never taken from the crate.

// Each test crate uses its own part of this module.
#![allow(dead_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::asm;
use std::fs;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::OnceLock;

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidSource, RecordedCpuid};
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Fpstate, Mode, Owner};
use xstate::insn::{Fault, Insn, XsaveUnit};
use xstate::layout::Layout;
use xstate::uabi;

// Offsets in every XSAVE area (SDM vol. 1 table 10-2 and 13.4.2).

/// MXCSR in the legacy region.
pub const MXCSR: usize = 24;
/// MXCSR_MASK in the legacy region.
pub const MXCSR_MASK: usize = 28;
/// XSTATE_BV, the first word of the XSAVE header.
pub const XSTATE_BV: usize = 512;
/// XCOMP_BV, the second word of the header.
pub const XCOMP_BV: usize = 520;
/// Start of the extended region: 512-byte legacy region + 64-byte header.
pub const EXTENDED: u32 = 576;

pub fn get_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
pub fn get_u64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
pub fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// xorshift64*: deterministic and seedable, so a failure reproduces. The seed
/// must not be zero.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// `layouts/`, the recorded CPUID dumps.
pub fn layouts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("layouts")
}

/// Every `*.txt` dump in `layouts/`, parsed once, sorted by file name.
pub fn dumps() -> &'static [(String, RecordedCpuid)] {
    static DUMPS: OnceLock<Vec<(String, RecordedCpuid)>> = OnceLock::new();
    DUMPS.get_or_init(|| {
        let mut v: Vec<_> = fs::read_dir(layouts_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let cpu = RecordedCpuid::parse(&fs::read_to_string(&p).unwrap())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                (name, cpu)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    })
}

/// One dump of `layouts/` by file name, with its enumeration.
pub fn load(name: &str) -> (RecordedCpuid, Enumeration) {
    let (_, cpu) = dumps()
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("layouts/{name}: no such dump"));
    let e = Enumeration::from_cpuid(cpu).unwrap_or_else(|err| panic!("{name}: {err}"));
    (cpu.clone(), e)
}

/// Indices of the set bits of `mask`.
pub fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |i| mask >> i & 1 != 0)
}

/// SDM vol. 1 13.4.2, standard format, read off raw CPUID: the end of the last
/// component i >= 2 of `mask` (EBX + EAX of subleaf i), at least 576.
pub fn std_size_raw(cpu: &(impl CpuidSource + ?Sized), mask: u64) -> u32 {
    bits(mask & !(1 << 63))
        .filter(|&i| i >= 2)
        .map(|i| {
            let r = cpu.cpuid(0xd, i);
            r.ebx + r.eax
        })
        .fold(EXTENDED, u32::max)
}

/// SDM vol. 1 13.4.3, compacted format, read literally off raw CPUID: the
/// extended region starts at 576; each component i >= 2 of `mask`, in index
/// order, sits right after the previous one, or at the next 64-byte boundary if
/// CPUID(0xD,i).ECX[1]. Returns (offset of each component, total size).
pub fn compacted_raw(cpu: &(impl CpuidSource + ?Sized), mask: u64) -> (Vec<(u32, u32)>, u32) {
    let mut offsets = Vec::new();
    let mut next = EXTENDED;
    for i in bits(mask & !(1 << 63)).filter(|&i| i >= 2) {
        let r = cpu.cpuid(0xd, i);
        let at = if r.ecx & 2 != 0 {
            next.next_multiple_of(64)
        } else {
            next
        };
        offsets.push((i, at));
        next = at + r.eax;
    }
    (offsets, next)
}

/// The compacted size of `mask` from raw CPUID (see [`compacted_raw`]).
pub fn cmp_size_raw(cpu: &(impl CpuidSource + ?Sized), mask: u64) -> u32 {
    compacted_raw(cpu, mask).1
}

/// The bytes [`paint_cet_s`] puts in a CET_S component of `len` bytes.
pub fn cet_s_pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| 0xc3 ^ (i as u8).wrapping_mul(29))
        .collect()
}

/// An [`XsaveUnit`] that "saves" [`cet_s_pattern`] into the guest-only CET_S
/// component at `range` and marks it in XSTATE_BV: supervisor state a user-mode
/// test cannot otherwise put into an fpstate.
struct Painter {
    range: Range<usize>,
}

impl XsaveUnit for Painter {
    fn save(&mut self, _: Insn, area: &mut [u8], _: XFeatures) -> Result<(), Fault> {
        area[self.range.clone()].copy_from_slice(&cet_s_pattern(self.range.len()));
        let bv = get_u64(area, XSTATE_BV) | XFeatures::CET_S.bits();
        put_u64(area, XSTATE_BV, bv);
        Ok(())
    }
    fn restore(&mut self, _: Insn, _: &[u8], _: XFeatures) -> Result<(), Fault> {
        Err(Fault::Ud)
    }
}

/// Put [`cet_s_pattern`] into `fp`'s CET_S component and XSTATE_BV\[12\], if
/// the fpstate holds CET_S; returns where its bytes are.
pub fn paint_cet_s(
    e: &Enumeration,
    cfg: &Configs,
    fp: &mut Fpstate<BoxedArea>,
) -> Option<Range<usize>> {
    let features = fp.info().features;
    if !features.contains(XFeatures::CET_S) {
        return None;
    }
    let range = Layout::compacted(e, features)
        .unwrap()
        .range_of(12)
        .unwrap();
    let mut p = Painter {
        range: range.clone(),
    };
    fp.save(&mut p, cfg, Mode::Supervisor).unwrap();
    Some(range)
}

// ---------------------------------------------------------------------------
// Tests that run XSAVE on the live CPU (`hw_oracle`, `sigframe`, `model_vs_hw`).

/// A line on the real stderr: the harness captures `eprintln!` and shows it
/// only on failure, and SKIP lines and figures must be seen on success too.
#[allow(unused_macros)] // not every test crate prints
macro_rules! loud {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
#[allow(unused_imports)]
pub(crate) use loud;

/// Two canaries, complements of each other: a byte (or header bit) that differs
/// between runs under the two is one the CPU or kernel did not write.
pub const CANARIES: [u8; 2] = [0xa5, 0x5a];

/// The pattern byte `k` of component `i` holds under `seed`: a multiplicative
/// hash of all three, so a component written at a wrong offset, or the wrong
/// component at a right one, shows; never equal to either canary.
pub fn pattern(seed: u64, i: u32, k: usize) -> u8 {
    let x =
        (seed ^ (u64::from(i) << 32) ^ k as u64 ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let p = (x >> 56) as u8;
    if CANARIES.contains(&p) { p ^ 0x0f } else { p }
}

/// x87 control word: invalid-operation exception unmasked, the others masked,
/// double precision, round up (not the init value 0x37f).
pub const FCW: u16 = 0x0a7e;
/// x87 status word: C3 and C0 set, TOP = 0, and an invalid-operation exception
/// pending (IE, ES and B, which mirrors ES). AMD CPUs save and restore FIP, FDP
/// and FOP only while an exception is pending (measured on Zen 4: zeros
/// otherwise, XSaveErPtr notwithstanding); with one pending every CPU keeps them,
/// so all x87 bytes can be checked exactly. No x87 instruction (the only thing
/// that would raise #MF) may run before the harness state is put back.
pub const FSW: u16 = 0xc181;

/// Write a loadable, non-init x87 state into `legacy[..160]`: [`FCW`], [`FSW`],
/// all eight tags valid, and `byte(k)` for FOP, FIP, FDP and the 80-bit
/// registers. Reserved bytes and MXCSR/MXCSR_MASK (24..32) are left alone.
pub fn x87_image(legacy: &mut [u8], byte: impl Fn(usize) -> u8) {
    legacy[0..2].copy_from_slice(&FCW.to_le_bytes());
    legacy[2..4].copy_from_slice(&FSW.to_le_bytes());
    legacy[4] = 0xff; // abridged tag word: all eight registers valid
    let fop = u16::from_le_bytes([byte(6), byte(7)]) & 0x7ff;
    legacy[6..8].copy_from_slice(&fop.to_le_bytes());
    // FIP and FDP: 40-bit values, canonical under any address width.
    for k in (8..13).chain(16..21) {
        legacy[k] = byte(k);
    }
    // ST0-ST7: 10 bytes of each 16-byte slot.
    for k in (32..160).filter(|k| (k - 32) % 16 < 10) {
        legacy[k] = byte(k);
    }
}

/// A 64-byte aligned byte area inside a plain `Vec` (no unsafe needed).
pub struct Area {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl Area {
    /// `len` bytes, all `fill`.
    pub fn new(len: usize, fill: u8) -> Self {
        let buf = vec![fill; len + 64];
        let off = buf.as_ptr().align_offset(64);
        assert!(off < 64);
        Self { buf, off, len }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
    pub fn ptr(&mut self) -> *mut u8 {
        self.bytes_mut().as_mut_ptr()
    }
}

// ---------------------------------------------------------------------------
// AMX permission and PKRU, for tests that load every XCR0 component.

/// `arch_prctl` codes (Linux's `asm/prctl.h`).
pub const ARCH_REQ_XCOMP_PERM: libc::c_int = 0x1023;
/// Guest permission, for KVM guests of this process.
pub const ARCH_REQ_XCOMP_GUEST_PERM: libc::c_int = 0x1025;
/// AMX TILEDATA, the component behind XFD.
pub const XTILEDATA: u32 = 18;

/// Ask Linux for permission to use (or, `guest`, to give KVM guests) the
/// dynamic component `index`. `Err(errno)` when refused (EOPNOTSUPP, EINVAL:
/// not supported here; EBUSY: the guest set is locked already).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub fn request_xcomp_perm(index: u32, guest: bool) -> Result<(), i32> {
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
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Standard-form byte range of component `i` (legacy ones included) from the
/// enumeration.
pub fn std_range(e: &Enumeration, i: u32) -> Range<usize> {
    let c = &e.components()[i as usize];
    c.std_offset as usize..(c.std_offset + c.size) as usize
}

/// The user components the live differentials (`sigframe`, `ptrace`) load
/// with values of their own; any other XCR0 component stays in its init state
/// and those tests say so.
pub const LOADED: XFeatures = XFeatures::X87
    .union(XFeatures::SSE)
    .union(XFeatures::AVX)
    .union(XFeatures::AVX512)
    .union(XFeatures::PKRU)
    .union(XFeatures::XTILE);

/// A random PKRU that keeps protection key 0 (every mapping's default key)
/// readable and writable, so the code touching the stack and heap never takes
/// SEGV_PKUERR; the other keys get random AD/WD bits.
pub fn pkru_keeping_key0(rng: &mut Rng) -> u32 {
    rng.next() as u32 & !0b11
}

/// A loadable TILECFG (palette 1, start_row 0): `tiles` tiles of 16 rows of 64
/// bytes (colsb at byte 16 + 2t, rows at byte 48 + t), everything else zero.
pub fn tilecfg_image(tiles: usize) -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = 1;
    for t in 0..tiles.min(8) {
        c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
        c[48 + t] = 16;
    }
    c
}

/// Apply one to three random mutations of the kinds Linux's user-ABI checks
/// look at (XSTATE_BV, XCOMP_BV, reserved header, MXCSR and its mask) to a
/// standard-form buffer of at least 576 bytes.
pub fn mutate_header(rng: &mut Rng, b: &mut [u8]) {
    for _ in 0..=rng.below(3) {
        match rng.below(10) {
            // A bit of XSTATE_BV, mostly among the known components.
            0 => {
                let bit = if rng.below(4) == 0 {
                    rng.below(64)
                } else {
                    rng.below(20)
                };
                b[XSTATE_BV + (bit / 8) as usize] ^= 1 << (bit % 8);
            }
            // Supervisor, unsupported or dynamic components, or bit 63.
            1 => {
                const BITS: [u64; 15] = [3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 63];
                let bit = BITS[rng.below(BITS.len() as u64) as usize];
                put_u64(b, XSTATE_BV, get_u64(b, XSTATE_BV) | 1 << bit);
            }
            // XCOMP_BV: any bit, bit 63 (compacted) most often.
            2 => {
                let bit = if rng.below(2) == 0 { 63 } else { rng.below(64) };
                b[XCOMP_BV + (bit / 8) as usize] ^= 1 << (bit % 8);
            }
            // Header reserved bytes 16..64.
            3 => {
                let bit = rng.below(48 * 8) as usize;
                b[528 + bit / 8] ^= 1 << (bit % 8);
            }
            // MXCSR: one bit, or a random value.
            4 => {
                let v = if rng.below(2) == 0 {
                    get_u32(b, MXCSR) ^ 1 << rng.below(32)
                } else {
                    rng.next() as u32
                };
                put_u32(b, MXCSR, v);
            }
            // MXCSR dead: no x87, SSE or AVX (the MXCSR users) in XSTATE_BV.
            5 => put_u64(b, XSTATE_BV, get_u64(b, XSTATE_BV) & !0b111),
            // MXCSR_MASK, which Linux stores but never checks.
            6 => put_u32(b, MXCSR_MASK, rng.next() as u32),
            // Any bit in the header.
            7 => {
                let bit = rng.below(64 * 8) as usize;
                b[XSTATE_BV + bit / 8] ^= 1 << (bit % 8);
            }
            // Any bit anywhere.
            _ => {
                let bit = rng.below(b.len() as u64 * 8) as usize;
                b[bit / 8] ^= 1 << (bit % 8);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Load a register image and enter the kernel with nothing in between
// (`sigframe`, `ptrace`).

macro_rules! load_then_raise {
    ($(#[$doc:meta])* $name:ident($($arg:ident),*), [$($raise:literal),+], $($operands:tt)*) => {
        $(#[$doc])*
        ///
        /// One `asm!` block: XSAVE of the harness state (mask `full`) into
        /// `harness`, XRSTOR of `image`, the kernel entry (the kernel writes the
        /// signal frame or shows a tracer these registers, and sigreturn or
        /// the tracer may replace them), XSAVE into `after` (the registers the
        /// task came back with), XRSTOR of `harness`. No compiler code runs between the load
        /// and the kernel entry, nor between the return and the XSAVE.
        ///
        /// # Safety
        /// OSXSAVE is set; `full` is within XCR0; `harness`, `image` and `after`
        /// are 64-byte aligned, standard-size for `full`; `image` is well formed
        /// (XCOMP_BV and header bytes 16..63 zero, XSTATE_BV within `full`, MXCSR
        /// valid) and `harness`'s header is zero; a handler for the signal (if
        /// any) touches only memory the caller allows.
        #[inline(never)]
        pub unsafe fn $name(harness: *mut u8, image: *const u8, after: *mut u8, full: u64 $(, $arg: u64)*) {
            // SAFETY: the caller guarantees what XSAVE/XRSTOR need. The block
            // writes memory (`harness`, `after`, and the handler writes statics),
            // so no `nomem`; the kernel runs the handler on the alternate stack,
            // so the block's own stack is not used; `shr` changes flags. EAX/EDX
            // are declared outputs (so no input lands in them), and every vector,
            // mask and x87 register is declared clobbered although the last
            // XRSTOR restores them.
            unsafe {
                asm!(
                    "mov eax, {full:e}",
                    "mov rdx, {full}",
                    "shr rdx, 32",
                    "xsave64 [{harness}]",
                    "xrstor64 [{image}]",
                    $($raise,)+
                    "mov eax, {full:e}",
                    "mov rdx, {full}",
                    "shr rdx, 32",
                    "xsave64 [{after}]",
                    "xrstor64 [{harness}]",
                    harness = in(reg) harness,
                    image = in(reg) image,
                    after = in(reg) after,
                    full = in(reg) full,
                    $($operands)*
                    out("rax") _,
                    out("rdx") _,
                    clobber_abi("C"),
                    options(nostack),
                );
            }
        }
    };
}

load_then_raise!(
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    /// `ud2`: #UD, SIGILL, the frame written on the way out of an exception
    /// (the handler steps RIP over the two-byte `ud2`).
    load_then_ud2(),
    ["ud2"],
);
load_then_raise!(
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    /// `tgkill(pid, tid, sig)`: a signal raised from a system call, with
    /// nothing between the load and the kernel entry (a signal frame written
    /// on the way back, or a stop a tracer inspects). `pid`/`tid` must be this
    /// process and thread; the system call clobbers RAX (declared), RCX and R11
    /// (declared below).
    load_then_tgkill(pid, tid, sig),
    ["mov eax, {nr}", "mov edx, {sig:e}", "syscall"],
    nr = const libc::SYS_tgkill,
    sig = in(reg) sig,
    in("rdi") pid,
    in("rsi") tid,
    out("rcx") _,
    out("r11") _,
);

/// One recorded dump with Linux's policy: its name, CPUID, enumeration and configs.
pub struct DumpSetup {
    pub name: String,
    pub cpu: RecordedCpuid,
    pub e: Enumeration,
    pub cfg: Configs,
}

/// Every dump in `layouts/`, enumerated and configured as Linux would.
pub fn linux_setups() -> Vec<DumpSetup> {
    dumps()
        .iter()
        .map(|(name, cpu)| {
            let e = Enumeration::from_cpuid(cpu).unwrap_or_else(|err| panic!("{name}: {err}"));
            let cfg =
                Configs::new(&e, &Policy::linux(&e)).unwrap_or_else(|err| panic!("{name}: {err}"));
            DumpSetup {
                name: name.clone(),
                cpu: cpu.clone(),
                e,
                cfg,
            }
        })
        .collect()
}

/// A host fpstate with every user component it holds in use: imported from a
/// standard-form buffer in a pattern (`(k * 29) | 1`) and MXCSR `mxcsr`.
pub fn primed_host(cfg: &Configs, mxcsr: u32) -> Fpstate<BoxedArea> {
    let mut fp = Fpstate::new_boxed(cfg, Owner::Host).expect("host fpstate");
    let user = fp.info().user_features;
    let mut b: Vec<u8> = (0..fp.info().user_size as usize)
        .map(|k| (k as u8).wrapping_mul(29) | 1)
        .collect();
    put_u32(&mut b, MXCSR, mxcsr);
    put_u32(&mut b, MXCSR_MASK, cfg.mxcsr_mask());
    b[XSTATE_BV..XSTATE_BV + 64].fill(0);
    put_u64(&mut b, XSTATE_BV, user.bits());
    uabi::import(cfg, &mut fp, &b).expect("primer");
    fp
}

/// Runs `import` on a freshly primed host fpstate (see [`primed_host`], MXCSR
/// 0x1f80) and checks it refuses with `want` and leaves every byte as it was.
pub fn assert_refused<T: std::fmt::Debug + PartialEq>(
    s: &DumpSetup,
    import: impl FnOnce(&mut Fpstate<BoxedArea>) -> Result<T, uabi::UabiError>,
    want: uabi::UabiError,
    what: &str,
) {
    let mut fp = primed_host(&s.cfg, 0x1f80);
    let before = fp.area().to_vec();
    let got = import(&mut fp);
    assert_eq!(got, Err(want), "{}: {what}", s.name);
    assert!(
        fp.area() == &before[..],
        "{}: {what}: the fpstate changed",
        s.name
    );
}

/// The fpstate's user state in the standard form, as `uabi::export` writes it.
pub fn exported(cfg: &Configs, fp: &Fpstate<BoxedArea>) -> Vec<u8> {
    let mut out = vec![0u8; fp.info().user_size as usize];
    let n = uabi::export(cfg, fp, fp.info().user_features, &mut out).expect("export");
    out.truncate(n);
    out
}

/// A standard-form buffer for `xstate_bv` laid out from the raw dump, every
/// component's bytes and the legacy region random.
pub fn std_buffer(cpu: &impl CpuidSource, xstate_bv: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut b = vec![0u8; std_size_raw(cpu, xstate_bv) as usize];
    rng.fill(&mut b[..512]);
    put_u64(&mut b, XSTATE_BV, xstate_bv);
    for i in bits(xstate_bv).filter(|&i| i >= 2) {
        let r = cpu.cpuid(0xd, i);
        rng.fill(&mut b[r.ebx as usize..(r.ebx + r.eax) as usize]);
    }
    b
}

/// `NT_X86_XSTATE` (Linux's `include/uapi/linux/elf.h`).
#[cfg(target_os = "linux")]
pub const NT_X86_XSTATE: libc::c_int = 0x202;

/// `ptrace(PTRACE_GETREGSET, pid, NT_X86_XSTATE)` into `len` bytes (the
/// stopped tracee's XSAVE state in the user-ABI format).
#[cfg(target_os = "linux")]
pub fn getregset(pid: libc::pid_t, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: `iov` describes `buf`, `len` writable bytes; the tracee is
    // stopped and traced by this thread.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, pid, NT_X86_XSTATE, &mut iov) };
    assert_eq!(
        r,
        0,
        "PTRACE_GETREGSET: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(iov.iov_len, len, "PTRACE_GETREGSET length");
    buf
}
