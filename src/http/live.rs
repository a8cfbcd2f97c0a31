//! What the live view shows: the warnings firing now (one per alert), the recent history,
//! and a broadcast of every warning for `/events`. The sink thread feeds it through
//! [`DashboardFeed`], one more `Sink`; HTTP handlers read it. A page subscribes with
//! [`LiveState::watch`], which gives the board as it is and every warning after it with no
//! gap between the two: a warning recorded while a page connects is either in the board it
//! starts from or among the events it receives, never neither.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::alert::sink::{Sink, SinkError};
use crate::alert::warning::{Warning, WarningStatus};

/// Warnings kept in the history.
const HISTORY: usize = 500;

/// The live warning board.
#[derive(Debug)]
pub struct LiveState {
    board: Mutex<Board>,
    events: broadcast::Sender<Warning>,
}

#[derive(Debug, Default)]
struct Board {
    /// The latest warning of each alert firing now, by alert id.
    firing: BTreeMap<String, Warning>,
    /// The latest warnings, newest last.
    recent: VecDeque<Warning>,
}

impl Default for LiveState {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveState {
    pub fn new() -> Self {
        LiveState {
            board: Mutex::new(Board::default()),
            events: broadcast::channel(1024).0,
        }
    }

    /// Takes one delivered warning.
    pub fn record(&self, warning: &Warning) {
        // Broadcast under the lock, so that `watch` (which subscribes under it) sees each
        // warning either in its board or as an event.
        if let Ok(mut board) = self.board.lock() {
            match warning.status {
                WarningStatus::Firing => {
                    board.firing.insert(warning.alert_id.clone(), warning.clone());
                }
                WarningStatus::Resolved => {
                    board.firing.remove(&warning.alert_id);
                }
                WarningStatus::Escalated => {}
            }
            board.recent.push_back(warning.clone());
            if board.recent.len() > HISTORY {
                board.recent.pop_front();
            }
            // No subscriber is fine: nobody is watching.
            let _ = self.events.send(warning.clone());
        }
    }

    /// Firing now, highest level first, then the longest firing first.
    pub fn firing(&self) -> Vec<Warning> {
        self.board.lock().map(|b| b.firing()).unwrap_or_default()
    }

    /// What fires (as `firing` orders it) and the latest warnings (newest first), at one
    /// instant: asked for one after the other, they could differ by a warning.
    pub fn board(&self) -> (Vec<Warning>, Vec<Warning>) {
        let board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        (board.firing(), board.recent())
    }

    /// A firing alert's marks changed: the board shows them (no new notification).
    pub fn remark(&self, firing: &Warning) {
        if let Ok(mut board) = self.board.lock()
            && let Some(shown) = board.firing.get_mut(&firing.alert_id)
        {
            shown.marks = firing.marks.clone();
        }
    }

    /// The board now and every warning recorded after it, taken together.
    pub fn watch(&self) -> Watch {
        let board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        Watch {
            firing: board.firing(),
            recent: board.recent(),
            events: self.events.subscribe(),
        }
    }
}

/// What a page starts from: the board at one instant and the warnings recorded after it.
#[derive(Debug)]
pub struct Watch {
    /// Firing at that instant, as [`LiveState::firing`] orders them.
    pub firing: Vec<Warning>,
    /// The latest warnings at that instant, newest first.
    pub recent: Vec<Warning>,
    /// Every warning recorded after that instant.
    pub events: broadcast::Receiver<Warning>,
}

impl Board {
    fn firing(&self) -> Vec<Warning> {
        let mut firing: Vec<Warning> = self.firing.values().cloned().collect();
        firing.sort_by(|a, b| b.level.cmp(&a.level).then_with(|| a.first_breach.cmp(&b.first_breach)));
        firing
    }

    fn recent(&self) -> Vec<Warning> {
        self.recent.iter().rev().cloned().collect()
    }
}

/// The sink that keeps the live view current.
pub(crate) struct DashboardFeed {
    /// The view the HTTP handlers read.
    live: Arc<LiveState>,
}

impl DashboardFeed {
    pub(crate) fn new(live: Arc<LiveState>) -> Self {
        DashboardFeed { live }
    }
}

impl Sink for DashboardFeed {
    fn deliver(&mut self, warning: &Warning) -> Result<(), SinkError> {
        self.live.record(warning);
        Ok(())
    }

    fn in_memory(&self) -> bool {
        true
    }

    fn remark(&mut self, firing: &Warning) {
        self.live.remark(firing);
    }

    fn close(self: Box<Self>) -> Result<(), SinkError> {
        Ok(())
    }
}
