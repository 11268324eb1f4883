//! Counsellor routing: roster, availability, capacity, the queue and offer
//! deadlines.
//!
//! Pure: time is passed in as Unix seconds and decisions come out as
//! [`Route`]s. The whole router serializes, so a restart resumes every
//! offer, deadline (wall-clock instants) and queue position.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// A counsellor who misses this many offers in a row is set away.
pub const MISSED_OFFERS_LIMIT: u32 = 3;
/// Visitors hear about a changed queue position at most this often.
pub const POSITION_INTERVAL_SECS: i64 = 60;
/// How many recent handling times feed the wait estimate.
const HISTORY: usize = 20;

/// Limits that come from the config.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_active: u32,
    pub accept_timeout_secs: i64,
    /// Waiting longer than this raises [`Route::LongWait`] once.
    pub wait_alert_secs: i64,
    /// Announce every case that starts waiting in the staff room, also one
    /// offered to a counsellor at once (`staff.announce_waiting = "always"`).
    /// Otherwise only cases nobody could be offered, and urgent ones.
    pub announce_all_waiting: bool,
}

/// One configured counsellor's routing state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counsellor {
    pub available: bool,
    /// When they were last offered a case (Unix seconds; 0 = never).
    pub last_assigned: i64,
    /// Offers missed in a row.
    pub missed: u32,
}

/// A case waiting for a counsellor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Waiting {
    pub key: String,
    pub urgent: bool,
    /// Transferred cases go before others of the same urgency.
    pub front: bool,
    pub since: i64,
    /// Counsellors whose offer of this case ran out: tried again only when
    /// nobody else can take it.
    pub passed: Vec<String>,
    /// Counsellors who declined this case: not offered it again until they
    /// say `!available` anew.
    #[serde(default)]
    pub declined: Vec<String>,
    /// Position last told to the visitor and when.
    pub told: Option<(usize, i64)>,
    /// Whether staff were told this case waits long.
    #[serde(default)]
    pub alerted: bool,
    /// Where the visitor came from (a number per homeserver, given by the
    /// edge, memory only; 0 = unknown): urgent cases of one source take
    /// turns with those of others, so one server cannot fill the front of
    /// the queue with urgent cases.
    #[serde(skip)]
    pub source: u32,
}

/// An invite with a deadline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offer {
    pub counsellor: String,
    pub deadline: i64,
    pub waiting: Waiting,
}

/// What routing decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Invite this counsellor to the case room.
    Invite { key: String, counsellor: String },
    /// Withdraw the invite (kick) of this counsellor.
    Withdraw { key: String, counsellor: String },
    /// Tell the visitor their queue position.
    Position { key: String, position: usize, estimate_minutes: Option<u64> },
    /// This counsellor missed too many offers and is now away.
    SetAway { counsellor: String, missed: u32 },
    /// This case has waited longer than the alert threshold.
    LongWait { key: String, minutes: i64 },
}

/// Counts for `!status`, never identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub available: usize,
    pub active: usize,
    pub waiting: usize,
    pub urgent_waiting: usize,
}

/// The roster, the queue, the offers and the active cases.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Router {
    pub counsellors: BTreeMap<String, Counsellor>,
    pub queue: Vec<Waiting>,
    pub offers: BTreeMap<String, Offer>,
    /// Case key -> counsellor on the case.
    pub active: BTreeMap<String, String>,
    /// Recent handling times in seconds (join to close), newest last.
    pub handled: VecDeque<i64>,
}

impl Router {
    #[cfg(test)]
    /// A router for the configured counsellors; everyone starts away.
    pub fn new(counsellors: &[String]) -> Router {
        let mut r = Router::default();
        r.sync_roster(counsellors);
        r
    }

    /// Adds new counsellors (away) and drops removed ones, keeping the
    /// state of those still configured.
    pub fn sync_roster(&mut self, counsellors: &[String]) {
        self.counsellors.retain(|c, _| counsellors.contains(c));
        for c in counsellors {
            self.counsellors.entry(c.clone()).or_default();
        }
    }

    pub fn is_counsellor(&self, user: &str) -> bool {
        self.counsellors.contains_key(user)
    }

    /// Sets availability; returns false for someone not on the roster.
    pub fn set_available(&mut self, user: &str, available: bool) -> bool {
        match self.counsellors.get_mut(user) {
            Some(c) => {
                c.available = available;
                if available {
                    c.missed = 0;
                    for w in &mut self.queue {
                        w.declined.retain(|d| d != user);
                    }
                }
                true
            }
            None => false,
        }
    }

    fn load(&self, user: &str) -> usize {
        self.active.values().filter(|c| *c == user).count()
            + self.offers.values().filter(|o| o.counsellor == user).count()
    }

