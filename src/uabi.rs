//! The user ABI: the standard (non-compacted) XSAVE format that signal frames,
//! ptrace's `NT_X86_XSTATE` and `KVM_GET/SET_XSAVE` carry, converted to and from
//! an fpstate's kernel buffer.
//!
//! Import is where untrusted bytes enter the kernel, so it validates the whole
//! buffer first, exactly as Linux does (`validate_user_xstate_header`, the MXCSR
//! check of `copy_uabi_to_xstate`, `check_xstate_in_sigframe`), and writes the
//! fpstate only after every check passed: a refused buffer leaves it unchanged.
//! Export never lets a stale byte out: gaps and init components are written as
//! zeros (every extended component's init state is all zeros).
//!
//! Which ABI a buffer travels through decides how many bytes the kernel reads
//! and which XSTATE_BV bits it takes: [`import_abi`] with a [`UserAbi`] says it
//! (ptrace reads exactly the user size, KVM its uabi size and only what it
//! supports for guests); [`import`] is the length-lenient form.

// The bytes this module reads come from user space: no index, slice or sum
// may panic or wrap unseen. Where one stays (on the copy paths), an
// `#[expect]` beside it gives the check that bounds it.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;

use crate::config::Configs;
use crate::enumerate::{EXTENDED_START, Enumeration};
use crate::error::{BufferTooSmall, ForeignFpstate};
use crate::feature::XFeatures;
use crate::fpstate::{
    FCW_OFFSET, Fpstate, MXCSR_DEFAULT, MXCSR_MASK_OFFSET, MXCSR_OFFSET, Storage, XCOMP_BV_OFFSET,
    XSTATE_BV_OFFSET, get_u32, get_u64, put_u32, put_u64,
};
use crate::layout::{self, CopyPlan, Form, Layout, LayoutError};

/// `fx_sw_reserved.magic1`: the frame carries an extended XSAVE area.
pub const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// The word right after the XSAVE area in a signal frame.
pub const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Where the software-reserved bytes (`struct _fpx_sw_bytes`) start.
pub const SW_BYTES_OFFSET: usize = 464;

/// The components whose XSTATE_BV (or RFBM) bit makes XSAVE write, and XRSTOR
/// load, MXCSR (SDM vol. 1, 13.7 and 13.8: MXCSR goes with SSE or AVX).
const MXCSR_USERS: XFeatures = XFeatures::SSE.union(XFeatures::AVX);
const X87_END: usize = 160;
const SSE_RANGE: core::ops::Range<usize> = 160..416;
/// Bytes 0..24 of the legacy region: the x87 control state before MXCSR.
const X87_HEAD: usize = MXCSR_OFFSET;
/// The legacy region (FXSAVE image).
const LEGACY: usize = crate::enumerate::LEGACY_SIZE as usize;

/// Why an import or export was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UabiError {
    /// The user buffer is smaller than the format needs.
    BufferTooSmall(BufferTooSmall),
    /// The fpstate was made under other configs.
    Foreign(ForeignFpstate),
    /// XSTATE_BV has bits the fpstate cannot take from user space: unknown,
    /// supervisor, or dynamic ones not granted (no space in the buffer).
    FeaturesNotPermitted {
        /// The offending bits.
        mask: u64,
    },
    /// XCOMP_BV is not zero: user space must use the standard form.
    CompactedForm {
        /// The XCOMP_BV given.
        xcomp_bv: u64,
    },
    /// Header bytes 16..64 are not all zero.
    ReservedHeader,
    /// MXCSR has bits outside the CPU's MXCSR mask while the header makes it live.
    InvalidMxcsr {
        /// The MXCSR given.
        value: u32,
        /// The CPU's MXCSR mask.
        mask: u32,
    },
    /// Signal frame: `fx_sw_reserved.magic1` is wrong.
    BadMagic1 {
        /// The value found.
        value: u32,
    },
    /// Signal frame: the word after the area is not `FP_XSTATE_MAGIC2`.
    BadMagic2 {
        /// The value found.
        value: u32,
    },
    /// Signal frame: `xstate_size` / `extended_size` are inconsistent or out of range.
    BadFrameSize {
        /// `fx_sw_reserved.xstate_size`.
        xstate_size: u32,
        /// `fx_sw_reserved.extended_size`.
        extended_size: u32,
    },
    /// The fpstate's features have no layout under this enumeration (the fpstate
    /// was made from another CPU's configs).
    Layout(LayoutError),
    /// The ABI transfers whole units and the length is not a multiple of one
    /// (ptrace's `NT_X86_XSTATE` regset counts 8-byte words: Linux's
    /// `ptrace_regset` refuses other lengths with EINVAL before reading).
    UnalignedLength {
        /// Bytes given.
        got: usize,
        /// The unit, in bytes.
        unit: usize,
    },
}

impl UabiError {
    /// The Linux errno (positive) a kernel returns for this error.
    pub const fn errno(self) -> i32 {
        match self {
            Self::BufferTooSmall(_) => 14, // EFAULT: the copy would run past the buffer
            _ => 22,                       // EINVAL
        }
    }
}

impl From<BufferTooSmall> for UabiError {
    fn from(b: BufferTooSmall) -> Self {
        Self::BufferTooSmall(b)
    }
}

impl core::error::Error for UabiError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::BufferTooSmall(b) => Some(b),
            Self::Foreign(x) => Some(x),
            Self::Layout(l) => Some(l),
            _ => None,
        }
    }
}

impl fmt::Display for UabiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BufferTooSmall(b) => b.fmt(f),
            Self::Foreign(x) => x.fmt(f),
            Self::FeaturesNotPermitted { mask } => {
                write!(
                    f,
                    "XSTATE_BV bits {mask:#x} are not permitted user features of this fpstate"
                )
            }
            Self::CompactedForm { xcomp_bv } => {
                write!(
                    f,
                    "XCOMP_BV {xcomp_bv:#x}: user buffers must be in the standard form"
                )
            }
            Self::ReservedHeader => write!(f, "reserved XSAVE header bytes are not zero"),
            Self::InvalidMxcsr { value, mask } => {
                write!(
                    f,
                    "MXCSR {value:#x} has bits outside the supported mask {mask:#x}"
                )
            }
            Self::BadMagic1 { value } => write!(f, "signal frame magic1 {value:#x} is wrong"),
            Self::BadMagic2 { value } => write!(f, "signal frame magic2 {value:#x} is wrong"),
            Self::BadFrameSize {
                xstate_size,
                extended_size,
            } => write!(
                f,
                "signal frame sizes xstate_size {xstate_size} / extended_size {extended_size} are invalid"
            ),
            Self::Layout(e) => write!(f, "fpstate layout: {e}"),
            Self::UnalignedLength { got, unit } => {
                write!(f, "length {got} is not a multiple of {unit} bytes")
            }
        }
    }
}

