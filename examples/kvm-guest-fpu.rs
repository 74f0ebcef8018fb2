//! A KVM guest's FPU state end to end: the crate builds the guest's CPUID leaf
//! 0xD, KVM installs it, a tiny hand-assembled 64-bit guest enables its XCR0 with
//! XSETBV and loads registers, and the host reads them with `KVM_GET_XSAVE2`,
//! imports them into a guest fpstate, exports them, writes them back with
//! `KVM_SET_XSAVE` and lets the guest see new state put there the same way.
//!
//! Two guest programs, chosen by a probe guest whose first instruction is XSAVE:
//! - Native (KVM runs guest code on the CPU): XRSTOR of a host pattern, SSE, AVX
//!   and AVX-512 loads, XSAVE, XRSTOR of a second pattern; after the host's
//!   `KVM_SET_XSAVE`, XSAVE again.
//! - Emulated (KVM emulates the vCPU, as kvm_pvm does for a guest that is not a
//!   PVM kernel; its emulator has no XSAVE): XSETBV and MOVDQU loads, the patterns
//!   go in through `KVM_SET_XSAVE`, MOVDQU stores show what the guest sees. The
//!   probe's result is printed as a loud `SKIP` line.
//!
//! Every expected byte comes from outside the crate: the patterns are laid out by
//! the raw CPUID(0xD, i) offsets, the CPU (XSAVE) and KVM (its uabi copy) decide
//! where the registers land, and the crate's [`Layout`] must agree with them.
//!
//! Run: `cargo run --example kvm-guest-fpu`. Exit code 0 only if every check
//! held (or `/dev/kvm` is missing: `SKIP` on stderr); 1 with a one-line reason
//! otherwise. `tests/kvm_guest_fpu.rs` runs the same [`run`] and asserts each check.

use std::fmt::Write as _;
use std::process::ExitCode;

use kvm_bindings::{
    CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES, Xsave, kvm_cpuid_entry2,
    kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::{CpuidSource, LiveCpuid};
use xstate::enumerate::Enumeration;
use xstate::feature::name_of;
use xstate::fpstate::{Fpstate, Owner};
use xstate::guest::{GuestXsave, XsaveFlags, kvm_xsave_size};
use xstate::layout::{Form, Layout};
use xstate::perm::{PermKind, PermSet, ProcessPerms};
use xstate::uabi;

// ---------------------------------------------------------------------------
// Guest physical memory map (one 2 MiB slot, identity-mapped by one large page)
// ---------------------------------------------------------------------------

const MEM_SIZE: usize = 2 << 20;
/// The guest's code.
const CODE: u64 = 0x1000;
/// Operands of the SSE/AVX/AVX-512 loads.
const DATA: u64 = 0x2000;
/// Page tables: PML4, PDPT, PD.
const PML4: u64 = 0x3000;
/// First XSAVE area; the four areas follow at `AREA0 + n * span`.
const AREA0: u64 = 0x10000;
/// The port the guest writes to when phase 1 is done.
const PORT_PHASE1: u16 = 0x10;

/// XRSTOR source for phase 1 (host pattern P1).
const AREA_P1: usize = 0;
/// XSAVE destination after the guest's own loads.
const AREA_SAVED: usize = 1;
/// XRSTOR source whose state the native guest leaves for the host (pattern P2).
const AREA_P2: usize = 2;
/// Phase 2's output (XSAVE, or the MOVDQU stores), after the host's `KVM_SET_XSAVE`.
const AREA_PHASE2: usize = 3;

/// Offsets of the load operands inside `DATA`.
const XMM0_DATA: usize = 0x00;
const YMM1_DATA: usize = 0x10;
const ZMM17_DATA: usize = 0x40;
const K3_DATA: usize = 0x80;

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// One check the flow made.
#[derive(Debug)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The figures behind it.
    pub detail: String,
}

/// How the flow ended when no step failed outright.
#[derive(Debug)]
pub enum Outcome {
    /// `/dev/kvm` is missing or unusable: nothing could be checked.
    Skipped(String),
    /// The guest ran; every check, in order.
    Ran(Vec<Check>),
}

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) -> bool {
        let c = Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        };
        println!(
            "  [{}] {}: {}",
            if ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        );
        self.0.push(c);
        ok
    }
}

// ---------------------------------------------------------------------------
// Guest memory
// ---------------------------------------------------------------------------

/// An anonymous mapping handed to KVM as guest memory. The host touches it only
/// between `KVM_RUN`s (this thread runs the vCPU), so the guest never runs while
/// a copy below is in progress.
struct GuestMem {
    ptr: *mut u8,
    len: usize,
}

impl GuestMem {
    fn new(len: usize) -> Result<Self, String> {
        // SAFETY: an anonymous private mapping at an address the kernel picks: no
        // existing memory is affected; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {len} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self { ptr: p.cast(), len })
    }

    fn range(&self, gpa: u64, n: usize) -> usize {
        let start = usize::try_from(gpa).expect("guest address fits usize");
        assert!(
            start.checked_add(n).is_some_and(|end| end <= self.len),
            "guest range {gpa:#x}+{n:#x} outside memory"
        );
        start
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        let start = self.range(gpa, data.len());
        // SAFETY: `start..start + data.len()` is inside the mapping (checked by
        // `range`), `data` is host memory outside it, and the guest is not running.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(start), data.len()) };
    }

