//! Panics the `clippy::indexing_slicing` / `arithmetic_side_effects` lint block
//! (issue #11, item 5) found in `fpstate`, `guest` and `cpuid`, each pinned by a
//! test that panicked before the fix.
//!
//! `Fpstate` sliced its [`Storage`] with `[..info().size]` on every access: a
//! `Storage` whose bytes shrink after the fpstate was made in it (the trait is
//! public and safe, and promises nothing about lengths) made `area()`,
//! `xstate_bv()`, `save`, `restore` and `grow` panic, and one whose `bytes_mut()`
//! was shorter than its `bytes()` made `new_in` panic. Now the area is what the
//! storage holds, the units refuse it, and creation and growth report
//! `BufferTooSmall`.

use std::cell::Cell;
use std::rc::Rc;

use xstate::config::{Configs, Policy};
use xstate::cpuid::RecordedCpuid;
use xstate::enumerate::Enumeration;
use xstate::error::BufferTooSmall;
use xstate::fpstate::{BoxedArea, Fpstate, FpstateError, Mode, Owner, Storage};
use xstate::model::{Quirks, XsaveMachine};
use xstate::perm::{PermKind, ProcessPerms};

/// A heap area whose visible length the test moves: `bytes()` shows
/// `shared_len` bytes, `bytes_mut()` `mut_len`.
#[derive(Debug)]
struct Shrinking {
    area: BoxedArea,
    shared_len: Rc<Cell<usize>>,
    mut_len: Rc<Cell<usize>>,
}

impl Storage for Shrinking {
    fn bytes(&self) -> &[u8] {
        let b = self.area.bytes();
        &b[..self.shared_len.get().min(b.len())]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.mut_len.get();
        let b = self.area.bytes_mut();
        let n = n.min(b.len());
        &mut b[..n]
    }
}

fn setup() -> (Enumeration, Configs) {
    let e = Enumeration::from_cpuid(
        &RecordedCpuid::parse(include_str!(
            "../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt"
        ))
        .unwrap(),
    )
    .unwrap();
    let cfg = Configs::new(&e, &Policy::linux(&e)).unwrap();
    (e, cfg)
}

fn shrinking(len: usize) -> (Shrinking, Rc<Cell<usize>>, Rc<Cell<usize>>) {
    let (shared, mutable) = (Rc::new(Cell::new(len)), Rc::new(Cell::new(len)));
    let s = Shrinking {
        area: BoxedArea::zeroed(len),
        shared_len: shared.clone(),
        mut_len: mutable.clone(),
    };
    (s, shared, mutable)
}

#[test]
fn new_in_with_short_bytes_mut_is_an_error_not_a_panic() {
    let (_, cfg) = setup();
    let size = cfg.kernel().default_size as usize;
    let (s, _, mutable) = shrinking(size);
    mutable.set(100);
    assert_eq!(
        Fpstate::new_in(&cfg, Owner::Host, s).unwrap_err(),
        FpstateError::BufferTooSmall(BufferTooSmall {
            needed: size,
            got: 100
        })
    );
}

#[test]
fn shrunken_storage_never_panics() {
    let (e, cfg) = setup();
    let size = cfg.kernel().default_size as usize;
    for len in [0, 1, 100, 512, 515, 519, 520, 527, 576, size - 1] {
        let (s, shared, mutable) = shrinking(size);
        let mut fp = Fpstate::new_in(&cfg, Owner::Host, s).unwrap();
        shared.set(len);
        mutable.set(len);
        assert_eq!(fp.area().len(), len, "{len}");
        // XSTATE_BV is 0 in init state; XCOMP_BV past the end reads as 0.
        assert_eq!(fp.xstate_bv().bits(), 0, "{len}");
        if len < 528 {
            assert_eq!(fp.xcomp_bv(), 0, "{len}");
        }

        let mut m = XsaveMachine::new(&e, Quirks::INTEL);
        m.set_xcr0(cfg.xcr0()).unwrap();
        m.set_xss(cfg.xss() & e.xss_supported()).unwrap();
        assert!(fp.save(&mut m, &cfg, Mode::Supervisor).is_err(), "{len}");
        assert!(fp.restore(&mut m, &cfg, Mode::Supervisor).is_err(), "{len}");

        let mut perms = ProcessPerms::new(&cfg);
        perms.request(&cfg, PermKind::Task, 18, |_| true).unwrap();
        let grown = fp
            .grow(
                &cfg,
                &perms,
                18,
                BoxedArea::zeroed(cfg.kernel().max_size as usize),
            )
            .unwrap_err();
        assert_eq!(
            grown,
            FpstateError::BufferTooSmall(BufferTooSmall {
                needed: size,
                got: len
            }),
            "{len}"
        );
    }
}

