//! A software model of the XSAVE feature set: a register file with XINUSE,
//! XMODIFIED, XCR0, IA32_XSS and XFD, executing XSAVE, XSAVEOPT, XSAVEC, XSAVES,
//! XRSTOR and XRSTORS on byte buffers by the rules of the Intel SDM, volume 1,
//! chapter 13 (13.6 tracking, 13.7-13.12 the instructions, 13.14 XFD).
//!
//! It exists so that what user space cannot do (CPL 0 instructions, supervisor
//! components such as CET_S, XFD) can be tested in user space: [`XsaveMachine`]
//! implements [`XsaveUnit`], the trait fpstate save/restore is written against.
//! `tests/model_vs_hw.rs` runs random instruction sequences on the model and on
//! the CPU and demands identical buffers, registers and fault verdicts.
//!
//! Where the SDM leaves a choice to the implementation ("XINUSE\[i\] may be 0 or
//! 1"), the choice is a [`Quirks`] field, so the model can be matched to a CPU.
//! The model never reads or writes outside the slices it is given: where real
//! hardware would touch memory past a too-short buffer, the model refuses with
//! [`Fault::Gp`] instead.

use alloc::vec;
use alloc::vec::Vec;

use crate::cpuid::{CpuidSource, NoVendor, Vendor};
use crate::enumerate::{EXTENDED_START, Enumeration};
use crate::feature::{XCOMP_BV_COMPACTED, XFeatures};
use crate::fpstate::{
    FCW_DEFAULT, MXCSR_DEFAULT, MXCSR_MASK_OFFSET, MXCSR_OFFSET, XCOMP_BV_OFFSET, XSTATE_BV_OFFSET,
};
use crate::guest::check_xcr0;
use crate::insn::{Fault, Insn, XsaveUnit};
use crate::layout::Layout;

/// The size of the x87 image: bytes 0..160 of the legacy region (bytes 24..32,
/// MXCSR and MXCSR_MASK, belong to SSE and stay zero in this image).
const X87_SIZE: usize = 160;
/// The XMM registers: bytes 160..416 of the legacy region.
const XMM_RANGE: core::ops::Range<usize> = 160..416;
const FSW_OFFSET: usize = 2;
const FTW_OFFSET: usize = 4;
const FOP_OFFSET: usize = 6;
/// FIP: the last x87 instruction's address (64-bit form of XSAVE64).
const FIP_OFFSET: usize = 8;
/// TILECFG's first byte: the palette.
const TILECFG: u32 = 17;
const ST0_OFFSET: usize = 32;
/// FSW.ES: an unmasked x87 exception is pending.
const FSW_ES: u16 = 1 << 7;
/// The FCW bits a CPU keeps (bits 7 and 13..15 are reserved).
const FCW_KEPT: u16 = 0x1f7f;
/// FOP is an 11-bit field.
const FOP_KEPT: u16 = 0x7ff;

/// The mask of component `i` alone (empty for `i >= 64`).
fn bit(i: u32) -> XFeatures {
    XFeatures::from_index(i).unwrap_or(XFeatures::empty())
}

