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
}

/// A provider error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Class.
    pub kind: ErrorKind,
    /// Message: what, which object, why.
    pub message: String,
}

impl Error {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// Invalid input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Prefixes the message, keeping the kind.
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        Self { kind: self.kind, message: format!("{prefix}{}", self.message) }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
