//! Each class's attributes, on top of those every OCSF event carries (base_event): the
//! classification, the time, severity and status, the message, `metadata` and `unmapped`.

use serde_json::{Map, Value, json};

use super::objects::{component_name, endpoint, metadata, unmapped, user};
use super::{Crud, Event, Mapping, OcsfClass, Party, ResourceKind};
use crate::export::csv::name as wire_name;
use crate::{Action, AuditError, Outcome, Record};

/// The profile HTTP Activity events claim, for the allow/deny of a request.
const SECURITY_CONTROL: &str = "security_control";

/// The event for `record`, of the class `mapping` names.
pub(super) fn event(
    mapping: Mapping,
    log: &str,
    record: &Record,
) -> Result<(OcsfClass, Event), AuditError> {
    match mapping {
        Mapping::Api(crud, kind) => api_activity(crud, kind, log, record),
        Mapping::Auth { user, protocol } => authentication(user, protocol, log, record),
        Mapping::Http => http_activity(log, record),
        Mapping::Network => network_activity(log, record),
        Mapping::AppError => application_error(log, record),
        Mapping::Checkpoint => {
            let class = OcsfClass::BaseEvent;
            let activity = Activity::new(99, "Checkpoint");
            Ok((class, base(class, &activity, &[], log, record)?))
        }
    }
}

/// An activity of a class: its `activity_id` and `activity_name` (the schema's caption, or
/// for 99 `Other` and 0 `Unknown` what the record says).
struct Activity {
    id: u32,
    name: String,
}

impl Activity {
    fn new(id: u32, name: &str) -> Self {
        Self {
            id,
            name: name.to_owned(),
        }
    }
}

/// API Activity: who (`actor.user`), which operation (`api.operation` = the action) on what
/// (`resources`), from where (`src_endpoint`, `local` for a command run on the CA's host).
fn api_activity(
    crud: Crud,
    kind: ResourceKind,
    log: &str,
    record: &Record,
) -> Result<(OcsfClass, Event), AuditError> {
    let class = OcsfClass::ApiActivity;
    let activity = match crud {
        Crud::Create => Activity::new(Crud::Create as u32, "Create"),
        Crud::Update => Activity::new(Crud::Update as u32, "Update"),
        Crud::Delete => Activity::new(Crud::Delete as u32, "Delete"),
    };
    let mut ev = base(class, &activity, &[], log, record)?;
    let e = &record.event;
    ev.insert("actor".into(), json!({ "user": user(&e.actor) }));

    let mut api = Map::new();
    api.insert("operation".into(), wire_name(&e.action)?.into());
    api.insert(
        "service".into(),
        json!({ "name": component_name(e.component) }),
    );
    if let Some(id) = &e.request_id {
        api.insert("request".into(), json!({ "uid": id }));
    }
    if e.outcome != Outcome::Success {
        let mut response = Map::new();
        response.insert("error".into(), wire_name(&e.outcome)?.into());
        if let Some(reason) = reason(record) {
            response.insert("error_message".into(), reason.into());
        }
        api.insert("response".into(), Value::Object(response));
    }
    ev.insert("api".into(), Value::Object(api));

    // API Activity requires a source; the CLI and the CA's own maintenance act locally.
    let src = match &e.source {
        Some(addr) => endpoint(addr),
        None => endpoint("local"),
    };
    ev.insert("src_endpoint".into(), Value::Object(src));
    ev.insert("resources".into(), json!([resource(kind, record)]));
    Ok((class, ev))
}

