//! Frontends: the TUI on a terminal, the headless printer otherwise.

pub mod headless;
pub mod summary;
pub mod tui;
