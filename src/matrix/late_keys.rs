//! Encrypted messages whose room key has not arrived yet.
//!
//! A sender shares a message's room key as a to-device message, which the
//! homeserver may deliver a sync or more after the message itself when many
//! are queued (seen at 200 chats at once: 43 answers and `!close` commands
//! arrived before their keys, and those cases stalled). Such a message is
//! parked here and decrypted again every [`RETRY_EVERY`] until its key has
//! come; only after a grace period is it handed on as undecryptable (then
//! the visitor is asked to send it again). Parked messages live in memory
//! only: after a restart, the back-fill reads them again from the room.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use matrix_sdk::Room;
use matrix_sdk::deserialized_responses::TimelineEventKind;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, AnySyncTimelineEvent, SyncMessageLikeEvent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedEventId, OwnedUserId};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{Body, Inbound};

/// How often parked messages are tried again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Most messages parked for one room: a visitor waits for a reply long
/// before this, so more is a flood of undecryptable events.
pub const PER_ROOM: usize = 16;
/// Most messages parked in all.
pub const IN_ALL: usize = 1000;

/// A message waiting for its key.
#[derive(Debug)]
pub struct Parked {
    pub room: Room,
    pub event: Raw<OriginalSyncRoomEncryptedEvent>,
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
}

/// Items kept in arrival order with the time they came; the pure part.
#[derive(Debug)]
struct Queue<T> {
    items: VecDeque<(Instant, T)>,
}

impl<T> Queue<T> {
    fn new() -> Self {
        Queue { items: VecDeque::new() }
    }

    /// Parks `item` unless that would put more than `per_key` items with
    /// its `key` or more than `in_all` items in the queue; gives it back
    /// then.
    fn push<K: PartialEq>(
        &mut self,
        at: Instant,
        item: T,
        key: impl Fn(&T) -> K,
        per_key: usize,
        in_all: usize,
    ) -> Result<(), T> {
        let k = key(&item);
        if self.items.len() >= in_all || self.items.iter().filter(|(_, i)| key(i) == k).count() >= per_key {
            return Err(item);
        }
        self.items.push_back((at, item));
        Ok(())
    }

    /// Takes out, in arrival order, each item that `ready` accepts (its
    /// output) and each older than `grace` (as `Err(item)`); keeps the rest.
    async fn take<U>(
        &mut self,
        now: Instant,
        grace: Duration,
        mut ready: impl AsyncFnMut(&T) -> Option<U>,
    ) -> Vec<Result<U, T>> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.items.len());
        while let Some((at, item)) = self.items.pop_front() {
            if let Some(u) = ready(&item).await {
                out.push(Ok(u));
            } else if now.duration_since(at) >= grace {
                out.push(Err(item));
            } else {
                kept.push_back((at, item));
            }
        }
        self.items = kept;
        out
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Starts the task that holds parked messages; returns where to park them.
/// Decrypted ones go to `forward` as ordinary messages, expired ones as
/// undecryptable.
pub fn spawn(forward: mpsc::Sender<Inbound>, grace: Duration) -> mpsc::UnboundedSender<Parked> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Parked>();
    tokio::spawn(async move {
        let mut queue = Queue::new();
        let mut tick = tokio::time::interval(RETRY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                parked = rx.recv() => match parked {
                    Some(p) => {
                        let key = |p: &Parked| p.room.room_id().to_owned();
                        if let Err(p) = queue.push(Instant::now(), p, key, PER_ROOM, IN_ALL) {
                            // Bounded memory: handed on at once as
                            // unreadable (the visitor is asked once to
                            // send it again).
                            debug!("too many messages waiting for their keys; one handed on unread");
                            let inbound = Inbound::Message {
                                room: p.room,
                                sender: p.sender,
                                body: Body::Undecryptable,
                                event_id: p.event_id,
                            };
                            if forward.send(inbound).await.is_err() {
                                return;
                            }
                        }
                    }
                    None => return,
                },
                _ = tick.tick(), if !queue.is_empty() => {
                    for done in queue.take(Instant::now(), grace, try_decrypt).await {
                        let inbound = match done {
                            Ok(Some(inbound)) => inbound,
                            // Decrypted, but nothing the desk answers.
                            Ok(None) => continue,
                            Err(p) => {
                                info!("a message's encryption key never came; asking for it again");
                                Inbound::Message { room: p.room, sender: p.sender, body: Body::Undecryptable, event_id: p.event_id }
                            }
                        };
                        if forward.send(inbound).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    tx
}

/// None while the key is missing; once decrypted, the message as the
/// worker wants it, or None inside for an event that is not a message.
async fn try_decrypt(p: &Parked) -> Option<Option<Inbound>> {
    let event = p.room.decrypt_event(&p.event, None).await.ok()?;
    if !matches!(event.kind, TimelineEventKind::Decrypted(_)) {
        return None;
    }
    debug!("a message's encryption key came late; message handled");
    let body = match event.raw().deserialize() {
        Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
            SyncMessageLikeEvent::Original(m),
        ))) => super::message_body(m.content),
        Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::Sticker(_))) => Some(Body::NonText),
        _ => None,
    };
    Some(body.map(|body| Inbound::Message {
        room: p.room.clone(),
        sender: p.sender.clone(),
        body,
        event_id: p.event_id.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_items_leave_in_order_and_old_ones_expire() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(20);
        let mut q = Queue::new();
        q.push(t0, 1, |_| 0, 10, 10).unwrap();
        q.push(t0 + Duration::from_secs(5), 2, |_| 0, 10, 10).unwrap();
        q.push(t0 + Duration::from_secs(6), 3, |_| 0, 10, 10).unwrap();
        // Nothing ready yet and nothing old: all stay.
        assert!(q.take(t0 + Duration::from_secs(7), grace, async |_| None::<i32>).await.is_empty());
        // 1 and 3 are ready: they leave in arrival order, 2 stays.
        let out = q.take(t0 + Duration::from_secs(8), grace, async |&i| (i != 2).then_some(i * 10)).await;
        assert_eq!(out, vec![Ok(10), Ok(30)]);
        // 2 is still not ready, and now older than the grace period.
        let out = q.take(t0 + Duration::from_secs(25), grace, async |_| None::<i32>).await;
        assert_eq!(out, vec![Err(2)]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn an_item_ready_at_the_deadline_is_still_handed_on_decrypted() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.push(t0, 7, |_| 0, 10, 10).unwrap();
        let out = q.take(t0 + Duration::from_secs(60), Duration::from_secs(20), async |&i| Some(i)).await;
        assert_eq!(out, vec![Ok::<i32, i32>(7)]);
    }

    #[test]
    fn the_queue_is_bounded_per_key_and_in_all() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        let room = |i: &i32| *i % 2;
        for i in [0, 2, 4] {
            q.push(t0, i, room, 3, 5).unwrap();
        }
        assert_eq!(q.push(t0, 6, room, 3, 5), Err(6), "a fourth for the same key is refused");
        q.push(t0, 1, room, 3, 5).unwrap();
        q.push(t0, 3, room, 3, 5).unwrap();
        assert_eq!(q.push(t0, 5, room, 3, 5), Err(5), "a sixth in all is refused");
        assert_eq!(q.items.len(), 5);
    }
}