/// Implementation choices the SDM leaves open, so the model can match a CPU.
///
/// [`Quirks::for_cpu`] picks them from what a CPU enumerates (its vendor and
/// CPUID feature bits); each field says which recording or measurement showed
/// it. `tests/silicon.rs` checks the Intel choices against what an Intel Xeon
/// with AMX wrote and the AMD choices against what an AMD EPYC Zen 4 wrote
/// (`tests/silicon/`), on every machine; `tests/model_vs_hw.rs` checks the
/// choices for whatever CPU runs the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Quirks {
    /// XRSTOR(S) loading a component whose bytes are its init values tracks it
    /// as init (XINUSE\[i\] = 0), instead of as in use. (Zen 4: measured by
    /// `model_vs_hw`, and the Zen 4 recording's `probes.txt`:
    /// `all-bits-set-init-values` reads XINUSE 0, `avx-bit-zero-mxcsr-7f80`
    /// 0x2 where Intel reads 0x6. The Intel Xeon recording shows the opposite:
    /// every component loaded with XSTATE_BV\[i\] = 1 is in use, whatever its
    /// bytes.)
    pub init_by_value: bool,
    /// A non-default MXCSR makes SSE count as in use for XGETBV(1) and XSAVEC
    /// (XSTATE_BV\[1\] = 1, XMM and MXCSR written), while XSAVE's and
    /// XSAVEOPT's XSTATE_BV\[1\] follow the XMM registers alone. (The Intel
    /// recording: `no-bits-mxcsr-7f80` loads nothing but MXCSR 0x7f80 and reads
    /// XINUSE 0x2 and XSAVEC XSTATE_BV 0x2; Zen 4 does the same, and both keep
    /// XSAVE's bit clear, measured by `model_vs_hw`. The SDM: XINUSE\[1\]
    /// covers only the XMM registers.)
    pub mxcsr_in_sse_init: bool,
    /// XSAVEC writes MXCSR and MXCSR_MASK only when it writes SSE (XINUSE\[1\]),
    /// instead of whenever RFBM\[1\] is set. (Zen 4 and the Intel Xeon,
    /// measured by `model_vs_hw`: after an XRSTOR of the init image, XSAVEC
    /// leaves bytes 24..32 as they were; the Intel recording's `x87-init`
    /// XSAVEC writes them with SSE live.)
    pub mxcsr_only_with_sse: bool,
    /// XSAVE* write FOP, FIP and FDP only while FSW.ES is set, zeros otherwise
    /// (AMD's behaviour; Linux's `X86_BUG_FXSAVE_LEAK`. The Zen 4 recording:
    /// XSAVE, XSAVEOPT and XSAVEC write bytes 8..24 as zeros for the pattern's
    /// FSW 0, and the kernel's ptrace export and signal frame carry the zeros.)
    pub x87_pointers_need_es: bool,
    /// The x87 FIP is kept as a canonical linear address of this many bits:
    /// bits 63..n copy bit n-1. (The Intel recording, LA57 enumerated: the
    /// input's FIP 0x1d1003f6e9dccfc2 comes back as 0xff1003f6e9dccfc2 from
    /// XSAVE, XSAVEC and ptrace; FDP comes back unchanged.) `None`: all 64 bits
    /// kept.
    pub fip_canonical_bits: Option<u8>,
    /// TILECFG loaded with a configuration LDTILECFG would refuse, or with
    /// palette 0, is put in its init state (no fault). (The Intel recording:
    /// `tilecfg-bit-palette0` and `tilecfg-bit-palette2-invalid` read XINUSE 0,
    /// `tilecfg-bit-palette1-tile0` 0x20000; single-byte changes of a valid
    /// palette-1 configuration on the Intel Xeon, measured: non-zero bytes
    /// 2..15, a tile with more than 64 bytes per row or 16 rows, a tile with
    /// rows but no bytes or bytes but no rows, or any of tiles 8..15 set make it
    /// init; `start_row` and byte counts that are not multiples of 4 do not.)
    pub tilecfg_invalid_init: bool,
    /// XSAVEOPT and XSAVES skip components not modified since the XRSTOR(S) of
    /// the same buffer (the SDM's modified optimization).
    pub modified_optimization: bool,
    /// Components the modified optimization never skips: XSAVEOPT writes them
    /// whenever they are in use. (TILECFG on the Intel Xeon, measured by
    /// `model_vs_hw`: an XSAVEOPT onto the buffer of the last XRSTOR rewrites
    /// an unmodified TILECFG while it skips the unmodified x87, SSE, AVX and
    /// TILEDATA.)
    pub always_modified: XFeatures,
}

/// CPUID.7.0:ECX\[16\]: 57-bit linear addresses (five-level paging).
const LA57: u32 = 1 << 16;

impl Quirks {
    /// The SDM's reading, as Intel CPUs behave (FIP canonical to 48 bits, the
    /// linear-address width of a CPU without LA57). The model's MXCSR_MASK is the
    /// enumeration's ([`Enumeration::mxcsr_mask`]).
    pub const INTEL: Self = Self {
        init_by_value: false,
        mxcsr_in_sse_init: true,
        mxcsr_only_with_sse: true,
        x87_pointers_need_es: false,
        fip_canonical_bits: Some(48),
        tilecfg_invalid_init: true,
        modified_optimization: true,
        always_modified: XFeatures::XTILE_CFG,
    };

    /// AMD Zen (measured on a Zen 4 EPYC by `tests/model_vs_hw.rs`, and checked
    /// on every machine against the Zen 4 recording,
    /// `tests/silicon/amd-epyc-zen4-linux-6.18/`: its saves, probes, ptrace
    /// exports and signal frames agree with the model). Its MXCSR_MASK (0x2ffff there)
    /// is the enumeration's, from a recording's `# mxcsr_mask` line or leaf 0's
    /// vendor.
    pub const AMD_ZEN: Self = Self {
        init_by_value: true,
        mxcsr_in_sse_init: true,
        mxcsr_only_with_sse: true,
        x87_pointers_need_es: true,
        fip_canonical_bits: None,
        tilecfg_invalid_init: true,
        modified_optimization: true,
        always_modified: XFeatures::empty(),
    };

