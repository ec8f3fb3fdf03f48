//! `pepper auth`: principals, tokens and grants over the site's
//! `/v1/auth/` endpoints (docs/security.md), and `whoami`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

/// What `pepper auth` does.
#[derive(Subcommand)]
pub enum AuthCommand {
    /// Who the token is, its grants, and whether the site has auth on.
    Whoami,
    /// Add, list or remove principals.
    Principal {
        #[command(subcommand)]
        command: PrincipalCommand,
    },
    /// Create or revoke a principal's tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Grant a principal an action on a resource (a channel pattern such as
    /// /example.com/node/, a namespace, or * for the site).
    Grant {
        /// The principal.
        name: String,
        /// publish, subscribe, tuples.read, tuples.delete, models.read,
        /// models.write, recording, sites, metrics, deploy, automate, admin.
        action: String,
        /// The resource.
        resource: String,
    },
    /// Take a grant back.
    Revoke {
        /// The principal.
        name: String,
        /// The action.
        action: String,
        /// The resource, as granted.
        resource: String,
    },
}

/// `pepper auth principal ...`.
#[derive(Subcommand)]
pub enum PrincipalCommand {
    /// Add a principal, with grants given as ACTION=RESOURCE.
    Add {
        /// Its name.
        name: String,
        /// A grant, ACTION=RESOURCE (repeatable), such as publish=/example.com/.
        #[arg(long = "grant", value_name = "ACTION=RESOURCE")]
        grants: Vec<String>,
    },
    /// List the principals, their grants and their tokens (never secrets).
    List,
    /// Remove a principal: all its tokens stop working at once.
    Remove {
        /// Its name.
        name: String,
    },
}

/// `pepper auth token ...`.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token for a principal and print it, this once.
    Create {
        /// The principal.
        name: String,
        /// Seconds until it stops working (default: never).
        #[arg(long)]
        expires_in_s: Option<u64>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Revoke a token by its id (the 16 hex digits after `pepper_`).
    Revoke {
        /// The principal.
        name: String,
        /// The token's id.
        id: String,
    },
}

/// Runs `command` against `server`.
///
/// # Errors
/// The site cannot be reached, or answers with an error (printed, and the
/// exit code is non-zero).
pub fn run(server: &str, token: &crate::Access, command: AuthCommand) -> anyhow::Result<ExitCode> {
    let http = crate::http_client(token, Some(crate::HTTP_TIMEOUT))?;
    let root = format!("{}/v1/auth", server.trim_end_matches('/'));
    let principal = |name: &str| format!("{root}/principals/{name}");
    let request = match command {
        AuthCommand::Whoami => http.get(format!("{root}/whoami")),
        AuthCommand::Principal { command: PrincipalCommand::List } => http.get(format!("{root}/principals")),
        AuthCommand::Principal { command: PrincipalCommand::Add { name, grants } } => {
            let grants = grants
                .iter()
                .map(|g| match g.split_once('=') {
                    Some((action, resource)) => Ok(json!({"action": action, "resource": resource})),
                    None => anyhow::bail!("grant {g:?} must be ACTION=RESOURCE, such as publish=/example.com/"),
                })
                .collect::<anyhow::Result<Vec<Value>>>()?;
            http.post(format!("{root}/principals")).json(&json!({"name": name, "grants": grants}))
        }
        AuthCommand::Principal { command: PrincipalCommand::Remove { name } } => http.delete(principal(&name)),
        AuthCommand::Token { command: TokenCommand::Create { name, expires_in_s, note } } => {
            http.post(format!("{}/tokens", principal(&name))).json(&json!({"expires_in_s": expires_in_s, "note": note}))
        }
        AuthCommand::Token { command: TokenCommand::Revoke { name, id } } => {
            http.delete(format!("{}/tokens/{id}", principal(&name)))
        }
        AuthCommand::Grant { name, action, resource } => {
            http.post(format!("{}/grants", principal(&name))).json(&json!({"action": action, "resource": resource}))
        }
        AuthCommand::Revoke { name, action, resource } => {
            http.delete(format!("{}/grants", principal(&name))).query(&[("action", action), ("resource", resource)])
        }
    };
    let response = request.send().with_context(|| format!("cannot reach {server}"))?;
    crate::answer(response)
}
