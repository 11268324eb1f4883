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
//! The event handlers run inside the sync loop's response handling, so the
//! first handler of an iteration closes the gate; the sync loop opens it
//! when `sync_once` returns. A message caused by an event therefore waits
//! only for the rest of the iteration that brought it.

use std::time::Duration;

use tokio::sync::watch;

/// Whether a sync response is being handled right now.
#[derive(Debug)]
pub struct SendGate {
    handling: watch::Sender<bool>,
}

impl Default for SendGate {
    fn default() -> Self {
        SendGate { handling: watch::Sender::new(false) }
    }
}

impl SendGate {
    /// Called by every event handler: the sync loop is inside a response.
    pub fn handling(&self) {
        self.handling.send_if_modified(|h| !std::mem::replace(h, true));
    }

    /// Called by the sync loop whenever `sync_once` has returned, with a
    /// response or an error.
    pub fn iteration_done(&self) {
        self.handling.send_if_modified(|h| std::mem::replace(h, false));
    }

    /// Waits until no sync response is being handled, at most `limit` (a
    /// sync loop stuck on the network must not hold messages forever).
    /// Returns how long it waited.
    pub async fn wait_open(&self, limit: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        let mut rx = self.handling.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|h| !*h)).await;
        start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    // Real time, short waits: the behaviour is ordering (held until the
    // iteration ends), not speed.
    const LIMIT: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn open_gate_lets_a_message_through_at_once() {
        let gate = SendGate::default();
        assert!(gate.wait_open(LIMIT).await < Duration::from_secs(1));
        // An iteration without handlers leaves it open too.
        gate.iteration_done();
        assert!(gate.wait_open(LIMIT).await < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_message_waits_for_the_end_of_the_iteration() {
        let gate = Arc::new(SendGate::default());
        gate.handling();
        gate.handling(); // several handlers in one iteration
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait_open(LIMIT).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "went out while a response was being handled");
        gate.iteration_done();
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("released").unwrap();
        assert!(waited >= Duration::from_millis(200) && waited < LIMIT, "waited {waited:?}");
        // Open again for the next message.
        assert!(gate.wait_open(LIMIT).await < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_stuck_sync_loop_holds_a_message_only_up_to_the_limit() {
        let gate = SendGate::default();
        gate.handling();
        let waited = gate.wait_open(Duration::from_millis(300)).await;
        assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    }
}
