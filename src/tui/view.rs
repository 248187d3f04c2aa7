//! Drawing the app: a title bar (mode and the last answer), the pane tabs, the focused pane, the
//! key bar generated from the keymap, and overlays (help, confirmations). Only the rows that fit
//! are built, so a long queue costs nothing off screen.

use super::app::{App, BucketRow, Level, Mode, Overlay, Pane, QueueRow};
use super::editor::{Editor, FIELDS};
use super::keymap::{Action, Context, HelpEntry, Keymap};
use super::theme::Theme;
use crate::config::units::human_bytes;
use crate::store::rfc3339;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Tabs, Wrap};

pub fn draw(frame: &mut Frame, app: &App, theme: &Theme, keymap: &Keymap) {
    let [title, tabs, body, bar] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_title(frame, title, app, theme);
    draw_tabs(frame, tabs, app, theme);
    let block = Block::bordered()
        .border_style(theme.pane.border_focused)
        .title(Span::styled(
            match app.filter(app.pane) {
                "" => format!(" {} ", app.pane.title()),
                f => format!(" {} (filter: {f}) ", app.pane.title()),
            },
            theme.pane.title_focused,
        ));
    let inner = block.inner(body);
    frame.render_widget(block, body);
    match app.pane {
        Pane::Buckets => draw_buckets(frame, inner, app, theme),
        Pane::Rules => draw_rules(frame, inner, app, theme),
        Pane::Queue => draw_queue(frame, inner, app, theme),
        Pane::Migration => draw_migration(frame, inner, app, theme),
        Pane::Log => draw_log(frame, inner, app, theme),
    }
    draw_keybar(frame, bar, app, theme, keymap);
    match &app.overlay {
        Some(Overlay::Help) => draw_help(frame, body, theme, keymap, app.help_scroll),
        Some(Overlay::Confirm {
            title, lines, warning, ..
        }) => draw_confirm(frame, body, theme, title, lines, warning.as_deref()),
        Some(Overlay::Editor(e)) => draw_editor(frame, body, theme, e),
        Some(Overlay::Prompt { palette, input }) => draw_prompt(frame, body, app, theme, *palette, input),
        None => {}
    }
}

fn draw_title(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let mut spans = vec![Span::styled(" crr ", theme.title.bar)];
    spans.push(match (&app.mode, app.disconnected) {
        (_, true) => Span::styled(" service stopped: q quits ", theme.title.warning),
        (Mode::Embedded, _) => Span::styled(" embedded ", theme.title.mode),
        (Mode::Attached { pid }, _) => {
            Span::styled(format!(" attached to crr serve (pid {pid}) "), theme.title.attached)
        }
    });
    if let Some((level, text)) = &app.status {
        let style = match level {
            Level::Error => theme.log.error,
            Level::Warn => theme.log.warn,
            Level::Info => theme.title.bar,
        };
        spans.push(Span::styled(format!(" {text}"), style));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(theme.title.bar), area);
}

fn draw_tabs(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let titles: Vec<String> = Pane::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} {}", i + 1, p.title()))
        .collect();
    let selected = Pane::ALL.iter().position(|p| *p == app.pane);
    let tabs = Tabs::new(titles)
        .select(selected)
        .style(theme.tabs.tab)
        .highlight_style(theme.tabs.active)
        .divider(Span::styled("|", theme.tabs.separator));
    frame.render_widget(tabs, area);
}

fn draw_keybar(frame: &mut Frame, area: Rect, app: &App, theme: &Theme, keymap: &Keymap) {
    let context = app.context();
    let mut spans = Vec::new();
    if let Some(p) = keymap.pending() {
        spans.push(Span::styled(format!(" {p} "), theme.keybar.pending));
    }
    // Help and quit always show; the pane's keys fill what room is left, in keymap order.
    let entries = keymap.bar(context);
    let (always, rest): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|e| matches!(e.action, Action::Help | Action::Quit));
    let cost = |e: &HelpEntry| e.keys_text().chars().count() + e.desc.chars().count() + 3;
    let mut room = (area.width as usize).saturating_sub(always.iter().map(cost).sum());
    let mut shown: Vec<&HelpEntry> = Vec::new();
    for e in &rest {
        if cost(e) > room {
            break;
        }
        room -= cost(e);
        shown.push(e);
    }
    shown.extend(always.iter());
    for e in shown {
        spans.push(Span::styled(format!(" {} ", e.keys_text()), theme.keybar.key));
        spans.push(Span::styled(format!("{} ", e.desc), theme.keybar.desc));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(theme.keybar.bar), area);
}

