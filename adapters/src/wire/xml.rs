//! The PsEPR XML envelope, read and written with quick-xml.
//!
//! ```xml
//! <event xmlns="http://psepr.org/xs/event" id="e-1" distribution="all">
//!   <to><channel>/example.com/node/h1/</channel><service>pldb</service></to>
//!   <from><service>agent</service><instance>h1</instance></from>
//!   <payload xmlns="http://psepr.org/xs/payload/attribute">
//!     <field>load</field><value>0.5</value><expire>90</expire>
//!   </payload>
//! </event>
//! ```
//!
//! Several events go in one `<events>` element. `to/channel` is required;
//! `to/service` and `to/instance` narrow the receivers. The payload's
//! namespace is its type. pepper adds attributes PsEPR did not have: `id`
//! and `distribution` on input, and `seq`, `time` and `site` on output.
//!
//! Payloads map to JSON: the attribute payload to
//! `{"field", "value", "expire"}` (expire a number of seconds), any other
//! payload with child elements to an object of their texts, and a payload of
//! text alone to a string. A payload nested deeper than that is refused: send
//! it as JSON.
//!
//! Untrusted XML is read defensively: no DTD is accepted (so no entity can
//! be declared, let alone expanded), only XML's five predefined entities and
//! character references are resolved, nesting is capped at [`XML_DEPTH_MAX`]
//! and the element count at [`XML_ELEMENTS_MAX`]; the HTTP body limit caps
//! the rest. Every refusal is a 400 that says where and why.

use std::borrow::Cow;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use quick_xml::{Writer, XmlVersion};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::wire::envelope::{
    canonical_type, type_namespace, DistributionJson, EventIn, EventOut, PartyJson, TargetJson,
};

/// The namespace of the PsEPR event envelope.
pub const EVENT_NS: &str = "http://psepr.org/xs/event";

/// Deepest element nesting accepted: `events/event/payload/child` is 4.
pub const XML_DEPTH_MAX: usize = 8;

/// Most elements one XML body may hold.
pub const XML_ELEMENTS_MAX: usize = 16_384;

#[derive(Debug, Default)]
struct Element {
    ns: Option<String>,
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn child_text(&self, name: &str) -> Option<String> {
        self.child(name).map(Element::value)
    }

    /// The element's text: as written, or decoded from a JSON string when
    /// it carries `encoding="json"` (see [`write_events`]). Text that does
    /// not decode is kept as written.
    fn value(&self) -> String {
        match self.attr("encoding") {
            Some("json") => serde_json::from_str(&self.text).unwrap_or_else(|_| self.text.clone()),
            _ => self.text.clone(),
        }
    }

