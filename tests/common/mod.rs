//! Pieces shared by the tests that run XSAVE on the live CPU (`hw_oracle`,
//! `sigframe`, `model_vs_hw`). Each test crate uses a subset of them.
#![allow(dead_code)]

/// A line on the real stderr: the harness captures `eprintln!` and shows it
/// only on failure, and SKIP lines and figures must be seen on success too.
macro_rules! loud {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
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