    /// Puts a case in the queue (no-op if it is already routed).
    pub fn enqueue(&mut self, key: &str, urgent: bool, front: bool, now: i64) {
        if self.queue.iter().any(|w| w.key == key) || self.offers.contains_key(key) || self.active.contains_key(key) {
            return;
        }
        self.queue.push(Waiting {
            key: key.to_owned(),
            urgent,
            front,
            since: now,
            passed: Vec::new(),
            declined: Vec::new(),
            told: None,
            alerted: false,
            source: 0,
        });
    }

    /// Tells where a case's visitor came from (see [`Waiting::source`]).
    pub fn set_source(&mut self, key: &str, source: u32) {
        if let Some(w) = self.queue.iter_mut().find(|w| w.key == key) {
            w.source = source;
        }
        if let Some(o) = self.offers.get_mut(key) {
            o.waiting.source = source;
        }
    }

    /// Marks a waiting or offered case urgent.
    pub fn set_urgent(&mut self, key: &str) {
        if let Some(w) = self.queue.iter_mut().find(|w| w.key == key) {
            w.urgent = true;
        }
        if let Some(o) = self.offers.get_mut(key) {
            o.waiting.urgent = true;
        }
    }

    /// The counsellor offered `key` the case joined. Returns whether they
    /// were the one offered it (or already on it).
    pub fn accepted(&mut self, key: &str, user: &str) -> bool {
        if self.active.get(key).is_some_and(|c| c == user) {
            return true;
        }
        match self.offers.get(key) {
            Some(o) if o.counsellor == user => {
                self.offers.remove(key);
                self.active.insert(key.to_owned(), user.to_owned());
                if let Some(c) = self.counsellors.get_mut(user) {
                    c.missed = 0;
                }
                true
            }
            _ => false,
        }
    }

    /// The offered counsellor declined the invite: pass them over at once.
    pub fn rejected(&mut self, key: &str, user: &str) -> bool {
        match self.offers.get(key) {
            Some(o) if o.counsellor == user => {
                let mut o = self.offers.remove(key).expect("checked above");
                o.waiting.declined.push(user.to_owned());
                self.queue.push(o.waiting);
                true
            }
            _ => false,
        }
    }

    /// The counsellor on the case handed it back (or left): front of the line.
    pub fn transfer(&mut self, key: &str, now: i64) -> Option<String> {
        let user = self.active.remove(key)?;
        self.queue.push(Waiting {
            key: key.to_owned(),
            urgent: false,
            front: true,
            since: now,
            passed: vec![user.clone()],
            declined: Vec::new(),
            told: None,
            alerted: false,
            source: 0,
        });
        Some(user)
    }

    /// The case ended: drop it everywhere. Returns a counsellor whose
    /// pending invite should be withdrawn.
    pub fn release(&mut self, key: &str, now: i64, joined_at: Option<i64>) -> Option<String> {
        self.queue.retain(|w| w.key != key);
        if self.active.remove(key).is_some()
            && let Some(j) = joined_at
        {
            self.handled.push_back((now - j).max(0));
            while self.handled.len() > HISTORY {
                self.handled.pop_front();
            }
        }
        self.offers.remove(key).map(|o| o.counsellor)
    }

    /// Who is on the case, if anyone.
    pub fn counsellor_of(&self, key: &str) -> Option<&str> {
        self.active.get(key).map(String::as_str)
    }

    #[cfg(test)]
    /// Who was offered the case, if anyone.
    pub fn offered_to(&self, key: &str) -> Option<&str> {
        self.offers.get(key).map(|o| o.counsellor.as_str())
    }

    /// Whether the case is waiting in the queue.
    pub fn is_queued(&self, key: &str) -> bool {
        self.queue.iter().any(|w| w.key == key)
    }

    fn sort_queue(&mut self) {
        // First come first served...
        self.queue.sort_by(|a, b| a.since.cmp(&b.since).then(a.key.cmp(&b.key)));
        // ...but urgent first, taking turns between sources: the n-th urgent
        // case of a source goes after the (n-1)-th of every other source.
        // Then transferred cases. (A stable sort keeps arrival order within.)
        let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
        let mut ranked: Vec<(u32, Waiting)> = std::mem::take(&mut self.queue)
            .into_iter()
            .map(|w| {
                let rank = if w.urgent && w.source != 0 {
                    let n = seen.entry(w.source).or_insert(0);
                    *n += 1;
                    *n - 1
                } else {
                    0
                };
                (rank, w)
            })
            .collect();
        ranked.sort_by(|(ra, a), (rb, b)| b.urgent.cmp(&a.urgent).then(ra.cmp(rb)).then(b.front.cmp(&a.front)));
        self.queue = ranked.into_iter().map(|(_, w)| w).collect();
    }

