//! Themes: the styles of every UI area, read from TOML.
//!
//! A theme file has one table per UI area and one inline style table per key:
//!
//! ```toml
//! [table]
//! header = { fg = "yellow", bold = true }
//! selected = { reversed = true }
//! ```
//!
//! Style attributes: `fg` and `bg` (a colour), and the modifiers `bold`, `dim`, `italic`,
//! `underlined`, `reversed` (true or false). Colours: the 16 ANSI names `black`, `red`, `green`,
//! `yellow`, `blue`, `magenta`, `cyan`, `gray` (ANSI 37), `dark-gray` (ANSI 90, also
//! `bright-black`), `bright-red`, `bright-green`, `bright-yellow`, `bright-blue`, `bright-magenta`,
//! `bright-cyan`, `white` (ANSI 97, also `bright-white`); `#rrggbb`; and `reset`.
//!
//! The built-in themes are embedded from `themes/`; a user theme `NAME.toml` in
//! `$XDG_CONFIG_HOME/crr/themes/` wins over a built-in one of the same name. Every theme is laid
//! over the built-in default key by key: a key the theme sets replaces that key's whole style, a
//! key it leaves out keeps the default's. A theme with a mistake in it is refused with its file,
//! key, line and column; nothing falls back silently.

use crate::config::{ConfigError, ConfigErrors, Locator};
use ratatui::style::{Color, Modifier, Style};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Declares the areas and their keys once: the `Theme` struct, one struct per area, and the table
/// of names that parsing and error messages use all come from this list, so they cannot drift.
macro_rules! areas {
    ($( $(#[$adoc:meta])* $area:ident : $Area:ident { $( $(#[$kdoc:meta])* $key:ident ),* $(,)? } )*) => {
        $(
            $(#[$adoc])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
            pub struct $Area {
                $( $(#[$kdoc])* pub $key: Style, )*
            }

            impl $Area {
                const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];

                fn slot(&mut self, key: &str) -> Option<&mut Style> {
                    $( if key == stringify!($key) { return Some(&mut self.$key); } )*
                    None
                }

                fn get(&self, key: &str) -> Option<Style> {
                    $( if key == stringify!($key) { return Some(self.$key); } )*
                    None
                }
            }
        )*

        /// The style of every key of every UI area.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct Theme {
            $( $(#[$adoc])* pub $area: $Area, )*
        }

        /// Every area with its keys, in the order the theme files list them.
        pub const AREAS: &[(&str, &[&str])] = &[ $( (stringify!($area), $Area::KEYS) ),* ];

        impl Theme {
            fn slot(&mut self, area: &str, key: &str) -> Option<&mut Style> {
                $( if area == stringify!($area) { return self.$area.slot(key); } )*
                None
            }

            /// The style of `area.key`, by name, for code driven by data (e.g. a rule's state).
            pub fn style(&self, area: &str, key: &str) -> Option<Style> {
                $( if area == stringify!($area) { return self.$area.get(key); } )*
                None
            }
        }
    };
}

areas! {
    /// The top line: the program, its mode (embedded or attached) and alerts.
    title: Title {
        /// The whole bar.
        bar,
        /// The mode: "embedded".
        mode,
        /// The mode when attached to a running `crr serve`.
        attached,
        /// An alert, e.g. the service the UI was attached to stopped.
        warning,
    }
    /// The bottom line: the keys of the focused pane, generated from the keymap.
    keybar: KeyBar {
        bar,
        /// A key, e.g. "j".
        key,
        /// What it does.
        desc,
        /// The first key of a sequence awaiting the second, e.g. "g".
        pending,
    }
    /// The pane tabs.
    tabs: Tabs {
        tab,
        /// The focused pane's tab.
        active,
        separator,
    }
    /// Pane frames.
    pane: Pane {
        border,
        border_focused,
        title,
        title_focused,
    }
    /// Tables in every pane.
    table: Table {
        header,
        row,
        /// The selected row: keep it visible without colour (reversed, bold).
        selected,
        /// Rows of lesser interest: completed tasks, disabled rules' details.
        dimmed,
        /// The part of a row that matches the `/` filter.
        matched,
    }
    /// A rule's state.
    rule: RuleState {
        enabled,
        disabled,
        /// Enabled, its enable point not yet recorded.
        enabling,
        /// Preflight failed or tasks failed.
        failed,
    }
    /// The queue pane.
    queue: Queue {
        /// The done part of a copy's gauge.
        gauge_filled,
        /// The part still to copy.
        gauge_empty,
        /// Bytes per second.
        rate,
        /// A failed task and its reason.
        failed,
        /// The tail of completed tasks.
        completed,
        /// The totals line.
        totals,
    }
    /// The migration pane.
    migration: Migration {
        gauge_filled,
        gauge_empty,
        /// The percent, objects and bytes written over the gauge.
        label,
        paused,
        completed,
        failed,
    }
    /// The log pane.
    log: Log {
        /// The time of an event.
        time,
        error,
        warn,
        info,
        debug,
    }
    /// Overlays: help, confirmations, the palette, the filter and the rule editor.
    overlay: Overlay {
        border,
        title,
        text,
        /// A key in the help overlay.
        key,
        /// A text field being typed in.
        input,
        /// The y/n question of a confirmation.
        confirm,
        /// A warning in a confirmation, e.g. a migration that may overwrite objects.
        danger,
        /// The chosen completion in the palette, the focused field in the editor.
        selected,
    }
    /// The throughput sparkline.
    sparkline: Sparkline {
        bars,
        label,
    }
    /// Endpoints in the buckets pane.
    endpoint: EndpointState {
        reachable,
        unreachable,
        /// Not checked yet.
        unknown,
    }
}

/// The built-in themes, embedded in the binary.
const BUILT_IN: &[(&str, &str)] = &[
    ("default", include_str!("../../themes/default.toml")),
    ("dusk", include_str!("../../themes/dusk.toml")),
    ("high-contrast", include_str!("../../themes/high-contrast.toml")),
    ("light", include_str!("../../themes/light.toml")),
];

/// The names of the built-in themes.
pub fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(n, _)| *n).collect()
}

/// Where user themes live: `$XDG_CONFIG_HOME/crr/themes`, else `~/.config/crr/themes`.
pub fn user_theme_dir() -> PathBuf {
    let config = crate::config::default_config_path();
    config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .join("themes")
}

/// Whether `NO_COLOR` asks for no colours (set and not empty, as no-color.org says).
pub fn no_color_requested() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Why a theme could not be loaded.
#[derive(Debug)]
pub enum ThemeError {
    /// No built-in or user theme has this name.
    Unknown {
        name: String,
        available: Vec<String>,
        /// Where a user theme of this name could be written, if anywhere.
        user_dir: Option<PathBuf>,
    },
    /// The theme file cannot be read or has mistakes; each names file, key, line and column.
    Invalid(ConfigErrors),
}

impl fmt::Display for ThemeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThemeError::Unknown {
                name,
                available,
                user_dir,
            } => {
                write!(
                    f,
                    "there is no theme named {name:?}: choose one of {}",
                    available.join(", ")
                )?;
                if let Some(dir) = user_dir {
                    write!(
                        f,
                        ", or write your own as {}",
                        dir.join(format!("{name}.toml")).display()
                    )?;
                }
                Ok(())
            }
            ThemeError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ThemeError {}

/// Styles a theme file sets, each with the area and key it belongs to.
type Settings = Vec<(&'static str, &'static str, Style)>;

impl Theme {
    /// Loads the theme `name` and honours `NO_COLOR`; a user theme in `user_dir` wins over a
    /// built-in one.
    pub fn load(name: &str, user_dir: Option<&Path>) -> Result<Theme, ThemeError> {
        Self::load_with(name, user_dir, no_color_requested())
    }

    /// Like [`Theme::load`], with `NO_COLOR` given rather than read from the environment.
    pub fn load_with(name: &str, user_dir: Option<&Path>, no_color: bool) -> Result<Theme, ThemeError> {
        let mut theme = Self::built_in_default()?;
        let (file, text) = Self::find(name, user_dir)?;
        theme.apply(parse_settings(&file, &text).map_err(ThemeError::Invalid)?);
        Ok(if no_color { theme.without_colours() } else { theme })
    }

    /// The built-in default with theme `text` laid over it, as if read from `file` (no
    /// `NO_COLOR`): what [`Theme::load`] does once it has found the file.
    pub fn from_text(file: &Path, text: &str) -> Result<Theme, ConfigErrors> {
        let mut theme = Self::built_in_default().map_err(|e| match e {
            ThemeError::Invalid(e) => e,
            other => ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line: 0,
                column: 0,
                message: other.to_string(),
            }]),
        })?;
        theme.apply(parse_settings(file, text)?);
        Ok(theme)
    }

    /// This theme with every colour removed and every modifier kept, so that the selection
    /// (reversed) and emphasis (bold) stay visible under `NO_COLOR`.
    pub fn without_colours(mut self) -> Theme {
        for (area, keys) in AREAS {
            for key in *keys {
                if let Some(s) = self.slot(area, key) {
                    *s = Style {
                        fg: None,
                        bg: None,
                        ..*s
                    };
                }
            }
        }
        self
    }

    fn built_in_default() -> Result<Theme, ThemeError> {
        let mut theme = Theme::default();
        let (name, text) = BUILT_IN[0];
        let file = built_in_path(name);
        theme.apply(parse_settings(&file, text).map_err(ThemeError::Invalid)?);
        Ok(theme)
    }

    fn apply(&mut self, settings: Settings) {
        for (area, key, style) in settings {
            if let Some(slot) = self.slot(area, key) {
                *slot = style;
            }
        }
    }

    /// The file and text of theme `name`: the user's first, then the built-in one.
    fn find(name: &str, user_dir: Option<&Path>) -> Result<(PathBuf, String), ThemeError> {
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if valid && let Some(dir) = user_dir {
            let file = dir.join(format!("{name}.toml"));
            match std::fs::read(&file) {
                Ok(bytes) => {
                    return crate::config::text_of(&file, bytes, "theme")
                        .map(|text| (file, text))
                        .map_err(|e| ThemeError::Invalid(ConfigErrors(vec![e])));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ThemeError::Invalid(ConfigErrors(vec![ConfigError {
                        file,
                        line: 0,
                        column: 0,
                        message: format!("cannot read the theme: {e}; check its permissions"),
                    }])));
                }
            }
        }
        if valid && let Some((n, text)) = BUILT_IN.iter().find(|(n, _)| *n == name) {
            return Ok((built_in_path(n), text.to_string()));
        }
        Err(ThemeError::Unknown {
            name: name.to_string(),
            available: available(user_dir),
            // Only a name that could be a file there gets the hint to write one.
            user_dir: user_dir.filter(|_| valid).map(Path::to_path_buf),
        })
    }
}

