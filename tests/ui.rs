//! The terminal UI without a terminal: the app's logic driven by key actions, and every pane
//! and overlay rendered into ratatui's `TestBackend` at 80x24 and 120x40 (insta snapshots, with
//! a fixed clock and fixed ids). Styles that carry meaning are asserted separately, since the
//! snapshots hold only text.

use crr::engine::api::{BucketView, EndpointView, Failure, MigrationView, RuleView, RunningCopy};
use crr::engine::{Command, Event, MigrateAction, RetryTarget, Snapshot};
use crr::tui::app::{App, Effect, Mode, Overlay};
use crr::tui::keymap::{Action, Keymap};
use crr::tui::theme::Theme;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};

/// 2026-11-24T12:00:00Z
const NOW: i64 = 1_795_521_600_000;

fn rule(id: &str, enabled: bool) -> RuleView {
    RuleView {
        id: id.into(),
        enabled,
        state: if enabled { "enabled" } else { "disabled" }.into(),
        source: format!("gz/{id}"),
        destination: format!("sh/{id}-dr"),
        prefixes: vec![],
        operations: "all".into(),
        storage_class: None,
        overwrite: "if-different".into(),
        historical: false,
        enable_point: Some(NOW - 3_600_000),
        last_sync_point: Some(NOW - 4_000),
        lag_seconds: enabled.then_some(4),
        backlog_objects: 3,
        backlog_bytes: 3 << 20,
        failed: 0,
        replicated_objects: 120,
        replicated_bytes: 7 << 20,
        error: None,
        migration: None,
    }
}

fn bucket(endpoint: &str, name: &str, versioning: Option<&str>, rule: &str) -> BucketView {
    BucketView {
        endpoint: endpoint.into(),
        bucket: name.into(),
        versioning: versioning.map(str::to_string),
        error: versioning
            .is_none()
            .then(|| "GetBucketVersioning: connection refused".to_string()),
        rules: vec![rule.into()],
    }
}

fn snapshot() -> Snapshot {
    let mut photos = rule("photos", true);
    photos.failed = 1;
    photos.migration = Some(MigrationView {
        id: 1,
        state: "running".into(),
        percent: 42.5,
        listing_complete: true,
        total_objects: 600,
        done_objects: 255,
        total_bytes: 30 << 20,
        done_bytes: 13 << 20,
        skipped_objects: 0,
        failed_objects: 0,
        started_at: NOW - 60_000,
        throughput_bytes_per_sec: 1 << 20,
        eta_seconds: Some(17),
    });
    let mut logs = rule("logs", false);
    logs.overwrite = "always".into();
    Snapshot {
        rules: vec![photos, logs],
        endpoints: vec![
            EndpointView {
                name: "gz".into(),
                region: "ap-guangzhou".into(),
                reachable: Some(true),
                last_success: Some(NOW),
                last_error: None,
                down_since: None,
                failed_attempts: 0,
            },
            EndpointView {
                name: "sh".into(),
                region: "ap-shanghai".into(),
                reachable: Some(false),
                last_success: Some(NOW - 30_000),
                last_error: Some("connection refused".into()),
                down_since: Some(NOW - 25_000),
                failed_attempts: 4,
            },
        ],
        running: vec![RunningCopy {
            task_id: 41,
            rule_id: "photos".into(),
            migration: Some(1),
            key: "2026/movie.bin".into(),
            size: 12 << 20,
            bytes_done: 9 << 20,
            part: 2,
            parts: 3,
            attempt: 1,
            rate: 2 << 20,
        }],
        recent_failures: vec![Failure {
            task_id: 7,
            rule_id: "photos".into(),
            key: "bad/file.txt".into(),
            size: 1024,
            reason: "PutObject sh/photos-dr/bad/file.txt: AccessDenied (HTTP 403)".into(),
            at: NOW - 10_000,
        }],
        throughput: vec![0, 1 << 20, 2 << 20, 2 << 20, 1 << 20],
        buckets: vec![
            bucket("gz", "photos", Some("Enabled"), "source of photos"),
            bucket("sh", "photos-dr", Some("Enabled"), "destination of photos"),
            bucket("gz", "logs", Some(""), "source of logs"),
            bucket("sh", "logs-dr", None, "destination of logs"),
        ],
    }
}

