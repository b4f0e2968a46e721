//! logdist-e2e holds only the cross-binary end-to-end tests (in `tests/`): the least-privilege
//! roles of `nats-secure.conf` against a real nats-server, TLS, control-plane hardening seen from
//! outside the distributor, and checks that the deployment files (`compose.yaml`, the cluster
//! configs) agree with what the binaries and the server accept. It has no code of its own.
