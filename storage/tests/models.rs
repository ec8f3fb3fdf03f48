//! Model records: instances, their indexes and history, and the writer's
//! rules on existence and references.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use pepper_storage::*;

const NS: &str = "root/cimv2";

fn put(identity: &str, class: &str, refs: &[&str], create: bool) -> Body {
    Body::ModelPut(ModelPut {
        namespace: NS.into(),
        class: class.into(),
        path: format!("{NS}:{identity}"),
        identity: identity.into(),
        properties: format!("{{\"id\":\"{identity}\"}}").into_bytes(),
        refs: refs.iter().map(|r| r.to_string()).collect(),
        create,
    })
}

fn del(identity: &str) -> Body {
    Body::ModelDelete(ModelDelete { namespace: NS.into(), identity: identity.into() })
}

#[tokio::test]
async fn instances_references_and_deletes_follow_the_rules() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store
            .append(vec![put("h1", "CIM_ComputerSystem", &[], true), put("s1", "CIM_Service", &[], true)])
            .await
            .unwrap();
        // Create twice: conflict. Change a missing one: not found.
        assert!(matches!(
            store.append(vec![put("h1", "CIM_ComputerSystem", &[], true)]).await,
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            store.append(vec![put("h9", "CIM_ComputerSystem", &[], false)]).await,
            Err(Error::NotFound { .. })
        ));
        // A reference to a missing instance: not found, nothing written.
        let before = store.last_seq();
        let err = store.append(vec![put("a1", "CIM_HostedService", &["h1", "ghost"], true)]).await.unwrap_err();
        assert!(err.to_string().contains("ghost"), "{err}");
        assert_eq!(store.last_seq(), before);
        // A reference to an instance created earlier in the same request works.
        store
            .append(vec![
                put("h2", "CIM_ComputerSystem", &[], true),
                put("a2", "CIM_HostedService", &["h2", "s1"], true),
            ])
            .await
            .unwrap();
        store.append(vec![put("a1", "CIM_HostedService", &["h1", "s1"], true)]).await.unwrap();
        let referrers = store.read(|v| v.model_referrers(NS, "s1")).await.unwrap();
        assert_eq!(referrers, ["a1", "a2"]);
        // Deleting a referred-to instance is refused, naming who refers.
        let err = store.append(vec![del("h1")]).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }) && err.to_string().contains("a1"), "{err}");
        // A cascade is the associations first, in the same request.
        store.append(vec![del("a1"), del("h1")]).await.unwrap();
        assert!(store.read(|v| v.model_instance(NS, "h1")).await.unwrap().is_none());
        assert_eq!(store.read(|v| v.model_referrers(NS, "s1")).await.unwrap(), ["a2"]);
        // Changing an association's references moves its index entries.
        store
            .append(vec![
                put("h3", "CIM_ComputerSystem", &[], true),
                put("a2", "CIM_HostedService", &["h3", "s1"], false),
            ])
            .await
            .unwrap();
        assert!(store.read(|v| v.model_referrers(NS, "h2")).await.unwrap().is_empty());
        assert_eq!(store.read(|v| v.model_referrers(NS, "h3")).await.unwrap(), ["a2"]);
        // Enumeration by class, paged.
        let page = store.read(|v| v.model_instances_of(NS, "cim_computersystem", None, 1)).await.unwrap();
        assert_eq!(page.items.len(), 1);
        let next = page.next.clone().unwrap();
        let rest = store.read(move |v| v.model_instances_of(NS, "CIM_ComputerSystem", Some(&next), 10)).await.unwrap();
        let ids: Vec<String> = page.items.iter().chain(&rest.items).map(|r| r.path.clone()).collect();
        assert_eq!(ids, [format!("{NS}:h2"), format!("{NS}:h3")]);
        assert!(rest.next.is_none());
        // History keeps every version, the deletion included.
        let hist = store.read(|v| v.model_history(NS, "h1", 0, u64::MAX, 100)).await.unwrap();
        assert_eq!(hist.iter().map(|(_, v)| v.deleted).collect::<Vec<_>>(), [false, true]);
        // Everything survives a reopen and passes the check.
        store.close();
        assert!(backing.check().is_ok());
        let store = backing.open();
        assert_eq!(store.read(|v| v.model_referrers(NS, "s1")).await.unwrap(), ["a2"]);
        assert!(store.read(|v| v.model_instance(NS, "h2")).await.unwrap().is_some());
        store.close();
        let report = backing.check();
        assert!(report.is_ok(), "{report}");
    }
}

#[tokio::test]
async fn classes_are_kept_by_namespace() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let class = |ns: &str, name: &str| {
            Body::ModelClass(ModelClass { namespace: ns.into(), name: name.into(), definition: b"{}".to_vec() })
        };
        store.append(vec![class(NS, "Lab_Host"), class("lab/x", "Other"), class(NS, "lab_host")]).await.unwrap();
        let classes = store.read(|v| v.model_classes(NS)).await.unwrap();
        assert_eq!(
            classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["lab_host"],
            "names are case-insensitive"
        );
        let bad = Body::ModelPut(ModelPut {
            namespace: NS.into(),
            class: "X".into(),
            path: "p".into(),
            identity: "has\0nul".into(),
            properties: Vec::new(),
            refs: Vec::new(),
            create: true,
        });
        assert!(matches!(store.append(vec![bad]).await, Err(Error::InvalidInput { .. })));
        store.close();
        assert!(backing.check().is_ok());
    }
}