/// `area` (an fpstate's bytes, read once) holds all of `layout`. [`Storage`]
/// is a safe trait that promises nothing about lengths, so the copy paths take
/// the area once and check it against the layout before they index it.
fn check_area(area: &[u8], layout: &Layout) -> Result<(), UabiError> {
    Ok(BufferTooSmall::check(area.len(), layout.size() as usize)?)
}

/// The kernel-form layout of `fp`: precomputed in the configs for the usual sets,
/// computed (once, off the fast path) for anything else.
fn kernel_layout<'a, S: Storage>(
    e: &Enumeration,
    cfg: &'a Configs,
    fp: &Fpstate<S>,
    spare: &'a mut Option<Layout>,
) -> Result<&'a Layout, UabiError> {
    let features = fp.info().features;
    if let Some(l) = cfg.layout_of(features) {
        return Ok(l);
    }
    let l = match fp.info().form {
        Form::Compacted => Layout::compacted(e, features),
        Form::Standard => Layout::standard(e, features),
    };
    Ok(spare.insert(l.map_err(UabiError::Layout)?))
}

/// Export `fp` into `out` in the standard form, for the user features in `mask`
/// (intersected with the fpstate's user features). Returns the bytes written:
/// the standard size of that mask. Everything in that range is written: state,
/// init values, zeroed gaps; `out` beyond it is untouched.
///
/// This is Linux's `__copy_xstate_to_uabi_buf` in its XSAVE mode, what
/// `PTRACE_GETREGSET(NT_X86_XSTATE)` and `KVM_GET_XSAVE2` return:
/// - ptrace passes the task's user features; KVM passes what the guest's CPUID
///   allows plus x87 and SSE (`guest_supported_xcr0 | XFEATURE_MASK_FPSSE`), so
///   state of a component the guest may not enable never reaches a snapshot.
///   Both hand the caller a larger buffer (the user size, the KVM uabi size)
///   and zero it past the last component: zero `out` first to match;
/// - MXCSR and MXCSR_MASK travel as one unit: from the fpstate when SSE or AVX
///   is exported live (so the MXCSR_MASK the last [`import`] took comes back,
///   as Linux's does), else MXCSR's default and the CPU's mask
///   (`cfg.mxcsr_mask()`, what Linux's init state holds);
/// - PKRU's slot (when the fpstate has PKRU and the slot lies in the range) is
///   the fpstate's PKRU if live, else 0, and its reserved bytes 4..8 are zero:
///   Linux writes its own copy of the register there (`struct pkru_state`),
///   whatever XSTATE_BV says.
///
/// # Errors
/// [`UabiError::BufferTooSmall`] (nothing is written then).
pub fn export<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    mask: XFeatures,
    out: &mut [u8],
) -> Result<usize, UabiError> {
    fp.check_configs(cfg).map_err(UabiError::Foreign)?;
    let user = mask & fp.info().user_features;
    // Every user component live (a task that used them all since its last
    // context switch): the precomputed runs alone, no walk over components.
    if let Some((layout, plan)) = fp.plan().and_then(|i| cfg.copy_plan(i)) {
        if user == plan.user() && fp.xstate_bv().contains(user) {
            return export_whole(cfg, layout, plan, fp, out);
        }
    }
    export_components(cfg, fp, user, out)
}

/// [`export`] of `user` (some user components in their init state, or an
/// fpstate without a precomputed plan), component by component. Out of line,
/// so that [`export`]'s whole-image path keeps a small frame.
#[inline(never)]
fn export_components<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    user: XFeatures,
    out: &mut [u8],
) -> Result<usize, UabiError> {
    let e = cfg.enumeration();
    let size = e.standard_size(user) as usize;
    let got = out.len();
    let out = BufferTooSmall::prefix_mut(out, size)?;
    let mut spare = None;
    let layout = kernel_layout(e, cfg, fp, &mut spare)?;
    let src = fp.area();
    check_area(src, layout)?;
    let xstate_bv = fp.xstate_bv() & user;
    let (Some(o), Some(s)) = (out.first_chunk_mut(), src.first_chunk()) else {
        // A standard size and an fpstate area are never below 576 bytes.
        return Err(UabiError::BufferTooSmall(BufferTooSmall {
            needed: LEGACY,
            got: got.min(src.len()),
        }));
    };
    write_legacy(o, s, xstate_bv, cfg.mxcsr_mask());
    if xstate_bv.intersects(MXCSR_USERS) {
        let mask = get_u32(src, MXCSR_MASK_OFFSET);
        put_u32(out, MXCSR_MASK_OFFSET, mask);
    }
    // From here to the first live extended component everything but a few
    // header fields is zero: one fill (the component walk below does it).
    let mut zero_from = SSE_RANGE.end;

    // Extended region: the live components in order, every byte that is not
    // live state (gaps, components in init state) zeroed.
    #[expect(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "runs() yields only components of `xstate_bv`, a subset of `user`: their \
                  standard ranges end by standard_size(user) = out.len() (enumeration checked \
                  every std_offset + size against it, in u32), and their kernel ranges come \
                  from the layout of the fpstate's features, which check_area() found `src` \
                  to hold"
    )]
    for r in runs(e, layout, xstate_bv) {
        if zero_from < r.std {
            out[zero_from..r.std].fill(0);
        }
        out[r.std..r.std + r.len].copy_from_slice(&src[r.kernel..r.kernel + r.len]);
        zero_from = zero_from.max(r.std + r.len);
    }
    if let Some(rest) = out.get_mut(zero_from..) {
        rest.fill(0);
    }
    if fp.info().user_features.contains(XFeatures::PKRU) {
        write_pkru(e, layout, fp, out);
    }
    // The software-reserved bytes carry the user feature mask, as ptrace's
    // NT_X86_XSTATE and KVM_GET_XSAVE do (Linux's USER_XSTATE_XCR0_WORD); the
    // header is zero but XSTATE_BV.
    put_u64(out, SW_BYTES_OFFSET, cfg.user().max_features.bits());
    put_u64(out, XSTATE_BV_OFFSET, xstate_bv.bits());
    Ok(size)
}

