//! The keymap's table, its merge with a user's file, its lookups and its help, tested.

use super::*;
use ratatui::crossterm::event::{KeyCode, KeyModifiers};

fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
    KeyEvent::new(code, modifiers)
}

fn ch(c: char) -> KeyEvent {
    press(KeyCode::Char(c), KeyModifiers::NONE)
}

fn user(text: &str) -> Result<Keymap, ConfigErrors> {
    Keymap::with_user_text(Path::new("my/keymap.toml"), text)
}

fn user_error(text: &str) -> ConfigError {
    let e = user(text).expect_err("the keymap should be refused");
    let first = e.0[0].clone();
    assert_eq!(first.file, Path::new("my/keymap.toml"), "{e}");
    first
}

#[test]
fn the_defaults_load_without_conflicts_and_bind_every_action() {
    let k = Keymap::built_in().unwrap_or_else(|e| panic!("{e}"));
    for action in Action::ALL {
        let b = k.bindings().iter().find(|b| b.action == *action).unwrap();
        assert!(!b.keys.is_empty(), "{action} has no key");
    }
}

#[test]
fn the_design_keys_do_what_it_says() {
    let mut k = Keymap::built_in().unwrap();
    use Action::*;
    use Context::*;
    let shift = KeyModifiers::SHIFT;
    let cases = [
        (Rules, press(KeyCode::Tab, KeyModifiers::NONE), NextPane),
        (Rules, press(KeyCode::BackTab, shift), PrevPane),
        (Log, ch('1'), BucketsPane),
        (Log, ch('2'), RulesPane),
        (Log, ch('3'), QueuePane),
        (Log, ch('4'), LogPane),
        (Log, ch('5'), MigrationPane),
        (Queue, ch('j'), Down),
        (Queue, ch('k'), Up),
        (Queue, press(KeyCode::Down, KeyModifiers::NONE), Down),
        (Queue, press(KeyCode::Up, KeyModifiers::NONE), Up),
        (Queue, press(KeyCode::Char('G'), shift), Bottom),
        (Rules, ch(' '), ToggleRule),
        (Rules, ch('m'), Migrate),
        (Migration, ch('p'), PauseResume),
        (Rules, ch('n'), NewRule),
        (Rules, ch('e'), Edit),
        (Rules, press(KeyCode::Enter, KeyModifiers::NONE), Edit),
        (Rules, ch('d'), Delete),
        (Queue, ch('r'), Retry),
        (Buckets, ch('/'), Filter),
        (Buckets, ch(':'), Palette),
        (Buckets, press(KeyCode::Char('?'), shift), Action::Help),
        (Buckets, ch('q'), Quit),
        (Confirm, ch('y'), Yes),
        (Confirm, ch('n'), No),
        (Input, press(KeyCode::Enter, KeyModifiers::NONE), Submit),
    ];
    for (context, event, action) in cases {
        assert_eq!(
            k.handle(context, event),
            KeyOutcome::Action(action),
            "{context:?} {event:?}"
        );
    }
    // A pane's keys stay in their pane.
    assert_eq!(k.handle(Queue, ch(' ')), KeyOutcome::Unbound);
    assert_eq!(k.handle(Log, ch('r')), KeyOutcome::Unbound);
    // A text field gets the letters.
    assert_eq!(k.handle(Input, ch('q')), KeyOutcome::Unbound);
}

