//! The shared context every domain module works through: settings, the containerd
//! connection, name reservations, the sandbox and container records, and the container event
//! channel. It holds state and calls into no domain module; what spans sandboxes and
//! containers is in [`crate::pod`], which builds this context.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Config;
use crate::containerd::Containerd;
use crate::cri;
use crate::error::{Error, Result};
use crate::store::{Containers, Names, Sandboxes, Unpersisted};

pub struct Runtime {
    pub config: Config,
    pub ctrd: Containerd,
    /// Sandbox and container names share one table, as kubelet's names never collide across kinds.
    pub names: Names,
    pub sandboxes: Sandboxes,
    pub containers: Containers,
    /// Container lifecycle events for GetContainerEvents subscribers.
    pub events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
    /// Set once the index has been rebuilt from containerd; until then state-changing and
    /// listing RPCs answer Unavailable rather than act on an empty index.
    recovered: AtomicBool,
    /// Containers whose latest state could not be written to the state directory.
    pub unpersisted: Unpersisted,
}

impl Runtime {
    pub fn new(config: Config) -> Self {
        let ctrd = Containerd::connect_lazy(&config.containerd_socket, &config.namespace);
        Runtime {
            config,
            ctrd,
            names: Names::default(),
            sandboxes: Sandboxes::default(),
            containers: Default::default(),
            events: tokio::sync::broadcast::channel(1024).0,
            recovered: AtomicBool::new(false),
            unpersisted: Unpersisted::default(),
        }
    }

    /// Marks the index as rebuilt: the RPCs that need it are served from now on.
    pub fn set_recovered(&self) {
        self.recovered.store(true, Ordering::SeqCst);
    }

    /// Unavailable until the index has been rebuilt from containerd.
    pub fn require_recovered(&self) -> Result<()> {
        if self.recovered.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "peapod is still recovering its state from containerd at {}",
                self.ctrd.socket().display()
            )))
        }
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("sandboxes").join(id)
    }

    /// Where the stdio FIFOs of containers live (under the state dir, so a test rig's
    /// peapod keeps its own).
    pub fn fifo_dir(&self) -> PathBuf {
        self.config.state_dir.join("fifo")
    }
}
