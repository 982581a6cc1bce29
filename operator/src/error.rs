//! Reconcile errors, split by who is at fault. Metric labels come from [`Error::kind`], a fixed
//! set, never from `Debug` output.

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server refused or failed a request, or could not be reached (the cluster's side;
    /// retried with backoff).
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
    /// Adding or removing the finalizer failed (the cluster's side; retried).
    #[error("finalizer update failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The tunnel is being deleted and agents have not yet confirmed that they removed its kernel
    /// objects. Not a fault: the reconcile is retried until they do or the timeout passes.
    #[error("waiting for the agents on {nodes:?} to remove the tunnel")]
    WaitingForAgents {
        /// Nodes whose `status.gateways[]` entry is still present.
        nodes: Vec<String>,
    },
    /// The Deployment that should own the agent DaemonSet (`--owner-deployment`) cannot be read,
    /// so the DaemonSet is not applied: without the owner, `helm uninstall` would leave it behind.
    #[error("cannot read the agent DaemonSet's owner, Deployment {name}: {source}")]
    OwnerDeployment {
        /// The Deployment's name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The operator could not build a request body (a bug in the operator).
    #[error("could not serialize a request: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The cluster (API server, network, RBAC): usually transient.
    Cluster,
    /// Nobody yet: the operator is waiting for another component.
    Waiting,
    /// The operator itself: a bug.
    Operator,
}

impl Error {
    /// A fixed, low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
            Self::WaitingForAgents { .. } => "waiting_for_agents",
            Self::OwnerDeployment { .. } => "owner_deployment",
            Self::Serialize(_) => "serialize",
        }
    }

    /// Who has to act.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Kube(_) => Fault::Cluster,
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.fault(),
                _ => Fault::Cluster,
            },
            Self::WaitingForAgents { .. } => Fault::Waiting,
            Self::OwnerDeployment { .. } => Fault::Cluster,
            Self::Serialize(_) => Fault::Operator,
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}
