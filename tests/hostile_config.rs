//! Hostile input to the files crr reads: the config (parser and rule validation), the keymap
//! and the theme. Property tests feed each loader random junk and near-valid TOML (a valid file
//! with one thing changed: a value of the wrong type, a huge number, unicode, an empty string,
//! a duplicated line or table, deep nesting, a truncated file) and check that it never panics
//! and that every refusal names the file, a line and a column inside the text. A few end-to-end
//! checks run the `crr` binary on such files: exit status 2, the message names
//! `FILE:LINE:COLUMN`, and nothing is written (no state directory, the config unchanged).
//!
//! Each property runs `CRR_FUZZ_CASES` cases (default 256); raise it for a longer run.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use crr::config::{self, ConfigError, ConfigErrors};
use crr::tui::keymap::{Action, Context, Keymap};
use crr::tui::theme::{AREAS, Theme};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, FileFailurePersistence};

fn cases() -> u32 {
    std::env::var("CRR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn prop_config() -> PropConfig {
    PropConfig {
        cases: cases(),
        // Shrunk failures are printed; nothing is written into the source tree.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..PropConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// what every refusal must look like
// ---------------------------------------------------------------------------------------------

/// Every error names `file`, a line of `text` (or the one after its end) and a column of it,
/// and its text starts with `FILE:LINE:COLUMN: ` and says something.
fn assert_located(errors: &ConfigErrors, file: &Path, text: &str) -> Result<(), TestCaseError> {
    prop_assert!(!errors.0.is_empty(), "a refusal without any error");
    let lines: Vec<&str> = text.split('\n').collect();
    for e in &errors.0 {
        prop_assert_eq!(&e.file, file, "the error names another file: {}", e);
        prop_assert!(
            e.line >= 1 && e.line <= lines.len(),
            "line {} is outside the text ({} lines): {}",
            e.line,
            lines.len(),
            e
        );
        let width = lines[e.line - 1].chars().count();
        prop_assert!(
            e.column >= 1 && e.column <= width + 1,
            "column {} is outside line {} ({} characters): {}",
            e.column,
            e.line,
            width,
            e
        );
        prop_assert!(
            !e.message.trim().is_empty(),
            "an empty message at {}:{}",
            e.line,
            e.column
        );
        let shown = e.to_string();
        let head = format!("{}:{}:{}: ", file.display(), e.line, e.column);
        prop_assert!(shown.starts_with(&head), "{shown:?} should start with {head:?}");
    }
    Ok(())
}

/// The start of a long value, for messages.
fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

fn has_error_on_line(errors: &ConfigErrors, line: usize) -> bool {
    errors.0.iter().any(|e: &ConfigError| e.line == line)
}

// ---------------------------------------------------------------------------------------------
// generators
// ---------------------------------------------------------------------------------------------

/// Characters that make TOML parsers work: punctuation of the grammar, quotes, escapes,
/// whitespace of every kind, controls, and non-ASCII text.
fn toml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::sample::select(
            "[]{}=\"'#.,:-+_\\ \t\n\r0123456789eExXoObB"
                .chars()
                .collect::<Vec<_>>()
        ),
        2 => proptest::char::range('a', 'z'),
        1 => proptest::sample::select(vec![
            '\u{0}', '\u{1}', '\u{7f}', '\u{feff}', '\u{200b}', '\u{2028}', 'é', '文', '😀', '\u{301}',
        ]),
        1 => any::<char>(),
    ]
}

fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(toml_char(), 0..200).prop_map(|c| c.into_iter().collect()),
        any::<String>(),
    ]
}

/// A string value's contents: empty, blank, unicode in several scripts and forms, controls,
/// very long.
fn odd_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("   ".to_string()),
        Just("caf\u{e9}".to_string()),
        Just("cafe\u{301}".to_string()),
        Just("文件/日本語/한국어/русский/עברית".to_string()),
        Just("tab\there\u{1}\u{7f}".to_string()),
        Just("gz/".to_string()),
        Just("/photos".to_string()),
        Just("gz/photos/extra".to_string()),
        Just("a".repeat(300)),
        Just("文".repeat(300)),
        Just("é".repeat(129)),
        "[a-zA-Z0-9._/-]{0,12}",
        any::<String>(),
    ]
}

