//! Questions about more than one host, the ones a VMM operator asks: can a
//! guest move from host A to host B and back ([`compat`]), which guest XSAVE
//! model a whole fleet can share ([`Fleet`]), and how big KVM's XSAVE buffers
//! are on a host ([`kvm_buffer_size`]).
//!
//! Nothing here decides whether one move is safe: [`migrate`] does, for every
//! guest this module builds. This module only chooses the guests: the largest
//! one KVM on a host offers ([`GuestModel::offered`]), and the largest one
//! every host of a fleet can run with the very same CPUID leaf 0xD.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;

use crate::enumerate::{Component, Enumeration};
use crate::feature::XFeatures;
use crate::guest::{GROUPS, GuestError, GuestXsave, XsaveFlags, compatible, migrate};
use crate::perm::PermSet;

/// The XCR0 components KVM can give a guest: Linux 6.18's `KVM_SUPPORTED_XCR0`
/// (`arch/x86/kvm/x86.c`). APX is not among them yet.
pub const KVM_SUPPORTED_XCR0: XFeatures = XFeatures::LEGACY
    .union(XFeatures::AVX)
    .union(XFeatures::BNDREGS)
    .union(XFeatures::BNDCSR)
    .union(XFeatures::AVX512)
    .union(XFeatures::PKRU)
    .union(XFeatures::XTILE);

/// The IA32_XSS components KVM can give a guest: Linux 6.18's
/// `KVM_SUPPORTED_XSS`, the two CET components. KVM offers them together or
/// not at all (its `kvm_set_cpu_caps` clears both unless both are there).
pub const KVM_SUPPORTED_XSS: XFeatures = XFeatures::CET_U.union(XFeatures::CET_S);

/// The XSAVE buffer size KVM uses on a host whose guests may enable `xcr0`:
/// `max(4096, KVM_CAP_XSAVE2)`, where `KVM_CAP_XSAVE2` is the standard size of
/// what KVM supports for guests (`xstate_required_size(supported_xcr0)`, with
/// guest permission for every dynamic component). `KVM_GET_XSAVE2` writes this
/// many bytes and `KVM_SET_XSAVE` reads this many.
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration};
/// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt")).unwrap()).unwrap();
/// use xstate::fleet::{kvm_buffer_size, GuestModel};
/// assert_eq!(kvm_buffer_size(&e, GuestModel::offered(&e).xcr0), 11008); // AMX tile data ends at 11008
/// assert_eq!(kvm_buffer_size(&e, xstate::XFeatures::LEGACY), 4096);
/// ```
pub fn kvm_buffer_size(e: &Enumeration, xcr0: XFeatures) -> usize {
    crate::guest::kvm_xsave_size(i32::try_from(e.standard_size(xcr0)).unwrap_or(i32::MAX))
}

/// A permission set holding everything `e` supports: the process has asked
/// `ARCH_REQ_XCOMP_GUEST_PERM` for every dynamic component, as a VMM that
/// offers AMX does.
pub fn all_guest_perms(e: &Enumeration) -> PermSet {
    PermSet {
        features: e.supported(),
        size: e.compacted_max_size(),
        user_size: e.standard_max_size(),
    }
}

/// A guest XSAVE model: the XCR0 and IA32_XSS masks a guest is allowed (and
/// runs with, fully enabled) and the XSAVE extensions it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestModel {
    /// CPUID(0xD,0) EDX:EAX, and the guest's XCR0.
    pub xcr0: XFeatures,
    /// CPUID(0xD,1) EDX:ECX, and the guest's IA32_XSS.
    pub xss: XFeatures,
    /// CPUID(0xD,1).EAX.
    pub flags: XsaveFlags,
}

