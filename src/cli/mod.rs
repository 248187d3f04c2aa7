//! The headless commands: each loads the config, opens the state, does its one job and says
//! what happened. Exit status: 0 success, 1 the work failed, 2 invalid input.

mod output;

use crate::Invalid;
use crate::config::{self, Config, ConfigErrors};
use crate::engine::client::ServiceClient;
use crate::engine::{Command, Engine, EngineHandle, Event, MigrateAction, Reply, RetryTarget, preflight, service};
use crate::s3::Clients;
use crate::store::{EngineLock, Store};
use anyhow::{Context, Result};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the config file and the state directory are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: PathBuf,
    pub state: PathBuf,
}

impl Paths {
    /// `--config`/`--state`, else `$CRR_CONFIG`/`$CRR_STATE`, else the XDG locations.
    pub fn resolve(config: Option<PathBuf>, state: Option<PathBuf>) -> Paths {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Paths {
            config: config
                .or_else(|| env("CRR_CONFIG"))
                .unwrap_or_else(config::default_config_path),
            state: state
                .or_else(|| env("CRR_STATE"))
                .unwrap_or_else(config::default_state_dir),
        }
    }
}

/// Runs one command on a fresh runtime and turns its outcome into an exit status.
pub fn run<F, Fut>(paths: Paths, f: F) -> ExitCode
where
    F: FnOnce(Paths) -> Fut,
    Fut: Future<Output = Result<u8>>,
{
    for w in file_warnings(&paths) {
        eprintln!("crr: warning: {w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crr: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(f(paths)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigErrors>() {
                eprintln!("{c}");
                return ExitCode::from(2);
            }
            if e.downcast_ref::<Invalid>().is_some() {
                eprintln!("crr: {e}");
                return ExitCode::from(2);
            }
            eprintln!("crr: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads the config, and warns (on stderr) about endpoints reached over plain http.
pub(crate) fn load(paths: &Paths) -> Result<Config> {
    let config = config::load(&paths.config)?;
    for ep in &config.endpoints {
        if let Some(w) = crate::s3::plaintext_warning(ep) {
            eprintln!("crr: warning: {w}");
        }
    }
    Ok(config)
}

/// What an operator should know about the files crr reads and writes: a config file other
/// users can read, a state directory open to them (made private when it is crr's own).
fn file_warnings(paths: &Paths) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut warnings = Vec::new();
    if let Ok(meta) = std::fs::metadata(&paths.config) {
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && mode & 0o044 != 0 {
            warnings.push(format!(
                "the config file {} is readable by other users (mode {mode:03o}): it names your endpoints, buckets and credential profiles; run `chmod 600 {}`",
                paths.config.display(),
                paths.config.display()
            ));
        }
    }
    warnings.extend(crate::store::check_state_dir(&paths.state));
    warnings
}

/// A token cancelled by the first SIGINT, SIGTERM or SIGHUP.
fn on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        tracing::info!("signal received");
        signals.cancel();
    });
    shutdown
}

/// Sends engine logs to `STATE_DIR/crr.log`, never to the terminal.
pub(crate) fn init_log(paths: &Paths) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::store::create_state_dir(&paths.state)?;
    let path = paths.state.join("crr.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .try_init();
    Ok(())
}

async fn open_engine(paths: &Paths, config: Config) -> Result<Arc<Engine>> {
    init_log(paths)?;
    match Engine::open(config, &paths.state).await? {
        Ok(e) => Ok(e),
        Err(held) => Err(held.into()),
    }
}

/// An engine to send a command to: the service running on the state directory (`crr serve`, a
/// `crr run --once`, or the UI), found through its socket; else one opened here for the purpose.
pub enum Driver {
    Attached { handle: EngineHandle, pid: u32 },
    Embedded { handle: EngineHandle, engine: Arc<Engine> },
}

impl Driver {
    pub fn handle(&self) -> &EngineHandle {
        match self {
            Driver::Attached { handle, .. } | Driver::Embedded { handle, .. } => handle,
        }
    }

