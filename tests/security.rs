//! Security: credentials never leave crr (its output, its log, its state database, its socket,
//! a panic); the config file, the state directory and the socket are private, and the socket
//! takes no commands from another user; https endpoints are checked against the system's root
//! certificates, and plain http beyond loopback draws a warning.

mod common;

use common::{CrrOutput, Env, Rule, create_bucket, crr_command, endpoint_toml, engine_toml, put, run_command};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Recognisable credentials: from the environment (endpoint `sh`) and from a profile in a
/// shared credentials file (endpoint `gz`).
const ENV_KEY_ID: &str = "AKIACRRPROBEENV7F3A9";
const ENV_SECRET: &str = "crrProbeEnvSecret+7f3a9c2e5b1d4f60a8c3e1d2";
const PROFILE_KEY_ID: &str = "AKIACRRPROBEPROF1B2C";
const PROFILE_SECRET: &str = "crrProbeProfileSecret/1b2c3d4e5f60718293a4";
const SECRETS: [&str; 4] = [ENV_KEY_ID, ENV_SECRET, PROFILE_KEY_ID, PROFILE_SECRET];

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Where each secret occurs in `bytes` (any of them, as raw bytes).
fn secrets_in(bytes: &[u8]) -> Vec<&'static str> {
    SECRETS
        .iter()
        .copied()
        .filter(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
        .collect()
}

/// Every file under `dir`, with its bytes as they are now.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            out.extend(files_under(&p));
        } else if ft.is_file()
            && let Ok(bytes) = std::fs::read(&p)
        {
            out.push((p, bytes));
        }
    }
    out
}

/// Collects everything crr showed, wrote or sent, and where it came from.
#[derive(Default)]
struct Seen {
    items: Vec<(String, Vec<u8>)>,
}

impl Seen {
    fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.items.push((what.into(), bytes.into()));
    }

    fn output(&mut self, out: &CrrOutput) {
        self.add(format!("stdout of `crr {}`", out.args.join(" ")), out.stdout.clone());
        self.add(format!("stderr of `crr {}`", out.args.join(" ")), out.stderr.clone());
    }

    fn state(&mut self, when: &str, dir: &Path) {
        let files = files_under(dir);
        assert!(!files.is_empty(), "nothing in {}", dir.display());
        for (p, bytes) in files {
            self.add(format!("{} ({when})", p.display()), bytes);
        }
    }

    fn assert_clean(&self) {
        let leaks: Vec<String> = self
            .items
            .iter()
            .flat_map(|(what, bytes)| secrets_in(bytes).into_iter().map(move |s| format!("{s} in {what}")))
            .collect();
        assert!(leaks.is_empty(), "credentials leaked:\n{}", leaks.join("\n"));
    }
}

