//! Drawing the queue pane with 100,000 rows: one full frame on ratatui's `TestBackend` at 120x40
//! (no terminal), with the selection at the top and at the bottom, and with a `/` filter that
//! keeps a tenth of the rows. Also timed alone: `App::queue_rows`, which every frame builds.
//!
//! Run with the other micro-benchmarks:
//!     cargo bench --bench queue --bench scan --bench render
//!
//! The rows are put straight into the app's public state, as a snapshot would bring them:
//! copies running, recent failures, and completed copies (at most 200 are kept, as the app
//! does). The engine bounds the failures a snapshot carries; this is a stress case.

use criterion::{Criterion, criterion_group, criterion_main};
use crr::engine::Snapshot;
use crr::engine::api::{Failure, RunningCopy};
use crr::tui::app::{App, Completed, Mode, Pane};
use crr::tui::keymap::{Action, Keymap};
use crr::tui::theme::Theme;
use crr::tui::view::draw;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const ROWS: usize = 100_000;
const RUNNING: usize = 64;
const COMPLETED: usize = 200;
/// 2026-11-24T12:00:00Z
const NOW: i64 = 1_795_521_600_000;

fn key(i: usize) -> String {
    format!("photos/2026/{i:06}.jpg")
}

fn app() -> App {
    let running = (0..RUNNING)
        .map(|i| RunningCopy {
            task_id: i as i64,
            rule_id: "photos".into(),
            migration: None,
            key: key(i),
            size: 64 << 20,
            bytes_done: (i as u64) << 20,
            part: 1 + i as u32 % 8,
            parts: 8,
            attempt: 1,
            rate: 5 << 20,
        })
        .collect();
    let failures = (RUNNING..ROWS - COMPLETED)
        .map(|i| Failure {
            task_id: i as i64,
            rule_id: "photos".into(),
            key: key(i),
            size: 1 << 20,
            reason: format!("PutObject dst/photos/{}: AccessDenied (HTTP 403)", key(i)),
            at: NOW - i as i64,
        })
        .collect();
    let mut app = App::new(Mode::Embedded, NOW);
    app.on_snapshot(Snapshot {
        running,
        recent_failures: failures,
        throughput: vec![3 << 20; 30],
        ..Snapshot::default()
    });
    app.completed.extend((ROWS - COMPLETED..ROWS).map(|i| Completed {
        rule: "photos".into(),
        key: key(i),
        size: 1 << 20,
        at: NOW,
    }));
    app.on_action(Action::QueuePane);
    assert_eq!(app.pane, Pane::Queue);
    assert_eq!(app.queue_rows().len(), ROWS);
    app
}

fn render(c: &mut Criterion) {
    let theme = Theme::load_with("default", None, false).expect("the default theme");
    let keymap = Keymap::built_in().expect("keymap");
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
    let mut app = app();
    let queue = Pane::ALL.iter().position(|p| *p == Pane::Queue).expect("queue pane");

    let mut group = c.benchmark_group("render");
    group.sample_size(50);
    let mut frame = |name: &str, app: &App| {
        group.bench_function(name, |b| {
            b.iter(|| {
                terminal.draw(|f| draw(f, app, &theme, &keymap)).expect("draw");
            })
        });
    };
    frame("queue_pane_100k_rows_top", &app);
    app.on_action(Action::Bottom);
    frame("queue_pane_100k_rows_bottom", &app);
    app.on_action(Action::Top);
    app.filters[queue] = "7.jpg".into();
    frame("queue_pane_100k_rows_filtered", &app);
    app.filters[queue].clear();
    group.bench_function("queue_rows_100k", |b| b.iter(|| app.queue_rows().len()));
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
