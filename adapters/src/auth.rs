//! Identity: principals, their bearer tokens and grants, and who the caller
//! of a request is. What a caller may do is the router's rule
//! ([`pepper_router::allows`]); this module only says who is asking.
//!
//! **Auth is on** when the site has an admin token (`--admin-token-file`
//! or `PEPPER_ADMIN_TOKEN`). Then every request but `GET /v1/health` and
//! the peer endpoints (which take the peer secret) must carry
//! `Authorization: Bearer TOKEN`: no token or an unknown, revoked or
//! expired one gets 401, and a token whose principal holds no grant for
//! the request gets 403. With auth off, every caller may do everything, as
//! before this module, and the site listens on loopback only unless told
//! `--insecure`.
//!
//! **Principals** are documents in the store (`pepper/auth/principals/NAME`,
//! JSON): a name, grants and tokens. They are written like any record, so
//! they survive restarts and keep their history in the log, and the
//! site's in-memory index follows the log through the store's fold
//! ([`Principals`] is a [`pepper_storage::Fold`]).
//!
//! **Tokens** are `pepper_ID_SECRET`: a 16-hex-digit id that names the
//! token, and 64 hex digits (256 bits) from the operating system's random
//! source. Only the SHA-256 of the secret is stored; the token is shown
//! once, when it is created. A check finds the token by its id and
//! compares the hashes in constant time; revoked and expired tokens stay
//! listed (with when) until their principal is removed.
//!
//! The **admin token** from the configuration is never stored: the site
//! keeps its hash, and a caller presenting it is the principal `admin`,
//! holding the `admin` grant (every action). It cannot be revoked through
//! the API, only by restarting the site with another.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use pepper_router::{Action, Grant, Resource};
use pepper_storage::{Committed, Fold, Store};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Where principals are kept: one document per principal, under this
/// prefix, named by the principal.
pub const PRINCIPAL_DOC_PREFIX: &str = "pepper/auth/principals/";

/// Most principals a site keeps; one more is refused with 409.
pub const PRINCIPALS_MAX: usize = 10_000;

/// Most tokens one principal holds, revoked and expired ones included
/// (removing the principal clears them); one more is refused with 409.
pub const TOKENS_PER_PRINCIPAL_MAX: usize = 32;

/// Most grants one principal holds; one more is refused with 409.
pub const GRANTS_PER_PRINCIPAL_MAX: usize = 256;

/// Longest principal name, in bytes.
pub const PRINCIPAL_NAME_BYTES_MAX: usize = 128;

/// The name the configured admin token authenticates as. No stored
/// principal may take it.
pub const ADMIN_PRINCIPAL: &str = "admin";

/// Token text: the prefix, then the id, `_`, the secret.
const TOKEN_PREFIX: &str = "pepper_";
const TOKEN_ID_BYTES: usize = 8;
const TOKEN_SECRET_BYTES: usize = 32;

/// A principal's name is 1 to [`PRINCIPAL_NAME_BYTES_MAX`] bytes of ASCII
/// letters, digits, `.`, `_`, `-` and `@`, not starting with `.` (it is
/// part of a document key and of audit lines).
///
/// # Errors
/// What is wrong with it, for a 400.
pub fn check_principal_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > PRINCIPAL_NAME_BYTES_MAX {
        return Err(format!("a principal's name is 1 to {PRINCIPAL_NAME_BYTES_MAX} bytes"));
    }
    if name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(format!(
            "principal name {name:?}: use ASCII letters, digits, '.', '_', '-' and '@', not starting with '.'"
        ));
    }
    Ok(())
}

/// A secret from the configuration (a token, a peer secret): its `Debug`
/// never shows it, so no log line or error can carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for the one place that compares or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// A grant as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantDoc {
    /// The action's name (`publish`, `models.read`, ...).
    pub action: String,
    /// A channel pattern, a namespace, or `*`.
    pub resource: String,
}

