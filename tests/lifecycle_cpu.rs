//! The lifecycle layer on this CPU, in user space, against the same layer on
//! the model: random sequences of switches among task buffers and a kernel
//! thread, register writes, kernel SIMD sections, signals (straight to the
//! frame and through the buffer), sigreturns, ptrace writes, clones, execs and
//! exits run on `insn::Cpu` (XSAVEC or XSAVEOPT/XSAVE, and XRSTOR) and on
//! `XsaveMachine`. At every return to user mode the CPU's registers, the
//! model's and what the task last made of them must be the same.
//!
//! Compiled code between the events uses registers too: Rust code for this
//! target uses XMM registers (legacy SSE encoding, which keeps the upper
//! halves), and glibc's string functions pick AVX or AVX-512 versions that
//! would clobber the vector registers' upper parts. The sequences therefore run
//! in a child process started with `GLIBC_TUNABLES` that hides AVX from glibc,
//! which the child checks before it starts; they compare the components no
//! compiled code touches (the upper halves of YMM8-15 and ZMM0-15, ZMM16-31,
//! the opmask registers) and MXCSR, and say so.
#![allow(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

use std::arch::asm;
use std::process::Command;

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::LiveCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{BoxedArea, Storage};
use xstate::insn::{Cpu, read_xcr0};
use xstate::lifecycle::{
    CpuFpu, FpuUnit, Lifecycle, Restore, SectionInit, SignalPath, TaskFpu, UserMode,
};
use xstate::model::{Quirks, XsaveMachine};
use xstate::uabi;

mod testkit;
use testkit::{Rng, loud};

const CHILD: &str = "XSTATE_LIFECYCLE_CPU_CHILD";
const TUNABLES: &str = "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-EVEX,-AVX_Fast_Unaligned_Load";
const SEQUENCES: u64 = 3_000;
const EVENTS: usize = 24;
const TASKS: usize = 4;

/// The components compared, of those this CPU enables.
const COMPARED: XFeatures = XFeatures::AVX.union(XFeatures::AVX512);

/// One register write the sequences make: component, offset, length.
#[derive(Clone, Copy)]
enum Write {
    /// VINSERTF128 ymm8, ymm8, m128, 1 (VEX: zeroes ZMM8's bits 511:256).
    Ymm8Hi,
    /// VINSERTI64X4 zmm9, zmm9, m256, 1.
    Zmm9Hi,
    /// VMOVDQU64 zmm20, m512.
    Zmm20,
    /// KMOVW k3, m16 (zero-extended to 64 bits).
    K3,
    /// LDMXCSR.
    Mxcsr,
}

fn write_live(w: Write, b: &[u8; 64]) {
    let p = b.as_ptr();
    unsafe {
        match w {
            Write::Ymm8Hi => {
                asm!("vinsertf128 ymm8, ymm8, [{p}], 1", p = in(reg) p, options(nostack))
            }
            Write::Zmm9Hi => {
                asm!("vinserti64x4 zmm9, zmm9, [{p}], 1", p = in(reg) p, options(nostack))
            }
            Write::Zmm20 => asm!("vmovdqu64 zmm20, [{p}]", p = in(reg) p, options(nostack)),
            Write::K3 => asm!("kmovw k3, [{p}]", p = in(reg) p, options(nostack)),
            Write::Mxcsr => asm!("ldmxcsr [{p}]", p = in(reg) p, options(nostack)),
        }
    }
}

fn write_model(m: &mut XsaveMachine, w: Write, b: &[u8; 64], avx512: bool) {
    match w {
        Write::Ymm8Hi => {
            m.write_reg(2, 16 * 8, &b[..16]).unwrap();
            if avx512 {
                m.zero_reg(6, 32 * 8, 32).unwrap();
            }
        }
        Write::Zmm9Hi => m.write_reg(6, 32 * 9, &b[..32]).unwrap(),
        Write::Zmm20 => m.write_reg(7, 64 * 4, &b[..64]).unwrap(),
        Write::K3 => {
            let mut k = [0u8; 8];
            k[..2].copy_from_slice(&b[..2]);
            m.write_reg(5, 8 * 3, &k).unwrap();
        }
        Write::Mxcsr => m
            .set_mxcsr(u32::from_le_bytes(b[..4].try_into().unwrap()))
            .unwrap(),
    }
}

