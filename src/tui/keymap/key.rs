//! One key of a keymap: how a keymap file writes it ("G", "ctrl-c", "shift-tab"), how the
//! help shows it, and how a key the terminal sends compares with it.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::fmt;

/// One key, normalised so that what the terminal sends and what a keymap file says compare
/// equal: a character carries its own case (no SHIFT), Ctrl with a letter is lower case, and
/// Shift-Tab is `BackTab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub code: KeyCode,
    pub modifiers: KeyModifiers,
}

impl Key {
    fn new(code: KeyCode, modifiers: KeyModifiers) -> Key {
        let mut modifiers = modifiers & (KeyModifiers::SHIFT | KeyModifiers::CONTROL | KeyModifiers::ALT);
        let code = match code {
            KeyCode::Char(c) => {
                modifiers.remove(KeyModifiers::SHIFT);
                if modifiers.contains(KeyModifiers::CONTROL) {
                    KeyCode::Char(c.to_ascii_lowercase())
                } else {
                    KeyCode::Char(c)
                }
            }
            KeyCode::BackTab => {
                modifiers.remove(KeyModifiers::SHIFT);
                KeyCode::BackTab
            }
            KeyCode::Tab if modifiers.contains(KeyModifiers::SHIFT) => {
                modifiers.remove(KeyModifiers::SHIFT);
                KeyCode::BackTab
            }
            other => other,
        };
        Key { code, modifiers }
    }

    pub fn from_event(event: &KeyEvent) -> Key {
        Key::new(event.code, event.modifiers)
    }
}

const NAMED: &[(&str, KeyCode)] = &[
    ("space", KeyCode::Char(' ')),
    ("tab", KeyCode::Tab),
    ("backtab", KeyCode::BackTab),
    ("enter", KeyCode::Enter),
    ("esc", KeyCode::Esc),
    ("backspace", KeyCode::Backspace),
    ("delete", KeyCode::Delete),
    ("insert", KeyCode::Insert),
    ("up", KeyCode::Up),
    ("down", KeyCode::Down),
    ("left", KeyCode::Left),
    ("right", KeyCode::Right),
    ("home", KeyCode::Home),
    ("end", KeyCode::End),
    ("pageup", KeyCode::PageUp),
    ("pagedown", KeyCode::PageDown),
];

const KEY_SYNTAX: &str = "write a character (\"j\", \"G\", \"?\") or a name (space, tab, shift-tab, enter, esc, \
backspace, delete, insert, up, down, left, right, home, end, pageup, pagedown, f1 to f12), with ctrl-, alt- or \
shift- in front if needed; a sequence is keys separated by a space (\"g g\")";

pub(super) fn parse_key(text: &str) -> Result<Key, String> {
    let mut modifiers = KeyModifiers::NONE;
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let (prefix, m) = if lower.starts_with("ctrl-") {
            (5, KeyModifiers::CONTROL)
        } else if lower.starts_with("alt-") {
            (4, KeyModifiers::ALT)
        } else if lower.starts_with("shift-") {
            (6, KeyModifiers::SHIFT)
        } else {
            break;
        };
        if rest.len() == prefix {
            // "ctrl-" alone; "ctrl--" is Ctrl and the minus key.
            break;
        }
        modifiers |= m;
        rest = &rest[prefix..];
    }
    let lower = rest.to_ascii_lowercase();
    let code = if let Some((_, code)) = NAMED.iter().find(|(n, _)| *n == lower) {
        *code
    } else if let Some(n) = lower
        .strip_prefix('f')
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|n| (1..=12).contains(n))
    {
        KeyCode::F(n)
    } else {
        let mut chars = rest.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if !c.is_whitespace() && !c.is_control() => {
                if modifiers.contains(KeyModifiers::SHIFT) && !modifiers.contains(KeyModifiers::CONTROL) {
                    if !c.is_alphabetic() {
                        return Err(format!(
                            "write the character Shift makes rather than shift-{c} (e.g. \"?\", not \"shift-/\")"
                        ));
                    }
                    KeyCode::Char(c.to_uppercase().next().unwrap_or(c))
                } else {
                    KeyCode::Char(c)
                }
            }
            _ => return Err(KEY_SYNTAX.to_string()),
        }
    };
    Ok(Key::new(code, modifiers))
}

pub(super) fn parse_sequence(text: &str) -> Result<Vec<Key>, String> {
    let keys = text.split_whitespace().map(parse_key).collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(format!("no key given: {KEY_SYNTAX}"));
    }
    Ok(keys)
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (m, name) in [
            (KeyModifiers::CONTROL, "Ctrl-"),
            (KeyModifiers::ALT, "Alt-"),
            (KeyModifiers::SHIFT, "Shift-"),
        ] {
            if self.modifiers.contains(m) {
                f.write_str(name)?;
            }
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("Space"),
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::Tab => f.write_str("Tab"),
            KeyCode::BackTab => f.write_str("Shift-Tab"),
            KeyCode::Enter => f.write_str("Enter"),
            KeyCode::Esc => f.write_str("Esc"),
            KeyCode::Backspace => f.write_str("Backspace"),
            KeyCode::Delete => f.write_str("Delete"),
            KeyCode::Insert => f.write_str("Insert"),
            KeyCode::Up => f.write_str("Up"),
            KeyCode::Down => f.write_str("Down"),
            KeyCode::Left => f.write_str("Left"),
            KeyCode::Right => f.write_str("Right"),
            KeyCode::Home => f.write_str("Home"),
            KeyCode::End => f.write_str("End"),
            KeyCode::PageUp => f.write_str("PgUp"),
            KeyCode::PageDown => f.write_str("PgDn"),
            KeyCode::F(n) => write!(f, "F{n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A sequence of keys as the help shows it: "g g", "Ctrl-c".
pub(super) fn sequence_text(seq: &[Key]) -> String {
    seq.iter().map(Key::to_string).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn keys_parse_and_print() {
        let k = |s: &str| parse_sequence(s).map(|seq| sequence_text(&seq));
        assert_eq!(k("g g").unwrap(), "g g");
        assert_eq!(k("shift-tab").unwrap(), "Shift-Tab");
        assert_eq!(k("BackTab").unwrap(), "Shift-Tab");
        assert_eq!(k("ctrl-C").unwrap(), "Ctrl-c");
        assert_eq!(k("shift-g").unwrap(), "G");
        assert_eq!(k("alt-x").unwrap(), "Alt-x");
        assert_eq!(k("ctrl--").unwrap(), "Ctrl--");
        assert_eq!(k("-").unwrap(), "-");
        assert_eq!(k("space").unwrap(), "Space");
        assert_eq!(k("f5").unwrap(), "F5");
        assert_eq!(k("shift-up").unwrap(), "Shift-Up");
        assert!(k("f13").is_err());
        assert!(k("ctrl-").is_err());
        assert!(k("jj").is_err());
        // What the terminal sends compares equal to what the file says.
        let sent = Key::from_event(&press(KeyCode::Char('G'), KeyModifiers::SHIFT));
        assert_eq!(vec![sent], parse_sequence("G").unwrap());
        let sent = Key::from_event(&press(KeyCode::BackTab, KeyModifiers::SHIFT));
        assert_eq!(vec![sent], parse_sequence("shift-tab").unwrap());
    }
}
