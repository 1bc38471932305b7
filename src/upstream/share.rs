//! Fair share of a scarce pool: when the key's limits or the upstream's capacity bind, send
//! times go to callers in weighted fair order, not in order of arrival, so one caller's
//! backlog cannot make every other caller wait or fail.
//!
//! A request that cannot go at once joins the pool's queue. The queue is ordered by priority
//! (interactive before background), then by start-time fair queuing over *lane time*: what a
//! request takes of the pool's tightest dimension (requests, input or output tokens, or the
//! learned rate), a dominant-resource share. A caller's request gets the start tag
//! `max(V, the caller's last finish tag)` and the finish tag `start + lane time / weight`; V
//! is the start tag of the last request sent. A caller with nothing sent in the current round
//! (asking no more than its share) goes before the round's backlogged requests, as if it were
//! alone (as fq_codel serves sparse flows); backlogged callers split the rest by weight; a
//! caller alone gets everything (the order only decides who goes first, never whether the
//! key's room is used).
//!
//! Send times are committed only within [`HORIZON_MS`]: a time handed out cannot be taken
//! back, so handing them out minutes ahead would let a backlog own the key's next minutes.
//! The rest wait in the queue while their call to the object is held, and are answered when
//! their turn comes within the horizon. A request whose projected turn falls after its
//! deadline is refused with that turn as its honest `Retry-After`, once the next answers could
//! not have shown more room (see [`REFUSE_AFTER_MS`], [`PROJECTION_SLACK_MS`]). A held call is
//! answered "ask again" after [`MAX_HOLD_MS`] and keeps its place when it does; a place whose
//! call neither waits nor asks again is given up. The queue is memory only (held calls die
//! with the object) and bounded ([`MAX_WAITING`] per pool: beyond it the last in the fair
//! order is refused).

use std::collections::{BTreeMap, BTreeSet};

use super::pace::{Cost, LimitDimension, Pace, PacePolicy, PaceReason, SendTime};

/// Send times are committed this far ahead at most.
pub const HORIZON_MS: u64 = 150;

/// A call is held at most this long, then answered "ask again" (its place is kept).
pub const MAX_HOLD_MS: u64 = 25_000;

/// A held call naps at least this long between looks at its place.
const MIN_NAP_MS: u64 = 50;

/// A place whose hold lapsed is kept this long for the request to ask again.
const REASK_GRACE_MS: u64 = 2_000;

/// A request whose projected turn falls after its deadline waits this long (at most half its
/// budget) before it is refused: the key's next answer may show more room than the lane
/// believes (a tier upgrade, reservations that never reached the upstream), and a request
/// the upstream had room for is not refused. At the lowest limits the next answer comes a
/// send interval later; this covers two seconds of one plus its answer.
const REFUSE_AFTER_MS: u64 = 3_000;

/// A turn projected less than this past its deadline is refused only at the deadline: the
/// projection counts what the upstream may not have seen yet, and its rounding.
const PROJECTION_SLACK_MS: u64 = 2_000;

/// A queue longer than this is projected at most every [`PROJECTION_EVERY_MS`]: a projection
/// walks the whole queue, and requests join a busy pool many times a second.
const EXACT_PROJECTION_UP_TO: usize = 64;
const PROJECTION_EVERY_MS: u64 = 100;

/// Requests waiting per pool, at most.
pub const MAX_WAITING: usize = 4_096;

/// Callers whose finish tags a pool remembers; beyond it those with no credit go first.
const MAX_FLOWS: usize = 512;

/// Virtual time starts here, so that a caller with no credit can be placed just before it.
const TAG_BASE: u64 = 1 << 32;

/// The largest weight a tier may set.
pub const MAX_WEIGHT: u32 = 1_000;

/// Caller ids longer than this are cut (at a character boundary) in the queue.
const MAX_CALLER_BYTES: usize = 128;

/// Whether a request is waited on by a person or by a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Someone waits for the answer: goes before background requests.
    #[default]
    Interactive,
    /// A job: uses what interactive requests leave, all of it.
    Background,
}

crate::json::deserialize_by_name!(Priority {
    Interactive = "interactive",
    Background = "background",
});

