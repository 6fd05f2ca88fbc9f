//! Live checks of a SecretSync (`keyvault-csi check --live --secret-sync`): it exists, a controller
//! runs, its service account opted in, and the Secret it will write is not someone else's.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::ListParams;
use kube_bridge::describe;
use secrets_store::check::Check;

use crate::api::SecretSync;

/// The SecretSync's checks, and the SecretSync (`None` when it does not exist). `Err` when the
/// cluster cannot be asked at all.
pub async fn secret_sync(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<(Vec<Check>, Option<SecretSync>), String> {
    let mut checks = Vec::new();
    let ss = match Api::<SecretSync>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(Some(ss)) => ss,
        Ok(None) => {
            checks.push(Check::fail("secretsync exists", format!("no SecretSync {name} in namespace {ns}"), None));
            return Ok((checks, None));
        }
        Err(e) => return Err(format!("cannot read SecretSync {ns}/{name}: {}", describe(&e))),
    };
    checks.push(Check::pass(
        "secretsync exists",
        format!(
            "SecretSync {ns}/{name}: class {}, service account {}",
            ss.spec.secret_provider_class_name, ss.spec.service_account_name
        ),
    ));
    let controllers = Api::<k8s_openapi::api::apps::v1::Deployment>::all(client.clone())
        .list(&ListParams::default().labels("app.kubernetes.io/component=sync-controller"))
        .await;
    checks.push(match controllers {
        Ok(l) if l.items.iter().any(|d| d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) > 0) => {
            Check::pass("sync controller", "a keyvault-csi sync-controller Deployment is ready")
        }
        Ok(_) => Check::fail(
            "sync controller",
            "no ready keyvault-csi sync-controller Deployment (chart value syncController.enabled)",
            Some("the SecretSync is never reconciled".into()),
        ),
        Err(e) => Check::skip("sync controller", format!("cannot list Deployments: {}", describe(&e))),
    });
    let sa = &ss.spec.service_account_name;
    let c = "service account opt-in";
    checks.push(match Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt(sa).await {
        Ok(Some(account)) => {
            match crate::decide::check_opt_in(
                account.metadata.annotations.as_ref().unwrap_or(&BTreeMap::new()),
                ns,
                sa,
                name,
            ) {
                Ok(()) => Check::pass(c, format!("{ns}/{sa} lets SecretSync {name} use it")),
                Err(f) => Check::fail(c, f.message.clone(), Some(f.message)),
            }
        }
        Ok(None) => Check::fail(c, format!("service account {ns}/{sa} does not exist"), None),
        Err(e) => Check::skip(c, format!("cannot read service account {ns}/{sa}: {}", describe(&e))),
    });
    let c = format!("Secret {name}");
    checks.push(match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(None) => Check::pass(c, "does not exist yet; the controller will create it"),
        Ok(Some(s)) if crate::controller::owned_by(&s, &ss) => Check::pass(c, "exists and is owned by this SecretSync"),
        Ok(Some(s)) => {
            let why = crate::controller::foreign(&s, &ss);
            Check::fail(c, why.clone(), Some(why))
        }
        Err(kube::Error::Api(s)) if s.code == 403 => Check::skip(c, format!("cannot read Secrets here: {}", s.message)),
        Err(e) => Check::fail(c, describe(&e), None),
    });
    Ok((checks, Some(ss)))
}
