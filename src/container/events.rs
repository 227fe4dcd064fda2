//! GetContainerEvents: every subscriber gets its own receiver of `Runtime::events`.

use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::cri;

/// The events sent after the subscription, in order. A subscriber too slow to keep up loses
/// the oldest events (the channel is bounded so one stuck client cannot hold memory) and
/// carries on with a warning: kubelet's PLEG relists anyway, whereas ending the stream would
/// make it fall back to polling. The stream ends when the client goes away (tonic drops it)
/// or the runtime shuts down.
pub fn subscribe(
    events: &broadcast::Sender<cri::ContainerEventResponse>,
) -> impl Stream<Item = cri::ContainerEventResponse> + Send + 'static {
    BroadcastStream::new(events.subscribe()).filter_map(|ev| async move {
        match ev {
            Ok(ev) => Some(ev),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(
                    lost = n,
                    "container event subscriber lagged; events skipped"
                );
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, t: cri::ContainerEventType) -> cri::ContainerEventResponse {
        cri::ContainerEventResponse {
            container_id: id.into(),
            container_event_type: t as i32,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_survives_lag() {
        let (tx, _) = broadcast::channel(2);
        let s = subscribe(&tx);
        futures::pin_mut!(s);
        for i in 0..4 {
            tx.send(ev(
                &format!("c{i}"),
                cri::ContainerEventType::ContainerCreatedEvent,
            ))
            .unwrap();
        }
        // c0 and c1 were overwritten; the stream skips them and goes on.
        assert_eq!(s.next().await.unwrap().container_id, "c2");
        assert_eq!(s.next().await.unwrap().container_id, "c3");
        tx.send(ev("c4", cri::ContainerEventType::ContainerStoppedEvent))
            .unwrap();
        let e = s.next().await.unwrap();
        assert_eq!(e.container_id, "c4");
        assert_eq!(
            e.container_event_type,
            cri::ContainerEventType::ContainerStoppedEvent as i32
        );
        drop(tx);
        assert!(s.next().await.is_none(), "ends when the sender is gone");
    }
}
