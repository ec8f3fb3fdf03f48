//! Channel names and lease patterns, after PsEPR.
//!
//! A **channel** is a rooted path with a trailing slash whose first element
//! is a naming authority, normally a domain name:
//! `/example.com/node/host1.example.com/`. Elements are non-empty runs of
//! printable characters other than `/`. PsEPR reserved the empty element
//! (`//`) and `*`; pepper keeps both out of channel names.
//!
//! **Printable** means: no character of Unicode's general categories Cc
//! (control: C0, DEL, C1, so no NUL, CR or LF), Cf (format: zero-width
//! space and joiners, the byte order mark, bidirectional overrides and
//! isolates), Zl or Zp (line and paragraph separators). Those are invisible
//! or reorder what is shown, so two channels that print the same could be
//! different channels (`/bank.example/` and one with a zero-width space or
//! a right-to-left override in it), and a line separator breaks the line a
//! channel is printed on. Letters, marks, digits, punctuation, symbols and
//! spaces of every script are allowed.
//!
//! A **lease pattern** has the same shape, but an element may be exactly `*`,
//! which matches **exactly one** element of a channel, whatever it is. A
//! pattern matches a channel when its elements match the channel's first
//! elements one for one: a lease covers its channel's whole subtree. So
//! `/example.com/node/*/` matches `/example.com/node/h1/` and
//! `/example.com/node/h1/load/`, but not `/example.com/node/` (the `*` needs
//! an element to match). The pattern `/` matches every channel.
//!
//! The authority `pepper` is reserved for pepper's own control plane
//! (`/pepper/...`): see [`Channel::is_reserved`].
//!
//! Limits: [`CHANNEL_BYTES_MAX`] bytes and [`CHANNEL_DEPTH_MAX`] elements.
//! Input over either is refused, never truncated.

use std::fmt;

use crate::error::{Error, Result};

/// Longest channel name or lease pattern, in bytes. The store takes its
/// limit from here (`pepper_storage::limits::CHANNEL_BYTES_MAX`), so a
/// channel the router accepts is one the store accepts.
pub const CHANNEL_BYTES_MAX: usize = 512;

/// Most elements in a channel name or lease pattern.
pub const CHANNEL_DEPTH_MAX: usize = 32;

/// The authority of pepper's own control-plane channels.
pub const RESERVED_AUTHORITY: &str = "pepper";

/// A validated channel name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(String);

/// One element of a lease pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this element.
    Literal(String),
    /// `*`: matches exactly one element, whatever it is.
    Any,
}

/// A validated lease pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

/// Splits a rooted, slash-terminated name into its elements, checking the
/// rules channels and patterns share.
fn elements(input: &str) -> Result<Vec<&str>> {
    if input.len() > CHANNEL_BYTES_MAX {
        return Err(Error::channel(input, format!("longer than {CHANNEL_BYTES_MAX} bytes")));
    }
    if !input.starts_with('/') {
        return Err(Error::channel(input, "must start with '/'"));
    }
    if !input.ends_with('/') {
        return Err(Error::channel(input, "must end with '/'"));
    }
    if input == "/" {
        return Ok(Vec::new());
    }
    let inner = &input[1..input.len() - 1];
    let elements: Vec<&str> = inner.split('/').collect();
    if elements.len() > CHANNEL_DEPTH_MAX {
        return Err(Error::channel(input, format!("deeper than {CHANNEL_DEPTH_MAX} elements")));
    }
    for (i, e) in elements.iter().enumerate() {
        if e.is_empty() {
            return Err(Error::channel(input, format!("element {} is empty ('//' is reserved)", i + 1)));
        }
        if let Some(c) = e.chars().find(|&c| !printable(c)) {
            return Err(Error::channel(
                input,
                format!(
                    "element {} holds U+{:04X}, a control, format or separator character; elements are printable",
                    i + 1,
                    c as u32
                ),
            ));
        }
    }
    Ok(elements)
}

