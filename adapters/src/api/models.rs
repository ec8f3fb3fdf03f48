//! The CIM model repository over HTTP: classes, instances, associations,
//! history and WQL queries, per namespace, on `pepper-query`'s pure model
//! code. Every change is a log record (and a change event on
//! `/pepper/model/`), validated against the schemas cached in `models`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use pepper_query::model::{self, AssocFilter, Instance, Instances};
use pepper_query::path::ObjectPath;
use pepper_query::schema::{ClassDef, Schema};
use pepper_query::value::Value;
use pepper_storage::{Body, ModelClass, ModelDelete, ModelPut, View};
use serde::Deserialize;
use serde_json::{json, Map};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::models::change_event;
use crate::models::class_rows;
use crate::models::props_json;
use crate::models::query_error;
use crate::models::refs_of;
use crate::models::ViewSource;
use crate::state::AppState;
use pepper_router::{Action, Resource};

/// Most instances one enumeration page returns.
pub const INSTANCES_PAGE_MAX: usize = 1000;

/// `GET /v1/namespaces/{ns}/classes`.
pub(crate) async fn list_classes(
    State(state): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsRead, &Resource::Namespace(&ns))?;
    let schema = state.models.schema(&ns)?;
    let classes: Vec<&ClassDef> = schema.classes().collect();
    Ok(Json(json!({ "namespace": ns, "classes": classes })))
}

/// `GET /v1/namespaces/{ns}/classes/{class}`: the declaration and every
/// property, inherited ones included.
pub(crate) async fn get_class(
    State(state): State<AppState>,
    caller: Caller,
    Path((ns, class)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsRead, &Resource::Namespace(&ns))?;
    let schema = state.models.schema(&ns)?;
    let resolved = schema.resolve(&class).map_err(query_error)?;
    let def = schema.get(&class).cloned();
    Ok(Json(json!({ "class": def, "lineage": resolved.lineage, "properties": resolved.properties,
                    "association": resolved.association })))
}

