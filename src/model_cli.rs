//! `pepper model ...`: the model repository's HTTP API from the shell. Each
//! command prints the site's JSON answer, or its error message and a
//! non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// `pepper model`'s subcommands.
#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// List the namespace's classes, or show one with its inherited properties.
    Classes {
        /// One class.
        class: Option<String>,
    },
    /// Define (or replace) a class from a JSON file (`-` for stdin).
    Define {
        /// The class definition: {"name", "superclass"?, "association"?, "properties": [...]}.
        file: PathBuf,
    },
    /// Create an instance.
    Create {
        /// Its class.
        class: String,
        /// Its properties, as a JSON object.
        #[arg(long)]
        props: String,
    },
    /// Show one instance by object path.
    Get {
        /// The object path (its namespace may be left out).
        path: String,
    },
    /// List a class's instances, subclasses included unless --shallow.
    List {
        /// The class.
        class: String,
        /// Only the class's own instances.
        #[arg(long)]
        shallow: bool,
        /// A WQL condition, such as "Name LIKE 'web%'".
        #[arg(long = "where")]
        condition: Option<String>,
    },
    /// Change an instance's properties (all of them with --replace).
    Modify {
        /// The object path.
        path: String,
        /// The properties to set, as a JSON object.
        #[arg(long)]
        props: String,
        /// Replace every property instead of the given ones.
        #[arg(long)]
        replace: bool,
    },
    /// Delete an instance (and, with --cascade, the associations referring to it).
    Delete {
        /// The object path.
        path: String,
        /// Also delete what refers to it.
        #[arg(long)]
        cascade: bool,
    },
    /// The instances associated with one.
    Associators {
        /// The object path.
        path: String,
        #[command(flatten)]
        filter: AssocArgs,
    },
    /// The associations that refer to an instance.
    References {
        /// The object path.
        path: String,
        #[command(flatten)]
        filter: AssocArgs,
    },
    /// One instance's versions.
    History {
        /// The object path.
        path: String,
    },
    /// Run a WQL query: SELECT props FROM Class WHERE ...
    Query {
        /// The query.
        query: String,
    },
}

/// The association filters.
#[derive(clap::Args)]
pub struct AssocArgs {
    /// Only associations of this class.
    #[arg(long)]
    assoc_class: Option<String>,
    /// Only ends of this class (associators).
    #[arg(long)]
    result_class: Option<String>,
    /// Only where the instance plays this role.
    #[arg(long)]
    role: Option<String>,
    /// Only ends in this role (associators).
    #[arg(long)]
    result_role: Option<String>,
}

impl AssocArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("assoc_class", &self.assoc_class),
            ("result_class", &self.result_class),
            ("role", &self.role),
            ("result_role", &self.result_role),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

fn url(server: &str, namespace: &str, parts: &[&str]) -> anyhow::Result<reqwest::Url> {
    let mut u = reqwest::Url::parse(server).with_context(|| format!("{server} is not a URL"))?;
    u.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("{server} cannot take a path"))?
        .pop_if_empty()
        .extend(["v1", "namespaces", namespace])
        .extend(parts);
    Ok(u)
}

fn json_object(text: &str) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(text).context("--props is not valid JSON")?;
    anyhow::ensure!(v.is_object(), "--props must be a JSON object");
    Ok(v)
}

/// Runs one `pepper model` command against `server`.
pub fn run(server: &str, token: &crate::Access, namespace: &str, command: ModelCommand) -> anyhow::Result<ExitCode> {
    let http = crate::http_client(token, Some(crate::HTTP_TIMEOUT))?;
    let request = match command {
        ModelCommand::Classes { class: None } => http.get(url(server, namespace, &["classes"])?),
        ModelCommand::Classes { class: Some(c) } => http.get(url(server, namespace, &["classes", &c])?),
        ModelCommand::Define { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read the class from stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let def: serde_json::Value = serde_json::from_str(&text).context("the class file is not valid JSON")?;
            http.post(url(server, namespace, &["classes"])?).json(&def)
        }
        ModelCommand::Create { class, props } => http
            .post(url(server, namespace, &["instances"])?)
            .json(&serde_json::json!({ "class": class, "properties": json_object(&props)? })),
        ModelCommand::Get { path } => http.get(url(server, namespace, &["instances", &path])?),
        ModelCommand::List { class, shallow, condition } => {
            let mut q = vec![("class", class), ("deep", (!shallow).to_string()), ("limit", "1000".into())];
            q.extend(condition.map(|c| ("where", c)));
            http.get(url(server, namespace, &["instances"])?).query(&q)
        }
        ModelCommand::Modify { path, props, replace } => {
            let body = serde_json::json!({ "properties": json_object(&props)? });
            let u = url(server, namespace, &["instances", &path])?;
            if replace {
                http.put(u).json(&body)
            } else {
                http.patch(u).json(&body)
            }
        }
        ModelCommand::Delete { path, cascade } => {
            http.delete(url(server, namespace, &["instances", &path])?).query(&[("cascade", cascade.to_string())])
        }
        ModelCommand::Associators { path, filter } => {
            http.get(url(server, namespace, &["instances", &path, "associators"])?).query(&filter.query())
        }
        ModelCommand::References { path, filter } => {
            http.get(url(server, namespace, &["instances", &path, "references"])?).query(&filter.query())
        }
        ModelCommand::History { path } => http.get(url(server, namespace, &["instances", &path, "history"])?),
        ModelCommand::Query { query } => {
            http.post(url(server, namespace, &["query"])?).json(&serde_json::json!({ "query": query, "limit": 1000 }))
        }
    };
    let response = request.send().with_context(|| format!("cannot reach {server}"))?;
    crate::answer(response)
}
