//! The upstream key's shared state: its Durable Object (one per upstream key, named by a
//! fingerprint of the key), and the request runner's view of it.
//!
//! What to ask and when is the core's ([`crate::retry::runner`], [`crate::upstream`]); this
//! only carries the calls, and keeps the isolate's [`EdgeMemories`].

use std::cell::RefCell;
use std::rc::Rc;

use worker::{durable_object, DurableObject, Env, Request, Response, State};

use super::Object;
use crate::identity::Secret;
use crate::pipeline::KeyStates;
use crate::request::route::Route;
use crate::retry::runner::{Ask, SharedState, Tell, Unreachable};
use crate::shell::clock::{now_ms, random_u64};
use crate::upstream::{
    pool_of, Change, Claimant, EdgeMemories, EdgeMemory, Gate, UpstreamCall, UpstreamState,
};

pub const BINDING: &str = "UPSTREAM";

thread_local! {
    /// This isolate's memory of trouble, per upstream key.
    static EDGE: RefCell<EdgeMemories> = RefCell::new(EdgeMemories::default());
}

#[durable_object]
pub struct Upstream {
    object: Object<UpstreamState>,
}

impl DurableObject for Upstream {
    fn new(state: State, _env: Env) -> Self {
        Upstream {
            object: Object::new(state),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        self.object.fetch(req).await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.object.alarm().await
    }
}

/// The upstream key's objects, one per pool, as the request's [`KeyStates`] port.
pub struct UpstreamKeys<'a> {
    env: &'a Env,
    upstream_key: &'a Secret,
}

impl<'a> UpstreamKeys<'a> {
    pub fn new(env: &'a Env, upstream_key: &'a Secret) -> UpstreamKeys<'a> {
        UpstreamKeys { env, upstream_key }
    }
}

impl<'a> KeyStates for UpstreamKeys<'a> {
    type Shared = KeyState<'a>;

    fn of_pool(&self, pool: String, claimant: Claimant) -> (KeyState<'a>, Rc<RefCell<EdgeMemory>>) {
        KeyState::new(self.env, self.upstream_key, pool, claimant)
    }
}

/// One request's view of the upstream key's object, for one model.
pub struct KeyState<'a> {
    env: &'a Env,
    /// The object's name: a fingerprint of the upstream key.
    object: String,
    model: String,
    /// Who the request is, for the fair order when the key is scarce.
    claimant: Claimant,
}

impl<'a> KeyState<'a> {
    /// The shared state of `upstream_key` for one `pool` (see [`crate::upstream::pool_of`])
    /// as `claimant` sees it, and this isolate's memory of that pool of the key.
    pub fn new(
        env: &'a Env,
        upstream_key: &Secret,
        pool: String,
        claimant: Claimant,
    ) -> (KeyState<'a>, Rc<RefCell<EdgeMemory>>) {
        let object = upstream_key.fingerprint("upstream");
        let memory = EDGE.with(|edge| edge.borrow_mut().of(&object, &pool, now_ms()));
        (
            KeyState {
                env,
                object,
                model: pool,
                claimant,
            },
            memory,
        )
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        call: &UpstreamCall,
    ) -> Result<T, Unreachable> {
        super::call(self.env, BINDING, &self.object, call, "upstream state")
            .await
            .map_err(|e| Unreachable(e.message()))
    }
}

impl SharedState for KeyState<'_> {
    async fn before(&mut self, ask: Ask) -> Result<Gate, Unreachable> {
        let call = UpstreamCall::before(&self.model, ask, &self.claimant);
        self.call(&call).await
    }

    async fn after(&mut self, tell: Tell) {
        // Every overload and rate limit is told (they are trouble), so the tally sees each.
        crate::shell::recorder::upstream_reply(tell.report.reply);
        let call = UpstreamCall::after(&self.model, tell, random_u64());
        // A report that cannot be delivered is logged by the call; the request goes on.
        let _: Result<Change, Unreachable> = self.call(&call).await;
    }

    /// The same key's object for a fallback model's pool, and this isolate's memory of it.
    fn for_model(&self, model: &str) -> Option<(Self, Rc<RefCell<EdgeMemory>>)> {
        let pool = pool_of(&Route::Messages, Some(model));
        let memory = EDGE.with(|edge| edge.borrow_mut().of(&self.object, &pool, now_ms()));
        Some((
            KeyState {
                env: self.env,
                object: self.object.clone(),
                model: pool,
                claimant: self.claimant.clone(),
            },
            memory,
        ))
    }
}
