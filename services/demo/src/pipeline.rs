//! The real API and a projector in this process, on the stores given: what `yoink demo`
//! and `yoink bench`'s `stream` strategy sell through. It serves on a free loopback
//! port; `stop` stops both and waits for them. It must never serve anything but Yoink's
//! own API.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use yoink_core::StoreArgs;
use yoink_projector::ProjectorArgs;

pub struct Pipeline {
    /// Where the API listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    api_stop: oneshot::Sender<()>,
    projector_stop: oneshot::Sender<()>,
    api: JoinHandle<()>,
    projector: JoinHandle<()>,
}

impl Pipeline {
    /// Starts the API (with room for `buyers` reserve calls at once, twice over) and a
    /// projector named `consumer`.
    pub async fn start(stores: &StoreArgs, buyers: usize, consumer: &str) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut api_args = yoink_api::ApiArgs::local();
        api_args.max_in_flight = api_args.max_in_flight.max(buyers * 2);
        let state = yoink_api::state(stores, &api_args)
            .await
            .map_err(|e| e.to_string())?;
        let (api_stop, api_stopped) = oneshot::channel::<()>();
        let api = tokio::spawn(yoink_api::run(listener, state, api_args, async {
            let _ = api_stopped.await;
        }));
        let (projector_stop, projector_stopped) = oneshot::channel::<()>();
        let projector_stores = stores.clone();
        let args = ProjectorArgs {
            consumer: Some(consumer.to_owned()),
            metrics_listen: "off".into(),
            ..ProjectorArgs::defaults()
        };
        let projector = tokio::spawn(async move {
            let run = yoink_projector::run(&projector_stores, args, None, async {
                let _ = projector_stopped.await;
            });
            if let Err(err) = run.await {
                tracing::error!(error = %err, "The in-process projector did not start.");
            }
        });
        Ok(Self {
            addr,
            api_stop,
            projector_stop,
            api,
            projector,
        })
    }

    /// Stops the projector and the API, and waits until both have.
    pub async fn stop(self) {
        let _ = self.projector_stop.send(());
        let _ = self.api_stop.send(());
        let _ = self.projector.await;
        let _ = self.api.await;
    }
}
