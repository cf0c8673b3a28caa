//! Text shaping shared by the comparison and the report: Markdown table
//! cells and one-line excerpts of model output.

/// Text safe inside a Markdown table cell.
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The first `n` characters of `text` on one line.
pub fn excerpt(text: &str, n: usize) -> String {
    let one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > n {
        let mut s: String = one_line.chars().take(n).collect();
        s.push('…');
        s
    } else {
        one_line
    }
}
