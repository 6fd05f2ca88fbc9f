//! `objectSelector` expanded (ours): the vault's secrets listed, filtered by the class's selector and
//! turned into objects, at every mount and rotation round, so a new matching secret appears as a file
//! and a removed (or disabled, or untagged) one disappears at the next round.
//!
//! The list goes through the shared flights like every GET: one listing per (vault, identity) and
//! rotation cycle on a node, whichever selectors and volumes ask (filtering is client-side; Key Vault's
//! list has no server-side filter). It reads at most [`MAX_LIST_PAGES`] pages; a bigger vault, or more
//! matches than the selector's `maxObjects`, fails with the numbers rather than mounting a silent part.

use std::collections::BTreeMap;

use crate::Provider;
use crate::error::{Error, ErrorKind, Result};
use crate::params::selector::Selector;
use crate::params::{Encoding, Format, MountParams, ObjectSpec, ObjectType, VersionPolicy, output_paths};
use crate::vault::{self, API_VERSION, Listing, VaultCall};

/// Pages of 25 read at most: 1,000 secrets.
pub const MAX_LIST_PAGES: usize = 40;

/// The secrets `selector` chooses in the class's vault, as objects (sorted by name).
pub(crate) async fn expand(
    provider: &Provider,
    params: &MountParams,
    selector: &Selector,
    req: &crate::MountRequest,
    deadline: std::time::Instant,
) -> Result<Vec<ObjectSpec>> {
    let base = vault::vault_base(&params.vault_name, params, provider.config.network.vault_port);
    let call = VaultCall {
        provider,
        params,
        vault: params.vault_name.clone(),
        base: base.clone(),
        deadline,
        priority: req.priority,
        cycle: req.cycle,
        fresh: req.fresh,
    };
    let vault = &params.vault_name;
    let listed = call.pages(format!("{base}/secrets?api-version={API_VERSION}&maxresults=25"), MAX_LIST_PAGES).await;
    let items = match listed {
        Ok(Listing::Complete(items)) => items,
        Ok(Listing::Truncated(items)) => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "objectSelector: vault {vault} lists more than {} secrets ({MAX_LIST_PAGES} pages); list the objects instead",
                    items.len()
                ),
            ));
        }
        Err(e) if e.kind == ErrorKind::Forbidden => {
            return Err(e.context(format!(
                "objectSelector: listing the secrets of vault {vault} needs the list permission on secrets (an access policy with List, or the Key Vault Secrets User role): "
            )));
        }
        Err(e) => return Err(e.context(format!("objectSelector: listing the secrets of vault {vault}: "))),
    };
    let mut names = Vec::new();
    for item in items {
        // A certificate's backing secret is the certificate's; a disabled secret cannot be read.
        if item.managed == Some(true) || item.attributes.enabled == Some(false) {
            continue;
        }
        let Some(id) = item.id.as_deref() else { continue };
        let name = id.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        if name.is_empty() || name.len() > 127 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "objectSelector: vault {vault} listed a secret id whose name is not a Key Vault name; refusing the listing"
                ),
            ));
        }
        if selector.admits(name, item.tags.as_ref().unwrap_or(&BTreeMap::new())) {
            names.push(name.to_string());
        }
    }
    names.sort();
    names.dedup();
    if names.len() > selector.max {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "objectSelector ({}) matches {} secrets of vault {vault}, more than maxObjects {}; raise maxObjects (at most {}) or narrow the selection",
                selector.describe(),
                names.len(),
                selector.max,
                crate::params::selector::MAX_SELECTED
            ),
        ));
    }
    Ok(names
        .into_iter()
        .map(|name| ObjectSpec {
            name,
            kind: ObjectType::Secret,
            version: String::new(),
            alias: String::new(),
            format: Format::Pem,
            encoding: Encoding::Utf8,
            history: 0,
            mode: selector.mode,
            // Deleted between the listing and the read: left out, not a failed mount.
            optional: true,
            policy: VersionPolicy::default(),
            json_keys: Vec::new(),
        })
        .collect())
}

/// The class's own objects, then the selected ones. A selected secret the class also lists by name
/// (writing the same file) is the class's; one whose file another object writes is refused, naming both.
pub(crate) fn merge(explicit: &[ObjectSpec], selected: Vec<ObjectSpec>, split: bool) -> Result<Vec<ObjectSpec>> {
    let mut taken: BTreeMap<String, &ObjectSpec> = BTreeMap::new();
    for o in explicit {
        for p in output_paths(o, split) {
            taken.insert(p, o);
        }
    }
    let mut out = explicit.to_vec();
    for s in selected {
        if explicit.iter().any(|o| o.kind == ObjectType::Secret && o.name == s.name && o.file_name() == s.name) {
            continue;
        }
        if let Some(other) = output_paths(&s, split).iter().find_map(|p| taken.get(p).map(|o| (p, o))) {
            return Err(Error::invalid(format!(
                "objectSelector selects secret {}, whose file {:?} is also written by objects entry {} ({}); give that object another objectAlias",
                s.name,
                other.0,
                other.1.name,
                other.1.id()
            )));
        }
        out.push(s);
    }
    Ok(out)
}