impl GuestModel {
    /// The largest guest KVM on `e` offers: the components Linux keeps on
    /// ([`Enumeration::usable`]) that KVM supports, CET only with XSAVES, every
    /// XSAVE extension, and the groups XSETBV and KVM enable as a whole kept
    /// only whole.
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, XFeatures};
    /// # let e = Enumeration::from_cpuid(&RecordedCpuid::parse(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt")).unwrap()).unwrap();
    /// use xstate::fleet::GuestModel;
    /// let m = GuestModel::offered(&e);
    /// assert_eq!(m.xcr0, e.xcr0_supported()); // x87..AVX-512 and PKRU
    /// assert_eq!(m.xss, XFeatures::CET_U | XFeatures::CET_S);
    /// ```
    pub fn offered(e: &Enumeration) -> Self {
        let flags = XsaveFlags::of(e);
        let xcr0 = e.usable() & e.xcr0_supported() & KVM_SUPPORTED_XCR0;
        let xss = if flags.contains(XsaveFlags::XSAVES) {
            e.usable() & e.xss_supported() & KVM_SUPPORTED_XSS
        } else {
            XFeatures::empty()
        };
        let (kept, _) = closure(xcr0 | xss);
        Self {
            xcr0: kept & xcr0,
            xss: kept & xss,
            flags,
        }
    }

    /// Every component of the model, XCR0 and IA32_XSS.
    #[inline]
    pub const fn features(&self) -> XFeatures {
        self.xcr0.union(self.xss)
    }

    /// The model on the host `e`, with XCR0 and IA32_XSS enabled in full (as
    /// a guest kernel enables them) and guest permission for everything.
    ///
    /// # Errors
    /// [`GuestXsave::new`]'s, [`GuestXsave::set_xcr0`]'s and
    /// [`GuestXsave::set_xss`]'s, when `e` cannot run the model.
    pub fn guest(&self, e: &Enumeration) -> Result<GuestXsave, GuestError> {
        let mut g = GuestXsave::new(e, &all_guest_perms(e), self.xcr0, self.xss, self.flags)?;
        g.set_xcr0(self.xcr0)?;
        g.set_xss(self.xss)?;
        Ok(g)
    }

    /// The model without `drop` and whatever goes only together with it;
    /// without XSAVES, IA32_XSS is emptied too.
    fn without(self, drop: XFeatures, flags: XsaveFlags) -> Self {
        let (kept, _) = closure(self.features().difference(drop));
        let flags = self.flags & flags;
        let xss = if flags.contains(XsaveFlags::XSAVES) {
            kept & self.xss
        } else {
            XFeatures::empty()
        };
        Self {
            xcr0: kept & self.xcr0,
            xss,
            flags,
        }
    }
}

/// KVM's CET pair, given to a guest together or not at all.
const CET: XFeatures = XFeatures::CET_U.union(XFeatures::CET_S);

/// Components a guest may be given only with another: the member of its
/// group, or AVX for AVX-512, or neither of APX and MPX together (APX lives
/// at MPX's standard offset).
fn needs(mask: XFeatures) -> Option<(XFeatures, u32)> {
    for group in GROUPS.into_iter().chain([CET]) {
        if mask.intersects(group) && !mask.contains(group) {
            let missing = group.difference(mask).indices().next().unwrap_or(0);
            return Some((mask & group, missing));
        }
    }
    if mask.intersects(XFeatures::AVX512) && !mask.contains(XFeatures::AVX) {
        return Some((mask & XFeatures::AVX512, 2));
    }
    if mask.contains(XFeatures::AVX) && !mask.contains(XFeatures::SSE) {
        return Some((XFeatures::AVX, 1));
    }
    let mpx = XFeatures::BNDREGS.union(XFeatures::BNDCSR);
    if mask.contains(XFeatures::APX) && mask.intersects(mpx) {
        return Some((XFeatures::APX, 3));
    }
    None
}

/// `mask` with every component dropped that goes only together with one
/// not in it, repeatedly; also which were dropped and the one each needed.
fn closure(mut mask: XFeatures) -> (XFeatures, [Option<u32>; 64]) {
    let mut dropped = [None; 64];
    // Each round drops at least one component: at most 64 rounds.
    for _ in 0..64 {
        let Some((drop, with)) = needs(mask) else {
            break;
        };
        for i in drop.indices() {
            if let Some(slot) = dropped.get_mut(i as usize) {
                *slot = Some(with);
            }
        }
        mask = mask.difference(drop);
    }
    (mask, dropped)
}

