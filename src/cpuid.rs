//! Where CPUID values come from: the [`CpuidSource`] trait, the live CPU
//! ([`LiveCpuid`], through the `x86` crate) and recorded dumps ([`RecordedCpuid`],
//! parsed from the `cpuid -r` line format without allocating).
//!
//! A recorded dump and the live CPU are one trait, so every piece of logic above
//! this module runs the same on both (raw-cpuid's `CpuIdReader` is the model).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;

/// The four registers one CPUID query returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuidResult {
    /// EAX after CPUID.
    pub eax: u32,
    /// EBX after CPUID.
    pub ebx: u32,
    /// ECX after CPUID.
    pub ecx: u32,
    /// EDX after CPUID.
    pub edx: u32,
}

/// Anything that answers CPUID queries: the live CPU, a recorded dump, a
/// hypervisor's synthesized table.
pub trait CpuidSource {
    /// The registers for `leaf`, `subleaf`. A source that has no entry answers
    /// all zeros, as a CPU does for a subleaf it does not define.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;

    /// MXCSR_MASK as FXSAVE reports it on this CPU (0 read as the architectural
    /// 0xffbf), if the source knows it: CPUID does not enumerate it. The live
    /// CPU measures it; a recording knows it when its `# mxcsr_mask 0x...` line
    /// was written (by `xstate-report --record`); without it,
    /// [`Enumeration::mxcsr_mask`](crate::enumerate::Enumeration::mxcsr_mask)
    /// takes the vendor's value.
    fn mxcsr_mask(&self) -> Option<u32> {
        None
    }
}

impl<T: CpuidSource + ?Sized> CpuidSource for &T {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        (**self).cpuid(leaf, subleaf)
    }
    fn mxcsr_mask(&self) -> Option<u32> {
        (**self).mxcsr_mask()
    }
}

/// The CPU this code runs on, queried through the `x86` crate.
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveCpuid;

cfg_if::cfg_if! {
    if #[cfg(all(target_arch = "x86_64", not(target_env = "sgx")))] {
        impl CpuidSource for LiveCpuid {
            #[inline]
            fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
                let r = x86::cpuid::native_cpuid::cpuid_count(leaf, subleaf);
                CpuidResult { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
            }

            /// FXSAVE's MXCSR_MASK ([`crate::insn::read_mxcsr_mask`], one floor down).
            fn mxcsr_mask(&self) -> Option<u32> {
                Some(crate::probe::read_mxcsr_mask())
            }
        }
    } else {
        impl CpuidSource for LiveCpuid {
            /// No CPUID instruction on this target: every leaf reads as zero,
            /// which enumeration refuses (legacy components missing).
            fn cpuid(&self, _leaf: u32, _subleaf: u32) -> CpuidResult {
                CpuidResult::default()
            }
        }
    }
}

/// The CPU vendor CPUID leaf 0 names (EBX, EDX, ECX: 12 ASCII bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Vendor {
    /// `GenuineIntel`.
    Intel,
    /// `AuthenticAMD`.
    Amd,
    /// `HygonGenuine` (Zen-derived: AMD's XSAVE behaviour).
    Hygon,
    /// Any other name (Centaur, Zhaoxin, a hypervisor's own), as leaf 0 gives it.
    Other([u8; 12]),
}

impl Vendor {
    /// The vendor `src` names in leaf 0.
    ///
    /// # Errors
    /// [`NoVendor`] if leaf 0 is all zeros in EBX, EDX and ECX: a recording of
    /// leaf 0xD alone, which cannot tell AMD from Intel.
    ///
    /// ```
    /// use xstate::cpuid::{NoVendor, RecordedCpuid, Vendor};
    /// let d = "0x0000000d 0x00: eax=0x00000003 ebx=0x00000240 ecx=0x00000240 edx=0x00000000\n";
    /// assert_eq!(Vendor::of(&RecordedCpuid::parse(d).unwrap()), Err(NoVendor));
    /// let amd = "0x00000000 0x00: eax=0x0000001c ebx=0x68747541 ecx=0x444d4163 edx=0x69746e65\n";
    /// let c = RecordedCpuid::parse(&format!("{amd}{d}")).unwrap();
    /// assert_eq!(Vendor::of(&c), Ok(Vendor::Amd));
    /// ```
    pub fn of(src: &impl CpuidSource) -> Result<Self, NoVendor> {
        let l0 = src.cpuid(0, 0);
        if (l0.ebx, l0.edx, l0.ecx) == (0, 0, 0) {
            return Err(NoVendor);
        }
        let mut name = [0u8; 12];
        for (chunk, reg) in name.chunks_exact_mut(4).zip([l0.ebx, l0.edx, l0.ecx]) {
            chunk.copy_from_slice(&reg.to_le_bytes());
        }
        Ok(match &name {
            b"GenuineIntel" => Self::Intel,
            b"AuthenticAMD" => Self::Amd,
            b"HygonGenuine" => Self::Hygon,
            _ => Self::Other(name),
        })
    }

