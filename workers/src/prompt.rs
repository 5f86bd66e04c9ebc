//! Building the prompt for a conversation turn: the system prompt, then the newest history that
//! fits the window.
//!
//! The window is bounded twice, by message count (`history_max_messages`, applied in SQL) and by
//! estimated tokens (`history_max_tokens`, applied here), so a long conversation costs the same to
//! answer as a short one. The message being answered is always kept, even alone over budget.

use chatq_common::chat::{ChatMessage, Role, estimate_tokens};

/// Trims `history` (oldest first, ending with the turn being answered) to `max_tokens` estimated
/// tokens, dropping the oldest messages first, and puts the system prompt in front.
pub fn build_prompt(
    system_prompt: Option<&str>,
    mut history: Vec<ChatMessage>,
    max_tokens: usize,
) -> Vec<ChatMessage> {
    let system = system_prompt
        .filter(|s| !s.trim().is_empty())
        .map(|s| ChatMessage::new(Role::System, s));
    let mut budget =
        max_tokens.saturating_sub(system.as_ref().map_or(0, |s| estimate_tokens(&s.content)));
    let mut keep = 0;
    for message in history.iter().rev() {
        let cost = estimate_tokens(&message.content);
        if keep > 0 && cost > budget {
            break;
        }
        budget = budget.saturating_sub(cost);
        keep += 1;
    }
    let dropped = history.len() - keep;
    let mut prompt: Vec<ChatMessage> = system.into_iter().collect();
    prompt.extend(history.drain(dropped..));
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(n: usize, chars: usize) -> Vec<ChatMessage> {
        (0..n)
            .map(|i| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                ChatMessage::new(role, format!("{i:0width$}", width = chars))
            })
            .collect()
    }

    #[test]
    fn the_system_prompt_comes_first_and_everything_fits() {
        let prompt = build_prompt(Some("be brief"), turns(3, 8), 1000);
        assert_eq!(prompt.len(), 4);
        assert_eq!(prompt[0], ChatMessage::new(Role::System, "be brief"));
        assert_eq!(prompt[3].content, "00000002");
    }

    #[test]
    fn the_oldest_messages_go_first_when_over_budget() {
        // Each message is 40 chars = 10 tokens; a 35-token budget keeps the newest three.
        let prompt = build_prompt(None, turns(6, 40), 35);
        let kept: Vec<_> = prompt
            .iter()
            .map(|m| m.content.trim_start_matches('0').to_owned())
            .collect();
        assert_eq!(kept, vec!["3", "4", "5"]);
    }

    #[test]
    fn the_current_turn_is_kept_even_alone_over_budget() {
        let prompt = build_prompt(Some("sys"), turns(3, 400), 10);
        assert_eq!(prompt.len(), 2);
        assert_eq!(prompt[1].content.len(), 400);
    }
}