/// [`export`] of every user component of `fp`, each live: one copy per run
/// of the plan, the standard form's gaps between runs zeroed, then the bytes
/// the first run brought from the kernel header written once: 416..576 zero
/// but the software bytes and XSTATE_BV, and PKRU's reserved half. The same
/// bytes as the per-component path (x87, SSE and AVX live, so the legacy
/// region, MXCSR and MXCSR_MASK are the fpstate's).
#[expect(
    clippy::arithmetic_side_effects,
    reason = "run starts and lengths are u32 values of one enumeration whose ends were \
              checked to fit in u32, so their sums fit in usize"
)]
fn export_whole<S: Storage>(
    cfg: &Configs,
    layout: &Layout,
    plan: &CopyPlan,
    fp: &Fpstate<S>,
    out: &mut [u8],
) -> Result<usize, UabiError> {
    let size = plan.std_size() as usize;
    let out = BufferTooSmall::prefix_mut(out, size)?;
    let src = fp.area();
    check_area(src, layout)?;
    let mut end = 0;
    for r in plan.runs() {
        // A gap only where the standard form has one: no call for nothing.
        if end < r.std as usize {
            if let Some(gap) = out.get_mut(end..r.std as usize) {
                zero(gap);
            }
        }
        end = (r.std + r.len) as usize;
        // Bytes 416..576 are written whole after the runs: not copied first.
        let (k, s, len) = around_header(r, out, src);
        // The plan's runs end within the standard size (= `out.len()`) and
        // within the layout's size, which check_area() found `src` to hold.
        if let (Some(d), Some(from)) = (out.get_mut(s..s + len), src.get(k..k + len)) {
            d.copy_from_slice(from);
        }
    }
    put_header_tail(out, cfg.user().max_features, plan.user());
    if plan.user().contains(XFeatures::PKRU) {
        let e = cfg.enumeration();
        match e.component(XFeatures::PKRU.bits().trailing_zeros()) {
            // The register came with its run (PKRU is live); its reserved
            // half is zero, as Linux's `struct pkru_state` writes it.
            Some(c) if c.size == 8 => put_u32(out, c.std_offset as usize + 4, 0),
            _ => write_pkru(e, layout, fp, out),
        }
    }
    Ok(size)
}

/// Bytes 416..576 of an export: zero but the software bytes' first word, the
/// user feature mask (ptrace's NT_X86_XSTATE and KVM_GET_XSAVE carry it:
/// Linux's USER_XSTATE_XCR0_WORD), and XSTATE_BV. Built in registers and
/// stored whole: a fixed-size store, no call.
fn put_header_tail(out: &mut [u8], user_max: XFeatures, xstate_bv: XFeatures) {
    let mut v = [0u8; KEPT];
    put_u64(&mut v, SW_BYTES_OFFSET - SSE_RANGE.end, user_max.bits());
    put_u64(&mut v, XSTATE_BV_OFFSET - SSE_RANGE.end, xstate_bv.bits());
    if let Some(h) = out
        .get_mut(SSE_RANGE.end..)
        .and_then(|t| t.first_chunk_mut::<KEPT>())
    {
        *h = v;
    }
}

/// Zero `d`: up to 64 bytes (the padding before a 64-byte aligned component)
/// with a few overlapping 16-byte stores; up to 256 (the standard form's MPX
/// hole) 64 bytes a step and one overlapping last step; no call for either.
/// More with one `fill`.
fn zero(d: &mut [u8]) {
    const PIECE: usize = 16;
    // Four pieces: one 64-byte line.
    const STEP: usize = 64;
    // Four steps: the largest gap written without a call.
    const MOST: usize = 256;
    let n = d.len();
    if (PIECE..=STEP).contains(&n) {
        // The last piece ends at `n`; the others start at 0, 16, 32 and stop
        // before it: every byte is covered, none past `n`.
        for at in [0, PIECE, 2 * PIECE, n.saturating_sub(PIECE)] {
            if let Some(p) = d
                .get_mut(at.min(n.saturating_sub(PIECE))..)
                .and_then(|t| t.first_chunk_mut::<PIECE>())
            {
                *p = [0; PIECE];
            }
        }
    } else if (STEP..=MOST).contains(&n) {
        // Steps at 0, 64, 128 while they end before `n`, then one ending at
        // `n`: every byte covered, none past `n`.
        let last = n.saturating_sub(STEP);
        for at in [0, STEP, 2 * STEP, last] {
            if let Some(p) = d
                .get_mut(at.min(last)..)
                .and_then(|t| t.first_chunk_mut::<STEP>())
            {
                *p = [0; STEP];
            }
        }
    } else {
        d.fill(0);
    }
}

/// Bytes 0..416 of a standard-form export: x87 state from the buffer or its
/// init values, MXCSR live with SSE or AVX (else its default), MXCSR_MASK
/// `mxcsr_mask`, XMM registers with SSE (else zeros).
fn write_legacy(out: &mut [u8; LEGACY], src: &[u8; LEGACY], xstate_bv: XFeatures, mxcsr_mask: u32) {
    if xstate_bv.contains(XFeatures::X87) {
        // The common case in one copy; MXCSR, its mask and the XMM registers
        // are rewritten below where they are not live.
        out[..SSE_RANGE.end].copy_from_slice(&src[..SSE_RANGE.end]);
    } else {
        out[..X87_END].fill(0);
        out[FCW_OFFSET..FCW_OFFSET + 2].copy_from_slice(&crate::fpstate::FCW_DEFAULT.to_le_bytes());
        if xstate_bv.contains(XFeatures::SSE) {
            out[SSE_RANGE].copy_from_slice(&src[SSE_RANGE]);
        }
    }
    if !xstate_bv.contains(XFeatures::SSE) {
        out[SSE_RANGE].fill(0);
    }
    let mxcsr = if xstate_bv.intersects(MXCSR_USERS) {
        get_u32(src, MXCSR_OFFSET)
    } else {
        MXCSR_DEFAULT
    };
    put_u32(out, MXCSR_OFFSET, mxcsr);
    put_u32(out, MXCSR_MASK_OFFSET, mxcsr_mask);
}

/// PKRU's standard slot in `out`, if it lies there: the fpstate's PKRU when
/// live, else 0 (the register's init value), then zeros to the component's end
/// (Linux's `struct pkru_state`: the register and 4 reserved bytes, which CPUID
/// enumerates as the whole component everywhere Linux keeps XSAVE enabled).
fn write_pkru<S: Storage>(e: &Enumeration, layout: &Layout, fp: &Fpstate<S>, out: &mut [u8]) {
    let i = XFeatures::PKRU.bits().trailing_zeros();
    let Some(c) = e.component(i) else {
        return;
    };
    let at = c.std_offset as usize;
    let Some(slot) = at
        .checked_add((c.size as usize).max(4))
        .and_then(|end| out.get_mut(at..end))
    else {
        return;
    };
    let value = match layout.range_of(i) {
        Some(k) if fp.xstate_bv().contains(XFeatures::PKRU) => get_u32(fp.area(), k.start),
        _ => 0,
    };
    slot.fill(0);
    put_u32(slot, 0, value);
}

/// Copy the extended components of `mask` from a standard-form `buf` into the
/// kernel buffer `dst` laid out by `layout`.
#[expect(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "callers pass a `mask` whose standard size `buf` was checked to hold (validate, \
              import_sigframe) and a `dst` that check_area() found to hold `layout`; ends \
              fit in u32"
)]
fn copy_components(e: &Enumeration, layout: &Layout, mask: XFeatures, buf: &[u8], dst: &mut [u8]) {
    for r in runs(e, layout, mask) {
        dst[r.kernel..r.kernel + r.len].copy_from_slice(&buf[r.std..r.std + r.len]);
    }
}

