//! Input checks that every record passes before it is queued for the writer.
//!
//! Lengths, the `00` byte that separates key parts, and channels: every
//! channel and lease pattern the store takes is one the router parses
//! (`pepper_router::Channel` and `Pattern`), so catch-up from the log, live
//! routing and the writer's anycast choice all read the same names the same
//! way.

use crate::error::{Error, Result};
use crate::limits::*;
use crate::record::{Body, Party};

/// Checks a channel name: PsEPR's grammar, as the router parses it.
///
/// # Errors
/// `InvalidInput` or `TooLarge` naming the rule it breaks.
pub fn channel(what: &'static str, c: &str) -> Result<()> {
    if c.len() > CHANNEL_BYTES_MAX {
        return Err(Error::TooLarge { what, size: c.len(), max: CHANNEL_BYTES_MAX });
    }
    no_nul(what, c)?;
    pepper_router::Channel::parse(c).map(|_| ()).map_err(|e| Error::invalid(what, e.to_string()))
}

fn field(f: &str) -> Result<()> {
    if f.is_empty() {
        return Err(Error::invalid("field", "must not be empty"));
    }
    bounded("field", f, FIELD_BYTES_MAX)?;
    no_nul("field", f)
}

fn bounded(what: &'static str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(Error::TooLarge { what, size: s.len(), max });
    }
    Ok(())
}

fn id(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    bounded(what, s, ID_BYTES_MAX)
}

fn no_nul(what: &'static str, s: &str) -> Result<()> {
    if s.bytes().any(|b| b == 0) {
        return Err(Error::invalid(what, "must not contain a NUL byte"));
    }
    Ok(())
}

fn party(p: &Party) -> Result<()> {
    bounded("service", &p.service, PARTY_BYTES_MAX)?;
    bounded("instance", &p.instance, PARTY_BYTES_MAX)
}

fn lease_types(types: &[String]) -> Result<()> {
    if types.len() > LEASE_TYPES_MAX {
        return Err(Error::TooLarge { what: "lease types", size: types.len(), max: LEASE_TYPES_MAX });
    }
    types.iter().try_for_each(|t| bounded("lease type", t, TYPE_BYTES_MAX))
}

/// Checks one record body.
///
/// # Errors
/// `InvalidInput` or `TooLarge` naming the offending field.
pub fn body(b: &Body) -> Result<()> {
    match b {
        Body::Event(e) => {
            channel("channel", &e.channel)?;
            bounded("event id", &e.id, ID_BYTES_MAX)?;
            if e.event_type.is_empty() {
                return Err(Error::invalid("type", "must not be empty"));
            }
            bounded("type", &e.event_type, TYPE_BYTES_MAX)?;
            party(&e.from)?;
            bounded("to.service", e.to.service.as_deref().unwrap_or(""), PARTY_BYTES_MAX)?;
            bounded("to.instance", e.to.instance.as_deref().unwrap_or(""), PARTY_BYTES_MAX)?;
            if !e.assigned.is_empty() {
                return Err(Error::invalid("assigned", "is chosen by the writer at commit; leave it empty"));
            }
            if let Some(t) = &e.tuple {
                field(&t.field)?;
            }
            Ok(())
        }
        Body::TupleSet(t) => {
            channel("channel", &t.channel)?;
            field(&t.field)?;
            party(&t.source)
        }
        Body::LeaseGrant(g) => {
            id("lease id", &g.id)?;
            if g.pattern.len() > CHANNEL_BYTES_MAX {
                return Err(Error::TooLarge { what: "lease pattern", size: g.pattern.len(), max: CHANNEL_BYTES_MAX });
            }
            no_nul("lease pattern", &g.pattern)?;
            pepper_router::Pattern::parse(&g.pattern).map_err(|e| Error::invalid("lease pattern", e.to_string()))?;
            lease_types(&g.types)?;
            if let Some(group) = &g.group {
                id("lease group", group)?;
            }
            Ok(())
        }
        Body::LeaseRenew(r) => id("lease id", &r.id),
        Body::LeaseRelease(e) | Body::LeaseExpire(e) => id("lease id", &e.id),
        Body::DocPut(d) => doc_key(&d.key),
        Body::DocDelete(d) => doc_key(&d.key),
        Body::ModelClass(c) => {
            crate::models::check_part("namespace", &c.namespace)?;
            crate::models::check_part("class", &c.name)
        }
        Body::ModelPut(p) => {
            crate::models::check_part("namespace", &p.namespace)?;
            crate::models::check_part("class", &p.class)?;
            crate::models::check_part("instance identity", &p.identity)?;
            p.refs.iter().try_for_each(|r| crate::models::check_part("reference", r))
        }
        Body::ModelDelete(d) => {
            crate::models::check_part("namespace", &d.namespace)?;
            crate::models::check_part("instance identity", &d.identity)
        }
        Body::TupleExpire(t) | Body::TupleDelete(t) => {
            channel("channel", &t.channel)?;
            field(&t.field)
        }
        Body::TupleImport(t) => {
            channel("channel", &t.channel)?;
            field(&t.field)?;
            party(&t.source)
        }
        Body::Monitor(m) => {
            monitor_pattern(&m.pattern)?;
            if m.marks.len() > MONITOR_MARKS_MAX {
                return Err(Error::TooLarge { what: "monitor marks", size: m.marks.len(), max: MONITOR_MARKS_MAX });
            }
            for (site, _) in &m.marks {
                crate::store::validate_site(site)?;
            }
            if !m.source.is_empty() {
                crate::store::validate_site(&m.source)?;
            }
            bounded("monitor reason", &m.reason, MONITOR_REASON_BYTES_MAX)
        }
    }
}

/// Checks a recording pattern: a channel (no wildcards) that names a
/// subtree, so it ends in `/`.
///
/// # Errors
/// `InvalidInput` or `TooLarge` naming the rule it breaks.
pub fn monitor_pattern(p: &str) -> Result<()> {
    channel("recording pattern", p)?;
    if !p.ends_with('/') {
        return Err(Error::invalid("recording pattern", "must name a subtree: end it with '/'"));
    }
    Ok(())
}

fn doc_key(k: &str) -> Result<()> {
    if k.is_empty() {
        return Err(Error::invalid("document key", "must not be empty"));
    }
    bounded("document key", k, DOC_KEY_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TupleSet;

    fn tuple(channel: &str, field: &str) -> Body {
        Body::TupleSet(TupleSet {
            channel: channel.into(),
            field: field.into(),
            value: "v".into(),
            expires_at_us: None,
            source: Party::default(),
        })
    }

    #[test]
    fn channels_must_be_rooted_bounded_and_nul_free() {
        assert!(body(&tuple("/a/b/", "f")).is_ok());
        for bad in ["", "/", "a/", "/a", "/a\0/", "/a//b/", "/a/*/"] {
            assert!(matches!(body(&tuple(bad, "f")), Err(Error::InvalidInput { .. })), "{bad:?}");
        }
        let long = format!("/{}/", "x".repeat(CHANNEL_BYTES_MAX));
        assert!(matches!(body(&tuple(&long, "f")), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn fields_must_be_non_empty_bounded_and_nul_free() {
        assert!(body(&tuple("/a/", "")).is_err());
        assert!(body(&tuple("/a/", "x\0y")).is_err());
        assert!(matches!(body(&tuple("/a/", &"f".repeat(FIELD_BYTES_MAX + 1))), Err(Error::TooLarge { .. })));
    }
}