impl GrantDoc {
    /// The grant it names.
    ///
    /// # Errors
    /// The router's refusal: an unknown action, or a resource the action
    /// does not take.
    pub fn grant(&self) -> Result<Grant, pepper_router::Error> {
        Grant::new(Action::parse(&self.action)?, &self.resource)
    }
}

impl From<&Grant> for GrantDoc {
    fn from(g: &Grant) -> GrantDoc {
        GrantDoc { action: g.action().name().to_string(), resource: g.resource().to_string() }
    }
}

/// A token as stored: never its secret, only the secret's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenDoc {
    /// The id, the public part of the token.
    pub id: String,
    /// SHA-256 of the secret, in hex.
    pub hash: String,
    /// When it was created (µs since the epoch).
    pub created_us: u64,
    /// When it stops working, if it does.
    pub expires_us: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_us: Option<u64>,
    /// What the token is for, as its creator wrote it.
    #[serde(default)]
    pub note: String,
}

impl TokenDoc {
    /// `Ok` while the token works at `now_us`: not revoked, not expired.
    ///
    /// # Errors
    /// Which of the two it is.
    pub fn usable(&self, now_us: u64) -> Result<(), Refusal> {
        if self.revoked_us.is_some() {
            return Err(Refusal::Revoked);
        }
        if self.expires_us.is_some_and(|at| at <= now_us) {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

/// A principal as stored in its document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalDoc {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub grants: Vec<GrantDoc>,
    /// Its tokens.
    pub tokens: Vec<TokenDoc>,
    /// When it was created (µs since the epoch).
    pub created_us: u64,
}

impl PrincipalDoc {
    /// The document's key.
    pub fn key(name: &str) -> String {
        format!("{PRINCIPAL_DOC_PREFIX}{name}")
    }

    /// The document's bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A principal as the index holds it: its grants parsed.
#[derive(Debug)]
pub struct Principal {
    /// The stored document.
    pub doc: PrincipalDoc,
    /// Its grants, parsed.
    pub grants: Vec<Grant>,
    /// The sequence number of the record that last wrote it.
    pub seq: u64,
}

/// A newly made token: the text to show once, and what to store.
pub struct NewToken {
    /// The whole token, `pepper_ID_SECRET`.
    pub text: String,
    /// What the store keeps of it.
    pub doc: TokenDoc,
}

/// SHA-256 of `secret`.
fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Makes a token from the operating system's random source.
pub fn new_token(created_us: u64, expires_us: Option<u64>, note: String) -> NewToken {
    let mut id = [0u8; TOKEN_ID_BYTES];
    let mut secret = [0u8; TOKEN_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    let hash = hex::encode(digest(secret.as_bytes()));
    NewToken {
        text: format!("{TOKEN_PREFIX}{id}_{secret}"),
        doc: TokenDoc { id, hash, created_us, expires_us, revoked_us: None, note },
    }
}

/// The id and secret of a token's text, if it has a token's shape.
fn split_token(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, bytes: usize| s.len() == 2 * bytes && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, TOKEN_ID_BYTES) && hex_of(secret, TOKEN_SECRET_BYTES)).then_some((id, secret))
}

/// Whether `given` hashes to `hash` (hex), compared in constant time.
fn hash_matches(given: &[u8], hash: &str) -> bool {
    let Ok(want) = hex::decode(hash) else { return false };
    digest(given).ct_eq(want.as_slice()).into()
}

/// Whether `given` is `secret`, in time independent of where they differ
/// and of their lengths (both are hashed first). For the peer secret.
pub fn secret_matches(given: &[u8], secret: &[u8]) -> bool {
    digest(given).ct_eq(&digest(secret)).into()
}

/// The site's principals, indexed by name and by token id, following the
/// log.
#[derive(Default)]
pub struct Principals {
    index: RwLock<Index>,
    /// Bumped by every committed change to a principal, so an open stream
    /// re-checks its access only when something changed.
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Index {
    by_name: BTreeMap<String, Arc<Principal>>,
    /// Token id to principal name.
    by_token: HashMap<String, String>,
}

impl Index {
    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            for t in &old.doc.tokens {
                self.by_token.remove(&t.id);
            }
        }
    }

    /// Applies a document written at `seq`; a document that does not parse
    /// (which the API never writes) is logged and leaves the principal out.
    fn put(&mut self, key: &str, seq: u64, value: &[u8]) {
        let Some(name) = key.strip_prefix(PRINCIPAL_DOC_PREFIX) else { return };
        if self.by_name.get(name).is_some_and(|p| p.seq >= seq) {
            return;
        }
        self.remove(name);
        let parsed = serde_json::from_slice::<PrincipalDoc>(value).map_err(|e| e.to_string()).and_then(|doc| {
            let grants =
                doc.grants.iter().map(|g| g.grant().map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
            Ok((doc, grants))
        });
        match parsed {
            Ok((doc, grants)) => {
                for t in &doc.tokens {
                    self.by_token.insert(t.id.clone(), name.to_string());
                }
                self.by_name.insert(name.to_string(), Arc::new(Principal { doc, grants, seq }));
            }
            Err(e) => {
                tracing::error!(principal = name, error = %e, "a stored principal does not parse; it is left out")
            }
        }
    }
}

impl Fold for Principals {
    fn committed(&self, group: &Committed<'_>) {
        let mut docs = group.docs().filter(|(key, _)| key.starts_with(PRINCIPAL_DOC_PREFIX)).peekable();
        if docs.peek().is_none() {
            return;
        }
        let mut index = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        for (key, doc) in docs {
            match doc {
                Some((seq, value)) => index.put(key, seq, value),
                None => {
                    if let Some(name) = key.strip_prefix(PRINCIPAL_DOC_PREFIX) {
                        index.remove(name);
                    }
                }
            }
        }
    }
}

/// Most principal documents read per page while loading.
const LOAD_PAGE: usize = 1000;

impl Principals {
    /// Loads every stored principal. Register the fold first, so a write
    /// between the two is not missed (entries are versioned by seq).
    ///
    /// # Errors
    /// Store read errors.
    pub async fn load(&self, store: &Store) -> Result<(), pepper_storage::Error> {
        let mut after: Option<String> = None;
        loop {
            let from = after.clone();
            let page = store.read(move |v| v.docs(PRINCIPAL_DOC_PREFIX, from.as_deref(), LOAD_PAGE)).await?;
            {
                let mut index = self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                for doc in &page.items {
                    index.put(&doc.key, doc.seq, &doc.value);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// How many committed changes to principals there have been.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The principal named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Principal>> {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_name.get(name).cloned()
    }

    /// Every principal, by name.
    pub fn all(&self) -> Vec<Arc<Principal>> {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_name.values().cloned().collect()
    }

    /// How many principals there are.
    pub fn len(&self) -> usize {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The principal holding the token with this id.
    fn by_token(&self, id: &str) -> Option<Arc<Principal>> {
        let index = self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        index.by_token.get(id).and_then(|name| index.by_name.get(name)).cloned()
    }
}

/// The site's identity settings and principals.
pub struct Auth {
    /// SHA-256 of the admin token; `None`: auth is off.
    admin: Option<[u8; 32]>,
    /// SHA-256 of the peer secret, which a federated query's legs carry.
    peer: Option<[u8; 32]>,
    /// The stored principals.
    pub principals: Arc<Principals>,
    /// Refusals by reason, registered in the site's metrics.
    pub refusals: Refusals,
    /// The peer secret counts only with a client certificate (`tls`).
    peer_certificates_required: bool,
}

/// Who is asking.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Auth is off: every request is allowed.
    Open,
    /// The configured admin token.
    Admin,
    /// A stored principal, by one of its tokens.
    Principal(Arc<Principal>),
    /// Another site, by the peer secret, asking a leg of a federated query
    /// its own site allowed: it may read tuples and models, nothing else.
    Peer,
}

/// What a request acts on, owned (a [`Resource`] borrows).
#[derive(Clone, Debug)]
pub enum Wanted {
    /// One channel.
    Channel(pepper_router::Channel),
    /// Every channel of a pattern.
    Channels(pepper_router::Pattern),
    /// A model namespace.
    Namespace(String),
    /// The site itself.
    Site,
}

impl Wanted {
    /// The channels under `prefix` (a channel name), or every channel.
    ///
    /// # Errors
    /// `invalid_channel` (400) for a prefix that is not a channel.
    pub fn subtree(prefix: Option<&str>) -> Result<Wanted, ApiError> {
        let pattern = pepper_router::Pattern::parse(prefix.unwrap_or("/")).map_err(ApiError::bad_channel)?;
        Ok(Wanted::Channels(pattern))
    }

    /// The borrowed form.
    pub fn resource(&self) -> Resource<'_> {
        match self {
            Wanted::Channel(c) => Resource::Channel(c),
            Wanted::Channels(p) => Resource::Channels(p),
            Wanted::Namespace(ns) => Resource::Namespace(ns),
            Wanted::Site => Resource::Site,
        }
    }
}

impl Caller {
    /// The principal's name (`admin` for the admin token, `anonymous` with
    /// auth off).
    pub fn name(&self) -> &str {
        match self {
            Caller::Open => "anonymous",
            Caller::Admin => ADMIN_PRINCIPAL,
            Caller::Principal(p) => &p.doc.name,
            Caller::Peer => "peer",
        }
    }

    /// The principal an event it publishes is stamped with: its name when
    /// auth is on, none with auth off.
    pub fn stamp(&self) -> Option<String> {
        match self {
            Caller::Open | Caller::Peer => None,
            Caller::Admin | Caller::Principal(_) => Some(self.name().to_string()),
        }
    }

    /// Whether every request of the caller is allowed (auth off, or the
    /// admin token), so a handler need not work out the resource.
    pub fn unrestricted(&self) -> bool {
        matches!(self, Caller::Open | Caller::Admin)
    }

    /// Whether the caller may act on something granted to `owner`: its
    /// owner, or anyone with auth off or the admin token; something with no
    /// owner (granted with auth off) is anyone's with the grant for it.
    pub fn owns(&self, owner: Option<&str>) -> bool {
        match (self, owner) {
            (Caller::Principal(p), Some(o)) => p.doc.name == o,
            (Caller::Peer, Some(_)) => false,
            _ => true,
        }
    }

    /// Whether the caller may do `action` on `resource`.
    pub fn may(&self, action: Action, resource: &Resource<'_>) -> bool {
        match self {
            Caller::Open | Caller::Admin => true,
            Caller::Principal(p) => pepper_router::allows(&p.grants, action, resource),
            Caller::Peer => matches!(action, Action::TuplesRead | Action::ModelsRead),
        }
    }

    /// [`Caller::require`] on an owned resource.
    ///
    /// # Errors
    /// `forbidden` (403).
    pub fn require_wanted(&self, action: Action, wanted: &Wanted) -> Result<(), ApiError> {
        self.require(action, &wanted.resource())
    }

    /// `Ok` when the caller may do `action` on `resource`, else a 403 that
    /// names the principal, the action and the resource.
    ///
    /// # Errors
    /// `forbidden` (403).
    pub fn require(&self, action: Action, resource: &Resource<'_>) -> Result<(), ApiError> {
        if self.may(action, resource) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "principal {} may not {} on {resource}: no grant of {} covers it",
            self.name(),
            action,
            action
        )))
    }
}

impl Auth {
    /// Identity for a site whose admin token is `admin_token` (`None`: auth
    /// off).
    /// `peer_secret` is the federation's, if any: a federated query's legs
    /// carry it.
    pub fn new(admin_token: Option<&str>, peer_secret: Option<&str>, principals: Arc<Principals>) -> Auth {
        Auth {
            admin: admin_token.map(|t| digest(t.as_bytes())),
            peer: peer_secret.map(|t| digest(t.as_bytes())),
            principals,
            refusals: Refusals::default(),
            peer_certificates_required: false,
        }
    }

