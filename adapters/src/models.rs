//! The CIM model repository over HTTP (`/v1/namespaces/{ns}/...`).
//!
//! Schemas live in memory, one per namespace (`root/cimv2` starts with
//! pepper's core set), rebuilt at start from the `model.class` records the
//! store kept, and then following the log in one place: [`Models`] is a
//! `pepper_storage::Fold`, told every class a durable group defined before
//! the group's caller hears back. No handler edits a schema. Instances live in the store only: every read runs the
//! `pepper-query` model functions over one store snapshot, whose sequence
//! number the answer states. Every write appends the model record and its
//! change event on `/pepper/model/<namespace>/<class>/` in one atomic
//! batch, so leases, watches and routing see model changes like any event.
//!
//! The schema checks a class or an instance before anything is written; the
//! store's writer enforces what must hold against concurrent writers (an
//! instance created once, references to existing instances, no deletion of
//! an instance still referred to).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use pepper_query::model::{Instance, Instances};
use pepper_query::path::ObjectPath;
use pepper_query::schema::{ClassDef, Schema, CORE_NAMESPACE};
use pepper_query::value::Value;
use pepper_storage::{Body, Distribution, Event, ModelClassRow, Party, Store, Target, View};
use serde_json::Map;

use crate::error::ApiError;

/// The channel prefix of model change events.
pub const MODEL_EVENTS_PREFIX: &str = "/pepper/model/";

/// The namespaces' schemas.
pub struct Models {
    pub(crate) schemas: RwLock<HashMap<String, Arc<Schema>>>,
    /// The sequence number of each class definition in `schemas`, by
    /// lowercased (namespace, class): a definition no newer is skipped, so
    /// the load at start and the fold may meet in any order.
    versions: Mutex<HashMap<(String, String), u64>>,
    /// Instance writes hold it shared, from reading the schema to their
    /// append; a class definition holds it alone, from its check ("does this
    /// class have instances?") until the new schema is in place. So no
    /// instance is written against a schema that is being replaced, and no
    /// key change slips past an instance created meanwhile.
    pub(crate) schema_lock: tokio::sync::RwLock<()>,
    /// A modification (PUT, PATCH) reads the instance, merges and writes it
    /// back while holding the stripe of its identity, so two concurrent
    /// modifications of one instance both land instead of the later one
    /// writing over the earlier.
    pub(crate) stripes: Box<[tokio::sync::Mutex<()>]>,
}

impl Default for Models {
    fn default() -> Models {
        Models::new()
    }
}

impl pepper_storage::Fold for Models {
    fn committed(&self, group: &pepper_storage::Committed<'_>) {
        for (ns, row) in group.classes() {
            self.apply(ns, row);
        }
    }
}

/// Stripes of [`Models::stripes`]: enough that unrelated instances rarely
/// share one.
const MODIFY_STRIPES: usize = 256;

pub(crate) fn query_error(e: pepper_query::Error) -> ApiError {
    match e {
        pepper_query::Error::Schema(m) if m.starts_with("no class") || m.starts_with("no instance") => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", m)
        }
        pepper_query::Error::Syntax { .. } => ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.to_string()),
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_model", other.to_string()),
    }
}

