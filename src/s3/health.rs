//! Whether each endpoint answers: an SDK interceptor sees every attempt of every request. Any
//! HTTP response, an error status included, means the endpoint is reachable; an attempt that
//! got no response (refused, reset, timed out) means it is not. The engine's snapshot and its
//! "unreachable / back" events read this, and so does the outage gate: while an endpoint is
//! unreachable, one task at a time probes it, at growing intervals, and the others wait without
//! spending their attempts (`Health::admit`).
//!
//! The last known state is also kept in `STATE_DIR/crr.endpoints.json`, so that `crr status` run
//! when no engine is running can still say when each endpoint last answered.

use aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file in the state directory that keeps the endpoints' last known health.
pub const FILE: &str = "crr.endpoints.json";
/// The first wait of the outage gate, doubled after each failed probe up to [`GATE_MAX_MS`].
const GATE_FIRST_MS: i64 = 1_000;
const GATE_MAX_MS: i64 = 30_000;
/// A success is written to the file at most this often (a change of reachability at once).
const PERSIST_EVERY_MS: i64 = 5_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHealth {
    /// None until the endpoint was first used.
    pub reachable: Option<bool>,
    /// Unix milliseconds of the last response.
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
    /// Unix milliseconds of the first attempt without an answer since the last response.
    #[serde(default)]
    pub down_since: Option<i64>,
    /// Attempts without an answer since the last response.
    #[serde(default)]
    pub failed_attempts: u64,
}

/// When the next probe of an unreachable endpoint may go.
#[derive(Debug, Clone, Copy)]
struct Gate {
    next: i64,
    wait: i64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, EndpointHealth>,
    gates: HashMap<String, Gate>,
    /// Where to keep the last known state, and when it was last written.
    file: Option<PathBuf>,
    written: HashMap<String, EndpointHealth>,
    written_at: i64,
}

/// Health of every endpoint, by name; shared by the clients of successive config reloads.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Inner>>);

impl Health {
    /// Health kept in `state_dir`'s file too; what an earlier process learnt of the last
    /// successes and errors is read back (whether an endpoint is reachable now is not).
    pub fn persisted(state_dir: &Path) -> Health {
        let health = Health::default();
        {
            let mut inner = health.inner();
            inner.file = Some(state_dir.join(FILE));
            for (name, h) in load(state_dir) {
                inner.map.insert(
                    name,
                    EndpointHealth {
                        reachable: None,
                        last_success: h.last_success,
                        last_error: h.last_error,
                        down_since: None,
                        failed_attempts: 0,
                    },
                );
            }
        }
        health
    }

    pub fn get(&self, endpoint: &str) -> EndpointHealth {
        self.inner().map.get(endpoint).cloned().unwrap_or_default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, endpoint: &str, outcome: Result<(), String>) {
        let now = crate::store::now_ms();
        let mut inner = self.inner();
        let h = inner.map.entry(endpoint.to_string()).or_default();
        match outcome {
            Ok(()) => {
                h.reachable = Some(true);
                h.last_success = Some(now);
                h.down_since = None;
                h.failed_attempts = 0;
                inner.gates.remove(endpoint);
            }
            Err(e) => {
                if h.reachable != Some(false) {
                    h.down_since = Some(now);
                }
                h.reachable = Some(false);
                h.last_error = Some(e);
                h.failed_attempts += 1;
            }
        }
        inner.persist(endpoint, now);
    }

    /// Whether the endpoint is known to be unreachable now.
    pub fn is_down(&self, endpoint: &str) -> bool {
        self.get(endpoint).reachable == Some(false)
    }