/// Components contiguous in both the kernel buffer and the standard form: one
/// copy instead of one per component.
#[derive(Clone, Copy)]
struct Run {
    /// Start in the kernel buffer.
    kernel: usize,
    /// Start in the standard form.
    std: usize,
    len: usize,
}

/// The runs of `mask`'s extended components that have space in `layout`, in
/// component order.
fn runs<'a>(e: &'a Enumeration, layout: &'a Layout, mask: XFeatures) -> Runs<'a> {
    Runs {
        e,
        layout,
        left: mask.bits() >> 2 << 2,
        pending: None,
    }
}

struct Runs<'a> {
    e: &'a Enumeration,
    layout: &'a Layout,
    /// Components not yet looked at.
    left: u64,
    /// The run being grown.
    pending: Option<Run>,
}

impl Iterator for Runs<'_> {
    type Item = Run;

    #[expect(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "`left != 0`, so `left - 1` cannot wrap; `i < 64` indexes the 64-entry \
                  table; offsets and lengths are u32 values of one enumeration whose ends \
                  were checked to fit in u32, so their sums fit in usize"
    )]
    fn next(&mut self) -> Option<Run> {
        while self.left != 0 {
            let i = self.left.trailing_zeros();
            self.left &= self.left - 1;
            let Some(k) = self.layout.range_of(i) else {
                continue;
            };
            let c = Run {
                kernel: k.start,
                std: self.e.components()[i as usize].std_offset as usize,
                len: k.len(),
            };
            match &mut self.pending {
                Some(p) if (p.kernel + p.len, p.std + p.len) == (c.kernel, c.std) => {
                    p.len += c.len;
                }
                p => {
                    if let Some(done) = p.replace(c) {
                        return Some(done);
                    }
                }
            }
        }
        self.pending.take()
    }
}

/// The components Linux leaves out of a signal frame while they are in their
/// init state, on a kernel with dynamic features (`XFEATURE_MASK_SIGFRAME_INITOPT`).
const SIGFRAME_INITOPT: XFeatures = XFeatures::XTILE;

/// Export into a signal frame exactly as Linux 6.18 writes one
/// (`copy_fpstate_to_sigframe`: the header cleared, `xsave_to_user_sigframe`,
/// `update_pkru_in_sigframe`, `save_xstate_epilog`). Returns the frame's XSAVE
/// part size including the trailing magic: the standard size of the fpstate's
/// user features (`mask` can only narrow them) plus 4, so a task's frame grows
/// when its fpstate grows for AMX (2,820 -> 11,012 bytes on a Xeon with AMX).
///
/// Written: bytes 0..416 (x87 and SSE state or their init values; MXCSR_MASK is
/// the CPU's, as XSAVE writes it), the software bytes at 464
/// (`FP_XSTATE_MAGIC1`, `extended_size`, `xfeatures`, `xstate_size`, zero
/// padding), the header (zero but XSTATE_BV), every extended component Linux's
/// XSAVE mask holds (state, or zeros in init state) and `FP_XSTATE_MAGIC2` at
/// the end. XSTATE_BV always has x87 and SSE set (so a handler that edits only
/// the legacy region gets its edits loaded by sigreturn) and PKRU where the
/// kernel enables it (Linux writes the thread's PKRU into the frame and marks
/// it live).
///
/// Left as `out` held them, because Linux leaves them too (they keep whatever
/// the user stack held): bytes 416..464, the standard form's holes between
/// components, and, when `cfg` has dynamic components (Linux's
/// `fpu_state_size_dynamic()`), the AMX components in their init state (Linux
/// removes them from its XSAVE mask; their XSTATE_BV bits are 0, so sigreturn
/// loads their init state without reading those bytes).
///
/// # Errors
/// [`UabiError::BufferTooSmall`] (nothing is written then).
pub fn export_sigframe<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    mask: XFeatures,
    out: &mut [u8],
) -> Result<usize, UabiError> {
    fp.check_configs(cfg).map_err(UabiError::Foreign)?;
    let e = cfg.enumeration();
    let user = mask & fp.info().user_features;
    let size32 = e.standard_size(user);
    let size = size32 as usize;
    // A standard size is at most 64 components of at most 1 MiB past their offsets.
    let needed32 = size32.saturating_add(4);
    let needed = needed32 as usize;
    let got = out.len();
    let out = BufferTooSmall::prefix_mut(out, needed)?;
    let mut spare = None;
    let layout = kernel_layout(e, cfg, fp, &mut spare)?;
    let src = fp.area();
    check_area(src, layout)?;
    let xstate_bv = fp.xstate_bv() & user;
    let dynamic = cfg.user().max_features.intersects(cfg.policy().dynamic);
    let rfbm = if dynamic {
        user.difference(SIGFRAME_INITOPT.difference(xstate_bv))
    } else {
        user
    };

    let (Some(o), Some(s)) = (out.first_chunk_mut(), src.first_chunk()) else {
        // A standard size and an fpstate area are never below 576 bytes.
        return Err(UabiError::BufferTooSmall(BufferTooSmall {
            needed: LEGACY,
            got: got.min(src.len()),
        }));
    };
    write_legacy(o, s, xstate_bv, cfg.mxcsr_mask());
    let Some((head, _)) = out.split_first_chunk_mut::<{ EXTENDED_START as usize }>() else {
        return Err(UabiError::BufferTooSmall(BufferTooSmall { needed, got }));
    };
    head[SW_BYTES_OFFSET..].fill(0);
    put_u32(head, SW_BYTES_OFFSET, FP_XSTATE_MAGIC1);
    put_u32(head, SW_BYTES_OFFSET + 4, needed32);
    put_u64(head, SW_BYTES_OFFSET + 8, user.bits());
    put_u32(head, SW_BYTES_OFFSET + 16, size32);
    let mut bv = xstate_bv | XFeatures::LEGACY;
    if user.contains(XFeatures::PKRU) {
        bv |= XFeatures::PKRU;
    }
    put_u64(out, XSTATE_BV_OFFSET, bv.bits());
    for i in rfbm.indices().filter(|&i| i >= 2) {
        let Some(c) = e.component(i) else {
            continue;
        };
        let at = c.std_offset as usize;
        #[expect(
            clippy::indexing_slicing,
            clippy::arithmetic_side_effects,
            reason = "`i` is a user component of `user`, so its standard range ends by \
                      standard_size(user) = size < out.len(); the kernel range `k` comes from \
                      the layout of the fpstate's features, which check_area() found `src` to \
                      hold"
        )]
        let dst = &mut out[at..at + c.size as usize];
        match layout.range_of(i) {
            #[expect(clippy::indexing_slicing, reason = "as above: `k` lies in the area")]
            Some(k) if xstate_bv.has_index(i) => dst.copy_from_slice(&src[k]),
            _ => dst.fill(0),
        }
    }
    if rfbm.contains(XFeatures::PKRU) {
        write_pkru(e, layout, fp, out);
    }
    put_u32(out, size, FP_XSTATE_MAGIC2);
    Ok(needed)
}