impl Models {
    /// The core schema only; [`Models::load`] adds the stored classes.
    pub fn new() -> Models {
        let mut schemas = HashMap::new();
        schemas.insert(CORE_NAMESPACE.to_string(), Arc::new(Schema::core()));
        Models {
            schemas: RwLock::new(schemas),
            versions: Mutex::new(HashMap::new()),
            schema_lock: tokio::sync::RwLock::new(()),
            stripes: (0..MODIFY_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// Adds every class the store kept, in the order they were defined.
    /// Register the fold first: a class defined meanwhile reaches the
    /// schemas through it, and the load never replaces a newer definition.
    ///
    /// # Errors
    /// Store read errors; a stored class that no longer checks is logged
    /// and skipped.
    pub async fn load(&self, store: &Store) -> Result<(), pepper_storage::Error> {
        let mut rows = store.read(|v| v.all_model_classes()).await?;
        rows.sort_by_key(|(_, row)| row.seq);
        for (ns, row) in &rows {
            self.apply(ns, row);
        }
        Ok(())
    }

    /// Puts the class of `row`, defined in namespace `ns`, into its schema,
    /// unless the schema has it from a newer record. Its checks against
    /// existing instances ran before the record was written.
    fn apply(&self, ns: &str, row: &ModelClassRow) {
        let ns = ns.to_ascii_lowercase();
        let key = (ns.clone(), row.name.to_ascii_lowercase());
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if versions.get(&key).is_some_and(|v| *v >= row.seq) {
            return;
        }
        let def = match serde_json::from_slice::<ClassDef>(&row.definition) {
            Ok(def) => def,
            Err(e) => {
                tracing::error!(namespace = %ns, class = %row.name, error = %e, "stored class does not parse");
                return;
            }
        };
        let mut schemas = self.schemas.write().unwrap_or_else(|p| p.into_inner());
        let mut next = schemas.get(&ns).map(|s| (**s).clone()).unwrap_or_default();
        match next.define(def, &|_: &str| false) {
            Ok(()) => {
                schemas.insert(ns, Arc::new(next));
                versions.insert(key, row.seq);
            }
            Err(e) => tracing::error!(namespace = %ns, class = %row.name, error = %e, "stored class skipped"),
        }
    }

    pub(crate) fn stripe(&self, identity: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        identity.hash(&mut h);
        &self.stripes[(h.finish() % self.stripes.len() as u64) as usize]
    }

    pub(crate) fn schema(&self, ns: &str) -> Result<Arc<Schema>, ApiError> {
        let schemas = self.schemas.read().unwrap_or_else(|p| p.into_inner());
        schemas
            .get(&ns.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no namespace {ns}")))
    }
}

/// Instances read from one store snapshot.
pub(crate) struct ViewSource<'a> {
    pub(crate) view: &'a View<'a>,
    pub(crate) ns: &'a str,
    pub(crate) schema: &'a Schema,
    /// Classes resolved so far: an enumeration reads many instances of few
    /// classes.
    pub(crate) resolved: std::cell::RefCell<HashMap<String, std::rc::Rc<pepper_query::schema::Resolved>>>,
}

impl<'a> ViewSource<'a> {
    pub(crate) fn new(view: &'a View<'a>, ns: &'a str, schema: &'a Schema) -> ViewSource<'a> {
        ViewSource { view, ns, schema, resolved: std::cell::RefCell::new(HashMap::new()) }
    }

    pub(crate) fn resolve(&self, class: &str) -> Option<std::rc::Rc<pepper_query::schema::Resolved>> {
        if let Some(r) = self.resolved.borrow().get(class) {
            return Some(r.clone());
        }
        let r = std::rc::Rc::new(self.schema.resolve(class).ok()?);
        self.resolved.borrow_mut().insert(class.to_string(), r.clone());
        Some(r)
    }

    pub(crate) fn instance(&self, row: pepper_storage::ModelInstanceRow) -> Option<Instance> {
        let path = ObjectPath::parse(&row.path).ok()?;
        let json: Map<String, serde_json::Value> = serde_json::from_slice(&row.properties).ok()?;
        let resolved = self.resolve(&row.class)?;
        let properties = json
            .iter()
            .filter_map(|(k, v)| {
                let def = resolved.property(k)?;
                Some((def.name.clone(), def.ty.check(&def.name, v).ok()?))
            })
            .collect();
        Some(Instance { path, class: row.class, properties })
    }
}

/// Up to `limit` instances of exactly `class`, with their identities, in
/// identity order after `after`. A class's instances are one key range of
/// the instance family: identities begin `namespace:class.`, or are exactly
/// `namespace:class` for a keyless singleton.
pub(crate) fn class_rows(
    view: &View<'_>,
    ns: &str,
    class: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, pepper_storage::ModelInstanceRow)>, pepper_storage::Error> {
    let base = format!("{}:{}", ns.to_ascii_lowercase(), class.to_ascii_lowercase());
    let mut rows = Vec::new();
    if after.is_none_or(|a| base.as_str() > a) {
        if let Some(row) = view.model_instance(ns, &base)? {
            rows.push((base.clone(), row));
        }
    }
    rows.extend(view.model_instances_by_prefix(ns, &format!("{base}."), after, limit)?.items);
    rows.truncate(limit);
    Ok(rows)
}

impl Instances for ViewSource<'_> {
    fn get(&self, identity: &str) -> Option<Instance> {
        self.view.model_instance(self.ns, identity).ok().flatten().and_then(|r| self.instance(r))
    }

    fn of_class(&self, class: &str) -> Vec<Instance> {
        let mut out: Vec<Instance> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let rows = match class_rows(self.view, self.ns, class, after.as_deref(), 10_000) {
                Ok(rows) => rows,
                Err(e) => {
                    // Damage reads as fewer instances, loudly; `pepper check`
                    // says where.
                    tracing::error!(class, error = %e, "model instance read failed");
                    return out;
                }
            };
            let done = rows.len() < 10_000;
            after = rows.last().map(|(id, _)| id.clone());
            out.extend(rows.into_iter().filter_map(|(_, r)| self.instance(r)));
            if done {
                return out;
            }
        }
    }

