//! The help desk: every open case plus routing, as one pure state machine.
//!
//! The Matrix edge feeds it [`Event`]s (with the time) and carries out the
//! [`Action`]s it returns, in order. Rooms are named only by their case key,
//! a keyed hash of the room id; the edge alone maps keys back to rooms.
//! Actions that persist come before the messages that announce them, so a
//! crash between the two never loses a record.

use std::collections::BTreeMap;

use chrono::DateTime;

use crate::hours::Hours;
use crate::intake::text::TextKey;
use crate::intake::{Case, Effect, Ending, Input, Settings, Step};
use crate::outcome::{OutcomeRecord, tags};
use crate::routing::{Policy, Route, Router};

mod io;
pub use io::{Action, Event, VisitorInput};

/// What [`Desk::reconcile`] fixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Queue entries, offers and active entries of cases that are gone.
    pub dropped: usize,
    /// Cases waiting for a counsellor that routing had lost.
    pub requeued: usize,
}

/// The last message of a case, sent after its record is safe.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Farewell {
    /// To the visitor (goodbye, stopped), as a normal message.
    Visitor(String),
    /// To the counsellor in a room that is no longer one-to-one.
    Counsellor(String),
}

/// What happened since the edge last looked, for metrics. In memory only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Cases that became urgent.
    pub urgent: u64,
    /// Offers withdrawn because the counsellor did not join in time.
    pub offer_timeouts: u64,
    /// Seconds from the end of the intake to a counsellor's first join.
    pub waits: Vec<i64>,
}

/// The desk: open cases, routing, and the config they run by.
#[derive(Debug, Clone)]
pub struct Desk {
    pub settings: Settings,
    pub policy: Policy,
    pub hours: Option<Hours>,
    pub cases: BTreeMap<String, Case>,
    pub router: Router,
    tally: Tally,
    /// Cases queued by the event being handled whose staff notice waits for
    /// the routing step: announced only if nobody could be offered them.
    unannounced: Vec<String>,
}

/// What a desk is made of besides its state: the engine's settings, the
/// routing policy and the opening hours (none: always open). The config
/// builds it (`Config::desk_setup`), so the core never reads the config.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The engine's settings.
    pub settings: Settings,
    /// Capacity and deadlines of routing.
    pub policy: Policy,
    /// Opening hours; `None` is always open.
    pub hours: Option<Hours>,
}

impl Desk {
    /// A desk with restored cases and routing state.
    pub fn new(setup: Setup, cases: BTreeMap<String, Case>, router: Router) -> Desk {
        let Setup { settings, policy, hours } = setup;
        Desk { settings, policy, hours, cases, router, tally: Tally::default(), unannounced: Vec::new() }
    }

    /// Tells where a case's visitor came from (a number per homeserver,
    /// memory only), so that urgent cases of one server take turns with
    /// those of others.
    pub fn set_source(&mut self, key: &str, source: u32) {
        if let Some(c) = self.cases.get_mut(key) {
            c.source = source;
        }
        self.router.set_source(key, source);
    }

    /// Returns what was tallied since the last call, and starts afresh.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Whether the chat is open at `now`.
    pub fn is_open(&self, now: i64) -> bool {
        self.hours.as_ref().is_none_or(|h| h.is_open(DateTime::from_timestamp(now, 0).unwrap_or_default()))
    }

    /// Notes that an event (by keyed hash) of a case room is being handled.
    /// False when it was handled before: the caller drops it.
    pub fn note_event(&mut self, key: &str, hash: &str) -> bool {
        self.cases.get_mut(key).is_none_or(|c| c.note_event(hash))
    }

    /// The case id of a key, for logs.
    pub fn case_id(&self, key: &str) -> Option<&str> {
        self.cases.get(key).map(|c| c.id.as_str())
    }