/// A table's header and column widths.
struct Columns<'a>(Vec<&'a str>, Vec<Constraint>);

/// A table of `rows` rows of which only the visible ones are built by `row`.
fn draw_table<'a>(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    theme: &Theme,
    Columns(header, widths): Columns<'a>,
    rows: usize,
    row: impl Fn(usize) -> Row<'a>,
) {
    let height = area.height.saturating_sub(1).max(1) as usize;
    let selected = app.selected().min(rows.saturating_sub(1));
    // The window of rows around the selection: only those are built.
    let first = selected.saturating_sub(height.saturating_sub(1));
    let built: Vec<Row> = (first..rows.min(first + height)).map(row).collect();
    let table = Table::new(built, widths)
        .header(Row::new(header).style(theme.table.header))
        .row_highlight_style(theme.table.selected)
        .style(theme.table.row);
    let mut state = TableState::default().with_selected((rows > 0).then_some(selected - first));
    frame.render_stateful_widget(table, area, &mut state);
}

fn empty(frame: &mut Frame, area: Rect, theme: &Theme, text: &str) {
    frame.render_widget(
        Paragraph::new(text.to_string())
            .style(theme.table.dimmed)
            .wrap(Wrap { trim: true }),
        area,
    );
}

fn draw_buckets(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let s = &app.snapshot;
    let shown = app.bucket_rows();
    if s.endpoints.is_empty() {
        return empty(frame, area, theme, "No endpoints in the config.");
    }
    let row = |i: usize| match shown[i] {
        BucketRow::Endpoint(j) => {
            let e = &s.endpoints[j];
            let (state, style) = match e.reachable {
                Some(true) => ("reachable", theme.endpoint.reachable),
                Some(false) => ("unreachable", theme.endpoint.unreachable),
                None => ("not used yet", theme.endpoint.unknown),
            };
            // Unreachable: when it last answered, and why it does not now.
            let detail = match e.reachable {
                Some(false) => {
                    let last = match e.last_success {
                        Some(t) => format!("last success {}s ago, {}", (app.now - t).max(0) / 1000, rfc3339(t)),
                        None => "no answer yet".to_string(),
                    };
                    match &e.last_error {
                        Some(err) => format!("{last}: {err}"),
                        None => last,
                    }
                }
                _ => String::new(),
            };
            Row::new(vec![
                Cell::from(e.name.clone()),
                Cell::from(e.region.clone()),
                Cell::from(Span::styled(state, style)),
                Cell::from(detail),
            ])
        }
        BucketRow::Bucket(j) => {
            let b = &s.buckets[j];
            let (state, style) = match (b.versioning.as_deref(), &b.error) {
                (Some("Enabled"), _) => ("versioned".to_string(), theme.endpoint.reachable),
                (Some("Suspended"), _) => ("suspended".to_string(), theme.endpoint.unreachable),
                (Some(_), _) => ("unversioned".to_string(), theme.endpoint.unreachable),
                (None, Some(_)) => ("unknown".to_string(), theme.endpoint.unknown),
                (None, None) => ("...".to_string(), theme.endpoint.unknown),
            };
            let detail = match &b.error {
                Some(e) if b.versioning.is_none() => e.clone(),
                _ if b.rules.is_empty() => "no rule".to_string(),
                _ => b.rules.join(", "),
            };
            Row::new(vec![
                Cell::from(format!("  {}", b.bucket)),
                Cell::from(""),
                Cell::from(Span::styled(state, style)),
                Cell::from(detail),
            ])
        }
    };
    draw_table(
        frame,
        area,
        app,
        theme,
        Columns(
            vec!["ENDPOINT / BUCKET", "REGION", "STATE", "RULES / LAST ERROR"],
            vec![
                Constraint::Length(18),
                Constraint::Length(14),
                Constraint::Length(12),
                Constraint::Min(10),
            ],
        ),
        shown.len(),
        row,
    );
}