    /// AMD or Hygon: the vendors whose XSAVE behaves as AMD's Zen does.
    #[inline]
    pub const fn is_amd_like(self) -> bool {
        matches!(self, Self::Amd | Self::Hygon)
    }
}

/// A CPUID source without leaf 0, so without a vendor: whatever depends on the
/// vendor (the model's quirks, MXCSR_MASK's bit 17) is not guessed. Record
/// leaf 0 with the dump (`xstate-report --record` does, as `cpuid -r` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoVendor;

impl fmt::Display for NoVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the CPUID source has no leaf 0, so no vendor: record leaf 0 with the dump \
             (AMD and Intel differ in MXCSR_MASK and XSAVE behaviour)",
        )
    }
}

impl core::error::Error for NoVendor {}

/// Why a recorded dump was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// A line that is neither a comment, a `CPU:` header nor a register line.
    BadLine {
        /// 1-based line number.
        line: u32,
    },
    /// A register line whose `0x...` number does not parse as a `u32`.
    BadNumber {
        /// 1-based line number.
        line: u32,
    },
    /// The same leaf and subleaf twice with different values.
    Conflict {
        /// 1-based line number of the second entry.
        line: u32,
        /// The leaf.
        leaf: u32,
        /// The subleaf.
        subleaf: u32,
    },
    /// More leaf 0xD (or leaf 1/6/7) entries than [`RecordedCpuid::CAPACITY`].
    TooManyEntries {
        /// 1-based line number of the first entry that did not fit.
        line: u32,
    },
    /// No leaf 0xD entry at all.
    NoLeafD,
    /// A second `# mxcsr_mask` line with another value.
    MxcsrMaskTwice {
        /// 1-based line number of the second line.
        line: u32,
    },
}

impl core::error::Error for ParseError {}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadLine { line } => write!(
                f,
                "line {line}: expected `0xLEAF 0xSUB: eax=0x.. ebx=0x.. ecx=0x.. edx=0x..`"
            ),
            Self::BadNumber { line } => {
                write!(f, "line {line}: a number is not a 32-bit hex value")
            }
            Self::Conflict {
                line,
                leaf,
                subleaf,
            } => write!(
                f,
                "line {line}: leaf {leaf:#x} subleaf {subleaf:#x} appears twice with different values"
            ),
            Self::TooManyEntries { line } => write!(
                f,
                "line {line}: more than {} kept entries",
                RecordedCpuid::CAPACITY
            ),
            Self::NoLeafD => write!(f, "no CPUID leaf 0xd entry in the dump"),
            Self::MxcsrMaskTwice { line } => {
                write!(f, "line {line}: a second `# mxcsr_mask` with another value")
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    leaf: u32,
    subleaf: u32,
    regs: CpuidResult,
}

/// A CPUID dump in the `cpuid -r` line format, parsed into a fixed table.
///
/// Lines look like `0x0000000d 0x01: eax=0x0000000f ebx=0x000009a8 ecx=0x00001800 edx=0x00000000`,
/// with optional leading blanks. `#` comments, blank lines and `CPU:` / `CPU 0:` headers
/// are skipped; in a dump of several CPUs (`cpuid -r` without `-1`), only the first is
/// read. Leaves 0, 1, 6, 7 and 0xD are kept (the ones enumeration reads: leaf 0xD
/// for the components, leaves 1, 6 and 7 for the CPUID feature flags that decide
/// which of them are usable, leaf 0 for the vendor); every other leaf is checked for
/// syntax and dropped. A dump without leaf 1 has no feature flags: see
/// [`Enumeration::usable`](crate::enumerate::Enumeration::usable) for how the crate
/// reads it.
///
/// One comment line carries what CPUID cannot: `# mxcsr_mask 0x0002ffff` (the
/// MXCSR_MASK FXSAVE reported on the recorded CPU, written by
/// `xstate-report --record`), read back as [`CpuidSource::mxcsr_mask`]. Tools
/// that read the `cpuid -r` format skip it as a comment.
#[derive(Clone, Debug)]
pub struct RecordedCpuid {
    entries: [Entry; Self::CAPACITY],
    len: usize,
    mxcsr_mask: Option<u32>,
}