/// The probe credentials: `sh` from the environment, `gz` from profile `probe`.
fn probe_env(cmd: &mut tokio::process::Command, dir: &Path) {
    cmd.env("AWS_ACCESS_KEY_ID", ENV_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env("RUST_BACKTRACE", "1");
}

fn write_credentials_file(dir: &Path) {
    let path = dir.join("aws-credentials");
    std::fs::write(
        &path,
        format!("[probe]\naws_access_key_id = {PROFILE_KEY_ID}\naws_secret_access_key = {PROFILE_SECRET}\n"),
    )
    .expect("write the credentials file");
    chmod(&path, 0o600);
}

/// A config whose `gz` endpoint takes its credentials from profile `probe`.
fn probe_config(gz_url: &str, sh_url: &str, rules: &[Rule]) -> String {
    let mut text = engine_toml(&common::ConfigOpts::default());
    text.push('\n');
    text.push_str(&endpoint_toml("gz", common::GZ_REGION, gz_url));
    text.push_str("profile = \"probe\"\n\n");
    text.push_str(&endpoint_toml("sh", common::SH_REGION, sh_url));
    for r in rules {
        text.push('\n');
        text.push_str(&r.to_toml());
    }
    text
}

async fn crr_at(dir: &Path, config: &Path, state: &Path, args: &[&str], extra: &[(&str, &str)]) -> CrrOutput {
    let mut cmd = crr_command(dir);
    probe_env(&mut cmd, dir);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.arg("--config").arg(config).arg("--state").arg(state).args(args);
    run_command(cmd, args.iter().map(|s| s.to_string()).collect()).await
}

/// `crr serve` with the probe credentials, its output in files under `dir`.
fn spawn_serve(dir: &Path, config: &Path, state: &Path, name: &str, extra: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = crr_command(dir);
    probe_env(&mut cmd, dir);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.arg("--config")
        .arg(config)
        .arg("--state")
        .arg(state)
        .arg("serve")
        .stdout(Stdio::from(
            std::fs::File::create(dir.join(format!("{name}.stdout"))).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{name}.stderr"))).expect("stderr file"),
        ));
    cmd.spawn().expect("spawn crr serve")
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn terminate(child: &mut tokio::process::Child) -> i32 {
    let pid = child.id().expect("running");
    // SAFETY: signals only the child this test spawned.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("crr serve stops after SIGTERM")
        .expect("wait for crr serve");
    status.code().unwrap_or(-1)
}

/// A moto server that checks credentials (it knows none, so every request is refused).
struct AuthMoto {
    child: std::process::Child,
    url: String,
}

impl AuthMoto {
    async fn start(dir: &Path) -> AuthMoto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("moto-auth.log")).unwrap();
        let child = std::process::Command::new(common::moto_server_path())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn moto_server");
        wait_for("moto with authentication to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        AuthMoto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for AuthMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a raw client of the socket receives while subscribed, up to a line that holds
/// `until` (or for `wait` at most).
/// Deletes every version in `bucket`, then the bucket.
async fn remove_bucket(s3: &common::Server, bucket: &str) {
    let listed = s3
        .client
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .expect("list the bucket's versions");
    let versions = listed.versions().iter().map(|v| (v.key(), v.version_id()));
    let markers = listed.delete_markers().iter().map(|m| (m.key(), m.version_id()));
    for (key, version) in versions.chain(markers) {
        s3.client
            .delete_object()
            .bucket(bucket)
            .key(key.unwrap_or_default())
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .expect("delete a version");
    }
    s3.client
        .delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("delete the bucket");
}

async fn socket_traffic(state: &Path, until: &str, wait: Duration) -> Vec<u8> {
    let stream = tokio::net::UnixStream::connect(state.join("crr.sock"))
        .await
        .expect("connect to crr.sock");
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"type\":\"subscribe\",\"events\":true,\"snapshots\":true}\nnot json\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(read);
    let mut all = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => all.extend(&line),
            }
            if String::from_utf8_lossy(&line).contains(until) {
                return;
            }
        }
    })
    .await;
    all
}

/// The terminal UI in a tmux session of its own (killed on drop), with the probe credentials.
struct Ui {
    name: String,
}