    /// The same, taking the peer secret only from a connection that
    /// presented a client certificate the peer CA signed.
    pub fn requiring_peer_certificates(mut self, required: bool) -> Auth {
        self.peer_certificates_required = required;
        self
    }

    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.admin.is_some()
    }

    /// The caller an event this site stamped with `principal` acts as, for
    /// work the site does on its publisher's behalf (a `pldbget` reply):
    /// everyone with auth off; with auth on, the named principal as it is
    /// now (a removed one is no one).
    pub fn acting_as(&self, principal: Option<&str>) -> Option<Caller> {
        if !self.enabled() {
            return Some(Caller::Open);
        }
        match principal? {
            ADMIN_PRINCIPAL => Some(Caller::Admin),
            name => self.principals.get(name).map(Caller::Principal),
        }
    }

    /// Who presents `authorization` (the header's value, if any) at `now_us`.
    ///
    /// # Errors
    /// `unauthorized` (401): auth is on and there is no bearer token, or it
    /// is unknown, revoked or expired. The message says which, but never
    /// echoes the token.
    pub fn authenticate(&self, authorization: Option<&str>, now_us: u64) -> Result<Caller, ApiError> {
        self.identify(authorization, now_us).map(|(caller, _)| caller).map_err(ApiError::from)
    }