/// Import a standard-form user buffer into `fp`, with every check Linux makes.
///
/// Accepted: XSTATE_BV within the fpstate's user features, XCOMP_BV zero,
/// reserved header bytes zero, MXCSR within the CPU's mask whenever x87, SSE or
/// AVX is set. The fpstate's XCOMP_BV and its supervisor state (a guest's CET_S)
/// are kept; its user XSTATE_BV bits become the buffer's, and MXCSR_MASK is
/// taken as given (Linux stores it unchecked; [`export`] gives it back).
///
/// Any length that holds every component XSTATE_BV names is taken: that is
/// looser than Linux's ABIs, which read a fixed size. A kernel or VMM that
/// answers for ptrace or KVM uses [`import_abi`].
///
/// # Errors
/// A [`UabiError`] for the first check that fails; `fp` is unchanged then.
pub fn import<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    buf: &[u8],
) -> Result<XFeatures, UabiError> {
    fp.check_configs(cfg).map_err(UabiError::Foreign)?;
    import_own(cfg, fp, buf)
}

/// [`import`] for an fpstate already checked to belong to `cfg`.
fn import_own<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    buf: &[u8],
) -> Result<XFeatures, UabiError> {
    let hdr = validate(cfg, fp, buf)?;
    if let Some((layout, plan)) = fp.plan().and_then(|i| cfg.copy_plan(i)) {
        if hdr == plan.user() && buf.len() >= plan.std_size() as usize {
            return import_whole(layout, plan, fp, buf).map(|()| hdr);
        }
    }
    import_components(cfg, fp, buf, hdr)
}

/// [`import_own`] of a validated buffer that leaves some user components in
/// their init state (or of an fpstate without a precomputed plan), component
/// by component. Out of line, so that the whole-image path keeps a small frame.
#[inline(never)]
fn import_components<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    buf: &[u8],
    hdr: XFeatures,
) -> Result<XFeatures, UabiError> {
    let e = cfg.enumeration();
    let mut spare = None;
    let layout = kernel_layout(e, cfg, fp, &mut spare)?;
    write_validated(e, layout, fp, buf, hdr)?;
    Ok(hdr)
}

/// Every check [`import`] makes of a standard-form user buffer, without
/// writing anything: Linux's `validate_user_xstate_header` (XSTATE_BV within
/// the fpstate's user features, XCOMP_BV and the reserved header bytes zero),
/// MXCSR within the CPU's mask whenever x87, SSE or AVX is set, and a buffer
/// that holds every component XSTATE_BV names. Returns XSTATE_BV.
///
/// # Errors
/// The [`UabiError`] [`import`] would return.
pub fn check_import<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    buf: &[u8],
) -> Result<XFeatures, UabiError> {
    fp.check_configs(cfg).map_err(UabiError::Foreign)?;
    validate(cfg, fp, buf)
}

/// The user ABI a standard-form buffer comes through: how many bytes the
/// kernel reads, and which XSTATE_BV bits it takes before [`import`]'s own
/// checks (XSTATE_BV within the fpstate's user features, XCOMP_BV and the
/// reserved header zero, MXCSR within the CPU's mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserAbi {
    /// `PTRACE_SETREGSET(NT_X86_XSTATE)` (Linux's `ptrace_regset` and
    /// `xstateregs_set`): the regset counts 8-byte words, so a length that is
    /// not a multiple of 8 is refused first ([`UabiError::UnalignedLength`],
    /// EINVAL); a longer buffer is cut to the user size (`cfg.user().max_size`,
    /// whether or not the fpstate has grown), a shorter one is refused whole
    /// ([`UabiError::BufferTooSmall`], EFAULT), even if it holds every
    /// component its XSTATE_BV names.
    Ptrace,
    /// `KVM_SET_XSAVE` / `KVM_SET_XSAVE2` (`fpu_copy_uabi_to_guest_fpstate`):
    /// KVM reads `uabi_size` bytes (`max(4096, KVM_CAP_XSAVE2)`,
    /// `guest::kvm_xsave_size`; fewer:
    /// [`UabiError::BufferTooSmall`], EFAULT) and refuses XSTATE_BV bits
    /// outside `supported`, what KVM supports for guests
    /// (`kvm_caps.supported_xcr0`, which `KVM_GET_SUPPORTED_CPUID` leaf 0xD
    /// reports once the process holds guest permission for every dynamic
    /// component), with EINVAL ([`UabiError::FeaturesNotPermitted`]), whatever
    /// the guest fpstate could hold. On the way out KVM filters by what the
    /// guest's CPUID allows plus x87 and SSE: pass that as [`export`]'s mask.
    ///
    /// One KVM rule is not modelled: a buffer whose XSTATE_BV lacks PKRU
    /// leaves the vCPU's PKRU as it was (KVM keeps PKRU outside the XSAVE
    /// buffer), while the fpstate here then holds PKRU in its init state. A
    /// VMM on a CPU with PKRU that imports such buffers keeps PKRU itself.
    Kvm {
        /// What KVM supports for guests.
        supported: XFeatures,
        /// The bytes KVM reads.
        uabi_size: usize,
    },
}

