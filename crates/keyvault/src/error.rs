//! The provider's errors: a kind that decides the caller's status code, and a message that names the
//! object and the cause. No message ever contains a secret value or a token.

/// The broad class of a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The SecretProviderClass or the identity material is wrong; retrying will not help.
    InvalidInput,
    /// An object does not exist.
    NotFound,
    /// The identity may not read the object (403), or Entra ID refused it.
    Forbidden,
    /// Key Vault or Entra ID is throttling; retry later.
    Throttled,
    /// Key Vault, Entra ID or IMDS cannot be reached or fails (5xx, connection errors).
    Unavailable,
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// Anything else (malformed responses, conversion failures).
    Internal,
}

impl ErrorKind {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidInput => "InvalidInput",
            Self::NotFound => "NotFound",
            Self::Forbidden => "Forbidden",
            Self::Throttled => "Throttled",
            Self::Unavailable => "Unavailable",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::Internal => "Internal",
        }
    }

    /// The bounded `error_class` label: `throttled`, `auth`, `not_found`, `network` or `other`, the
    /// five things an alert tells apart.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Forbidden => "auth",
            Self::NotFound => "not_found",
            Self::Unavailable | Self::DeadlineExceeded => "network",
            Self::InvalidInput | Self::Internal => "other",
        }
    }

    /// The `error_class` of an HTTP status from Key Vault (0: no response); empty for a success.
    pub fn class_of_status(status: u16) -> &'static str {
        match status {
            200..=399 => "",
            429 => "throttled",
            401 | 403 => "auth",
            404 => "not_found",
            0 | 500..=599 => "network",
            _ => "other",
        }
    }
}

/// Who answered (or failed to answer) with the error: lets callers tell an identity Entra ID refused
/// from an object Key Vault refused without reading the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The class's parameters or the pod's identity material, before any request.
    Parameters,
    /// Entra ID's token endpoint (workload identity, service principal).
    EntraId,
    /// The instance metadata service (managed identity).
    Imds,
    /// aad-pod-identity's NMI.
    Nmi,
    /// AKS's identity binding token proxy (`useAzureTokenProxy`).
    TokenProxy,
    /// Key Vault's data plane.
    KeyVault,
    /// No HTTP answer at all: DNS, connect, TLS, timeouts.
    Network,
    /// This provider: configuration, conversion of what Key Vault returned, deadlines.
    Provider,
}

impl Origin {
    /// Whether the error came from an identity service refusing or failing to issue a token.
    pub fn is_token_service(self) -> bool {
        matches!(self, Self::EntraId | Self::Imds | Self::Nmi | Self::TokenProxy)
    }
}

/// A provider error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Class.
    pub kind: ErrorKind,
    /// Who failed.
    pub origin: Origin,
    /// Message: what, which object, why.
    pub message: String,
    /// The underlying error (an HTTP client error), when there is one.
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// Builds an error of this provider's own making.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, origin: Origin::Provider, message: message.into(), source: None }
    }

    /// Invalid parameters or identity material.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message).from(Origin::Parameters)
    }

    /// Sets who failed.
    pub fn from(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Attaches the underlying error.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// A stable, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        self.kind.label()
    }

    /// Prefixes the message, keeping the rest.
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        Self { message: format!("{prefix}{}", self.message), ..self }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes_are_five_and_statuses_map_onto_them() {
        use ErrorKind::*;
        let kinds = [InvalidInput, NotFound, Forbidden, Throttled, Unavailable, DeadlineExceeded, Internal];
        let classes: std::collections::BTreeSet<&str> = kinds.iter().map(|k| k.class()).collect();
        assert_eq!(classes, ["auth", "network", "not_found", "other", "throttled"].into());
        let by_status: Vec<&str> = [200, 429, 401, 403, 404, 0, 503, 400].map(ErrorKind::class_of_status).to_vec();
        assert_eq!(by_status, ["", "throttled", "auth", "auth", "not_found", "network", "network", "other"]);
    }
}
