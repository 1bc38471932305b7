//! Local credit: a hot caller admitted in its isolate, without a call to its object per request.
//!
//! A call to the caller's object costs far more than the decision it carries, so a caller far
//! from its limits is granted a few *tickets* with an admission: each ticket is an admission
//! made in advance by the object (one request, a token reservation, a concurrency slot, under
//! its own lease), so the object's ledger counts it from the grant on, whatever the isolate
//! does with it. The isolate hands a ticket to a request that fits it, within
//! [`CREDIT_VALID_MS`] of the grant; the request then settles, renews and holds its slot by the
//! ticket's lease, exactly as a request the object admitted itself. What goes back to the
//! object — the settlements of requests admitted on credit, the tickets left unused when their
//! time is up (returned whole: the request, the tokens and the slot, as if never granted) —
//! waits in the isolate's [`Outbox`] and rides on the next call to the object, or is sent by
//! its owner (the caller's flusher, after [`SETTLE_DELAY_MS`]; the grant, for its tickets).
//!
//! Near a limit nothing is granted (a grant takes at most 1/[`CREDIT_SHARE`] of what remains in
//! any dimension), so there every request asks its object and settles at once, as without
//! credit. A settlement that charges more than was reserved (a prompt written to the cache)
//! goes at once too, and the isolate stops admitting on the tickets it holds. A ticket is an
//! admission at the instant of its grant, as a request waiting in its backoff or pacing was
//! admitted before it goes: the window bound holds for admissions, and a ticket is used at
//! most [`CREDIT_VALID_MS`] after its grant. An isolate that dies loses its tickets: their
//! slots end with their leases and their charges stay, which never admits more.

use std::collections::BinaryHeap;

use crate::sorted_map::SortedMap;

use serde::{Deserialize, Serialize};

use super::limiter_state::{
    exceeds_a_bucket, reserved_tokens, Admission, AdmissionRequest, Dimension, DimensionStatus,
    LimiterState, Reservation, Used, MIN_LEASE_RECORDS,
};
use crate::config::TierLimits;

/// How long after its grant a ticket may admit a request in the isolate.
pub const CREDIT_VALID_MS: u64 = 1_000;

/// The most tickets one grant holds.
pub const MAX_CREDIT_TICKETS: u32 = 16;

/// Below this many requests expected within [`CREDIT_VALID_MS`], an isolate asks for no
/// credit: every request asks its object, as without credit.
pub const MIN_CREDIT_TICKETS: u32 = 3;

/// A grant takes at most one part in this many of what remains, in every dimension.
pub const CREDIT_SHARE: u64 = 8;

/// No grant while any dimension holds less than this many tickets' worth. A ticket is charged
/// when granted; when a burst takes the rest of a quota within the ticket's second, a ticket
/// left unused there means a request refused while it waits to be returned. A small quota
/// (30 rpm, 4 slots) therefore never gets credit and is admitted exactly as without it; a
/// larger one can refuse at most an eighth of what remained at the last grant, and only for
/// the second or so until the unused tickets are back.
pub const MIN_CREDIT_ROOM: u64 = 64;

/// How long the settlement of a request admitted on credit waits for another call to carry
/// it before the caller's flusher sends it.
pub const SETTLE_DELAY_MS: u64 = 250;

/// How long one flusher keeps the settlements of a caller moving before it hands over to the
/// next settlement that waits (a `wait_until` is not meant to last).
pub const FLUSHER_LIFE_MS: u64 = 10_000;

/// A call that carried returns and has not come back after this long is taken for lost: its
/// returns are sent again (the object's call timeout is 10 s).
pub const CARRY_TIMEOUT_MS: u64 = 12_000;

/// Callers with credit state kept at most per isolate (a hard cap, see [`Credits`]).
pub const MAX_CREDIT_CALLERS: usize = 1_024;

/// One ticket: an admission made in advance, and whether it charged a request against `rpm`
/// (so that returning it unused gives the request back only if it took one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub reservation: Reservation,
    #[serde(default)]
    pub requests: u64,
}

/// The settlement of a request admitted on credit, waiting to be carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub reservation: Reservation,
    pub usage: Used,
    /// As in `LimiterCall::Settle`: the caller is known to the upstream.
    #[serde(default = "yes")]
    pub confirms: bool,
    /// What the answer cost in micro-dollars at the answering model's price, for the dollar
    /// quotas; `None`: unknown (the reservation's worst case stays charged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<u64>,
}

fn yes() -> bool {
    true
}

impl Settled {
    /// Whether the request used more than it reserved in a dimension `limits` count (a
    /// prompt written to the cache, say): the caller may now be in debt, which tickets granted
    /// before could not know, so the settlement goes at once and the isolate stops admitting
    /// on credit (see [`Credit::stop_admitting`]).
    #[must_use]
    pub fn charges_extra(&self, limits: &TierLimits) -> bool {
        let over = |used: Option<u64>, reserved: u64| used.is_some_and(|used| used > reserved);
        (limits.input_tpm.is_some() && over(self.usage.input_tokens, self.reservation.input_tokens))
            || (limits.output_tpm.is_some()
                && over(self.usage.output_tokens, self.reservation.output_tokens))
    }
}