fn draw_rules(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let s = &app.snapshot;
    let shown = app.rule_rows();
    if s.rules.is_empty() {
        return empty(frame, area, theme, "No rules in the config yet.");
    }
    let wide = area.width >= 110;
    let row = |i: usize| {
        let r = &s.rules[shown[i]];
        let (state, style) = match r.state.as_str() {
            _ if r.failed > 0 => (format!("{} !", r.state), theme.rule.failed),
            "enabled" => (r.state.clone(), theme.rule.enabled),
            "error" => (r.state.clone(), theme.rule.failed),
            "enabling" => (r.state.clone(), theme.rule.enabling),
            _ => (r.state.clone(), theme.rule.disabled),
        };
        // How far behind now the last sync point is; a stopped rule has no lag to speak of.
        let sync = match r.lag_seconds {
            Some(lag) => format!("{lag}s ago"),
            None => "-".into(),
        };
        let migration = r
            .migration
            .as_ref()
            .map(|m| format!("{:.1}% {}", m.percent, m.state))
            .unwrap_or_else(|| "-".into());
        let mut cells = vec![
            Cell::from(r.id.clone()),
            Cell::from(Span::styled(state, style)),
            Cell::from(format!("{} -> {}", r.source, r.destination)),
        ];
        if wide {
            cells.push(Cell::from(if r.prefixes.is_empty() {
                "whole bucket".to_string()
            } else {
                r.prefixes.join(",")
            }));
            cells.push(Cell::from(r.operations.clone()));
            cells.push(Cell::from(r.storage_class.clone().unwrap_or_else(|| "source".into())));
        }
        cells.extend([
            Cell::from(sync),
            Cell::from(format!("{}", r.backlog_objects)),
            Cell::from(format!("{}", r.failed)),
            Cell::from(migration),
        ]);
        Row::new(cells)
    };
    let (header, widths) = if wide {
        (
            vec![
                "ID",
                "STATE",
                "SOURCE -> DESTINATION",
                "SCOPE",
                "OPS",
                "CLASS",
                "SYNCED",
                "BACKLOG",
                "FAILED",
                "MIGRATION",
            ],
            vec![
                Constraint::Length(14),
                Constraint::Length(10),
                Constraint::Min(20),
                Constraint::Length(12),
                Constraint::Length(4),
                Constraint::Length(11),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(16),
            ],
        )
    } else {
        (
            vec![
                "ID",
                "STATE",
                "SOURCE -> DESTINATION",
                "SYNCED",
                "BACKLOG",
                "FAILED",
                "MIGRATION",
            ],
            vec![
                Constraint::Length(10),
                Constraint::Length(9),
                Constraint::Min(20),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(13),
            ],
        )
    };
    draw_table(frame, area, app, theme, Columns(header, widths), shown.len(), row);
}

/// "[#####.....]" of `width` cells for `done` of `total`.
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        ((done.min(total) as u128 * width as u128) / total as u128) as usize
    };
    format!("{}{}", "#".repeat(filled), ".".repeat(width - filled))
}