impl Priority {
    fn index(self) -> usize {
        match self {
            Priority::Interactive => 0,
            Priority::Background => 1,
        }
    }

    /// Parses `interactive` or `background`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Priority> {
        match text.trim() {
            t if t.eq_ignore_ascii_case("interactive") => Some(Priority::Interactive),
            t if t.eq_ignore_ascii_case("background") => Some(Priority::Background),
            _ => None,
        }
    }

    /// A request's priority: its tier's, lowered (never raised) by its
    /// `x-proxy-priority: background`.
    #[must_use]
    pub fn requested(tier: Priority, header: Option<&str>) -> Priority {
        match header.and_then(Priority::parse) {
            Some(Priority::Background) => Priority::Background,
            _ => tier,
        }
    }
}

/// Who asks for a send time, as the fair order knows them: the caller's identity (never a
/// key), its tier's weight and the request's priority.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Claimant {
    pub caller: String,
    pub weight: u32,
    pub priority: Priority,
}

impl Default for Claimant {
    fn default() -> Self {
        Claimant {
            caller: String::new(),
            weight: 1,
            priority: Priority::Interactive,
        }
    }
}

/// A request's turn, once the queue has decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Send now.
    Go,
    /// Send at `at_ms` (reserved).
    At { at_ms: u64, reason: PaceReason },
    /// Its turn falls after its deadline: answer now, retry after this long.
    Refused {
        retry_after_ms: u64,
        reason: PaceReason,
    },
}

/// Where a request stands in the queue after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Decided: the request leaves the queue.
    Decided(Turn),
    /// Still waiting: look again at `wake_ms` (its projected turn, or the end of its hold).
    Waiting { wake_ms: u64 },
    /// Its hold is over: the call is answered "ask again"; the place is kept.
    AskAgain,
    /// Not in the queue (given up, or never joined).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    seed: u64,
    caller: String,
    priority: Priority,
    weight: u32,
    cost: Cost,
    start: u64,
    seq: u64,
    deadline_ms: u64,
    /// The way from its edge: its turn's answer reaches the edge this much later.
    way_ms: u64,
    hold_until_ms: u64,
    /// A turn projected after its deadline is refused no earlier than this (see
    /// [`REFUSE_AFTER_MS`]).
    refuse_after_ms: u64,
    /// Its turn as last projected (0: not yet).
    projected_ms: u64,
    turn: Option<Turn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Flow {
    caller: String,
    priority: Priority,
    finish: u64,
}

/// A place in the fair order: priority, start tag, arrival, and the request's seed.
type Order = (Priority, u64, u64, u64);

/// The fair queue of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Share {
    /// V per priority: the start tag of the last request of that priority sent.
    vtime: [u64; 2],
    flows: Vec<Flow>,
    /// The requests in the queue, by seed (decided ones until their call reads the turn).
    entries: BTreeMap<u64, Entry>,
    /// The undecided ones in fair order.
    order: BTreeSet<Order>,
    seq: u64,
    /// Nothing changes before then unless the queue or the pace does (a memo of the last
    /// release: its first uncommitted turn, less the horizon).
    clean_until_ms: Option<u64>,
    /// No place is given up before then (the earliest end of a hold and its grace).
    expires_ms: u64,
    /// A long queue is projected again no earlier than then.
    next_projection_ms: u64,
}

/// `caller` cut to [`MAX_CALLER_BYTES`] at a character boundary.
fn caller_key(caller: &str) -> &str {
    if caller.len() <= MAX_CALLER_BYTES {
        return caller;
    }
    let end = caller
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= MAX_CALLER_BYTES)
        .last()
        .unwrap_or(0);
    caller.get(..end).unwrap_or("")
}

/// When `cost` could go on `pace` at `now`, and why it waits (the requests limit when it
/// does not).
fn send_time(pace: &Pace, policy: &PacePolicy, now: u64, cost: Cost) -> (u64, PaceReason) {
    match pace.send_time(policy, now, cost) {
        SendTime::Now => (now, PaceReason::KeyLimit(LimitDimension::Requests)),
        SendTime::At { at_ms, reason } => (at_ms.max(now), reason),
    }
}