    /// Connects to the running service, or opens the engine here. Only the socket is probed, so
    /// a service that is starting is never disturbed: if one holds the lock but does not answer
    /// yet, this waits for its socket.
    pub async fn connect(paths: &Paths) -> Result<Driver> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(client) = ServiceClient::connect(&paths.state).await? {
                let pid = client.pid;
                return Ok(Driver::Attached {
                    handle: client.into_handle().await?,
                    pid,
                });
            }
            match EngineLock::acquire(&paths.state)? {
                Ok(lock) => {
                    init_log(paths)?;
                    let engine = Engine::open_locked(load(paths)?, &paths.state, lock).await?;
                    return Ok(Driver::Embedded {
                        handle: engine.handle(),
                        engine,
                    });
                }
                Err(held) if tokio::time::Instant::now() > deadline => {
                    anyhow::bail!(
                        "the crr engine (pid {}) holds the state directory {} but does not answer on its socket {}; see {}",
                        held.pid,
                        paths.state.display(),
                        paths.state.join(service::SOCKET).display(),
                        paths.state.join("crr.log").display()
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Sends a command, prints its answer, and turns a refusal into exit status 2.
    async fn command(&self, command: Command) -> Result<String> {
        let reply = self.handle().send(command).await;
        if let Driver::Attached { pid, .. } = self {
            println!("applied by the running engine (pid {pid}):");
        }
        match reply {
            Reply::Done { message } => {
                for line in message.lines().filter(|l| !l.is_empty()) {
                    println!("{line}");
                }
                Ok(message)
            }
            Reply::Refused { reason, fix } => {
                eprintln!("refused: {reason}");
                if !fix.is_empty() {
                    eprintln!("{fix}");
                }
                Err(Invalid("nothing was changed".into()).into())
            }
        }
    }

    /// Lets an engine opened here finish what the command left (aborting uploads).
    async fn finish(self) {
        if let Driver::Embedded { engine, .. } = self {
            engine.sweep_uploads().await;
        }
    }
}

/// The rule with this id, or an error that lists the ids there are.
fn find_rule<'a>(config: &'a Config, id: &str) -> Result<&'a crate::config::Rule> {
    config.rule(id).ok_or_else(|| {
        let ids: Vec<&str> = config.rules.iter().map(|r| r.id.as_str()).collect();
        Invalid(format!(
            "there is no rule {id:?} in {} (rules: {})",
            config.path.display(),
            if ids.is_empty() { "none".into() } else { ids.join(", ") }
        ))
        .into()
    })
}

fn print_refusals(refused: &[preflight::Refusal]) {
    for r in refused {
        eprintln!("refused: {r}");
    }
}

// ---- check ----------------------------------------------------------------------------------

pub async fn check(paths: &Paths) -> Result<u8> {
    let config = load(paths)?;
    let clients = Clients::connect(&config).await;
    let mut refused = 0;
    for rule in &config.rules {
        let problems = preflight::check_rule(&clients, rule).await;
        for w in preflight::warnings(rule) {
            println!("warning: {w}");
        }
        if problems.is_empty() {
            println!(
                "ok: rule {:?}: {} -> {} ({}; operations {})",
                rule.id,
                rule.source,
                rule.destination,
                rule.scope_text(),
                output::ops(rule.operations)
            );
        } else {
            refused += problems.len();
            print_refusals(&problems);
        }
    }
    if refused > 0 {
        return Err(Invalid(format!(
            "{refused} problem(s) in {}; fix them and run `crr check` again",
            paths.config.display()
        ))
        .into());
    }
    println!("{}: {} rule(s), all good", paths.config.display(), config.rules.len());
    Ok(0)
}

// ---- run --once and serve -------------------------------------------------------------------

pub async fn run_once(paths: &Paths) -> Result<u8> {
    let config = load(paths)?;
    let engine = open_engine(paths, config).await?;
    // Commands from other `crr` invocations reach this run too.
    let _socket = service::listen(engine.handle(), &paths.state)?;
    // A signal stops the run at any moment: copies in flight get the grace period, the rest
    // stays queued for the next run.
    let signalled = on_signal();
    {
        let engine = engine.core();
        let signalled = signalled.clone();
        tokio::spawn(async move {
            signalled.cancelled().await;
            engine.shutdown.cancel();
        });
    }
    // When every rule to enable passes preflight, the copies start while they are enabled: a
    // first enabling's migration copies its listing page by page. When one does not, nothing
    // is copied: the run says why and ends with status 2.
    let summary = if engine.preflight_pending().await.is_empty() {
        let summary = engine
            .reconcile_and_run_once(|rec| {
                for m in &rec.messages {
                    println!("{m}");
                }
            })
            .await?;
        if let Some(rec) = &summary.reconciled
            && !rec.refused.is_empty()
        {
            // Passed preflight a moment ago, then could not be enabled (its listing failed, say).
            print_refusals(&rec.refused);
            return Err(Invalid(format!(
                "not every rule could be enabled; {} change(s) of the others were replicated",
                summary.replicated
            ))
            .into());
        }
        summary
    } else {
        let rec = tokio::select! {
            r = engine.reconcile(None) => r?,
            _ = signalled.cancelled() => {
                eprintln!("crr: interrupted before the rules were applied; nothing was copied");
                return Ok(1);
            }
        };
        for m in &rec.messages {
            println!("{m}");
        }
        if !rec.refused.is_empty() {
            print_refusals(&rec.refused);
            return Err(Invalid("preflight refused; nothing was replicated".into()).into());
        }
        engine.run_once_after(&rec).await?
    };
    if signalled.is_cancelled() {
        eprintln!(
            "crr: interrupted: {} change(s) replicated; what is left runs on the next `crr run --once`",
            summary.replicated
        );
        return Ok(1);
    }
    println!(
        "replicated {} change(s), {}; {} task(s) queued by this scan",
        summary.replicated,
        config::units::human_bytes(summary.replicated_bytes),
        summary.queued
    );
    for e in &summary.scan_errors {
        eprintln!("error: {e}");
    }
    if !summary.failed.is_empty() {
        eprintln!("{} task(s) failed:", summary.failed.len());
        for t in &summary.failed {
            eprintln!(
                "  task {} rule {:?} {} {:?} (version {}): {}",
                t.id,
                t.rule_id,
                output::kind(t),
                t.key,
                t.version_id,
                t.last_error.as_deref().unwrap_or("unknown error")
            );
        }
        eprintln!("fix the cause, then `crr retry --all` and run again");
    }
    Ok(if summary.failed.is_empty() && summary.scan_errors.is_empty() {
        0
    } else {
        1
    })
}

pub async fn serve(paths: &Paths) -> Result<u8> {
    let config = load(paths)?;
    let engine = open_engine(paths, config).await?;
    let _socket = service::listen(engine.handle(), &paths.state)?;
    let shutdown = on_signal();
    // A signal is honoured while the rules are being applied too (a baseline listing can be long).
    tokio::select! {
        rec = engine.reconcile(None) => {
            let rec = rec?;
            for m in &rec.messages {
                println!("{m}");
            }
            print_refusals(&rec.refused);
        }
        _ = shutdown.cancelled() => {
            println!("crr serve: stopped before the rules were applied; they are applied on the next start");
            return Ok(0);
        }
    }
    // Lets the tests see what a panic prints; debug builds only.
    #[cfg(debug_assertions)]
    if std::env::var_os("CRR_DEBUG_PANIC").is_some_and(|v| v == "serve") {
        panic!("a panic asked for by CRR_DEBUG_PANIC=serve (debug builds only)");
    }
    println!(
        "crr serve: replicating; logs in {}; commands on {}; stop with SIGINT or SIGTERM",
        paths.state.join("crr.log").display(),
        paths.state.join(service::SOCKET).display()
    );
    engine.serve(shutdown).await?;
    println!("crr serve: stopped");
    Ok(0)
}

// ---- status, queue ---------------------------------------------------------------------------

pub async fn status(paths: &Paths, json: bool) -> Result<u8> {
    let config = load(paths)?;
    // The running engine's live snapshot (copies in flight included), else the state store's.
    let snapshot = match ServiceClient::connect(&paths.state).await? {
        Some(client) => client.snapshot().await?,
        None => crate::engine::offline_snapshot(&config, &Store::open_for_reading(&paths.state)?)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&output::status_json(&snapshot))?);
    } else {
        output::print_status(&output::status_rows(&snapshot));
        output::print_endpoints(&output::endpoint_rows(&snapshot));
    }
    Ok(0)
}