/// The compared registers of this CPU: each component's standard image (from
/// an XSAVE; zeros where XSTATE_BV says init) and MXCSR.
fn snap_live(e: &Enumeration, mask: XFeatures, scratch: &mut testkit::Area) -> Vec<Vec<u8>> {
    let buf = scratch.bytes_mut();
    buf[512..576].fill(0);
    unsafe { xstate::insn::xsave(buf.as_mut_ptr(), mask) };
    let bv = testkit::get_u64(buf, 512);
    let mut v: Vec<Vec<u8>> = mask
        .indices()
        .map(|i| {
            let c = e.component(i).unwrap();
            if bv >> i & 1 == 0 {
                vec![0; c.size as usize]
            } else {
                buf[c.std_offset as usize..(c.std_offset + c.size) as usize].to_vec()
            }
        })
        .collect();
    v.push(buf[24..28].to_vec());
    v
}

fn snap_model(m: &XsaveMachine, mask: XFeatures) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = mask.indices().map(|i| m.reg(i).unwrap().to_vec()).collect();
    v.push(m.mxcsr().to_le_bytes().to_vec());
    v
}

struct Side<U: FpuUnit> {
    cpu: CpuFpu,
    unit: U,
    tasks: Vec<Option<TaskFpu<BoxedArea>>>,
    frames: Vec<Vec<(BoxedArea, usize)>>,
}

/// Both sides, driven by one random sequence.
struct Run<'c> {
    cfg: &'c Configs,
    lc: Lifecycle<'c, UserMode>,
    live: Side<Cpu>,
    model: Side<XsaveMachine>,
    expected: Vec<Option<Vec<Vec<u8>>>>,
    saved: Vec<Vec<Vec<Vec<u8>>>>,
    running: Option<usize>,
    mask: XFeatures,
    writes: Vec<Write>,
    avx512: bool,
    rng: Rng,
    scratch: testkit::Area,
    checks: u64,
    /// Restores the live layer ran.
    restores: u64,
    log: Vec<String>,
}

/// `$body` once on each side of `$run`, with `$s` naming the side: the live
/// CPU's (`Side<Cpu>`) first, then the model's (`Side<XsaveMachine>`). The
/// two results, in that order.
macro_rules! each_side {
    ($run:expr, $s:ident => $body:expr) => {
        (
            {
                let $s = &mut $run.live;
                $body
            },
            {
                let $s = &mut $run.model;
                $body
            },
        )
    };
}

/// Both sides' results as one, naming the side that failed.
fn both<T, E: std::fmt::Display>(
    what: &str,
    r: (Result<T, E>, Result<T, E>),
) -> Result<(), String> {
    r.0.map_err(|e| format!("live {what}: {e}"))?;
    r.1.map_err(|e| format!("model {what}: {e}"))?;
    Ok(())
}

