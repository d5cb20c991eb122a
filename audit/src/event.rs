//! What an audit event says: who did what to which subject, and how it ended.
//!
//! These are the typed values callers build; [`crate::Record`] adds the chain fields when an
//! event is written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One thing that happened, as the component that saw it reports it.
///
/// An event never holds a token, a key or a request body: not in `reason`, not in `details`,
/// nowhere. Name the thing instead (a token's id, a key's fingerprint, a certificate's serial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The component that saw the event.
    pub component: Component,
    /// Who asked: a SPIFFE ID, `operator:<user>`, or `anonymous`.
    pub actor: String,
    /// What was asked for.
    pub action: Action,
    /// What was acted on, e.g. a SPIFFE ID or a certificate serial.
    pub subject: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it ended so, mostly for failures and denials (a stable code or a short sentence).
    pub reason: Option<String>,
    /// The client's address, when the event came over the network.
    pub source: Option<String>,
    /// The request id that ties this event to diagnostics logs.
    pub request_id: Option<String>,
    /// The trust domain the event belongs to.
    pub trust_domain: Option<String>,
    /// A few small extra facts (sorted by key on the wire). Never secrets.
    pub details: BTreeMap<String, serde_json::Value>,
}

impl AuditEvent {
    /// An event with the five required facts and nothing optional.
    pub fn new(
        component: Component,
        actor: impl Into<String>,
        action: Action,
        subject: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            component,
            actor: actor.into(),
            action,
            subject: subject.into(),
            outcome,
            reason: None,
            source: None,
            request_id: None,
            trust_domain: None,
            details: BTreeMap::new(),
        }
    }

    /// Sets `reason`.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sets `source`, the client's address.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets `request_id`.
    #[must_use]
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Sets `trust_domain`.
    #[must_use]
    pub fn with_trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = Some(trust_domain.into());
        self
    }

    /// Adds one entry to `details`, replacing any earlier value under the same key.
    #[must_use]
    pub fn with_detail(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// The meshgate component that writes a log or saw an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Component {
    /// The certificate authority.
    Ca,
    /// A MicroGateway.
    Gateway,
    /// The `meshgate` command line, acting locally.
    Cli,
}

/// What was asked for. Serialized in snake_case (`token_create`, `svid_issue`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// A CA directory was initialised.
    CaInit,
    /// A join token was created.
    TokenCreate,
    /// A join token was presented and accepted.
    TokenUse,
    /// A join token was presented and refused.
    TokenReject,
    /// A join token was revoked.
    TokenRevoke,
    /// An X.509-SVID was issued.
    SvidIssue,
    /// An X.509-SVID was renewed.
    SvidRenew,
    /// An X.509-SVID was revoked.
    SvidRevoke,
    /// A renewal request was refused.
    RenewReject,
    /// A new CA key was prepared for rotation.
    RotatePrepare,
    /// A prepared CA key became the active one.
    RotateActivate,
    /// An old CA key was retired.
    RotateRetire,
    /// The intermediate CA certificate was renewed.
    IntermediateRenew,
    /// The audit log's torn tail was cut off when it was reopened (written by this crate).
    LogRecovered,
    /// Events were not written because the sink's queue was full (written by this crate;
    /// details `count`: how many).
    Gap,
    /// A signed checkpoint of the chain head (written by this crate; see the crate docs).
    Checkpoint,
    /// A gateway refused a request (policy, rate limit, or a request it cannot decide).
    RequestDeny,
    /// A gateway let a request through (recorded when its config asks for allows too).
    RequestAllow,
    /// A gateway refused a peer at the TLS handshake (no, untrusted, expired or revoked SVID).
    PeerReject,
    /// A gateway in TCP mode refused a connection (policy at connect, or a policy reload that
    /// closed it).
    ConnectionDeny,
    /// A gateway in TCP mode let a connection through (recorded when its config asks for allows
    /// too).
    ConnectionAllow,
    /// A gateway reloaded its policy files (outcome `failure` when the old policy stayed).
    PolicyReload,
}

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Done as asked.
    Success,
    /// Not done because something broke (our side or the environment).
    Failure,
    /// Not done because policy or authentication said no.
    Denied,
}