pub async fn queue(paths: &Paths, failed_only: bool, json: bool) -> Result<u8> {
    let store = Store::open_for_reading(&paths.state)?;
    let states: &[&str] = if failed_only {
        &["failed"]
    } else {
        &["running", "queued", "failed"]
    };
    let mut tasks = store.tasks_in(states, 10_000)?;
    if let Some(client) = ServiceClient::connect(&paths.state).await? {
        // Bytes sent by copies in flight, as they are now.
        let live = client.snapshot().await?;
        for t in tasks.iter_mut() {
            if let Some(r) = live.running.iter().find(|r| r.task_id == t.id) {
                t.bytes_done = r.bytes_done;
            }
        }
    }
    output::print_tasks(&tasks, json)?;
    Ok(0)
}

pub async fn retry(paths: &Paths, ids: Vec<i64>, rule: Option<String>, all: bool) -> Result<u8> {
    let target = match (ids.is_empty(), rule, all) {
        (false, _, _) => RetryTarget::Tasks { ids },
        (true, Some(id), _) => RetryTarget::Rule { id },
        (true, None, true) => RetryTarget::All,
        (true, None, false) => {
            return Err(Invalid(
                "say which failed tasks to retry: TASK ids, --rule ID or --all (see `crr queue --failed`)".into(),
            )
            .into());
        }
    };
    let driver = Driver::connect(paths).await?;
    let attached = matches!(driver, Driver::Attached { .. });
    driver.command(Command::Retry { target }).await?;
    if attached {
        println!("the running engine picks them up now");
    } else {
        println!("they run on the next `crr run --once` or while `crr serve` runs");
    }
    driver.finish().await;
    Ok(0)
}