    /// May a task use this endpoint now? Yes while it is reachable (or not known to be down).
    /// While it is down, one caller at a time is let through as a probe, each one after a wait
    /// twice the last (1 s up to 30 s); the others are told when to ask again (Unix ms).
    pub fn admit(&self, endpoint: &str) -> Result<(), i64> {
        let now = crate::store::now_ms();
        let mut inner = self.inner();
        if inner.map.get(endpoint).and_then(|h| h.reachable) != Some(false) {
            return Ok(());
        }
        let gate = inner
            .gates
            .entry(endpoint.to_string())
            .or_insert(Gate { next: 0, wait: 0 });
        if now >= gate.next {
            gate.wait = (gate.wait * 2).clamp(GATE_FIRST_MS, GATE_MAX_MS);
            gate.next = now + gate.wait;
            Ok(())
        } else {
            Err(gate.next)
        }
    }

    /// When a task that failed because this endpoint is down should be tried again (Unix ms).
    pub fn next_probe(&self, endpoint: &str) -> i64 {
        let now = crate::store::now_ms();
        let inner = self.inner();
        match inner.gates.get(endpoint) {
            Some(g) if g.next > now => g.next,
            _ => now + GATE_FIRST_MS,
        }
    }

    /// The interceptor that feeds this for one endpoint's client.
    pub fn observer(&self, endpoint: &str) -> Observer {
        Observer {
            endpoint: endpoint.to_string(),
            health: self.clone(),
        }
    }
}

impl Inner {
    /// Writes the file when the endpoint's reachability changed, or its last success is more
    /// than a few seconds newer than the one written.
    fn persist(&mut self, endpoint: &str, now: i64) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let current = self.map.get(endpoint).cloned().unwrap_or_default();
        let written = self.written.get(endpoint);
        let changed = written.is_none_or(|w| w.reachable != current.reachable);
        if !changed && now - self.written_at < PERSIST_EVERY_MS {
            return;
        }
        self.written = self.map.clone();
        self.written_at = now;
        if let Err(e) = write_atomically(&path, &self.map) {
            tracing::warn!(file = %path.display(), error = %e, "could not keep the endpoints' health");
        }
    }
}

fn write_atomically(path: &Path, map: &HashMap<String, EndpointHealth>) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(map).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The endpoints' health as the last engine on `state_dir` left it (empty when none was kept).
pub fn load(state_dir: &Path) -> HashMap<String, EndpointHealth> {
    std::fs::read_to_string(state_dir.join(FILE))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

#[derive(Debug)]
pub struct Observer {
    endpoint: String,
    health: Health,
}

impl Intercept for Observer {
    fn name(&self) -> &'static str {
        "crr-endpoint-health"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.response().is_some() {
            self.health.record(&self.endpoint, Ok(()));
        } else if let Some(Err(e)) = context.output_or_error() {
            self.health.record(&self.endpoint, Err(super::chain(e)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_endpoint_lets_one_probe_through_at_growing_intervals() {
        let h = Health::default();
        assert_eq!(h.admit("sh"), Ok(()), "not known to be down");
        h.record("sh", Err("connection refused".into()));
        assert_eq!(h.admit("sh"), Ok(()), "the first probe goes at once");
        let next = h.admit("sh").expect_err("a second caller waits");
        assert!(next > crate::store::now_ms(), "{next}");
        assert_eq!(h.next_probe("sh"), next);
        h.record("sh", Ok(()));
        assert_eq!(h.admit("sh"), Ok(()), "back: everyone goes");
        assert_eq!(h.get("sh").failed_attempts, 0);
    }

    #[test]
    fn the_last_success_survives_in_the_state_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = Health::persisted(dir.path());
        h.record("gz", Ok(()));
        h.record("gz", Err("connection refused".into()));
        let kept = load(dir.path());
        let gz = &kept["gz"];
        assert_eq!(gz.reachable, Some(false));
        assert!(gz.last_success.is_some() && gz.down_since.is_some(), "{gz:?}");
        let again = Health::persisted(dir.path());
        assert_eq!(again.get("gz").reachable, None, "reachability now is not assumed");
        assert_eq!(again.get("gz").last_success, gz.last_success);
    }
}