/// Why a host holds a component out of a fleet's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeldBack {
    /// The host does not offer it to guests: it lacks the component, Linux
    /// keeps it off (CPUID feature flag clear), or KVM does not support it.
    NotOffered,
    /// Supervisor state reaches a guest only through XSAVES, which the host
    /// lacks.
    NoXsaves,
    /// Its size on this host differs from the fleet's.
    Size {
        /// On this host.
        size: u32,
        /// On the other hosts.
        fleet: u32,
    },
    /// Its standard offset on this host differs from the fleet's.
    Offset {
        /// On this host.
        offset: u32,
        /// On the other hosts.
        fleet: u32,
    },
    /// Its 64-byte alignment in the compacted form (CPUID(0xD,i).ECX\[1\])
    /// differs.
    Align {
        /// On this host.
        align64: bool,
    },
    /// Whether XFD can arm it (CPUID(0xD,i).ECX\[2\]) differs.
    Xfd {
        /// On this host.
        xfd: bool,
    },
    /// It goes only together with component `with`, which this host holds
    /// back (XSETBV's and KVM's groups: AVX-512 with AVX, AMX's and MPX's
    /// pairs, CET's).
    Needs {
        /// The component it needs.
        with: u32,
    },
}

impl fmt::Display for HeldBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotOffered => f.write_str("not offered to guests"),
            Self::NoXsaves => f.write_str("no XSAVES, the only way guests reach supervisor state"),
            Self::Size { size, fleet } => write!(f, "{size} bytes where the fleet has {fleet}"),
            Self::Offset { offset, fleet } => {
                write!(f, "standard offset {offset} where the fleet has {fleet}")
            }
            Self::Align { align64 } => write!(
                f,
                "{} where the fleet's is {}",
                if align64 {
                    "64-byte aligned"
                } else {
                    "not 64-byte aligned"
                },
                if align64 { "not" } else { "aligned" }
            ),
            Self::Xfd { xfd } => write!(
                f,
                "{} where the fleet's {}",
                if xfd {
                    "XFD-capable"
                } else {
                    "not XFD-capable"
                },
                if xfd { "is not" } else { "is" }
            ),
            Self::Needs { with } => write!(
                f,
                "goes only together with component {with} ({}), held back",
                crate::feature::name_of(with)
            ),
        }
    }
}

/// A component (or an XSAVE extension) left out of a fleet's model, and the
/// first host that holds it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exclusion {
    /// The host's position in the slice given to [`Fleet::new`].
    pub host: usize,
    /// Why.
    pub why: HeldBack,
}

/// Why no fleet model or verdict could be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetError {
    /// No hosts were given.
    NoHosts,
    /// The model cannot be built on a host, or a guest of it cannot move
    /// between two hosts: a fact of these enumerations this module does not
    /// foresee (`migrate` fails closed; so does this).
    Guest {
        /// The host's position.
        host: usize,
        /// What [`crate::guest`] said.
        err: GuestError,
    },
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHosts => f.write_str("no hosts"),
            Self::Guest { host, err } => write!(f, "host {host}: {err}"),
        }
    }
}

impl core::error::Error for FleetError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Guest { err, .. } => Some(err),
            Self::NoHosts => None,
        }
    }
}

/// The guest XSAVE model a fleet of hosts can share: the largest XCR0 and
/// IA32_XSS masks whose every component every host offers with the same
/// size, standard offset, alignment and XFD flag, closed under XSETBV's and
/// KVM's groups, with the XSAVE extensions all hosts have. A guest of it has
/// the same CPUID leaf 0xD on every host, so it moves between any two
/// ([`migrate`] agrees: [`Fleet::new`] checks it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    model: GuestModel,
    excluded: [Option<Exclusion>; 64],
    flags_held: [Option<usize>; 8],
    hosts: usize,
}

/// The facts of a component a guest's CPUID leaf 0xD shows, which every host
/// must share (supervisor components have no standard offset).
fn facts(c: &Component) -> (u32, u32, bool, bool) {
    let offset = if c.supervisor { 0 } else { c.std_offset };
    (c.size, offset, c.align64, c.xfd)
}