// ---- rule -------------------------------------------------------------------------------------

pub async fn rule_list(paths: &Paths) -> Result<u8> {
    let config = load(paths)?;
    let store = Store::open_for_reading(&paths.state)?;
    output::print_rules(&config, &store)?;
    Ok(0)
}

/// Enables or disables a rule through the engine (the running service, or one opened here):
/// preflight first, then the config file is rewritten (comments kept) and the change applied.
pub async fn rule_set(paths: &Paths, id: &str, enable: bool) -> Result<u8> {
    let config = load(paths)?;
    find_rule(&config, id)?;
    let driver = Driver::connect(paths).await?;
    let mut events = driver.handle().events();
    let command = if enable {
        Command::EnableRule { id: id.to_string() }
    } else {
        Command::DisableRule { id: id.to_string() }
    };
    let answer = driver.command(command).await?;
    if enable && !answer.contains("already enabled") {
        // Enabling runs preflight and lists the baseline: its outcome comes as an event.
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                // The service went (killed, say) before it said how the enable ended.
                () = driver.handle().closed() => Err(tokio::sync::broadcast::error::RecvError::Closed),
            };
            match event {
                Ok(Event::RuleEnabled { rule, message, .. }) if rule == id => {
                    println!("{message}");
                    break;
                }
                Ok(Event::RuleRefused { rule, reasons }) if rule == id => {
                    for r in reasons {
                        eprintln!("refused: rule {id:?}: {r}");
                    }
                    return Err(Invalid(format!("rule {id:?} was not enabled; the config is unchanged")).into());
                }
                Ok(Event::Notice { message }) => println!("{message}"),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => anyhow::bail!(
                    "the engine stopped before rule {id:?} was enabled: `crr status` shows \
                     whether it is; if not, run `crr rule enable {id}` again (see {})",
                    paths.state.join("crr.log").display()
                ),
            }
        }
    }
    driver.finish().await;
    Ok(0)
}

// ---- migrate, diff ----------------------------------------------------------------------------

pub async fn migrate(paths: &Paths, action: MigrateAction, id: &str) -> Result<u8> {
    find_rule(&load(paths)?, id)?;
    let driver = Driver::connect(paths).await?;
    let embedded = matches!(driver, Driver::Embedded { .. });
    driver
        .command(Command::Migrate {
            id: id.to_string(),
            action,
        })
        .await?;
    if embedded && matches!(action, MigrateAction::Start | MigrateAction::Resume) {
        println!("it runs with `crr run --once` or while `crr serve` runs; follow it with `crr status`");
    }
    driver.finish().await;
    Ok(0)
}

pub async fn diff(paths: &Paths, id: &str) -> Result<u8> {
    let config = load(paths)?;
    let rule = find_rule(&config, id)?;
    let clients = Clients::connect(&config).await;
    let store = Store::open_for_reading(&paths.state)?;
    let report = crate::engine::diff::diff(&clients, &store, rule).await?;
    for key in &report.missing {
        println!("missing on destination: {key}");
    }
    for (key, why) in &report.different {
        println!("different: {key} ({why})");
    }
    for key in &report.extra {
        println!("extra on destination: {key}");
    }
    println!(
        "rule {id:?}: {} -> {} ({}): {} same, {} missing, {} different, {} extra on the destination",
        rule.source,
        rule.destination,
        rule.scope_text(),
        report.same,
        report.missing.len(),
        report.different.len(),
        report.extra.len()
    );
    Ok(if report.matches() { 0 } else { 1 })
}
