//! `features/*.conf` (one reviewed data file per XSAVE component) against the Rust
//! `CATALOG` in src/feature.rs, the `XFeatures` groups, and the CPUID leaf 0xD of every
//! dump in `layouts/`.
//!
//! The data files are the reviewed source: when they and the Rust table disagree,
//! this test fails and names every disagreeing field.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use xstate::XFeatures;
use xstate::cpuid::CpuidSource;
use xstate::feature::{CATALOG, CpuidBit, Domain, FeatureInfo, Reg, XFeature};

mod testkit;
use testkit::loud;

/// Every key a file must have, exactly once.
const KEYS: [&str; 9] = [
    "index",
    "name",
    "linux_enum",
    "linux_desc",
    "domain",
    "cpuid_flag",
    "arch_size",
    "xfd_capable",
    "sdm",
];

/// Number of catalogued components (0..=19).
const COMPONENTS: u32 = 20;

/// One parsed data file.
#[derive(Debug, Clone, PartialEq)]
struct Conf {
    file: String,
    index: u32,
    name: String,
    linux_enum: String,
    linux_desc: String,
    domain: Domain,
    cpuid_flag: String,
    arch_size: Option<u32>,
    xfd_capable: bool,
    sdm: String,
}

/// `key = value` lines, `#` comment lines, blank lines. Values run to the end of the
/// line, trimmed. Unknown, duplicate and missing keys are errors.
fn parse_kv(text: &str) -> Result<BTreeMap<&'static str, String>, String> {
    let mut out = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: no `=` in {line:?}", n + 1))?;
        let (k, v) = (k.trim(), v.trim());
        let key = KEYS
            .iter()
            .copied()
            .find(|&known| known == k)
            .ok_or_else(|| format!("line {}: unknown key {k:?}", n + 1))?;
        if v.is_empty() {
            return Err(format!("line {}: empty value for {key}", n + 1));
        }
        if out.insert(key, v.to_owned()).is_some() {
            return Err(format!("line {}: key {key} given twice", n + 1));
        }
    }
    let missing: Vec<_> = KEYS.iter().filter(|k| !out.contains_key(*k)).collect();
    if !missing.is_empty() {
        return Err(format!("missing keys {missing:?}"));
    }
    Ok(out)
}

fn parse_conf(file: &str, text: &str) -> Result<Conf, String> {
    let mut kv = parse_kv(text)?;
    let mut take = |k: &str| kv.remove(k).unwrap_or_default();
    let index_s = take("index");
    let index = index_s
        .parse::<u32>()
        .map_err(|_| format!("index {index_s:?} is not a number"))?;
    let domain = match take("domain").as_str() {
        "user" => Domain::User,
        "supervisor" => Domain::Supervisor,
        d => return Err(format!("domain {d:?} is neither `user` nor `supervisor`")),
    };
    let size_s = take("arch_size");
    let arch_size = match size_s.as_str() {
        "none" => None,
        s => Some(
            s.parse::<u32>()
                .map_err(|_| format!("arch_size {s:?} is neither a number nor `none`"))?,
        ),
    };
    let xfd_capable = match take("xfd_capable").as_str() {
        "true" => true,
        "false" => false,
        x => return Err(format!("xfd_capable {x:?} is neither `true` nor `false`")),
    };
    Ok(Conf {
        file: file.to_owned(),
        index,
        name: take("name"),
        linux_enum: take("linux_enum"),
        linux_desc: take("linux_desc"),
        domain,
        cpuid_flag: take("cpuid_flag"),
        arch_size,
        xfd_capable,
        sdm: take("sdm"),
    })
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every entry of `dir`, sorted by file name.
fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), p)
        })
        .collect();
    v.sort();
    v
}

/// All data files, parsed. Panics naming every file that does not parse.
fn confs() -> Vec<Conf> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, path) in entries(&root().join("features")) {
        if !name.ends_with(".conf") {
            errors.push(format!(
                "features/{name}: not a .conf file (a misnamed data file would go unchecked)"
            ));
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        match parse_conf(&name, &text) {
            Ok(c) => out.push(c),
            Err(e) => errors.push(format!("features/{name}: {e}")),
        }
    }
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
    out
}

