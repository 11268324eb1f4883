//! The send gate: keeps the bot's messages out of the moments when the
//! sync loop is handling a sync response.
//!
//! Why: every sync that brings a room the bot has just joined also lists
//! the bot's own account as "devices changed" (Synapse does this for every
//! member of a newly joined room), and matrix-sdk 0.18 then counts the bot's
//! own account as a member whose devices are being queried. Until the sync
//! loop has sent that query (at the end of the same `sync_once`), a message
//! sent into *any* room waits up to 5 s for it while holding the client's
//! one-time-key lock; the sync loop needs that lock to send the query and
//! queues behind every such message. Under load (a new chat every second or
//! so, messages going out in dozens of rooms) this stalled the whole bot
//! for minutes in the load benchmark. A message that goes out only after
//! the sync loop has finished the response never meets that window.
//!
//! Two things close the gate:
//! - a join that has returned but whose sync has not finished yet: the
//!   response that brings it is the one that marks the bot's account, and
//!   the mark is made before any handler runs, so a message must already
//!   be held when that response arrives (seen in the benchmark: two
//!   messages that started just before the handlers ran held the sync loop
//!   10 s). A message waits only for the joins that were pending when it
//!   was ready, so a steady stream of new chats cannot hold it for long;
//! - a sync response being handled: the first handler of an iteration
//!   closes the gate, the sync loop opens it when `sync_once` returns. A
//!   message caused by an event waits only for the rest of the iteration
//!   that brought it.
//!
//! The gate costs latency under load (docs/benchmarks.md); a fix in the
//! SDK would make it unnecessary: `docs/upstream-matrix-sdk-stall.md` is a
//! draft of that upstream issue.

use std::collections::HashSet;
use std::time::Duration;

use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct State {
    /// A sync response is being handled.
    handling: bool,
    /// When the first handler of the iteration in progress ran.
    handling_since: Option<std::time::Instant>,
    /// Sync iterations finished so far.
    iterations: u64,
    /// Rooms joined whose sync has not finished yet.
    joined: HashSet<OwnedRoomId>,
}

/// Holds the bot's messages while the SDK could make them wait on the
/// sync loop (see the module documentation).
#[derive(Debug)]
pub struct SendGate {
    state: watch::Sender<State>,
}

impl Default for SendGate {
    fn default() -> Self {
        SendGate { state: watch::Sender::new(State::default()) }
    }
}

impl SendGate {
    /// Called by every event handler: the sync loop is inside a response.
    pub fn handling(&self) {
        self.state.send_if_modified(|s| {
            if s.handling {
                return false;
            }
            s.handling = true;
            s.handling_since = Some(std::time::Instant::now());
            true
        });
    }

    /// Called by the sync loop whenever `sync_once` has returned, with a
    /// response or an error. Returns how long messages were held by this
    /// iteration's handling (from its first handler), if they were.
    pub fn iteration_done(&self) -> Option<Duration> {
        let mut held = None;
        self.state.send_modify(|s| {
            s.handling = false;
            held = s.handling_since.take().map(|t| t.elapsed());
            s.iterations += 1;
        });
        held
    }

    /// A join request for `room` has succeeded; its sync is to come.
    pub fn joined(&self, room: &RoomId) {
        self.state.send_modify(|s| {
            s.joined.insert(room.to_owned());
        });
    }

    /// The sync that brings `room` has finished (or was given up on).
    pub fn join_settled(&self, room: &RoomId) {
        self.state.send_if_modified(|s| s.joined.remove(room));
    }