    /// [`Auth::authenticate`], with the session of a stored principal's
    /// token and a typed refusal.
    fn identify(&self, authorization: Option<&str>, now_us: u64) -> Result<(Caller, Option<Session>), Refused> {
        let Some(admin) = &self.admin else { return Ok((Caller::Open, None)) };
        let refused = |why, id: Option<&str>| Refused { why, id: id.map(str::to_string) };
        let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) else {
            return Err(refused(Refusal::NoToken, None));
        };
        let given = digest(token.as_bytes());
        if bool::from(given.ct_eq(admin)) {
            return Ok((Caller::Admin, None));
        }
        if self.peer.is_some_and(|peer| bool::from(given.ct_eq(&peer))) {
            return Ok((Caller::Peer, None));
        }
        let unknown = || refused(Refusal::UnknownToken, None);
        let (id, secret) = split_token(token).ok_or_else(unknown)?;
        let principal = self.principals.by_token(id).ok_or_else(unknown)?;
        let stored = principal.doc.tokens.iter().find(|t| t.id == id).ok_or_else(unknown)?;
        if !hash_matches(secret.as_bytes(), &stored.hash) {
            return Err(unknown());
        }
        stored.usable(now_us).map_err(|why| refused(why, Some(id)))?;
        let session = Session { principal: principal.doc.name.clone(), token: id.to_string() };
        Ok((Caller::Principal(principal), Some(session)))
    }

    /// Whether `session`'s token still works at `now_us` and its principal,
    /// as it is now, may do `action` on `resource`.
    fn session_may(&self, session: &Session, action: Action, resource: &Resource<'_>, now_us: u64) -> bool {
        self.principals.get(&session.principal).is_some_and(|p| {
            p.doc.tokens.iter().any(|t| t.id == session.token && t.usable(now_us).is_ok())
                && pepper_router::allows(&p.grants, action, resource)
        })
    }
}

