//! The engine's typed control plane, shared by every driver (the UI, `serve`, `run --once`, the
//! CLI) and spoken as newline-delimited JSON on the service socket: `Command`s in, each answered
//! by one `Reply`; `Event`s (discrete outcomes) and `Snapshot`s (progress) out.

pub use crate::config::RuleDraft;
use serde::{Deserialize, Serialize};

/// Bumped when a message changes shape in a way an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateAction {
    Start,
    Pause,
    Resume,
    Cancel,
}

impl MigrateAction {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrateAction::Start => "start",
            MigrateAction::Pause => "pause",
            MigrateAction::Resume => "resume",
            MigrateAction::Cancel => "cancel",
        }
    }
}

/// Which failed tasks to queue again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "select", rename_all = "snake_case")]
pub enum RetryTarget {
    Tasks { ids: Vec<i64> },
    Rule { id: String },
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Preflight, then a new enable point; the outcome is `RuleEnabled` or `RuleRefused`.
    EnableRule {
        id: String,
    },
    /// Queued tasks dropped, in-flight copies aborted; replicated data stays.
    DisableRule {
        id: String,
    },
    /// Writes the rule into the config file (a new one, or replacing `previous_id`).
    SaveRule {
        previous_id: Option<String>,
        rule: RuleDraft,
    },
    /// Checks a draft against the real buckets (the preflight of `crr check`) without saving it;
    /// the outcome is `PreflightChecked`.
    Preflight {
        previous_id: Option<String>,
        rule: RuleDraft,
    },
    /// Removes the rule from the config file and stops it.
    DeleteRule {
        id: String,
    },
    Migrate {
        id: String,
        action: MigrateAction,
    },
    Retry {
        target: RetryTarget,
    },
    /// Bytes per second for the whole engine (`rule: None`) or one rule; 0 = no limit. Holds
    /// until the engine stops or the config is reloaded.
    SetBandwidth {
        rule: Option<String>,
        bytes_per_sec: u64,
    },
    /// Turns versioning on for a bucket (both buckets of a rule need it).
    EnableVersioning {
        endpoint: String,
        bucket: String,
    },
    /// Re-reads the config file (after it was edited by hand) and applies what changed.
    Reload,
    Shutdown,
}

impl Command {
    /// The rule this command is about, if one.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Command::EnableRule { id }
            | Command::DisableRule { id }
            | Command::DeleteRule { id }
            | Command::Migrate { id, .. } => Some(id),
            Command::SaveRule { rule, .. } => Some(&rule.id),
            Command::SetBandwidth { rule, .. } => rule.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reply {
    /// Applied (or, for long work, started: its outcome follows as an event).
    Done { message: String },
    /// Not applied: why, and what to do instead.
    Refused { reason: String, fix: String },
}

impl Reply {
    pub fn done(message: impl Into<String>) -> Reply {
        Reply::Done {
            message: message.into(),
        }
    }

    pub fn refused(reason: impl Into<String>, fix: impl Into<String>) -> Reply {
        Reply::Refused {
            reason: reason.into(),
            fix: fix.into(),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Reply::Done { .. })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Done { message } => write!(f, "{message}"),
            Reply::Refused { reason, fix } if fix.is_empty() => write!(f, "refused: {reason}"),
            Reply::Refused { reason, fix } => write!(f, "refused: {reason}; {fix}"),
        }
    }
}

/// A discrete outcome, broadcast to every subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    TaskDone {
        task: i64,
        rule: String,
        key: String,
        size: u64,
        /// "put" or "delete-marker"
        kind: String,
        migration: Option<i64>,
    },
    TaskFailed {
        task: i64,
        rule: String,
        key: String,
        size: u64,
        reason: String,
    },
    RuleEnabled {
        rule: String,
        enable_point: i64,
        /// Versions in scope at the enable point: never replicated in real time.
        baseline: u64,
        message: String,
    },
    /// Preflight (or the baseline listing) refused to enable the rule; nothing changed.
    RuleRefused {
        rule: String,
        reasons: Vec<String>,
    },
    RuleDisabled {
        rule: String,
        /// Queued, running or failed tasks dropped.
        dropped: u64,
        /// Copies in flight that were aborted.
        aborted: u64,
        message: String,
    },
    MigrationChanged {
        rule: String,
        migration: i64,
        state: String,
        message: String,
    },
    /// The outcome of `Command::Preflight` for this draft: no problems means it may be enabled.
    PreflightChecked {
        draft: RuleDraft,
        problems: Vec<String>,
    },
    ScanFailed {
        rule: String,
        error: String,
    },
    /// The rule's copies and scans are held (versioning not Enabled on one of its buckets).
    RuleHalted {
        rule: String,
        reason: String,
    },
    /// The hold is over: copies run again.
    RuleResumed {
        rule: String,
    },
    ScanRecovered {
        rule: String,
    },
    EndpointUnreachable {
        endpoint: String,
        error: String,
    },
    EndpointBack {
        endpoint: String,
    },
    /// Anything else worth a line in a log: reconcile messages, warnings.
    Notice {
        message: String,
    },
}

