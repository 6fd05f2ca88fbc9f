//! Fetching one object (or its version history) and turning it into files; and the flights that let
//! identical fetches share one request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretSlice};

use crate::convert;
use crate::error::{Error, ErrorKind, Result};
use crate::identity::IdentityKey;
use crate::model::{CertificateBundle, KeyBundle, SecretBundle};
use crate::params::{Encoding, Format, ObjectSpec, ObjectType};
use crate::vault::{API_VERSION, VaultCall, parse};
use crate::{File, Served};

struct Flight {
    /// The response body (secret bytes, zeroed when the last sharer drops it).
    cell: tokio::sync::OnceCell<Result<Arc<SecretSlice<u8>>>>,
    done: Mutex<Option<Instant>>,
    cycle: Option<u64>,
}

/// How long a finished fetch of a rotation cycle stays shareable by the rest of that cycle.
const CYCLE_LIFETIME: Duration = Duration::from_secs(300);

/// In-flight and recently finished fetches, by (URL, identity): a pod only ever shares a result with
/// fetches made with its own identity, so it never receives an object its identity could not read.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<(String, IdentityKey), Arc<Flight>>>,
}

/// Whether a flight may still be shared with a fetch of `cycle`. A refresh-now fetch (`only_cycle`)
/// shares its own cycle's flights only: anything else may have started before the request.
fn fresh(f: &Flight, cycle: Option<u64>, only_cycle: bool, now: Instant, window: Duration) -> bool {
    let same_cycle = cycle.is_some() && f.cycle == cycle;
    if only_cycle && !same_cycle {
        return false;
    }
    f.done.lock().unwrap_or_else(|e| e.into_inner()).is_none_or(|d| {
        let age = now.duration_since(d);
        age <= window || (same_cycle && age <= CYCLE_LIFETIME)
    })
}

impl Flights {
    /// Drops the results nobody may share any more, so fetched values do not wait in memory for the
    /// next fetch to evict them.
    pub fn evict_stale(&self, window: Duration) {
        let now = Instant::now();
        self.map.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, f| fresh(f, f.cycle, false, now, window));
    }

    /// Fetches held now.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Evicts every `window` (at least every second) until the flights are dropped.
    pub fn start_janitor(self: &Arc<Self>, window: Duration) {
        let weak = Arc::downgrade(self);
        let period = window.clamp(Duration::from_secs(1), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(flights) = weak.upgrade() else { return };
                flights.evict_stale(window);
            }
        });
    }

    /// The body at `url`, and whether it came from a fetch another caller made (a cache hit).
    pub(crate) async fn get(&self, call: &VaultCall<'_>, url: &str) -> (Result<Arc<SecretSlice<u8>>>, bool) {
        let window = call.provider.config.dedup_window;
        let key = (url.to_string(), IdentityKey::of(&call.params.tenant_id, &call.params.identity));
        let (flight, hit) = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Stale entries are evicted by the janitor, not by scanning the map on every fetch; a
            // stale entry for this key is simply replaced.
            match map.get(&key).filter(|f| fresh(f, call.cycle, call.fresh, now, window)) {
                Some(f) => (f.clone(), true),
                None => {
                    let f = Arc::new(Flight {
                        cell: tokio::sync::OnceCell::new(),
                        done: Mutex::new(None),
                        cycle: call.cycle,
                    });
                    map.insert(key.clone(), f.clone());
                    (f, false)
                }
            }
        };
        let counter = if hit { &call.provider.stats.dedup_hits } else { &call.provider.stats.dedup_misses };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = flight.cell.get_or_init(|| async { call.get(url).await.map(Arc::new) }).await.clone();
        {
            let mut done = flight.done.lock().unwrap_or_else(|e| e.into_inner());
            if done.is_none() {
                *done = Some(Instant::now());
            }
        }
        if result.is_err() || (window == Duration::ZERO && call.cycle.is_none()) {
            // Failures are not shared beyond the callers already waiting on them.
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                map.remove(&key);
            }
        }
        (result, hit)
    }
}

fn version_of(id: &str) -> String {
    id.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_string()
}