#[test]
fn ctrl_c_quits_everywhere() {
    let mut k = Keymap::built_in().unwrap();
    for context in Context::ALL {
        let event = press(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(
            k.handle(*context, event),
            KeyOutcome::Action(Action::ForceQuit),
            "{context:?}"
        );
    }
    // Caps lock on, or a terminal that reports the shift.
    let event = press(KeyCode::Char('C'), KeyModifiers::CONTROL | KeyModifiers::SHIFT);
    assert_eq!(k.handle(Context::Rules, event), KeyOutcome::Action(Action::ForceQuit));
}

#[test]
fn g_g_is_a_sequence() {
    let mut k = Keymap::built_in().unwrap();
    assert_eq!(k.handle(Context::Queue, ch('g')), KeyOutcome::Pending);
    assert_eq!(k.pending().as_deref(), Some("g"));
    assert_eq!(k.handle(Context::Queue, ch('g')), KeyOutcome::Action(Action::Top));
    assert_eq!(k.pending(), None);
    // A key that does not go on with the sequence counts on its own.
    assert_eq!(k.handle(Context::Queue, ch('g')), KeyOutcome::Pending);
    assert_eq!(k.handle(Context::Queue, ch('j')), KeyOutcome::Action(Action::Down));
    assert_eq!(k.handle(Context::Queue, ch('g')), KeyOutcome::Pending);
    assert_eq!(k.handle(Context::Queue, ch('x')), KeyOutcome::Unbound);
    assert_eq!(k.pending(), None);
    // Moving to another context drops the half-typed sequence.
    assert_eq!(k.handle(Context::Queue, ch('g')), KeyOutcome::Pending);
    assert_eq!(k.handle(Context::Help, ch('g')), KeyOutcome::Pending);
    assert_eq!(k.handle(Context::Rules, ch('g')), KeyOutcome::Pending);
    k.clear_pending();
    assert_eq!(k.pending(), None);
    // Releases never count.
    let mut release = ch('g');
    release.kind = KeyEventKind::Release;
    assert_eq!(k.handle(Context::Rules, release), KeyOutcome::Ignored);
}

#[test]
fn a_user_entry_replaces_the_keys_of_its_action_only() {
    let mut k = user("toggle_rule = [\"t\"]\nretry = { keys = [\"R\", \"ctrl-r\"], desc = \"again\" }\n").unwrap();
    assert_eq!(
        k.handle(Context::Rules, ch('t')),
        KeyOutcome::Action(Action::ToggleRule)
    );
    assert_eq!(k.handle(Context::Rules, ch(' ')), KeyOutcome::Unbound);
    let ctrl_r = press(KeyCode::Char('r'), KeyModifiers::CONTROL);
    assert_eq!(k.handle(Context::Queue, ctrl_r), KeyOutcome::Action(Action::Retry));
    assert_eq!(k.handle(Context::Queue, ch('r')), KeyOutcome::Unbound);
    // Other actions keep their keys, and the help follows.
    assert_eq!(k.handle(Context::Rules, ch('m')), KeyOutcome::Action(Action::Migrate));
    let queue = k.entries(Context::Queue);
    let retry = queue.iter().find(|e| e.action == Action::Retry).unwrap();
    assert_eq!((retry.keys_text().as_str(), retry.desc.as_str()), ("R/Ctrl-r", "again"));
    let rules = k.entries(Context::Rules);
    let toggle = rules.iter().find(|e| e.action == Action::ToggleRule).unwrap();
    assert_eq!(
        (toggle.keys_text().as_str(), toggle.desc.as_str()),
        ("t", "enable/disable")
    );
}

#[test]
fn a_user_may_take_a_key_from_one_action_and_give_it_to_another() {
    let mut k = user("quit = [\"Q\"]\ndelete = [\"q\"]\n").unwrap();
    assert_eq!(k.handle(Context::Rules, ch('q')), KeyOutcome::Action(Action::Delete));
    assert_eq!(k.handle(Context::Queue, ch('q')), KeyOutcome::Unbound);
    assert_eq!(k.handle(Context::Queue, ch('Q')), KeyOutcome::Action(Action::Quit));
    // An action left with no keys drops out of the help.
    let k = user("retry = []\n").unwrap();
    assert!(k.entries(Context::Queue).iter().all(|e| e.action != Action::Retry));
}

#[test]
fn a_conflict_names_file_and_line() {
    // `x` for two actions that both work in every pane.
    let e = user_error("filter = [\"/\"]\n\nhelp = [\"x\"]\npalette = [\"x\"]\n");
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("\"x\"") && e.message.contains("help"), "{e}");
    // A rules key that a global action already has.
    let e = user_error("\ntoggle_rule = [\"space\", \"q\"]\n");
    assert_eq!((e.line, e.column), (2, 25), "{e}");
    assert!(e.message.contains("quit") && e.message.contains("built-in"), "{e}");
    // The same key in different panes is no conflict.
    user("retry = [\"d\"]\n").unwrap();
}

