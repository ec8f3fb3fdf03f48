//! The federation parameters of a query, and the sites its scope names.
//!
//! A query string is read the way a URL parser reads the query of
//! `http://x/?QUERY` and splits it as `application/x-www-form-urlencoded`:
//! C0 controls and spaces at the end are dropped, tabs and newlines are
//! removed, a `#` ends the query, pairs are split on `&` (empty ones
//! skipped) and at their first `=`, `+` is a space, `%XX` a byte (any other
//! `%` is kept), and bytes that are not UTF-8 become U+FFFD.

use std::collections::BTreeSet;
use std::time::Duration;

use pepper_router::{by_preference, PeerView};

use super::refusal::{Refusal, RefusalCode};
use crate::error::{Error, Result};

/// The deadline of a federated query when none is given.
pub const DEADLINE_DEFAULT_MS: u64 = 2000;
/// The longest deadline a federated query may ask for; a longer one is
/// refused.
pub const DEADLINE_MAX_MS: u64 = 60_000;
/// The most names `scope=sites:` may list: every peer a site may know
/// (the federation's `PEERS_MAX`, 256) and the site itself. More are
/// refused.
pub const SCOPE_SITES_MAX: usize = 257;

/// Which sites a query asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// This site only, with no manifest.
    Local,
    /// This site and every peer it knows.
    All,
    /// The named sites, each once.
    Sites(Vec<String>),
    /// The sites announcing this region.
    Region(String),
    /// The first k sites in order of preference.
    Sample(usize),
    /// The live complete monitors of the recording pattern covering the
    /// query's channel; the first to answer in order of preference is the
    /// answer.
    Recorders,
}

/// Reads a `scope` value.
///
/// # Errors
/// [`Error::Param`] naming the forms a scope may take.
pub fn parse_scope(text: &str) -> Result<Scope> {
    let bad = || Error::Param(format!("scope {text:?} must be local, all, recorders, sites:a,b, region:r or sample:k"));
    Ok(match text.split_once(':') {
        None if text == "local" => Scope::Local,
        None if text == "all" => Scope::All,
        None if text == "recorders" => Scope::Recorders,
        Some(("sites", list)) => {
            let names: Vec<String> = list.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
            if names.is_empty() || names.len() > SCOPE_SITES_MAX {
                return Err(bad());
            }
            Scope::Sites(names)
        }
        Some(("region", r)) if !r.is_empty() => Scope::Region(r.to_string()),
        Some(("sample", k)) => Scope::Sample(k.parse().ok().filter(|k| *k > 0).ok_or_else(bad)?),
        _ => return Err(bad()),
    })
}

/// The federation parameters of a query, and the rest of its query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Which sites to ask.
    pub scope: Scope,
    /// Whether the query named its scope.
    pub explicit: bool,
    /// How long any site may make the query wait.
    pub deadline: Duration,
    /// Answers needed under `partial=deny`; `None`: every site asked (one
    /// for `recorders`).
    pub min_sites: Option<usize>,
    /// `partial=deny`: too few answers refuse the query.
    pub deny_partial: bool,
    /// Every other parameter, decoded, in order.
    pub rest: Vec<(String, String)>,
}

impl Params {
    /// The query's `channel`, if it names one.
    pub fn channel(&self) -> Option<&str> {
        self.rest.iter().find(|(k, _)| k == "channel").map(|(_, v)| v.as_str())
    }

    /// Whether the query asks for newest first (`order=desc`).
    pub fn descending(&self) -> bool {
        self.rest.iter().any(|(k, v)| k == "order" && v == "desc")
    }

    /// The query string a local query goes on with: the other parameters;
    /// `None` when there are none.
    pub fn local_query(&self) -> Option<String> {
        (!self.rest.is_empty()).then(|| encode_query(&self.rest))
    }

    /// The query string each site in scope is asked with: the other
    /// parameters, then `scope=local`.
    pub fn site_query(&self) -> String {
        let mut pairs = self.rest.clone();
        pairs.push(("scope".into(), "local".into()));
        encode_query(&pairs)
    }
}

