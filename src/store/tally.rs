//! In-memory counts of tasks by state, per rule and migration, kept beside the database by
//! every method that moves a task. The engine's snapshot reads these a few times a second
//! instead of aggregating over the whole task table.

use std::collections::HashMap;

/// A task's state in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    Dropped,
    Skipped,
}

impl State {
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "queued" => State::Queued,
            "running" => State::Running,
            "done" => State::Done,
            "failed" => State::Failed,
            "dropped" => State::Dropped,
            "skipped" => State::Skipped,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub objects: i64,
    pub bytes: i64,
}

impl Count {
    fn add(&mut self, objects: i64, bytes: i64) {
        self.objects += objects;
        self.bytes += bytes;
    }
}

/// Tasks of one rule (real time) or one migration, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub queued: Count,
    pub running: Count,
    pub done: Count,
    pub failed: Count,
    pub dropped: Count,
    pub skipped: Count,
}

impl Tally {
    fn slot(&mut self, s: State) -> &mut Count {
        match s {
            State::Queued => &mut self.queued,
            State::Running => &mut self.running,
            State::Done => &mut self.done,
            State::Failed => &mut self.failed,
            State::Dropped => &mut self.dropped,
            State::Skipped => &mut self.skipped,
        }
    }

    /// Queued or running.
    pub fn pending(&self) -> Count {
        Count {
            objects: self.queued.objects + self.running.objects,
            bytes: self.queued.bytes + self.running.bytes,
        }
    }

    pub fn merge(&mut self, o: &Tally) {
        for s in [
            State::Queued,
            State::Running,
            State::Done,
            State::Failed,
            State::Dropped,
            State::Skipped,
        ] {
            let mut other = *o;
            let c = *other.slot(s);
            self.slot(s).add(c.objects, c.bytes);
        }
    }
}

/// Which tasks a tally counts: a rule's real-time tasks (`None`) or one migration's.
pub type TallyKey = (String, Option<i64>);

#[derive(Debug, Default)]
pub struct Tallies(HashMap<TallyKey, Tally>);

impl Tallies {
    /// `n` tasks of `bytes` in total move from one state to another (`None`: into or out of the table).
    pub fn shift(&mut self, key: &TallyKey, from: Option<State>, to: Option<State>, n: i64, bytes: i64) {
        if n == 0 {
            return;
        }
        let t = self.0.entry(key.clone()).or_default();
        if let Some(f) = from {
            t.slot(f).add(-n, -bytes);
        }
        if let Some(s) = to {
            t.slot(s).add(n, bytes);
        }
    }

    pub fn set(&mut self, key: TallyKey, state: State, count: Count) {
        *self.0.entry(key).or_default().slot(state) = count;
    }

    pub fn get(&self, key: &TallyKey) -> Tally {
        self.0.get(key).copied().unwrap_or_default()
    }

    /// Every tally of a rule, real time and migrations together.
    pub fn rule_total(&self, rule: &str) -> Tally {
        let mut t = Tally::default();
        for (_, v) in self.0.iter().filter(|((r, _), _)| r == rule) {
            t.merge(v);
        }
        t
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_move_counts_between_states() {
        let mut t = Tallies::default();
        let k = ("r".to_string(), None);
        t.shift(&k, None, Some(State::Queued), 3, 30);
        t.shift(&k, Some(State::Queued), Some(State::Running), 1, 10);
        t.shift(&k, Some(State::Running), Some(State::Done), 1, 10);
        let m = ("r".to_string(), Some(7));
        t.shift(&m, None, Some(State::Queued), 2, 5);
        assert_eq!(t.get(&k).pending(), Count { objects: 2, bytes: 20 });
        assert_eq!(t.get(&k).done, Count { objects: 1, bytes: 10 });
        assert_eq!(t.rule_total("r").pending(), Count { objects: 4, bytes: 25 });
    }
}