fn draw_queue(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let s = &app.snapshot;
    let [totals, table] = Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(area);
    let backlog: i64 = s.rules.iter().map(|r| r.backlog_objects).sum::<i64>() - s.running.len() as i64;
    let failed: i64 = s.rules.iter().map(|r| r.failed).sum();
    let rate: u64 = s.running.iter().map(|r| r.rate).sum();
    let [text, spark] = Layout::horizontal([Constraint::Min(20), Constraint::Length(30)]).areas(totals);
    frame.render_widget(
        Paragraph::new(format!(
            "{} copying, {} waiting, {failed} failed; {}/s",
            s.running.len(),
            backlog.max(0),
            human_bytes(rate)
        ))
        .style(theme.queue.totals),
        text,
    );
    frame.render_widget(
        Sparkline::default().data(&s.throughput).style(theme.sparkline.bars),
        spark,
    );
    let rows = app.queue_rows();
    if rows.is_empty() {
        return empty(frame, table, theme, "Nothing to copy: every enabled rule is caught up.");
    }
    let row = |i: usize| match &rows[i] {
        QueueRow::Running(j) => {
            let c = &s.running[*j];
            let pct = (c.bytes_done * 100).checked_div(c.size).unwrap_or(100);
            Row::new(vec![
                Cell::from(c.key.clone()),
                Cell::from(c.rule_id.clone()),
                Cell::from(human_bytes(c.size)),
                Cell::from(Line::from(vec![
                    Span::styled(bar(c.bytes_done, c.size, 10), theme.queue.gauge_filled),
                    Span::raw(format!(" {pct:>3}%")),
                ])),
                Cell::from(Span::styled(format!("{}/s", human_bytes(c.rate)), theme.queue.rate)),
                Cell::from(format!("{}/{} #{}", c.part, c.parts, c.attempt)),
            ])
        }
        QueueRow::Failed(j) => {
            let f = &s.recent_failures[*j];
            Row::new(vec![
                Cell::from(f.key.clone()),
                Cell::from(f.rule_id.clone()),
                Cell::from(human_bytes(f.size)),
                Cell::from(format!("failed: {}", f.reason)),
                Cell::from(""),
                Cell::from(format!("task {}", f.task_id)),
            ])
            .style(theme.queue.failed)
        }
        QueueRow::Completed(j) => {
            let d = &app.completed[*j];
            Row::new(vec![
                Cell::from(d.key.clone()),
                Cell::from(d.rule.clone()),
                Cell::from(human_bytes(d.size)),
                Cell::from("done"),
                Cell::from(""),
                Cell::from(""),
            ])
            .style(theme.queue.completed)
        }
    };
    draw_table(
        frame,
        table,
        app,
        theme,
        Columns(
            vec!["KEY", "RULE", "SIZE", "PROGRESS", "RATE", "PART/TRY"],
            vec![
                Constraint::Min(12),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(16),
                Constraint::Length(11),
                Constraint::Length(9),
            ],
        ),
        rows.len(),
        row,
    );
}

fn draw_migration(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let rules = app.migrations();
    if rules.is_empty() {
        return empty(
            frame,
            area,
            theme,
            "No migration yet: select a rule in the Rules pane and press m to copy what existed before its enable point.",
        );
    }
    let row = |i: usize| {
        let r = rules[i];
        let Some(m) = &r.migration else {
            return Row::new(vec![Cell::from(r.id.clone())]);
        };
        let style = match m.state.as_str() {
            "paused" => theme.migration.paused,
            "completed" => theme.migration.completed,
            "failed" | "cancelled" => theme.migration.failed,
            _ => theme.migration.label,
        };
        let at_least = if m.listing_complete { "" } else { ">=" };
        let eta = m
            .eta_seconds
            .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
            .unwrap_or_else(|| "-".into());
        Row::new(vec![
            Cell::from(r.id.clone()),
            Cell::from(Span::styled(m.state.clone(), style)),
            Cell::from(Line::from(vec![
                Span::styled(bar((m.percent * 10.0) as u64, 1000, 8), theme.migration.gauge_filled),
                Span::raw(format!(" {:5.1}%", m.percent)),
            ])),
            Cell::from(format!(
                "{}/{at_least}{}",
                m.done_objects + m.skipped_objects,
                m.total_objects
            )),
            Cell::from(format!(
                "{}/{at_least}{}",
                human_bytes(m.done_bytes.max(0) as u64),
                human_bytes(m.total_bytes.max(0) as u64)
            )),
            Cell::from(format!("{}/s", human_bytes(m.throughput_bytes_per_sec))),
            Cell::from(eta),
        ])
    };
    draw_table(
        frame,
        area,
        app,
        theme,
        Columns(
            vec!["RULE", "STATE", "PROGRESS", "OBJECTS", "BYTES", "RATE", "ETA"],
            vec![
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(15),
                Constraint::Length(9),
                Constraint::Min(17),
                Constraint::Length(9),
                Constraint::Length(4),
            ],
        ),
        rules.len(),
        row,
    );
}

