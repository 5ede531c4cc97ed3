//! What the client's streams stand for during a transfer: credentials asked for
//! over the auth stream (`AuthRequest` out, `AuthResponse` back) and progress
//! sent on the progress stream.

use containerd_client::types::transfer::{AuthRequest, AuthResponse, AuthType};
use ember_registry::{Credentials, Progress, ProgressSink};
use tokio::sync::Mutex;

use crate::services::streaming::{pack, unpack, Stream};

/// Credentials from the client, one question at a time. The question names the
/// reference as the client gave it (ctr answers only for that one).
pub struct StreamCredentials {
    pub stream: Mutex<Stream>,
    pub reference: String,
}

#[async_trait::async_trait]
impl ember_registry::CredentialSource for StreamCredentials {
    async fn credentials(
        &self,
        host: &str,
        _reference: &str,
        challenges: &[String],
    ) -> Result<Credentials, ember_registry::Error> {
        let lost =
            |what: String| ember_registry::Error::Auth(format!("asking for credentials: {what}"));
        let mut s = self.stream.lock().await;
        s.send(pack(&AuthRequest {
            host: host.to_string(),
            reference: self.reference.clone(),
            wwwauthenticate: challenges.to_vec(),
        }))
        .await
        .map_err(|e| lost(e.message().to_string()))?;
        let a = tokio::time::timeout(std::time::Duration::from_secs(60), s.recv())
            .await
            .map_err(|_| lost("no answer".into()))?
            .map_err(|e| lost(e.message().to_string()))?
            .ok_or_else(|| lost("the client closed the stream".into()))?;
        let r: AuthResponse = unpack(&a).map_err(|e| lost(e.message().to_string()))?;
        Ok(
            match AuthType::try_from(r.auth_type).unwrap_or(AuthType::None) {
                AuthType::Credentials => Credentials::Basic {
                    username: r.username,
                    secret: r.secret,
                },
                AuthType::Refresh if !r.secret.is_empty() => Credentials::Refresh(r.secret),
                AuthType::Header => Credentials::Header(r.secret),
                _ => Credentials::None,
            },
        )
    }
}

/// Progress reports queued for the progress stream.
pub struct StreamProgress(pub tokio::sync::mpsc::UnboundedSender<Progress>);

impl ProgressSink for StreamProgress {
    fn progress(&self, p: Progress) {
        let _ = self.0.send(p);
    }
}

/// Forwards queued progress to the client until the queue's senders are gone.
pub async fn forward_progress(
    stream: Stream,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
) {
    while let Some(p) = rx.recv().await {
        let m = containerd_client::types::transfer::Progress {
            event: p.event,
            name: p.name,
            parents: p.parents,
            progress: p.progress,
            total: p.total,
            desc: None,
        };
        if stream.send(pack(&m)).await.is_err() {
            break;
        }
    }
}
