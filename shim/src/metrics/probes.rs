//! What `/livez`, `/readyz` and `/health` answer, decided from ages alone (no clock, no HTTP), so
//! every case is a unit test.
//!
//! Two questions, because they call for opposite remedies. *Live* asks whether the shim itself
//! still works: its event loop has turned recently. A restart fixes a wedged loop, so a liveness
//! probe may follow it. *Ready* asks whether the shim can do its job now: finalized blocks arrive
//! (so it runs the right engine, or idles correctly) and it is live. A stalled node makes a shim
//! unready but not dead: restarting the pod would stop a running engine and bring no block back.

use std::time::Duration;

/// The event loop turns at least this often, even with nothing to do, so that an idle loop is told
/// apart from a wedged one.
pub const TURN_EVERY: Duration = Duration::from_secs(1);

/// A loop that has not turned for this long is wedged: `/livez` answers 503. Far above
/// [`TURN_EVERY`] and anything the loop does in one turn (it never waits inside a turn), so a
/// busy machine does not trip it; short enough that a liveness probe acts within a minute or two.
pub const LIVE_WITHIN: Duration = Duration::from_secs(30);

/// The routes a probe may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The shim's own loop turns.
    Livez,
    /// Live, and finalized blocks arrive within `--stale-after`.
    Readyz,
    /// What the one health route has always meant: finalized blocks arrive within
    /// `--stale-after`. Kept for probes and scripts written before the split.
    Health,
}

impl Route {
    pub fn from_path(path: &str) -> Option<Route> {
        match path {
            "/livez" => Some(Route::Livez),
            "/readyz" => Some(Route::Readyz),
            "/health" => Some(Route::Health),
            _ => None,
        }
    }
}

/// How long ago things last happened; `None` = not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ages {
    /// The event loop's last turn. `None` while the shim is still starting (checks, engine
    /// probes), which counts as live: start-up has its own time-outs.
    pub loop_turn: Option<Duration>,
    /// The last finalized block processed.
    pub block: Option<Duration>,
}

/// Whether the loop is live.
pub fn live(ages: Ages) -> bool {
    ages.loop_turn.is_none_or(|age| age < LIVE_WITHIN)
}

/// Whether finalized blocks arrive within `stale_after`.
pub fn following(ages: Ages, stale_after: Duration) -> bool {
    ages.block.is_some_and(|age| age < stale_after)
}

/// The answer to `route`: `true` = 200, `false` = 503.
pub fn healthy(route: Route, ages: Ages, stale_after: Duration) -> bool {
    match route {
        Route::Livez => live(ages),
        Route::Readyz => live(ages) && following(ages, stale_after),
        Route::Health => following(ages, stale_after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(60);
    const SECOND: Duration = Duration::from_secs(1);

    fn ages(loop_turn: Option<Duration>, block: Option<Duration>) -> Ages {
        Ages { loop_turn, block }
    }

    fn answers(ages: Ages) -> [bool; 3] {
        [Route::Livez, Route::Readyz, Route::Health].map(|r| healthy(r, ages, STALE))
    }

    #[test]
    fn a_turning_loop_with_fresh_blocks_is_live_and_ready() {
        assert_eq!(answers(ages(Some(SECOND), Some(SECOND))), [true; 3]);
    }

    #[test]
    fn a_stalled_node_makes_the_shim_unready_but_not_dead() {
        assert_eq!(
            answers(ages(Some(SECOND), Some(STALE))),
            [true, false, false]
        );
        assert_eq!(answers(ages(Some(SECOND), None)), [true, false, false]);
    }

    #[test]
    fn a_wedged_loop_is_dead_and_unready_whatever_the_blocks_say() {
        let wedged = Some(LIVE_WITHIN);
        assert_eq!(answers(ages(wedged, Some(SECOND))), [false, false, true]);
        assert_eq!(answers(ages(wedged, None)), [false, false, false]);
        assert!(live(ages(Some(LIVE_WITHIN - SECOND), None)));
    }

    #[test]
    fn a_starting_shim_is_live_but_not_ready() {
        assert_eq!(answers(ages(None, None)), [true, false, false]);
    }

    #[test]
    fn routes_are_exact_paths() {
        assert_eq!(Route::from_path("/livez"), Some(Route::Livez));
        assert_eq!(Route::from_path("/readyz"), Some(Route::Readyz));
        assert_eq!(Route::from_path("/health"), Some(Route::Health));
        assert_eq!(Route::from_path("/livez/"), None);
        assert_eq!(Route::from_path("/metrics"), None);
    }
}
