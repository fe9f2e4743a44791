//! `src/text/chat_template.rs`: ChatML.

#[path = "../../src/text/chat_template.rs"]
pub mod chat_template;