/// [`import`] with the length and feature rules of the ABI the buffer came
/// through (see [`UserAbi`]). Bytes past what that ABI reads are ignored.
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, config::{Configs, Policy}};
/// # use xstate::fpstate::{Fpstate, Owner};
/// # use xstate::XFeatures;
/// use xstate::error::BufferTooSmall;
/// use xstate::uabi::{import_abi, UabiError, UserAbi};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
/// let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
/// # #[repr(C, align(64))] struct Storage([u8; 16384]);
/// # let mut storage = Storage([0; 16384]);
/// let mut fp = Fpstate::new_in(&cfg, Owner::Guest, &mut storage.0[..]).unwrap();
/// let mut buf = vec![0u8; cfg.user().max_size as usize];
/// buf[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
/// buf[512] = 0b111; // x87, SSE, AVX
/// // ptrace reads the whole user size: 1,024 bytes holding x87..AVX are refused.
/// assert_eq!(
///     import_abi(&cfg, &mut fp, &buf[..1024], UserAbi::Ptrace),
///     Err(UabiError::BufferTooSmall(BufferTooSmall { needed: buf.len(), got: 1024 }))
/// );
/// // KVM refuses what it does not support for guests, whatever the fpstate holds.
/// let kvm = UserAbi::Kvm { supported: XFeatures::X87 | XFeatures::SSE, uabi_size: 4096 };
/// assert_eq!(
///     import_abi(&cfg, &mut fp, &buf[..4096], kvm),
///     Err(UabiError::FeaturesNotPermitted { mask: XFeatures::AVX.bits() })
/// );
/// assert!(import_abi(&cfg, &mut fp, &buf, UserAbi::Ptrace).is_ok());
/// ```
///
/// # Errors
/// A [`UabiError`] for the first check that fails; `fp` is unchanged then.
pub fn import_abi<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    buf: &[u8],
    abi: UserAbi,
) -> Result<XFeatures, UabiError> {
    fp.check_configs(cfg).map_err(UabiError::Foreign)?;
    let (len, supported) = match abi {
        UserAbi::Ptrace => {
            const WORD: usize = 8;
            if buf.len() % WORD != 0 {
                return Err(UabiError::UnalignedLength {
                    got: buf.len(),
                    unit: WORD,
                });
            }
            (cfg.user().max_size as usize, None)
        }
        UserAbi::Kvm {
            supported,
            uabi_size,
        } => (uabi_size, Some(supported)),
    };
    let buf = BufferTooSmall::prefix(buf, len)?;
    // KVM's own check comes first; a buffer too short for a header is left
    // to import, which says so.
    if let Some(supported) = supported.filter(|_| len >= EXTENDED_START as usize) {
        let bad = XFeatures::from_bits_retain(get_u64(buf, XSTATE_BV_OFFSET)).difference(supported);
        if !bad.is_empty() {
            return Err(UabiError::FeaturesNotPermitted { mask: bad.bits() });
        }
    }
    import_own(cfg, fp, buf)
}

/// How [`import_sigframe`] took a signal frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigframeImport {
    /// The user features now in use in the fpstate (its XSTATE_BV's user bits).
    pub features: XFeatures,
    /// `None`: an XSAVE frame, restored with RFBM = its software `xfeatures`.
    /// `Some(why)`: the software bytes or the trailing magic are not those of an
    /// XSAVE frame ([`UabiError::BadMagic1`], [`UabiError::BadFrameSize`] or
    /// [`UabiError::BadMagic2`]), so, as Linux does for frames written without
    /// XSAVE, only the legacy FXSAVE region was taken and every other user
    /// component is in its init state. A kernel that wants to be stricter than
    /// Linux refuses the frame itself when this is `Some`.
    pub fx_only: Option<UabiError>,
}

/// Import a signal frame's XSAVE part the way Linux's sigreturn loads it
/// (`__fpu_restore_sig` with `check_xstate_in_sigframe`, 64-bit frames):
///
/// - the software bytes at byte 464 are checked: `FP_XSTATE_MAGIC1`, an
///   `xstate_size` of at least 576, within the fpstate's user size and within
///   `extended_size`, and `FP_XSTATE_MAGIC2` at `xstate_size`. If any of that
///   fails the frame is "fx only" (see [`SigframeImport::fx_only`]);
/// - otherwise the restore mask is the frame's software `xfeatures`: components
///   in it take the frame's state where its XSTATE_BV says so (bits outside it
///   are ignored, like XRSTOR's RFBM ignores them), every other user component
///   is put in its init state. MXCSR is checked whenever the mask has SSE or
///   AVX, and taken from the frame when it has SSE; else it is 0x1f80 (Linux's
///   second XRSTOR, of the init state, resets it: measured against Linux 6.18's
///   sigreturn in `tests/sigframe.rs`);
/// - what the hardware would refuse is refused: XSTATE_BV bits outside the
///   user features the kernel enables, XCOMP_BV not zero or header bytes 16..24
///   set (bytes 24..64 are not checked by a standard-form XRSTOR, nor here),
///   MXCSR reserved bits, and state for a component the task may not use.
///   Components are read up to their standard end even past `xstate_size`,
///   as XRSTOR reads them; a `buf` too short for that is refused.
///
/// The fpstate's XCOMP_BV and supervisor state are kept.
///
/// # Errors
/// A [`UabiError`] (where Linux's sigreturn fails with SIGSEGV); `fp` is
/// unchanged then.
pub fn import_sigframe<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    buf: &[u8],
) -> Result<SigframeImport, UabiError> {
    let SigframeCheck {
        load,
        mxcsr,
        fx_only,
        ..
    } = check_sigframe(cfg, fp, buf)?;
    let e = cfg.enumeration();
    let mut spare = None;
    let layout = kernel_layout(e, cfg, fp, &mut spare)?;
    let user_max = fp.info().user_features;

    // Checked: now write. A non-default MXCSR counts as SSE state in use, so
    // the fpstate's XSTATE_BV never claims init while MXCSR is not.
    let mut features = load;
    if mxcsr != MXCSR_DEFAULT {
        features |= XFeatures::SSE;
    }
    let old_bv = fp.xstate_bv();
    let dst = fp.area_mut();
    check_area(dst, layout)?;
    // Both hold the legacy region: `buf` was checked above, and every fpstate
    // area holds at least the legacy region and header.
    let (Some(d), Some(b)) = (dst.first_chunk_mut::<LEGACY>(), buf.first_chunk::<LEGACY>()) else {
        return Err(UabiError::BufferTooSmall(BufferTooSmall {
            needed: LEGACY,
            got: buf.len().min(dst.len()),
        }));
    };
    if load.contains(XFeatures::X87) {
        d[..X87_HEAD].copy_from_slice(&b[..X87_HEAD]);
        d[32..X87_END].copy_from_slice(&b[32..X87_END]);
    }
    put_u32(d, MXCSR_OFFSET, mxcsr);
    put_u32(d, MXCSR_MASK_OFFSET, cfg.mxcsr_mask());
    if load.contains(XFeatures::SSE) {
        d[SSE_RANGE].copy_from_slice(&b[SSE_RANGE]);
    } else if features.contains(XFeatures::SSE) {
        d[SSE_RANGE].fill(0);
    }
    copy_components(e, layout, load, buf, dst);
    put_u64(
        dst,
        XSTATE_BV_OFFSET,
        (old_bv.difference(user_max) | features).bits(),
    );
    Ok(SigframeImport { features, fx_only })
}

/// What [`check_sigframe`] found a signal frame to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SigframeCheck {
    /// The components sigreturn takes from the frame (its XSTATE_BV within its
    /// restore mask); every other user component goes to its init state.
    pub load: XFeatures,
    /// The restore mask: the frame's software `xfeatures` within the user
    /// features the kernel enables (x87 and SSE alone for an "fx only" frame).
    pub restore_mask: XFeatures,
    /// The MXCSR sigreturn leaves (the frame's, or 0x1f80; see
    /// [`import_sigframe`]).
    pub mxcsr: u32,
    /// As in [`SigframeImport::fx_only`].
    pub fx_only: Option<UabiError>,
}

