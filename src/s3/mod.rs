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

pub mod health;
pub mod tag_count;

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
                    return Ok(xml_element(&text, "Status").unwrap_or_default());
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

    /// The page size to ask for now.
    fn page_size(&self) -> i32 {
        self.list_page.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a listing that asked for `asked` entries was refused for the page size (a
    /// server that takes no more than 1,000): then the standard size is used from now on, and
    /// the caller asks again.
    fn refused_page_size(&self, asked: i32, e: &S3Error) -> bool {
        if asked <= LIST_PAGE_STANDARD || e.status != Some(400) {
            return false;
        }
        self.list_page
            .store(LIST_PAGE_STANDARD, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(endpoint = %self.endpoint, "listings ask for {LIST_PAGE_STANDARD} entries a page: {asked} was refused ({})", e.message);
        true
    }

    /// One page of the keys of current objects (ListObjectsV2) under `prefix`: after
    /// `start_after` on the first request, then from `token`. Returns the keys and the token
    /// of the next page, if any.
    pub async fn list_keys_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), S3Error> {
        let out = loop {
            let size = self.page_size();
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .max_keys(size)
                .encoding_type(EncodingType::Url);
            if !prefix.is_empty() {
                req = req.prefix(prefix);
            }
            match &token {
                Some(t) => req = req.continuation_token(t),
                None => req = req.set_start_after(start_after.map(str::to_string)),
            }
            match req.send().await {
                Ok(out) => break out,
                Err(e) => {
                    let e = s3_error("ListObjectsV2", &format!("{}/{bucket}", self.endpoint), e);
                    if !self.refused_page_size(size, &e) {
                        return Err(e);
                    }
                }
            }
        };
        let decode = KeyDecoder::new(out.encoding_type(), "ListObjectsV2", &self.endpoint, bucket);
        let keys = out
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(|k| decode.key(k))
            .collect::<Result<_, _>>()?;
        let next = match (out.is_truncated().unwrap_or(false), out.next_continuation_token()) {
            (true, Some(t)) => Some(t.to_string()),
            (true, None) => {
                return Err(S3Error::new(format!(
                    "ListObjectsV2 {}/{bucket}: truncated listing without a continuation token",
                    self.endpoint
                )));
            }
            (false, _) => None,
        };
        Ok((keys, next))
    }

    /// One page of ListObjectVersions under `prefix`, from the given markers.
    pub async fn list_versions_page(
        &self,
        bucket: &str,
        prefix: &str,
        marker: Option<(String, String)>,
    ) -> Result<VersionPage, S3Error> {
        let out = loop {
            let size = self.page_size();
            let mut req = self
                .client
                .list_object_versions()
                .bucket(bucket)
                .max_keys(size)
                .encoding_type(EncodingType::Url);
            if !prefix.is_empty() {
                req = req.prefix(prefix);
            }
            if let Some((key, version)) = &marker {
                req = req.key_marker(key);
                if !version.is_empty() {
                    req = req.version_id_marker(version);
                }
            }
            match req.send().await {
                Ok(out) => break out,
                Err(e) => {
                    // A server that ignores encoding-type (moto 5.2 for this listing) writes a
                    // key with a control character raw into the XML, which the SDK refuses as a
                    // whole: one such key would stop the rule. The page is read from the raw
                    // body instead.
                    if let Some(raw) = e.raw_response().filter(|r| r.status().as_u16() == 200)
                        && let Some(body) = raw.body().bytes()
                        && let Some(page) = raw_versions_page(&String::from_utf8_lossy(body), &self.endpoint, bucket)
                    {
                        return page;
                    }
                    let e = s3_error("ListObjectVersions", &format!("{}/{bucket}", self.endpoint), e);
                    if !self.refused_page_size(size, &e) {
                        return Err(e);
                    }
                }
            }
        };
        let decode = KeyDecoder::new(out.encoding_type(), "ListObjectVersions", &self.endpoint, bucket);
        let mut entries = Vec::new();
        for (i, v) in out.versions().iter().enumerate() {
            entries.push(VersionEntry {
                key: decode.key(v.key().unwrap_or_default())?,
                version_id: v.version_id().unwrap_or("null").to_string(),
                is_latest: v.is_latest().unwrap_or(false),
                last_modified: v.last_modified().map(|t| t.secs()).unwrap_or(0),
                size: v.size().unwrap_or(0).max(0) as u64,
                etag: v.e_tag().unwrap_or_default().to_string(),
                delete_marker: false,
                list_index: i,
            });
        }
        for (i, d) in out.delete_markers().iter().enumerate() {
            entries.push(VersionEntry {
                key: decode.key(d.key().unwrap_or_default())?,
                version_id: d.version_id().unwrap_or("null").to_string(),
                is_latest: d.is_latest().unwrap_or(false),
                last_modified: d.last_modified().map(|t| t.secs()).unwrap_or(0),
                size: 0,
                etag: String::new(),
                delete_marker: true,
                list_index: i,
            });
        }
        let next = if out.is_truncated().unwrap_or(false) {
            match out.next_key_marker() {
                Some(k) => Some((
                    decode.key(k)?,
                    out.next_version_id_marker().unwrap_or_default().to_string(),
                )),
                None => {
                    return Err(S3Error::new(format!(
                        "ListObjectVersions {}/{bucket}: truncated listing without a next key marker",
                        self.endpoint
                    )));
                }
            }
        } else {
            None
        };
        Ok(VersionPage { entries, next })
    }
}

/// Turns the keys of a listing back into the bytes they name. Listings ask for
/// `encoding-type=url`: XML 1.0 cannot carry every character a key may hold (a key with U+0001
/// would make the whole page unreadable). A server that honours it says so in the answer, and
/// only then are keys decoded, as S3 clients do: `%XX` is a byte and `+` a space (a plus sign
/// itself arrives as `%2B`).
struct KeyDecoder<'a> {
    encoded: bool,
    operation: &'static str,
    endpoint: &'a str,
    bucket: &'a str,
}

