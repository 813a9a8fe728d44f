//! Projector integration tests against real Redis and PostgreSQL: every reservation
//! becomes exactly one order, or (only on a permanent failure, a cancel or an expiry of
//! a hold) one release.

mod dead_letters;
mod faults;
mod holds;
mod projection;
mod relay;