    /// Handles one event at `now` and returns what to do, in order.
    pub fn handle(&mut self, now: i64, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        // Any change to routing made while handling the event (an accepted
        // offer, a release at a close) is saved with it, not only the
        // routing step's own.
        let before = self.router.clone();
        match event {
            Event::Opened { key, case_id, record_id } => {
                if !self.cases.contains_key(&key) {
                    let (mut case, fx) = Case::start(&self.settings, case_id, now);
                    case.record = record_id;
                    self.cases.insert(key.clone(), case);
                    self.apply(&key, now, fx, &mut out);
                    out.push(Action::SaveCase { key });
                }
            }
            Event::Visitor { key, input } => {
                let Some(case) = self.cases.get_mut(&key).filter(|c| c.closing.is_none()) else { return out };
                let input = match &input {
                    VisitorInput::Text(t) => Input::Text(t),
                    VisitorInput::NonText => Input::NonText,
                    VisitorInput::Undecryptable => Input::Undecryptable,
                };
                let before = case.clone();
                let fx = case.handle(&self.settings, now, input);
                let changed = *case != before;
                self.apply(&key, now, fx, &mut out);
                if changed && self.cases.contains_key(&key) {
                    out.push(Action::SaveCase { key });
                }
            }
            Event::VisitorLeft { key } => {
                if self.cases.contains_key(&key) {
                    self.end(&key, now, tags::ABANDONED, None, &mut out);
                }
            }
            Event::Intruder { key } => {
                if let Some(case) = self.cases.get(&key) {
                    // Nothing more for the visitor: a stranger may read it.
                    // A counsellor in the room is told why the bot goes
                    // quiet, and staff hear it by case id.
                    let lang = self.settings.staff_language();
                    let text = self.settings.say(lang, TextKey::StaffIntruder, &[("case", &case.id)]);
                    out.push(Action::Staff { text });
                    let warn = (case.step == Step::Counsellor)
                        .then(|| Farewell::Counsellor(self.settings.say(lang, TextKey::IntruderCounsellor, &[])));
                    self.end(&key, now, tags::GROUP, warn, &mut out);
                }
            }
            Event::CounsellorJoined { key, user } => self.counsellor_joined(&key, &user, now, &mut out),
            Event::CounsellorLeft { key, user } => {
                if self.router.rejected(&key, &user) {
                    // Declined the invite: passed over at once (routing below).
                } else if self.router.counsellor_of(&key) == Some(user.as_str()) {
                    self.transfer(&key, now, &mut out);
                }
            }
            Event::CounsellorText { key, user, text } => self.case_command(&key, &user, &text, now, &mut out),
            Event::Staff { user, text } => self.staff_command(&user, &text, &mut out),
            Event::SummaryPosted { key } => {
                if let Some(c) = self.cases.get_mut(&key).filter(|c| !c.summary_posted) {
                    c.summary_posted = true;
                    out.push(Action::SaveCase { key });
                }
            }
            Event::Tick => {}
        }
        self.route(now, &before, &mut out);
        saves_first(out)
    }

    /// Carries out the engine's effects for one case.
    ///
    /// (Persisting actions are moved to the front by [`saves_first`].)
    fn apply(&mut self, key: &str, now: i64, fx: Vec<Effect>, out: &mut Vec<Action>) {
        for e in fx {
            match e {
                Effect::Say(text) => out.push(Action::Say { key: key.to_owned(), text }),
                Effect::BecameUrgent => {
                    self.tally.urgent += 1;
                    self.router.set_urgent(key);
                    if let Some(c) = self.cases.get(key) {
                        let lang = self.settings.staff_language();
                        out.push(Action::Staff {
                            text: self.settings.say(lang, TextKey::StaffUrgent, &[("case", &c.id)]),
                        });
                    }
                }
                Effect::IntakeDone => self.enqueue(key, now, false, out),
                Effect::End(Ending::Stopped) => {
                    let lang = self.cases.get(key).map(|c| c.lang().to_owned()).unwrap_or_default();
                    let bye = self.settings.say(&lang, TextKey::Stopped, &[]);
                    self.end(key, now, tags::STOPPED, Some(Farewell::Visitor(bye)), out);
                }
            }
        }
    }

