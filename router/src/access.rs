//! Who may do what: the permission rule, without I/O.
//!
//! A principal holds **grants**. A grant is an [`Action`] on a resource
//! pattern ([`Grant`]):
//!
//! - channel actions (`publish`, `subscribe`, `tuples.read`,
//!   `tuples.delete`, `deploy`, `automate`) take a lease pattern (the
//!   channel grammar of [`Pattern`], `*` matching one element): the grant
//!   covers every channel the pattern covers, subtrees included. `/` covers
//!   every channel.
//! - model actions (`models.read`, `models.write`) take a namespace, or `*`
//!   for every namespace.
//! - site actions (`recording`, `sites`, `metrics`, `admin`) take no
//!   resource (written `*`).
//!
//! A request is allowed when one grant of its action covers its resource
//! ([`allows`]). For a request over many channels (a lease or watch on a
//! pattern, a recursive tuple query, an events page), the resource is a
//! pattern, and a grant covers it only if it covers every channel the
//! request could reach ([`covers`]): a request is never answered with a
//! part of what it asked for silently left out. `admin` implies every
//! other action on every resource.
//!
//! Deny by default: no grant, no access. The adapters decide who the caller
//! is (a bearer token) and call [`allows`]; nothing here reads a token.

use std::fmt;

use crate::channel::{Channel, Pattern, Segment};
use crate::error::{Error, Result};

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Publish events on channels.
    Publish,
    /// Receive events: leases, their streams, watches, event pages,
    /// pldbget replies.
    Subscribe,
    /// Read latest values and history of tuples.
    TuplesRead,
    /// Delete tuples.
    TuplesDelete,
    /// Read classes and instances of a namespace.
    ModelsRead,
    /// Define classes and write instances of a namespace.
    ModelsWrite,
    /// Change the recording policy.
    Recording,
    /// Read the federation's view (`/v1/sites`).
    Sites,
    /// Scrape `/metrics`.
    Metrics,
    /// Run deployments on a channel subtree.
    Deploy,
    /// Run automation rules on a channel subtree.
    Automate,
    /// Manage principals, tokens and grants; implies every other action.
    Admin,
}

/// What kind of resource an action takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// A lease pattern.
    Channel,
    /// A model namespace, or `*`.
    Namespace,
    /// None: the site itself.
    Site,
}

impl Action {
    /// Every action, in the order the docs list them.
    pub const ALL: [Action; 12] = [
        Action::Publish,
        Action::Subscribe,
        Action::TuplesRead,
        Action::TuplesDelete,
        Action::ModelsRead,
        Action::ModelsWrite,
        Action::Recording,
        Action::Sites,
        Action::Metrics,
        Action::Deploy,
        Action::Automate,
        Action::Admin,
    ];

    /// The action's name, as grants and error messages write it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::TuplesRead => "tuples.read",
            Action::TuplesDelete => "tuples.delete",
            Action::ModelsRead => "models.read",
            Action::ModelsWrite => "models.write",
            Action::Recording => "recording",
            Action::Sites => "sites",
            Action::Metrics => "metrics",
            Action::Deploy => "deploy",
            Action::Automate => "automate",
            Action::Admin => "admin",
        }
    }

    /// The action named `name`.
    ///
    /// # Errors
    /// [`Error::InvalidGrant`] listing the actions there are.
    pub fn parse(name: &str) -> Result<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
            Error::InvalidGrant(format!("unknown action {name:?}; the actions are {}", names.join(", ")))
        })
    }

    /// The kind of resource it takes.
    pub fn resource_kind(self) -> ResourceKind {
        match self {
            Action::Publish
            | Action::Subscribe
            | Action::TuplesRead
            | Action::TuplesDelete
            | Action::Deploy
            | Action::Automate => ResourceKind::Channel,
            Action::ModelsRead | Action::ModelsWrite => ResourceKind::Namespace,
            Action::Recording | Action::Sites | Action::Metrics | Action::Admin => ResourceKind::Site,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A grant's resource, validated for its action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Channels(Pattern),
    Namespace(String),
    AnyNamespace,
    Site,
}

/// One permission: an action on a resource pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    action: Action,
    scope: Scope,
}

/// Longest namespace name a grant may name, in bytes.
pub const GRANT_NAMESPACE_BYTES_MAX: usize = 256;

