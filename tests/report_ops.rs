//! Issue 21's subcommands of `xstate-report`, run in-process on the recorded
//! dumps: `compat A B` exits 0 exactly when `guest::migrate` moves the
//! largest guest KVM offers both ways (every ordered pair of `layouts/`),
//! 1 otherwise, 2 on bad input; `fleet`'s leaf 0xD reads back as the model;
//! `--svg` renders with a real renderer (Debian's `rsvg-convert`) into a PNG
//! of the SVG's size that is not blank.

#[allow(unused_macros)]
#[path = "testkit/mod.rs"]
mod testkit;

#[path = "../examples/xstate-report.rs"]
#[allow(dead_code)]
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use report::ops::{Outcome, dispatch};
use testkit::{dumps, layouts_dir, loud};
use xstate::XFeatures;
use xstate::cpuid::RecordedCpuid;
use xstate::enumerate::Enumeration;
use xstate::fleet::{Fleet, GuestModel, all_guest_perms};
use xstate::guest::migrate;

fn run(args: &[&str]) -> Result<Outcome, String> {
    let argv: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    dispatch(&argv).expect("a subcommand")
}

fn path(name: &str) -> String {
    layouts_dir().join(name).to_string_lossy().into_owned()
}

#[test]
fn compat_exit_status_is_migrates_verdict_on_every_ordered_pair() {
    let all: Vec<(&str, Enumeration)> = dumps()
        .iter()
        .filter_map(|(n, c)| Enumeration::from_cpuid(c).ok().map(|e| (n.as_str(), e)))
        .collect();
    let (mut pairs, mut zero, mut one) = (0, 0, 0);
    for (na, a) in &all {
        let ga = GuestModel::offered(a).guest(a).unwrap();
        for (nb, b) in &all {
            let gb = GuestModel::offered(b).guest(b).unwrap();
            let both = migrate(&ga, b, &all_guest_perms(b)).is_ok()
                && migrate(&gb, a, &all_guest_perms(a)).is_ok();
            let out = run(&["compat", &path(na), &path(nb)]).unwrap();
            assert_eq!(out.status, if both { 0 } else { 1 }, "compat {na} {nb}");
            let json = run(&["compat", &path(na), &path(nb), "--json"]).unwrap();
            assert!(
                json.text.contains(&format!("\"compatible\": {both}")),
                "{na} {nb}: {}",
                json.text
            );
            assert!(out.text.contains(if both {
                "compatible both ways"
            } else {
                "not compatible"
            }));
            pairs += 1;
            if both {
                zero += 1;
            } else {
                one += 1;
            }
        }
    }
    loud!(
        "compat CLI vs migrate: {pairs} ordered pairs of {} dumps, {zero} exit 0, {one} exit 1, 0 disagree",
        all.len()
    );
    assert_eq!(pairs, all.len() * all.len());
    assert!(zero >= all.len() && one > 0);
}

#[test]
fn compat_names_each_component_that_cannot_move() {
    let out = run(&[
        "compat",
        &path("intel-sapphire-rapids-xeon-w9-3475x.txt"),
        &path("amd-zen4-ryzen-9-7950x.txt"),
    ])
    .unwrap();
    assert_eq!(out.status, 1);
    let t = &out.text;
    for want in [
        "PKRU               component 9 is at standard offset 2688 on the source and 2432 on the destination",
        "AMX_TILEDATA       components 0x60000 cannot be held by the destination",
        "AVX512_ZMM_HI256   goes only together with component 5",
        "KVM XSAVE buffer (max(4096, KVM_CAP_XSAVE2)): A 11008 bytes, B 4096 bytes",
        "moves both ways: XCR0 0x7 (x87 SSE AVX)",
        "left out  9 PKRU               held back by B: standard offset 2432 where the fleet has 2688",
    ] {
        assert!(t.contains(want), "missing `{want}` in:\n{t}");
    }
}