impl Fleet {
    /// The model for `hosts`.
    ///
    /// # Errors
    /// [`FleetError::NoHosts`]; [`FleetError::Guest`] if a host cannot run the
    /// model or [`migrate`] refuses its guest from the first host to another
    /// (the checks this model is built to pass).
    ///
    /// ```
    /// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, XFeatures};
    /// # let e = |t: &str| Enumeration::from_cpuid(&RecordedCpuid::parse(t).unwrap()).unwrap();
    /// # let spr = e(include_str!("../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt"));
    /// # let zen4 = e(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt"));
    /// use xstate::fleet::{Fleet, HeldBack};
    /// let f = Fleet::new(&[spr, zen4])?;
    /// assert_eq!(f.model().xcr0, XFeatures::LEGACY | XFeatures::AVX);
    /// // AMD's standard form has no MPX hole: AVX-512 starts at 832, not 1088.
    /// assert_eq!(f.excluded(5).unwrap().why, HeldBack::Offset { offset: 832, fleet: 1088 });
    /// // PKRU: at 0xa80 on Intel, 0x980 on AMD; AMX only on the Xeon.
    /// assert_eq!(f.excluded(9).unwrap().host, 1);
    /// assert_eq!(f.excluded(18).unwrap().why, HeldBack::NotOffered);
    /// # Ok::<(), xstate::fleet::FleetError>(())
    /// ```
    pub fn new(hosts: &[Enumeration]) -> Result<Self, FleetError> {
        let first = hosts.first().ok_or(FleetError::NoHosts)?;
        let mut candidates = XFeatures::empty();
        let mut flags = XsaveFlags::all();
        let mut flags_held = [None; 8];
        for (h, e) in hosts.iter().enumerate() {
            let m = GuestModel::offered(e);
            candidates |= m.features() | (e.usable() & e.xss_supported() & KVM_SUPPORTED_XSS);
            for bit in 0..8u32 {
                let f = XsaveFlags::from_bits_retain(1 << bit);
                if flags.intersects(f) && !m.flags.intersects(f) {
                    if let Some(slot) = flags_held.get_mut(bit as usize) {
                        *slot = Some(h);
                    }
                }
            }
            flags &= m.flags;
        }
        let mut excluded = [None; 64];
        let mut kept = XFeatures::LEGACY;
        for i in candidates.indices().filter(|&i| i >= 2) {
            match Self::holder(hosts, i) {
                Some(x) => {
                    if let Some(slot) = excluded.get_mut(i as usize) {
                        *slot = Some(x);
                    }
                }
                None => kept |= XFeatures::from_index(i).unwrap_or(XFeatures::empty()),
            }
        }
        let (closed, needed) = closure(kept);
        for i in kept.difference(closed).indices() {
            let with = needed.get(i as usize).copied().flatten().unwrap_or(0);
            let host = excluded
                .get(with as usize)
                .copied()
                .flatten()
                .map_or(0, |x: Exclusion| x.host);
            if let Some(slot) = excluded.get_mut(i as usize) {
                *slot = Some(Exclusion {
                    host,
                    why: HeldBack::Needs { with },
                });
            }
        }
        let xcr0 = closed & first.xcr0_supported();
        let xss = if flags.contains(XsaveFlags::XSAVES) {
            closed & first.xss_supported()
        } else {
            XFeatures::empty()
        };
        let model = GuestModel { xcr0, xss, flags };
        let fleet = Self {
            model,
            excluded,
            flags_held,
            hosts: hosts.len(),
        };
        let g = model
            .guest(first)
            .map_err(|err| FleetError::Guest { host: 0, err })?;
        for (h, e) in hosts.iter().enumerate().skip(1) {
            let there = migrate(&g, e, &all_guest_perms(e))
                .map_err(|err| FleetError::Guest { host: h, err })?;
            migrate(&there, first, &all_guest_perms(first))
                .map_err(|err| FleetError::Guest { host: 0, err })?;
        }
        Ok(fleet)
    }