impl Grant {
    /// A grant of `action` on `resource`: a lease pattern for a channel
    /// action, a namespace or `*` for a model action, `*` (or empty) for a
    /// site action.
    ///
    /// # Errors
    /// [`Error::InvalidGrant`] saying what the resource should be, or the
    /// pattern's own error.
    pub fn new(action: Action, resource: &str) -> Result<Grant> {
        let scope = match action.resource_kind() {
            ResourceKind::Channel => Scope::Channels(Pattern::parse(resource).map_err(|e| {
                Error::InvalidGrant(format!("{action} takes a channel pattern such as /example.com/: {e}"))
            })?),
            ResourceKind::Namespace if resource == "*" => Scope::AnyNamespace,
            ResourceKind::Namespace => {
                if resource.is_empty()
                    || resource.len() > GRANT_NAMESPACE_BYTES_MAX
                    || resource.chars().any(|c| c.is_control() || c == '*')
                {
                    return Err(Error::InvalidGrant(format!(
                        "{action} takes a namespace such as root/cimv2, or * for every namespace, not {resource:?}"
                    )));
                }
                // Namespaces ignore ASCII case, as the repository's do.
                Scope::Namespace(resource.to_ascii_lowercase())
            }
            ResourceKind::Site if resource.is_empty() || resource == "*" => Scope::Site,
            ResourceKind::Site => {
                return Err(Error::InvalidGrant(format!("{action} is for the whole site: its resource is *")))
            }
        };
        Ok(Grant { action, scope })
    }

    /// The action it grants.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The resource, as written: a pattern, a namespace or `*`.
    pub fn resource(&self) -> &str {
        match &self.scope {
            Scope::Channels(p) => p.as_str(),
            Scope::Namespace(ns) => ns,
            Scope::AnyNamespace | Scope::Site => "*",
        }
    }

    /// Whether this grant alone allows `action` on `resource`.
    pub fn allows(&self, action: Action, resource: &Resource<'_>) -> bool {
        if self.action == Action::Admin {
            return true;
        }
        if self.action != action {
            return false;
        }
        match (&self.scope, resource) {
            (Scope::Channels(grant), Resource::Channel(channel)) => grant.matches(channel),
            (Scope::Channels(grant), Resource::Channels(wanted)) => covers(grant, wanted),
            (Scope::AnyNamespace, Resource::Namespace(_)) => true,
            (Scope::Namespace(ns), Resource::Namespace(wanted)) => ns.eq_ignore_ascii_case(wanted),
            (Scope::Site, Resource::Site) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.action, self.resource())
    }
}

/// What a request acts on.
#[derive(Clone, Copy, Debug)]
pub enum Resource<'a> {
    /// One channel (a publish, a tuple's latest value or history).
    Channel(&'a Channel),
    /// Every channel a pattern covers (a lease, a watch, a recursive
    /// query, an events page).
    Channels(&'a Pattern),
    /// A model namespace.
    Namespace(&'a str),
    /// The site itself (its policy, its metrics, its principals).
    Site,
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Channel(c) => write!(f, "channel {c}"),
            Resource::Channels(p) => write!(f, "channels {p}"),
            Resource::Namespace(ns) => write!(f, "namespace {ns}"),
            Resource::Site => f.write_str("this site"),
        }
    }
}

/// Whether any of `grants` allows `action` on `resource`.
pub fn allows<'g>(grants: impl IntoIterator<Item = &'g Grant>, action: Action, resource: &Resource<'_>) -> bool {
    grants.into_iter().any(|g| g.allows(action, resource))
}

