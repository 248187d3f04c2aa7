//! S3 access: one aws-sdk-s3 client per endpoint, tuned for replication, and the listing and
//! bucket operations the engine and preflight need. Object copies live in `engine::copy`.

use crate::config::{Config, Endpoint};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{BucketVersioningStatus, EncodingType};
use std::collections::HashMap;
use std::time::Duration;

pub mod body_check;
mod endpoint;
pub mod health;
mod list;
pub mod tag_count;

pub use list::{VersionEntry, VersionPage, chronological, decode_listed_key};

/// One S3 error, reduced to what the engine decides on and what an operator reads.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct S3Error {
    pub code: Option<String>,
    pub status: Option<u16>,
    pub message: String,
}

impl S3Error {
    pub fn new(message: impl Into<String>) -> Self {
        S3Error {
            code: None,
            status: None,
            message: message.into(),
        }
    }

    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
            || matches!(
                self.code.as_deref(),
                Some("NoSuchKey" | "NoSuchVersion" | "NoSuchBucket" | "NotFound")
            )
    }
}

/// Turns an SDK error into an `S3Error` whose message says what failed, on what, and why.
pub fn s3_error<E>(op: &str, target: &str, err: SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let detail = match &err {
        SdkError::ServiceError(_) if err.code().is_some() => {
            let c = err.code().unwrap_or("error");
            let m = err.message().unwrap_or("");
            match status {
                Some(s) => format!("{c} (HTTP {s}) {m}"),
                None => format!("{c} {m}"),
            }
        }
        // HEAD answers carry no body, so no error code: the status is what there is.
        SdkError::ServiceError(_) if status.is_some() => {
            format!("HTTP {} (the answer names no error code)", status.unwrap_or_default())
        }
        SdkError::TimeoutError(_) => "timed out".to_string(),
        SdkError::DispatchFailure(d) => {
            let text = chain(&err);
            if text.contains("loading credentials") {
                format!(
                    "no usable credentials ({text}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or `profile` on the endpoint"
                )
            } else if text.contains("certificate") {
                // rustls refused the server's certificate (https endpoints only).
                format!(
                    "TLS: the server's certificate is not trusted ({text}); crr checks https endpoints against the system's root certificates (or those SSL_CERT_FILE / SSL_CERT_DIR name): add the CA that signed it there, or fix the endpoint's url"
                )
            } else if text.contains("minimum throughput") {
                // The SDK's stalled-stream protection gave up on a body that stopped moving.
                format!("stalled: {text}")
            } else if d.is_timeout() && text.contains("read timeout") {
                // Connected and sent, but no answer came within READ_TIMEOUT.
                format!("no answer: {text}")
            } else if d.is_io() || d.is_timeout() {
                format!("cannot connect: {text}")
            } else {
                format!("request failed: {text}")
            }
        }
        _ => chain(&err),
    };
    S3Error {
        code,
        status,
        message: format!("{op} {target}: {}", detail.trim()),
    }
}

/// An error and its causes on one line, without the debug dumps.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