impl Ui {
    fn start(name: &str, dir: &Path, config: &Path, state: &Path) -> Ui {
        let name = format!("crr-security-{}-{name}", std::process::id());
        let line = format!(
            "env AWS_ACCESS_KEY_ID={ENV_KEY_ID} AWS_SECRET_ACCESS_KEY='{ENV_SECRET}' AWS_EC2_METADATA_DISABLED=true \
             AWS_CONFIG_FILE={d}/no-aws-config AWS_SHARED_CREDENTIALS_FILE={d}/aws-credentials \
             XDG_CONFIG_HOME={d}/xdg-config XDG_STATE_HOME={d}/xdg-state \
             {} --config {} --state {}; echo \"crr exited $?\"; sleep 600",
            env!("CARGO_BIN_EXE_crr"),
            config.display(),
            state.display(),
            d = dir.display(),
        );
        let status = std::process::Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "120", "-y", "40", "-c"])
            .arg(dir)
            .arg(line)
            .status()
            .expect("tmux is installed (scripts/test installs it)");
        assert!(status.success(), "tmux new-session failed");
        Ui { name }
    }

    fn key(&self, key: &str) {
        let status = std::process::Command::new("tmux")
            .args(["send-keys", "-t", &self.name, key])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn screen(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what}:\n{s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every pane and the help, as drawn, then quits.
    async fn tour(&self, seen: &mut Seen, title: &str) {
        self.wait_for(title, |s| s.contains(title)).await;
        for (key, shows) in [
            ("1", "gz"),
            ("2", "photos-dr"),
            ("3", ""),
            ("4", ""),
            ("5", ""),
            ("?", ""),
        ] {
            self.key(key);
            let screen = self.wait_for(&format!("pane {key}"), |s| s.contains(shows)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            seen.add(format!("the UI ({title}) after {key}"), screen);
            seen.add(format!("the UI ({title}) a moment later"), self.screen());
        }
        // `?` closes the help (Escape followed at once by `q` would read as Alt-q).
        self.key("?");
        self.wait_for("the help closed", |s| !s.contains("Esc closes")).await;
        self.key("q");
        self.wait_for("the shell again", |s| s.contains("crr exited 0")).await;
        seen.add(format!("the terminal after the UI ({title})"), self.screen());
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_leave_crr() {
    let env = Env::start().await;
    let dir = env.path().to_path_buf();
    write_credentials_file(&dir);
    // The scan finds the secrets where they are.
    let found = secrets_in(&std::fs::read(dir.join("aws-credentials")).unwrap());
    assert_eq!(found, [PROFILE_KEY_ID, PROFILE_SECRET]);

    create_bucket(&env.gz, "photos", true).await;
    create_bucket(&env.sh, "photos-dr", true).await;
    put(&env.gz, "photos", "before.txt", "old").await;
    let config = dir.join("probe.toml");
    std::fs::write(
        &config,
        probe_config(
            &env.gz.url,
            &env.sh.url,
            &[Rule::new("photos-dr", "gz/photos", "sh/photos-dr")],
        ),
    )
    .unwrap();
    chmod(&config, 0o600);
    let state = dir.join("probe-state");
    let mut seen = Seen::default();

    // Headless runs that work.
    for args in [&["check"][..], &["run", "--once"]] {
        let out = crr_at(&dir, &config, &state, args, &[]).await;
        out.assert_ok();
        seen.output(&out);
    }
    put(&env.gz, "photos", "a.txt", "after the enable point").await;
    let out = crr_at(&dir, &config, &state, &["run", "--once"], &[]).await;
    out.assert_ok();
    assert!(out.stdout.contains("replicated 1 change"), "{}", out.describe());
    seen.output(&out);

    // The terminal UI with the engine in it.
    Ui::start("embedded", &dir, &config, &state)
        .tour(&mut seen, "embedded")
        .await;

    // The service, and everything that reads it.
    let mut serve = spawn_serve(&dir, &config, &state, "serve", &[]);
    wait_for("crr serve to listen", Duration::from_secs(60), || {
        state.join("crr.sock").exists()
    })
    .await;
    let traffic = tokio::spawn({
        let state = state.clone();
        async move { socket_traffic(&state, "task_failed", Duration::from_secs(120)).await }
    });
    put(&env.gz, "photos", "b.txt", "while serving").await;
    let replicated = common::wait_until(Duration::from_secs(60), || async {
        common::get_bytes(&env.sh, "photos-dr", "b.txt").await.is_some()
    })
    .await;
    assert!(replicated, "b.txt was not replicated while serving");
    // A failure too: the destination bucket goes away, and a copy fails after its attempts. (A
    // destination that does not answer at all makes copies wait instead, failing none.)
    remove_bucket(&env.sh, "photos-dr").await;
    put(&env.gz, "photos", "c.txt", "while the destination is down").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = crr_at(&dir, &config, &state, &["queue", "--failed", "--json"], &[]).await;
        if out.code == 0 && out.stdout.contains("c.txt") {
            seen.output(&out);
            break;
        }
        assert!(Instant::now() < deadline, "c.txt never failed\n{}", out.describe());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let traffic = traffic.await.unwrap();
    let text = String::from_utf8_lossy(&traffic).into_owned();
    assert!(
        text.contains("\"hello\"") && text.contains("task_failed") && text.contains("c.txt"),
        "the socket's traffic: {text}"
    );
    seen.add("the socket's messages to a subscriber", traffic);
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["queue"],
        &["queue", "--json"],
        &["queue", "--failed"],
        &["rule", "list"],
        &["diff", "photos-dr"],
        &["migrate", "start", "photos-dr"],
    ] {
        let out = crr_at(&dir, &config, &state, args, &[]).await;
        seen.output(&out);
    }
    Ui::start("attached", &dir, &config, &state)
        .tour(&mut seen, "attached to crr serve")
        .await;
    seen.state("while crr serve runs", &state);
    assert_eq!(terminate(&mut serve).await, 0);
    seen.add("serve stdout", std::fs::read(dir.join("serve.stdout")).unwrap());
    seen.add("serve stderr", std::fs::read(dir.join("serve.stderr")).unwrap());

    // A panic (debug builds can be asked for one), with a backtrace.
    let mut panicking = spawn_serve(&dir, &config, &state, "panic", &[("CRR_DEBUG_PANIC", "serve")]);
    let status = tokio::time::timeout(Duration::from_secs(60), panicking.wait())
        .await
        .unwrap()
        .unwrap();
    let panic_err = std::fs::read_to_string(dir.join("panic.stderr")).unwrap();
    assert_eq!(status.code(), Some(101), "{panic_err}");
    assert!(panic_err.contains("CRR_DEBUG_PANIC"), "{panic_err}");
    seen.add("a panic's stderr", panic_err);

    // Credentials the server refuses: preflight and runs fail, and say so.
    let auth = AuthMoto::start(&dir).await;
    let refused_config = dir.join("refused.toml");
    std::fs::write(
        &refused_config,
        probe_config(
            &auth.url,
            &env.sh.url,
            &[Rule::new("photos-dr", "gz/photos", "sh/photos-dr")],
        ),
    )
    .unwrap();
    chmod(&refused_config, 0o600);
    let refused_state = dir.join("refused-state");
    let out = crr_at(&dir, &refused_config, &refused_state, &["check"], &[]).await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("configured credentials") && out.stderr.contains("HTTP 403"),
        "{}",
        out.describe()
    );
    seen.output(&out);
    let out = crr_at(&dir, &refused_config, &refused_state, &["run", "--once"], &[]).await;
    assert_ne!(out.code, 0, "{}", out.describe());
    seen.output(&out);
    let out = crr_at(&dir, &refused_config, &refused_state, &["status", "--json"], &[]).await;
    seen.output(&out);

    seen.state("after crr stopped", &state);
    seen.state("after the refused runs", &refused_state);
    seen.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_leave_crr_with_seaweedfs_as_the_source() {
    let env = Env::start_with(common::Kind::Weed, common::Kind::Moto).await;
    let dir = env.path().to_path_buf();
    write_credentials_file(&dir);
    create_bucket(&env.gz, "photos", true).await;
    create_bucket(&env.sh, "photos-dr", true).await;
    let config = dir.join("probe.toml");
    let rules = [
        Rule::new("photos-dr", "gz/photos", "sh/photos-dr"),
        // A bucket SeaweedFS does not have: its error comes back through crr.
        Rule::new("missing", "gz/no-such-bucket", "sh/no-such-dr").enabled(false),
    ];
    std::fs::write(&config, probe_config(&env.gz.url, &env.sh.url, &rules)).unwrap();
    chmod(&config, 0o600);
    let state = dir.join("probe-state");
    let mut seen = Seen::default();
    let out = crr_at(&dir, &config, &state, &["check"], &[]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("gz/no-such-bucket"), "{}", out.describe());
    seen.output(&out);
    crr_at(&dir, &config, &state, &["run", "--once"], &[]).await.assert_ok();
    put(&env.gz, "photos", "a.txt", "from SeaweedFS").await;
    for args in [
        &["run", "--once"][..],
        &["status", "--json"],
        &["queue", "--json"],
        &["diff", "photos-dr"],
    ] {
        let out = crr_at(&dir, &config, &state, args, &[]).await;
        out.assert_ok();
        seen.output(&out);
    }
    assert_eq!(
        common::get_bytes(&env.sh, "photos-dr", "a.txt").await.as_deref(),
        Some(&b"from SeaweedFS"[..])
    );
    seen.state("after the runs", &state);
    seen.assert_clean();
}

/// A config with no rules whose endpoints are never contacted.
fn quiet_config(gz_url: &str) -> String {
    let mut text = engine_toml(&common::ConfigOpts::default());
    text.push('\n');
    text.push_str(&endpoint_toml("gz", common::GZ_REGION, gz_url));
    text.push('\n');
    text.push_str(&endpoint_toml("sh", common::SH_REGION, "http://127.0.0.1:9"));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_the_socket_are_private() {
    let tmp = tempfile::Builder::new().prefix("crr-test-").tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("crr.toml");
    let state = dir.join("state");

    // A config file others can read draws a warning naming it and the fix; a private one none.
    std::fs::write(&config, quiet_config("http://127.0.0.1:9")).unwrap();
    chmod(&config, 0o644);
    let out = crr_at(dir, &config, &state, &["check"], &[]).await;
    out.assert_ok();
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("readable by other users"))
        .unwrap_or_else(|| panic!("no warning\n{}", out.describe()));
    assert!(
        warning.contains(&config.display().to_string()) && warning.contains("chmod 600"),
        "{warning}"
    );
    chmod(&config, 0o600);
    let out = crr_at(dir, &config, &state, &["check"], &[]).await;
    out.assert_ok();
    assert!(!out.stderr.contains("warning"), "{}", out.describe());

    // Plain http beyond loopback draws a warning naming the endpoint (nothing is contacted: the
    // config has no rules, and the address is a documentation one).
    std::fs::write(&config, quiet_config("http://192.0.2.10:9000")).unwrap();
    let out = crr_at(dir, &config, &state, &["check"], &[]).await;
    out.assert_ok();
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("plain http"))
        .unwrap_or_else(|| panic!("no warning\n{}", out.describe()));
    assert!(
        warning.contains("\"gz\"") && warning.contains("http://192.0.2.10:9000") && warning.contains("https://"),
        "{warning}"
    );
    assert!(!out.stderr.contains("\"sh\""), "loopback is fine: {}", out.describe());
    std::fs::write(&config, quiet_config("http://127.0.0.1:9")).unwrap();

    // The service creates the state directory 0700, its log and socket 0600.
    assert!(!state.exists());
    let mut serve = spawn_serve(dir, &config, &state, "serve", &[]);
    wait_for("crr serve to listen", Duration::from_secs(60), || {
        state.join("crr.sock").exists()
    })
    .await;
    assert_eq!(mode(&state), 0o700, "the state directory");
    assert_eq!(mode(&state.join("crr.sock")), 0o600, "the socket");
    assert_eq!(mode(&state.join("crr.log")), 0o600, "the log");

    // Another user cannot drive it. The directory and the socket are opened up on purpose here,
    // as a careless chmod would, so that only the service's own check stands in the way.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for (p, m) in [(dir, 0o711), (state.as_path(), 0o711), (config.as_path(), 0o644)] {
            chmod(p, m);
        }
        chmod(&state.join("crr.sock"), 0o666);
        // The other user runs its own copy of the binary: the build directory may sit where only
        // its owner can reach it (a checkout in a private directory).
        let binary = dir.join("crr-other-user");
        std::fs::copy(env!("CARGO_BIN_EXE_crr"), &binary).unwrap();
        chmod(&binary, 0o755);
        let mut std_status = std::process::Command::new(&binary);
        common::set_crr_env(&mut std_status, dir);
        std_status.uid(65534).gid(65534);
        let mut status = tokio::process::Command::from(std_status);
        status.stdin(Stdio::null()).kill_on_drop(true);
        status
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(&state)
            .args(["status", "--json"]);
        let out = run_command(status, vec!["status".into(), "--json".into(), "(as uid 65534)".into()]).await;
        assert_eq!(out.code, 1, "{}", out.describe());
        assert!(
            out.stderr.contains("refused the connection")
                && out.stderr.contains("uid 65534")
                && out.stderr.contains("run crr as the service's user"),
            "{}",
            out.describe()
        );
        chmod(&config, 0o600);
        chmod(&state.join("crr.sock"), 0o600);
        chmod(dir, 0o700);
    } else {
        eprintln!("not root: the uid check is covered by the unit test of `service::admit` only");
    }
    // The service's own user still drives it.
    let out = crr_at(dir, &config, &state, &["status", "--json"], &[]).await;
    out.assert_ok();
    assert_eq!(terminate(&mut serve).await, 0);

    // A state directory found open to others is made private again, and the user told.
    chmod(&state, 0o755);
    let out = crr_at(dir, &config, &state, &["status"], &[]).await;
    out.assert_ok();
    assert!(
        out.stderr.contains("open to other users") && out.stderr.contains("made it private"),
        "{}",
        out.describe()
    );
    assert_eq!(mode(&state), 0o700);
    // The socket is made anew, 0600, whatever mode a stale one had.
    std::fs::write(state.join("crr.sock"), b"").unwrap();
    chmod(&state.join("crr.sock"), 0o666);
    let mut serve = spawn_serve(dir, &config, &state, "serve2", &[]);
    wait_for("crr serve to replace the socket", Duration::from_secs(60), || {
        std::fs::symlink_metadata(state.join("crr.sock"))
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    })
    .await;
    assert_eq!(mode(&state.join("crr.sock")), 0o600);
    assert_eq!(terminate(&mut serve).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_an_untrusted_certificate_is_refused() {
    let tmp = tempfile::Builder::new().prefix("crr-test-").tempdir().unwrap();
    let dir = tmp.path();
    // moto over TLS with a self-signed certificate it makes up itself.
    let moto = TlsMoto::start(dir, None).await;
    let url = moto.url.clone();
    let config = dir.join("crr.toml");
    let mut text = quiet_config(&url);
    text.push('\n');
    text.push_str(&Rule::new("photos-dr", "gz/photos", "sh/photos-dr").to_toml());
    std::fs::write(&config, text).unwrap();
    chmod(&config, 0o600);
    let out = crr_at(dir, &config, &dir.join("state"), &["check"], &[]).await;
    out.assert_code(2);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("gz/photos"))
        .unwrap_or_else(|| panic!("no error about gz/photos\n{}", out.describe()));
    assert!(
        line.contains("certificate is not trusted") && line.contains(&url) && line.contains("root certificates"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("plain http to 127.0.0.1"), "{}", out.describe());
}

/// Writes a self-signed certificate for 127.0.0.1 and its key (with the Python that runs moto,
/// whose `cryptography` package moto needs anyway).
fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("loopback.pem"), dir.join("loopback.key"));
    let script = r#"
import datetime, ipaddress, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crr test loopback")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
    .public_key(key.public_key()).serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
    .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .sign(key, hashes.SHA256()))
