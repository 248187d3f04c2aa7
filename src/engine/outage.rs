//! Riding out an outage while serving. Tasks that meet an unreachable endpoint wait for it
//! without spending their attempts (`Health::admit`), each until the gate's next probe, up to
//! 30 s away. This prober asks every unreachable endpoint one cheap question (ListBuckets, no
//! retries) every `EVERY`; as soon as one answers, the tasks of the rules that use it are due at
//! once instead of at their gate time.

use super::Core;
use crate::store::{blocking, now_ms};
use aws_sdk_s3::config::retry::RetryConfig;
use std::sync::Weak;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an unreachable endpoint is asked whether it is back.
const EVERY: Duration = Duration::from_secs(2);
/// How long the question may take.
const ASK_WITHIN: Duration = Duration::from_secs(5);

pub(super) async fn run(core: Weak<Core>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let Some(core) = core.upgrade() else {
            return;
        };
        let config = core.config();
        let clients = core.clients();
        for ep in &config.endpoints {
            if !core.health.is_down(&ep.name) {
                continue;
            }
            let Ok(s3) = clients.get(&ep.name) else {
                continue;
            };
            // Any answer, an error status included, tells the health interceptor it is back.
            let ask = s3
                .client
                .list_buckets()
                .customize()
                .config_override(aws_sdk_s3::config::Builder::default().retry_config(RetryConfig::disabled()))
                .send();
            let _ = tokio::time::timeout(ASK_WITHIN, ask).await;
            if core.health.is_down(&ep.name) {
                continue;
            }
            let rules: Vec<String> = config
                .rules
                .iter()
                .filter(|r| r.source.endpoint == ep.name || r.destination.endpoint == ep.name)
                .map(|r| r.id.clone())
                .collect();
            match blocking(|| core.store.due_now(&rules, now_ms())) {
                Ok(n) => {
                    tracing::info!(endpoint = %ep.name, tasks = n, "endpoint answers again: its waiting tasks go now")
                }
                Err(e) => {
                    tracing::warn!(endpoint = %ep.name, error = %format!("{e:#}"), "could not wake the tasks waiting for an endpoint")
                }
            }
            core.work.notify_waiters();
        }
    }
}