#[test]
fn a_key_that_starts_a_sequence_is_a_conflict() {
    let e = user_error("bottom = [\"g\"]\n");
    assert_eq!(e.line, 1, "{e}");
    assert!(
        e.message.contains("key \"g\" of bottom is the start of \"g g\" of top"),
        "{e}"
    );
}

#[test]
fn an_unknown_action_names_file_and_line() {
    let e = user_error("quit = [\"q\"]\nfrobnicate = [\"f\"]\n");
    assert_eq!((e.line, e.column), (2, 1), "{e}");
    assert!(
        e.message.contains("frobnicate") && e.message.contains("toggle_rule"),
        "{e}"
    );
}

#[test]
fn an_unreadable_key_names_file_and_line() {
    let e = user_error("quit = [\"q\"]\nretry = [\"r\", \"hyper-r\"]\n");
    assert_eq!((e.line, e.column), (2, 15), "{e}");
    assert!(e.message.contains("\"hyper-r\"") && e.message.contains("ctrl-"), "{e}");
    let e = user_error("retry = [\"shift-/\"]\n");
    assert!(e.message.contains("\"?\""), "{e}");
    let e = user_error("retry = [\"  \"]\n");
    assert!(e.message.contains("no key given"), "{e}");
    let e = user_error("retry = [3]\n");
    assert!(e.message.contains("must be a string"), "{e}");
    let e = user_error("retry = \"r\"\n");
    assert!(e.message.contains("list of keys"), "{e}");
}

#[test]
fn other_mistakes_name_file_and_line() {
    let e = user_error("retry = { keys = [\"r\"], contexts = [\"log\"] }\n");
    assert!(e.message.contains("contexts") && e.line == 1, "{e}");
    let e = user_error("retry = { key = [\"r\"] }\n");
    assert!(e.message.contains("unknown field \"key\""), "{e}");
    let e = user_error("\nretry = [\"r\"\n");
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn a_missing_user_file_means_the_defaults_and_a_present_one_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keymap.toml");
    let mut k = Keymap::load(&path).unwrap();
    assert_eq!(k.handle(Context::Queue, ch('r')), KeyOutcome::Action(Action::Retry));
    std::fs::write(&path, "retry = [\"x\"]\nquit = [\"r\", \"r\"]\nfilter = [\"q\"]\n").unwrap();
    let mut k = Keymap::load(&path).unwrap();
    assert_eq!(k.handle(Context::Queue, ch('x')), KeyOutcome::Action(Action::Retry));
    std::fs::write(&path, "retry = [\"x\"]\nbogus = []\n").unwrap();
    let e = Keymap::load(&path).unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}:2:1:", path.display())), "{e}");
}

#[test]
fn the_help_lists_every_action_with_its_keys_and_desc() {
    let k = Keymap::built_in().unwrap();
    let help = k.help();
    for action in Action::ALL {
        assert!(
            help.iter().any(|(_, lines)| lines.iter().any(|l| l.action == *action)),
            "{action} is missing from the help"
        );
    }
    let global = &help.iter().find(|(c, _)| *c == Context::Global).unwrap().1;
    let top = global.iter().find(|l| l.action == Action::Top).unwrap();
    assert_eq!(top.keys_text(), "g g/Home");
    assert_eq!(top.desc, "first row");
    for (_, lines) in &help {
        for l in lines {
            assert!(!l.desc.is_empty() && !l.keys.is_empty(), "{l:?}");
        }
    }
}

#[test]
fn the_key_bar_shows_the_pane_keys_first_then_the_global_ones() {
    let k = Keymap::built_in().unwrap();
    let bar = k.bar(Context::Rules);
    let actions: Vec<Action> = bar.iter().map(|e| e.action).collect();
    assert_eq!(actions.first(), Some(&Action::ToggleRule));
    assert!(
        actions.contains(&Action::Quit) && actions.contains(&Action::Help),
        "{actions:?}"
    );
    assert!(
        !actions.contains(&Action::Retry) && !actions.contains(&Action::Down),
        "{actions:?}"
    );
    let pos = |a| actions.iter().position(|x| *x == a).unwrap();
    assert!(pos(Action::Delete) < pos(Action::Quit));
    let confirm: Vec<Action> = k.bar(Context::Confirm).iter().map(|e| e.action).collect();
    assert_eq!(confirm, vec![Action::Yes, Action::No]);
}