fn nil(what: &str) -> Error {
    Error::new(ErrorKind::Internal, format!("{what} is nil"))
}

/// Files and versions of one object of the class. Errors carry upstream's `failed to get objectType:…`
/// prefix. A missing optional object is no file and an empty version.
pub async fn object(call: &VaultCall<'_>, o: &ObjectSpec) -> Result<(Vec<File>, Vec<Served>)> {
    let started = Instant::now();
    let result = if o.history > 1 || o.policy.is_set() {
        listed(call, o).await
    } else {
        single(call, o, &o.version, o.file_name(), o.id()).await
    };
    if let Some(obs) = &call.provider.observer {
        obs.object_fetched(o.kind.as_str(), &o.name, started.elapsed(), result.as_ref().err().map(|e| e.kind));
    }
    match result {
        // An optional object that does not exist: no file, and an empty version so that the pod status
        // (and the driver's event) say what is missing; a later fetch that finds it writes the file.
        Err(e) if o.optional && e.kind == ErrorKind::NotFound && e.origin == crate::Origin::KeyVault => {
            tracing::warn!(object = %o.name, kind = o.kind.as_str(), "optional object not found; mounting without it");
            Ok((Vec::new(), vec![Served::new(o.id(), String::new(), call, false)]))
        }
        r => r.map_err(|e| e.context(format!("{}: ", o.describe()))),
    }
}

async fn single(
    call: &VaultCall<'_>,
    o: &ObjectSpec,
    version: &str,
    path: &str,
    id: String,
) -> Result<(Vec<File>, Vec<Served>)> {
    let url = format!("{}/{}/{}/{version}?api-version={API_VERSION}", call.base, o.kind.collection(), o.name);
    let (body, hit) = call.provider.flights.get(call, &url).await;
    let body = body?;
    let served = |version: String| vec![Served::new(id.clone(), version, call, hit)];
    let config = &call.provider.config;
    let conv = |e: String| Error::new(ErrorKind::Internal, e);
    let file = |path: String, contents: Vec<u8>| File { path, mode: o.mode, contents: SecretSlice::from(contents) };
    match o.kind {
        ObjectType::Secret => {
            let doc: SecretBundle = parse(&url, &body)?;
            doc.value.as_ref().ok_or_else(|| nil("secret value"))?;
            let version = version_of(doc.id.as_deref().ok_or_else(|| nil("secret id"))?);
            let cert_backed = doc.kid.as_deref().is_some_and(|k| !k.is_empty());
            if o.format == Format::Json {
                // The value is not what the class says it is: retrying will not help until one changes.
                let mismatch = |e: String| Error::new(ErrorKind::InvalidInput, e);
                if cert_backed {
                    return Err(mismatch(
                        "objectFormat json: the secret backs a certificate, not a JSON document".into(),
                    ));
                }
                let value = doc.value.as_ref().map(|v| v.expose_secret().as_bytes().to_vec()).unwrap_or_default();
                let value = convert::decode(value, o.encoding).map_err(conv)?;
                let files = crate::json_keys::extract(&value, &o.json_keys)
                    .map_err(mismatch)?
                    .into_iter()
                    .map(|e| File { path: e.file, mode: e.mode, contents: SecretSlice::from(e.value) })
                    .collect();
                return Ok((files, served(version)));
            }
            let content = if cert_backed {
                // PFX decoding runs PBKDF2 up to a million rounds per bag, as the vault's (a tenant's)
                // file asks: never on the runtime's worker threads, which serve every tenant's mounts.
                let (format, chain) = (o.format, config.construct_pem_chain);
                tokio::task::spawn_blocking(move || {
                    let value = doc.value.as_ref().map(|v| v.expose_secret()).unwrap_or_default();
                    let ct = doc.content_type.as_deref().unwrap_or("");
                    convert::cert_secret(value, ct, format, chain)
                })
                .await
                .map_err(|e| conv(format!("converting the certificate failed: {e}")))?
                .map_err(conv)?
                .into_bytes()
            } else {
                doc.value.as_ref().map(|v| v.expose_secret().as_bytes().to_vec()).unwrap_or_default()
            };
            let content = convert::decode(content, o.encoding).map_err(conv)?;
            let mut files = Vec::new();
            if cert_backed && config.write_cert_and_key_in_separate_files {
                let text = if o.encoding == Encoding::Utf8 {
                    String::from_utf8_lossy(&content).into_owned()
                } else {
                    String::new()
                };
                let (crt, key) = convert::split_cert_and_key(&text);
                files.push(file(format!("{path}.crt"), crt.into_bytes()));
                files.push(file(format!("{path}.key"), key.into_bytes()));
            }
            files.push(file(path.to_string(), content));
            Ok((files, served(version)))
        }
        ObjectType::Key => {
            let doc: KeyBundle = parse(&url, &body)?;
            let key = doc.key.as_ref().ok_or_else(|| nil("key value"))?;
            let version = version_of(key.kid.as_deref().ok_or_else(|| nil("key id"))?);
            let pem = convert::jwk_to_pem(key).map_err(conv)?;
            Ok((vec![file(path.to_string(), pem.into_bytes())], served(version)))
        }
        ObjectType::Cert => {
            let doc: CertificateBundle = parse(&url, &body)?;
            let cer = doc.cer.as_deref().ok_or_else(|| nil("certificate value"))?;
            let version = version_of(doc.id.as_deref().ok_or_else(|| nil("certificate id"))?);
            let pem = convert::cer_to_pem(cer).map_err(conv)?;
            Ok((vec![file(path.to_string(), pem.into_bytes())], served(version)))
        }
    }
}

