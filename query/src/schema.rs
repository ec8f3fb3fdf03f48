//! CIM schema: classes with single inheritance, typed properties, keys and
//! associations, one [`Schema`] per namespace.
//!
//! A class names its superclass (which must already exist), declares its
//! own properties and inherits the rest; a property may be redeclared by a
//! subclass only with the same type (to narrow a reference's class or to
//! mark it as a key is not allowed once instances exist). An association
//! class has at least two reference properties, counting inherited ones.
//! Class and property names are case-insensitive and keep the case they were
//! declared with.
//!
//! [`Schema::core`] is the set pepper ships in `root/cimv2`, with each
//! class's key properties as in DMTF CIM (a subset of their properties).
//!
//! In JSON a class is `{"name", "superclass"?, "association"?, "properties":
//! [{"name", "type", "key"?, "class"?}]}`, where `type` is a CIM type name
//! (`uint32`, `string[]`, `reference`, ...) and `class` the class a
//! reference points to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::path::{KeyValue, ObjectPath};
use crate::value::{CimType, Scalar, Value};

/// The namespace of the built-in classes.
pub const CORE_NAMESPACE: &str = "root/cimv2";

/// Most classes one namespace holds.
pub const CLASSES_MAX: usize = 10_000;

/// Most properties one class declares.
pub const PROPERTIES_MAX: usize = 256;

/// A property declaration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyDef {
    /// The property's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: CimType,
    /// Whether it is part of the instance's key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key: bool,
    /// For a reference: the class (or a superclass) of what it points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// A class declaration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDef {
    /// The class name.
    pub name: String,
    /// The superclass, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superclass: Option<String>,
    /// Whether instances are associations between other instances.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub association: bool,
    /// The properties this class declares (not the inherited ones).
    #[serde(default)]
    pub properties: Vec<PropertyDef>,
}

/// A class with everything it inherits, as instances see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The class name, as declared.
    pub name: String,
    /// The class and its ancestors, the class first.
    pub lineage: Vec<String>,
    /// Every property, inherited ones first, by declaration order.
    pub properties: Vec<PropertyDef>,
    /// Whether it is an association.
    pub association: bool,
}

impl Resolved {
    /// The property named `name` (case-insensitive).
    pub fn property(&self, name: &str) -> Option<&PropertyDef> {
        self.properties.iter().find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The key properties.
    pub fn keys(&self) -> impl Iterator<Item = &PropertyDef> {
        self.properties.iter().filter(|p| p.key)
    }

    /// The reference properties.
    pub fn references(&self) -> impl Iterator<Item = &PropertyDef> {
        self.properties.iter().filter(|p| p.ty.scalar == Scalar::Reference)
    }
}

/// The classes of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    /// By lowercase name.
    classes: BTreeMap<String, ClassDef>,
}

fn name_ok(what: &str, n: &str) -> Result<()> {
    let mut chars = n.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.len() <= 256;
    if ok {
        Ok(())
    } else {
        Err(Error::Schema(format!("{what} {n:?} must be a letter or '_' then up to 255 letters, digits or '_'")))
    }
}

impl Schema {
    /// The class named `name` (case-insensitive), as declared.
    pub fn get(&self, name: &str) -> Option<&ClassDef> {
        self.classes.get(&name.to_ascii_lowercase())
    }

    /// Every class, by name.
    pub fn classes(&self) -> impl Iterator<Item = &ClassDef> {
        self.classes.values()
    }

