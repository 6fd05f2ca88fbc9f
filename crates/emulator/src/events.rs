//! Key Vault change events, as Key Vault publishes them to an Event Grid system topic, in both of the
//! schemas a subscription can choose: the Event Grid schema and CloudEvents 1.0.
//!
//! A vault records each change as it happens ([`Change`]); the storage side drains them into the
//! queues subscribed to that vault (see [`crate::queue`]). Event types and `data` fields follow
//! <https://learn.microsoft.com/azure/event-grid/event-schema-key-vault>. Key Vault publishes no event
//! for an attribute update (enable, disable, new `exp`), so neither does the emulator: such a change
//! reaches clients by polling only.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// How long before `exp` Key Vault sends its `…NearExpiry` event.
pub const NEAR_EXPIRY: Duration = Duration::from_secs(30 * 86_400);

/// The subscription id the emulated system topics live under.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000e5e5";

/// Object types, as `data.ObjectType` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectType {
    /// A secret.
    Secret,
    /// A key.
    Key,
    /// A certificate.
    Certificate,
}

impl ObjectType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "Secret",
            Self::Key => "Key",
            Self::Certificate => "Certificate",
        }
    }
    fn collection(self) -> &'static str {
        match self {
            Self::Secret => "secrets",
            Self::Key => "keys",
            Self::Certificate => "certificates",
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum What {
    /// A new version (set, create, import).
    NewVersionCreated,
    /// The current version expires within [`NEAR_EXPIRY`].
    NearExpiry,
    /// The current version has expired.
    Expired,
}

/// One change of a vault.
#[derive(Clone, Debug)]
pub struct Change {
    /// Object type.
    pub kind: ObjectType,
    /// Object name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `nbf` (Unix seconds).
    pub nbf: Option<i64>,
    /// `exp` (Unix seconds).
    pub exp: Option<i64>,
    /// What happened.
    pub what: What,
    /// When.
    pub at: SystemTime,
}

impl Change {
    /// A new version, now.
    pub fn new_version(kind: ObjectType, name: &str, version: &str, nbf: Option<i64>, exp: Option<i64>) -> Self {
        Self {
            kind,
            name: name.into(),
            version: version.into(),
            nbf,
            exp,
            what: What::NewVersionCreated,
            at: SystemTime::now(),
        }
    }

    /// `Microsoft.KeyVault.<Type><What>`.
    pub fn event_type(&self) -> String {
        let what = match self.what {
            What::NewVersionCreated => "NewVersionCreated",
            What::NearExpiry => "NearExpiry",
            What::Expired => "Expired",
        };
        format!("Microsoft.KeyVault.{}{what}", self.kind.as_str())
    }
}

/// The schema a subscription delivers in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Schema {
    /// `EventGridSchema` (the default).
    #[default]
    EventGridSchema,
    /// `CloudEventSchemaV1_0`.
    #[serde(rename = "CloudEventSchemaV1_0")]
    CloudEvents,
}

/// The event JSON for `change` of `vault` (its DNS suffix gives the object ids).
pub fn event(vault: &str, suffix: &str, change: &Change, schema: Schema) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    let topic =
        format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/emulator/providers/Microsoft.KeyVault/vaults/{vault}");
    let time = jiff::Timestamp::try_from(change.at).map(|t| t.to_string()).unwrap_or_default();
    // Key Vault writes NBF and EXP as strings of Unix seconds, null when unset.
    let unix = |t: Option<i64>| t.map(|t| Value::String(t.to_string())).unwrap_or(Value::Null);
    let data = json!({
        "Id": format!("https://{vault}.{suffix}/{}/{}/{}", change.kind.collection(), change.name, change.version),
        "VaultName": vault,
        "ObjectType": change.kind.as_str(),
        "ObjectName": change.name,
        "Version": change.version,
        "NBF": unix(change.nbf),
        "EXP": unix(change.exp),
    });
    match schema {
        Schema::EventGridSchema => json!({
            "id": id,
            "topic": topic,
            "subject": change.name,
            "eventType": change.event_type(),
            "eventTime": time,
            "data": data,
            "dataVersion": "1",
            "metadataVersion": "1",
        }),
        Schema::CloudEvents => json!({
            "id": id,
            "source": topic,
            "specversion": "1.0",
            "type": change.event_type(),
            "subject": change.name,
            "time": time,
            "data": data,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemas_carry_the_documented_fields() {
        let c = Change::new_version(ObjectType::Secret, "db-password", "0123abcd", None, Some(1_900_000_000));
        let eg = event("kv1", "vault.azure.net", &c, Schema::EventGridSchema);
        assert_eq!(eg["eventType"], "Microsoft.KeyVault.SecretNewVersionCreated");
        assert_eq!(eg["subject"], "db-password");
        assert_eq!(eg["data"]["Id"], "https://kv1.vault.azure.net/secrets/db-password/0123abcd");
        assert_eq!(eg["data"]["EXP"], "1900000000");
        assert!(eg["data"]["NBF"].is_null());
        assert_eq!(eg["dataVersion"], "1");
        assert!(eg["topic"].as_str().unwrap().ends_with("/providers/Microsoft.KeyVault/vaults/kv1"));
        let ce = event("kv1", "vault.azure.net", &c, Schema::CloudEvents);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "Microsoft.KeyVault.SecretNewVersionCreated");
        assert_eq!(ce["source"], eg["topic"]);
        assert!(ce["time"].as_str().unwrap().ends_with('Z'));
        let near = Change { what: What::NearExpiry, kind: ObjectType::Certificate, ..c };
        assert_eq!(near.event_type(), "Microsoft.KeyVault.CertificateNearExpiry");
    }
}
