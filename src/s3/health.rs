//! Whether each endpoint answers: an SDK interceptor sees every attempt of every request. Any
//! HTTP response, an error status included, means the endpoint is reachable; an attempt that
//! got no response (refused, reset, timed out) means it is not. The engine's snapshot and its
//! "unreachable / back" events read this.

use aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointHealth {
    /// None until the endpoint was first used.
    pub reachable: Option<bool>,
    /// Unix milliseconds of the last response.
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
}

/// Health of every endpoint, by name; shared by the clients of successive config reloads.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<HashMap<String, EndpointHealth>>>);

impl Health {
    pub fn get(&self, endpoint: &str) -> EndpointHealth {
        self.map().get(endpoint).cloned().unwrap_or_default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, EndpointHealth>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, endpoint: &str, outcome: Result<(), String>) {
        let mut map = self.map();
        let h = map.entry(endpoint.to_string()).or_default();
        match outcome {
            Ok(()) => {
                h.reachable = Some(true);
                h.last_success = Some(crate::store::now_ms());
            }
            Err(e) => {
                h.reachable = Some(false);
                h.last_error = Some(e);
            }
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
