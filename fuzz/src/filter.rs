//! `src/filter/heads_file.rs`: what a heads file or filter adapters must hold.

#[path = "../../src/filter/heads_file.rs"]
pub mod heads_file;
