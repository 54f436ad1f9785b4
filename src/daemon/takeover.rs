//! Handing the node from one weftd to the next without a gap: this weftd
//! claims the VXLAN port's hand-over name (or finds a running weftd that
//! holds it and starts beside it), takes over once it forwards, serves its
//! own successors and `weftd status`, and after being taken over lets go.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{DaemonError, Options, Stopped};
use crate::clock;
use crate::handover::{self, Holder, Successor};
use crate::state::NodeState;

/// This weftd's claim on the VXLAN port's hand-over name.
pub(super) struct Claim {
    port: u16,
    /// The name, when no weftd held it (after a take-over, once it is free).
    holder: Option<Holder>,
    /// A running weftd holds the name: this one starts beside it and takes
    /// over once it forwards.
    pub predecessor: bool,
}

impl Claim {
    /// Claims the name for `port`; when a running weftd holds it, checks
    /// that it will hand over `tun` and says that this one starts beside it.
    pub fn port(port: u16, tun: &str) -> Result<Claim, DaemonError> {
        let holder = handover::claim(port)?;
        let predecessor = holder.is_none();
        if predecessor {
            handover::check_successor(port, tun)?;
            tracing::info!(
                "a weftd already serves {tun} and port {port} here: this one attaches beside it and takes over once it forwards"
            );
        }
        Ok(Claim {
            port,
            holder,
            predecessor,
        })
    }

    /// Once this weftd forwards: asks the weftd that ran here to stop, and
    /// takes the name it lets go of. A predecessor that does not hand over
    /// cleanly forwards beside this one until it exits.
    pub async fn take_over(mut self) -> Result<Claim, DaemonError> {
        if !self.predecessor {
            return Ok(self);
        }
        let port = self.port;
        let took = tokio::task::spawn_blocking(move || {
            let gone = handover::ask_to_stop(port, Duration::from_secs(10));
            (gone, handover::claim_within(port, Duration::from_secs(2)))
        })
        .await
        .map_err(|e| DaemonError::Threads(std::io::Error::other(e)))?;
        match took {
            (Ok(t), Ok(h)) => {
                tracing::info!(
                    "took over from the previous weftd, which let go {} ms after being asked",
                    t.as_millis()
                );
                self.holder = h;
            }
            (gone, claimed) => {
                tracing::warn!(
                    "the previous weftd did not hand over cleanly ({:?}, {:?}); both forward until it exits",
                    gone.err(),
                    claimed.err()
                );
            }
        }
        Ok(self)
    }

    /// Serves successors and `weftd status` on the name, when this weftd
    /// holds it: a successor's request to stop raises
    /// [`HandedOver::notified`].
    pub fn serve(self, opts: &Options, state: &Arc<NodeState>) -> HandedOver {
        let handed = HandedOver {
            notified: Arc::new(Notify::new()),
            successor: Arc::new(Mutex::new(None)),
        };
        if let Some(h) = self.holder {
            let (n, slot) = (handed.notified.clone(), handed.successor.clone());
            let st = state.clone();
            h.serve(
                opts.tun_name.clone(),
                move |s| {
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(s);
                    }
                    n.notify_one();
                },
                move || {
                    serde_json::to_string(&crate::status::view(&st, clock::now_ms()))
                        .unwrap_or_default()
                },
            );
        }
        handed
    }
}

/// Whether a successor took over, and its claim once it did.
pub(super) struct HandedOver {
    /// Raised when a successor asks this weftd to stop.
    pub notified: Arc<Notify>,
    successor: Arc<Mutex<Option<Successor>>>,
}

impl HandedOver {
    /// How the node stopped: handed over to a successor, else by signal.
    pub fn stopped(self) -> Stopped {
        let taken = self.successor.lock().ok().and_then(|mut s| s.take());
        taken.map_or(Stopped::Signal, Stopped::HandedOver)
    }
}

/// After a hand-over, once the async runtime has stopped (its `/healthz`
/// listener closed with it): tells the successor that this weftd has let
/// go. In a pod (`POD_NAME` is set, as the DaemonSet sets it), the process
/// then idles until SIGTERM instead of exiting: kubelet restarts a container
/// that exits, and the restarted weftd would take the node back from its
/// successor, which would then exit and be restarted in turn. A rollout
/// with `maxSurge` deletes the old pod once the new one is Ready.
pub fn let_go(successor: Successor) {
    drop(successor);
    let Some(pod) = std::env::var_os("POD_NAME") else {
        return;
    };
    tracing::info!(
        "handed over: pod {} idles until it is deleted (an exited container would be restarted and take the node back)",
        pod.to_string_lossy()
    );
    // The runtime that ran the node is gone; a small one waits for the signal.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
        }),
        Err(e) => tracing::warn!("cannot wait for SIGTERM after the hand-over, exiting: {e}"),
    }
}