    /// The payload key the element stands for: `key` of an `<entry>`, else
    /// its name.
    fn key(&self) -> String {
        match (self.name.as_str(), self.attr("key"), self.attr("key-encoding")) {
            ("entry", Some(k), Some("json")) => serde_json::from_str(k).unwrap_or_else(|_| k.to_string()),
            ("entry", Some(k), _) => k.to_string(),
            _ => self.name.clone(),
        }
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn bad(reader_pos: u64, what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_xml(format!("at byte {reader_pos}: {what}"))
}

/// Parses a document into a tree, enforcing the limits.
fn parse_tree(input: &str) -> Result<Element, ApiError> {
    let mut reader = NsReader::from_str(input);
    let config = reader.config_mut();
    // Text is trimmed per element when it closes, not per text node: a
    // node split by `&amp;` keeps its inner spaces.
    config.trim_text(false);
    config.expand_empty_elements = true;
    config.check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let pos = reader.buffer_position();
        let (ns, event) = reader.read_resolved_event().map_err(|e| bad(pos, e))?;
        let ns = match ns {
            ResolveResult::Bound(n) => Some(n.0.to_string()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(p) => return Err(bad(pos, format!("namespace prefix {p:?} is not declared"))),
        };
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(bad(pos, "content after the root element"));
                }
                if stack.len() >= XML_DEPTH_MAX {
                    return Err(bad(pos, format!("elements nest deeper than {XML_DEPTH_MAX}")));
                }
                elements += 1;
                if elements > XML_ELEMENTS_MAX {
                    return Err(bad(pos, format!("more than {XML_ELEMENTS_MAX} elements")));
                }
                let mut el = Element { ns, name: start.local_name().as_ref().to_string(), ..Element::default() };
                for attr in start.attributes() {
                    let attr = attr.map_err(|e| bad(pos, e))?;
                    if attr.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let value = attr.normalized_value(XmlVersion::Implicit1_0).map_err(|e| bad(pos, e))?;
                    el.attrs.push((attr.key.local_name().as_ref().to_string(), value.into_owned()));
                }
                stack.push(el);
            }
            Event::End(_) => {
                let Some(mut el) = stack.pop() else { return Err(bad(pos, "closing tag without an opening one")) };
                let trimmed = el.text.trim();
                if trimmed.len() != el.text.len() {
                    el.text = trimmed.to_string();
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => push_text(&mut stack, pos, &t.xml10_content())?,
            Event::CData(c) => {
                push_text(&mut stack, pos, &c.into_inner())?;
            }
            Event::GeneralRef(r) => {
                let resolved: Cow<'_, str> = match r.resolve_char_ref().map_err(|e| bad(pos, e))? {
                    Some(c) => c.to_string().into(),
                    None => {
                        let name = r.xml10_content();
                        match resolve_predefined_entity(&name) {
                            Some(s) => s.into(),
                            None => {
                                return Err(bad(
                                    pos,
                                    format!("entity &{name}; is not allowed: pepper expands no entities"),
                                ))
                            }
                        }
                    }
                };
                push_text(&mut stack, pos, &resolved)?;
            }
            Event::DocType(_) => {
                return Err(bad(pos, "DOCTYPE is not allowed: pepper accepts no DTD and declares no entities"))
            }
            Event::Empty(_) => return Err(bad(pos, "unexpected empty element")),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(ApiError::invalid_xml(format!("document ends inside <{}>", stack[stack.len() - 1].name)));
    }
    root.ok_or_else(|| ApiError::invalid_xml("the body holds no XML element"))
}

fn push_text(stack: &mut [Element], pos: u64, text: &str) -> Result<(), ApiError> {
    match stack.last_mut() {
        Some(el) => {
            el.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(bad(pos, "text outside the root element")),
    }
}

/// Parses an `<event>` or an `<events>` body into events, in order.
///
/// # Errors
/// 400 `invalid_xml` naming the problem.
pub fn parse_events(input: &str) -> Result<Vec<EventIn>, ApiError> {
    parse_body(input).map(|(events, _)| events)
}

/// Like [`parse_events`], and says whether the body was a single `<event>`
/// (`true`) or an `<events>` batch.
///
/// # Errors
/// 400 `invalid_xml` naming the problem.
pub fn parse_body(input: &str) -> Result<(Vec<EventIn>, bool), ApiError> {
    let root = parse_tree(input)?;
    let in_ns = |el: &Element| el.ns.as_deref() == Some(EVENT_NS);
    let single = root.name == "event";
    parse_root(&root, in_ns).map(|events| (events, single))
}

fn parse_root(root: &Element, in_ns: impl Fn(&Element) -> bool) -> Result<Vec<EventIn>, ApiError> {
    match root.name.as_str() {
        "event" if in_ns(root) => Ok(vec![event(root)?]),
        "events" if in_ns(root) => root
            .children
            .iter()
            .enumerate()
            .map(|(i, el)| match el.name.as_str() {
                "event" if in_ns(el) => event(el),
                other => Err(ApiError::invalid_xml(format!("<events> child {} is <{other}>, not <event>", i + 1))),
            })
            .collect(),
        other => Err(ApiError::invalid_xml(format!(
            "root element is <{other}> in namespace {:?}; expected <event> or <events> in {EVENT_NS}",
            root.ns.as_deref().unwrap_or("none")
        ))),
    }
}

fn event(el: &Element) -> Result<EventIn, ApiError> {
    let to = el.child("to").ok_or_else(|| ApiError::invalid_xml("<event> has no <to>"))?;
    let channel = to.child_text("channel").ok_or_else(|| ApiError::invalid_xml("<to> has no <channel>"))?;
    let from = el.child("from");
    let payload = el.child("payload").ok_or_else(|| ApiError::invalid_xml("<event> has no <payload>"))?;
    let event_type = match payload.ns.as_deref() {
        Some(ns) if ns != EVENT_NS => ns.to_string(),
        _ => {
            return Err(ApiError::invalid_xml(
                "<payload> has no namespace of its own; its namespace is the event's type",
            ))
        }
    };
    let distribution = match el.attr("distribution") {
        None | Some("all") => DistributionJson::All,
        Some("one") => DistributionJson::One,
        Some(other) => {
            return Err(ApiError::invalid_xml(format!("distribution {other:?} is neither \"all\" nor \"one\"")))
        }
    };
    Ok(EventIn {
        id: el.attr("id").map(str::to_string),
        channel,
        payload: payload_json(canonical_type(&event_type), payload)?,
        event_type,
        from: PartyJson {
            service: from.and_then(|f| f.child_text("service")).unwrap_or_default(),
            instance: from.and_then(|f| f.child_text("instance")).unwrap_or_default(),
        },
        to: TargetJson { service: to.child_text("service"), instance: to.child_text("instance") },
        distribution,
    })
}

fn payload_json(event_type: &str, payload: &Element) -> Result<Value, ApiError> {
    if let Some(nested) = payload.children.iter().find(|c| !c.children.is_empty()) {
        return Err(ApiError::invalid_xml(format!(
            "payload element <{}> has child elements; send nested payloads as JSON",
            nested.name
        )));
    }
    if event_type == "attribute" {
        let field =
            payload.child_text("field").ok_or_else(|| ApiError::invalid_xml("attribute payload has no <field>"))?;
        let value = payload.child_text("value").unwrap_or_default();
        let mut out = Map::new();
        out.insert("field".into(), Value::String(field));
        out.insert("value".into(), Value::String(value));
        if let Some(expire) = payload.child_text("expire") {
            let secs: u64 = expire.trim().parse().map_err(|_| {
                ApiError::invalid_xml(format!("attribute <expire> {expire:?} is not a whole number of seconds"))
            })?;
            out.insert("expire".into(), Value::from(secs));
        }
        return Ok(Value::Object(out));
    }
    if payload.children.is_empty() {
        return Ok(Value::String(payload.value()));
    }
    Ok(Value::Object(payload.children.iter().map(|c| (c.key(), Value::String(c.value()))).collect()))
}

/// Writes events as one `<events>` document (or a single `<event>`).
pub fn write_events(events: &[EventOut], single: bool) -> String {
    let mut w = Writer::new(Vec::new());
    // Writing into a Vec cannot fail, so the io results below are ignored.
    if single {
        if let Some(e) = events.first() {
            write_event(&mut w, e, true);
        }
    } else {
        let mut start = BytesStart::new("events");
        start.push_attribute(("xmlns", EVENT_NS));
        let _ = w.write_event(Event::Start(start));
        for e in events {
            write_event(&mut w, e, false);
        }
        let _ = w.write_event(Event::End(BytesEnd::new("events")));
    }
    String::from_utf8_lossy(&w.into_inner()).into_owned()
}

/// Whether XML 1.0 allows `c` in a document at all, escaped or not.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Longest payload key written as an element name of its own.
const XML_NAME_BYTES_MAX: usize = 128;

/// Whether a payload key can be an element name as it is: ASCII letters,
/// digits, `_`, `-` and `.`, starting with a letter or `_`, not starting
/// with `xml` (reserved). Any other key is written as `<entry key="...">`,
/// whose attribute value escaping covers every string.
fn plain_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && key.len() <= XML_NAME_BYTES_MAX
        && !key.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("xml"))
}

