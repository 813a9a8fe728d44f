//! `yoink dlq` against real Redis and PostgreSQL, on dead letters a real projector
//! wrote: a reservation PostgreSQL refused (released for good), entries written by a
//! "newer version" this one cannot read (no fate, units still taken), and garbage.

mod cli;
mod fixture;
mod replay;
mod workflow;
