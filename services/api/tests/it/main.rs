//! Integration tests of the HTTP API against real Redis and PostgreSQL. One binary;
//! each test runs its own app with its own database and Redis key prefix.

mod bad_requests;
mod buy;
mod holds;
mod outage;
mod reservations;
mod sales;
mod server;
mod sold_out;
