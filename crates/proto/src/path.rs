//! Paths inside a folder: what the protocol accepts.
//!
//! A path is relative, `/`-separated, and every component can be created on
//! Linux, Windows and macOS alike: no `.` or `..`, no empty component, no NUL
//! or control characters, none of `< > : " \ | ? *`, no trailing dot or space,
//! none of Windows' reserved device names (`CON`, `NUL`, `COM1`, … with or
//! without an extension), at most 255 bytes per component and 4096 in all.
//! Client and server both check, so a hostile peer cannot make the other write
//! outside a folder or create a name another member's system cannot hold.
//!
//! Names that differ only by case or Unicode normalization are valid here; the
//! server keeps them from colliding within one directory.

use crate::limits::{MAX_NAME_LEN, MAX_PATH_LEN};

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty.
    #[error("path is empty")]
    Empty,
    /// The path exceeds [`MAX_PATH_LEN`] bytes.
    #[error("path is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The path starts with `/` (or a drive letter).
    #[error("path must be relative to the folder")]
    Absolute,
    /// Two separators in a row, or one at the end.
    #[error("path has an empty component")]
    EmptyComponent,
    /// A `.` or `..` component.
    #[error("path component `{0}` is not allowed")]
    DotComponent(&'static str),
    /// A component exceeds [`MAX_NAME_LEN`] bytes.
    #[error("path component of {len} bytes exceeds the {max}-byte limit")]
    NameTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A NUL or other control character.
    #[error("path has control character U+{code:04X}")]
    ControlChar {
        /// The character's code point.
        code: u32,
    },
    /// A character Windows cannot hold in a name.
    #[error("path has the reserved character {0:?}")]
    ReservedChar(char),
    /// A component ending in a dot or a space (Windows drops them silently).
    #[error("path component `{name}` ends with a dot or a space")]
    TrailingDotOrSpace {
        /// The component, cut to 64 bytes.
        name: String,
    },
    /// A Windows reserved device name.
    #[error("path component `{name}` is a reserved device name")]
    ReservedName {
        /// The component, cut to 64 bytes.
        name: String,
    },
}

const RESERVED_CHARS: &[char] = &['<', '>', ':', '"', '\\', '|', '?', '*'];

const RESERVED_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7",
    "COM8", "COM9", "COM¹", "COM²", "COM³", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6",
    "LPT7", "LPT8", "LPT9", "LPT¹", "LPT²", "LPT³", "CONIN$", "CONOUT$",
];

fn cut(name: &str) -> String {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

fn check_component(name: &str) -> Result<(), PathError> {
    match name {
        "" => return Err(PathError::EmptyComponent),
        "." => return Err(PathError::DotComponent(".")),
        ".." => return Err(PathError::DotComponent("..")),
        _ => {}
    }
    if name.len() > MAX_NAME_LEN {
        return Err(PathError::NameTooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(PathError::ControlChar { code: c as u32 });
    }
    if let Some(c) = name.chars().find(|c| RESERVED_CHARS.contains(c)) {
        return Err(PathError::ReservedChar(c));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err(PathError::TrailingDotOrSpace { name: cut(name) });
    }
    // Windows reserves the device names with any extension too ("nul.txt"),
    // and ignores trailing spaces before the extension.
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    if RESERVED_NAMES.contains(&stem.to_uppercase().as_str()) {
        return Err(PathError::ReservedName { name: cut(name) });
    }
    Ok(())
}

/// Checks a path naming a file or directory in a folder.
pub fn validate(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong {
            len: path.len(),
            max: MAX_PATH_LEN,
        });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    path.split('/').try_for_each(check_component)
}

/// Checks a directory to list: a valid path, or `""` for the folder's root.
pub fn validate_dir(dir: &str) -> Result<(), PathError> {
    if dir.is_empty() {
        Ok(())
    } else {
        validate(dir)
    }
}

/// The parent directory of a valid path (`""` for a top-level entry).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The last component of a valid path.
pub fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// `name.conflict-<who>-<yyyymmdd-hhmmss>.ext` beside `path`: where a
/// conflict copy of `path` is kept, saying who wrote it and when (UTC). The
/// extension is what follows the last dot of the name, if any. `who` is cut
/// to 64 characters of `[A-Za-z0-9_-]` (others become `-`), and the stem is
/// shortened as needed, so the copy of a valid path is a valid path.
pub fn conflict_name(path: &str, who: &str, unix_secs: u64) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (&path[..dir.len() + 1], name),
        None => ("", path),
    };
    let who: String = who
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let suffix = format!(".conflict-{who}-{}", utc_stamp(unix_secs));
    let (mut stem, mut ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    // One byte is kept for a `_` in front, should shortening leave a reserved
    // device name before the first dot ("CONSOLE…" cut to "CON").
    let room = MAX_NAME_LEN - 1 - suffix.len();
    // An extension that leaves no room for the stem is kept as part of it.
    if ext.len() >= room {
        (stem, ext) = (name, "");
    }
    let mut end = stem.len().min(room - ext.len());
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    let mut copy = format!("{}{suffix}{ext}", &stem[..end]);
    if check_component(&copy).is_err() {
        copy.insert(0, '_');
    }
    format!("{dir}{copy}")
}

