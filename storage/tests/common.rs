//! Helpers shared by the storage tests.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use pepper_storage::{
    check, check_engine, Body, CheckReport, DocPut, Engine, Event, LeaseGrant, ManualClock, MemoryEngine, Options,
    Party, RocksEngine, Store, Target, TupleSet,
};

pub fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, Options::new("test-site")).unwrap()
}

/// Where a test's store keeps its data, and the clock it reads. Opening a
/// backing again after closing its store is a restart: the new store finds
/// what the old one wrote. A test that runs on [`Backing::each`] shows the
/// memory engine behaves as RocksDB does.
pub struct Backing {
    data: Data,
    /// The store's clock: it starts at the system's time and moves only when
    /// the test moves it.
    pub clock: ManualClock,
}

enum Data {
    Disk(tempfile::TempDir),
    Memory(MemoryEngine),
}

impl Backing {
    /// A RocksDB folder in a temporary directory.
    pub fn disk() -> Backing {
        Backing { data: Data::Disk(tempfile::tempdir().unwrap()), clock: ManualClock::starting_now() }
    }

    /// A memory engine.
    pub fn memory() -> Backing {
        Backing { data: Data::Memory(MemoryEngine::new()), clock: ManualClock::starting_now() }
    }

    /// One backing of each kind.
    pub fn each() -> [Backing; 2] {
        [Backing::disk(), Backing::memory()]
    }

    /// Which engine, for assertion messages.
    pub fn name(&self) -> &'static str {
        match self.data {
            Data::Disk(_) => "rocksdb",
            Data::Memory(_) => "memory",
        }
    }

    /// Opens a store on the backing, as site `test-site`.
    pub fn open(&self) -> Store {
        self.open_with(Options::new("test-site"))
    }

    /// Opens a store on the backing with `options`.
    pub fn open_with(&self, options: Options) -> Store {
        let engine: Arc<dyn Engine> = match &self.data {
            Data::Disk(dir) => Arc::new(RocksEngine::open(dir.path()).unwrap()),
            Data::Memory(memory) => Arc::new(memory.clone()),
        };
        Store::open_with(engine, Arc::new(self.clock.clone()), options).unwrap()
    }

    /// `pepper check` of the backing's data; close the store first.
    pub fn check(&self) -> CheckReport {
        match &self.data {
            Data::Disk(dir) => check(dir.path()).unwrap(),
            Data::Memory(memory) => check_engine(memory).unwrap(),
        }
    }
}

pub fn tuple(channel: &str, field: &str, value: &str) -> Body {
    Body::TupleSet(TupleSet {
        channel: channel.into(),
        field: field.into(),
        value: value.into(),
        expires_at_us: None,
        source: Party { service: "svc".into(), instance: "i".into() },
    })
}

pub fn event(channel: &str, ty: &str, payload: &[u8]) -> Body {
    Body::Event(Event {
        id: String::new(),
        channel: channel.into(),
        event_type: ty.into(),
        from: Party::default(),
        to: Target::default(),
        distribution: Default::default(),
        payload: payload.to_vec(),
        assigned: Vec::new(),
        principal: None,
        tuple: None,
    })
}

pub fn doc(key: &str, value: &[u8]) -> Body {
    Body::DocPut(DocPut { key: key.into(), value: value.to_vec() })
}

pub fn grant(id: &str, pattern: &str) -> Body {
    Body::LeaseGrant(LeaseGrant {
        id: id.into(),
        pattern: pattern.into(),
        types: vec![],
        ttl_ms: 1000,
        expires_at_us: far_future(),
        group: None,
        from_seq: None,
        holder: Party::default(),
        owner: None,
    })
}

/// An expiry no test outlives.
pub fn far_future() -> u64 {
    pepper_storage::now_us() + 3_600_000_000
}
