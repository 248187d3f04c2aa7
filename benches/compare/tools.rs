//! The tools compared, each run as a child process from a fresh working directory into a fresh
//! destination bucket: crr (`run --once` on a rule with `historical = true`), rclone, s3sync
//! (opt-in: it is built from crates.io), the AWS CLI (two hops through a local directory) and the
//! ceiling (this program re-executed).

use crate::ceiling;
use crate::common::{endpoint_toml, set_crr_env, toml_str};
use crate::data::Obj;
use crate::measure::{self, Cost};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Concurrency every tool is given: crr's workers, rclone's transfers and checkers, the AWS
/// CLI's max_concurrent_requests, the ceiling's requests in flight.
pub const CONCURRENCY: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    Crr,
    Rclone,
    S3sync,
    Aws,
    /// GET then PUT of each object with crr's clients.
    Ceiling,
    /// GETs only.
    CeilingGet,
    /// PUTs only.
    CeilingPut,
}

impl Tool {
    pub const ALL: [Tool; 7] = [
        Tool::Crr,
        Tool::Rclone,
        Tool::S3sync,
        Tool::Aws,
        Tool::Ceiling,
        Tool::CeilingGet,
        Tool::CeilingPut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Crr => "crr",
            Tool::Rclone => "rclone",
            Tool::S3sync => "s3sync",
            Tool::Aws => "aws",
            Tool::Ceiling => "ceiling",
            Tool::CeilingGet => "ceiling-get",
            Tool::CeilingPut => "ceiling-put",
        }
    }

    pub fn from_name(s: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Does a run copy the source to the destination (and so get verified)?
    pub fn copies(self) -> bool {
        !matches!(self, Tool::CeilingGet | Tool::CeilingPut)
    }
}

/// One side of a copy: a server's URL and region, and a bucket.
#[derive(Clone, Debug)]
pub struct Side {
    pub url: String,
    pub region: String,
    pub bucket: String,
}

