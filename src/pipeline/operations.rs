//! The operations desk's wiring into a run: the desk (restored from its journal in the
//! state directory), the HTTP side's access to it (through a weak sender to the sink
//! thread, so the HTTP side never holds the pipeline open), and on live runs the wall
//! clock's tick each second, on which deadlines run and silences end. Replays keep the
//! desk on the virtual clock: actions are stamped with it and deadlines do not run
//! (`cityops test` runs them, exactly, on its own timeline).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::RunError;
use crate::alert::desk::book::Desk;
use crate::alert::desk::keeper::DeskKeeper;
use crate::alert::sink::Notice;
use crate::config::Config;
use crate::config::operators::{OPERATOR_ENV, Operators};
use crate::http::DeskAccess;
use crate::metrics::Metrics;
use crate::rules::worker::DetectionClock;
use crate::state::StateDir;
use crate::time::wall_now_ms;

/// How often the wall clock reaches the desk.
const TICK: Duration = Duration::from_secs(1);

/// Opens the desk for a run; starts the wall-clock tick on live runs.
pub(super) fn open_desk(
    config: &Config,
    state: Option<&StateDir>,
    clock: DetectionClock,
    notices: &mpsc::Sender<Notice>,
    metrics: &Arc<Metrics>,
    runtime: &tokio::runtime::Runtime,
) -> Result<(DeskKeeper, DeskAccess), RunError> {
    let operators =
        Operators::new(&config.http.operators, std::env::var(OPERATOR_ENV).ok()).map_err(RunError::Config)?;
    let desk = Desk::new(config.operations.clone()).map_err(RunError::Config)?;
    let virtual_clock = clock == DetectionClock::EventTime;
    let (keeper, desk) =
        DeskKeeper::open(desk, state, virtual_clock, Arc::clone(metrics)).map_err(|source| RunError::Io {
            context: "reading the operations journal".to_string(),
            source,
        })?;
    let weak = notices.downgrade();
    if clock == DetectionClock::Wall {
        let ticks = weak.clone();
        runtime.spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(notices) = ticks.upgrade() else { break };
                if notices.send(Notice::Clock(wall_now_ms())).await.is_err() {
                    break;
                }
            }
        });
    }
    let access = DeskAccess {
        desk,
        notices: weak,
        operators: Arc::new(operators),
        virtual_clock,
    };
    Ok((keeper, access))
}