/// The files indexed by component number; panics unless each of 0..=19 has exactly one.
fn by_index() -> BTreeMap<u32, Conf> {
    let mut map: BTreeMap<u32, Vec<Conf>> = BTreeMap::new();
    for c in confs() {
        map.entry(c.index).or_default().push(c);
    }
    let mut errors = Vec::new();
    for i in 0..COMPONENTS {
        match map.get(&i).map(Vec::len) {
            None => errors.push(format!("component {i}: no file in features/")),
            Some(1) => {}
            Some(_) => {
                let files: Vec<_> = map[&i].iter().map(|c| c.file.as_str()).collect();
                errors.push(format!("component {i}: several files {files:?}"));
            }
        }
    }
    for (i, cs) in &map {
        if *i >= COMPONENTS {
            for c in cs {
                errors.push(format!(
                    "features/{}: index {i} is outside the catalog 0..=19",
                    c.file
                ));
            }
        }
    }
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
    map.into_iter()
        .map(|(i, mut v)| (i, v.pop().unwrap()))
        .collect()
}

fn mask_of(confs: &BTreeMap<u32, Conf>, pred: impl Fn(&Conf) -> bool) -> XFeatures {
    confs
        .values()
        .filter(|c| pred(c))
        .fold(XFeatures::empty(), |m, c| {
            m | XFeatures::from_index(c.index).unwrap()
        })
}

#[test]
fn parser_refuses_bad_files() {
    let good = "index = 1\nname = SSE\nlinux_enum = XFEATURE_SSE\nlinux_desc = SSE registers\n\
                domain = user\ncpuid_flag = CPUID.01H:EDX.SSE[bit 25]\narch_size = 256\n\
                xfd_capable = false\nsdm = Vol. 1 13.4.1\n";
    let c = parse_conf("t.conf", good).unwrap();
    assert_eq!(c.index, 1);
    assert_eq!(c.cpuid_flag, "CPUID.01H:EDX.SSE[bit 25]");
    assert_eq!(c.arch_size, Some(256));
    // A comment line and a value containing `=` survive.
    let c = parse_conf(
        "t.conf",
        &format!("# x = y\n{good}").replace("SSE registers", "a = b"),
    )
    .unwrap();
    assert_eq!(c.linux_desc, "a = b");
    let cases = [
        (format!("{good}colour = red\n"), "unknown key"),
        (format!("{good}name = SSE\n"), "twice"),
        (good.replace("sdm = Vol. 1 13.4.1\n", ""), "missing keys"),
        (good.replace("domain = user", "domain = XCR0"), "domain"),
        (
            good.replace("arch_size = 256", "arch_size = big"),
            "arch_size",
        ),
        (
            good.replace("xfd_capable = false", "xfd_capable = no"),
            "xfd_capable",
        ),
        (good.replace("index = 1", "index = one"), "index"),
        (format!("{good}just words\n"), "no `=`"),
        (good.replace("name = SSE", "name ="), "empty value"),
    ];
    for (text, want) in cases {
        let e = parse_conf("t.conf", &text).unwrap_err();
        assert!(e.contains(want), "{want:?} not in {e:?}");
    }
}

#[test]
fn every_component_has_exactly_one_well_named_file() {
    let map = by_index();
    assert_eq!(map.len(), COMPONENTS as usize);
    let mut errors = Vec::new();
    for (i, c) in &map {
        // NN-name.conf, NN the two-digit component number.
        let want = format!("{i:02}-");
        let stem = c.file.strip_suffix(".conf").unwrap_or(&c.file);
        let ok = stem.starts_with(&want)
            && stem.len() > want.len()
            && stem[want.len()..]
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
        if !ok {
            errors.push(format!(
                "features/{}: expected {want}<lower-case name>.conf",
                c.file
            ));
        }
    }
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
    loud!(
        "features/: {} files, components 0..=19 each once",
        map.len()
    );
}

