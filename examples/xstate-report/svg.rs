//! `xstate-report --svg FILE`: the XSAVE layouts as a picture. One column per
//! area, all drawn to one byte scale so that columns side by side line up:
//! the standard form (the user ABI: holes where a component is not
//! enumerated), the compacted host and guest fpstates (64-byte alignment
//! padding; CET_S only in the guest's), and with `compat` or `fleet` each
//! host's standard form, the components outside the shared model faded.

use std::fmt::Write as _;

use xstate::XFeatures;
use xstate::config::{Configs, Policy};
use xstate::enumerate::{EXTENDED_START, Enumeration, LEGACY_SIZE};
use xstate::feature::name_of;
use xstate::fleet::GuestModel;
use xstate::layout::{Form, Layout};

use super::Host;

/// Drawing units.
const BAR_TOP: f64 = 70.0;
const BAR_HEIGHT: f64 = 760.0;
const BAR_WIDTH: f64 = 110.0;
const COLUMN: f64 = 380.0;
const LINE: f64 = 12.0;

/// What a band of a column is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Legacy,
    Header,
    Component(u32),
    /// Bytes of the standard form no enumerated component uses.
    Hole,
    /// Bytes the compacted form skips to put a component on 64 bytes.
    Pad,
}

struct Band {
    start: u32,
    end: u32,
    kind: Kind,
    /// Drawn faded: outside the model the picture is about.
    faded: bool,
    /// Only guest fpstates have it (CET_S, the lesser dynamic kind).
    guest_only: bool,
}

struct Column {
    title: String,
    subtitle: String,
    size: u32,
    bands: Vec<Band>,
}

/// The bands of `l`: legacy region, header, then each component in offset
/// order with the hole or padding before it.
fn bands(l: &Layout, faded: XFeatures, guest_only: XFeatures) -> Vec<Band> {
    let mut v = vec![
        Band {
            start: 0,
            end: LEGACY_SIZE,
            kind: Kind::Legacy,
            faded: false,
            guest_only: false,
        },
        Band {
            start: LEGACY_SIZE,
            end: EXTENDED_START,
            kind: Kind::Header,
            faded: false,
            guest_only: false,
        },
    ];
    let mut comps: Vec<(u32, u32, u32)> = l
        .mask()
        .indices()
        .filter(|&i| i >= 2)
        .filter_map(|i| Some((l.offset_of(i)?, l.size_of(i)?, i)))
        .collect();
    comps.sort_unstable();
    let mut prev = EXTENDED_START;
    for (start, size, i) in comps {
        if start > prev {
            v.push(Band {
                start: prev,
                end: start,
                kind: if l.form() == Form::Compacted {
                    Kind::Pad
                } else {
                    Kind::Hole
                },
                faded: false,
                guest_only: false,
            });
        }
        let end = start.saturating_add(size);
        v.push(Band {
            start,
            end,
            kind: Kind::Component(i),
            faded: faded.has_index(i),
            guest_only: guest_only.has_index(i),
        });
        prev = prev.max(end);
    }
    v
}

fn layout(e: &Enumeration, form: Form, mask: XFeatures) -> Result<Layout, String> {
    match form {
        Form::Standard => Layout::standard(e, mask),
        Form::Compacted => Layout::compacted(e, mask),
    }
    .map_err(|err| format!("layout of {:#x}: {err}", mask.bits()))
}

/// One CPU: its standard form, its host fpstate and its guest fpstate.
pub fn one(h: &Host) -> Result<String, String> {
    let e = &h.e;
    let cfg = Configs::new(e, &Policy::linux(e)).map_err(|err| format!("Linux policy: {err}"))?;
    let user = cfg.user().max_features;
    let std = layout(e, Form::Standard, user)?;
    let (k, g) = (cfg.kernel(), cfg.guest());
    let host = layout(e, k.form, k.max_features)?;
    let guest = layout(e, g.form, g.max_features)?;
    let guest_only = g.max_features.difference(k.max_features);
    let form = |f: Form| match f {
        Form::Standard => "standard",
        Form::Compacted => "compacted",
    };
    let cols = vec![
        Column {
            title: "standard form (user ABI)".into(),
            subtitle: format!("XCR0 {:#x}, {} bytes", user.bits(), std.size()),
            size: std.size(),
            bands: bands(&std, XFeatures::empty(), XFeatures::empty()),
        },
        Column {
            title: format!("host fpstate ({})", form(k.form)),
            subtitle: format!("{:#x}, {} bytes", k.max_features.bits(), host.size()),
            size: host.size(),
            bands: bands(&host, XFeatures::empty(), XFeatures::empty()),
        },
        Column {
            title: format!("guest fpstate ({})", form(g.form)),
            subtitle: format!("{:#x}, {} bytes", g.max_features.bits(), guest.size()),
            size: guest.size(),
            bands: bands(&guest, XFeatures::empty(), guest_only),
        },
    ];
    Ok(draw(&format!("XSAVE layouts of {}", h.name), &cols))
}

