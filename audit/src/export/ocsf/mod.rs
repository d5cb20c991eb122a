//! OCSF export: each record becomes one OCSF 1.8 event, a compact JSON object on its own line.
//!
//! [`mapping`] is the one table that sends each action to its class and activity (docs/audit.md
//! shows it); `classes` fills each class's attributes. Every record becomes exactly one event,
//! so nothing is dropped. The chain fields (`seq`, `prev`, `hash`) and the facts OCSF has no
//! attribute for go under `unmapped`, so an auditor can tie each event back to its hashed
//! record; `metadata.uid` is the record's hash.

mod classes;
mod objects;

use serde_json::{Map, Value};

use crate::{Action, AuditError, Record};

/// The OCSF release the events follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.8.0";

/// An OCSF event class that an export writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OcsfClass {
    /// Base Event (0, activity 99 Other named `Checkpoint`): a log signing its own head, which no
    /// OCSF class describes.
    BaseEvent,
    /// Authentication (3002): enrollment with a join token, refused renewals, peers refused at
    /// the TLS handshake.
    Authentication,
    /// Network Activity (4001), with the `security_control` profile: a TCP-mode gateway's
    /// connection decisions.
    NetworkActivity,
    /// HTTP Activity (4002), with the `security_control` profile: a gateway's request decisions.
    HttpActivity,
    /// API Activity (6003): CA operations and policy reloads.
    ApiActivity,
    /// Application Error (6008): the audit log's own troubles (`gap`, `log_recovered`).
    ApplicationError,
}

impl OcsfClass {
    /// Every class an export can write, in `class_uid` order.
    pub const ALL: [Self; 6] = [
        Self::BaseEvent,
        Self::Authentication,
        Self::NetworkActivity,
        Self::HttpActivity,
        Self::ApiActivity,
        Self::ApplicationError,
    ];

    /// `class_uid`: the category's uid times 1000 plus the class's number in it.
    pub fn uid(self) -> u32 {
        match self {
            Self::BaseEvent => 0,
            Self::Authentication => 3002,
            Self::NetworkActivity => 4001,
            Self::HttpActivity => 4002,
            Self::ApiActivity => 6003,
            Self::ApplicationError => 6008,
        }
    }

    /// `class_name`, the schema's caption.
    pub fn name(self) -> &'static str {
        match self {
            Self::BaseEvent => "Base Event",
            Self::Authentication => "Authentication",
            Self::NetworkActivity => "Network Activity",
            Self::HttpActivity => "HTTP Activity",
            Self::ApiActivity => "API Activity",
            Self::ApplicationError => "Application Error",
        }
    }

    fn category_uid(self) -> u32 {
        self.uid() / 1000
    }

    fn category_name(self) -> &'static str {
        match self {
            Self::BaseEvent => "Uncategorized",
            Self::Authentication => "Identity & Access Management",
            Self::NetworkActivity | Self::HttpActivity => "Network Activity",
            Self::ApiActivity | Self::ApplicationError => "Application Activity",
        }
    }
}

/// How many events of one class an export wrote (the manifest lists every class, zeros too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OcsfClassCount {
    pub class: OcsfClass,
    pub events: u64,
}

/// Appends one record's OCSF event and a newline; returns the event's class.
pub(crate) fn write_record(
    buf: &mut Vec<u8>,
    log: &str,
    record: &Record,
) -> Result<OcsfClass, AuditError> {
    let (class, event) = classes::event(mapping(record.event.action), log, record)?;
    serde_json::to_writer(&mut *buf, &Value::Object(event))
        .map_err(|_| AuditError::Internal("an OCSF event did not serialize"))?;
    buf.push(b'\n');
    Ok(class)
}

/// Counts per class, every class present, in [`OcsfClass::ALL`] order.
pub(crate) fn zero_counts() -> Vec<OcsfClassCount> {
    OcsfClass::ALL
        .iter()
        .map(|&class| OcsfClassCount { class, events: 0 })
        .collect()
}

/// What an action becomes in OCSF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// API Activity: a CRUD operation on a resource of this kind.
    Api(Crud, ResourceKind),
    /// Authentication (Logon over the network): `user` is the party that tried to
    /// authenticate, `protocol` the credential it presented.
    Auth { user: Party, protocol: &'static str },
    /// HTTP Activity with the security_control profile.
    Http,
    /// Network Activity with the security_control profile.
    Network,
    /// Application Error (General Error).
    AppError,
    /// Base Event, activity 99 named `Checkpoint`.
    Checkpoint,
}

/// API Activity's activities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crud {
    Create = 1,
    Update = 3,
    Delete = 4,
}

/// What an API Activity acted on (`resources[].type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceKind {
    TrustDomain,
    JoinToken,
    Svid,
    CaKey,
    IntermediateCa,
    Policy,
}

/// Which field of the record names the identity that authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Actor,
    /// For a join token the actor is `anonymous`: the token speaks for the subject's ID.
    Subject,
}

const JOIN_TOKEN: &str = "join token";
const MTLS_SVID: &str = "mTLS with an X.509-SVID";

/// The mapping table. It matches every action without a wildcard, so a new action does not
/// compile until it is given a class here (and a row in docs/audit.md); the tests then check it
/// against the schema without being edited. The signed `checkpoint` record goes to Base Event
/// (class_uid 0, activity 99 Other named `Checkpoint`): OCSF has no class for a log signing its
/// own head; its signature and certificates stay under `unmapped.details`. Revocations are updates: the credential
/// stays on record with a revoked status.
fn mapping(action: Action) -> Mapping {
    match action {
        Action::CaInit => Mapping::Api(Crud::Create, ResourceKind::TrustDomain),
        Action::TokenCreate => Mapping::Api(Crud::Create, ResourceKind::JoinToken),
        Action::TokenRevoke => Mapping::Api(Crud::Update, ResourceKind::JoinToken),
        Action::SvidIssue | Action::SvidRenew => Mapping::Api(Crud::Create, ResourceKind::Svid),
        Action::SvidRevoke => Mapping::Api(Crud::Update, ResourceKind::Svid),
        Action::RotatePrepare => Mapping::Api(Crud::Create, ResourceKind::CaKey),
        Action::RotateActivate => Mapping::Api(Crud::Update, ResourceKind::CaKey),
        Action::RotateRetire => Mapping::Api(Crud::Delete, ResourceKind::CaKey),
        Action::IntermediateRenew => Mapping::Api(Crud::Create, ResourceKind::IntermediateCa),
        Action::PolicyReload => Mapping::Api(Crud::Update, ResourceKind::Policy),
        Action::TokenUse => Mapping::Auth {
            user: Party::Subject,
            protocol: JOIN_TOKEN,
        },
        Action::TokenReject => Mapping::Auth {
            user: Party::Actor,
            protocol: JOIN_TOKEN,
        },
        Action::RenewReject | Action::PeerReject => Mapping::Auth {
            user: Party::Actor,
            protocol: MTLS_SVID,
        },
        Action::RequestAllow | Action::RequestDeny => Mapping::Http,
        Action::ConnectionAllow | Action::ConnectionDeny => Mapping::Network,
        Action::Gap | Action::LogRecovered => Mapping::AppError,
        Action::Checkpoint => Mapping::Checkpoint,
    }
}

/// An OCSF event under construction: a JSON object with sorted keys.
type Event = Map<String, Value>;
