//! What the operations on the selected row do: the ones that ask first (enable versioning,
//! delete a rule, toggle a rule, start a migration) open their confirmation; pause or resume
//! and retry go at once.

use super::*;

impl App {
    pub(super) fn ask_versioning(&mut self) {
        let Some(BucketRow::Bucket(i)) = self.bucket_rows().get(self.selected()).copied() else {
            self.status = Some((Level::Warn, "select a bucket (under its endpoint) first".into()));
            return;
        };
        let Some(b) = self.snapshot.buckets.get(i).cloned() else {
            return;
        };
        if b.versioning.as_deref() == Some("Enabled") {
            self.status = Some((
                Level::Info,
                format!("versioning is already enabled on {}/{}", b.endpoint, b.bucket),
            ));
            return;
        }
        self.overlay = Some(Overlay::Confirm {
            title: format!("Enable versioning on {}/{}?", b.endpoint, b.bucket),
            lines: vec![
                "Replication needs versioning on both buckets of a rule.".into(),
                "Every overwrite and delete then keeps the older version (storage is billed for it).".into(),
            ],
            warning: Some("S3 can suspend versioning later, but never turn it off again".into()),
            yes: vec![Effect::Send(Command::EnableVersioning {
                endpoint: b.endpoint.clone(),
                bucket: b.bucket.clone(),
            })],
        });
    }

    pub(super) fn ask_delete(&mut self) {
        let Some(rule) = self.selected_rule().cloned() else {
            return;
        };
        self.overlay = Some(Overlay::Confirm {
            title: format!("Delete rule {}?", rule.id),
            lines: vec![
                "It is removed from the config file and stops: in-flight copies are aborted.".into(),
                format!("What is already replicated stays in {}.", rule.destination),
            ],
            warning: None,
            yes: vec![Effect::Send(Command::DeleteRule { id: rule.id.clone() })],
        });
    }

    pub(super) fn ask_toggle(&mut self) {
        let Some(rule) = self.selected_rule().cloned() else {
            return;
        };
        let (title, lines, command) = if rule.enabled {
            (
                format!("Disable rule {}?", rule.id),
                vec![
                    "In-flight copies are aborted and queued changes dropped.".into(),
                    format!("What is already replicated stays in {}.", rule.destination),
                    "Re-enabling later replicates only writes made after it.".into(),
                ],
                Command::DisableRule { id: rule.id.clone() },
            )
        } else {
            (
                format!("Enable rule {}?", rule.id),
                vec![
                    format!("{} -> {}", rule.source, rule.destination),
                    "Preflight runs first; then only writes after the new enable point are replicated.".into(),
                    "What exists now is not: a migration (m) copies it.".into(),
                ],
                Command::EnableRule { id: rule.id.clone() },
            )
        };
        self.overlay = Some(Overlay::Confirm {
            title,
            lines,
            warning: None,
            yes: vec![Effect::Send(command)],
        });
    }

    pub(super) fn ask_migrate(&mut self) {
        let Some(rule) = self.selected_rule().cloned() else {
            return;
        };
        let scope = if rule.prefixes.is_empty() {
            "whole bucket".to_string()
        } else {
            rule.prefixes.join(", ")
        };
        self.overlay = Some(Overlay::Confirm {
            title: format!("Start a migration of rule {}?", rule.id),
            lines: vec![
                format!("The latest version of every object in {} ({scope})", rule.source),
                format!(
                    "that exists now is copied to {} when missing or different (overwrite = \"{}\").",
                    rule.destination, rule.overwrite
                ),
            ],
            warning: (rule.overwrite == "always").then(|| {
                format!(
                    "overwrite = \"always\": objects of the same name in {} will be overwritten",
                    rule.destination
                )
            }),
            yes: vec![Effect::Send(Command::Migrate {
                id: rule.id.clone(),
                action: MigrateAction::Start,
            })],
        });
    }

    pub(super) fn pause_resume(&mut self) -> Vec<Effect> {
        let Some(rule) = self.selected_rule() else {
            return Vec::new();
        };
        let action = match rule.migration.as_ref().map(|m| m.state.as_str()) {
            Some("paused") => MigrateAction::Resume,
            Some("listing" | "running") => MigrateAction::Pause,
            _ => {
                self.status = Some((
                    Level::Warn,
                    format!("rule {} has no migration to pause or resume", rule.id),
                ));
                return Vec::new();
            }
        };
        vec![Effect::Send(Command::Migrate {
            id: rule.id.clone(),
            action,
        })]
    }

    pub(super) fn retry(&mut self) -> Vec<Effect> {
        if self.pane != Pane::Queue {
            return Vec::new();
        }
        match self.queue_rows().get(self.selected()) {
            Some(QueueRow::Failed(i)) => match self.snapshot.recent_failures.get(*i) {
                Some(f) => vec![Effect::Send(Command::Retry {
                    target: RetryTarget::Tasks { ids: vec![f.task_id] },
                })],
                None => Vec::new(),
            },
            _ => {
                self.status = Some((Level::Warn, "select a failed task to retry it".into()));
                Vec::new()
            }
        }
    }
}