    /// The quirks of the CPU `src` describes: [`Quirks::AMD_ZEN`] for AMD and
    /// Hygon, [`Quirks::INTEL`] for the others, with the FIP width from LA57.
    ///
    /// # Errors
    /// [`NoVendor`] if `src` has no leaf 0 (a dump of leaf 0xD alone): the
    /// vendor is not guessed, since AMD and Intel differ in what the model
    /// would get wrong. A caller that knows the CPU picks [`Quirks::INTEL`] or
    /// [`Quirks::AMD_ZEN`] itself.
    ///
    /// ```
    /// use xstate::cpuid::{NoVendor, RecordedCpuid};
    /// use xstate::model::Quirks;
    /// let d = "0x0000000d 0x00: eax=0x00000003 ebx=0x00000240 ecx=0x00000240 edx=0x00000000\n";
    /// assert_eq!(Quirks::for_cpu(&RecordedCpuid::parse(d).unwrap()), Err(NoVendor));
    /// let amd = "0x00000000 0x00: eax=0x0000001c ebx=0x68747541 ecx=0x444d4163 edx=0x69746e65\n";
    /// let c = RecordedCpuid::parse(&format!("{amd}{d}")).unwrap();
    /// assert_eq!(Quirks::for_cpu(&c), Ok(Quirks::AMD_ZEN));
    /// ```
    pub fn for_cpu(src: &impl CpuidSource) -> Result<Self, NoVendor> {
        if Vendor::of(src)?.is_amd_like() {
            return Ok(Self::AMD_ZEN);
        }
        let la57 = src.cpuid(0, 0).eax >= 7 && src.cpuid(7, 0).ecx & LA57 != 0;
        Ok(Self {
            fip_canonical_bits: Some(if la57 { 57 } else { 48 }),
            ..Self::INTEL
        })
    }
}

/// Whether a TILECFG image is a palette-1 configuration LDTILECFG accepts
/// (palette 1 is architectural: 8 tiles of at most 16 rows of 64 bytes).
fn tilecfg_valid(cfg: &[u8]) -> bool {
    const TILES: usize = 8;
    let Some((head, rest)) = cfg.split_first_chunk::<16>() else {
        return false;
    };
    let Some((colsb, rows)) = rest.split_first_chunk::<32>() else {
        return false;
    };
    head[0] == 1
        && head[2..].iter().all(|&b| b == 0)
        && (0..16).all(|t| {
            let c = u16::from_le_bytes([colsb[2 * t], colsb[2 * t + 1]]);
            let r = rows.get(t).copied().unwrap_or(0);
            if t < TILES {
                c <= 64 && r <= 16 && (c == 0) == (r == 0)
            } else {
                c == 0 && r == 0
            }
        })
}

/// What the last XRSTOR or XRSTORS recorded for the modified optimization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RestoreInfo {
    addr: usize,
    xcomp_bv: u64,
    cpl0: bool,
}

/// The modelled XSAVE-managed register state of one logical processor.
#[derive(Clone, Debug)]
pub struct XsaveMachine {
    e: Enumeration,
    quirks: Quirks,
    xcr0: XFeatures,
    xss: XFeatures,
    xfd: XFeatures,
    cpl0: bool,
    /// Each component's registers, in its standard-form byte image.
    regs: Vec<u8>,
    /// Where component i's image starts in `regs`.
    slot: [u32; 64],
    mxcsr: u32,
    xinuse: XFeatures,
    xmodified: XFeatures,
    last_restore: Option<RestoreInfo>,
}

impl XsaveMachine {
    /// A processor at CPL 0 with XCR0 and IA32_XSS set to everything `e`
    /// supports, XFD disarmed, every component in its init state.
    pub fn new(e: &Enumeration, quirks: Quirks) -> Self {
        let mut slot = [0u32; 64];
        let mut total = X87_SIZE as u32 + 256;
        slot[1] = X87_SIZE as u32;
        for i in e.supported().indices().filter(|&i| i >= 2) {
            slot[i as usize] = total;
            total += e.components()[i as usize].size;
        }
        let mut m = Self {
            e: e.clone(),
            quirks,
            xcr0: e.xcr0_supported(),
            xss: e.xss_supported(),
            xfd: XFeatures::empty(),
            cpl0: true,
            regs: vec![0; total as usize],
            slot,
            mxcsr: MXCSR_DEFAULT,
            xinuse: XFeatures::empty(),
            xmodified: XFeatures::empty(),
            last_restore: None,
        };
        m.regs[..2].copy_from_slice(&FCW_DEFAULT.to_le_bytes());
        m
    }

    /// The quirks this model follows.
    pub const fn quirks(&self) -> &Quirks {
        &self.quirks
    }

    /// XCR0.
    pub const fn xcr0(&self) -> XFeatures {
        self.xcr0
    }