/// Several hosts: each one's standard form of what it offers guests, to one
/// scale; components outside `model` faded.
pub fn hosts(hs: &[&Host], model: Option<GuestModel>) -> Result<String, String> {
    let mut cols = Vec::new();
    for h in hs {
        let m = GuestModel::offered(&h.e);
        let l = layout(&h.e, Form::Standard, m.xcr0).map_err(|err| format!("{}: {err}", h.name))?;
        let faded = model.map_or(XFeatures::empty(), |s| m.xcr0.difference(s.xcr0));
        cols.push(Column {
            title: h.name.clone(),
            subtitle: format!("offers XCR0 {:#x}, {} bytes", m.xcr0.bits(), l.size()),
            size: l.size(),
            bands: bands(&l, faded, XFeatures::empty()),
        });
    }
    let title = match model {
        Some(m) => format!(
            "standard forms of {} hosts; shared model XCR0 {:#x} (faded: not shared)",
            hs.len(),
            m.xcr0.bits()
        ),
        None => format!("standard forms of {} hosts", hs.len()),
    };
    Ok(draw(&title, &cols))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A fill for each component, from its index.
fn colour(kind: Kind) -> &'static str {
    const PALETTE: [&str; 10] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#e15759",
        "#bab0ac", "#86bcb6",
    ];
    match kind {
        Kind::Legacy => "#8c8c8c",
        Kind::Header => "#4d4d4d",
        Kind::Hole => "#ffffff",
        Kind::Pad => "url(#pad)",
        Kind::Component(i) => PALETTE
            .get(i as usize % PALETTE.len())
            .unwrap_or(&"#4e79a7"),
    }
}

fn label(b: &Band) -> String {
    let size = b.end.saturating_sub(b.start);
    match b.kind {
        Kind::Legacy => format!("0  legacy region (x87, SSE)  {size}"),
        Kind::Header => format!("{}  XSAVE header  {size}", b.start),
        Kind::Hole => format!("{}  hole  {size}", b.start),
        Kind::Pad => format!("{}  64-byte alignment padding  {size}", b.start),
        Kind::Component(i) => format!(
            "{}  {i} {}  {size}{}{}",
            b.start,
            name_of(i),
            if b.guest_only { "  (guest only)" } else { "" },
            if b.faded { "  (not shared)" } else { "" }
        ),
    }
}

fn draw(title: &str, cols: &[Column]) -> String {
    let max = cols.iter().map(|c| c.size).max().unwrap_or(1).max(1);
    let scale = BAR_HEIGHT / f64::from(max);
    let y = |byte: u32| BAR_TOP + f64::from(byte) * scale;
    let mut body = String::new();
    let mut bottom = BAR_TOP + BAR_HEIGHT;
    for (n, c) in cols.iter().enumerate() {
        let x = 20.0 + n as f64 * COLUMN;
        let _ = writeln!(
            body,
            r#"<text x="{x}" y="{}" font-weight="bold">{}</text><text x="{x}" y="{}">{}</text>"#,
            BAR_TOP - 26.0,
            escape(&c.title),
            BAR_TOP - 12.0,
            escape(&c.subtitle)
        );
        let mut next_label = BAR_TOP;
        for b in &c.bands {
            let (top, h) = (y(b.start), (y(b.end) - y(b.start)).max(0.5));
            let stroke = if b.guest_only {
                r##" stroke="#d00000" stroke-width="2.5""##
            } else if b.kind == Kind::Hole {
                r##" stroke="#999999" stroke-dasharray="3,2""##
            } else {
                r##" stroke="#ffffff" stroke-width="0.5""##
            };
            let _ = writeln!(
                body,
                r#"<rect x="{x}" y="{top:.2}" width="{BAR_WIDTH}" height="{h:.2}" fill="{}"{stroke}{}/>"#,
                colour(b.kind),
                if b.faded {
                    r#" fill-opacity="0.25""#
                } else {
                    ""
                }
            );
            let ly = (top + h / 2.0 + 4.0).max(next_label);
            next_label = ly + LINE;
            let lx = x + BAR_WIDTH + 24.0;
            let _ = writeln!(
                body,
                r##"<line x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="#bbbbbb"/><text x="{lx}" y="{ly:.2}"{}>{}</text>"##,
                x + BAR_WIDTH,
                top + h / 2.0,
                lx - 2.0,
                ly - 4.0,
                if b.guest_only {
                    r##" fill="#d00000""##
                } else {
                    ""
                },
                escape(&label(b))
            );
            bottom = bottom.max(ly);
        }
        let _ = writeln!(
            body,
            r#"<text x="{x}" y="{:.2}">end {}</text>"#,
            y(c.size) + 14.0,
            c.size
        );
    }
    let width = 40.0 + cols.len().max(1) as f64 * COLUMN;
    let height = bottom + 60.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0}" viewBox="0 0 {width} {height:.0}" font-family="DejaVu Sans, sans-serif" font-size="10">"#
    );
    o.push_str(
        r##"<defs><pattern id="pad" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff3b0"/><line x1="0" y1="0" x2="0" y2="6" stroke="#c9a800" stroke-width="2"/></pattern></defs>
<rect width="100%" height="100%" fill="#ffffff"/>
"##,
    );
    let _ = writeln!(
        o,
        r#"<text x="20" y="22" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    o.push_str(&body);
    let _ = writeln!(
        o,
        r##"<text x="20" y="{:.0}">One byte scale for every column ({:.4} px per byte).</text><text x="20" y="{:.0}">Dashed: a hole of the standard form; hatched: 64-byte alignment padding; red: state only guest fpstates hold.</text>"##,
        height - 32.0,
        scale,
        height - 18.0
    );
    o.push_str("</svg>\n");
    o
}