/// What a call hands back to the object on its way: settlements, then unused tickets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Returns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settle: Vec<Settled>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release: Vec<Ticket>,
}

impl Returns {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.settle.is_empty() && self.release.is_empty()
    }
}

/// What one ticket costs per dimension, as the state charges an admission of `request`.
fn ticket_cost(limits: &TierLimits, request: &AdmissionRequest, dimension: Dimension) -> u64 {
    match dimension {
        Dimension::Rpm | Dimension::Concurrency => 1,
        Dimension::InputTpm | Dimension::OutputTpm => reserved_tokens(limits, request, dimension),
    }
}

impl LimiterState {
    /// Hands back what the isolate returns: settles each settlement, then gives back each
    /// unused ticket whole. Whether any settlement confirms the caller.
    pub fn take_back(&mut self, limits: &TierLimits, now_ms: u64, returns: &Returns) -> bool {
        let mut confirms = false;
        for settled in &returns.settle {
            confirms |= settled.confirms;
            self.settle_priced(
                limits,
                now_ms,
                &settled.reservation,
                settled.usage,
                settled.cost_micros,
            );
        }
        for ticket in &returns.release {
            self.release(limits, now_ms, &ticket.reservation, ticket.requests);
        }
        confirms
    }

    /// Grants up to `wanted` tickets the size of `ticket` (at most [`MAX_CREDIT_TICKETS`]),
    /// none when the caller is near a limit (less than [`MIN_CREDIT_ROOM`] tickets' worth
    /// left in a dimension): they take at most 1/[`CREDIT_SHARE`] of what remains in every
    /// dimension, and half the room for lease records. Every ticket is an
    /// admission of the state, so nothing here can admit more than `admit` does.
    pub fn grant(
        &mut self,
        limits: &TierLimits,
        now_ms: u64,
        ticket: &AdmissionRequest,
        wanted: u32,
    ) -> Vec<Ticket> {
        // A quota is exact only if every request asks the object: an isolate's ticket could
        // not be priced (its model is not known when it is granted).
        if wanted == 0 || limits.quotas.any() {
            return Vec::new();
        }
        let mut count = u64::from(wanted.min(MAX_CREDIT_TICKETS));
        for status in self.snapshot(limits, now_ms) {
            let cost = ticket_cost(limits, ticket, status.dimension);
            if cost > 0 {
                if status.remaining < cost.saturating_mul(MIN_CREDIT_ROOM) {
                    return Vec::new();
                }
                count = count.min(status.remaining / cost.saturating_mul(CREDIT_SHARE));
            }
        }
        // Tickets leave half the room for lease records, and never its last
        // `MIN_LEASE_RECORDS / 8`, to the requests admitted one by one: an admission that
        // finds the records full drops one, whose refund is then lost.
        let room = self
            .lease_room(limits)
            .saturating_sub(MIN_LEASE_RECORDS / 8);
        count = count.min(u64::try_from(room / 2).unwrap_or(u64::MAX));
        let requests = u64::from(limits.rpm.is_some());
        let mut tickets = Vec::new();
        for _ in 0..count {
            match self.admit(limits, now_ms, ticket) {
                Admission::Admitted(reservation) => tickets.push(Ticket {
                    reservation,
                    requests,
                }),
                Admission::Denied(_) | Admission::Exhausted(_) => break,
            }
        }
        tickets
    }
}

/// Requests seen in the last windows of [`CREDIT_VALID_MS`], to size a credit.
#[derive(Debug, Clone, Copy, Default)]
struct Arrivals {
    window_start_ms: u64,
    current: u32,
    previous: u32,
}

impl Arrivals {
    fn roll(&mut self, now_ms: u64) {
        let age = now_ms.saturating_sub(self.window_start_ms);
        if age >= 2 * CREDIT_VALID_MS {
            (self.previous, self.current) = (0, 0);
            self.window_start_ms = now_ms;
        } else if age >= CREDIT_VALID_MS {
            (self.previous, self.current) = (self.current, 0);
            self.window_start_ms = self.window_start_ms.saturating_add(CREDIT_VALID_MS);
        }
    }

    fn count(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.current = self.current.saturating_add(1);
    }

    /// Requests expected within the next [`CREDIT_VALID_MS`]: those of the last one, the
    /// previous window weighted by how much of it that still covers.
    fn expected(&self, now_ms: u64) -> u32 {
        let mut view = *self;
        view.roll(now_ms);
        let into = now_ms
            .saturating_sub(view.window_start_ms)
            .min(CREDIT_VALID_MS);
        let carried = u64::from(view.previous) * (CREDIT_VALID_MS - into) / CREDIT_VALID_MS;
        u32::try_from(carried)
            .unwrap_or(u32::MAX)
            .saturating_add(view.current)
    }
}

/// Where a returned item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Waiting for a call to carry it.
    Waiting,
    /// On its way in call `call`, sent at `since_ms`.
    Carried { call: u64, since_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Settle(Settled),
    Release(Ticket),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    item: Item,
    sending: Sending,
}

/// What goes back to the object, until a call has carried it there. Every item has an owner
/// that sends it if no other call took it in time: the grant whose tickets expired owns their
/// return, and the caller's one flusher owns every settlement. A call that fails or is
/// dropped puts its items back.
#[derive(Debug, Default)]
pub struct Outbox {
    entries: Vec<Entry>,
    next_id: u64,
    next_call: u64,
}

