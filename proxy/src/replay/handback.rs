//! What a large-body replay subrequest hands back to the request that spawned it: the next
//! hop an upstream asked for. Data only; the subrequest itself runs in the request path
//! (`proxy::subrequest`).

use std::sync::Arc;

use super::cache::CacheKey;
use super::Target;

/// A further replay asked for by the upstream a subrequest reached: the request that spawned
/// the subrequest runs it (a subrequest never spawns another), so every hop of a large-body
/// replay goes out from the one request that holds the body and answers the client.
#[derive(Debug, Clone)]
pub struct NextHop {
    /// Where the next attempt goes.
    pub target: Target,
    /// Replays taken, this one included.
    pub hops: u8,
    /// The target came from a fallback.
    pub by_fallback: bool,
    /// First instance that asked for a replay.
    pub first_from: Option<String>,
    /// Cache entry that routed the request.
    pub cache_key: Option<CacheKey>,
    /// Trigger of the replay.
    pub kind: &'static str,
}

/// Where a subrequest leaves its [`NextHop`] for the request that spawned it.
pub type Handback = Arc<std::sync::Mutex<Option<NextHop>>>;