/// The comment that records MXCSR_MASK in a dump.
pub const MXCSR_MASK_LINE: &str = "# mxcsr_mask";

/// The leaves a recorded dump keeps (leaf 0 for the vendor and the highest leaf).
const KEPT_LEAVES: [u32; 5] = [0x0, 0x1, 0x6, 0x7, 0xd];

impl RecordedCpuid {
    /// How many kept entries a dump may hold: leaf 0xD has at most 64 subleaves.
    pub const CAPACITY: usize = 80;

    /// Parse a dump.
    ///
    /// # Errors
    /// [`ParseError`] naming the first bad line, or [`ParseError::NoLeafD`].
    ///
    /// ```
    /// use xstate::cpuid::{CpuidSource, RecordedCpuid};
    /// let dump = "CPU:\n   0x0000000d 0x00: eax=0x00000007 ebx=0x00000340 ecx=0x00000340 edx=0x00000000\n";
    /// let cpu = RecordedCpuid::parse(dump).unwrap();
    /// assert_eq!(cpu.cpuid(0xd, 0).eax, 7);
    /// assert_eq!(cpu.cpuid(0xd, 5).eax, 0); // absent subleaf reads as zero
    /// ```
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut out = Self {
            entries: [Entry::default(); Self::CAPACITY],
            len: 0,
            mxcsr_mask: None,
        };
        let mut cpu_seen = false;
        for (n, raw) in text.lines().enumerate() {
            let line = u32::try_from(n.saturating_add(1)).unwrap_or(u32::MAX);
            let t = raw.trim();
            let mask_line = t.strip_prefix(MXCSR_MASK_LINE).filter(|rest| {
                rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_whitespace())
            });
            if let Some(rest) = mask_line {
                // `# mxcsr_mask 0x...`, then anything (a note on where it came from).
                let word = rest.split_ascii_whitespace().next();
                let mask = hex(word.ok_or(ParseError::BadLine { line })?, line)?;
                match out.mxcsr_mask {
                    Some(prev) if prev != mask => return Err(ParseError::MxcsrMaskTwice { line }),
                    _ => out.mxcsr_mask = Some(mask),
                }
                continue;
            }
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if t.starts_with("CPU") && t.ends_with(':') {
                if cpu_seen {
                    break;
                }
                cpu_seen = true;
                continue;
            }
            let e = parse_line(t, line)?;
            if !KEPT_LEAVES.contains(&e.leaf) {
                continue;
            }
            match out.find(e.leaf, e.subleaf) {
                Some(prev) if prev == e.regs => continue,
                Some(_) => {
                    return Err(ParseError::Conflict {
                        line,
                        leaf: e.leaf,
                        subleaf: e.subleaf,
                    });
                }
                None => {}
            }
            let slot = out
                .entries
                .get_mut(out.len)
                .ok_or(ParseError::TooManyEntries { line })?;
            *slot = e;
            // Never saturates: `get_mut(out.len)` just found a slot, so
            // `out.len < CAPACITY`.
            out.len = out.len.saturating_add(1);
        }
        if !out.kept().any(|e| e.leaf == 0xd) {
            return Err(ParseError::NoLeafD);
        }
        Ok(out)
    }

    /// The entries parsed so far (`len` of them; `len <= CAPACITY` always, and
    /// `take` would stop at the array's end regardless).
    fn kept(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().take(self.len)
    }

    fn find(&self, leaf: u32, subleaf: u32) -> Option<CpuidResult> {
        self.kept()
            .find(|e| e.leaf == leaf && e.subleaf == subleaf)
            .map(|e| e.regs)
    }

    /// Whether the dump has an entry for `leaf` at all (dumps of only leaf 0xD
    /// cannot answer feature-flag questions).
    pub fn has_leaf(&self, leaf: u32) -> bool {
        self.kept().any(|e| e.leaf == leaf)
    }
}

