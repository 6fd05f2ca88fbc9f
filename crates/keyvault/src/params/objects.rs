//! The `objects` parameter: stage 1 `{array: [string]}`, stage 2 each string as one object, each
//! checked completely in upstream's order (`pkg/provider/provider.go` of the Azure provider).

use std::fmt;

use serde::Deserialize;

use super::read::{Findings, Stop};
use super::{Encoding, Format, JsonKey, ObjectSpec, ObjectType, VersionPolicy, parse_mode};

#[derive(Deserialize)]
struct ObjectsArray {
    #[serde(default)]
    array: Vec<String>,
}

/// Per-object fields as written in the class; every field is text, as in upstream (numbers too).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    #[serde(default)]
    object_name: Scalar,
    #[serde(default)]
    object_type: Scalar,
    #[serde(default)]
    object_version: Scalar,
    #[serde(default)]
    object_alias: Scalar,
    #[serde(default)]
    object_format: Scalar,
    #[serde(default)]
    object_encoding: Scalar,
    #[serde(default)]
    object_version_history: Scalar,
    #[serde(default)]
    file_permission: Scalar,
    #[serde(default)]
    optional: Scalar,
    #[serde(default)]
    object_version_policy: Scalar,
    #[serde(default)]
    object_not_after: Scalar,
    #[serde(default)]
    json_keys: Option<Vec<RawJsonKey>>,
}

/// One `jsonKeys` entry as written (ours). Unknown fields are refused: a typo (`alias:`) would
/// otherwise silently write the file under the key's name.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawJsonKey {
    #[serde(default)]
    key: Scalar,
    #[serde(default)]
    object_alias: Scalar,
    #[serde(default)]
    file_permission: Scalar,
}

/// A YAML scalar read as its text, whatever its YAML type (`filePermission: 0755` stays `0755`).
#[derive(Default)]
pub(super) struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    pub(super) fn text(&self) -> String {
        self.0.trim().to_string()
    }
}

/// One object as the class wrote it, with what it parsed to.
#[derive(Clone, Debug)]
pub struct ClassObject {
    /// The object (fields that failed to parse keep their defaults).
    pub spec: ObjectSpec,
    /// The `objectType` text as written (for messages and suggestions).
    pub type_text: String,
    /// The array item's YAML, as written.
    pub source: String,
}

/// The most versions `objectVersionHistory` may ask for (ours: upstream has no bound; each version is
/// a Key Vault request and a file on the pod's tmpfs).
pub const MAX_VERSION_HISTORY: u32 = 1000;

/// The largest `objects` parameter read, in bytes (ours: upstream reads any size). A thousand objects
/// take about 100 KiB; the chart's admission policy refuses the same at apply time.
pub const MAX_OBJECTS_BYTES: usize = 256 * 1024;

/// The most entries `objects` may list (ours: upstream has no bound; each is a Key Vault request).
pub const MAX_OBJECTS: usize = 1000;

