//! What each condition reason means and what to do about it: the table `diagnose` prints from
//! and `docs/troubleshooting.md` is keyed to (a test keeps the two in step, and another checks
//! that every reason the agent, strait-ike and the operator can write has an entry).

/// The advice for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    /// The CamelCase reason, as in `status.conditions[].reason` or `lastError.reason`.
    pub reason: &'static str,
    /// What it means, in one sentence.
    pub cause: &'static str,
    /// What to check or change next.
    pub next: &'static str,
}

const fn a(reason: &'static str, cause: &'static str, next: &'static str) -> Advice {
    Advice {
        reason,
        cause,
        next,
    }
}

/// Every reason with advice. Reasons that mean "all is well" or "wait" are here too, so a
/// person reading `diagnose` is never left with a bare word.
pub const TABLE: &[Advice] = &[
    // ---- the operator's reasons (no agent has a say yet) ----
    a(
        "TunnelEstablished",
        "the IKE SA and its CHILD SAs are up on the active gateway",
        "nothing to do; if traffic still does not pass, see \"Ready but no traffic\" in docs/troubleshooting.md",
    ),
    a(
        "NoGatewayAvailable",
        "no node that matches spec.gateway.nodeSelector has a live agent",
        "label a node to match the selector (kubectl label node NODE KEY=VALUE), or check that the agent pods run on the labelled nodes (kubectl get pods -n NAMESPACE -l app.kubernetes.io/name=strait-agent -o wide)",
    ),
    a(
        "NoGatewaySelector",
        "the tunnel has no spec.gateway.nodeSelector, so the operator cannot choose a node",
        "add spec.gateway.nodeSelector (for example matchLabels: {strait.dev/gateway: \"true\"}) and label the gateway nodes",
    ),
    a(
        "InvalidGatewaySelector",
        "spec.gateway.nodeSelector is not a valid label selector",
        "fix the selector: the condition's message names what is wrong",
    ),
    a(
        "WaitingForAgent",
        "a gateway is elected but its agent has not reported on this tunnel yet",
        "wait a few seconds; if it stays, read the agent's log on that node (kubectl logs -n NAMESPACE -l app.kubernetes.io/name=strait-agent --prefix)",
    ),
    a(
        "AgentError",
        "the active gateway's agent reports an error that has no finer reason",
        "read status.gateways[].lastError.message and the agent's log on that node",
    ),
    a(
        "Connecting",
        "the agent is initiating the IKE SA, or waiting to try again after a failure",
        "wait one retransmission period (about 30 s); if it stays, see the lastError of the active gateway",
    ),
    a(
        "IkeSaDown",
        "no IKE SA, and the agent is not initiating one (initiation: respond waits for the peer)",
        "start the tunnel on the remote side, or set spec.initiation: start",
    ),
    a(
        "IkeStateUnknown",
        "the active gateway's agent wrote an entry without an IKE state",
        "upgrade the agents to the operator's version (kubectl get ds -n NAMESPACE strait-agent -o wide)",
    ),
    a(
        "ChildSasPending",
        "the IKE SA is up but no CHILD SA is installed yet",
        "wait a few seconds; if it stays, the peer refused the CHILD SA: compare the subnets and the ESP proposals with the peer's",
    ),
    // ---- agent pods (the operator's diagnosis of the DaemonSet) ----
    a(
        "AgentPodsForbidden",
        "Pod Security admission refuses the agent pods (they need hostNetwork and NET_ADMIN)",
        "label the operator's namespace pod-security.kubernetes.io/enforce=privileged",
    ),
    a(
        "AgentPodsNotCreated",
        "the DaemonSet controller cannot create the agent pods (a quota, a webhook, a priority class)",
        "kubectl describe ds -n NAMESPACE strait-agent, and the FailedCreate events there",
    ),
    a(
        "AgentNotScheduled",
        "a gateway node is outside the agent DaemonSet's own nodeSelector (chart value agent.nodeSelector)",
        "widen agent.nodeSelector in the chart's values, or narrow spec.gateway.nodeSelector",
    ),
    a(
        "AgentImageUnavailable",
        "the agent image cannot be pulled on the node",
        "check the chart's image values and the node's registry access (kubectl describe pod on that node)",
    ),
    a(
        "AgentCrashLoopBackOff",
        "the agent container keeps exiting",
        "kubectl logs -n NAMESPACE POD --previous for the agent pod on that node",
    ),
    a(
        "AgentPodNotRunning",
        "the agent pod exists but its container does not run",
        "kubectl describe pod -n NAMESPACE POD for the agent pod on that node",
    ),
    a(
        "AgentNotReporting",
        "the agent pod runs but its heartbeat Lease is not renewed",
        "read the agent's log: it cannot reach the API server or lacks RBAC (kubectl auth can-i --as=system:serviceaccount:NAMESPACE:strait-agent update leases -n NAMESPACE)",
    ),
    // ---- the agent's own reasons (the spec or the node) ----
    a(
        "InvalidConfig",
        "the spec cannot become an IKE configuration (an identity, a subnet, a lifetime)",
        "the message names the field; `strait-agent check` on the same YAML says the same offline",
    ),
    a(
        "InvalidProposal",
        "a proposal string was refused",
        "use strongSwan names such as aes256gcm16-prfsha384-x25519 (IKE) and aes256gcm16 (ESP)",
    ),
    a(
        "InvalidCertificate",
        "the certificate, its key or the CA is missing, unreadable or do not belong together",
        "check the tls Secret (tls.crt, tls.key) and the CA Secret: the key must match the certificate, and the CA must be PEM",
    ),
    a(
        "SecretUnavailable",
        "a Secret or key the spec names cannot be read",
        "create it in the operator's namespace with the key the spec names (kubectl create secret generic NAME -n NAMESPACE --from-literal=KEY=...)",
    ),
    a(
        "AddressUnresolved",
        "no remote address resolves, or the node has no route to the first one",
        "check spec.remote.address and fallbackAddresses from the gateway node (DNS, default route); the agent tries again every 10 s (standalone) or 30 s (cluster)",
    ),
    a(
        "SocketError",
        "the agent cannot bind or prepare UDP 500/4500 on the node",
        "another IKE daemon (strongSwan, Libreswan) may hold the ports on that node: stop it",
    ),
    a(
        "KernelUnsupported",
        "the node's kernel lacks what the tunnel needs (ESP, an algorithm, XFRM interfaces)",
        "load the modules (esp4, esp6, xfrm_interface) or choose another algorithm or data-plane mode",
    ),
    a(
        "PermissionDenied",
        "the agent lacks a privilege it needs (CAP_NET_ADMIN for XFRM)",
        "do not drop NET_ADMIN from the agent's securityContext (chart values agent.securityContext)",
    ),
    a(
        "DataplaneError",
        "the kernel refused a change for another reason",
        "the message has the kernel's error; the agent's log has the object it tried",
    ),
    // ---- the IKE exchange (strait-ike's reasons) ----
    a(
        "NoProposalChosen",
        "the two sides have no IKE or ESP proposal in common",
        "compare spec.ike.proposals and spec.esp.proposals with the peer's (kubectl strait peer-config TUNNEL prints what the peer needs)",
    ),
    a(
        "AuthenticationFailed",
        "one side did not accept the other's identity or proof: a different PSK, an identity of another type or value, or a certificate its CA does not vouch for",
        "PSK: the same key on both sides, and identities of the same type (an IP address is not @fqdn); certificates: the peer's CA in spec.auth.ca, and an identity that is in the certificate",
    ),
    a(
        "PeerUnreachable",
        "the peer did not answer: retransmissions or dead peer detection gave up",
        "allow UDP 500 and 4500 and IP protocol 50 (ESP) between the gateway and the peer, in both directions, on every firewall and cloud security group",
    ),
    a(
        "TsUnacceptable",
        "the peer refused the traffic selectors: its subnets are not the mirror of ours",
        "spec.local.subnets must be the peer's remote subnets and spec.remote.subnets its local ones",
    ),
    a(
        "InvalidSyntax",
        "a message was malformed, or the peer said ours was",
        "read both sides' logs at the time of lastError; a middlebox that rewrites or truncates UDP can do this",
    ),
    a(
        "DeletedByPeer",
        "the peer deleted the SA",
        "the peer's administrator or configuration closed it: read the peer's log",
    ),
    a(
        "DeletedLocally",
        "this side deleted the SA (the tunnel was changed or removed)",
        "nothing, unless the change was not meant",
    ),
    a(
        "HalfOpenTimeout",
        "the peer started an IKE SA but never completed IKE_AUTH",
        "fragments may be lost on the path (certificates make IKE_AUTH large): allow IP fragments, or check the peer's log",
    ),
    a(
        "Replaced",
        "the SA was replaced by a rekeyed one, or by a new one after the peer restarted",
        "nothing: part of an SA's normal life",
    ),
    a(
        "CertificateNotYetValid",
        "the peer's certificate is not valid yet",
        "check the clocks of both sides (NTP) and the certificate's notBefore",
    ),
    a(
        "CertificateExpired",
        "the peer's certificate has expired",
        "renew the peer's certificate; the metric strait_certificate_expiry_timestamp_seconds warns of ours",
    ),
    a(
        "PeerError",
        "the peer answered with an error notification Strait has no finer reason for",
        "lastError.message names the notification; the peer's log says why it sent it",
    ),
    a(
        "LifetimeExpired",
        "the IKE SA reached spec.ike.maxLifetime because every rekey failed (the peer kept refusing it), and was deleted",
        "read the agent's log for the refused rekeys (CREATE_CHILD_SA) and the peer's log for why; a start tunnel negotiates a new IKE SA",
    ),
    a(
        "ClockUnset",
        "the agent had no wall-clock time to check certificates with (a bug)",
        "report it with `kubectl strait gather`",
    ),
    a(
        "LocalCrypto",
        "the agent's own cryptography failed (key generation, derivation or signing)",
        "check the private key in the tls Secret; if it is sound, report it with `kubectl strait gather`",
    ),
    a(
        "Encode",
        "one of our messages could not be built (an identity or message too long)",
        "shorten the identity; otherwise report it with `kubectl strait gather`",
    ),
    a(
        "InternalError",
        "a rule the IKE implementation relies on did not hold (a bug)",
        "report it with `kubectl strait gather`",
    ),
];