fn draw_log(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let shown = app.log_rows();
    if app.log.is_empty() {
        return empty(frame, area, theme, "No events yet.");
    }
    let row = |i: usize| {
        let l = &app.log[shown[i]];
        let style = match l.level {
            Level::Error => theme.log.error,
            Level::Warn => theme.log.warn,
            Level::Info => theme.log.info,
        };
        let time = rfc3339(l.at);
        let time = time.get(11..19).unwrap_or(&time).to_string();
        Row::new(vec![
            Cell::from(Span::styled(time, theme.log.time)),
            Cell::from(Span::styled(l.text.clone(), style)),
        ])
    };
    draw_table(
        frame,
        area,
        app,
        theme,
        Columns(vec!["TIME", "EVENT"], vec![Constraint::Length(8), Constraint::Min(10)]),
        shown.len(),
        row,
    );
}

/// A centred box of at most `w` by `h` cells.
fn centred(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(area.x + (area.width - w) / 2, area.y + (area.height - h) / 2, w, h)
}

fn draw_help(frame: &mut Frame, area: Rect, theme: &Theme, keymap: &Keymap, scroll: usize) {
    let mut lines = Vec::new();
    for (context, entries) in keymap.help() {
        if matches!(context, Context::Input) {
            continue;
        }
        lines.push(Line::from(Span::styled(
            context.name().to_string(),
            theme.overlay.title,
        )));
        for e in entries {
            lines.push(Line::from(vec![
                Span::styled(format!("  {:<14}", e.keys_text()), theme.overlay.key),
                Span::styled(e.desc.clone(), theme.overlay.text),
            ]));
        }
    }
    let rect = centred(area, 64, area.height);
    let visible = rect.height.saturating_sub(2) as usize;
    let scroll = scroll.min(lines.len().saturating_sub(visible));
    let more = lines.len() > visible;
    let title = if more {
        format!(
            " Keys {}-{} of {} (j/k scroll, ? or Esc closes) ",
            scroll + 1,
            (scroll + visible).min(lines.len()),
            lines.len()
        )
    } else {
        " Keys (? or Esc closes) ".to_string()
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).scroll((scroll as u16, 0)).block(
            Block::bordered()
                .border_style(theme.overlay.border)
                .title(Span::styled(title, theme.overlay.title)),
        ),
        rect,
    );
}

fn draw_confirm(frame: &mut Frame, area: Rect, theme: &Theme, title: &str, lines: &[String], warning: Option<&str>) {
    let mut text: Vec<Line> = lines
        .iter()
        .map(|l| Line::from(Span::styled(l.clone(), theme.overlay.text)))
        .collect();
    if let Some(w) = warning {
        text.push(Line::from(Span::styled(format!("warning: {w}"), theme.overlay.danger)));
    }
    text.push(Line::from(""));
    text.push(Line::from(Span::styled("y: yes    n: no", theme.overlay.confirm)));
    let rect = centred(area, 76, text.len() as u16 + 4);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .style(Style::default())
            .block(
                Block::bordered()
                    .border_style(theme.overlay.border)
                    .title(Span::styled(format!(" {title} "), theme.overlay.title)),
            ),
        rect,
    );
}