impl<'a> KeyDecoder<'a> {
    fn new(encoding: Option<&EncodingType>, operation: &'static str, endpoint: &'a str, bucket: &'a str) -> Self {
        KeyDecoder {
            encoded: encoding == Some(&EncodingType::Url),
            operation,
            endpoint,
            bucket,
        }
    }

    fn key(&self, listed: &str) -> Result<String, S3Error> {
        if !self.encoded {
            return Ok(listed.to_string());
        }
        decode_listed_key(listed).ok_or_else(|| {
            S3Error::new(format!(
                "{} {}/{}: the listed key {listed:?} is not valid URL encoding of UTF-8",
                self.operation, self.endpoint, self.bucket
            ))
        })
    }
}

/// `%XX` is a byte, `+` a space; `None` if the bytes are not UTF-8.
pub fn decode_listed_key(listed: &str) -> Option<String> {
    let spaced = listed.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|k| k.into_owned())
}

/// A ListObjectVersions page read from its XML text without an XML parser: each `<Version>` and
/// `<DeleteMarker>` element in order, its fields unescaped, any character allowed (XML 1.0 forbids
/// most control characters, S3 keys do not). `None` if the text is not such a page.
fn raw_versions_page(xml: &str, endpoint: &str, bucket: &str) -> Option<Result<VersionPage, S3Error>> {
    if !xml.contains("<ListVersionsResult") {
        return None;
    }
    let encoding = (xml_element(xml, "EncodingType").as_deref() == Some("url")).then_some(EncodingType::Url);
    let decode = KeyDecoder::new(encoding.as_ref(), "ListObjectVersions", endpoint, bucket);
    let field = |el: &str, name: &str| raw_element(el, name).map(|t| xml_unescape(&t));
    let mut entries = Vec::new();
    for (tag, delete_marker) in [("Version", false), ("DeleteMarker", true)] {
        for (i, el) in raw_elements(xml, tag).into_iter().enumerate() {
            let key = match decode.key(&field(el, "Key")?) {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            let last_modified = field(el, "LastModified")
                .and_then(|t| {
                    aws_sdk_s3::primitives::DateTime::from_str(&t, aws_sdk_s3::primitives::DateTimeFormat::DateTime)
                        .ok()
                })
                .map(|t| t.secs())
                .unwrap_or(0);
            entries.push(VersionEntry {
                key,
                version_id: field(el, "VersionId").unwrap_or_else(|| "null".into()),
                is_latest: field(el, "IsLatest").as_deref() == Some("true"),
                last_modified,
                size: field(el, "Size").and_then(|t| t.parse().ok()).unwrap_or(0),
                etag: field(el, "ETag").unwrap_or_default(),
                delete_marker,
                list_index: i,
            });
        }
    }
    // The page's own fields come after its entries are cut out, so a key cannot fake them.
    let mut rest = xml.to_string();
    for tag in ["Version", "DeleteMarker"] {
        for el in raw_elements(xml, tag) {
            rest = rest.replacen(el, "", 1);
        }
    }
    let next = if field(&rest, "IsTruncated").as_deref() == Some("true") {
        let Some(k) = field(&rest, "NextKeyMarker") else {
            return Some(Err(S3Error::new(format!(
                "ListObjectVersions {endpoint}/{bucket}: truncated listing without a next key marker"
            ))));
        };
        let key = match decode.key(&k) {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        Some((key, field(&rest, "NextVersionIdMarker").unwrap_or_default()))
    } else {
        None
    };
    Some(Ok(VersionPage { entries, next }))
}

/// Every `<tag>…</tag>` element of `xml`, whole, in order.
fn raw_elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = xml[from..].find(&open).map(|s| s + from) {
        let Some(end) = xml[start..].find(&close).map(|e| e + start + close.len()) else {
            break;
        };
        out.push(&xml[start..end]);
        from = end;
    }
    out
}

/// The raw (still escaped) text of the first `<name>` element, untrimmed: a key's spaces count.
fn raw_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

/// XML text with its five entities and numeric character references replaced; a reference to
/// a character XML forbids is taken as the character (it is what a key holds).
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let entity = after.find(';').map(|semi| (&after[..semi], semi));
        let decoded = entity.and_then(|(name, semi)| {
            let c = match name {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => name
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| name.strip_prefix('#').map(|d| d.parse::<u32>()))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            }?;
            Some((c, semi))
        });
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of the first `<name>` element in a small XML document.
fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim().to_string())
}

