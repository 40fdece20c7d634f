//! The texts the telegram worker sends, sized to what Telegram accepts.

/// The longest message Telegram accepts, in UTF-16 code units (Telegram's own measure; never
/// less than the character count).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// The text telling the customer about the mission: it names the mission (its title shortened
/// with `…` if the message would exceed [`MAX_MESSAGE_LEN`]) and the points paid.
pub fn message_text(mission_title: &str, reward_points: i64) -> String {
    let points = if reward_points == 1 {
        "1 point was".to_owned()
    } else {
        format!("{reward_points} points were")
    };
    let render =
        |title: &str| format!("🎉 Mission \"{title}\" complete! {points} added to your wallet.");
    let room = MAX_MESSAGE_LEN.saturating_sub(utf16_len(&render("")));
    if utf16_len(mission_title) <= room {
        return render(mission_title);
    }
    let mut title = String::new();
    let mut used = 0;
    for c in mission_title.chars() {
        // Keep one unit for the ellipsis.
        if used + c.len_utf16() + 1 > room {
            break;
        }
        used += c.len_utf16();
        title.push(c);
    }
    title.push('…');
    render(&title)
}

/// The length of `text` in UTF-16 code units, Telegram's measure.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_mission_and_the_points() {
        assert_eq!(
            message_text("Find the lost cat", 150),
            "🎉 Mission \"Find the lost cat\" complete! 150 points were added to your wallet."
        );
        assert_eq!(
            message_text("Once", 1),
            "🎉 Mission \"Once\" complete! 1 point was added to your wallet."
        );
    }

    #[test]
    fn a_long_title_is_shortened_to_fit() {
        let text = message_text(&"é".repeat(5000), 10);
        assert_eq!(utf16_len(&text), MAX_MESSAGE_LEN);
        assert!(text.contains("é…\" complete! 10 points"));
        let text = message_text(&"🐈".repeat(3000), 10);
        assert!(utf16_len(&text) <= MAX_MESSAGE_LEN);
        assert!(text.contains("🐈…\""));
    }
}