    /// The first host that holds component `i` (2 or above) back, if any:
    /// one that does not offer it, or lacks XSAVES for supervisor state, or
    /// shows other facts than the most hosts do (ties: the earlier host's).
    fn holder(hosts: &[Enumeration], i: u32) -> Option<Exclusion> {
        let bit = XFeatures::from_index(i)?;
        let mut best: Option<((u32, u32, bool, bool), usize)> = None;
        for e in hosts {
            let Some(c) = e.component(i) else { continue };
            let f = facts(c);
            let n = hosts
                .iter()
                .filter(|o| o.component(i).map(facts) == Some(f))
                .count();
            if best.is_none_or(|(_, m)| n > m) {
                best = Some((f, n));
            }
        }
        let (fleet, _) = best?;
        for (h, e) in hosts.iter().enumerate() {
            let m = GuestModel::offered(e);
            let why = if e.xss_supported().contains(bit) && !m.flags.contains(XsaveFlags::XSAVES) {
                Some(HeldBack::NoXsaves)
            } else if !m.features().contains(bit) {
                Some(HeldBack::NotOffered)
            } else {
                e.component(i).map(facts).and_then(|f| {
                    if f.0 != fleet.0 {
                        Some(HeldBack::Size {
                            size: f.0,
                            fleet: fleet.0,
                        })
                    } else if f.1 != fleet.1 {
                        Some(HeldBack::Offset {
                            offset: f.1,
                            fleet: fleet.1,
                        })
                    } else if f.2 != fleet.2 {
                        Some(HeldBack::Align { align64: f.2 })
                    } else if f.3 != fleet.3 {
                        Some(HeldBack::Xfd { xfd: f.3 })
                    } else {
                        None
                    }
                })
            };
            if let Some(why) = why {
                return Some(Exclusion { host: h, why });
            }
        }
        None
    }

    /// The shared model.
    #[inline]
    pub const fn model(&self) -> GuestModel {
        self.model
    }

    /// How many hosts the fleet has.
    #[inline]
    pub const fn hosts(&self) -> usize {
        self.hosts
    }

    /// Why component `i` is not in the model, if some host offers it but it
    /// was left out.
    pub fn excluded(&self, i: u32) -> Option<Exclusion> {
        self.excluded.get(i as usize).copied().flatten()
    }

    /// Every excluded component, in order.
    pub fn exclusions(&self) -> impl Iterator<Item = (u32, Exclusion)> + '_ {
        (0u32..)
            .zip(self.excluded.iter())
            .filter_map(|(i, x)| x.map(|x| (i, x)))
    }

    /// The first host lacking an XSAVE extension some host has, for each such
    /// extension.
    pub fn flags_held(&self) -> impl Iterator<Item = (XsaveFlags, usize)> + '_ {
        (0u32..)
            .zip(self.flags_held.iter())
            .filter_map(|(bit, h)| h.map(|h| (XsaveFlags::from_bits_retain(1 << bit), h)))
    }

    /// The model's guest on `e` (one of the fleet's hosts): its
    /// [`GuestXsave::subleaves`] are the leaf 0xD for `KVM_SET_CPUID2`, the
    /// same on every host.
    ///
    /// # Errors
    /// As [`GuestModel::guest`].
    pub fn guest(&self, e: &Enumeration) -> Result<GuestXsave, GuestError> {
        self.model.guest(e)
    }
}

/// Why a component of a guest cannot make one move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// [`migrate`] refused the guest for it.
    Refused(GuestError),
    /// It goes only together with component `with`, which cannot move.
    Needs {
        /// The component it needs.
        with: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(e) => fmt::Display::fmt(e, f),
            Self::Needs { with } => write!(
                f,
                "goes only together with component {with} ({}), which cannot move",
                crate::feature::name_of(*with)
            ),
        }
    }
}

/// One move of a guest: the verdict on the largest guest the source offers,
/// and why each component that holds it back cannot move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// [`migrate`]'s answer for [`GuestModel::offered`] on the source.
    pub verdict: Result<(), GuestError>,
    reasons: [Option<Reason>; 64],
    /// Why the source's XSAVE extensions cannot all move, if they cannot.
    pub flags: Option<GuestError>,
    /// A refusal no component or extension explains (the destination's own
    /// masks, say), if any: then no smaller guest was tried further.
    pub other: Option<GuestError>,
    /// [`compatible`]'s answer for the state buffer alone (the source's
    /// offered XCR0 into what the destination offers): whether [`translate`]
    /// can move a snapshot's bytes for a guest that boots afresh there, with
    /// the destination's CPUID.
    ///
    /// [`translate`]: crate::guest::translate
    pub buffer: Result<(), GuestError>,
}