impl Run<'_> {
    fn area(&self) -> BoxedArea {
        BoxedArea::zeroed(self.cfg.kernel().default_size as usize)
    }

    fn check(&mut self, what: &str) -> Result<(), String> {
        let Some(i) = self.running else {
            return Ok(());
        };
        let Some(want) = self.expected[i].clone() else {
            return Ok(());
        };
        let live = &mut self.live;
        let model = &mut self.model;
        let a = self
            .lc
            .return_to_user(
                &mut live.cpu,
                &mut live.unit,
                live.tasks[i].as_mut().unwrap(),
            )
            .map_err(|e| format!("{what}: live return: {e}"))?;
        let got_live = snap_live(self.cfg.enumeration(), self.mask, &mut self.scratch);
        let b = self
            .lc
            .return_to_user(
                &mut model.cpu,
                &mut model.unit,
                model.tasks[i].as_mut().unwrap(),
            )
            .map_err(|e| format!("{what}: model return: {e}"))?;
        let got_model = snap_model(&model.unit, self.mask);
        // The CPU's XMM registers are in use from here on (compiled code uses
        // them), so XSAVEC always writes SSE and MXCSR there: the model's too.
        model.unit.write_reg(1, 16 * 15, &[0x11; 16]).unwrap();
        self.checks += 1;
        self.restores += u64::from(a == Restore::Loaded);
        if a != b {
            return Err(format!("{what}: task {i}: live {a:?}, model {b:?}"));
        }
        if got_live != want || got_model != want {
            let comp = |g: &Vec<Vec<u8>>| {
                g.iter()
                    .zip(&want)
                    .position(|(x, y)| x != y)
                    .map_or("none".to_string(), |k| format!("entry {k}"))
            };
            return Err(format!(
                "{what}: task {i} after {a:?}: live differs at {}, model at {} (model {:02x?}, want {:02x?})",
                comp(&got_live),
                comp(&got_model),
                got_model.last(),
                want.last()
            ));
        }
        Ok(())
    }

    fn compute(&mut self) {
        let Some(i) = self.running else { return };
        if self.expected[i].is_none() {
            return;
        }
        for _ in 0..1 + self.rng.below(3) {
            let w = self.writes[self.rng.below(self.writes.len() as u64) as usize];
            let mut b = [0u8; 64];
            self.rng.fill(&mut b);
            if let Write::Mxcsr = w {
                let v = 0x1f80u32 ^ (self.rng.next() as u32 & 0x6040);
                b[..4].copy_from_slice(&v.to_le_bytes());
            }
            write_live(w, &b);
            write_model(&mut self.model.unit, w, &b, self.avx512);
        }
        self.expected[i] = Some(snap_model(&self.model.unit, self.mask));
    }

    /// A kernel SIMD section on both sides: the section's own vector work
    /// leaves its values in YMM8's upper half and ZMM20.
    fn section(&mut self) -> Result<(), String> {
        let mut b = [0u8; 64];
        self.rng.fill(&mut b);
        let cur = self.running;
        let init = if self.rng.below(2) == 0 {
            SectionInit::Mxcsr
        } else {
            SectionInit::MxcsrAndX87
        };
        {
            let live = &mut self.live;
            let task = cur.and_then(|i| live.tasks[i].as_mut());
            let sec = self
                .lc
                .kernel_fpu_begin(&mut live.cpu, &mut live.unit, task, init)
                .map_err(|e| e.to_string())?;
            write_live(Write::Ymm8Hi, &b);
            if self.avx512 {
                write_live(Write::Zmm20, &b);
            }
            drop(sec);
        }
        let model = &mut self.model;
        let task = cur.and_then(|i| model.tasks[i].as_mut());
        let mut sec = self
            .lc
            .kernel_fpu_begin(&mut model.cpu, &mut model.unit, task, init)
            .map_err(|e| e.to_string())?;
        write_model(sec.unit(), Write::Ymm8Hi, &b, self.avx512);
        if self.avx512 {
            write_model(sec.unit(), Write::Zmm20, &b, self.avx512);
        }
        drop(sec);
        self.check("after a kernel section")
    }

    fn schedule(&mut self) -> Result<(), String> {
        if let Some(i) = self.running.take() {
            let r = each_side!(self, s => {
                self.lc.switch_out(&mut s.cpu, &mut s.unit, s.tasks[i].as_mut().unwrap())
            });
            both("switch out", r)?;
        }
        let ok: Vec<usize> = (0..self.live.tasks.len())
            .filter(|&i| self.live.tasks[i].is_some())
            .collect();
        if ok.is_empty() || self.rng.below(6) == 0 {
            return Ok(());
        }
        self.running = Some(ok[self.rng.below(ok.len() as u64) as usize]);
        self.check("after a switch")
    }

    fn signal(&mut self) -> Result<(), String> {
        let Some(i) = self.running else { return Ok(()) };
        let Some(exp) = self.expected[i].clone() else {
            return Ok(());
        };
        let (off, path) = match self.rng.below(3) {
            0 => (8, SignalPath::Buffered),
            1 => (0, SignalPath::Buffered),
            _ => (0, SignalPath::Direct),
        };
        let size = self.cfg.user().max_size as usize + 4 + 64;
        let r = each_side!(self, s => {
            let mut frame = BoxedArea::zeroed(size);
            let r = self.lc.deliver_signal_by(
                &mut s.cpu,
                &mut s.unit,
                s.tasks[i].as_mut().unwrap(),
                &mut frame.bytes_mut()[off..],
                path,
            );
            s.frames[i].push((frame, off));
            r
        });
        both("signal", r)?;
        self.saved[i].push(exp);
        let init = self.init_snap();
        self.expected[i] = Some(init);
        self.check("in a signal handler")
    }

    fn init_snap(&self) -> Vec<Vec<u8>> {
        let m = XsaveMachine::new(self.cfg.enumeration(), self.model.unit.quirks().to_owned());
        snap_model(&m, self.mask)
    }

    fn sigreturn(&mut self) -> Result<(), String> {
        let Some(i) = self.running else { return Ok(()) };
        let Some(saved) = self.saved[i].pop() else {
            return Ok(());
        };
        let direct = self.rng.below(2) == 0;
        let r = each_side!(self, s => {
            let (f, off) = s.frames[i].pop().unwrap();
            self.lc.sigreturn_by(
                &mut s.cpu,
                &mut s.unit,
                s.tasks[i].as_mut().unwrap(),
                &f.bytes()[off..],
                direct,
            )
        });
        both("sigreturn", r)?;
        self.expected[i] = Some(saved);
        self.check("after sigreturn")
    }

    /// PTRACE_SETREGSET on a task that is not running: YMM8's upper half.
    fn ptrace(&mut self) -> Result<(), String> {
        let ok: Vec<usize> = (0..self.live.tasks.len())
            .filter(|&i| self.expected[i].is_some() && Some(i) != self.running)
            .collect();
        if ok.is_empty() {
            return Ok(());
        }
        let i = ok[self.rng.below(ok.len() as u64) as usize];
        let mut x = [0u8; 16];
        self.rng.fill(&mut x);
        let e = self.cfg.enumeration();
        let at = e.component(2).unwrap().std_offset as usize + 16 * 8;
        let mut mxcsr = 0;
        for t in [self.live.tasks[i].as_mut(), self.model.tasks[i].as_mut()] {
            let mut w = self
                .lc
                .ptrace_write(t.unwrap())
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; w.info().user_size as usize];
            uabi::export(self.cfg, &w, XFeatures::all(), &mut buf).unwrap();
            // The model's value: the live CPU's XSAVEC always writes SSE (the
            // compiled code keeps XMM in use).
            mxcsr = testkit::get_u32(&buf, 24);
            buf[at..at + 16].copy_from_slice(&x);
            let bv = testkit::get_u64(&buf, 512) | XFeatures::AVX.bits() | 2;
            testkit::put_u64(&mut buf, 512, bv);
            uabi::import(self.cfg, &mut w, &buf).map_err(|e| e.to_string())?;
        }
        // The expected image: YMM8's upper half replaced, and MXCSR what the
        // write sent (the exported value, which for a compacted buffer whose
        // XSTATE_BV has AVX but not SSE is the field XSAVEC last wrote).
        let exp = self.expected[i].as_mut().unwrap();
        let k = self.mask.indices().position(|c| c == 2).unwrap();
        exp[k][16 * 8..16 * 9].copy_from_slice(&x);
        *exp.last_mut().unwrap() = mxcsr.to_le_bytes().to_vec();
        Ok(())
    }

    fn clone_or_exec_or_exit(&mut self) -> Result<(), String> {
        let Some(i) = self.running else { return Ok(()) };
        if self.expected[i].is_none() {
            return Ok(());
        }
        match self.rng.below(3) {
            0 => {
                let Some(slot) = (0..TASKS + 1).find(|&k| self.live.tasks[k].is_none()) else {
                    return Ok(());
                };
                let size = self.cfg.kernel().default_size as usize;
                let r = each_side!(self, s => {
                    let parent = s.tasks[i].as_mut().unwrap();
                    let area = BoxedArea::zeroed(size);
                    self.lc
                        .clone_task(&mut s.cpu, &mut s.unit, parent, area)
                        .map(|child| s.tasks[slot] = Some(child))
                });
                both("clone", r)?;
                self.expected[slot] = self.expected[i].clone();
                self.check("after clone")
            }
            1 => {
                for t in [self.live.tasks[i].as_mut(), self.model.tasks[i].as_mut()] {
                    self.lc.exec(t.unwrap()).map_err(|e| e.to_string())?;
                }
                self.live.frames[i].clear();
                self.model.frames[i].clear();
                self.saved[i].clear();
                self.expected[i] = Some(self.init_snap());
                self.check("after exec")
            }
            _ => {
                each_side!(self, s => {
                    let t = s.tasks[i].take().unwrap();
                    let _ = self.lc.exit(&mut s.cpu, t);
                    s.frames[i].clear();
                });
                self.expected[i] = None;
                self.saved[i].clear();
                self.running = None;
                Ok(())
            }
        }
    }

    fn step(&mut self) -> Result<(), String> {
        let k = self.rng.below(10);
        self.log.push(format!("event {k}, task {:?}", self.running));
        match k {
            0..=2 => self.schedule(),
            3..=4 => {
                self.compute();
                Ok(())
            }
            5 => self.section(),
            6 => self.signal(),
            7 => self.sigreturn(),
            8 => self.ptrace(),
            _ => self.clone_or_exec_or_exit(),
        }
    }
}