/// The one resource an API Activity acted on: the subject as its name, and as its uid the
/// detail that identifies it (a token's id, a certificate's serial, a root's fingerprint).
fn resource(kind: ResourceKind, record: &Record) -> Value {
    let (kind, uid_key) = match kind {
        ResourceKind::TrustDomain => ("trust_domain", None),
        ResourceKind::JoinToken => ("join_token", Some("token_id")),
        ResourceKind::Svid => ("x509_svid", Some("serial")),
        ResourceKind::CaKey => ("ca_key", Some("root_sha256")),
        ResourceKind::IntermediateCa => ("intermediate_ca", None),
        ResourceKind::Policy => ("policy", None),
    };
    let mut r = Map::new();
    r.insert("name".into(), record.event.subject.as_str().into());
    r.insert("type".into(), kind.into());
    r.insert("role_id".into(), 1.into());
    r.insert("role".into(), "Target".into());
    let uid = uid_key
        .and_then(|key| record.event.details.get(key))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    if let Some(uid) = uid {
        r.insert("uid".into(), uid.into());
    }
    Value::Object(r)
}

/// Authentication, always a network Logon: who tried (`user`), with what credential
/// (`auth_protocol`), to which service, from where. For a gateway refusing a peer it dialled
/// (`direction` outbound) the recorded address is the peer's, so it is the `dst_endpoint`.
fn authentication(
    party: Party,
    protocol: &str,
    log: &str,
    record: &Record,
) -> Result<(OcsfClass, Event), AuditError> {
    let class = OcsfClass::Authentication;
    let mut ev = base(class, &Activity::new(1, "Logon"), &[], log, record)?;
    let e = &record.event;
    let who = match party {
        Party::Actor => &e.actor,
        Party::Subject => &e.subject,
    };
    ev.insert("user".into(), user(who));
    ev.insert("auth_protocol_id".into(), 99.into());
    ev.insert("auth_protocol".into(), protocol.into());
    ev.insert("logon_type_id".into(), 3.into());
    ev.insert("logon_type".into(), "Network".into());
    ev.insert("is_remote".into(), true.into());
    // A gateway names what the peer asked for in the subject; the CA is the service itself.
    let service = if e.action == Action::PeerReject {
        e.subject.as_str()
    } else {
        component_name(e.component)
    };
    ev.insert("service".into(), json!({ "name": service }));
    if let Some(addr) = &e.source {
        let side = if detail_str(record, "direction") == Some("outbound") {
            "dst_endpoint"
        } else {
            "src_endpoint"
        };
        ev.insert(side.into(), Value::Object(endpoint(addr)));
    }
    Ok((class, ev))
}

/// HTTP Activity with the security_control profile: the method is the activity, the subject
/// `<gateway id> <method> <path>` gives the request and the gateway (`dst_endpoint`), the peer
/// owns the `src_endpoint`, and the decision is `action_id` and `disposition_id`.
fn http_activity(log: &str, record: &Record) -> Result<(OcsfClass, Event), AuditError> {
    let class = OcsfClass::HttpActivity;
    let e = &record.event;
    let request = parse_request(&e.subject);
    let activity = match request {
        Some((_, method, _)) => method_activity(method),
        None => Activity::new(0, "Unknown"),
    };
    let mut ev = base(class, &activity, &[SECURITY_CONTROL], log, record)?;

    let mut http_request = Map::new();
    if let Some((_, method, path)) = request {
        if activity.id != 99 {
            http_request.insert("http_method".into(), method.into());
        }
        http_request.insert("url".into(), json!({ "path": path }));
    }
    if let Some(id) = &e.request_id {
        http_request.insert("uid".into(), id.as_str().into());
    }
    ev.insert("http_request".into(), Value::Object(http_request));
    let status = record
        .event
        .details
        .get("status")
        .and_then(Value::as_u64)
        .filter(|code| (100..=599).contains(code));
    if let Some(code) = status {
        ev.insert("http_response".into(), json!({ "code": code }));
        ev.insert("http_status".into(), code.into());
    }

    let allowed = e.action == Action::RequestAllow;
    let why = detail_str(record, "decision").or(e.reason.as_deref());
    let gateway = request.map(|(gateway, _, _)| gateway);
    gateway_decision(&mut ev, record, gateway, allowed, why);
    Ok((class, ev))
}