impl Entry {
    fn order(&self) -> Order {
        (self.priority, self.start, self.seq, self.seed)
    }
}

impl Share {
    /// No request waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the request of `seed` holds a place.
    #[must_use]
    pub fn contains(&self, seed: u64) -> bool {
        self.entries.contains_key(&seed)
    }

    /// Something the queue's projection depends on changed (a reservation, an observation).
    pub fn touch(&mut self) {
        self.clean_until_ms = None;
    }

    /// Joins the queue at `now` (the request's fair place is fixed here), or finds the place
    /// of a request already in it that asks again after its hold.
    pub fn join(
        &mut self,
        pace: &Pace,
        now: u64,
        seed: u64,
        claimant: &Claimant,
        cost: Cost,
        (deadline_ms, way_ms): (u64, u64),
    ) {
        self.touch();
        if let Some(entry) = self.entries.get_mut(&seed) {
            entry.hold_until_ms = now.saturating_add(MAX_HOLD_MS);
            return;
        }
        let priority = claimant.priority;
        let weight = claimant.weight.clamp(1, MAX_WEIGHT);
        let caller = caller_key(&claimant.caller);
        let span = pace.lane_time_us(now, cost);
        let v = self
            .vtime
            .get(priority.index())
            .copied()
            .unwrap_or(0)
            .max(TAG_BASE);
        let index = self.flow_index(caller, priority, v);
        // A caller with nothing sent in the current round (its last finish tag at or before
        // V) asks no more than its share: its request goes before the round's backlogged
        // ones, as if it were alone (new flows first, as fq_codel serves sparse flows).
        let finish = self.flows.get(index).map_or(0, |f| f.finish);
        let start = if finish <= v {
            let first = self
                .order
                .range((priority, 0, 0, 0)..)
                .next()
                .filter(|o| o.0 == priority)
                .map_or(v, |o| o.1);
            first.min(v).saturating_sub(1)
        } else {
            finish
        };
        if let Some(flow) = self.flows.get_mut(index) {
            flow.finish =
                super::stored::stored(start.saturating_add(span.div_ceil(u64::from(weight))));
        }
        self.seq = self.seq.wrapping_add(1);
        let entry = Entry {
            seed,
            caller: caller.to_string(),
            priority,
            weight,
            cost,
            start,
            seq: self.seq,
            deadline_ms,
            way_ms,
            hold_until_ms: now.saturating_add(MAX_HOLD_MS),
            refuse_after_ms: now
                .saturating_add(REFUSE_AFTER_MS.min(deadline_ms.saturating_sub(now) / 2)),
            projected_ms: 0,
            turn: None,
        };
        self.expires_ms = self
            .expires_ms
            .min(entry.hold_until_ms.saturating_add(REASK_GRACE_MS));
        self.order.insert(entry.order());
        self.entries.insert(seed, entry);
    }

    /// The index of the flow of `caller` at `priority`, created if new (when full, one
    /// without credit makes room, else the oldest).
    fn flow_index(&mut self, caller: &str, priority: Priority, v: u64) -> usize {
        if let Some(index) = self
            .flows
            .iter()
            .position(|f| f.caller == caller && f.priority == priority)
        {
            return index;
        }
        if self.flows.len() >= MAX_FLOWS {
            let vtime = self.vtime;
            let spent = self
                .flows
                .iter()
                .position(|f| f.finish <= vtime.get(f.priority.index()).copied().unwrap_or(0));
            self.flows.remove(spent.unwrap_or(0));
        }
        self.flows.push(Flow {
            caller: caller.to_string(),
            priority,
            finish: v,
        });
        self.flows.len().saturating_sub(1)
    }

    /// Decides the turn of the entry at `order`: it leaves the fair order.
    fn decide(&mut self, order: Order, turn: Turn) {
        self.order.remove(&order);
        if let Some(entry) = self.entries.get_mut(&order.3) {
            entry.turn = Some(turn);
        }
    }