/// A client for one endpoint.
#[derive(Clone, Debug)]
pub struct S3 {
    pub endpoint: String,
    pub region: String,
    /// The endpoint's `url`, when the config sets one.
    pub url: Option<String>,
    pub client: Client,
    /// The same client for requests whose body crr streams (PutObject, UploadPart): without a
    /// read timeout, which would run from the start of the request to the first byte of the
    /// answer and so span the whole upload, failing any that is slow but moving; the caller
    /// watches such a request for stalls instead (`engine::progress::watch`). A second client rather than a per-request
    /// override, which the SDK would merge into its settings on every request.
    pub streaming: Client,
    /// Whether this endpoint's GetObject answers can be trusted to leave out the tag count
    /// only for untagged objects; shared by every clone of the client.
    pub tag_counts: std::sync::Arc<tag_count::TagCounts>,
    /// Set once a plain object's bytes read from this endpoint matched its MD5-like ETag: from
    /// then on a read that does not match is damage on the way, never an ETag that is no MD5.
    pub etag_is_md5: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether this endpoint, as a destination, vouches for the bytes it is sent itself
    /// (see [`body_check`]).
    pub body_checks: std::sync::Arc<body_check::BodyChecks>,
    /// How many entries a listing page asks for: `LIST_PAGE` until the endpoint refuses that,
    /// then the 1,000 every S3 server takes.
    pub list_page: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

/// Entries a listing asks for per page. S3 answers at most 1,000 whatever is asked, and so do
/// most servers; one that honours more is spared most of its requests, and some servers
/// (moto) build every page from the whole bucket, so that 10 pages cost 10 times one.
const LIST_PAGE: i32 = 10_000;

/// The page size every S3 server takes.
const LIST_PAGE_STANDARD: i32 = 1_000;

/// Clients for every endpoint of the config, by endpoint name.
#[derive(Clone, Debug, Default)]
pub struct Clients(pub HashMap<String, S3>);

impl Clients {
    pub async fn connect(config: &Config) -> Clients {
        Self::connect_observed(config, None).await
    }

    /// Clients whose every request attempt is recorded in `health`.
    pub async fn connect_observed(config: &Config, health: Option<&health::Health>) -> Clients {
        let mut map = HashMap::new();
        for ep in &config.endpoints {
            map.insert(
                ep.name.clone(),
                S3::connect_with(ep, health, config.engine.stall_timeout).await,
            );
        }
        Clients(map)
    }

    pub fn get(&self, endpoint: &str) -> Result<&S3, S3Error> {
        self.0
            .get(endpoint)
            .ok_or_else(|| S3Error::new(format!("unknown endpoint {endpoint:?}")))
    }
}

/// A warning when requests to the endpoint would cross a network unencrypted: a plain
/// `http://` URL whose host is not loopback (127.0.0.0/8, ::1, localhost). Requests are signed,
/// so the secret key never travels, but object data, metadata and the access key id would.
pub fn plaintext_warning(ep: &Endpoint) -> Option<String> {
    let url = ep.url.as_deref()?;
    let rest = url
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    if is_loopback(host) {
        return None;
    }
    Some(format!(
        "endpoint {:?} uses plain http to {host} ({url}): object data and request headers cross the network unencrypted; use an https:// url",
        ep.name
    ))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(std::net::IpAddr::V6(v6)) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

/// A dead endpoint must fail fast and be retried by the engine, not hang a worker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From the start of a request to the first byte of its answer. Requests with a body to stream
/// (PutObject, UploadPart) go without it: see [`S3::streaming`].
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl S3 {
    /// A client with the default stall window.
    pub async fn connect(ep: &Endpoint, health: Option<&health::Health>) -> S3 {
        Self::connect_with(ep, health, crate::config::EngineConfig::default().stall_timeout).await
    }

    /// A client whose downloads give up after `stall` without a byte.
    pub async fn connect_with(ep: &Endpoint, health: Option<&health::Health>, stall: Duration) -> S3 {
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).region(Region::new(ep.region.clone()));
        if let Some(profile) = &ep.profile {
            loader = loader.profile_name(profile);
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(ep.path_style)
            .endpoint_resolver(endpoint::KeylessResolver::default())
            // Many S3-compatible servers reject the SDK's default CRC32 checksum headers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            // Downloads (source bodies) that stop moving fail after the stall window. Uploads are
            // watched by crr itself (`engine::progress::watch`): the SDK would count a pause
            // made by the bandwidth limit as a stall, and cannot see a server that stops reading.
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .upload_enabled(false)
                    .download_enabled(true)
                    .grace_period(stall)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            );
        if let Some(url) = &ep.url {
            builder = builder.endpoint_url(url);
        }
        if let Some(w) = plaintext_warning(ep) {
            tracing::warn!("{w}");
        }
        if let Some(h) = health {
            builder = builder.interceptor(h.observer(&ep.name));
        }
        let config = builder.build();
        let streaming = config
            .to_builder()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .disable_read_timeout()
                    .build(),
            )
            .build();
        S3 {
            endpoint: ep.name.clone(),
            region: ep.region.clone(),
            url: ep.url.clone(),
            client: Client::from_conf(config),
            streaming: Client::from_conf(streaming),
            tag_counts: Default::default(),
            etag_is_md5: Default::default(),
            body_checks: Default::default(),
            list_page: std::sync::Arc::new(std::sync::atomic::AtomicI32::new(LIST_PAGE)),
        }
    }

