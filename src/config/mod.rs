//! The configuration file: its TOML model, where it is found, the checks that need no network
//! (with file, line and column in every message), and writing rule changes back.

mod edit;
pub mod units;
mod validate;

pub use edit::{RuleDraft, set_rule_enabled, with_rule_enabled, with_rule_saved, without_rule, write_atomically};
pub use validate::{MAX_PREFIXES, overlaps};

/// The most concurrent object copies `engine.workers` may ask for: each is a task with its
/// own buffers, and a typo of a few extra digits must not start billions of them.
pub const MAX_WORKERS: usize = 4096;
/// The most parts of one object `engine.part_concurrency` may copy at once.
pub const MAX_PART_CONCURRENCY: usize = 256;
/// The most attempts `engine.max_attempts` may give a task.
pub const MAX_ATTEMPTS: u32 = 1000;
/// The longest `engine.scan_interval` and `engine.stall_timeout`: a day.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use units::{Dur, Size};

/// A problem in the configuration, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // About the file as a whole (it cannot be read): no position to give.
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {} (line {}, column {})",
            self.file.display(),
            self.line,
            self.column,
            self.message,
            self.line,
            self.column
        )
    }
}

/// All the problems found in one file, printed one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operations {
    /// Add, change and delete: delete markers are replicated.
    All,
    /// Add and change only.
    Put,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    Always,
    IfDifferent,
    Never,
}

impl Overwrite {
    /// The config's (and the state database's) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Overwrite::Always => "always",
            Overwrite::IfDifferent => "if-different",
            Overwrite::Never => "never",
        }
    }

    pub fn parse(text: &str) -> Option<Overwrite> {
        [Overwrite::Always, Overwrite::IfDifferent, Overwrite::Never]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketRef {
    pub endpoint: String,
    pub bucket: String,
}

impl fmt::Display for BucketRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.endpoint, self.bucket)
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub workers: usize,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub part_concurrency: usize,
    pub bandwidth_limit: u64,
    pub scan_interval: Duration,
    pub max_attempts: u32,
    /// A transfer that moves no bytes in either direction for this long has stalled and is
    /// abandoned (pauses made by the bandwidth limit do not count).
    pub stall_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 16,
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            part_concurrency: 4,
            bandwidth_limit: 0,
            scan_interval: Duration::from_secs(5),
            max_attempts: 10,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub region: String,
    pub url: Option<String>,
    pub path_style: bool,
    pub profile: Option<String>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub source: BucketRef,
    pub destination: BucketRef,
    /// Empty means the whole bucket.
    pub prefixes: Vec<String>,
    pub operations: Operations,
    pub storage_class: Option<String>,
    pub historical: bool,
    pub overwrite: Overwrite,
    pub enabled: bool,
    pub bandwidth_limit: u64,
    /// Where the rule's table starts in the file, for messages.
    pub line: usize,
}

impl Rule {
    /// The prefixes to list: one empty prefix for a whole-bucket rule.
    pub fn scan_prefixes(&self) -> Vec<String> {
        if self.prefixes.is_empty() {
            vec![String::new()]
        } else {
            self.prefixes.clone()
        }
    }

    pub fn in_scope(&self, key: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// What identifies the data this rule replicates; a change means a new enable point.
    pub fn scope_signature(&self) -> String {
        format!("{}>{}|{}", self.source, self.destination, self.prefixes.join("\u{1f}"))
    }

    pub fn scope_text(&self) -> String {
        if self.prefixes.is_empty() {
            "whole bucket".into()
        } else {
            self.prefixes.join(", ")
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub text: String,
    pub engine: EngineConfig,
    pub endpoints: Vec<Endpoint>,
    pub rules: Vec<Rule>,
    pub theme: Option<String>,
}

impl Config {
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

// ---- raw TOML model -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    engine: Option<RawEngine>,
    #[serde(default)]
    endpoint: Vec<Spanned<RawEndpoint>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    theme: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    workers: Option<Spanned<i64>>,
    multipart_threshold: Option<Spanned<Size>>,
    part_size: Option<Spanned<Size>>,
    part_concurrency: Option<Spanned<i64>>,
    bandwidth_limit: Option<Size>,
    scan_interval: Option<Spanned<Dur>>,
    max_attempts: Option<Spanned<i64>>,
    stall_timeout: Option<Spanned<Dur>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: Spanned<String>,
    region: Spanned<String>,
    url: Option<Spanned<String>>,
    path_style: Option<bool>,
    profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) id: Spanned<String>,
    pub(crate) source: Spanned<String>,
    pub(crate) destination: Spanned<String>,
    #[serde(default)]
    pub(crate) prefixes: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(crate) operations: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) storage_class: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) historical: Option<bool>,
    #[serde(default)]
    pub(crate) overwrite: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) enabled: Option<bool>,
    #[serde(default)]
    pub(crate) bandwidth_limit: Option<Size>,
}