    /// Commits, in fair order, the turns that fall within the horizon at `now`, reserving
    /// them on `pace`; projects the rest on a sketch of it, refusing those whose turn falls
    /// after their deadline (once they may be refused), and the last in order beyond
    /// [`MAX_WAITING`]; gives up the places whose call neither waits nor asks again.
    ///
    /// No turn is given before `not_before` (a cooldown of the pool).
    pub fn release(&mut self, pace: &mut Pace, policy: &PacePolicy, now: u64, not_before: u64) {
        if now > self.expires_ms {
            self.forget_gone(now);
        }
        if self.clean_until_ms.is_some_and(|until| now < until) {
            return;
        }
        let clean_until = self.commit_head(pace, policy, now, not_before);
        // Project the rest, in order, on the lanes' times alone: for a long queue at most
        // every [`PROJECTION_EVERY_MS`] (a request that joined meanwhile looks again then).
        if self.order.len() > EXACT_PROJECTION_UP_TO && now < self.next_projection_ms {
            self.clean_until_ms = Some(clean_until.min(self.next_projection_ms));
            return;
        }
        self.next_projection_ms = now.saturating_add(PROJECTION_EVERY_MS);
        let clean_until = self.project_rest(pace, policy, (now, not_before), clean_until);
        self.clean_until_ms = Some(clean_until);
    }

