//! Argument parsing, then hand-off to the terminal UI (no command) or to a headless command.

use clap::{Args, Parser, Subcommand};
use crr::cli::{self, Paths};
use std::path::PathBuf;
use std::process::ExitCode;

/// Cross-region replication for S3-compatible object storage.
///
/// crr copies every new version written to a source bucket into a destination bucket in
/// another region, following rules in a TOML config file, and keeps its progress in a state
/// directory so nothing is lost when it stops. Run it from cron (`crr run --once`), as a
/// service (`crr serve`), and watch it with `crr status`.
#[derive(Parser)]
#[command(name = "crr", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Option<Command>,
}

const EXAMPLES: &str = "Examples:
  crr check                         validate the config and preflight every rule
  crr run --once                    replicate what changed since the last run, then exit
  crr serve                         replicate continuously until SIGINT/SIGTERM
  crr status --json                 progress per rule, for scripts
  crr rule disable photos-dr        stop a rule (replicated data stays)
  crr migrate start photos-dr       copy what existed before the rule's enable point
  crr diff photos-dr                list objects missing or different on the destination

Config: --config, else $CRR_CONFIG, else $XDG_CONFIG_HOME/crr/config.toml.
State:  --state, else $CRR_STATE, else $XDG_STATE_HOME/crr.
Exit status: 0 success, 1 the work failed, 2 invalid input (usage, config, preflight).";

#[derive(Args)]
struct Global {
    /// The config file [env: CRR_CONFIG] [default: $XDG_CONFIG_HOME/crr/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The state directory [env: CRR_STATE] [default: $XDG_STATE_HOME/crr]
    #[arg(long, global = true, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The terminal UI's theme
    #[arg(long, global = true, value_name = "NAME")]
    theme: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and preflight every rule against the real buckets (0 = all good)
    Check,
    /// Catch every enabled rule up, then exit (0 = nothing failed, 1 = tasks failed)
    Run {
        /// Run once and exit (the only mode; `crr serve` runs continuously)
        #[arg(long)]
        once: bool,
    },
    /// Run the engine headless until SIGINT or SIGTERM
    Serve,
    /// Per-rule state, progress and backlog
    Status {
        /// One JSON object, for scripts
        #[arg(long)]
        json: bool,
    },
    /// List, enable or disable rules (the config file is updated, comments kept)
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Running, queued and failed tasks
    Queue {
        /// Only failed tasks, with their reasons
        #[arg(long)]
        failed: bool,
        /// JSON, for scripts
        #[arg(long)]
        json: bool,
    },
    /// Historical migration: copy what existed before the enable point
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Compare source and destination within a rule's scope (0 = same, 1 = they differ)
    Diff { id: String },
    /// Queue failed tasks again
    Retry {
        /// Task ids (see `crr queue --failed`)
        tasks: Vec<i64>,
        /// Every failed task of this rule
        #[arg(long, value_name = "ID", conflicts_with = "all")]
        rule: Option<String>,
        /// Every failed task
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum RuleCommand {
    /// The rules in the config, with their state
    List,
    /// Enable a rule: preflight, record a new enable point; later writes are replicated
    Enable { id: String },
    /// Disable a rule: queued tasks dropped, in-flight copies aborted, replicated data kept
    Disable { id: String },
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Start copying every object that exists now and is missing or different on the destination
    Start { id: String },
    /// Pause it: copies in flight finish, nothing new starts
    Pause { id: String },
    /// Continue a paused migration from where it stopped
    Resume { id: String },
    /// Cancel it: queued copies dropped, in-flight ones aborted, copied objects stay
    Cancel { id: String },
}

fn main() -> ExitCode {
    fewer_malloc_arenas();
    let cli = Cli::parse();
    let paths = Paths::resolve(cli.global.config, cli.global.state);
    let Some(command) = cli.command else {
        let theme = cli.global.theme;
        return cli::run(paths, |p| async move { crr::tui::run(&p, theme).await });
    };
    cli::run(paths, |rt_paths| async move {
        match command {
            Command::Check => cli::check(&rt_paths).await,
            Command::Run { once } => {
                if !once {
                    return Err(crr::Invalid(
                        "`crr run` needs --once (it catches up and exits); use `crr serve` to run continuously".into(),
                    )
                    .into());
                }
                cli::run_once(&rt_paths).await
            }
            Command::Serve => cli::serve(&rt_paths).await,
            Command::Status { json } => cli::status(&rt_paths, json).await,
            Command::Rule(RuleCommand::List) => cli::rule_list(&rt_paths).await,
            Command::Rule(RuleCommand::Enable { id }) => cli::rule_set(&rt_paths, &id, true).await,
            Command::Rule(RuleCommand::Disable { id }) => cli::rule_set(&rt_paths, &id, false).await,
            Command::Migrate(m) => {
                use crr::engine::MigrateAction;
                let (action, id) = match m {
                    MigrateCommand::Start { id } => (MigrateAction::Start, id),
                    MigrateCommand::Pause { id } => (MigrateAction::Pause, id),
                    MigrateCommand::Resume { id } => (MigrateAction::Resume, id),
                    MigrateCommand::Cancel { id } => (MigrateAction::Cancel, id),
                };
                cli::migrate(&rt_paths, action, &id).await
            }
            Command::Diff { id } => cli::diff(&rt_paths, &id).await,
            Command::Queue { failed, json } => cli::queue(&rt_paths, failed, json).await,
            Command::Retry { tasks, rule, all } => cli::retry(&rt_paths, tasks, rule, all).await,
        }
    })
}

/// glibc gives threads that allocate at the same time arenas of their own (up to 8 per core),
/// and each arena keeps what was freed in it: copies hop between the runtime's threads, so the
/// same buffers ended up held several times over. One arena per core (the runtime runs a worker
/// per core) is enough: on two cores, copying 4 objects of 256 MiB peaked at 72 MB of RSS with
/// glibc's default and at 56 to 58 MB with two arenas, for the same CPU. Called before any
/// thread starts.
fn fewer_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