/// Reads the `objects` parameter into `f`: every object, every field. Objects whose YAML cannot be read
/// are left out (and reported).
pub(crate) fn read(yaml: &str, default_mode: u32, f: &mut Findings) -> Result<Vec<ClassObject>, Stop> {
    if yaml.len() > MAX_OBJECTS_BYTES {
        f.error(
            "objects",
            format!("objects is {} bytes, larger than the {MAX_OBJECTS_BYTES} bytes the driver reads", yaml.len()),
            "split the objects over several SecretProviderClasses",
        )?;
        return Ok(Vec::new());
    }
    let arr: ObjectsArray = match serde_saphyr::from_str(yaml) {
        Ok(a) => a,
        Err(e) => {
            f.error(
                "objects",
                format!("failed to yaml unmarshal objects, error: {e}"),
                "write objects as `array:` followed by `- |` blocks, one per object",
            )?;
            return Ok(Vec::new());
        }
    };
    if arr.array.len() > MAX_OBJECTS {
        f.error(
            "objects",
            format!("objects lists {} entries, more than the {MAX_OBJECTS} the driver mounts", arr.array.len()),
            "split the objects over several SecretProviderClasses",
        )?;
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(arr.array.len());
    for (i, item) in arr.array.iter().enumerate() {
        match serde_saphyr::from_str::<RawObject>(item) {
            Ok(raw) => out.push(read_object(&raw, item, i, default_mode, f)?),
            Err(e) => f.error(
                format!("objects[{i}]"),
                format!("unmarshal failed for keyVaultObjects at index {i}, error: {e}"),
                "each item is a YAML map of objectName, objectType, ...",
            )?,
        }
    }
    Ok(out)
}

/// One object, every field, in upstream's order. Messages carry upstream's prefix naming the object.
fn read_object(
    raw: &RawObject,
    source: &str,
    i: usize,
    default_mode: u32,
    f: &mut Findings,
) -> Result<ClassObject, Stop> {
    let type_text = raw.object_type.text();
    let mut spec = ObjectSpec {
        name: raw.object_name.text(),
        kind: ObjectType::Secret,
        version: raw.object_version.text(),
        alias: raw.object_alias.text(),
        format: Format::Pem,
        encoding: Encoding::Utf8,
        history: 0,
        mode: default_mode,
        optional: false,
        policy: VersionPolicy::default(),
        json_keys: Vec::new(),
    };
    let prefix =
        format!("failed to get objectType:{type_text}, objectName:{}, objectVersion:{}: ", spec.name, spec.version);
    let mut problem = |field: &str, message: String, fix: String| {
        f.error(format!("objects[{i}].{field}"), format!("{prefix}{message}"), fix)
    };
    let kind = match type_text.as_str() {
        "secret" => Some(ObjectType::Secret),
        "key" => Some(ObjectType::Key),
        "cert" => Some(ObjectType::Cert),
        _ => {
            let lower = type_text.to_lowercase();
            let guess = ["secret", "key", "cert"]
                .into_iter()
                .find(|t| strsim::levenshtein(&lower, t) <= 2 || lower.starts_with(t));
            let fix =
                guess.map_or_else(|| "use secret, key or cert".into(), |g| format!("did you mean objectType: {g}?"));
            problem("objectType", "Invalid vaultObjectTypes. Should be secret, key, or cert".into(), fix)?;
            None
        }
    };
    spec.kind = kind.unwrap_or(ObjectType::Secret);
    let format_text = raw.object_format.text();
    match format_text.to_ascii_lowercase().as_str() {
        "" | "pem" => {}
        "pfx" => spec.format = Format::Pfx,
        "json" => spec.format = Format::Json,
        _ => problem(
            "objectFormat",
            format!("invalid objectFormat: {format_text}, should be PEM or PFX"),
            "use PEM or PFX (or json with jsonKeys)".into(),
        )?,
    }
    if spec.format == Format::Json && kind.is_some_and(|k| k != ObjectType::Secret) {
        let fix = "JSON documents are secrets: use objectType: secret";
        problem("objectFormat", "objectFormat json only supported for objectType: secret".into(), fix.into())?;
    }
    // Upstream compares the raw text with lower-case `pfx` only, so `PFX` on a cert or key passes
    // (and is ignored: those types have one output format). Kept, so such classes keep mounting.
    if format_text == "pfx" && kind.is_some_and(|k| k != ObjectType::Secret) {
        let fix = "use objectType: secret with objectFormat: pfx to get the PFX";
        problem("objectFormat", "PFX format only supported for objectType: secret".into(), fix.into())?;
    }
    let encoding_text = raw.object_encoding.text();
    match encoding_text.to_ascii_lowercase().as_str() {
        "" | "utf-8" => {}
        "base64" => spec.encoding = Encoding::Base64,
        "hex" => spec.encoding = Encoding::Hex,
        _ => problem(
            "objectEncoding",
            format!("invalid objectEncoding: {encoding_text}, should be hex, base64 or utf-8"),
            "use utf-8, base64 or hex".into(),
        )?,
    }
    if !encoding_text.is_empty() && kind.is_some_and(|k| k != ObjectType::Secret) {
        problem("objectEncoding", "objectEncoding only supported for objectType: secret".into(), "remove it".into())?;
    }
    let name = spec.file_name().to_string();
    let name_field = if spec.alias.is_empty() { "objectName" } else { "objectAlias" };
    let relative = "use a relative file name without '..'".to_string();
    if name.is_empty() {
        problem(name_field, "file name must not be empty".into(), "set objectName".into())?;
    } else if name.starts_with('/') {
        problem(name_field, "file name must be a relative path".into(), relative)?;
    } else if name.contains("..") {
        problem(name_field, "file name must not contain '..'".into(), relative)?;
    }
    let history = raw.object_version_history.text();
    if !history.is_empty() {
        match history.parse::<i32>() {
            Ok(h) if h > MAX_VERSION_HISTORY as i32 => problem(
                "objectVersionHistory",
                format!("invalid objectVersionHistory: {history}, must be at most {MAX_VERSION_HISTORY}"),
                format!("ask for {MAX_VERSION_HISTORY} versions or fewer"),
            )?,
            Ok(h) => spec.history = h.max(0) as u32,
            Err(_) => problem(
                "objectVersionHistory",
                format!("invalid objectVersionHistory: {history}, should be an integer"),
                "use a number of versions, e.g. 3".into(),
            )?,
        }
    }
    let optional = raw.optional.text();
    match super::parse_bool(&optional) {
        Ok(b) => spec.optional = b,
        Err(_) => problem(
            "optional",
            format!("invalid optional: {optional}, should be true or false"),
            "use optional: \"true\"".into(),
        )?,
    }
    read_policy(raw, &mut spec, &mut problem)?;
    let perm = raw.file_permission.text();
    if !perm.is_empty() {
        match parse_mode(&perm) {
            Ok(m) => spec.mode = m,
            Err(e) => problem("filePermission", e, "use an octal mode such as \"0644\"".into())?,
        }
    }
    spec.json_keys = read_json_keys(raw, &spec, &mut problem)?;
    Ok(ClassObject { spec, type_text, source: source.to_string() })
}

/// `jsonKeys` (ours), with `objectFormat: json` and only with it.
fn read_json_keys(
    raw: &RawObject,
    spec: &ObjectSpec,
    problem: &mut impl FnMut(&str, String, String) -> Result<(), Stop>,
) -> Result<Vec<JsonKey>, Stop> {
    use crate::json_keys::MAX_KEYS;
    let entries = raw.json_keys.as_deref().unwrap_or_default();
    if spec.format != Format::Json {
        if raw.json_keys.is_some() {
            problem("jsonKeys", "jsonKeys needs objectFormat: json".into(), "add objectFormat: json".into())?;
        }
        return Ok(Vec::new());
    }
    if entries.is_empty() {
        let fix = "list the members to write, e.g. jsonKeys: [{key: username}]";
        problem("jsonKeys", "objectFormat json needs jsonKeys: the members to write as files".into(), fix.into())?;
    }
    if entries.len() > MAX_KEYS {
        let message = format!("jsonKeys lists {} keys, more than the {MAX_KEYS} one object may", entries.len());
        problem("jsonKeys", message, "split the keys over several objects".into())?;
        return Ok(Vec::new());
    }
    if spec.history > 1 {
        let fix = "remove objectVersionHistory, or objectFormat json";
        problem("jsonKeys", "jsonKeys cannot be combined with objectVersionHistory".into(), fix.into())?;
    }
    let mut keys = Vec::with_capacity(entries.len());
    for (j, entry) in entries.iter().enumerate() {
        let key = JsonKey { key: entry.key.text(), alias: entry.object_alias.text(), mode: spec.mode };
        let field = format!("jsonKeys[{j}]");
        if key.key.is_empty() || key.key.len() > 256 || key.key.split('.').count() > crate::json_keys::MAX_DEPTH {
            let message = format!("jsonKeys[{j}].key must be 1 to 256 characters and at most 32 dotted parts");
            problem(&field, message, "name a member, e.g. key: username or key: db.host".into())?;
            continue;
        }
        let name = key.file_name();
        let relative = "use a relative file name without '..'".to_string();
        if name.starts_with('/') {
            problem(&field, format!("jsonKeys {:?}: file name must be a relative path", key.key), relative)?;
        } else if name.contains("..") {
            problem(&field, format!("jsonKeys {:?}: file name must not contain '..'", key.key), relative)?;
        }
        let perm = entry.file_permission.text();
        let mode = if perm.is_empty() { Ok(spec.mode) } else { parse_mode(&perm) };
        match mode {
            Ok(mode) => keys.push(JsonKey { mode, ..key }),
            Err(e) => problem(&format!("{field}.filePermission"), e, "use an octal mode such as \"0400\"".into())?,
        }
    }
    Ok(keys)
}

/// `objectVersionPolicy` and `objectNotAfter` (ours): which version an object without `objectVersion`
/// serves. Both choose a version from the object's version list, so neither goes with `objectVersion`.
fn read_policy(
    raw: &RawObject,
    spec: &mut ObjectSpec,
    problem: &mut impl FnMut(&str, String, String) -> Result<(), Stop>,
) -> Result<(), Stop> {
    let policy = raw.object_version_policy.text();
    match policy.to_ascii_lowercase().as_str() {
        "" | "latest" => {}
        "latestenabled" => spec.policy.latest_enabled = true,
        _ => problem(
            "objectVersionPolicy",
            format!("invalid objectVersionPolicy: {}, should be latest or latestEnabled", shown(&policy)),
            "use latestEnabled to skip disabled, not-yet-valid and expired versions".into(),
        )?,
    }
    let not_after = raw.object_not_after.text();
    if !not_after.is_empty() {
        match not_after.parse::<jiff::Timestamp>() {
            Ok(t) => spec.policy.not_after = Some(t.as_second()),
            Err(_) => problem(
                "objectNotAfter",
                format!("invalid objectNotAfter: {}, should be an RFC 3339 time", shown(&not_after)),
                "write a time such as 2026-11-30T18:00:00Z".into(),
            )?,
        }
    }
    if spec.policy.is_set() && !spec.version.is_empty() && !spec.version.eq_ignore_ascii_case("latest") {
        let field = if spec.policy.not_after.is_some() { "objectNotAfter" } else { "objectVersionPolicy" };
        problem(
            field,
            format!("{field} chooses a version, so it cannot be combined with objectVersion {}", spec.version),
            "remove objectVersion (to follow the policy) or the policy (to pin the version)".into(),
        )?;
    }
    Ok(())
}

/// A value as echoed in a message: at most 64 characters, quoted.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(64).collect();
    if cut.len() < value.len() { format!("{cut:?}…") } else { format!("{cut:?}") }
}
