//! The UI's state and its logic, with no terminal: actions (from the keymap), engine events,
//! snapshots and command replies go in; state changes and `Effect`s (commands to send, quit)
//! come out. Everything here is testable without a terminal or an engine.

use super::editor::Editor;
use super::filter::Matcher;
use super::keymap::{Action, Context};
use crate::engine::api::RuleView;
use crate::engine::{Command, Event, MigrateAction, Reply, RetryTarget, Snapshot};
use std::collections::VecDeque;

mod operations;

/// How many log lines and completed copies are kept.
const LOG_LINES: usize = 1000;
const COMPLETED: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The engine runs in this process.
    Embedded,
    /// Attached to `crr serve` (its pid) through the state directory's socket.
    Attached { pid: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Buckets,
    Rules,
    Queue,
    Migration,
    Log,
}

impl Pane {
    /// In the order of their number keys (1 to 5).
    pub const ALL: [Pane; 5] = [Pane::Buckets, Pane::Rules, Pane::Queue, Pane::Log, Pane::Migration];

    pub fn title(self) -> &'static str {
        match self {
            Pane::Buckets => "Buckets",
            Pane::Rules => "Rules",
            Pane::Queue => "Queue",
            Pane::Migration => "Migration",
            Pane::Log => "Log",
        }
    }

    fn index(self) -> usize {
        Pane::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    fn context(self) -> Context {
        match self {
            Pane::Buckets => Context::Buckets,
            Pane::Rules => Context::Rules,
            Pane::Queue => Context::Queue,
            Pane::Migration => Context::Migration,
            Pane::Log => Context::Log,
        }
    }
}

/// What the app asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send(Command),
    Quit,
    /// Attach to the service again, or start the engine here if none runs.
    Reconnect,
    /// Draw with another theme from now on.
    SetTheme(String),
}

#[derive(Debug, Clone)]
pub enum Overlay {
    Help,
    /// The rule editor (n: a new rule, e/Enter: the selected one).
    Editor(Box<Editor>),
    /// `/` filters the focused pane as you type; `:` runs a command, Tab completing it.
    Prompt {
        palette: bool,
        input: tui_input::Input,
    },
    /// A y/n question; `yes` runs on y.
    Confirm {
        title: String,
        lines: Vec<String>,
        /// Said in the danger style, e.g. objects that may be overwritten.
        warning: Option<String>,
        yes: Vec<Effect>,
    },
}

/// One line of the log pane.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Unix milliseconds.
    pub at: i64,
    pub level: Level,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
}

/// A row of the buckets pane: an endpoint, or one of its buckets (indexes into the snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketRow {
    Endpoint(usize),
    Bucket(usize),
}

/// A row of the queue pane.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueRow {
    Running(usize),
    Failed(usize),
    Completed(usize),
}

/// A completed copy, from a `TaskDone` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub rule: String,
    pub key: String,
    pub size: u64,
    pub at: i64,
}

pub struct App {
    pub mode: Mode,
    pub pane: Pane,
    pub snapshot: Snapshot,
    pub log: VecDeque<LogLine>,
    pub completed: VecDeque<Completed>,
    /// The selected row of each pane.
    pub selected: [usize; 5],
    pub overlay: Option<Overlay>,
    /// The answer to the last command, shown in the title bar.
    pub status: Option<(Level, String)>,
    /// The engine went away (the attached service stopped).
    pub disconnected: bool,
    /// The time the driver last told (unix ms): injected, so that views and tests agree.
    pub now: i64,
    /// The config file, for the rule editor to check drafts against.
    pub config_path: Option<std::path::PathBuf>,
    /// Each pane's `/` filter.
    pub filters: [String; 5],
    /// Theme names the palette offers.
    pub themes: Vec<String>,
    /// How far the help overlay is scrolled.
    pub help_scroll: usize,
}

impl App {
    pub fn new(mode: Mode, now: i64) -> App {
        App {
            mode,
            pane: Pane::Rules,
            snapshot: Snapshot::default(),
            log: VecDeque::new(),
            completed: VecDeque::new(),
            selected: [0; 5],
            overlay: None,
            status: None,
            disconnected: false,
            now,
            config_path: None,
            filters: Default::default(),
            themes: Vec::new(),
            help_scroll: 0,
        }
    }

    /// Where keys are looked up now.
    pub fn context(&self) -> Context {
        match &self.overlay {
            Some(Overlay::Help) => Context::Help,
            Some(Overlay::Confirm { .. }) => Context::Confirm,
            Some(Overlay::Editor(_)) | Some(Overlay::Prompt { .. }) => Context::Input,
            None => self.pane.context(),
        }
    }

