//! The rule editor: one text field (tui-input) per key of a `[[rule]]` table, checked on every
//! change with the same loader that reads the config file, so what can be saved is exactly what
//! `crr check` would accept offline. Saving sends `Command::SaveRule`; the engine writes the file
//! (comments and layout kept) and runs preflight before enabling.

use crate::config::{self, RuleDraft};
use crate::engine::api::RuleView;
use std::path::{Path, PathBuf};
use tui_input::Input;

/// What each field edits, in form order.
pub const FIELDS: [(&str, &str); 9] = [
    ("id", "letters, digits, '.', '_', '-'"),
    ("source", "ENDPOINT/BUCKET"),
    ("destination", "ENDPOINT/BUCKET, in another region"),
    ("prefixes", "comma-separated; empty = whole bucket"),
    ("operations", "all | put"),
    ("storage_class", "empty = the source's"),
    ("historical", "true | false: also migrate what exists now"),
    ("overwrite", "if-different | always | never"),
    ("enabled", "true | false"),
];

#[derive(Debug, Clone)]
pub struct Editor {
    /// The rule being edited; None for a new one.
    pub previous_id: Option<String>,
    pub inputs: Vec<Input>,
    pub focus: usize,
    /// Where the config is, to check the draft against.
    pub path: PathBuf,
    /// What is wrong with the draft now (the loader's message), or None when it can be saved.
    pub problem: Option<String>,
    /// Buckets the config already uses, to choose from.
    pub known_buckets: Vec<String>,
    /// What the engine's preflight said of a draft (the real buckets): None until it answered.
    pub preflight: Option<(RuleDraft, Vec<String>)>,
}

impl Editor {
    /// An editor for `rule` (None: a new rule with the usual defaults).
    pub fn new(rule: Option<&RuleView>, path: &Path, known_buckets: Vec<String>) -> Editor {
        let values: Vec<String> = match rule {
            Some(r) => vec![
                r.id.clone(),
                r.source.clone(),
                r.destination.clone(),
                r.prefixes.join(", "),
                r.operations.clone(),
                r.storage_class.clone().unwrap_or_default(),
                r.historical.to_string(),
                r.overwrite.clone(),
                r.enabled.to_string(),
            ],
            None => vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "all".into(),
                String::new(),
                "false".into(),
                "if-different".into(),
                "true".into(),
            ],
        };
        let mut e = Editor {
            previous_id: rule.map(|r| r.id.clone()),
            inputs: values.into_iter().map(|v| Input::default().with_value(v)).collect(),
            focus: 0,
            path: path.to_path_buf(),
            problem: None,
            known_buckets,
            preflight: None,
        };
        e.check();
        e
    }

    fn value(&self, i: usize) -> &str {
        self.inputs.get(i).map(|f| f.value().trim()).unwrap_or_default()
    }

    /// The draft as typed.
    pub fn draft(&self) -> RuleDraft {
        RuleDraft {
            id: self.value(0).into(),
            source: self.value(1).into(),
            destination: self.value(2).into(),
            prefixes: self
                .value(3)
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            operations: self.value(4).into(),
            storage_class: Some(self.value(5).to_string()).filter(|s| !s.is_empty()),
            historical: self.value(6) == "true",
            overwrite: self.value(7).into(),
            enabled: self.value(8) != "false",
        }
    }

    /// Checks the draft as the config file would hold it: the loader's first complaint, with
    /// its line, or None.
    pub fn check(&mut self) {
        self.problem = self.problem_now();
    }

    fn problem_now(&self) -> Option<String> {
        for (i, (name, _)) in FIELDS.iter().enumerate() {
            let v = self.value(i);
            let bad = match *name {
                "historical" | "enabled" => v != "true" && v != "false",
                _ => false,
            };
            if bad {
                return Some(format!("{name} must be true or false"));
            }
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => return Some(format!("cannot read {}: {e}", self.path.display())),
        };
        let fresh = match config::with_rule_saved(&text, self.previous_id.as_deref(), &self.draft()) {
            Ok(f) => f,
            Err(e) => return Some(format!("{e:#}")),
        };
        match config::parse(&self.path, &fresh) {
            Ok(_) => None,
            Err(errors) => errors.0.first().map(|e| e.message.clone()),
        }
    }

    /// The preflight's problems for the draft as it is now: None while unknown.
    pub fn preflight_now(&self) -> Option<&[String]> {
        let draft = self.draft();
        self.preflight
            .as_ref()
            .filter(|(d, _)| *d == draft)
            .map(|(_, p)| p.as_slice())
    }

    pub fn next(&mut self) {
        self.focus = (self.focus + 1) % self.inputs.len();
    }

    pub fn previous(&mut self) {
        self.focus = (self.focus + self.inputs.len() - 1) % self.inputs.len();
    }

    pub fn focused(&mut self) -> Option<&mut Input> {
        self.inputs.get_mut(self.focus)
    }
}