/// Built-in and user theme names, sorted, each once.
pub fn available(user_dir: Option<&Path>) -> Vec<String> {
    let mut names: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
    if let Some(entries) = user_dir.and_then(|d| std::fs::read_dir(d).ok()) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn built_in_path(name: &str) -> PathBuf {
    PathBuf::from(format!("themes/{name}.toml"))
}

const ATTRIBUTES: &str = "fg, bg, bold, dim, italic, underlined, reversed";

const COLOURS: &[(&str, Color)] = &[
    ("black", Color::Black),
    ("red", Color::Red),
    ("green", Color::Green),
    ("yellow", Color::Yellow),
    ("blue", Color::Blue),
    ("magenta", Color::Magenta),
    ("cyan", Color::Cyan),
    ("gray", Color::Gray),
    ("dark-gray", Color::DarkGray),
    ("bright-black", Color::DarkGray),
    ("bright-red", Color::LightRed),
    ("bright-green", Color::LightGreen),
    ("bright-yellow", Color::LightYellow),
    ("bright-blue", Color::LightBlue),
    ("bright-magenta", Color::LightMagenta),
    ("bright-cyan", Color::LightCyan),
    ("white", Color::White),
    ("bright-white", Color::White),
    ("reset", Color::Reset),
];

/// A colour name, `#rrggbb` or `reset`.
fn parse_colour(text: &str) -> Option<Color> {
    if let Some(hex) = text.strip_prefix('#') {
        if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
        return Some(Color::Rgb(byte(0)?, byte(2)?, byte(4)?));
    }
    COLOURS.iter().find(|(n, _)| *n == text).map(|(_, c)| *c)
}

fn colour_names() -> String {
    COLOURS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Reads a theme file: every area, key and attribute is checked, and every mistake is reported
/// with its position, not just the first.
fn parse_settings(file: &Path, text: &str) -> Result<Settings, ConfigErrors> {
    let loc = Locator { file, text };
    let doc = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ConfigErrors(vec![loc.at(span, e.message().trim().to_string())])
    })?;
    let mut settings = Settings::new();
    let mut errors = Vec::new();
    let area_names = || AREAS.iter().map(|(a, _)| *a).collect::<Vec<_>>().join(", ");
    for (area_name, area_value) in doc.get_ref().iter() {
        let Some((area, keys)) = AREAS.iter().find(|(a, _)| *a == area_name.get_ref().as_ref()) else {
            errors.push(loc.at(
                area_name.span(),
                format!("unknown area [{}]: the areas are {}", area_name.get_ref(), area_names()),
            ));
            continue;
        };
        let DeValue::Table(entries) = area_value.get_ref() else {
            errors.push(loc.at(
                area_value.span(),
                format!(
                    "{area} must be a table of styles, e.g. [{area}] {} = {{ fg = \"cyan\" }}",
                    keys[0]
                ),
            ));
            continue;
        };
        for (key_name, style_value) in entries.iter() {
            let Some(key) = keys.iter().find(|k| **k == key_name.get_ref().as_ref()) else {
                errors.push(loc.at(
                    key_name.span(),
                    format!(
                        "{area}.{} is not a key of [{area}]: its keys are {}",
                        key_name.get_ref(),
                        keys.join(", ")
                    ),
                ));
                continue;
            };
            if let Some(style) = parse_style(&format!("{area}.{key}"), style_value, &loc, &mut errors) {
                settings.push((area, key, style));
            }
        }
    }
    if errors.is_empty() {
        Ok(settings)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }
}