    fn read(&self, gpa: u64, n: usize) -> Vec<u8> {
        let start = self.range(gpa, n);
        let mut v = vec![0u8; n];
        // SAFETY: as in `write`, with source and destination swapped.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(start), v.as_mut_ptr(), n) };
        v
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`; the VM that
        // used it is dropped before this (declared after it in `run`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// ---------------------------------------------------------------------------
// The guest programs
// ---------------------------------------------------------------------------

/// Which guest program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Program {
    /// The guest itself executes XRSTOR and XSAVE: needs a KVM that runs guest
    /// code on the CPU (VMX, SVM).
    Native,
    /// Only instructions KVM's x86 emulator implements (XSETBV, MOVDQU, OUT, HLT),
    /// for a KVM that emulates this vCPU (kvm_pvm keeps a guest that is not a
    /// PVM-enlightened kernel in its emulated "non-PVM mode").
    Emulated,
}

fn imm32(v: u64) -> [u8; 4] {
    u32::try_from(v).expect("32-bit immediate").to_le_bytes()
}

/// `mov ebx, imm32` (B8+rd; zero-extends into RBX): every memory operand below
/// is `[rbx]` or `[rbx + disp]`, so no RIP-relative or SIB encoding is needed.
fn mov_ebx(c: &mut Vec<u8>, v: u64) {
    c.push(0xbb);
    c.extend(imm32(v));
}

/// XSETBV with ECX = 0: XCR0 = EDX:EAX = `xcr0`.
fn xsetbv(c: &mut Vec<u8>, xcr0: XFeatures) {
    c.extend([0x31, 0xc9]); // xor ecx, ecx        (31 /r, ModRM 11 001 001)
    c.push(0xb8); // mov eax, imm32       (B8+rd): XCR0[31:0]
    c.extend(imm32(xcr0.bits() & 0xffff_ffff));
    c.push(0xba); // mov edx, imm32       (BA = B8+2): XCR0[63:32]
    c.extend(imm32(xcr0.bits() >> 32));
    c.extend([0x0f, 0x01, 0xd1]); // xsetbv  (0F 01 D1)
}

/// The guest, hand-assembled for 64-bit mode (every encoding checked against
/// `llvm-mc -triple=x86_64 -show-encoding` and the SDM's opcode maps). Phase 1 ends
/// with `out 0x10, al`, phase 2 (after the host's `KVM_SET_XSAVE`) with `hlt`.
/// Loads of registers XCR0 does not enable are left out (they would #UD).
fn guest_code(program: Program, xcr0: XFeatures, area: impl Fn(usize) -> u64) -> Vec<u8> {
    let mut c = Vec::new();
    xsetbv(&mut c, xcr0);
    match program {
        Program::Native => {
            // RFBM = EDX:EAX = all ones: every component XCR0 enables.
            c.extend([0xb8, 0xff, 0xff, 0xff, 0xff]); // mov eax, 0xffffffff
            c.extend([0xba, 0xff, 0xff, 0xff, 0xff]); // mov edx, 0xffffffff
            mov_ebx(&mut c, area(AREA_P1));
            c.extend([0x48, 0x0f, 0xae, 0x2b]); // xrstor64 [rbx] (REX.W 0F AE /5, ModRM 00 101 011)
            mov_ebx(&mut c, DATA);
            // movdqu xmm0, [rbx]: F3 0F 6F /r, ModRM 00 000 011. Legacy SSE: the
            // upper bits of YMM0/ZMM0 keep what XRSTOR loaded.
            c.extend([0xf3, 0x0f, 0x6f, 0x03]);
            if xcr0.contains(XFeatures::AVX) {
                // vmovdqu ymm1, [rbx+0x10]: VEX.256.F3.0F.WIG 6F /r in the 2-byte
                // VEX C5; FE = R̄ 1, vvvv̄ 1111, L 1, pp 10 (F3); ModRM 01 001 011,
                // disp8 0x10. VEX.256 zeroes ZMM1[511:256].
                c.extend([0xc5, 0xfe, 0x6f, 0x4b, YMM1_DATA as u8]);
            }
            if xcr0.contains(XFeatures::AVX512) {
                // vmovdqu64 zmm17, [rbx+0x40]: EVEX.512.F3.0F.W1 6F /r. P0 E1 = R̄ 1,
                // X̄ 1, B̄ 1, R̄' 0 (register 17 = 1_0001), mm 01; P1 FE = W 1,
                // vvvv̄ 1111, 1, pp 10; P2 48 = z 0, L'L 10 (512 bits), b 0, V̄' 1,
                // aaa 000; ModRM 01 001 011; disp8 01 scaled by N = 64 to 0x40.
                c.extend([0x62, 0xe1, 0xfe, 0x48, 0x6f, 0x4b, 0x01]);
                // kmovw k3, [rbx+0x80]: VEX.L0.0F.W0 90 /r; C5 F8 = R̄ 1, vvvv̄ 1111,
                // L 0, pp 00; ModRM 10 011 011 and disp32 0x80 (0x80 is not a
                // signed disp8). K3[63:16] become 0.
                c.extend([0xc5, 0xf8, 0x90, 0x9b]);
                c.extend(imm32(K3_DATA as u64));
            }
            mov_ebx(&mut c, area(AREA_SAVED));
            c.extend([0x48, 0x0f, 0xae, 0x23]); // xsave64 [rbx] (REX.W 0F AE /4, ModRM 00 100 011)
            mov_ebx(&mut c, area(AREA_P2));
            c.extend([0x48, 0x0f, 0xae, 0x2b]); // xrstor64 [rbx]
            c.extend([0xe6, PORT_PHASE1 as u8]); // out 0x10, al (E6 ib)
            mov_ebx(&mut c, area(AREA_PHASE2));
            c.extend([0x48, 0x0f, 0xae, 0x23]); // xsave64 [rbx]
        }
        Program::Emulated => {
            mov_ebx(&mut c, DATA);
            c.extend([0xf3, 0x0f, 0x6f, 0x03]); // movdqu xmm0, [rbx]      (F3 0F 6F /r)
            c.extend([0xf3, 0x0f, 0x6f, 0x4b, YMM1_DATA as u8]); // movdqu xmm1, [rbx+0x10]
            c.extend([0xe6, PORT_PHASE1 as u8]); // out 0x10, al (E6 ib)
            mov_ebx(&mut c, area(AREA_PHASE2));
            for i in 0..8u8 {
                // movdqu [rbx + 16*i], xmm_i: F3 0F 7F /r, ModRM 01 iii 011, disp8.
                c.extend([0xf3, 0x0f, 0x7f, 0x43 | i << 3, 16 * i]);
            }
        }
    }
    c.push(0xf4); // hlt
    c
}

/// Identity-map the first 2 MiB with one large page (PML4 -> PDPT -> PD).
fn page_tables(mem: &GuestMem) {
    const P_RW: u64 = 0b11; // present, writable
    const PS: u64 = 1 << 7; // 2 MiB page
    let (pdpt, pd) = (PML4 + 0x1000, PML4 + 0x2000);
    mem.write(PML4, &(pdpt | P_RW).to_le_bytes());
    mem.write(pdpt, &(pd | P_RW).to_le_bytes());
    mem.write(pd, &(P_RW | PS).to_le_bytes());
}

/// Long mode at CPL 0, flat segments, SSE and XSAVE enabled, RIP at `CODE` (no
/// GDT or IDT: an exception triple-faults, which KVM reports as a shutdown).
fn long_mode(vcpu: &VcpuFd) -> Result<(), String> {
    let mut s = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    let seg = |selector, type_, l, db| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        ..Default::default()
    };
    s.cs = seg(0x8, 0xb, 1, 0); // execute/read, accessed, 64-bit
    let data = seg(0x10, 0x3, 0, 1); // read/write, accessed
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    // CR0: PE | MP | ET | NE | WP | PG (EM and TS clear: x87 and SSE usable).
    s.cr0 = 1 | 1 << 1 | 1 << 4 | 1 << 5 | 1 << 16 | 1 << 31;
    // CR4: PAE | OSFXSR | OSXMMEXCPT | OSXSAVE (bit 18: XSETBV and XSAVE legal).
    s.cr4 = 1 << 5 | 1 << 9 | 1 << 10 | 1 << 18;
    s.cr3 = PML4;
    s.efer = 1 << 8 | 1 << 10; // LME | LMA
    vcpu.set_sregs(&s)
        .map_err(|e| format!("KVM_SET_SREGS (long mode, CR4.OSXSAVE): {e}"))?;
    let mut r = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    r.rip = CODE;
    r.rflags = 2;
    vcpu.set_regs(&r).map_err(|e| format!("KVM_SET_REGS: {e}"))
}

/// Where the guest stopped.
enum Stop {
    Port(u16),
    Halt,
}

/// Why `KVM_RUN` did not reach a stop.
enum RunError {
    /// KVM tried to emulate an instruction its emulator lacks.
    Emulation {
        rip: u64,
        bytes: Vec<u8>,
    },
    Other(String),
}

fn run_until_stop(vcpu: &mut VcpuFd) -> Result<Stop, RunError> {
    for _ in 0..64 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) => return Ok(Stop::Port(port)),
            Ok(VcpuExit::Hlt) => return Ok(Stop::Halt),
            Ok(VcpuExit::Intr) => continue,
            Ok(VcpuExit::Shutdown) => {
                let rip = vcpu.get_regs().map_or(0, |r| r.rip);
                return Err(RunError::Other(format!(
                    "guest triple-faulted at RIP {rip:#x} (an instruction raised an exception)"
                )));
            }
            Ok(VcpuExit::InternalError) => {
                let rip = vcpu.get_regs().map_or(0, |r| r.rip);
                // SAFETY: on KVM_EXIT_INTERNAL_ERROR, KVM fills the `internal` member
                // of the exit union (plain integers, any bit pattern is valid).
                let i = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                if i.suberror != kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                    return Err(RunError::Other(format!(
                        "KVM internal error {} at RIP {rip:#x}",
                        i.suberror
                    )));
                }
                // With KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES (data[0]
                // bit 0), data[1] starts with the length and the bytes follow.
                let raw: Vec<u8> = i.data[1..].iter().flat_map(|w| w.to_le_bytes()).collect();
                let bytes = if i.ndata >= 2 && i.data[0] & 1 != 0 {
                    raw[1..1 + usize::from(raw[0]).min(15)].to_vec()
                } else {
                    Vec::new()
                };
                return Err(RunError::Emulation { rip, bytes });
            }
            Ok(other) => return Err(RunError::Other(format!("unexpected vCPU exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(RunError::Other(format!("KVM_RUN: {e}"))),
        }
    }
    Err(RunError::Other(
        "the guest kept exiting without reaching its stop".into(),
    ))
}

impl From<RunError> for String {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Emulation { rip, bytes } => {
                format!(
                    "KVM could not emulate the instruction at RIP {rip:#x} (bytes {bytes:02x?})"
                )
            }
            RunError::Other(s) => s,
        }
    }
}

// ---------------------------------------------------------------------------
// Patterns and comparisons (SDM layout rules over raw CPUID, no crate code)
// ---------------------------------------------------------------------------

/// A deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
    }
    fn fill(&mut self, b: &mut [u8]) {
        b.iter_mut().for_each(|x| *x = self.byte());
    }
}

/// CPUID(0xD, i) for a component: (offset, size) in the standard form.
fn raw_component(i: u32) -> (usize, usize) {
    let r = LiveCpuid.cpuid(0xd, i);
    (r.ebx as usize, r.eax as usize)
}

/// The standard size for `mask` from the raw subleaves.
fn raw_std_size(mask: XFeatures) -> usize {
    mask.indices()
        .filter(|&i| i >= 2)
        .map(|i| {
            let (o, s) = raw_component(i);
            o + s
        })
        .fold(576, usize::max)
}

/// A standard-form area with XSTATE_BV = `bv`: valid x87 control words (FCW
/// `fcw`, all eight registers tagged valid, FOP/FIP/FDP zero because AMD saves them
/// only with an exception pending), MXCSR `mxcsr`, random registers, random bytes
/// in each extended component at its raw CPUID offset, zero elsewhere, except
/// where the architecture gives bytes a meaning: PKRU is a 4-byte register
/// (random, but protection key 0 stays readable and writable) followed by
/// reserved bytes Linux exports as zero, and TILECFG is a loadable
/// configuration (palette 1, eight tiles of 16 rows of 64 bytes: colsb at byte
/// 16 + 2t, rows at 48 + t), so every TILEDATA byte is register state.
fn pattern(bv: XFeatures, size: usize, seed: u64, fcw: u16, mxcsr: u32) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut b = vec![0u8; size];
    b[0..2].copy_from_slice(&fcw.to_le_bytes());
    b[4] = 0xff; // abridged FTW: ST0-ST7 valid
    b[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    for st in 0..8 {
        let at = 32 + 16 * st;
        rng.fill(&mut b[at..at + 10]); // 80-bit register, 6 reserved bytes stay 0
    }
    rng.fill(&mut b[160..416]); // XMM0-XMM15
    b[512..520].copy_from_slice(&bv.bits().to_le_bytes());
    for i in bv.indices().filter(|&i| i >= 2) {
        let (o, s) = raw_component(i);
        match i {
            9 => {
                rng.fill(&mut b[o..o + 4]);
                b[o] &= !0b11; // key 0: access and write allowed
            }
            17 => {
                b[o] = 1;
                for t in 0..8 {
                    b[o + 16 + 2 * t..o + 18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
                    b[o + 48 + t] = 16;
                }
            }
            _ => rng.fill(&mut b[o..o + s]),
        }
    }
    b
}

/// The bytes of component `i` the architecture defines, as ranges of a
/// standard-form area laid out by `layout`: for x87 FCW, FSW, abridged FTW and the
/// 80 bits of each register (not FOP/FIP/FDP, see [`pattern`]); MXCSR goes with
/// SSE; every extended component whole.
fn defined_ranges(layout: &Layout, i: u32) -> Vec<std::ops::Range<usize>> {
    match i {
        0 => std::iter::once(0..5)
            .chain((0..8).map(|st| 32 + 16 * st..32 + 16 * st + 10))
            .collect(),
        1 => vec![24..28, 160..416],
        _ => layout.range_of(i).into_iter().collect(),
    }
}

/// Component-by-component comparison of `got` with `want` over the defined bytes
/// of the components in `mask`; names the first differing byte of each component.
fn compare(layout: &Layout, mask: XFeatures, got: &[u8], want: &[u8]) -> Vec<String> {
    let mut bad = Vec::new();
    for i in mask.indices() {
        for r in defined_ranges(layout, i) {
            if let Some(k) = r.clone().find(|&k| got.get(k) != want.get(k)) {
                bad.push(format!(
                    "{} byte {k:#x}: got {:02x?} want {:02x?}",
                    name_of(i),
                    got.get(k),
                    want.get(k)
                ));
                break;
            }
        }
    }
    bad
}

fn xstate_bv(area: &[u8]) -> XFeatures {
    XFeatures::from_bits_retain(u64::from_le_bytes(area[512..520].try_into().unwrap()))
}

fn summary(bad: &[String]) -> String {
    if bad.is_empty() {
        "every defined byte matches".into()
    } else {
        bad.join("; ")
    }
}

// ---------------------------------------------------------------------------
// KVM_GET/SET_XSAVE with the post-5.17 flexible array
// ---------------------------------------------------------------------------

/// A zeroed `kvm_xsave` of `size` bytes (KVM_CAP_XSAVE2, at least 4096).
fn new_xsave(size: usize) -> Result<Xsave, String> {
    let fam = size.saturating_sub(4096).div_ceil(4);
    Xsave::new(fam).map_err(|e| format!("kvm_xsave of {size} bytes: {e:?}"))
}

fn xsave_bytes(x: &Xsave) -> Vec<u8> {
    let region = x.as_fam_struct_ref().xsave.region.iter();
    region
        .chain(x.as_slice())
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

fn xsave_from(bytes: &[u8], size: usize) -> Result<Xsave, String> {
    let mut x = new_xsave(size)?;
    let mut words = bytes
        .chunks(4)
        .map(|c| c.iter().rev().fold(0u32, |w, &b| w << 8 | u32::from(b)));
    {
        // SAFETY: only the fixed `region` array is written; the FAM length is not
        // touched, so the wrapper's length invariant holds.
        let region = &mut unsafe { x.as_mut_fam_struct() }.xsave.region;
        region
            .iter_mut()
            .zip(words.by_ref())
            .for_each(|(w, v)| *w = v);
    }
    x.as_mut_slice()
        .iter_mut()
        .zip(words)
        .for_each(|(w, v)| *w = v);
    Ok(x)
}

fn get_xsave(vcpu: &VcpuFd, size: usize) -> Result<Vec<u8>, String> {
    let mut x = new_xsave(size)?;
    // SAFETY: `x` holds `size` bytes, KVM_CAP_XSAVE2's value (or 4096 when the
    // capability is absent and KVM_GET_XSAVE2 behaves as KVM_GET_XSAVE), and no
    // feature is enabled for the process after the size was read.
    unsafe { vcpu.get_xsave2(&mut x) }.map_err(|e| format!("KVM_GET_XSAVE2: {e}"))?;
    Ok(xsave_bytes(&x))
}

fn set_xsave(vcpu: &VcpuFd, bytes: &[u8], size: usize) -> Result<(), String> {
    let x = xsave_from(bytes, size)?;
    // SAFETY: as in `get_xsave`: `x` holds `size` bytes, all KVM reads.
    unsafe { vcpu.set_xsave2(&x) }.map_err(|e| format!("KVM_SET_XSAVE: {e}"))
}

// ---------------------------------------------------------------------------
// The flow
// ---------------------------------------------------------------------------

/// What every VM of the flow shares: the host's facts and the guest's masks.
struct Host {
    kvm: Kvm,
    e: Enumeration,
    cfg: Configs,
    perm: PermSet,
    supported: CpuId,
    xcr0: XFeatures,
    flags: XsaveFlags,
}

/// A VM with `mem` as its memory and one vCPU in long mode running `code`.
struct Guest {
    // Field order is drop order: the vCPU and VM go before the memory they use.
    vcpu: VcpuFd,
    _vm: VmFd,
    mem: GuestMem,
}

impl Host {
    /// Install the synthesized CPUID. Returns CPUID(0xD,1).EAX as KVM kept it.
    fn install(&self, vcpu: &VcpuFd, g: &GuestXsave) -> Result<u32, String> {
        let mut entries: Vec<kvm_cpuid_entry2> = self
            .supported
            .as_slice()
            .iter()
            .filter(|x| x.function != 0xd)
            .copied()
            .collect();
        entries.extend(g.subleaves().map(|(index, r)| kvm_cpuid_entry2 {
            function: 0xd,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
            ..Default::default()
        }));
        let table = CpuId::from_entries(&entries).map_err(|err| format!("CpuId: {err:?}"))?;
        vcpu.set_cpuid2(&table)
            .map_err(|err| format!("KVM_SET_CPUID2 refused the synthesized leaf: {err}"))?;
        Ok(kvm_leaf(vcpu, 1)?.eax)
    }

    fn guest_xsave(&self) -> Result<GuestXsave, String> {
        GuestXsave::new(
            &self.e,
            &self.perm,
            self.xcr0,
            XFeatures::empty(),
            self.flags,
        )
        .map_err(|err| format!("GuestXsave::new: {err}"))
    }

    /// A VM whose vCPU has our CPUID, is in long mode and will run `code`.
    fn guest(&self, code: &[u8]) -> Result<Guest, String> {
        let mem = GuestMem::new(MEM_SIZE)?;
        let vm = self
            .kvm
            .create_vm()
            .map_err(|err| format!("KVM_CREATE_VM: {err}"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.ptr as u64,
            flags: 0,
        };
        // SAFETY: the region is `mem`'s whole mapping, which lives in the same
        // `Guest` as `vm` and is dropped after it.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|err| format!("KVM_SET_USER_MEMORY_REGION: {err}"))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|err| format!("KVM_CREATE_VCPU: {err}"))?;
        self.install(&vcpu, &self.guest_xsave()?)?;
        mem.write(CODE, code);
        page_tables(&mem);
        long_mode(&vcpu)?;
        Ok(Guest { vcpu, _vm: vm, mem })
    }
}

fn kvm_leaf(vcpu: &VcpuFd, subleaf: u32) -> Result<kvm_cpuid_entry2, String> {
    Ok(vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(|err| format!("KVM_GET_CPUID2: {err}"))?
        .as_slice()
        .iter()
        .find(|x| x.function == 0xd && x.index == subleaf)
        .copied()
        .unwrap_or_default())
}

/// Does this KVM run guest code on the CPU? A guest whose only instruction after
/// entry is an XSAVE (legal at reset: XCR0 = x87) tells: it halts if the CPU ran
/// it, and KVM reports an emulation failure if its instruction emulator had to.
fn guest_runs_natively(host: &Host) -> Result<bool, String> {
    let mut code = Vec::new();
    c_xsave_probe(&mut code);
    let mut guest = host.guest(&code)?;
    match run_until_stop(&mut guest.vcpu) {
        Ok(Stop::Halt) => Ok(true),
        Ok(Stop::Port(p)) => Err(format!("probe guest wrote port {p:#x}")),
        Err(RunError::Emulation { rip, bytes }) if rip == CODE + PROBE_XSAVE_AT => {
            eprintln!(
                "SKIP kvm-guest-fpu guest XSAVE/XRSTOR: KVM emulates this vCPU and its emulator has no XSAVE \
                 (failed at RIP {rip:#x}, bytes {bytes:02x?}; kvm_pvm loaded: {}); the guest uses \
                 emulated XSETBV and MOVDQU instead, the state travels through KVM_SET_XSAVE",
                std::path::Path::new("/sys/module/kvm_pvm").exists()
            );
            Ok(false)
        }
        Err(err) => Err(String::from(err)),
    }
}

/// Offset of the probe's XSAVE.
const PROBE_XSAVE_AT: u64 = 15;

fn c_xsave_probe(c: &mut Vec<u8>) {
    c.extend([0xb8, 0xff, 0xff, 0xff, 0xff]); // mov eax, 0xffffffff
    c.extend([0xba, 0xff, 0xff, 0xff, 0xff]); // mov edx, 0xffffffff
    mov_ebx(c, AREA0);
    debug_assert_eq!(c.len() as u64, PROBE_XSAVE_AT);
    c.extend([0x48, 0x0f, 0xae, 0x23]); // xsave64 [rbx]
    c.push(0xf4); // hlt
}

/// Run the whole flow. `Err` is a step that could not be carried out (an ioctl
/// failed, the guest faulted): a one-line reason.
pub fn run() -> Result<Outcome, String> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => return Ok(Outcome::Skipped(format!("cannot open /dev/kvm ({e})"))),
    };
    let mut checks = Checks::default();

    // --- The host ---
    let e = Enumeration::from_cpuid(&LiveCpuid).map_err(|err| format!("enumeration: {err}"))?;
    let cfg = Configs::new(&e, &Policy::linux(&e)).map_err(|err| format!("configs: {err}"))?;
    let mut perms = ProcessPerms::new(&cfg);
    let amx =
        LiveCpuid.cpuid(7, 0).edx >> 24 & 1 != 0 && e.xcr0_supported().contains(XFeatures::XTILE);
    if amx {
        const ARCH_REQ_XCOMP_GUEST_PERM: libc::c_long = 0x1025;
        // SAFETY: arch_prctl with integer arguments only changes this process's
        // permission state; the result is checked.
        let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_GUEST_PERM, 18) };
        if r != 0 {
            return Err(format!(
                "ARCH_REQ_XCOMP_GUEST_PERM(18): {}",
                std::io::Error::last_os_error()
            ));
        }
        perms
            .request(&cfg, PermKind::Guest, 18, |_| true)
            .map_err(|err| {
                format!("the model refused the guest AMX permission Linux granted: {err}")
            })?;
        println!("AMX: ARCH_REQ_XCOMP_GUEST_PERM(18) granted");
    } else {
        eprintln!(
            "SKIP kvm-guest-fpu AMX: CPUID(7,0).EDX[24] (AMX-TILE) is clear: no ARCH_REQ_XCOMP_GUEST_PERM, no tile state"
        );
    }
    println!(
        "host: XCR0 mask {:#x}, IA32_XSS mask {:#x}, user features {:#x}, XSAVE extensions {:#x}",
        e.xcr0_supported().bits(),
        e.xss_supported().bits(),
        cfg.user().max_features.bits(),
        XsaveFlags::of(&e).bits()
    );

    // --- The guest's leaf 0xD: the host's user features, as far as KVM goes ---
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|err| format!("KVM_GET_SUPPORTED_CPUID: {err}"))?;
    let kvm_sub = |i: u32| {
        supported
            .as_slice()
            .iter()
            .find(|x| x.function == 0xd && x.index == i)
            .copied()
            .unwrap_or_default()
    };
    let (k0, k1) = (kvm_sub(0), kvm_sub(1));
    let kvm_xcr0 = XFeatures::from_bits_retain(u64::from(k0.edx) << 32 | u64::from(k0.eax));
    let perm = *perms.get(PermKind::Guest);
    let mut xcr0 = cfg.user().max_features & kvm_xcr0 & perm.features;
    for group in [
        XFeatures::BNDREGS | XFeatures::BNDCSR,
        XFeatures::AVX512,
        XFeatures::XTILE,
    ] {
        if !xcr0.contains(group) {
            xcr0 -= group;
        }
    }
    if xcr0 != cfg.user().max_features {
        println!(
            "NOTE guest XCR0 {:#x} < host user features {:#x} (KVM supports {:#x})",
            xcr0.bits(),
            cfg.user().max_features.bits(),
            kvm_xcr0.bits()
        );
    }
    let flags = XsaveFlags::from_bits_truncate(k1.eax) & XsaveFlags::of(&e);
    let mut host = Host {
        kvm,
        e,
        cfg,
        perm,
        supported,
        xcr0,
        flags,
    };
    // kvm_pvm reports no XSAVE extensions as supported and then forces its own
    // into the table: follow what KVM keeps (tests/guest.rs does the same).
    let kvm_size = {
        let vm = host
            .kvm
            .create_vm()
            .map_err(|err| format!("KVM_CREATE_VM: {err}"))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|err| format!("KVM_CREATE_VCPU: {err}"))?;
        let kept = host.install(&vcpu, &host.guest_xsave()?)?;
        if kept != host.flags.bits() {
            println!(
                "NOTE KVM rewrote CPUID(0xD,1).EAX {:#x} -> {kept:#x}: re-synthesizing with those extensions",
                host.flags.bits()
            );
            host.flags = XsaveFlags::from_bits_truncate(kept) & XsaveFlags::of(&host.e);
        }
        // KVM's uabi size: max(4096, KVM_CAP_XSAVE2).
        kvm_xsave_size(vm.check_extension_int(Cap::Xsave2))
    };
    let mut g = host.guest_xsave()?;
    let (e, cfg) = (&host.e, &host.cfg);
    checks.check(
        "KVM_SET_CPUID2 takes the synthesized leaf 0xD",
        true,
        format!(
            "guest XCR0 mask {:#x}, extensions {:#x}, largest standard area {}",
            xcr0.bits(),
            host.flags.bits(),
            g.max_standard_size()
        ),
    );

    // --- Layouts: the crate's against raw CPUID ---
    let std_layout = Layout::standard(e, xcr0).map_err(|err| format!("Layout: {err}"))?;
    let size = raw_std_size(xcr0);
    let bad: Vec<u32> = xcr0
        .indices()
        .filter(|&i| i >= 2)
        .filter(|&i| {
            let (o, s) = raw_component(i);
            std_layout.range_of(i) != Some(o..o + s)
        })
        .collect();
    checks.check(
        "standard Layout = raw CPUID(0xD, i) offsets and sizes",
        bad.is_empty() && std_layout.size() as usize == size,
        format!(
            "size {} (raw {size}), mismatched components {bad:?}",
            std_layout.size()
        ),
    );
    checks.check(
        "KVM_CAP_XSAVE2 covers the guest's largest standard area",
        kvm_size >= g.max_standard_size() as usize,
        format!("KVM_CAP_XSAVE2 = {kvm_size}"),
    );
    if size > kvm_size {
        return Err(format!(
            "standard size {size} exceeds KVM_CAP_XSAVE2 {kvm_size}"
        ));
    }

    // --- The guest ---
    let program = if guest_runs_natively(&host)? {
        Program::Native
    } else {
        Program::Emulated
    };
    let span = size.next_multiple_of(0x1000) as u64;
    let area = |n: usize| AREA0 + n as u64 * span;
    // Tile configuration state must hold a valid palette for XRSTOR (random bytes
    // #GP), so the patterns leave AMX in its init state (XSTATE_BV bits clear).
    let bv = xcr0 - XFeatures::XTILE;
    let p1 = pattern(bv, size, 0x5eed_0001, 0x027f, 0x9fc0);
    let p2 = pattern(bv, size, 0x5eed_0002, 0x0b7f, 0x3f80);
    let p3 = pattern(bv, size, 0x5eed_0003, 0x007f, 0x5f80);
    let mut operands = [0u8; 0x82];
    Rng(0x0da7a).fill(&mut operands);
    let code = guest_code(program, xcr0, area);
    let mut guest = host.guest(&code)?;
    guest.mem.write(DATA, &operands);
    guest.mem.write(area(AREA_P1), &p1);
    guest.mem.write(area(AREA_P2), &p2);
    println!(
        "guest: {program:?} program, {} bytes of code, XSAVE areas at {AREA0:#x} + n * {span:#x}",
        code.len()
    );
    let vcpu = &mut guest.vcpu;

    // --- Phase 1 ---
    match run_until_stop(vcpu)? {
        Stop::Port(PORT_PHASE1) => {}
        _ => return Err("phase 1 did not end at its OUT".into()),
    }
    let xcrs = vcpu
        .get_xcrs()
        .map_err(|err| format!("KVM_GET_XCRS: {err}"))?;
    let guest_xcr0 = xcrs.xcrs[..xcrs.nr_xcrs as usize]
        .iter()
        .find(|x| x.xcr == 0)
        .map_or(0, |x| x.value);
    checks.check(
        "the guest's XSETBV took: KVM_GET_XCRS shows its XCR0",
        guest_xcr0 == xcr0.bits(),
        format!("XCR0 {guest_xcr0:#x}"),
    );
    g.set_xcr0(xcr0).map_err(|err| format!("set_xcr0: {err}"))?;
    let kvm_ebx0 = kvm_leaf(vcpu, 0)?.ebx;
    checks.check(
        "after the guest's XSETBV, KVM's CPUID(0xD,0).EBX = GuestXsave's = raw size",
        kvm_ebx0 == g.leaf(0).ebx && kvm_ebx0 as usize == size,
        format!("KVM {kvm_ebx0}, GuestXsave {}, raw {size}", g.leaf(0).ebx),
    );

    let p2_check = match program {
        Program::Native => {
            // What the guest's own XSAVE wrote: P1 overlaid with its loads.
            let saved = guest.mem.read(area(AREA_SAVED), size);
            let mut want = p1.clone();
            let off = |i: u32| raw_component(i).0;
            want[160..176].copy_from_slice(&operands[XMM0_DATA..XMM0_DATA + 16]);
            if xcr0.contains(XFeatures::AVX) {
                let avx = off(2);
                want[176..192].copy_from_slice(&operands[YMM1_DATA..YMM1_DATA + 16]);
                want[avx + 16..avx + 32].copy_from_slice(&operands[YMM1_DATA + 16..YMM1_DATA + 32]);
            }
            if xcr0.contains(XFeatures::AVX512) {
                let (k, zh, h16) = (off(5), off(6), off(7));
                want[zh + 32..zh + 64].fill(0); // VEX.256 zeroed ZMM1[511:256]
                want[k + 24..k + 32].fill(0); // K3 zero-extended
                want[k + 24..k + 26].copy_from_slice(&operands[K3_DATA..K3_DATA + 2]);
                want[h16 + 64..h16 + 128].copy_from_slice(&operands[ZMM17_DATA..ZMM17_DATA + 64]);
            }
            let bad = compare(&std_layout, bv, &saved, &want);
            checks.check(
                "guest XSAVE after XRSTOR(P1) and movdqu/vmovdqu/vmovdqu64/kmovw: registers at the Layout's offsets",
                bad.is_empty() && xstate_bv(&saved) == bv,
                format!("XSTATE_BV {:#x}; {}", xstate_bv(&saved).bits(), summary(&bad)),
            );
            // KVM_GET_XSAVE2 below: the state the guest's last XRSTOR left.
            "KVM_GET_XSAVE2 holds P2 (the guest's last XRSTOR) at the Layout's offsets"
        }
        Program::Emulated => {
            let got0 = get_xsave(vcpu, kvm_size)?;
            let sse = std_layout.range_of(1).map_or(160, |r| r.start).max(160);
            let xmm01 = &operands[XMM0_DATA..XMM0_DATA + 32];
            checks.check(
                "KVM_GET_XSAVE2 holds the guest's MOVDQU loads in XMM0-XMM1 at the SSE offset",
                got0.get(sse..sse + 32) == Some(xmm01) && xstate_bv(&got0).contains(XFeatures::SSE),
                format!(
                    "XMM0-1 at {sse}: {}, XSTATE_BV {:#x}",
                    if got0.get(sse..sse + 32) == Some(xmm01) {
                        "match"
                    } else {
                        "DIFFER"
                    },
                    xstate_bv(&got0).bits()
                ),
            );
            set_xsave(vcpu, &p2, kvm_size)?;
            "KVM_SET_XSAVE(P2) then KVM_GET_XSAVE2 holds P2 at the Layout's offsets"
        }
    };
    let got1 = get_xsave(vcpu, kvm_size)?;
    let bad = compare(&std_layout, bv, &got1, &p2);
    checks.check(
        p2_check,
        bad.is_empty() && xstate_bv(&got1) == bv,
        format!(
            "XSTATE_BV {:#x}; {}",
            xstate_bv(&got1).bits(),
            summary(&bad)
        ),
    );

    // --- Into a guest fpstate, grown for the dynamic components the guest's
    // CPUID enables, as KVM grows its own on KVM_SET_CPUID2 ---
    let mut fp = Fpstate::new_boxed(cfg, Owner::Guest).map_err(|err| format!("fpstate: {err}"))?;
    if let Some(i) = (xcr0 & cfg.policy().dynamic).indices().next() {
        fp = fp
            .grow_boxed(cfg, &perms, i)
            .map_err(|err| format!("growing the guest fpstate for component {i}: {err}"))?;
    }
    // The masks KVM applies: KVM_SET_XSAVE refuses XSTATE_BV bits outside what
    // KVM supports for guests; KVM_GET_XSAVE2 keeps what the guest's CPUID
    // allows plus x87 and SSE. The crate is told the same.
    let abi = uabi::UserAbi::Kvm {
        supported: kvm_xcr0,
        uabi_size: kvm_size,
    };
    let export_mask = xcr0 | XFeatures::X87 | XFeatures::SSE;
    println!(
        "masks: KVM supports {:#x} (KVM_GET_SUPPORTED_CPUID 0xD), guest CPUID allows {:#x}, \
         guest fpstate user features {:#x}; import_abi(Kvm) takes XSTATE_BV within {:#x}, \
         export keeps {:#x}; KVM uabi size {kvm_size}",
        kvm_xcr0.bits(),
        xcr0.bits(),
        fp.info().user_features.bits(),
        (kvm_xcr0 & fp.info().user_features).bits(),
        export_mask.bits()
    );
    let imported = uabi::import_abi(cfg, &mut fp, &got1, abi)
        .map_err(|err| format!("uabi::import_abi refused KVM's buffer: {err}"))?;
    checks.check(
        "uabi::import_abi(Kvm) takes KVM_GET_XSAVE2's buffer",
        imported == bv,
        format!("XSTATE_BV {:#x}", imported.bits()),
    );
    let info = *fp.info();
    let kernel_layout = match info.form {
        Form::Compacted => Layout::compacted(e, info.features),
        Form::Standard => Layout::standard(e, info.features & e.xcr0_supported()),
    }
    .map_err(|err| format!("fpstate layout: {err}"))?;
    println!(
        "guest fpstate: {:?} form, features {:#x}, {} bytes, XCOMP_BV {:#x}",
        info.form,
        info.features.bits(),
        info.size,
        fp.xcomp_bv()
    );
    println!(
        "  {:<3} {:<12} {:>8} {:>12} {:>6}",
        "#", "component", "std off", "fpstate off", "size"
    );
    for i in info.features.indices() {
        let show = |o: Option<u32>| o.map_or("-".to_string(), |o| o.to_string());
        println!(
            "  {i:<3} {:<12} {:>8} {:>12} {:>6}",
            name_of(i),
            show(std_layout.offset_of(i)),
            show(kernel_layout.offset_of(i)),
            kernel_layout.size_of(i).unwrap_or(0)
        );
    }
    let live = fp.xstate_bv();
    let mut s = String::new();
    for i in info.features.indices() {
        let state = if live.has_index(i) { "live" } else { "init" };
        let _ = write!(s, " {}={state}", name_of(i));
    }
    println!("guest state: XSTATE_BV {:#x}:{s}", live.bits());
    // The fpstate holds P2's registers at its own (kernel-form) offsets.
    let area_bytes = fp.area();
    let mut bad = Vec::new();
    for i in bv.indices().filter(|&i| i >= 2) {
        let (o, sz) = raw_component(i);
        match kernel_layout.range_of(i) {
            Some(r) if area_bytes.get(r.clone()) == Some(&p2[o..o + sz]) => {}
            r => bad.push(format!("{} at {r:?}", name_of(i))),
        }
    }
    if area_bytes.get(160..416) != Some(&p2[160..416]) {
        bad.push("XMM".into());
    }
    checks.check(
        "the fpstate holds P2 at the kernel-form Layout's offsets",
        bad.is_empty() && live.contains(bv),
        format!("XSTATE_BV {:#x}; {}", live.bits(), summary(&bad)),
    );

    // --- Export and round trip through KVM ---
    let mut exported = vec![0u8; kvm_size];
    let n = uabi::export(cfg, &fp, export_mask, &mut exported)
        .map_err(|err| format!("uabi::export: {err}"))?;
    // Every byte of KVM's buffer: MXCSR_MASK (the one KVM's buffer held comes
    // back, as Linux's export returns it), PKRU's reserved bytes (zero), the
    // software-reserved USER_XSTATE_XCR0_WORD at 464, the zeros past the size.
    let differ: Vec<usize> = (0..kvm_size).filter(|&k| exported[k] != got1[k]).collect();
    checks.check(
        "export(import_abi(KVM_GET_XSAVE2)) = KVM's buffer, every byte",
        n == size && differ.is_empty(),
        format!(
            "{n} bytes written, {} of {kvm_size} bytes differ {:x?}",
            differ.len(),
            &differ[..differ.len().min(16)]
        ),
    );
    set_xsave(vcpu, &exported, kvm_size)?;
    let got2 = get_xsave(vcpu, kvm_size)?;
    let differ = (0..kvm_size).filter(|&k| got1[k] != got2[k]).count();
    checks.check(
        "KVM_SET_XSAVE(export) then KVM_GET_XSAVE2 gives KVM's first buffer back, every byte",
        differ == 0,
        format!("{differ} of {kvm_size} bytes differ"),
    );

    // --- Phase 2: new state (P3) through import/export into the guest's registers ---
    uabi::import(cfg, &mut fp, &p3).map_err(|err| format!("uabi::import(P3): {err}"))?;
    let mut e3 = vec![0u8; kvm_size];
    uabi::export(cfg, &fp, export_mask, &mut e3)
        .map_err(|err| format!("uabi::export(P3): {err}"))?;
    set_xsave(vcpu, &e3, kvm_size)?;
    match run_until_stop(vcpu)? {
        Stop::Halt => {}
        Stop::Port(_) => return Err("phase 2 did not end at its HLT".into()),
    }
    match program {
        Program::Native => {
            let phase2 = guest.mem.read(area(AREA_PHASE2), size);
            let bad = compare(&std_layout, bv, &phase2, &p3);
            checks.check(
                "guest XSAVE after KVM_SET_XSAVE(export(import(P3))) holds P3",
                bad.is_empty() && xstate_bv(&phase2) == bv,
                format!(
                    "XSTATE_BV {:#x}; {}",
                    xstate_bv(&phase2).bits(),
                    summary(&bad)
                ),
            );
        }
        Program::Emulated => {
            let stored = guest.mem.read(area(AREA_PHASE2), 128);
            checks.check(
                "guest MOVDQU stores after KVM_SET_XSAVE(export(import(P3))) give P3's XMM0-XMM7",
                stored[..] == p3[160..288],
                if stored[..] == p3[160..288] {
                    "match".to_string()
                } else {
                    format!("got {:02x?}", &stored[..16])
                },
            );
        }
    }
    let got3 = get_xsave(&guest.vcpu, kvm_size)?;
    let bad = compare(&std_layout, bv, &got3, &p3);
    checks.check(
        "KVM_GET_XSAVE2 after phase 2 holds P3",
        bad.is_empty(),
        summary(&bad),
    );
    Ok(Outcome::Ran(checks.0))
}

#[allow(dead_code)] // the test includes this file as a module and calls `run`
fn main() -> ExitCode {
    match run() {
        Ok(Outcome::Skipped(why)) => {
            eprintln!("SKIP kvm-guest-fpu: {why}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Ran(checks)) => match checks.iter().find(|c| !c.ok) {
            None => {
                println!("kvm-guest-fpu: all {} checks held", checks.len());
                ExitCode::SUCCESS
            }
            Some(c) => {
                let n = checks.iter().filter(|c| !c.ok).count();
                eprintln!(
                    "kvm-guest-fpu: FAILED ({n} of {} checks): {}: {}",
                    checks.len(),
                    c.name,
                    c.detail
                );
                ExitCode::FAILURE
            }
        },
        Err(why) => {
            eprintln!("kvm-guest-fpu: FAILED: {why}");
            ExitCode::FAILURE
        }
    }
}
