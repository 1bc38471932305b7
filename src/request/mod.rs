//! What arrives: the route, the headers that cross the proxy, the browser's origin, and the
//! facts read from the body, all decided from the request alone before anything goes
//! upstream.

pub mod body;
pub mod estimate;
pub mod headers;
pub mod route;