    /// XSETBV(0): components leaving XCR0 go to their init state.
    ///
    /// # Errors
    /// [`Fault::Gp`] for a value XSETBV refuses (the rules of
    /// [`crate::guest::GuestXsave::set_xcr0`]: x87 clear, a bit the CPU does not
    /// support as a user component, AVX without SSE, AVX-512 without AVX, MPX,
    /// AVX-512 or AMX groups not whole), or at CPL > 0.
    pub fn set_xcr0(&mut self, xcr0: XFeatures) -> Result<(), Fault> {
        if !self.cpl0 || check_xcr0(xcr0, self.e.xcr0_supported()).is_err() {
            return Err(Fault::Gp);
        }
        self.init_components(self.xcr0 - xcr0);
        self.xcr0 = xcr0;
        Ok(())
    }

    /// IA32_XSS.
    pub const fn xss(&self) -> XFeatures {
        self.xss
    }

    /// WRMSR(IA32_XSS): components leaving it go to their init state.
    ///
    /// # Errors
    /// [`Fault::Gp`] for a bit the CPU does not support as a supervisor
    /// component, or at CPL > 0.
    pub fn set_xss(&mut self, xss: XFeatures) -> Result<(), Fault> {
        if !self.cpl0 || !self.e.xss_supported().contains(xss) {
            return Err(Fault::Gp);
        }
        self.init_components(self.xss - xss);
        self.xss = xss;
        Ok(())
    }

    /// IA32_XFD: the components whose use raises #NM.
    pub const fn xfd(&self) -> XFeatures {
        self.xfd
    }

    /// WRMSR(IA32_XFD).
    ///
    /// # Errors
    /// [`Fault::Gp`] for a component CPUID does not mark XFD-capable, or at
    /// CPL > 0.
    pub fn set_xfd(&mut self, xfd: XFeatures) -> Result<(), Fault> {
        let capable = xfd
            .indices()
            .all(|i| self.e.component(i).is_some_and(|c| c.xfd));
        if !self.cpl0 || !capable {
            return Err(Fault::Gp);
        }
        self.xfd = xfd;
        Ok(())
    }

    /// Whether the processor runs at CPL 0 (XSAVES/XRSTORS allowed).
    pub const fn cpl0(&self) -> bool {
        self.cpl0
    }

    /// Switch between CPL 0 and CPL 3.
    pub fn set_cpl0(&mut self, cpl0: bool) {
        self.cpl0 = cpl0;
    }

    /// XINUSE: the components not (known to be) in their init state.
    pub const fn xinuse(&self) -> XFeatures {
        self.xinuse
    }

    /// What XGETBV(1) returns: XINUSE & XCR0.
    pub fn xgetbv1(&self) -> XFeatures {
        let mut v = self.xinuse;
        if self.mxcsr_makes_sse_used() {
            v |= XFeatures::SSE;
        }
        v & self.xcr0
    }

    /// With [`Quirks::mxcsr_in_sse_init`], a non-default MXCSR makes SSE count
    /// as in use for XGETBV(1) and the init optimization of XSAVEC/XSAVES (not
    /// for XSAVE's and XSAVEOPT's XSTATE_BV, which follow the XMM registers:
    /// measured on Zen 4 and on the Intel Xeon by `model_vs_hw`).
    fn mxcsr_makes_sse_used(&self) -> bool {
        self.quirks.mxcsr_in_sse_init && self.mxcsr != MXCSR_DEFAULT
    }

    /// MXCSR.
    pub const fn mxcsr(&self) -> u32 {
        self.mxcsr
    }

    /// LDMXCSR.
    ///
    /// # Errors
    /// [`Fault::Gp`] for a bit outside the MXCSR mask; [`Fault::Ud`] if SSE is
    /// not in XCR0.
    pub fn set_mxcsr(&mut self, value: u32) -> Result<(), Fault> {
        if !self.xcr0.contains(XFeatures::SSE) {
            return Err(Fault::Ud);
        }
        if value & !self.e.mxcsr_mask() != 0 {
            return Err(Fault::Gp);
        }
        self.mxcsr = value;
        if self.quirks.mxcsr_in_sse_init {
            self.mark_used(XFeatures::SSE);
        }
        Ok(())
    }

    /// Component `index`'s registers in their standard-form image (x87: bytes
    /// 0..160 of the legacy region with MXCSR's 8 bytes zero; SSE: XMM0-15;
    /// others: the component's standard-form bytes). `None` if unsupported.
    pub fn reg(&self, index: u32) -> Option<&[u8]> {
        let r = self.reg_range(index)?;
        self.regs.get(r)
    }