    /// The class with its inherited properties.
    ///
    /// # Errors
    /// `Schema` for an unknown class.
    pub fn resolve(&self, name: &str) -> Result<Resolved> {
        let mut lineage = Vec::new();
        let mut chain = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            let def = self.get(&n).ok_or_else(|| Error::Schema(format!("no class {n}")))?;
            lineage.push(def.name.clone());
            chain.push(def);
            next = def.superclass.clone();
            if chain.len() > self.classes.len() {
                return Err(Error::Schema(format!("class {name} inherits from itself")));
            }
        }
        let mut properties: Vec<PropertyDef> = Vec::new();
        for def in chain.iter().rev() {
            for p in &def.properties {
                match properties.iter_mut().find(|q| q.name.eq_ignore_ascii_case(&p.name)) {
                    // A redeclaration narrows what it may: the reference's class.
                    Some(q) => {
                        q.class = p.class.clone().or(q.class.take());
                        q.key |= p.key;
                    }
                    None => properties.push(p.clone()),
                }
            }
        }
        Ok(Resolved {
            name: chain[0].name.clone(),
            lineage,
            properties,
            association: chain.iter().any(|d| d.association),
        })
    }

    /// Whether `class` is `ancestor` or inherits from it.
    pub fn is_a(&self, class: &str, ancestor: &str) -> bool {
        let mut next = self.get(class);
        let mut steps = 0;
        while let Some(def) = next {
            if def.name.eq_ignore_ascii_case(ancestor) {
                return true;
            }
            steps += 1;
            if steps > self.classes.len() {
                return false;
            }
            next = def.superclass.as_deref().and_then(|s| self.get(s));
        }
        false
    }

    /// `class` and every class that inherits from it.
    pub fn with_subclasses(&self, class: &str) -> Vec<String> {
        self.classes.values().filter(|d| self.is_a(&d.name, class)).map(|d| d.name.clone()).collect()
    }

    /// Adds or replaces a class after checking it. `has_instances(c)` says
    /// whether class `c` has instances; a change to the keys of a class that
    /// has them (or whose subclasses have them) is refused.
    ///
    /// # Errors
    /// `Schema` saying what is wrong: a bad name, an unknown superclass or
    /// reference class, a duplicate or retyped property, an association
    /// without two references, a cycle, a key change on a class with
    /// instances, or too many classes or properties.
    pub fn define(&mut self, def: ClassDef, has_instances: &dyn Fn(&str) -> bool) -> Result<()> {
        name_ok("class name", &def.name)?;
        if def.properties.len() > PROPERTIES_MAX {
            return Err(Error::Schema(format!("class {} declares over {PROPERTIES_MAX} properties", def.name)));
        }
        let existing = self.get(&def.name).cloned();
        if existing.is_none() && self.classes.len() >= CLASSES_MAX {
            return Err(Error::Schema(format!("a namespace holds at most {CLASSES_MAX} classes")));
        }
        if let Some(sup) = &def.superclass {
            if self.get(sup).is_none() {
                return Err(Error::Schema(format!("class {}: unknown superclass {sup}", def.name)));
            }
            if self.is_a(sup, &def.name) {
                return Err(Error::Schema(format!("class {}: superclass {sup} inherits from it (a cycle)", def.name)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &def.properties {
            name_ok("property name", &p.name)?;
            if !seen.insert(p.name.to_ascii_lowercase()) {
                return Err(Error::Schema(format!("class {}: property {} is declared twice", def.name, p.name)));
            }
            match (&p.class, p.ty.scalar) {
                (Some(c), Scalar::Reference) if self.get(c).is_none() && !c.eq_ignore_ascii_case(&def.name) => {
                    return Err(Error::Schema(format!(
                        "class {}: property {} refers to unknown class {c}",
                        def.name, p.name
                    )))
                }
                (Some(_), s) if s != Scalar::Reference => {
                    return Err(Error::Schema(format!(
                        "class {}: property {} is a {}, only references name a class",
                        def.name, p.name, p.ty
                    )))
                }
                _ => {}
            }
            if p.key && p.ty.array {
                return Err(Error::Schema(format!("class {}: key {} cannot be an array", def.name, p.name)));
            }
        }
        // Inherited properties keep their type.
        if let Some(sup) = &def.superclass {
            let parent = self.resolve(sup)?;
            for p in &def.properties {
                if let Some(q) = parent.property(&p.name) {
                    if q.ty != p.ty {
                        return Err(Error::Schema(format!(
                            "class {}: property {} is a {} in {}, not a {}",
                            def.name, p.name, q.ty, sup, p.ty
                        )));
                    }
                }
            }
        }
        let mut next = self.clone();
        next.classes.insert(def.name.to_ascii_lowercase(), def.clone());
        let resolved = next.resolve(&def.name)?;
        if resolved.association && resolved.references().count() < 2 {
            return Err(Error::Schema(format!("association {} needs at least two reference properties", def.name)));
        }
        if let Some(old) = existing {
            let keys = |s: &Schema| -> Result<Vec<String>> {
                Ok(s.resolve(&old.name)?.keys().map(|p| p.name.to_ascii_lowercase()).collect())
            };
            let instances = self.with_subclasses(&old.name).iter().any(|c| has_instances(c));
            if instances && keys(self)? != keys(&next)? {
                return Err(Error::Schema(format!(
                    "class {} has instances: its key properties cannot change",
                    def.name
                )));
            }
        }
        *self = next;
        Ok(())
    }

    /// Checks an instance's properties against `class`: every property must
    /// be declared (own or inherited) and fit its type, and every key must
    /// have a value. Returns the typed values by declared name, and the
    /// instance's object path in `namespace`.
    ///
    /// # Errors
    /// `Schema` for an unknown class; `Value` naming the property that is
    /// unknown, mistyped or a missing key.
    pub fn instance(
        &self,
        namespace: &str,
        class: &str,
        properties: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(BTreeMap<String, Value>, ObjectPath)> {
        let resolved = self.resolve(class)?;
        let mut values = BTreeMap::new();
        for (name, json) in properties {
            let def = resolved.property(name).ok_or_else(|| Error::Value {
                property: name.clone(),
                message: format!("class {} has no such property", resolved.name),
            })?;
            values.insert(def.name.clone(), def.ty.check(&def.name, json)?);
        }
        let mut keys = Vec::new();
        for k in resolved.keys() {
            let key = match values.get(&k.name) {
                None | Some(Value::Null) => {
                    return Err(Error::Value {
                        property: k.name.clone(),
                        message: "is a key and must have a value".into(),
                    })
                }
                Some(Value::Int(n)) => KeyValue::Int(*n),
                Some(Value::Bool(b)) => KeyValue::Bool(*b),
                Some(v) => KeyValue::Str(v.text().unwrap_or_default().to_string()),
            };
            keys.push((k.name.clone(), key));
        }
        let path = ObjectPath::new(namespace, &resolved.name, keys)?;
        Ok((values, path))
    }

    /// The classes pepper ships in [`CORE_NAMESPACE`].
    pub fn core() -> Schema {
        let mut s = Schema::default();
        let p = |name: &str, ty: &str| PropertyDef {
            name: name.into(),
            ty: CimType::parse(ty).unwrap_or(CimType { scalar: Scalar::String, array: false }),
            key: false,
            class: None,
        };
        let key = |name: &str, ty: &str| PropertyDef { key: true, ..p(name, ty) };
        let reference =
            |name: &str, class: &str| PropertyDef { key: true, class: Some(class.into()), ..p(name, "reference") };
        let class = |name: &str, sup: Option<&str>, association: bool, properties: Vec<PropertyDef>| ClassDef {
            name: name.into(),
            superclass: sup.map(Into::into),
            association,
            properties,
        };
        let defs = [
            class(
                "CIM_ManagedElement",
                None,
                false,
                vec![
                    p("InstanceID", "string"),
                    p("Caption", "string"),
                    p("Description", "string"),
                    p("ElementName", "string"),
                ],
            ),
            class(
                "CIM_ManagedSystemElement",
                Some("CIM_ManagedElement"),
                false,
                vec![
                    p("Name", "string"),
                    p("InstallDate", "datetime"),
                    p("OperationalStatus", "uint16[]"),
                    p("Status", "string"),
                ],
            ),
            class("CIM_LogicalElement", Some("CIM_ManagedSystemElement"), false, vec![]),
            class(
                "CIM_EnabledLogicalElement",
                Some("CIM_LogicalElement"),
                false,
                vec![p("EnabledState", "uint16"), p("RequestedState", "uint16"), p("EnabledDefault", "uint16")],
            ),
            class(
                "CIM_System",
                Some("CIM_EnabledLogicalElement"),
                false,
                vec![
                    key("CreationClassName", "string"),
                    key("Name", "string"),
                    p("NameFormat", "string"),
                    p("PrimaryOwnerName", "string"),
                ],
            ),
            class(
                "CIM_ComputerSystem",
                Some("CIM_System"),
                false,
                vec![p("Dedicated", "uint16[]"), p("OtherIdentifyingInfo", "string[]")],
            ),
            class(
                "CIM_Service",
                Some("CIM_EnabledLogicalElement"),
                false,
                vec![
                    key("SystemCreationClassName", "string"),
                    key("SystemName", "string"),
                    key("CreationClassName", "string"),
                    key("Name", "string"),
                    p("Started", "boolean"),
                    p("StartMode", "string"),
                ],
            ),
            class(
                "CIM_ServiceAccessPoint",
                Some("CIM_EnabledLogicalElement"),
                false,
                vec![
                    key("SystemCreationClassName", "string"),
                    key("SystemName", "string"),
                    key("CreationClassName", "string"),
                    key("Name", "string"),
                ],
            ),
            class(
                "CIM_SoftwareIdentity",
                Some("CIM_LogicalElement"),
                false,
                vec![
                    key("InstanceID", "string"),
                    p("VersionString", "string"),
                    p("Manufacturer", "string"),
                    p("MajorVersion", "uint16"),
                    p("MinorVersion", "uint16"),
                ],
            ),
            class(
                "CIM_Dependency",
                None,
                true,
                vec![reference("Antecedent", "CIM_ManagedElement"), reference("Dependent", "CIM_ManagedElement")],
            ),
            class(
                "CIM_HostedService",
                Some("CIM_Dependency"),
                true,
                vec![reference("Antecedent", "CIM_System"), reference("Dependent", "CIM_Service")],
            ),
            class(
                "CIM_HostedAccessPoint",
                Some("CIM_Dependency"),
                true,
                vec![reference("Antecedent", "CIM_System"), reference("Dependent", "CIM_ServiceAccessPoint")],
            ),
            class(
                "CIM_InstalledSoftwareIdentity",
                None,
                true,
                vec![reference("System", "CIM_System"), reference("InstalledSoftware", "CIM_SoftwareIdentity")],
            ),
        ];
        for def in defs {
            s.classes.insert(def.name.to_ascii_lowercase(), def);
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none(_: &str) -> bool {
        false
    }

    fn def(j: serde_json::Value) -> ClassDef {
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn the_core_set_is_valid_and_keyed_as_in_dmtf_cim() {
        let core = Schema::core();
        // Every core class passes the same checks as a user's class.
        let mut rebuilt = Schema::default();
        for name in [
            "CIM_ManagedElement",
            "CIM_ManagedSystemElement",
            "CIM_LogicalElement",
            "CIM_EnabledLogicalElement",
            "CIM_System",
            "CIM_ComputerSystem",
            "CIM_Service",
            "CIM_ServiceAccessPoint",
            "CIM_SoftwareIdentity",
            "CIM_Dependency",
            "CIM_HostedService",
            "CIM_HostedAccessPoint",
            "CIM_InstalledSoftwareIdentity",
        ] {
            rebuilt.define(core.get(name).unwrap().clone(), &none).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(rebuilt, core);
        let keys = |c: &str| {
            let mut k = core.resolve(c).unwrap().keys().map(|p| p.name.clone()).collect::<Vec<_>>();
            k.sort();
            k
        };
        // Name is inherited from CIM_ManagedSystemElement and made a key by CIM_System.
        assert_eq!(keys("CIM_ComputerSystem"), ["CreationClassName", "Name"]);
        assert_eq!(keys("CIM_Service"), ["CreationClassName", "Name", "SystemCreationClassName", "SystemName"]);
        assert_eq!(keys("CIM_SoftwareIdentity"), ["InstanceID"]);
        assert_eq!(keys("CIM_HostedService"), ["Antecedent", "Dependent"]);
        assert!(core.is_a("cim_computersystem", "CIM_ManagedElement"));
        assert!(!core.is_a("CIM_Service", "CIM_System"));
        let hosted = core.resolve("CIM_HostedService").unwrap();
        assert_eq!(hosted.property("antecedent").unwrap().class.as_deref(), Some("CIM_System"));
        assert!(hosted.association);
    }

    #[test]
    fn user_classes_are_checked() {
        let mut s = Schema::core();
        let ok = def(json!({"name": "Lab_Host", "superclass": "CIM_ComputerSystem",
                            "properties": [{"name": "Rack", "type": "string"}, {"name": "Cores", "type": "uint16"}]}));
        s.define(ok, &none).unwrap();
        assert!(s.with_subclasses("CIM_System").contains(&"Lab_Host".to_string()));
        for (bad, needle) in [
            (json!({"name": "A", "superclass": "Nope"}), "unknown superclass"),
            (json!({"name": "9A"}), "class name"),
            (
                json!({"name": "A", "properties": [{"name": "x", "type": "string"}, {"name": "X", "type": "uint8"}]}),
                "declared twice",
            ),
            (
                json!({"name": "A", "superclass": "CIM_System", "properties": [{"name": "Name", "type": "uint32"}]}),
                "is a string in",
            ),
            (
                json!({"name": "A", "association": true, "properties": [{"name": "R", "type": "reference", "class": "CIM_System"}]}),
                "two reference",
            ),
            (
                json!({"name": "A", "properties": [{"name": "R", "type": "reference", "class": "Nope"}]}),
                "unknown class Nope",
            ),
            (
                json!({"name": "A", "properties": [{"name": "R", "type": "string", "class": "CIM_System"}]}),
                "only references",
            ),
            (
                json!({"name": "A", "properties": [{"name": "K", "type": "string[]", "key": true}]}),
                "cannot be an array",
            ),
            (json!({"name": "CIM_ManagedElement", "superclass": "Lab_Host"}), "cycle"),
        ] {
            let err = s.define(def(bad.clone()), &none).expect_err(&bad.to_string()).to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert!(serde_json::from_value::<ClassDef>(json!({"name": "A", "propertys": []})).is_err());
        assert!(serde_json::from_value::<ClassDef>(json!({"name": "A", "properties": [{"name": "x", "type": "int"}]}))
            .is_err());
    }

    #[test]
    fn keys_cannot_change_once_instances_exist() {
        let mut s = Schema::core();
        s.define(
            def(json!({"name": "Lab_Thing", "properties": [{"name": "Id", "type": "string", "key": true}]})),
            &none,
        )
        .unwrap();
        let rekeyed = def(
            json!({"name": "Lab_Thing", "properties": [{"name": "Id", "type": "string"}, {"name": "Other", "type": "string", "key": true}]}),
        );
        let err = s.define(rekeyed.clone(), &|c: &str| c == "Lab_Thing").unwrap_err();
        assert!(err.to_string().contains("has instances"), "{err}");
        // Without instances the change is allowed; adding a non-key property always is.
        s.define(def(json!({"name": "Lab_Thing", "properties": [{"name": "Id", "type": "string", "key": true}, {"name": "Note", "type": "string"}]})), &|_: &str| true).unwrap();
        s.define(rekeyed, &none).unwrap();
    }

    #[test]
    fn instances_are_checked_and_get_their_path() {
        let s = Schema::core();
        let props = |j: serde_json::Value| j.as_object().unwrap().clone();
        let (values, path) = s
            .instance(
                "root/cimv2",
                "cim_computersystem",
                &props(json!({"Name": "h1", "CreationClassName": "CIM_ComputerSystem", "Dedicated": [0, 2]})),
            )
            .unwrap();
        assert_eq!(
            path.to_string(),
            r#"root/cimv2:CIM_ComputerSystem.CreationClassName="CIM_ComputerSystem",Name="h1""#
        );
        assert_eq!(values["Dedicated"], Value::Array(vec![Value::Int(0), Value::Int(2)]));
        for (bad, needle) in [
            (json!({"Name": "h1"}), "property CreationClassName: is a key"),
            (
                json!({"Name": "h1", "CreationClassName": "X", "Bogus": 1}),
                "property Bogus: class CIM_ComputerSystem has no such property",
            ),
            (json!({"Name": 7, "CreationClassName": "X"}), "property Name: expected a string"),
            (
                json!({"Name": "h", "CreationClassName": "X", "EnabledState": 70000}),
                "property EnabledState: 70000 is out of range",
            ),
        ] {
            let err = s.instance("root/cimv2", "CIM_ComputerSystem", &props(bad.clone())).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert!(s.instance("root/cimv2", "Nope", &props(json!({}))).is_err());
    }
}
