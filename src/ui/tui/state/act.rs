//! What an operator action does to the model: selecting, scrolling, retrying, quitting (the keys that map to
//! actions are in [`crate::ui::tui::keys`]).

use super::super::keys::{Action, Effect};
use super::{App, Control, Focus, HostKeyDecision, NodeState, Screen};

impl App {
    /// Applies an operator action; `page` is the output pane's height in lines. Returns what the loop must do.
    pub fn act(&mut self, action: Action, page: usize) -> Option<Effect> {
        let page = page.max(1);
        match action {
            // The operator decides on the host keys once they are all in.
            Action::Start if self.checking_host_keys() => {}
            Action::Start => {
                self.screen = Screen::Running;
                return Some(Effect::Go(true));
            }
            Action::Decline => return Some(Effect::Go(false)),
            Action::Up if self.screen == Screen::Confirm => {
                self.host_key_selected = self.host_key_selected.saturating_sub(1);
            }
            Action::Down if self.screen == Screen::Confirm => {
                self.host_key_selected = (self.host_key_selected + 1).min(self.host_keys.len().saturating_sub(1));
            }
            Action::AcceptHostKey => self.decide_host_key(HostKeyDecision::Accept),
            Action::RefuseHostKey => self.decide_host_key(HostKeyDecision::Refuse),
            Action::Up => match self.focus {
                Focus::List => self.select(self.selected.saturating_sub(1)),
                Focus::Output => self.scroll_up(1, page),
            },
            Action::Down => match self.focus {
                Focus::List => self.select(self.selected + 1),
                Focus::Output => self.scroll_down(1, page),
            },
            Action::ToggleFocus => {
                self.focus = match self.focus {
                    Focus::List => Focus::Output,
                    Focus::Output => Focus::List,
                }
            }
            Action::ScrollUp(n) => self.scroll_up(n, page),
            Action::ScrollDown(n) => self.scroll_down(n, page),
            Action::PageUp => self.scroll_up(page.saturating_sub(1).max(1), page),
            Action::PageDown => self.scroll_down(page.saturating_sub(1).max(1), page),
            Action::Home => {
                self.follow = false;
                self.scroll_top = self.selected_pane().map_or(0, |p| p.output.first_seq());
            }
            Action::End => self.follow = true,
            Action::ToggleFollow => {
                if self.follow {
                    self.scroll_top = self.bottom_top(page);
                }
                self.follow = !self.follow;
            }
            Action::Retry => {
                // After `run_finished` the engine still takes retries until the screen lets go of it.
                let engine_gone = self.run.events_closed;
                let node = self.run.nodes.get(self.selected)?;
                if node.state != NodeState::Failed || engine_gone || self.cancelling {
                    return None;
                }
                let node = node.name.clone();
                self.panes[self.selected].retry_requested = true;
                // The run goes on: its end no longer holds (the retried node's events follow).
                if self.run.end.take().is_some() {
                    self.screen = Screen::Running;
                    self.follow = true;
                }
                return Some(Effect::Control(Control::Retry { node }));
            }
            Action::AskQuit => {
                if self.run_over() {
                    return self.leave_run_view();
                }
                self.quit_confirm = true;
            }
            Action::ConfirmQuit => {
                self.quit_confirm = false;
                return self.quit();
            }
            Action::Dismiss => {
                self.quit_confirm = false;
                self.help = false;
            }
            Action::Interrupt => {
                self.quit_confirm = false;
                return match self.screen {
                    Screen::Confirm => Some(Effect::Go(false)),
                    Screen::Summary => Some(Effect::Exit),
                    // A second Ctrl-C while cancelling leaves without waiting for the engine.
                    Screen::Running if self.cancelling => Some(Effect::Exit),
                    Screen::Running => self.quit(),
                };
            }
            Action::ToggleHelp => self.help = !self.help,
            Action::Leave => return Some(Effect::Exit),
            Action::ShowRun => {
                self.screen = Screen::Running;
                self.follow = true;
            }
        }
        None
    }

    fn quit(&mut self) -> Option<Effect> {
        if self.run_over() {
            return Some(Effect::Exit);
        }
        self.leaving = true;
        if self.cancelling {
            return None;
        }
        self.cancelling = true;
        Some(Effect::Control(Control::Cancel))
    }

    fn leave_run_view(&mut self) -> Option<Effect> {
        if self.cancelling || self.leaving {
            return Some(Effect::Exit);
        }
        self.screen = Screen::Summary;
        None
    }

    fn select(&mut self, index: usize) {
        let index = index.min(self.run.nodes.len().saturating_sub(1));
        if index != self.selected {
            self.selected = index;
            self.follow = true;
        }
    }

    /// The first visible line when showing the newest lines in a pane of `page` lines.
    fn bottom_top(&self, page: usize) -> u64 {
        self.selected_pane().map_or(0, |p| {
            p.output.end_seq().saturating_sub(page as u64).max(p.output.first_seq())
        })
    }

    /// The first visible output line for a pane of `page` lines.
    pub fn output_top(&self, page: usize) -> u64 {
        let bottom = self.bottom_top(page);
        if self.follow {
            return bottom;
        }
        let first = self.selected_pane().map_or(0, |p| p.output.first_seq());
        self.scroll_top.clamp(first, bottom.max(first))
    }

    fn scroll_up(&mut self, lines: usize, page: usize) {
        let top = self.output_top(page);
        self.follow = false;
        self.scroll_top = top.saturating_sub(lines as u64);
        self.scroll_top = self.output_top(page);
    }

    fn scroll_down(&mut self, lines: usize, page: usize) {
        if self.follow {
            return;
        }
        self.scroll_top = self.output_top(page) + lines as u64;
        if self.scroll_top >= self.bottom_top(page) {
            // Reaching the end picks the live tail up again, like `tail -f`.
            self.follow = true;
        }
    }
}