/// Network Activity with the security_control profile: a TCP-mode gateway's decision on one
/// connection. Allowed is `Open`, refused at connect `Refuse`, closed by a policy reload
/// `Close`; the subject `<gateway id> tcp` names the gateway (`dst_endpoint`), the peer owns the
/// `src_endpoint`.
fn network_activity(log: &str, record: &Record) -> Result<(OcsfClass, Event), AuditError> {
    let class = OcsfClass::NetworkActivity;
    let e = &record.event;
    let allowed = e.action == Action::ConnectionAllow;
    let reloaded = e.reason.as_deref() == Some("policy_reload");
    let activity = match (allowed, reloaded) {
        (true, _) => Activity::new(1, "Open"),
        (false, false) => Activity::new(5, "Refuse"),
        (false, true) => Activity::new(2, "Close"),
    };
    let mut ev = base(class, &activity, &[SECURITY_CONTROL], log, record)?;
    // A reload that withdrew the allow is a policy denial like one at connect.
    let why = if reloaded {
        Some("policy")
    } else {
        e.reason.as_deref()
    };
    gateway_decision(
        &mut ev,
        record,
        e.subject.strip_suffix(" tcp"),
        allowed,
        why,
    );
    Ok((class, ev))
}

/// What HTTP and Network Activity share for a gateway's decision: the peer's `src_endpoint`,
/// the gateway's `dst_endpoint`, the security control's action and disposition, the rule.
fn gateway_decision(
    ev: &mut Event,
    record: &Record,
    gateway: Option<&str>,
    allowed: bool,
    why: Option<&str>,
) {
    let e = &record.event;
    let mut src = match &e.source {
        Some(addr) => endpoint(addr),
        None => endpoint(&e.actor),
    };
    src.insert("owner".into(), user(&e.actor));
    ev.insert("src_endpoint".into(), Value::Object(src));
    if let Some(gateway) = gateway {
        ev.insert(
            "dst_endpoint".into(),
            json!({ "svc_name": gateway, "owner": user(gateway) }),
        );
    }
    let (action_id, action) = if allowed {
        (1, "Allowed")
    } else {
        (2, "Denied")
    };
    let (disposition_id, disposition) = disposition(allowed, why);
    ev.insert("action_id".into(), action_id.into());
    ev.insert("action".into(), action.into());
    ev.insert("disposition_id".into(), disposition_id.into());
    ev.insert("disposition".into(), disposition.into());
    if let Some(rule) = detail_str(record, "rule") {
        ev.insert("policy".into(), json!({ "name": rule }));
    }
}

/// Application Error (General Error): the audit log's own troubles. The message says what was
/// lost, since Application Error puts the error there.
fn application_error(log: &str, record: &Record) -> Result<(OcsfClass, Event), AuditError> {
    let class = OcsfClass::ApplicationError;
    let mut ev = base(class, &Activity::new(1, "General Error"), &[], log, record)?;
    let e = &record.event;
    if e.action == Action::Gap
        && let Some(count) = e.details.get("count").and_then(Value::as_u64)
    {
        let message = format!(
            "{count} audit events were not written to {}: {}",
            e.subject,
            reason(record).unwrap_or("the audit queue was full")
        );
        ev.insert("message".into(), message.into());
    }
    Ok((class, ev))
}

/// The attributes every event carries.
fn base(
    class: OcsfClass,
    activity: &Activity,
    profiles: &[&str],
    log: &str,
    record: &Record,
) -> Result<Event, AuditError> {
    let e = &record.event;
    let (status_id, status) = match e.outcome {
        Outcome::Success => (1, "Success"),
        Outcome::Failure | Outcome::Denied => (2, "Failure"),
    };
    let (severity_id, severity) = severity(e.action, e.outcome);
    let time = i64::try_from(record.time.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| AuditError::Internal("a record time does not fit OCSF's milliseconds"))?;
    let type_uid = u64::from(class.uid()) * 100 + u64::from(activity.id);
    let activity_caption = if activity.id == 99 {
        "Other"
    } else {
        &activity.name
    };

    let mut ev = Event::new();
    ev.insert("class_uid".into(), class.uid().into());
    ev.insert("class_name".into(), class.name().into());
    ev.insert("category_uid".into(), class.category_uid().into());
    ev.insert("category_name".into(), class.category_name().into());
    ev.insert("activity_id".into(), activity.id.into());
    ev.insert("activity_name".into(), activity.name.as_str().into());
    ev.insert("type_uid".into(), type_uid.into());
    ev.insert(
        "type_name".into(),
        format!("{}: {activity_caption}", class.name()).into(),
    );
    ev.insert("time".into(), time.into());
    ev.insert("timezone_offset".into(), 0.into());
    ev.insert("severity_id".into(), severity_id.into());
    ev.insert("severity".into(), severity.into());
    ev.insert("status_id".into(), status_id.into());
    ev.insert("status".into(), status.into());
    if let Some(reason) = reason(record) {
        ev.insert("status_detail".into(), reason.into());
    }
    ev.insert("message".into(), message(record)?.into());
    ev.insert("metadata".into(), metadata(record, log, profiles)?);
    ev.insert("unmapped".into(), unmapped(record));
    Ok(ev)
}

