//! The answer to a federated query: the manifest of who answered, the
//! refusals, and the merge of the answers.
//!
//! The manifest is `{"asked", "answered", "complete", "elapsed_ms",
//! "sites"}`, and each site's entry `{"site", "status", "latency_ms"}`
//! (status `answered`, `timed_out`, `unreachable` or `error`), with, for an
//! answer, its `seq` and `data_age_ms` (and `more`, `next_cursor` when the
//! site has more to give), and for a failure its `error`. Under
//! `scope=recorders` only the first answer in order of preference is used,
//! and its entry says `"used": true`.

use serde_json::{json, Map, Value};

use super::refusal::{Refusal, RefusalCode};
use super::scope::{Params, Scope};

/// How one site's part of a federated query ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It answered with this body, made at this time (microseconds since
    /// the Unix epoch, when the site said).
    Answered {
        /// The site's answer.
        value: Value,
        /// When the site made it.
        made_at_us: Option<u64>,
    },
    /// The deadline passed first.
    TimedOut,
    /// It could not be reached (why).
    Unreachable(String),
    /// It failed or refused (why; a refusal starts with its HTTP status).
    Failed(String),
}

/// One site's part of a federated query, as the adapter saw it end.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteAnswer {
    /// The site.
    pub site: String,
    /// From the request to its end, in milliseconds.
    pub latency_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
}

impl SiteAnswer {
    /// A site this one does not know: reported unreachable, never asked.
    pub fn unknown(site: &str) -> SiteAnswer {
        SiteAnswer { site: site.to_string(), latency_ms: 0.0, outcome: Outcome::Unreachable("not a known site".into()) }
    }

    /// A site that answered with an error `status` (its text, as
    /// `400 Bad Request`) and this JSON body: the error names the body's
    /// `error.message`, or the whole body.
    pub fn refused(site: &str, status: &str, body: &Value, latency_ms: f64) -> SiteAnswer {
        let message = body["error"]["message"].as_str().map_or_else(|| body.to_string(), str::to_string);
        SiteAnswer { site: site.to_string(), latency_ms, outcome: Outcome::Failed(format!("{status}: {message}")) }
    }

    fn status(&self) -> &'static str {
        match self.outcome {
            Outcome::Answered { .. } => "answered",
            Outcome::TimedOut => "timed_out",
            Outcome::Unreachable(_) => "unreachable",
            Outcome::Failed(_) => "error",
        }
    }
}

