//! The benchmark chart: a hand-written SVG bar chart of decode tokens/s per
//! backend and model, each bar labelled with its rate and its speedup over
//! the slowest row.

use std::fmt::Write as _;

use super::result::BenchResult;

/// Escapes text for XML character data and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 does not allow at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The label of a row: "cpu · model".
pub fn row_label(backend: &str, model: &str) -> String {
    format!("{backend} · {model}")
}

const WIDTH: u32 = 760;
const LABEL_W: u32 = 300;
/// Characters of a row label that fit in `LABEL_W` at the chart's font size.
const LABEL_CHARS: usize = 40;
const BAR_MAX_W: f64 = 300.0;
const ROW_H: u32 = 34;
const TOP: u32 = 56;

/// The chart of `result` as an SVG document.
pub fn chart(result: &BenchResult) -> String {
    let rows: Vec<(String, f64, f64, &str)> = result
        .targets
        .iter()
        .map(|t| {
            (
                row_label(&t.backend, &t.model),
                t.summary.decode_tps,
                t.summary.speedup,
                t.backend.as_str(),
            )
        })
        .collect();
    let n = u32::try_from(rows.len()).unwrap_or(u32::MAX).max(1);
    let height = TOP + n * ROW_H + 40;
    let max = rows
        .iter()
        .map(|r| r.1)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let title = format!("Decode tokens/s, profile {}", result.profile);
    let _ = writeln!(s, "<title>{}</title>", escape(&title));
    let _ = writeln!(
        s,
        r##"<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="26" font-size="16" font-weight="bold">{}</text>"#,
        escape(&title)
    );
    let _ = writeln!(
        s,
        r##"<text x="16" y="44" font-size="11" fill="#555555">{}</text>"##,
        escape(&format!(
            "{} · supervisor {} · median of {} repetition(s) · ×N = speedup over the slowest row",
            result.host.hostname, result.supervisor_version, result.settings.repetitions
        ))
    );
    if rows.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="16" y="{}">nothing was measured</text>"#,
            TOP + 20
        );
    }
    for (i, (label, tps, speedup, backend)) in rows.iter().enumerate() {
        let y = TOP + u32::try_from(i).unwrap_or(0) * ROW_H;
        bar(&mut s, y, label, *tps, *speedup, backend, max);
    }
    let axis_y = TOP + n * ROW_H + 4;
    let _ = writeln!(
        s,
        r##"<line x1="{LABEL_W}" y1="{TOP}" x2="{LABEL_W}" y2="{axis_y}" stroke="#333333"/>"##
    );
    let _ = writeln!(s, "</svg>");
    s
}

/// One row: its label, the bar, the multiplier on the bar and the rate after it.
fn bar(s: &mut String, y: u32, label: &str, tps: f64, speedup: f64, backend: &str, max: f64) {
    let w = if max > 0.0 && tps.is_finite() {
        (tps / max * BAR_MAX_W).max(1.0)
    } else {
        1.0
    };
    let colour = if backend == "npu" {
        "#f28e2b"
    } else {
        "#4e79a7"
    };
    // Long model names are cut to fit beside the bars; the whole name stays
    // in a tooltip.
    let shown = if label.chars().count() > LABEL_CHARS {
        let cut: String = label.chars().take(LABEL_CHARS - 1).collect();
        format!("{cut}…<title>{}</title>", escape(label))
    } else {
        escape(label)
    };
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" class="row">{shown}</text>"#,
        y + 17
    );
    let _ = writeln!(
        s,
        r#"<rect x="{LABEL_W}" y="{}" width="{w:.1}" height="22" fill="{colour}"/>"#,
        y + 2
    );
    let multiplier = format!("×{speedup:.2}");
    let rate = format!("{tps:.1} tok/s");
    let end = f64::from(LABEL_W) + w;
    // The multiplier sits on the bar when the bar is wide enough to hold it.
    let outside = if w >= 56.0 {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="end" fill="#ffffff" font-weight="bold">{}</text>"##,
            end - 5.0,
            y + 17,
            escape(&multiplier)
        );
        rate
    } else {
        format!("{rate} {multiplier}")
    };
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}">{}</text>"#,
        end + 6.0,
        y + 17,
        escape(&outside)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_control_characters() {
        assert_eq!(escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos; ");
    }

    #[test]
    fn long_labels_are_cut_with_the_whole_name_kept() {
        let mut s = String::new();
        let long = row_label("npu", &"Qwen2.5-1.5B-Instruct-rk3588-w8a8-".repeat(2));
        bar(&mut s, 0, &long, 10.0, 1.0, "npu", 10.0);
        assert!(
            s.contains('…') && s.contains(&format!("<title>{long}</title>")),
            "{s}"
        );
        let mut s = String::new();
        bar(&mut s, 0, "cpu · m<1>", 10.0, 1.0, "cpu", 10.0);
        assert!(
            s.contains(">cpu · m&lt;1&gt;</text>") && !s.contains("<title>"),
            "{s}"
        );
    }
}