/// Why a request's token was refused (401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Auth is on and the request has no bearer token.
    NoToken,
    /// No principal holds the token (or its secret does not match).
    UnknownToken,
    /// The token was revoked.
    Revoked,
    /// The token's expiry passed.
    Expired,
    /// The peer secret came without the client certificate this site
    /// requires of peers (`tls`).
    NoPeerCertificate,
}

impl Refusal {
    /// The `reason` label of `pepper_auth_refusals_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::Revoked => "revoked_token",
            Refusal::Expired => "expired_token",
            Refusal::NoPeerCertificate => "no_peer_certificate",
        }
    }
}

/// A refusal, with the token's id when it is known (never its secret).
#[derive(Debug)]
struct Refused {
    why: Refusal,
    id: Option<String>,
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> ApiError {
        let id = r.id.unwrap_or_default();
        ApiError::unauthorized(match r.why {
            Refusal::NoToken => "this site requires a token: send Authorization: Bearer TOKEN".to_string(),
            Refusal::UnknownToken => "unknown token".to_string(),
            Refusal::Revoked => format!("token {id} was revoked"),
            Refusal::Expired => format!("token {id} has expired"),
            Refusal::NoPeerCertificate => {
                "the peer secret is taken only with a client certificate this site's peer CA signed".to_string()
            }
        })
    }
}