/// `POST /v1/namespaces/{ns}/classes`: defines or replaces a class (and
/// creates the namespace with its first class).
pub(crate) async fn define_class(
    State(state): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
    body: Result<Json<ClassDef>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Action::ModelsWrite, &Resource::Namespace(&ns))?;
    let Json(def) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    if ObjectPath::new(&ns, "X", Vec::new()).is_err() {
        return Err(ApiError::invalid_body(format!("namespace {ns:?} must be names separated by '/'")));
    }
    let _guard = state.models.schema_lock.write().await;
    let current = state.models.schema(&ns).unwrap_or_default();
    let (ns2, def2) = (ns.clone(), def.clone());
    // The check: the class must fit the schema as it is, and a key change
    // needs a class without instances.
    state
        .store
        .read(move |v| {
            let mut next = (*current).clone();
            let has = |c: &str| v.model_instances_of(&ns2, c, None, 1).map_or(true, |p| !p.items.is_empty());
            Ok(next.define(def2, &has))
        })
        .await?
        .map_err(query_error)?;
    let definition = serde_json::to_vec(&def).map_err(|e| ApiError::invalid_body(e.to_string()))?;
    let record = Body::ModelClass(ModelClass { namespace: ns.clone(), name: def.name.clone(), definition });
    // The schemas follow the commit by themselves (`Models` is the store's
    // fold); the lock held since the check keeps instance writes out until
    // then.
    let appended = state.store.append(vec![record]).await?;
    Ok((StatusCode::CREATED, Json(json!({ "class": def.name, "seq": appended.first }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    class: String,
    #[serde(default)]
    properties: Map<String, serde_json::Value>,
}

/// Checks that every reference of an instance points at an instance of the
/// declared class (the writer checks they exist).
fn check_ref_classes(
    v: &View<'_>,
    ns: &str,
    schema: &Schema,
    class: &str,
    values: &std::collections::BTreeMap<String, Value>,
) -> Result<(), pepper_query::Error> {
    let resolved = schema.resolve(class)?;
    for p in resolved.references() {
        let Some(Value::Ref(path)) = values.get(&p.name) else { continue };
        let target = ObjectPath::parse(path)?;
        let Ok(Some(row)) = v.model_instance(ns, &target.identity()) else {
            return Err(pepper_query::Error::Value {
                property: p.name.clone(),
                message: format!("refers to {path}, which does not exist"),
            });
        };
        if let Some(c) = &p.class {
            if !schema.is_a(&row.class, c) {
                return Err(pepper_query::Error::Value {
                    property: p.name.clone(),
                    message: format!("refers to a {}, not a {c}", row.class),
                });
            }
        }
    }
    Ok(())
}

fn store_error(e: pepper_storage::Error) -> ApiError {
    match e {
        pepper_storage::Error::NotFound { what, key } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} {key}"))
        }
        pepper_storage::Error::Conflict { detail, .. } => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
        other => other.into(),
    }
}

/// `POST /v1/namespaces/{ns}/instances` `{"class", "properties"}` → 201.
pub(crate) async fn create_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Action::ModelsWrite, &Resource::Namespace(&ns))?;
    let Json(body) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    let _shared = state.models.schema_lock.read().await;
    let schema = state.models.schema(&ns)?;
    let (values, path) = schema.instance(&ns, &body.class, &body.properties).map_err(query_error)?;
    let class = schema.resolve(&body.class).map_err(query_error)?.name;
    let (ns2, schema2, class2, values2) = (ns.clone(), schema.clone(), class.clone(), values.clone());
    state
        .store
        .read(move |v| Ok(check_ref_classes(v, &ns2, &schema2, &class2, &values2)))
        .await?
        .map_err(query_error)?;
    let properties = props_json(&values);
    let put = Body::ModelPut(ModelPut {
        namespace: ns.clone(),
        class: class.clone(),
        path: path.to_string(),
        identity: path.identity(),
        properties: properties.to_string().into_bytes(),
        refs: refs_of(&values),
        create: true,
    });
    let event = change_event(
        &ns,
        &class,
        "created",
        json!({ "path": path.to_string(), "class": class, "properties": properties }),
    );
    let appended = state.store.append(vec![put, event]).await.map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(json!({ "path": path.to_string(), "seq": appended.first }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnumerateQuery {
    class: String,
    #[serde(default = "yes")]
    deep: bool,
    #[serde(rename = "where")]
    condition: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn yes() -> bool {
    true
}

/// `GET /v1/namespaces/{ns}/instances?class=&deep=&where=&limit=&cursor=`.
pub(crate) async fn enumerate(
    State(state): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
    query: Result<Query<EnumerateQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    caller.require(Action::ModelsRead, &Resource::Namespace(&ns))?;
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let limit = crate::params::page_limit(q.limit, INSTANCES_PAGE_MAX).map_err(ApiError::invalid_query)?;
    let schema = state.models.schema(&ns)?;
    let parsed = match &q.condition {
        Some(w) => {
            Some(pepper_query::wql::parse(&format!("SELECT * FROM {} WHERE {w}", q.class)).map_err(query_error)?)
        }
        None => None,
    };
    let Some(query) = parsed else {
        return enumerate_stored(state, ns, schema, q, limit).await;
    };
    let (page, seq) = state
        .store
        .read(move |v| {
            let src = ViewSource::new(v, &ns, &schema);
            let page = model::select(&schema, &src, &query).map(|rows| {
                let rows = match q.deep {
                    true => rows,
                    false => rows.into_iter().filter(|i| i.class.eq_ignore_ascii_case(&query.from)).collect(),
                };
                model::page(rows, q.cursor.as_deref(), limit)
            });
            Ok((page, v.seq()))
        })
        .await?;
    let (items, next) = page.map_err(query_error)?;
    let mut body = json!({ "seq": seq, "instances": items.iter().map(Instance::to_json).collect::<Vec<_>>() });
    if let Some(n) = next {
        body["next_cursor"] = json!(n);
    }
    Ok(Json(body).into_response())
}

/// Enumeration without a condition: each class of the enumeration is one
/// key range of the instance family, and the stored JSON (checked when it
/// was written) is sent as it is, with no per-property work. The answer is
/// the same as [`Instance::to_json`] would give.
async fn enumerate_stored(
    state: AppState,
    ns: String,
    schema: Arc<Schema>,
    q: EnumerateQuery,
    limit: usize,
) -> Result<axum::response::Response, ApiError> {
    let resolved = schema.resolve(&q.class).map_err(query_error)?;
    let classes = if q.deep { schema.with_subclasses(&resolved.name) } else { vec![resolved.name] };
    let (body, next) = state
        .store
        .read(move |v| {
            // Identity order groups instances by class, and the classes in
            // order of their lowercase names: identities begin
            // `namespace:class` and a class name's characters all sort after
            // the `.` that ends it. So the page is the classes read one
            // after another in that order, each from the cursor on, until
            // the page is full: no more rows read than are sent.
            let cursor = q.cursor.as_deref();
            let ns_lower = ns.to_ascii_lowercase();
            let mut classes: Vec<String> = classes.iter().map(|c| c.to_ascii_lowercase()).collect();
            classes.sort();
            let mut rows: Vec<(String, pepper_storage::ModelInstanceRow)> = Vec::new();
            for class in &classes {
                let want = limit + 1 - rows.len();
                if want == 0 {
                    break;
                }
                // A class whose identities all sort before the cursor has
                // nothing for this page.
                let last_possible = format!("{ns_lower}:{class}/");
                if cursor.is_some_and(|c| c >= last_possible.as_str()) {
                    continue;
                }
                rows.extend(class_rows(v, &ns, class, cursor, want)?);
            }
            debug_assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
            let next = (rows.len() > limit).then(|| rows[limit - 1].0.clone());
            rows.truncate(limit);
            let mut out = String::with_capacity(rows.iter().map(|(_, r)| r.properties.len() + r.path.len() + 64).sum());
            out.push_str(&format!("{{\"seq\":{},\"instances\":[", v.seq()));
            for (i, (_, row)) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"path\":");
                out.push_str(&serde_json::Value::String(row.path.clone()).to_string());
                out.push_str(",\"class\":");
                out.push_str(&serde_json::Value::String(row.class.clone()).to_string());
                out.push_str(",\"properties\":");
                out.push_str(std::str::from_utf8(&row.properties).unwrap_or("{}"));
                out.push('}');
            }
            out.push(']');
            Ok((out, next))
        })
        .await?;
    let mut body = body;
    if let Some(n) = next {
        body.push_str(",\"next_cursor\":");
        body.push_str(&serde_json::Value::String(n).to_string());
    }
    body.push('}');
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn parse_path(ns: &str, text: &str) -> Result<ObjectPath, ApiError> {
    // A path without its namespace is taken in the URL's.
    let full = if text.contains(':') { text.to_string() } else { format!("{ns}:{text}") };
    let path = ObjectPath::parse(&full).map_err(query_error)?;
    if !path.namespace.eq_ignore_ascii_case(ns) {
        return Err(ApiError::invalid_query(format!("path {path} is not in namespace {ns}")));
    }
    Ok(path)
}

/// `GET /v1/namespaces/{ns}/instances/{path}`.
pub(crate) async fn get_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path((ns, text)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsRead, &Resource::Namespace(&ns))?;
    let schema = state.models.schema(&ns)?;
    let path = parse_path(&ns, &text)?;
    let (found, seq) = state
        .store
        .read(move |v| {
            let src = ViewSource::new(v, &ns, &schema);
            Ok((src.get(&path.identity()), v.seq()))
        })
        .await?;
    let instance =
        found.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no instance {text}")))?;
    let mut body = instance.to_json();
    body["seq"] = json!(seq);
    Ok(Json(body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    cascade: bool,
}

/// `DELETE /v1/namespaces/{ns}/instances/{path}[?cascade=true]`: refused
/// with 409 while associations refer to the instance, unless `cascade`,
/// which deletes them (and what refers to them) in the same batch.
pub(crate) async fn delete_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path((ns, text)): Path<(String, String)>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsWrite, &Resource::Namespace(&ns))?;
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let _shared = state.models.schema_lock.read().await;
    let schema = state.models.schema(&ns)?;
    let path = parse_path(&ns, &text)?;
    let ns2 = ns.clone();
    let plan = state
        .store
        .read(move |v| {
            let src = ViewSource::new(v, &ns2, &schema);
            let mut memory = Vec::new();
            // Depth-first: what refers to an instance goes before it.
            fn collect(src: &ViewSource<'_>, id: &str, cascade: bool, out: &mut Vec<Instance>) -> Result<(), String> {
                let referrers = src.referring_to(id);
                if !referrers.is_empty() && !cascade {
                    let names: Vec<String> = referrers.iter().take(10).map(|a| a.path.to_string()).collect();
                    return Err(format!(
                        "{} association(s) refer to it ({}); delete them first or ask for ?cascade=true",
                        referrers.len(),
                        names.join(", ")
                    ));
                }
                for r in referrers {
                    if !out.iter().any(|o| o.path == r.path) {
                        collect(src, &r.path.identity(), true, out)?;
                    }
                }
                if let Some(i) = src.get(id) {
                    out.push(i);
                }
                Ok(())
            }
            Ok(collect(&src, &path.identity(), q.cascade, &mut memory).map(|()| memory))
        })
        .await?
        .map_err(|m| ApiError::new(StatusCode::CONFLICT, "conflict", format!("instance {text}: {m}")))?;
    if plan.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no instance {text}")));
    }
    let mut bodies = Vec::new();
    for i in &plan {
        bodies.push(Body::ModelDelete(ModelDelete { namespace: ns.clone(), identity: i.path.identity() }));
        bodies.push(change_event(&ns, &i.class, "deleted", json!({ "path": i.path.to_string(), "class": i.class })));
    }
    let appended = state.store.append(bodies).await.map_err(store_error)?;
    let deleted: Vec<String> = plan.iter().map(|i| i.path.to_string()).collect();
    Ok(Json(json!({ "deleted": deleted, "seq": appended.last })))
}