/// The advice for `reason`, if it has any.
pub fn advice(reason: &str) -> Option<&'static Advice> {
    TABLE.iter().find(|a| a.reason == reason)
}

#[cfg(test)]
mod tests {
    use strait_crds::contract::StatusReason;
    use strait_ike::Reason;

    use super::{TABLE, advice};

    // A `match` per enum, so a new variant breaks this test's build until it has advice.
    fn ike(r: Reason) -> Reason {
        match r {
            Reason::NoProposalChosen
            | Reason::AuthenticationFailed
            | Reason::PeerUnreachable
            | Reason::TsUnacceptable
            | Reason::InvalidSyntax
            | Reason::DeletedByPeer
            | Reason::DeletedLocally
            | Reason::HalfOpenTimeout
            | Reason::Replaced
            | Reason::CertificateNotYetValid
            | Reason::CertificateExpired
            | Reason::PeerError
            | Reason::LifetimeExpired
            | Reason::ClockUnset
            | Reason::LocalCrypto
            | Reason::Encode
            | Reason::InternalError => r,
        }
    }

    fn agent(r: StatusReason) -> StatusReason {
        match r {
            StatusReason::InvalidConfig
            | StatusReason::InvalidProposal
            | StatusReason::InvalidCertificate
            | StatusReason::SecretUnavailable
            | StatusReason::AddressUnresolved
            | StatusReason::SocketError
            | StatusReason::KernelUnsupported
            | StatusReason::PermissionDenied
            | StatusReason::DataplaneError => r,
        }
    }

