//! Projector integration tests against real Redis and PostgreSQL: every reservation
//! becomes exactly one order, or (only on a permanent failure) one release.

mod dead_letters;
mod faults;
mod projection;
mod relay;