    /// Succeeds when the bucket exists and these credentials may use it.
    pub async fn head_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        // The first request preflight makes: its error names the url too, which is what a
        // connection or TLS failure is about.
        let target = match &self.url {
            Some(url) => format!("{}/{bucket} ({url})", self.endpoint),
            None => format!("{}/{bucket}", self.endpoint),
        };
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_error("HeadBucket", &target, e))
    }

    /// The names of the buckets these credentials can list (at most `limit`).
    pub async fn list_buckets(&self, limit: usize) -> Result<Vec<String>, S3Error> {
        let out = self
            .client
            .list_buckets()
            .send()
            .await
            .map_err(|e| s3_error("ListBuckets", &self.endpoint, e))?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_string))
            .take(limit)
            .collect())
    }

    /// Turns versioning on for the bucket (S3 can suspend it later, never turn it off).
    pub async fn enable_versioning(&self, bucket: &str) -> Result<(), S3Error> {
        use aws_sdk_s3::types::VersioningConfiguration;
        self.client
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_error("PutBucketVersioning", &format!("{}/{bucket}", self.endpoint), e))
    }

    /// The bucket's versioning status: "Enabled", "Suspended", or "" when never enabled.
    pub async fn versioning(&self, bucket: &str) -> Result<String, S3Error> {
        let out = match self.client.get_bucket_versioning().bucket(bucket).send().await {
            Ok(out) => out,
            Err(e) => {
                // Some servers (moto 5.2 among them) answer 200 with a root element the SDK does
                // not expect; the status inside is still right, so read it from the raw body.
                if let Some(raw) = e.raw_response().filter(|r| r.status().as_u16() == 200)
                    && let Some(body) = raw.body().bytes()
                {
                    let text = String::from_utf8_lossy(body);
                    return Ok(list::xml_element(&text, "Status").unwrap_or_default());
                }
                return Err(s3_error(
                    "GetBucketVersioning",
                    &format!("{}/{bucket}", self.endpoint),
                    e,
                ));
            }
        };
        Ok(match out.status() {
            Some(BucketVersioningStatus::Enabled) => "Enabled".into(),
            Some(s) => s.as_str().to_string(),
            None => String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint {
            name: "gz".into(),
            region: "ap-guangzhou".into(),
            url: Some(url.into()),
            path_style: true,
            profile: None,
            line: 1,
        }
    }

    #[test]
    fn plain_http_beyond_loopback_draws_a_warning() {
        for quiet in [
            "http://127.0.0.1:9000",
            "http://127.8.9.10",
            "HTTP://localhost:9000/",
            "http://[::1]:9000",
            "http://[::ffff:127.0.0.1]:80",
            "http://user@localhost.:9000",
            "https://10.0.0.5:9000",
            "https://s3.example.com",
        ] {
            assert_eq!(plaintext_warning(&endpoint(quiet)), None, "{quiet}");
        }
        for loud in [
            "http://10.0.0.5:9000",
            "http://s3.example.com",
            "http://[2001:db8::1]:9000/",
            "http://127.0.0.1.example.com",
            "http://localhost@10.0.0.5",
        ] {
            let w = plaintext_warning(&endpoint(loud)).unwrap_or_else(|| panic!("no warning for {loud}"));
            assert!(
                w.contains("\"gz\"") && w.contains(loud) && w.contains("https://"),
                "{w}"
            );
        }
        let mut default_url = endpoint("");
        default_url.url = None;
        assert_eq!(plaintext_warning(&default_url), None);
    }
}
