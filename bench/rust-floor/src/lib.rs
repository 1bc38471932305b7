//! The Rust floor of the benchmarks: a pass-through Worker written the way a workers-rs user
//! would write one, doing what the JavaScript floor (`PASS_THROUGH_WORKER` in `bench/lib.mjs`)
//! does: copy the request's headers, put the upstream key in `x-api-key`, send method and body
//! (as a stream, not read) to `UPSTREAM_URL` + path + query, and answer with the upstream's
//! response. Measured beside the proxy, it tells what any Rust Worker pays on this runtime
//! (the module, the crossings into WebAssembly and back) from what the proxy itself costs.
//! Everything is WebAssembly-only: on the host this crate is empty.

#[cfg(target_arch = "wasm32")]
mod pass {
    use wasm_bindgen::JsValue;
    use worker::{event, Context, Env, Fetch, Request, RequestInit, Response, Result};

    #[event(fetch)]
    async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
        let upstream = env.var("UPSTREAM_URL")?.to_string();
        let key = env.var("ANTHROPIC_API_KEY")?.to_string();
        let url = req.url()?;
        let target = match url.query() {
            Some(query) => format!("{upstream}{}?{query}", url.path()),
            None => format!("{upstream}{}", url.path()),
        };
        // `Headers::clone` makes a new header list, so the incoming one is left as it came.
        let headers = req.headers().clone();
        headers.set("x-api-key", &key)?;
        let mut init = RequestInit::new();
        init.with_method(req.method())
            .with_headers(headers)
            .with_body(req.inner().body().map(JsValue::from));
        Fetch::Request(Request::new_with_init(&target, &init)?)
            .send()
            .await
    }
}