open(sys.argv[1], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(sys.argv[2], "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"#;
    let python = common::moto_server_path().with_file_name("python3");
    let status = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&cert)
        .arg(&key)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    assert!(status.success(), "making a certificate failed");
    (cert, key)
}

/// moto over TLS on a loopback port, killed on drop.
struct TlsMoto {
    child: std::process::Child,
    url: String,
}

impl TlsMoto {
    async fn start(dir: &Path, cert: Option<(&Path, &Path)>) -> TlsMoto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join(format!("moto-tls-{port}.log"))).unwrap();
        let mut cmd = std::process::Command::new(common::moto_server_path());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        match cert {
            // Its own certificate, made up on the spot.
            None => cmd.arg("--ssl"),
            Some((cert, key)) => cmd.arg("-c").arg(cert).arg("-k").arg(key),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn moto_server");
        wait_for("moto over TLS to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        TlsMoto {
            child,
            url: format!("https://127.0.0.1:{port}"),
        }
    }
}

impl Drop for TlsMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_checked_against_the_system_roots() {
    let tmp = tempfile::Builder::new().prefix("crr-test-").tempdir().unwrap();
    let dir = tmp.path();
    let (cert, key) = self_signed_cert(dir);
    let moto = TlsMoto::start(dir, Some((&cert, &key))).await;
    let config = dir.join("crr.toml");
    let mut text = quiet_config(&moto.url);
    text.push('\n');
    text.push_str(&Rule::new("photos-dr", "gz/photos", "sh/photos-dr").to_toml());
    std::fs::write(&config, text).unwrap();
    chmod(&config, 0o600);
    let state = dir.join("state");
    // Not among the system's roots: refused.
    let out = crr_at(dir, &config, &state, &["check"], &[]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("certificate is not trusted"), "{}", out.describe());
    // Made one of them (the root store read from SSL_CERT_FILE, as on any system): the
    // connection is made, and the answer is moto's (the bucket does not exist there).
    let cert_file = cert.display().to_string();
    let out = crr_at(dir, &config, &state, &["check"], &[("SSL_CERT_FILE", &cert_file)]).await;
    out.assert_code(2);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("gz/photos"))
        .unwrap_or_else(|| panic!("no line about gz/photos\n{}", out.describe()));
    assert!(line.contains("does not exist on endpoint \"gz\""), "{}", out.describe());
}
