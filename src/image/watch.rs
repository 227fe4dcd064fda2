//! Following containerd's image events, so the image index ([`super::index`]) shows images
//! others add or remove (`ctr images import`, `kind load`, `ctr images rm`) without a
//! restart.

use std::time::Duration;

use super::index::change_of;
use super::store::ImageStore;
use crate::error::Result;

/// containerd's image events in peapod's namespace.
async fn subscribe(
    store: &ImageStore,
) -> Result<tonic::Streaming<containerd_client::types::Envelope>> {
    use containerd_client::services::v1::SubscribeRequest;
    let ctrd = store.ctrd();
    let filter = format!("topic~=\"^/images/\",namespace==\"{}\"", ctrd.namespace());
    Ok(ctrd
        .events()
        .subscribe(tonic::Request::new(SubscribeRequest {
            filters: vec![filter],
        }))
        .await
        .map_err(crate::error::ctrd("subscribe to image events"))?
        .into_inner())
}

/// Follows containerd's image events for as long as peapod runs. Each time the stream is
/// (re)established the whole index is synchronised with containerd's records, so whatever
/// changed while containerd was unreachable (or before peapod started) is picked up.
pub fn watch(store: ImageStore) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match subscribe(&store).await {
                Ok(mut events) => {
                    // Subscribed first, synchronised second: an event racing the listing is
                    // still in the stream and applied after it.
                    match store.sync().await {
                        Ok(n) => {
                            delay = Duration::from_millis(200);
                            tracing::debug!(
                                records = n,
                                "image index synchronised; following image events"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot load the image index yet");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    }
                    loop {
                        match events.message().await {
                            Ok(Some(env)) => {
                                let Some(any) = env.event else { continue };
                                match change_of(&env.topic, &any.value) {
                                    Some(c) => store.apply(c).await,
                                    None => {
                                        tracing::debug!(topic = %env.topic, "image event ignored")
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(s) => {
                                tracing::debug!(error = %s, "containerd's image event stream broke");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot subscribe to image events yet"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}