/// What the owner of some items does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerStep {
    /// All delivered.
    Done,
    /// Some are on their way in another call: look again later.
    Wait,
    /// Send this (every waiting item, the owner's among them) in one call.
    Send(Carry),
}

/// Returns taken for one call, under the number to report its outcome with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carry {
    pub call: u64,
    pub returns: Returns,
}

impl Outbox {
    fn put(&mut self, item: Item) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.entries.push(Entry {
            id,
            item,
            sending: Sending::Waiting,
        });
        id
    }

    /// Takes every waiting item for one call; `None` when nothing waits.
    pub fn take(&mut self, now_ms: u64) -> Option<Carry> {
        let call = self.next_call;
        let mut returns = Returns::default();
        for entry in &mut self.entries {
            if entry.sending != Sending::Waiting {
                continue;
            }
            entry.sending = Sending::Carried {
                call,
                since_ms: now_ms,
            };
            match entry.item {
                Item::Settle(settled) => returns.settle.push(settled),
                Item::Release(ticket) => returns.release.push(ticket),
            }
        }
        if returns.is_empty() {
            return None;
        }
        self.next_call = self.next_call.wrapping_add(1);
        Some(Carry { call, returns })
    }

    /// The object took call `call`'s returns.
    pub fn delivered(&mut self, call: u64) {
        self.entries
            .retain(|e| !matches!(e.sending, Sending::Carried { call: c, .. } if c == call));
    }

    /// Call `call` failed or was dropped: its items wait again.
    pub fn failed(&mut self, call: u64) {
        for entry in &mut self.entries {
            if matches!(entry.sending, Sending::Carried { call: c, .. } if c == call) {
                entry.sending = Sending::Waiting;
            }
        }
    }

    /// What the owner of `ids` does at `now_ms`. A call that has carried items for longer
    /// than [`CARRY_TIMEOUT_MS`] is taken for lost first.
    pub fn owner_step(&mut self, ids: &[u64], now_ms: u64) -> OwnerStep {
        for entry in &mut self.entries {
            if let Sending::Carried { since_ms, .. } = entry.sending {
                if now_ms.saturating_sub(since_ms) >= CARRY_TIMEOUT_MS {
                    entry.sending = Sending::Waiting;
                }
            }
        }
        let mine = self.entries.iter().filter(|e| ids.contains(&e.id));
        let mut any = false;
        let mut waiting = false;
        for entry in mine {
            any = true;
            waiting |= entry.sending == Sending::Waiting;
        }
        match (any, waiting) {
            (false, _) => OwnerStep::Done,
            (true, false) => OwnerStep::Wait,
            (true, true) => self.take(now_ms).map_or(OwnerStep::Wait, OwnerStep::Send),
        }
    }

    /// What the flusher does at `now_ms`: as [`Outbox::owner_step`], for every settlement.
    fn flush_step(&mut self, now_ms: u64) -> OwnerStep {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|e| matches!(e.item, Item::Settle(_)))
            .map(|e| e.id)
            .collect();
        self.owner_step(&ids, now_ms)
    }

    /// The owner gives up on `ids`; how many were still there.
    pub fn abandon(&mut self, ids: &[u64]) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| !ids.contains(&e.id));
        before - self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    ticket: Ticket,
    grant: u64,
    usable_until_ms: u64,
}

/// One caller's credit in one isolate: its tickets, the limits they were granted under, the
/// snapshot that came with them (for the answers' headers), how busy the caller is here, and
/// what waits to go back.
#[derive(Debug)]
pub struct Credit {
    limits: TierLimits,
    held: Vec<Held>,
    status: Vec<DimensionStatus>,
    status_ms: u64,
    arrivals: Arrivals,
    /// The size of the tickets asked for: the last request that asked its object.
    size: Option<AdmissionRequest>,
    /// A call that may bring tickets is on its way: no other asks for more meanwhile.
    asking: bool,
    /// A flusher sees the settlements delivered.
    flusher: bool,
    next_grant: u64,
    last_seen_ms: u64,
    pub outbox: Outbox,
}

/// A request admitted from the isolate's credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAdmission {
    pub reservation: Reservation,
    /// The caller's limits as of the grant the ticket came with, and that grant's time.
    pub status: Vec<DimensionStatus>,
    pub status_ms: u64,
    /// Ask the object for this many more tickets now, off the request's path.
    pub refill: Option<u32>,
}

impl Credit {
    #[must_use]
    pub fn new(limits: TierLimits) -> Credit {
        Credit {
            limits,
            held: Vec::new(),
            status: Vec::new(),
            status_ms: 0,
            arrivals: Arrivals::default(),
            size: None,
            asking: false,
            flusher: false,
            next_grant: 0,
            last_seen_ms: 0,
            outbox: Outbox::default(),
        }
    }

    /// A request arrives at `now_ms` with `limits`: counted, and tickets granted under other
    /// limits become unusable (they go back when their grant's time is up).
    pub fn arrive(&mut self, limits: TierLimits, now_ms: u64) {
        if limits != self.limits {
            self.limits = limits;
            for held in &mut self.held {
                held.usable_until_ms = 0;
            }
        }
        self.arrivals.count(now_ms);
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
    }

