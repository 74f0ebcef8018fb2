//! Untrusted bytes into `uabi::import` and `uabi::import_sigframe`, on guest
//! fpstates built from two recorded CPUs (Sapphire Rapids: AMX, PKRU, CET_S;
//! the AMD Zen 4 build host: AVX-512, CET_S).
//!
//! Invariants: no panic; on `Err` the fpstate is byte-for-byte unchanged; on
//! `Ok` the accepted XSTATE_BV is within the user features and lands in the
//! fpstate's header with the supervisor bits kept, every imported extended
//! component and the XMM registers read back through `export` exactly as given,
//! and export -> import -> export is a fixed point (likewise for signal frames).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::cpuid::RecordedCpuid;
use xstate::enumerate::Enumeration;
use xstate::fpstate::{
    BoxedArea, Fpstate, MXCSR_DEFAULT, MXCSR_MASK_OFFSET, MXCSR_OFFSET, Owner, XCOMP_BV_OFFSET,
    XSTATE_BV_OFFSET,
};
use xstate::uabi;

const DUMPS: [(&str, &str, u32); 2] = [
    (
        "spr",
        include_str!("../../layouts/intel-sapphire-rapids-xeon-w9-3475x.txt"),
        0xffff,
    ),
    (
        "amd-host",
        include_str!("../../layouts/amd-zen4-epyc-kvm-guest-this-build-host.txt"),
        0x2ffff,
    ),
];

struct Cpu {
    e: Enumeration,
    cfg: Configs,
}

fn cpus() -> &'static [Cpu] {
    static CPUS: OnceLock<Vec<Cpu>> = OnceLock::new();
    CPUS.get_or_init(|| {
        DUMPS
            .iter()
            .map(|&(name, text, mxcsr_mask)| {
                let raw = RecordedCpuid::parse(text).unwrap_or_else(|x| panic!("{name}: {x}"));
                let e = Enumeration::from_cpuid(&raw)
                    .and_then(|e| e.with_mxcsr_mask(mxcsr_mask))
                    .unwrap_or_else(|x| panic!("{name}: {x}"));
                let cfg =
                    Configs::new(&e, &Policy::linux(&e)).unwrap_or_else(|x| panic!("{name}: {x}"));
                Cpu { e, cfg }
            })
            .collect()
    })
}