    /// An instruction writes `bytes` at `offset` of component `index`'s image:
    /// the component becomes in use and modified. The model does not normalise
    /// the bytes: write what the instruction would leave in the registers.
    ///
    /// # Errors
    /// [`Fault::Ud`] if the component is not enabled in XCR0 | IA32_XSS;
    /// [`Fault::Nm`] if XFD arms it; [`Fault::Gp`] if the range is outside the
    /// component (a model refusal, not an architectural fault).
    pub fn write_reg(&mut self, index: u32, offset: usize, bytes: &[u8]) -> Result<(), Fault> {
        let dst = self.reg_slice(index, offset, bytes.len())?;
        dst.copy_from_slice(bytes);
        self.mark_used(bit(index));
        Ok(())
    }

    /// An instruction zeroes `len` bytes at `offset` of component `index` as a
    /// side effect (a VEX-encoded write clearing the upper bits of a ZMM
    /// register): the bytes change; XINUSE does not, except that with
    /// [`Quirks::init_by_value`] a component left all zero becomes init.
    ///
    /// # Errors
    /// As for [`XsaveMachine::write_reg`].
    pub fn zero_reg(&mut self, index: u32, offset: usize, len: usize) -> Result<(), Fault> {
        let was_used = self.xinuse.has_index(index);
        let dst = self.reg_slice(index, offset, len)?;
        dst.fill(0);
        if was_used {
            self.xmodified |= bit(index);
            // With init tracking by value, zeroing the last non-zero bytes of a
            // component puts it back in its init state (measured on Zen 4).
            if self.quirks.init_by_value && self.is_init(index) {
                self.xinuse -= bit(index);
            }
        }
        Ok(())
    }

    /// An instruction puts the components of `mask` in their init state
    /// (TILERELEASE for TILECFG and TILEDATA, VZEROALL for the vector
    /// registers' upper parts).
    ///
    /// XFD does not stop it: TILERELEASE with TILEDATA armed runs without #NM
    /// on the Intel Xeon (measured by `model_vs_hw`), and an armed component
    /// is in its init state anyway.
    ///
    /// # Errors
    /// [`Fault::Ud`] if a component is not enabled in XCR0 | IA32_XSS.
    pub fn init_regs(&mut self, mask: XFeatures) -> Result<(), Fault> {
        if !(self.xcr0 | self.xss).contains(mask) {
            return Err(Fault::Ud);
        }
        self.init_components(mask);
        Ok(())
    }

    fn reg_slice(&mut self, index: u32, offset: usize, len: usize) -> Result<&mut [u8], Fault> {
        let bit = bit(index);
        if !(self.xcr0 | self.xss).contains(bit) || bit.is_empty() {
            return Err(Fault::Ud);
        }
        if self.xfd.contains(bit) {
            return Err(Fault::Nm);
        }
        let r = self.reg_range(index).ok_or(Fault::Ud)?;
        let start = r.start.checked_add(offset).ok_or(Fault::Gp)?;
        let end = start.checked_add(len).ok_or(Fault::Gp)?;
        if end > r.end {
            return Err(Fault::Gp);
        }
        Ok(&mut self.regs[start..end])
    }

    fn reg_range(&self, index: u32) -> Option<core::ops::Range<usize>> {
        let size = match index {
            0 => X87_SIZE,
            1 => XMM_RANGE.len(),
            _ => self.e.component(index)?.size as usize,
        };
        let start = *self.slot.get(index as usize)? as usize;
        Some(start..start + size)
    }

    fn mark_used(&mut self, bits: XFeatures) {
        self.xinuse |= bits;
        self.xmodified |= bits;
    }

    fn init_components(&mut self, mask: XFeatures) {
        for i in mask.indices() {
            if let Some(r) = self.reg_range(i) {
                self.regs[r].fill(0);
            }
            if i == 0 {
                self.regs[..2].copy_from_slice(&FCW_DEFAULT.to_le_bytes());
            }
            if i == 1 {
                self.mxcsr = MXCSR_DEFAULT;
            }
        }
        self.xinuse -= mask;
        self.xmodified |= mask;
    }

    /// Whether component `index` holds its init values.
    fn is_init(&self, index: u32) -> bool {
        let Some(r) = self.reg_range(index) else {
            return true;
        };
        let img = &self.regs[r];
        match index {
            0 => {
                u16::from_le_bytes([img[0], img[1]]) == FCW_DEFAULT
                    && img[2..].iter().all(|&b| b == 0)
            }
            _ => img.iter().all(|&b| b == 0),
        }
    }

    /// The x87 image as XSAVE writes it.
    fn x87_out(&self, out: &mut [u8]) {
        out[..X87_SIZE].copy_from_slice(&self.regs[..X87_SIZE]);
        out[MXCSR_OFFSET..MXCSR_OFFSET + 8].fill(0);
        let fsw = u16::from_le_bytes([out[FSW_OFFSET], out[FSW_OFFSET + 1]]);
        if self.quirks.x87_pointers_need_es && fsw & FSW_ES == 0 {
            out[FOP_OFFSET..MXCSR_OFFSET].fill(0);
        }
    }