/// Text as XML character data: escaped as it is when XML can carry it
/// exactly, else (a character XML 1.0 forbids, such as U+0001, a CR, which
/// parsers turn into LF, or white space at either end, which the reader
/// trims) as a JSON string literal, flagged by
/// `encoding="json"` on the element. A JSON literal of such text is ASCII
/// apart from the text's own printable characters, all of which XML allows.
fn xml_text(text: &str) -> (Cow<'_, str>, bool) {
    // Leading and trailing white space too: the reader trims element text.
    if text.chars().all(|c| xml_char(c) && c != '\r') && text.trim() == text {
        return (Cow::Borrowed(text), false);
    }
    let json = serde_json::Value::String(text.to_string()).to_string();
    let json = json.replace('\u{FFFE}', "\\ufffe").replace('\u{FFFF}', "\\uffff");
    (Cow::Owned(json), true)
}

/// An attribute value XML can carry: characters XML 1.0 forbids become
/// U+FFFD. Only records logged before names were checked hold any.
fn xml_attr(value: &str) -> Cow<'_, str> {
    match value.chars().all(xml_char) {
        true => Cow::Borrowed(value),
        false => Cow::Owned(value.chars().map(|c| if xml_char(c) { c } else { '\u{FFFD}' }).collect()),
    }
}