impl Event {
    /// One line for a log pane or a terminal.
    pub fn describe(&self) -> String {
        match self {
            Event::TaskDone {
                rule, key, size, kind, ..
            } => {
                format!("{rule}: replicated {kind} {key} ({size} bytes)")
            }
            Event::TaskFailed { rule, key, reason, .. } => format!("{rule}: {key} failed: {reason}"),
            Event::RuleEnabled { message, .. }
            | Event::RuleDisabled { message, .. }
            | Event::MigrationChanged { message, .. }
            | Event::Notice { message } => message.clone(),
            Event::RuleRefused { rule, reasons } => format!("rule {rule:?} was not enabled: {}", reasons.join("; ")),
            Event::PreflightChecked { draft, problems } if problems.is_empty() => {
                format!("rule {:?}: preflight passed", draft.id)
            }
            Event::PreflightChecked { draft, problems } => {
                format!("rule {:?}: preflight: {}", draft.id, problems.join("; "))
            }
            Event::ScanFailed { rule, error } => format!("{rule}: scan failed: {error}"),
            Event::ScanRecovered { rule } => format!("{rule}: scanning works again"),
            Event::RuleHalted { rule, reason } => format!("rule {rule:?} held: {reason}"),
            Event::RuleResumed { rule } => format!("rule {rule:?}: both buckets version again; copies resume"),
            Event::EndpointUnreachable { endpoint, error } => {
                format!("endpoint {endpoint} is unreachable: {error}")
            }
            Event::EndpointBack { endpoint } => format!("endpoint {endpoint} is reachable again"),
        }
    }
}

/// Progress, sampled 2–4 times a second from in-memory counters and published only on change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub rules: Vec<RuleView>,
    pub endpoints: Vec<EndpointView>,
    /// Copies in flight, by task id.
    pub running: Vec<RunningCopy>,
    /// The most recent failures, newest last (bounded).
    pub recent_failures: Vec<Failure>,
    /// Bytes replicated in each of the last 60 seconds, oldest first.
    pub throughput: Vec<u64>,
    /// The buckets the rules use, with their versioning state.
    pub buckets: Vec<BucketView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketView {
    pub endpoint: String,
    pub bucket: String,
    /// "Enabled", "Suspended", "" (never enabled), or None when not known (yet).
    pub versioning: Option<String>,
    /// Why it is not known, when reading it failed.
    pub error: Option<String>,
    /// The rules that use it, with "source" or "destination".
    pub rules: Vec<String>,
}

impl Snapshot {
    pub fn rule(&self, id: &str) -> Option<&RuleView> {
        self.rules.iter().find(|r| r.id == id)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    pub id: String,
    /// `enabled` in the config file.
    pub enabled: bool,
    /// What the engine recorded: new | enabling | enabled | error (enabled, copies held) |
    /// disabled | deleted
    pub state: String,
    pub source: String,
    pub destination: String,
    pub prefixes: Vec<String>,
    pub operations: String,
    pub storage_class: Option<String>,
    /// What a migration does with objects already on the destination: always | if-different | never
    pub overwrite: String,
    pub historical: bool,
    /// Unix milliseconds.
    pub enable_point: Option<i64>,
    pub last_sync_point: Option<i64>,
    pub lag_seconds: Option<i64>,
    pub backlog_objects: i64,
    pub backlog_bytes: i64,
    pub failed: i64,
    pub replicated_objects: i64,
    pub replicated_bytes: i64,
    /// Why the rule's copies are held (state `error`), if they are.
    #[serde(default)]
    pub error: Option<String>,
    pub migration: Option<MigrationView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationView {
    pub id: i64,
    /// listing | running | paused | completed | cancelled | failed
    pub state: String,
    pub percent: f64,
    /// While listing, totals are "at least" these.
    pub listing_complete: bool,
    pub total_objects: i64,
    pub done_objects: i64,
    pub total_bytes: i64,
    /// Bytes copied, including those of copies in flight.
    pub done_bytes: i64,
    pub skipped_objects: i64,
    pub failed_objects: i64,
    pub started_at: i64,
    pub throughput_bytes_per_sec: u64,
    pub eta_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    pub name: String,
    pub region: String,
    /// None until the endpoint was first used.
    pub reachable: Option<bool>,
    /// Unix milliseconds of the last answer from it.
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
    /// Unix milliseconds of the first attempt without an answer, while it is unreachable.
    pub down_since: Option<i64>,
    /// Attempts without an answer since the last answer.
    #[serde(default)]
    pub failed_attempts: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningCopy {
    pub task_id: i64,
    pub rule_id: String,
    pub migration: Option<i64>,
    pub key: String,
    pub size: u64,
    pub bytes_done: u64,
    pub part: u32,
    pub parts: u32,
    pub attempt: u32,
    /// Bytes per second, smoothed.
    pub rate: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub task_id: i64,
    pub rule_id: String,
    pub key: String,
    pub size: u64,
    pub reason: String,
    /// Unix milliseconds.
    pub at: i64,
}
