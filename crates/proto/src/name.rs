//! Names people choose: usernames, folder labels, device names, MAC addresses.

use crate::limits::MAX_LABEL_LEN;

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A username of the wrong length.
    #[error("username must be 3 to 32 characters, got {len}")]
    UsernameLength {
        /// Its length in characters.
        len: usize,
    },
    /// A username with a character outside `[a-z0-9_.-]` (after lowercasing).
    #[error("username may only hold a-z, 0-9, '_', '.' and '-', not {0:?}")]
    UsernameChar(char),
    /// A label or device name that is empty or blank.
    #[error("{what} is empty")]
    Blank {
        /// What was being named.
        what: &'static str,
    },
    /// A label or device name over [`MAX_LABEL_LEN`] bytes.
    #[error("{what} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// What was being named.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A label or device name with a control character.
    #[error("{what} has control character U+{code:04X}")]
    ControlChar {
        /// What was being named.
        what: &'static str,
        /// The character's code point.
        code: u32,
    },
    /// Not six hex octets.
    #[error("MAC address must be six hex octets like aa:bb:cc:dd:ee:ff")]
    Mac,
}

/// Checks a username and returns its canonical (lowercase) form: usernames are
/// case-insensitive, so `Alice` and `alice` are one account.
pub fn normalize_username(name: &str) -> Result<String, NameError> {
    let lower = name.to_ascii_lowercase();
    let len = lower.chars().count();
    if !(3..=32).contains(&len) {
        return Err(NameError::UsernameLength { len });
    }
    if let Some(c) = lower
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')))
    {
        return Err(NameError::UsernameChar(c));
    }
    Ok(lower)
}

/// Checks a folder label, device name or similar human-chosen name.
pub fn validate_label(what: &'static str, label: &str) -> Result<(), NameError> {
    if label.trim().is_empty() {
        return Err(NameError::Blank { what });
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::TooLong {
            what,
            len: label.len(),
            max: MAX_LABEL_LEN,
        });
    }
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(NameError::ControlChar {
            what,
            code: c as u32,
        });
    }
    Ok(())
}

/// Checks a MAC address (`:` or `-` separated) and returns it as lowercase,
/// colon-separated octets.
pub fn normalize_mac(mac: &str) -> Result<String, NameError> {
    let octets: Vec<&str> = mac.split([':', '-']).collect();
    if octets.len() != 6
        || octets
            .iter()
            .any(|o| o.len() != 2 || !o.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(NameError::Mac);
    }
    Ok(octets.join(":").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(normalize_username("Alice_1.x-y").unwrap(), "alice_1.x-y");
        assert_eq!(normalize_username("abc").unwrap(), "abc");
        assert_eq!(normalize_username(&"a".repeat(32)).unwrap(), "a".repeat(32));
        assert_eq!(
            normalize_username("ab"),
            Err(NameError::UsernameLength { len: 2 })
        );
        assert_eq!(
            normalize_username(&"a".repeat(33)),
            Err(NameError::UsernameLength { len: 33 })
        );
        assert_eq!(
            normalize_username("al ce"),
            Err(NameError::UsernameChar(' '))
        );
        assert_eq!(
            normalize_username("alicé"),
            Err(NameError::UsernameChar('é'))
        );
        assert_eq!(normalize_username("a/b"), Err(NameError::UsernameChar('/')));
    }

    #[test]
    fn labels() {
        assert!(validate_label("label", "Team docs").is_ok());
        assert_eq!(
            validate_label("label", "  "),
            Err(NameError::Blank { what: "label" })
        );
        assert!(matches!(
            validate_label("label", &"x".repeat(MAX_LABEL_LEN + 1)),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            validate_label("device name", "a\u{1b}[31m"),
            Err(NameError::ControlChar { code: 0x1b, .. })
        ));
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("AA-bb-CC-dd-EE-ff").unwrap(),
            "aa:bb:cc:dd:ee:ff"
        );
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "aaa:b:cc:dd:ee:ff",
        ] {
            assert_eq!(normalize_mac(bad), Err(NameError::Mac), "{bad}");
        }
    }
}