#[test]
fn grow_into_storage_that_shrinks_after_its_check() {
    let (_, cfg) = setup();
    let mut perms = ProcessPerms::new(&cfg);
    perms.request(&cfg, PermKind::Task, 18, |_| true).unwrap();
    let fp = Fpstate::new_boxed(&cfg, Owner::Host).unwrap();
    let size = cfg.kernel().max_size as usize;
    // `bytes()` passes the size check, `bytes_mut()` is short: `grow` creates
    // the new fpstate through `new_in`'s path and must refuse, not panic.
    let (s, _, mutable) = shrinking(size);
    mutable.set(300);
    assert_eq!(
        fp.grow(&cfg, &perms, 18, s).unwrap_err(),
        FpstateError::BufferTooSmall(BufferTooSmall {
            needed: size,
            got: 300
        })
    );
}

/// The uabi copy paths take the area once and check it against the layout
/// before indexing it: a shrunken storage gives `BufferTooSmall`, never a panic,
/// and a refused import writes nothing.
#[test]
fn uabi_on_shrunken_storage_is_an_error_not_a_panic() {
    use xstate::XFeatures;
    use xstate::uabi::{self, UabiError, UserAbi};
    let (_, cfg) = setup();
    let size = cfg.kernel().default_size as usize;
    let good = {
        let fp = Fpstate::new_boxed(&cfg, Owner::Host).unwrap();
        let mut b = vec![0u8; cfg.user().max_size as usize];
        uabi::export(&cfg, &fp, XFeatures::all(), &mut b).unwrap();
        b
    };
    let mut frame = vec![0u8; cfg.user().max_size as usize + 4];
    let mut checked = 0;
    for len in [0, 100, 511, 512, 575, 576, 1000, size - 1] {
        let (s, shared, mutable) = shrinking(size);
        let mut fp = Fpstate::new_in(&cfg, Owner::Host, s).unwrap();
        shared.set(len);
        mutable.set(len);
        let short = |r: Result<(), UabiError>| matches!(r, Err(UabiError::BufferTooSmall(BufferTooSmall { got, .. })) if got <= len);
        let mut out = vec![0u8; good.len()];
        assert!(
            short(uabi::export(&cfg, &fp, XFeatures::all(), &mut out).map(drop)),
            "{len}"
        );
        assert!(
            short(uabi::export_sigframe(&cfg, &fp, XFeatures::all(), &mut frame).map(drop)),
            "{len}"
        );
        assert!(short(uabi::import(&cfg, &mut fp, &good).map(drop)), "{len}");
        assert!(
            short(uabi::import_abi(&cfg, &mut fp, &good, UserAbi::Ptrace).map(drop)),
            "{len}"
        );
        // A signal frame is checked for its magic first; whatever it says, no panic.
        let _ = uabi::import_sigframe(&cfg, &mut fp, &frame);
        // Nothing was written through the short view.
        shared.set(size);
        let fresh = Fpstate::new_boxed(&cfg, Owner::Host).unwrap();
        assert_eq!(
            fp.area(),
            fresh.area(),
            "{len}: a refused call wrote the fpstate"
        );
        checked += 1;
    }
    assert_eq!(checked, 8);
}