/// Shared by PUT (replace every property) and PATCH (change the given
/// ones): keys cannot change; the event lists the changed properties.
async fn modify(
    state: AppState,
    ns: String,
    text: String,
    properties: Map<String, serde_json::Value>,
    replace: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let _shared = state.models.schema_lock.read().await;
    let schema = state.models.schema(&ns)?;
    let path = parse_path(&ns, &text)?;
    let _stripe = state.models.stripe(&path.identity()).lock().await;
    let (ns2, schema2) = (ns.clone(), schema.clone());
    let old = state
        .store
        .read(move |v| Ok(ViewSource::new(v, &ns2, &schema2).get(&path.identity())))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no instance {text}")))?;
    // The same merge and key rules as the in-memory model; references are
    // checked against the store below.
    let (after, changed) = model::merge(&schema, &ns, &old, &properties, replace).map_err(query_error)?;
    let (ns3, schema3, class3, values3) = (ns.clone(), schema.clone(), after.class.clone(), after.properties.clone());
    state
        .store
        .read(move |v| Ok(check_ref_classes(v, &ns3, &schema3, &class3, &values3)))
        .await?
        .map_err(query_error)?;
    let props = props_json(&after.properties);
    let put = Body::ModelPut(ModelPut {
        namespace: ns.clone(),
        class: after.class.clone(),
        path: after.path.to_string(),
        identity: after.path.identity(),
        properties: props.to_string().into_bytes(),
        refs: refs_of(&after.properties),
        create: false,
    });
    let changes: Map<String, serde_json::Value> = changed.iter().map(|k| (k.clone(), after.get(k).to_json())).collect();
    let event = change_event(
        &ns,
        &after.class,
        "modified",
        json!({ "path": after.path.to_string(), "class": after.class, "changed": changes }),
    );
    let appended = state.store.append(vec![put, event]).await.map_err(store_error)?;
    Ok(Json(json!({ "path": after.path.to_string(), "changed": changed, "seq": appended.first })))
}