/// Versions chosen from the object's version list: `objectVersionHistory: N` writes exactly N files
/// `<name>/0` (newest, or `objectVersion`) to `<name>/N-1`; a version policy (ours) filters the list
/// first, and without a history writes the one chosen version as the plain file. (Reading upstream's
/// loop suggests it emits N+1 when more versions exist; we write N, which is what the parameter's
/// documentation promises.)
async fn listed(call: &VaultCall<'_>, o: &ObjectSpec) -> Result<(Vec<File>, Vec<Served>)> {
    let items = call.list_versions(o.kind.collection(), &o.name).await?;
    let now = crate::params::unix_now();
    let mut versions: Vec<(i64, usize, String)> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| o.policy.admits(&i.attributes, now))
        .filter_map(|(n, i)| {
            let id = if o.kind == ObjectType::Key { i.kid.as_deref() } else { i.id.as_deref() };
            Some((i.attributes.created.unwrap_or(0), n, version_of(id?)))
        })
        .collect();
    // Newest first; versions created in the same second keep the vault's listing order, newest last.
    versions.sort_by_key(|v| std::cmp::Reverse((v.0, v.1)));
    let versions: Vec<String> = versions.into_iter().map(|v| v.2).collect();
    if o.history <= 1 {
        let Some(v) = versions.first() else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no version of the object is {} among its {} versions", o.policy.describe(), items.len()),
            )
            .from(crate::Origin::KeyVault));
        };
        return single(call, o, v, o.file_name(), o.id()).await;
    }
    let start = if o.version.is_empty() || o.version.eq_ignore_ascii_case("latest") {
        0
    } else if let Some(i) = versions.iter().position(|v| v.eq_ignore_ascii_case(&o.version)) {
        i
    } else {
        // Upstream writes no file for the object and the mount succeeds; so do we, but say so.
        tracing::warn!(
            object = %o.name,
            version = %o.version,
            "objectVersion is not an enabled version of the object: objectVersionHistory writes no file for it"
        );
        versions.len()
    };
    let selected: Vec<String> = versions.into_iter().skip(start).take(o.history as usize).collect();
    let fetches = selected.iter().enumerate().map(|(i, v)| {
        let path = format!("{}/{i}", o.file_name());
        let id = format!("{}/{i}", o.id());
        async move { single(call, o, v, &path, id).await }
    });
    let mut files = Vec::new();
    let mut versions = Vec::new();
    for r in futures_util::future::join_all(fetches).await {
        let (f, v) = r?;
        files.extend(f);
        versions.extend(v);
    }
    Ok((files, versions))
}
