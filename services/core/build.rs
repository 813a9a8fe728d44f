//! Rebuilds this crate when a migration in `schema/` is added or changed:
//! `refinery::embed_migrations!` reads that folder at compile time, and cargo does not
//! know it does.

fn main() {
    println!("cargo:rerun-if-changed=../../schema");
}
