//! Cutting client-supplied text for display: whatever a client sends, a
//! stored or shown value stays bounded.

/// `text`, at most `max` bytes (cut on a char boundary and marked with
/// `…` when cut).
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuts_on_a_char_boundary_and_marks_it() {
        assert_eq!(super::cut("short", 10), "short");
        assert_eq!(super::cut("abcdef", 3), "abc…");
        assert_eq!(super::cut("éé", 3), "é…");
    }
}
