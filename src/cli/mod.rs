//! The headless commands: each loads the config, opens the state, does its one job and says
//! what happened. Exit status: 0 success, 1 the work failed, 2 invalid input.

mod output;

use crate::Invalid;
use crate::config::{self, Config, ConfigErrors};
use crate::engine::{Engine, preflight};
use crate::s3::Clients;
use crate::store::{EngineLock, LockHeld, Store};
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

fn load(paths: &Paths) -> Result<Config> {
    Ok(config::load(&paths.config)?)
}

/// Sends engine logs to `STATE_DIR/crr.log`, never to the terminal.
fn init_log(paths: &Paths) -> Result<()> {
    std::fs::create_dir_all(&paths.state)
        .with_context(|| format!("creating the state directory {}", paths.state.display()))?;
    let path = paths.state.join("crr.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
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
    let rec = engine.reconcile(None).await?;
    for m in &rec.messages {
        println!("{m}");
    }
    if !rec.refused.is_empty() {
        print_refusals(&rec.refused);
        return Err(Invalid("preflight refused; nothing was replicated".into()).into());
    }
    let summary = engine.run_once().await?;
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
    let rec = engine.reconcile(None).await?;
    for m in &rec.messages {
        println!("{m}");
        tracing::info!("{m}");
    }
    print_refusals(&rec.refused);
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
    println!(
        "crr serve: replicating; logs in {}; stop with SIGINT or SIGTERM",
        paths.state.join("crr.log").display()
    );
    engine.serve(shutdown).await?;
    println!("crr serve: stopped");
    Ok(0)
}

// ---- status, queue ---------------------------------------------------------------------------

pub async fn status(paths: &Paths, json: bool) -> Result<u8> {
    let config = load(paths)?;
    let store = Store::open(&paths.state)?;
    let rows = output::status_rows(&config, &store)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "rules": rows }))?
        );
    } else {
        output::print_status(&rows);
    }
    Ok(0)
}

pub async fn queue(paths: &Paths, failed_only: bool, json: bool) -> Result<u8> {
    let store = Store::open(&paths.state)?;
    let states: &[&str] = if failed_only {
        &["failed"]
    } else {
        &["running", "queued", "failed"]
    };
    let tasks = store.tasks_in(states, 10_000)?;
    output::print_tasks(&tasks, json)?;
    Ok(0)
}

pub async fn retry(paths: &Paths, ids: Vec<i64>, rule: Option<String>, all: bool) -> Result<u8> {
    if ids.is_empty() && rule.is_none() && !all {
        return Err(Invalid(
            "say which failed tasks to retry: TASK ids, --rule ID or --all (see `crr queue --failed`)".into(),
        )
        .into());
    }
    let store = Store::open(&paths.state)?;
    let n = store.retry_failed(rule.as_deref(), &ids)?;
    if !ids.is_empty() && n < ids.len() {
        let msg = format!(
            "{} of the {} task(s) given are not failed tasks (see `crr queue --failed` for their ids)",
            ids.len() - n,
            ids.len()
        );
        if n == 0 {
            return Err(Invalid(format!("{msg}; nothing was queued again")).into());
        }
        eprintln!("warning: {msg}");
    }
    println!("{n} failed task(s) queued again");
    if EngineLock::held_by_other(&paths.state)?.is_some() {
        store.post_command("wake", "")?;
        println!("the running engine picks them up now");
    } else if n > 0 {
        println!("they run on the next `crr run --once` or while `crr serve` runs");
    }
    Ok(0)
}

// ---- rule -------------------------------------------------------------------------------------

pub async fn rule_list(paths: &Paths) -> Result<u8> {
    let config = load(paths)?;
    let store = Store::open(&paths.state)?;
    output::print_rules(&config, &store)?;
    Ok(0)
}

/// Enables or disables a rule: the config file is rewritten (comments kept), then the change
/// is applied by the running engine if there is one, else here and now.
pub async fn rule_set(paths: &Paths, id: &str, enable: bool) -> Result<u8> {
    let config = load(paths)?;
    let rule = find_rule(&config, id)?;
    if enable {
        let clients = Clients::connect(&config).await;
        let refused = preflight::check_rule(&clients, rule).await;
        if !refused.is_empty() {
            print_refusals(&refused);
            return Err(Invalid(format!("rule {id:?} was not enabled; the config is unchanged")).into());
        }
        for w in preflight::warnings(rule) {
            println!("warning: {w}");
        }
    }
    if rule.enabled != enable {
        config::set_rule_enabled(&paths.config, id, enable)?;
        println!("{}: rule {id:?} set to enabled = {enable}", paths.config.display());
    }
    let outcome = apply(paths, "reconcile", id, |engine| async move {
        let rec = engine.reconcile(Some(id)).await?;
        let mut lines = rec.messages;
        lines.extend(rec.refused.iter().map(|r| format!("refused: {r}")));
        Ok(lines.join("\n"))
    })
    .await?;
    if outcome.trim().is_empty() {
        println!("rule {id:?} is already {}", if enable { "enabled" } else { "disabled" });
    }
    Ok(0)
}

/// Applies a change to the engine: the running one (`crr serve` or the UI) through the state
/// store, within a second, or else one opened here for the purpose. Prints the engine's answer
/// line by line and returns it; an answer with a refusal is an error (exit 2).
async fn apply<F, Fut>(paths: &Paths, kind: &str, arg: &str, direct: F) -> Result<String>
where
    F: FnOnce(Arc<Engine>) -> Fut,
    Fut: Future<Output = Result<String>>,
{
    let answer = match EngineLock::acquire(&paths.state)? {
        Err(LockHeld { pid, .. }) => {
            let store = Store::open(&paths.state)?;
            let cmd = store.post_command(kind, arg)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(result) = store.command_result(cmd)? {
                    println!("applied by the running engine (pid {pid}):");
                    break result;
                }
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!(
                        "the running engine (pid {pid}) has not answered within 15 seconds; it applies the change when it next polls (see {})",
                        paths.state.join("crr.log").display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(lock) => {
            drop(lock);
            let config = load(paths)?;
            let engine = open_engine(paths, config).await?;
            direct(engine).await?
        }
    };
    let mut refused = false;
    for line in answer.lines().filter(|l| !l.is_empty()) {
        if let Some(r) = line.strip_prefix("refused: ") {
            eprintln!("refused: {r}");
            refused = true;
        } else if let Some(e) = line.strip_prefix("error: ") {
            anyhow::bail!("{e}");
        } else {
            println!("{line}");
        }
    }
    if refused {
        return Err(Invalid("nothing was changed".into()).into());
    }
    Ok(answer)
}

// ---- migrate, diff ----------------------------------------------------------------------------

pub async fn migrate(paths: &Paths, action: &str, id: &str) -> Result<u8> {
    find_rule(&load(paths)?, id)?;
    let running = EngineLock::held_by_other(&paths.state)?.is_some();
    apply(paths, "migrate", &format!("{action} {id}"), |engine| async move {
        Ok(match engine.migrate_command(action, id).await {
            Ok(m) => m,
            Err(m) => format!("refused: {m}"),
        })
    })
    .await?;
    if !running && matches!(action, "start" | "resume") {
        println!("it runs with `crr run --once` or while `crr serve` runs; follow it with `crr status`");
    }
    Ok(0)
}

pub async fn diff(paths: &Paths, id: &str) -> Result<u8> {
    let config = load(paths)?;
    let rule = find_rule(&config, id)?;
    let clients = Clients::connect(&config).await;
    let store = Store::open(&paths.state)?;
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