/// Informational for what went as asked, Low for a refusal (policy doing its job), Medium for
/// a failure; records lost from the trail (`gap`) are High, a crash's torn record Medium.
fn severity(action: Action, outcome: Outcome) -> (u32, &'static str) {
    match (action, outcome) {
        (Action::Gap, _) => (4, "High"),
        (Action::LogRecovered, _) => (3, "Medium"),
        (_, Outcome::Success) => (1, "Informational"),
        (_, Outcome::Denied) => (2, "Low"),
        (_, Outcome::Failure) => (3, "Medium"),
    }
}

/// `<action> by <actor> on <subject>: <outcome> (<reason>)`.
fn message(record: &Record) -> Result<String, AuditError> {
    let e = &record.event;
    let mut m = format!(
        "{} by {} on {}: {}",
        wire_name(&e.action)?,
        e.actor,
        e.subject,
        wire_name(&e.outcome)?
    );
    if let Some(reason) = reason(record) {
        m.push_str(" (");
        m.push_str(reason);
        m.push(')');
    }
    Ok(m)
}

/// The record's reason, unless it says nothing.
fn reason(record: &Record) -> Option<&str> {
    record.event.reason.as_deref().filter(|r| !r.is_empty())
}

/// `<gateway id> <method> <path>`, as a gateway writes a request's subject.
fn parse_request(subject: &str) -> Option<(&str, &str, &str)> {
    let mut parts = subject.splitn(3, ' ');
    let gateway = parts.next().filter(|g| g.starts_with("spiffe://"))?;
    let method = parts.next().filter(|m| !m.is_empty())?;
    let path = parts.next()?;
    Some((gateway, method, path))
}

/// HTTP Activity's activity for a method; one the schema does not list is 99 `Other`, named.
fn method_activity(method: &str) -> Activity {
    let id = match method {
        "CONNECT" => 1,
        "DELETE" => 2,
        "GET" => 3,
        "HEAD" => 4,
        "OPTIONS" => 5,
        "POST" => 6,
        "PUT" => 7,
        "TRACE" => 8,
        "PATCH" => 9,
        _ => return Activity::new(99, method),
    };
    let mut name = method.to_ascii_lowercase();
    if let Some(first) = name.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    Activity { id, name }
}

/// The security control's disposition: a dry run's would-be denial was `Detected` and let
/// through; a policy denial is `Unauthorized`, a malformed request `Rejected`, a rate limit
/// (or anything else refused) `Blocked`.
fn disposition(allowed: bool, why: Option<&str>) -> (u32, &'static str) {
    let why = why.unwrap_or_default();
    if allowed {
        if why.starts_with("dry_run") {
            (15, "Detected")
        } else {
            (1, "Allowed")
        }
    } else {
        match why {
            "deny" | "policy" => (26, "Unauthorized"),
            "invalid" | "bad_request" => (25, "Rejected"),
            _ => (2, "Blocked"),
        }
    }
}

fn detail_str<'a>(record: &'a Record, key: &str) -> Option<&'a str> {
    record.event.details.get(key).and_then(Value::as_str)
}
