//! What the sync daemon leaves alone: temporary and editor files, its own
//! temporary files, and the patterns of a folder's `.cofferignore`.
//!
//! `.cofferignore` (at the folder's root, one pattern per line) follows the
//! familiar subset of gitignore: blank lines and `#` comments are skipped; `*`
//! matches within a path segment, `?` one character, `**` any number of
//! segments; a pattern with a `/` other than at its end is anchored at the
//! folder's root, one without matches a name at any depth; a trailing `/`
//! matches directories only; a leading `!` re-includes what an earlier
//! pattern excluded; the last matching pattern wins. An ignored directory is
//! not descended into.
//!
//! The file itself is local to the device and never synced: each device
//! chooses what it leaves out, and no member of a shared folder can hide
//! files from the others' devices by editing a shared rule.

/// The ignore file's name, at the root of a synced folder.
pub const IGNORE_FILE: &str = ".cofferignore";
/// Longest ignore file read; patterns beyond it are not read.
pub const MAX_IGNORE_FILE: usize = 64 * 1024;
/// Longest pattern accepted.
const MAX_PATTERN: usize = 1024;

/// Names never synced, wherever they are.
const BUILT_IN: &[&str] = &[
    "*.swp",
    "*.swo",
    "*.swx",
    "*.tmp",
    "*.part",
    "*.crdownload",
    "*~",
    "~$*",
    ".~lock.*#",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    // The daemon's own temporary files (downloads in progress), named
    // after `transfer::TEMP_PREFIX`.
    ".coffer-tmp-*",
    IGNORE_FILE,
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    glob: Vec<u8>,
    anchored: bool,
    dir_only: bool,
    negate: bool,
}

impl Rule {
    fn parse(line: &str) -> Option<Rule> {
        let line = line.trim_end_matches(['\r', ' ', '\t']);
        if line.is_empty() || line.starts_with('#') || line.len() > MAX_PATTERN {
            return None;
        }
        let (negate, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line.strip_prefix('\\').unwrap_or(line)),
        };
        let (dir_only, line) = match line.strip_suffix('/') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let anchored = line.contains('/');
        let line = line.strip_prefix('/').unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        Some(Rule {
            glob: line.as_bytes().to_vec(),
            anchored,
            dir_only,
            negate,
        })
    }

    fn matches(&self, path: &str, is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        let subject = if self.anchored {
            path
        } else {
            path.rsplit('/').next().unwrap_or(path)
        };
        glob(&self.glob, subject.as_bytes())
    }
}

/// The rules for one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignore {
    rules: Vec<Rule>,
}

impl Default for Ignore {
    fn default() -> Self {
        Ignore::parse("")
    }
}

impl Ignore {
    /// The built-in rules followed by those of `text` (a `.cofferignore`).
    pub fn parse(text: &str) -> Ignore {
        let rules = BUILT_IN
            .iter()
            .copied()
            .chain(text.lines())
            .filter_map(Rule::parse)
            .collect();
        Ignore { rules }
    }

    /// The rules of the folder at `root`: built-in, plus its `.cofferignore`
    /// when there is one (only its first [`MAX_IGNORE_FILE`] bytes).
    pub fn load(root: &std::path::Path) -> std::io::Result<Ignore> {
        use std::io::Read as _;
        let mut text = Vec::new();
        match std::fs::File::open(root.join(IGNORE_FILE)) {
            Ok(file) => {
                file.take(MAX_IGNORE_FILE as u64).read_to_end(&mut text)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Ignore::parse(&String::from_utf8_lossy(&text)))
    }

    /// Whether `path` (relative to the folder, `/`-separated) is left alone.
    pub fn ignores(&self, path: &str, is_dir: bool) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|r| r.matches(path, is_dir))
            .is_some_and(|r| !r.negate)
    }
}

