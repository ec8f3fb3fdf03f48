//! Model records materialized by the writer: classes, instances, their
//! history, and the two indexes (instances by class, referrers by target).
//!
//! The store does not interpret CIM: the query layer checks classes and
//! instances against the schema and hands over JSON, the canonical path and
//! identity, and the identities an instance refers to. The writer enforces
//! what must hold across concurrent writers, in the same critical section
//! that orders the log:
//!
//! - a create finds no instance with that identity, a change finds one;
//! - every reference points at an instance that exists (counting earlier
//!   records of the same request and write group);
//! - a delete finds no instance still referring to its target (an
//!   association deleted earlier in the same request no longer counts, which
//!   is how a cascade is written).
//!
//! Every effect goes in the batch of its record: the instance row, a history
//! row keyed by the record's seq, the class index entry and one reference
//! index entry per reference.

use std::collections::{BTreeSet, HashMap};

use crate::engine::{Batch, Direction, Engine, KeyRange};
use crate::error::{Error, Result};
use crate::keys::{
    self, CF_MODEL_CLASSES, CF_MODEL_CLASS_INDEX, CF_MODEL_HISTORY, CF_MODEL_INSTANCES, CF_MODEL_REF_INDEX,
};
use crate::record::{Body, ModelDelete, ModelPut};
use crate::rows::{decode_row, encode_row, ModelClassRow, ModelInstanceRow, ModelVersion};

/// Model state as a write group (or one request's check) sees it.
#[derive(Clone, Debug, Default)]
pub(crate) struct ModelOverlay {
    /// (namespace, identity) -> its class and references while it exists,
    /// `None` once deleted.
    instances: HashMap<(String, String), Option<Live>>,
    /// (namespace, target, source) -> whether the reference exists.
    refs: HashMap<(String, String, String), bool>,
    /// The classes the group defined, by namespace, in log order: told to
    /// the fold ([`crate::fold::Committed::classes`]).
    pub(crate) classes: Vec<(String, ModelClassRow)>,
}

/// What the writer needs of an existing instance: its class and references.
#[derive(Clone, Debug, Default)]
struct Live {
    class: String,
    refs: Vec<String>,
}

fn instance_key(ns: &str, identity: &str) -> Vec<u8> {
    keys::joined(&[ns, identity])
}

impl ModelOverlay {
    /// The instance's class and references, or `None` if it does not exist.
    fn instance(&self, engine: &dyn Engine, ns: &str, identity: &str) -> Result<Option<Live>> {
        if let Some(state) = self.instances.get(&(ns.to_string(), identity.to_string())) {
            return Ok(state.clone());
        }
        match engine.get(CF_MODEL_INSTANCES, &instance_key(ns, identity))? {
            Some(bytes) => {
                let row: ModelInstanceRow = decode_row("model instance", identity.as_bytes(), &bytes)?;
                Ok(Some(Live { class: row.class, refs: row.refs }))
            }
            None => Ok(None),
        }
    }