/// glibc's copies keep the vector registers' upper parts (checked, not
/// assumed: a copy and a fill between a write and an XSAVE).
fn glibc_keeps_upper_halves(e: &Enumeration, mask: XFeatures) -> bool {
    let mut scratch = testkit::Area::new(e.standard_size(mask) as usize, 0);
    let mut b = [0x5au8; 64];
    b[..4].copy_from_slice(&0x1f80u32.to_le_bytes());
    write_live(Write::Ymm8Hi, &b);
    if mask.contains(XFeatures::AVX512) {
        write_live(Write::Zmm9Hi, &b);
        write_live(Write::Zmm20, &b);
        write_live(Write::K3, &b);
    }
    let before = snap_live(e, mask, &mut scratch);
    let src = vec![0x33u8; 1 << 16];
    let mut dst = vec![0u8; 1 << 16];
    dst.copy_from_slice(&src);
    dst.fill(7);
    let s = format!("{:?}", &dst[..64]);
    std::hint::black_box(&s);
    before == snap_live(e, mask, &mut scratch)
}

fn child() {
    let e = Enumeration::from_cpuid(&LiveCpuid).unwrap();
    let xcr0 = read_xcr0().unwrap();
    let mask = COMPARED & xcr0;
    assert!(
        glibc_keeps_upper_halves(&e, mask),
        "glibc's copies change the vector registers' upper parts even with {TUNABLES}"
    );
    let linux = Policy::linux(&e);
    let policy = Policy {
        enabled: linux.enabled & XFeatures::USER,
        independent: XFeatures::empty(),
        guest_only: XFeatures::empty(),
        ..linux
    };
    let cfg = Configs::new(&e, &policy).unwrap();
    let avx512 = mask.contains(XFeatures::AVX512);
    let mut writes = vec![Write::Ymm8Hi, Write::Mxcsr];
    if avx512 {
        writes.extend([Write::Zmm9Hi, Write::Zmm20, Write::K3]);
    }
    let quirks = Quirks::for_cpu(&LiveCpuid).expect("the live CPU names its vendor (leaf 0)");
    let xfd = cfg.policy().dynamic;
    let (mut checks, mut elided, mut restores) = (0, 0, 0);
    for seed in 0..SEQUENCES {
        let lc = Lifecycle::new(&cfg, UserMode);
        // SAFETY of the unit: restores run between events, where this code
        // holds no values in the registers the sequences compare.
        let unit = unsafe { Cpu::user() }.unwrap();
        let mut model = XsaveMachine::new(&e, quirks);
        model.set_xcr0(cfg.xcr0()).unwrap();
        let mut run = Run {
            cfg: &cfg,
            live: Side {
                cpu: CpuFpu::new(0, xfd),
                unit,
                tasks: Vec::new(),
                frames: (0..=TASKS).map(|_| Vec::new()).collect(),
            },
            model: Side {
                cpu: CpuFpu::new(0, xfd),
                unit: model,
                tasks: Vec::new(),
                frames: (0..=TASKS).map(|_| Vec::new()).collect(),
            },
            lc,
            expected: Vec::new(),
            saved: vec![Vec::new(); TASKS + 1],
            running: None,
            mask,
            writes: writes.clone(),
            avx512,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            scratch: testkit::Area::new(e.standard_size(mask) as usize, 0),
            checks: 0,
            restores: 0,
            log: Vec::new(),
        };
        let init = run.init_snap();
        for k in 0..TASKS {
            let (a, b) = (run.area(), run.area());
            if k == TASKS - 1 {
                run.live.tasks.push(Some(run.lc.kernel_thread()));
                run.model.tasks.push(Some(run.lc.kernel_thread()));
                run.expected.push(None);
            } else {
                run.live.tasks.push(Some(run.lc.user_task(a).unwrap()));
                run.model.tasks.push(Some(run.lc.user_task(b).unwrap()));
                run.expected.push(Some(init.clone()));
            }
        }
        run.live.tasks.push(None);
        run.model.tasks.push(None);
        run.expected.push(None);
        for _ in 0..EVENTS {
            if let Err(why) = run.step() {
                panic!("seed {seed}: {why}\n{:#?}", run.log);
            }
        }
        checks += run.checks;
        let s = run.live.cpu.stats();
        elided += s.elided;
        restores += run.restores;
    }
    println!("CHILD-RESULT {SEQUENCES} {checks} {restores} {elided}");
}

