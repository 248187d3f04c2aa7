//! The keymap: which keys do which action, in which context (pane or overlay).
//!
//! The default table is `keymap.toml` beside this file, embedded in the binary; its comments
//! describe the format. The user's `keymap.toml` in the config directory is merged over it per
//! action: an action the user names gets the user's keys (and desc, if given), and every other
//! action keeps its defaults. Two actions on one key in one context, an unknown action, or a key
//! that cannot be read is refused with its file and line; nothing falls back silently.
//!
//! The help overlay and the key bar are listed from the same table ([`Keymap::help`],
//! [`Keymap::bar`]), so they cannot drift from the keys.

use crate::config::{ConfigError, ConfigErrors, Locator};
use ratatui::crossterm::event::{KeyEvent, KeyEventKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

mod key;

pub use key::Key;
use key::{parse_sequence, sequence_text};

const DEFAULT_KEYMAP: &str = include_str!("keymap.toml");

/// How the embedded table is named in messages.
const DEFAULT_FILE: &str = "keymap.toml (built in)";

macro_rules! actions {
    ($( $(#[$doc:meta])* $Variant:ident = $name:literal, )*) => {
        /// What a key asks the UI to do. The UI decides what it means in the focused pane.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Action {
            $( $(#[$doc])* $Variant, )*
        }

        impl Action {
            /// Every action, in the order the help lists them.
            pub const ALL: &'static [Action] = &[$(Action::$Variant),*];

            /// The name used in keymap files.
            pub fn name(self) -> &'static str {
                match self { $( Action::$Variant => $name, )* }
            }

            pub fn from_name(name: &str) -> Option<Action> {
                match name { $( $name => Some(Action::$Variant), )* _ => None }
            }
        }
    };
}

actions! {
    NextPane = "next_pane",
    PrevPane = "prev_pane",
    BucketsPane = "buckets_pane",
    RulesPane = "rules_pane",
    QueuePane = "queue_pane",
    LogPane = "log_pane",
    MigrationPane = "migration_pane",
    Up = "up",
    Down = "down",
    Top = "top",
    Bottom = "bottom",
    PageUp = "page_up",
    PageDown = "page_down",
    /// Enable or disable the selected rule (after a y/n confirmation).
    ToggleRule = "toggle_rule",
    /// Start a historical migration for the selected rule (after a y/n confirmation).
    Migrate = "migrate",
    PauseResume = "pause_resume",
    NewRule = "new_rule",
    Edit = "edit",
    /// Delete the selected rule (after a confirmation).
    Delete = "delete",
    /// Retry the selected failed task.
    Retry = "retry",
    /// Enable versioning on the selected bucket (after a confirmation).
    EnableVersioning = "enable_versioning",
    Filter = "filter",
    Palette = "palette",
    Help = "help",
    /// Quit; asks first while copies are in flight.
    Quit = "quit",
    /// Quit without asking.
    ForceQuit = "force_quit",
    /// Close an overlay, cancel a question or an input, clear a filter.
    Cancel = "cancel",
    Yes = "yes",
    No = "no",
    Submit = "submit",
    NextField = "next_field",
    PrevField = "prev_field",
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where keys are looked up: a pane, or an overlay that takes the keys while it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    /// Every pane; a pane's own keys come on top of these.
    Global,
    Buckets,
    Rules,
    Queue,
    Migration,
    Log,
    /// The help overlay.
    Help,
    /// A y/n question.
    Confirm,
    /// A text field: the palette, the filter, the rule editor.
    Input,
}

impl Context {
    pub const ALL: &'static [Context] = &[
        Context::Global,
        Context::Buckets,
        Context::Rules,
        Context::Queue,
        Context::Migration,
        Context::Log,
        Context::Help,
        Context::Confirm,
        Context::Input,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Context::Global => "global",
            Context::Buckets => "buckets",
            Context::Rules => "rules",
            Context::Queue => "queue",
            Context::Migration => "migration",
            Context::Log => "log",
            Context::Help => "help",
            Context::Confirm => "confirm",
            Context::Input => "input",
        }
    }

    pub fn from_name(name: &str) -> Option<Context> {
        Context::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Whether the global keys also work here.
    pub fn is_pane(self) -> bool {
        matches!(
            self,
            Context::Buckets | Context::Rules | Context::Queue | Context::Migration | Context::Log
        )
    }

    /// The contexts whose key lookups a binding declared here takes part in.
    fn reach(self) -> Vec<Context> {
        if self == Context::Global {
            Context::ALL
                .iter()
                .copied()
                .filter(|c| *c == Context::Global || c.is_pane())
                .collect()
        } else {
            vec![self]
        }
    }
}

/// Where a key was written, for messages.
#[derive(Debug, Clone)]
struct Origin {
    file: PathBuf,
    line: usize,
    column: usize,
    /// Written in the user's file (not the built-in table).
    user: bool,
}

impl Origin {
    fn error(&self, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            message,
        }
    }

    fn describe(&self) -> String {
        if self.user {
            format!("line {} of {}", self.line, self.file.display())
        } else {
            "the built-in keymap".to_string()
        }
    }
}

/// One action's entry in the table.
#[derive(Debug, Clone)]
pub struct Binding {
    pub action: Action,
    /// Each a sequence of one or more keys.
    pub keys: Vec<Vec<Key>>,
    pub desc: String,
    pub contexts: Vec<Context>,
    /// Also shown in the one-line key bar.
    pub bar: bool,
    origins: Vec<Origin>,
}

/// One line of the help overlay or one item of the key bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelpEntry {
    pub action: Action,
    /// Each key or sequence as shown to the user, e.g. `["j", "Down"]`.
    pub keys: Vec<String>,
    pub desc: String,
}