    fn enqueue(&mut self, key: &str, now: i64, front: bool, out: &mut Vec<Action>) {
        let Some(case) = self.cases.get(key) else { return };
        self.router.enqueue(key, case.urgent, front, now);
        self.router.set_source(key, case.source);
        if case.urgent || self.policy.announce_all_waiting {
            let lang = self.settings.staff_language();
            out.push(Action::Staff { text: self.settings.say(lang, TextKey::StaffWaiting, &[("case", &case.id)]) });
        } else {
            // One message fewer per case where a counsellor gets the invite
            // at once: the routing step decides (see `route`).
            self.unannounced.push(key.to_owned());
        }
        if !self.is_open(now) {
            let opens = self
                .hours
                .as_ref()
                .and_then(|h| {
                    let t = DateTime::from_timestamp(now, 0)?;
                    let (day, time) = h.local_day_and_time(h.next_open(t)?);
                    Some(format!("{} {time}", self.settings.weekday(case.lang(), day)))
                })
                .unwrap_or_else(|| "-".into());
            out.push(Action::Say {
                key: key.to_owned(),
                text: self.settings.say(case.lang(), TextKey::ClosedHours, &[("opens", &opens)]),
            });
        }
    }

    /// Ends a case: record first, then goodbye (if any), withdraw a pending
    /// invite, forget the state and leave.
    ///
    /// The case is first stored as closing, so that a crash after the record
    /// but before the goodbye finishes the goodbye on the next start.
    fn end(&mut self, key: &str, now: i64, outcome: &str, goodbye: Option<Farewell>, out: &mut Vec<Action>) {
        let Some(mut case) = self.cases.remove(key) else { return };
        let record = OutcomeRecord::from_case(&self.settings, &case, now, outcome);
        // Stored as closing before the record, always: a crash after the
        // record then finishes the case (goodbye or not, and leaving) on
        // the next start instead of resuming it.
        case.closing = Some(outcome.to_owned());
        case.quiet_close = goodbye.is_none();
        out.push(Action::MarkClosing { key: key.to_owned(), case: Box::new(case.clone()) });
        out.push(Action::Record { case_id: case.id.clone(), record });
        match goodbye {
            Some(Farewell::Visitor(text)) => out.push(Action::Say { key: key.to_owned(), text }),
            Some(Farewell::Counsellor(text)) => out.push(Action::Warn { key: key.to_owned(), text }),
            None => {}
        }
        out.push(Action::DeleteCase { key: key.to_owned() });
        if let Some(user) = self.router.release(key, now, case.joined_at) {
            out.push(Action::Withdraw { key: key.to_owned(), user });
        }
        out.push(Action::Leave { key: key.to_owned(), case_id: case.id });
    }

