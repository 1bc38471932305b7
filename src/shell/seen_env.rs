//! Telling whether the runtime hands the same `env` object again, so what was read from it
//! once (the configuration, whether a binding exists) is not read again. A leaf: the
//! configuration and the metrics both use it.

use std::cell::RefCell;

use worker::Env;

/// One `env` object remembered, to tell whether the runtime hands the same one again: it hands
/// every request of an isolate the same object, so the same object means the same bindings and
/// values (a new secret or variable comes with a new version, hence a new isolate).
pub struct SeenEnv(RefCell<Option<worker::wasm_bindgen::JsValue>>);

impl SeenEnv {
    pub const fn new() -> SeenEnv {
        SeenEnv(RefCell::new(None))
    }

    /// Whether `env` is the object remembered last.
    pub fn is(&self, env: &Env) -> bool {
        let env_object: &worker::wasm_bindgen::JsValue = env.as_ref();
        self.0
            .borrow()
            .as_ref()
            .is_some_and(|seen| js_sys::Object::is(seen, env_object))
    }

    pub fn remember(&self, env: &Env) {
        let env_object: &worker::wasm_bindgen::JsValue = env.as_ref();
        *self.0.borrow_mut() = Some(env_object.clone());
    }
}