impl CpuidSource for RecordedCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        self.find(leaf, subleaf).unwrap_or_default()
    }

    /// The dump's `# mxcsr_mask` line, if it has one.
    fn mxcsr_mask(&self) -> Option<u32> {
        self.mxcsr_mask
    }
}

fn hex(s: &str, line: u32) -> Result<u32, ParseError> {
    let digits = s.strip_prefix("0x").ok_or(ParseError::BadLine { line })?;
    // `cpuid -r` prints eight digits; from_str_radix alone would also take a
    // leading `+` and any number of leading zeros.
    if !(1..=8).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ParseError::BadNumber { line });
    }
    u32::from_str_radix(digits, 16).map_err(|_| ParseError::BadNumber { line })
}

fn parse_line(t: &str, line: u32) -> Result<Entry, ParseError> {
    let bad = ParseError::BadLine { line };
    let mut words = t.split_ascii_whitespace();
    let leaf = hex(words.next().ok_or(bad)?, line)?;
    let sub = words.next().ok_or(bad)?.strip_suffix(':').ok_or(bad)?;
    let subleaf = hex(sub, line)?;
    let mut regs = [0u32; 4];
    for (reg, name) in regs.iter_mut().zip(["eax=", "ebx=", "ecx=", "edx="]) {
        let w = words.next().ok_or(bad)?;
        *reg = hex(w.strip_prefix(name).ok_or(bad)?, line)?;
    }
    if words.next().is_some() {
        return Err(bad);
    }
    let [eax, ebx, ecx, edx] = regs;
    Ok(Entry {
        leaf,
        subleaf,
        regs: CpuidResult { eax, ebx, ecx, edx },
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a test reports failure"
)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_cpu_and_wanted_leaves() {
        let text = "CPU 0:\n   0x00000000 0x00: eax=0x0000001c ebx=0x68747541 ecx=0x444d4163 edx=0x69746e65\n   0x00000002 0x00: eax=0x00000001 ebx=0x00000000 ecx=0x00000000 edx=0x00000000\n   0x0000000d 0x00: eax=0x000000e7 ebx=0x00000980 ecx=0x00000980 edx=0x00000000\nCPU 1:\n   0x00000000 0x00: eax=0x00000001 ebx=0x68747541 ecx=0x444d4163 edx=0x69746e65\n   0x0000000d 0x00: eax=0x00000003 ebx=0x00000980 ecx=0x00000980 edx=0x00000000\n";
        let c = RecordedCpuid::parse(text).unwrap();
        assert_eq!(c.cpuid(0xd, 0).eax, 0xe7);
        // Leaf 0 (vendor, highest leaf) is kept, from the first CPU only.
        assert_eq!(c.cpuid(0, 0).eax, 0x1c);
        assert_eq!(c.cpuid(0, 0).ebx, u32::from_le_bytes(*b"Auth"));
        // Leaf 2 is not one the crate reads.
        assert_eq!(c.cpuid(2, 0), CpuidResult::default());
        assert!(!c.has_leaf(2));
    }

    #[test]
    fn refuses_garbage_with_line_numbers() {
        let ok = "0x0000000d 0x00: eax=0x1 ebx=0x2 ecx=0x3 edx=0x4";
        assert!(RecordedCpuid::parse(ok).is_ok());
        let cases = [
            ("# c\nnonsense", ParseError::BadLine { line: 2 }),
            (
                "0x0000000d 0x00 eax=0x1 ebx=0x2 ecx=0x3 edx=0x4",
                ParseError::BadLine { line: 1 },
            ),
            (
                "0x0000000d 0x00: eax=0x1 ebx=0x2 ecx=0x3",
                ParseError::BadLine { line: 1 },
            ),
            (
                "0x0000000d 0x00: eax=0x1 ebx=0x2 ecx=0x3 edx=0x4 x",
                ParseError::BadLine { line: 1 },
            ),
            (
                "0x0000000d 0x00: eax=0x1ffffffff ebx=0x2 ecx=0x3 edx=0x4",
                ParseError::BadNumber { line: 1 },
            ),
            (
                "0x0000000d 0x00: eax=0xg ebx=0x2 ecx=0x3 edx=0x4",
                ParseError::BadNumber { line: 1 },
            ),
            (
                "0x0000000d 0x00: eax=0x ebx=0x2 ecx=0x3 edx=0x4",
                ParseError::BadNumber { line: 1 },
            ),
            (
                "0x0000000d 0x00: eax=0x000000001 ebx=0x2 ecx=0x3 edx=0x4",
                ParseError::BadNumber { line: 1 },
            ),
            (
                "0x0000000d 0x00: eax=0x+1 ebx=0x2 ecx=0x3 edx=0x4",
                ParseError::BadNumber { line: 1 },
            ),
            (
                "0x00000001 0x00: eax=0x1 ebx=0x2 ecx=0x3 edx=0x4",
                ParseError::NoLeafD,
            ),
            // A CPU header is a line that starts with "CPU" and ends with ':';
            // half of one is a bad line, not a header (which a second time
            // would end the parse there).
            (
                "CPU 0:\n0x0000000d 0x00: eax=0x1 ebx=0x2 ecx=0x3 edx=0x4\nCPU 1",
                ParseError::BadLine { line: 3 },
            ),
            (
                "CPU 0:\n0x0000000d 0x00: eax=0x1 ebx=0x2 ecx=0x3 edx=0x4\ncpu 1:",
                ParseError::BadLine { line: 3 },
            ),
            (
                "0x0000000d 0x00: eax=0x1 ebx=0x2 ecx=0x3 edx=0x4\n0x0000000d 0x00: eax=0x3 ebx=0x2 ecx=0x3 edx=0x4",
                ParseError::Conflict {
                    line: 2,
                    leaf: 0xd,
                    subleaf: 0,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(RecordedCpuid::parse(text).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn the_mxcsr_mask_line_is_read_and_checked() {
        let d = "0x0000000d 0x00: eax=0x1 ebx=0x2 ecx=0x3 edx=0x4\n";
        assert_eq!(RecordedCpuid::parse(d).unwrap().mxcsr_mask(), None);
        let with = |m: &str| RecordedCpuid::parse(&format!("{m}\n{d}"));
        assert_eq!(
            with("# mxcsr_mask 0x0002ffff (FXSAVE)")
                .unwrap()
                .mxcsr_mask(),
            Some(0x2_ffff)
        );
        assert_eq!(
            with("  # mxcsr_mask 0xffff\n# mxcsr_mask 0x0000ffff")
                .unwrap()
                .mxcsr_mask(),
            Some(0xffff)
        );
        // Other comments stay comments.
        assert_eq!(with("# mxcsr 0xzz").unwrap().mxcsr_mask(), None);
        assert_eq!(with("# mxcsr_masks zz").unwrap().mxcsr_mask(), None);
        let cases = [
            ("# mxcsr_mask", ParseError::BadLine { line: 1 }),
            ("# mxcsr_mask ffff", ParseError::BadLine { line: 1 }),
            (
                "# mxcsr_mask 0x1ffffffff",
                ParseError::BadNumber { line: 1 },
            ),
            (
                "# mxcsr_mask 0xffff\n# mxcsr_mask 0x2ffff",
                ParseError::MxcsrMaskTwice { line: 2 },
            ),
        ];
        for (m, want) in cases {
            assert_eq!(with(m).unwrap_err(), want, "{m}");
        }
    }

    #[test]
    fn an_identical_repeat_is_taken_once() {
        let line = "0x0000000d 0x00: eax=0x1 ebx=0x2 ecx=0x3 edx=0x4";
        let c = RecordedCpuid::parse(&format!("{line}\n{line}\n")).unwrap();
        assert_eq!(c.len, 1);
        assert_eq!(c.cpuid(0xd, 0).ecx, 3);
    }

    #[test]
    fn errors_say_which_line_and_what() {
        let cases = [
            (ParseError::BadLine { line: 7 }, "line 7: expected `0xLEAF"),
            (ParseError::BadNumber { line: 8 }, "line 8: a number is not"),
            (
                ParseError::Conflict {
                    line: 9,
                    leaf: 0xd,
                    subleaf: 2,
                },
                "line 9: leaf 0xd subleaf 0x2 appears twice",
            ),
            (
                ParseError::TooManyEntries { line: 10 },
                "line 10: more than",
            ),
            (
                ParseError::MxcsrMaskTwice { line: 11 },
                "line 11: a second `# mxcsr_mask`",
            ),
        ];
        for (e, want) in cases {
            assert!(e.to_string().starts_with(want), "{e}");
        }
        assert_eq!(
            ParseError::NoLeafD.to_string(),
            "no CPUID leaf 0xd entry in the dump"
        );
    }
}
