//! The packaging tests: what an operator installs besides the binary (`deploy/`), checked with the
//! real tools — the Debian package in a clean Debian root, the systemd unit under a real systemd, the
//! container image under podman, the Kubernetes manifests, the Prometheus rules and the dashboard.
//! `scripts/test-packaging` installs the tools and runs this binary; a missing tool fails a test
//! loudly and names that script.
