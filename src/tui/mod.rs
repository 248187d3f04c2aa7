//! The terminal UI. It will own the app state, the panes, the overlays and the terminal; today it
//! holds the two things a user configures about it, with no terminal involved: the theme (the
//! style of every UI area) and the keymap (which key does what, in which pane).

pub mod keymap;
pub mod theme;