/// `yyyymmdd-hhmmss` in UTC.
fn utc_stamp(unix_secs: u64) -> String {
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "a",
            "a/b/c.txt",
            ".hidden",
            "..tricky",
            "a..b",
            "photos/2024/été.jpg",
            "x y/z",
            "CONSOLE",
            "com10",
            "nulled.txt",
        ] {
            assert_eq!(validate(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn refuses_what_some_system_cannot_hold() {
        type Expect = fn(&PathError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| *e == PathError::Empty),
            ("/etc/passwd", |e| *e == PathError::Absolute),
            ("a//b", |e| *e == PathError::EmptyComponent),
            ("a/", |e| *e == PathError::EmptyComponent),
            ("../x", |e| *e == PathError::DotComponent("..")),
            ("a/../../x", |e| *e == PathError::DotComponent("..")),
            ("a/./b", |e| *e == PathError::DotComponent(".")),
            ("a\0b", |e| *e == PathError::ControlChar { code: 0 }),
            ("a\nb", |e| *e == PathError::ControlChar { code: 10 }),
            ("a\u{7f}", |e| *e == PathError::ControlChar { code: 0x7f }),
            ("a\\b", |e| *e == PathError::ReservedChar('\\')),
            ("C:/x", |e| *e == PathError::ReservedChar(':')),
            ("what?", |e| *e == PathError::ReservedChar('?')),
            ("a/b.", |e| {
                matches!(e, PathError::TrailingDotOrSpace { .. })
            }),
            ("a /b", |e| {
                matches!(e, PathError::TrailingDotOrSpace { .. })
            }),
            ("CON", |e| matches!(e, PathError::ReservedName { .. })),
            ("dir/nul.txt", |e| {
                matches!(e, PathError::ReservedName { .. })
            }),
            ("Com1", |e| matches!(e, PathError::ReservedName { .. })),
            ("lpt9.tar.gz", |e| {
                matches!(e, PathError::ReservedName { .. })
            }),
            ("COM¹", |e| matches!(e, PathError::ReservedName { .. })),
            ("aux .txt", |e| matches!(e, PathError::ReservedName { .. })),
        ];
        for (path, expected) in cases {
            let err = validate(path).expect_err(path);
            assert!(expected(&err), "{path:?} gave {err:?}");
        }
        let long_name = "n".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            validate(&long_name),
            Err(PathError::NameTooLong { .. })
        ));
        let long_path = vec!["d"; MAX_PATH_LEN / 2 + 1].join("/");
        assert!(matches!(
            validate(&long_path),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn parent_and_name() {
        assert_eq!((parent("a/b/c"), file_name("a/b/c")), ("a/b", "c"));
        assert_eq!((parent("c"), file_name("c")), ("", "c"));
        assert_eq!(validate_dir(""), Ok(()));
        assert!(validate_dir("/").is_err());
    }

    #[test]
    fn conflict_names_keep_the_extension_and_say_who_and_when() {
        let t = 1_763_720_100; // 2025-11-21T10:15:00Z
        assert_eq!(
            conflict_name("docs/report.txt", "laptop", t),
            "docs/report.conflict-laptop-20251121-101500.txt"
        );
        assert_eq!(
            conflict_name("Makefile", "my pc", t),
            "Makefile.conflict-my-pc-20251121-101500"
        );
        assert_eq!(
            conflict_name(".bashrc", "a", t),
            ".bashrc.conflict-a-20251121-101500"
        );
        assert_eq!(
            conflict_name("a.tar.gz", "a", t),
            "a.tar.conflict-a-20251121-101500.gz"
        );
        assert_eq!(
            conflict_name("x", "n", 951_782_400), // a leap day
            "x.conflict-n-20000229-000000"
        );
        assert_eq!(conflict_name("x", "n", 0), "x.conflict-n-19700101-000000");
    }

    #[test]
    fn a_conflict_copy_of_a_long_name_is_shortened_to_a_valid_name() {
        let long = format!("dir/{}.txt", "é".repeat(125));
        let copy = conflict_name(&long, "node-1", 1_763_720_100);
        assert_eq!(validate(&copy), Ok(()), "{copy}");
        assert!(copy.starts_with("dir/é") && copy.ends_with("-20251121-101500.txt"));
        // Shortening "CONSOLE…" to "CON" would name a device.
        let console = format!("CON.{}", "x".repeat(240));
        let copy = conflict_name(&console, "n", 0);
        assert_eq!(validate(&copy), Ok(()), "{copy}");
    }

    proptest! {
        /// The conflict copy of any valid path, by anyone at any time, is a
        /// valid path in the same directory, and not the path itself.
        #[test]
        fn conflict_copies_of_valid_paths_are_valid(
            path in "([a-zA-Z0-9 ._é-]{1,90}/){0,2}[a-zA-Z0-9 ._é-]{1,300}",
            who in ".{0,80}",
            secs in 0u64..10_000_000_000,
        ) {
            prop_assume!(validate(&path).is_ok());
            let copy = conflict_name(&path, &who, secs);
            prop_assert_eq!(validate(&copy), Ok(()), "{}", copy);
            prop_assert_ne!(&copy, &path);
            prop_assert_eq!(parent(&copy), parent(&path));
        }

        #[test]
        fn never_panics_and_valid_paths_stay_inside(path in ".{0,64}") {
            if validate(&path).is_ok() {
                // Joined under a root, a valid path never climbs out of it.
                let joined = std::path::Path::new("/root").join(&path);
                let mut depth = 0i32;
                for c in joined.components().skip(2) {
                    match c {
                        std::path::Component::Normal(_) => depth += 1,
                        _ => prop_assert!(false, "{path:?} yields {c:?}"),
                    }
                }
                prop_assert!(depth >= 1);
            }
        }
    }
}