/// One version or delete marker from a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    /// Seconds since the epoch (many servers store whole seconds).
    pub last_modified: i64,
    pub size: u64,
    pub etag: String,
    pub delete_marker: bool,
    /// Position in its own list (versions or delete markers) of the page, newest first per key.
    pub list_index: usize,
}

pub struct VersionPage {
    pub entries: Vec<VersionEntry>,
    pub next: Option<(String, String)>,
}

/// Puts the versions and delete markers of one key in the order they were written.
///
/// Timestamps alone cannot order them: a put and a delete in the same second share a
/// timestamp. Each list is newest first, and the one entry marked latest is the newest.
pub fn chronological(entries: &mut [VersionEntry]) {
    entries.sort_by(|a, b| {
        a.last_modified
            .cmp(&b.last_modified)
            .then(a.is_latest.cmp(&b.is_latest))
            .then_with(|| {
                if a.delete_marker == b.delete_marker {
                    // Newest first within a list: a higher index is older.
                    b.list_index.cmp(&a.list_index)
                } else {
                    // Unknowable from the listing; versions first keeps the common
                    // "put, then delete" order within one second.
                    a.delete_marker.cmp(&b.delete_marker)
                }
            })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(v: &str, t: i64, latest: bool, dm: bool, idx: usize) -> VersionEntry {
        VersionEntry {
            key: "k".into(),
            version_id: v.into(),
            is_latest: latest,
            last_modified: t,
            size: 0,
            etag: String::new(),
            delete_marker: dm,
            list_index: idx,
        }
    }

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

    #[test]
    fn a_listing_the_sdk_cannot_read_is_read_from_its_text() {
        let xml = "<?xml version=\"1.0\"?><ListVersionsResult><Name>b</Name><IsTruncated>true</IsTruncated>\
            <Version><Key>ctl/\u{1}soh &amp; &lt;x&gt;</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest>\
            <LastModified>2026-11-24T05:42:24.000Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>7</Size></Version>\
            <Version><Key> sp </Key><VersionId>v1</VersionId><IsLatest>true</IsLatest><Size>0</Size></Version>\
            <DeleteMarker><Key>gone&#x1f;</Key><VersionId>d1</VersionId><IsLatest>true</IsLatest></DeleteMarker>\
            <NextKeyMarker>ctl/\u{2}</NextKeyMarker><NextVersionIdMarker>v9</NextVersionIdMarker></ListVersionsResult>";
        let page = raw_versions_page(xml, "gz", "b").unwrap().unwrap();
        let keys: Vec<(&str, &str, bool)> = page
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.version_id.as_str(), e.delete_marker))
            .collect();
        assert_eq!(
            keys,
            [
                ("ctl/\u{1}soh & <x>", "v2", false),
                (" sp ", "v1", false),
                ("gone\u{1f}", "d1", true)
            ]
        );
        assert_eq!(page.entries[0].etag, "\"abc\"");
        assert_eq!(page.entries[0].size, 7);
        assert_eq!(page.entries[0].last_modified, 1_795_498_944);
        assert_eq!(page.next, Some(("ctl/\u{2}".to_string(), "v9".to_string())));
        assert!(raw_versions_page("<Error/>", "gz", "b").is_none());
    }

    #[test]
    fn listed_keys_decode_to_their_bytes() {
        assert_eq!(decode_listed_key("a+b%2Bc").as_deref(), Some("a b+c"));
        assert_eq!(decode_listed_key("ctl%01%7F%0A").as_deref(), Some("ctl\u{1}\u{7f}\n"));
        assert_eq!(decode_listed_key("%2525").as_deref(), Some("%25"));
        assert_eq!(
            decode_listed_key("caf%C3%A9/cafe%CC%81").as_deref(),
            Some("caf\u{e9}/cafe\u{301}")
        );
        assert_eq!(decode_listed_key("%FF"), None);
    }

    #[test]
    fn same_second_put_then_delete() {
        // put v1, delete (d1), all in one second: the marker is latest.
        let mut list = vec![e("v1", 10, false, false, 0), e("d1", 10, true, true, 0)];
        chronological(&mut list);
        assert_eq!(
            list.iter().map(|x| x.version_id.as_str()).collect::<Vec<_>>(),
            ["v1", "d1"]
        );
    }

    #[test]
    fn same_second_delete_then_put() {
        let mut list = vec![
            e("v2", 10, true, false, 0),
            e("v1", 10, false, false, 1),
            e("d1", 10, false, true, 0),
        ];
        chronological(&mut list);
        assert_eq!(
            list.iter().map(|x| x.version_id.as_str()).collect::<Vec<_>>(),
            ["v1", "d1", "v2"]
        );
    }
}
