//! The CIM model repository over HTTP against a site run in this process
//! ([`Server::embedded`]): classes,
//! instances, validation, enumeration, queries, associations, change events,
//! the deletion rule, and persistence across a restart.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{Server, SseReader};
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const NS: &str = "root/cimv2";

/// `/v1/namespaces/{ns}/{rest...}` with every part percent-encoded.
fn url(server: &Server, parts: &[&str]) -> reqwest::Url {
    let mut u = reqwest::Url::parse(&server.url).unwrap();
    {
        let mut segs = u.path_segments_mut().unwrap();
        segs.extend(["v1", "namespaces", NS]);
        segs.extend(parts);
    }
    u
}

fn ok(res: Response) -> Value {
    let status = res.status();
    let body: Value = res.json().unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

fn create(http: &Client, server: &Server, class: &str, props: Value) -> String {
    let res =
        http.post(url(server, &["instances"])).json(&json!({"class": class, "properties": props})).send().unwrap();
    assert_eq!(res.status(), 201, "{class}");
    ok(res)["path"].as_str().unwrap().to_string()
}

fn names(body: &Value) -> Vec<String> {
    body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let p = &i["properties"];
            p["Name"].as_str().or(p["InstanceID"].as_str()).unwrap_or("-").to_string()
        })
        .collect()
}