impl HelpEntry {
    /// The keys joined for one line of help: "j/Down".
    pub fn keys_text(&self) -> String {
        self.keys.join("/")
    }
}

/// What a key event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// A binding matched.
    Action(Action),
    /// The key starts a sequence ("g" of "g g"); the next key decides.
    Pending,
    /// No binding: in an input context the key belongs to the text field.
    Unbound,
    /// A key release, which bindings never match.
    Ignored,
}

#[derive(Debug, Default)]
struct Lookup {
    exact: HashMap<Vec<Key>, Action>,
    /// Every proper prefix of a sequence.
    prefixes: HashSet<Vec<Key>>,
}

/// The merged table, ready to turn key events into actions.
#[derive(Debug)]
pub struct Keymap {
    bindings: Vec<Binding>,
    lookups: HashMap<Context, Lookup>,
    pending: Vec<Key>,
    pending_context: Option<Context>,
}

/// Where the user's keymap lives: `$XDG_CONFIG_HOME/crr/keymap.toml`, else
/// `~/.config/crr/keymap.toml`.
pub fn user_keymap_path() -> PathBuf {
    let config = crate::config::default_config_path();
    config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .join("keymap.toml")
}

impl Keymap {
    /// The built-in keys alone.
    pub fn built_in() -> Result<Keymap, ConfigErrors> {
        Self::build(None)
    }