/// A TOML string literal of `text`, escaped so that any text can be written.
fn toml_string(text: &str) -> String {
    let mut s = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if c.is_control() => s.push_str(&format!("\\u{:04X}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The kind of TOML value a generated value is, to know when a field cannot take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Str,
    Int,
    Float,
    Bool,
    Datetime,
    Array,
    Table,
}

fn nested(depth: usize, table: bool) -> String {
    if table {
        format!("{}1{}", "{ a = ".repeat(depth), " }".repeat(depth))
    } else {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }
}

/// A TOML value of any shape, with edge cases weighted in.
fn toml_value() -> impl Strategy<Value = (Shape, String)> {
    prop_oneof![
        3 => odd_text().prop_map(|t| (Shape::Str, toml_string(&t))),
        1 => Just((Shape::Str, "'''multi\nline'''".to_string())),
        2 => prop_oneof![
            Just(i64::MAX),
            Just(i64::MIN),
            Just(0i64),
            Just(-1i64),
            Just(4_294_967_297i64),
            Just(1i64 << 40),
            any::<i64>()
        ]
        .prop_map(|n| (Shape::Int, n.to_string())),
        1 => Just((Shape::Int, "0xffff_ffff".to_string())),
        1 => prop_oneof![
            Just("nan".to_string()),
            Just("inf".to_string()),
            Just("-inf".to_string()),
            Just("1e308".to_string()),
            Just("-0.0".to_string()),
            Just("0.5".to_string()),
        ]
        .prop_map(|f| (Shape::Float, f)),
        1 => any::<bool>().prop_map(|b| (Shape::Bool, b.to_string())),
        1 => Just((Shape::Datetime, "1979-05-27T07:32:00Z".to_string())),
        2 => proptest::collection::vec(odd_text(), 0..12).prop_map(|items| {
            let items: Vec<String> = items.iter().map(|t| toml_string(t)).collect();
            (Shape::Array, format!("[{}]", items.join(", ")))
        }),
        1 => (1usize..3000).prop_map(|d| (Shape::Array, nested(d, false))),
        1 => Just((Shape::Table, "{}".to_string())),
        1 => (1usize..3000).prop_map(|d| (Shape::Table, nested(d, true))),
    ]
}

/// A complete, valid config with every field set, one `key = value` per line.
const BASE: &str = r#"# a config with every field set
theme = "default"

[engine]
workers = 4
multipart_threshold = "16MiB"
part_size = "8MiB"
part_concurrency = 4
bandwidth_limit = "0"
scan_interval = "5s"
max_attempts = 10
stall_timeout = "30s"

[[endpoint]]
name = "gz"
region = "ap-guangzhou"
url = "http://127.0.0.1:9"
path_style = true
profile = "gz"

[[endpoint]]
name = "sh"
region = "ap-shanghai"
url = "http://127.0.0.1:9"

[[rule]]
id = "photos-dr"
source = "gz/photos"
destination = "sh/photos-dr"
prefixes = ["logs/", "img/"]
operations = "all"
storage_class = "STANDARD_IA"
historical = false
overwrite = "if-different"
enabled = true
bandwidth_limit = "10MiB"

[[rule]]
id = "docs-dr"
source = "gz/photos"
destination = "sh/photos-dr"
prefixes = ["docs/"]
operations = "put"
"#;

/// The TOML shapes a field of the config can take.
fn accepts(field: &str) -> &'static [Shape] {
    match field {
        "workers" | "part_concurrency" | "max_attempts" => &[Shape::Int],
        "multipart_threshold" | "part_size" | "bandwidth_limit" | "scan_interval" | "stall_timeout" => {
            &[Shape::Int, Shape::Str]
        }
        "path_style" | "historical" | "enabled" => &[Shape::Bool],
        "prefixes" => &[Shape::Array],
        _ => &[Shape::Str],
    }
}

/// The `key = value` lines of `BASE`: (line index, key).
fn field_lines() -> Vec<(usize, String)> {
    BASE.lines()
        .enumerate()
        .filter_map(|(i, l)| l.split_once(" = ").map(|(k, _)| (i, k.trim().to_string())))
        .collect()
}

/// One change to the valid config.
#[derive(Debug, Clone)]
enum Mutation {
    /// The value of the field on this line replaced.
    Value {
        line: usize,
        value: (Shape, String),
    },
    /// Junk written after `=`.
    RawValue {
        line: usize,
        junk: String,
    },
    /// The key of this line renamed.
    Key {
        line: usize,
        key: String,
    },
    DeleteLine {
        line: usize,
    },
    DuplicateLine {
        line: usize,
    },
    /// A line of junk inserted before this one.
    InsertLine {
        line: usize,
        junk: String,
    },
    /// The first rule's table repeated (a duplicate id, a second identical rule).
    DuplicateRule,
    /// The text cut after this many characters.
    Truncate {
        chars: usize,
    },
    /// One character inserted at this character position.
    InsertChar {
        at: usize,
        c: char,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let fields = field_lines();
    let n_fields = fields.len();
    let n_lines = BASE.lines().count();
    let n_chars = BASE.chars().count();
    let field_line = move || proptest::sample::select(fields.iter().map(|(i, _)| *i).collect::<Vec<_>>());
    prop_oneof![
        6 => (field_line(), toml_value()).prop_map(|(line, value)| Mutation::Value { line, value }),
        2 => (field_line(), junk()).prop_map(|(line, junk)| Mutation::RawValue { line, junk }),
        1 => (field_line(), prop_oneof![Just("wrokers".to_string()), Just("\"\"".to_string()), "[a-z_]{1,10}"])
            .prop_map(|(line, key)| Mutation::Key { line, key }),
        1 => (0..n_lines).prop_map(|line| Mutation::DeleteLine { line }),
        1 => (0..n_lines).prop_map(|line| Mutation::DuplicateLine { line }),
        1 => (0..=n_lines, junk()).prop_map(|(line, junk)| Mutation::InsertLine { line, junk }),
        1 => Just(Mutation::DuplicateRule),
        1 => (0..n_chars).prop_map(|chars| Mutation::Truncate { chars }),
        1 => (0..n_chars, toml_char()).prop_map(|(at, c)| Mutation::InsertChar { at, c }),
    ]
    .prop_filter("a field line exists", move |_| n_fields > 0)
}

fn apply(m: &Mutation) -> String {
    let mut lines: Vec<String> = BASE.lines().map(str::to_string).collect();
    match m {
        Mutation::Value { line, value } => {
            let key = lines[*line]
                .split_once(" = ")
                .map(|(k, _)| k.to_string())
                .unwrap_or_default();
            lines[*line] = format!("{key} = {}", value.1);
        }
        Mutation::RawValue { line, junk } => {
            let key = lines[*line]
                .split_once(" = ")
                .map(|(k, _)| k.to_string())
                .unwrap_or_default();
            lines[*line] = format!("{key} = {junk}");
        }
        Mutation::Key { line, key } => {
            let value = lines[*line]
                .split_once(" = ")
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            lines[*line] = format!("{key} = {value}");
        }
        Mutation::DeleteLine { line } => {
            lines.remove(*line);
        }
        Mutation::DuplicateLine { line } => {
            let l = lines[*line].clone();
            lines.insert(*line, l);
        }
        Mutation::InsertLine { line, junk } => lines.insert(*line, junk.clone()),
        Mutation::DuplicateRule => {
            let start = BASE.find("[[rule]]").unwrap_or(0);
            let end = BASE[start + 1..]
                .find("[[rule]]")
                .map(|e| e + start + 1)
                .unwrap_or(BASE.len());
            return format!("{BASE}\n{}", &BASE[start..end]);
        }
        Mutation::Truncate { chars } => return BASE.chars().take(*chars).collect(),
        Mutation::InsertChar { at, c } => {
            let mut chars: Vec<char> = BASE.chars().collect();
            chars.insert(*at, *c);
            return chars.into_iter().collect();
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------------------------
// the config
// ---------------------------------------------------------------------------------------------

#[test]
fn the_base_config_is_valid() {
    let c = config::parse(Path::new("crr.toml"), BASE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.rules.len(), 2);
    assert_eq!(c.endpoints.len(), 2);
}

/// Mutations that must be refused, each at the line it changed.
#[test]
fn known_bad_values_are_refused_at_their_line() {
    let file = Path::new("crr.toml");
    let line_of = |key: &str| BASE.lines().position(|l| l.starts_with(key)).unwrap();
    let cases: Vec<(usize, String)> = vec![
        // Huge numbers that would spawn billions of workers, or wrap to 1 in a u32.
        (line_of("workers"), "9223372036854775807".into()),
        (line_of("part_concurrency"), "1000000000".into()),
        (line_of("max_attempts"), "4294967297".into()),
        (line_of("scan_interval"), "\"100000000years\"".into()),
        (line_of("stall_timeout"), "\"500000000y\"".into()),
        (line_of("scan_interval"), "18446744073".into()),
        (line_of("bandwidth_limit"), "\"1e400\"".into()),
        (line_of("part_size"), "\"99999999999999999999TiB\"".into()),
        // Ids: too long in a script of three-byte characters, empty, unicode, controls.
        (line_of("id"), toml_string(&"文".repeat(100))),
        (line_of("id"), toml_string(&"é".repeat(200))),
        (line_of("id"), toml_string("")),
        (line_of("id"), toml_string("caf\u{e9}")),
        (line_of("id"), toml_string("a\u{1}b")),
        (line_of("source"), toml_string("")),
        (line_of("destination"), toml_string("sh/")),
        (line_of("prefixes"), "[\"\"]".into()),
        (line_of("name"), toml_string("")),
        (line_of("region"), toml_string(" ")),
        (line_of("url"), toml_string("ftp://x")),
        (line_of("operations"), toml_string("ALL")),
        (line_of("storage_class"), toml_string("standard")),
        (line_of("overwrite"), toml_string("")),
        (line_of("prefixes"), nested(2000, false)),
        (line_of("id"), nested(2000, true)),
    ];
    for (line, value) in cases {
        let mut lines: Vec<String> = BASE.lines().map(str::to_string).collect();
        let key = lines[line].split_once(" = ").unwrap().0.to_string();
        lines[line] = format!("{key} = {value}");
        let text = lines.join("\n") + "\n";
        match config::parse(file, &text) {
            Ok(c) => panic!("{key} = {} was accepted (engine {:?})", short(&value), c.engine),
            Err(e) => {
                if let Err(why) = assert_located(&e, file, &text) {
                    panic!("{key} = {}: {why}", short(&value));
                }
                assert!(
                    has_error_on_line(&e, line + 1),
                    "{key} = {}: no error on line {}:\n{e}",
                    short(&value),
                    line + 1
                );
            }
        }
    }
}

/// A file that is not UTF-8 is refused with the position of the first bad byte.
#[test]
fn a_file_that_is_not_utf8_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crr.toml");
    let mut bytes = BASE.as_bytes().to_vec();
    let at = BASE.find("photos-dr").unwrap();
    bytes.splice(at..at, [0xff, 0xfe]);
    std::fs::write(&path, &bytes).unwrap();
    let e = config::load(&path).unwrap_err();
    let line = BASE[..at].matches('\n').count() + 1;
    let column = at - BASE[..at].rfind('\n').map(|n| n + 1).unwrap_or(0) + 1;
    assert_eq!((e.0[0].line, e.0[0].column), (line, column), "{e}");
    assert!(e.to_string().contains("UTF-8"), "{e}");
}

#[test]
fn config_junk_never_panics_and_is_located() {
    let file = Path::new("junk/crr.toml");
    proptest!(prop_config(), |(text in junk())| {
        if let Err(e) = config::parse(file, &text) {
            assert_located(&e, file, &text)?;
        }
    });
}

#[test]
fn near_valid_configs_never_panic_and_are_located() {
    let file = Path::new("near/crr.toml");
    let fields = field_lines();
    proptest!(prop_config(), |(m in mutation())| {
        let text = apply(&m);
        match config::parse(file, &text) {
            Err(e) => {
                assert_located(&e, file, &text)?;
                // A value of a shape the field cannot take is refused on its own line.
                if let Mutation::Value { line, value } = &m {
                    let key = &fields.iter().find(|(i, _)| i == line).unwrap().1;
                    if !accepts(key).contains(&value.0) {
                        prop_assert!(has_error_on_line(&e, line + 1), "no error on line {}:\n{}", line + 1, e);
                    }
                }
            }
            Ok(c) => {
                if let Mutation::Value { line, value } = &m {
                    let key = &fields.iter().find(|(i, _)| i == line).unwrap().1;
                    prop_assert!(accepts(key).contains(&value.0), "{} = {} was accepted", key, value.1);
                }
                // What is accepted is within the bounds the engine can run with.
                prop_assert!((1..=config::MAX_WORKERS).contains(&c.engine.workers), "{:?}", c.engine);
                prop_assert!((1..=config::MAX_PART_CONCURRENCY).contains(&c.engine.part_concurrency), "{:?}", c.engine);
                prop_assert!(c.engine.scan_interval <= config::MAX_INTERVAL, "{:?}", c.engine);
                prop_assert!(c.engine.stall_timeout <= config::MAX_INTERVAL, "{:?}", c.engine);
                for r in &c.rules {
                    prop_assert!(!r.id.is_empty() && r.id.len() <= 255);
                    prop_assert!(r.prefixes.len() <= config::MAX_PREFIXES);
                }
            }
        }
    });
}

/// Rules built from parts of every kind: ids, references and prefixes from odd text, so that
/// validation (ids, references, topology, overlaps) sees the unexpected.
#[test]
fn generated_rules_never_panic_and_are_located() {
    let file = Path::new("rules/crr.toml");
    let part = || {
        prop_oneof![
            Just("gz/photos".to_string()),
            Just("sh/photos-dr".to_string()),
            Just("sh/other".to_string()),
            Just("gz/".to_string()),
            Just("zz/unknown".to_string()),
            odd_text(),
        ]
    };
    let rule = (
        prop_oneof![Just("r".to_string()), odd_text()],
        part(),
        part(),
        proptest::option::of(proptest::collection::vec(
            prop_oneof![Just("logs/".to_string()), Just("logs/2024/".to_string()), odd_text()],
            0..13,
        )),
    );
    proptest!(prop_config(), |(rules in proptest::collection::vec(rule, 0..5))| {
        let mut text = BASE[..BASE.find("[[rule]]").unwrap()].to_string();
        for (id, src, dst, prefixes) in &rules {
            text.push_str(&format!("[[rule]]\nid = {}\nsource = {}\ndestination = {}\n", toml_string(id), toml_string(src), toml_string(dst)));
            if let Some(p) = prefixes {
                let p: Vec<String> = p.iter().map(|s| toml_string(s)).collect();
                text.push_str(&format!("prefixes = [{}]\n", p.join(", ")));
            }
            text.push('\n');
        }
        if let Err(e) = config::parse(file, &text) {
            assert_located(&e, file, &text)?;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// the keymap
// ---------------------------------------------------------------------------------------------

fn key_text() -> impl Strategy<Value = String> {
    let base = prop_oneof![
        proptest::sample::select(vec![
            "j",
            "G",
            "?",
            "/",
            "-",
            " ",
            "",
            "space",
            "tab",
            "shift-tab",
            "enter",
            "esc",
            "f1",
            "f12",
            "f13",
            "f0",
            "pageup",
            "up",
            "g g",
            "g",
            "ctrl-",
            "ctrl--",
            "shift-/",
            "shift-ß",
            "ctrl-é",
            "1",
            "q",
            "ctrl-c",
            "文",
            "😀",
            "\u{7f}",
            "\t",
            "a b c d e",
        ])
        .prop_map(str::to_string),
        odd_text(),
    ];
    (
        proptest::sample::select(vec!["", "ctrl-", "alt-", "shift-", "CTRL-ALT-", "shift-shift-"]),
        base,
    )
        .prop_map(|(m, k)| format!("{m}{k}"))
}

fn keymap_entry() -> impl Strategy<Value = String> {
    let action = prop_oneof![
        4 => proptest::sample::select(Action::ALL.iter().map(|a| a.name().to_string()).collect::<Vec<_>>()),
        1 => "[a-z_]{1,12}",
    ];
    let keys = || {
        proptest::collection::vec(key_text(), 0..4)
            .prop_map(|k| format!("[{}]", k.iter().map(|s| toml_string(s)).collect::<Vec<_>>().join(", ")))
    };
    let field = prop_oneof![
        keys().prop_map(|k| format!("keys = {k}")),
        odd_text().prop_map(|d| format!("desc = {}", toml_string(&d))),
        any::<bool>().prop_map(|b| format!("bar = {b}")),
        Just("contexts = [\"global\"]".to_string()),
        toml_value().prop_map(|(_, v)| format!("keys = {v}")),
        toml_value().prop_map(|(_, v)| format!("desc = {v}")),
        toml_value().prop_map(|(_, v)| format!("bar = {v}")),
        toml_value().prop_map(|(_, v)| format!("unknown = {v}")),
    ];
    let value = prop_oneof![
        3 => keys(),
        2 => proptest::collection::vec(field, 0..4).prop_map(|f| format!("{{ {} }}", f.join(", "))),
        1 => toml_value().prop_map(|(_, v)| v),
    ];
    (action, value).prop_map(|(a, v)| format!("{a} = {v}"))
}

fn check_keymap(file: &Path, text: &str) -> Result<(), TestCaseError> {
    match Keymap::with_user_text(file, text) {
        // Every mistake is one the user made, so every message points into the user's file.
        Err(e) => assert_located(&e, file, text),
        Ok(k) => {
            for c in Context::ALL {
                let _ = k.bar(*c);
            }
            prop_assert!(!k.help().is_empty());
            Ok(())
        }
    }
}

#[test]
fn keymap_junk_never_panics_and_is_located() {
    let file = Path::new("junk/keymap.toml");
    proptest!(prop_config(), |(text in junk())| {
        check_keymap(file, &text)?;
    });
}

#[test]
fn generated_keymaps_never_panic_and_are_located() {
    let file = Path::new("gen/keymap.toml");
    proptest!(prop_config(), |(entries in proptest::collection::vec(keymap_entry(), 0..8))| {
        check_keymap(file, &(entries.join("\n") + "\n"))?;
    });
}

// ---------------------------------------------------------------------------------------------
// the theme
// ---------------------------------------------------------------------------------------------

fn theme_text() -> impl Strategy<Value = String> {
    let areas: Vec<String> = AREAS.iter().map(|(a, _)| a.to_string()).collect();
    let keys: Vec<String> = AREAS
        .iter()
        .flat_map(|(_, k)| k.iter().map(|k| k.to_string()))
        .collect();
    let colour = prop_oneof![
        proptest::sample::select(vec![
            "red",
            "bright-white",
            "dark-gray",
            "reset",
            "#00ff00",
            "#00FF0",
            "#gggggg",
            "#ééé",
            "#0000000",
            "",
            "Red",
            "#",
        ])
        .prop_map(toml_string),
        odd_text().prop_map(|t| toml_string(&t)),
        toml_value().prop_map(|(_, v)| v),
    ];
    let attr = prop_oneof![
        (proptest::sample::select(vec!["fg", "bg"]), colour).prop_map(|(n, c)| format!("{n} = {c}")),
        (
            proptest::sample::select(vec!["bold", "dim", "italic", "underlined", "reversed", "blink"]),
            prop_oneof![
                any::<bool>().prop_map(|b| b.to_string()),
                toml_value().prop_map(|(_, v)| v)
            ]
        )
            .prop_map(|(n, v)| format!("{n} = {v}")),
    ];
    let style = prop_oneof![
        4 => proptest::collection::vec(attr, 0..4).prop_map(|a| format!("{{ {} }}", a.join(", "))),
        1 => toml_value().prop_map(|(_, v)| v),
    ];
    let key = prop_oneof![4 => proptest::sample::select(keys), 1 => "[a-z_]{1,10}"];
    let line = (key, style).prop_map(|(k, s)| format!("{k} = {s}"));
    let table = (
        prop_oneof![4 => proptest::sample::select(areas), 1 => "[a-z_.]{1,10}"],
        proptest::collection::vec(line, 0..5),
    )
        .prop_map(|(a, lines)| format!("[{a}]\n{}\n", lines.join("\n")));
    proptest::collection::vec(table, 0..5).prop_map(|t| t.join("\n"))
}

#[test]
fn theme_junk_never_panics_and_is_located() {
    let file = Path::new("junk/theme.toml");
    proptest!(prop_config(), |(text in junk())| {
        if let Err(e) = Theme::from_text(file, &text) {
            assert_located(&e, file, &text)?;
        }
    });
}

#[test]
fn generated_themes_never_panic_and_are_located() {
    let file = Path::new("gen/theme.toml");
    proptest!(prop_config(), |(text in theme_text())| {
        if let Err(e) = Theme::from_text(file, &text) {
            assert_located(&e, file, &text)?;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// end to end: the binary refuses, exits 2, names FILE:LINE:COLUMN and writes nothing
// ---------------------------------------------------------------------------------------------

/// `FILE:LINE:COLUMN` somewhere in `stderr` for this file, with a line and column from 1 up.
fn named_position(stderr: &str, file: &Path) -> Option<(usize, usize)> {
    let head = format!("{}:", file.display());
    let at = stderr.find(&head)? + head.len();
    let mut parts = stderr[at..].splitn(3, ':');
    let line = parts.next()?.parse().ok()?;
    let column = parts.next()?.parse().ok()?;
    (line >= 1 && column >= 1).then_some((line, column))
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap_or(&p).to_path_buf());
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_binary_refuses_bad_configs_with_status_2_and_writes_nothing() {
    let line_of = |key: &str| BASE.lines().position(|l| l.starts_with(key)).unwrap();
    let mut texts: Vec<(String, Vec<u8>, usize)> = Vec::new();
    for (key, value) in [
        ("workers", "9223372036854775807".to_string()),
        ("enabled", "\"yes\"".to_string()),
        ("id", toml_string(&"文".repeat(100))),
        ("prefixes", nested(2000, false)),
        ("stall_timeout", "\"500000000y\"".to_string()),
    ] {
        let line = line_of(key);
        let text: String = BASE
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == line {
                    format!("{key} = {value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        texts.push((format!("{key} = {}", short(&value)), text.into_bytes(), line + 1));
    }
    let mut not_utf8 = BASE.as_bytes().to_vec();
    let at = BASE.find("ap-shanghai").unwrap();
    not_utf8.insert(at, 0xc3);
    texts.push((
        "a byte that is not UTF-8".into(),
        not_utf8,
        line_of("region = \"ap-shanghai\"") + 1,
    ));

    let mut runs = 0;
    for (what, bytes, line) in &texts {
        for args in [
            &["check"][..],
            &["run", "--once"],
            &["rule", "disable", "photos-dr"],
            &["status"],
        ] {
            let dir = tempfile::Builder::new().prefix("crr-hostile-").tempdir().unwrap();
            let path = dir.path().join("crr.toml");
            std::fs::write(&path, bytes).unwrap();
            let state = dir.path().join("state");
            let before = files_under(dir.path());
            let mut all = vec!["--config", path.to_str().unwrap(), "--state", state.to_str().unwrap()];
            all.extend_from_slice(args);
            let out = crr_raw(dir.path(), &all, &[]).await;
            runs += 1;
            assert_eq!(
                out.code,
                2,
                "{what}: `crr {}` should exit 2\n{}",
                args.join(" "),
                out.describe()
            );
            let pos = named_position(&out.stderr, &path);
            assert_eq!(
                pos.map(|p| p.0),
                Some(*line),
                "{what}: `crr {}` should name {}:{line}:COLUMN\n{}",
                args.join(" "),
                path.display(),
                out.describe()
            );
            assert!(!out.stderr.contains("panicked"), "{what}: {}", out.describe());
            assert_eq!(std::fs::read(&path).unwrap(), *bytes, "{what}: the config was changed");
            assert_eq!(
                files_under(dir.path()),
                before,
                "{what}: `crr {}` wrote files",
                args.join(" ")
            );
        }
    }
    println!(
        "{} bad configs, {runs} runs of the binary: all refused with status 2",
        texts.len()
    );
}

/// A valid config whose endpoints are never contacted (a closed loopback port).
fn offline_config() -> String {
    BASE.to_string()
}

/// What is wrong, the file under the config directory, its bytes, the line to be named, and
/// the extra arguments that make crr read it.
type FileCase = (&'static str, &'static str, Vec<u8>, usize, Vec<&'static str>);

#[tokio::test]
async fn the_binary_refuses_a_bad_keymap_or_theme_with_status_2() {
    let cases: Vec<FileCase> = vec![
        (
            "a keymap key of the wrong type",
            "keymap.toml",
            b"quit = [\"q\"]\nhelp = [42]\n".to_vec(),
            2,
            vec![],
        ),
        (
            "a keymap conflict",
            "keymap.toml",
            b"# mine\n\nretry = [\"q\"]\n".to_vec(),
            3,
            vec![],
        ),
        (
            "a keymap deeply nested",
            "keymap.toml",
            format!("\nquit = {}\n", nested(3000, false)).into_bytes(),
            2,
            vec![],
        ),
        (
            "a keymap that is not UTF-8",
            "keymap.toml",
            b"quit = [\"\xff\"]\n".to_vec(),
            1,
            vec![],
        ),
        (
            "a theme colour that is not a colour",
            "themes/mine.toml",
            b"[table]\nheader = { fg = \"#12345\" }\n".to_vec(),
            2,
            vec!["--theme", "mine"],
        ),
        (
            "a theme deeply nested",
            "themes/mine.toml",
            format!("[table]\n\nheader = {}\n", nested(3000, true)).into_bytes(),
            3,
            vec!["--theme", "mine"],
        ),
        (
            "a theme that is not UTF-8",
            "themes/mine.toml",
            b"[table]\nheader = { fg = \"\xc3\" }\n".to_vec(),
            2,
            vec!["--theme", "mine"],
        ),
    ];
    for (what, name, bytes, line, extra) in &cases {
        let dir = tempfile::Builder::new().prefix("crr-hostile-").tempdir().unwrap();
        let config = dir.path().join("crr.toml");
        std::fs::write(&config, offline_config()).unwrap();
        // The harness points XDG_CONFIG_HOME here.
        let file = dir.path().join("xdg-config").join("crr").join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, bytes).unwrap();
        let state = dir.path().join("state");
        let before = files_under(dir.path());
        let mut args = vec!["--config", config.to_str().unwrap(), "--state", state.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let out = crr_raw(dir.path(), &args, &[]).await;
        assert_eq!(out.code, 2, "{what}: `crr` should exit 2\n{}", out.describe());
        assert_eq!(
            named_position(&out.stderr, &file).map(|p| p.0),
            Some(*line),
            "{what}: should name {}:{line}:COLUMN\n{}",
            file.display(),
            out.describe()
        );
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.describe());
        assert_eq!(files_under(dir.path()), before, "{what}: `crr` wrote files");
    }
    println!("{} bad keymaps and themes refused with status 2", cases.len());
}