/// `PUT /v1/namespaces/{ns}/instances/{path}` `{"properties"}`.
pub(crate) async fn replace_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path((ns, text)): Path<(String, String)>,
    body: Result<Json<Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsWrite, &Resource::Namespace(&ns))?;
    let Json(body) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    modify(state, ns, text, properties_of(body)?, true).await
}

/// `PATCH /v1/namespaces/{ns}/instances/{path}` `{"properties"}`.
pub(crate) async fn patch_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path((ns, text)): Path<(String, String)>,
    body: Result<Json<Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsWrite, &Resource::Namespace(&ns))?;
    let Json(body) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    modify(state, ns, text, properties_of(body)?, false).await
}

fn properties_of(body: Map<String, serde_json::Value>) -> Result<Map<String, serde_json::Value>, ApiError> {
    match body.get("properties") {
        Some(serde_json::Value::Object(p)) if body.len() == 1 => Ok(p.clone()),
        _ => Err(ApiError::invalid_body("the body must be {\"properties\": {...}}")),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssocQuery {
    assoc_class: Option<String>,
    result_class: Option<String>,
    role: Option<String>,
    result_role: Option<String>,
}

async fn traverse(
    state: AppState,
    ns: String,
    text: String,
    q: AssocQuery,
    associators: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let schema = state.models.schema(&ns)?;
    let path = parse_path(&ns, &text)?;
    let filter = AssocFilter {
        assoc_class: q.assoc_class,
        result_class: q.result_class,
        role: q.role,
        result_role: q.result_role,
    };
    let (rows, seq) = state
        .store
        .read(move |v| {
            let src = ViewSource::new(v, &ns, &schema);
            let rows = match associators {
                true => model::associators(&schema, &src, &path, &filter),
                false => model::references(&schema, &src, &path, &filter),
            };
            Ok((rows, v.seq()))
        })
        .await?;
    Ok(Json(json!({ "seq": seq, "instances": rows.iter().map(Instance::to_json).collect::<Vec<_>>() })))
}

/// `GET /v1/namespaces/{ns}/instances/{path}/associators?assoc_class=&result_class=&role=&result_role=`.
pub(crate) async fn associators(
    State(state): State<AppState>,
    caller: Caller,
    Path((ns, text)): Path<(String, String)>,
    query: Result<Query<AssocQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsRead, &Resource::Namespace(&ns))?;
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    traverse(state, ns, text, q, true).await
}

/// `GET /v1/namespaces/{ns}/instances/{path}/references?assoc_class=&role=`.
pub(crate) async fn references(
    State(state): State<AppState>,
    caller: Caller,
    Path((ns, text)): Path<(String, String)>,
    query: Result<Query<AssocQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsRead, &Resource::Namespace(&ns))?;
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    traverse(state, ns, text, q, false).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/namespaces/{ns}/instances/{path}/history?since=&until=&limit=`:
/// every version of the instance, oldest first, its deletion included;
/// `since` and `until` (inclusive) are sequence numbers or RFC 3339 times.
pub(crate) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path((ns, text)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsRead, &Resource::Namespace(&ns))?;
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let limit = crate::params::page_limit(q.limit, INSTANCES_PAGE_MAX).map_err(ApiError::invalid_query)?;
    let path = parse_path(&ns, &text)?;
    let bounds = crate::params::Bounds::parse(q.since.as_deref(), q.until.as_deref())?;
    let (from, to) = bounds.seqs();
    let (rows, seq) = state
        .store
        .read(move |v| {
            Ok((v.model_history(&ns, &path.identity(), from, to, pepper_storage::limits::READ_ROWS_MAX)?, v.seq()))
        })
        .await?;
    let history: Vec<serde_json::Value> = rows
        .iter()
        .filter(|(_, v)| bounds.admits_time(v.time_us))
        .take(limit)
        .map(|(s, v)| {
            let props: serde_json::Value = serde_json::from_slice(&v.properties).unwrap_or(serde_json::Value::Null);
            json!({ "seq": s, "time": crate::wire::envelope::rfc3339_us(v.time_us), "class": v.class,
                    "properties": props, "deleted": v.deleted })
        })
        .collect();
    Ok(Json(json!({ "seq": seq, "history": history })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryBody {
    query: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `POST /v1/namespaces/{ns}/query` `{"query": "SELECT ...", "limit"?, "cursor"?}`.
pub(crate) async fn run_query(
    State(state): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
    body: Result<Json<QueryBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Action::ModelsRead, &Resource::Namespace(&ns))?;
    let Json(body) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    let limit = crate::params::page_limit(body.limit, INSTANCES_PAGE_MAX).map_err(ApiError::invalid_body)?;
    let schema = state.models.schema(&ns)?;
    let parsed = pepper_query::wql::parse(&body.query).map_err(query_error)?;
    let (rows, seq) = state
        .store
        .read(move |v| Ok((model::select(&schema, &ViewSource::new(v, &ns, &schema), &parsed), v.seq())))
        .await?;
    let rows = rows.map_err(query_error)?;
    let (items, next) = model::page(rows, body.cursor.as_deref(), limit);
    let mut out = json!({ "seq": seq, "instances": items.iter().map(Instance::to_json).collect::<Vec<_>>() });
    if let Some(n) = next {
        out["next_cursor"] = json!(n);
    }
    Ok(Json(out))
}
