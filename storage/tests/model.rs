//! Model-based test: random mutations, with reopens, against a BTreeMap model.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;

use common::*;
use pepper_storage::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Set(u8, u8, u16),
    Put(u8, u16),
    Del(u8),
    Grant(u8),
    Renew(u8, u16),
    Release(u8),
    Forget(u8, u8),
}

#[derive(Clone, Debug)]
enum Step {
    Append(Vec<Op>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Few values, so a set often repeats the current one.
        4 => (0..4u8, 0..3u8, 0..3u16).prop_map(|(c, f, v)| Op::Set(c, f, v)),
        1 => (0..4u8, 0..3u8).prop_map(|(c, f)| Op::Forget(c, f)),
        2 => (0..6u8, any::<u16>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0..6u8).prop_map(Op::Del),
        1 => (0..3u8).prop_map(Op::Grant),
        1 => (0..3u8, any::<u16>()).prop_map(|(i, t)| Op::Renew(i, t)),
        1 => (0..3u8).prop_map(Op::Release),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => prop::collection::vec(op(), 1..5).prop_map(Step::Append),
        1 => Just(Step::Reopen),
    ]
}

fn channel(c: u8) -> String {
    format!("/m/{c}/")
}

#[derive(Clone, Default, Debug)]
struct Model {
    next_seq: u64,
    tuples: BTreeMap<(String, String), (String, u64)>,
    history: BTreeMap<(String, String), Vec<(u64, String)>>,
    docs: BTreeMap<String, (Vec<u8>, u64)>,
    leases: BTreeMap<String, (u64, u64)>, // id -> (granted_seq, ttl)
}

impl Model {
    /// Applies a batch atomically; `None` if a lease precondition fails.
    fn apply(&self, ops: &[Op]) -> Option<Model> {
        let mut m = self.clone();
        for op in ops {
            let seq = m.next_seq;
            match op {
                Op::Set(c, f, v) => {
                    let key = (channel(*c), format!("f{f}"));
                    // A repeated value refreshes the latest row only.
                    if m.tuples.get(&key).map(|t| &t.0) != Some(&v.to_string()) {
                        m.history.entry(key.clone()).or_default().push((seq, v.to_string()));
                    }
                    m.tuples.insert(key, (v.to_string(), seq));
                }
                Op::Put(k, v) => {
                    m.docs.insert(format!("k{k}"), (v.to_be_bytes().to_vec(), seq));
                }
                Op::Del(k) => {
                    m.docs.remove(&format!("k{k}"));
                }
                Op::Grant(i) => {
                    if m.leases.insert(format!("l{i}"), (seq, 1000)).is_some() {
                        return None;
                    }
                }
                Op::Renew(i, t) => m.leases.get_mut(&format!("l{i}"))?.1 = u64::from(*t),
                Op::Release(i) => {
                    m.leases.remove(&format!("l{i}"))?;
                }
                Op::Forget(c, f) => {
                    m.tuples.remove(&(channel(*c), format!("f{f}")))?;
                }
            }
            m.next_seq += 1;
        }
        Some(m)
    }
}

fn body(op: &Op) -> Body {
    match op {
        Op::Set(c, f, v) => tuple(&channel(*c), &format!("f{f}"), &v.to_string()),
        Op::Put(k, v) => doc(&format!("k{k}"), &v.to_be_bytes()),
        Op::Del(k) => Body::DocDelete(DocDelete { key: format!("k{k}") }),
        Op::Grant(i) => grant(&format!("l{i}"), "/m/"),
        Op::Renew(i, t) => {
            Body::LeaseRenew(LeaseRenew { id: format!("l{i}"), ttl_ms: u64::from(*t), expires_at_us: far_future() })
        }
        Op::Release(i) => Body::LeaseRelease(LeaseEnd { id: format!("l{i}") }),
        Op::Forget(c, f) => Body::TupleDelete(TupleEnd { channel: channel(*c), field: format!("f{f}") }),
    }
}

fn compare(store: &Store, model: &Model) {
    store
        .read_blocking(|v| {
            assert_eq!(v.seq(), model.next_seq - 1);
            let latest = v.latest("/", None, 1000)?.items;
            let got: BTreeMap<_, _> = latest.into_iter().map(|t| ((t.channel, t.field), (t.value, t.seq))).collect();
            assert_eq!(got, model.tuples);
            for ((c, f), want) in &model.history {
                let got: Vec<_> =
                    v.history(c, f, HistoryRange::default())?.into_iter().map(|h| (h.seq, h.value)).collect();
                assert_eq!(&got, want);
            }
            let docs: BTreeMap<_, _> =
                v.docs("", None, 1000)?.items.into_iter().map(|d| (d.key, (d.value, d.seq))).collect();
            assert_eq!(docs, model.docs);
            let leases: BTreeMap<_, _> = v.leases()?.into_iter().map(|l| (l.id, (l.granted_seq, l.ttl_ms))).collect();
            assert_eq!(leases, model.leases);
            Ok(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The same steps on RocksDB and on the memory engine: both match the
    /// model, so they match each other.
    #[test]
    fn store_matches_a_btreemap_model(steps in prop::collection::vec(step(), 1..60)) {
        let backings = Backing::each();
        let mut stores: Vec<Store> = backings.iter().map(Backing::open).collect();
        let mut model = Model { next_seq: 1, ..Model::default() };
        for step in steps {
            match step {
                Step::Append(ops) => {
                    let next = model.apply(&ops);
                    for (store, backing) in stores.iter().zip(&backings) {
                        let result = store.append_blocking(ops.iter().map(body).collect());
                        match &next {
                            Some(next) => {
                                let a = result.unwrap();
                                prop_assert_eq!((a.first, a.last), (model.next_seq, next.next_seq - 1), "{}", backing.name());
                            }
                            None => prop_assert!(result.unwrap_err().is_bad_input(), "{}", backing.name()),
                        }
                    }
                    if let Some(next) = next {
                        model = next;
                    }
                }
                Step::Reopen => {
                    stores = stores
                        .into_iter()
                        .zip(&backings)
                        .map(|(store, backing)| {
                            compare(&store, &model);
                            store.close();
                            backing.open()
                        })
                        .collect();
                }
            }
        }
        for (store, backing) in stores.into_iter().zip(&backings) {
            compare(&store, &model);
            store.close();
            let report = backing.check();
            prop_assert!(report.is_ok(), "{}: {}", backing.name(), report);
        }
    }
}