impl Move {
    fn of(src: &Enumeration, dst: &Enumeration) -> Result<Self, GuestError> {
        let mut m = GuestModel::offered(src);
        let mut mv = Self {
            verdict: Ok(()),
            reasons: [None; 64],
            flags: None,
            other: None,
            buffer: compatible(src, m.xcr0, dst, GuestModel::offered(dst).xcr0),
        };
        let perms = all_guest_perms(dst);
        // Each round drops a component or an extension: at most 64 + 8 rounds.
        for round in 0..72 {
            let g = m.guest(src)?;
            let Err(err) = migrate(&g, dst, &perms) else {
                break;
            };
            if round == 0 {
                mv.verdict = Err(err);
            }
            let before = m;
            match blame(err) {
                Blame::Components(mask) => {
                    let drop = mask & m.features();
                    for i in drop.indices() {
                        mv.set(i, Reason::Refused(err));
                    }
                    let (kept, needed) = closure(m.features().difference(drop));
                    for i in m.features().difference(drop).difference(kept).indices() {
                        let with = needed.get(i as usize).copied().flatten().unwrap_or(0);
                        mv.set(i, Reason::Needs { with });
                    }
                    m = m.without(drop, XsaveFlags::all());
                }
                Blame::Flags => {
                    mv.flags = Some(err);
                    m = m.without(XFeatures::empty(), XsaveFlags::of(dst));
                    for i in before.xss.difference(m.xss).indices() {
                        mv.set(i, Reason::Refused(err));
                    }
                }
                Blame::Other => {}
            }
            if m == before {
                mv.other = Some(err);
                break;
            }
        }
        Ok(mv)
    }

    fn set(&mut self, i: u32, r: Reason) {
        if let Some(slot) = self.reasons.get_mut(i as usize) {
            slot.get_or_insert(r);
        }
    }

    /// Whether the move is allowed.
    #[inline]
    pub fn ok(&self) -> bool {
        self.verdict.is_ok()
    }

    /// Why component `i` cannot move, if it cannot.
    pub fn reason(&self, i: u32) -> Option<Reason> {
        self.reasons.get(i as usize).copied().flatten()
    }

    /// Every component that cannot move, with why, in order.
    pub fn reasons(&self) -> impl Iterator<Item = (u32, Reason)> + '_ {
        (0u32..)
            .zip(self.reasons.iter())
            .filter_map(|(i, r)| r.map(|r| (i, r)))
    }
}

/// What a refusal of [`migrate`] blames.
enum Blame {
    Components(XFeatures),
    Flags,
    Other,
}

fn blame(err: GuestError) -> Blame {
    let one = |i: u32| Blame::Components(XFeatures::from_index(i).unwrap_or(XFeatures::empty()));
    let mask = |m: u64| Blame::Components(XFeatures::from_bits_retain(m));
    match err {
        GuestError::NotOnDestination { mask: m }
        | GuestError::Unsupported { mask: m }
        | GuestError::NotPermitted { mask: m }
        | GuestError::ApxWithMpx { mask: m } => mask(m),
        GuestError::Replaced { index, .. }
        | GuestError::SizeMismatch { index, .. }
        | GuestError::OffsetMismatch { index, .. } => one(index),
        GuestError::SubleafMismatch { subleaf } if subleaf >= 2 => one(subleaf),
        GuestError::FlagsUnsupported { .. } | GuestError::XssWithoutXsaves { .. } => Blame::Flags,
        _ => Blame::Other,
    }
}

/// Can a guest move between hosts `a` and `b`, both ways, and what moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compat {
    /// The largest guest `a` offers, moved to `b`.
    pub a_to_b: Move,
    /// The largest guest `b` offers, moved to `a`.
    pub b_to_a: Move,
    /// The largest guest that moves both ways: the fleet of the two.
    pub both: Fleet,
    /// KVM's XSAVE buffer size on `a` ([`kvm_buffer_size`] of what it offers).
    pub a_kvm_size: usize,
    /// The same on `b`.
    pub b_kvm_size: usize,
}

impl Compat {
    /// Both moves allowed.
    #[inline]
    pub fn ok(&self) -> bool {
        self.a_to_b.ok() && self.b_to_a.ok()
    }
}