/// Where the config file is: `--config`, else `$CRR_CONFIG` (handled by clap), else
/// `$XDG_CONFIG_HOME/crr/config.toml`, else `~/.config/crr/config.toml`.
pub fn default_config_path() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("crr").join("config.toml");
    }
    home().join(".config").join("crr").join("config.toml")
}

/// `--state`, else `$CRR_STATE`, else `$XDG_STATE_HOME/crr`, else `~/.local/state/crr`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("crr");
    }
    home().join(".local").join("state").join("crr")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Converts a byte offset in `text` into a 1-based line and column.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|s| s.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

pub(crate) struct Locator<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Locator<'_> {
    pub fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// The text of a file crr reads (config, keymap, theme), or, when its bytes are not UTF-8, an
/// error at the line and column of the first byte that is not. `what` names the file's role.
pub fn text_of(file: &Path, bytes: Vec<u8>, what: &str) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // Everything before the bad byte is valid UTF-8.
        let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let (line, column) = line_col(before, valid);
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            message: format!(
                "the {what} is not valid UTF-8 (byte 0x{:02x} here): save it as UTF-8",
                bytes[valid]
            ),
        }
    })
}

/// Reads and checks the config file. The errors carry file, line and column.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes = std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "create it (see the README for an example), or point --config or CRR_CONFIG at it"
        } else {
            "check its permissions"
        };
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}; {hint}"),
        }])
    })?;
    let text = text_of(path, bytes, "config file").map_err(|e| ConfigErrors(vec![e]))?;
    parse(path, &text)
}

