//! Is a bearer token allowed to read a metrics path? A TokenReview authenticates it, and a
//! SubjectAccessReview asks whether its user may `get` the non-resource URL, as kube-rbac-proxy and
//! controller-runtime's `--metrics-secure` do. Grant it with a ClusterRole of
//! `nonResourceURLs: ["/metrics"], verbs: ["get"]` (the chart's `<release>-metrics-reader`).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

/// The outcome of the two reviews.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Review {
    /// Authenticated and allowed.
    Allowed,
    /// The API server does not accept the token.
    Unauthenticated,
    /// Authenticated as `user`, and not allowed.
    Forbidden {
        /// The user the token authenticates as.
        user: String,
    },
    /// A review could not be made (the API server's answer, never the token).
    Unavailable(String),
}

/// Reviews tokens through the API server (needs `create` on `tokenreviews` and
/// `subjectaccessreviews`).
#[derive(Clone)]
pub struct AccessReviewer {
    client: kube::Client,
    audiences: Vec<String>,
}

impl AccessReviewer {
    /// Reviews with `client`; `audiences` empty: the API server's own.
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self { client, audiences }
    }

    /// May the holder of `token` do `verb` on `path`?
    pub async fn review(&self, token: &str, verb: &str, path: &str) -> Review {
        let tokens: Api<TokenReview> = Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let status = match tokens.create(&PostParams::default(), &request).await {
            Ok(review) => review.status.unwrap_or_default(),
            Err(e) => return Review::Unavailable(format!("TokenReview: {}", crate::describe(&e))),
        };
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Review::Unauthenticated;
        };
        let name = user.username.clone().unwrap_or_default();
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let request = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match access.create(&PostParams::default(), &request).await {
            Ok(review) if review.status.as_ref().is_some_and(|s| s.allowed) => Review::Allowed,
            Ok(_) => Review::Forbidden { user: name },
            Err(e) => Review::Unavailable(format!("SubjectAccessReview: {}", crate::describe(&e))),
        }
    }
}