    /// Load the x87 image from a buffer, normalised as the registers hold it.
    fn x87_in(&mut self, src: &[u8]) {
        let img = &mut self.regs[..X87_SIZE];
        img.copy_from_slice(&src[..X87_SIZE]);
        img[MXCSR_OFFSET..MXCSR_OFFSET + 8].fill(0);
        let fcw = u16::from_le_bytes([img[0], img[1]]) & FCW_KEPT;
        img[..2].copy_from_slice(&fcw.to_le_bytes());
        img[FTW_OFFSET + 1] = 0;
        let fop = u16::from_le_bytes([img[FOP_OFFSET], img[FOP_OFFSET + 1]]) & FOP_KEPT;
        img[FOP_OFFSET..FOP_OFFSET + 2].copy_from_slice(&fop.to_le_bytes());
        for r in 0..8 {
            let s = ST0_OFFSET + 16 * r;
            img[s + 10..s + 16].fill(0);
        }
        if let Some(bits) = self
            .quirks
            .fip_canonical_bits
            .filter(|&b| (1..64).contains(&b))
        {
            let mut fip = [0u8; 8];
            fip.copy_from_slice(&img[FIP_OFFSET..FIP_OFFSET + 8]);
            let shift = 64 - u32::from(bits);
            // Sign-extend from bit `bits - 1`: the canonical form of the address.
            let fip = ((u64::from_le_bytes(fip) << shift) as i64 >> shift) as u64;
            img[FIP_OFFSET..FIP_OFFSET + 8].copy_from_slice(&fip.to_le_bytes());
        }
    }

    fn check_area(&self, addr: usize) -> Result<(), Fault> {
        if addr % 64 != 0 {
            return Err(Fault::Gp);
        }
        Ok(())
    }

    fn save_impl(&mut self, insn: Insn, area: &mut [u8], rfbm: XFeatures) -> Result<(), Fault> {
        let supported = match insn {
            Insn::Xsave => true,
            Insn::Xsaveopt => self.e.xsaveopt(),
            Insn::Xsavec => self.e.xsavec(),
            Insn::Xsaves => self.e.xsaves(),
            Insn::Xrstor | Insn::Xrstors => false,
        };
        if !supported {
            return Err(Fault::Ud);
        }
        if insn == Insn::Xsaves && !self.cpl0 {
            return Err(Fault::Gp);
        }
        self.check_area(area.as_ptr() as usize)?;
        let compacted = matches!(insn, Insn::Xsavec | Insn::Xsaves);
        let rfbm = if insn == Insn::Xsaves {
            rfbm & (self.xcr0 | self.xss)
        } else {
            rfbm & self.xcr0
        };
        // XFD-armed components are saved as if in their init state (SDM 13.14).
        let mut inuse = self.xinuse - self.xfd;
        if compacted && self.mxcsr_makes_sse_used() {
            inuse |= XFeatures::SSE;
        }
        let layout = if compacted {
            Some(Layout::compacted(&self.e, rfbm).map_err(|_| Fault::Gp)?)
        } else {
            None
        };
        let needed = match &layout {
            Some(l) => l.size(),
            None => self.e.standard_size(rfbm),
        } as usize;
        if area.len() < needed.max(EXTENDED_START as usize) {
            return Err(Fault::Gp);
        }
        let skip_unmodified = self.quirks.modified_optimization
            && matches!(insn, Insn::Xsaveopt | Insn::Xsaves)
            && self.last_restore
                == Some(RestoreInfo {
                    addr: area.as_ptr() as usize,
                    xcomp_bv: if compacted {
                        XCOMP_BV_COMPACTED | rfbm.bits()
                    } else {
                        0
                    },
                    cpl0: self.cpl0,
                });
        let write = |i: u32| -> bool {
            let bit = bit(i);
            match insn {
                Insn::Xsave => true,
                _ => {
                    inuse.contains(bit)
                        && (!skip_unmodified
                            || (self.xmodified | self.quirks.always_modified).contains(bit))
                }
            }
        };

        let mut x87 = [0u8; X87_SIZE];
        if rfbm.contains(XFeatures::X87) && write(0) {
            self.x87_out(&mut x87);
            area[..MXCSR_OFFSET].copy_from_slice(&x87[..MXCSR_OFFSET]);
            area[ST0_OFFSET..X87_SIZE].copy_from_slice(&x87[ST0_OFFSET..]);
        }
        if rfbm.contains(XFeatures::SSE) && write(1) {
            let r = self.reg_range(1).ok_or(Fault::Gp)?;
            area[XMM_RANGE].copy_from_slice(&self.regs[r]);
        }
        let mxcsr_saved = if compacted {
            rfbm.contains(XFeatures::SSE)
                && (!self.quirks.mxcsr_only_with_sse || inuse.contains(XFeatures::SSE))
        } else {
            rfbm.intersects(XFeatures::SSE | XFeatures::AVX)
        };
        if mxcsr_saved {
            area[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&self.mxcsr.to_le_bytes());
            area[MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4]
                .copy_from_slice(&self.e.mxcsr_mask().to_le_bytes());
        }
        let mut ext = rfbm.bits() >> 2 << 2;
        while ext != 0 {
            let i = ext.trailing_zeros();
            ext &= ext - 1;
            if !write(i) {
                continue;
            }
            let dst = match &layout {
                Some(l) => l.range_of(i),
                None => self.e.component(i).map(|c| {
                    let o = c.std_offset as usize;
                    o..o + c.size as usize
                }),
            };
            let (Some(dst), Some(src)) = (dst, self.reg_range(i)) else {
                continue;
            };
            area[dst].copy_from_slice(&self.regs[src]);
        }

        let hdr = XSTATE_BV_OFFSET;
        let old = u64::from_le_bytes(area[hdr..hdr + 8].try_into().map_err(|_| Fault::Gp)?);
        let xstate_bv = if compacted {
            (inuse & rfbm).bits()
        } else {
            (old & !rfbm.bits()) | (inuse & rfbm).bits()
        };
        area[hdr..hdr + 8].copy_from_slice(&xstate_bv.to_le_bytes());
        if compacted {
            let xcomp_bv = XCOMP_BV_COMPACTED | rfbm.bits();
            area[XCOMP_BV_OFFSET..XCOMP_BV_OFFSET + 8].copy_from_slice(&xcomp_bv.to_le_bytes());
        }
        Ok(())
    }