    pub fn selected(&self) -> usize {
        self.selected[self.pane.index()]
    }

    /// How many rows the focused pane has.
    pub fn rows(&self) -> usize {
        match self.pane {
            Pane::Buckets => self.bucket_rows().len(),
            Pane::Rules => self.rule_rows().len(),
            Pane::Queue => self.queue_rows().len(),
            Pane::Migration => self.migrations().len(),
            Pane::Log => self.log_rows().len(),
        }
    }

    /// The `/` filter of a pane ("" shows everything).
    pub fn filter(&self, pane: Pane) -> &str {
        &self.filters[pane.index()]
    }

    fn shows(&self, pane: Pane, texts: &[&str]) -> bool {
        self.matcher(pane).matches(texts)
    }

    /// The pane's filter, ready to test many rows.
    fn matcher(&self, pane: Pane) -> Matcher {
        Matcher::new(self.filter(pane))
    }

    /// The buckets pane's rows: each endpoint, then the buckets the rules use on it.
    pub fn bucket_rows(&self) -> Vec<BucketRow> {
        let s = &self.snapshot;
        let mut rows = Vec::new();
        for (i, e) in s.endpoints.iter().enumerate() {
            let buckets: Vec<usize> = (0..s.buckets.len())
                .filter(|j| s.buckets[*j].endpoint == e.name)
                .filter(|j| {
                    let b = &s.buckets[*j];
                    self.shows(Pane::Buckets, &[&e.name, &e.region, &b.bucket])
                })
                .collect();
            if self.shows(Pane::Buckets, &[&e.name, &e.region]) || !buckets.is_empty() {
                rows.push(BucketRow::Endpoint(i));
                rows.extend(buckets.into_iter().map(BucketRow::Bucket));
            }
        }
        rows
    }

    /// The rules shown, as indexes into the snapshot's.
    pub fn rule_rows(&self) -> Vec<usize> {
        let s = &self.snapshot;
        (0..s.rules.len())
            .filter(|i| {
                let r = &s.rules[*i];
                self.shows(Pane::Rules, &[&r.id, &r.source, &r.destination, &r.state])
            })
            .collect()
    }

    /// The log lines shown, as indexes.
    pub fn log_rows(&self) -> Vec<usize> {
        (0..self.log.len())
            .filter(|i| self.shows(Pane::Log, &[&self.log[*i].text]))
            .collect()
    }

    /// Running copies, then failures (newest first), then completed copies (newest first).
    pub fn queue_rows(&self) -> Vec<QueueRow> {
        let s = &self.snapshot;
        let m = self.matcher(Pane::Queue);
        let mut rows: Vec<QueueRow> =
            Vec::with_capacity(s.running.len() + s.recent_failures.len() + self.completed.len());
        rows.extend(
            (0..s.running.len())
                .filter(|i| m.matches(&[&s.running[*i].key, &s.running[*i].rule_id]))
                .map(QueueRow::Running),
        );
        rows.extend(
            (0..s.recent_failures.len())
                .rev()
                .filter(|i| {
                    let f = &s.recent_failures[*i];
                    m.matches(&[&f.key, &f.rule_id, &f.reason])
                })
                .map(QueueRow::Failed),
        );
        rows.extend(
            (0..self.completed.len())
                .rev()
                .filter(|i| m.matches(&[&self.completed[*i].key, &self.completed[*i].rule]))
                .map(QueueRow::Completed),
        );
        rows
    }

    /// The rules that have a migration (and pass the filter).
    pub fn migrations(&self) -> Vec<&RuleView> {
        self.snapshot
            .rules
            .iter()
            .filter(|r| r.migration.is_some() && self.shows(Pane::Migration, &[&r.id]))
            .collect()
    }

    fn selected_rule(&self) -> Option<&RuleView> {
        match self.pane {
            Pane::Rules => self
                .rule_rows()
                .get(self.selected())
                .and_then(|i| self.snapshot.rules.get(*i)),
            Pane::Migration => self.migrations().get(self.selected()).copied(),
            _ => None,
        }
    }

    fn select(&mut self, row: usize) {
        let last = self.rows().saturating_sub(1);
        self.selected[self.pane.index()] = row.min(last);
    }

