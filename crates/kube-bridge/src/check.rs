//! Live checks of what the cluster must provide for a mount (`keyvault-csi check --live`): the
//! SecretProviderClass, the CSIDriver and its registration on every node, the token audience kubelet
//! passes, a token for the service account, and synced Secrets the driver may write. Each check
//! carries the error text a pod would get when it fails.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use kube::Api;
use kube::api::ListParams;
use secrets_store::check::Check;

use crate::crd::v1::SecretProviderClass;
use crate::credentials::{MintError, MintedToken, mint_token};
use crate::describe;
use crate::secrets::{MANAGED_LABEL, SyncError};

/// The CSI driver name.
pub const DRIVER: &str = "secrets-store.csi.k8s.io";

/// The class in the pod's namespace. `Err` when the cluster cannot be asked at all.
pub async fn class_exists(
    client: &kube::Client,
    ns: &str,
    class: &str,
) -> Result<(Check, Option<SecretProviderClass>), String> {
    match Api::<SecretProviderClass>::namespaced(client.clone(), ns).get_opt(class).await {
        Ok(Some(spc)) => Ok((
            Check::pass(
                "class exists",
                format!("SecretProviderClass {ns}/{class}, provider {:?}", spc.spec.spec.provider),
            ),
            Some(spc),
        )),
        Ok(None) => {
            let e = secrets_store::class::ClassError::NotFound { namespace: ns.into(), name: class.into() };
            Ok((
                Check::fail(
                    "class exists",
                    format!("no SecretProviderClass {class} in namespace {ns}"),
                    Some(e.to_string()),
                ),
                None,
            ))
        }
        Err(e) => Err(format!("cannot read SecretProviderClass {ns}/{class}: {}", describe(&e))),
    }
}

/// The CSIDriver exists and every node registered the driver.
pub async fn driver_registration(client: &kube::Client) -> Check {
    let c = "CSI driver registered";
    let prevents = Some(format!("driver name {DRIVER} not found in the list of registered CSI drivers"));
    match Api::<CSIDriver>::all(client.clone()).get_opt(DRIVER).await {
        Ok(Some(_)) => {}
        Ok(None) => return Check::fail(c, format!("no CSIDriver {DRIVER}: install the chart"), prevents),
        Err(e) => return Check::fail(c, format!("cannot read CSIDriver {DRIVER}: {}", describe(&e)), None),
    }
    let nodes = match Api::<CSINode>::all(client.clone()).list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => return Check::skip(c, format!("cannot list CSINodes: {}", describe(&e))),
    };
    let (with, without): (Vec<_>, Vec<_>) = nodes.iter().partition(|n| n.spec.drivers.iter().any(|d| d.name == DRIVER));
    let name = |n: &&CSINode| n.metadata.name.clone().unwrap_or_default();
    if with.is_empty() {
        return Check::fail(c, format!("registered on none of {} node(s)", nodes.len()), prevents);
    }
    if !without.is_empty() {
        let missing: Vec<String> = without.iter().take(5).map(name).collect();
        return Check::fail(
            c,
            format!("registered on {} of {} nodes; missing on {}", with.len(), nodes.len(), missing.join(", ")),
            prevents,
        );
    }
    Check::pass(c, format!("on all {} node(s)", nodes.len()))
}

/// The CSIDriver asks kubelet for tokens with `audience`; `prevents` is the provider's error without.
pub async fn token_audience(client: &kube::Client, audience: &str, prevents: String) -> Check {
    let c = "CSIDriver token audience";
    match Api::<CSIDriver>::all(client.clone()).get_opt(DRIVER).await {
        Ok(Some(d)) => {
            let auds: Vec<String> = d.spec.token_requests.unwrap_or_default().into_iter().map(|t| t.audience).collect();
            if auds.iter().any(|a| a == audience) {
                Check::pass(c, format!("kubelet passes {audience} tokens"))
            } else {
                Check::fail(
                    c,
                    format!(
                        "CSIDriver {DRIVER} requests tokens for {auds:?}, not {audience}: set tokenRequests in the chart"
                    ),
                    Some(prevents),
                )
            }
        }
        _ => Check::skip(c, "no CSIDriver to read"),
    }
}

/// A token for `ns/sa` with `audience`, as kubelet would get one; the failed check otherwise.
pub async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    audience: &str,
) -> Result<MintedToken, Check> {
    let c = "service account token";
    match mint_token(client, ns, sa, audience, Some(600), None).await {
        Ok(t) => Ok(t),
        Err(MintError::NoToken) => Err(Check::skip(c, "the API server returned no token")),
        Err(e) if e.code() == Some(404) => Err(Check::fail(
            c,
            format!("service account {ns}/{sa} does not exist"),
            Some(format!("serviceaccounts \"{sa}\" not found")),
        )),
        Err(e) if e.code() == Some(403) => Err(Check::skip(
            c,
            format!("you may not create tokens for {ns}/{sa} ({e}); the identity and objects are not checked"),
        )),
        Err(e) => Err(Check::fail(c, e.to_string(), None)),
    }
}

/// A `secretObjects` Secret the driver may write: absent, or labelled as the driver's.
pub async fn synced_secret(client: &kube::Client, ns: &str, name: &str) -> Check {
    let c = format!("synced Secret {name}");
    match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(None) => Check::pass(c, "does not exist yet; the driver will create it"),
        Ok(Some(s)) => {
            let managed = s.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_LABEL));
            if managed.map(String::as_str) == Some("true") {
                Check::pass(c, "exists and is managed by the driver")
            } else {
                let e = SyncError::NotManaged { namespace: ns.into(), secret: name.into() };
                Check::fail(c, "exists and is not managed by the driver: it will not be updated", Some(e.to_string()))
            }
        }
        Err(kube::Error::Api(s)) if s.code == 403 => Check::skip(c, format!("cannot read Secrets here: {}", s.message)),
        Err(e) => Check::fail(c, describe(&e), None),
    }
}

/// How many nodes the cluster has (for the Key Vault budget); `None` when they cannot be listed.
pub async fn node_count(client: &kube::Client) -> Option<u64> {
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .ok()
        .map(|l| l.items.len() as u64)
}