fn parse_style(what: &str, value: &Spanned<DeValue>, loc: &Locator, errors: &mut Vec<ConfigError>) -> Option<Style> {
    let DeValue::Table(attrs) = value.get_ref() else {
        errors.push(loc.at(
            value.span(),
            format!("{what} must be a style table, e.g. {{ fg = \"black\", bg = \"cyan\", bold = true }}"),
        ));
        return None;
    };
    let before = errors.len();
    let mut style = Style::new();
    for (name, v) in attrs.iter() {
        let name_text = name.get_ref().as_ref();
        match name_text {
            "fg" | "bg" => {
                let colour = match v.get_ref() {
                    DeValue::String(s) => parse_colour(s),
                    _ => None,
                };
                match colour {
                    Some(c) if name_text == "fg" => style = style.fg(c),
                    Some(c) => style = style.bg(c),
                    None => errors.push(loc.at(
                        v.span(),
                        format!(
                            "{what}: {name_text} {} is not a colour: use one of {}, \"#rrggbb\"",
                            shown(v.get_ref()),
                            colour_names()
                        ),
                    )),
                }
            }
            "bold" | "dim" | "italic" | "underlined" | "reversed" => {
                let modifier = match name_text {
                    "bold" => Modifier::BOLD,
                    "dim" => Modifier::DIM,
                    "italic" => Modifier::ITALIC,
                    "underlined" => Modifier::UNDERLINED,
                    _ => Modifier::REVERSED,
                };
                match v.get_ref() {
                    DeValue::Boolean(true) => style = style.add_modifier(modifier),
                    DeValue::Boolean(false) => {}
                    other => errors.push(loc.at(
                        v.span(),
                        format!("{what}: {name_text} must be true or false, not {}", shown(other)),
                    )),
                }
            }
            other => errors.push(loc.at(
                name.span(),
                format!("{what}: unknown style attribute {other:?}: use {ATTRIBUTES}"),
            )),
        }
    }
    (errors.len() == before).then_some(style)
}