/// The channel of audit events: changes to principals, tokens, grants and
/// the recording policy, each in the same atomic append as the change.
pub const AUDIT_CHANNEL: &str = "/pepper/audit/";

/// The payload type of an audit event.
pub const AUDIT_TYPE: &str = "pepper.audit";

/// An audit event: `caller` did `action` (`principal.create`,
/// `token.revoke`, `policy.put`, ...) on `target`, with `detail`. Never a
/// secret in it: tokens appear by id.
pub fn audit_event(caller: &Caller, action: &str, target: &str, detail: serde_json::Value) -> pepper_storage::Body {
    audit(caller.name(), caller.stamp(), action, target, detail)
}

/// An audit event of a change no principal made: `by` names who did
/// (`site:NAME` for what a peer announced).
pub fn audit_event_by(by: &str, action: &str, target: &str, detail: serde_json::Value) -> pepper_storage::Body {
    audit(by, None, action, target, detail)
}

fn audit(
    by: &str,
    principal: Option<String>,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> pepper_storage::Body {
    let payload = serde_json::json!({ "action": action, "by": by, "target": target, "detail": detail });
    pepper_storage::Body::Event(pepper_storage::Event {
        id: crate::wire::envelope::new_event_id(),
        channel: AUDIT_CHANNEL.to_string(),
        event_type: AUDIT_TYPE.to_string(),
        from: pepper_storage::Party { service: "pepper".into(), instance: String::new() },
        to: pepper_storage::Target::default(),
        distribution: pepper_storage::Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        tuple: None,
        principal,
    })
}

/// Refusals by reason, for `/metrics`: `no_token`, `unknown_token`,
/// `revoked_token`, `expired_token` (401) and `forbidden` (403).
pub type Refusals =
    prometheus_client::metrics::family::Family<RefusalLabel, prometheus_client::metrics::counter::Counter>;

/// The label of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RefusalLabel {
    /// Why it was refused.
    pub reason: &'static str,
}

/// Which token of which principal a request came with, for a stream that
/// outlives its request.
#[derive(Clone, Debug)]
pub struct Session {
    principal: String,
    token: String,
}

/// A stream's right to go on: its caller's token and grant, re-checked
/// before each delivery once principals changed or the token's expiry
/// passed, so a revoked or expired token, a removed principal or a grant
/// taken back ends the stream before it delivers another event.
pub struct StreamAccess {
    auth: Arc<Auth>,
    session: Session,
    action: Action,
    pattern: pepper_router::Pattern,
    seen: u64,
    expires_us: Option<u64>,
    valid: bool,
}

impl StreamAccess {
    /// The access of a stream `session` opened for `action` over `pattern`
    /// (none to keep for a caller that is not a stored principal).
    pub fn new(
        auth: &Arc<Auth>,
        session: Option<&Session>,
        action: Action,
        pattern: &pepper_router::Pattern,
    ) -> Option<StreamAccess> {
        let session = session?.clone();
        let principal = auth.principals.get(&session.principal)?;
        let expires_us = principal.doc.tokens.iter().find(|t| t.id == session.token).and_then(|t| t.expires_us);
        Some(StreamAccess {
            auth: auth.clone(),
            session,
            action,
            pattern: pattern.clone(),
            seen: auth.principals.generation(),
            expires_us,
            valid: true,
        })
    }

    /// Whether the stream may deliver at `now_us`: re-checked when
    /// principals changed since the last check or the token's expiry passed.
    pub fn allowed(&mut self, now_us: u64) -> bool {
        let generation = self.auth.principals.generation();
        let expired = self.expires_us.is_some_and(|at| at <= now_us);
        if self.valid && (generation != self.seen || expired) {
            self.seen = generation;
            let resource = Resource::Channels(&self.pattern);
            self.valid = self.auth.session_may(&self.session, self.action, &resource, now_us);
        }
        self.valid
    }
}

