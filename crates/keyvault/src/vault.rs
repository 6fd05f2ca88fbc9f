//! Key Vault REST calls: challenge discovery (once per vault), authenticated GETs with one retry on
//! a rejected token, version listing with `nextLink`, and Azure errors turned into typed errors.

use std::time::Instant;

use reqwest::{Method, StatusCode};
use secrecy::SecretSlice;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Origin, Result};
use crate::identity::TokenSource;
use crate::params::{ExposeSecret, MountParams};
use crate::transport::Reply;

/// The most pages of a version list read (25 versions each): an object with an endless history must
/// not spend a vault's request budget on every mount.
pub const MAX_VERSION_PAGES: usize = 200;

/// API version sent on every call (the upstream provider's).
pub const API_VERSION: &str = "7.4";

/// Base URL of a vault: `https://<vault>.<suffix>[:port]`.
pub fn vault_base(vault: &str, params: &MountParams, port: Option<u16>) -> String {
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("https://{vault}.{}{port}", params.cloud.keyvault_dns_suffix)
}

/// Turns a non-success Key Vault reply into an error naming status, code and message.
pub fn kv_error(url: &str, r: &Reply) -> Error {
    let body: crate::model::ErrorBody = serde_json::from_slice(&r.body).unwrap_or_default();
    let (code, msg) = (&body.error.code, &body.error.message);
    let inner = body.error.innererror.as_ref().map(|i| format!(" ({})", i.code)).unwrap_or_default();
    let request_id = r.headers.get("x-ms-request-id").and_then(|h| h.to_str().ok()).unwrap_or("");
    let kind = match r.status.as_u16() {
        400 => ErrorKind::InvalidInput,
        401 | 403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        429 => ErrorKind::Throttled,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    let status = r.status;
    Error::new(kind, format!("GET {url}: {status} {code}{inner}: {msg} (x-ms-request-id: {request_id})"))
        .from(Origin::KeyVault)
}

/// Parses a Key Vault document into its typed model.
pub fn parse<T: DeserializeOwned>(url: &str, body: &SecretSlice<u8>) -> Result<T> {
    use secrecy::ExposeSecret;
    // Only the category and position of a parse error: serde_json's own message can quote content.
    serde_json::from_slice(body.expose_secret()).map_err(|e| {
        let what = format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column());
        Error::new(ErrorKind::Internal, format!("GET {url}: malformed response: {what}")).from(Origin::KeyVault)
    })
}

/// Parses `WWW-Authenticate: Bearer authorization="…", resource="…"` (or `scope="…"`) into a scope,
/// checking that the resource's domain matches the vault's (a rogue host must not get a token for
/// another resource).
pub fn challenge_scope(header: &str, vault_host: &str) -> Result<String> {
    let mut resource = None;
    let mut scope = None;
    for part in header.trim_start_matches("Bearer").split(',') {
        if let Some((k, v)) = part.trim().split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "resource" => resource = Some(v),
                "scope" => scope = Some(v),
                _ => {}
            }
        }
    }
    let scope = match (scope, resource) {
        (Some(s), _) => s,
        (None, Some(r)) => format!("{}/.default", r.trim_end_matches('/')),
        (None, None) => {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("the Key Vault challenge has no resource or scope: {header}"),
            ));
        }
    };
    let resource_host = scope.trim_start_matches("https://").split('/').next().unwrap_or("").to_ascii_lowercase();
    let host = vault_host.split(':').next().unwrap_or(vault_host).to_ascii_lowercase();
    if resource_host.is_empty() || !host.ends_with(&format!(".{resource_host}")) {
        return Err(Error::new(
            ErrorKind::Forbidden,
            format!("challenge resource {resource_host:?} doesn't match the requested domain {host:?}"),
        )
        .from(Origin::KeyVault));
    }
    Ok(scope)
}

/// A caller of one vault for one mount.
pub struct VaultCall<'a> {
    /// Provider.
    pub provider: &'a crate::Provider,
    /// Parameters.
    pub params: &'a MountParams,
    /// Vault name (the class's `keyvaultName`, or one of its failover vaults).
    pub vault: String,
    /// Vault base URL.
    pub base: String,
    /// Deadline.
    pub deadline: Instant,
    /// Mount or background refresh.
    pub priority: crate::transport::Priority,
    /// Rotation cycle, if any.
    pub cycle: Option<u64>,
    /// A refresh-now request (see [`crate::MountRequest::fresh`]).
    pub fresh: bool,
}