    fn restore_impl(&mut self, insn: Insn, area: &[u8], rfbm: XFeatures) -> Result<(), Fault> {
        let supervisor = match insn {
            Insn::Xrstor => false,
            Insn::Xrstors if self.e.xsaves() => true,
            _ => return Err(Fault::Ud),
        };
        if supervisor && !self.cpl0 {
            return Err(Fault::Gp);
        }
        let addr = area.as_ptr() as usize;
        self.check_area(addr)?;
        let enabled = if supervisor {
            self.xcr0 | self.xss
        } else {
            self.xcr0
        };
        let rfbm = rfbm & enabled;
        let header = area
            .get(XSTATE_BV_OFFSET..EXTENDED_START as usize)
            .ok_or(Fault::Gp)?;
        let word = |k: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[8 * k..8 * k + 8]);
            u64::from_le_bytes(b)
        };
        let (xstate_bv, xcomp_bv) = (word(0), word(1));
        // The standard form checks header bytes 8..24 (XCOMP_BV and the first
        // reserved quadword), the compacted form bytes 16..64.
        let reserved_clear = if xcomp_bv & XCOMP_BV_COMPACTED != 0 {
            header[16..].iter().all(|&b| b == 0)
        } else {
            header[16..24].iter().all(|&b| b == 0)
        };
        let compacted = xcomp_bv & XCOMP_BV_COMPACTED != 0;
        if supervisor && !compacted {
            return Err(Fault::Gp);
        }
        let layout = if compacted {
            if !self.e.xsavec() && !supervisor {
                return Err(Fault::Gp);
            }
            let comp = xcomp_bv & !XCOMP_BV_COMPACTED;
            if comp & !enabled.bits() != 0 || xstate_bv & !comp != 0 || !reserved_clear {
                return Err(Fault::Gp);
            }
            Some(
                Layout::compacted(&self.e, XFeatures::from_bits_retain(comp))
                    .map_err(|_| Fault::Gp)?,
            )
        } else {
            if xcomp_bv != 0 || xstate_bv & !self.xcr0.bits() != 0 || !reserved_clear {
                return Err(Fault::Gp);
            }
            None
        };
        let xstate_bv = XFeatures::from_bits_retain(xstate_bv);
        let needed = match &layout {
            Some(l) => l.size(),
            None => self.e.standard_size(rfbm & xstate_bv),
        } as usize;
        if area.len() < needed {
            return Err(Fault::Gp);
        }
        // XFD (SDM 13.14): loading live state of an armed component raises #NM;
        // with XSTATE_BV[i] = 0 it is put in its init state. The Intel
        // recording's `xfd-armed-tiledata-live` probe dies of SIGILL (the #NM
        // the kernel does not resolve without permission); `xfd-armed-all-init`
        // restores. The header's #GP checks come first, MXCSR's after (the
        // Intel Xeon, measured by `model_vs_hw`).
        if rfbm.intersects(xstate_bv & self.xfd) {
            return Err(Fault::Nm);
        }

        let mxcsr_from_area = if compacted {
            rfbm.contains(XFeatures::SSE) && xstate_bv.contains(XFeatures::SSE)
        } else {
            rfbm.intersects(XFeatures::SSE | XFeatures::AVX)
        };
        let mxcsr = u32::from_le_bytes(
            area[MXCSR_OFFSET..MXCSR_OFFSET + 4]
                .try_into()
                .map_err(|_| Fault::Gp)?,
        );
        if mxcsr_from_area && mxcsr & !self.e.mxcsr_mask() != 0 {
            return Err(Fault::Gp);
        }

        // No fault from here on: load.
        let load = rfbm & xstate_bv;
        self.init_components(rfbm - load);
        if load.contains(XFeatures::X87) {
            self.x87_in(area);
        }
        if load.contains(XFeatures::SSE) {
            let r = self.reg_range(1).ok_or(Fault::Gp)?;
            self.regs[r].copy_from_slice(&area[XMM_RANGE]);
        }
        if mxcsr_from_area {
            self.mxcsr = mxcsr;
        }
        let mut ext = load.bits() >> 2 << 2;
        while ext != 0 {
            let i = ext.trailing_zeros();
            ext &= ext - 1;
            let src = match &layout {
                Some(l) => l.range_of(i),
                None => self.e.component(i).map(|c| {
                    let o = c.std_offset as usize;
                    o..o + c.size as usize
                }),
            };
            if let (Some(src), Some(dst)) = (src, self.reg_range(i)) {
                self.regs[dst].copy_from_slice(&area[src]);
            }
        }
        for i in load.indices() {
            let bit = bit(i);
            let palette_init = i == TILECFG
                && self.quirks.tilecfg_invalid_init
                && !self.reg(TILECFG).is_some_and(tilecfg_valid);
            if palette_init {
                // The CPU holds no tile configuration: TILECFG is in its init
                // state, whatever the other 63 bytes said.
                self.init_components(bit);
            } else if self.quirks.init_by_value && self.is_init(i) {
                self.xinuse -= bit;
            } else {
                self.xinuse |= bit;
            }
        }
        // Components outside RFBM count as modified: only what this restore
        // loaded is known to match the buffer.
        self.xmodified = XFeatures::all() - rfbm;
        self.last_restore = Some(RestoreInfo {
            addr,
            xcomp_bv: if compacted { xcomp_bv } else { 0 },
            cpl0: self.cpl0,
        });
        Ok(())
    }
}

