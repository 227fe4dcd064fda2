//! kubelet's streaming timeouts (`k8s.io/kubelet/pkg/cri/streaming` `DefaultConfig`), which
//! every protocol adapter honours.

use std::time::Duration;

/// `StreamIdleTimeout`: a connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);
/// `StreamCreationTimeout`: how long a client may take to open the streams of an
/// exec/attach, or the second stream of a port-forward pair.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