fn draw_editor(frame: &mut Frame, area: Rect, theme: &Theme, e: &Editor) {
    let label_width = 15u16;
    let rect = centred(area, 78, FIELDS.len() as u16 + 6);
    frame.render_widget(Clear, rect);
    let title = match &e.previous_id {
        Some(id) => format!(" Edit rule {id} "),
        None => " New rule ".to_string(),
    };
    let block = Block::bordered()
        .border_style(theme.overlay.border)
        .title(Span::styled(title, theme.overlay.title));
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    let value_width = inner.width.saturating_sub(label_width).max(1);
    for (i, ((name, hint), input)) in FIELDS.iter().zip(&e.inputs).enumerate() {
        let y = inner.y + i as u16;
        if y >= inner.bottom() {
            break;
        }
        let focused = i == e.focus;
        let scroll = input.visual_scroll(value_width as usize);
        let shown: String = input.value().chars().skip(scroll).take(value_width as usize).collect();
        let value = if shown.is_empty() && !focused {
            Span::styled(hint.to_string(), theme.table.dimmed)
        } else {
            Span::styled(
                shown,
                if focused {
                    theme.overlay.input
                } else {
                    theme.overlay.text
                },
            )
        };
        let label = Span::styled(
            format!("{name:>13}  "),
            if focused {
                theme.overlay.selected
            } else {
                theme.overlay.text
            },
        );
        frame.render_widget(
            Paragraph::new(Line::from(vec![label, value])),
            Rect::new(inner.x, y, inner.width, 1),
        );
        if focused {
            let cursor = (input.visual_cursor().saturating_sub(scroll)) as u16;
            frame.set_cursor_position((inner.x + label_width + cursor.min(value_width - 1), y));
        }
    }
    let mut y = inner.y + FIELDS.len() as u16 + 1;
    let focus_name = FIELDS.get(e.focus).map(|f| f.0).unwrap_or_default();
    if matches!(focus_name, "source" | "destination") && !e.known_buckets.is_empty() && y < inner.bottom() {
        frame.render_widget(
            Paragraph::new(format!("known: {}", e.known_buckets.join(", "))).style(theme.table.dimmed),
            Rect::new(inner.x, y, inner.width, 1),
        );
        y += 1;
    }
    if y < inner.bottom() {
        let line = match (&e.problem, e.preflight_now()) {
            (Some(p), _) => Span::styled(p.clone(), theme.overlay.danger),
            (None, Some([first, ..])) => Span::styled(format!("preflight: {first}"), theme.overlay.danger),
            (None, Some([])) => Span::styled(
                "preflight passed; Enter saves to the config file, Esc cancels",
                theme.overlay.confirm,
            ),
            (None, None) => Span::styled("Enter saves to the config file; Esc cancels", theme.overlay.confirm),
        };
        frame.render_widget(Paragraph::new(line), Rect::new(inner.x, y, inner.width, 1));
    }
}

/// The `/` filter or `:` palette line at the bottom of the pane, with the palette's completions
/// above it.
fn draw_prompt(frame: &mut Frame, area: Rect, app: &App, theme: &Theme, palette: bool, input: &tui_input::Input) {
    let prefix = if palette { ":" } else { "/" };
    let y = area.bottom().saturating_sub(2);
    let line = Rect::new(area.x + 1, y, area.width.saturating_sub(2), 1);
    if palette {
        let options = app.completions(input.value());
        let height = (options.len() as u16).min(8);
        if height > 0 {
            let list = Rect::new(
                area.x + 1,
                y.saturating_sub(height),
                area.width.saturating_sub(2).min(40),
                height,
            );
            frame.render_widget(Clear, list);
            let lines: Vec<Line> = options
                .iter()
                .take(height as usize)
                .enumerate()
                .map(|(i, o)| {
                    Line::from(Span::styled(
                        o.clone(),
                        if i == 0 {
                            theme.overlay.selected
                        } else {
                            theme.overlay.text
                        },
                    ))
                })
                .collect();
            frame.render_widget(Paragraph::new(lines), list);
        }
    }
    frame.render_widget(Clear, line);
    let width = line.width.saturating_sub(1).max(1) as usize;
    let scroll = input.visual_scroll(width);
    let shown: String = input.value().chars().skip(scroll).take(width).collect();
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(prefix, theme.overlay.title),
            Span::styled(shown, theme.overlay.input),
        ])),
        line,
    );
    let cursor = input.visual_cursor().saturating_sub(scroll) as u16;
    frame.set_cursor_position((line.x + 1 + cursor, line.y));
}