/// Parses config text (as if read from `path`) and runs every check that needs no network.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let loc = Locator { file: path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().to_string();
        let msg = explain_toml_message(&msg);
        ConfigErrors(vec![loc.at(span, msg)])
    })?;
    let mut errors = Vec::new();
    let engine = build_engine(raw.engine, &loc, &mut errors);
    let endpoints: Vec<Endpoint> = raw
        .endpoint
        .iter()
        .map(|e| {
            let r = e.get_ref();
            let url = r.url.as_ref().map(|u| u.get_ref().trim().to_string());
            if let Some(u) = &r.url {
                let t = u.get_ref().trim();
                if !(t.starts_with("http://") || t.starts_with("https://")) {
                    errors.push(loc.at(
                        u.span(),
                        format!("endpoint url {t:?} must start with http:// or https://"),
                    ));
                }
            }
            Endpoint {
                name: r.name.get_ref().clone(),
                region: r.region.get_ref().clone(),
                path_style: r.path_style.unwrap_or(url.is_some()),
                url,
                profile: r.profile.clone(),
                line: line_col(text, e.span().start).0,
            }
        })
        .collect();
    let rules: Vec<Rule> = raw.rule.iter().map(|r| build_rule(r, &loc, &mut errors)).collect();
    let config = Config {
        path: path.to_path_buf(),
        text: text.to_string(),
        engine,
        endpoints,
        rules,
        theme: raw.theme,
    };
    validate::check_static(&config, &raw.endpoint, &raw.rule, &loc, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn explain_toml_message(msg: &str) -> String {
    if msg.starts_with("unknown field") {
        format!("{msg}; unknown keys are not allowed")
    } else {
        msg.to_string()
    }
}

fn positive(
    v: Option<Spanned<i64>>,
    default: i64,
    max: i64,
    name: &str,
    loc: &Locator,
    errors: &mut Vec<ConfigError>,
) -> i64 {
    match v {
        Some(s) if *s.get_ref() < 1 || *s.get_ref() > max => {
            errors.push(loc.at(
                s.span(),
                format!(
                    "engine.{name} is {}: it must be at least 1 and at most {max}",
                    s.get_ref()
                ),
            ));
            default
        }
        Some(s) => *s.get_ref(),
        None => default,
    }
}

/// A duration from `min` to [`MAX_INTERVAL`], else an error at its place and the default.
fn interval(
    v: Option<Spanned<Dur>>,
    default: Duration,
    min: Duration,
    name: &str,
    hint: &str,
    loc: &Locator,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    match v {
        Some(s) if s.get_ref().0 < min || s.get_ref().0 > MAX_INTERVAL => {
            errors.push(loc.at(
                s.span(),
                format!(
                    "engine.{name} must be at least {} and at most {}{hint}",
                    humantime::format_duration(min),
                    humantime::format_duration(MAX_INTERVAL)
                ),
            ));
            default
        }
        Some(s) => s.get_ref().0,
        None => default,
    }
}

fn build_engine(raw: Option<RawEngine>, loc: &Locator, errors: &mut Vec<ConfigError>) -> EngineConfig {
    let d = EngineConfig::default();
    let Some(raw) = raw else { return d };
    let workers = positive(
        raw.workers,
        d.workers as i64,
        MAX_WORKERS as i64,
        "workers",
        loc,
        errors,
    ) as usize;
    let part_concurrency = positive(
        raw.part_concurrency,
        d.part_concurrency as i64,
        MAX_PART_CONCURRENCY as i64,
        "part_concurrency",
        loc,
        errors,
    ) as usize;
    let max_attempts = positive(
        raw.max_attempts,
        d.max_attempts as i64,
        MAX_ATTEMPTS as i64,
        "max_attempts",
        loc,
        errors,
    ) as u32;
    let part_size = match raw.part_size {
        Some(s) if s.get_ref().0 < 5 << 20 || s.get_ref().0 > 5 << 30 => {
            errors.push(loc.at(
                s.span(),
                "engine.part_size must be between 5MiB and 5GiB (the S3 limits for one part)",
            ));
            d.part_size
        }
        Some(s) => s.get_ref().0,
        None => d.part_size,
    };
    let multipart_threshold = match raw.multipart_threshold {
        Some(s) if s.get_ref().0 > 5 << 30 => {
            errors.push(loc.at(
                s.span(),
                "engine.multipart_threshold must be at most 5GiB (the S3 limit for a single PUT)",
            ));
            d.multipart_threshold
        }
        Some(s) => s.get_ref().0,
        None => d.multipart_threshold,
    };
    let scan_interval = interval(
        raw.scan_interval,
        d.scan_interval,
        Duration::from_millis(100),
        "scan_interval",
        "",
        loc,
        errors,
    );
    let stall_timeout = interval(
        raw.stall_timeout,
        d.stall_timeout,
        Duration::from_secs(1),
        "stall_timeout",
        ", e.g. \"30s\": how long a transfer may move no bytes before it is abandoned",
        loc,
        errors,
    );
    EngineConfig {
        workers,
        multipart_threshold,
        part_size,
        part_concurrency,
        bandwidth_limit: raw.bandwidth_limit.map(|s| s.0).unwrap_or(0),
        scan_interval,
        max_attempts,
        stall_timeout,
    }
}

fn parse_ref(s: &Spanned<String>, what: &str, loc: &Locator, errors: &mut Vec<ConfigError>) -> BucketRef {
    let text = s.get_ref().trim();
    match text.split_once('/') {
        Some((ep, bucket)) if !ep.is_empty() && !bucket.is_empty() && !bucket.contains('/') => {
            if let Err(why) = validate::bucket_name_problem(bucket) {
                errors.push(loc.at(s.span(), format!("{what} {text:?}: {why}")));
            }
            BucketRef {
                endpoint: ep.to_string(),
                bucket: bucket.to_string(),
            }
        }
        _ => {
            errors.push(loc.at(
                s.span(),
                format!("{what} {text:?} must be ENDPOINT/BUCKET, e.g. \"gz/photos\""),
            ));
            BucketRef {
                endpoint: String::new(),
                bucket: String::new(),
            }
        }
    }
}

fn build_rule(spanned: &Spanned<RawRule>, loc: &Locator, errors: &mut Vec<ConfigError>) -> Rule {
    let r = spanned.get_ref();
    let operations = match r.operations.as_ref() {
        None => Operations::All,
        Some(s) => match s.get_ref().as_str() {
            "all" => Operations::All,
            "put" => Operations::Put,
            other => {
                errors.push(loc.at(
                    s.span(),
                    format!(
                        "rule {:?}: operations {other:?} is not valid: use \"all\" or \"put\"",
                        r.id.get_ref()
                    ),
                ));
                Operations::All
            }
        },
    };
    let overwrite = match r.overwrite.as_ref() {
        None => Overwrite::IfDifferent,
        Some(s) => match Overwrite::parse(s.get_ref()) {
            Some(o) => o,
            None => {
                let other = s.get_ref();
                errors.push(loc.at(
                    s.span(),
                    format!(
                        "rule {:?}: overwrite {other:?} is not valid: use \"always\", \"if-different\" or \"never\"",
                        r.id.get_ref()
                    ),
                ));
                Overwrite::IfDifferent
            }
        },
    };
    let storage_class = r.storage_class.as_ref().and_then(|s| {
        let v = s.get_ref().trim();
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            errors.push(loc.at(
                s.span(),
                format!(
                    "rule {:?}: storage_class {v:?} is not a storage class name: use e.g. \"STANDARD\" or \"STANDARD_IA\", or omit it to keep the source's",
                    r.id.get_ref()
                ),
            ));
            None
        } else {
            Some(v.to_string())
        }
    });
    Rule {
        id: r.id.get_ref().clone(),
        source: parse_ref(&r.source, &format!("rule {:?}: source", r.id.get_ref()), loc, errors),
        destination: parse_ref(
            &r.destination,
            &format!("rule {:?}: destination", r.id.get_ref()),
            loc,
            errors,
        ),
        prefixes: r
            .prefixes
            .as_ref()
            .map(|p| p.get_ref().iter().map(|s| s.get_ref().clone()).collect())
            .unwrap_or_default(),
        operations,
        storage_class,
        historical: r.historical.unwrap_or(false),
        overwrite,
        enabled: r.enabled.unwrap_or(true),
        bandwidth_limit: r.bandwidth_limit.map(|s| s.0).unwrap_or(0),
        line: line_col(loc.text, spanned.span().start).0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigErrors> {
        parse(Path::new("c.toml"), text)
    }

    const EPS: &str = r#"
[[endpoint]]
name = "gz"
region = "ap-guangzhou"
url = "http://127.0.0.1:1"

[[endpoint]]
name = "sh"
region = "ap-shanghai"
url = "http://127.0.0.1:2"
"#;

    #[test]
    fn full_example_parses() {
        let text = format!(
            "[engine]\nworkers = 4\npart_size = \"8MiB\"\nscan_interval = \"2s\"\n{EPS}\n[[rule]]\nid = \"r1\"\nsource = \"gz/aaa\"\ndestination = \"sh/bbb\"\nprefixes = [\"logs/\"]\noperations = \"put\"\n"
        );
        let c = p(&text).unwrap();
        assert_eq!(c.engine.workers, 4);
        assert_eq!(c.engine.part_size, 8 << 20);
        assert_eq!(c.engine.scan_interval, Duration::from_secs(2));
        assert_eq!(c.rules[0].operations, Operations::Put);
        assert!(c.rules[0].enabled);
        assert!(c.endpoints[0].path_style);
    }

    #[test]
    fn unknown_key_has_location() {
        let e = p("[engine]\nworkers = 4\nwrokers = 5\n").unwrap_err();
        assert_eq!(e.0[0].line, 3);
        assert!(e.to_string().contains("wrokers"), "{e}");
    }

    #[test]
    fn bad_size_has_location() {
        let e = p("[engine]\n\npart_size = \"lots\"\n").unwrap_err();
        assert_eq!(e.0[0].line, 3);
        assert!(e.to_string().contains("16MiB"), "{e}");
    }

    #[test]
    fn stall_timeout_is_a_duration_of_at_least_a_second() {
        assert_eq!(p("").unwrap().engine.stall_timeout, Duration::from_secs(30));
        let c = p("[engine]\nstall_timeout = \"3s\"\n").unwrap();
        assert_eq!(c.engine.stall_timeout, Duration::from_secs(3));
        let e = p("[engine]\nworkers = 2\nstall_timeout = \"10ms\"\n").unwrap_err();
        assert_eq!(e.0[0].line, 3);
        assert!(e.to_string().contains("stall_timeout must be at least 1s"), "{e}");
        let e = p("[engine]\n\nstall_timeout = \"soon\"\n").unwrap_err();
        assert_eq!(e.0[0].line, 3);
        assert!(e.to_string().contains("not a duration"), "{e}");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