    /// Gives up the places whose call neither waits nor asks again.
    fn forget_gone(&mut self, now: u64) {
        let gone: Vec<u64> = self
            .entries
            .values()
            .filter(|e| now > e.hold_until_ms.saturating_add(REASK_GRACE_MS))
            .map(|e| e.seed)
            .collect();
        for seed in gone {
            self.leave(seed);
        }
        self.expires_ms = self
            .entries
            .values()
            .map(|e| e.hold_until_ms.saturating_add(REASK_GRACE_MS))
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Commits turns from the head while they fall within the horizon, reserving them on
    /// `pace` (or refusing those past their deadline); until when the rest need not be looked
    /// at again.
    fn commit_head(
        &mut self,
        pace: &mut Pace,
        policy: &PacePolicy,
        now: u64,
        not_before: u64,
    ) -> u64 {
        let mut clean_until = u64::MAX;
        while let Some(&head) = self.order.first() {
            let Some(entry) = self.entries.get(&head.3) else {
                self.order.remove(&head);
                continue;
            };
            let (at, reason) = send_time(pace, policy, now, entry.cost);
            let at = at.max(not_before);
            if at > now.saturating_add(HORIZON_MS) {
                clean_until = at.saturating_sub(HORIZON_MS);
                break;
            }
            if at > entry.deadline_ms {
                let retry_after_ms = at.saturating_sub(now);
                self.decide(
                    head,
                    Turn::Refused {
                        retry_after_ms,
                        reason,
                    },
                );
                continue;
            }
            let lands = at.max(now.saturating_add(entry.way_ms));
            pace.reserve_for(policy, (now, at, lands), entry.cost, entry.seed);
            if let Some(v) = self.vtime.get_mut(head.0.index()) {
                *v = (*v).max(head.1);
            }
            let turn = if at <= now {
                Turn::Go
            } else {
                Turn::At { at_ms: at, reason }
            };
            self.decide(head, turn);
        }
        clean_until
    }

    /// Projects the places behind the head, in order, on a sketch of `pace`, refusing those
    /// whose turn certainly falls after their deadline (once they may be refused) and the
    /// last beyond [`MAX_WAITING`]; until when the queue need not be looked at again.
    fn project_rest(
        &mut self,
        pace: &Pace,
        policy: &PacePolicy,
        (now, not_before): (u64, u64),
        mut clean_until: u64,
    ) -> u64 {
        let mut sketch = pace.sketch();
        let mut waiting = 0usize;
        let mut refused = Vec::new();
        for &place in &self.order {
            let Some(entry) = self.entries.get_mut(&place.3) else {
                continue;
            };
            let (at, reason) = send_time(&sketch, policy, now, entry.cost);
            let at = at.max(not_before);
            let late = at > entry.deadline_ms;
            // A projection errs on the side of caution (what the upstream may not have
            // counted yet, its rounding): a turn just past the deadline is certain only near
            // the deadline itself.
            let certain = at > entry.deadline_ms.saturating_add(PROJECTION_SLACK_MS)
                || now.saturating_add(HORIZON_MS) >= entry.deadline_ms;
            if waiting >= MAX_WAITING || (late && certain && now >= entry.refuse_after_ms) {
                refused.push((place, at.saturating_sub(now), reason));
                continue;
            }
            if late {
                // Not yet: it looks again when it may be refused, and keeps its place in the
                // projection meanwhile (it may still go), so those behind it project behind it.
                let look_again = if certain {
                    entry.refuse_after_ms
                } else {
                    entry.deadline_ms.saturating_sub(HORIZON_MS)
                };
                entry.projected_ms = look_again.saturating_add(HORIZON_MS);
                clean_until = clean_until.min(look_again);
                sketch.reserve_projected(at, entry.cost);
                continue;
            }
            sketch.reserve_projected(at, entry.cost);
            entry.projected_ms = at;
            waiting += 1;
        }
        for (place, retry_after_ms, reason) in refused {
            self.decide(
                place,
                Turn::Refused {
                    retry_after_ms,
                    reason,
                },
            );
        }
        clean_until
    }

    /// Where the request of `seed` stands at `now` (after [`Share::release`]); a decided
    /// one leaves the queue.
    pub fn place(&mut self, now: u64, seed: u64) -> Place {
        let Some(entry) = self.entries.get(&seed) else {
            return Place::Unknown;
        };
        if let Some(turn) = entry.turn {
            self.entries.remove(&seed);
            return Place::Decided(turn);
        }
        if now >= entry.hold_until_ms {
            return Place::AskAgain;
        }
        // Wake when its turn is due, and on the way a few times (a quarter of the way each
        // time, at least [`MIN_NAP_MS`]): a turn can come earlier than projected (a place
        // given up, an answer showing room), committed by whichever call comes first. Not
        // projected yet: when it will be.
        if entry.projected_ms == 0 {
            return Place::Waiting {
                wake_ms: self.next_projection_ms.max(now.saturating_add(1)),
            };
        }
        let turn_due = entry.projected_ms.saturating_sub(HORIZON_MS);
        let nap = (turn_due.saturating_sub(now) / 4).max(MIN_NAP_MS);
        Place::Waiting {
            wake_ms: turn_due
                .min(entry.hold_until_ms)
                .min(now.saturating_add(nap))
                .max(now.saturating_add(1)),
        }
    }

    /// The request of `seed` went away: its place is given up at once.
    pub fn leave(&mut self, seed: u64) {
        if let Some(entry) = self.entries.remove(&seed) {
            self.order.remove(&entry.order());
            self.touch();
        }
    }

    /// Moves every stored time back by `back` ms (a clock jump).
    pub fn shift_back(&mut self, back: u64) {
        for entry in self.entries.values_mut() {
            entry.deadline_ms = entry.deadline_ms.saturating_sub(back);
            entry.hold_until_ms = entry.hold_until_ms.saturating_sub(back);
            entry.refuse_after_ms = entry.refuse_after_ms.saturating_sub(back);
            entry.projected_ms = entry.projected_ms.saturating_sub(back);
            if let Some(Turn::At { at_ms, .. }) = &mut entry.turn {
                *at_ms = at_ms.saturating_sub(back);
            }
        }
        self.touch();
    }

    /// Per caller: its weight, requests waiting, and the share of the pool the fair order
    /// gives it while every caller waiting stays backlogged (its weight over the weights
    /// waiting at the first priority that waits; 0 below it).
    #[must_use]
    pub fn callers(&self) -> Vec<CallerShare> {
        let mut out: Vec<CallerShare> = Vec::new();
        for entry in self.entries.values().filter(|e| e.turn.is_none()) {
            match out
                .iter_mut()
                .find(|c| c.caller == entry.caller && c.priority == entry.priority)
            {
                Some(c) => c.waiting = c.waiting.saturating_add(1),
                None => out.push(CallerShare {
                    caller: entry.caller.clone(),
                    priority: entry.priority,
                    weight: entry.weight,
                    waiting: 1,
                    share: 0.0,
                }),
            }
        }
        let first = out.iter().map(|c| c.priority).min();
        let total: u64 = out
            .iter()
            .filter(|c| Some(c.priority) == first)
            .map(|c| u64::from(c.weight))
            .sum();
        for c in &mut out {
            if Some(c.priority) == first && total > 0 {
                c.share = f64::from(c.weight) / total as f64;
            }
        }
        out
    }
}

/// One caller's place in a pool's queue (the operator's view).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CallerShare {
    pub caller: String,
    pub priority: Priority,
    pub weight: u32,
    pub waiting: u32,
    /// Its share of the pool while backlogged (0 to 1).
    pub share: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{KeyLimits, Observed};

