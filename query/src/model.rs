//! Model queries over instances: enumeration (deep or shallow), WQL
//! selection, references and associators, paging.
//!
//! The functions here work on any [`Instances`] source: the store's
//! snapshot views in the server, and [`MemoryModel`], an in-memory
//! repository that is the reference the store is tested against. They hold
//! the semantics in one place:
//!
//! - **Enumeration.** Deep (the default) returns the instances of the class
//!   and of every subclass, each with its own class's properties; shallow
//!   returns only the class's own instances. Results are in object-path
//!   identity order, so pages are stable.
//! - **References** of an instance X: the association instances with a
//!   reference property pointing at X. `AssocClass` keeps associations of
//!   that class (or a subclass); `Role` keeps those whose property naming X
//!   is that one.
//! - **Associators** of X: the instances at the other ends of X's
//!   references. `ResultClass` keeps ends of that class (or a subclass);
//!   `ResultRole` keeps ends named by that property. Each end appears once.
//! - **Deletion rule** (in [`MemoryModel`], and the store follows it): an
//!   instance that associations refer to cannot be deleted (the error lists
//!   them) unless the caller asks for a cascade, which deletes those
//!   associations first. References must always point at existing
//!   instances.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::path::ObjectPath;
use crate::schema::Schema;
use crate::value::Value;
use crate::wql::{Query, Row};

/// One instance: its path, its class, its typed properties.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// Its canonical path.
    pub path: ObjectPath,
    /// Its class, as declared.
    pub class: String,
    /// Its properties by declared name; absent means null.
    pub properties: BTreeMap<String, Value>,
}

impl Instance {
    /// The property named `name` (case-insensitive), or `Null`.
    pub fn get(&self, name: &str) -> Value {
        self.properties.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or(Value::Null, |(_, v)| v.clone())
    }

    /// The instance as JSON: `{"path", "class", "properties"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let props: serde_json::Map<String, serde_json::Value> =
            self.properties.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        serde_json::json!({ "path": self.path.to_string(), "class": self.class, "properties": props })
    }
}

/// Where instances come from.
pub trait Instances {
    /// The instance with this path identity ([`ObjectPath::identity`]).
    fn get(&self, identity: &str) -> Option<Instance>;
    /// The instances whose class is exactly `class`, in identity order.
    fn of_class(&self, class: &str) -> Vec<Instance>;
    /// The association instances with a reference to `identity`.
    fn referring_to(&self, identity: &str) -> Vec<Instance>;
}

/// A row for WQL: an instance, with the schema and the other instances for
/// `ISA`.
struct InstanceRow<'a> {
    instance: &'a Instance,
    schema: &'a Schema,
    source: &'a dyn Instances,
}

impl Row for InstanceRow<'_> {
    fn get(&self, property: &str) -> Value {
        self.instance.get(property)
    }

    fn isa(&self, property: &str, class: &str) -> Option<bool> {
        if property.eq_ignore_ascii_case("__Class") {
            return Some(self.schema.is_a(&self.instance.class, class));
        }
        let Value::Ref(path) = self.instance.get(property) else { return None };
        let target = ObjectPath::parse(&path).ok()?;
        let found = self.source.get(&target.identity())?;
        Some(self.schema.is_a(&found.class, class))
    }
}

/// The instances of `class`, with its subclasses' when `deep`.
///
/// # Errors
/// `Schema` for an unknown class.
pub fn enumerate(schema: &Schema, source: &dyn Instances, class: &str, deep: bool) -> Result<Vec<Instance>> {
    let resolved = schema.resolve(class)?;
    let classes = if deep { schema.with_subclasses(&resolved.name) } else { vec![resolved.name] };
    let mut out: Vec<Instance> = classes.iter().flat_map(|c| source.of_class(c)).collect();
    out.sort_by_cached_key(|i| i.path.identity());
    Ok(out)
}