#[test]
fn files_agree_with_the_rust_catalog() {
    let map = by_index();
    let mut errors = Vec::new();
    for (i, c) in &map {
        let r: &FeatureInfo = &CATALOG[*i as usize];
        let fields = [
            ("index", i.to_string(), (r.feature as u32).to_string()),
            ("name", format!("{:?}", c.name), format!("{:?}", r.name)),
            (
                "linux_enum",
                format!("{:?}", c.linux_enum),
                format!("{:?}", r.linux_enum),
            ),
            (
                "linux_desc",
                format!("{:?}", c.linux_desc),
                format!("{:?}", r.linux_desc),
            ),
            (
                "domain",
                format!("{:?}", c.domain),
                format!("{:?}", r.domain),
            ),
            (
                "cpuid_flag",
                format!("{:?}", c.cpuid_flag),
                format!("{:?}", r.cpuid_flag),
            ),
            (
                "arch_size",
                format!("{:?}", c.arch_size),
                format!("{:?}", r.arch_size),
            ),
            (
                "xfd_capable",
                c.xfd_capable.to_string(),
                r.xfd_capable.to_string(),
            ),
            ("sdm", format!("{:?}", c.sdm), format!("{:?}", r.sdm)),
        ];
        for (field, file, rust) in fields {
            if file != rust {
                errors.push(format!(
                    "features/{} {field}: file says {file}, CATALOG[{i}] says {rust}",
                    c.file
                ));
            }
        }
        // The Rust side's own indexing: variant, from_index and the one-bit mask.
        let f = XFeature::from_index(*i);
        if f != Some(r.feature) || r.feature.mask().bits() != 1u64 << i {
            errors.push(format!(
                "CATALOG[{i}]: {:?} is not component {i}",
                r.feature
            ));
        }
    }
    assert_eq!(CATALOG.len(), COMPONENTS as usize);
    assert_eq!(XFeature::from_index(COMPONENTS), None);
    assert!(
        errors.is_empty(),
        "{} disagreement(s) between features/ and src/feature.rs CATALOG:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn groups_follow_the_files() {
    let map = by_index();
    let user = mask_of(&map, |c| c.domain == Domain::User);
    let sup = mask_of(&map, |c| c.domain == Domain::Supervisor);
    let xfd = mask_of(&map, |c| c.xfd_capable);
    let all = mask_of(&map, |_| true);
    loud!(
        "files: user {:#x}, supervisor {:#x}, xfd-capable {:#x}",
        user.bits(),
        sup.bits(),
        xfd.bits()
    );
    assert_eq!(all.bits(), (1 << COMPONENTS) - 1);
    assert_eq!(XFeatures::USER, user, "USER vs files with domain = user");
    assert_eq!(
        XFeatures::SUPERVISOR,
        sup,
        "SUPERVISOR vs files with domain = supervisor"
    );
    assert_eq!(XFeatures::ALL_CATALOGUED, all);
    assert!((user & sup).is_empty());
    // Linux arms only XFD-capable components dynamically (XFEATURE_MASK_USER_DYNAMIC).
    assert_eq!(XFeatures::DYNAMIC, xfd, "DYNAMIC vs files with xfd_capable");
    assert!(user.contains(XFeatures::DYNAMIC));
    // The legacy region holds components 0 and 1 (SDM 13.4.1).
    assert_eq!(XFeatures::LEGACY, mask_of(&map, |c| c.index < 2));
    assert_eq!(
        XFeatures::AVX512,
        mask_of(&map, |c| c.cpuid_flag.contains(".AVX512F["))
    );
    assert_eq!(
        XFeatures::XTILE,
        mask_of(&map, |c| c.cpuid_flag.contains(".AMX-TILE["))
    );
    assert!(user.contains(XFeatures::LEGACY | XFeatures::AVX512 | XFeatures::XTILE));
    // Kernel-only kinds are supervisor components (Linux: CET_S guest-only, LBR independent).
    assert!(sup.contains(XFeatures::GUEST_ONLY | XFeatures::INDEPENDENT));
    assert!(!all.contains(XFeatures::LWP));
    // Every named single-bit constant below 20 is one component, and each has a name.
    let mut named = BTreeSet::new();
    for (name, flag) in XFeatures::from_bits_retain(!0).iter_names() {
        if flag == XFeatures::LWP {
            assert_eq!(flag.bits(), 1 << 62);
            continue;
        }
        assert_eq!(flag.bits().count_ones(), 1, "{name}");
        let i = flag.bits().trailing_zeros();
        assert!(i < COMPONENTS, "{name} is bit {i}");
        assert!(named.insert(i), "two constants for component {i}");
    }
    assert_eq!(named.len(), COMPONENTS as usize);
}

/// The hardware's word on each file: which bitmap enumerates the component, ECX[0]
/// (supervisor), ECX[2] (XFD) and EAX (size), raw from CPUID leaf 0xD of every dump.
#[test]
fn files_agree_with_every_dump() {
    let map = by_index();
    let d = testkit::dumps();
    assert!(!d.is_empty());
    let mut errors = Vec::new();
    // component -> size reported -> dumps reporting it
    let mut sizes: BTreeMap<u32, BTreeMap<u32, Vec<&str>>> = BTreeMap::new();
    for (name, cpu) in d {
        let s0 = cpu.cpuid(0xd, 0);
        let s1 = cpu.cpuid(0xd, 1);
        for (i, c) in map.range(2..) {
            let in_xcr0 = s0.eax & (1 << i) != 0;
            let in_xss = s1.ecx & (1 << i) != 0;
            if !in_xcr0 && !in_xss {
                continue;
            }
            let r = cpu.cpuid(0xd, *i);
            let hw = if in_xss { "supervisor" } else { "user" };
            if in_xcr0 && in_xss {
                errors.push(format!("{name}: component {i} in both XCR0 and IA32_XSS"));
            }
            if (c.domain == Domain::Supervisor) != in_xss || (r.ecx & 1 != 0) != in_xss {
                errors.push(format!(
                    "{name}: component {i} ({}) enumerated as {hw} (ECX {:#x}), features/{} says {:?}",
                    c.name, r.ecx, c.file, c.domain
                ));
            }
            if r.ecx & 4 != 0 && !c.xfd_capable {
                errors.push(format!(
                    "{name}: component {i} has CPUID XFD support (ECX[2]), features/{} says xfd_capable = false",
                    c.file
                ));
            }
            if let Some(s) = c.arch_size {
                if r.eax < s {
                    errors.push(format!(
                        "{name}: component {i} CPUID size {} < arch_size {s} in features/{}",
                        r.eax, c.file
                    ));
                }
            }
            sizes
                .entry(*i)
                .or_default()
                .entry(r.eax)
                .or_default()
                .push(name.as_str());
        }
    }
    for (i, c) in map.range(2..) {
        let Some(seen) = sizes.get(i) else {
            loud!(
                "component {i:2} {:16}: no dump enumerates it; arch_size {:?} unchecked by hardware",
                c.name,
                c.arch_size
            );
            continue;
        };
        let summary: Vec<_> = seen
            .iter()
            .map(|(sz, who)| format!("{sz} x{}", who.len()))
            .collect();
        loud!(
            "component {i:2} {:16}: arch_size {:?}, dumps report {}",
            c.name,
            c.arch_size,
            summary.join(", ")
        );
        // Where the file fixes a size, it is what most CPUs report (AMD Zen 2 gives PKRU
        // 64 bytes, more room than the 8 the state needs: tolerated above, not the norm).
        if let Some(s) = c.arch_size {
            let (modal, _) = seen.iter().max_by_key(|(_, who)| who.len()).unwrap();
            if *modal != s {
                errors.push(format!(
                    "component {i}: features/{} arch_size {s}, but most dumps report {modal} ({summary:?})",
                    c.file
                ));
            }
        }
    }
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
}

/// The SDM notation of a file's `cpuid_flag`, read here without the crate's parser:
/// `CPUID.01H:ECX.AVX[bit 28]` or `CPUID.(EAX=07H,ECX=1):EDX.APX_F[bit 21]`.
fn flag_of(text: &str) -> Option<CpuidBit> {
    let rest = text.strip_prefix("CPUID.")?;
    let (leafpart, rest) = rest.split_once(':')?;
    let (leaf, subleaf) = match leafpart.strip_prefix("(EAX=") {
        Some(p) => {
            let (l, s) = p.strip_suffix(')')?.split_once(",ECX=")?;
            (l, s.parse().ok()?)
        }
        None => (leafpart, 0),
    };
    let leaf = u32::from_str_radix(leaf.strip_suffix('H')?, 16).ok()?;
    let (reg, rest) = rest.split_once('.')?;
    let reg = match reg {
        "EAX" => Reg::Eax,
        "EBX" => Reg::Ebx,
        "ECX" => Reg::Ecx,
        "EDX" => Reg::Edx,
        _ => return None,
    };
    let bit = rest
        .split_once("[bit ")?
        .1
        .strip_suffix(']')?
        .parse()
        .ok()?;
    Some(CpuidBit {
        leaf,
        subleaf,
        reg,
        bit,
    })
}

/// The bit `Enumeration::usable` tests is the one each file names.
#[test]
fn flags_are_the_files_cpuid_flag() {
    let map = by_index();
    for (i, c) in &map {
        let want = flag_of(&c.cpuid_flag).unwrap_or_else(|| {
            panic!(
                "features/{}: cpuid_flag {:?} unreadable",
                c.file, c.cpuid_flag
            )
        });
        assert_eq!(CATALOG[*i as usize].flag, want, "features/{}", c.file);
    }
    assert_eq!(map.len(), CATALOG.len());
}
