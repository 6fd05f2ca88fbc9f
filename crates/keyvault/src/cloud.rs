//! Azure clouds: where Entra ID and Key Vault live for each `cloudName`, read per request (the
//! upstream provider set a process-wide environment variable for `cloudEnvFileName`, racing between
//! concurrent mounts; here the file is read and used for that one mount only).

use std::path::{Component, Path, PathBuf};

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

/// Where clouds come from: the cloud of classes that name none, and the one directory a class's
/// `cloudEnvFileName` may point into (`--cloud-env-dir`). The directory is the operator's: the driver
/// runs as root and sees every pod's mounted secrets, so a class (namespace input) must never make it
/// open anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clouds {
    /// `--cloud-name`.
    pub default_cloud: String,
    /// `--cloud-env-dir`.
    pub env_dir: PathBuf,
}

/// The directory upstream's documentation mounts the custom cloud environment file into.
pub const DEFAULT_ENV_DIR: &str = "/cloudEnv";

/// Environment files larger than this are refused unread (a go-autorest file is about 2 KiB).
pub const MAX_ENV_FILE_BYTES: u64 = 64 * 1024;

impl Default for Clouds {
    fn default() -> Self {
        Self { default_cloud: "AzurePublicCloud".into(), env_dir: PathBuf::from(DEFAULT_ENV_DIR) }
    }
}

/// The fields of a go-autorest environment file that matter here (Azure Stack), by JSON name.
const ENV_FIELDS: [&str; 3] = ["activeDirectoryEndpoint", "keyVaultEndpoint", "keyVaultDNSSuffix"];

/// Resolves `cloudName` (default `clouds.default_cloud`) and `cloudEnvFileName` for one mount.
pub fn resolve(cloud_name: &str, env_file: &str, clouds: &Clouds) -> Result<Cloud> {
    let name = if cloud_name.is_empty() { clouds.default_cloud.as_str() } else { cloud_name };
    if name.eq_ignore_ascii_case("AzureStackCloud") || !env_file.is_empty() && builtin(name).is_none() {
        if env_file.is_empty() {
            return Err(Error::invalid(format!(
                "cloudName {name} is not valid, error: cloudEnvFileName is required for AzureStackCloud"
            )));
        }
        let invalid = |why: String| {
            Error::invalid(format!("cloudName {name} is not valid, error: cloudEnvFileName {env_file:?}: {why}"))
        };
        let text = read_confined(&clouds.env_dir, env_file).map_err(invalid)?;
        return parse_env_file(&text, name).map_err(invalid);
    }
    builtin(name).ok_or_else(|| {
        Error::invalid(format!(
            "cloudName {name} is not valid, error: autorest/azure: There is no cloud environment matching the name \"{}\"",
            name.to_ascii_uppercase()
        ))
    })
}

/// The path `requested` names inside `dir`, resolved before anything is opened: no `..`, no absolute
/// path elsewhere, and no symlink whose target leaves `dir`. Errors name the directory, never what a
/// file outside it holds (nor whether it exists).
pub fn confine(dir: &Path, requested: &str) -> std::result::Result<PathBuf, String> {
    let outside = || format!("must name a file in {} (the driver's --cloud-env-dir)", dir.display());
    if requested.len() > 4096 || requested.contains('\0') {
        return Err(outside());
    }
    let requested = Path::new(requested);
    if requested.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(outside());
    }
    let relative = if requested.is_absolute() {
        let clean: PathBuf = requested.components().filter(|c| !matches!(c, Component::CurDir)).collect();
        let dir_clean: PathBuf = dir.components().filter(|c| !matches!(c, Component::CurDir)).collect();
        clean.strip_prefix(&dir_clean).map_err(|_| outside())?.to_path_buf()
    } else {
        requested.to_path_buf()
    };
    if relative.as_os_str().is_empty() {
        return Err(outside());
    }
    let root = std::fs::canonicalize(dir)
        .map_err(|e| format!("the driver's --cloud-env-dir {} is not readable: {}", dir.display(), e.kind()))?;
    let resolved = std::fs::canonicalize(root.join(&relative))
        .map_err(|e| format!("cannot be read from {}: {}", dir.display(), e.kind()))?;
    if !resolved.starts_with(&root) {
        return Err(outside());
    }
    Ok(resolved)
}