    pub fn on_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = snapshot;
        // Keep every selection inside its pane.
        let pane = self.pane;
        for p in Pane::ALL {
            self.pane = p;
            let row = self.selected();
            self.select(row);
        }
        self.pane = pane;
    }

    pub fn on_event(&mut self, event: Event) {
        let level = match &event {
            Event::TaskFailed { .. } | Event::RuleRefused { .. } | Event::EndpointUnreachable { .. } => Level::Error,
            Event::ScanFailed { .. } | Event::RuleHalted { .. } => Level::Warn,
            _ => Level::Info,
        };
        if let (Event::PreflightChecked { draft, problems }, Some(Overlay::Editor(e))) = (&event, &mut self.overlay) {
            e.preflight = Some((draft.clone(), problems.clone()));
        }
        if let Event::TaskDone { rule, key, size, .. } = &event {
            if self.completed.len() >= COMPLETED {
                self.completed.pop_front();
            }
            self.completed.push_back(Completed {
                rule: rule.clone(),
                key: key.clone(),
                size: *size,
                at: self.now,
            });
        }
        // Re-enabling replicates only new writes: offer the catch-up migration right away.
        if let Event::RuleEnabled { rule, message, .. } = &event
            && message.contains("crr migrate start")
            && self.overlay.is_none()
        {
            self.overlay = Some(Overlay::Confirm {
                title: format!("Catch up rule {rule}?"),
                lines: vec![
                    "Writes made while the rule was disabled are not replicated.".into(),
                    "A migration copies what is missing or different on the destination now.".into(),
                ],
                warning: None,
                yes: vec![Effect::Send(Command::Migrate {
                    id: rule.clone(),
                    action: MigrateAction::Start,
                })],
            });
        }
        self.push_log(level, event.describe());
    }

    pub fn on_reply(&mut self, reply: Reply) {
        let (level, text) = match reply {
            Reply::Done { message } => (Level::Info, message),
            Reply::Refused { reason, fix } if fix.is_empty() => (Level::Error, reason),
            Reply::Refused { reason, fix } => (Level::Error, format!("{reason}; {fix}")),
        };
        let first = text.lines().next().unwrap_or_default().to_string();
        // What a command did also comes as an event; a refusal comes only here.
        if level == Level::Error {
            self.push_log(level, text);
        }
        self.status = Some((level, first));
    }

    /// The engine behind the UI is gone.
    pub fn on_disconnected(&mut self) {
        if !self.disconnected {
            self.disconnected = true;
            self.push_log(Level::Error, "the service stopped: nothing is being replicated".into());
            self.overlay = Some(Overlay::Confirm {
                title: "The service stopped".into(),
                lines: vec![
                    "Nothing is being replicated now.".into(),
                    "y: attach to it again if it restarted, or else run the engine in this UI.".into(),
                    "n: stay (q quits).".into(),
                ],
                warning: None,
                yes: vec![Effect::Reconnect],
            });
        }
    }

    fn push_log(&mut self, level: Level, text: String) {
        if self.log.len() >= LOG_LINES {
            self.log.pop_front();
        }
        for line in text.lines() {
            self.log.push_back(LogLine {
                at: self.now,
                level,
                text: line.to_string(),
            });
        }
    }

    /// Applies one action; returns what the driver must do.
    pub fn on_action(&mut self, action: Action) -> Vec<Effect> {
        match &self.overlay {
            Some(Overlay::Help) => {
                match action {
                    Action::Help | Action::Cancel | Action::Quit => self.overlay = None,
                    Action::ForceQuit => return vec![Effect::Quit],
                    // The list is longer than a small terminal: it scrolls.
                    Action::Down => self.help_scroll += 1,
                    Action::Up => self.help_scroll = self.help_scroll.saturating_sub(1),
                    Action::PageDown => self.help_scroll += 10,
                    Action::PageUp => self.help_scroll = self.help_scroll.saturating_sub(10),
                    Action::Top => self.help_scroll = 0,
                    Action::Bottom => self.help_scroll = usize::MAX / 2,
                    _ => {}
                }
                return Vec::new();
            }
            Some(Overlay::Editor(_)) => return self.editor_action(action),
            Some(Overlay::Prompt { .. }) => return self.prompt_action(action),
            Some(Overlay::Confirm { yes, .. }) => {
                let yes = yes.clone();
                return match action {
                    Action::Yes | Action::Submit => {
                        self.overlay = None;
                        yes
                    }
                    Action::No | Action::Cancel | Action::Quit => {
                        self.overlay = None;
                        Vec::new()
                    }
                    Action::ForceQuit => vec![Effect::Quit],
                    _ => Vec::new(),
                };
            }
            None => {}
        }
        let rows = self.rows();
        let row = self.selected();
        match action {
            Action::NextPane => self.pane = Pane::ALL[(self.pane.index() + 1) % Pane::ALL.len()],
            Action::PrevPane => self.pane = Pane::ALL[(self.pane.index() + Pane::ALL.len() - 1) % Pane::ALL.len()],
            Action::BucketsPane => self.pane = Pane::Buckets,
            Action::RulesPane => self.pane = Pane::Rules,
            Action::QueuePane => self.pane = Pane::Queue,
            Action::MigrationPane => self.pane = Pane::Migration,
            Action::LogPane => self.pane = Pane::Log,
            Action::Up => self.select(row.saturating_sub(1)),
            Action::Down => self.select(row + 1),
            Action::PageUp => self.select(row.saturating_sub(10)),
            Action::PageDown => self.select(row + 10),
            Action::Top => self.select(0),
            Action::Bottom => self.select(rows.saturating_sub(1)),
            Action::Help => {
                self.help_scroll = 0;
                self.overlay = Some(Overlay::Help)
            }
            Action::ForceQuit => return vec![Effect::Quit],
            Action::Quit => return self.ask_quit(),
            Action::ToggleRule => self.ask_toggle(),
            Action::Migrate => self.ask_migrate(),
            Action::PauseResume => return self.pause_resume(),
            Action::Retry => return self.retry(),
            Action::NewRule => self.open_editor(false),
            Action::Edit => self.open_editor(true),
            Action::Delete => self.ask_delete(),
            Action::Filter => {
                self.overlay = Some(Overlay::Prompt {
                    palette: false,
                    input: tui_input::Input::default().with_value(self.filter(self.pane).to_string()),
                })
            }
            Action::Palette => {
                self.overlay = Some(Overlay::Prompt {
                    palette: true,
                    input: tui_input::Input::default(),
                })
            }
            Action::Cancel => self.filters[self.pane.index()].clear(),
            Action::EnableVersioning => self.ask_versioning(),
            _ => {}
        }
        Vec::new()
    }

    /// Quits at once when nothing would be cut off: no copies in flight, or attached (the
    /// service goes on), or the engine is gone; otherwise asks.
    fn ask_quit(&mut self) -> Vec<Effect> {
        let copies = self.snapshot.running.len();
        if copies == 0 || self.disconnected || matches!(self.mode, Mode::Attached { .. }) {
            return vec![Effect::Quit];
        }
        self.overlay = Some(Overlay::Confirm {
            title: "Quit while copies are in flight?".into(),
            lines: vec![
                format!("{copies} copy(ies) in flight."),
                "They get 10 seconds to finish; the rest is left resumable for the next start.".into(),
            ],
            warning: None,
            yes: vec![Effect::Quit],
        });
        Vec::new()
    }

    fn open_editor(&mut self, existing: bool) {
        let Some(path) = self.config_path.clone() else {
            self.status = Some((Level::Warn, "no config file to edit".into()));
            return;
        };
        let rule = if existing {
            match self.selected_rule() {
                Some(r) => Some(r.clone()),
                None => return,
            }
        } else {
            None
        };
        let mut known: Vec<String> = Vec::new();
        for r in &self.snapshot.rules {
            for b in [&r.source, &r.destination] {
                if !known.contains(b) {
                    known.push(b.clone());
                }
            }
        }
        // Every bucket the endpoints list, versioned ones first: those a rule can use now.
        let mut listed: Vec<&crate::engine::api::BucketView> = self.snapshot.buckets.iter().collect();
        listed.sort_by_key(|b| b.versioning.as_deref() != Some("Enabled"));
        for b in listed {
            let name = format!("{}/{}", b.endpoint, b.bucket);
            if !known.contains(&name) {
                known.push(name);
            }
        }
        self.overlay = Some(Overlay::Editor(Box::new(Editor::new(rule.as_ref(), &path, known))));
    }

    /// Keys the editor's text field takes (everything the keymap does not bind there).
    pub fn on_text(&mut self, key: ratatui::crossterm::event::KeyEvent) {
        use tui_input::backend::crossterm::EventHandler;
        let event = ratatui::crossterm::event::Event::Key(key);
        match &mut self.overlay {
            Some(Overlay::Editor(e)) => {
                if let Some(input) = e.focused() {
                    input.handle_event(&event);
                }
                e.check();
            }
            Some(Overlay::Prompt { palette, input }) => {
                input.handle_event(&event);
                if !*palette {
                    // The filter applies as it is typed.
                    let value = input.value().to_string();
                    self.filters[self.pane.index()] = value;
                    let row = self.selected();
                    self.select(row);
                }
            }
            _ => {}
        }
    }

    /// What the palette offers: pane names, `enable|disable|migrate|pause|resume ID`,
    /// `theme NAME`, `quit`.
    pub fn palette_commands(&self) -> Vec<String> {
        let mut all: Vec<String> = ["buckets", "rules", "queue", "log", "migration", "help", "quit"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for r in &self.snapshot.rules {
            for verb in ["enable", "disable", "migrate", "pause", "resume"] {
                all.push(format!("{verb} {}", r.id));
            }
        }
        all.extend(self.themes.iter().map(|t| format!("theme {t}")));
        all
    }

    /// The palette commands that start with what was typed.
    pub fn completions(&self, typed: &str) -> Vec<String> {
        let typed = typed.trim_start();
        self.palette_commands()
            .into_iter()
            .filter(|c| c.starts_with(typed))
            .collect()
    }

    fn prompt_action(&mut self, action: Action) -> Vec<Effect> {
        let Some(Overlay::Prompt { palette, input }) = &mut self.overlay else {
            return Vec::new();
        };
        let palette = *palette;
        match action {
            Action::ForceQuit => return vec![Effect::Quit],
            Action::Cancel => {
                if !palette {
                    self.filters[self.pane.index()].clear();
                }
                self.overlay = None;
            }
            Action::NextField if palette => {
                let typed = input.value().to_string();
                if let Some(first) = self.completions(&typed).first() {
                    self.overlay = Some(Overlay::Prompt {
                        palette,
                        input: tui_input::Input::default().with_value(first.clone()),
                    });
                }
            }
            Action::Submit => {
                let typed = input.value().trim().to_string();
                self.overlay = None;
                if palette {
                    return self.run_palette(&typed);
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// Runs a palette command as if its keys had been pressed (so toggles still ask first).
    fn run_palette(&mut self, typed: &str) -> Vec<Effect> {
        let (verb, arg) = typed.split_once(' ').map(|(v, a)| (v, a.trim())).unwrap_or((typed, ""));
        let pane = match verb {
            "buckets" | "1" => Some(Action::BucketsPane),
            "rules" | "2" => Some(Action::RulesPane),
            "queue" | "3" => Some(Action::QueuePane),
            "log" | "4" => Some(Action::LogPane),
            "migration" | "5" => Some(Action::MigrationPane),
            "help" => Some(Action::Help),
            "q" | "quit" => Some(Action::Quit),
            _ => None,
        };
        if let Some(a) = pane {
            return self.on_action(a);
        }
        if verb == "theme" && !arg.is_empty() {
            return vec![Effect::SetTheme(arg.to_string())];
        }
        let Some(index) = self.snapshot.rules.iter().position(|r| r.id == arg) else {
            self.status = Some((
                Level::Error,
                format!("unknown command {typed:?}: Tab completes, e.g. `enable ID`, `migrate ID`, `theme NAME`"),
            ));
            return Vec::new();
        };
        let enabled = self.snapshot.rules[index].enabled;
        let action = match verb {
            "enable" if !enabled => Action::ToggleRule,
            "disable" if enabled => Action::ToggleRule,
            "enable" | "disable" => {
                self.status = Some((Level::Info, format!("rule {arg} is already {verb}d")));
                return Vec::new();
            }
            "migrate" => Action::Migrate,
            "pause" | "resume" => Action::PauseResume,
            _ => {
                self.status = Some((Level::Error, format!("unknown command {typed:?}")));
                return Vec::new();
            }
        };
        self.pane = Pane::Rules;
        self.filters[Pane::Rules.index()].clear();
        self.selected[Pane::Rules.index()] = index;
        self.on_action(action)
    }

    fn editor_action(&mut self, action: Action) -> Vec<Effect> {
        let Some(Overlay::Editor(e)) = &mut self.overlay else {
            return Vec::new();
        };
        match action {
            Action::NextField | Action::PrevField => {
                if action == Action::NextField {
                    e.next();
                } else {
                    e.previous();
                }
                // Moving on from a field with a draft that loads: check the buckets, as `crr
                // check` would.
                e.check();
                if e.problem.is_none() && e.preflight_now().is_none() {
                    return vec![Effect::Send(Command::Preflight {
                        previous_id: e.previous_id.clone(),
                        rule: e.draft(),
                    })];
                }
            }
            Action::Cancel => self.overlay = None,
            Action::ForceQuit => return vec![Effect::Quit],
            Action::Submit => {
                e.check();
                if let Some(problem) = &e.problem {
                    self.status = Some((Level::Error, format!("not saved: {problem}")));
                    return Vec::new();
                }
                let command = Command::SaveRule {
                    previous_id: e.previous_id.clone(),
                    rule: e.draft(),
                };
                self.overlay = None;
                return vec![Effect::Send(command)];
            }
            _ => {}
        }
        Vec::new()
    }
}
