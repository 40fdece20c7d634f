//! Voucher codes: 16 characters of Crockford's base32 (no I, L, O or U, so nothing is misread),
//! grouped `XXXX-XXXX-XXXX-XXXX`, from 80 random bits of a v4 uuid: unguessable, and unique in
//! practice (the database's unique key catches the rest).

use uuid::Uuid;

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of a code, without the dashes.
pub const CODE_CHARS: usize = 16;

/// A fresh voucher code.
pub fn new_code() -> String {
    code_from(Uuid::new_v4())
}

/// The code made of `uuid`'s random bits: bytes 0–5 and 9–12 of a v4 uuid carry no version or
/// variant bits.
pub fn code_from(uuid: Uuid) -> String {
    let bytes = uuid.as_bytes();
    let mut bits: u128 = 0;
    for byte in bytes[0..6].iter().chain(&bytes[9..13]) {
        bits = (bits << 8) | u128::from(*byte);
    }
    let mut code = String::with_capacity(CODE_CHARS + 3);
    for i in 0..CODE_CHARS {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        let shift = 5 * (CODE_CHARS - 1 - i);
        let index = usize::try_from((bits >> shift) & 0x1f).unwrap_or(0);
        code.push(char::from(ALPHABET[index]));
    }
    code
}

/// Whether `code` has a voucher code's shape.
pub fn is_code(code: &str) -> bool {
    code.len() == CODE_CHARS + 3
        && code.split('-').count() == 4
        && code
            .split('-')
            .all(|group| group.len() == 4 && group.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_grouped_crockford_base32() {
        for _ in 0..1000 {
            let code = new_code();
            assert!(is_code(&code), "{code}");
            assert!(!code.contains(['I', 'L', 'O', 'U']), "{code}");
        }
        assert!(
            !is_code("ABCD-EFGH-IJKL-MNOP"),
            "I and L are not in the alphabet"
        );
        assert!(!is_code("ABCDEFGH-JKMN-PQRS"));
        assert!(!is_code("abcd-efgh-jkmn-pqrs"));
    }

    #[test]
    fn a_code_is_made_of_the_uuids_random_bits() {
        assert_eq!(code_from(Uuid::nil()), "0000-0000-0000-0000");
        assert_eq!(code_from(Uuid::max()), "ZZZZ-ZZZZ-ZZZZ-ZZZZ");
        let mut v4 = *Uuid::nil().as_bytes();
        v4[6] = 0x40;
        v4[8] = 0x80;
        assert_eq!(
            code_from(Uuid::from_bytes(v4)),
            "0000-0000-0000-0000",
            "the version and variant bits are not used"
        );
        v4[12] = 1;
        assert_eq!(code_from(Uuid::from_bytes(v4)), "0000-0000-0000-0001");
    }

    #[test]
    fn codes_do_not_repeat() {
        let codes: HashSet<String> = (0..10_000).map(|_| new_code()).collect();
        assert_eq!(codes.len(), 10_000);
    }
}