/// An attribute, escaped so that it reads back exactly: besides the usual
/// escapes, tab, LF and CR as character references, which attribute value
/// normalization keeps (it turns the characters themselves into spaces).
fn exact_attr<'a>(key: &'a str, value: &str) -> quick_xml::events::attributes::Attribute<'a> {
    let escaped = quick_xml::escape::escape(value).replace('\t', "&#9;").replace('\n', "&#10;").replace('\r', "&#13;");
    quick_xml::events::attributes::Attribute { key: quick_xml::name::QName(key), value: Cow::Owned(escaped) }
}

/// The start tag for a payload key: `<key>`, or `<entry key="...">` (with
/// `key-encoding="json"` and the key as a JSON string literal when it holds
/// a character XML 1.0 forbids).
fn start_of(name: &str) -> BytesStart<'_> {
    if plain_name(name) {
        return BytesStart::new(name);
    }
    let mut start = BytesStart::new("entry");
    if name.chars().all(xml_char) {
        start.push_attribute(exact_attr("key", name));
    } else {
        let (json, _) = xml_text(name);
        start.push_attribute(exact_attr("key", &json));
        start.push_attribute(("key-encoding", "json"));
    }
    start
}

fn end_of(name: &str) -> BytesEnd<'_> {
    BytesEnd::new(if plain_name(name) { name } else { "entry" })
}

/// Writes `text` as the content of the element just started by `start`.
fn text_in(w: &mut Writer<Vec<u8>>, mut start: BytesStart<'_>, end: BytesEnd<'_>, text: &str) {
    let (text, json) = xml_text(text);
    if json {
        start.push_attribute(("encoding", "json"));
    }
    let _ = w.write_event(Event::Start(start));
    let _ = w.write_event(Event::Text(BytesText::new(&text)));
    let _ = w.write_event(Event::End(end));
}

fn text_element(w: &mut Writer<Vec<u8>>, name: &str, text: &str) {
    text_in(w, start_of(name), end_of(name), text);
}

/// Writes a JSON value as element `name`: an object as child elements, an
/// array as one element per item (so `{"attribute": [a, b]}` becomes two
/// `<attribute>` elements, as in a PLDB reply), anything else as text.
fn write_value(w: &mut Writer<Vec<u8>>, name: &str, v: &Value) {
    match v {
        Value::Array(items) => items.iter().for_each(|item| write_value(w, name, item)),
        Value::Object(fields) => {
            let _ = w.write_event(Event::Start(start_of(name)));
            for (k, v) in fields {
                write_value(w, k, v);
            }
            let _ = w.write_event(Event::End(end_of(name)));
        }
        Value::String(s) => text_element(w, name, s),
        Value::Null => text_element(w, name, ""),
        other => text_element(w, name, &other.to_string()),
    }
}

