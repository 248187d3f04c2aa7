//! The `/` filter of the panes.

/// A pane's `/` filter: case-insensitive substring match, without allocating per row for ASCII
/// text (keys usually are).
pub(super) struct Matcher {
    needle: String,
}

impl Matcher {
    pub(super) fn new(filter: &str) -> Matcher {
        Matcher {
            needle: filter.to_lowercase(),
        }
    }

    pub(super) fn matches(&self, texts: &[&str]) -> bool {
        self.needle.is_empty() || texts.iter().any(|t| self.contains(t))
    }

    fn contains(&self, text: &str) -> bool {
        let n = self.needle.as_bytes();
        if text.is_ascii() && self.needle.is_ascii() {
            text.as_bytes().windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
        } else {
            text.to_lowercase().contains(&self.needle)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Matcher;

    #[test]
    fn filters_match_any_case_in_any_script() {
        let m = Matcher::new("Photos/2024");
        assert!(m.matches(&["rule-a", "PHOTOS/2024/a.jpg"]));
        assert!(!m.matches(&["photos/2023/a.jpg"]));
        assert!(Matcher::new("").matches(&[]));
        assert!(Matcher::new("ÄRGER").matches(&["x/ärger.txt"]));
        assert!(Matcher::new("größe").matches(&["GRÖSSE".to_lowercase().as_str(), "Größe.bin"]));
        assert!(!Matcher::new("日本").matches(&["中国/a"]));
    }
}
