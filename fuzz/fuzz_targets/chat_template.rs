//! Fuzzes the chat template (src/text/chat_template.rs) with conversations made from the
//! bytes: any roles, any text (turn markers included), any number of messages. `turns` and
//! `render` answer or refuse without a panic, and a rendered conversation has exactly one
//! turn per message (plus the default system prompt and the generation prompt).
#![no_main]

use libfuzzer_sys::fuzz_target;
use webguard_fuzz::text::chat_template::{Message, render, turns};

const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", ""];

fuzz_target!(|data: &[u8]| {
    // Messages separated by 0xff; the first byte of each picks the role (or is the role, for
    // bytes past the list), the rest is the content, read as UTF-8 with replacements.
    let messages: Vec<Message> = data
        .split(|&b| b == 0xff)
        .filter_map(|part| {
            let (&first, rest) = part.split_first()?;
            let role = match ROLES.get(first as usize) {
                Some(r) => (*r).to_owned(),
                None => String::from_utf8_lossy(&[first]).into_owned(),
            };
            Some(Message {
                role,
                content: String::from_utf8_lossy(rest).into_owned(),
            })
        })
        .collect();
    let turns_result = turns(&messages);
    for generation in [false, true] {
        match render(&messages, generation) {
            Ok(text) => {
                let turns = turns_result
                    .as_ref()
                    .expect("render accepted what turns refused");
                let starts = text.matches("<|im_start|>").count();
                assert_eq!(starts, turns.len() + usize::from(generation));
                assert_eq!(text.matches("<|im_end|>").count(), turns.len());
            }
            Err(_) => {}
        }
    }
});