fn write_event(w: &mut Writer<Vec<u8>>, e: &EventOut, with_ns: bool) {
    let mut start = BytesStart::new("event");
    if with_ns {
        start.push_attribute(("xmlns", EVENT_NS));
    }
    let seq = e.seq.to_string();
    start.push_attribute(("id", xml_attr(&e.id).as_ref()));
    start.push_attribute(("distribution", if e.distribution == DistributionJson::One { "one" } else { "all" }));
    start.push_attribute(("seq", seq.as_str()));
    start.push_attribute(("time", e.time.as_str()));
    start.push_attribute(("site", xml_attr(&e.site).as_ref()));
    let _ = w.write_event(Event::Start(start));
    let _ = w.write_event(Event::Start(BytesStart::new("to")));
    text_element(w, "channel", &e.channel);
    if let Some(s) = &e.to.service {
        text_element(w, "service", s);
    }
    if let Some(i) = &e.to.instance {
        text_element(w, "instance", i);
    }
    let _ = w.write_event(Event::End(BytesEnd::new("to")));
    let _ = w.write_event(Event::Start(BytesStart::new("from")));
    text_element(w, "service", &e.from.service);
    text_element(w, "instance", &e.from.instance);
    let _ = w.write_event(Event::End(BytesEnd::new("from")));
    let ns = type_namespace(&e.event_type);
    let mut payload = BytesStart::new("payload");
    payload.push_attribute(("xmlns", xml_attr(&ns).as_ref()));
    match &e.payload {
        Value::Object(fields) => {
            let _ = w.write_event(Event::Start(payload));
            for (k, v) in fields {
                write_value(w, k, v);
            }
            let _ = w.write_event(Event::End(BytesEnd::new("payload")));
        }
        Value::String(s) => text_in(w, payload, BytesEnd::new("payload"), s),
        Value::Null => {
            let _ = w.write_event(Event::Start(payload));
            let _ = w.write_event(Event::End(BytesEnd::new("payload")));
        }
        other => text_in(w, payload, BytesEnd::new("payload"), &other.to_string()),
    }
    let _ = w.write_event(Event::End(BytesEnd::new("event")));
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTR: &str = r#"<?xml version="1.0"?>
        <event xmlns="http://psepr.org/xs/event" id="e-1" distribution="one">
          <to><channel>/example.com/node/h1/</channel><service>pldb</service></to>
          <from><service>agent</service><instance>h1</instance></from>
          <payload xmlns="http://psepr.org/xs/payload/attribute">
            <field>load</field><value>0.5 &amp; rising &#x263A;</value><expire>90</expire>
          </payload>
        </event>"#;

    #[test]
    fn reads_the_psepr_attribute_envelope() {
        let events = parse_events(ATTR).expect("valid");
        let e = &events[0];
        assert_eq!(e.channel, "/example.com/node/h1/");
        assert_eq!(e.id.as_deref(), Some("e-1"));
        assert_eq!(e.distribution, DistributionJson::One);
        assert_eq!(e.to.service.as_deref(), Some("pldb"));
        assert_eq!(e.from.instance, "h1");
        assert_eq!(e.payload, serde_json::json!({"field": "load", "value": "0.5 & rising \u{263A}", "expire": 90}));
        let stored = e.clone().into_event().expect("into event");
        assert_eq!(stored.event_type, "attribute");
    }

    #[test]
    fn writes_what_it_reads() {
        let e = parse_events(ATTR).expect("valid").remove(0).into_event().expect("event");
        let rec =
            pepper_storage::Record { seq: 9, time_us: 0, origin: "lab".into(), body: pepper_storage::Body::Event(e) };
        let out = EventOut::from_record(&rec).expect("out");
        let xml = write_events(std::slice::from_ref(&out), false);
        assert!(xml.contains(r#"seq="9""#), "{xml}");
        let again = parse_events(&xml).expect("own output parses");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].payload, out.payload);
        assert_eq!(again[0].channel, out.channel);
        let single = write_events(std::slice::from_ref(&out), true);
        assert_eq!(parse_events(&single).expect("single").len(), 1);
    }

    /// Every element of `xml`, by local name, read by a strict parser:
    /// panics if the document is not well-formed.
    fn elements_of(xml: &str) -> Vec<String> {
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut names = Vec::new();
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Start(e) | Event::Empty(e) => {
                    for a in e.attributes() {
                        a.expect("well-formed attribute")
                            .normalized_value(XmlVersion::Implicit1_0)
                            .expect("attribute value unescapes");
                    }
                    names.push(e.local_name().as_ref().to_string());
                }
                Event::Text(t) => {
                    let text = t.xml_content(XmlVersion::Implicit1_0);
                    assert!(text.chars().all(xml_char), "a character XML forbids: {text:?}");
                }
                Event::Eof => return names,
                _ => {}
            }
        }
    }

    /// Payload keys and values were written into the XML as they were, so
    /// `x><injected/><y` as a key injected an element, and U+0001 made the
    /// document ill-formed.
    #[test]
    fn any_json_payload_maps_to_well_formed_xml_that_reads_back() {
        let payload = serde_json::json!({
            "x><injected/><y": "a",
            "with space": "b",
            "ctl": "one\u{1}two\r\nthree\u{FFFE}",
            "ok_name": "<&>\"'",
            "xmlns": "n",
            "1digit": "d",
            "entry": "plain",
            "tab\tnew\nline\rcr": "ws",
            "ctl\u{1}key": "c",
            "spaced": "  two  ",
        });
        let out = EventOut {
            id: "e\u{1}".into(),
            channel: "/a/".into(),
            event_type: "kv".into(),
            from: PartyJson { service: "s\u{2}".into(), instance: String::new() },
            to: TargetJson::default(),
            distribution: DistributionJson::All,
            payload: payload.clone(),
            seq: 1,
            time: "t".into(),
            site: "lab".into(),
            principal: None,
        };
        let xml = write_events(std::slice::from_ref(&out), false);
        let names = elements_of(&xml);
        assert!(!names.iter().any(|n| n == "injected"), "{xml}");
        let back = parse_events(&xml).expect("own output parses").remove(0);
        assert_eq!(back.payload, payload, "{xml}");
        for text in ["a string \u{1} with a control", "cr\r", "<injected/>", " ", " padded\t", ""] {
            let out = EventOut { payload: serde_json::json!(text), ..out.clone() };
            let xml = write_events(std::slice::from_ref(&out), true);
            elements_of(&xml);
            assert_eq!(parse_events(&xml).expect("parses").remove(0).payload, serde_json::json!(text));
        }
    }

    #[test]
    fn batches_and_other_payloads() {
        let xml = r#"<events xmlns="http://psepr.org/xs/event">
            <event><to><channel>/a/</channel></to><payload xmlns="urn:x:ping">hello</payload></event>
            <event><to><channel>/b/</channel></to><payload xmlns="urn:x:kv"><k>v</k><n>1</n></payload></event>
          </events>"#;
        let events = parse_events(xml).expect("batch");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].payload, serde_json::json!("hello"));
        assert_eq!(events[1].payload, serde_json::json!({"k": "v", "n": "1"}));
        assert_eq!(events[1].event_type, "urn:x:kv");
    }

    #[test]
    fn hostile_and_malformed_xml_is_refused_with_a_reason() {
        let lol = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>
            <event xmlns="http://psepr.org/xs/event"><to><channel>/a/</channel></to>
            <payload xmlns="urn:x">&lol2;</payload></event>"#;
        let deep = format!(
            r#"<event xmlns="http://psepr.org/xs/event">{}{}</event>"#,
            "<a>".repeat(XML_DEPTH_MAX),
            "</a>".repeat(XML_DEPTH_MAX)
        );
        let cases: Vec<(String, &str)> = vec![
            (lol.into(), "DOCTYPE"),
            (r#"<event xmlns="http://psepr.org/xs/event"><to><channel>&xxe;</channel></to></event>"#.into(), "entity &xxe;"),
            (deep, "deeper"),
            ("<event><to><channel>/a/</channel></to></event>".into(), "expected <event> or <events>"),
            (r#"<event xmlns="http://psepr.org/xs/event"><to></to></event>"#.into(), "no <channel>"),
            (r#"<event xmlns="http://psepr.org/xs/event"><to><channel>/a/</channel></to></event>"#.into(), "no <payload>"),
            (r#"<event xmlns="http://psepr.org/xs/event"><to><channel>/a/</channel></to><payload>x</payload></event>"#.into(), "no namespace"),
            (r#"<event xmlns="http://psepr.org/xs/event"><to><channel>/a/</channel></foo></event>"#.into(), "at byte"),
            (r#"<event xmlns="http://psepr.org/xs/event">"#.into(), "ends inside"),
            ("".into(), "no XML element"),
            ("just text".into(), "text outside"),
            (r#"<x:event xmlns="http://psepr.org/xs/event"/>"#.into(), "not declared"),
            (
                r#"<event xmlns="http://psepr.org/xs/event" distribution="many"><to><channel>/a/</channel></to><payload xmlns="urn:x"/></event>"#.into(),
                "distribution",
            ),
            (
                r#"<event xmlns="http://psepr.org/xs/event"><to><channel>/a/</channel></to><payload xmlns="urn:x"><a><b/></a></payload></event>"#.into(),
                "send nested payloads as JSON",
            ),
            (
                r#"<event xmlns="http://psepr.org/xs/event"><to><channel>/a/</channel></to><payload xmlns="http://psepr.org/xs/payload/attribute"><field>f</field><expire>soon</expire></payload></event>"#.into(),
                "whole number",
            ),
        ];
        for (xml, needle) in cases {
            let err = parse_events(&xml).expect_err(&xml);
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
            assert!(err.message().contains(needle), "{xml}\n=> {}", err.message());
        }
    }

    #[test]
    fn many_elements_are_capped() {
        let body = format!(
            r#"<events xmlns="http://psepr.org/xs/event">{}</events>"#,
            "<event><to><channel>/a/</channel></to><payload xmlns=\"urn:x\"/></event>".repeat(XML_ELEMENTS_MAX / 4 + 1)
        );
        let err = parse_events(&body).expect_err("too many");
        assert!(err.message().contains("more than"), "{}", err.message());
    }

    proptest::proptest! {
        /// Arbitrary token soup never panics the parser, and whatever it
        /// accepts is an envelope with a channel and a typed payload.
        #[test]
        fn never_panics_on_token_soup(tokens in proptest::collection::vec(proptest::prop_oneof![
            proptest::strategy::Just("<event xmlns=\"http://psepr.org/xs/event\">"),
            proptest::strategy::Just("</event>"),
            proptest::strategy::Just("<to>"), proptest::strategy::Just("</to>"),
            proptest::strategy::Just("<channel>/a/</channel>"),
            proptest::strategy::Just("<payload xmlns=\"urn:x\">"), proptest::strategy::Just("</payload>"),
            proptest::strategy::Just("&amp;"), proptest::strategy::Just("&bogus;"), proptest::strategy::Just("&#0;"),
            proptest::strategy::Just("<![CDATA[x]]>"), proptest::strategy::Just("<!DOCTYPE x>"),
            proptest::strategy::Just("<a>"), proptest::strategy::Just("</a>"), proptest::strategy::Just("text"),
            proptest::strategy::Just("<?pi x?>"), proptest::strategy::Just("<!-- c -->"), proptest::strategy::Just("<"),
        ], 0..40)) {
            let input = tokens.concat();
            if let Ok(events) = parse_events(&input) {
                for e in events {
                    proptest::prop_assert!(!e.channel.is_empty());
                    proptest::prop_assert!(!e.event_type.is_empty());
                }
            }
        }
    }
}