/// Every check [`import_sigframe`] makes of a signal frame, without writing
/// anything: a kernel that restores the registers straight from a frame
/// (XRSTOR from user memory, as Linux's sigreturn does first) runs this before
/// the instruction, so a frame the instruction would refuse with #GP never
/// reaches it.
///
/// # Errors
/// The [`UabiError`] [`import_sigframe`] would return.
pub fn check_sigframe<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    buf: &[u8],
) -> Result<SigframeCheck, UabiError> {
    fp.check_configs(cfg).map_err(UabiError::Foreign)?;
    let e = cfg.enumeration();
    // The legacy region, software bytes included.
    BufferTooSmall::check(buf.len(), XSTATE_BV_OFFSET)?;
    let user_max = fp.info().user_features;
    let fx_only = match check_sw_bytes(fp, buf) {
        Ok(()) => None,
        // Reading magic2 would run past the frame: sigreturn faults on that.
        Err(x @ UabiError::BufferTooSmall(BufferTooSmall { .. })) => return Err(x),
        Err(why) => Some(why),
    };
    let (load, rfbm, mxcsr_checked, mxcsr_loaded) = match fx_only {
        Some(_) => (XFeatures::LEGACY, XFeatures::LEGACY, true, true),
        None => {
            // XRSTOR's #GP: bits outside XCR0, the compacted form, header
            // bytes 16..24 (a standard-form XRSTOR does not look further).
            let enabled = cfg.user().max_features;
            let xstate_bv = check_header(buf, enabled, XCOMP_BV_OFFSET + 16)?;
            let rfbm = XFeatures::from_bits_retain(get_u64(buf, SW_BYTES_OFFSET + 8)) & enabled;
            let load = xstate_bv & rfbm;
            let bad = load.difference(user_max);
            if !bad.is_empty() {
                return Err(UabiError::FeaturesNotPermitted { mask: bad.bits() });
            }
            let needed = e.standard_size(load) as usize;
            BufferTooSmall::check(buf.len(), needed)?;
            (
                load,
                rfbm,
                rfbm.intersects(MXCSR_USERS),
                rfbm.contains(XFeatures::SSE),
            )
        }
    };
    let value = get_u32(buf, MXCSR_OFFSET);
    if mxcsr_checked {
        check_mxcsr(cfg, value)?;
    }
    let mxcsr = if mxcsr_loaded { value } else { MXCSR_DEFAULT };
    Ok(SigframeCheck {
        load,
        restore_mask: rfbm,
        mxcsr,
        fx_only,
    })
}

/// Linux's `check_xstate_in_sigframe`: is this an XSAVE frame of this task?
fn check_sw_bytes<S: Storage>(fp: &Fpstate<S>, buf: &[u8]) -> Result<(), UabiError> {
    let magic1 = get_u32(buf, SW_BYTES_OFFSET);
    if magic1 != FP_XSTATE_MAGIC1 {
        return Err(UabiError::BadMagic1 { value: magic1 });
    }
    let extended_size = get_u32(buf, SW_BYTES_OFFSET + 4);
    let xstate_size = get_u32(buf, SW_BYTES_OFFSET + 16);
    if xstate_size < EXTENDED_START
        || xstate_size > fp.info().user_size
        || xstate_size > extended_size
    {
        return Err(UabiError::BadFrameSize {
            xstate_size,
            extended_size,
        });
    }
    // `xstate_size` is at most the user size, a u32: the sum cannot wrap.
    let at = xstate_size as usize;
    let needed = at.saturating_add(4);
    let magic2 = match buf.get(at..needed).and_then(|w| w.first_chunk::<4>()) {
        Some(w) => u32::from_le_bytes(*w),
        None => {
            return Err(UabiError::BufferTooSmall(BufferTooSmall {
                needed,
                got: buf.len(),
            }));
        }
    };
    if magic2 != FP_XSTATE_MAGIC2 {
        return Err(UabiError::BadMagic2 { value: magic2 });
    }
    Ok(())
}

/// The standard-form header of `buf` (at least 576 bytes): XSTATE_BV within
/// `permitted`, XCOMP_BV zero, bytes 16 up to `reserved_end` zero. Returns
/// XSTATE_BV.
fn check_header(
    buf: &[u8],
    permitted: XFeatures,
    reserved_end: usize,
) -> Result<XFeatures, UabiError> {
    let xstate_bv = XFeatures::from_bits_retain(get_u64(buf, XSTATE_BV_OFFSET));
    let bad = xstate_bv.difference(permitted);
    if !bad.is_empty() {
        return Err(UabiError::FeaturesNotPermitted { mask: bad.bits() });
    }
    let xcomp_bv = get_u64(buf, XCOMP_BV_OFFSET);
    if xcomp_bv != 0 {
        return Err(UabiError::CompactedForm { xcomp_bv });
    }
    // One OR over the reserved bytes (no early exit: the compiler folds
    // them in vector registers), then one compare.
    let reserved = buf
        .get(XCOMP_BV_OFFSET + 8..reserved_end.min(buf.len()))
        .unwrap_or_default();
    if reserved.iter().fold(0, |acc, &b| acc | b) != 0 {
        return Err(UabiError::ReservedHeader);
    }
    Ok(xstate_bv)
}

/// The checks every user ABI makes of a standard-form header before any
/// feature mask: the buffer holds the legacy region and header, XCOMP_BV is
/// zero, the reserved header bytes are zero. Returns XSTATE_BV.
pub(crate) fn standard_header(buf: &[u8]) -> Result<XFeatures, UabiError> {
    let end = EXTENDED_START as usize;
    let header = BufferTooSmall::prefix(buf, end)?;
    check_header(header, XFeatures::from_bits_retain(u64::MAX), end)
}

/// MXCSR must have no bit outside the CPU's MXCSR mask (XRSTOR's #GP).
fn check_mxcsr(cfg: &Configs, value: u32) -> Result<(), UabiError> {
    if value & !cfg.mxcsr_mask() == 0 {
        Ok(())
    } else {
        Err(UabiError::InvalidMxcsr {
            value,
            mask: cfg.mxcsr_mask(),
        })
    }
}

fn validate<S: Storage>(
    cfg: &Configs,
    fp: &Fpstate<S>,
    buf: &[u8],
) -> Result<XFeatures, UabiError> {
    let header_end = EXTENDED_START as usize;
    BufferTooSmall::check(buf.len(), header_end)?;
    // Linux's `validate_user_xstate_header`: every reserved header byte.
    let xstate_bv = check_header(buf, fp.info().user_features, header_end)?;
    if xstate_bv.intersects(XFeatures::LEGACY.union(XFeatures::AVX)) {
        check_mxcsr(cfg, get_u32(buf, MXCSR_OFFSET))?;
    }
    // Every component the header claims must be inside the buffer; a buffer
    // of the user size holds every subset of the user features.
    if buf.len() < fp.info().user_size as usize {
        let needed = cfg.enumeration().standard_size(xstate_bv) as usize;
        BufferTooSmall::check(buf.len(), needed)?;
    }
    Ok(xstate_bv)
}

