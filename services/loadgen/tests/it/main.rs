//! Integration tests for the load generator, as one test binary: real HTTP against a tiny
//! in-process hyper server on 127.0.0.1:0, no Yoink stores needed.
//!
//! They must never depend on a fixed port or on timing beyond generous bounds.

mod run;
mod server;
