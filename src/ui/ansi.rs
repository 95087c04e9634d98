//! Terminal output as HTML: ANSI SGR colour codes become spans with the
//! stylesheet's `a-*` classes, every other escape sequence is dropped, and
//! all text is escaped. Bazel's progress output and test logs carry colours
//! a browser would otherwise show as `^[[31m`.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    italic: bool,
    underline: bool,
    fg: Option<u8>,
    bg: Option<u8>,
}

impl Style {
    fn classes(&self) -> String {
        let mut c = Vec::new();
        if self.bold {
            c.push("a-b".to_string());
        }
        if self.italic {
            c.push("a-i".to_string());
        }
        if self.underline {
            c.push("a-u".to_string());
        }
        if let Some(f) = self.fg {
            c.push(format!("a-f{f}"));
        }
        if let Some(b) = self.bg {
            c.push(format!("a-g{b}"));
        }
        c.join(" ")
    }

    fn apply(&mut self, params: &str) {
        let codes: Vec<u32> = if params.is_empty() {
            vec![0]
        } else {
            params.split(';').map(|p| p.parse().unwrap_or(0)).collect()
        };
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => self.bold = false,
                23 => self.italic = false,
                24 => self.underline = false,
                c @ 30..=37 => self.fg = Some((c - 30) as u8),
                c @ 90..=97 => self.fg = Some((c - 90) as u8),
                39 => self.fg = None,
                c @ 40..=47 => self.bg = Some((c - 40) as u8),
                c @ 100..=107 => self.bg = Some((c - 100) as u8),
                49 => self.bg = None,
                // 256-colour and RGB forms: skip their arguments.
                38 | 48 => {
                    i += if codes.get(i + 1) == Some(&5) { 2 } else { 4 };
                }
                _ => {}
            }
            i += 1;
        }
    }
}

fn escape_into(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Other control characters (bell, backspace...) show nothing.
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
}

/// `text` as escaped HTML with colour spans (for inside a `<pre>`).
pub(super) fn to_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut style = Style::default();
    let mut open = false;
    let mut rest = text;
    while let Some(at) = rest.find('\u{1b}') {
        escape_into(&mut out, &rest[..at]);
        let seq = &rest[at + 1..];
        if let Some(csi) = seq.strip_prefix('[') {
            // Parameters, then one final byte in @..~.
            let end = csi
                .char_indices()
                .find(|(_, c)| ('@'..='~').contains(c))
                .map(|(i, _)| i);
            match end {
                Some(end) => {
                    if csi.as_bytes()[end] == b'm' {
                        let before = style;
                        style.apply(&csi[..end]);
                        if style != before {
                            if open {
                                out.push_str("</span>");
                                open = false;
                            }
                            let classes = style.classes();
                            if !classes.is_empty() {
                                let _ = write!(out, "<span class=\"{classes}\">");
                                open = true;
                            }
                        }
                    }
                    rest = &csi[end + 1..];
                }
                None => rest = "",
            }
        } else {
            // A lone ESC or a non-CSI escape: drop the ESC and one byte.
            let mut chars = seq.chars();
            chars.next();
            rest = chars.as_str();
        }
    }
    escape_into(&mut out, rest);
    if open {
        out.push_str("</span>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn colours_become_spans_and_text_is_escaped() {
        assert_eq!(
            to_html("\u{1b}[31mERROR:\u{1b}[0m <b>&"),
            "<span class=\"a-f1\">ERROR:</span> &lt;b&gt;&amp;"
        );
        assert_eq!(
            to_html("\u{1b}[1;32mok\u{1b}[22m!"),
            "<span class=\"a-b a-f2\">ok</span><span class=\"a-f2\">!</span>"
        );
    }

    #[test]
    fn other_sequences_and_controls_are_dropped() {
        // 256-colour codes are not drawn (their arguments are skipped).
        assert_eq!(to_html("a\u{1b}[2Kb\u{7}c\u{1b}[38;5;9md"), "abcd");
        assert_eq!(to_html("x\u{1b}["), "x");
        assert_eq!(to_html("\u{1b}"), "");
    }

    #[test]
    fn script_in_a_log_stays_text() {
        let html = to_html("<script>alert(1)</script>");
        assert!(!html.contains("<script"));
        assert!(html.contains("&lt;script&gt;"));
    }
}