fn app() -> App {
    let mut app = App::new(Mode::Embedded, NOW);
    app.on_snapshot(snapshot());
    app.on_event(Event::TaskDone {
        task: 40,
        rule: "photos".into(),
        key: "2026/a.jpg".into(),
        size: 2048,
        kind: "put".into(),
        migration: None,
    });
    app
}

fn theme() -> Theme {
    Theme::load_with("default", None, false).expect("the default theme")
}

fn render(app: &App, w: u16, h: u16) -> ratatui::buffer::Buffer {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    let keymap = Keymap::built_in().expect("keymap");
    terminal
        .draw(|f| crr::tui::view::draw(f, app, &theme(), &keymap))
        .expect("draw");
    terminal.backend().buffer().clone()
}

fn text(buf: &ratatui::buffer::Buffer) -> String {
    let area = buf.area;
    (0..area.height)
        .map(|y| {
            (0..area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_pane_and_overlay_at_80x24_and_120x40() {
    for (w, h) in [(80, 24), (120, 40)] {
        let mut a = app();
        for pane in [
            Action::BucketsPane,
            Action::RulesPane,
            Action::QueuePane,
            Action::LogPane,
            Action::MigrationPane,
        ] {
            a.on_action(pane);
            insta::assert_snapshot!(format!("{:?}_{w}x{h}", a.pane), text(&render(&a, w, h)));
        }
        a.on_action(Action::RulesPane);
        a.on_action(Action::Help);
        insta::assert_snapshot!(format!("help_{w}x{h}"), text(&render(&a, w, h)));
        a.on_action(Action::Cancel);
        a.on_action(Action::Down);
        a.on_action(Action::Migrate);
        insta::assert_snapshot!(format!("migrate_always_{w}x{h}"), text(&render(&a, w, h)));
    }
}

#[test]
fn styles_that_carry_meaning() {
    let mut a = app();
    a.on_action(Action::QueuePane);
    let buf = render(&a, 100, 24);
    let rows: Vec<String> = text(&buf).lines().map(str::to_string).collect();
    let row_of = |needle: &str| rows.iter().position(|l| l.contains(needle)).expect(needle) as u16;
    // The selected row (the first: the running copy) is reversed, whatever the colours.
    let selected = row_of("2026/movie.bin");
    assert!(buf[(3, selected)].modifier.contains(Modifier::REVERSED));
    // A failed task is red, and not selected.
    let failed = row_of("bad/file.txt");
    assert_eq!(buf[(3, failed)].fg, Color::Red);
    assert!(!buf[(3, failed)].modifier.contains(Modifier::REVERSED));
    // An unreachable endpoint is red too.
    a.on_action(Action::BucketsPane);
    let buf = render(&a, 100, 24);
    let rows: Vec<String> = text(&buf).lines().map(str::to_string).collect();
    let y = rows
        .iter()
        .position(|l| l.contains("unreachable"))
        .expect("unreachable") as u16;
    let x = rows[y as usize].find("unreachable").expect("x") as u16;
    assert_eq!(buf[(x, y)].fg, Color::Red);
}

#[test]
fn toggling_a_rule_asks_first_and_says_what_it_means() {
    let mut a = app();
    a.on_action(Action::RulesPane);
    assert!(a.on_action(Action::ToggleRule).is_empty(), "nothing happens before y");
    match &a.overlay {
        Some(Overlay::Confirm { title, lines, .. }) => {
            assert!(title.contains("Disable rule photos"), "{title}");
            assert!(lines.iter().any(|l| l.contains("aborted")), "{lines:?}");
            assert!(lines.iter().any(|l| l.contains("stays")), "{lines:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(a.on_action(Action::No).is_empty());
    assert!(a.overlay.is_none());
    a.on_action(Action::ToggleRule);
    assert_eq!(
        a.on_action(Action::Yes),
        vec![Effect::Send(Command::DisableRule { id: "photos".into() })]
    );

    // Enabling says only new writes are replicated, and then offers the catch-up migration.
    a.on_action(Action::Down);
    a.on_action(Action::ToggleRule);
    let Some(Overlay::Confirm { lines, .. }) = &a.overlay else {
        panic!("no question")
    };
    assert!(lines.iter().any(|l| l.contains("only writes after")), "{lines:?}");
    assert_eq!(
        a.on_action(Action::Yes),
        vec![Effect::Send(Command::EnableRule { id: "logs".into() })]
    );
    a.on_event(Event::RuleEnabled {
        rule: "logs".into(),
        enable_point: NOW,
        baseline: 5,
        message: "rule \"logs\" enabled\nrule \"logs\": writes made while it was disabled ...; run `crr migrate start logs` to catch up".into(),
    });
    assert_eq!(
        a.on_action(Action::Yes),
        vec![Effect::Send(Command::Migrate {
            id: "logs".into(),
            action: MigrateAction::Start
        })]
    );
}

#[test]
fn a_migration_with_overwrite_always_warns() {
    let mut a = app();
    a.on_action(Action::RulesPane);
    a.on_action(Action::Bottom);
    a.on_action(Action::Migrate);
    let Some(Overlay::Confirm { warning, .. }) = &a.overlay else {
        panic!("no question")
    };
    assert!(
        warning.as_deref().is_some_and(|w| w.contains("overwritten")),
        "{warning:?}"
    );
    // photos has overwrite = "if-different": no warning.
    a.on_action(Action::No);
    a.on_action(Action::Top);
    a.on_action(Action::Migrate);
    let Some(Overlay::Confirm { warning, .. }) = &a.overlay else {
        panic!("no question")
    };
    assert!(warning.is_none());
}

#[test]
fn pause_retry_and_quit() {
    let mut a = app();
    a.on_action(Action::MigrationPane);
    assert_eq!(
        a.on_action(Action::PauseResume),
        vec![Effect::Send(Command::Migrate {
            id: "photos".into(),
            action: MigrateAction::Pause
        })]
    );
    // Retry works on a failed row only.
    a.on_action(Action::QueuePane);
    assert!(a.on_action(Action::Retry).is_empty());
    a.on_action(Action::Down);
    assert_eq!(
        a.on_action(Action::Retry),
        vec![Effect::Send(Command::Retry {
            target: RetryTarget::Tasks { ids: vec![7] }
        })]
    );
    // q asks while copies are in flight; Ctrl-c does not.
    assert!(a.on_action(Action::Quit).is_empty());
    assert_eq!(a.on_action(Action::Yes), vec![Effect::Quit]);
    assert_eq!(a.on_action(Action::ForceQuit), vec![Effect::Quit]);
    // Attached, quitting leaves the service running: no question.
    let mut attached = App::new(Mode::Attached { pid: 4242 }, NOW);
    attached.on_snapshot(snapshot());
    assert_eq!(attached.on_action(Action::Quit), vec![Effect::Quit]);
    assert!(text(&render(&attached, 80, 24)).contains("attached to crr serve (pid 4242)"));
}

#[test]
fn a_queue_of_100000_rows_builds_only_the_visible_ones() {
    let mut a = App::new(Mode::Embedded, NOW);
    let mut s = snapshot();
    s.running = (0..100_000)
        .map(|i| RunningCopy {
            task_id: i,
            rule_id: "photos".into(),
            key: format!("k/{i:06}"),
            size: 100,
            bytes_done: 50,
            part: 1,
            parts: 1,
            attempt: 1,
            ..Default::default()
        })
        .collect();
    a.on_snapshot(s);
    a.on_action(Action::QueuePane);
    a.on_action(Action::Bottom);
    let t = text(&render(&a, 80, 24));
    assert!(t.contains("k/099999"), "{t}");
    assert!(!t.contains("k/000000"), "{t}");
}

fn type_text(app: &mut App, text: &str) {
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    for c in text.chars() {
        app.on_text(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
    }
}

fn clear_field(app: &mut App) {
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    for _ in 0..40 {
        app.on_text(KeyEvent::new(KeyCode::Backspace, KeyModifiers::NONE));
    }
}

const CONFIG: &str = "# my replication\n[[endpoint]]\nname = \"gz\"\nregion = \"ap-guangzhou\"\nurl = \"http://127.0.0.1:9\"\n\n[[endpoint]]\nname = \"sh\"\nregion = \"ap-shanghai\"\nurl = \"http://127.0.0.1:9\"\n\n[[rule]]\nid = \"photos\"   # the first one\nsource = \"gz/photos\"\ndestination = \"sh/photos-dr\"\n";

#[test]
fn the_rule_editor_checks_as_it_goes_and_saves_through_the_engine() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("crr.toml");
    std::fs::write(&path, CONFIG).expect("write");
    let mut a = app();
    a.config_path = Some(path.clone());
    a.on_action(Action::RulesPane);
    a.on_action(Action::NewRule);
    assert!(matches!(a.overlay, Some(Overlay::Editor(_))));
    assert_eq!(a.context(), crr::tui::keymap::Context::Input);
    type_text(&mut a, "logs");
    a.on_action(Action::NextField);
    type_text(&mut a, "gz/logs");
    a.on_action(Action::NextField);
    // A second destination for... no: gz/logs -> sh/photos-dr gives sh/photos-dr a second source.
    type_text(&mut a, "sh/photos-dr");
    let Some(Overlay::Editor(e)) = &a.overlay else {
        panic!("closed")
    };
    assert!(
        e.problem.as_deref().is_some_and(|p| p.contains("photos-dr")),
        "{:?}",
        e.problem
    );
    assert!(
        a.on_action(Action::Submit).is_empty(),
        "a draft the loader refuses is not sent"
    );
    insta::assert_snapshot!("editor_80x24", text(&render(&a, 80, 24)));
    clear_field(&mut a);
    type_text(&mut a, "sh/logs-dr");
    // Moving on with a draft that loads asks the engine to check the real buckets.
    let effects = a.on_action(Action::NextField);
    let [Effect::Send(Command::Preflight { rule: draft, .. })] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    a.on_event(Event::PreflightChecked {
        draft: draft.clone(),
        problems: vec!["the destination bucket sh/logs-dr does not exist".into()],
    });
    assert!(text(&render(&a, 80, 24)).contains("preflight: the destination bucket sh/logs-dr does not exist"));
    type_text(&mut a, "app/, web/");
    let effects = a.on_action(Action::Submit);
    let [Effect::Send(Command::SaveRule { previous_id, rule })] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(previous_id, &None);
    assert_eq!(
        (rule.id.as_str(), rule.source.as_str(), rule.destination.as_str()),
        ("logs", "gz/logs", "sh/logs-dr")
    );
    assert_eq!(rule.prefixes, vec!["app/".to_string(), "web/".to_string()]);
    assert_eq!(
        (rule.operations.as_str(), rule.overwrite.as_str(), rule.enabled),
        ("all", "if-different", true)
    );
    assert!(a.overlay.is_none());
    // The file itself is the engine's to write.
    assert_eq!(std::fs::read_to_string(&path).expect("read"), CONFIG);

    // Editing the selected rule starts from its values; d asks before deleting.
    a.on_action(Action::Top);
    a.on_action(Action::Edit);
    let Some(Overlay::Editor(e)) = &a.overlay else {
        panic!("no editor")
    };
    assert_eq!(e.previous_id.as_deref(), Some("photos"));
    assert_eq!(e.draft().source, "gz/photos");
    a.on_action(Action::Cancel);
    a.on_action(Action::Delete);
    assert_eq!(
        a.on_action(Action::Yes),
        vec![Effect::Send(Command::DeleteRule { id: "photos".into() })]
    );
}

#[test]
fn the_filter_narrows_the_focused_pane_and_the_palette_runs_commands() {
    let mut a = app();
    a.themes = vec!["default".into(), "light".into()];
    a.on_action(Action::RulesPane);
    a.on_action(Action::Filter);
    type_text(&mut a, "LOG");
    a.on_action(Action::Submit);
    assert_eq!(a.rule_rows(), vec![1], "only the logs rule matches");
    let screen = text(&render(&a, 80, 24));
    assert!(
        screen.contains("(filter: LOG)") && !screen.contains("gz/photos"),
        "{screen}"
    );
    // Actions apply to the row shown: the filtered list's first row is "logs".
    a.on_action(Action::ToggleRule);
    assert!(matches!(&a.overlay, Some(Overlay::Confirm { title, .. }) if title.contains("Enable rule logs")));
    a.on_action(Action::No);
    a.on_action(Action::Cancel);
    assert_eq!(a.rule_rows(), vec![0, 1], "Esc clears the filter");

    // The palette completes with Tab and runs what it names, asking first where keys would.
    a.on_action(Action::Palette);
    type_text(&mut a, "mig");
    assert_eq!(
        a.completions("mig"),
        vec!["migration", "migrate photos", "migrate logs"]
    );
    insta::assert_snapshot!("palette_80x24", text(&render(&a, 80, 24)));
    a.on_action(Action::Cancel);
    a.on_action(Action::Palette);
    type_text(&mut a, "disable ph");
    a.on_action(Action::NextField);
    assert!(a.on_action(Action::Submit).is_empty());
    assert!(matches!(&a.overlay, Some(Overlay::Confirm { title, .. }) if title.contains("Disable rule photos")));
    assert_eq!(
        a.on_action(Action::Yes),
        vec![Effect::Send(Command::DisableRule { id: "photos".into() })]
    );
    a.on_action(Action::Palette);
    type_text(&mut a, "theme light");
    assert_eq!(a.on_action(Action::Submit), vec![Effect::SetTheme("light".into())]);
    a.on_action(Action::Palette);
    type_text(&mut a, "queue");
    a.on_action(Action::Submit);
    assert_eq!(a.pane, crr::tui::app::Pane::Queue);
}

#[test]
fn versioning_is_enabled_from_the_buckets_pane_after_a_question() {
    let mut a = app();
    a.on_action(Action::BucketsPane);
    // Rows: gz, gz/photos, gz/logs, sh, sh/photos-dr, sh/logs-dr.
    a.on_action(Action::EnableVersioning);
    assert!(a.overlay.is_none(), "an endpoint row has no versioning");
    a.on_action(Action::Down);
    a.on_action(Action::EnableVersioning);
    assert!(a.overlay.is_none(), "gz/photos is versioned already");
    a.on_action(Action::Down);
    a.on_action(Action::EnableVersioning);
    let Some(Overlay::Confirm { title, warning, .. }) = &a.overlay else {
        panic!("no question")
    };
    assert!(title.contains("gz/logs"), "{title}");
    assert!(warning.as_deref().is_some_and(|w| w.contains("never turn it off")));
    assert_eq!(
        a.on_action(Action::Yes),
        vec![Effect::Send(Command::EnableVersioning {
            endpoint: "gz".into(),
            bucket: "logs".into()
        })]
    );
    let screen = text(&render(&a, 80, 24));
    assert!(
        screen.contains("unversioned") && screen.contains("versioned"),
        "{screen}"
    );
}

#[test]
fn a_broken_theme_or_no_terminal_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("crr.toml");
    std::fs::write(&config, CONFIG).expect("write");
    let themes = dir.path().join("xdg").join("crr").join("themes");
    std::fs::create_dir_all(&themes).expect("dir");
    std::fs::write(themes.join("mine.toml"), "[table]\nselected = { fg = \"purplish\" }\n").expect("write");
    let crr = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_crr"))
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(dir.path().join("state"))
            .args(args)
            .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run crr")
    };
    let out = crr(&["--theme", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("default"), "{err}");
    let out = crr(&["--theme", "mine"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mine.toml") && err.contains("selected") && err.contains(":2:"),
        "{err}"
    );
    // Output is not a terminal here: the UI says what to use instead.
    let out = crr(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("crr run --once"),
        "{err}"
    );
}

#[test]
fn the_help_overlay_scrolls_to_every_key_on_a_small_terminal() {
    let mut a = app();
    a.on_action(Action::Help);
    let top = text(&render(&a, 80, 24));
    assert!(top.contains("Keys 1-") && top.contains("next pane"), "{top}");
    a.on_action(Action::Bottom);
    let bottom = text(&render(&a, 80, 24));
    assert!(bottom.contains("confirm") && bottom.contains("yes"), "{bottom}");
    assert!(!bottom.contains("next pane"), "{bottom}");
    a.on_action(Action::Cancel);
    assert!(a.overlay.is_none());
}