    /// The identities of instances that refer to `target`.
    fn referrers(&self, engine: &dyn Engine, ns: &str, target: &str) -> Result<BTreeSet<String>> {
        let prefix = {
            let mut p = keys::joined(&[ns, target]);
            p.push(keys::SEP);
            p
        };
        let mut out = BTreeSet::new();
        let upper = keys::prefix_end(&prefix);
        engine.scan(
            CF_MODEL_REF_INDEX,
            KeyRange::new(&prefix, upper.as_deref()),
            Direction::Forward,
            &mut |key, _| {
                out.insert(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
                Ok(true)
            },
        )?;
        for ((n, t, s), present) in &self.refs {
            if n == ns && t == target {
                if *present {
                    out.insert(s.clone());
                } else {
                    out.remove(s);
                }
            }
        }
        Ok(out)
    }

    /// Checks one request's model records in order, without writing, and
    /// records their effects in `self` (a copy for the request).
    pub(crate) fn check(&mut self, engine: &dyn Engine, records: &[&Body]) -> Result<()> {
        for body in records {
            match body {
                Body::ModelPut(p) => {
                    let exists = self.instance(engine, &p.namespace, &p.identity)?;
                    match (p.create, &exists) {
                        (true, Some(_)) => {
                            return Err(Error::Conflict {
                                what: "instance",
                                detail: format!("{} already exists", p.path),
                            })
                        }
                        (false, None) => return Err(Error::NotFound { what: "instance", key: p.path.clone() }),
                        _ => {}
                    }
                    for r in &p.refs {
                        if r != &p.identity && self.instance(engine, &p.namespace, r)?.is_none() {
                            return Err(Error::NotFound { what: "referenced instance", key: r.clone() });
                        }
                    }
                    self.apply_put(p, exists.map(|l| l.refs).unwrap_or_default());
                }
                Body::ModelDelete(d) => {
                    let Some(live) = self.instance(engine, &d.namespace, &d.identity)? else {
                        return Err(Error::NotFound { what: "instance", key: d.identity.clone() });
                    };
                    let referrers = self.referrers(engine, &d.namespace, &d.identity)?;
                    let others: Vec<&String> = referrers.iter().filter(|s| **s != d.identity).collect();
                    if !others.is_empty() {
                        let list: Vec<&str> = others.iter().take(10).map(|s| s.as_str()).collect();
                        return Err(Error::Conflict {
                            what: "instance",
                            detail: format!(
                                "{} instance(s) refer to {}: {}",
                                others.len(),
                                d.identity,
                                list.join(", ")
                            ),
                        });
                    }
                    self.apply_delete(d, live.refs);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_put(&mut self, p: &ModelPut, old_refs: Vec<String>) {
        for r in old_refs.iter().filter(|r| !p.refs.contains(r)) {
            self.refs.insert((p.namespace.clone(), r.clone(), p.identity.clone()), false);
        }
        for r in &p.refs {
            self.refs.insert((p.namespace.clone(), r.clone(), p.identity.clone()), true);
        }
        self.instances.insert(
            (p.namespace.clone(), p.identity.clone()),
            Some(Live { class: p.class.clone(), refs: p.refs.clone() }),
        );
    }

    fn apply_delete(&mut self, d: &ModelDelete, refs: Vec<String>) {
        for r in refs {
            self.refs.insert((d.namespace.clone(), r, d.identity.clone()), false);
        }
        self.instances.insert((d.namespace.clone(), d.identity.clone()), None);
    }

    /// Writes a checked model record's effects into the batch.
    pub(crate) fn materialize(
        &mut self,
        engine: &dyn Engine,
        batch: &mut Batch,
        seq: u64,
        time_us: u64,
        body: &Body,
    ) -> Result<()> {
        match body {
            Body::ModelClass(c) => {
                let row = ModelClassRow { seq, time_us, name: c.name.clone(), definition: c.definition.clone() };
                let key = keys::joined(&[&c.namespace, &c.name.to_ascii_lowercase()]);
                batch.put(CF_MODEL_CLASSES, key, encode_row(&row));
                self.classes.push((c.namespace.clone(), row));
            }
            Body::ModelPut(p) => {
                let old = self.instance(engine, &p.namespace, &p.identity)?.map(|l| l.refs).unwrap_or_default();
                let row = ModelInstanceRow {
                    seq,
                    time_us,
                    class: p.class.clone(),
                    path: p.path.clone(),
                    properties: p.properties.clone(),
                    refs: p.refs.clone(),
                };
                batch.put(CF_MODEL_INSTANCES, instance_key(&p.namespace, &p.identity), encode_row(&row));
                let version =
                    ModelVersion { time_us, class: p.class.clone(), properties: p.properties.clone(), deleted: false };
                batch.put(CF_MODEL_HISTORY, history_key(&p.namespace, &p.identity, seq), encode_row(&version));
                let class_key = keys::joined(&[&p.namespace, &p.class.to_ascii_lowercase(), &p.identity]);
                batch.put(CF_MODEL_CLASS_INDEX, class_key, []);
                for r in old.iter().filter(|r| !p.refs.contains(r)) {
                    batch.delete(CF_MODEL_REF_INDEX, keys::joined(&[&p.namespace, r, &p.identity]));
                }
                for r in &p.refs {
                    batch.put(CF_MODEL_REF_INDEX, keys::joined(&[&p.namespace, r, &p.identity]), []);
                }
                self.apply_put(p, old);
            }
            Body::ModelDelete(d) => {
                let Live { class, refs } = self.instance(engine, &d.namespace, &d.identity)?.unwrap_or_default();
                batch.delete(CF_MODEL_INSTANCES, instance_key(&d.namespace, &d.identity));
                let class_key = keys::joined(&[&d.namespace, &class.to_ascii_lowercase(), &d.identity]);
                batch.delete(CF_MODEL_CLASS_INDEX, class_key);
                for r in &refs {
                    batch.delete(CF_MODEL_REF_INDEX, keys::joined(&[&d.namespace, r, &d.identity]));
                }
                let version = ModelVersion { time_us, class, properties: Vec::new(), deleted: true };
                batch.put(CF_MODEL_HISTORY, history_key(&d.namespace, &d.identity, seq), encode_row(&version));
                self.apply_delete(d, refs);
            }
            _ => {}
        }
        Ok(())
    }
}

/// The `model_history` key of an instance version.
pub(crate) fn history_key(ns: &str, identity: &str, seq: u64) -> Vec<u8> {
    let mut k = keys::joined(&[ns, identity]);
    k.push(keys::SEP);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