impl XsaveUnit for XsaveMachine {
    fn save(&mut self, insn: Insn, area: &mut [u8], rfbm: XFeatures) -> Result<(), Fault> {
        self.save_impl(insn, area, rfbm)
    }

    fn restore(&mut self, insn: Insn, area: &[u8], rfbm: XFeatures) -> Result<(), Fault> {
        self.restore_impl(insn, area, rfbm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::RecordedCpuid;

    /// XSETBV on the model refuses exactly what the XSETBV rules refuse, at
    /// CPL 0, and everything at CPL 3 (a dump with MPX, AVX-512 and AMX).
    #[test]
    fn xsetbv_follows_the_xsetbv_rules() {
        let dump = include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt");
        let e = Enumeration::from_cpuid(&RecordedCpuid::parse(dump).unwrap()).unwrap();
        let supported = e.xcr0_supported().bits();
        let mut m = XsaveMachine::new(&e, Quirks::INTEL);
        let (mut ok, mut gp) = (0, 0);
        // Every subset of the low 20 bits plus stray ones.
        for v in (0..1u64 << 20)
            .step_by(7)
            .chain([1 << 40, supported | 1 << 40])
        {
            let x = XFeatures::from_bits_retain(v);
            let want = check_xcr0(x, e.xcr0_supported()).is_ok();
            assert_eq!(m.set_xcr0(x).is_ok(), want, "XCR0 {v:#x}");
            if want {
                assert_eq!(m.xcr0(), x);
                ok += 1;
            } else {
                gp += 1;
            }
        }
        assert!(ok > 0 && gp > 0, "{ok} accepted, {gp} refused");
        // The rules themselves, on values whose verdict the SDM fixes.
        for (v, legal) in [
            (0x3, true),
            (0x2, false),
            (0x5, false),
            (0x7, true),
            (0xe7, true),
            (0x67, false),
            (0xc3, false),
            (0x20007, false),
            (0x60007, true),
            (0xf, false),
        ] {
            assert_eq!(
                m.set_xcr0(XFeatures::from_bits_retain(v)).is_ok(),
                legal,
                "XCR0 {v:#x}"
            );
        }
        m.set_cpl0(false);
        assert_eq!(m.set_xcr0(XFeatures::from_bits_retain(0x3)), Err(Fault::Gp));
    }
}