/// The migration verdict between hosts `a` and `b`: for the largest guest
/// each offers ([`GuestModel::offered`]), [`migrate`]'s answer to the other
/// and, component by component, why what cannot move cannot (found by asking
/// again without each refused component until the rest moves); the largest
/// model that moves both ways; KVM's buffer sizes.
///
/// # Errors
/// [`FleetError::Guest`] if a host cannot run the guest it offers, or if no
/// shared model passes [`migrate`] (host 0 is `a`, 1 is `b`).
///
/// ```
/// # use xstate::{cpuid::RecordedCpuid, enumerate::Enumeration, XFeatures};
/// # let e = |t: &str| Enumeration::from_cpuid(&RecordedCpuid::parse(t).unwrap()).unwrap();
/// # let tgl = e(include_str!("../layouts/intel-tiger-lake-core-i7-1165g7.txt"));
/// # let zen4 = e(include_str!("../layouts/amd-zen4-ryzen-9-7950x.txt"));
/// use xstate::fleet::{compat, Reason};
/// use xstate::guest::GuestError;
/// let c = compat(&tgl, &zen4)?;
/// assert!(!c.ok());
/// assert_eq!(c.a_to_b.reason(9), Some(Reason::Refused(GuestError::OffsetMismatch { index: 9, src: 0xa80, dst: 0x980 })));
/// assert!(c.b_to_a.reason(5).is_some()); // AVX-512 at AMD's offsets
/// assert_eq!(c.both.model().xcr0, XFeatures::LEGACY | XFeatures::AVX);
/// # Ok::<(), xstate::fleet::FleetError>(())
/// ```
pub fn compat(a: &Enumeration, b: &Enumeration) -> Result<Compat, FleetError> {
    let a_to_b = Move::of(a, b).map_err(|err| FleetError::Guest { host: 0, err })?;
    let b_to_a = Move::of(b, a).map_err(|err| FleetError::Guest { host: 1, err })?;
    let both = Fleet::new(&[a.clone(), b.clone()])?;
    Ok(Compat {
        a_kvm_size: kvm_buffer_size(a, GuestModel::offered(a).xcr0),
        b_kvm_size: kvm_buffer_size(b, GuestModel::offered(b).xcr0),
        a_to_b,
        b_to_a,
        both,
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)] // tests: a panic is a failure
mod tests {
    use super::*;

    /// What [`closure`] drops, and for which component: XSETBV's groups
    /// (SDM vol. 2C XSETBV #GP rules), KVM's MPX pair and CET pair, APX with
    /// MPX (Linux).
    #[test]
    fn closure_follows_xsetbv_and_kvm() {
        let x = XFeatures::LEGACY;
        let case = |m: XFeatures| {
            let (kept, why) = closure(m);
            let dropped: Vec<(u32, u32)> = m
                .difference(kept)
                .indices()
                .map(|i| (i, why[i as usize].unwrap()))
                .collect();
            (kept, dropped)
        };
        assert_eq!(
            case(x | XFeatures::AVX | XFeatures::BNDREGS),
            (x | XFeatures::AVX, vec![(3, 4)])
        );
        assert_eq!(
            case(x | XFeatures::AVX512),
            (x, vec![(5, 2), (6, 2), (7, 2)])
        );
        assert_eq!(
            case(x | XFeatures::AVX | XFeatures::OPMASK | XFeatures::HI16_ZMM),
            (x | XFeatures::AVX, vec![(5, 6), (7, 6)])
        );
        assert_eq!(case(x | XFeatures::XTILE_CFG), (x, vec![(17, 18)]));
        assert_eq!(case(x | XFeatures::CET_U), (x, vec![(11, 12)]));
        assert_eq!(
            case(XFeatures::X87 | XFeatures::AVX),
            (XFeatures::X87, vec![(2, 1)])
        );
        let mpx = XFeatures::BNDREGS | XFeatures::BNDCSR;
        assert_eq!(case(x | mpx | XFeatures::APX), (x | mpx, vec![(19, 3)]));
        let full = x | XFeatures::AVX | XFeatures::AVX512 | XFeatures::XTILE | CET | mpx;
        assert_eq!(case(full), (full, vec![]));
    }
}