#[test]
fn lifecycle_on_this_cpu_agrees_with_the_model() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let Some(xcr0) = read_xcr0() else {
        loud!("SKIP lifecycle_cpu: XSAVE not enabled (CR4.OSXSAVE clear)");
        return;
    };
    if !xcr0.contains(XFeatures::AVX) {
        loud!(
            "SKIP lifecycle_cpu: AVX (component 2) not in XCR0 {xcr0:?}: no register part is safe from compiled code to compare"
        );
        return;
    }
    let mask = COMPARED & xcr0;
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lifecycle_on_this_cpu_agrees_with_the_model",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("GLIBC_TUNABLES", TUNABLES)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-RESULT").map(|(_, r)| r));
    assert!(
        out.status.success() && line.is_some(),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let f: Vec<u64> = line
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    loud!(
        "lifecycle on this cpu: {} sequences, {} returns to user compared, 0 differ; {} restores, {} elided (compared: components {:?} and MXCSR; x87 and XMM0-15 left out: compiled code between the events uses XMM registers)",
        f[0],
        f[1],
        f[2],
        f[3],
        mask.indices().collect::<Vec<_>>()
    );
    assert!(f[1] > f[0] && f[3] > 0);
}

/// MXCSR and the x87 control word, read with STMXCSR and FNSTCW.
fn fp_modes() -> (u32, u16) {
    let mut mxcsr = 0u32;
    let mut fcw = 0u16;
    // SAFETY: both store into locals of their size.
    unsafe {
        asm!("stmxcsr [{}]", in(reg) &mut mxcsr, options(nostack));
        asm!("fnstcw [{}]", in(reg) &mut fcw, options(nostack));
    }
    (mxcsr, fcw)
}