/// Whether `c` may appear in a channel element (see the module header).
fn printable(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    // ASCII, nearly every channel's every character, without the table
    // lookup: only C0 and DEL are not printable there.
    if c.is_ascii() {
        return !c.is_ascii_control();
    }
    !matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// The subtrees a channel name lies in, shortest first: for
/// `/example.com/node/h1/`, `/example.com/`, `/example.com/node/` and the
/// channel itself. A lookup of each in a map of subtree patterns finds the
/// ones covering the channel in O(depth) lookups, whatever their number.
pub fn subtrees(channel: &str) -> impl Iterator<Item = &str> {
    channel.match_indices('/').skip(1).map(move |(i, _)| &channel[..=i])
}

impl Channel {
    /// Parses and validates a channel name.
    ///
    /// # Errors
    /// [`Error::InvalidChannel`] naming the rule broken.
    pub fn parse(input: &str) -> Result<Channel> {
        let elements = elements(input)?;
        if elements.is_empty() {
            return Err(Error::channel(input, "has no authority: the first element names one, as in /example.com/"));
        }
        if let Some(i) = elements.iter().position(|e| e.contains('*')) {
            return Err(Error::channel(
                input,
                format!("element {} contains '*', which only lease patterns may use", i + 1),
            ));
        }
        Ok(Channel(input.to_string()))
    }

    /// The name, as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The elements, authority first.
    pub fn elements(&self) -> impl Iterator<Item = &str> {
        self.0[1..self.0.len() - 1].split('/')
    }

    /// The naming authority: the first element.
    pub fn authority(&self) -> &str {
        self.elements().next().unwrap_or_default()
    }

    /// How many elements the name has.
    pub fn depth(&self) -> usize {
        self.elements().count()
    }

    /// Whether the channel belongs to pepper's control plane (`/pepper/...`),
    /// where only pepper itself may publish.
    pub fn is_reserved(&self) -> bool {
        self.authority() == RESERVED_AUTHORITY
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Pattern {
    /// Parses and validates a lease pattern.
    ///
    /// # Errors
    /// [`Error::InvalidChannel`] naming the rule broken.
    pub fn parse(input: &str) -> Result<Pattern> {
        let segments = elements(input)?
            .into_iter()
            .enumerate()
            .map(|(i, e)| match e {
                "*" => Ok(Segment::Any),
                e if e.contains('*') => Err(Error::channel(
                    input,
                    format!("element {} mixes '*' with other characters; '*' must be a whole element", i + 1),
                )),
                e => Ok(Segment::Literal(e.to_string())),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Pattern { text: input.to_string(), segments })
    }

    /// The pattern, as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The elements, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the pattern covers `channel` (its subtree included).
    pub fn matches(&self, channel: &Channel) -> bool {
        self.matches_name(channel.as_str())
    }

    /// [`Pattern::matches`] on a channel name that was validated before,
    /// such as one read back from the log, without validating it again.
    pub fn matches_name(&self, channel: &str) -> bool {
        let inner = channel.strip_prefix('/').and_then(|c| c.strip_suffix('/')).unwrap_or(channel);
        let mut elements = inner.split('/').filter(|e| !e.is_empty());
        self.segments.iter().all(|s| match (s, elements.next()) {
            (Segment::Any, Some(_)) => true,
            (Segment::Literal(l), Some(e)) => l == e,
            (_, None) => false,
        })
    }

    /// The longest literal channel prefix every match starts with, for a
    /// change-feed prefix filter: `/a/b/` for `/a/b/*/c/`, `/` for `/*/`.
    pub fn literal_prefix(&self) -> String {
        let mut out = String::from("/");
        for s in &self.segments {
            match s {
                Segment::Literal(l) => {
                    out.push_str(l);
                    out.push('/');
                }
                Segment::Any => break,
            }
        }
        out
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn subtrees_run_from_the_authority_to_the_channel() {
        let all: Vec<&str> = subtrees("/example.com/node/h1/").collect();
        assert_eq!(all, ["/example.com/", "/example.com/node/", "/example.com/node/h1/"]);
        assert_eq!(subtrees("/a/").collect::<Vec<_>>(), ["/a/"]);
    }

    use super::*;

    fn ch(s: &str) -> Channel {
        Channel::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn valid_channels_parse_and_split() {
        let c = ch("/example.com/node/host 1.example.com/");
        assert_eq!(c.authority(), "example.com");
        assert_eq!(c.depth(), 3);
        assert_eq!(c.elements().collect::<Vec<_>>(), ["example.com", "node", "host 1.example.com"]);
        assert!(!c.is_reserved());
        assert!(ch("/pepper/sites/").is_reserved());
        assert!(ch("/ünïcode/é/").depth() == 2);
        // Spaces, marks and other scripts print: they are allowed.
        assert!(ch("/a b/e\u{301}/日本/عربي/").depth() == 4);
    }

    #[test]
    fn invalid_channels_name_the_rule() {
        for (input, needle) in [
            ("", "start with '/'"),
            ("a/", "start with '/'"),
            ("/a", "end with '/'"),
            ("/", "no authority"),
            ("/a//b/", "empty"),
            ("//", "empty"),
            ("/a/*/", "'*'"),
            ("/a/b*/", "'*'"),
            ("/a/\u{7}/", "control"),
            ("/a/\n/", "control"),
            ("/a/\u{85}/", "U+0085"),
            ("/bank\u{200B}.example/", "U+200B"),
            ("/a/\u{202E}txt.exe/", "U+202E"),
            ("/a/\u{2066}b/", "U+2066"),
            ("/a/\u{FEFF}/", "U+FEFF"),
            ("/a/\u{2028}/", "U+2028"),
            ("/a/\u{E0041}/", "U+E0041"),
        ] {
            let err = Channel::parse(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
        let deep = format!("/{}", "a/".repeat(CHANNEL_DEPTH_MAX + 1));
        assert!(Channel::parse(&deep).expect_err("deep").to_string().contains("deeper"));
        let long = format!("/{}/", "a".repeat(CHANNEL_BYTES_MAX));
        assert!(Channel::parse(&long).expect_err("long").to_string().contains("longer"));
    }

    #[test]
    fn patterns_cover_subtrees_and_star_matches_exactly_one_element() {
        let p = Pattern::parse("/example.com/node/*/").expect("pattern");
        assert!(p.matches(&ch("/example.com/node/h1/")));
        assert!(p.matches(&ch("/example.com/node/h1/load/")));
        assert!(!p.matches(&ch("/example.com/node/")));
        assert!(!p.matches(&ch("/example.com/nodes/h1/")));
        let all = Pattern::parse("/").expect("root");
        assert!(all.matches(&ch("/x/")));
        let mid = Pattern::parse("/*/node/").expect("pattern");
        assert!(mid.matches(&ch("/a.org/node/x/")));
        assert!(!mid.matches(&ch("/a.org/other/node/")));
        assert_eq!(Pattern::parse("/a/b/*/c/").expect("p").literal_prefix(), "/a/b/");
        assert_eq!(mid.literal_prefix(), "/");
        assert!(Pattern::parse("/a/b*/").is_err());
        assert!(Pattern::parse("/a//").is_err());
    }
}