/// Whether `path` is answered without a token: health, for load
/// balancers, and the peer endpoints, which check the peer secret
/// themselves.
fn open_path(path: &str) -> bool {
    path == "/v1/health" || path.starts_with("/v1/peer/")
}

/// Axum middleware: works out who the caller is and puts the [`Caller`] in
/// the request's extensions for the handlers, or answers 401.
pub(crate) async fn identify(
    axum::extract::State(auth): axum::extract::State<Arc<Auth>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if open_path(request.uri().path()) {
        return next.run(request).await;
    }
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let identified = auth.identify(header, pepper_storage::now_us()).and_then(|(caller, session)| {
        let certified = request.extensions().get::<crate::tls::PeerCertificate>().is_some();
        if matches!(caller, Caller::Peer) && auth.peer_certificates_required && !certified {
            return Err(Refused { why: Refusal::NoPeerCertificate, id: None });
        }
        Ok((caller, session))
    });
    match identified {
        Ok((caller, session)) => {
            if let Some(session) = session {
                request.extensions_mut().insert(session);
            }
            request.extensions_mut().insert(caller);
            let response = next.run(request).await;
            if response.extensions().get::<crate::error::ErrorCode>().is_some_and(|c| c.0 == "forbidden") {
                auth.refusals.get_or_create(&RefusalLabel { reason: "forbidden" }).inc();
            }
            response
        }
        Err(refused) => {
            auth.refusals.get_or_create(&RefusalLabel { reason: refused.why.reason() }).inc();
            ApiError::from(refused).into_response()
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Caller, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request reached its handler without being identified",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal_with(token: &NewToken, grants: &[(&str, &str)]) -> Principals {
        let doc = PrincipalDoc {
            name: "ops".into(),
            grants: grants.iter().map(|(a, r)| GrantDoc { action: (*a).into(), resource: (*r).into() }).collect(),
            tokens: vec![token.doc.clone()],
            created_us: 1,
        };
        let principals = Principals::default();
        principals.index.write().expect("index").put(&PrincipalDoc::key("ops"), 5, &doc.encode());
        principals
    }

    #[test]
    fn tokens_authenticate_their_principal_and_nothing_else() {
        let token = new_token(1, Some(1_000), String::new());
        assert!(token.text.starts_with("pepper_") && token.text.len() == 7 + 16 + 1 + 64, "{}", token.text);
        assert!(!token.doc.hash.contains(&token.text[24..]), "the secret is not stored");
        let auth = Auth::new(
            Some("the-admin-token"),
            Some("peer-secret"),
            Arc::new(principal_with(&token, &[("publish", "/a/")])),
        );
        let caller = auth.authenticate(Some(&format!("Bearer {}", token.text)), 10).expect("valid");
        assert_eq!(caller.name(), "ops");
        let a = pepper_router::Channel::parse("/a/x/").expect("channel");
        let b = pepper_router::Channel::parse("/b/").expect("channel");
        assert!(caller.may(Action::Publish, &Resource::Channel(&a)));
        let e = caller.require(Action::Publish, &Resource::Channel(&b)).expect_err("forbidden");
        assert_eq!((e.status().as_u16(), e.code()), (403, "forbidden"));
        assert!(e.message().contains("ops") && e.message().contains("/b/"), "{}", e.message());
        assert!(matches!(auth.authenticate(Some("Bearer the-admin-token"), 10), Ok(Caller::Admin)));
        let peer = auth.authenticate(Some("Bearer peer-secret"), 10).expect("peer");
        assert!(peer.may(Action::TuplesRead, &Resource::Channel(&a)));
        assert!(!peer.may(Action::Publish, &Resource::Channel(&a)), "a peer leg only reads");
        // Expired, unknown, malformed, missing: 401, never the token echoed.
        let expired = auth.authenticate(Some(&format!("Bearer {}", token.text)), 1_000).expect_err("expired");
        assert!(expired.message().contains("expired"), "{}", expired.message());
        let mut wrong = token.text.clone();
        wrong.replace_range(30..31, if &wrong[30..31] == "0" { "1" } else { "0" });
        for header in [Some(format!("Bearer {wrong}")), Some("Bearer nope".into()), Some("Basic x".into()), None] {
            let e = auth.authenticate(header.as_deref(), 10).expect_err("refused");
            assert_eq!(e.status().as_u16(), 401, "{header:?}");
            assert!(!e.message().contains(&wrong[24..]), "{}", e.message());
        }
    }

    /// A stream opened with a token that then expires stops delivering
    /// at the expiry, with no change to principals to prompt it; each
    /// refusal says why in its own type.
    #[test]
    fn a_stream_stops_at_its_tokens_expiry() {
        let token = new_token(1, Some(1_000), String::new());
        let auth = Arc::new(Auth::new(Some("admin"), None, Arc::new(principal_with(&token, &[("subscribe", "/a/")]))));
        let header = format!("Bearer {}", token.text);
        let (_, session) = auth.identify(Some(&header), 10).expect("valid");
        let pattern = pepper_router::Pattern::parse("/a/x/").expect("pattern");
        let mut access =
            StreamAccess::new(&auth, session.as_ref(), Action::Subscribe, &pattern).expect("a principal's");
        assert!(access.allowed(999));
        assert!(!access.allowed(1_000), "expired");
        assert!(!access.allowed(10), "and it stays ended");
        let wider = pepper_router::Pattern::parse("/").expect("pattern");
        let mut access = StreamAccess::new(&auth, session.as_ref(), Action::Subscribe, &wider).expect("a principal's");
        assert!(access.allowed(10), "checked again only when principals change or the token expires");
        assert!(!auth.session_may(
            session.as_ref().expect("session"),
            Action::Subscribe,
            &Resource::Channels(&wider),
            10
        ));
        for (header, now, why) in [
            (None, 10, Refusal::NoToken),
            (Some("Bearer x"), 10, Refusal::UnknownToken),
            (Some(header.as_str()), 1_000, Refusal::Expired),
        ] {
            let refused = auth.identify(header, now).expect_err("refused");
            assert_eq!(refused.why, why);
        }
        assert_eq!(Refusal::Revoked.reason(), "revoked_token");
    }

    #[test]
    fn with_auth_off_everyone_may_do_everything() {
        let auth = Auth::new(None, None, Arc::new(Principals::default()));
        assert!(!auth.enabled());
        let caller = auth.authenticate(None, 0).expect("open");
        assert!(caller.may(Action::Admin, &Resource::Site));
    }

    #[test]
    fn the_index_follows_writes_by_seq_and_drops_revoked_tokens_from_nothing() {
        let token = new_token(1, None, String::new());
        let principals = principal_with(&token, &[]);
        // An older write of the same principal is ignored.
        let older = PrincipalDoc { name: "ops".into(), grants: vec![], tokens: vec![], created_us: 1 };
        principals.index.write().expect("index").put(&PrincipalDoc::key("ops"), 4, &older.encode());
        assert_eq!(principals.get("ops").expect("ops").doc.tokens.len(), 1);
        // A newer one replaces it, and its tokens' ids go with it.
        principals.index.write().expect("index").put(&PrincipalDoc::key("ops"), 6, &older.encode());
        assert!(principals.by_token(&token.doc.id).is_none());
        principals.index.write().expect("index").remove("ops");
        assert!(principals.is_empty());
    }

    #[test]
    fn names_and_secrets() {
        for ok in ["ops", "deploy-bot@lab.example", "a.b_c"] {
            assert!(check_principal_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(check_principal_name(bad).is_err(), "{bad:?}");
        }
        assert!(secret_matches(b"s3cret", b"s3cret"));
        assert!(!secret_matches(b"s3cret", b"s3cret-longer"));
        assert!(!secret_matches(b"", b"s3cret"));
    }
}