    /// After a restart: makes routing agree with the cases, as a crash
    /// between their writes may have left them. Drops queue entries, offers
    /// and active entries of cases that are gone, and puts back in the
    /// queue a case whose intake is done but which routing does not know
    /// (a crash between the end of the intake and the invite). Returns what
    /// was fixed, for the log, and a save of the router if anything was.
    pub fn reconcile(&mut self, now: i64) -> (Reconciled, Vec<Action>) {
        let mut fixed = Reconciled::default();
        let cases = &self.cases;
        let r = &mut self.router;
        let before = (r.queue.len(), r.offers.len(), r.active.len());
        r.queue.retain(|w| cases.contains_key(&w.key));
        r.offers.retain(|k, _| cases.contains_key(k));
        r.active.retain(|k, _| cases.contains_key(k));
        fixed.dropped = before.0 - r.queue.len() + before.1 - r.offers.len() + before.2 - r.active.len();
        let unrouted: Vec<String> = self
            .cases
            .iter()
            .filter(|(k, c)| {
                c.step == Step::Waiting
                    && c.closing.is_none()
                    && !self.router.is_queued(k)
                    && !self.router.offers.contains_key(*k)
                    && !self.router.active.contains_key(*k)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &unrouted {
            let Some(case) = self.cases.get(key) else { continue };
            self.router.enqueue(key, case.urgent, false, case.queued_at.unwrap_or(now));
            self.router.set_source(key, case.source);
        }
        fixed.requeued = unrouted.len();
        let save = if fixed.dropped + fixed.requeued > 0 { vec![Action::SaveRouter] } else { Vec::new() };
        (fixed, save)
    }

    /// After a restart: finishes cases that were closing when the bot
    /// stopped (record again, which keeps the first; goodbye; leave).
    pub fn finish_closing(&mut self, now: i64) -> Vec<Action> {
        let mut out = Vec::new();
        let closing: Vec<String> =
            self.cases.iter().filter(|(_, c)| c.closing.is_some()).map(|(k, _)| k.clone()).collect();
        for key in closing {
            let Some(case) = self.cases.get_mut(&key) else { continue };
            let outcome = case.closing.take().unwrap_or_default();
            let bye = match outcome.as_str() {
                _ if case.quiet_close => None,
                tags::GROUP => Some(Farewell::Counsellor(self.settings.say(
                    self.settings.staff_language(),
                    TextKey::IntruderCounsellor,
                    &[],
                ))),
                tags::STOPPED => Some(Farewell::Visitor(self.settings.say(case.lang(), TextKey::Stopped, &[]))),
                _ => Some(Farewell::Visitor(self.settings.say(case.lang(), TextKey::Goodbye, &[]))),
            };
            self.end(&key, now, &outcome, bye, &mut out);
        }
        out
    }

    fn counsellor_joined(&mut self, key: &str, user: &str, now: i64, out: &mut Vec<Action>) {
        if !self.cases.contains_key(key) {
            return;
        }
        if !self.router.accepted(key, user) {
            // Late or unexpected: the case has moved on.
            let lang = self.settings.staff_language();
            out.push(Action::Say { key: key.to_owned(), text: self.settings.say(lang, TextKey::LateJoin, &[]) });
            out.push(Action::Withdraw { key: key.to_owned(), user: user.to_owned() });
            return;
        }
        let Some(case) = self.cases.get_mut(key) else { return };
        if case.step == Step::Counsellor {
            return;
        }
        if let (false, Some(q)) = (case.counsellor_joined, case.queued_at) {
            self.tally.waits.push(now - q);
        }
        let (summary, notice) = case.counsellor_joined(&self.settings, now);
        out.push(Action::SaveCase { key: key.to_owned() });
        out.push(Action::Brief { key: key.to_owned(), text: summary.plain, html: summary.html });
        out.push(Action::Say { key: key.to_owned(), text: notice });
    }

    fn transfer(&mut self, key: &str, now: i64, out: &mut Vec<Action>) {
        let Some(user) = self.router.transfer(key, now) else { return };
        let Some(case) = self.cases.get_mut(key) else { return };
        case.back_to_waiting(now);
        // A transferred case keeps its urgency and its place among sources.
        if case.urgent {
            self.router.set_urgent(key);
        }
        self.router.set_source(key, case.source);
        let lang = case.lang().to_owned();
        out.push(Action::SaveCase { key: key.to_owned() });
        out.push(Action::Say { key: key.to_owned(), text: self.settings.say(&lang, TextKey::Transferred, &[]) });
        out.push(Action::Withdraw { key: key.to_owned(), user });
    }

    fn case_command(&mut self, key: &str, user: &str, text: &str, now: i64, out: &mut Vec<Action>) {
        // Only the counsellor on the case commands it; anything else is talk.
        if self.router.counsellor_of(key) != Some(user) {
            return;
        }
        let mut words = text.split_whitespace();
        match words.next() {
            Some("!close") => {
                let tag = words.next().map(str::to_lowercase);
                match tag.filter(|t| self.settings.tags.contains(t)) {
                    Some(tag) => {
                        let lang = self.cases.get(key).map(|c| c.lang().to_owned()).unwrap_or_default();
                        let bye = self.settings.say(&lang, TextKey::Goodbye, &[]);
                        self.end(key, now, &tag, Some(Farewell::Visitor(bye)), out);
                    }
                    None => {
                        let lang = self.settings.staff_language();
                        out.push(Action::Say {
                            key: key.to_owned(),
                            text: self.settings.say(
                                lang,
                                TextKey::CloseUsage,
                                &[("tags", &self.settings.tags.join(", "))],
                            ),
                        });
                    }
                }
            }
            Some("!transfer") => self.transfer(key, now, out),
            _ => {}
        }
    }

    fn staff_command(&mut self, user: &str, text: &str, out: &mut Vec<Action>) {
        let cmd = text.split_whitespace().next().unwrap_or("");
        if !matches!(cmd, "!available" | "!away" | "!status" | "!help") {
            return;
        }
        let lang = self.settings.staff_language();
        if !self.router.is_counsellor(user) {
            out.push(Action::Staff { text: self.settings.say(lang, TextKey::StaffNotCounsellor, &[]) });
            return;
        }
        let text = match cmd {
            "!available" => {
                self.router.set_available(user, true);
                out.push(Action::SaveRouter);
                self.settings.say(lang, TextKey::StaffAvailable, &[])
            }
            "!away" => {
                self.router.set_available(user, false);
                out.push(Action::SaveRouter);
                self.settings.say(lang, TextKey::StaffAway, &[])
            }
            "!status" => {
                let s = self.router.status();
                self.settings.say(
                    lang,
                    TextKey::StaffStatus,
                    &[
                        ("available", &s.available.to_string()),
                        ("active", &s.active.to_string()),
                        ("waiting", &s.waiting.to_string()),
                        ("urgent", &s.urgent_waiting.to_string()),
                    ],
                )
            }
            _ => self.settings.say(lang, TextKey::StaffHelp, &[]),
        };
        out.push(Action::Staff { text });
    }

    /// Runs routing and turns its decisions into actions.
    /// Runs the routing step; saves routing if it differs from `before`.
    fn route(&mut self, now: i64, before: &Router, out: &mut Vec<Action>) {
        let open = self.is_open(now);
        let mut announce = std::mem::take(&mut self.unannounced);
        for r in self.router.step(now, open, &self.policy) {
            match r {
                Route::Invite { key, counsellor } => out.push(Action::Invite { key, user: counsellor }),
                Route::Withdraw { key, counsellor } => {
                    // The router withdraws only offers past their deadline.
                    self.tally.offer_timeouts += 1;
                    if !self.policy.announce_all_waiting {
                        // Offered at once, so never announced: it is
                        // waiting now if nobody else takes the offer.
                        announce.push(key.clone());
                    }
                    out.push(Action::Withdraw { key, user: counsellor });
                }
                Route::Position { key, position, estimate_minutes } => {
                    let Some(case) = self.cases.get(&key) else { continue };
                    if !open {
                        // Closed: the visitor already heard when we open.
                        continue;
                    }
                    let lang = case.lang();
                    let mut text =
                        self.settings.say(lang, TextKey::QueuePosition, &[("position", &position.to_string())]);
                    if let Some(m) = estimate_minutes {
                        text.push(' ');
                        text.push_str(&self.settings.say(lang, TextKey::QueueEstimate, &[("minutes", &m.to_string())]));
                    }
                    out.push(Action::Say { key, text });
                }
                Route::LongWait { key, minutes } => {
                    let Some(case) = self.cases.get(&key) else { continue };
                    let lang = self.settings.staff_language();
                    out.push(Action::Staff {
                        text: self.settings.say(
                            lang,
                            TextKey::StaffLongWait,
                            &[("case", &case.id), ("minutes", &minutes.to_string())],
                        ),
                    });
                }
                Route::SetAway { missed, .. } => {
                    let lang = self.settings.staff_language();
                    out.push(Action::Staff {
                        text: self.settings.say(lang, TextKey::StaffMissed, &[("count", &missed.to_string())]),
                    });
                }
            }
        }
        announce.dedup();
        for key in announce {
            let Some(case) = self.cases.get(&key) else { continue };
            if self.router.is_queued(&key) {
                let lang = self.settings.staff_language();
                out.push(Action::Staff { text: self.settings.say(lang, TextKey::StaffWaiting, &[("case", &case.id)]) });
            }
        }
        if self.router != *before && !out.contains(&Action::SaveRouter) {
            out.push(Action::SaveRouter);
        }
    }

    /// The next instant the desk needs a `Tick`: a routing deadline, or
    /// the opening of the chat while cases wait for it.
    pub fn next_deadline(&self, now: i64) -> Option<i64> {
        let routing = self.router.next_deadline(&self.policy, self.is_open(now));
        let opening = match (&self.hours, self.router.queue.is_empty()) {
            (Some(h), false) if !self.is_open(now) => {
                DateTime::from_timestamp(now, 0).and_then(|t| h.next_open(t)).map(|t| t.timestamp())
            }
            _ => None,
        };
        routing.into_iter().chain(opening).min()
    }

    /// After a restart: the summary again for each case whose counsellor
    /// joined but whose summary the homeserver had not taken when the bot
    /// stopped (free text the visitor wrote is gone with the old process:
    /// the summary says so).
    pub fn resume_summaries(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for (key, case) in &self.cases {
            if case.step == Step::Counsellor && !case.summary_posted && case.closing.is_none() {
                let s = crate::intake::summary(&self.settings, case);
                out.push(Action::Brief { key: key.clone(), text: s.plain, html: s.html });
            }
        }
        out
    }

    /// Cases in progress older than `max_age_secs`: their keys, for expiry.
    pub fn expired(&self, now: i64, max_age_secs: i64) -> Vec<String> {
        self.cases.iter().filter(|(_, c)| now - c.started > max_age_secs).map(|(k, _)| k.clone()).collect()
    }

    /// Ends an expired case (kept past the retention limit).
    pub fn expire(&mut self, key: &str, now: i64) -> Vec<Action> {
        let mut out = Vec::new();
        let before = self.router.clone();
        self.end(key, now, tags::EXPIRED, None, &mut out);
        self.route(now, &before, &mut out);
        saves_first(out)
    }

    /// Ends a case that may not run because its room is not encrypted.
    pub fn refuse_unencrypted(&self, now: i64, case_id: String, record_id: String) -> OutcomeRecord {
        let (mut case, _) = Case::start(&self.settings, case_id, now);
        case.record = record_id;
        OutcomeRecord::from_case(&self.settings, &case, now, tags::UNENCRYPTED)
    }
}

/// Moves the save actions to the front (once each), keeping the order of
/// the rest. They persist the state as it is after the event, which must be
/// durable before anything visible goes out. Deleting stays in place: a
/// closing case is deleted only after its goodbye.
fn saves_first(actions: Vec<Action>) -> Vec<Action> {
    let (mut saves, rest): (Vec<Action>, Vec<Action>) =
        actions.into_iter().partition(|a| matches!(a, Action::SaveCase { .. } | Action::SaveRouter));
    let mut seen = Vec::new();
    saves.retain(|a| {
        let new = !seen.contains(a);
        if new {
            seen.push(a.clone());
        }
        new
    });
    saves.extend(rest);
    saves
}

#[cfg(test)]
mod tests;