    const T0: u64 = 1_764_000_000_000;

    fn claimant(caller: &str, weight: u32, priority: Priority) -> Claimant {
        Claimant {
            caller: caller.to_string(),
            weight,
            priority,
        }
    }

    /// A pool of `rpm` requests a minute with an empty bucket.
    fn scarce(rpm: u64) -> Pace {
        let mut pace = Pace::default();
        pace.observe(
            T0,
            &KeyLimits {
                requests: Some(Observed {
                    limit: rpm,
                    remaining: 0,
                }),
                sent_ms: Some(T0),
                ..KeyLimits::default()
            },
        );
        pace
    }

    /// Releases every turn from `T0` on, in time; the callers in the order they went.
    fn drain(share: &mut Share, pace: &mut Pace, seeds: &[(u64, &str)]) -> Vec<String> {
        let policy = PacePolicy::default();
        let mut went = Vec::new();
        let mut now = T0;
        while went.len() < seeds.len() && now < T0 + 3_600_000 {
            share.release(pace, &policy, now, 0);
            for &(seed, caller) in seeds {
                if let Place::Decided(Turn::Go | Turn::At { .. }) = share.place(now, seed) {
                    went.push(caller.to_string());
                }
            }
            now += 50;
        }
        went
    }

    #[test]
    fn backlogged_callers_alternate_by_weight_and_a_light_one_goes_first() {
        let mut pace = scarce(60);
        let mut share = Share::default();
        let mut seeds = Vec::new();
        let (heavy, double, light) = (
            claimant("heavy", 1, Priority::Interactive),
            claimant("double", 2, Priority::Interactive),
            claimant("light", 1, Priority::Interactive),
        );
        for i in 0..6 {
            share.join(&pace, T0, i, &heavy, Cost::default(), (T0 + 600_000, 0));
            seeds.push((i, "heavy"));
        }
        for i in 10..16 {
            share.join(&pace, T0, i, &double, Cost::default(), (T0 + 600_000, 0));
            seeds.push((i, "double"));
        }
        share.join(&pace, T0, 99, &light, Cost::default(), (T0 + 600_000, 0));
        seeds.push((99, "light"));
        let went = drain(&mut share, &mut pace, &seeds);
        // The light caller arrived last and goes first; then two of `double` for each of
        // `heavy` while both are backlogged.
        assert_eq!(went[0], "light", "{went:?}");
        let first_six = &went[1..7];
        let doubles = first_six.iter().filter(|c| *c == "double").count();
        assert_eq!(doubles, 4, "{went:?}");
    }

    #[test]
    fn interactive_goes_before_background_and_background_takes_the_rest() {
        let mut pace = scarce(60);
        let mut share = Share::default();
        let job = claimant("job", 1, Priority::Background);
        let chat = claimant("chat", 1, Priority::Interactive);
        let mut seeds = Vec::new();
        for i in 0..5 {
            share.join(&pace, T0, i, &job, Cost::default(), (T0 + 600_000, 0));
            seeds.push((i, "job"));
        }
        share.join(&pace, T0, 50, &chat, Cost::default(), (T0 + 600_000, 0));
        share.join(&pace, T0, 51, &chat, Cost::default(), (T0 + 600_000, 0));
        seeds.push((50, "chat"));
        seeds.push((51, "chat"));
        let went = drain(&mut share, &mut pace, &seeds);
        assert_eq!(went, ["chat", "chat", "job", "job", "job", "job", "job"]);
    }