impl Side {
    fn host_port(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

/// Where the tools are and how long one run may take.
#[derive(Clone, Debug)]
pub struct Paths {
    pub crr: PathBuf,
    pub rclone: Option<PathBuf>,
    pub s3sync: Option<PathBuf>,
    pub aws: Option<PathBuf>,
    pub timeout: Duration,
}

/// The config crr runs with: `[engine] workers`, endpoints `gz` (source) and `sh`
/// (destination), and `rules` (TOML text).
pub fn crr_config(src: &Side, dst: &Side, engine_extra: &str, rules: &str) -> String {
    format!(
        "[engine]\nworkers = {CONCURRENCY}\n{engine_extra}\n{}\n{}\n{rules}",
        endpoint_toml("gz", &src.region, &src.url),
        endpoint_toml("sh", &dst.region, &dst.url)
    )
}

/// A `[[rule]]` from `gz/SRC` to `sh/DST`.
pub fn crr_rule(id: &str, src: &Side, dst: &Side, historical: bool) -> String {
    format!(
        "[[rule]]\nid = {}\nsource = {}\ndestination = {}\nhistorical = {historical}\nenabled = true\n",
        toml_str(id),
        toml_str(&format!("gz/{}", src.bucket)),
        toml_str(&format!("sh/{}", dst.bucket))
    )
}

/// `crr --config DIR/crr.toml --state DIR/state ARGS` with test credentials.
pub fn crr_command(paths: &Paths, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(&paths.crr);
    set_crr_env(&mut cmd, dir);
    cmd.arg("--config")
        .arg(dir.join("crr.toml"))
        .arg("--state")
        .arg(dir.join("state"))
        .args(args);
    cmd
}

fn rclone_remote(cmd: &mut Command, name: &str, side: &Side) {
    let var = |k: &str| format!("RCLONE_CONFIG_{name}_{k}");
    cmd.env(var("TYPE"), "s3")
        .env(var("PROVIDER"), "Other")
        .env(var("ENDPOINT"), &side.url)
        .env(var("REGION"), &side.region)
        .env(var("ACCESS_KEY_ID"), "test")
        .env(var("SECRET_ACCESS_KEY"), "test")
        .env(var("FORCE_PATH_STYLE"), "true");
}

/// The rclone flags of the comparison.
pub const RCLONE_FLAGS: &[&str] = &[
    "--transfers",
    "16",
    "--checkers",
    "16",
    "--fast-list",
    "--checksum",
    "--s3-no-head",
    "--s3-no-check-bucket",
];

/// The s3sync flags of the comparison (endpoints and keys go in its environment).
pub const S3SYNC_FLAGS: &[&str] = &[
    "--worker-size",
    "16",
    "--source-force-path-style",
    "--target-force-path-style",
];

/// s3sync's settings for one side, as the environment variables it reads.
fn s3sync_side(cmd: &mut Command, role: &str, side: &Side) {
    cmd.env(format!("{role}_ENDPOINT_URL"), &side.url)
        .env(format!("{role}_REGION"), &side.region)
        .env(format!("{role}_ACCESS_KEY"), "test")
        .env(format!("{role}_SECRET_ACCESS_KEY"), "test");
}

/// The AWS CLI's settings file of the comparison.
pub const AWS_CONFIG: &str = "[default]\n\
    request_checksum_calculation = when_required\n\
    response_checksum_validation = when_required\n\
    s3 =\n  max_concurrent_requests = 16\n  multipart_threshold = 16MB\n  multipart_chunksize = 8MB\n";

fn aws_command(aws: &Path, dir: &Path, side: &Side, args: &[&str]) -> Command {
    let mut cmd = Command::new(aws);
    set_crr_env(&mut cmd, dir);
    cmd.env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_DEFAULT_REGION", &side.region)
        .args(["s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url"])
        .arg(&side.url)
        .args(args);
    cmd
}

/// Runs `tool` once from `src` to `dst` in the fresh directory `dir`, and returns its cost.
/// `Err` says why the run failed (exit status, timeout) with the end of its log.
pub async fn run(tool: Tool, paths: &Paths, dir: &Path, src: &Side, dst: &Side, objs: &[Obj]) -> Result<Cost, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let log = dir.join("tool.log");
    let log = log.as_path();
    let one = |cmd: Command| async move {
        let exit = measure::run(cmd, log, paths.timeout)
            .await
            .map_err(|e| format!("spawn: {e}"))?;
        if exit.success() {
            Ok(exit.cost)
        } else {
            Err(format!(
                "exit {}{}: {}",
                exit.code,
                if exit.timed_out { " (timed out)" } else { "" },
                measure::tail(log, 8)
            ))
        }
    };
    match tool {
        Tool::Crr => {
            let text = crr_config(src, dst, "", &crr_rule("bench", src, dst, true));
            std::fs::write(dir.join("crr.toml"), text).map_err(|e| e.to_string())?;
            one(crr_command(paths, dir, &["run", "--once"])).await
        }
        Tool::Rclone => {
            let rclone = paths.rclone.as_ref().ok_or("rclone not installed")?;
            let mut cmd = Command::new(rclone);
            set_crr_env(&mut cmd, dir);
            cmd.env("RCLONE_CONFIG", dir.join("rclone.conf"));
            rclone_remote(&mut cmd, "SRC", src);
            rclone_remote(&mut cmd, "DST", dst);
            cmd.arg("copy")
                .arg(format!("src:{}", src.bucket))
                .arg(format!("dst:{}", dst.bucket))
                .args(RCLONE_FLAGS);
            one(cmd).await
        }
        Tool::S3sync => {
            let s3sync = paths.s3sync.as_ref().ok_or("s3sync not built")?;
            let mut cmd = Command::new(s3sync);
            set_crr_env(&mut cmd, dir);
            s3sync_side(&mut cmd, "SOURCE", src);
            s3sync_side(&mut cmd, "TARGET", dst);
            cmd.args(S3SYNC_FLAGS)
                .arg(format!("s3://{}/", src.bucket))
                .arg(format!("s3://{}/", dst.bucket));
            one(cmd).await
        }
        Tool::Aws => {
            let aws = paths.aws.as_ref().ok_or("aws not installed")?;
            std::fs::write(dir.join("aws-config"), AWS_CONFIG).map_err(|e| e.to_string())?;
            let local = dir.join("data");
            let local_s = local.display().to_string();
            let down = aws_command(aws, dir, src, &[&format!("s3://{}", src.bucket), &local_s]);
            let first = one(down).await?;
            let up = aws_command(aws, dir, dst, &[&local_s, &format!("s3://{}", dst.bucket)]);
            let second = one(up).await;
            let _ = std::fs::remove_dir_all(&local);
            Ok(first.then(&second?))
        }
        Tool::Ceiling | Tool::CeilingGet | Tool::CeilingPut => {
            let keys = dir.join("keys.tsv");
            ceiling::write_keys(&keys, objs).map_err(|e| e.to_string())?;
            let args = ceiling::Args {
                mode: match tool {
                    Tool::CeilingGet => "get",
                    Tool::CeilingPut => "put",
                    _ => "get-put",
                }
                .to_string(),
                src: [src.url.clone(), src.region.clone(), src.bucket.clone()],
                dst: [dst.url.clone(), dst.region.clone(), dst.bucket.clone()],
                keys,
                concurrency: CONCURRENCY,
            };
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(exe);
            set_crr_env(&mut cmd, dir);
            cmd.args(args.to_argv());
            one(cmd).await
        }
    }
}

/// The same side, reached through a proxy at `url`.
pub fn via(side: &Side, url: &str) -> Side {
    Side {
        url: url.to_string(),
        ..side.clone()
    }
}

/// `host:port` of a side's server, for a proxy to forward to.
pub fn upstream(side: &Side) -> String {
    side.host_port().to_string()
}

/// First line of `TOOL ARGS` output, for the report header.
pub fn version(exe: &Path, args: &[&str]) -> String {
    Command::new(exe)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "unknown".to_string())
}