    /// Honest estimate: average recent handling time, times the cases ahead,
    /// spread over the capacity of available counsellors. None without
    /// history or with nobody available.
    pub fn estimate_minutes(&self, position: usize, p: &Policy) -> Option<u64> {
        if self.handled.is_empty() {
            return None;
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let available = count(self.counsellors.values().filter(|c| c.available).count());
        if available == 0 {
            return None;
        }
        let avg = self.handled.iter().sum::<i64>() / count(self.handled.len());
        let slots = available.saturating_mul(i64::from(p.max_active.max(1)));
        let secs = avg.saturating_mul(count(position)) / slots;
        u64::try_from((secs.saturating_add(59) / 60).max(1)).ok()
    }

    /// Runs deadlines and assignment at `now`. `open` is whether opening
    /// hours allow new offers.
    pub fn step(&mut self, now: i64, open: bool, p: &Policy) -> Vec<Route> {
        let mut out = Vec::new();
        // Offers past their deadline: withdraw and pass the case on.
        let expired: Vec<String> =
            self.offers.iter().filter(|(_, o)| o.deadline <= now).map(|(k, _)| k.clone()).collect();
        for key in expired {
            let Some(mut o) = self.offers.remove(&key) else { continue };
            out.push(Route::Withdraw { key: key.clone(), counsellor: o.counsellor.clone() });
            if let Some(c) = self.counsellors.get_mut(&o.counsellor) {
                c.missed += 1;
                if c.missed >= MISSED_OFFERS_LIMIT && c.available {
                    c.available = false;
                    out.push(Route::SetAway { counsellor: o.counsellor.clone(), missed: c.missed });
                }
            }
            o.waiting.passed.push(o.counsellor.clone());
            self.queue.push(o.waiting);
        }
        self.sort_queue();
        if open {
            let mut i = 0;
            while i < self.queue.len() {
                match self.pick(&self.queue[i], p) {
                    Some(c) => {
                        let w = self.queue.remove(i);
                        if let Some(st) = self.counsellors.get_mut(&c) {
                            st.last_assigned = now;
                        }
                        out.push(Route::Invite { key: w.key.clone(), counsellor: c.clone() });
                        self.offers.insert(
                            w.key.clone(),
                            Offer { counsellor: c, deadline: now + p.accept_timeout_secs, waiting: w },
                        );
                    }
                    None => i += 1,
                }
            }
        }
        // Long waits: tell staff once per case.
        for w in self.queue.iter_mut().filter(|w| open && !w.alerted && now - w.since >= p.wait_alert_secs) {
            w.alerted = true;
            out.push(Route::LongWait { key: w.key.clone(), minutes: (now - w.since) / 60 });
        }
        // Queue positions, at most once a minute per visitor.
        for idx in 0..self.queue.len() {
            let position = idx + 1;
            let due = match self.queue[idx].told {
                None => true,
                Some((told, at)) => told != position && now - at >= POSITION_INTERVAL_SECS,
            };
            if due {
                let estimate = self.estimate_minutes(position, p);
                let w = &mut self.queue[idx];
                w.told = Some((position, now));
                out.push(Route::Position { key: w.key.clone(), position, estimate_minutes: estimate });
            }
        }
        out
    }

    /// The best counsellor for a waiting case: available, under capacity,
    /// fewest active cases, then longest since last assignment. Those who
    /// let this case pass come last, only when nobody else can take it.
    fn pick(&self, w: &Waiting, p: &Policy) -> Option<String> {
        let candidates = self
            .counsellors
            .iter()
            .filter(|(id, c)| c.available && self.load(id) < p.max_active as usize && !w.declined.contains(id));
        candidates
            .min_by_key(|(id, c)| (w.passed.contains(id), self.load(id), c.last_assigned, (*id).clone()))
            .map(|(id, _)| id.clone())
    }

    /// The next instant `step` has something to do: an offer deadline, a
    /// position update held back by the once-a-minute rule, or a long wait.
    /// While closed (`open` false) long waits are not announced: nobody is
    /// there to read it; at opening they are.
    pub fn next_deadline(&self, p: &Policy, open: bool) -> Option<i64> {
        let offers = self.offers.values().map(|o| o.deadline);
        let alerts = self.queue.iter().filter(|w| open && !w.alerted).map(|w| w.since + p.wait_alert_secs);
        let told = self.queue.iter().enumerate().filter_map(|(i, w)| match w.told {
            Some((pos, at)) if pos != i + 1 => Some(at + POSITION_INTERVAL_SECS),
            _ => None,
        });
        offers.chain(told).chain(alerts).min()
    }

    /// Counts for `!status`.
    pub fn status(&self) -> Status {
        Status {
            available: self.counsellors.values().filter(|c| c.available).count(),
            active: self.active.len(),
            waiting: self.queue.len() + self.offers.len(),
            urgent_waiting: self.queue.iter().filter(|w| w.urgent).count()
                + self.offers.values().filter(|o| o.waiting.urgent).count(),
        }
    }
}

#[cfg(test)]
mod tests;