/// Runs a parsed query: enumerates `FROM` deep, keeps rows whose `WHERE`
/// holds, and projects `SELECT`ed properties (a property not in the class,
/// nor in any of its subclasses, is an error).
///
/// # Errors
/// `Schema` for an unknown class; `Value` for an unknown property.
pub fn select(schema: &Schema, source: &dyn Instances, query: &Query) -> Result<Vec<Instance>> {
    let resolved = schema.resolve(&query.from)?;
    if let Some(props) = &query.select {
        let known = |p: &str| {
            schema
                .with_subclasses(&resolved.name)
                .iter()
                .any(|c| schema.resolve(c).is_ok_and(|r| r.property(p).is_some()))
        };
        if let Some(p) = props.iter().find(|p| !known(p)) {
            return Err(Error::Value {
                property: p.clone(),
                message: format!("class {} has no such property", resolved.name),
            });
        }
    }
    let rows = enumerate(schema, source, &resolved.name, true)?;
    Ok(rows
        .into_iter()
        .filter(|i| query.condition.as_ref().is_none_or(|c| c.keeps(&InstanceRow { instance: i, schema, source })))
        .map(|mut i| {
            if let Some(props) = &query.select {
                i.properties.retain(|k, _| props.iter().any(|p| p.eq_ignore_ascii_case(k)));
            }
            i
        })
        .collect())
}

/// The filters of references and associators, each optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssocFilter {
    /// Only associations of this class (or a subclass).
    pub assoc_class: Option<String>,
    /// Associators only: only ends of this class (or a subclass).
    pub result_class: Option<String>,
    /// Only associations whose property naming the source is this one.
    pub role: Option<String>,
    /// Associators only: only ends named by this property.
    pub result_role: Option<String>,
}