    /// The built-in keys merged with the user's file, if it exists.
    pub fn load(user_file: &Path) -> Result<Keymap, ConfigErrors> {
        match std::fs::read(user_file) {
            Ok(bytes) => {
                let text = crate::config::text_of(user_file, bytes, "keymap").map_err(|e| ConfigErrors(vec![e]))?;
                Self::build(Some((user_file, &text)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::built_in(),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: user_file.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read the keymap: {e}; check its permissions"),
            }])),
        }
    }

    /// The built-in keys merged with user keymap text, as if read from `file`.
    pub fn with_user_text(file: &Path, text: &str) -> Result<Keymap, ConfigErrors> {
        Self::build(Some((file, text)))
    }

    fn build(user: Option<(&Path, &str)>) -> Result<Keymap, ConfigErrors> {
        let mut errors = Vec::new();
        let defaults = parse_entries(Path::new(DEFAULT_FILE), DEFAULT_KEYMAP, false, &mut errors);
        let mut bindings: BTreeMap<Action, Binding> = BTreeMap::new();
        for entry in defaults {
            let (Some(keys), Some(desc), Some(contexts)) = (entry.keys, entry.desc, entry.contexts) else {
                errors.push(entry.origin.error(format!(
                    "{}: a built-in entry needs keys, desc and contexts",
                    entry.action
                )));
                continue;
            };
            let (keys, origins) = keys.into_iter().unzip();
            bindings.insert(
                entry.action,
                Binding {
                    action: entry.action,
                    keys,
                    desc,
                    contexts,
                    bar: entry.bar.unwrap_or(false),
                    origins,
                },
            );
        }
        for action in Action::ALL {
            if !bindings.contains_key(action) {
                errors.push(ConfigError {
                    file: PathBuf::from(DEFAULT_FILE),
                    line: 0,
                    column: 0,
                    message: format!("no entry for the action {action}"),
                });
            }
        }
        if let Some((file, text)) = user {
            for entry in parse_entries(file, text, true, &mut errors) {
                let Some(binding) = bindings.get_mut(&entry.action) else {
                    continue;
                };
                if let Some(keys) = entry.keys {
                    (binding.keys, binding.origins) = keys.into_iter().unzip();
                }
                if let Some(desc) = entry.desc {
                    binding.desc = desc;
                }
                if let Some(bar) = entry.bar {
                    binding.bar = bar;
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let bindings: Vec<Binding> = bindings.into_values().collect();
        let lookups = build_lookups(&bindings)?;
        Ok(Keymap {
            bindings,
            lookups,
            pending: Vec::new(),
            pending_context: None,
        })
    }

    /// Turns a key event in `context` into an action. A key that starts a sequence is held until
    /// the next one; if that one does not go on with the sequence, it is taken on its own.
    pub fn handle(&mut self, context: Context, event: KeyEvent) -> KeyOutcome {
        if event.kind == KeyEventKind::Release {
            return KeyOutcome::Ignored;
        }
        let key = Key::from_event(&event);
        if self.pending_context != Some(context) {
            self.pending.clear();
        }
        self.pending_context = None;
        let Some(lookup) = self.lookups.get(&context) else {
            self.pending.clear();
            return KeyOutcome::Unbound;
        };
        let mut seq = std::mem::take(&mut self.pending);
        seq.push(key);
        loop {
            if let Some(action) = lookup.exact.get(&seq) {
                return KeyOutcome::Action(*action);
            }
            if lookup.prefixes.contains(&seq) {
                self.pending = seq;
                self.pending_context = Some(context);
                return KeyOutcome::Pending;
            }
            if seq.len() == 1 {
                return KeyOutcome::Unbound;
            }
            seq = vec![key];
        }
    }

    /// The keys typed so far of an unfinished sequence, for the key bar: "g".
    pub fn pending(&self) -> Option<String> {
        (!self.pending.is_empty()).then(|| sequence_text(&self.pending))
    }

    /// Forgets an unfinished sequence, e.g. when focus moves.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
        self.pending_context = None;
    }

    /// Every action's binding, in [`Action::ALL`] order.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// The bindings declared for `context` (not those it inherits), as help lines; actions left
    /// without keys are left out.
    pub fn entries(&self, context: Context) -> Vec<HelpEntry> {
        self.bindings
            .iter()
            .filter(|b| b.contexts.contains(&context) && !b.keys.is_empty())
            .map(help_entry)
            .collect()
    }

    /// The help overlay: every context that has keys, with its lines.
    pub fn help(&self) -> Vec<(Context, Vec<HelpEntry>)> {
        Context::ALL
            .iter()
            .map(|c| (*c, self.entries(*c)))
            .filter(|(_, e)| !e.is_empty())
            .collect()
    }

    /// The key bar of `context`: its own entries marked `bar`, then (in a pane) the global ones.
    pub fn bar(&self, context: Context) -> Vec<HelpEntry> {
        let mut entries: Vec<HelpEntry> = self
            .bindings
            .iter()
            .filter(|b| b.bar && !b.keys.is_empty() && b.contexts.contains(&context))
            .map(help_entry)
            .collect();
        if context.is_pane() {
            entries.extend(
                self.bindings
                    .iter()
                    .filter(|b| {
                        b.bar
                            && !b.keys.is_empty()
                            && b.contexts.contains(&Context::Global)
                            && !b.contexts.contains(&context)
                    })
                    .map(help_entry),
            );
        }
        entries
    }
}

fn help_entry(b: &Binding) -> HelpEntry {
    HelpEntry {
        action: b.action,
        keys: b.keys.iter().map(|k| sequence_text(k)).collect(),
        desc: b.desc.clone(),
    }
}

/// Builds the lookup of every context and refuses two actions on one key in one context, and a
/// key that is also the start of a sequence there (the sequence could never be typed).
fn build_lookups(bindings: &[Binding]) -> Result<HashMap<Context, Lookup>, ConfigErrors> {
    struct Seen<'a> {
        action: Action,
        origin: &'a Origin,
    }
    let mut seen: HashMap<Context, HashMap<&[Key], Seen>> = HashMap::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut reported: HashSet<(PathBuf, usize, usize, Action)> = HashSet::new();
    // Report a conflict where the user can fix it: in the user's file, else at the later of
    // the two places.
    let mut conflict =
        |a: (Action, &Origin), b: (Action, &Origin), message: &dyn Fn(Action, Action, &str) -> String| {
            let (here, there) = if a.1.user != b.1.user {
                if a.1.user { (a, b) } else { (b, a) }
            } else if (a.1.line, a.1.column) >= (b.1.line, b.1.column) {
                (a, b)
            } else {
                (b, a)
            };
            if reported.insert((here.1.file.clone(), here.1.line, here.1.column, there.0)) {
                errors.push(here.1.error(message(here.0, there.0, &there.1.describe())));
            }
        };
    for b in bindings {
        for (seq, origin) in b.keys.iter().zip(&b.origins) {
            for declared in &b.contexts {
                for context in declared.reach() {
                    let map = seen.entry(context).or_default();
                    match map.get(seq.as_slice()) {
                        Some(s) if s.action != b.action => {
                            let key = sequence_text(seq);
                            conflict((b.action, origin), (s.action, s.origin), &|here, there, from| {
                                format!(
                                    "key \"{key}\" of {here} is also the key of {there} (from {from}) in the {} \
                                     context; give one of them another key",
                                    context.name()
                                )
                            });
                        }
                        Some(_) => {}
                        None => {
                            map.insert(
                                seq,
                                Seen {
                                    action: b.action,
                                    origin,
                                },
                            );
                        }
                    }
                }
            }
        }
    }
    let mut lookups = HashMap::new();
    for context in Context::ALL {
        let mut lookup = Lookup::default();
        let Some(map) = seen.get(context) else {
            lookups.insert(*context, lookup);
            continue;
        };
        for (seq, s) in map {
            lookup.exact.insert(seq.to_vec(), s.action);
            for n in 1..seq.len() {
                let prefix = &seq[..n];
                if let Some(p) = map.get(prefix) {
                    let (short, long) = (sequence_text(prefix), sequence_text(seq));
                    let (short_action, long_action) = (p.action, s.action);
                    conflict((p.action, p.origin), (s.action, s.origin), &|_, _, _| {
                        format!(
                            "key \"{short}\" of {short_action} is the start of \"{long}\" of {long_action} in the {} \
                             context, so \"{long}\" could never be typed; give one of them another key",
                            context.name()
                        )
                    });
                }
                lookup.prefixes.insert(prefix.to_vec());
            }
        }
        lookups.insert(*context, lookup);
    }
    if errors.is_empty() {
        Ok(lookups)
    } else {
        errors.sort_by_key(|e| (e.file.clone(), e.line, e.column));
        Err(ConfigErrors(errors))
    }
}