    /// Tickets to ask for with an admission at `now_ms`: about as many requests as are
    /// expected here within [`CREDIT_VALID_MS`], none for a quiet caller or while another
    /// call may bring some.
    #[must_use]
    pub fn wanted(&self, now_ms: u64) -> u32 {
        let expected = self.arrivals.expected(now_ms).min(MAX_CREDIT_TICKETS);
        if self.asking || expected < MIN_CREDIT_TICKETS || self.limits.quotas.any() {
            0
        } else {
            expected
        }
    }

    /// Admits `request` from a ticket that covers it, if one is usable at `now_ms`. When few
    /// tickets are left, the answer asks for a refill (and counts it as on its way).
    ///
    /// A request larger than a whole bucket never goes on credit: it may settle into debt, and
    /// only its object knows whether the bucket is full, so it always asks (a grant never
    /// holds a ticket that size anyway, see [`MIN_CREDIT_ROOM`]).
    pub fn take(&mut self, request: &AdmissionRequest, now_ms: u64) -> Option<LocalAdmission> {
        if exceeds_a_bucket(&self.limits, request) {
            return None;
        }
        let input = ticket_cost(&self.limits, request, Dimension::InputTpm);
        let output = ticket_cost(&self.limits, request, Dimension::OutputTpm);
        let index = self.held.iter().position(|held| {
            held.usable_until_ms > now_ms
                && held.ticket.reservation.input_tokens >= input
                && held.ticket.reservation.output_tokens >= output
        })?;
        let held = self.held.remove(index);
        let wanted = self.wanted(now_ms);
        let usable = self
            .held
            .iter()
            .filter(|h| h.usable_until_ms > now_ms)
            .count();
        let refill = (wanted > 0 && usable <= (wanted / 2) as usize).then_some(wanted);
        if refill.is_some() {
            self.asking = true;
        }
        Some(LocalAdmission {
            reservation: held.ticket.reservation,
            status: self.status.clone(),
            status_ms: self.status_ms,
            refill,
        })
    }

    /// The request that asks its object at `now_ms`: how many tickets to ask for with it (the
    /// call is then counted as on its way), and the returns it carries.
    pub fn ask(&mut self, request: &AdmissionRequest, now_ms: u64) -> (u32, Option<Carry>) {
        let wanted = self.wanted(now_ms);
        if wanted > 0 {
            self.asking = true;
            self.size = Some(*request);
        }
        (wanted, self.outbox.take(now_ms))
    }

    /// The size of the tickets a refill asks for.
    #[must_use]
    pub fn ticket_size(&self) -> Option<AdmissionRequest> {
        self.size
    }

    /// The call counted as on its way has come back (or failed).
    pub fn answered(&mut self) {
        self.asking = false;
    }

    /// Keeps the tickets of a grant asked for at `asked_ms` (when the call that brought them
    /// left, on the isolate's clock), with the caller's limits as the object saw them
    /// (`status` at `status_ms`). They are usable until [`CREDIT_VALID_MS`] after `asked_ms`,
    /// so within that long of their grant however late the answer came, and so well inside
    /// their leases. The grant's number, for [`Credit::expire`].
    pub fn granted(
        &mut self,
        tickets: &[Ticket],
        status: Vec<DimensionStatus>,
        status_ms: u64,
        asked_ms: u64,
    ) -> u64 {
        let grant = self.next_grant;
        self.next_grant = self.next_grant.wrapping_add(1);
        let usable_until_ms = asked_ms.saturating_add(CREDIT_VALID_MS);
        self.held.extend(tickets.iter().map(|&ticket| Held {
            ticket,
            grant,
            usable_until_ms,
        }));
        self.status = status;
        self.status_ms = status_ms;
        grant
    }

    /// Grant `grant`'s time is up: its unused tickets go to the outbox, to be given back.
    /// Their ids, owned by the caller of this.
    pub fn expire(&mut self, grant: u64) -> Vec<u64> {
        let (expired, kept): (Vec<Held>, Vec<Held>) =
            self.held.drain(..).partition(|held| held.grant == grant);
        self.held = kept;
        expired
            .into_iter()
            .map(|held| self.outbox.put(Item::Release(held.ticket)))
            .collect()
    }

    /// Puts the settlement of a request admitted on credit in the outbox. Whether the caller
    /// of this becomes the flusher (there was none): it then calls [`Credit::flush_step`]
    /// after [`SETTLE_DELAY_MS`], and on until it is told it is done.
    pub fn defer(&mut self, settled: Settled) -> bool {
        self.outbox.put(Item::Settle(settled));
        !std::mem::replace(&mut self.flusher, true)
    }

    /// The flusher's next step at `now_ms`; when it is [`OwnerStep::Done`] (no settlement
    /// left) there is no flusher any more.
    pub fn flush_step(&mut self, now_ms: u64) -> OwnerStep {
        let step = self.outbox.flush_step(now_ms);
        if step == OwnerStep::Done {
            self.flusher = false;
        }
        step
    }

    /// The flusher stopped (it gave up, handed over or was dropped): the next settlement
    /// deferred becomes the flusher.
    pub fn flusher_gone(&mut self) {
        self.flusher = false;
    }

