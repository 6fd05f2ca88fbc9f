//! The key of the SecretSync hashes, kept in a Secret of the controller's namespace.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

/// The key of the SecretSync hashes: kept in a Secret so a restart (or another replica) computes
/// the same hashes and rewrites nothing; created with 32 random bytes on first start.
pub async fn load_or_create(client: &kube::Client, namespace: &str, name: &str) -> Result<Vec<u8>, String> {
    const KEY: &str = "key";
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading Secret {namespace}/{name}: {}", kube_bridge::describe(&e)))?;
        if let Some(key) = found.and_then(|s| s.data).and_then(|mut d| d.remove(KEY)).filter(|k| k.0.len() >= 32) {
            return Ok(key.0);
        }
        let key: [u8; 32] = std::array::from_fn(|_| rand::random::<u8>());
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: Some([(KEY.to_string(), ByteString(key.to_vec()))].into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "created the SecretSync hash key");
                return Ok(key.to_vec());
            }
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(format!("creating Secret {namespace}/{name}: {}", kube_bridge::describe(&e))),
        }
    }
    Err(format!("Secret {namespace}/{name} exists without a usable key (32 bytes under \"key\"): delete it"))
}