impl VaultCall<'_> {
    fn source(&self) -> TokenSource<'_> {
        TokenSource {
            transport: &self.provider.transport,
            net: &self.provider.config.network,
            authority_host: &self.params.cloud.authority_host,
            keyvault_resource: &self.params.cloud.keyvault_resource,
            token_proxy: &self.provider.token_proxy,
            deadline: self.deadline,
        }
    }

    /// The vault's token scope, from its challenge: discovered once per vault, concurrent callers wait
    /// for the one challenge in flight; a failed discovery is retried by the next caller.
    async fn scope(&self, url: &str) -> Result<String> {
        let cell = {
            let mut scopes = self.provider.scopes.lock().unwrap_or_else(|e| e.into_inner());
            // Vault names come from classes: past the cap the discovered scopes start over (each vault
            // then pays one extra challenge), so no tenant can grow this map.
            if !scopes.contains_key(&self.base) && scopes.len() >= crate::MAX_VAULT_SCOPES {
                scopes.retain(|_, c| std::sync::Arc::strong_count(c) > 1);
            }
            scopes.entry(self.base.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let r = self
                .provider
                .transport
                .send(Some((&self.base, self.priority)), Method::GET, url, &[], None, self.deadline)
                .await?;
            if r.status != StatusCode::UNAUTHORIZED {
                return Err(kv_error(url, &r));
            }
            let header = r.headers.get("www-authenticate").and_then(|h| h.to_str().ok()).unwrap_or("");
            challenge_scope(header, self.base.trim_start_matches("https://"))
        })
        .await
        .cloned()
    }

    /// GET a document with auth; one retry with a fresh token if Key Vault rejects the cached one.
    /// The body is returned as secret bytes: it may hold a value, and is zeroed when dropped.
    pub async fn get(&self, url: &str) -> Result<SecretSlice<u8>> {
        let scope = self.scope(url).await?;
        let p = self.params;
        let src = self.source();
        for attempt in 0..2 {
            let token = self.provider.tokens.get(&src, &p.tenant_id, &p.identity, &scope, &self.provider.stats).await?;
            let auth =
                [("Authorization", format!("Bearer {}", token.expose_secret())), ("Accept", "application/json".into())];
            let r = self
                .provider
                .transport
                .send(Some((&self.base, self.priority)), Method::GET, url, &auth, None, self.deadline)
                .await?;
            if r.status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.provider.tokens.invalidate(&p.tenant_id, &p.identity, &scope);
                continue;
            }
            if !r.status.is_success() {
                return Err(kv_error(url, &r));
            }
            return Ok(SecretSlice::from(r.body));
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Every version item of an object, following `nextLink` (only ever to the same vault), at most
    /// [`MAX_VERSION_PAGES`] pages.
    pub async fn list_versions(&self, collection: &str, name: &str) -> Result<Vec<crate::model::VersionItem>> {
        let url = format!("{}/{collection}/{name}/versions?api-version={API_VERSION}&maxresults=25", self.base);
        match self.pages(url, MAX_VERSION_PAGES).await? {
            Listing::Complete(items) => Ok(items),
            Listing::Truncated(items) => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the object has more than {} versions (read {MAX_VERSION_PAGES} pages); a version policy or objectVersionHistory cannot choose among them",
                    items.len()
                ),
            )
            .from(Origin::KeyVault)),
        }
    }

    /// Up to `max_pages` pages of a Key Vault listing from `url`, following `nextLink` only within
    /// this vault. Each page goes through the shared flights: a rotation cycle lists once per
    /// (URL, identity) on a node, like it GETs each object once.
    pub async fn pages(&self, mut url: String, max_pages: usize) -> Result<Listing> {
        let mut items = Vec::new();
        for _ in 0..max_pages {
            let page: crate::model::VersionPage = parse(&url, &*self.provider.flights.get(self, &url).await.0?)?;
            items.extend(page.value);
            match page.next_link.as_deref().filter(|l| !l.is_empty()) {
                None => return Ok(Listing::Complete(items)),
                Some(next) if next.starts_with(&format!("{}/", self.base)) => url = next.to_string(),
                Some(next) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("nextLink {next:?} leaves the vault {}; refusing to follow it", self.base),
                    ));
                }
            }
        }
        Ok(Listing::Truncated(items))
    }
}

/// What [`VaultCall::pages`] read.
pub enum Listing {
    /// Every item.
    Complete(Vec<crate::model::VersionItem>),
    /// The items of the pages read; more pages remain.
    Truncated(Vec<crate::model::VersionItem>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_scope_from_resource_or_scope_with_domain_check() {
        let h = r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net""#;
        assert_eq!(challenge_scope(h, "kv1.vault.azure.net:8443").unwrap(), "https://vault.azure.net/.default");
        let h =
            r#"Bearer authorization="https://login.microsoftonline.com/t", scope="https://vault.azure.net/.default""#;
        assert_eq!(challenge_scope(h, "kv1.vault.azure.net").unwrap(), "https://vault.azure.net/.default");
        let evil =
            r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://management.azure.com""#;
        assert_eq!(challenge_scope(evil, "kv1.vault.azure.net").unwrap_err().kind, ErrorKind::Forbidden);
    }
}