/// Reads the federation parameters of a query string (`None`: no query).
///
/// # Errors
/// [`Error::Param`] for a bad `scope`, a `deadline_ms` that is not a number
/// from 1 to [`DEADLINE_MAX_MS`], a `min_sites` that is not a number, or a
/// `partial` other than `allow` or `deny`.
pub fn parse_params(query: Option<&str>) -> Result<Params> {
    let mut p = Params {
        scope: Scope::Local,
        explicit: false,
        deadline: Duration::from_millis(DEADLINE_DEFAULT_MS),
        min_sites: None,
        deny_partial: false,
        rest: Vec::new(),
    };
    for (k, v) in decode_query(query.unwrap_or("")) {
        match k.as_str() {
            "scope" => {
                p.scope = parse_scope(&v)?;
                p.explicit = true;
            }
            "deadline_ms" => {
                let ms: u64 = v.parse().map_err(|_| Error::Param(format!("deadline_ms {v:?} is not a number")))?;
                if !(1..=DEADLINE_MAX_MS).contains(&ms) {
                    return Err(Error::Param(format!("deadline_ms must be 1 to {DEADLINE_MAX_MS}")));
                }
                p.deadline = Duration::from_millis(ms);
            }
            "min_sites" => {
                let min = v.parse().map_err(|_| Error::Param(format!("min_sites {v:?} is not a number")))?;
                p.min_sites = Some(min);
            }
            "partial" => {
                p.deny_partial = match v.as_str() {
                    "allow" => false,
                    "deny" => true,
                    _ => return Err(Error::Param(format!("partial {v:?} must be allow or deny"))),
                }
            }
            _ => p.rest.push((k, v)),
        }
    }
    Ok(p)
}

/// Splits a query string into decoded pairs (see the module header).
/// O(length).
pub fn decode_query(query: &str) -> Vec<(String, String)> {
    let query = query.trim_end_matches(|c: char| c <= ' ');
    let query: String = query.chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'+' => b' ',
            b'%' => match (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    i += 2;
                    hi << 4 | lo
                }
                _ => b'%',
            },
            b => b,
        };
        out.push(byte);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

/// Joins pairs into a query string as `application/x-www-form-urlencoded`:
/// letters, digits and `*-._` as they are, a space as `+`, every other byte
/// as `%XX`.
pub fn encode_query(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        encode(&mut out, k);
        out.push('=');
        encode(&mut out, v);
    }
    out
}

fn encode(out: &mut String, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

/// One site a query asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The site's name.
    pub site: String,
    /// Whether this site knows it (itself or a peer); an unknown one is
    /// reported unreachable without being asked.
    pub known: bool,
}

/// The sites `scope` names, given this site and its peers (in the
/// registry's order): `all` this site then the peers; `region:r` those of
/// the region, this site first; `sites:` each name once, in name order;
/// `sample:k` the first k by preference. `local`, and `recorders` (see
/// [`recorders_in_scope`]), name this site only.
pub fn sites_in_scope(scope: &Scope, me: &PeerView, peers: &[PeerView]) -> Vec<Ask> {
    let mine = || Ask { site: me.name.clone(), known: true };
    let peer = |p: &PeerView| Ask { site: p.name.clone(), known: true };
    match scope {
        Scope::Local | Scope::Recorders => vec![mine()],
        Scope::All => std::iter::once(mine()).chain(peers.iter().map(peer)).collect(),
        Scope::Region(r) => {
            let mut out = Vec::new();
            if me.region.as_deref() == Some(r.as_str()) {
                out.push(mine());
            }
            out.extend(peers.iter().filter(|p| p.region.as_deref() == Some(r.as_str())).map(peer));
            out
        }
        Scope::Sites(names) => names
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|n| {
                if *n == me.name {
                    mine()
                } else {
                    peers.iter().find(|p| p.name == *n).map_or(Ask { site: n.clone(), known: false }, peer)
                }
            })
            .collect(),
        Scope::Sample(k) => {
            let mut sites = by_preference(std::iter::once(me.clone()).chain(peers.iter().cloned()).collect());
            sites.truncate(*k);
            sites.into_iter().map(|p| Ask { site: p.name, known: true }).collect()
        }
    }
}

