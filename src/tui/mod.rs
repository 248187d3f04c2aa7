//! The terminal UI: `crr` with no subcommand. It drives the engine through an `EngineHandle`,
//! embedded in this process or attached to a `crr serve` through the state directory's socket,
//! and never awaits the network or the store: commands go out with `try_send`, replies, events
//! and snapshots come back on channels, and the screen is redrawn only when something changed,
//! at most 30 times a second. `app` holds the state and logic, `view` draws it, `theme` and
//! `keymap` are what a user configures.

pub mod app;
pub mod editor;
mod filter;
pub mod keymap;
pub mod theme;
pub mod view;

use crate::Invalid;
use crate::cli::{Driver, Paths};
use crate::engine::{Engine, EngineHandle, Reply, service};
use anyhow::{Context as _, Result};
use app::{App, Effect, Mode};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use keymap::{KeyOutcome, Keymap};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use theme::Theme;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The shortest time between two frames.
const FRAME: Duration = Duration::from_millis(33);

/// What runs behind the UI.
struct Backend {
    handle: EngineHandle,
    mode: Mode,
    /// The embedded engine, its socket, and the token and task that run it.
    embedded: Option<(
        Arc<Engine>,
        service::Listening,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Backend {
    /// Attaches to the service on the state directory, or starts the engine here.
    async fn start(paths: &Paths) -> Result<Backend> {
        match Driver::connect(paths).await? {
            Driver::Attached { handle, pid } => Ok(Backend {
                handle,
                mode: Mode::Attached { pid },
                embedded: None,
            }),
            Driver::Embedded { handle, engine } => {
                let socket = service::listen(handle.clone(), &paths.state)?;
                let stop = CancellationToken::new();
                let task = {
                    let (engine, stop) = (engine.clone(), stop.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            r = engine.reconcile(None) => {
                                if let Err(e) = r {
                                    tracing::error!(error = %format!("{e:#}"), "applying the config failed");
                                }
                            }
                            _ = stop.cancelled() => return,
                        }
                        if let Err(e) = engine.serve(stop).await {
                            tracing::error!(error = %format!("{e:#}"), "the engine stopped");
                        }
                    })
                };
                Ok(Backend {
                    handle,
                    mode: Mode::Embedded,
                    embedded: Some((engine, socket, stop, task)),
                })
            }
        }
    }

    /// Stops an embedded engine: copies in flight get their grace period, the rest resumes on
    /// the next start. An attached service goes on.
    async fn stop(self) {
        if let Some((engine, socket, stop, task)) = self.embedded {
            drop(socket);
            stop.cancel();
            let _ = task.await;
            engine.sweep_uploads().await;
        }
    }
}

/// Runs the UI until the user quits; the exit status.
pub async fn run(paths: &Paths, theme_flag: Option<String>) -> Result<u8> {
    let config = crate::cli::load(paths)?;
    let name = theme_flag.or(config.theme.clone()).unwrap_or_else(|| "default".into());
    let theme = Theme::load(&name, Some(&theme::user_theme_dir())).map_err(|e| Invalid(e.to_string()))?;
    let keymap = Keymap::load(&keymap::user_keymap_path())?;
    crate::cli::init_log(paths)?;
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(Invalid(
            "the terminal UI needs a terminal; for scripts and services use `crr run --once`, `crr serve` and `crr status`".into(),
        )
        .into());
    }
    let backend = Backend::start(paths).await?;
    install_panic_hook();
    let mut terminal = ratatui::try_init().context("preparing the terminal")?;
    let result = ui_loop(&mut terminal, paths, backend, theme, keymap).await;
    ratatui::restore();
    result
}

/// A panic anywhere (a spawned task included) restores the terminal (ratatui's hook, which
/// runs first), is logged, and ends the process: the UI must never draw over the shell.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        previous(info);
        std::process::exit(101);
    }));
}

/// Reads terminal input on a thread of its own, so the async loop never blocks on it.
fn spawn_input(stop: Arc<AtomicBool>) -> mpsc::Receiver<TermEvent> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if tx.blocking_send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

async fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    paths: &Paths,
    mut backend: Backend,
    mut theme: Theme,
    mut keymap: Keymap,
) -> Result<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let stop_input = Arc::new(AtomicBool::new(false));
    let mut input = spawn_input(stop_input.clone());
    let mut app = App::new(backend.mode.clone(), crate::store::now_ms());
    app.config_path = Some(paths.config.clone());
    app.themes = theme::available(Some(&theme::user_theme_dir()));
    let mut events = backend.handle.events();
    let mut snapshots = backend.handle.snapshot();
    let mut replies: FuturesUnordered<oneshot::Receiver<Reply>> = FuturesUnordered::new();
    let mut dirty = true;
    let mut last_frame = Instant::now() - FRAME;
    let mut quit = false;
    while !quit {
        app.now = crate::store::now_ms();
        if dirty && last_frame.elapsed() >= FRAME {
            terminal.draw(|f| view::draw(f, &app, &theme, &keymap))?;
            last_frame = Instant::now();
            dirty = false;
        }
        let wait = if dirty {
            FRAME.saturating_sub(last_frame.elapsed())
        } else {
            Duration::from_secs(1)
        };
        let mut effects = Vec::new();
        tokio::select! {
            ev = input.recv() => match ev {
                Some(TermEvent::Key(key)) if key.kind != KeyEventKind::Release => {
                    if key.code == KeyCode::Char('z') && key.modifiers.contains(KeyModifiers::CONTROL) {
                        suspend(terminal)?;
                    } else {
                        match keymap.handle(app.context(), key) {
                            KeyOutcome::Action(a) => effects = app.on_action(a),
                            KeyOutcome::Unbound if app.context() == keymap::Context::Input => app.on_text(key),
                            KeyOutcome::Pending | KeyOutcome::Unbound | KeyOutcome::Ignored => {}
                        }
                    }
                    dirty = true;
                }
                Some(TermEvent::Resize(..)) => dirty = true,
                Some(_) => {}
                None => quit = true,
            },
            changed = snapshots.changed() => match changed {
                Ok(()) => {
                    app.on_snapshot(snapshots.borrow_and_update().clone());
                    dirty = true;
                }
                Err(_) => {
                    app.on_disconnected();
                    // Nothing more comes from this handle: wait for the user.
                    snapshots = tokio::sync::watch::channel(Default::default()).1;
                    dirty = true;
                }
            },
            ev = events.recv() => match ev {
                Ok(e) => {
                    app.on_event(e);
                    dirty = true;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => {
                    events = tokio::sync::broadcast::channel(1).1;
                }
            },
            Some(reply) = replies.next(), if !replies.is_empty() => {
                app.on_reply(reply.unwrap_or_else(|_| Reply::refused("the engine went away before answering", "")));
                dirty = true;
            }
            _ = term.recv() => quit = true,
            _ = hup.recv() => quit = true,
            _ = tokio::time::sleep(wait) => {}
        }
        if backend.handle.is_closed() && !app.disconnected {
            app.on_disconnected();
            dirty = true;
        }
        for effect in effects {
            match effect {
                Effect::Send(command) => match backend.handle.try_send(command) {
                    Ok(rx) => replies.push(rx),
                    Err(reply) => app.on_reply(reply),
                },
                Effect::Quit => quit = true,
                Effect::SetTheme(name) => match Theme::load(&name, Some(&theme::user_theme_dir())) {
                    Ok(t) => {
                        theme = t;
                        app.on_reply(Reply::done(format!("theme {name}")));
                    }
                    Err(e) => app.on_reply(Reply::refused(e.to_string(), "")),
                },
                Effect::Reconnect => {
                    // The service is gone: attach to a new one, or run the engine here.
                    match Backend::start(paths).await {
                        Ok(b) => {
                            backend = b;
                            app = App::new(backend.mode.clone(), crate::store::now_ms());
                            app.config_path = Some(paths.config.clone());
                            events = backend.handle.events();
                            snapshots = backend.handle.snapshot();
                        }
                        Err(e) => app.on_reply(Reply::refused(format!("{e:#}"), "try again, or quit")),
                    }
                    dirty = true;
                }
            }
        }
    }
    stop_input.store(true, Ordering::Relaxed);
    if backend.embedded.is_some() && !app.snapshot.running.is_empty() {
        terminal.draw(|f| {
            let area = f.area();
            f.render_widget(
                ratatui::widgets::Paragraph::new(
                    " crr: stopping; copies in flight get 10 seconds, the rest resumes on the next start",
                )
                .style(theme.title.warning),
                ratatui::layout::Rect::new(area.x, area.y, area.width, 1),
            );
        })?;
    }
    backend.stop().await;
    Ok(0)
}

/// Ctrl-z: gives the terminal back, stops the process like a shell job, and takes the terminal
/// again when it is continued.
fn suspend(terminal: &mut ratatui::DefaultTerminal) -> Result<()> {
    ratatui::restore();
    // SAFETY: sending a signal to this very process has no memory-safety implications.
    unsafe {
        libc::raise(libc::SIGTSTP);
    }
    *terminal = ratatui::try_init().context("taking the terminal back")?;
    terminal.clear()?;
    Ok(())
}