    #[test]
    fn a_turn_after_the_deadline_is_refused_with_that_turn_as_its_wait() {
        let mut pace = scarce(60);
        let mut share = Share::default();
        let job = claimant("job", 1, Priority::Interactive);
        // One a second: the third's turn is at 3 s, and so is the fourth's (a late one holds
        // no place in the projection).
        for i in 0..3 {
            share.join(&pace, T0, i, &job, Cost::default(), (T0 + 2_500, 0));
        }
        share.join(&pace, T0, 3, &job, Cost::default(), (T0 + 900, 0));
        let policy = PacePolicy::default();
        share.release(&mut pace, &policy, T0, 0);
        // Neither is refused at once (an answer could show more room meanwhile)...
        assert!(matches!(share.place(T0, 2), Place::Waiting { .. }));
        assert!(matches!(share.place(T0, 3), Place::Waiting { .. }));
        // ...the fourth, far past its deadline, after half its budget, with its turn as its
        // wait...
        let half = T0 + 750;
        share.release(&mut pace, &policy, half, 0);
        match share.place(half, 3) {
            Place::Decided(Turn::Refused { retry_after_ms, .. }) => {
                assert!(
                    (2_000..=3_300).contains(&retry_after_ms),
                    "{retry_after_ms}"
                );
            }
            other => panic!("{other:?}"),
        }
        // ...the third, just past it (within what a projection may overstate), only at its
        // deadline.
        share.release(&mut pace, &policy, T0 + 1_250, 0);
        assert!(matches!(share.place(T0 + 1_250, 2), Place::Waiting { .. }));
        let near = T0 + 2_400;
        share.release(&mut pace, &policy, near, 0);
        match share.place(near, 2) {
            Place::Decided(Turn::Refused { retry_after_ms, .. }) => {
                assert!((300..=800).contains(&retry_after_ms), "{retry_after_ms}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_place_is_kept_across_asking_again_and_given_up_without() {
        let mut pace = scarce(1);
        let mut share = Share::default();
        let job = claimant("job", 1, Priority::Interactive);
        share.join(&pace, T0, 1, &job, Cost::default(), (T0 + 3_600_000, 0));
        share.join(&pace, T0, 2, &job, Cost::default(), (T0 + 3_600_000, 0));
        let policy = PacePolicy::default();
        share.release(&mut pace, &policy, T0 + MAX_HOLD_MS, 0);
        assert_eq!(share.place(T0 + MAX_HOLD_MS, 1), Place::AskAgain);
        // The first asks again and keeps its place; the second never does and loses it.
        share.join(&pace, T0 + MAX_HOLD_MS, 1, &job, Cost::default(), (0, 0));
        share.release(&mut pace, &policy, T0 + MAX_HOLD_MS + REASK_GRACE_MS + 1, 0);
        assert!(share.contains(1));
        assert!(!share.contains(2));
    }

    #[test]
    fn the_queue_is_bounded_and_the_last_in_order_is_refused() {
        let mut pace = scarce(60);
        let mut share = Share::default();
        let job = claimant("job", 1, Priority::Interactive);
        for i in 0..(MAX_WAITING as u64 + 10) {
            share.join(&pace, T0, i, &job, Cost::default(), (u64::MAX / 4, 0));
        }
        share.release(&mut pace, &PacePolicy::default(), T0, 0);
        let refused = (0..(MAX_WAITING as u64 + 10))
            .filter(|&i| matches!(share.place(T0, i), Place::Decided(Turn::Refused { .. })))
            .count();
        assert_eq!(refused, 10);
    }

    #[test]
    fn a_request_may_lower_its_priority_never_raise_it() {
        use Priority::{Background, Interactive};
        assert_eq!(
            Priority::requested(Interactive, Some("background")),
            Background
        );
        assert_eq!(
            Priority::requested(Background, Some("interactive")),
            Background
        );
        assert_eq!(
            Priority::requested(Interactive, Some("urgent")),
            Interactive
        );
        assert_eq!(Priority::requested(Background, None), Background);
    }
}
