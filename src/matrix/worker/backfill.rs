//! Back-fill after a restart: each case room's recent history is read and
//! the messages not handled yet (sent while the bot was down, or received
//! just before a crash) are handled in order, as if they had just come.

use std::sync::Arc;

use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::UInt;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncStateEvent, AnySyncTimelineEvent, SyncMessageLikeEvent,
};
use tracing::{info, warn};

use super::Worker;
use crate::matrix::{Inbound, scrub_err};

/// How far back a restart looks for messages it missed.
const BACKFILL_LIMIT: u32 = 50;

/// How many rooms' histories a restart fetches at once.
const BACKFILL_CONCURRENCY: usize = 16;

impl Worker {
    /// After a restart: reads each case room's recent history and handles,
    /// in order, the messages not handled yet (sent while the bot was down,
    /// or received just before a crash). Stops at the newest handled event
    /// or at the bot's own join. Events handled twice are dropped anyway.
    ///
    /// The histories are fetched side by side (a bounded number at once):
    /// with a thousand rooms, one after another would keep every visitor
    /// waiting for a minute. They are handled one room at a time, in order.
    pub(super) async fn backfill(&mut self) {
        let me = self.client.user_id().map(ToOwned::to_owned);
        let limit = Arc::new(tokio::sync::Semaphore::new(BACKFILL_CONCURRENCY));
        let mut fetches = tokio::task::JoinSet::new();
        for (key, room) in self.rooms.iter().map(|(k, r)| (k.clone(), r.clone())) {
            let limit = limit.clone();
            fetches.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let mut opts = MessagesOptions::backward();
                opts.limit = UInt::from(BACKFILL_LIMIT);
                let chunk = room.messages(opts).await.map(|m| m.chunk);
                (key, room, chunk)
            });
        }
        let started = std::time::Instant::now();
        let rooms = fetches.len();
        while let Some(done) = fetches.join_next().await {
            let Ok((key, room, chunk)) = done else { continue };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    warn!(case = self.desk.case_id(&key).unwrap_or("?"), error = %scrub_err(&e), "back-fill failed");
                    continue;
                }
            };
            let mut missed = Vec::new();
            for ev in chunk {
                let Some(event_id) = ev.event_id() else { continue };
                let seen =
                    self.desk.cases.get(&key).is_some_and(|c| c.seen.contains(&self.keyer.key(event_id.as_str())));
                if seen {
                    break;
                }
                match ev.raw().deserialize() {
                    Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                        SyncMessageLikeEvent::Original(m),
                    ))) if Some(&m.sender) != me.as_ref() => {
                        if let Some(body) = crate::matrix::message_body(m.content) {
                            missed.push(Inbound::Message { room: room.clone(), sender: m.sender, body, event_id });
                        }
                    }
                    Ok(AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(m)))
                        if Some(m.state_key()) == me.as_ref() && m.membership() == &MembershipState::Join =>
                    {
                        break;
                    }
                    _ => {}
                }
            }
            if !missed.is_empty() {
                info!(
                    case = self.desk.case_id(&key).unwrap_or("?"),
                    messages = missed.len(),
                    "handling messages missed while down"
                );
            }
            for m in missed.into_iter().rev() {
                self.inbound(m).await;
            }
            self.commit().await;
        }
        if rooms > 0 {
            info!(rooms, took_ms = started.elapsed().as_millis() as u64, "back-fill after start done");
        }
    }
}