fn get_u64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A guest fpstate holding a non-init state (every user component it has space
/// for, in a fixed pattern), so "unchanged on refusal" is checked against more
/// than zeros.
fn fresh(c: &Cpu) -> Fpstate<BoxedArea> {
    let mut fp = Fpstate::new_boxed(&c.cfg, Owner::Guest).expect("guest fpstate");
    let user = fp.info().user_features;
    let mut b = vec![0u8; c.e.standard_size(user) as usize];
    for (k, x) in b.iter_mut().enumerate() {
        *x = (k as u8).wrapping_mul(37) | 1;
    }
    b[MXCSR_OFFSET..][..4].copy_from_slice(&MXCSR_DEFAULT.to_le_bytes());
    b[MXCSR_MASK_OFFSET..][..4].copy_from_slice(&c.cfg.mxcsr_mask().to_le_bytes());
    b[XSTATE_BV_OFFSET..][..64].fill(0);
    b[XSTATE_BV_OFFSET..][..8].copy_from_slice(&user.bits().to_le_bytes());
    uabi::import(&c.cfg, &mut fp, &b).expect("primer import");
    fp
}

fn check_import(c: &Cpu, data: &[u8], sigframe: bool) {
    let mut fp = fresh(c);
    let before = fp.area().to_vec();
    let user = fp.info().user_features;
    let r = if sigframe {
        uabi::import_sigframe(&c.cfg, &mut fp, data).map(|r| r.features)
    } else {
        uabi::import(&c.cfg, &mut fp, data)
    };
    let hdr = match r {
        Err(_) => {
            assert!(
                fp.area() == &before[..],
                "refused import changed the fpstate"
            );
            return;
        }
        Ok(h) => h,
    };
    assert!(
        user.contains(hdr),
        "accepted bits {hdr:?} outside user {user:?}"
    );
    assert_eq!(fp.xstate_bv() & user, hdr, "header user bits");
    assert_eq!(
        fp.xstate_bv() - user,
        XFeatures::from_bits_retain(get_u64(&before, XSTATE_BV_OFFSET)) - user,
        "supervisor bits changed"
    );
    assert_eq!(
        fp.xcomp_bv(),
        get_u64(&before, XCOMP_BV_OFFSET),
        "XCOMP_BV changed"
    );

    // What was imported reads back as given.
    let size = c.e.standard_size(user) as usize;
    let mut out = vec![0u8; size + 4];
    let n = uabi::export(&c.cfg, &fp, user, &mut out).expect("export");
    assert_eq!(n, size);
    let comps = c.e.components();
    for i in hdr.indices().filter(|&i| i >= 2) {
        let cp = &comps[i as usize];
        let r = cp.std_offset as usize..(cp.std_offset + cp.size) as usize;
        if i == 9 {
            // PKRU: the register is 4 bytes; export writes the reserved 4..8
            // as zero, as Linux does.
            let at = r.start;
            assert!(
                out[at..at + 4] == data[at..at + 4],
                "PKRU did not round-trip"
            );
            assert!(
                out[at + 4..r.end].iter().all(|&b| b == 0),
                "PKRU bytes 4..8 not zero"
            );
            continue;
        }
        assert!(
            out[r.clone()] == data[r],
            "component {i} did not round-trip"
        );
    }
    if hdr.contains(XFeatures::SSE) {
        // A signal frame whose restore mask lacks SSE leaves the XMM registers
        // init; SSE is then "in use" only for a non-default MXCSR.
        assert!(
            out[160..416] == data[160..416] || (sigframe && out[160..416].iter().all(|&x| x == 0)),
            "XMM did not round-trip"
        );
    }

    // export -> import -> export is a fixed point.
    let mut fp2 = fresh(c);
    if sigframe {
        let mut f1 = vec![0u8; size + 4];
        uabi::export_sigframe(&c.cfg, &fp, user, &mut f1).expect("export_sigframe");
        uabi::import_sigframe(&c.cfg, &mut fp2, &f1).expect("own sigframe refused");
        let mut f2 = vec![0u8; size + 4];
        uabi::export_sigframe(&c.cfg, &fp2, user, &mut f2).expect("export_sigframe");
        assert!(
            f1 == f2,
            "sigframe export/import/export is not a fixed point"
        );
    } else {
        uabi::import(&c.cfg, &mut fp2, &out[..n]).expect("own export refused");
        let mut out2 = vec![0u8; size];
        uabi::export(&c.cfg, &fp2, user, &mut out2).expect("export");
        assert!(
            out[..n] == out2[..],
            "export/import/export is not a fixed point"
        );
    }
}

/// Random bytes rarely get past the first header check, so the input is also
/// read as edits to a valid signal frame (the primed fpstate's export): byte 0
/// picks the entry point and a truncation, then (offset u16, value u8) triples.
fn edited(c: &Cpu, data: &[u8]) -> Option<(Vec<u8>, bool)> {
    let (&sel, rest) = data.split_first()?;
    let fp = fresh(c);
    let user = fp.info().user_features;
    let size = c.e.standard_size(user) as usize;
    let mut f = vec![0u8; size + 4];
    uabi::export_sigframe(&c.cfg, &fp, user, &mut f).expect("export_sigframe");
    let mut edits = rest.chunks_exact(3);
    for e in &mut edits {
        let off = usize::from(u16::from_le_bytes([e[0], e[1]])) % f.len();
        f[off] = e[2];
    }
    if sel & 2 != 0 {
        // Truncate: 0..=size+3 bytes, from the leftover bytes if any.
        let t = edits
            .remainder()
            .iter()
            .fold(0usize, |a, &b| a * 256 + usize::from(b));
        f.truncate(t % (size + 4));
    }
    Some((f, sel & 1 != 0))
}

fuzz_target!(|data: &[u8]| {
    for c in cpus() {
        check_import(c, data, false);
        check_import(c, data, true);
        if let Some((f, sigframe)) = edited(c, data) {
            check_import(c, &f, sigframe);
        }
    }
});