/// The answer to a federated query from its sites' answers, in the order
/// they were asked: the merged items with the manifest, or a refusal.
/// `now_us` is the time the last answer came in, `elapsed_ms` the time since
/// the query arrived.
///
/// Refused, in this order: under `recorders`, when no site answered and none
/// failed ([`RefusalCode::NoRecorder`]); under `partial=deny`, when fewer
/// than `min_sites` answered ([`RefusalCode::PartialAnswer`]); when no site
/// answered and every site refused the query with a 4xx status
/// ([`RefusalCode::InvalidQuery`]).
///
/// # Errors
/// The [`Refusal`], with the manifest.
pub fn conclude(
    params: &Params,
    answers: Vec<SiteAnswer>,
    now_us: u64,
    elapsed_ms: u64,
) -> Result<Map<String, Value>, Refusal> {
    let recorders = params.scope == Scope::Recorders;
    let mut sites = Vec::with_capacity(answers.len());
    let mut values = Vec::new();
    for a in answers {
        let status = a.status();
        let mut entry =
            json!({ "site": a.site, "status": status, "latency_ms": (a.latency_ms * 1000.0).round() / 1000.0 });
        match a.outcome {
            Outcome::Answered { value, made_at_us } => {
                entry["seq"] = value["seq"].clone();
                entry["data_age_ms"] = json!(made_at_us.map(|t| now_us.saturating_sub(t) / 1000));
                if let Some(cursor) = value.get("next_cursor") {
                    // Continue that site alone: `scope=sites:<it>` and this cursor.
                    entry["more"] = json!(true);
                    entry["next_cursor"] = cursor.clone();
                } else if value.get("truncated").is_some_and(|t| t == true) {
                    entry["more"] = json!(true);
                }
                values.push((a.site, value));
            }
            Outcome::TimedOut => {}
            Outcome::Unreachable(e) | Outcome::Failed(e) => entry["error"] = json!(e),
        }
        sites.push(entry);
    }
    if recorders {
        // Replicas hold the same rows: the first to answer, in order of
        // preference, is the answer.
        values.truncate(1);
        if let Some((used, _)) = values.first() {
            for entry in &mut sites {
                if entry["site"] == json!(used) {
                    entry["used"] = json!(true);
                }
            }
        }
    }
    let asked = sites.len();
    let answered = sites.iter().filter(|s| s["status"] == "answered").count();
    let manifest = json!({
        "asked": asked,
        "answered": answered,
        "complete": answered == asked,
        "elapsed_ms": elapsed_ms,
        "sites": sites,
    });
    if recorders && answered == 0 && sites.iter().all(|s| s["status"] != "error") {
        // Not "no rows": no recorder could be asked in time.
        let message = format!("none of the {asked} sites recording this subtree answered");
        return Err(Refusal::with(RefusalCode::NoRecorder, message, &manifest));
    }
    let min = params.min_sites.unwrap_or(if recorders { 1 } else { asked });
    if params.deny_partial && answered < min {
        let message = format!("{answered} of {asked} sites answered, fewer than the {min} required (partial=deny)");
        return Err(Refusal::with(RefusalCode::PartialAnswer, message, &manifest));
    }
    // Every site refused the query itself (a bad parameter): that is the
    // caller's error, not an empty answer.
    if answered == 0 {
        let refusals: Vec<&str> =
            sites.iter().filter_map(|s| s["error"].as_str()).filter(|e| e.starts_with('4')).collect();
        if !refusals.is_empty() && refusals.len() == asked {
            let message = format!("every site refused the query: {}", refusals[0]);
            return Err(Refusal::with(RefusalCode::InvalidQuery, message, &manifest));
        }
    }
    let mut merged = merge(values, params.descending());
    merged.insert("manifest".into(), manifest);
    Ok(merged)
}

