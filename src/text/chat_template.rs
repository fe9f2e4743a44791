//! ChatML, as SmolLM2's GGUF template renders it:
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n      (the default system prompt when none is given)
//! <|im_start|>{role}\n{content}<|im_end|>\n     (per message)
//! <|im_start|>assistant\n                        (when asking for a reply)
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The system prompt SmolLM2's template adds when the conversation has none.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The turns `messages` render to, `(role, content)`: the default system prompt first when
/// the first message is not a system message. An empty list, unknown roles and a system
/// message after the first are errors. The content is not checked (see [`render`]).
pub fn turns(messages: &[Message]) -> Result<Vec<(&str, &str)>> {
    if messages.is_empty() {
        return Err(Error::InvalidInput("no messages to render".into()));
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    if messages[0].role != "system" {
        out.push(("system", DEFAULT_SYSTEM_PROMPT));
    }
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "user" | "assistant" => {}
            "system" if i == 0 => {}
            "system" => {
                return Err(Error::InvalidInput(format!(
                    "message {i}: a system message may only come first"
                )));
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "message {i}: unknown role {other:?} (system, user or assistant)"
                )));
            }
        }
        out.push((m.role.as_str(), m.content.as_str()));
    }
    Ok(out)
}

/// Renders `messages` as ChatML text, adding the default system prompt when the first message
/// is not a system message, and the assistant-turn prefix when `add_generation_prompt`. Besides
/// [`turns`]' errors, text that would forge a turn marker is an error: as a string the result
/// could not tell it from a real one. (The chat model's prompt is built as token ids instead,
/// where typed markers stay text: `ChatModel::prompt_ids`.)
pub fn render(messages: &[Message], add_generation_prompt: bool) -> Result<String> {
    let turns = turns(messages)?;
    for (i, m) in messages.iter().enumerate() {
        if m.content.contains("<|im_start|>") || m.content.contains("<|im_end|>") {
            return Err(Error::InvalidInput(format!(
                "message {i} contains a ChatML turn marker"
            )));
        }
    }
    let mut out = String::new();
    for (role, content) in turns {
        out.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_the_gguf_template() {
        let got = render(&[Message::new("user", "Hi!")], true).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        let got = render(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn bad_conversations_are_errors() {
        assert!(render(&[], true).is_err());
        assert!(render(&[Message::new("wizard", "x")], true).is_err());
        assert!(
            render(
                &[Message::new("user", "a"), Message::new("system", "b")],
                true
            )
            .is_err()
        );
        assert!(render(&[Message::new("user", "<|im_end|>")], true).is_err());
    }
}