#[test]
fn classes_instances_queries_associations_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::embedded(&data, &[]);
    let http = Client::new();
    let mut events = SseReader::open(&server.at("/v1/watch?channel=/pepper/model/root/cimv2/"), &[]);

    // A user class, checked.
    let lab = json!({"name": "Lab_Host", "superclass": "CIM_ComputerSystem", "properties": [{"name": "Rack", "type": "string"}]});
    assert_eq!(http.post(url(&server, &["classes"])).json(&lab).send().unwrap().status(), 201);
    for (bad, needle) in [
        (json!({"name": "X", "superclass": "Nope"}), "unknown superclass"),
        (json!({"name": "X", "properties": [{"name": "p", "type": "int"}]}), "unknown type"),
    ] {
        let res = http.post(url(&server, &["classes"])).json(&bad).send().unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{body}");
    }
    let class = ok(http.get(url(&server, &["classes", "lab_host"])).send().unwrap());
    assert_eq!(class["lineage"][1], "CIM_ComputerSystem");

    let h1 = create(
        &http,
        &server,
        "CIM_ComputerSystem",
        json!({"CreationClassName": "CIM_ComputerSystem", "Name": "h1", "EnabledState": 2}),
    );
    let h2 = create(&http, &server, "Lab_Host", json!({"CreationClassName": "Lab_Host", "Name": "h2", "Rack": "r7"}));
    let s1 = create(
        &http,
        &server,
        "CIM_Service",
        json!({"SystemCreationClassName": "CIM_ComputerSystem", "SystemName": "h1", "CreationClassName": "CIM_Service", "Name": "sshd"}),
    );
    let a1 = create(&http, &server, "CIM_HostedService", json!({"Antecedent": h1, "Dependent": s1}));
    let sw = create(&http, &server, "CIM_SoftwareIdentity", json!({"InstanceID": "bash-5.2"}));
    create(&http, &server, "CIM_InstalledSoftwareIdentity", json!({"System": h1, "InstalledSoftware": sw}));

    // Validation: each failure names the property, and writes nothing.
    for (class, props, status, needle) in [
        ("CIM_ComputerSystem", json!({"Name": "x"}), 400, "CreationClassName"),
        ("CIM_ComputerSystem", json!({"Name": "x", "CreationClassName": "C", "Bogus": 1}), 400, "Bogus"),
        ("CIM_ComputerSystem", json!({"Name": 3, "CreationClassName": "C"}), 400, "Name"),
        ("CIM_HostedService", json!({"Antecedent": sw, "Dependent": s1}), 400, "not a CIM_System"),
        (
            "CIM_HostedService",
            json!({"Antecedent": "root/cimv2:CIM_System.CreationClassName=\"X\",Name=\"ghost\"", "Dependent": s1}),
            400,
            "does not exist",
        ),
        ("CIM_ComputerSystem", json!({"CreationClassName": "CIM_ComputerSystem", "Name": "h1"}), 409, "already exists"),
        ("Nope", json!({}), 404, "no class"),
    ] {
        let res =
            http.post(url(&server, &["instances"])).json(&json!({"class": class, "properties": props})).send().unwrap();
        assert_eq!(res.status().as_u16(), status, "{class} {props}");
        let body: Value = res.json().unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{body}");
    }

    // Enumeration: deep includes subclass instances with their own properties.
    let deep = ok(http.get(url(&server, &["instances"])).query(&[("class", "CIM_ComputerSystem")]).send().unwrap());
    assert_eq!(names(&deep), ["h1", "h2"]);
    assert_eq!(deep["instances"][1]["properties"]["Rack"], "r7");
    let shallow = ok(http
        .get(url(&server, &["instances"]))
        .query(&[("class", "CIM_ComputerSystem"), ("deep", "false")])
        .send()
        .unwrap());
    assert_eq!(names(&shallow), ["h1"]);
    let wh = ok(http
        .get(url(&server, &["instances"]))
        .query(&[("class", "CIM_System"), ("where", "Rack LIKE 'r%'")])
        .send()
        .unwrap());
    assert_eq!(names(&wh), ["h2"]);
    let q = ok(http
        .post(url(&server, &["query"]))
        .json(
            &json!({"query": "SELECT Name FROM CIM_ManagedElement WHERE __Class ISA CIM_System AND EnabledState = 2"}),
        )
        .send()
        .unwrap());
    assert_eq!(names(&q), ["h1"]);
    let bad = http.post(url(&server, &["query"])).json(&json!({"query": "SELECT FROM"})).send().unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().unwrap().contains("syntax error at byte"));

    // Get by path: any spelling of the same path finds it.
    let spelled = h1.replace("CIM_ComputerSystem.", "cim_computersystem.").replace("Name=", "NAME=");
    assert_eq!(ok(http.get(url(&server, &["instances", &spelled])).send().unwrap())["path"], h1.as_str());
    assert_eq!(
        http.get(url(&server, &["instances", "CIM_System.Name=\"nope\",CreationClassName=\"X\""]))
            .send()
            .unwrap()
            .status(),
        404
    );

    // Associations, with each filter.
    let assoc = |path: &str, what: &str, q: &[(&str, &str)]| {
        names(&ok(http.get(url(&server, &["instances", path, what])).query(q).send().unwrap()))
    };
    assert_eq!(assoc(&h1, "associators", &[]), ["sshd", "bash-5.2"]);
    assert_eq!(assoc(&h1, "associators", &[("assoc_class", "CIM_Dependency")]), ["sshd"]);
    assert_eq!(assoc(&h1, "associators", &[("result_class", "CIM_SoftwareIdentity")]), ["bash-5.2"]);
    assert_eq!(assoc(&h1, "associators", &[("role", "System")]), ["bash-5.2"]);
    assert_eq!(assoc(&s1, "associators", &[("result_role", "Antecedent")]), ["h1"]);
    assert_eq!(
        ok(http.get(url(&server, &["instances", &h1, "references"])).query(&[("role", "Antecedent")]).send().unwrap())
            ["instances"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Modify: a patch keeps the rest; a key cannot change.
    let patched =
        ok(http.patch(url(&server, &["instances", &h2])).json(&json!({"properties": {"Rack": "r8"}})).send().unwrap());
    assert_eq!(patched["changed"], json!(["Rack"]));
    let res =
        http.patch(url(&server, &["instances", &h2])).json(&json!({"properties": {"Name": "h9"}})).send().unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().unwrap().contains("is a key and cannot change"));

    // The instance's history: every version, by sequence number or time.
    let hist = ok(http.get(url(&server, &["instances", &h2, "history"])).send().unwrap());
    let versions = hist["history"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["properties"]["Rack"], "r7");
    assert_eq!(versions[1]["properties"]["Rack"], "r8");
    let since = versions[1]["seq"].as_u64().unwrap().to_string();
    let later =
        ok(http.get(url(&server, &["instances", &h2, "history"])).query(&[("since", since.as_str())]).send().unwrap());
    assert_eq!(later["history"].as_array().unwrap().len(), 1);

    // Deletion rule: refused while referred to, cascade on request.
    let res = http.delete(url(&server, &["instances", &h1])).send().unwrap();
    assert_eq!(res.status(), 409);
    let gone = ok(http.delete(url(&server, &["instances", &h1])).query(&[("cascade", "true")]).send().unwrap());
    assert_eq!(gone["deleted"].as_array().unwrap().len(), 3, "{gone}");
    assert_eq!(http.get(url(&server, &["instances", &a1])).send().unwrap().status(), 404);
    let h1_hist = ok(http.get(url(&server, &["instances", &h1, "history"])).send().unwrap());
    assert_eq!(h1_hist["history"].as_array().unwrap().last().unwrap()["deleted"], true);

    // A class with instances cannot change its keys.
    let thing = json!({"name": "Lab_Thing", "properties": [{"name": "Id", "type": "string", "key": true}]});
    assert_eq!(http.post(url(&server, &["classes"])).json(&thing).send().unwrap().status(), 201);
    create(&http, &server, "Lab_Thing", json!({"Id": "t1"}));
    let rekeyed = json!({"name": "Lab_Thing", "properties": [{"name": "Id", "type": "string"}, {"name": "Other", "type": "string", "key": true}]});
    let res = http.post(url(&server, &["classes"])).json(&rekeyed).send().unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().unwrap().contains("has instances"));

    // Change events, in order, on /pepper/model/<ns>/<class>/.
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let e = events.next().unwrap();
        seen.push((e.event.clone(), e.json()["channel"].as_str().unwrap().to_string()));
    }
    assert_eq!(seen[0], ("model.created".to_string(), "/pepper/model/root/cimv2/CIM_ComputerSystem/".to_string()));
    assert_eq!(seen[6].0, "model.modified");
    assert!(seen[7..].iter().all(|(e, _)| e == "model.deleted"));

    // The same operations from the CLI.
    let cli = |args: &[&str]| -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
            .arg("model")
            .args(args)
            .args(["--server", &server.url])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok_, text) = cli(&["create", "CIM_SoftwareIdentity", "--props", r#"{"InstanceID": "zsh-5.9"}"#]);
    assert!(ok_ && text.contains("zsh-5.9"), "{text}");
    let (ok_, text) = cli(&["query", "SELECT InstanceID FROM CIM_SoftwareIdentity WHERE InstanceID LIKE 'z%'"]);
    assert!(ok_ && text.contains("zsh-5.9") && !text.contains("bash-5.2"), "{text}");
    let (ok_, text) = cli(&["get", r#"CIM_SoftwareIdentity.InstanceID="nope""#]);
    assert!(!ok_ && text.contains("404"), "{text}");

    // Everything survives a restart.
    drop(server);
    let server = Server::embedded(&data, &[]);
    let deep = ok(http.get(url(&server, &["instances"])).query(&[("class", "CIM_ComputerSystem")]).send().unwrap());
    assert_eq!(names(&deep), ["h2"]);
    assert_eq!(deep["instances"][0]["properties"]["Rack"], "r8");
    assert_eq!(ok(http.get(url(&server, &["classes", "Lab_Host"])).send().unwrap())["class"]["name"], "Lab_Host");
}

/// A model-based test: the same random operations on the site and on the
/// in-memory repository (`pepper_query::model::MemoryModel`) succeed or fail
/// alike, and leave the same instances and associations.
#[test]
fn the_store_behaves_like_the_in_memory_model() {
    use pepper_query::model::{self, AssocFilter, MemoryModel};
    use pepper_query::path::ObjectPath;
    use pepper_query::schema::Schema;
    use rand::{Rng, SeedableRng};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let mut memory = MemoryModel::new(NS, Schema::core());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let host = |n: u32| json!({"CreationClassName": "CIM_ComputerSystem", "Name": format!("h{n}")});
    let service = |n: u32| {
        json!({"SystemCreationClassName": "CIM_ComputerSystem", "SystemName": format!("h{n}"),
                                  "CreationClassName": "CIM_Service", "Name": format!("s{n}")})
    };
    let path_of = |class: &str, props: &Value| -> String {
        let s = Schema::core();
        s.instance(NS, class, props.as_object().unwrap()).unwrap().1.to_string()
    };
    for step in 0..300 {
        let n = rng.gen_range(0..6u32);
        let m = rng.gen_range(0..6u32);
        let (class, props) = match rng.gen_range(0..3) {
            0 => ("CIM_ComputerSystem", host(n)),
            1 => ("CIM_Service", service(n)),
            _ => (
                "CIM_HostedService",
                json!({"Antecedent": path_of("CIM_ComputerSystem", &host(n)),
                                              "Dependent": path_of("CIM_Service", &service(m))}),
            ),
        };
        let path = path_of(class, &props);
        match rng.gen_range(0..4) {
            0 | 1 => {
                let want = memory.create(class, props.as_object().unwrap()).is_ok();
                let res = http
                    .post(url(&server, &["instances"]))
                    .json(&json!({"class": class, "properties": props}))
                    .send()
                    .unwrap();
                assert_eq!(res.status().is_success(), want, "step {step}: create {path}: {}", res.text().unwrap());
            }
            2 => {
                let patch = json!({"EnabledState": rng.gen_range(0..5u32)});
                let want = if class == "CIM_HostedService" {
                    // Associations have no EnabledState: both refuse.
                    false
                } else {
                    memory.modify(&ObjectPath::parse(&path).unwrap(), patch.as_object().unwrap(), false).is_ok()
                };
                let res =
                    http.patch(url(&server, &["instances", &path])).json(&json!({"properties": patch})).send().unwrap();
                assert_eq!(res.status().is_success(), want, "step {step}: patch {path}: {}", res.text().unwrap());
            }
            _ => {
                let cascade = rng.gen_bool(0.5);
                let want = memory.delete(&ObjectPath::parse(&path).unwrap(), cascade).is_ok();
                let res = http
                    .delete(url(&server, &["instances", &path]))
                    .query(&[("cascade", cascade.to_string())])
                    .send()
                    .unwrap();
                assert_eq!(res.status().is_success(), want, "step {step}: delete {path}: {}", res.text().unwrap());
            }
        }
    }
    // The same instances, with the same properties, and the same associations.
    for class in ["CIM_ManagedElement", "CIM_Dependency"] {
        let want: Vec<Value> =
            model::enumerate(&memory.schema, &memory, class, true).unwrap().iter().map(|i| i.to_json()).collect();
        let got =
            ok(http.get(url(&server, &["instances"])).query(&[("class", class), ("limit", "1000")]).send().unwrap());
        assert_eq!(got["instances"].as_array().unwrap(), &want, "{class}");
        // Small pages cross from one class to the next (CIM_ComputerSystem,
        // CIM_HostedService, CIM_Service) and still add up to the same list.
        let (mut paged, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let mut q = vec![("class", class.to_string()), ("limit", "4".to_string())];
            q.extend(cursor.take().map(|c| ("cursor", c)));
            let page = ok(http.get(url(&server, &["instances"])).query(&q).send().unwrap());
            let items = page["instances"].as_array().unwrap();
            assert!(items.len() <= 4);
            paged.extend(items.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(paged, want, "{class} in pages of 4");
    }
    for n in 0..6 {
        let path = ObjectPath::parse(&path_of("CIM_ComputerSystem", &host(n))).unwrap();
        let want: Vec<String> = model::associators(&memory.schema, &memory, &path, &AssocFilter::default())
            .iter()
            .map(|i| i.path.to_string())
            .collect();
        let res = http.get(url(&server, &["instances", &path.to_string(), "associators"])).send().unwrap();
        let got: Vec<String> =
            ok(res)["instances"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap().to_string()).collect();
        assert_eq!(got, want, "associators of h{n}");
    }
}

#[test]
fn concurrent_modifications_of_one_instance_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let mut props = vec![json!({"name": "Id", "type": "string", "key": true})];
    props.extend((0..8).map(|i| json!({"name": format!("P{i}"), "type": "uint32"})));
    let class = json!({"name": "Lab_Counter", "properties": props});
    assert_eq!(http.post(url(&server, &["classes"])).json(&class).send().unwrap().status(), 201);
    let path = create(&http, &server, "Lab_Counter", json!({"Id": "c"}));
    // Eight writers each PATCH their own property 25 times, all at once. A
    // read-modify-write that is not serialized per instance loses some of
    // the others' values.
    std::thread::scope(|s| {
        for i in 0..8 {
            let (http, server, path) = (&http, &server, &path);
            s.spawn(move || {
                for n in 1..=25u32 {
                    let res = http
                        .patch(url(server, &["instances", path]))
                        .json(&json!({"properties": {format!("P{i}"): n}}))
                        .send()
                        .unwrap();
                    assert!(res.status().is_success(), "{}", res.text().unwrap());
                }
            });
        }
    });
    let got = ok(http.get(url(&server, &["instances", &path])).send().unwrap());
    for i in 0..8 {
        assert_eq!(got["properties"][format!("P{i}")], json!(25), "P{i} in {got}");
    }
}