/// Bytes 416..576: reserved, software bytes, header.
const KEPT: usize = EXTENDED_START as usize - SSE_RANGE.end;

/// [`write_validated`] of a buffer whose XSTATE_BV names every user component
/// of `fp` and which holds their whole standard image: one copy per run of the
/// plan, the first around bytes 416..576 (reserved, software bytes, header),
/// which keep the fpstate's own values, then the new XSTATE_BV. The same bytes
/// as the per-component path.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "run starts and lengths are u32 values of one enumeration whose ends were \
              checked to fit in u32, so their sums fit in usize"
)]
fn import_whole<S: Storage>(
    layout: &Layout,
    plan: &CopyPlan,
    fp: &mut Fpstate<S>,
    buf: &[u8],
) -> Result<(), UabiError> {
    let new_bv = fp.xstate_bv().difference(fp.info().user_features) | plan.user();
    let dst = fp.area_mut();
    check_area(dst, layout)?;
    for r in plan.runs() {
        // Bytes 416..576 stay the fpstate's: the first run goes around them
        // (two copies, where saving those bytes and putting them back cost
        // more: section 4).
        let (k, s, len) = around_header(r, dst, buf);
        // The runs end within the standard size, which the caller found `buf`
        // to hold, and within the layout's size, which check_area() found
        // `dst` to hold.
        if let (Some(d), Some(from)) = (dst.get_mut(k..k + len), buf.get(s..s + len)) {
            d.copy_from_slice(from);
        }
    }
    put_u64(dst, XSTATE_BV_OFFSET, new_bv.bits());
    Ok(())
}

/// Run `r` as (kernel offset, standard offset, length) for a copy from
/// `from` to `to` in either direction, with the first run (the legacy region
/// and the header, at offset 0 in both forms, and whatever follows them in
/// both) split around bytes 416..576 (reserved, software bytes, header),
/// which neither an export nor an import takes from the other side: its bytes
/// 0..416 are copied here, in one fixed-size copy, and what is returned
/// starts at 576. Fewer bytes moved, and each piece a copy of its own (a
/// 2432-byte image as 416 + 1856 bytes copies faster than as one on a Zen 4:
/// BENCHMARKS.md section 7).
#[inline(always)]
fn around_header(r: &layout::Run, to: &mut [u8], from: &[u8]) -> (usize, usize, usize) {
    let (k, s, len) = (r.kernel as usize, r.std as usize, r.len as usize);
    if k != 0 || s != 0 {
        return (k, s, len);
    }
    if let (Some(d), Some(f)) = (
        to.first_chunk_mut::<{ SSE_RANGE.end }>(),
        from.first_chunk::<{ SSE_RANGE.end }>(),
    ) {
        *d = *f;
    }
    let after = SSE_RANGE.end + KEPT;
    (after, after, len.saturating_sub(after))
}

fn write_validated<S: Storage>(
    e: &Enumeration,
    layout: &Layout,
    fp: &mut Fpstate<S>,
    buf: &[u8],
    hdr: XFeatures,
) -> Result<(), UabiError> {
    let old_bv = fp.xstate_bv();
    let user_max = fp.info().user_features;
    let dst = fp.area_mut();
    check_area(dst, layout)?;
    // validate() checked `buf` holds the header; every fpstate area does.
    let (Some(d), Some(b)) = (dst.first_chunk_mut::<LEGACY>(), buf.first_chunk::<LEGACY>()) else {
        return Err(UabiError::BufferTooSmall(BufferTooSmall {
            needed: LEGACY,
            got: buf.len().min(dst.len()),
        }));
    };
    if hdr.contains(XFeatures::LEGACY) {
        // x87 (bytes 0..160, MXCSR and its mask included, like Linux) and the
        // XMM registers in one copy.
        d[..SSE_RANGE.end].copy_from_slice(&b[..SSE_RANGE.end]);
    } else {
        if hdr.contains(XFeatures::X87) {
            d[..X87_END].copy_from_slice(&b[..X87_END]);
        }
        if hdr.intersects(MXCSR_USERS) {
            d[MXCSR_OFFSET..MXCSR_MASK_OFFSET + 4]
                .copy_from_slice(&b[MXCSR_OFFSET..MXCSR_MASK_OFFSET + 4]);
        }
        if hdr.contains(XFeatures::SSE) {
            d[SSE_RANGE].copy_from_slice(&b[SSE_RANGE]);
        }
    }
    copy_components(e, layout, hdr, buf, dst);
    // Supervisor state and anything else not user-visible keeps its bits.
    let new_bv = old_bv.difference(user_max) | hdr;
    put_u64(dst, XSTATE_BV_OFFSET, new_bv.bits());
    Ok(())
}

/// [`import_abi`] into a guest fpstate under the guest's IA32_XFD: every
/// component armed in `xfd` leaves the fpstate in its init state (XSTATE_BV\[i\]
/// cleared), whatever the buffer held. Returns the user features now live in
/// the fpstate: the buffer's XSTATE_BV minus `xfd`.
///
/// This is KVM's `KVM_SET_XSAVE` since Linux's January 2026 fix "x86/fpu: Clear
/// XSTATE_BV\[i\] in guest XSAVE state whenever XFD\[i\]=1": the guest fpstate is
/// restored with the guest's XFD in force, and XRSTOR(S) raises #NM for live
/// state of an armed component (SDM vol. 1 13.14), in the host, where nothing
/// handles it. State of an armed component is unreachable for the guest anyway:
/// its next use faults and the guest's #NM handler starts it from init.
///
/// # Errors
/// As [`import_abi`]; `fp` is unchanged then.
pub fn import_guest<S: Storage>(
    cfg: &Configs,
    fp: &mut Fpstate<S>,
    buf: &[u8],
    abi: UserAbi,
    xfd: XFeatures,
) -> Result<XFeatures, UabiError> {
    let taken = import_abi(cfg, fp, buf, abi)?;
    clear_xstate_bv(fp, xfd);
    Ok(taken.difference(xfd))
}

/// Clear `mask`'s bits in `fp`'s XSTATE_BV (those components read as init on
/// the next restore); returns the bits that were set. XCOMP_BV is kept: a
/// compacted XRSTORS only needs XSTATE_BV within it.
pub(crate) fn clear_xstate_bv<S: Storage>(fp: &mut Fpstate<S>, mask: XFeatures) -> XFeatures {
    let bv = fp.xstate_bv();
    let cleared = bv & mask;
    if !cleared.is_empty() {
        put_u64(fp.area_mut(), XSTATE_BV_OFFSET, bv.difference(mask).bits());
    }
    cleared
}