/// One action's entry as written in a file; what it leaves out is `None`.
struct Entry {
    action: Action,
    origin: Origin,
    keys: Option<Vec<(Vec<Key>, Origin)>>,
    desc: Option<String>,
    contexts: Option<Vec<Context>>,
    bar: Option<bool>,
}

fn origin(loc: &Locator, span: std::ops::Range<usize>, user: bool) -> Origin {
    let (line, column) = crate::config::line_col(loc.text, span.start);
    Origin {
        file: loc.file.to_path_buf(),
        line,
        column,
        user,
    }
}

/// Reads the entries of a keymap file; every mistake goes to `errors` with its position.
fn parse_entries(file: &Path, text: &str, user: bool, errors: &mut Vec<ConfigError>) -> Vec<Entry> {
    let loc = Locator { file, text };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            errors.push(loc.at(e.span().unwrap_or(0..0), e.message().trim().to_string()));
            return Vec::new();
        }
    };
    let mut entries = Vec::new();
    for (name, value) in doc.get_ref().iter() {
        let Some(action) = Action::from_name(name.get_ref()) else {
            let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
            errors.push(loc.at(
                name.span(),
                format!(
                    "unknown action {:?}: the actions are {}",
                    name.get_ref().as_ref(),
                    names.join(", ")
                ),
            ));
            continue;
        };
        let mut entry = Entry {
            action,
            origin: origin(&loc, name.span(), user),
            keys: None,
            desc: None,
            contexts: None,
            bar: None,
        };
        match value.get_ref() {
            // The short form: `action = ["k", ...]`.
            DeValue::Array(_) if user => entry.keys = parse_keys(action, value, &loc, user, errors),
            DeValue::Table(fields) => {
                for (field, v) in fields.iter() {
                    match field.get_ref().as_ref() {
                        "keys" => entry.keys = parse_keys(action, v, &loc, user, errors),
                        "desc" => match v.get_ref() {
                            DeValue::String(s) if !s.trim().is_empty() => entry.desc = Some(s.trim().to_string()),
                            _ => errors.push(loc.at(v.span(), format!("{action}: desc must be a non-empty string"))),
                        },
                        "bar" => match v.get_ref() {
                            DeValue::Boolean(b) => entry.bar = Some(*b),
                            _ => errors.push(loc.at(v.span(), format!("{action}: bar must be true or false"))),
                        },
                        "contexts" if !user => entry.contexts = parse_contexts(action, v, &loc, errors),
                        "contexts" => errors.push(loc.at(
                            field.span(),
                            format!(
                                "{action}: the contexts of an action are fixed by the UI; a user keymap sets keys, desc and bar"
                            ),
                        )),
                        other => errors.push(loc.at(
                            field.span(),
                            format!("{action}: unknown field {other:?}: use keys, desc or bar"),
                        )),
                    }
                }
            }
            _ => {
                errors.push(loc.at(
                    value.span(),
                    format!("{action} must be a list of keys, e.g. {action} = [\"x\"], or a table {{ keys = [...], desc = \"...\" }}"),
                ));
                continue;
            }
        }
        entries.push(entry);
    }
    entries
}