    fn referring_to(&self, identity: &str) -> Vec<Instance> {
        self.view.model_referrers(self.ns, identity).unwrap_or_default().iter().filter_map(|id| self.get(id)).collect()
    }
}

/// The change event for an instance, in the same batch as its record.
pub(crate) fn change_event(ns: &str, class: &str, kind: &str, payload: serde_json::Value) -> Body {
    Body::Event(Event {
        id: crate::wire::envelope::new_event_id(),
        channel: format!("{MODEL_EVENTS_PREFIX}{ns}/{class}/"),
        event_type: format!("model.{kind}"),
        from: Party { service: "pepper".into(), instance: String::new() },
        to: Target::default(),
        distribution: Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        principal: None,
        tuple: None,
    })
}

/// The identities an instance's reference properties point at.
pub(crate) fn refs_of(values: &std::collections::BTreeMap<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = values
        .values()
        .filter_map(|v| match v {
            Value::Ref(p) => ObjectPath::parse(p).ok().map(|p| p.identity()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

pub(crate) fn props_json(values: &std::collections::BTreeMap<String, Value>) -> serde_json::Value {
    serde_json::Value::Object(values.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pepper_storage::{ModelClass, Options};

    fn class(ns: &str, json: &str) -> Body {
        let def: ClassDef = serde_json::from_str(json).expect("class");
        Body::ModelClass(ModelClass { namespace: ns.into(), name: def.name.clone(), definition: json.into() })
    }

    /// A class committed by any path reaches the schema before its append
    /// returns, and the load at start neither misses nor undoes one.
    #[tokio::test]
    async fn the_schemas_follow_committed_classes() {
        let store = Store::open_memory(Options::new("s")).expect("open");
        store.append(vec![class("root/x", r#"{"name":"A"}"#)]).await.expect("A");
        let state = crate::AppState::load(store.clone(), crate::ApiConfig::default()).await.expect("state");
        assert!(state.models.schema("root/x").expect("loaded").get("A").is_some());
        store.append(vec![class("Root/X", r#"{"name":"B","superclass":"A"}"#)]).await.expect("B");
        let schema = state.models.schema("root/x").expect("namespace");
        assert!(schema.is_a("B", "A"), "folded in, with its superclass");
        // Loading again (as a late load would) keeps the newer definitions.
        state.models.load(&store).await.expect("load");
        assert!(state.models.schema("root/x").expect("namespace").get("B").is_some());
        assert!(state.models.schema("root/y").is_err(), "no other namespace appeared");
    }
}