/// The answers' items (`tuples`, `history`, `instances`), each tagged with
/// its `site`, merged by kind: per (channel, field) the tuple with the
/// greatest `time`; history by `time`, newest first when `descending`;
/// instances by `path`. Sorts are stable: equal keys keep the order the
/// sites were asked in. A kind no answer has is left out. O(n log n).
pub fn merge(answers: Vec<(String, Value)>, descending: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for field in ["tuples", "history", "instances"] {
        let mut items: Vec<Value> = Vec::new();
        let mut present = false;
        for (site, answer) in &answers {
            if let Some(list) = answer.get(field).and_then(Value::as_array) {
                present = true;
                items.extend(list.iter().cloned().map(|mut item| {
                    if let Some(fields) = item.as_object_mut() {
                        fields.insert("site".into(), json!(site));
                    }
                    item
                }));
            }
        }
        if !present {
            continue;
        }
        let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
        match field {
            "tuples" => {
                // The newest value of each (channel, field) wins.
                items.sort_by(|a, b| {
                    (text(a, "channel"), text(a, "field"))
                        .cmp(&(text(b, "channel"), text(b, "field")))
                        .then(text(b, "time").cmp(&text(a, "time")))
                });
                items.dedup_by(|later, first| {
                    text(later, "channel") == text(first, "channel") && text(later, "field") == text(first, "field")
                });
            }
            "history" if descending => items.sort_by_key(|a| std::cmp::Reverse(text(a, "time"))),
            "history" => items.sort_by_key(|a| text(a, "time")),
            _ => items.sort_by_key(|a| text(a, "path")),
        }
        out.insert(field.into(), Value::Array(items));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federated::parse_params;

    fn params(query: &str) -> Params {
        parse_params(Some(query)).expect("params")
    }

    fn answered(site: &str, value: Value, made_at_us: Option<u64>) -> SiteAnswer {
        SiteAnswer { site: site.into(), latency_ms: 1.23456, outcome: Outcome::Answered { value, made_at_us } }
    }

    #[test]
    fn merged_tuples_keep_the_newest_per_key_and_say_where_from() {
        let a = json!({"seq": 5, "tuples": [{"channel": "/n/", "field": "x", "time": "2026-01-01T00:00:02Z", "value": "new"}]});
        let b = json!({"seq": 9, "tuples": [{"channel": "/n/", "field": "x", "time": "2026-01-01T00:00:01Z", "value": "old"},
                                            {"channel": "/m/", "field": "y", "time": "2026-01-01T00:00:01Z", "value": "v"}]});
        let merged = merge(vec![("a".into(), a), ("b".into(), b)], false);
        let tuples = merged["tuples"].as_array().expect("tuples");
        assert_eq!(tuples.len(), 2);
        assert_eq!((tuples[0]["channel"].as_str(), tuples[0]["site"].as_str()), (Some("/m/"), Some("b")));
        assert_eq!((tuples[1]["value"].as_str(), tuples[1]["site"].as_str()), (Some("new"), Some("a")));
        // History in time order, newest first when asked; odd items kept.
        let h = |t: &str| json!({"time": format!("2026-01-01T00:00:0{t}Z")});
        let (a, b) = (json!({"history": [h("1"), h("3"), 7]}), json!({"history": [h("2")]}));
        let times = |desc| {
            merge(vec![("a".into(), a.clone()), ("b".into(), b.clone())], desc)["history"]
                .as_array()
                .expect("history")
                .iter()
                .map(|i| i["time"].as_str().unwrap_or("-").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(times(false), ["-", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"]);
        assert_eq!(times(true), ["2026-01-01T00:00:03Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:01Z", "-"]);
        // Instances by path; a kind nobody answered is left out.
        let i = |p: &str| json!({"path": p});
        let merged = merge(vec![("a".into(), json!({"instances": [i("b"), i("a")]})), ("b".into(), json!({}))], false);
        let paths: Vec<&str> =
            merged["instances"].as_array().expect("instances").iter().filter_map(|i| i["path"].as_str()).collect();
        assert_eq!(paths, ["a", "b"]);
        assert_eq!(merged.len(), 1);
    }

    #[test]
    fn the_manifest_says_who_answered_how_fresh_and_why_not() {
        let p = params("scope=all&channel=/fleet/&order=desc");
        let answers = vec![
            answered("a", json!({"seq": 812, "tuples": [], "next_cursor": "2f"}), Some(1_000_000)),
            answered("b", json!({"seq": 77, "history": [], "truncated": true}), None),
            SiteAnswer { site: "c".into(), latency_ms: 500.2004, outcome: Outcome::TimedOut },
            SiteAnswer::unknown("zz"),
            SiteAnswer::refused("d", "500 Internal Server Error", &json!({"oops": 1}), 2.0),
        ];
        let merged = conclude(&p, answers, 3_500_999, 501).expect("an answer");
        let m = &merged["manifest"];
        assert_eq!(
            (m["asked"].as_u64(), m["answered"].as_u64(), m["complete"].as_bool()),
            (Some(5), Some(2), Some(false))
        );
        assert_eq!(m["elapsed_ms"], 501);
        let s = m["sites"].as_array().expect("sites");
        assert_eq!(
            s[0],
            json!({"site": "a", "status": "answered", "latency_ms": 1.235, "seq": 812, "data_age_ms": 2500,
                   "more": true, "next_cursor": "2f"})
        );
        assert_eq!(
            s[1],
            json!({"site": "b", "status": "answered", "latency_ms": 1.235, "seq": 77, "data_age_ms": null, "more": true})
        );
        assert_eq!(s[2], json!({"site": "c", "status": "timed_out", "latency_ms": 500.2}));
        assert_eq!(
            s[3],
            json!({"site": "zz", "status": "unreachable", "latency_ms": 0.0, "error": "not a known site"})
        );
        assert_eq!(
            s[4],
            json!({"site": "d", "status": "error", "latency_ms": 2.0, "error": "500 Internal Server Error: {\"oops\":1}"})
        );
        assert!(merged.contains_key("tuples") && merged.contains_key("history"));
    }

    #[test]
    fn partial_deny_refuses_below_min_sites_with_the_manifest() {
        let two = || vec![answered("a", json!({"seq": 1}), None), SiteAnswer::unknown("b")];
        let refused = conclude(&params("scope=all&partial=deny"), two(), 0, 0).expect_err("1 of 2");
        assert_eq!(refused.code, RefusalCode::PartialAnswer);
        assert_eq!(refused.message, "1 of 2 sites answered, fewer than the 2 required (partial=deny)");
        assert_eq!(refused.manifest.expect("manifest")["answered"], 1);
        assert!(conclude(&params("scope=all&partial=deny&min_sites=1"), two(), 0, 0).is_ok());
        assert!(conclude(&params("scope=all&min_sites=2"), two(), 0, 0).is_ok(), "partial answers are allowed");
    }

    #[test]
    fn a_query_every_site_refused_is_the_callers_error() {
        let bad =
            |site: &str| SiteAnswer::refused(site, "400 Bad Request", &json!({"error": {"message": "limit"}}), 1.0);
        let refused = conclude(&params("scope=all"), vec![bad("a"), bad("b")], 0, 0).expect_err("all refused");
        assert_eq!(refused.code, RefusalCode::InvalidQuery);
        assert_eq!(refused.message, "every site refused the query: 400 Bad Request: limit");
        assert_eq!(refused.manifest.expect("manifest")["answered"], 0);
        // One timed out instead: an empty answer with its manifest.
        let timed_out = SiteAnswer { site: "b".into(), latency_ms: 1.0, outcome: Outcome::TimedOut };
        let merged = conclude(&params("scope=all"), vec![bad("a"), timed_out], 0, 0).expect("empty answer");
        assert_eq!(merged.len(), 1);
        // Nobody asked (a region with no site): an empty, complete answer.
        let merged = conclude(&params("scope=region:ap&partial=deny"), Vec::new(), 0, 0).expect("empty");
        assert_eq!(merged["manifest"]["complete"], true);
    }

    #[test]
    fn recorders_use_the_first_answer_in_order_of_preference() {
        let p = params("scope=recorders&channel=/n/a/");
        let late = SiteAnswer { site: "me".into(), latency_ms: 1.0, outcome: Outcome::TimedOut };
        let answers = vec![
            late.clone(),
            answered("b", json!({"seq": 3, "tuples": [{"channel": "/n/a/", "field": "f", "time": "1"}]}), None),
            answered("c", json!({"seq": 4, "tuples": [{"channel": "/n/a/", "field": "g", "time": "1"}]}), None),
        ];
        let merged = conclude(&p, answers, 0, 0).expect("b's answer");
        let tuples = merged["tuples"].as_array().expect("tuples");
        assert_eq!((tuples.len(), tuples[0]["site"].as_str()), (1, Some("b")));
        let sites = merged["manifest"]["sites"].as_array().expect("sites");
        let used: Vec<bool> = sites.iter().map(|s| s.get("used").is_some()).collect();
        assert_eq!(used, [false, true, false]);
        assert_eq!(merged["manifest"]["answered"], 2, "the manifest counts every answer");
        // No recorder answered and none failed: no recorder.
        let unreachable = SiteAnswer { outcome: Outcome::Unreachable("connection refused".into()), ..late.clone() };
        let refused = conclude(&p, vec![late.clone(), unreachable], 0, 0).expect_err("none");
        assert_eq!(refused.code, RefusalCode::NoRecorder);
        assert_eq!(refused.message, "none of the 2 sites recording this subtree answered");
        // One failed: an empty answer, or under partial=deny a partial one.
        let failed = SiteAnswer::refused("b", "503 Service Unavailable", &json!({}), 1.0);
        assert!(conclude(&p, vec![late.clone(), failed.clone()], 0, 0).is_ok());
        let p = params("scope=recorders&channel=/n/a/&partial=deny");
        let refused = conclude(&p, vec![late, failed], 0, 0).expect_err("fewer than one");
        assert_eq!(refused.message, "0 of 2 sites answered, fewer than the 1 required (partial=deny)");
    }
}
