//! The OCSF objects several classes share: `metadata`, a `user` from an actor string, a
//! `network_endpoint` from a recorded address, and the record fields kept under `unmapped`.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value, json};

use super::OCSF_VERSION;
use crate::export::csv::name as wire_name;
use crate::record::format_time;
use crate::{AuditError, Component, Record, SYSTEM_ACTOR};

/// `metadata`: the product and schema version, the profiles the event claims, and where the
/// record came from: `uid` is its hash, `event_code` its action, `log_source` the log as named
/// to the export, `original_time` its time to the microsecond (`time` keeps milliseconds), and
/// `correlation_uid` its request id.
pub(super) fn metadata(record: &Record, log: &str, profiles: &[&str]) -> Result<Value, AuditError> {
    let e = &record.event;
    let mut m = Map::new();
    m.insert("version".into(), OCSF_VERSION.into());
    m.insert(
        "product".into(),
        json!({
            "name": "meshgate",
            "vendor_name": "meshgate",
            "version": env!("CARGO_PKG_VERSION"),
            "feature": { "name": component_name(e.component) },
        }),
    );
    m.insert("profiles".into(), json!(profiles));
    m.insert("uid".into(), record.hash.to_hex().into());
    m.insert("event_code".into(), wire_name(&e.action)?.into());
    m.insert("log_source".into(), log.into());
    m.insert("original_time".into(), format_time(record.time)?.into());
    if let Some(id) = &e.request_id {
        m.insert("correlation_uid".into(), id.as_str().into());
    }
    Ok(Value::Object(m))
}

/// A `user` from an actor string. A SPIFFE ID is a service account in its trust domain,
/// `operator:<login>` an admin, `system` and `ca` meshgate itself. `uid` is always the actor
/// string as recorded (so nothing is lost), except for `anonymous`, which identifies no one.
pub(super) fn user(actor: &str) -> Value {
    if let Some(trust_domain) = trust_domain_of(actor) {
        return json!({
            "name": actor, "uid": actor, "type_id": 4, "type": "Service", "domain": trust_domain,
        });
    }
    if let Some(login) = actor.strip_prefix("operator:").filter(|l| !l.is_empty()) {
        return json!({ "name": login, "uid": actor, "type_id": 2, "type": "Admin" });
    }
    match actor {
        "anonymous" => json!({ "name": actor, "type_id": 0, "type": "Unknown" }),
        SYSTEM_ACTOR | "ca" => {
            json!({ "name": actor, "uid": actor, "type_id": 3, "type": "System" })
        }
        _ => json!({ "name": actor, "uid": actor, "type_id": 0, "type": "Unknown" }),
    }
}

/// A `network_endpoint` from an address as recorded: `ip:port` (`[v6]:port`), `host:port`, a
/// bare IP, or else the text itself as the endpoint's name.
pub(super) fn endpoint(addr: &str) -> Map<String, Value> {
    let mut m = Map::new();
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        m.insert("ip".into(), socket.ip().to_string().into());
        m.insert("port".into(), socket.port().into());
    } else if let Ok(ip) = addr.parse::<IpAddr>() {
        m.insert("ip".into(), ip.to_string().into());
    } else if let Some((host, port)) = addr.rsplit_once(':')
        && let Ok(port) = port.parse::<u16>()
        && !host.is_empty()
    {
        m.insert("hostname".into(), host.into());
        m.insert("port".into(), port.into());
    } else {
        m.insert("name".into(), addr.into());
    }
    m
}

/// The record fields OCSF has no attribute for, under `unmapped`: the chain links that tie the
/// event to its hashed record, the subject as written, the trust domain, and all of `details`.
pub(super) fn unmapped(record: &Record) -> Value {
    let e = &record.event;
    json!({
        "seq": record.seq,
        "prev": record.prev.to_hex(),
        "hash": record.hash.to_hex(),
        "subject": e.subject,
        "trust_domain": e.trust_domain,
        "details": e.details,
    })
}

/// The meshgate program that wrote the record, as a service or feature name.
pub(super) fn component_name(component: Component) -> &'static str {
    match component {
        Component::Ca => "meshgate ca",
        Component::Gateway => "meshgate gateway",
        Component::Cli => "meshgate cli",
    }
}

/// The trust domain of a SPIFFE ID (`spiffe://<td>/...`), if `id` is one.
fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let trust_domain = rest.split('/').next().unwrap_or_default();
    (!trust_domain.is_empty()).then_some(trust_domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_ip_hostname_or_name() {
        assert_eq!(
            Value::Object(endpoint("10.0.0.7:4431")),
            json!({"ip": "10.0.0.7", "port": 4431})
        );
        assert_eq!(
            Value::Object(endpoint("[::1]:8443")),
            json!({"ip": "::1", "port": 8443})
        );
        assert_eq!(
            Value::Object(endpoint("payments.internal:9443")),
            json!({"hostname": "payments.internal", "port": 9443})
        );
        assert_eq!(Value::Object(endpoint("::1")), json!({"ip": "::1"}));
        assert_eq!(
            Value::Object(endpoint("unix socket")),
            json!({"name": "unix socket"})
        );
        assert_eq!(Value::Object(endpoint(":80")), json!({"name": ":80"}));
    }

    #[test]
    fn actors_become_users_of_the_right_type() {
        let svc = user("spiffe://bank.example/ns/shop/sa/web");
        assert_eq!(svc["type_id"], 4);
        assert_eq!(svc["domain"], "bank.example");
        let op = user("operator:alice");
        assert_eq!(
            (op["name"].as_str(), op["uid"].as_str()),
            (Some("alice"), Some("operator:alice"))
        );
        assert_eq!(op["type_id"], 2);
        assert_eq!(user("system")["type_id"], 3);
        assert_eq!(user("anonymous").get("uid"), None);
        assert_eq!(user("operator:")["type_id"], 0);
        assert_eq!(user("spiffe://")["type_id"], 0);
    }
}