/// Reads an environment file confined to `dir` (see [`confine`]), refusing non-regular and large files.
fn read_confined(dir: &Path, requested: &str) -> std::result::Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = confine(dir, requested)?;
    let cannot = |e: std::io::Error| format!("cannot be read from {}: {}", dir.display(), e.kind());
    // The canonical path has no symlink left; O_NOFOLLOW keeps one from being swapped in meanwhile.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("is not a regular file in {}", dir.display()));
    }
    if meta.len() > MAX_ENV_FILE_BYTES {
        return Err(format!("is larger than {MAX_ENV_FILE_BYTES} bytes"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(cannot)?;
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())
}

/// Reads a go-autorest environment file. Errors name a line, a column or a field, never a value: the
/// text may be anything (the file was chosen by a class author).
pub fn parse_env_file(text: &str, name: &str) -> std::result::Result<Cloud, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of the file",
            _ => "not valid JSON",
        };
        format!("line {} column {}: {what}", e.line(), e.column())
    })?;
    let obj = value.as_object().ok_or("is not a JSON object")?;
    let field = |k: &str| -> std::result::Result<String, String> {
        match obj.get(k) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("field {k} is not a string")),
            None => Err(format!("field {k} is missing")),
        }
    };
    let [authority, resource, suffix] = ENV_FIELDS.map(field);
    let file_name = match obj.get("name") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("field name is not a string".into()),
    };
    Ok(Cloud {
        name: file_name.unwrap_or_else(|| name.to_string()),
        authority_host: authority?,
        keyvault_resource: resource?,
        keyvault_dns_suffix: suffix?.trim_start_matches('.').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.stack.local/","keyVaultEndpoint":"https://vault.stack.local/","keyVaultDNSSuffix":".vault.stack.local"}"#;

    fn clouds(dir: &Path) -> Clouds {
        Clouds { env_dir: dir.to_path_buf(), ..Clouds::default() }
    }

    #[test]
    fn every_builtin_cloud_case_insensitively() {
        let c = Clouds::default();
        assert_eq!(resolve("", "", &c).unwrap().keyvault_dns_suffix, "vault.azure.net");
        assert_eq!(
            resolve("azureusgovernmentcloud", "", &c).unwrap().authority_host,
            "https://login.microsoftonline.us/"
        );
        assert_eq!(resolve("AZURECHINACLOUD", "", &c).unwrap().keyvault_resource, "https://vault.azure.cn/");
        assert_eq!(resolve("AzureGermanCloud", "", &c).unwrap().keyvault_dns_suffix, "vault.microsoftazure.de");
        assert!(resolve("Mars", "", &c).unwrap_err().message.starts_with("cloudName Mars is not valid"));
    }

    #[test]
    fn azure_stack_reads_the_env_file_from_the_operators_directory_by_absolute_or_relative_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stack.json"), STACK).unwrap();
        let c = clouds(dir.path());
        let abs = dir.path().join("stack.json");
        assert_eq!(
            resolve("AzureStackCloud", abs.to_str().unwrap(), &c).unwrap().keyvault_dns_suffix,
            "vault.stack.local"
        );
        assert_eq!(resolve("AzureStackCloud", "stack.json", &c).unwrap().authority_host, "https://login.stack.local/");
        assert!(resolve("AzureStackCloud", "", &c).is_err());
    }

    /// The disclosure the hostile-tenant audit found: a class pointing `cloudEnvFileName` at another
    /// pod's mounted secret made the driver read it and quote it in the class author's event.
    #[test]
    fn a_file_outside_the_directory_is_never_opened_and_never_quoted() {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("cloudEnv");
        let victim = root.path().join("pods/victim/volumes/secrets-store/db-password");
        std::fs::create_dir_all(&env_dir).unwrap();
        std::fs::create_dir_all(victim.parent().unwrap()).unwrap();
        std::fs::write(&victim, "\"hunter2-the-other-pods-value\"").unwrap();
        std::os::unix::fs::symlink(&victim, env_dir.join("link.json")).unwrap();
        std::os::unix::fs::symlink(root.path().join("pods"), env_dir.join("pods")).unwrap();
        let c = clouds(&env_dir);
        let up = format!("{}/../pods/victim/volumes/secrets-store/db-password", env_dir.display());
        for attempt in [
            victim.to_str().unwrap(),
            up.as_str(),
            "../pods/victim/volumes/secrets-store/db-password",
            "link.json",
            "pods/victim/volumes/secrets-store/db-password",
            "/etc/passwd",
            "/",
            "",
        ] {
            let e = resolve("AzureStackCloud", attempt, &c).unwrap_err().message;
            assert!(!e.contains("hunter2"), "{attempt}: {e}");
            if !attempt.is_empty() {
                assert!(e.contains(&env_dir.display().to_string()), "{attempt}: the error names the directory: {e}");
            }
        }
    }

    #[test]
    fn a_malformed_file_is_reported_by_line_column_and_field_never_by_value() {
        let dir = tempfile::tempdir().unwrap();
        let c = clouds(dir.path());
        for (text, expect) in [
            ("\"the-value-of-a-secret\"", "is not a JSON object"),
            ("{\"activeDirectoryEndpoint\": the-value-of-a-secret}", "not valid JSON"),
            (
                "{\"activeDirectoryEndpoint\": 1, \"keyVaultEndpoint\": \"the-value-of-a-secret\"}",
                "field activeDirectoryEndpoint is not a string",
            ),
            ("{\"keyVaultEndpoint\": \"the-value-of-a-secret\"", "unexpected end of the file"),
            ("{\"activeDirectoryEndpoint\": \"the-value-of-a-secret\"}", "field keyVaultEndpoint is missing"),
        ] {
            std::fs::write(dir.path().join("env.json"), text).unwrap();
            let e = resolve("AzureStackCloud", "env.json", &c).unwrap_err().message;
            assert!(e.contains(expect), "{text}: {e}");
            assert!(!e.contains("the-value-of-a-secret"), "{e}");
        }
        std::fs::write(dir.path().join("big.json"), vec![b' '; MAX_ENV_FILE_BYTES as usize + 1]).unwrap();
        assert!(resolve("AzureStackCloud", "big.json", &c).unwrap_err().message.contains("larger than"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(resolve("AzureStackCloud", "sub", &c).unwrap_err().message.contains("not a regular file"));
    }
}