fn parse_keys(
    action: Action,
    value: &Spanned<DeValue>,
    loc: &Locator,
    user: bool,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<(Vec<Key>, Origin)>> {
    let DeValue::Array(items) = value.get_ref() else {
        errors.push(loc.at(
            value.span(),
            format!("{action}: keys must be a list of strings, e.g. [\"j\", \"down\"]"),
        ));
        return None;
    };
    let before = errors.len();
    let mut keys = Vec::new();
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(s) => match parse_sequence(s) {
                Ok(seq) => keys.push((seq, origin(loc, item.span(), user))),
                Err(why) => errors.push(loc.at(
                    item.span(),
                    format!("{action}: key {:?} is not a key: {why}", s.as_ref()),
                )),
            },
            _ => errors.push(loc.at(
                item.span(),
                format!("{action}: each key must be a string, e.g. \"ctrl-c\""),
            )),
        }
    }
    (errors.len() == before).then_some(keys)
}

fn parse_contexts(
    action: Action,
    value: &Spanned<DeValue>,
    loc: &Locator,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<Context>> {
    let names = || Context::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ");
    let DeValue::Array(items) = value.get_ref() else {
        errors.push(loc.at(
            value.span(),
            format!("{action}: contexts must be a list of {}", names()),
        ));
        return None;
    };
    let before = errors.len();
    let mut contexts = Vec::new();
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(s) => match Context::from_name(s) {
                Some(c) => contexts.push(c),
                None => errors.push(loc.at(
                    item.span(),
                    format!("{action}: unknown context {:?}: use {}", s.as_ref(), names()),
                )),
            },
            _ => errors.push(loc.at(item.span(), format!("{action}: each context must be a string"))),
        }
    }
    (errors.len() == before).then_some(contexts)
}

#[cfg(test)]
mod tests;
