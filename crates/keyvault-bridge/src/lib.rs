//! Where the Azure Key Vault provider (`keyvault`, which knows nothing of CSI or Kubernetes) meets the
//! rest: the driver's [`secrets_store::provider::Provider`] interface ([`provider`]), the driver's
//! class lint ([`lint`]), the SecretSync controller's change-event source ([`events`]) and the
//! `keyvault-csi check` command ([`check`]), and the provider's flags ([`flags`]). The binary only
//! wires these.

pub mod check;
pub mod events;
pub mod flags;
pub mod lint;
pub mod provider;

pub use flags::AzureArgs;
pub use provider::{AzureProvider, mount_failure, provider_error};
