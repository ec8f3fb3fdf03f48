//! Input checks that every record passes before it is queued for the writer.
//!
//! Lengths, the `00` byte that separates key parts, control characters, and
//! channels. Every record passes here, whether a client published it or a
//! peer forwarded it, so a record that breaks a rule never reaches the log
//! of any site. Names that reach a protocol line or header (an event's type
//! is the `event:` line of an SSE stream; ids, parties and fields are XML
//! attribute and element text) hold no control character: a line break in
//! one would end the line early, and C0 characters are not allowed in XML.
//!
//! Every
//! channel and lease pattern the store takes is one the router parses
//! (`pepper_router::Channel` and `Pattern`), so catch-up from the log, live
//! routing and the writer's anycast choice all read the same names the same
//! way.

use crate::error::{Error, Result};
use crate::limits::*;
use crate::record::{Body, Event, Party};

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
    name("field", f, FIELD_BYTES_MAX)
}

/// Checks a name that reaches protocol lines: at most `max` bytes and no
/// control character (C0, DEL or C1), which covers NUL, CR and LF.
///
/// # Errors
/// `TooLarge` or `InvalidInput` naming the character.
pub fn name(what: &'static str, s: &str, max: usize) -> Result<()> {
    bounded(what, s, max)?;
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(Error::invalid(what, format!("must not contain the control character {c:?}"))),
        None => Ok(()),
    }
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
    name(what, s, ID_BYTES_MAX)
}

/// An id as stored: non-empty and bounded.
fn existing_id(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    bounded(what, s, ID_BYTES_MAX)
}

/// A channel as stored: bounded, rooted, without the `00` key separator.
fn existing_channel(c: &str) -> Result<()> {
    bounded("channel", c, CHANNEL_BYTES_MAX)?;
    if !c.starts_with('/') {
        return Err(Error::invalid("channel", "must start with '/'"));
    }
    no_nul("channel", c)
}

/// A tuple field as stored: non-empty, bounded, without the `00` key
/// separator.
fn existing_field(f: &str) -> Result<()> {
    if f.is_empty() {
        return Err(Error::invalid("field", "must not be empty"));
    }
    bounded("field", f, FIELD_BYTES_MAX)?;
    no_nul("field", f)
}

fn no_nul(what: &'static str, s: &str) -> Result<()> {
    if s.bytes().any(|b| b == 0) {
        return Err(Error::invalid(what, "must not contain a NUL byte"));
    }
    Ok(())
}

fn party(p: &Party) -> Result<()> {
    name("service", &p.service, PARTY_BYTES_MAX)?;
    name("instance", &p.instance, PARTY_BYTES_MAX)
}

fn lease_types(types: &[String]) -> Result<()> {
    if types.len() > LEASE_TYPES_MAX {
        return Err(Error::TooLarge { what: "lease types", size: types.len(), max: LEASE_TYPES_MAX });
    }
    types.iter().try_for_each(|t| name("lease type", t, TYPE_BYTES_MAX))
}

/// Checks one event, as [`body`] does.
///
/// # Errors
/// `InvalidInput` or `TooLarge` naming the offending field.
pub fn event(e: &Event) -> Result<()> {
    channel("channel", &e.channel)?;
    name("event id", &e.id, ID_BYTES_MAX)?;
    if e.event_type.is_empty() {
        return Err(Error::invalid("type", "must not be empty"));
    }
    name("type", &e.event_type, TYPE_BYTES_MAX)?;
    party(&e.from)?;
    name("to.service", e.to.service.as_deref().unwrap_or(""), PARTY_BYTES_MAX)?;
    name("to.instance", e.to.instance.as_deref().unwrap_or(""), PARTY_BYTES_MAX)?;
    if !e.assigned.is_empty() {
        return Err(Error::invalid("assigned", "is chosen by the writer at commit; leave it empty"));
    }
    if let Some(t) = &e.tuple {
        field(&t.field)?;
    }
    Ok(())
}

