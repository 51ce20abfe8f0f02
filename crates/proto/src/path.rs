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

    proptest! {
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
