//! Images: reference normalisation and lookup of images held in containerd's image store.
//! Pulling and the CRI image inventory build on this.

pub mod reference;
pub mod store;

pub use store::{ImageInfo, ImageStore};