/// Checks one record body.
///
/// # Errors
/// `InvalidInput` or `TooLarge` naming the offending field.
pub fn body(b: &Body) -> Result<()> {
    match b {
        Body::Event(e) => event(e),
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
        // Records that name existing state (a lease to renew or end, a
        // tuple to expire, delete or copy) take the names as stored, under
        // the rules of when they were stored: a lease or tuple logged before
        // a rule was added must still be able to end, and a replica's
        // history to be copied.
        Body::LeaseRenew(r) => existing_id("lease id", &r.id),
        Body::LeaseRelease(e) | Body::LeaseExpire(e) => existing_id("lease id", &e.id),
        Body::DocPut(d) => doc_key(&d.key),
        Body::DocDelete(d) => doc_key(&d.key),
        Body::ModelClass(c) => {
            model_part("namespace", &c.namespace)?;
            model_part("class", &c.name)
        }
        Body::ModelPut(p) => {
            model_part("namespace", &p.namespace)?;
            model_part("class", &p.class)?;
            model_part("instance identity", &p.identity)?;
            p.refs.iter().try_for_each(|r| model_part("reference", r))
        }
        Body::ModelDelete(d) => {
            model_part("namespace", &d.namespace)?;
            model_part("instance identity", &d.identity)
        }
        Body::TupleExpire(t) | Body::TupleDelete(t) => {
            existing_channel(&t.channel)?;
            existing_field(&t.field)
        }
        Body::TupleImport(t) => {
            existing_channel(&t.channel)?;
            existing_field(&t.field)?;
            bounded("service", &t.source.service, PARTY_BYTES_MAX)?;
            bounded("instance", &t.source.instance, PARTY_BYTES_MAX)
        }
        Body::Monitor(m) => {
            monitor_pattern(&m.pattern)?;
            if m.marks.len() > MONITOR_MARKS_MAX {
                return Err(Error::TooLarge { what: "monitor marks", size: m.marks.len(), max: MONITOR_MARKS_MAX });
            }
            for (site, _) in &m.marks {
                validate_site(site)?;
            }
            if !m.source.is_empty() {
                validate_site(&m.source)?;
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

/// Checks a site name: 1 to [`SITE_BYTES_MAX`] bytes, no control
/// characters, no `/`. The rule for this site's own name, for origins of
/// received records, and for peers.
///
/// # Errors
/// `InvalidInput` saying which part of the rule the name breaks.
pub fn validate_site(site: &str) -> Result<()> {
    if site.is_empty() || site.len() > SITE_BYTES_MAX {
        return Err(Error::invalid("site", format!("site name must be 1 to {SITE_BYTES_MAX} bytes")));
    }
    if site.chars().any(|c| c.is_control() || c == '/') {
        return Err(Error::invalid("site", "site name may not contain control characters or '/'"));
    }
    Ok(())
}

/// Checks a part of a model key (namespace, identity, class name, reference):
/// non-empty and free of the `00` byte that separates key parts.
fn model_part(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() || s.bytes().any(|b| b == 0) {
        return Err(Error::invalid(what, "must be non-empty and contain no NUL byte"));
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
    use crate::record::{Distribution, Target, TupleSet};

    fn event(event_type: &str, id: &str) -> Body {
        Body::Event(Event {
            id: id.into(),
            channel: "/x/".into(),
            event_type: event_type.into(),
            from: Party::default(),
            to: Target::default(),
            distribution: Distribution::All,
            payload: b"null".to_vec(),
            assigned: Vec::new(),
            principal: None,
            tuple: None,
        })
    }

    /// A lease or tuple stored before a rule was added can still end: the
    /// records that name existing state take its names as stored.
    #[test]
    fn records_that_name_existing_state_take_old_names() {
        let old = "/a/\u{200B}b/";
        let end = crate::record::TupleEnd { channel: old.into(), field: "f\tg".into() };
        assert!(body(&Body::TupleExpire(end.clone())).is_ok());
        assert!(body(&Body::TupleDelete(end)).is_ok());
        let lease = crate::record::LeaseEnd { id: "l\n1".into() };
        assert!(body(&Body::LeaseExpire(lease.clone())).is_ok());
        assert!(body(&Body::LeaseRelease(lease)).is_ok());
        assert!(body(&tuple(old, "f")).is_err(), "a new tuple takes the new rules");
        let nul = crate::record::TupleEnd { channel: "/a\0/".into(), field: "f".into() };
        assert!(body(&Body::TupleExpire(nul)).is_err(), "the key separator never");
    }

    /// An event type is the `event:` line of an SSE stream: a line break in
    /// it broke every stream that reached the event, on every site.
    #[test]
    fn names_that_reach_protocol_lines_hold_no_control_characters() {
        assert!(body(&event("t", "e1")).is_ok());
        assert!(body(&event("ünïcode type", "e1")).is_ok());
        for bad in ["x\ny", "x\ry", "x\u{1}", "x\u{85}y", "x\u{7f}"] {
            let err = body(&event(bad, "e1")).expect_err(bad);
            assert!(err.to_string().contains("control character"), "{err}");
            assert!(body(&event("t", bad)).is_err(), "id {bad:?}");
        }
    }

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
        assert!(body(&tuple("/a/", "x\ny")).is_err());
        assert!(matches!(body(&tuple("/a/", &"f".repeat(FIELD_BYTES_MAX + 1))), Err(Error::TooLarge { .. })));
    }
}