/// The reference properties of `assoc` that point at `identity`.
fn roles_of(assoc: &Instance, identity: &str) -> Vec<String> {
    assoc
        .properties
        .iter()
        .filter(|(_, v)| matches!(v, Value::Ref(p) if ObjectPath::parse(p).is_ok_and(|p| p.identity() == identity)))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The associations that refer to `target`, filtered by `AssocClass` and
/// `Role`, in identity order.
pub fn references(schema: &Schema, source: &dyn Instances, target: &ObjectPath, f: &AssocFilter) -> Vec<Instance> {
    let identity = target.identity();
    let mut out: Vec<Instance> = source
        .referring_to(&identity)
        .into_iter()
        .filter(|a| f.assoc_class.as_deref().is_none_or(|c| schema.is_a(&a.class, c)))
        .filter(|a| f.role.as_deref().is_none_or(|r| roles_of(a, &identity).iter().any(|k| k.eq_ignore_ascii_case(r))))
        .collect();
    out.sort_by_cached_key(|i| i.path.identity());
    out
}

/// The instances associated with `target`: for each of its references
/// (filtered as in [`references`]), the instances its other reference
/// properties point at, filtered by `ResultClass` and `ResultRole`. Each
/// appears once, in identity order.
pub fn associators(schema: &Schema, source: &dyn Instances, target: &ObjectPath, f: &AssocFilter) -> Vec<Instance> {
    let identity = target.identity();
    let mut ends: BTreeMap<String, Instance> = BTreeMap::new();
    for assoc in references(schema, source, target, f) {
        let own = roles_of(&assoc, &identity);
        for (k, v) in &assoc.properties {
            let Value::Ref(p) = v else { continue };
            if own.iter().any(|o| o.eq_ignore_ascii_case(k)) {
                continue;
            }
            if f.result_role.as_deref().is_some_and(|r| !r.eq_ignore_ascii_case(k)) {
                continue;
            }
            let Some(end) = ObjectPath::parse(p).ok().and_then(|p| source.get(&p.identity())) else { continue };
            if f.result_class.as_deref().is_some_and(|c| !schema.is_a(&end.class, c)) {
                continue;
            }
            ends.insert(end.path.identity(), end);
        }
    }
    ends.into_values().collect()
}

/// A page of `items` (in identity order) strictly after `after` (an
/// identity), at most `limit`; and the identity to continue after, if more
/// remain.
pub fn page(items: Vec<Instance>, after: Option<&str>, limit: usize) -> (Vec<Instance>, Option<String>) {
    let mut rest: Vec<Instance> =
        items.into_iter().filter(|i| after.is_none_or(|a| i.path.identity().as_str() > a)).collect();
    let next = (rest.len() > limit).then(|| rest[limit - 1].path.identity());
    rest.truncate(limit);
    (rest, next)
}

/// An instance after a change: the given properties replace theirs (all
/// properties are replaced when `replace`; keys not given keep their
/// values). Types and keys are checked; a key cannot change, since that
/// would be another instance. Returns the new instance and the names of the
/// properties whose value changed. References are not looked up here.
///
/// # Errors
/// `Value` for a bad property or a key that changes.
pub fn merge(
    schema: &Schema,
    namespace: &str,
    old: &Instance,
    properties: &serde_json::Map<String, serde_json::Value>,
    replace: bool,
) -> Result<(Instance, Vec<String>)> {
    let mut merged: serde_json::Map<String, serde_json::Value> = if replace {
        serde_json::Map::new()
    } else {
        old.properties.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
    };
    for (k, v) in properties {
        let existing = merged.keys().find(|m| m.eq_ignore_ascii_case(k)).cloned();
        merged.insert(existing.unwrap_or_else(|| k.clone()), v.clone());
    }
    if replace {
        for (k, _) in &old.path.keys {
            if !merged.keys().any(|m| m.eq_ignore_ascii_case(k)) {
                merged.insert(k.clone(), old.get(k).to_json());
            }
        }
    }
    let (values, new_path) = schema.instance(namespace, &old.class, &merged)?;
    if new_path.identity() != old.path.identity() {
        let key =
            old.path.keys.iter().find(|(k, v)| new_path.key(k) != Some(v)).map_or_else(String::new, |(k, _)| k.clone());
        return Err(Error::Value { property: key, message: "is a key and cannot change".into() });
    }
    let names: BTreeSet<&String> = old.properties.keys().chain(values.keys()).collect();
    let changed: Vec<String> =
        names.into_iter().filter(|k| old.properties.get(*k) != values.get(*k)).cloned().collect();
    Ok((Instance { path: old.path.clone(), class: old.class.clone(), properties: values }, changed))
}

/// An in-memory model repository: one namespace's schema and instances.
/// The reference for the store's implementation, and a working repository
/// on its own.
#[derive(Clone, Debug)]
pub struct MemoryModel {
    /// The namespace.
    pub namespace: String,
    /// Its classes.
    pub schema: Schema,
    /// Instances by identity.
    instances: BTreeMap<String, Instance>,
}

impl Instances for MemoryModel {
    fn get(&self, identity: &str) -> Option<Instance> {
        self.instances.get(identity).cloned()
    }

    fn of_class(&self, class: &str) -> Vec<Instance> {
        self.instances.values().filter(|i| i.class.eq_ignore_ascii_case(class)).cloned().collect()
    }

    fn referring_to(&self, identity: &str) -> Vec<Instance> {
        self.instances.values().filter(|i| !roles_of(i, identity).is_empty()).cloned().collect()
    }
}

impl MemoryModel {
    /// An empty repository over `schema`.
    pub fn new(namespace: &str, schema: Schema) -> MemoryModel {
        MemoryModel { namespace: namespace.to_string(), schema, instances: BTreeMap::new() }
    }

    fn check_refs(&self, values: &BTreeMap<String, Value>, class: &str) -> Result<()> {
        let resolved = self.schema.resolve(class)?;
        for p in resolved.references() {
            let Some(Value::Ref(path)) = values.get(&p.name) else { continue };
            let target = ObjectPath::parse(path)?;
            let found = self.instances.get(&target.identity()).ok_or_else(|| Error::Value {
                property: p.name.clone(),
                message: format!("refers to {path}, which does not exist"),
            })?;
            if let Some(c) = &p.class {
                if !self.schema.is_a(&found.class, c) {
                    return Err(Error::Value {
                        property: p.name.clone(),
                        message: format!("refers to a {}, not a {c}", found.class),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates an instance of `class` from JSON properties.
    ///
    /// # Errors
    /// As [`Schema::instance`]; a reference to a missing instance or one of
    /// the wrong class; `Schema` if the instance exists.
    pub fn create(&mut self, class: &str, properties: &serde_json::Map<String, serde_json::Value>) -> Result<Instance> {
        let (values, path) = self.schema.instance(&self.namespace, class, properties)?;
        self.check_refs(&values, class)?;
        let identity = path.identity();
        if self.instances.contains_key(&identity) {
            return Err(Error::Schema(format!("instance {path} already exists")));
        }
        let class = self.schema.resolve(class)?.name;
        let instance = Instance { path, class, properties: values };
        self.instances.insert(identity, instance.clone());
        Ok(instance)
    }

    /// Changes the given properties of an instance (all of them when
    /// `replace`); see [`merge`]. References are checked as on create.
    /// Returns the instance after the change and the names that changed.
    ///
    /// # Errors
    /// `Schema` for a missing instance; as [`merge`]; a bad reference.
    pub fn modify(
        &mut self,
        path: &ObjectPath,
        properties: &serde_json::Map<String, serde_json::Value>,
        replace: bool,
    ) -> Result<(Instance, Vec<String>)> {
        let identity = path.identity();
        let old = self.instances.get(&identity).cloned().ok_or_else(|| Error::Schema(format!("no instance {path}")))?;
        let (instance, changed) = merge(&self.schema, &self.namespace, &old, properties, replace)?;
        self.check_refs(&instance.properties, &old.class)?;
        self.instances.insert(identity, instance.clone());
        Ok((instance, changed))
    }

    /// Deletes an instance. If associations refer to it, the deletion is
    /// refused, naming them, unless `cascade`, which deletes them first.
    /// Returns every instance deleted, the associations first.
    ///
    /// # Errors
    /// `Schema` for a missing instance or a refused deletion.
    pub fn delete(&mut self, path: &ObjectPath, cascade: bool) -> Result<Vec<Instance>> {
        let identity = path.identity();
        if !self.instances.contains_key(&identity) {
            return Err(Error::Schema(format!("no instance {path}")));
        }
        let referring = self.referring_to(&identity);
        if !referring.is_empty() && !cascade {
            let names: Vec<String> = referring.iter().take(10).map(|a| a.path.to_string()).collect();
            return Err(Error::Schema(format!(
                "{} association(s) refer to {path} ({}); delete them first or ask for a cascade",
                referring.len(),
                names.join(", ")
            )));
        }
        let mut deleted = Vec::new();
        for assoc in referring {
            // An association may itself be referred to (associations of
            // associations): cascade all the way.
            deleted.extend(self.delete(&assoc.path, true)?);
        }
        if let Some(i) = self.instances.remove(&identity) {
            deleted.push(i);
        }
        Ok(deleted)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::schema::ClassDef;
    use serde_json::json;

    fn obj(j: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        j.as_object().unwrap().clone()
    }

    /// Two hosts (one a Lab_Host subclass), a service on each, one software
    /// identity installed on h1.
    fn model() -> (MemoryModel, Vec<ObjectPath>) {
        let mut schema = Schema::core();
        let lab: ClassDef = serde_json::from_value(json!({"name": "Lab_Host", "superclass": "CIM_ComputerSystem",
            "properties": [{"name": "Rack", "type": "string"}]}))
        .unwrap();
        schema.define(lab, &|_: &str| false).unwrap();
        let mut m = MemoryModel::new("root/cimv2", schema);
        let h1 = m
            .create(
                "CIM_ComputerSystem",
                &obj(json!({"CreationClassName": "CIM_ComputerSystem", "Name": "h1", "EnabledState": 2})),
            )
            .unwrap()
            .path;
        let h2 = m
            .create(
                "Lab_Host",
                &obj(json!({"CreationClassName": "Lab_Host", "Name": "h2", "Rack": "r7", "EnabledState": 3})),
            )
            .unwrap()
            .path;
        let svc = |m: &mut MemoryModel, host: &str, ccn: &str| {
            m.create(
                "CIM_Service",
                &obj(json!({"SystemCreationClassName": ccn, "SystemName": host,
                "CreationClassName": "CIM_Service", "Name": format!("sshd@{host}")})),
            )
            .unwrap()
            .path
        };
        let s1 = svc(&mut m, "h1", "CIM_ComputerSystem");
        let s2 = svc(&mut m, "h2", "Lab_Host");
        for (h, s) in [(&h1, &s1), (&h2, &s2)] {
            m.create("CIM_HostedService", &obj(json!({"Antecedent": h.to_string(), "Dependent": s.to_string()})))
                .unwrap();
        }
        let sw = m
            .create("CIM_SoftwareIdentity", &obj(json!({"InstanceID": "bash-5.2", "VersionString": "5.2"})))
            .unwrap()
            .path;
        m.create(
            "CIM_InstalledSoftwareIdentity",
            &obj(json!({"System": h1.to_string(), "InstalledSoftware": sw.to_string()})),
        )
        .unwrap();
        (m, vec![h1, h2, s1, s2, sw])
    }

    fn names(v: &[Instance]) -> Vec<String> {
        v.iter()
            .map(|i| {
                let name = i.get("Name");
                let id = i.get("InstanceID");
                name.text().or(id.text()).unwrap_or("-").to_string()
            })
            .collect()
    }

    #[test]
    fn enumeration_is_deep_or_shallow() {
        let (m, _) = model();
        let deep = enumerate(&m.schema, &m, "CIM_ComputerSystem", true).unwrap();
        assert_eq!(names(&deep), ["h1", "h2"]);
        assert_eq!(deep[1].class, "Lab_Host");
        assert_eq!(deep[1].get("rack"), Value::Str("r7".into()), "a subclass instance keeps its own properties");
        assert_eq!(names(&enumerate(&m.schema, &m, "CIM_ComputerSystem", false).unwrap()), ["h1"]);
        // Hosts, services and the software identity; associations are not
        // managed elements.
        assert_eq!(enumerate(&m.schema, &m, "CIM_ManagedElement", true).unwrap().len(), 5);
        assert!(enumerate(&m.schema, &m, "Nope", true).is_err());
    }

    #[test]
    fn queries_select_filter_and_project() {
        let (m, _) = model();
        let q = crate::wql::parse("SELECT Name FROM CIM_System WHERE EnabledState = 2 OR Rack LIKE 'r%'").unwrap();
        let rows = select(&m.schema, &m, &q).unwrap();
        assert_eq!(names(&rows), ["h1", "h2"]);
        assert_eq!(rows[0].properties.keys().collect::<Vec<_>>(), ["Name"]);
        let q = crate::wql::parse("SELECT * FROM CIM_ManagedElement WHERE __Class ISA Lab_Host").unwrap();
        assert_eq!(names(&select(&m.schema, &m, &q).unwrap()), ["h2"]);
        let q = crate::wql::parse("SELECT * FROM CIM_HostedService WHERE Antecedent ISA Lab_Host").unwrap();
        assert_eq!(select(&m.schema, &m, &q).unwrap().len(), 1, "ISA follows a reference");
        let q = crate::wql::parse("SELECT Bogus FROM CIM_System").unwrap();
        assert!(select(&m.schema, &m, &q).unwrap_err().to_string().contains("Bogus"));
    }

    #[test]
    fn references_and_associators_with_each_filter() {
        let (m, p) = model();
        let (h1, s1, sw) = (&p[0], &p[2], &p[4]);
        let none = AssocFilter::default();
        assert_eq!(references(&m.schema, &m, h1, &none).len(), 2);
        let f = |a: Option<&str>, rc: Option<&str>, r: Option<&str>, rr: Option<&str>| AssocFilter {
            assoc_class: a.map(Into::into),
            result_class: rc.map(Into::into),
            role: r.map(Into::into),
            result_role: rr.map(Into::into),
        };
        assert_eq!(references(&m.schema, &m, h1, &f(Some("CIM_Dependency"), None, None, None)).len(), 1);
        assert_eq!(references(&m.schema, &m, h1, &f(None, None, Some("System"), None)).len(), 1);
        assert_eq!(references(&m.schema, &m, h1, &f(None, None, Some("Dependent"), None)).len(), 0);
        // In identity order: cim_service before cim_softwareidentity.
        assert_eq!(names(&associators(&m.schema, &m, h1, &none)), ["sshd@h1", "bash-5.2"]);
        assert_eq!(
            names(&associators(&m.schema, &m, h1, &f(Some("CIM_HostedService"), None, None, None))),
            ["sshd@h1"]
        );
        assert_eq!(
            names(&associators(&m.schema, &m, h1, &f(None, Some("CIM_SoftwareIdentity"), None, None))),
            ["bash-5.2"]
        );
        assert_eq!(names(&associators(&m.schema, &m, h1, &f(None, None, None, Some("Dependent")))), ["sshd@h1"]);
        assert_eq!(
            names(&associators(&m.schema, &m, s1, &f(None, None, Some("Dependent"), Some("Antecedent")))),
            ["h1"]
        );
        assert_eq!(names(&associators(&m.schema, &m, sw, &none)), ["h1"]);
    }

    #[test]
    fn references_must_exist_and_deletes_follow_the_rule() {
        let (mut m, p) = model();
        let ghost = "root/cimv2:CIM_ComputerSystem.CreationClassName=\"CIM_ComputerSystem\",Name=\"ghost\"";
        let err = m
            .create("CIM_HostedService", &obj(json!({"Antecedent": ghost, "Dependent": p[2].to_string()})))
            .unwrap_err();
        assert!(
            err.to_string().contains("property Antecedent: refers to") && err.to_string().contains("does not exist"),
            "{err}"
        );
        let err = m
            .create("CIM_HostedService", &obj(json!({"Antecedent": p[4].to_string(), "Dependent": p[2].to_string()})))
            .unwrap_err();
        assert!(err.to_string().contains("not a CIM_System"), "{err}");
        let err = m.delete(&p[0], false).unwrap_err();
        assert!(err.to_string().contains("2 association(s) refer to"), "{err}");
        let gone = m.delete(&p[0], true).unwrap();
        assert_eq!(gone.len(), 3, "the host and its two associations");
        assert_eq!(enumerate(&m.schema, &m, "CIM_Dependency", true).unwrap().len(), 1);
    }

    #[test]
    fn modify_keeps_keys_and_reports_changes() {
        let (mut m, p) = model();
        let (after, changed) = m.modify(&p[1], &obj(json!({"rack": "r8"})), false).unwrap();
        assert_eq!(changed, ["Rack"]);
        assert_eq!(after.get("EnabledState"), Value::Int(3), "a partial change keeps the rest");
        let (after, changed) = m.modify(&p[1], &obj(json!({"Rack": "r9"})), true).unwrap();
        assert_eq!(after.get("EnabledState"), Value::Null, "a whole replacement drops what is not given");
        assert_eq!(changed, ["EnabledState", "Rack"]);
        let err = m.modify(&p[1], &obj(json!({"Name": "h3"})), false).unwrap_err();
        assert!(err.to_string().contains("property Name: is a key and cannot change"), "{err}");
        assert!(m.modify(&p[1], &obj(json!({"Rack": 5})), false).unwrap_err().to_string().contains("property Rack"));
    }

    #[test]
    fn pages_are_stable_and_complete() {
        let (m, _) = model();
        let all = enumerate(&m.schema, &m, "CIM_ManagedElement", true).unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (items, next) = page(all.clone(), after.as_deref(), 2);
            seen.extend(items.into_iter().map(|i| i.path.identity()));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, all.iter().map(|i| i.path.identity()).collect::<Vec<_>>());
    }
}
