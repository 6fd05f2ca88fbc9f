//! Azure clouds: where Entra ID and Key Vault live for each `cloudName`, read per request (the
//! upstream provider set a process-wide environment variable for `cloudEnvFileName`, racing between
//! concurrent mounts; here the file is read and used for that one mount only).

use serde::Deserialize;

use crate::error::{Error, Result};

/// Endpoints of one cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cloud {
    /// Canonical name, e.g. `AzurePublicCloud`.
    pub name: String,
    /// Entra ID authority host, e.g. `https://login.microsoftonline.com/`.
    pub authority_host: String,
    /// Key Vault resource, e.g. `https://vault.azure.net/`.
    pub keyvault_resource: String,
    /// Vault DNS suffix, e.g. `vault.azure.net`.
    pub keyvault_dns_suffix: String,
}

fn cloud(name: &str, authority: &str, resource: &str, suffix: &str) -> Cloud {
    Cloud {
        name: name.into(),
        authority_host: authority.into(),
        keyvault_resource: resource.into(),
        keyvault_dns_suffix: suffix.into(),
    }
}

/// The go-autorest environment table (names are case-insensitive).
pub fn builtin(name: &str) -> Option<Cloud> {
    match name.to_ascii_uppercase().as_str() {
        "AZUREPUBLICCLOUD" => Some(cloud(
            "AzurePublicCloud",
            "https://login.microsoftonline.com/",
            "https://vault.azure.net/",
            "vault.azure.net",
        )),
        "AZUREUSGOVERNMENTCLOUD" => Some(cloud(
            "AzureUSGovernmentCloud",
            "https://login.microsoftonline.us/",
            "https://vault.usgovcloudapi.net/",
            "vault.usgovcloudapi.net",
        )),
        "AZURECHINACLOUD" => Some(cloud(
            "AzureChinaCloud",
            "https://login.chinacloudapi.cn/",
            "https://vault.azure.cn/",
            "vault.azure.cn",
        )),
        "AZUREGERMANCLOUD" => Some(cloud(
            "AzureGermanCloud",
            "https://login.microsoftonline.de/",
            "https://vault.microsoftazure.de/",
            "vault.microsoftazure.de",
        )),
        _ => None,
    }
}

/// The fields of a go-autorest environment file that matter here (Azure Stack).
#[derive(Deserialize)]
struct EnvFile {
    name: Option<String>,
    #[serde(rename = "activeDirectoryEndpoint")]
    active_directory_endpoint: String,
    #[serde(rename = "keyVaultEndpoint")]
    key_vault_endpoint: String,
    #[serde(rename = "keyVaultDNSSuffix")]
    key_vault_dns_suffix: String,
}

/// Resolves `cloudName` (default `default_cloud`) and `cloudEnvFileName` for one mount.
pub fn resolve(cloud_name: &str, env_file: &str, default_cloud: &str) -> Result<Cloud> {
    let name = if cloud_name.is_empty() { default_cloud } else { cloud_name };
    if name.eq_ignore_ascii_case("AzureStackCloud") || !env_file.is_empty() && builtin(name).is_none() {
        if env_file.is_empty() {
            return Err(Error::invalid(format!(
                "cloudName {name} is not valid, error: cloudEnvFileName is required for AzureStackCloud"
            )));
        }
        let text = std::fs::read_to_string(env_file).map_err(|e| {
            Error::invalid(format!("cloudName {name} is not valid, error: reading cloudEnvFileName {env_file}: {e}"))
        })?;
        let env: EnvFile = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(format!("cloudName {name} is not valid, error: parsing cloudEnvFileName {env_file}: {e}"))
        })?;
        return Ok(Cloud {
            name: env.name.unwrap_or_else(|| name.to_string()),
            authority_host: env.active_directory_endpoint,
            keyvault_resource: env.key_vault_endpoint,
            keyvault_dns_suffix: env.key_vault_dns_suffix.trim_start_matches('.').to_string(),
        });
    }
    builtin(name).ok_or_else(|| {
        Error::invalid(format!(
            "cloudName {name} is not valid, error: autorest/azure: There is no cloud environment matching the name \"{}\"",
            name.to_ascii_uppercase()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_cloud_case_insensitively() {
        assert_eq!(resolve("", "", "AzurePublicCloud").unwrap().keyvault_dns_suffix, "vault.azure.net");
        assert_eq!(
            resolve("azureusgovernmentcloud", "", "x").unwrap().authority_host,
            "https://login.microsoftonline.us/"
        );
        assert_eq!(resolve("AZURECHINACLOUD", "", "x").unwrap().keyvault_resource, "https://vault.azure.cn/");
        assert_eq!(resolve("AzureGermanCloud", "", "x").unwrap().keyvault_dns_suffix, "vault.microsoftazure.de");
        assert!(resolve("Mars", "", "x").unwrap_err().message.starts_with("cloudName Mars is not valid"));
    }

    #[test]
    fn azure_stack_reads_the_env_file_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stack.json");
        std::fs::write(
            &f,
            r#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.stack.local/","keyVaultEndpoint":"https://vault.stack.local/","keyVaultDNSSuffix":".vault.stack.local"}"#,
        )
        .unwrap();
        let c = resolve("AzureStackCloud", f.to_str().unwrap(), "AzurePublicCloud").unwrap();
        assert_eq!(c.keyvault_dns_suffix, "vault.stack.local");
        assert!(resolve("AzureStackCloud", "", "x").is_err());
    }
}