/// Whether every channel `wanted` covers is covered by `grant`: the grant
/// is no longer than the request, and each of its elements is `*` or the
/// same literal as the request's.
pub fn covers(grant: &Pattern, wanted: &Pattern) -> bool {
    let (g, w) = (grant.segments(), wanted.segments());
    g.len() <= w.len()
        && g.iter().zip(w).all(|pair| match pair {
            (Segment::Any, _) => true,
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (Segment::Literal(_), Segment::Any) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(action: &str, resource: &str) -> Grant {
        Grant::new(Action::parse(action).expect("action"), resource).expect("grant")
    }

    fn ch(c: &str) -> Channel {
        Channel::parse(c).expect("channel")
    }

    fn pat(p: &str) -> Pattern {
        Pattern::parse(p).expect("pattern")
    }

    #[test]
    fn a_channel_grant_covers_its_subtree_and_nothing_else() {
        let g = grant("publish", "/a.org/node/");
        assert!(g.allows(Action::Publish, &Resource::Channel(&ch("/a.org/node/"))));
        assert!(g.allows(Action::Publish, &Resource::Channel(&ch("/a.org/node/h1/cpu/"))));
        assert!(!g.allows(Action::Publish, &Resource::Channel(&ch("/a.org/"))));
        assert!(!g.allows(Action::Publish, &Resource::Channel(&ch("/a.org/nodes/"))));
        assert!(!g.allows(Action::Subscribe, &Resource::Channel(&ch("/a.org/node/"))), "another action");
        let any = grant("subscribe", "/a.org/*/cpu/");
        assert!(any.allows(Action::Subscribe, &Resource::Channel(&ch("/a.org/h1/cpu/"))));
        assert!(!any.allows(Action::Subscribe, &Resource::Channel(&ch("/a.org/h1/mem/"))));
        assert!(grant("subscribe", "/").allows(Action::Subscribe, &Resource::Channel(&ch("/pepper/sites/"))));
    }

    /// A pattern request is allowed only when every channel it can reach is.
    #[test]
    fn a_pattern_request_needs_a_grant_over_all_of_it() {
        for (grant_p, wanted, ok) in [
            ("/a.org/", "/a.org/", true),
            ("/a.org/", "/a.org/x/*/", true),
            ("/a.org/x/", "/a.org/", false),
            ("/a.org/*/", "/a.org/h1/cpu/", true),
            ("/a.org/*/", "/a.org/*/", true),
            ("/a.org/h1/", "/a.org/*/", false),
            ("/", "/*/", true),
            ("/*/", "/", false),
            ("/b.org/", "/a.org/", false),
        ] {
            assert_eq!(covers(&pat(grant_p), &pat(wanted)), ok, "{grant_p} over {wanted}");
            let g = grant("subscribe", grant_p);
            assert_eq!(g.allows(Action::Subscribe, &Resource::Channels(&pat(wanted))), ok, "{grant_p} over {wanted}");
        }
    }

    #[test]
    fn namespaces_site_actions_and_admin() {
        let g = grant("models.write", "root/cimv2");
        assert!(g.allows(Action::ModelsWrite, &Resource::Namespace("root/cimv2")));
        assert!(!g.allows(Action::ModelsWrite, &Resource::Namespace("root/other")));
        assert!(g.allows(Action::ModelsWrite, &Resource::Namespace("ROOT/CIMv2")), "namespaces ignore case");
        assert_eq!(grant("models.read", "Root/CIMV2").resource(), "root/cimv2");
        assert!(!g.allows(Action::ModelsRead, &Resource::Namespace("root/cimv2")), "write is not read");
        assert!(grant("models.read", "*").allows(Action::ModelsRead, &Resource::Namespace("anything")));
        assert!(grant("recording", "*").allows(Action::Recording, &Resource::Site));
        assert!(!grant("recording", "*").allows(Action::Sites, &Resource::Site));
        let admin = grant("admin", "");
        for action in Action::ALL {
            assert!(admin.allows(action, &Resource::Site), "{action}");
            assert!(admin.allows(action, &Resource::Channel(&ch("/x/"))), "{action}");
        }
        assert!(!allows(&[], Action::Publish, &Resource::Channel(&ch("/x/"))), "deny by default");
    }

    #[test]
    fn bad_grants_say_what_the_resource_should_be() {
        for (action, resource, needle) in [
            ("publish", "a.org", "channel pattern"),
            ("publish", "/a.org", "channel pattern"),
            ("models.read", "", "namespace"),
            ("models.read", "root/*", "namespace"),
            ("recording", "/a/", "whole site"),
        ] {
            let action = Action::parse(action).expect("action");
            let e = Grant::new(action, resource).expect_err(resource).to_string();
            assert!(e.contains(needle), "{action} {resource}: {e}");
        }
        let e = Action::parse("write").expect_err("unknown").to_string();
        assert!(e.contains("publish") && e.contains("admin"), "{e}");
        assert_eq!(grant("publish", "/a/").to_string(), "publish on /a/");
        assert_eq!(grant("sites", "").resource(), "*");
    }
}