/// Whether `text` matches `pattern`: `*` within a segment, `**` across
/// segments, `?` one byte other than `/`. Dynamic programming over both, so
/// no pattern can make matching exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // reach[j]: pattern[..i] matches text[..j].
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    let mut i = 0;
    while i < pattern.len() {
        let mut next = vec![false; text.len() + 1];
        match pattern[i] {
            b'*' if pattern.get(i + 1) == Some(&b'*') => {
                // `**/` also matches no segment at all.
                let slash = pattern.get(i + 2) == Some(&b'/');
                let mut any = false;
                for j in 0..=text.len() {
                    any |= reach[j];
                    next[j] = any;
                }
                if slash {
                    // "**/" is zero segments (where we stand) or any run
                    // of them (just after a '/').
                    let after: Vec<bool> = (0..=text.len())
                        .map(|j| reach[j] || (next[j] && j > 0 && text[j - 1] == b'/'))
                        .collect();
                    reach = after;
                    i += 3;
                    continue;
                }
                i += 2;
                reach = next;
                continue;
            }
            b'*' => {
                let mut open = false;
                for j in 0..=text.len() {
                    open = reach[j] || (open && j > 0 && text[j - 1] != b'/');
                    next[j] = open;
                }
            }
            b'?' => {
                for j in 1..=text.len() {
                    next[j] = reach[j - 1] && text[j - 1] != b'/';
                }
            }
            c => {
                for j in 1..=text.len() {
                    next[j] = reach[j - 1] && text[j - 1] == c;
                }
            }
        }
        reach = next;
        i += 1;
    }
    reach[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn globs() {
        assert!(glob(b"*.swp", b".notes.txt.swp"));
        assert!(!glob(b"*.swp", b"a.swp.txt"));
        assert!(!glob(b"*.log", b"dir/a.log"), "* stays in its segment");
        assert!(glob(b"**/*.log", b"a.log"));
        assert!(glob(b"**/*.log", b"dir/sub/a.log"));
        assert!(glob(b"build/**", b"build/x/y"));
        assert!(glob(b"a/**/b", b"a/b"));
        assert!(glob(b"a/**/b", b"a/x/y/b"));
        assert!(glob(b"?.txt", b"a.txt"));
        assert!(!glob(b"?.txt", b"ab.txt"));
        assert!(glob(b"~$*", b"~$report.docx"));
        assert!(!glob(b"", b"x"));
    }

    #[test]
    fn rules_follow_gitignore() {
        let ignore = Ignore::parse("# comment\n\n*.log\n!keep.log\n/build/\ncache/\ndocs/*.pdf\n");
        assert!(ignore.ignores("a.log", false));
        assert!(ignore.ignores("deep/in/b.log", false));
        assert!(!ignore.ignores("keep.log", false), "re-included");
        assert!(ignore.ignores("build", true));
        assert!(!ignore.ignores("build", false), "directories only");
        assert!(!ignore.ignores("src/build", true), "anchored at the root");
        assert!(
            ignore.ignores("src/cache", true),
            "unanchored directory rule"
        );
        assert!(ignore.ignores("docs/a.pdf", false));
        assert!(!ignore.ignores("other/docs/a.pdf", false));
        assert!(!ignore.ignores("notes.txt", false));
    }

    #[test]
    fn editor_and_temporary_files_are_built_in() {
        let ignore = Ignore::default();
        for name in [
            ".report.txt.swp",
            "draft.tmp",
            "video.mp4.part",
            "~$budget.xlsx",
            "notes.txt~",
            ".DS_Store",
            "sub/.DS_Store",
            ".coffer-tmp-1234",
            ".cofferignore",
        ] {
            assert!(ignore.ignores(name, false), "{name}");
        }
        let download = format!("{}0123456789abcdef", crate::transfer::TEMP_PREFIX);
        assert!(ignore.ignores(&download, false), "{download}");
        for name in ["report.txt", "swp", "part/file", "a/b/c.md"] {
            assert!(!ignore.ignores(name, false), "{name}");
        }
    }

    /// A straightforward backtracking matcher, to check the fast one against.
    fn slow(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                if let Some(after) = rest.strip_prefix(b"/") {
                    if slow(after, t) {
                        return true;
                    }
                    (0..t.len()).any(|k| t[k] == b'/' && slow(after, &t[k + 1..]))
                } else {
                    (0..=t.len()).any(|k| slow(rest, &t[k..]))
                }
            }
            Some(b'*') => (0..=t.len())
                .take_while(|&k| k == 0 || t[k - 1] != b'/')
                .any(|k| slow(&p[1..], &t[k..])),
            Some(b'?') => t.first().is_some_and(|&c| c != b'/') && slow(&p[1..], &t[1..]),
            Some(&c) => t.first() == Some(&c) && slow(&p[1..], &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_backtracking(p in "[ab/*?]{0,8}", t in "[ab/]{0,10}") {
            prop_assert_eq!(glob(p.as_bytes(), t.as_bytes()), slow(p.as_bytes(), t.as_bytes()), "{} vs {}", p, t);
        }
    }
}