    /// Waits until the gate is open for a message that is ready now, at
    /// most `limit` (a sync loop stuck on the network must not hold
    /// messages forever). Returns how long it waited.
    pub async fn wait_open(&self, limit: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        let mut rx = self.state.subscribe();
        let (pending, iteration) = {
            let s = rx.borrow();
            (s.joined.clone(), s.iterations)
        };
        // "Handling" counts only for the iteration in progress now: once it
        // has finished, the next one's handlers do not hold this message.
        let open = |s: &State| (!s.handling || s.iterations > iteration) && pending.is_disjoint(&s.joined);
        let _ = tokio::time::timeout(limit, rx.wait_for(open)).await;
        start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use matrix_sdk::ruma::room_id;
    use std::sync::Arc;

    // Real time, short waits: the behaviour is ordering (held until the
    // iteration or the join's sync ends), not speed.
    const LIMIT: Duration = Duration::from_secs(30);
    const HOLD: Duration = Duration::from_millis(200);

    fn is_open_now(gate: &SendGate) -> bool {
        futures_now(gate.wait_open(Duration::from_millis(50))) < Duration::from_millis(50)
    }

    /// Runs a short future to completion on the current runtime.
    fn futures_now<F: Future>(f: F) -> F::Output {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }

    /// Starts a waiter, checks it is still held after HOLD, runs `release`,
    /// and returns how long the waiter waited.
    async fn held_until(gate: &Arc<SendGate>, release: impl FnOnce()) -> Duration {
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait_open(LIMIT).await });
        tokio::time::sleep(HOLD).await;
        assert!(!waiter.is_finished(), "went out while the gate was closed");
        release();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("released").unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn open_gate_lets_a_message_through_at_once() {
        let gate = SendGate::default();
        assert!(is_open_now(&gate));
        // An iteration without handlers leaves it open too, and held nothing.
        assert_eq!(gate.iteration_done(), None);
        assert!(is_open_now(&gate));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_message_waits_for_the_end_of_the_iteration() {
        let gate = Arc::new(SendGate::default());
        gate.handling();
        gate.handling(); // several handlers in one iteration
        let waited = held_until(&gate, || {
            let held = gate.iteration_done().expect("the iteration held messages");
            assert!(held >= HOLD, "held {held:?}");
        })
        .await;
        assert!(waited >= HOLD && waited < LIMIT, "waited {waited:?}");
        assert!(is_open_now(&gate));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_next_iteration_does_not_hold_a_message_again() {
        let gate = Arc::new(SendGate::default());
        gate.handling();
        // The iteration ends and the next one's handlers start before the
        // waiter gets to run: it still goes.
        let waited = held_until(&gate, || {
            gate.iteration_done();
            gate.handling();
        })
        .await;
        assert!(waited < LIMIT, "waited {waited:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_message_waits_for_a_joined_room_to_come_through_a_sync() {
        let gate = Arc::new(SendGate::default());
        let a = room_id!("!a:example.org");
        gate.joined(a);
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait_open(LIMIT).await });
        // Sync iterations without the room do not open the gate.
        for _ in 0..3 {
            tokio::time::sleep(HOLD / 2).await;
            gate.handling();
            gate.iteration_done();
        }
        tokio::time::sleep(HOLD).await;
        assert!(!waiter.is_finished(), "went out before the joined room's sync");
        gate.join_settled(a);
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("released").unwrap();
        assert!(waited < LIMIT, "waited {waited:?}");
        assert!(is_open_now(&gate));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn later_joins_do_not_hold_a_waiting_message() {
        let gate = Arc::new(SendGate::default());
        let (a, b) = (room_id!("!a:example.org"), room_id!("!b:example.org"));
        gate.joined(a);
        let waited = held_until(&gate, || {
            gate.joined(b);
            gate.join_settled(a);
        })
        .await;
        assert!(waited < LIMIT, "waited {waited:?}");
        // A message ready now waits for b.
        assert!(!is_open_now(&gate));
        gate.join_settled(b);
        assert!(is_open_now(&gate));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stuck_sync_loop_holds_a_message_only_up_to_the_limit() {
        let gate = SendGate::default();
        gate.handling();
        let waited = gate.wait_open(Duration::from_millis(300)).await;
        assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    }
}
