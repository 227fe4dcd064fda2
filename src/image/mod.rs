//! Images: reference normalisation, lookup of images held in containerd's image store,
//! the in-memory index of them, pulling (registry → content store → snapshots), the CRI
//! image inventory and the snapshotter's disk usage.

pub mod auth;
pub mod content;
pub mod hosts;
pub mod index;
pub mod inventory;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;
pub mod usage;
pub mod watch;

pub use inventory::Inventory;
pub use pull::Puller;
pub use store::{ImageInfo, ImageStore};
