//! Pod sandboxes: a pinned network namespace with CNI, the pod's files, and a pause
//! container in containerd that holds the pod's namespaces.

pub mod files;
pub mod inspect;
pub mod lifecycle;
pub mod spec;