    #[test]
    fn every_reason_anyone_writes_has_advice() {
        let ike_reasons = [
            Reason::NoProposalChosen,
            Reason::AuthenticationFailed,
            Reason::PeerUnreachable,
            Reason::TsUnacceptable,
            Reason::InvalidSyntax,
            Reason::DeletedByPeer,
            Reason::DeletedLocally,
            Reason::HalfOpenTimeout,
            Reason::Replaced,
            Reason::CertificateNotYetValid,
            Reason::CertificateExpired,
            Reason::PeerError,
            Reason::LifetimeExpired,
            Reason::ClockUnset,
            Reason::LocalCrypto,
            Reason::Encode,
            Reason::InternalError,
        ];
        for r in ike_reasons.map(ike) {
            assert!(advice(r.as_str()).is_some(), "no advice for {r}");
        }
        let agent_reasons = [
            StatusReason::InvalidConfig,
            StatusReason::InvalidProposal,
            StatusReason::InvalidCertificate,
            StatusReason::SecretUnavailable,
            StatusReason::AddressUnresolved,
            StatusReason::SocketError,
            StatusReason::KernelUnsupported,
            StatusReason::PermissionDenied,
            StatusReason::DataplaneError,
        ];
        for r in agent_reasons.map(agent) {
            assert!(advice(r.as_str()).is_some(), "no advice for {r}");
        }
        for p in strait_operator::diagnosis::Problem::ALL {
            assert!(advice(p.as_str()).is_some(), "no advice for {}", p.as_str());
        }
    }

    #[test]
    fn reasons_are_unique_and_the_guide_has_a_section_for_each() {
        let guide = include_str!("../../docs/troubleshooting.md");
        for (i, a) in TABLE.iter().enumerate() {
            assert!(
                TABLE.iter().skip(i + 1).all(|b| b.reason != a.reason),
                "{} twice",
                a.reason
            );
            assert!(
                guide.contains(&format!("### `{}`", a.reason)),
                "docs/troubleshooting.md has no section `### \\`{}\\``",
                a.reason
            );
        }
    }
}