    /// No ticket held admits anything any more (they go back when their grant's time is up).
    pub fn stop_admitting(&mut self) {
        for held in &mut self.held {
            held.usable_until_ms = 0;
        }
    }

    /// Nothing held, nothing to send, and not seen for a minute.
    #[must_use]
    pub fn is_idle(&self, now_ms: u64) -> bool {
        self.holds_nothing() && now_ms.saturating_sub(self.last_seen_ms) >= 60_000
    }

    /// Nothing that must reach the object is held here: no ticket, no return, no call that may
    /// bring tickets, no flusher. Forgetting the credit then loses only how busy the caller is.
    #[must_use]
    pub fn holds_nothing(&self) -> bool {
        self.held.is_empty() && self.outbox.is_empty() && !self.asking && !self.flusher
    }

    /// Unused tickets held, usable or not.
    #[must_use]
    pub fn tickets_held(&self) -> usize {
        self.held.len()
    }
}

/// Every caller's credit in one isolate, by identity fingerprint: at most
/// [`MAX_CREDIT_CALLERS`] of them, however many callers an isolate sees (a site that mints a
/// token per anonymous visitor brings a new identity per visitor).
///
/// A caller that holds nothing (no ticket, nothing to send back, no call or flusher on its
/// way) can be forgotten at any time: it only loses its arrival count, and so asks its object
/// for a while without credit. A caller that holds something is never forgotten while it
/// does: its tickets and returns would be lost. When the table is full, one sweep forgets the
/// least recently seen callers that hold nothing, down to three quarters of the cap, so a
/// sweep's cost is shared by the quarter of new callers it makes room for; when it frees less
/// than that, no sweep runs for [`SWEEP_PAUSE_MS`], and meanwhile a new caller that finds no
/// room gets no credit (it asks its object, as without credit).
#[derive(Debug, Default)]
pub struct Credits {
    /// Boxed: a caller new to the table moves the entries after its place, a pointer each.
    by_caller: SortedMap<String, Box<Credit>>,
    /// No sweep before this instant: the last one found too little to forget.
    next_sweep_ms: u64,
}

/// After a sweep that found less than a quarter of the table to forget, the next one waits this
/// long (the tickets of a grant go back within [`CREDIT_VALID_MS`] and a bit).
pub const SWEEP_PAUSE_MS: u64 = 1_000;

impl Credits {
    /// The credit of `identity`, made when missing; `None` when it is missing and the table is
    /// full of callers that hold something (see [`Credits`]).
    pub fn of(&mut self, identity: &str, limits: TierLimits, now_ms: u64) -> Option<&mut Credit> {
        if !self.by_caller.contains_key(identity) {
            if self.by_caller.len() >= MAX_CREDIT_CALLERS {
                self.sweep(now_ms);
            }
            if self.by_caller.len() >= MAX_CREDIT_CALLERS {
                return None;
            }
            self.by_caller
                .insert(identity.to_string(), Box::new(Credit::new(limits)));
        }
        self.by_caller.get_mut(identity).map(|credit| &mut **credit)
    }

