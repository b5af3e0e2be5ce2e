//! Port-forwards through the API server (kube's `ws` feature), each exposed as a local
//! loopback port so that any HTTP client can use it: every accepted connection gets its
//! own forward to the pod, as `kubectl port-forward` does.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long a finished forward may take to close its WebSocket.
const FORWARD_CLOSE: std::time::Duration = std::time::Duration::from_secs(5);

/// A local port forwarded to a pod's port; stops when dropped.
#[derive(Debug)]
pub struct Forward {
    /// The loopback address that reaches the pod.
    pub local: SocketAddr,
    /// `namespace/pod:port`, for messages.
    pub target: String,
    task: JoinHandle<()>,
}

impl Forward {
    /// Listens on a free loopback port and forwards each connection to `pod`'s `port`.
    pub async fn start(pods: Api<Pod>, pod: &str, port: u16) -> std::io::Result<Forward> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let local = listener.local_addr()?;
        let target = format!("{}/{pod}:{port}", pods.namespace().unwrap_or("default"));
        let pod = pod.to_string();
        let label = target.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        // Out of descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "accepting a forwarded connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let pods = pods.clone();
                let pod = pod.clone();
                let label = label.clone();
                tokio::spawn(async move {
                    let mut forwarder = match pods.portforward(&pod, &[port]).await {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(%label, error = %e, "port-forward failed");
                            return;
                        }
                    };
                    let errors = forwarder.take_error(port);
                    if let Some(mut upstream) = forwarder.take_stream(port)
                        && let Err(e) =
                            tokio::io::copy_bidirectional(&mut conn, &mut upstream).await
                    {
                        tracing::debug!(%label, error = %e, "forwarded connection ended");
                    }
                    let ended = tokio::time::timeout(FORWARD_CLOSE, forwarder.join()).await;
                    if let (Ok(_), Some(errors)) = (ended, errors) {
                        // The forward is over: an error the kubelet sent is waiting, or
                        // the channel is closed.
                        if let Some(message) = errors.await {
                            tracing::warn!(%label, %message, "port-forward error from the kubelet");
                        }
                    }
                });
            }
        });
        Ok(Forward {
            local,
            target,
            task,
        })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
