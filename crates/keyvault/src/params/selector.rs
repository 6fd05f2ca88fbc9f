//! The `objectSelector` parameter (ours; Azure provider #1405, #477, #357): a class mounts the vault's
//! secrets chosen by name prefix, by tag, or all of them, instead of (or besides) listing each one.
//! The selection is expanded at every mount and rotation round (`crate::select`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::objects::Scalar;
use super::parse_mode;
use super::read::{Findings, Stop};

/// The most secrets one selector may mount (`maxObjects` at most this; the default is
/// [`DEFAULT_MAX_SELECTED`]).
pub const MAX_SELECTED: usize = 1000;
/// `maxObjects` when the class does not say.
pub const DEFAULT_MAX_SELECTED: usize = 100;
/// The most tags a selector may require (Key Vault allows 15 per object).
pub const MAX_TAGS: usize = 15;

/// Which of the vault's secrets a class mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// `namePrefix`: names starting with this ("" = any).
    pub name_prefix: String,
    /// `tags`: each `key` (present) or `key=value` (equal); all must hold.
    pub tags: Vec<(String, Option<String>)>,
    /// `all: true`: every secret.
    pub all: bool,
    /// `maxObjects`: more matches than this fail the mount (nothing is silently left out).
    pub max: usize,
    /// `filePermission` of the selected secrets' files.
    pub mode: u32,
}

impl Selector {
    /// Whether a secret named `name` with `tags` is selected.
    pub fn admits(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        name.starts_with(&self.name_prefix)
            && self.tags.iter().all(|(k, v)| tags.get(k).is_some_and(|have| v.as_ref().is_none_or(|v| v == have)))
    }

    /// The selector as a pod status or message shows it.
    pub fn describe(&self) -> String {
        if self.all {
            return "all secrets".into();
        }
        let mut parts = Vec::new();
        if !self.name_prefix.is_empty() {
            parts.push(format!("namePrefix {:?}", self.name_prefix));
        }
        for (k, v) in &self.tags {
            parts.push(match v {
                Some(v) => format!("tag {k}={v}"),
                None => format!("tag {k}"),
            });
        }
        parts.join(", ")
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    name_prefix: Scalar,
    #[serde(default)]
    tags: Vec<Scalar>,
    #[serde(default)]
    all: Scalar,
    #[serde(default)]
    max_objects: Scalar,
    #[serde(default)]
    file_permission: Scalar,
}

/// Key Vault's object names: letters, digits and dashes, at most 127.
fn vault_name_chars(s: &str) -> bool {
    s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Reads `objectSelector` (`None` when absent). Problems go to `f` under `objectSelector`.
pub(crate) fn read(yaml: &str, default_mode: u32, f: &mut Findings) -> Result<Option<Selector>, Stop> {
    const FIELD: &str = "objectSelector";
    if yaml.is_empty() {
        return Ok(None);
    }
    if yaml.len() > 16 * 1024 {
        f.error(FIELD, "objectSelector is larger than 16 KiB", "select by a name prefix or a few tags")?;
        return Ok(None);
    }
    let raw: RawSelector = match serde_saphyr::from_str(yaml) {
        Ok(r) => r,
        Err(e) => {
            let fix = "a map of namePrefix, tags, all, maxObjects and filePermission";
            f.error(FIELD, format!("failed to read objectSelector, error: {e}"), fix)?;
            return Ok(None);
        }
    };
    let mut selector = Selector {
        name_prefix: raw.name_prefix.text(),
        tags: Vec::new(),
        all: false,
        max: DEFAULT_MAX_SELECTED,
        mode: default_mode,
    };
    match super::parse_bool(&raw.all.text()) {
        Ok(all) => selector.all = all,
        Err(e) => f.error(format!("{FIELD}.all"), format!("objectSelector.all: {e}"), "use all: true")?,
    }
    if !vault_name_chars(&selector.name_prefix) {
        let message = "objectSelector.namePrefix must be letters, digits and dashes (Key Vault's names), at most 127";
        f.error(format!("{FIELD}.namePrefix"), message, "e.g. namePrefix: payments-")?;
    }
    if raw.tags.len() > MAX_TAGS {
        let message = format!("objectSelector lists {} tags, more than {MAX_TAGS}", raw.tags.len());
        f.error(format!("{FIELD}.tags"), message, "Key Vault allows 15 tags per secret")?;
    }
    for (i, tag) in raw.tags.iter().take(MAX_TAGS).enumerate() {
        let text = tag.text();
        let (k, v) = match text.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
            None => (text.clone(), None),
        };
        if k.is_empty() || k.len() > 512 || v.as_ref().is_some_and(|v| v.len() > 512) {
            let message = format!("objectSelector.tags[{i}] must be key or key=value, each at most 512 characters");
            f.error(format!("{FIELD}.tags[{i}]"), message, "e.g. tags: [team=payments]")?;
            continue;
        }
        selector.tags.push((k, v));
    }
    let max = raw.max_objects.text();
    if !max.is_empty() {
        match max.parse::<usize>() {
            Ok(n) if (1..=MAX_SELECTED).contains(&n) => selector.max = n,
            _ => {
                let message = format!("objectSelector.maxObjects must be a number from 1 to {MAX_SELECTED}");
                f.error(format!("{FIELD}.maxObjects"), message, "e.g. maxObjects: 50")?;
            }
        }
    }
    let perm = raw.file_permission.text();
    if !perm.is_empty() {
        match parse_mode(&perm) {
            Ok(m) => selector.mode = m,
            Err(e) => f.error(format!("{FIELD}.filePermission"), e, "use an octal mode such as \"0440\"")?,
        }
    }
    let criteria = !selector.name_prefix.is_empty() || !raw.tags.is_empty();
    if selector.all && criteria {
        let fix = "remove namePrefix and tags, or all";
        f.error(FIELD, "objectSelector: all: true selects every secret, with no namePrefix or tags", fix)?;
    } else if !selector.all && !criteria {
        let fix = "set namePrefix, tags, or all: true";
        f.error(FIELD, "objectSelector selects nothing: set namePrefix, tags or all: true", fix)?;
    }
    Ok(Some(selector))
}