#[test]
fn bad_input_exits_2() {
    let spr = path("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let dir = std::env::temp_dir().join(format!("xstate-report-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.txt");
    std::fs::write(&junk, "0x0000000d 0x00: eax=zz\n").unwrap();
    let junk = junk.to_string_lossy().into_owned();
    for args in [
        vec!["compat"],
        vec!["compat", spr.as_str()],
        vec!["compat", spr.as_str(), spr.as_str(), spr.as_str()],
        vec!["compat", spr.as_str(), "/nonexistent/dump.txt"],
        vec!["compat", spr.as_str(), junk.as_str()],
        vec!["compat", spr.as_str(), spr.as_str(), "--bogus"],
        vec!["compat", spr.as_str(), spr.as_str(), "--svg"],
        vec!["compat", spr.as_str(), spr.as_str(), "--json", "--json"],
        vec!["fleet"],
        vec!["fleet", junk.as_str()],
        vec!["--svg"],
    ] {
        let r = run(&args);
        assert!(r.is_err(), "{args:?} accepted");
        // main() turns every error into exit status 2.
        let code = report::ops::finish(r);
        assert_eq!(code, std::process::ExitCode::from(2), "{args:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fleet_leaf_reads_back_as_the_model() {
    let names = [
        "intel-sapphire-rapids-xeon-w9-3475x.txt",
        "intel-ice-lake-core-i7-1065g7.txt",
        "intel-tiger-lake-core-i7-1165g7.txt",
        "intel-skylake-sp-xeon-platinum-8180.txt",
    ];
    let mut args = vec!["fleet".to_owned()];
    args.extend(names.iter().map(|n| path(n)));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&refs).unwrap();
    assert_eq!(out.status, 0);
    let es: Vec<Enumeration> = names.iter().map(|n| testkit::load(n).1).collect();
    let f = Fleet::new(&es).unwrap();
    // The printed leaf is a `cpuid -r` dump: it enumerates as the model.
    let leaf: String = out
        .text
        .lines()
        .filter(|l| l.starts_with("0x0000000d"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = Enumeration::from_cpuid(&RecordedCpuid::parse(&leaf).unwrap()).unwrap();
    assert_eq!(e.xcr0_supported(), f.model().xcr0);
    assert_eq!(e.xss_supported(), f.model().xss);
    assert!(f.model().xcr0.contains(XFeatures::AVX512));
    // AMX and PKRU: named with the host that holds them back.
    let t = &out.text;
    assert!(t.contains("18 AMX_TILEDATA       held back by host 1 (intel-ice-lake-core-i7-1065g7): not offered to guests"), "{t}");
    let json = run(&[refs.as_slice(), &["--json"]].concat()).unwrap();
    assert!(json.text.contains("\"cpuid_0xd\": ["), "{}", json.text);
    assert_eq!(
        json.text.matches("\"function\": 13").count(),
        leaf.lines().count()
    );
}

/// Debian's `rsvg-convert` (librsvg2-bin), or `None` with a loud SKIP.
fn renderer() -> Option<PathBuf> {
    match Command::new("rsvg-convert").arg("--version").output() {
        Ok(o) if o.status.success() => Some(PathBuf::from("rsvg-convert")),
        r => {
            loud!(
                "\n******** SKIP svg render: rsvg-convert not runnable ({}); apt-get install librsvg2-bin ********\n",
                r.map_or_else(|e| e.to_string(), |o| format!("exit {}", o.status))
            );
            None
        }
    }
}

/// The SVG's declared width and height.
fn svg_size(svg: &str) -> (u32, u32) {
    let attr = |name: &str| -> u32 {
        let at = svg.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        let end = svg[at..].find('"').unwrap();
        svg[at..at + end].parse::<f64>().unwrap().ceil() as u32
    };
    (attr("width"), attr("height"))
}

/// Render `svg` to PNG and check it: the SVG's size, and not blank (many
/// pixels that are not the white background, and more than two colours).
fn render_and_check(tool: &Path, svg_path: &Path, what: &str) {
    let svg = std::fs::read_to_string(svg_path).unwrap();
    let png_path = svg_path.with_extension("png");
    let st = Command::new(tool)
        .arg(svg_path)
        .arg("-o")
        .arg(&png_path)
        .status()
        .unwrap();
    assert!(st.success(), "{what}: rsvg-convert failed");
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height),
        svg_size(&svg),
        "{what}: PNG size"
    );
    let px = info.color_type.samples();
    let pixels = buf[..info.buffer_size()].chunks(px);
    let total = (info.width * info.height) as usize;
    let inked = pixels
        .clone()
        .filter(|p| p.iter().take(3).any(|&c| c < 0xf0))
        .count();
    let mut colours: Vec<&[u8]> = pixels.collect();
    colours.sort_unstable();
    colours.dedup();
    loud!(
        "svg render {what}: {}x{} px, {inked} of {total} pixels inked ({:.1}%), {} colours",
        info.width,
        info.height,
        100.0 * inked as f64 / total as f64,
        colours.len()
    );
    assert!(
        inked * 20 > total,
        "{what}: nearly blank ({inked} of {total})"
    );
    assert!(colours.len() > 8, "{what}: {} colours", colours.len());
}

#[test]
fn svg_renders_with_rsvg_convert() {
    let Some(tool) = renderer() else { return };
    let dir = std::env::temp_dir().join(format!("xstate-report-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spr = path("intel-sapphire-rapids-xeon-w9-3475x.txt");
    let zen4 = path("amd-zen4-ryzen-9-7950x.txt");
    let one = dir.join("one.svg");
    let out = run(&["--cpuid", &spr, "--svg", one.to_str().unwrap()]).unwrap();
    assert!(
        out.text.contains("supported components"),
        "the report still prints"
    );
    render_and_check(&tool, &one, "one CPU");
    let svg = std::fs::read_to_string(&one).unwrap();
    assert!(
        svg.contains("12 CET_S  24  (guest only)"),
        "CET_S drawn as guest-only"
    );
    assert!(svg.contains("64-byte alignment padding"));
    assert!(svg.contains("hole"));
    let pair = dir.join("compat.svg");
    let out = run(&["compat", &spr, &zen4, "--svg", pair.to_str().unwrap()]).unwrap();
    assert_eq!(out.status, 1);
    render_and_check(&tool, &pair, "compat");
    let fleet = dir.join("fleet.svg");
    let dumps: Vec<String> = [
        "intel-haswell-core-i7-4770.txt",
        "amd-zen3-epyc-7763.txt",
        "intel-skylake-core-i7-6700k.txt",
    ]
    .iter()
    .map(|n| path(n))
    .collect();
    let mut args = vec!["fleet"];
    args.extend(dumps.iter().map(String::as_str));
    args.extend(["--svg", fleet.to_str().unwrap()]);
    run(&args).unwrap();
    render_and_check(&tool, &fleet, "fleet");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The README's picture is what `--svg` draws today from its dump.
#[test]
fn readme_picture_is_current() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/sapphire-rapids-layouts.svg");
    let dir = std::env::temp_dir().join(format!("xstate-report-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let now = dir.join("now.svg");
    run(&[
        "--cpuid",
        &path("intel-sapphire-rapids-xeon-w9-3475x.txt"),
        "--svg",
        now.to_str().unwrap(),
    ])
    .unwrap();
    let (a, b) = (
        std::fs::read_to_string(&committed).unwrap(),
        std::fs::read_to_string(&now).unwrap(),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        a == b,
        "docs/sapphire-rapids-layouts.svg is stale: cargo run --example xstate-report -- --cpuid layouts/intel-sapphire-rapids-xeon-w9-3475x.txt --svg docs/sapphire-rapids-layouts.svg"
    );
}