/// A value as the user wrote it, for messages.
fn shown(v: &DeValue) -> String {
    match v {
        DeValue::String(s) => format!("{:?}", s.as_ref()),
        DeValue::Integer(i) => i.as_str().to_string(),
        DeValue::Float(x) => x.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn user_theme(name: &str, text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
        dir
    }

    fn broken(text: &str) -> ConfigError {
        let dir = user_theme("broken", text);
        match Theme::load_with("broken", Some(dir.path()), false) {
            Err(ThemeError::Invalid(ConfigErrors(mut e))) => {
                let first = e.remove(0);
                assert!(first.file.ends_with("broken.toml"), "{first}");
                first
            }
            other => panic!("expected an invalid theme, got {other:?}"),
        }
    }

    #[test]
    fn every_built_in_theme_loads_and_sets_every_key() {
        let all: BTreeSet<(&str, &str)> = AREAS
            .iter()
            .flat_map(|(a, keys)| keys.iter().map(move |k| (*a, *k)))
            .collect();
        for (name, text) in BUILT_IN {
            Theme::load_with(name, None, false).unwrap_or_else(|e| panic!("{name}: {e}"));
            // A built-in theme that leaves a key out would show the default's colour there,
            // which may not suit its background.
            let set: BTreeSet<(&str, &str)> = parse_settings(&built_in_path(name), text)
                .unwrap()
                .into_iter()
                .map(|(a, k, _)| (a, k))
                .collect();
            let missing: Vec<_> = all.difference(&set).collect();
            assert!(missing.is_empty(), "{name} leaves out {missing:?}");
        }
    }

    #[test]
    fn default_uses_only_the_16_ansi_colours() {
        let t = Theme::load_with("default", None, false).unwrap();
        for (area, keys) in AREAS {
            for key in *keys {
                let s = t.style(area, key).unwrap();
                for c in [s.fg, s.bg].into_iter().flatten() {
                    assert!(!matches!(c, Color::Rgb(..) | Color::Indexed(_)), "{area}.{key}: {c:?}");
                }
            }
        }
    }

    #[test]
    fn a_24_bit_theme_uses_rgb() {
        let t = Theme::load_with("dusk", None, false).unwrap();
        assert!(
            matches!(t.table.header.fg, Some(Color::Rgb(..))),
            "{:?}",
            t.table.header
        );
    }

    #[test]
    fn meaningful_default_styles() {
        let t = Theme::load_with("default", None, false).unwrap();
        assert!(t.table.selected.add_modifier.contains(Modifier::REVERSED));
        assert_eq!(t.queue.failed.fg, Some(Color::Red));
        assert_eq!(t.rule.failed.fg, Some(Color::Red));
        assert_eq!(t.log.error.fg, Some(Color::Red));
        assert_eq!(t.endpoint.unreachable.fg, Some(Color::Red));
        assert_eq!(t.rule.enabled.fg, Some(Color::Green));
        assert_eq!(t.title.bar.bg, Some(Color::Cyan));
    }

    #[test]
    fn selection_is_visible_in_every_built_in_theme_without_colour() {
        for name in built_in_names() {
            let t = Theme::load_with(name, None, true).unwrap();
            let m = t.table.selected.add_modifier;
            assert!(
                m.intersects(Modifier::REVERSED | Modifier::BOLD | Modifier::UNDERLINED),
                "{name}: {m:?}"
            );
        }
    }

    #[test]
    fn no_color_drops_colours_and_keeps_modifiers() {
        let t = Theme::load_with("default", None, true).unwrap();
        for (area, keys) in AREAS {
            for key in *keys {
                let s = t.style(area, key).unwrap();
                assert_eq!((s.fg, s.bg), (None, None), "{area}.{key}");
            }
        }
        assert!(t.table.selected.add_modifier.contains(Modifier::REVERSED));
        assert!(t.table.header.add_modifier.contains(Modifier::BOLD));
        let coloured = Theme::load_with("default", None, false).unwrap();
        assert_eq!(t.title.bar.add_modifier, coloured.title.bar.add_modifier);
    }

    #[test]
    fn a_partial_user_theme_is_laid_over_the_default_key_by_key() {
        let dir = user_theme(
            "mine",
            "[table]\nselected = { fg = \"#ff8800\", underlined = true }\n[queue]\nrate = { fg = \"bright-blue\" }\n",
        );
        let t = Theme::load_with("mine", Some(dir.path()), false).unwrap();
        let d = Theme::load_with("default", None, false).unwrap();
        // A key the user sets replaces the default's whole style ...
        assert_eq!(
            t.table.selected,
            Style::new()
                .fg(Color::Rgb(0xff, 0x88, 0x00))
                .add_modifier(Modifier::UNDERLINED)
        );
        assert_eq!(t.queue.rate, Style::new().fg(Color::LightBlue));
        // ... and every other key keeps the default's, in the same area too.
        assert_eq!(t.table.header, d.table.header);
        assert_eq!(t.queue.failed, d.queue.failed);
        assert_eq!(t.title, d.title);
    }

    #[test]
    fn a_user_theme_wins_over_a_built_in_one_of_the_same_name() {
        let dir = user_theme("light", "[title]\nbar = { fg = \"red\" }\n");
        let t = Theme::load_with("light", Some(dir.path()), false).unwrap();
        assert_eq!(t.title.bar, Style::new().fg(Color::Red));
        // It is laid over the default, not over the built-in light theme.
        let d = Theme::load_with("default", None, false).unwrap();
        assert_eq!(t.table, d.table);
    }

    #[test]
    fn an_unknown_name_lists_the_themes() {
        let dir = user_theme("mine", "");
        let e = Theme::load_with("solarised", Some(dir.path()), false).unwrap_err();
        let text = e.to_string();
        for name in ["default", "light", "high-contrast", "dusk", "mine"] {
            assert!(text.contains(name), "{text}");
        }
        assert!(text.contains("\"solarised\""), "{text}");
        assert!(text.contains("solarised.toml"), "{text}");
        assert!(matches!(
            Theme::load_with("../etc/passwd", None, false),
            Err(ThemeError::Unknown { .. })
        ));
    }

    #[test]
    fn toml_syntax_error_has_file_and_line() {
        let e = broken("[title]\nbar = { fg = \"red\" \n");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn unknown_area_has_file_key_and_line() {
        let e = broken("[title]\nbar = {}\n\n[tabz]\ntab = {}\n");
        assert_eq!((e.line, e.column), (4, 2), "{e}");
        assert!(e.message.contains("[tabz]") && e.message.contains("tabs"), "{e}");
    }

    #[test]
    fn unknown_key_has_file_key_and_line() {
        let e = broken("[table]\nheader = {}\nselectd = { reversed = true }\n");
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(
            e.message.contains("table.selectd") && e.message.contains("selected"),
            "{e}"
        );
    }

    #[test]
    fn bad_colour_has_file_key_and_line() {
        let e = broken("[queue]\n\nfailed = { fg = \"purple\" }\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.message.contains("queue.failed") && e.message.contains("\"purple\""),
            "{e}"
        );
        assert!(e.message.contains("#rrggbb"), "{e}");
        let e = broken("[queue]\nfailed = { bg = \"#12345\" }\n");
        assert_eq!(e.line, 2, "{e}");
        let e = broken("[queue]\nfailed = { fg = 3 }\n");
        assert!(e.message.contains("fg 3 is not a colour"), "{e}");
    }

    #[test]
    fn bad_modifier_has_file_key_and_line() {
        let e = broken("[log]\nerror = { fg = \"red\", blink = true }\n");
        assert_eq!((e.line, e.column), (2, 23), "{e}");
        assert!(
            e.message.contains("log.error") && e.message.contains("\"blink\""),
            "{e}"
        );
        let e = broken("[log]\nerror = { bold = \"yes\" }\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("bold must be true or false"), "{e}");
    }

    #[test]
    fn a_style_that_is_not_a_table_is_refused() {
        let e = broken("[log]\nerror = \"red\"\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("log.error must be a style table"), "{e}");
        let e = broken("log = 3\n");
        assert!(e.message.contains("log must be a table"), "{e}");
    }

    #[test]
    fn every_mistake_is_reported_with_file_and_line() {
        let dir = user_theme(
            "broken",
            "[log]\nerror = { fg = \"nope\" }\n[table]\nrow = { bold = 1 }\n",
        );
        let Err(ThemeError::Invalid(e)) = Theme::load_with("broken", Some(dir.path()), false) else {
            panic!("expected an error")
        };
        let lines: Vec<usize> = e.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 4]);
        let text = e.to_string();
        assert!(
            text.contains("broken.toml:2:") && text.contains("broken.toml:4:"),
            "{text}"
        );
    }

    #[test]
    fn colours_parse() {
        assert_eq!(parse_colour("bright-white"), Some(Color::White));
        assert_eq!(parse_colour("gray"), Some(Color::Gray));
        assert_eq!(parse_colour("reset"), Some(Color::Reset));
        assert_eq!(parse_colour("#0a0B0c"), Some(Color::Rgb(10, 11, 12)));
        assert_eq!(parse_colour("#0a0b0"), None);
        assert_eq!(parse_colour("#0a0b0g"), None);
        assert_eq!(parse_colour("Red"), None);
    }
}
