//! The Azure provider's parameter rules (`keyvault::lint`, on the mount's own parameter reader) as a
//! driver-side [`secrets_store::lint::ParametersLint`].

/// The Azure provider's parameter linter, for `keyvault-csi check`.
pub struct AzureLint;

impl secrets_store::lint::ParametersLint for AzureLint {
    fn provider(&self) -> &str {
        "azure"
    }

    fn aliases(&self) -> &[&str] {
        keyvault::lint::PROVIDER_ALIASES
    }

    fn recognises(&self, spec: &secrets_store::class::SecretProviderClassSpec) -> bool {
        keyvault::lint::looks_like_azure(&spec.parameters)
    }

    fn lint(&self, spec: &secrets_store::class::SecretProviderClassSpec) -> secrets_store::lint::ParametersReport {
        let lint = keyvault::lint::lint(&spec.parameters, false);
        let findings = lint
            .findings
            .iter()
            .map(|f| match f.severity {
                keyvault::params::Severity::Error => secrets_store::lint::Finding::error(&f.field, &f.message, &f.fix),
                keyvault::params::Severity::Warning => {
                    secrets_store::lint::Finding::warning(&f.field, &f.message, &f.fix)
                }
            })
            .collect();
        secrets_store::lint::ParametersReport { findings, files: lint.files().cloned() }
    }
}
