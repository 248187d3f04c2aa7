//! The terminal UI end to end in a real terminal: `crr` runs inside tmux against two moto
//! servers, the test types keys (send-keys) and reads the screen (capture-pane), embedded and
//! attached to a `crr serve` the test started.

mod common;

use common::{Env, Rule, create_bucket, get_bytes, put};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One tmux session running one command; killed (the session this test made) on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, dir: &Path, command: &str) -> Tmux {
        let name = format!("crr-test-{}-{name}", std::process::id());
        let shell = format!("{command}; echo \"crr exited $?\"; sleep 600");
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "100", "-y", "30", "-c"])
            .arg(dir)
            .arg(shell)
            .status()
            .expect("tmux is installed (scripts/test installs it)");
        assert!(status.success(), "tmux new-session failed");
        Tmux { name }
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let status = Command::new("tmux")
                .args(["send-keys", "-t", &self.name, k])
                .status()
                .expect("tmux send-keys");
            assert!(status.success());
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn flag(&self, format: &str) -> String {
        let out = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.name, format])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    async fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what}:\n{s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.name]).status();
    }
}

/// The shell command that runs crr on this test's config and state, as `Env::crr` does.
fn crr_line(env: &Env, args: &str) -> String {
    let dir = env.path().display();
    format!(
        "env AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true \
         AWS_CONFIG_FILE={dir}/no-aws-config AWS_SHARED_CREDENTIALS_FILE={dir}/no-aws-credentials \
         XDG_CONFIG_HOME={dir}/xdg-config XDG_STATE_HOME={dir}/xdg-state \
         {} --config {} --state {} {args}",
        env!("CARGO_BIN_EXE_crr"),
        env.config_path.display(),
        env.state_dir.display()
    )
}

async fn world() -> Env {
    let env = Env::start().await;
    create_bucket(&env.gz, "photos", true).await;
    create_bucket(&env.sh, "photos-dr", true).await;
    for i in 0..20 {
        put(&env.gz, "photos", &format!("old/{i:02}.txt"), format!("old {i}")).await;
    }
    env.write_config(&[Rule::new("photos-dr", "gz/photos", "sh/photos-dr")]);
    env
}

/// `crr serve` on the env, once it listens on its socket.
async fn listening_serve(env: &Env) -> common::Serve {
    let serve = env.spawn_serve();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.state_dir.join("crr.sock").exists() {
        assert!(Instant::now() < deadline, "serve never listened\n{}", serve.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serve
}

fn rule_line(screen: &str) -> String {
    screen
        .lines()
        .find(|l| l.contains("photos-dr") && l.contains("->"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_toggle_migrate_and_quit_restores_the_terminal() {
    let env = world().await;
    let ui = Tmux::start("embedded", env.path(), &crr_line(&env, ""));
    let long = Duration::from_secs(60);
    ui.wait_for("the rule enabled", long, |s| {
        s.contains("embedded") && rule_line(s).contains("enabled")
    })
    .await;
    assert_eq!(ui.flag("#{alternate_on}"), "1", "the UI draws on the alternate screen");
    assert_eq!(ui.flag("#{mouse_any_flag}"), "0", "the mouse is left alone");

    // Toggle the rule off: a question first, then the config file changes.
    ui.keys(&["Space"]);
    ui.wait_for("the question", long, |s| s.contains("Disable rule photos-dr?"))
        .await;
    ui.keys(&["y"]);
    ui.wait_for("the rule disabled", long, |s| rule_line(s).contains("disabled"))
        .await;
    assert!(env.read_config_text().contains("enabled = false"));
    // And on again.
    ui.keys(&["Space"]);
    ui.wait_for("the question", long, |s| s.contains("Enable rule photos-dr?"))
        .await;
    ui.keys(&["y"]);
    ui.wait_for("the rule enabled", long, |s| rule_line(s).contains("enabled"))
        .await;
    assert!(!env.read_config_text().contains("enabled = false"));
    // Re-enabling offers the catch-up migration; say no, and start it with m instead.
    ui.wait_for("the catch-up offer", long, |s| s.contains("Catch up rule photos-dr?"))
        .await;
    ui.keys(&["n", "m"]);
    ui.wait_for("the migration question", long, |s| {
        s.contains("Start a migration of rule photos-dr?")
    })
    .await;
    ui.keys(&["y", "5"]);
    ui.wait_for("the migration completed", long, |s| {
        s.contains("completed") && s.contains("100.0%")
    })
    .await;
    assert_eq!(
        get_bytes(&env.sh, "photos-dr", "old/07.txt").await.as_deref(),
        Some(&b"old 7"[..])
    );

    ui.keys(&["q"]);
    ui.wait_for("the shell again", long, |s| s.contains("crr exited 0"))
        .await;
    assert_eq!(ui.flag("#{alternate_on}"), "0", "the terminal is restored");
    assert_eq!(ui.flag("#{cursor_flag}"), "1", "the cursor is shown again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_to_serve_shows_its_migration_and_leaves_it_running() {
    let env = world().await;
    let mut serve = listening_serve(&env).await;
    let ui = Tmux::start("attached", env.path(), &crr_line(&env, ""));
    let long = Duration::from_secs(60);
    ui.wait_for("attached mode", long, |s| {
        s.contains(&format!("attached to crr serve (pid {})", serve.pid()))
    })
    .await;
    // A migration started from the command line shows up in the UI.
    env.crr(&["migrate", "start", "photos-dr"]).await.assert_ok();
    ui.keys(&["5"]);
    ui.wait_for("the service's migration completed", long, |s| {
        s.contains("completed") && s.contains("20/20")
    })
    .await;
    ui.keys(&["q"]);
    ui.wait_for("the shell again", long, |s| s.contains("crr exited 0"))
        .await;
    assert_eq!(serve.try_exit_code(), None, "quitting the UI stopped the service");
    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_is_noticed_and_the_ui_can_take_over_then_sigterm_ends_it_cleanly() {
    let env = world().await;
    let mut serve = listening_serve(&env).await;
    let ui = Tmux::start("takeover", env.path(), &crr_line(&env, ""));
    let long = Duration::from_secs(60);
    ui.wait_for("attached mode", long, |s| s.contains("attached to crr serve"))
        .await;
    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0);
    ui.wait_for("the service gone", long, |s| s.contains("The service stopped"))
        .await;
    ui.keys(&["y"]);
    ui.wait_for("the engine running in the UI", long, |s| {
        s.contains("embedded") && rule_line(s).contains("enabled")
    })
    .await;

    // SIGTERM to the UI (the shell's child): it stops the engine and gives the terminal back.
    let shell = ui.flag("#{pane_pid}");
    let children = Command::new("pgrep").args(["-P", &shell]).output().expect("pgrep -P");
    let pid = String::from_utf8_lossy(&children.stdout)
        .lines()
        .next()
        .map(str::to_string)
        .expect("the crr process");
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    ui.wait_for("the shell again", long, |s| s.contains("crr exited 0"))
        .await;
    assert_eq!(ui.flag("#{alternate_on}"), "0", "the terminal is restored");
}