/// Non-default modes: MXCSR rounding toward zero, x87 single precision.
fn set_odd_modes() {
    let (mxcsr, fcw) = (0x7f80u32, 0x007fu16);
    // SAFETY: valid MXCSR (within every MXCSR_MASK) and FCW values; this test
    // computes no floating-point value until `section_init` resets them.
    unsafe {
        asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack));
        asm!("fldcw [{}]", in(reg) &fcw, options(nostack));
    }
}

/// The live unit's hooks of `FpuUnit`: a section starts with MXCSR 0x1f80
/// (and with FNINIT's control word 0x37f only when x87 is asked for); a user
/// unit cannot write IA32_XFD (ring 0 only), whatever the value.
#[test]
fn the_cpu_units_section_and_xfd_hooks() {
    if read_xcr0().is_none() {
        loud!("SKIP lifecycle_cpu hooks: XSAVE not enabled (CR4.OSXSAVE clear)");
        return;
    }
    // SAFETY: the restores and mode changes below run where this test holds
    // no floating-point values.
    let mut unit = unsafe { Cpu::user() }.unwrap();
    set_odd_modes();
    unit.section_init(SectionInit::Mxcsr).unwrap();
    let after_mxcsr = fp_modes();
    set_odd_modes();
    unit.section_init(SectionInit::MxcsrAndX87).unwrap();
    let after_both = fp_modes();
    // Back to the defaults before any assertion can unwind.
    unit.section_init(SectionInit::MxcsrAndX87).unwrap();
    assert_eq!(after_mxcsr, (0x1f80, 0x007f), "Mxcsr leaves x87 alone");
    assert_eq!(after_both, (0x1f80, 0x037f), "MxcsrAndX87 runs FNINIT too");
    let e = unit.enumeration().clone();
    let xfd_capable = e
        .supported()
        .indices()
        .filter(|&i| e.component(i).is_some_and(|c| c.xfd))
        .fold(XFeatures::empty(), |m, i| {
            m | XFeatures::from_bits_retain(1 << i)
        });
    for x in [
        XFeatures::empty(),
        xfd_capable,
        XFeatures::from_bits_retain(1 << 1),
    ] {
        assert!(
            unit.write_xfd(x).is_err(),
            "a user unit wrote IA32_XFD = {:#x}",
            x.bits()
        );
    }
}