    /// Forgets the least recently seen callers that hold nothing, down to three quarters of
    /// [`MAX_CREDIT_CALLERS`] (one pass that keeps the oldest in a heap: n log n at most, for
    /// at most [`MAX_CREDIT_CALLERS`]; the standard library's selection is kilobytes of module).
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.next_sweep_ms {
            return;
        }
        let keep = MAX_CREDIT_CALLERS - MAX_CREDIT_CALLERS / 4;
        let excess = self.by_caller.len().saturating_sub(keep);
        // The `excess` least recently seen (ties by identity) of those that hold nothing.
        let mut oldest: BinaryHeap<(u64, &String)> = BinaryHeap::with_capacity(excess + 1);
        let free = self
            .by_caller
            .iter()
            .filter(|(_, credit)| credit.holds_nothing())
            .map(|(identity, credit)| (credit.last_seen_ms, identity));
        for caller in free {
            oldest.push(caller);
            if oldest.len() > excess {
                oldest.pop();
            }
        }
        if oldest.len() < excess {
            self.next_sweep_ms = now_ms.saturating_add(SWEEP_PAUSE_MS);
        }
        let forget: Vec<String> = oldest.into_iter().map(|(_, id)| id.clone()).collect();
        for identity in forget {
            self.by_caller.remove(&identity);
        }
    }

    /// The credit of `identity`, if any.
    pub fn get(&mut self, identity: &str) -> Option<&mut Credit> {
        self.by_caller.get_mut(identity).map(|credit| &mut **credit)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_caller.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_caller.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    const T0: u64 = 1_764_000_000_000;

    fn request(input: u64, output: u64) -> AdmissionRequest {
        AdmissionRequest {
            input_tokens: input,
            output_tokens: output,
            lease_ms: 15_000,
            quota: None,
        }
    }

    fn roomy() -> TierLimits {
        TierLimits {
            rpm: NonZeroU32::new(10_000),
            input_tpm: NonZeroU32::new(1_000_000),
            output_tpm: NonZeroU32::new(1_000_000),
            concurrency: NonZeroU32::new(1_000),
            quotas: Default::default(),
        }
    }

    fn one_ticket(lease_id: u64) -> Ticket {
        Ticket {
            reservation: Reservation {
                lease_id,
                input_tokens: 10,
                output_tokens: 10,
                lease_expires_ms: T0 + 15_000,
                quota: None,
            },
            requests: 1,
        }
    }

    #[test]
    fn callers_seen_lately_that_hold_nothing_make_room_oldest_first() {
        let mut credits = Credits::default();
        for i in 0..MAX_CREDIT_CALLERS as u64 {
            let credit = credits.of(&format!("visitor-{i}"), roomy(), T0 + i);
            credit.unwrap().arrive(roomy(), T0 + i);
        }
        assert!(credits.of("one-more", roomy(), T0 + 2_000).is_some());
        assert_eq!(credits.len(), MAX_CREDIT_CALLERS * 3 / 4 + 1);
        assert!(credits.get("visitor-0").is_none());
        assert!(credits
            .get(&format!("visitor-{}", MAX_CREDIT_CALLERS - 1))
            .is_some());
    }

    #[test]
    fn a_sweep_forgets_exactly_the_least_recently_seen_ties_by_identity() {
        let callers = MAX_CREDIT_CALLERS as u64;
        // Seen two at a time, in an order unlike their names.
        let seen = |i: u64| T0 + (i * 7_919 % callers) / 2;
        let mut credits = Credits::default();
        for i in 0..callers {
            let credit = credits.of(&format!("visitor-{i}"), roomy(), seen(i));
            credit.unwrap().arrive(roomy(), seen(i));
        }
        let mut by_age: Vec<(u64, String)> = (0..callers)
            .map(|i| (seen(i), format!("visitor-{i}")))
            .collect();
        by_age.sort();
        assert!(credits.of("one-more", roomy(), T0 + 10_000).is_some());
        let forgotten = MAX_CREDIT_CALLERS / 4;
        for (place, (_, identity)) in by_age.iter().enumerate() {
            assert_eq!(
                credits.get(identity).is_none(),
                place < forgotten,
                "{identity}"
            );
        }
    }

    #[test]
    fn a_full_table_of_callers_holding_tickets_refuses_new_callers() {
        let mut credits = Credits::default();
        for i in 0..MAX_CREDIT_CALLERS as u64 {
            let credit = credits.of(&format!("visitor-{i}"), roomy(), T0).unwrap();
            credit.granted(&[one_ticket(i)], Vec::new(), T0, T0);
        }
        // No room and nobody to forget: the new caller goes without credit.
        assert!(credits.of("one-more", roomy(), T0 + 10).is_none());
        assert_eq!(credits.len(), MAX_CREDIT_CALLERS);
        // One caller uses its ticket; the table looks again once the pause is over.
        let used = credits.get("visitor-7").unwrap();
        assert!(used.take(&request(1, 1), T0 + 20).is_some());
        assert!(used.holds_nothing());
        assert!(credits.of("one-more", roomy(), T0 + 30).is_none());
        let later = T0 + 10 + SWEEP_PAUSE_MS;
        assert!(credits.of("one-more", roomy(), later).is_some());
        assert!(credits.get("visitor-7").is_none());
        assert_eq!(credits.len(), MAX_CREDIT_CALLERS);
        for i in (0..MAX_CREDIT_CALLERS as u64).filter(|&i| i != 7) {
            let kept = credits
                .get(&format!("visitor-{i}"))
                .map(|c| c.tickets_held());
            assert_eq!(kept, Some(1));
        }
    }

    #[test]
    fn a_quiet_caller_asks_for_no_credit_and_a_busy_one_for_its_next_second() {
        let mut credit = Credit::new(roomy());
        credit.arrive(roomy(), T0);
        credit.arrive(roomy(), T0 + 10);
        assert_eq!(credit.wanted(T0 + 10), 0);
        for i in 0..8 {
            credit.arrive(roomy(), T0 + 20 + i);
        }
        assert_eq!(credit.wanted(T0 + 30), 10);
        // Half a second into the next window, half of the last one still counts.
        assert_eq!(credit.wanted(T0 + 1_500), 5);
        assert_eq!(credit.wanted(T0 + 2_000), 0);
        for i in 0..100 {
            credit.arrive(roomy(), T0 + 3_000 + i);
        }
        assert_eq!(credit.wanted(T0 + 3_100), MAX_CREDIT_TICKETS);
        // While a call that may bring tickets is on its way, no other asks.
        let (wanted, carry) = credit.ask(&request(10, 10), T0 + 3_100);
        assert_eq!((wanted, carry), (MAX_CREDIT_TICKETS, None));
        assert_eq!(credit.wanted(T0 + 3_100), 0);
        credit.answered();
        assert_eq!(credit.wanted(T0 + 3_100), MAX_CREDIT_TICKETS);
    }

    #[test]
    fn a_grant_is_admissions_made_in_advance_and_given_back_whole() {
        let limits = roomy();
        let mut state = LimiterState::new();
        let mut never_granted = LimiterState::new();
        let first = state.admit(&limits, T0, &request(100, 200));
        assert_eq!(never_granted.admit(&limits, T0, &request(100, 200)), first);
        let tickets = state.grant(&limits, T0, &request(100, 200), 12);
        assert_eq!(tickets.len(), 12);
        let slots = |state: &LimiterState, at| {
            state
                .snapshot(&limits, at)
                .into_iter()
                .find(|s| s.dimension == Dimension::Concurrency)
                .map(|s| s.remaining)
        };
        assert_eq!(slots(&state, T0), Some(1_000 - 13));
        for ticket in &tickets {
            assert_eq!(ticket.requests, 1);
            assert_eq!(
                (
                    ticket.reservation.input_tokens,
                    ticket.reservation.output_tokens
                ),
                (100, 200)
            );
        }
        // Given back unused a little later: as if they had never been granted.
        let returns = Returns {
            settle: Vec::new(),
            release: tickets.clone(),
        };
        state.take_back(&limits, T0 + 300, &returns);
        assert_eq!(
            state.levels_at(&limits, T0 + 300),
            never_granted.levels_at(&limits, T0 + 300)
        );
        assert_eq!(
            state.snapshot(&limits, T0 + 300),
            never_granted.snapshot(&limits, T0 + 300)
        );
        // A second return of the same tickets finds nothing and changes nothing.
        let before = state.clone();
        state.take_back(&limits, T0 + 300, &returns);
        assert_eq!(state, before);
    }

    #[test]
    fn near_a_limit_no_ticket_is_granted() {
        // An eighth of what remains is the most a grant takes, in every dimension.
        let limits = TierLimits {
            rpm: NonZeroU32::new(100),
            concurrency: NonZeroU32::new(128),
            ..TierLimits::default()
        };
        let mut state = LimiterState::new();
        assert_eq!(state.grant(&limits, T0, &request(0, 0), 16).len(), 12);
        // Below 64 tickets' worth in any dimension, none: a small quota is admitted one by one.
        for small in [
            TierLimits {
                rpm: NonZeroU32::new(63),
                ..TierLimits::default()
            },
            TierLimits {
                rpm: NonZeroU32::new(10_000),
                concurrency: NonZeroU32::new(16),
                ..TierLimits::default()
            },
        ] {
            assert!(LimiterState::new()
                .grant(&small, T0, &request(0, 0), 16)
                .is_empty());
        }
        let tight = TierLimits {
            rpm: NonZeroU32::new(7),
            ..TierLimits::default()
        };
        assert!(LimiterState::new()
            .grant(&tight, T0, &request(0, 0), 16)
            .is_empty());
        let tokens = TierLimits {
            output_tpm: NonZeroU32::new(64_000),
            ..TierLimits::default()
        };
        // 1 000 tokens a ticket: 64 tickets' worth, and one eighth of 64 000 holds eight.
        assert_eq!(
            LimiterState::new()
                .grant(&tokens, T0, &request(0, 1_000), 16)
                .len(),
            8
        );
        // 1 001 tokens a ticket: less than 64 tickets' worth, none.
        assert!(LimiterState::new()
            .grant(&tokens, T0, &request(0, 1_001), 16)
            .is_empty());
    }

    #[test]
    fn a_ticket_admits_one_request_it_covers_within_its_time() {
        let limits = roomy();
        let mut state = LimiterState::new();
        let tickets = state.grant(&limits, T0, &request(100, 200), 4);
        let mut credit = Credit::new(limits);
        credit.arrive(limits, T0);
        credit.granted(&tickets, state.snapshot(&limits, T0), T0, T0);
        assert!(
            credit.take(&request(101, 10), T0).is_none(),
            "too big for a ticket"
        );
        assert!(
            credit.take(&request(100, 201), T0).is_none(),
            "too big for a ticket"
        );
        let local = credit.take(&request(100, 200), T0 + 1).unwrap();
        assert_eq!(local.reservation, tickets[0].reservation);
        assert_eq!(local.status_ms, T0);
        assert_eq!(
            credit.take(&request(0, 0), T0 + 2).unwrap().reservation,
            tickets[1].reservation
        );
        assert!(
            credit.take(&request(0, 0), T0 + CREDIT_VALID_MS).is_none(),
            "expired"
        );
        assert_eq!(credit.tickets_held(), 2);
        // Other limits: the tickets no longer admit anything.
        let mut other = Credit::new(limits);
        other.granted(&tickets, Vec::new(), T0, T0);
        other.arrive(TierLimits::default(), T0);
        assert!(other.take(&request(0, 0), T0).is_none());
        // A settlement that charges more than was reserved stops the rest.
        let mut spent = Credit::new(limits);
        spent.granted(&tickets, Vec::new(), T0, T0);
        let extra = Settled {
            reservation: tickets[0].reservation,
            usage: Used {
                input_tokens: Some(5_000),
                output_tokens: Some(1),
            },
            confirms: true,
            cost_micros: None,
        };
        assert!(extra.charges_extra(&limits));
        assert!(!extra.charges_extra(&TierLimits {
            input_tpm: None,
            ..limits
        }));
        spent.stop_admitting();
        assert!(spent.take(&request(0, 0), T0).is_none());
    }

    /// A request larger than a bucket may settle into debt: it always asks its object, which
    /// admits it only with a full bucket, never grants tickets its size, and so sees its
    /// settlement before anything else is admitted on what it reserved.
    #[test]
    fn a_request_larger_than_a_bucket_never_goes_on_credit() {
        let limits = TierLimits {
            output_tpm: NonZeroU32::new(64_000),
            ..roomy()
        };
        assert!(LimiterState::new()
            .grant(&limits, T0, &request(10, 200_000), 16)
            .is_empty());
        // Even a ticket of the whole bucket (which no grant makes) admits only what it covers.
        let mut state = LimiterState::new();
        let Admission::Admitted(whole) = state.admit(&limits, T0, &request(10, 200_000)) else {
            panic!("a full bucket admits a request larger than itself");
        };
        assert_eq!(whole.output_tokens, 64_000);
        let ticket = Ticket {
            reservation: whole,
            requests: 1,
        };
        let mut credit = Credit::new(limits);
        credit.arrive(limits, T0);
        credit.granted(&[ticket], Vec::new(), T0, T0);
        assert!(credit.take(&request(10, 64_001), T0).is_none());
        assert!(credit.take(&request(10, 64_000), T0).is_some());
    }

    #[test]
    fn when_few_tickets_are_left_one_refill_is_asked_for() {
        let limits = roomy();
        let mut state = LimiterState::new();
        let mut credit = Credit::new(limits);
        for i in 0..8 {
            credit.arrive(limits, T0 + i);
        }
        let (wanted, _) = credit.ask(&request(1, 1), T0 + 8);
        assert_eq!(wanted, 8);
        let tickets = state.grant(&limits, T0 + 8, &request(1, 1), wanted);
        credit.answered();
        credit.granted(&tickets, Vec::new(), T0 + 8, T0 + 8);
        let refills: Vec<Option<u32>> = (0..8)
            .map(|i| {
                credit
                    .take(&request(1, 1), T0 + 9 + i)
                    .map(|l| l.refill)
                    .unwrap()
            })
            .collect();
        // Four left after the fourth: one refill, then none while it is on its way.
        assert_eq!(refills[..3], [None, None, None]);
        assert!(refills[3].is_some());
        assert!(refills[4..].iter().all(Option::is_none));
        assert_eq!(credit.ticket_size(), Some(request(1, 1)));
    }

    #[test]
    fn the_outbox_delivers_each_return_once_and_retries_what_was_lost() {
        let limits = roomy();
        let mut credit = Credit::new(limits);
        let settled = |id| Settled {
            reservation: Reservation {
                lease_id: id,
                ..Reservation::NOTHING
            },
            usage: Used::UNKNOWN,
            confirms: true,
            cost_micros: None,
        };
        assert!(credit.defer(settled(1)), "the first becomes the flusher");
        assert!(!credit.defer(settled(2)));
        // Another call carries both; while it is out, the flusher waits.
        let carry = credit.outbox.take(T0).unwrap();
        assert_eq!(carry.returns.settle.len(), 2);
        assert_eq!(credit.flush_step(T0), OwnerStep::Wait);
        // It failed: the flusher sends them itself.
        credit.outbox.failed(carry.call);
        let OwnerStep::Send(again) = credit.flush_step(T0 + 1) else {
            panic!("the flusher sends what waits");
        };
        assert_eq!(again.returns, carry.returns);
        credit.outbox.delivered(again.call);
        assert_eq!(credit.flush_step(T0 + 2), OwnerStep::Done);
        // Done: the next settlement becomes the flusher again.
        assert!(credit.defer(settled(3)));
        // A call that never comes back is taken for lost after a while.
        let lost = credit.outbox.take(T0 + 3).unwrap();
        assert_eq!(
            credit.flush_step(T0 + 3 + CARRY_TIMEOUT_MS - 1),
            OwnerStep::Wait
        );
        let OwnerStep::Send(resent) = credit.flush_step(T0 + 3 + CARRY_TIMEOUT_MS) else {
            panic!("a lost call's returns are sent again");
        };
        assert_eq!(resent.returns, lost.returns);
        // Its late answer no longer touches the resent ones.
        credit.outbox.delivered(lost.call);
        assert_eq!(
            credit.flush_step(T0 + 4 + CARRY_TIMEOUT_MS),
            OwnerStep::Wait
        );
        credit.outbox.delivered(resent.call);
        assert_eq!(
            credit.flush_step(T0 + 5 + CARRY_TIMEOUT_MS),
            OwnerStep::Done
        );
        assert_eq!(credit.outbox.take(T0), None);
    }

    #[test]
    fn unused_tickets_go_back_with_their_grant() {
        let limits = roomy();
        let mut state = LimiterState::new();
        let first = state.grant(&limits, T0, &request(1, 1), 3);
        let second = state.grant(&limits, T0 + 500, &request(1, 1), 2);
        let mut credit = Credit::new(limits);
        let a = credit.granted(&first, Vec::new(), T0, T0);
        let b = credit.granted(&second, Vec::new(), T0, T0 + 500);
        credit.arrive(limits, T0 + 600);
        credit.take(&request(1, 1), T0 + 600).unwrap();
        let ids = credit.expire(a);
        assert_eq!(ids.len(), 2);
        assert_eq!(credit.tickets_held(), 2);
        let OwnerStep::Send(carry) = credit.outbox.owner_step(&ids, T0 + 1_000) else {
            panic!("expired tickets are sent back");
        };
        assert_eq!(carry.returns.release, first[1..].to_vec());
        assert_eq!(credit.expire(b).len(), 2);
        assert!(!credit.is_idle(T0 + 100_000));
    }
}