/// The sites `scope=recorders` asks for `channel`, from the recording
/// pattern covering it and its recorders in order of preference (the
/// supervisor's answer; `None` when no pattern covers the channel).
///
/// # Errors
/// A [`Refusal`] without manifest: [`RefusalCode::InvalidQuery`] when no
/// pattern covers the channel, [`RefusalCode::NoRecorder`] when no live site
/// records it completely.
pub fn recorders_in_scope(
    channel: &str,
    recorders: Option<(String, Vec<String>)>,
) -> std::result::Result<Vec<Ask>, Refusal> {
    let Some((pattern, sites)) = recorders else {
        return Err(Refusal::new(RefusalCode::InvalidQuery, format!("no recording policy covers channel {channel:?}")));
    };
    if sites.is_empty() {
        return Err(Refusal::new(
            RefusalCode::NoRecorder,
            format!("no live site records {pattern} completely right now"),
        ));
    }
    Ok(sites.into_iter().map(|site| Ask { site, known: true }).collect())
}

#[cfg(test)]
mod tests {
    use pepper_router::Reach;

    use super::*;

    #[test]
    fn scopes_parse_or_say_what_is_wrong() {
        assert_eq!(parse_scope("all"), Ok(Scope::All));
        assert_eq!(parse_scope("local"), Ok(Scope::Local));
        assert_eq!(parse_scope("recorders"), Ok(Scope::Recorders));
        assert_eq!(parse_scope("sites:a,b"), Ok(Scope::Sites(vec!["a".into(), "b".into()])));
        assert_eq!(parse_scope("sites:a,,b,"), Ok(Scope::Sites(vec!["a".into(), "b".into()])));
        assert_eq!(parse_scope("region:eu"), Ok(Scope::Region("eu".into())));
        assert_eq!(parse_scope("sample:2"), Ok(Scope::Sample(2)));
        for bad in ["", "everything", "sites:", "sites:,", "sample:0", "sample:x", "region:", "all:x", "local:"] {
            let err = parse_scope(bad).expect_err(bad);
            assert!(err.to_string().starts_with(&format!("scope {bad:?} must be local, all")), "{err}");
        }
        let most = vec!["s"; SCOPE_SITES_MAX].join(",");
        assert!(parse_scope(&format!("sites:{most}")).is_ok());
        assert!(parse_scope(&format!("sites:{most},s")).is_err());
    }

    #[test]
    fn params_take_the_federation_keys_and_keep_the_rest_in_order() {
        let p = parse_params(Some("channel=/a/&scope=all&deadline_ms=250&partial=deny&min_sites=2&order=desc"))
            .expect("params");
        assert_eq!(
            (&p.scope, p.explicit, p.deadline, p.deny_partial, p.min_sites),
            (&Scope::All, true, Duration::from_millis(250), true, Some(2))
        );
        assert_eq!(p.rest, [("channel".to_string(), "/a/".to_string()), ("order".to_string(), "desc".to_string())]);
        assert_eq!((p.channel(), p.descending()), (Some("/a/"), true));
        assert_eq!(p.local_query().as_deref(), Some("channel=%2Fa%2F&order=desc"));
        assert_eq!(p.site_query(), "channel=%2Fa%2F&order=desc&scope=local");
        let none = parse_params(None).expect("no query");
        assert_eq!((&none.scope, none.explicit, none.deadline), (&Scope::Local, false, Duration::from_millis(2000)));
        assert_eq!((none.local_query(), none.site_query()), (None, "scope=local".to_string()));
        // The last of a repeated key wins; min_sites may be 0.
        let p = parse_params(Some("scope=all&scope=local&min_sites=0")).expect("params");
        assert_eq!((p.scope, p.explicit, p.min_sites), (Scope::Local, true, Some(0)));
        for (bad, message) in [
            ("deadline_ms=0", "deadline_ms must be 1 to 60000"),
            ("deadline_ms=60001", "deadline_ms must be 1 to 60000"),
            ("deadline_ms=-1", "deadline_ms \"-1\" is not a number"),
            ("min_sites=x", "min_sites \"x\" is not a number"),
            ("partial=maybe", "partial \"maybe\" must be allow or deny"),
            ("scope=nowhere", "scope \"nowhere\" must be local, all, recorders, sites:a,b, region:r or sample:k"),
        ] {
            assert_eq!(parse_params(Some(bad)).map(|_| ()), Err(Error::Param(message.into())), "{bad}");
        }
        assert_eq!(parse_params(Some("deadline_ms=60000")).expect("max").deadline, Duration::from_secs(60));
    }

