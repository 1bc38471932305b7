//! End-to-end tests: each starts a simulator in-process and drives it over
//! real HTTP/1.1 connections.

mod api;
mod common;
mod faults;
mod key_limits;
mod modes;
