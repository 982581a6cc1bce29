//! Which of the operator's watch caches hold a complete first list.
//!
//! kube-runtime's `Store::wait_until_ready` sits on a oneshot receiver that keeps one waker: with
//! several tasks waiting on one store, only the last to poll is woken when the list completes,
//! and the others sleep until something else happens to wake them. On kubelets this stalled a new
//! leader: its first reconciles waited on the Node cache and never ran again, and the cache sync
//! timer saw the caches "fill" only when its own deadline woke it. So each watch stream reports
//! its own `InitDone` here, after the reflector applied it, and waiters use a `watch` channel,
//! which wakes every one of them. Only the controller's runner still waits on the tunnel store
//! itself, alone.

use std::sync::Arc;

use kube::runtime::watcher;
use tokio::sync::watch;

/// One of the watch caches reconciles read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    Tunnels,
    Nodes,
    Leases,
}

impl Cache {
    const ALL: [Self; 3] = [Self::Tunnels, Self::Nodes, Self::Leases];

    /// The name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tunnels => "ipsectunnels",
            Self::Nodes => "nodes",
            Self::Leases => "leases",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Filled {
    tunnels: bool,
    nodes: bool,
    leases: bool,
}

impl Filled {
    fn of(&mut self, cache: Cache) -> &mut bool {
        match cache {
            Cache::Tunnels => &mut self.tunnels,
            Cache::Nodes => &mut self.nodes,
            Cache::Leases => &mut self.leases,
        }
    }

    fn all(self) -> bool {
        self.tunnels && self.nodes && self.leases
    }
}

/// Shared record of filled caches; cheap to clone.
#[derive(Clone, Debug)]
pub struct CacheSync {
    filled: Arc<watch::Sender<Filled>>,
}

impl Default for CacheSync {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheSync {
    pub fn new() -> Self {
        Self {
            filled: Arc::new(watch::Sender::new(Filled::default())),
        }
    }

    /// Records that `cache` completed a list. A relist later changes nothing: the store keeps
    /// serving the previous list until the new one is complete.
    pub fn fill(&self, cache: Cache) {
        self.filled.send_if_modified(|f| {
            let was = std::mem::replace(f.of(cache), true);
            !was
        });
    }

    /// The caches that have not completed a list yet.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut filled = *self.filled.borrow();
        Cache::ALL
            .into_iter()
            .filter(|c| !*filled.of(*c))
            .map(Cache::name)
            .collect()
    }

    /// Resolves once every cache completed a list.
    pub async fn wait(&self) {
        let mut rx = self.filled.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we wait.
        let _ = rx.wait_for(|f| f.all()).await;
    }

    /// For `inspect_ok` on a reflected watch stream: marks `cache` filled at `InitDone`.
    pub fn observer<K>(&self, cache: Cache) -> impl FnMut(&watcher::Event<K>) + use<K> {
        let sync = self.clone();
        move |event| {
            if matches!(event, watcher::Event::InitDone) {
                sync.fill(cache);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _, stream};
    use k8s_openapi::api::core::v1::Node;
    use kube::api::ObjectMeta;
    use kube::runtime::{WatchStreamExt as _, reflector};

    use super::*;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[tokio::test]
    async fn every_waiter_wakes_when_the_last_cache_fills() {
        let sync = CacheSync::new();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let s = sync.clone();
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        sync.fill(Cache::Tunnels);
        sync.fill(Cache::Leases);
        assert_eq!(sync.missing(), vec!["nodes"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "woke too early");
        sync.fill(Cache::Nodes);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was not woken")
                .unwrap();
        }
        assert!(sync.missing().is_empty());
    }

    /// Why this module exists: kube-runtime's store readiness wakes only the last waiter. If
    /// this starts failing, kube-runtime wakes them all and `CacheSync` could go.
    #[tokio::test]
    async fn kube_store_readiness_wakes_only_the_last_waiter() {
        let (store, mut writer) = reflector::store::<Node>();
        let first = {
            let s = store.clone();
            tokio::spawn(async move { s.wait_until_ready().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let last = {
            let s = store.clone();
            tokio::spawn(async move { s.wait_until_ready().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::timeout(Duration::from_secs(5), last)
            .await
            .expect("the last waiter was not woken")
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !first.is_finished(),
            "kube-runtime now wakes every waiter of a store"
        );
        // It is still pending, not failed: polled again, it sees the store ready.
        first.abort();
        assert!(store.wait_until_ready().now_or_never().is_some());
    }

    /// Waiters see the cache filled only once the reflector holds the list, because the
    /// observer runs on the events the reflector has already applied.
    #[tokio::test]
    async fn a_filled_cache_holds_the_list() {
        let sync = CacheSync::new();
        sync.fill(Cache::Tunnels);
        sync.fill(Cache::Leases);
        let (store, writer) = reflector::store::<Node>();
        let events = stream::iter([
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(node("a"))),
            Ok(watcher::Event::InitApply(node("b"))),
            Ok(watcher::Event::InitDone),
        ])
        .chain(stream::pending::<Result<_, watcher::Error>>());
        let check = {
            let (sync, store) = (sync.clone(), store.clone());
            tokio::spawn(async move {
                sync.wait().await;
                store.state().len()
            })
        };
        tokio::spawn(
            events
                .reflect(writer)
                .inspect_ok(sync.observer(Cache::Nodes))
                .for_each(|_| async {}),
        );
        let seen = tokio::time::timeout(Duration::from_secs(5), check)
            .await
            .expect("never filled")
            .unwrap();
        assert_eq!(seen, 2);
    }
}