    #[test]
    fn query_strings_decode_like_a_url_parser_reads_them() {
        let pairs = |q: &str| decode_query(q);
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(pairs("a=1&&b&=c&d=x=y"), [p("a", "1"), p("b", ""), p("", "c"), p("d", "x=y")]);
        assert_eq!(pairs("q=a+b%20c%2B%zz%4"), [p("q", "a b c+%zz%4")]);
        assert_eq!(pairs("q=%C3%A9&r=%FF"), [p("q", "é"), p("r", "\u{FFFD}")]);
        assert_eq!(pairs("q=a\tb\nc&r=1#frag&s=2"), [p("q", "abc"), p("r", "1")]);
        assert_eq!(pairs("q=a \u{1}"), [p("q", "a")]);
        assert_eq!(pairs(""), []);
        assert_eq!(encode_query(&[p("k y", "a/b*c-._~é+&=")]), "k+y=a%2Fb*c-._%7E%C3%A9%2B%26%3D");
        assert_eq!(decode_query(&encode_query(&[p("k y", "a/b*c-._~é+&= #\t")])), [p("k y", "a/b*c-._~é+&= #\t")]);
    }

    fn site(name: &str, region: Option<&str>, reach: Reach, rtt: Option<f64>) -> PeerView {
        PeerView { name: name.into(), region: region.map(Into::into), reach, rtt_ms: rtt }
    }

    fn names(asks: &[Ask]) -> Vec<(&str, bool)> {
        asks.iter().map(|a| (a.site.as_str(), a.known)).collect()
    }

    #[test]
    fn scopes_name_their_sites() {
        let me = PeerView::this_site("me", Some("eu"));
        let peers = [
            site("far", Some("us"), Reach::Up, Some(9.0)),
            site("gone", Some("eu"), Reach::Down, Some(0.1)),
            site("near", None, Reach::Up, Some(1.0)),
            site("new", Some("eu"), Reach::Up, None),
            site("shaky", None, Reach::Suspect, Some(0.2)),
        ];
        let asked = |scope: Scope| sites_in_scope(&scope, &me, &peers);
        assert_eq!(names(&asked(Scope::Local)), [("me", true)]);
        assert_eq!(names(&asked(Scope::Recorders)), [("me", true)]);
        assert_eq!(
            names(&asked(Scope::All)),
            [("me", true), ("far", true), ("gone", true), ("near", true), ("new", true), ("shaky", true)]
        );
        assert_eq!(names(&asked(Scope::Region("eu".into()))), [("me", true), ("gone", true), ("new", true)]);
        assert_eq!(names(&asked(Scope::Region("us".into()))), [("far", true)]);
        assert!(asked(Scope::Region("ap".into())).is_empty());
        let named = Scope::Sites(vec!["zz".into(), "near".into(), "me".into(), "near".into()]);
        assert_eq!(names(&asked(named)), [("me", true), ("near", true), ("zz", false)]);
        // A sample prefers up, then low latency; this site is up with none.
        assert_eq!(names(&asked(Scope::Sample(3))), [("me", true), ("near", true), ("far", true)]);
        let five: Vec<String> = asked(Scope::Sample(5)).into_iter().map(|a| a.site).collect();
        assert_eq!(five, ["me", "near", "far", "new", "shaky"]);
        assert_eq!(asked(Scope::Sample(9)).len(), 6);
    }

    #[test]
    fn recorders_come_from_the_supervisor_or_refuse() {
        let sites = recorders_in_scope("/n/a/", Some(("/n/".into(), vec!["b".into(), "me".into()]))).expect("two");
        assert_eq!(names(&sites), [("b", true), ("me", true)]);
        let none = recorders_in_scope("/b/x/", None).expect_err("uncovered");
        assert_eq!(
            (none.code, none.message.as_str()),
            (RefusalCode::InvalidQuery, "no recording policy covers channel \"/b/x/\"")
        );
        let empty = recorders_in_scope("/n/a/", Some(("/n/".into(), Vec::new()))).expect_err("none live");
        assert_eq!(
            (empty.code, empty.message.as_str()),
            (RefusalCode::NoRecorder, "no live site records /n/ completely right now")
        );
        assert!(empty.manifest.is_none());
    }
}
