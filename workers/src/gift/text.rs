//! The message that tells a customer about their gift: it names the gift and the voucher.

use crate::telegram::text::{MAX_MESSAGE_LEN, utf16_len};

/// The text telling the customer their gift's voucher. The gift's name is shortened with `…`
/// should the message exceed Telegram's [`MAX_MESSAGE_LEN`] (a catalogue name of at most 200
/// characters never does).
pub fn gift_text(gift_name: &str, voucher_code: &str) -> String {
    let render = |name: &str| {
        format!("🎁 Your gift \"{name}\" is on its way! Your voucher code: {voucher_code}")
    };
    let room = MAX_MESSAGE_LEN.saturating_sub(utf16_len(&render("")));
    if utf16_len(gift_name) <= room {
        return render(gift_name);
    }
    let mut name = String::new();
    let mut used = 0;
    for c in gift_name.chars() {
        // Keep one unit for the ellipsis.
        if used + c.len_utf16() + 1 > room {
            break;
        }
        used += c.len_utf16();
        name.push(c);
    }
    name.push('…');
    render(&name)
}

/// The voucher code a gift message names, if any (what the demo and the tests count messages
/// by).
pub fn voucher_in(text: &str) -> Option<&str> {
    text.rsplit_once("Your voucher code: ")
        .map(|(_, code)| code.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_gift_and_the_voucher() {
        let text = gift_text("Dragon mug", "ABCD-EFGH-JKMN-PQRS");
        assert_eq!(
            text,
            "🎁 Your gift \"Dragon mug\" is on its way! Your voucher code: ABCD-EFGH-JKMN-PQRS"
        );
        assert_eq!(voucher_in(&text), Some("ABCD-EFGH-JKMN-PQRS"));
        assert_eq!(voucher_in("Mission complete"), None);
    }

    #[test]
    fn a_long_name_is_shortened_and_the_voucher_kept() {
        let text = gift_text(&"🐉".repeat(3000), "ABCD-EFGH-JKMN-PQRS");
        assert!(utf16_len(&text) <= MAX_MESSAGE_LEN);
        assert!(text.contains("🐉…\""), "{text}");
        assert_eq!(voucher_in(&text), Some("ABCD-EFGH-JKMN-PQRS"));
        let text = gift_text(&"x".repeat(200), "ABCD-EFGH-JKMN-PQRS");
        assert!(text.contains(&"x".repeat(200)));
    }
}
